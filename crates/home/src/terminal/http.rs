//! A minimal HTTP/1.1 client for one request per market session (`Connection: close`), over
//! any byte stream of application data (a relay session, or handed-over keys' records).
use std::io::{self, Read, Write};

/// Largest response accepted (head and body).
pub const MAX_RESPONSE_LEN: usize = 64 * 1024 * 1024;

/// An HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method (`GET`, `POST`...).
    pub method: String,
    /// The `Host` header's value.
    pub host: String,
    /// Path and query, starting with `/`.
    pub target: String,
    /// Extra headers, in order.
    pub headers: Vec<(String, String)>,
    /// Body (sent with `Content-Length` when not empty or when the method is not GET/HEAD).
    pub body: Vec<u8>,
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// Body (chunked transfer coding removed).
    pub body: Vec<u8>,
}

fn bad(m: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.into())
}

fn token_ok(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

impl Request {
    /// The request on the wire; refuses header names or values that would split it.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        if !token_ok(&self.method) {
            return Err(bad(format!("bad method {:?}", self.method)));
        }
        let line_ok = |s: &str| !s.contains(['\r', '\n']);
        if !self.target.starts_with('/') || self.target.contains([' ', '\r', '\n']) {
            return Err(bad(format!("bad path {:?}", self.target)));
        }
        let mut out =
            format!("{} {} HTTP/1.1\r\nHost: {}\r\n", self.method, self.target, self.host);
        let has = |name: &str| self.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        for (k, v) in &self.headers {
            if !token_ok(k) || !line_ok(v) {
                return Err(bad(format!("bad header {k:?}")));
            }
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if !has("connection") {
            out.push_str("Connection: close\r\n");
        }
        if !has("content-length")
            && (!self.body.is_empty() || !matches!(self.method.as_str(), "GET" | "HEAD"))
        {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        Ok(bytes)
    }
}

/// Sends `request` over `stream` and reads the response until the market closes.
pub fn exchange<S: Read + Write>(stream: &mut S, request: &Request) -> io::Result<Response> {
    stream.write_all(&request.encode()?)?;
    stream.flush()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if raw.len() + n > MAX_RESPONSE_LEN {
            return Err(bad("response too large"));
        }
        raw.extend_from_slice(&buf[..n]);
        // Stop early when the response is complete (the market may keep the connection).
        if let Ok(Some(r)) = parse(&raw, request.method == "HEAD", false) {
            return Ok(r);
        }
    }
    parse(&raw, request.method == "HEAD", true)?
        .ok_or_else(|| bad("the market closed the connection before the response was complete"))
}

/// Parses a complete response from `raw` (`eof`: the connection has ended); `Ok(None)` if
/// more bytes are needed.
pub fn parse(raw: &[u8], head_only: bool, eof: bool) -> io::Result<Option<Response>> {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head =
        std::str::from_utf8(&raw[..head_end]).map_err(|_| bad("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("not an HTTP/1.x response: {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l.split_once(':').ok_or_else(|| bad(format!("bad header line {l:?}")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let get = |name: &str| {
        headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    };
    let rest = &raw[head_end + 4..];
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Some(Response { status, reason, headers, body: Vec::new() }));
    }
    let body =
        if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            match dechunk(rest)? {
                Some(b) => b,
                None => return Ok(None),
            }
        } else if let Some(len) = get("content-length") {
            let len: usize = len.parse().map_err(|_| bad("bad Content-Length"))?;
            if rest.len() < len {
                return Ok(None);
            }
            rest[..len].to_vec()
        } else {
            // Delimited by the end of the connection.
            if !eof {
                return Ok(None);
            }
            rest.to_vec()
        };
    Ok(Some(Response { status, reason, headers, body }))
}

fn dechunk(mut rest: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let size_line = std::str::from_utf8(&rest[..eol]).map_err(|_| bad("bad chunk size"))?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk size"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn encodes_requests_and_refuses_header_injection() {
        let r = Request {
            method: "POST".into(),
            host: "m:8443".into(),
            target: "/a?b=c".into(),
            headers: vec![("X-A".into(), "1".into())],
            body: b"hi".to_vec(),
        };
        assert_eq!(
            r.encode().unwrap(),
            b"POST /a?b=c HTTP/1.1\r\nHost: m:8443\r\nX-A: 1\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
        );
        let mut bad = r.clone();
        bad.headers = vec![("X-A".into(), "1\r\nEvil: 2".into())];
        assert!(bad.encode().is_err());
        let mut bad = r.clone();
        bad.method = "GET /x".into();
        assert!(bad.encode().is_err());
        let mut bad = r;
        bad.target = "/a b".into();
        assert!(bad.encode().is_err());
    }

    #[test]
    fn parses_length_chunked_and_close_delimited_bodies() {
        let cl = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse(&cl[..cl.len() - 1], false, false).unwrap(), None, "needs more");
        assert_eq!(parse(cl, false, false).unwrap().unwrap().body, b"hello");
        let ch = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse(ch, false, false).unwrap().unwrap().body, b"abcde");
        let close = b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\ngone";
        assert_eq!(parse(close, false, false).unwrap(), None, "delimited by the end");
        let r = parse(close, false, true).unwrap().unwrap();
        assert_eq!(
            (r.status, r.reason.as_str(), r.body.as_slice()),
            (404, "Not Found", &b"gone"[..])
        );
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";
        assert!(parse(head, true, false).unwrap().unwrap().body.is_empty(), "HEAD has no body");
        for bad in [
            &b"SSH-2.0 x\r\n\r\n"[..],
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n",
        ] {
            assert!(parse(bad, false, true).is_err());
        }
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false, true)
                .is_err()
        );
    }
}
