//! The gateway's admin API and a client for it. It listens on a Unix domain socket by default
//! (0600 from its first instant, served to the gateway's user and root only); on TCP every
//! request must carry the bearer token.
//!
//! The endpoints, as [`routes`] lists them (a test holds this table to it):
//!
//! | request | what it does | answers |
//! |---|---|---|
//! | `GET /status` | the release being served (module name, version, sha256, WIT version, config sha256, generation, ETag, cause, origin), uptime, workers, counters, event counts | 200, JSON |
//! | `GET /metrics` | Prometheus text format | 200 |
//! | `GET /module` | the module in force, with `X-Generation` and `ETag` headers: what `flowgate swap --dry-run` compares against | 200 |
//! | `GET /config` | the configuration in force, with `X-Generation` and `ETag` headers | 200 |
//! | `PUT /module` | swaps in the component in the body, or the one an `oci://` reference in the body names (`Content-Type: application/vnd.flowgate.module-reference`); with `X-Config-Length: N`, the body's last N bytes are a configuration swapped in with it | 200 with the new release; 412 stale `If-Match`; 422 refused, with `reason` and `error` |
//! | `PUT /config` | swaps in the configuration in the body (YAML or JSON) | 200 with the new release; 412 stale `If-Match`; 422 refused, with `reason` and `error` |
//! | `POST /rollback` | goes back to the previous good release | 200 with the release; 412 stale `If-Match`; 409 when there is none |
//! | `POST /watch/resume` | the tag watch follows its tag again | 200 with the watch; 409 when the gateway watches no tag; 422 (`audit-failed`) when the action could not be recorded |
//! | `POST /watch/pause` | the tag watch stops following its tag until resumed | 200 with the watch; 409 when the gateway watches no tag; 422 (`audit-failed`) when the action could not be recorded |
//! | `GET /shadow` | the staged shadow release, the live ETag it is compared against and its report (packets compared, live by shadow outcomes, changed destinations, top VPC pairs, samples) | 200, JSON; 404 with `discarded` (how and why the last one ended) when none is staged |
//! | `PUT /shadow/module` | stages a shadow: the live release with the module in the body (or the one an `oci://` reference names, `X-Config-Length` and `X-Module-Signature` as for `PUT /module`), prepared and checked as a swap is, judged on copies of live batches and never published | 200 with the shadow; 412 stale `If-Match`; 422 refused, with `reason` and `error` |
//! | `PUT /shadow/config` | stages a shadow: the live release with the configuration in the body | 200 with the shadow; 412 stale `If-Match`; 422 refused, with `reason` and `error` |
//! | `POST /shadow/promote` | publishes exactly the staged shadow, with `If-Match` naming it, while the live release is still the one it was compared against (cause `shadow-promote`) | 200 with the release; 412 stale or missing `If-Match`, or live release changed; 409 when none is staged; 422 (`audit-failed`) |
//! | `DELETE /shadow` | discards the staged shadow (with `If-Match`, only the shadow it names) | 200 with its last report; 412 when `If-Match` names another; 409 when none is staged; 422 (`audit-failed`) |
//!
//! The `ETag` names the release as a whole: its generation, module and configuration. A swap
//! with `If-Match: <etag>` goes through only while that release is the one serving, so two
//! operators working from the same state cannot both win, and re-uploading the same module
//! makes a new ETag.
//!
//! Swaps answer 200 with the new release, 412 for a stale `If-Match`, 422 for a refused module
//! or configuration (with the reason), 409 when there is nothing to roll back to. Requests the
//! transport refuses (see `http.rs`) answer 400, 401, 408, 413, 431 or 503 and change
//! nothing; they are counted in `flowgate_admin_refusals_total`, with connections let go
//! before their head arrived (`head-timeout`, `evicted`: see `gate.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::gateway::{
    AdminRefusal, Approval, Discarded, Gateway, ModuleBytes, Outcome, Pull, Release, Report,
    Shadow, ShadowError, SwapError, SwapRequest, WatchApproval, WatchError, WatchStatus,
};
use crate::oci::{PullError, SignatureError, Signer};
use crate::setting::Setting;
mod audit;
mod client;
mod gate;
mod http;
pub mod metrics;
mod transport;

pub use audit::{AuditError, AuditLog, Caller};
pub use client::{Client, ClientError, Reply, Serving};
pub use http::RequestLimits;
pub use transport::{AdminEndpointError, Endpoint, Stream};

use gate::{Gate, GateLimits, Ticket};
use http::{Request, Response};
use transport::{Listener, TokioListener, TokioStream};

/// The largest request body accepted (a module with its configuration).
pub const MAX_BODY: u64 = 64 << 20;
/// The environment variable clients read the bearer token from.
pub const TOKEN_ENV: &str = "FLOWGATE_ADMIN_TOKEN";
/// How long the rest of a refused body is read and dropped, so that the client reads the
/// refusal (see [`http::drain`]).
const DRAIN: Duration = Duration::from_secs(2);
/// How long a new connection is safe from being let go for another from the same peer: time
/// enough to read its head (see `gate.rs`).
const ANONYMOUS_GRACE: Duration = Duration::from_millis(250);
/// The shortest bearer token accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;

/// How the admin API listens.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// Where.
    pub endpoint: Endpoint,
    /// The bearer token every request must carry; required on TCP (or `named_tokens`).
    pub token: Option<String>,
    /// Bearer tokens with names (`NAME TOKEN` lines of the token file, [`read_token_file`]):
    /// any one of them lets a request in, and its name goes in the request's audit record.
    pub named_tokens: Vec<(String, String)>,
    /// Where the audit records of the requests that change the gateway go.
    pub audit: Arc<AuditLog>,
    /// Authenticated requests served at once; more are answered 503.
    pub max_connections: usize,
    /// Connections whose head (and token) has not arrived yet, from one peer (an address on
    /// TCP, a user on a Unix socket); past it, that peer's oldest such connection is let go
    /// (once it has had its grace, `GateLimits::grace`).
    pub max_anonymous_per_peer: usize,
    /// Connections whose head has not arrived yet, in all; past it, the oldest is let go.
    pub max_anonymous: usize,
    /// Size and time limits of one request.
    pub limits: RequestLimits,
    /// How the gateway pulls the modules it is given as references.
    pub registry: crate::oci::RegistryOptions,
    /// Where pulled modules are kept by digest.
    pub cache: Option<crate::oci::Cache>,
}

impl AdminOptions {
    /// Whether the admin API can listen so: TCP needs a bearer token, and a token must be one
    /// [`check_token`] accepts.
    pub fn check(&self) -> Result<(), ListenError> {
        if let Endpoint::Tcp(addr) = &self.endpoint
            && self.token.is_none()
            && self.named_tokens.is_empty()
        {
            let addr = addr.clone();
            return Err(ListenError::NoToken { addr });
        }
        if self.token.is_some() && !self.named_tokens.is_empty() {
            return Err(ListenError::Token(TokenError::OneAndNamed));
        }
        for token in self
            .token
            .iter()
            .chain(self.named_tokens.iter().map(|(_, t)| t))
        {
            check_token(token)?;
        }
        Ok(())
    }

