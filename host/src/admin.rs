//! The gateway's admin API over HTTP, on loopback by default, and a client for it.
//!
//! | request | what it does |
//! |---|---|
//! | `GET /status` | the release being served (module name, version, sha256, WIT version, config sha256, generation), uptime, counters |
//! | `PUT /module` | swaps in the component in the body; `If-Match: <sha256>` makes it a compare-and-swap against the running module; with `X-Config-Length: N`, the body's last N bytes are a configuration swapped in with it |
//! | `PUT /config` | swaps in the configuration in the body (YAML or JSON); `If-Match` as above |
//! | `POST /rollback` | goes back to the previous good release |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /module`, `GET /config` | the module and the configuration in force, with `X-Generation` and `ETag` (the module's sha256) headers: what `flowgate swap --dry-run` compares against |
//!
//! Swaps answer 200 with the new release, 412 for a stale `If-Match`, 422 for a refused module
//! or configuration (with the reason), 409 when there is nothing to roll back to.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, anyhow};
use serde_json::{Value, json};

use crate::gateway::{Gateway, Release, SwapError};

/// Where the admin API listens unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8742";
/// The largest request body accepted (a module with its configuration).
pub const MAX_BODY: u64 = 64 << 20;

/// The admin API's server thread.
pub struct AdminServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl AdminServer {
    /// Listens on `addr` and serves requests for `gateway` on a thread of its own.
    pub fn start(gateway: Arc<Gateway>, addr: &str) -> anyhow::Result<AdminServer> {
        let server =
            tiny_http::Server::http(addr).map_err(|e| anyhow!("admin API on {addr}: {e}"))?;
        let addr = server
            .server_addr()
            .to_ip()
            .context("the admin API listens on an IP address")?;
        let server = Arc::new(server);
        let thread = {
            let server = server.clone();
            std::thread::Builder::new()
                .name("flowgate-admin".into())
                .spawn(move || {
                    for request in server.incoming_requests() {
                        handle(&gateway, request);
                    }
                })?
        };
        Ok(AdminServer {
            server,
            thread: Some(thread),
            addr,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn header<'a>(request: &'a tiny_http::Request, name: &str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn respond(request: tiny_http::Request, status: u16, content_type: &str, body: String) {
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes());
    let mut response = tiny_http::Response::from_string(body).with_status_code(status);
    if let Ok(header) = header {
        response = response.with_header(header);
    }
    // A client that went away is not the gateway's problem.
    let _ = request.respond(response);
}

fn with_release_headers<R: Read>(
    mut response: tiny_http::Response<R>,
    release: &Release,
    content_type: &str,
) -> tiny_http::Response<R> {
    for (name, value) in [
        ("Content-Type", content_type.to_owned()),
        ("X-Generation", release.generation.to_string()),
        ("ETag", release.module_digest()),
    ] {
        if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response = response.with_header(h);
        }
    }
    response
}

fn respond_json(request: tiny_http::Request, status: u16, body: Value) {
    respond(request, status, "application/json", format!("{body}\n"));
}

fn handle(gateway: &Arc<Gateway>, mut request: tiny_http::Request) {
    use tiny_http::Method::{Get, Post, Put};
    let path = request.url().split('?').next().unwrap_or("").to_owned();
    match (request.method().clone(), path.as_str()) {
        (Get, "/status") => respond_json(request, 200, status(gateway)),
        (Get, "/metrics") => respond(
            request,
            200,
            "text/plain; version=0.0.4",
            crate::metrics::render(gateway),
        ),
        // The release in force, for `flowgate swap --dry-run`; its generation and digest in
        // headers, so a client can swap with If-Match against exactly what it compared.
        (Get, "/module") => {
            let release = gateway.current();
            let response = tiny_http::Response::from_data(release.module.bytes().to_vec());
            let _ = request.respond(with_release_headers(response, &release, "application/wasm"));
        }
        (Get, "/config") => {
            let release = gateway.current();
            let response = tiny_http::Response::from_string(release.config.to_string());
            let _ = request.respond(with_release_headers(response, &release, "application/yaml"));
        }
        (Put, "/module") | (Put, "/config") => {
            let mut body = Vec::new();
            if let Err(e) = request
                .as_reader()
                .take(MAX_BODY + 1)
                .read_to_end(&mut body)
            {
                return respond_json(
                    request,
                    400,
                    json!({"error": format!("reading the body: {e}")}),
                );
            }
            if body.len() as u64 > MAX_BODY {
                return respond_json(
                    request,
                    413,
                    json!({"error": format!("the body is larger than {MAX_BODY} bytes")}),
                );
            }
            let if_match = header(&request, "If-Match").map(str::to_owned);
            let (module, config) = if path == "/module" {
                let config_len = match header(&request, "X-Config-Length").map(str::parse::<usize>)
                {
                    None => 0,
                    Some(Ok(n)) if n <= body.len() => n,
                    Some(_) => {
                        return respond_json(
                            request,
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
                    return respond_json(
                        request,
                        400,
                        json!({"error": "the configuration is not UTF-8 text"}),
                    );
                }
            };
            let result = gateway.swap(module.as_deref(), config.as_deref(), if_match.as_deref());
            answer_swap(request, result);
        }
        (Post, "/rollback") => answer_swap(request, gateway.rollback(false)),
        (_, "/status" | "/metrics" | "/module" | "/config" | "/rollback") => {
            respond_json(request, 405, json!({"error": "method not allowed"}))
        }
        _ => respond_json(
            request,
            404,
            json!({"error": "no such endpoint: /status, /metrics, /module, /config, /rollback"}),
        ),
    }
}

fn answer_swap(request: tiny_http::Request, result: Result<Arc<Release>, SwapError>) {
    match result {
        Ok(release) => respond_json(
            request,
            200,
            json!({"swapped": true, "release": release_json(&release)}),
        ),
        Err(e) => {
            let status = match e {
                SwapError::Stale { .. } => 412,
                SwapError::NothingToRollBack => 409,
                _ => 422,
            };
            respond_json(
                request,
                status,
                json!({"swapped": false, "reason": e.reason(), "error": e.to_string()}),
            )
        }
    }
}

fn release_json(release: &Release) -> Value {
    json!({
        "generation": release.generation,
        "cause": release.cause,
        "module": {
            "name": release.info.name,
            "version": release.info.version,
            "wit_version": release.info.wit_version,
            "sha256": release.module_digest(),
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
    out["counters"] = gateway.counters().to_json();
    let events = gateway.events();
    out["events"] = json!({
        "swaps": events.swaps, "refusals": events.refusals,
        "rollbacks": events.rollbacks, "faults": events.faults,
    });
    drop(events);
    out["batch_latency"] = json!({
        "batches": gateway.batch_latency.count(),
        "max_seconds": gateway.batch_latency.max().as_secs_f64(),
    });
    out
}

/// A client of the admin API.
pub struct Client {
    agent: ureq::Agent,
    base: String,
}

/// An answer of the admin API: its status code and JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Value,
}

impl Client {
    /// A client of the gateway at `addr` (`host:port`).
    pub fn new(addr: &str) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(60)))
            .build()
            .new_agent();
        Client {
            agent,
            base: format!("http://{addr}"),
        }
    }

    fn finish(
        &self,
        what: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Answer> {
        let mut response = result.with_context(|| format!("{what} {}", self.base))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer to {what}"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body })
    }

    /// `GET /status`.
    pub fn status(&self) -> anyhow::Result<Answer> {
        self.finish(
            "GET /status",
            self.agent.get(format!("{}/status", self.base)).call(),
        )
    }

    /// `GET /metrics`, as text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let mut response = self
            .agent
            .get(format!("{}/metrics", self.base))
            .call()
            .context("GET /metrics")?;
        Ok(response.body_mut().read_to_string()?)
    }

    /// `GET /module` and `GET /config`: the module and configuration in force.
    pub fn serving(&self) -> anyhow::Result<(Vec<u8>, String)> {
        let get = |path: &str| -> anyhow::Result<Vec<u8>> {
            let mut response = self
                .agent
                .get(format!("{}{path}", self.base))
                .call()
                .with_context(|| format!("GET {path} {}", self.base))?;
            if response.status() != 200 {
                anyhow::bail!("GET {path}: the gateway answered {}", response.status());
            }
            Ok(response
                .body_mut()
                .with_config()
                .limit(MAX_BODY)
                .read_to_vec()?)
        };
        let module = get("/module")?;
        let config = String::from_utf8(get("/config")?).context("GET /config: not UTF-8")?;
        Ok((module, config))
    }

    /// `PUT /module`, with a configuration when given.
    pub fn swap_module(
        &self,
        module: &[u8],
        config: Option<&str>,
        if_match: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut body = module.to_vec();
        let mut request = self.agent.put(format!("{}/module", self.base));
        if let Some(config) = config {
            body.extend_from_slice(config.as_bytes());
            request = request.header("X-Config-Length", config.len().to_string());
        }
        if let Some(tag) = if_match {
            request = request.header("If-Match", tag);
        }
        self.finish("PUT /module", request.send(&body[..]))
    }

    /// `PUT /config`.
    pub fn swap_config(&self, config: &str, if_match: Option<&str>) -> anyhow::Result<Answer> {
        let mut request = self.agent.put(format!("{}/config", self.base));
        if let Some(tag) = if_match {
            request = request.header("If-Match", tag);
        }
        self.finish("PUT /config", request.send(config.as_bytes()))
    }

    /// `POST /rollback`.
    pub fn rollback(&self) -> anyhow::Result<Answer> {
        self.finish(
            "POST /rollback",
            self.agent
                .post(format!("{}/rollback", self.base))
                .send_empty(),
        )
    }
}
