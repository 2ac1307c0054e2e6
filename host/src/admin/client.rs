//! A client of the admin API, over the same transport: what `flowgate status`, `swap` and
//! `rollback` use.

use std::time::Duration;

use serde_json::Value;

use super::http;
use super::{Endpoint, MAX_BODY};

/// A client of the admin API.
pub struct Client {
    endpoint: Endpoint,
    token: Option<String>,
    timeout: Duration,
}

/// What a request to the admin API can fail with. A refusal the gateway answers (401, 412,
/// 422, ...) is not an error of the client: it is a [`Reply`] with its status.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request was not exchanged: the gateway is not there, or went silent, or its answer
    /// is not HTTP.
    #[error("{method} {path} on {endpoint}: {error}")]
    Exchange {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// Where it was sent.
        endpoint: Endpoint,
        /// Why it failed.
        error: std::io::Error,
    },
    /// The gateway answered a request that has no refusal to show with another status than
    /// 200.
    #[error("{method} {path}: the gateway answered {status}")]
    Status {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// The status answered.
        status: u16,
        /// The body answered, as text.
        body: String,
    },
    /// The configuration in force is not UTF-8 text.
    #[error("GET /config: not UTF-8: {0}")]
    ConfigNotText(std::string::FromUtf8Error),
    /// A swap landed between the reads of the module and the configuration, every time.
    #[error("the gateway's release kept changing while it was read")]
    Unsettled,
}

/// A reply of the admin API: its status code, JSON body and ETag.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Value,
    /// The `ETag` header, without quotes, when there is one.
    pub etag: Option<String>,
}

/// The module and configuration in force, and the ETag of their release.
#[derive(Debug, Clone)]
pub struct Serving {
    /// The module.
    pub module: Vec<u8>,
    /// The configuration.
    pub config: String,
    /// The release's ETag.
    pub etag: String,
}

impl Client {
    /// A client of the gateway at `endpoint`, with the bearer token when given.
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Client {
        Client {
            endpoint,
            token,
            timeout: Duration::from_secs(60),
        }
    }

    fn exchange(
        &self,
        method: &str,
        path: &str,
        mut headers: Vec<(&str, String)>,
        body: &[u8],
    ) -> Result<http::Incoming, ClientError> {
        if let Some(token) = &self.token {
            headers.push(("Authorization", format!("Bearer {token}")));
        }
        let request = http::Outgoing {
            method,
            path,
            headers,
            body,
        };
        http::exchange(&self.endpoint, &request, MAX_BODY, self.timeout).map_err(|error| {
            ClientError::Exchange {
                method: method.to_owned(),
                path: path.to_owned(),
                endpoint: self.endpoint.clone(),
                error,
            }
        })
    }

    /// `GET path`, answered 200: its body.
    fn get(&self, path: &str) -> Result<http::Incoming, ClientError> {
        let got = self.exchange("GET", path, Vec::new(), &[])?;
        if got.status != 200 {
            return Err(ClientError::Status {
                method: "GET".into(),
                path: path.to_owned(),
                status: got.status,
                body: String::from_utf8_lossy(&got.body).into_owned(),
            });
        }
        Ok(got)
    }