    /// Defaults for `endpoint`: 32 requests served at once, 16 anonymous connections per
    /// peer and 256 in all, 16 KiB heads within 5 s, [`MAX_BODY`] bodies, 10 s between reads
    /// and 120 s for a whole request.
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Self {
        AdminOptions {
            endpoint,
            token,
            named_tokens: Vec::new(),
            audit: Arc::new(AuditLog::log_only()),
            max_connections: 32,
            max_anonymous_per_peer: 16,
            max_anonymous: 256,
            limits: RequestLimits {
                max_head: 16 << 10,
                max_body: MAX_BODY,
                head: Duration::from_secs(5),
                idle: Duration::from_secs(10),
                total: Duration::from_secs(120),
            },
            registry: crate::oci::RegistryOptions::default(),
            cache: None,
        }
    }
}

/// A bearer token that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Fewer than [`MIN_TOKEN_LEN`] bytes.
    #[error(
        "the admin token is {0} bytes: a token must be at least 16 bytes (for example `head -c 32 /dev/urandom | base64`)"
    )]
    TooShort(usize),
    /// Not one word of printable characters.
    #[error("a token is one word of printable characters")]
    NotOneWord,
    /// Empty.
    #[error("the token is empty")]
    Empty,
    /// An unnamed token beside named ones: a request's record could not say which it carried.
    #[error("an unnamed token beside named ones: give every token a name")]
    OneAndNamed,
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("reading {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A token file others can read.
    #[error(
        "{}: the token file is open to its group or others (mode {mode:o}): make it private with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Readable {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A token file of more than one token.
    #[error("{}: a token file holds one token, not {len} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The file's token is refused.
    #[error("{}: {token}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// Why the token is refused.
        token: TokenError,
    },
    /// A line of a file of named tokens is refused.
    #[error("{}, line {line}: {problem}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        problem: String,
    },
}

/// The tokens of the gateway's own token file: one token alone, or named ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTokens {
    /// The file holds one token.
    One(String),
    /// The file holds `NAME TOKEN` lines.
    Named(Vec<(String, String)>),
}

/// The most named tokens a token file may hold.
pub const MAX_NAMED_TOKENS: usize = 256;

/// Reads the gateway's token file: one token, as [`read_token_file`] reads, or lines of
/// `NAME TOKEN` (a name of letters, digits, `.`, `_` and `-`, at most 64 bytes; each token as
/// [`check_token`] wants it; blank lines and `#` comments skipped; at most
/// [`MAX_NAMED_TOKENS`], in at most 64 KiB). A request's audit record names the token it
/// carried.
pub fn read_server_tokens(path: &Path) -> Result<ServerTokens, TokenFileError> {
    let text = read_private(path, 64 << 10)?;
    let lines: Vec<(usize, &str)> = (1..)
        .zip(text.lines().map(str::trim))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if let [(_, only)] = lines[..]
        && !only.contains(char::is_whitespace)
    {
        check_token(only).map_err(|token| TokenFileError::Token {
            path: path.to_owned(),
            token,
        })?;
        return Ok(ServerTokens::One(only.to_owned()));
    }
    let bad = |line: usize, problem: String| TokenFileError::Line {
        path: path.to_owned(),
        line,
        problem,
    };
    if lines.len() > MAX_NAMED_TOKENS {
        return Err(bad(
            lines[MAX_NAMED_TOKENS].0,
            format!("more than {MAX_NAMED_TOKENS} tokens"),
        ));
    }
    let mut named: Vec<(String, String)> = Vec::with_capacity(lines.len());
    for (at, line) in lines {
        let mut words = line.split_whitespace();
        let (Some(name), Some(token), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad(at, "not `NAME TOKEN`".into()));
        };
        let name_ok = name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            return Err(bad(
                at,
                format!(
                    "`{name}` is not a token's name: letters, digits, `.`, `_`, `-`, at most 64 bytes"
                ),
            ));
        }
        check_token(token).map_err(|e| bad(at, format!("the token of `{name}`: {e}")))?;
        if named.iter().any(|(n, t)| n == name || t == token) {
            return Err(bad(at, format!("`{name}` or its token is named twice")));
        }
        named.push((name.to_owned(), token.to_owned()));
    }
    Ok(ServerTokens::Named(named))
}

/// The text of a file only its owner can read, of at most `most` bytes.
fn read_private(path: &Path, most: u64) -> Result<String, TokenFileError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let read = |error| TokenFileError::Read {
        path: path.to_owned(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        let path = path.to_owned();
        return Err(TokenFileError::Readable { path, mode });
    }
    if meta.len() > most {
        let (path, len) = (path.to_owned(), meta.len());
        return Err(TokenFileError::TooLarge { path, len });
    }
    let mut text = String::new();
    file.take(most + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    Ok(text)
}

/// Why the admin API did not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A TCP listener without a bearer token: anyone who can reach the address could change
    /// the policy.
    #[error("the admin API on TCP ({addr}) needs a bearer token (or a Unix socket instead)")]
    NoToken {
        /// The TCP address asked for.
        addr: String,
    },
    /// The token given is refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The endpoint could not be listened on (a Unix socket another gateway answers on, an
    /// address in use, ...).
    #[error("admin API on {endpoint}: {error}")]
    Listen {
        /// Where.
        endpoint: Endpoint,
        /// Why.
        error: std::io::Error,
    },
    /// The admin API's runtime or thread could not be made.
    #[error("the admin API's {what}: {error}")]
    Start {
        /// `runtime` or `thread`.
        what: &'static str,
        /// Why.
        error: std::io::Error,
    },
}

/// Checks a bearer token: one word of printable characters, at least [`MIN_TOKEN_LEN`] bytes.
pub fn check_token(token: &str) -> Result<(), TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    if token.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(TokenError::NotOneWord);
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError::TooShort(token.len()));
    }
    Ok(())
}

/// Reads a bearer token from `path`: the file's text, trimmed. As ssh does with keys, a file
/// that its group or others can read is refused, and so is a token [`check_token`] refuses.
pub fn read_token_file(path: &Path) -> Result<String, TokenFileError> {
    let text = read_private(path, 4096)?;
    let token = text.trim();
    check_token(token).map_err(|token| TokenFileError::Token {
        path: path.to_owned(),
        token,
    })?;
    Ok(token.to_owned())
}

struct Shared {
    gateway: Arc<Gateway>,
    registry: crate::oci::Registry,
    cache: Option<crate::oci::Cache>,
    /// The tokens' digests, with their names: empty when requests need none.
    tokens: Vec<(Option<String>, [u8; 32])>,
    audit: Arc<AuditLog>,
    limits: RequestLimits,
    gate: Arc<Gate>,
}

