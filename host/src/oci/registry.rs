//! A read-and-push client of an OCI distribution registry, for policy modules only: pull a
//! module by tag or digest, every manifest and blob hashed and sized here (a registry does not
//! verify what it serves), and push one in the CNCF Wasm artifact layout.
//!
//! A login belongs to one registry (`HOST[:PORT]`, as references name it) and goes only to
//! that registry's own origin, and to the token service its Bearer challenge names when that
//! service is HTTPS, the registry's own origin, or a host named insecure. Redirects are
//! followed here, not by the HTTP client, so that each hop is checked: no login leaves the
//! registry's origin, no hop drops to plain HTTP towards a host that is not loopback or named
//! insecure, and a loop is an error.

use std::time::Duration;

use serde_json::{Value, json};

use super::reference::{is_loopback, split_registry};
use super::{Cache, Digest, Reference};
use crate::setting::Setting;

/// The manifest media type this client asks for and writes.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// What a manifest GET accepts (the reference registry answers 404 without the OCI type).
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// What a GET of a name that may hold any kind of manifest accepts.
const ACCEPT_ANY: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
/// The largest manifest read.
const MAX_MANIFEST: u64 = 1 << 20;
/// The largest token-service answer read.
const MAX_TOKEN: u64 = 1 << 16;
/// Redirects followed for one request (a registry sends its blobs to storage in one).
const MAX_REDIRECTS: usize = 5;

/// The CNCF Wasm OCI artifact layout (wasm-pkg-tools): its config and its one layer.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// See [`WASM_CONFIG`].
pub const WASM_LAYER: &str = "application/wasm";
/// Istio's `oci` variant.
const ISTIO_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
const ISTIO_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// Istio's `compat` variant: one tar+gzip layer holding `plugin.wasm`.
const TAR_GZIP_LAYERS: [&str; 2] = [
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

/// The layouts a module may be pushed in, as a refusal lists them.
const ACCEPTED: &str = "a CNCF Wasm artifact (config application/vnd.wasm.config.v0+json, one application/wasm layer), Istio's oci variant (config application/vnd.module.wasm.config.v1+json, one application/vnd.module.wasm.content.layer.v1+wasm layer) or Istio's compat variant (one tar+gzip layer holding plugin.wasm)";

/// Why a pull or push failed. Nothing of a failed pull is used.
///
/// Only an unreachable registry ([`OciError::unreachable`]: a [`OciError::Transport`], or a
/// [`OciError::Status`] in the 5xx) may be stood in for by a cached module; an answer that
/// fails a check is a [`OciError::Refused`] and is never masked.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The registry could not be reached: no connection, no name, no answer in time, or the
    /// connection was cut.
    #[error("{reference}: {what}: {message}")]
    Transport {
        /// The reference.
        reference: String,
        /// The request.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// The registry answered, but not with what was asked for. A 5xx says it is failing,
    /// which counts as unreachable.
    #[error("{reference}: {what}: the registry answered {status}: {body}")]
    Status {
        /// The reference.
        reference: String,
        /// The request.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// What the registry served failed a check (its digest, size, media type or layout, its
    /// framing, a body longer than announced or than the limit, a redirect loop), or it asked
    /// for something refused (a login sent where it does not belong, plain HTTP to a host not
    /// named insecure).
    #[error("{reference}: {0}", reference = .1)]
    Refused(String, String),
    /// A blob larger than the largest module pulled ([`RegistryOptions::max_module_bytes`]):
    /// refused before it is read.
    #[error("{reference}: blob {digest} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The reference.
        reference: String,
        /// The blob's digest.
        digest: String,
        /// Its size as its descriptor gives it.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// An answer longer than the most read for that request (a manifest, a token, a
    /// signature manifest): refused, and read no further than the limit and a byte.
    #[error("{reference}: {what}: the answer is more than {limit} bytes")]
    OverLimit {
        /// The reference.
        reference: String,
        /// The request.
        what: String,
        /// The most bytes read.
        limit: u64,
    },
    /// A request over plain HTTP to a host that is neither loopback nor named insecure
    /// ([`RegistryOptions::insecure`]): refused before it is sent.
    #[error(
        "{reference}: {what}: `{url}` is plain HTTP to a host that is neither loopback nor named insecure: refused"
    )]
    PlainHttp {
        /// The reference.
        reference: String,
        /// The request.
        what: String,
        /// Its URL, without query or fragment.
        url: String,
    },
    /// The registry sends its login to a token service over plain HTTP on another host, not
    /// named insecure: the login is not sent.
    #[error(
        "{reference}: the registry {registry} sends its login to the token service {realm}, plain HTTP on another host: the login is not sent there"
    )]
    PlainTokenService {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// The token service's URL.
        realm: String,
        /// Its host.
        host: String,
        /// Its port.
        port: u16,
    },
    /// The registry asks for a Basic login and none is known for it
    /// ([`RegistryOptions::credentials`]).
    #[error("{reference}: the registry {registry} asks for a login, and none is known for it")]
    NoLogin {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
    },
}

