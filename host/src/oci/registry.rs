//! A read-and-push client of an OCI distribution registry, for policy modules only: pull a
//! module by tag or digest, every manifest and blob hashed and sized here (a registry does not
//! verify what it serves), and push one in the CNCF Wasm artifact layout.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Cache, Digest, Reference};

/// The manifest media type this client asks for and writes.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// What a manifest GET accepts (the reference registry answers 404 without the OCI type).
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// The largest manifest read.
const MAX_MANIFEST: u64 = 1 << 20;

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
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The registry could not be reached, or the exchange broke off.
    #[error("{reference}: {what}: {message}")]
    Transport {
        /// The reference.
        reference: String,
        /// The request.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// The registry answered, but not with what was asked for.
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
    /// What the registry served does not match its digest or size, or is not a module.
    #[error("{reference}: {0}", reference = .1)]
    Refused(String, String),
}

/// What a registry may be trusted with.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Registries (`HOST:PORT`) spoken to over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// Logins by registry (`HOST[:PORT]` as in references): user and password, from Docker's
    /// `config.json` or given; `*` applies to every registry without one of its own.
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
    /// The `Authorization` each registry accepted last (a Basic login or a Bearer token).
    authorized: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

/// An answer: status, headers, body.
struct Answer {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
}

impl Registry {
    /// A client with `options`.
    pub fn new(options: RegistryOptions) -> Registry {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(options.timeout))
            .build()
            .new_agent();
        Registry {
            agent,
            options,
            authorized: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    /// Sends a request, reading at most `limit` bytes of the answer. A 401 with a challenge
    /// is answered once: Basic with the registry's login, or Bearer with a token fetched from
    /// the challenge's realm; what worked is used for the registry's next requests.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        r: &Reference,
        what: &str,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        limit: u64,
    ) -> Result<Answer, OciError> {
        let attempt = |auth: Option<&str>| -> Result<Answer, OciError> {
            let mut request = ureq::http::Request::builder().method(method).uri(url);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            let request = request
                .body(body.to_vec())
                .map_err(|e| Self::transport(r, what, e))?;
            let mut response = self
                .agent
                .run(request)
                .map_err(|e| Self::transport(r, what, e))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response
                .body_mut()
                .with_config()
                .limit(limit + 1)
                .read_to_vec()
                .map_err(|e| Self::transport(r, what, e))?;
            Ok(Answer {
                status,
                headers,
                body,
            })
        };
        let known = self
            .authorized
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&r.registry)
            .cloned();
        let answer = attempt(known.as_deref())?;
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
        let retried = attempt(Some(&auth))?;
        if retried.status != 401 {
            self.authorized
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(r.registry.clone(), auth);
        }
        Ok(retried)
    }

    /// The `Authorization` that answers a registry's `WWW-Authenticate` challenge.
    fn authorize(&self, r: &Reference, challenge: &str) -> Result<String, OciError> {
        let refused = |m: String| OciError::Refused(m, r.to_string());
        let login = self
            .options
            .credentials
            .get(&r.registry)
            .or_else(|| self.options.credentials.get("*"));
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
            return basic.ok_or_else(|| {
                refused(format!(
                    "the registry {} asks for a login, and none is known for it (Docker's config.json or --registry-credentials)",
                    r.registry
                ))
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
        let mut url = realm.clone();
        let mut sep = if realm.contains('?') { '&' } else { '?' };
        for key in ["service", "scope"] {
            if let Some(value) = param(key) {
                url.push_str(&format!("{sep}{key}={}", encode(&value)));
                sep = '&';
            }
        }
        let mut request = self.agent.get(&url);
        if let Some(basic) = &basic {
            request = request.header("Authorization", basic);
        }
        let what = "GET token";
        let mut response = request.call().map_err(|e| Self::transport(r, what, e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 16)
            .read_to_vec()
            .map_err(|e| Self::transport(r, what, e))?;
        if status != 200 {
            return Err(Self::status(r, what, status, &body));
        }
        let token: Value = serde_json::from_slice(&body)
            .map_err(|e| refused(format!("the token answer is not JSON: {e}")))?;
        let token = token["token"]
            .as_str()
            .or_else(|| token["access_token"].as_str())
            .ok_or_else(|| refused("the token answer holds no token".into()))?;
        Ok(format!("Bearer {token}"))
    }

    fn base(&self, r: &Reference) -> String {
        let host = r
            .registry
            .rsplit_once(':')
            .map_or(r.registry.as_str(), |(h, _)| h);
        let loopback = host == "localhost"
            || host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let plain = loopback || self.options.insecure.iter().any(|h| h == &r.registry);
        let scheme = if plain { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", r.registry, r.repository)
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
            self.send(r, what, "GET", url, &[("Accept", ACCEPT)], &[], limit)?;
        if status != 200 {
            return Err(Self::status(r, what, status, &body));
        }
        if body.len() as u64 > limit {
            return Err(OciError::Refused(
                format!("{what}: more than {limit} bytes"),
                r.to_string(),
            ));
        }
        Ok(body)
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

    /// A blob by its descriptor, sized and hashed.
    fn blob(&self, r: &Reference, descriptor: &Value, limit: u64) -> Result<Vec<u8>, OciError> {
        let refused = |m: String| OciError::Refused(m, r.to_string());
        let digest = descriptor["digest"]
            .as_str()
            .ok_or_else(|| refused("a descriptor without a digest".into()))
            .and_then(|d| Digest::parse(d).map_err(refused))?;
        let size = descriptor["size"]
            .as_u64()
            .ok_or_else(|| refused(format!("the descriptor of {digest} has no size")))?;
        if size > limit {
            return Err(refused(format!(
                "blob {digest} is {size} bytes, over the limit of {limit} (raise it with --max-module-bytes)"
            )));
        }
        let url = format!("{}/blobs/{digest}", self.base(r));
        let bytes = self.get(r, "GET blob", &url, size)?;
        if bytes.len() as u64 != size || Digest::of(&bytes) != digest {
            return Err(refused(format!(
                "blob {digest} as served ({} bytes) does not match its digest and size ({size} bytes): refused",
                bytes.len()
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

    /// [`Registry::pull`], keeping what it pulls in `cache`; when the registry cannot be
    /// reached at all (not when it answers with an error or with bytes that fail their
    /// checks), the module `r` was last pulled as, from the cache. The flag says which.
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
            Err(e @ OciError::Transport { .. }) => match cache.and_then(|c| c.load(r)) {
                Some((manifest, module)) => {
                    tracing::warn!(
                        event = "pull",
                        reference = %r,
                        manifest = %manifest,
                        error = %e,
                        "the registry cannot be reached: using the module cached for {r}"
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
        let tag = r.tag.as_deref().ok_or_else(|| {
            OciError::Refused(
                "push needs a tag: oci://HOST/REPO:TAG".into(),
                r.to_string(),
            )
        })?;
        let config_digest = self.upload(r, config)?;
        let layer_digest = self.upload(r, module)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": WASM_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
            "layers": [{"mediaType": WASM_LAYER, "digest": layer_digest.to_string(), "size": module.len()}],
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| Self::transport(r, "manifest", e))?;
        let url = format!("{}/manifests/{tag}", self.base(r));
        let what = "PUT manifest";
        let answer = self.send(
            r,
            what,
            "PUT",
            &url,
            &[("Content-Type", OCI_MANIFEST)],
            &bytes,
            1 << 16,
        )?;
        if answer.status != 201 {
            return Err(OciError::Status {
                reference: r.to_string(),
                what: what.into(),
                status: answer.status,
                body: String::from_utf8_lossy(&answer.body).into_owned(),
            });
        }
        Ok(Digest::of(&bytes))
    }

    /// Uploads a blob monolithically (POST for a session, then PUT with the digest).
    fn upload(&self, r: &Reference, bytes: &[u8]) -> Result<Digest, OciError> {
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
        let response = self.send(r, what, "POST", &url, &[], &[], 1 << 16)?;
        if response.status != 202 {
            return Err(status_error(what, response.status));
        }
        let location = response
            .headers
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| OciError::Refused("an upload without a Location".into(), r.to_string()))?
            .to_owned();
        let location = if location.starts_with('/') {
            let origin = base.split("/v2/").next().unwrap_or_default();
            format!("{origin}{location}")
        } else {
            location
        };
        let join = if location.contains('?') { '&' } else { '?' };
        let what = "PUT blob";
        let url = format!("{location}{join}digest={digest}");
        let headers = [("Content-Type", "application/octet-stream")];
        let response = self.send(r, what, "PUT", &url, &headers, bytes, 1 << 16)?;
        if response.status != 201 {
            return Err(status_error(what, response.status));
        }
        Ok(digest)
    }
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
}