/// The admin API: a thread running a small current-thread runtime that serves every
/// connection; swaps and pulls, which block, run on its blocking threads.
pub struct AdminServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    endpoint: Endpoint,
}

impl AdminServer {
    /// Listens as `options` say and serves requests for `gateway`. What
    /// [`AdminOptions::check`] refuses is refused; TCP beyond loopback is allowed, with a
    /// warning.
    pub fn start(gateway: Arc<Gateway>, options: AdminOptions) -> Result<AdminServer, ListenError> {
        options.check()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("flowgate-admin-work")
            .max_blocking_threads(options.max_connections.max(1))
            .build()
            .map_err(|error| ListenError::Start {
                what: "runtime",
                error,
            })?;
        let listen = |endpoint: &Endpoint| {
            let endpoint = endpoint.clone();
            move |error| ListenError::Listen { endpoint, error }
        };
        let mut listener = Listener::bind(&options.endpoint).map_err(listen(&options.endpoint))?;
        if let Some(addr) = listener.tcp_addr()
            && !addr.ip().is_loopback()
        {
            tracing::warn!(
                %addr,
                "the admin API listens beyond loopback: anyone who can reach it with the token can change the policy"
            );
        }
        let endpoint = listener.endpoint().clone();
        let accepting = {
            let _entered = runtime.enter();
            listener.take_tokio().map_err(listen(&endpoint))?
        };
        // The gateway's own changes go on the same audit trail as the operators'.
        let audit = options.audit.clone();
        gateway.record_own_changes(Arc::new(move |what, before, change| {
            audit
                .record_own(what, before, change)
                .map_err(|e| e.to_string())
        }));
        let shared = Arc::new(Shared {
            gateway,
            registry: crate::oci::Registry::new(options.registry.clone()),
            cache: options.cache.clone(),
            tokens: (options.token.iter().map(|t| (None, digest(t))))
                .chain(
                    (options.named_tokens.iter()).map(|(name, t)| (Some(name.clone()), digest(t))),
                )
                .collect(),
            audit: options.audit.clone(),
            limits: options.limits,
            gate: Arc::new(Gate::new(GateLimits {
                anonymous_per_peer: options.max_anonymous_per_peer,
                anonymous: options.max_anonymous,
                authenticated: options.max_connections,
                grace: ANONYMOUS_GRACE,
            })),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("flowgate-admin".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let accept = tokio::spawn(accept_loop(accepting, shared));
                    let _ = stopped.await;
                    accept.abort();
                });
                // Connections in flight are dropped; a swap under way finishes on its own.
                runtime.shutdown_timeout(Duration::from_secs(1));
                drop(listener);
            })
            .map_err(|error| ListenError::Start {
                what: "thread",
                error,
            })?;
        Ok(AdminServer {
            stop: Some(stop),
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
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
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

/// Which of the tokens an `Authorization` value carries (the scheme `Bearer` in any case,
/// RFC 9110, 11.1, then the token): its name (`None` for an unnamed one), or `None` for none.
/// Every token is compared, in constant time.
fn authorized<'a>(
    value: Option<&str>,
    tokens: &'a [(Option<String>, [u8; 32])],
) -> Option<&'a Option<String>> {
    let (scheme, token) = value.and_then(|v| v.trim().split_once(' '))?;
    let presented = digest(token.trim());
    let bearer = scheme.eq_ignore_ascii_case("bearer");
    let mut found = None;
    for (name, expected) in tokens {
        if same(&presented, expected) {
            found = Some(name);
        }
    }
    found.filter(|_| bearer)
}

async fn accept_loop(listener: TokioListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer, caller) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!(error = %e, "admin API: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The socket is the gateway's user's (0600); a peer of another user (root aside)
        // can only have come in through a mistake elsewhere, and is served nothing.
        if let gate::Peer::Unknown = peer {
            shared.gateway.note_admin_refusal(AdminRefusal::ForeignUser);
            continue;
        }
        if let gate::Peer::Uid(uid) = peer
            && uid != 0
            && uid != nix::unistd::geteuid().as_raw()
        {
            tracing::warn!(
                uid,
                "admin API: a connection from another user on the socket is refused"
            );
            shared.gateway.note_admin_refusal(AdminRefusal::ForeignUser);
            continue;
        }
        let ticket = shared.gate.ticket();
        let id = ticket.id();
        let task = tokio::spawn(serve_connection(shared.clone(), stream, caller, ticket));
        // The task has not run yet (one thread): it is held before it can authenticate.
        let evicted = shared.gate.admit(id, peer, task.abort_handle());
        if evicted > 0 {
            tracing::debug!(
                evicted,
                ?peer,
                "admin API: anonymous connections let go to make room for a new one"
            );
        }
        for _ in 0..evicted {
            shared.gateway.note_admin_refusal(AdminRefusal::Evicted);
        }
        // Let the connections already accepted read their heads before the next one comes.
        tokio::task::yield_now().await;
    }
}

fn json_response(status: u16, body: Value) -> Response {
    Response {
        status,
        headers: vec![("Content-Type", "application/json".into())],
        body: format!("{body}\n").into_bytes(),
    }
}

fn refuse(shared: &Shared, status: u16, reason: AdminRefusal, message: String) -> Response {
    shared.gateway.note_admin_refusal(reason);
    let mut response = json_response(status, json!({"error": message}));
    if status == 401 {
        response
            .headers
            .push(("WWW-Authenticate", "Bearer realm=\"flowgate\"".into()));
    }
    response
}

/// Serves the one request of a connection. A head that hyper refused (400, 431), or that did
/// not arrive within the head deadline, is counted here; everything after the head is
/// counted where it is refused.
async fn serve_connection(
    shared: Arc<Shared>,
    stream: TokioStream,
    caller: Caller,
    ticket: Ticket,
) {
    let started = Instant::now();
    let limits = shared.limits;
    let ticket = Arc::new(ticket);
    let reached = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head)
        .max_buf_size(limits.max_head.max(8192))
        .keep_alive(false)
        .half_close(true)
        .auto_date_header(false);
    let answered = Arc::new(tokio::sync::Notify::new());
    let service = {
        let (shared, ticket, reached) = (shared.clone(), ticket.clone(), reached.clone());
        let answered = answered.clone();
        hyper::service::service_fn(move |request| {
            reached.store(true, std::sync::atomic::Ordering::Release);
            let (shared, ticket, answered) = (shared.clone(), ticket.clone(), answered.clone());
            let caller = caller.clone();
            async move {
                let response = answer(&shared, &ticket, caller, request, started).await;
                answered.notify_one();
                Ok::<_, std::convert::Infallible>(response.into_hyper())
            }
        })
    };
    // An answer the client does not read holds its place for `total` at the most.
    let served = match stream {
        TokioStream::Tcp(s) => {
            let conn = builder.serve_connection(TokioIo::new(s), service);
            until_written(conn, &answered, limits.total).await
        }
        TokioStream::Unix(s) => {
            let conn = builder.serve_connection(TokioIo::new(s), service);
            until_written(conn, &answered, limits.total).await
        }
    };
    let Some(served) = served else {
        shared.gateway.note_admin_refusal(AdminRefusal::Timeout);
        tracing::debug!("admin API: an answer not read in time, its connection let go");
        return;
    };
    if let Err(e) = served
        && !reached.load(std::sync::atomic::Ordering::Acquire)
    {
        let reason = if e.is_timeout() {
            AdminRefusal::HeadTimeout
        } else if e.is_parse_too_large() {
            AdminRefusal::HeadTooLarge
        } else {
            AdminRefusal::BadRequest
        };
        tracing::debug!(error = %e, %reason, "admin API: a request head refused");
        shared.gateway.note_admin_refusal(reason);
    }
}