impl OciError {
    /// Whether the registry is down rather than wrong: it could not be reached, did not
    /// answer in time, or answered 5xx. Only then may a cached module stand in.
    pub fn unreachable(&self) -> bool {
        match self {
            OciError::Transport { .. } => true,
            OciError::Status { status, .. } => (500..600).contains(status),
            OciError::Refused(..)
            | OciError::TooLarge { .. }
            | OciError::OverLimit { .. }
            | OciError::PlainHttp { .. }
            | OciError::PlainTokenService { .. }
            | OciError::NoLogin { .. } => false,
        }
    }

    /// The setting that would have let the pull through, when one refused it.
    pub fn setting(&self) -> Option<Setting> {
        match self {
            OciError::TooLarge { .. } => Some(Setting::ModuleBytes),
            OciError::PlainHttp { .. } | OciError::PlainTokenService { .. } => {
                Some(Setting::InsecureRegistry)
            }
            OciError::NoLogin { .. } => Some(Setting::RegistryLogin),
            OciError::Transport { .. }
            | OciError::Status { .. }
            | OciError::Refused(..)
            | OciError::OverLimit { .. } => None,
        }
    }
}

/// What a registry may be trusted with.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Hosts (`HOST:PORT`, or `HOST` for the scheme's port) spoken to over plain HTTP besides
    /// loopback ones; also the only plain-HTTP token services a login may be sent to.
    pub insecure: Vec<String>,
    /// Logins by registry, keyed `HOST[:PORT]` exactly as references name it (compared
    /// without regard to case): user and password, from Docker's `config.json` or given. A
    /// login goes to its own registry only; no key stands for every registry.
    pub credentials: std::collections::BTreeMap<String, (String, String)>,
    /// The largest module pulled, in bytes.
    pub max_module_bytes: u64,
    /// Longest wait for any one request.
    pub timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure: Vec::new(),
            credentials: std::collections::BTreeMap::new(),
            max_module_bytes: 64 << 20,
            timeout: Duration::from_secs(60),
        }
    }
}

/// A module pulled and verified.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The component's bytes.
    pub module: Vec<u8>,
    /// The manifest's digest: the reference pinned.
    pub manifest: Digest,
    /// Which layout it was in.
    pub layout: &'static str,
}

/// A client of OCI registries.
pub struct Registry {
    agent: ureq::Agent,
    options: RegistryOptions,
    /// The `Authorization` each registry accepted last (a Basic login or a Bearer token), by
    /// the registry's `HOST[:PORT]` in lower case; sent to that registry's origin only.
    authorized: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

/// One request of a registry operation: what it is for (errors name it), its method, URL,
/// headers and body, and the most bytes of its answer that are read.
#[derive(Clone, Copy)]
struct Call<'a> {
    what: &'a str,
    method: &'a str,
    url: &'a str,
    headers: &'a [(&'a str, &'a str)],
    body: &'a [u8],
    limit: u64,
}

/// The most bytes read of the answer to a PUT or POST (a registry answers them with a status
/// and a few headers).
const MAX_WRITE_ANSWER: u64 = 1 << 16;

impl<'a> Call<'a> {
    /// A GET.
    fn get(what: &'a str, url: &'a str, headers: &'a [(&'a str, &'a str)], limit: u64) -> Self {
        Call {
            what,
            method: "GET",
            url,
            headers,
            body: &[],
            limit,
        }
    }

    /// A PUT of `body`.
    fn put(what: &'a str, url: &'a str, headers: &'a [(&'a str, &'a str)], body: &'a [u8]) -> Self {
        Call {
            what,
            method: "PUT",
            url,
            headers,
            body,
            limit: MAX_WRITE_ANSWER,
        }
    }
}

/// An answer: status, headers, body.
struct Answer {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
}

