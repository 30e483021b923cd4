//! HTTP/1.1 messages, sans-IO: a request head parsed with `httparse` from the bytes
//! read so far ([`parse_head`]), and a response encoded into bytes ([`Response`]).

use bytes::{Bytes, BytesMut};
use ringrouter_proto::Status;

/// Most headers a request may have (past it: 431).
pub(crate) const MAX_HEADERS: usize = 64;

/// A complete request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    /// `GET`, `POST`, ...
    pub(crate) method: String,
    /// The path of the request target (before any `?`), still percent-encoded.
    pub(crate) path: String,
    /// HTTP/1.`minor`.
    pub(crate) minor: u8,
    /// Header names (lower-case) and values, in order.
    pub(crate) headers: Vec<(String, String)>,
    /// Bytes of the head (request line, headers and the blank line).
    pub(crate) len: usize,
    /// Bytes of the body (`content-length`; 0 when absent).
    pub(crate) body_len: usize,
    /// The connection stays open after the answer (HTTP/1.1 unless `connection: close`;
    /// HTTP/1.0 only with `connection: keep-alive`).
    pub(crate) keep_alive: bool,
}

impl Head {
    /// The first value of header `name` (lower-case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when header `name` lists `token` (comma-separated, any case).
    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Why a request head is refused; the connection is closed after the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Not HTTP/1.x (400).
    Malformed(String),
    /// Longer than the head limit, or too many headers (431).
    TooLarge,
    /// A body framed by `transfer-encoding` (411: a `content-length` is required).
    NeedsLength,
}

impl HeadError {
    /// The HTTP status code and the API status of the answer.
    pub(crate) fn status(&self) -> (u16, Status) {
        match self {
            HeadError::Malformed(_) => (400, Status::BadRequest),
            HeadError::TooLarge => (431, Status::TooLarge),
            HeadError::NeedsLength => (411, Status::BadRequest),
        }
    }

    /// The reason given in the answer.
    pub(crate) fn reason(&self, max_head: usize) -> String {
        match self {
            HeadError::Malformed(why) => format!("malformed request: {why}"),
            HeadError::TooLarge => format!(
                "request head over {max_head} bytes or {MAX_HEADERS} headers (--http-max-head-bytes)"
            ),
            HeadError::NeedsLength => {
                "transfer-encoding is not supported: send a content-length".into()
            }
        }
    }
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is incomplete
/// (and within `max_head` bytes).
pub(crate) fn parse_head(buf: &[u8], max_head: usize) -> Result<Option<Head>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_head {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if len > max_head {
        return Err(HeadError::TooLarge);
    }
    // Complete: httparse filled every field.
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line".into()));
    };
    if !target.starts_with('/') {
        return Err(HeadError::Malformed(
            "the request target must be a path (origin form)".into(),
        ));
    }
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect();
    let mut head = Head {
        method: method.to_owned(),
        path,
        minor,
        headers,
        len,
        body_len: 0,
        keep_alive: false,
    };
    if head.header("transfer-encoding").is_some() {
        return Err(HeadError::NeedsLength);
    }
    let mut lengths = head
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str());
    if let Some(first) = lengths.next() {
        if lengths.any(|v| v != first) {
            return Err(HeadError::Malformed("conflicting content-length".into()));
        }
        if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HeadError::Malformed(format!(
                "bad content-length {first:?}"
            )));
        }
        // Digits only: too many of them is a length past any limit.
        head.body_len = first.parse().unwrap_or(usize::MAX);
    }
    head.keep_alive = if minor == 0 {
        head.has_token("connection", "keep-alive")
    } else {
        !head.has_token("connection", "close")
    };
    Ok(Some(head))
}