/// Runs `conn` until it ends, or until `limit` has passed since `answered` was notified (the
/// answer was made, and is being written): `None` then.
async fn until_written<F: std::future::Future>(
    conn: F,
    answered: &tokio::sync::Notify,
    limit: Duration,
) -> Option<F::Output> {
    let mut conn = std::pin::pin!(conn);
    let mut deadline = std::pin::pin!(async {
        answered.notified().await;
        tokio::time::sleep(limit).await;
    });
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(out) = conn.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(out));
        }
        deadline.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// The answer to one request: the token first, then the cap on requests served, then the
/// body, and only then the gateway.
async fn answer(
    shared: &Arc<Shared>,
    ticket: &Ticket,
    mut caller: Caller,
    request: hyper::Request<hyper::body::Incoming>,
    started: Instant,
) -> Response {
    let (head, mut body) = request.into_parts();
    let mut request = Request::from_head(&head);
    // A client that waits for `100 Continue` sends no body after a refusal: nothing to drain.
    let waits = request
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
    let refused = |response: Response, body| {
        if !waits {
            tokio::spawn(http::drain(body, DRAIN));
        }
        response
    };
    if !shared.tokens.is_empty() {
        let Some(name) = authorized(request.header("authorization"), &shared.tokens) else {
            let response = refuse(
                shared,
                401,
                AdminRefusal::Unauthorized,
                "this admin API needs `Authorization: Bearer <token>` with the gateway's token"
                    .into(),
            );
            return refused(response, body);
        };
        let (Caller::Tcp { token, .. } | Caller::Socket { token, .. }) = &mut caller;
        token.clone_from(name);
    }
    request.caller = Some(caller);
    if !ticket.authenticate() {
        let response = refuse(
            shared,
            503,
            AdminRefusal::TooManyConnections,
            "the admin API is serving as many requests as it takes at once; try again".into(),
        );
        return refused(response, body);
    }
    let limits = shared.limits;
    if let Some(declared) = hyper::body::Body::size_hint(&body).exact()
        && declared > limits.max_body
    {
        let message = format!(
            "the body is {declared} bytes, over the limit of {} bytes",
            limits.max_body
        );
        return refused(
            refuse(shared, 413, AdminRefusal::BodyTooLarge, message),
            body,
        );
    }
    match http::read_body(&mut body, &limits, started + limits.total).await {
        Err(e) => return refuse(shared, e.status, e.reason, e.message),
        Ok(bytes) => request.body = bytes,
    }
    let work = shared.clone();
    match tokio::task::spawn_blocking(move || route(&work, request)).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "admin API: a request's handler failed");
            json_response(
                500,
                json!({"error": "the request failed inside the gateway"}),
            )
        }
    }
}

fn with_release_headers(mut response: Response, release: &Release, content_type: &str) -> Response {
    response.headers = vec![
        ("Content-Type", content_type.to_owned()),
        ("X-Generation", release.generation.to_string()),
        ("ETag", format!("\"{}\"", release.etag())),
    ];
    response
}

/// What answers one endpoint.
type Handler = fn(&Shared, Request) -> Response;

/// One endpoint of the admin API: how it is asked for, what it does and answers (the module
/// documentation's table says the same, row for row), and its handler.
pub struct Route {
    /// The HTTP method.
    pub method: &'static str,
    /// The path.
    pub path: &'static str,
    /// What it does.
    pub does: &'static str,
    /// What it answers.
    pub answers: &'static str,
    handler: Handler,
}

/// What a swap answers.
const SWAP_ANSWERS: &str =
    "200 with the new release; 412 stale `If-Match`; 422 refused, with `reason` and `error`";
/// What staging a shadow answers.
const STAGE_ANSWERS: &str =
    "200 with the shadow; 412 stale `If-Match`; 422 refused, with `reason` and `error`";
/// What a change to the tag watch answers.
const WATCH_ANSWERS: &str = "200 with the watch; 409 when the gateway watches no tag; 422 (`audit-failed`) when the action could not be recorded";

/// Every endpoint of the admin API, in one place: a new endpoint is a row here and its
/// handler. Routing, the 404 and 405 answers and the module documentation's table come from
/// it: a known path asked with another method is answered 405 (with `Allow`), any other path
/// 404 naming the paths there are.
const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/status",
        does: "the release being served (module name, version, sha256, WIT version, config sha256, generation, ETag, cause, origin), uptime, workers, counters, event counts",
        answers: "200, JSON",
        handler: get_status,
    },
    Route {
        method: "GET",
        path: "/metrics",
        does: "Prometheus text format",
        answers: "200",
        handler: get_metrics,
    },
    Route {
        method: "GET",
        path: "/module",
        does: "the module in force, with `X-Generation` and `ETag` headers: what `flowgate swap --dry-run` compares against",
        answers: "200",
        handler: get_module,
    },
    Route {
        method: "GET",
        path: "/config",
        does: "the configuration in force, with `X-Generation` and `ETag` headers",
        answers: "200",
        handler: get_config,
    },
    Route {
        method: "PUT",
        path: "/module",
        does: "swaps in the component in the body, or the one an `oci://` reference in the body names (`Content-Type: application/vnd.flowgate.module-reference`); with `X-Config-Length: N`, the body's last N bytes are a configuration swapped in with it",
        answers: SWAP_ANSWERS,
        handler: put_module,
    },
    Route {
        method: "PUT",
        path: "/config",
        does: "swaps in the configuration in the body (YAML or JSON)",
        answers: SWAP_ANSWERS,
        handler: put_config,
    },
    Route {
        method: "POST",
        path: "/rollback",
        does: "goes back to the previous good release",
        answers: "200 with the release; 412 stale `If-Match`; 409 when there is none",
        handler: post_rollback,
    },
    Route {
        method: "POST",
        path: "/watch/resume",
        does: "the tag watch follows its tag again",
        answers: WATCH_ANSWERS,
        handler: post_watch_resume,
    },
    Route {
        method: "POST",
        path: "/watch/pause",
        does: "the tag watch stops following its tag until resumed",
        answers: WATCH_ANSWERS,
        handler: post_watch_pause,
    },
    Route {
        method: "GET",
        path: "/shadow",
        does: "the staged shadow release, the live ETag it is compared against and its report (packets compared, live by shadow outcomes, changed destinations, top VPC pairs, samples)",
        answers: "200, JSON; 404 with `discarded` (how and why the last one ended) when none is staged",
        handler: get_shadow,
    },
    Route {
        method: "PUT",
        path: "/shadow/module",
        does: "stages a shadow: the live release with the module in the body (or the one an `oci://` reference names, `X-Config-Length` and `X-Module-Signature` as for `PUT /module`), prepared and checked as a swap is, judged on copies of live batches and never published",
        answers: STAGE_ANSWERS,
        handler: put_shadow_module,
    },
    Route {
        method: "PUT",
        path: "/shadow/config",
        does: "stages a shadow: the live release with the configuration in the body",
        answers: STAGE_ANSWERS,
        handler: put_shadow_config,
    },
    Route {
        method: "POST",
        path: "/shadow/promote",
        does: "publishes exactly the staged shadow, with `If-Match` naming it, while the live release is still the one it was compared against (cause `shadow-promote`)",
        answers: "200 with the release; 412 stale or missing `If-Match`, or live release changed; 409 when none is staged; 422 (`audit-failed`)",
        handler: post_shadow_promote,
    },
    Route {
        method: "DELETE",
        path: "/shadow",
        does: "discards the staged shadow (with `If-Match`, only the shadow it names)",
        answers: "200 with its last report; 412 when `If-Match` names another; 409 when none is staged; 422 (`audit-failed`)",
        handler: delete_shadow,
    },
];

