//! The admin API's HTTP/1.1: one request per connection, every body framed exactly, every
//! read bounded in size and time.
//!
//! The admin API changes what a security boundary enforces, so the transport refuses rather
//! than guesses: a body shorter than its `Content-Length` (a client that died mid-upload), a
//! length that is not a number, both `Content-Length` and `Transfer-Encoding`, an unfinished
//! chunked body, a head over 16 KiB, or a client slower than the timeouts is answered 400,
//! 408, 413 or 431 and never reaches the gateway.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use super::transport::{Endpoint, Stream};

/// How much a request may be, and how long it may take.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// The request line and headers.
    pub max_head: usize,
    /// The body.
    pub max_body: u64,
    /// Longest wait for the next bytes.
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
}

impl Request {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Header names in lowercase, values trimmed.
fn own_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect()
}

/// A request that could not be read, with the status it is answered with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BadRequest {
    /// 400, 408, 413 or 431.
    pub status: u16,
    /// What was wrong, for the answer's body.
    pub message: String,
    /// The reason in the refusal counters.
    pub reason: &'static str,
}

fn bad(status: u16, reason: &'static str, message: impl Into<String>) -> BadRequest {
    BadRequest {
        status,
        reason,
        message: message.into(),
    }
}

/// Reads within a deadline: each read waits at most the idle timeout, and never past the
/// request's total deadline.
struct Deadlined<'a> {
    stream: &'a mut Stream,
    deadline: Instant,
    idle: Duration,
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(left.min(self.idle))?;
        self.stream.read(buf)
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn io_bad(e: io::Error, what: &str) -> BadRequest {
    if timed_out(&e) {
        bad(
            408,
            "timeout",
            format!("the client was too slow sending {what}"),
        )
    } else {
        bad(400, "bad-request", format!("reading {what}: {e}"))
    }
}

/// Reads the request head. The body is left for [`read_body`], so that a request can be
/// refused (unauthorised, unknown) before its body is read at all.
pub fn read_head(
    stream: &mut Stream,
    limits: &RequestLimits,
    started: Instant,
) -> Result<(Request, Vec<u8>), BadRequest> {
    let mut reader = Deadlined {
        stream,
        deadline: started + limits.total,
        idle: limits.idle,
    };
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_len = loop {
        let n = reader
            .read(&mut chunk)
            .map_err(|e| io_bad(e, "the request"))?;
        if n == 0 {
            return Err(bad(
                400,
                "bad-request",
                "the connection closed before the request's head ended",
            ));
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            break from + at + 4;
        }
        if buf.len() > limits.max_head {
            return Err(bad(
                431,
                "head-too-large",
                format!(
                    "the request line and headers are over {} bytes",
                    limits.max_head
                ),
            ));
        }
    };
    if head_len > limits.max_head {
        return Err(bad(
            431,
            "head-too-large",
            format!(
                "the request line and headers are over {} bytes",
                limits.max_head
            ),
        ));
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(bad(400, "bad-request", "an unfinished request head"));
        }
        Err(e) => return Err(bad(400, "bad-request", format!("not an HTTP request: {e}"))),
    }
    let request = Request {
        method: parsed.method.unwrap_or_default().to_owned(),
        path: parsed
            .path
            .unwrap_or_default()
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned(),
        headers: own_headers(parsed.headers),
        body: Vec::new(),
    };
    Ok((request, buf[head_len..].to_vec()))
}

/// Reads the body the head announced, exactly: `Content-Length` bytes, or a whole chunked
/// body. `early` holds the bytes read past the head.
pub fn read_body(
    stream: &mut Stream,
    request: &mut Request,
    early: Vec<u8>,
    limits: &RequestLimits,
    started: Instant,
) -> Result<(), BadRequest> {
    let lengths: Vec<&str> = request
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str())
        .collect();
    let chunked = match request.header("transfer-encoding") {
        None => false,
        Some(te) if te.eq_ignore_ascii_case("chunked") => true,
        Some(te) => {
            return Err(bad(
                400,
                "bad-request",
                format!(
                    "Transfer-Encoding `{te}` is not supported: send Content-Length or chunked"
                ),
            ));
        }
    };
    let mut reader = Deadlined {
        stream,
        deadline: started + limits.total,
        idle: limits.idle,
    };
    let mut input = io::Cursor::new(early).chain(&mut reader);
    if chunked {
        if !lengths.is_empty() {
            return Err(bad(
                400,
                "bad-request",
                "both Content-Length and Transfer-Encoding: send one",
            ));
        }
        request.body = read_chunked(&mut input, limits.max_body)?;
        return Ok(());
    }
    let declared = match lengths.as_slice() {
        [] => 0,
        [first, rest @ ..] => {
            if rest.iter().any(|v| v != first) {
                return Err(bad(
                    400,
                    "bad-request",
                    "Content-Length is given twice, with different values",
                ));
            }
            if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(
                    400,
                    "bad-request",
                    format!("Content-Length `{first}` is not a number of bytes"),
                ));
            }
            first.parse::<u64>().unwrap_or(u64::MAX)
        }
    };
    if declared > limits.max_body {
        return Err(bad(
            413,
            "body-too-large",
            format!(
                "the body is {declared} bytes, over the limit of {} bytes",
                limits.max_body
            ),
        ));
    }
    let mut body = Vec::with_capacity(declared.min(1 << 20) as usize);
    input
        .take(declared)
        .read_to_end(&mut body)
        .map_err(|e| io_bad(e, "the body"))?;
    if (body.len() as u64) < declared {
        return Err(bad(
            400,
            "truncated-body",
            format!(
                "the body ended after {} of the {declared} bytes its Content-Length declared: nothing was changed",
                body.len()
            ),
        ));
    }
    request.body = body;
    Ok(())
}

