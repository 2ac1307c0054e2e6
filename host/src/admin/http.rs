//! The admin API's HTTP/1.1 on `hyper`: one request per connection, every body framed
//! exactly, every read bounded in size and time.
//!
//! The admin API changes what a security boundary enforces, so the transport refuses rather
//! than guesses. hyper frames the messages (the head within [`RequestLimits::head`] and
//! [`RequestLimits::max_head`], `Content-Length` and chunked bodies, `Expect: 100-continue`);
//! this module bounds the body: a body shorter than its `Content-Length` (a client that died
//! mid-upload), an unfinished or malformed chunked body, one over [`RequestLimits::max_body`]
//! (counted with checked arithmetic as it arrives, never trusted from a header), or a client
//! slower than the timeouts is answered 400, 408 or 413 and never reaches the gateway. A head
//! hyper cannot parse is answered 400 or 431 by hyper; a head that does not arrive in time
//! gets its connection closed, with no answer.

use std::io;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming as IncomingBody};
use hyper_util::rt::TokioIo;

use super::transport::{Endpoint, Stream};
use crate::gateway::AdminRefusal;

/// How much a request may be, and how long it may take.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// The request line and headers (at least 8 KiB: hyper's floor).
    pub max_head: usize,
    /// The body.
    pub max_body: u64,
    /// Longest time from the connection's start to the end of the request's head: a client
    /// that has not sent its head (and so its token) by then is let go.
    pub head: Duration,
    /// Longest wait for the next bytes of the body.
    pub idle: Duration,
    /// Longest time for the whole request.
    pub total: Duration,
}

/// A request as read: method, path (without the query) and headers, and the whole body.
#[derive(Debug)]
pub struct Request {
    /// The method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The body, exactly as framed.
    pub body: Vec<u8>,
    /// Who made it, once its token (if one is needed) was checked.
    pub caller: Option<super::Caller>,
}

impl Request {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The method, path and headers of `head`; the body is read apart, by [`read_body`].
    pub fn from_head(head: &hyper::http::request::Parts) -> Request {
        Request {
            method: head.method.as_str().to_owned(),
            path: head.uri.path().to_owned(),
            headers: own_headers(&head.headers),
            body: Vec::new(),
            caller: None,
        }
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Header names in lowercase (as hyper keeps them), values trimmed.
fn own_headers(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).trim().to_owned(),
            )
        })
        .collect()
}

/// A request that could not be read, with the status it is answered with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BadRequest {
    /// 400, 408 or 413.
    pub status: u16,
    /// What was wrong, for the answer's body.
    pub message: String,
    /// The reason in the refusal counters.
    pub reason: AdminRefusal,
}

fn bad(status: u16, reason: AdminRefusal, message: impl Into<String>) -> BadRequest {
    BadRequest {
        status,
        reason,
        message: message.into(),
    }
}

/// The I/O error under a hyper error, if there is one.
fn io_cause(e: &hyper::Error) -> Option<&io::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cause = c.source();
    }
    None
}

/// What a body that hyper could not read was: cut short, or framed wrongly.
fn body_error(e: &hyper::Error) -> BadRequest {
    let io = io_cause(e);
    if e.is_incomplete_message() || io.is_some_and(|io| io.kind() == io::ErrorKind::UnexpectedEof) {
        return bad(
            400,
            AdminRefusal::TruncatedBody,
            "the body ended before its length or its last chunk: nothing was changed",
        );
    }
    if e.is_timeout() {
        return bad(
            408,
            AdminRefusal::Timeout,
            "the client was too slow sending the body",
        );
    }
    let detail = io.map_or_else(|| e.to_string(), ToString::to_string);
    // hyper reads a chunk's data, then wants its CR: anything else there is more data than
    // the chunk's size said.
    let message = if detail == "Invalid chunk body CR" {
        "the chunked body is malformed: a chunk is longer than its size".to_owned()
    } else {
        format!("the body is malformed: {detail}")
    };
    bad(400, AdminRefusal::BadRequest, message)
}