/// Every endpoint of the admin API, in the order of the documentation's table.
pub fn routes() -> &'static [Route] {
    ROUTES
}

fn route(shared: &Shared, request: Request) -> Response {
    let path = request.path.as_str();
    if let Some(route) = ROUTES
        .iter()
        .find(|r| r.method == request.method && r.path == path)
    {
        return (route.handler)(shared, request);
    }
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.method)
        .collect();
    if !allowed.is_empty() {
        let allowed = allowed.join(", ");
        let mut response = json_response(
            405,
            json!({"error": format!("{} {path}: method not allowed (allowed: {allowed})", request.method)}),
        );
        response.headers.push(("Allow", allowed));
        return response;
    }
    let mut paths: Vec<&str> = Vec::new();
    for r in ROUTES {
        if !paths.contains(&r.path) {
            paths.push(r.path);
        }
    }
    json_response(
        404,
        json!({"error": format!("no such endpoint: {}", paths.join(", "))}),
    )
}

fn get_status(shared: &Shared, _: Request) -> Response {
    let gateway = &shared.gateway;
    let release = gateway.current();
    with_release_headers(
        json_response(200, status(gateway)),
        &release,
        "application/json",
    )
}

fn get_metrics(shared: &Shared, _: Request) -> Response {
    Response {
        status: 200,
        headers: vec![("Content-Type", "text/plain; version=0.0.4".into())],
        body: metrics::render(&shared.gateway).into_bytes(),
    }
}

/// The module in force, for `flowgate swap --dry-run`; its generation and ETag in headers, so
/// a client can swap with If-Match against exactly what it compared.
fn get_module(shared: &Shared, _: Request) -> Response {
    let release = shared.gateway.current();
    let response = Response {
        status: 200,
        headers: Vec::new(),
        body: release.module.bytes().to_vec(),
    };
    with_release_headers(response, &release, "application/wasm")
}

/// The configuration in force, as [`get_module`].
fn get_config(shared: &Shared, _: Request) -> Response {
    let release = shared.gateway.current();
    let response = Response {
        status: 200,
        headers: Vec::new(),
        body: release.config.as_bytes().to_vec(),
    };
    with_release_headers(response, &release, "application/yaml")
}

/// `PUT /module`: a module, or a reference to pull, with a configuration when
/// `X-Config-Length` says so.
fn put_module(shared: &Shared, request: Request) -> Response {
    module_change(shared, request, Target::Live)
}

/// `PUT /shadow/module`: as `PUT /module`, staged as the shadow.
fn put_shadow_module(shared: &Shared, request: Request) -> Response {
    module_change(shared, request, Target::Shadow)
}

/// `PUT /shadow/config`: as `PUT /config`, staged as the shadow.
fn put_shadow_config(shared: &Shared, request: Request) -> Response {
    match config_text(&request.body) {
        Ok(config) => change(shared, &request, None, Some(config), Target::Shadow).0,
        Err(response) => refused_early(shared, &request, response),
    }
}

/// A module change for `target`: the module in the body or the one its reference names.
fn module_change(shared: &Shared, request: Request, target: Target) -> Response {
    let (head, config) = match split_config(&request) {
        Ok(parts) => parts,
        Err(response) => return refused_early(shared, &request, response),
    };
    let by_reference = request
        .header("content-type")
        .is_some_and(|t| t.eq_ignore_ascii_case(REFERENCE_TYPE));
    let gateway = &shared.gateway;
    if !by_reference {
        let signer = match upload_signer(shared, &request, head) {
            Ok(signer) => signer,
            Err(e) => return refused_signature(shared, &request, e),
        };
        let module = ModuleBytes::from(head).signed(signer.as_ref());
        return change(shared, &request, Some(module), config, target).0;
    }
    // A reference instead of a module: the gateway pulls it itself, verified.
    let (module, asked, digest, signer) = match pull(shared, head) {
        Ok(pulled) => pulled,
        Err(PullFailed {
            signature: Some(e), ..
        }) => {
            gateway.note_pull(Pull::Refused);
            return refused_signature(shared, &request, *e);
        }
        Err(e) => {
            gateway.note_pull(Pull::Failed);
            record_refusal(shared, &request, "pull-failed", &e.error);
            let mut body = json!({"swapped": false, "reason": "pull-failed", "error": e.error});
            if let Some(setting) = e.setting {
                body["setting"] = json!(setting.as_str());
            }
            return json_response(422, body);
        }
    };
    // A client that checked the reference's signatures itself names the digest it checked:
    // a tag that has moved since is refused, not pulled anew.
    if let Some(expected) = request.header(&MANIFEST_HEADER.to_ascii_lowercase())
        && expected.trim() != digest.to_string()
    {
        gateway.note_pull(Pull::Refused);
        let error = format!(
            "{asked} now names {digest}, not {} (the digest the client checked, in {MANIFEST_HEADER}): nothing was swapped",
            expected.trim()
        );
        record_refusal(shared, &request, "reference-moved", &error);
        return json_response(
            412,
            json!({"swapped": false, "reason": "reference-moved", "error": error}),
        );
    }
    let module = ModuleBytes::pulled(&module, &asked, digest).signed(signer.as_ref());
    let (response, made) = change(shared, &request, Some(module), config, target);
    match (made, target) {
        (true, Target::Live) => gateway.note_pull(Pull::Swapped),
        (true, Target::Shadow) => {}
        (false, _) => gateway.note_pull(Pull::Refused),
    }
    response
}