/// The reason phrase of the status codes the router answers with.
fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// The HTTP status code for an API status.
pub(crate) fn http_code(s: Status) -> u16 {
    match s {
        Status::Ok => 200,
        Status::BadFrame | Status::BadRequest => 400,
        Status::Unauthorized => 401,
        Status::Forbidden => 403,
        Status::NotFound => 404,
        Status::Conflict => 409,
        Status::TooLarge => 413,
        Status::RateLimited => 429,
        Status::Unavailable | Status::SlowConsumer => 503,
        Status::Timeout => 504,
        Status::Internal | Status::Unspecified => 500,
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Response {
    pub(crate) code: u16,
    pub(crate) content_type: &'static str,
    /// (Not copied into a second buffer while a slow peer takes it: a page asset is
    /// served from the binary, `/metrics` from its text as made.)
    pub(crate) body: Bytes,
    /// The body is shared, not this answer's own (it costs no memory while written).
    pub(crate) shared: bool,
    /// Extra headers (`allow`, `www-authenticate`, ...).
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl Response {
    /// A response with a body.
    pub(crate) fn new(code: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Response {
            code,
            content_type,
            body: body.into(),
            shared: false,
            headers: Vec::new(),
        }
    }

    /// A response whose body costs no memory of its own (a page asset, in the binary).
    pub(crate) fn shared(code: u16, content_type: &'static str, body: Bytes) -> Self {
        Response {
            shared: true,
            ..Response::new(code, content_type, body)
        }
    }

    /// A JSON answer.
    pub(crate) fn json(code: u16, v: &serde_json::Value) -> Self {
        Response::new(code, "application/json", v.to_string())
    }

    /// An error: `{"code": "<STATUS_NAME>", "reason": "..."}`.
    pub(crate) fn error(code: u16, status: Status, reason: impl Into<String>) -> Self {
        let v = serde_json::json!({
            "code": super::metrics::status_name(status),
            "reason": reason.into(),
        });
        Response::json(code, &v)
    }

    /// An error whose HTTP code follows from its status.
    pub(crate) fn status(status: Status, reason: impl Into<String>) -> Self {
        Response::error(http_code(status), status, reason)
    }

    /// Adds a header.
    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes of the answer; `keep_alive` is what the connection will do, and
    /// `head_only` leaves the body out (a HEAD request).
    pub(crate) fn encode(&self, keep_alive: bool, head_only: bool) -> BytesMut {
        let mut out = self.encode_head(keep_alive, self.body.len());
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }

    /// The answer as its head and its body (none for a HEAD request), the body not
    /// copied, and the bytes of them that are this answer's own.
    pub(crate) fn into_parts(self, keep_alive: bool, head_only: bool) -> (BytesMut, Bytes, usize) {
        let head = self.encode_head(keep_alive, 0);
        let body = if head_only { Bytes::new() } else { self.body };
        let own = head.len() + if self.shared { 0 } else { body.len() };
        (head, body, own)
    }

    /// The status line and headers, with room for `room` more bytes.
    fn encode_head(&self, keep_alive: bool, room: usize) -> BytesMut {
        use std::fmt::Write;
        let mut h = String::with_capacity(160);
        // Writing into a String cannot fail.
        let _ = write!(
            h,
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\n",
            self.code,
            reason_phrase(self.code),
            self.content_type,
            self.body.len()
        );
        for (n, v) in &self.headers {
            let _ = write!(h, "{n}: {v}\r\n");
        }
        h.push_str(if keep_alive {
            "connection: keep-alive\r\n\r\n"
        } else {
            "connection: close\r\n\r\n"
        });
        let mut out = BytesMut::with_capacity(h.len() + room);
        out.extend_from_slice(h.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_whole_or_wait() {
        let raw = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nX-Y:  z \r\n\r\nrest";
        let h = parse_head(raw, 1024).unwrap().unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/metrics");
        assert_eq!(h.len, raw.len() - 4);
        assert_eq!(h.header("x-y"), Some("z"));
        assert!(h.keep_alive);
        assert_eq!(h.body_len, 0);
        for cut in 0..h.len {
            assert_eq!(parse_head(&raw[..cut], 1024), Ok(None), "{cut}");
        }
    }

    #[test]
    fn keep_alive_rules() {
        let p = |r: &[u8]| parse_head(r, 1024).unwrap().unwrap().keep_alive;
        assert!(!p(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!p(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(p(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn refusals() {
        let e = |r: &[u8], max| parse_head(r, max).unwrap_err();
        assert!(matches!(
            e(b"NOT HTTP\r\n\r\n", 1024),
            HeadError::Malformed(_)
        ));
        assert!(matches!(
            e(b"GET http://x/ HTTP/1.1\r\n\r\n", 1024),
            HeadError::Malformed(_)
        ));
        assert_eq!(e(&[b'a'; 100], 50), HeadError::TooLarge);
        assert_eq!(
            e(b"GET / HTTP/1.1\r\nA: b\r\n\r\n", 10),
            HeadError::TooLarge
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(e(req.as_bytes(), 1 << 20), HeadError::TooLarge);
        let post = |cl: &str| format!("POST / HTTP/1.1\r\n{cl}\r\n\r\n");
        assert!(matches!(
            e(post("content-length: -1").as_bytes(), 1024),
            HeadError::Malformed(_)
        ));
        assert!(matches!(
            e(
                post("content-length: 1\r\ncontent-length: 2").as_bytes(),
                1024
            ),
            HeadError::Malformed(_)
        ));
        assert_eq!(
            e(post("transfer-encoding: chunked").as_bytes(), 1024),
            HeadError::NeedsLength
        );
        let h = parse_head(
            post("content-length: 99999999999999999999999").as_bytes(),
            1024,
        );
        assert_eq!(h.unwrap().unwrap().body_len, usize::MAX);
    }

    #[test]
    fn responses() {
        let r = Response::status(Status::NotFound, "no such user");
        let out = r.encode(true, false);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(
            text.ends_with(r#"{"code":"NOT_FOUND","reason":"no such user"}"#),
            "{text}"
        );
        assert!(text.contains("connection: keep-alive\r\n"));
        let head = r.encode(false, true);
        assert!(std::str::from_utf8(&head)
            .unwrap()
            .ends_with("connection: close\r\n\r\n"));
    }
}
