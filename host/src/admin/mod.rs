//! The gateway's admin API and a client for it. It listens on a Unix domain socket by default
//! (0600, in a 0700 directory); on TCP every request must carry the bearer token.
//!
//! | request | what it does |
//! |---|---|
//! | `GET /status` | the release being served (module name, version, sha256, WIT version, config sha256, generation, ETag), uptime, counters |
//! | `PUT /module` | swaps in the component in the body; with `X-Config-Length: N`, the body's last N bytes are a configuration swapped in with it |
//! | `PUT /config` | swaps in the configuration in the body (YAML or JSON) |
//! | `POST /rollback` | goes back to the previous good release |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /module`, `GET /config` | the module and the configuration in force, with `X-Generation` and `ETag` headers: what `flowgate swap --dry-run` compares against |
//! | `POST /watch/resume`, `POST /watch/pause` | the tag watch follows its tag again, or stops following it until resumed |
//!
//! The `ETag` names the release as a whole: its generation, module and configuration. A swap
//! with `If-Match: <etag>` goes through only while that release is the one serving, so two
//! operators working from the same state cannot both win, and re-uploading the same module
//! makes a new ETag.
//!
//! Swaps answer 200 with the new release, 412 for a stale `If-Match`, 422 for a refused module
//! or configuration (with the reason), 409 when there is nothing to roll back to. Requests the
//! transport refuses (see `http.rs`) answer 400, 401, 408, 413, 431 or 503 and change
//! nothing; they are counted in `flowgate_admin_refusals_total`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::gateway::{Change, Gateway, Release, SwapError, WatchError, WatchStatus};
mod client;
mod http;
pub mod metrics;
mod transport;

pub use client::{Answer, Client, Serving};
pub use http::RequestLimits;
pub use transport::{Endpoint, Stream};

use http::{Request, Response};
use transport::Listener;

/// The largest request body accepted (a module with its configuration).
pub const MAX_BODY: u64 = 64 << 20;
/// The environment variable clients read the bearer token from.
pub const TOKEN_ENV: &str = "FLOWGATE_ADMIN_TOKEN";

/// How the admin API listens.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// Where.
    pub endpoint: Endpoint,
    /// The bearer token every request must carry; required on TCP.
    pub token: Option<String>,
    /// Connections served at once; more are answered 503.
    pub max_connections: usize,
    /// Size and time limits of one request.
    pub limits: RequestLimits,
    /// How the gateway pulls the modules it is given as references.
    pub registry: crate::oci::RegistryOptions,
    /// Where pulled modules are kept by digest.
    pub cache: Option<crate::oci::Cache>,
}

impl AdminOptions {
    /// Defaults for `endpoint`: 32 connections, 16 KiB heads, [`MAX_BODY`] bodies, 10 s
    /// between reads and 120 s for a whole request.
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Self {
        AdminOptions {
            endpoint,
            token,
            max_connections: 32,
            limits: RequestLimits {
                max_head: 16 << 10,
                max_body: MAX_BODY,
                idle: Duration::from_secs(10),
                total: Duration::from_secs(120),
            },
            registry: crate::oci::RegistryOptions::default(),
            cache: None,
        }
    }
}

/// Reads a bearer token from `path`: the file's text, trimmed; an empty file is refused.
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > 4096 {
        bail!(
            "{}: a token file holds one token, not {} bytes",
            path.display(),
            meta.len()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("{}: the token file is empty", path.display());
    }
    if token.chars().any(|c| c.is_control() || c == ' ') {
        bail!(
            "{}: a token is one word of printable characters",
            path.display()
        );
    }
    Ok(token.to_owned())
}

struct Shared {
    gateway: Arc<Gateway>,
    registry: crate::oci::Registry,
    cache: Option<crate::oci::Cache>,
    token: Option<[u8; 32]>,
    limits: RequestLimits,
    open: AtomicUsize,
    max_connections: usize,
}

/// The admin API's listening thread; each connection gets a thread of its own.
pub struct AdminServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    endpoint: Endpoint,
}