/// The header of a `PUT /module` upload that carries the module's detached signature: the
/// signature file (`flowgate sign --detached`) in standard base64.
pub const SIGNATURE_HEADER: &str = "X-Module-Signature";

/// The header of a `PUT /module` reference naming the manifest digest it must resolve to
/// (`sha256:...`): the one a client checked the signatures of. Another one is refused (412).
pub const MANIFEST_HEADER: &str = "X-Manifest-Digest";

/// The largest detached signature file an upload carries in its header (the admin API takes
/// 16 KiB of headers; one is about 700 bytes).
pub const MAX_UPLOAD_SIGNATURE: usize = 8 << 10;

/// The signer of an uploaded module, from its detached signature when the gateway has keys
/// to check it with; `None` when it has none, or the upload came without one (the gateway
/// then refuses it unless unsigned local modules are let in).
fn upload_signer(
    shared: &Shared,
    request: &Request,
    module: &[u8],
) -> Result<Option<Signer>, SignatureError> {
    use base64::Engine as _;
    let (Some(trust), Some(text)) = (
        &shared.gateway.options().trust,
        request.header(&SIGNATURE_HEADER.to_ascii_lowercase()),
    ) else {
        return Ok(None);
    };
    // A header that is not base64 is checked as a file that is not the detached format.
    let file = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap_or_else(|_| text.as_bytes().to_vec());
    trust
        .verify_detached("the uploaded module", module, SIGNATURE_HEADER, Some(&file))
        .map(Some)
}

/// A module refused for its signatures: counted and logged by the gateway, recorded, and
/// answered 422 with the check's result.
fn refused_signature(shared: &Shared, request: &Request, e: SignatureError) -> Response {
    let check = e.check();
    let e = shared.gateway.refuse_signature("swap", e);
    record_refusal(shared, request, e.reason().as_str(), &e.to_string());
    json_response(
        422,
        json!({
            "swapped": false,
            "reason": e.reason().as_str(),
            "signature": check.as_str(),
            "error": e.to_string(),
        }),
    )
}

/// `PUT /config`: the configuration in the body.
fn put_config(shared: &Shared, request: Request) -> Response {
    match config_text(&request.body) {
        Ok(config) => change(shared, &request, None, Some(config), Target::Live).0,
        Err(response) => refused_early(shared, &request, response),
    }
}

/// A change request refused before the gateway was asked (its body cannot be read as one),
/// recorded as `bad-request`.
fn refused_early(shared: &Shared, request: &Request, response: Response) -> Response {
    let error = String::from_utf8_lossy(&response.body);
    record_refusal(shared, request, "bad-request", error.trim());
    response
}

/// A `PUT /module` body split where `X-Config-Length` says: the module (or reference), and
/// the configuration when there is one. 400 when the length is not one within the body, or
/// the configuration is not text.
fn split_config(request: &Request) -> Result<(&[u8], Option<&str>), Response> {
    let body = request.body.as_slice();
    let config_len = match request.header("x-config-length").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) if n <= body.len() => n,
        Some(_) => {
            return Err(json_response(
                400,
                json!({"error": "X-Config-Length is not a length within the body"}),
            ));
        }
    };
    let (head, config) = body.split_at(body.len() - config_len);
    let config = (config_len > 0).then_some(config).map(config_text);
    Ok((head, config.transpose()?))
}

/// A configuration as text; 400 when it is not UTF-8.
fn config_text(config: &[u8]) -> Result<&str, Response> {
    std::str::from_utf8(config)
        .map_err(|_| json_response(400, json!({"error": "the configuration is not UTF-8 text"})))
}

/// Where a change goes: live (a swap), or into the shadow slot (staged, not published).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Live,
    Shadow,
}

/// Swaps in (or stages as the shadow) what a request brings, against the release its
/// `If-Match` names: made only once its audit record is written; a refusal is recorded too.
/// The answer, and whether the change was made.
fn change(
    shared: &Shared,
    request: &Request,
    module: Option<ModuleBytes<'_>>,
    config: Option<&str>,
    target: Target,
) -> (Response, bool) {
    let record = |before: &Release, after: &Release| record_release(shared, request, before, after);
    let swap = SwapRequest {
        approval: Some(Approval(&record)),
        module,
        config,
        if_match: request.header("if-match"),
    };
    let refused = |e: &SwapError| {
        record_refusal(shared, request, e.reason().as_str(), &e.to_string());
    };
    match target {
        Target::Live => {
            let result = shared.gateway.swap(swap);
            if let Err(e) = &result {
                refused(e);
            }
            let made = result.is_ok();
            (answer_swap(result), made)
        }
        Target::Shadow => match shared.gateway.stage_shadow(swap) {
            Ok(shadow) => {
                let body = json!({"staged": true, "shadow": shadow_json(shared, &shadow)});
                let mut response = json_response(200, body);
                response
                    .headers
                    .push(("ETag", format!("\"{}\"", shadow.etag())));
                (response, true)
            }
            Err(e) => {
                refused(&e);
                let mut response = answer_swap(Err(e));
                if let Ok(mut body) = serde_json::from_slice::<Value>(&response.body) {
                    body["staged"] = json!(false);
                    response.body = format!("{body}\n").into_bytes();
                }
                (response, false)
            }
        },
    }
}

/// The audit record of a change about to be made (the swap lock held), from what served (or
/// the watch's state) `before` to `after`: its failure refuses the change.
fn record_change(
    shared: &Shared,
    request: &Request,
    before: Value,
    after: Value,
) -> Result<(), String> {
    let asked = format!("{} {}", request.method, request.path);
    let caller = request.caller.as_ref();
    (shared.audit)
        .record(caller, &asked, (before, Some(after)), "changed", None)
        .map_err(|e| e.to_string())
}

/// [`record_change`] of a release replacing another.
fn record_release(
    shared: &Shared,
    request: &Request,
    before: &Release,
    after: &Release,
) -> Result<(), String> {
    let json = audit::release_json;
    record_change(shared, request, json(before), json(after))
}

/// The audit record of a refused request: nothing changed, so a record that cannot be written
/// is only logged.
fn record_refusal(shared: &Shared, request: &Request, reason: &str, error: &str) {
    let before = audit::release_json(&shared.gateway.current());
    record_after(shared, request, before, reason, Some(error));
}

/// The audit record of a request that changed nothing, with what serves (or the watch's
/// state) as `before`: one that cannot be written is only logged.
fn record_after(
    shared: &Shared,
    request: &Request,
    before: Value,
    result: &str,
    error: Option<&str>,
) {
    let asked = format!("{} {}", request.method, request.path);
    let caller = request.caller.as_ref();
    if let Err(e) = (shared.audit).record(caller, &asked, (before, None), result, error) {
        tracing::error!(error = %e, "the audit record of a request that changed nothing could not be written");
    }
}