/// Where a URL points: scheme, host (lower case, an IPv6 address in brackets) and port (the
/// scheme's own when none is written). Two URLs with the same origin reach the same server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    https: bool,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of an absolute `http` or `https` URL without user information.
    fn of(url: &str) -> Option<Origin> {
        let uri: ureq::http::Uri = url.parse().ok()?;
        let https = match uri.scheme_str()? {
            s if s.eq_ignore_ascii_case("https") => true,
            s if s.eq_ignore_ascii_case("http") => false,
            _ => return None,
        };
        let authority = uri.authority()?;
        if authority.as_str().contains('@') {
            return None;
        }
        let host = authority.host().to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        Some(Origin {
            https,
            host,
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
        })
    }

    /// `scheme://host:port`, to put an absolute path after.
    fn base(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    /// Whether `name` (`HOST:PORT`, or `HOST` for the scheme's own port) names this host.
    fn named(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        let default = self.port == if self.https { 443 } else { 80 };
        name == format!("{}:{}", self.host, self.port) || (default && name == self.host)
    }
}

impl Registry {
    /// A client with `options`.
    pub fn new(options: RegistryOptions) -> Registry {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(options.timeout))
            .build()
            .new_agent();
        Registry {
            agent,
            options,
            authorized: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    /// Whether plain HTTP may be spoken to `origin`: a loopback host, or one named insecure.
    fn plain_allowed(&self, origin: &Origin) -> bool {
        is_loopback(&origin.host) || self.named_insecure(origin)
    }

    fn named_insecure(&self, origin: &Origin) -> bool {
        self.options.insecure.iter().any(|name| origin.named(name))
    }

    /// The login given for `r`'s registry, if any.
    fn login(&self, r: &Reference) -> Option<&(String, String)> {
        self.options
            .credentials
            .iter()
            .find(|(registry, _)| registry.eq_ignore_ascii_case(&r.registry))
            .map(|(_, login)| login)
    }

    /// Sends `call`, reading at most `call.limit` bytes of the answer. Redirects of a GET are
    /// followed (at most [`MAX_REDIRECTS`], never in a loop); a request to the registry's own
    /// origin carries what it accepted last, and a 401 from it with a challenge is answered
    /// once: Basic with the registry's login, or Bearer with a token fetched from the
    /// challenge's realm. A request anywhere else carries no `Authorization`.
    fn send(&self, r: &Reference, call: Call<'_>) -> Result<Answer, OciError> {
        let Call { what, method, .. } = call;
        let refused = |m: String| OciError::Refused(m, r.to_string());
        let home = self.home(r)?;
        let mut url = call.url.to_owned();
        let mut visited: Vec<String> = Vec::new();
        loop {
            let here = Origin::of(&url).ok_or_else(|| {
                refused(format!("{what}: `{}` is not an http(s) URL", shown(&url)))
            })?;
            if !here.https && !self.plain_allowed(&here) {
                return Err(OciError::PlainHttp {
                    reference: r.to_string(),
                    what: what.to_owned(),
                    url: shown(&url).to_string(),
                });
            }
            let hop = Call { url: &url, ..call };
            let answer = if here == home {
                self.send_home(r, hop)?
            } else {
                self.exchange(r, hop, None)?
            };
            if !matches!(answer.status, 301 | 302 | 303 | 307 | 308) || method != "GET" {
                return Ok(answer);
            }
            let location = answer
                .headers
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    refused(format!(
                        "{what}: a redirect ({}) without a Location",
                        answer.status
                    ))
                })?;
            let next = resolve(&url, location).ok_or_else(|| {
                refused(format!(
                    "{what}: a redirect to `{}`, which is not an http(s) URL or path",
                    shown(location)
                ))
            })?;
            visited.push(url);
            let path = || {
                let hops: Vec<&str> = visited.iter().map(|u| shown(u)).collect();
                format!("{} -> {}", hops.join(" -> "), shown(&next))
            };
            if visited.contains(&next) {
                return Err(refused(format!("{what}: a redirect loop ({})", path())));
            }
            if visited.len() > MAX_REDIRECTS {
                return Err(refused(format!(
                    "{what}: more than {MAX_REDIRECTS} redirects ({})",
                    path()
                )));
            }
            tracing::debug!(reference = %r, what, to = %shown(&next), "following a redirect");
            url = next;
        }
    }

    /// One request to the registry's own origin, with what it accepted last, answering one
    /// challenge.
    fn send_home(&self, r: &Reference, call: Call<'_>) -> Result<Answer, OciError> {
        let key = r.registry.to_ascii_lowercase();
        let known = self
            .authorized
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let answer = self.exchange(r, call, known.as_deref())?;
        if answer.status != 401 {
            return Ok(answer);
        }
        let Some(challenge) = answer
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
        else {
            return Ok(answer);
        };
        let auth = self.authorize(r, challenge)?;
        let retried = self.exchange(r, call, Some(&auth))?;
        if retried.status != 401 {
            self.authorized
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, auth);
        }
        Ok(retried)
    }

    /// One HTTP exchange with `auth` as its `Authorization`, no redirect followed, reading at
    /// most `call.limit` bytes of the body. Failing to get an answer (no connection, no name, a
    /// timeout, the connection cut before the answer) is a [`OciError::Transport`]; an answer
    /// that breaks its framing, is cut short, or runs past the limit is [`OciError::Refused`]. A
    /// timeout while the body comes is still a timeout.
    fn exchange(
        &self,
        r: &Reference,
        call: Call<'_>,
        auth: Option<&str>,
    ) -> Result<Answer, OciError> {
        let Call {
            what,
            method,
            url,
            headers,
            body,
            limit,
        } = call;
        let mut request = ureq::http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let request = request.body(body.to_vec()).map_err(|e| {
            OciError::Refused(format!("{what}: `{}`: {e}", shown(url)), r.to_string())
        })?;
        let mut response = self.agent.run(request).map_err(|e| {
            if unreachable(&e) {
                Self::transport(r, what, e)
            } else {
                OciError::Refused(format!("{what}: {e}"), r.to_string())
            }
        })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if status >= 500 {
            // The registry failed: the status says what matters (fail-static may stand in), so
            // its error page is read only in part, and may be cut or overlong.
            let mut page = Vec::new();
            let _ = std::io::Read::read_to_end(
                &mut std::io::Read::take(response.body_mut().as_reader(), 4096),
                &mut page,
            );
            return Ok(Answer {
                status,
                headers,
                body: page,
            });
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(limit.saturating_add(1))
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::Timeout(_) => Self::transport(r, what, e),
                ureq::Error::BodyExceedsLimit(_) => OciError::OverLimit {
                    reference: r.to_string(),
                    what: what.to_owned(),
                    limit,
                },
                e => OciError::Refused(
                    format!("{what}: the answer's body does not read whole: {e}"),
                    r.to_string(),
                ),
            })?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// The `Authorization` that answers a registry's `WWW-Authenticate` challenge.
    fn authorize(&self, r: &Reference, challenge: &str) -> Result<String, OciError> {
        let refused = |m: String| OciError::Refused(m, r.to_string());
        let login = self.login(r);
        let basic = login.map(|(user, password)| {
            use base64::Engine as _;
            let pair = format!("{user}:{password}");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| OciError::NoLogin {
                reference: r.to_string(),
                registry: r.registry.clone(),
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(refused(format!(
                "an authentication scheme flowgate does not speak: {scheme}"
            )));
        }
        let params = challenge_params(params);
        let param = |name: &str| -> Option<String> {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let realm =
            param("realm").ok_or_else(|| refused("a Bearer challenge without a realm".into()))?;
        let service = Origin::of(&realm).ok_or_else(|| {
            refused(format!(
                "the Bearer challenge's realm `{realm}` is not an http(s) URL"
            ))
        })?;
        // The login goes to the token service the registry names over HTTPS, as Docker's does;
        // over plain HTTP only to the registry's own origin or to a host named insecure.
        if basic.is_some()
            && !service.https
            && service != self.home(r)?
            && !self.named_insecure(&service)
        {
            return Err(OciError::PlainTokenService {
                reference: r.to_string(),
                registry: r.registry.clone(),
                realm,
                host: service.host.clone(),
                port: service.port,
            });
        }
        let mut url = realm.clone();
        let mut sep = if realm.contains('?') { '&' } else { '?' };
        for key in ["service", "scope"] {
            if let Some(value) = param(key) {
                url.push_str(&format!("{sep}{key}={}", encode(&value)));
                sep = '&';
            }
        }
        let what = "GET token";
        let answer = self.exchange(r, Call::get(what, &url, &[], MAX_TOKEN), basic.as_deref())?;
        if answer.status != 200 {
            return Err(Self::status(r, what, answer.status, &answer.body));
        }
        if answer.body.len() as u64 > MAX_TOKEN {
            return Err(OciError::OverLimit {
                reference: r.to_string(),
                what: what.to_owned(),
                limit: MAX_TOKEN,
            });
        }
        let token: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| refused(format!("the token answer is not JSON: {e}")))?;
        let token = token["token"]
            .as_str()
            .or_else(|| token["access_token"].as_str())
            .ok_or_else(|| refused("the token answer holds no token".into()))?;
        if token.bytes().any(|b| b.is_ascii_control()) {
            return Err(refused("the token holds control characters".into()));
        }
        Ok(format!("Bearer {token}"))
    }

    /// `r`'s repository on its registry: over HTTPS, or plain HTTP for a loopback registry
    /// or one named insecure.
    fn base(&self, r: &Reference) -> String {
        let (host, _) = split_registry(&r.registry);
        let plain = is_loopback(host)
            || self
                .options
                .insecure
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&r.registry));
        let scheme = if plain { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", r.registry, r.repository)
    }

    /// The origin of `r`'s registry: the only one its login and tokens are sent to.
    fn home(&self, r: &Reference) -> Result<Origin, OciError> {
        Origin::of(&self.base(r)).ok_or_else(|| {
            OciError::Refused(
                format!("`{}` is not a registry host[:port]", r.registry),
                r.to_string(),
            )
        })
    }

    fn transport(r: &Reference, what: &str, e: impl std::fmt::Display) -> OciError {
        OciError::Transport {
            reference: r.to_string(),
            what: what.into(),
            message: e.to_string(),
        }
    }

    /// An answer other than the one expected, with the start of its body.
    fn status(r: &Reference, what: &str, status: u16, body: &[u8]) -> OciError {
        OciError::Status {
            reference: r.to_string(),
            what: what.into(),
            status,
            body: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
        }
    }

    /// GETs `url` and reads at most `limit` bytes of the answer, which must be 200.
    fn get(&self, r: &Reference, what: &str, url: &str, limit: u64) -> Result<Vec<u8>, OciError> {
        let Answer { status, body, .. } =
            self.send(r, Call::get(what, url, &[("Accept", ACCEPT)], limit))?;
        if status != 200 {
            return Err(Self::status(r, what, status, &body));
        }
        if body.len() as u64 > limit {
            return Err(OciError::OverLimit {
                reference: r.to_string(),
                what: what.to_owned(),
                limit,
            });
        }
        Ok(body)
    }

    /// The manifest `name` (a tag or a digest) in `r`'s repository as the registry serves it,
    /// at most `limit` bytes and asked for as an OCI image manifest only; `None` when the
    /// registry answers 404. Any other answer but 200 is an error.
    pub(crate) fn manifest_named(
        &self,
        r: &Reference,
        what: &str,
        name: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, OciError> {
        self.manifest_accepting(r, what, name, limit, OCI_MANIFEST)
    }

    /// The manifest `name` in `r`'s repository as [`Registry::manifest_named`] reads it, but
    /// asked for as any kind of manifest (OCI or Docker, image manifest or index), so that the
    /// registry serves whatever the name holds instead of answering 404 for a kind not asked
    /// for: what a writer reads before it replaces the name.
    pub(crate) fn manifest_any(
        &self,
        r: &Reference,
        what: &str,
        name: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, OciError> {
        self.manifest_accepting(r, what, name, limit, ACCEPT_ANY)
    }

    /// The manifest `name` asked for with `accept`, at most `limit` bytes; `None` on 404.
    fn manifest_accepting(
        &self,
        r: &Reference,
        what: &str,
        name: &str,
        limit: u64,
        accept: &str,
    ) -> Result<Option<Vec<u8>>, OciError> {
        let url = format!("{}/manifests/{name}", self.base(r));
        let Answer { status, body, .. } =
            self.send(r, Call::get(what, &url, &[("Accept", accept)], limit))?;
        match status {
            404 => Ok(None),
            200 if body.len() as u64 > limit => Err(OciError::OverLimit {
                reference: r.to_string(),
                what: what.to_owned(),
                limit,
            }),
            200 => Ok(Some(body)),
            _ => Err(Self::status(r, what, status, &body)),
        }
    }

    /// The manifest `r` names, and its digest; a pinned reference's must match.
    pub fn manifest(&self, r: &Reference) -> Result<(Value, Digest), OciError> {
        let url = format!("{}/manifests/{}", self.base(r), r.manifest_ref());
        let bytes = self.get(r, "GET manifest", &url, MAX_MANIFEST)?;
        let digest = Digest::of(&bytes);
        if let Some(pinned) = r.digest
            && pinned != digest
        {
            return Err(OciError::Refused(
                format!("the manifest served hashes to {digest}, not the pinned {pinned}"),
                r.to_string(),
            ));
        }
        let manifest = serde_json::from_slice(&bytes).map_err(|e| {
            OciError::Refused(format!("the manifest is not JSON: {e}"), r.to_string())
        })?;
        Ok((manifest, digest))
    }

    /// A blob by its descriptor, sized and hashed; one whose descriptor gives a size over
    /// `limit` is refused before it is asked for.
    pub(crate) fn blob(
        &self,
        r: &Reference,
        descriptor: &Value,
        limit: u64,
    ) -> Result<Vec<u8>, OciError> {
        let refused = |m: String| OciError::Refused(m, r.to_string());
        let digest = descriptor["digest"]
            .as_str()
            .ok_or_else(|| refused("a descriptor without a digest".into()))
            .and_then(|d| Digest::parse(d).map_err(|e| refused(e.to_string())))?;
        let size = descriptor["size"]
            .as_u64()
            .ok_or_else(|| refused(format!("the descriptor of {digest} has no size")))?;
        if size > limit {
            return Err(OciError::TooLarge {
                reference: r.to_string(),
                digest: digest.to_string(),
                size,
                limit,
            });
        }
        let url = format!("{}/blobs/{digest}", self.base(r));
        let bytes = self.get(r, "GET blob", &url, size)?;
        if bytes.len() as u64 != size {
            return Err(refused(format!(
                "blob {digest} as served does not match its size: {} bytes, where its descriptor says {size}: refused",
                bytes.len()
            )));
        }
        let served = Digest::of(&bytes);
        if served != digest {
            return Err(refused(format!(
                "blob {digest} as served does not match its digest: it hashes to {served}: refused"
            )));
        }
        Ok(bytes)
    }

    /// Pulls the module `r` names, in any of the accepted layouts, verified byte for byte.
    pub fn pull(&self, r: &Reference) -> Result<Pulled, OciError> {
        let refused = |m: String| OciError::Refused(m, r.to_string());
        let (manifest, digest) = self.manifest(r)?;
        if let Some(media) = manifest["mediaType"].as_str()
            && media != OCI_MANIFEST
            && media != "application/vnd.docker.distribution.manifest.v2+json"
        {
            return Err(refused(format!(
                "a manifest of type {media}: expected an image manifest ({OCI_MANIFEST})"
            )));
        }
        let config_type = manifest["config"]["mediaType"].as_str().unwrap_or_default();
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        let layer_type = |l: &Value| l["mediaType"].as_str().unwrap_or_default().to_owned();
        let limit = self.options.max_module_bytes;
        let (module, layout) = match (config_type, layers.as_slice()) {
            (WASM_CONFIG, [layer]) if layer_type(layer) == WASM_LAYER => {
                (self.blob(r, layer, limit)?, "cncf")
            }
            (ISTIO_CONFIG, [layer]) if layer_type(layer) == ISTIO_LAYER => {
                (self.blob(r, layer, limit)?, "istio-oci")
            }
            (_, [layer]) if TAR_GZIP_LAYERS.contains(&layer_type(layer).as_str()) => {
                let archive = self.blob(r, layer, limit)?;
                let module = plugin_wasm(&archive, limit).map_err(refused)?;
                (module, "istio-compat")
            }
            _ => {
                return Err(refused(format!(
                    "not a module layout flowgate reads (config {config_type:?}, layers {:?}); accepted: {ACCEPTED}",
                    layers.iter().map(layer_type).collect::<Vec<_>>()
                )));
            }
        };
        Ok(Pulled {
            module,
            manifest: digest,
            layout,
        })
    }

    /// [`Registry::pull`], keeping what it pulls in `cache`; when the registry is unreachable
    /// ([`OciError::unreachable`]: no connection, no answer in time, or a 5xx), the module
    /// `r` was last pulled as, from the cache, and the log says so. An answer that fails a
    /// check is an error, cache or not. The flag says whether the cache stood in.
    pub fn pull_or_cached(
        &self,
        r: &Reference,
        cache: Option<&Cache>,
    ) -> Result<(Pulled, bool), OciError> {
        match self.pull(r) {
            Ok(pulled) => {
                if let Some(cache) = cache
                    && let Err(e) = cache.store(r, &pulled.manifest, &pulled.module)
                {
                    tracing::warn!(error = %e, "the pulled module could not be cached");
                }
                Ok((pulled, false))
            }
            Err(e) if e.unreachable() => match cache.and_then(|c| c.load(r)) {
                Some((manifest, module)) => {
                    tracing::warn!(
                        event = "pull",
                        reference = %r,
                        manifest = %manifest,
                        error = %e,
                        "the registry is unreachable or failing: using the module cached for {r} ({manifest})"
                    );
                    Ok((
                        Pulled {
                            module,
                            manifest,
                            layout: "cache",
                        },
                        true,
                    ))
                }
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Pushes `module` under `r`'s tag in the CNCF layout, with `config` (its JSON) as the
    /// config blob. Returns the manifest's digest.
    pub fn push(&self, r: &Reference, module: &[u8], config: &[u8]) -> Result<Digest, OciError> {
        let tag = Self::push_tag(r)?;
        let (_, bytes) = self.push_untagged(r, module, config)?;
        self.put_manifest(r, tag, &bytes, OCI_MANIFEST)
    }

    /// The tag a push to `r` goes under.
    fn push_tag(r: &Reference) -> Result<&str, OciError> {
        r.tag.as_deref().ok_or_else(|| {
            OciError::Refused(
                "push needs a tag: oci://HOST/REPO:TAG".into(),
                r.to_string(),
            )
        })
    }

    /// Pushes `module` to `r`'s repository as [`Registry::push`] does, under its manifest's
    /// digest only: no tag names it yet, so nothing that follows a tag sees it. Returns the
    /// manifest's digest and bytes, to tag it with ([`Registry::put_manifest`]) once it is
    /// signed.
    pub fn push_untagged(
        &self,
        r: &Reference,
        module: &[u8],
        config: &[u8],
    ) -> Result<(Digest, Vec<u8>), OciError> {
        Self::push_tag(r)?;
        let config_digest = self.upload(r, config)?;
        let layer_digest = self.upload(r, module)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": WASM_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
            "layers": [{"mediaType": WASM_LAYER, "digest": layer_digest.to_string(), "size": module.len()}],
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| Self::transport(r, "manifest", e))?;
        let digest = Digest::of(&bytes);
        self.put_manifest(r, &digest.to_string(), &bytes, OCI_MANIFEST)?;
        Ok((digest, bytes))
    }

    /// Puts `bytes`, exactly as given, as the manifest `name` (a tag) of `r`'s repository,
    /// with `media_type` as its `Content-Type`; the blobs it names must be uploaded first
    /// ([`Registry::upload`]). Returns the manifest's digest.
    pub fn put_manifest(
        &self,
        r: &Reference,
        name: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest, OciError> {
        let url = format!("{}/manifests/{name}", self.base(r));
        let what = "PUT manifest";
        let headers = [("Content-Type", media_type)];
        let answer = self.send(r, Call::put(what, &url, &headers, bytes))?;
        if answer.status != 201 {
            return Err(OciError::Status {
                reference: r.to_string(),
                what: what.into(),
                status: answer.status,
                body: String::from_utf8_lossy(&answer.body).into_owned(),
            });
        }
        Ok(Digest::of(bytes))
    }

    /// Uploads a blob to `r`'s repository monolithically (POST for a session, then PUT with
    /// the digest). Returns its digest.
    pub fn upload(&self, r: &Reference, bytes: &[u8]) -> Result<Digest, OciError> {
        let digest = Digest::of(bytes);
        let base = self.base(r);
        let status_error = |what: &str, status: u16| OciError::Status {
            reference: r.to_string(),
            what: what.into(),
            status,
            body: String::new(),
        };
        let what = "POST blob upload";
        let url = format!("{base}/blobs/uploads/");
        let response = self.send(
            r,
            Call {
                method: "POST",
                ..Call::put(what, &url, &[], &[])
            },
        )?;
        if response.status != 202 {
            return Err(status_error(what, response.status));
        }
        let location = response
            .headers
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| OciError::Refused("an upload without a Location".into(), r.to_string()))?
            .to_owned();
        // The upload may live on another host (a storage service): the PUT goes there
        // without the registry's login (`send` sends it to the registry's origin only).
        let location = resolve(&url, &location).ok_or_else(|| {
            OciError::Refused(
                format!(
                    "{what}: an upload Location `{}` that is not an http(s) URL or path",
                    shown(&location)
                ),
                r.to_string(),
            )
        })?;
        let join = if location.contains('?') { '&' } else { '?' };
        let what = "PUT blob";
        let url = format!("{location}{join}digest={digest}");
        let headers = [("Content-Type", "application/octet-stream")];
        let response = self.send(r, Call::put(what, &url, &headers, bytes))?;
        if response.status != 201 {
            return Err(status_error(what, response.status));
        }
        Ok(digest)
    }
}

/// Whether a failure to get an answer's head says the registry is unreachable (no name, no
/// connection, a timeout, the connection cut) rather than that what it sent fails a check
/// (broken framing, an oversized head, a TLS handshake that fails: rustls reports those as
/// I/O errors of kind `InvalidData`).
fn unreachable(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Timeout(_) | ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
        ureq::Error::Io(io) => io.kind() != std::io::ErrorKind::InvalidData,
        _ => false,
    }
}

/// Where a `Location` sent in answer to `from` points: an absolute http(s) URL, a
/// scheme-relative one, or an absolute path on `from`'s origin. Relative paths and other
/// schemes are not followed.
fn resolve(from: &str, location: &str) -> Option<String> {
    let lower = location.to_ascii_lowercase();
    let absolute = if lower.starts_with("http://") || lower.starts_with("https://") {
        location.to_owned()
    } else if location.starts_with("//") {
        let scheme = if Origin::of(from)?.https {
            "https:"
        } else {
            "http:"
        };
        format!("{scheme}{location}")
    } else if location.starts_with('/') {
        format!("{}{location}", Origin::of(from)?.base())
    } else {
        return None;
    };
    Origin::of(&absolute).map(|_| absolute)
}

/// `plugin.wasm` out of a tar+gzip layer, at most `limit` bytes unpacked.
fn plugin_wasm(archive: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let gz = flate2::read::GzDecoder::new(archive);
    let mut tar = tar::Archive::new(gz.take(limit.saturating_mul(2)));
    let entries = tar
        .entries()
        .map_err(|e| format!("the tar+gzip layer does not read: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("the tar+gzip layer does not read: {e}"))?;
        let path = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.trim_start_matches("./") == "plugin.wasm" {
            if entry.size() > limit {
                return Err(format!("plugin.wasm is over the limit of {limit} bytes"));
            }
            let mut module = Vec::new();
            entry
                .by_ref()
                .take(limit + 1)
                .read_to_end(&mut module)
                .map_err(|e| format!("plugin.wasm does not read: {e}"))?;
            return Ok(module);
        }
    }
    Err("the tar+gzip layer holds no plugin.wasm".into())
}

/// Percent-encodes a query value (a token scope such as `repository:p:pull`).
/// `url` as errors and logs show it: without its query or fragment, which may hold a signature
/// (a storage service's presigned URL) or an upload's state.
fn shown(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `key=value` parameters of a `WWW-Authenticate` challenge; values may be quoted, and a
/// quoted value may hold commas (`scope="repository:p:pull,push"`).
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        let after = after.trim_start();
        let (value, tail) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            },
            None => after.split_once(',').unwrap_or((after, "")),
        };
        out.push((key, value.to_owned()));
        rest = tail.trim_start().trim_start_matches(',');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_query() {
        assert_eq!(
            shown("https://s3.example/b/blob?X-Amz-Signature=secret#f"),
            "https://s3.example/b/blob"
        );
        assert_eq!(
            shown("http://r/v2/a/b/blobs/uploads/1"),
            "http://r/v2/a/b/blobs/uploads/1"
        );
    }

    #[test]
    fn challenge_parameters_keep_commas_inside_quotes() {
        let params = challenge_params(
            r#"realm="http://t/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            params,
            [
                ("realm".to_owned(), "http://t/token".to_owned()),
                ("service".to_owned(), "reg".to_owned()),
                ("scope".to_owned(), "repository:a/b:pull,push".to_owned()),
            ]
        );
        assert_eq!(challenge_params("realm=x, service=y")[1].1, "y");
    }

    #[test]
    fn a_failed_handshake_or_broken_framing_is_not_an_unreachable_registry() {
        use std::io::{Error, ErrorKind};
        for down in [
            ureq::Error::ConnectionFailed,
            ureq::Error::HostNotFound,
            ureq::Error::Timeout(ureq::Timeout::Connect),
            ureq::Error::Io(Error::from(ErrorKind::ConnectionRefused)),
            ureq::Error::Io(Error::from(ErrorKind::ConnectionReset)),
        ] {
            assert!(unreachable(&down), "{down}");
        }
        for wrong in [
            ureq::Error::Io(Error::new(
                ErrorKind::InvalidData,
                "invalid peer certificate",
            )),
            ureq::Error::LargeResponseHeader(1 << 20, 64 << 10),
            ureq::Error::BodyExceedsLimit(1 << 20),
            ureq::Error::TooManyRedirects,
        ] {
            assert!(!unreachable(&wrong), "{wrong}");
        }
    }

    #[test]
    fn locations_resolve_on_the_origin_they_came_from() {
        let from = "http://127.0.0.1:5000/v2/p/blobs/uploads/";
        assert_eq!(
            resolve(from, "/v2/p/blobs/uploads/1?s=x").as_deref(),
            Some("http://127.0.0.1:5000/v2/p/blobs/uploads/1?s=x")
        );
        assert_eq!(
            resolve(from, "//storage:9000/b").as_deref(),
            Some("http://storage:9000/b")
        );
        assert_eq!(
            resolve(from, "HTTPS://storage/b").as_deref(),
            Some("HTTPS://storage/b")
        );
        for refused in [
            "uploads/1",
            "ftp://storage/b",
            "http://user:pw@storage/b",
            "file:///etc/passwd",
        ] {
            assert_eq!(resolve(from, refused), None, "{refused}");
        }
        let a = Origin::of("http://LocalHost:80/x").unwrap();
        assert_eq!(a, Origin::of("http://localhost/y").unwrap());
        assert_ne!(a, Origin::of("https://localhost:80/x").unwrap());
        assert_ne!(a, Origin::of("http://localhost:81/x").unwrap());
        assert!(a.named("localhost") && a.named("LOCALHOST:80") && !a.named("localhost:81"));
    }
}