    fn reply(
        &self,
        method: &str,
        path: &str,
        headers: Vec<(&str, String)>,
        body: &[u8],
    ) -> Result<Reply, ClientError> {
        let got = self.exchange(method, path, headers, body)?;
        let text = String::from_utf8_lossy(&got.body);
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text.into_owned()));
        Ok(Reply {
            status: got.status,
            etag: got.header("etag").map(|e| e.trim_matches('"').to_owned()),
            body,
        })
    }

    /// `GET /status`.
    pub fn status(&self) -> Result<Reply, ClientError> {
        self.reply("GET", "/status", Vec::new(), &[])
    }

    /// `GET /metrics`, as text.
    pub fn metrics(&self) -> Result<String, ClientError> {
        let got = self.get("/metrics")?;
        Ok(String::from_utf8_lossy(&got.body).into_owned())
    }

    /// `GET /module` and `GET /config`: the module and configuration in force. Both must
    /// come from one release; if a swap lands between the two reads, they are read again.
    pub fn serving(&self) -> Result<Serving, ClientError> {
        for _ in 0..5 {
            let get = |path: &str| -> Result<(Vec<u8>, String), ClientError> {
                let got = self.get(path)?;
                let etag = got.header("etag").unwrap_or_default().trim_matches('"');
                Ok((got.body.clone(), etag.to_owned()))
            };
            let (module, etag) = get("/module")?;
            let (config, config_etag) = get("/config")?;
            if etag == config_etag {
                let config = String::from_utf8(config).map_err(ClientError::ConfigNotText)?;
                return Ok(Serving {
                    module,
                    config,
                    etag,
                });
            }
        }
        Err(ClientError::Unsettled)
    }

    /// `PUT /module`, with a configuration when given.
    pub fn swap_module(
        &self,
        module: &[u8],
        config: Option<&str>,
        if_match: Option<&str>,
    ) -> Result<Reply, ClientError> {
        self.put_module(module, None, config, if_match, None)
    }

    /// `PUT /shadow/module`: stages the module (with a configuration when given, and its
    /// detached signature file when given) as the shadow release.
    pub fn stage_module(
        &self,
        module: &[u8],
        config: Option<&str>,
        if_match: Option<&str>,
        signature: Option<&[u8]>,
    ) -> Result<Reply, ClientError> {
        use base64::Engine as _;
        let extra = signature.map(|s| {
            let text = base64::engine::general_purpose::STANDARD.encode(s);
            (super::SIGNATURE_HEADER, text)
        });
        let parts = (module, None, config, if_match, extra);
        self.put_module_at("/shadow/module", parts)
    }

    /// `PUT /shadow/module` with a reference: the gateway pulls the module itself.
    pub fn stage_reference(
        &self,
        reference: &str,
        config: Option<&str>,
        if_match: Option<&str>,
    ) -> Result<Reply, ClientError> {
        let content_type = Some(super::REFERENCE_TYPE);
        let parts = (reference.as_bytes(), content_type, config, if_match, None);
        self.put_module_at("/shadow/module", parts)
    }

    /// `PUT /shadow/config`: stages the configuration as the shadow release.
    pub fn stage_config(&self, config: &str, if_match: Option<&str>) -> Result<Reply, ClientError> {
        let headers = if_match
            .map(|tag| vec![if_match_header(tag)])
            .unwrap_or_default();
        self.reply("PUT", "/shadow/config", headers, config.as_bytes())
    }

    /// `GET /shadow`: the staged shadow and its report (404 when none is staged).
    pub fn shadow(&self) -> Result<Reply, ClientError> {
        self.reply("GET", "/shadow", Vec::new(), &[])
    }

    /// `POST /shadow/promote`, naming the shadow by its ETag.
    pub fn promote_shadow(&self, etag: &str) -> Result<Reply, ClientError> {
        self.reply("POST", "/shadow/promote", vec![if_match_header(etag)], &[])
    }

    /// `DELETE /shadow`; with `etag`, only while that shadow is the one staged.
    pub fn discard_shadow(&self, etag: Option<&str>) -> Result<Reply, ClientError> {
        let headers = etag.map(if_match_header).into_iter().collect();
        self.reply("DELETE", "/shadow", headers, &[])
    }

    /// `PUT /module` with the module's detached signature file (`flowgate sign --detached`),
    /// which a gateway that requires signatures checks.
    pub fn swap_signed_module(
        &self,
        module: &[u8],
        signature: &[u8],
        config: Option<&str>,
        if_match: Option<&str>,
    ) -> Result<Reply, ClientError> {
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode(signature);
        self.put_module(
            module,
            None,
            config,
            if_match,
            Some((super::SIGNATURE_HEADER, text)),
        )
    }

    /// `PUT /module` with a reference: the gateway pulls the module itself. With
    /// `checked`, the manifest digest the reference must still resolve to (the one whose
    /// signatures the caller checked): the gateway refuses (412) when it has moved.
    pub fn swap_reference(
        &self,
        reference: &str,
        checked: Option<&str>,
        config: Option<&str>,
        if_match: Option<&str>,
    ) -> Result<Reply, ClientError> {
        let content_type = Some(super::REFERENCE_TYPE);
        let extra = checked.map(|d| (super::MANIFEST_HEADER, d.to_owned()));
        self.put_module(reference.as_bytes(), content_type, config, if_match, extra)
    }

    /// `PUT /module`: `head` (a module, or a reference with its content type), then the
    /// configuration when given (`X-Config-Length` says where it starts).
    fn put_module(
        &self,
        head: &[u8],
        content_type: Option<&str>,
        config: Option<&str>,
        if_match: Option<&str>,
        extra: Option<(&'static str, String)>,
    ) -> Result<Reply, ClientError> {
        let parts = (head, content_type, config, if_match, extra);
        self.put_module_at("/module", parts)
    }

    /// [`Client::put_module`] to `path`.
    fn put_module_at(&self, path: &str, parts: ModuleParts<'_>) -> Result<Reply, ClientError> {
        let (head, content_type, config, if_match, extra) = parts;
        let mut body = head.to_vec();
        let mut headers: Vec<(&str, String)> = content_type
            .map(|t| ("Content-Type", t.to_owned()))
            .into_iter()
            .chain(if_match.map(if_match_header))
            .collect();
        headers.extend(extra);
        if let Some(config) = config {
            body.extend_from_slice(config.as_bytes());
            headers.push(("X-Config-Length", config.len().to_string()));
        }
        self.reply("PUT", path, headers, &body)
    }

    /// `PUT /config`.
    pub fn swap_config(&self, config: &str, if_match: Option<&str>) -> Result<Reply, ClientError> {
        let headers = if_match
            .map(|tag| vec![if_match_header(tag)])
            .unwrap_or_default();
        self.reply("PUT", "/config", headers, config.as_bytes())
    }

    /// `POST /rollback`.
    pub fn rollback(&self) -> Result<Reply, ClientError> {
        self.reply("POST", "/rollback", Vec::new(), &[])
    }

    /// `POST /watch/resume` or `POST /watch/pause` (`action`).
    pub fn watch(&self, action: &str) -> Result<Reply, ClientError> {
        self.reply("POST", &format!("/watch/{action}"), Vec::new(), &[])
    }
}

/// A module upload's parts: the module (or reference), its content type, the configuration,
/// `If-Match` and the detached signature file.
type ModuleParts<'a> = (
    &'a [u8],
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<(&'static str, String)>,
);

/// `If-Match` with the ETag quoted, whether or not it was given quoted.
fn if_match_header(tag: &str) -> (&'static str, String) {
    ("If-Match", format!("\"{}\"", tag.trim_matches('"')))
}