fn post_rollback(shared: &Shared, request: Request) -> Response {
    let record =
        |before: &Release, after: &Release| record_release(shared, &request, before, after);
    let if_match = request.header("if-match");
    let result = (shared.gateway).rollback_approved(if_match, Some(Approval(&record)));
    if let Err(e) = &result {
        record_refusal(shared, &request, e.reason().as_str(), &e.to_string());
    }
    answer_swap(result)
}

/// The content type of a `PUT /module` whose body is an `oci://` reference, not a module.
pub const REFERENCE_TYPE: &str = "application/vnd.flowgate.module-reference";

/// Pulls the module a reference names (the body of a reference swap): the module, the
/// reference as asked, and the manifest's digest it resolved to.
/// Why a `PUT /module` reference could not be pulled: the words of the answer, and the
/// gateway's setting that refused it, if one did (the module's size, plain HTTP, a login).
/// The module's signatures, when they were what refused it.
struct PullFailed {
    error: String,
    setting: Option<Setting>,
    signature: Option<Box<SignatureError>>,
}

impl From<String> for PullFailed {
    fn from(error: String) -> Self {
        PullFailed {
            error,
            setting: None,
            signature: None,
        }
    }
}

type PulledModule = (
    Vec<u8>,
    crate::oci::Reference,
    crate::oci::Digest,
    Option<Signer>,
);

fn pull(shared: &Shared, body: &[u8]) -> Result<PulledModule, PullFailed> {
    let text = std::str::from_utf8(body)
        .map_err(|_| "the reference is not UTF-8 text".to_owned())?
        .trim();
    let reference = crate::oci::Reference::parse(text).map_err(|e| e.to_string())?;
    // A digest names the same bytes in the cache as in the registry; a tag's last digest in
    // the cache is only what it was: an operator naming a tag gets what it names now, or an
    // error.
    let cache = shared.cache.as_ref().filter(|_| reference.digest.is_some());
    if let Some(trust) = &shared.gateway.options().trust {
        return match trust.pull(&shared.registry, &reference, cache) {
            Ok((pulled, signer, _)) => {
                Ok((pulled.module, reference, pulled.manifest, Some(signer)))
            }
            Err(PullError::Signature(e)) if !e.is_registry() => Err(PullFailed {
                error: e.to_string(),
                setting: e.setting(),
                signature: Some(Box::new(e)),
            }),
            Err(e) => Err(PullFailed {
                error: e.to_string(),
                setting: e.setting(),
                signature: None,
            }),
        };
    }
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
    .map_err(|e| PullFailed {
        error: e.to_string(),
        setting: e.setting(),
        signature: None,
    })?;
    Ok((pulled.module, reference, pulled.manifest, None))
}

fn post_watch_resume(shared: &Shared, request: Request) -> Response {
    watch_action(shared, &request, |approval| {
        shared.gateway.resume_watch_approved(Some(approval))
    })
}

fn post_watch_pause(shared: &Shared, request: Request) -> Response {
    watch_action(shared, &request, |approval| {
        (shared.gateway).pause_watch_approved("POST /watch/pause", Some(approval))
    })
}

fn answer_watch(result: Result<WatchStatus, WatchError>) -> Response {
    match result {
        Ok(watch) => json_response(200, json!({"watch": watch_json(&watch)})),
        Err(e @ WatchError::NotRecorded(_)) => json_response(
            422,
            json!({"reason": watch_refusal(&e), "error": e.to_string()}),
        ),
        Err(e) => json_response(409, json!({"error": e.to_string()})),
    }
}

/// The reason a record gives a refused watch action.
fn watch_refusal(e: &WatchError) -> &'static str {
    match e {
        WatchError::NotRecorded(_) => "audit-failed",
        _ => "watch-refused",
    }
}

/// A watch action, recorded: by the gateway's approval when it changes the watch (and
/// refused when that record cannot be written), else here, after it.
fn watch_action(
    shared: &Shared,
    request: &Request,
    act: impl FnOnce(WatchApproval<'_>) -> Result<WatchStatus, WatchError>,
) -> Response {
    let recorded = std::cell::Cell::new(false);
    let record = |before: &WatchStatus, after: &WatchStatus| {
        recorded.set(true);
        record_change(shared, request, watch_json(before), watch_json(after))
    };
    let result = act(&record);
    if !recorded.get() {
        let (reason, error) = match &result {
            Ok(_) => ("unchanged", None),
            Err(e) => (watch_refusal(e), Some(e.to_string())),
        };
        let state = shared.gateway.watch_status().as_ref().map(watch_json);
        let state = state.unwrap_or(Value::Null);
        record_after(shared, request, state, reason, error.as_deref());
    }
    answer_watch(result)
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
            let mut body =
                json!({"swapped": false, "reason": e.reason().as_str(), "error": e.to_string()});
            // The gateway's setting that refused it (its size limit, memory cap, configure
            // time), for the operator who may raise it.
            if let Some(setting) = e.setting() {
                body["setting"] = json!(setting.as_str());
            }
            json_response(status, body)
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
            "signer": release.signer.as_ref().map(audit::signer_json),
        },
        "config_sha256": release.config_digest,
        "vpcs": release.catalog.vpcs.len(),
        "peerings": release.peerings,
        "prepared": {
            "configured": release.prepared.configured,
            "adopted": release.prepared.adopted,
            "state_bytes": release.prepared.state_bytes,
            "cpu_ms": release.prepared.cpu.as_secs_f64() * 1e3,
            "configure_ms": release.prepared.configure.as_secs_f64() * 1e3,
            "wall_ms": release.prepared.wall.as_secs_f64() * 1e3,
        },
        "shadow": release.shadow.as_ref().map(|t| json!({
            "base_etag": t.base_etag,
            "batches": t.batches,
            "packets": t.packets,
            "changed": t.changed,
            "dst_changed": t.dst_changed,
        })),
    })
}

/// `GET /shadow`: the staged shadow and its report; 404 with how the last one ended.
fn get_shadow(shared: &Shared, _: Request) -> Response {
    match shared.gateway.shadow() {
        Some(shadow) => {
            let mut response = json_response(200, json!({"shadow": shadow_json(shared, &shadow)}));
            response
                .headers
                .push(("ETag", format!("\"{}\"", shadow.etag())));
            response
        }
        None => {
            let gone = shared.gateway.shadow_gone();
            json_response(
                404,
                json!({
                    "error": ShadowError::None { gone: gone.clone().map(Box::new) }.to_string(),
                    "discarded": gone.as_ref().map(discarded_json),
                }),
            )
        }
    }
}

/// `POST /shadow/promote`: the staged shadow published, as `If-Match` names it.
fn post_shadow_promote(shared: &Shared, request: Request) -> Response {
    let record =
        |before: &Release, after: &Release| record_release(shared, &request, before, after);
    let result =
        (shared.gateway).promote_shadow(request.header("if-match"), Some(Approval(&record)));
    match result {
        Ok(release) => {
            let body = json!({"swapped": true, "release": release_json(&release)});
            with_release_headers(json_response(200, body), &release, "application/json")
        }
        Err(e) => shadow_refused(shared, &request, &e),
    }
}