/// Reads the whole body of a request, at most `limits.max_body` bytes, each frame within the
/// idle timeout and all of it by `deadline`. The sum of what arrived is checked before it is
/// kept, so neither a header nor a chunk size can make room for more than the limit (a
/// declared length over it is refused by the caller before a byte is read, so that it can
/// drain the body and the client read the answer).
pub async fn read_body(
    body: &mut IncomingBody,
    limits: &RequestLimits,
    deadline: Instant,
) -> Result<Vec<u8>, BadRequest> {
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = left.min(limits.idle);
        let frame = match tokio::time::timeout(wait, body.frame()).await {
            Err(_) => {
                return Err(bad(
                    408,
                    AdminRefusal::Timeout,
                    "the client was too slow sending the body",
                ));
            }
            Ok(None) => return Ok(out),
            Ok(Some(Err(e))) => return Err(body_error(&e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let total = (out.len() as u64).checked_add(data.len() as u64);
        match total {
            Some(total) if total <= limits.max_body => out.extend_from_slice(&data),
            _ => {
                return Err(bad(
                    413,
                    AdminRefusal::BodyTooLarge,
                    format!(
                        "the body is over {0} bytes, over the limit of {0} bytes",
                        limits.max_body
                    ),
                ));
            }
        }
    }
}

/// Reads and drops what is left of a body that was refused unread, for at most `limit`, so
/// that the client, still sending, reads the answer before the connection closes (closing
/// with unread bytes resets it, and the answer is lost). Nothing is kept.
pub async fn drain(mut body: IncomingBody, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, body.frame()).await {}
}

/// An answer: status, headers and body. Sent with its `Content-Length`, and the connection
/// closed after it.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// The answer as hyper sends it. Header values come from the gateway; control characters
    /// are dropped, so no line break can get in.
    pub fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let mut response = hyper::Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() = hyper::StatusCode::from_u16(self.status)
            .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        for (name, value) in self.headers {
            let value: String = value.chars().filter(|c| !c.is_control()).collect();
            if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}

/// A client's request: method, path, headers, body.
pub struct Outgoing<'a> {
    /// The method.
    pub method: &'a str,
    /// The path.
    pub path: &'a str,
    /// Extra headers.
    pub headers: Vec<(&'a str, String)>,
    /// The body (sent with its length).
    pub body: &'a [u8],
}

/// What the server answered: status, headers (names lowercase) and body.
#[derive(Debug)]
pub struct Incoming {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Incoming {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Sends one request on a new connection to `endpoint` and reads the whole answer (at most
/// `max_body` bytes of body), everything within `timeout`. On a Unix socket, the socket's
/// owner is checked first (see [`Stream::connect_private`]): nothing is sent to another
/// user's socket.
pub fn exchange(
    endpoint: &Endpoint,
    request: &Outgoing<'_>,
    max_body: u64,
    timeout: Duration,
) -> io::Result<Incoming> {
    let stream = Stream::connect_private(endpoint, timeout.min(Duration::from_secs(10)))?;
    let host = match endpoint {
        Endpoint::Tcp(addr) => addr.as_str(),
        Endpoint::Unix(_) => "localhost",
    };
    let mut builder = hyper::Request::builder()
        .method(request.method)
        .uri(request.path)
        .header(hyper::header::HOST, host);
    for (name, value) in &request.headers {
        builder = builder.header(*name, value.as_str());
    }
    let outgoing = builder
        .body(Full::new(Bytes::copy_from_slice(request.body)))
        .map_err(|e| invalid(format!("the request cannot be sent: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let work = async move {
            let (mut sender, connection) = match stream.into_tokio()? {
                super::transport::TokioStream::Tcp(s) => {
                    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                        .await
                        .map_err(io::Error::other)?;
                    (sender, tokio::spawn(conn))
                }
                super::transport::TokioStream::Unix(s) => {
                    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                        .await
                        .map_err(io::Error::other)?;
                    (sender, tokio::spawn(conn))
                }
            };
            let answer = sender
                .send_request(outgoing)
                .await
                .map_err(|e| io::Error::other(format!("the gateway's answer: {e}")))?;
            let (head, body) = answer.into_parts();
            let body = Limited::new(body, usize::try_from(max_body).unwrap_or(usize::MAX))
                .collect()
                .await
                .map_err(|e| invalid(format!("the gateway's answer's body: {e}")))?
                .to_bytes();
            connection.abort();
            Ok(Incoming {
                status: head.status.as_u16(),
                headers: own_headers(&head.headers),
                body: body.to_vec(),
            })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no whole answer within {timeout:?}"),
            )),
        }
    })
}