fn read_line(input: &mut impl Read, max: usize) -> Result<Vec<u8>, BadRequest> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match input.read(&mut byte) {
            Ok(0) => {
                return Err(bad(
                    400,
                    "truncated-body",
                    "the chunked body ended before its last chunk: nothing was changed",
                ));
            }
            Ok(_) if byte[0] == b'\n' => {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            Ok(_) if line.len() >= max => {
                return Err(bad(400, "bad-request", "a chunk header is too long"));
            }
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(io_bad(e, "the body")),
        }
    }
}

fn read_chunked(input: &mut impl Read, max_body: u64) -> Result<Vec<u8>, BadRequest> {
    let mut body = Vec::new();
    loop {
        let line = read_line(input, 256)?;
        let size_text = String::from_utf8_lossy(&line);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size_text, 16).map_err(|_| {
            bad(
                400,
                "bad-request",
                format!("`{size_text}` is not a chunk size"),
            )
        })?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(input, 8192)?.is_empty() {}
            return Ok(body);
        }
        if body.len() as u64 + size > max_body {
            return Err(bad(
                413,
                "body-too-large",
                format!("the body is over the limit of {max_body} bytes"),
            ));
        }
        let before = body.len();
        input
            .take(size)
            .read_to_end(&mut body)
            .map_err(|e| io_bad(e, "the body"))?;
        if ((body.len() - before) as u64) < size {
            return Err(bad(
                400,
                "truncated-body",
                "the chunked body ended inside a chunk: nothing was changed",
            ));
        }
        if !read_line(input, 2)?.is_empty() {
            return Err(bad(400, "bad-request", "a chunk is longer than its size"));
        }
    }
}

/// An answer: status, headers and body. Always sent with `Content-Length` and
/// `Connection: close`.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Vec<u8>,
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        428 => "Precondition Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Other",
    }
}

/// Sends `response` and closes the writing side.
pub fn send(stream: &mut Stream, response: &Response) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        reason_phrase(response.status),
        response.body.len()
    );
    for (name, value) in &response.headers {
        // Header values come from the gateway; no line breaks can get in.
        let value: String = value.chars().filter(|c| !c.is_control()).collect();
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(&response.body)?;
    stream.flush()?;
    stream.shutdown_write();
    Ok(())
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

/// Sends one request on a new connection to `endpoint` and reads the whole answer (at most
/// `max_body` bytes of body), everything within `timeout`.
pub fn exchange(
    endpoint: &Endpoint,
    request: &Outgoing<'_>,
    max_body: u64,
    timeout: Duration,
) -> io::Result<Incoming> {
    let mut stream = Stream::connect(endpoint, timeout.min(Duration::from_secs(10)))?;
    stream.set_timeouts(timeout, timeout)?;
    let host = match endpoint {
        Endpoint::Tcp(addr) => addr.as_str(),
        Endpoint::Unix(_) => "localhost",
    };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
        request.method,
        request.path,
        request.body.len()
    );
    for (name, value) in &request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // The server may answer (401, 413) before reading the whole body and close: read its
    // answer even when writing the body failed.
    let wrote = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(request.body))
        .and_then(|()| stream.flush());
    let mut answer = Vec::new();
    let read = (&mut stream)
        .take(max_body + 64 * 1024)
        .read_to_end(&mut answer);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(&answer) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => {
            wrote?;
            read?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the gateway's answer is not an HTTP response",
            ));
        }
    };
    let headers = own_headers(parsed.headers);
    let status = parsed.code.unwrap_or_default();
    let mut body = answer[head_len..].to_vec();
    if let Some(len) = find_header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok())
    {
        if body.len() < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the gateway's answer ended after {} of {len} bytes",
                    body.len()
                ),
            ));
        }
        body.truncate(len);
    }
    Ok(Incoming {
        status,
        headers,
        body,
    })
}