/// `DELETE /shadow`: the staged shadow discarded, recorded first.
fn delete_shadow(shared: &Shared, request: Request) -> Response {
    let record = |shadow: &Shadow| {
        let before =
            json!({"shadow": audit::release_json(&shadow.release), "base_etag": shadow.base_etag});
        record_change(shared, &request, before, json!({"shadow": null}))
    };
    match (shared.gateway).discard_shadow(request.header("if-match"), Some(&record)) {
        Ok(shadow) => json_response(
            200,
            json!({"discarded": true, "etag": shadow.etag(), "report": report_json(&shadow.report())}),
        ),
        Err(e) => shadow_refused(shared, &request, &e),
    }
}

/// A refused shadow request: recorded, answered 409 (none staged), 412 (stale) or 422.
fn shadow_refused(shared: &Shared, request: &Request, e: &ShadowError) -> Response {
    record_refusal(shared, request, e.reason(), &e.to_string());
    let status = match e {
        ShadowError::None { .. } => 409,
        ShadowError::StaleShadow { .. }
        | ShadowError::NoIfMatch { .. }
        | ShadowError::StaleLive { .. } => 412,
        ShadowError::NotRecorded(_) | ShadowError::Faulted => 422,
    };
    json_response(
        status,
        json!({"swapped": false, "reason": e.reason(), "error": e.to_string()}),
    )
}

/// A staged shadow: its release, what it is compared against, and its report.
fn shadow_json(shared: &Shared, shadow: &Shadow) -> Value {
    json!({
        "etag": shadow.etag(),
        "base_etag": shadow.base_etag,
        "base_generation": shadow.base_generation,
        "staged_unix_ms": shadow.staged_unix_ms,
        "share": shared.gateway.options().shadow_share,
        "release": release_json(&shadow.release),
        "report": report_json(&shadow.report()),
    })
}

/// A shadow's report: the totals, the live by shadow matrix (cells with packets), the top
/// pairs and the samples.
pub fn report_json(report: &Report) -> Value {
    let mut matrix = serde_json::Map::new();
    for live in Outcome::ALL {
        let mut row = serde_json::Map::new();
        for judged in Outcome::ALL {
            let n = report.matrix[live.index()][judged.index()];
            if n > 0 {
                row.insert(judged.as_str().to_owned(), json!(n));
            }
        }
        if !row.is_empty() {
            matrix.insert(live.as_str().to_owned(), Value::Object(row));
        }
    }
    let t = &report.totals;
    json!({
        "base_etag": t.base_etag,
        "batches": t.batches,
        "packets": t.packets,
        "changed": t.changed,
        "dst_changed": t.dst_changed,
        "matrix": matrix,
        "top_pairs": report.top_pairs.iter().map(|(s, d, n)| json!({"src_vpc": s, "dst_vpc": d, "changed": n})).collect::<Vec<_>>(),
        "samples": report.samples.iter().map(|s| json!({
            "packet": s.packet, "src_vpc": s.src_vpc, "live": s.live, "shadow": s.shadow,
        })).collect::<Vec<_>>(),
    })
}

/// How a shadow ended.
fn discarded_json(gone: &Discarded) -> Value {
    json!({
        "how": gone.how.as_str(),
        "why": gone.why,
        "etag": gone.etag,
        "unix_ms": gone.unix_ms,
        "packets": gone.totals.packets,
        "changed": gone.totals.changed,
        "dst_changed": gone.totals.dst_changed,
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
    if let Some(shadow) = gateway.shadow() {
        let totals = shadow.report().totals;
        out["staged_shadow"] = json!({
            "etag": shadow.etag(),
            "base_etag": shadow.base_etag,
            "packets": totals.packets,
            "changed": totals.changed,
        });
    } else if let Some(gone) = gateway.shadow_gone() {
        out["shadow_ended"] = discarded_json(&gone);
    }
    out["counters"] = gateway.counters().to_json();
    out["events"] = events_json(gateway);
    out["batch_latency"] = json!({
        "batches": gateway.batch_latency.count(),
        "max_seconds": gateway.batch_latency.max().as_secs_f64(),
    });
    out
}

/// The gateway's own events in `/status`: swaps, refusals, rollbacks, faults, pulls.
fn events_json(gateway: &Gateway) -> Value {
    let events = gateway.events();
    json!({
        "swaps": events.swaps, "refusals": events.refusals,
        "rollbacks": events.rollbacks, "faults": events.faults,
        "revert_failures": events.revert_failures,
        "admin_refusals": events.admin_refusals,
        "pulls": events.pulls,
        "host_faults": events.host_faults,
        "signatures": events.signatures,
        "shadow_ends": events.shadow_ends,
        "shadow_faults": events.shadow_faults,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of a markdown table of requests (`| `METHOD PATH` | ... |`) in `doc`.
    fn documented(doc: &str) -> Vec<String> {
        doc.lines()
            .filter_map(|line| line.strip_prefix("//! "))
            .filter(|line| line.starts_with("| `"))
            .map(str::to_owned)
            .collect()
    }

    /// The module documentation's table is the route table: a route added, removed or changed
    /// without its documentation line fails here.
    #[test]
    fn the_documented_requests_are_the_routes() {
        let rows: Vec<String> = routes()
            .iter()
            .map(|r| format!("| `{} {}` | {} | {} |", r.method, r.path, r.does, r.answers))
            .collect();
        assert_eq!(documented(include_str!("mod.rs")), rows);
    }

    /// The requests README's admin table names (the backquoted `METHOD PATH`s of its first
    /// column), in order.
    fn readme_requests(readme: &str) -> Vec<String> {
        let mut lines = readme
            .lines()
            .skip_while(|l| !l.starts_with("| request | what it does |"))
            .skip(2);
        let mut requests = Vec::new();
        while let Some(row) = lines.next().filter(|l| l.starts_with('|')) {
            let first = row.split('|').nth(1).unwrap_or_default();
            requests.extend(first.split('`').skip(1).step_by(2).map(str::to_owned));
        }
        requests
    }

    /// README's admin table names every route, and nothing else.
    #[test]
    fn the_readme_names_every_route() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let mut named = readme_requests(&readme);
        let mut routes: Vec<String> = routes()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        named.sort();
        routes.sort();
        assert_eq!(named, routes, "README's admin table and the routes differ");
    }

    /// No two routes answer the same request, and every description is there.
    #[test]
    fn every_route_is_one_request_and_described() {
        for (i, r) in routes().iter().enumerate() {
            assert!(!r.does.is_empty() && !r.answers.is_empty(), "{}", r.path);
            assert!(r.path.starts_with('/'), "{}", r.path);
            let twin = routes()[i + 1..]
                .iter()
                .find(|o| o.method == r.method && o.path == r.path);
            assert!(twin.is_none(), "{} {} twice", r.method, r.path);
        }
    }
}