impl AdminServer {
    /// Listens as `options` say and serves requests for `gateway`. TCP without a token is
    /// refused; TCP beyond loopback is allowed, with a warning.
    pub fn start(gateway: Arc<Gateway>, options: AdminOptions) -> anyhow::Result<AdminServer> {
        if let Endpoint::Tcp(addr) = &options.endpoint
            && options.token.is_none()
        {
            {
                bail!(
                    "the admin API on TCP ({addr}) needs a bearer token: give --admin-token-file FILE, or listen on a Unix socket (--admin unix:PATH)"
                );
            }
        }
        let listener = Listener::bind(&options.endpoint)
            .with_context(|| format!("admin API on {}", options.endpoint))?;
        if let Some(addr) = listener.tcp_addr()
            && !addr.ip().is_loopback()
        {
            tracing::warn!(
                %addr,
                "the admin API listens beyond loopback: anyone who can reach it with the token can change the policy"
            );
        }
        let endpoint = listener.endpoint()?;
        let shared = Arc::new(Shared {
            gateway,
            registry: crate::oci::Registry::new(options.registry.clone()),
            cache: options.cache.clone(),
            token: options.token.as_deref().map(digest),
            limits: options.limits,
            open: AtomicUsize::new(0),
            max_connections: options.max_connections.max(1),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("flowgate-admin".into())
                .spawn(move || accept_loop(&listener, &shared, &stop))?
        };
        Ok(AdminServer {
            stop,
            thread: Some(thread),
            endpoint,
        })
    }

    /// Where it listens.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop; connections in flight end by their own deadlines.
        let _ = Stream::connect(&self.endpoint, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares digests in constant time: how long it takes says nothing about the token.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn accept_loop(listener: &Listener, shared: &Arc<Shared>, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let mut stream = match listener.accept() {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!(error = %e, "admin API: accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if stop.load(Ordering::Acquire) {
            break;
        }
        if shared.open.load(Ordering::Acquire) >= shared.max_connections {
            shared.gateway.note_admin_refusal("too-many-connections");
            let _ = stream.set_timeouts(Duration::from_secs(1), Duration::from_secs(1));
            let _ = http::send(
                &mut stream,
                &json_response(
                    503,
                    json!({"error": format!("the admin API serves {} connections at once; try again", shared.max_connections)}),
                ),
            );
            continue;
        }
        shared.open.fetch_add(1, Ordering::AcqRel);
        let conn = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("flowgate-admin-conn".into())
            .spawn(move || {
                serve_connection(&conn, stream);
                conn.open.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            shared.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn json_response(status: u16, body: Value) -> Response {
    Response {
        status,
        headers: vec![("Content-Type", "application/json".into())],
        body: format!("{body}\n").into_bytes(),
    }
}

fn refuse(shared: &Shared, status: u16, reason: &'static str, message: String) -> Response {
    shared.gateway.note_admin_refusal(reason);
    let mut response = json_response(status, json!({"error": message}));
    if status == 401 {
        response
            .headers
            .push(("WWW-Authenticate", "Bearer realm=\"flowgate\"".into()));
    }
    response
}

fn serve_connection(shared: &Shared, mut stream: Stream) {
    let limits = shared.limits;
    let _ = stream.set_timeouts(limits.idle, limits.idle);
    let started = Instant::now();
    let response = match http::read_head(&mut stream, &limits, started) {
        Err(e) => refuse(shared, e.status, e.reason, e.message),
        Ok((mut request, early)) => {
            if let Some(expected) = &shared.token {
                let given = request
                    .header("authorization")
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(|t| digest(t.trim()));
                if !given.is_some_and(|g| same(&g, expected)) {
                    let response = refuse(
                        shared,
                        401,
                        "unauthorized",
                        "this admin API needs `Authorization: Bearer <token>` with the gateway's token".into(),
                    );
                    let _ = http::send(&mut stream, &response);
                    return;
                }
            }
            match http::read_body(&mut stream, &mut request, early, &limits, started) {
                Err(e) => refuse(shared, e.status, e.reason, e.message),
                Ok(()) => route(shared, request),
            }
        }
    };
    let _ = http::send(&mut stream, &response);
}

fn with_release_headers(mut response: Response, release: &Release, content_type: &str) -> Response {
    response.headers = vec![
        ("Content-Type", content_type.to_owned()),
        ("X-Generation", release.generation.to_string()),
        ("ETag", format!("\"{}\"", release.etag())),
    ];
    response
}

fn route(shared: &Shared, request: Request) -> Response {
    let gateway = &shared.gateway;
    let if_match = request.header("if-match").map(str::to_owned);
    let by_reference = request
        .header("content-type")
        .is_some_and(|t| t.eq_ignore_ascii_case(REFERENCE_TYPE));
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/status") => {
            let release = gateway.current();
            with_release_headers(
                json_response(200, status(gateway)),
                &release,
                "application/json",
            )
        }
        ("GET", "/metrics") => Response {
            status: 200,
            headers: vec![("Content-Type", "text/plain; version=0.0.4".into())],
            body: metrics::render(gateway).into_bytes(),
        },
        // The release in force, for `flowgate swap --dry-run`; its generation and ETag in
        // headers, so a client can swap with If-Match against exactly what it compared.
        ("GET", "/module") => {
            let release = gateway.current();
            let response = Response {
                status: 200,
                headers: Vec::new(),
                body: release.module.bytes().to_vec(),
            };
            with_release_headers(response, &release, "application/wasm")
        }
        ("GET", "/config") => {
            let release = gateway.current();
            let response = Response {
                status: 200,
                headers: Vec::new(),
                body: release.config.as_bytes().to_vec(),
            };
            with_release_headers(response, &release, "application/yaml")
        }
        ("PUT", "/module") | ("PUT", "/config") => {
            let config_len_header = request.header("x-config-length").map(str::to_owned);
            let mut body = request.body;
            let (module, config) = if request.path == "/module" {
                let config_len = match config_len_header.as_deref().map(str::parse::<usize>) {
                    None => 0,
                    Some(Ok(n)) if n <= body.len() => n,
                    Some(_) => {
                        return json_response(
                            400,
                            json!({"error": "X-Config-Length is not a length within the body"}),
                        );
                    }
                };
                let config = body.split_off(body.len() - config_len);
                (Some(body), (config_len > 0).then_some(config))
            } else {
                (None, Some(body))
            };
            let config = match config.map(String::from_utf8).transpose() {
                Ok(c) => c,
                Err(_) => {
                    return json_response(
                        400,
                        json!({"error": "the configuration is not UTF-8 text"}),
                    );
                }
            };
            // A reference instead of a module: the gateway pulls it itself, verified.
            let (module, pulled) = match (module, by_reference) {
                (Some(text), true) => match pull(shared, &text) {
                    Ok((bytes, asked, digest)) => (Some(bytes), Some((asked, digest))),
                    Err(e) => {
                        gateway.note_pull("failed");
                        return json_response(
                            422,
                            json!({"swapped": false, "reason": "pull-failed", "error": e}),
                        );
                    }
                },
                (module, _) => (module, None),
            };
            let result = gateway.change(Change {
                module: module.as_deref(),
                config: config.as_deref(),
                if_match: if_match.as_deref(),
                pulled: pulled.as_ref().map(|(asked, digest)| (asked, *digest)),
            });
            if pulled.is_some() {
                gateway.note_pull(if result.is_ok() { "swapped" } else { "refused" });
            }
            answer_swap(result)
        }
        ("POST", "/rollback") => answer_swap(gateway.rollback_if(false, if_match.as_deref())),
        ("POST", "/watch/resume") => answer_watch(gateway.resume_watch()),
        ("POST", "/watch/pause") => answer_watch(gateway.pause_watch("POST /watch/pause")),
        (
            _,
            "/status" | "/metrics" | "/module" | "/config" | "/rollback" | "/watch/resume"
            | "/watch/pause",
        ) => json_response(405, json!({"error": "method not allowed"})),
        _ => json_response(
            404,
            json!({"error": "no such endpoint: /status, /metrics, /module, /config, /rollback, /watch/resume, /watch/pause"}),
        ),
    }
}

/// The content type of a `PUT /module` whose body is an `oci://` reference, not a module.
pub const REFERENCE_TYPE: &str = "application/vnd.flowgate.module-reference";

/// Pulls the module a reference names (the body of a reference swap): the module, the
/// reference as asked, and the manifest's digest it resolved to.
fn pull(
    shared: &Shared,
    body: &[u8],
) -> Result<(Vec<u8>, crate::oci::Reference, crate::oci::Digest), String> {
    let text = std::str::from_utf8(body)
        .map_err(|_| "the reference is not UTF-8 text".to_owned())?
        .trim();
    let reference = crate::oci::Reference::parse(text)?;
    // A digest names the same bytes in the cache as in the registry; a tag's last digest in
    // the cache is only what it was: an operator naming a tag gets what it names now, or an
    // error.
    let pulled = match reference.digest {
        Some(_) => shared
            .registry
            .pull_or_cached(&reference, shared.cache.as_ref())
            .map(|(pulled, _)| pulled),
        None => shared.registry.pull(&reference).inspect(|pulled| {
            if let Some(cache) = &shared.cache
                && let Err(e) = cache.store(&reference, &pulled.manifest, &pulled.module)
            {
                tracing::warn!(error = %e, "the pulled module could not be cached");
            }
        }),
    }
    .map_err(|e| e.to_string())?;
    Ok((pulled.module, reference, pulled.manifest))
}

fn answer_watch(result: Result<WatchStatus, WatchError>) -> Response {
    match result {
        Ok(watch) => json_response(200, json!({"watch": watch_json(&watch)})),
        Err(e) => json_response(409, json!({"error": e.to_string()})),
    }
}

/// A tag watch in `/status`: its state, the digest it last acted on, its quarantine.
fn watch_json(watch: &WatchStatus) -> Value {
    let quarantined: Vec<Value> = watch
        .quarantined
        .iter()
        .map(|q| json!({"digest": q.digest.to_string(), "reason": q.reason, "generation": q.generation}))
        .collect();
    let mut out = json!({
        "reference": watch.reference,
        "state": if watch.paused.is_some() { "paused" } else { "active" },
        "digest": watch.acted.map(|d| d.to_string()),
        "quarantined": quarantined,
    });
    if let Some(pause) = &watch.paused {
        out["since_generation"] = json!(pause.since_generation);
        out["reason"] = json!(pause.reason);
    }
    out
}

fn answer_swap(result: Result<Arc<Release>, SwapError>) -> Response {
    match result {
        Ok(release) => {
            let body = json!({"swapped": true, "release": release_json(&release)});
            with_release_headers(json_response(200, body), &release, "application/json")
        }
        Err(e) => {
            let status = match e {
                SwapError::Stale { .. } => 412,
                SwapError::NothingToRollBack => 409,
                _ => 422,
            };
            json_response(
                status,
                json!({"swapped": false, "reason": e.reason().as_str(), "error": e.to_string()}),
            )
        }
    }
}

fn release_json(release: &Release) -> Value {
    json!({
        "generation": release.generation,
        "etag": release.etag(),
        "cause": release.cause.as_str(),
        "origin": release.origin.as_str(),
        "why": release.why,
        "module": {
            "name": release.info.name,
            "version": release.info.version,
            "wit_version": release.info.wit_version,
            "sha256": release.module_digest(),
            "reference": release.source,
        },
        "config_sha256": release.config_digest,
        "vpcs": release.catalog.vpcs.len(),
        "peerings": release.peerings,
    })
}

/// What `GET /status` answers.
pub fn status(gateway: &Gateway) -> Value {
    let release = gateway.current();
    let mut out = release_json(&release);
    out["uptime_seconds"] = json!(gateway.uptime().as_secs_f64());
    out["workers"] = json!(gateway.options().workers);
    out["good_generations"] = json!(gateway.good_generations());
    if let Some(watch) = gateway.watch_status() {
        out["watch"] = watch_json(&watch);
    }
    out["counters"] = gateway.counters().to_json();
    let events = gateway.events();
    out["events"] = json!({
        "swaps": events.swaps, "refusals": events.refusals,
        "rollbacks": events.rollbacks, "faults": events.faults,
        "revert_failures": events.revert_failures,
        "admin_refusals": events.admin_refusals,
        "pulls": events.pulls,
        "host_faults": events.host_faults,
    });
    drop(events);
    out["batch_latency"] = json!({
        "batches": gateway.batch_latency.count(),
        "max_seconds": gateway.batch_latency.max().as_secs_f64(),
    });
    out
}
