//! A client of the admin API, over the same transport: what `flowgate status`, `swap` and
//! `rollback` use.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::http;
use super::{Endpoint, MAX_BODY};

/// A client of the admin API.
pub struct Client {
    endpoint: Endpoint,
    token: Option<String>,
    timeout: Duration,
}

/// An answer of the admin API: its status code, JSON body and ETag.
#[derive(Debug, Clone)]
pub struct Answer {
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
    ) -> anyhow::Result<http::Incoming> {
        if let Some(token) = &self.token {
            headers.push(("Authorization", format!("Bearer {token}")));
        }
        let request = http::Outgoing {
            method,
            path,
            headers,
            body,
        };
        http::exchange(&self.endpoint, &request, MAX_BODY, self.timeout)
            .with_context(|| format!("{method} {path} on {}", self.endpoint))
    }

    fn answer(
        &self,
        method: &str,
        path: &str,
        headers: Vec<(&str, String)>,
        body: &[u8],
    ) -> anyhow::Result<Answer> {
        let got = self.exchange(method, path, headers, body)?;
        let text = String::from_utf8_lossy(&got.body);
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text.into_owned()));
        Ok(Answer {
            status: got.status,
            etag: got.header("etag").map(|e| e.trim_matches('"').to_owned()),
            body,
        })
    }

    /// `GET /status`.
    pub fn status(&self) -> anyhow::Result<Answer> {
        self.answer("GET", "/status", Vec::new(), &[])
    }

    /// `GET /metrics`, as text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let got = self.exchange("GET", "/metrics", Vec::new(), &[])?;
        if got.status != 200 {
            bail!("GET /metrics: the gateway answered {}", got.status);
        }
        Ok(String::from_utf8_lossy(&got.body).into_owned())
    }

    /// `GET /module` and `GET /config`: the module and configuration in force. Both must
    /// come from one release; if a swap lands between the two reads, they are read again.
    pub fn serving(&self) -> anyhow::Result<Serving> {
        for _ in 0..5 {
            let get = |path: &str| -> anyhow::Result<(Vec<u8>, String)> {
                let got = self.exchange("GET", path, Vec::new(), &[])?;
                if got.status != 200 {
                    bail!("GET {path}: the gateway answered {}", got.status);
                }
                let etag = got.header("etag").unwrap_or_default().trim_matches('"');
                Ok((got.body.clone(), etag.to_owned()))
            };
            let (module, etag) = get("/module")?;
            let (config, config_etag) = get("/config")?;
            if etag == config_etag {
                let config = String::from_utf8(config).context("GET /config: not UTF-8")?;
                return Ok(Serving {
                    module,
                    config,
                    etag,
                });
            }
        }
        bail!("the gateway's release kept changing while it was read")
    }

    /// `PUT /module`, with a configuration when given.
    pub fn swap_module(
        &self,
        module: &[u8],
        config: Option<&str>,
        if_match: Option<&str>,
    ) -> anyhow::Result<Answer> {
        self.put_module(module, None, config, if_match)
    }

    /// `PUT /module` with a reference: the gateway pulls the module itself.
    pub fn swap_reference(
        &self,
        reference: &str,
        config: Option<&str>,
        if_match: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let content_type = Some(super::REFERENCE_TYPE);
        self.put_module(reference.as_bytes(), content_type, config, if_match)
    }

    /// `PUT /module`: `head` (a module, or a reference with its content type), then the
    /// configuration when given (`X-Config-Length` says where it starts).
    fn put_module(
        &self,
        head: &[u8],
        content_type: Option<&str>,
        config: Option<&str>,
        if_match: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut body = head.to_vec();
        let mut headers: Vec<(&str, String)> = content_type
            .map(|t| ("Content-Type", t.to_owned()))
            .into_iter()
            .chain(if_match.map(if_match_header))
            .collect();
        if let Some(config) = config {
            body.extend_from_slice(config.as_bytes());
            headers.push(("X-Config-Length", config.len().to_string()));
        }
        self.answer("PUT", "/module", headers, &body)
    }

    /// `PUT /config`.
    pub fn swap_config(&self, config: &str, if_match: Option<&str>) -> anyhow::Result<Answer> {
        let headers = if_match
            .map(|tag| vec![if_match_header(tag)])
            .unwrap_or_default();
        self.answer("PUT", "/config", headers, config.as_bytes())
    }

    /// `POST /rollback`.
    pub fn rollback(&self) -> anyhow::Result<Answer> {
        self.answer("POST", "/rollback", Vec::new(), &[])
    }

    /// `POST /watch/resume` or `POST /watch/pause` (`action`).
    pub fn watch(&self, action: &str) -> anyhow::Result<Answer> {
        self.answer("POST", &format!("/watch/{action}"), Vec::new(), &[])
    }
}

/// `If-Match` with the ETag quoted, whether or not it was given quoted.
fn if_match_header(tag: &str) -> (&'static str, String) {
    ("If-Match", format!("\"{}\"", tag.trim_matches('"')))
}
