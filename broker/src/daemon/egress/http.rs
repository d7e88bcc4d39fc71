//! The HTTP side of the proxy: `CONNECT host:port` (a tunnel) and absolute-URI requests
//! (`GET http://host/path`, forwarded to the origin as `GET /path` with `Connection:
//! close`, one request per connection to the proxy).
//!
//! The request head is read under a size cap ([`MAX_HEAD`]); the caller bounds the time.
//! `Proxy-Authorization` is read for attribution only and is never forwarded or logged.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::listener::{Kind, Outcome, Request};
use super::rule::{parse_port, split_host_port};
use super::State;

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// The longest request head (request line and headers) the proxy reads.
pub const MAX_HEAD: usize = 16 * 1024;
/// How long, and how much, a refused client's remaining bytes are read before closing.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";
/// Headers meant for the proxy or for this one connection, never passed on.
const HOP_BY_HOP: [&str; 4] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
];

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// The launch a client's user and password name, if any.
type LaunchOf<'a> = dyn Fn(&[u8], &[u8]) -> Option<u64> + 'a;

/// Why a request head was refused; the client gets the status and the text.
#[derive(Debug, thiserror::Error)]
enum HeadError {
    #[error("the request head is larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("this is not an HTTP request line")]
    BadRequestLine,
    #[error("a header line is malformed")]
    BadHeader,
    #[error("https:// URLs go through CONNECT (set HTTPS_PROXY)")]
    Https,
    #[error("only http:// URLs and CONNECT are proxied")]
    NotHttp,
    #[error("the target has no valid host and port")]
    BadTarget,
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// What a client's request head came to.
pub enum Head {
    Request(Request),
    /// Refused: the status and text the client is to get, and what its request line
    /// named, when it named a destination: an attempt all the same, for the audit. The
    /// caller answers, after the audit and outside the handshake's deadline: answered
    /// here, a late head's answer (whose drain lasts up to `LINGER`) ran into the
    /// deadline, and the attempt went unlogged.
    Refused {
        status: u16,
        text: String,
        named: Option<Named>,
    },
}

/// The destination a refused request line named, and why the request was refused.
pub struct Named {
    pub host: Vec<u8>,
    pub port: u16,
    pub via: &'static str,
    pub reason: String,
    /// The launch its `Proxy-Authorization` names, if a line of the head says so.
    pub launch: Option<u64>,
}

/// Reads and parses one request head; `None` when the client left before its head was
/// whole (or sent nothing); a refused head is for the caller to answer.
pub async fn read_request(client: &mut TcpStream, state: &State) -> Option<Head> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    // Where the next look for the blank line starts: a head sent a byte at a time is
    // scanned once, not once per byte.
    let mut scanned = 0;
    let end = loop {
        if let Some(end) = find_end(&buf, scanned) {
            break end;
        }
        scanned = buf.len();
        if buf.len() >= MAX_HEAD {
            let e = HeadError::TooLarge;
            return Some(Head::Refused {
                status: 431,
                text: format!("ctx: {e}\n"),
                named: named(&buf, &e, &|u, p| state.launch(u, p)),
            });
        }
        let room = (MAX_HEAD - buf.len()).min(chunk.len());
        let n = client.read(&mut chunk[..room]).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    match parse(&buf[..end], &buf[end..], &|u, p| state.launch(u, p)) {
        Ok(req) => Some(Head::Request(req)),
        Err(e) => Some(Head::Refused {
            status: 400,
            text: format!("ctx: {e}\n"),
            named: named(&buf[..end], &e, &|u, p| state.launch(u, p)),
        }),
    }
}

/// The end of the head (after its blank line), if it is all in `buf`, of which the first
/// `scanned` bytes held none: only the rest is looked at, with the three bytes before it
/// that a blank line may begin in.
fn find_end(buf: &[u8], scanned: usize) -> Option<usize> {
    let from = scanned.saturating_sub(3).min(buf.len());
    let tail = &buf[from..];
    // The first blank line, whichever way its lines end: bytes after it (a body, a
    // tunnel's early bytes) may hold the other kind.
    let crlf = tail
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = tail.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let end = match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    end.map(|end| from + end)
}

/// Where a request line sends the request.
enum Destination<'a> {
    Connect {
        host: &'a str,
        port: u16,
    },
    Forward {
        host: &'a str,
        port: u16,
        authority: &'a str,
        path: String,
    },
}

/// The request line (method, target, version) at the start of `head`, and where it goes.
fn request_line(head: &[u8]) -> Result<(&str, &str, Destination<'_>), HeadError> {
    let line = std::str::from_utf8(first_line(head)).map_err(|_| HeadError::BadRequestLine)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::BadRequestLine);
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !version.starts_with("HTTP/1.") {
        return Err(HeadError::BadRequestLine);
    }
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = host_port(target, None)?;
        return Ok((method, version, Destination::Connect { host, port }));
    }
    let lower = target.get(..8).unwrap_or("").to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(HeadError::Https);
    }
    if !lower.starts_with("http://") {
        return Err(HeadError::NotHttp);
    }
    let after = &target[7..];
    let cut = after.find(['/', '?', '#']).unwrap_or(after.len());
    let authority = &after[..cut];
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let mut path = after[cut..].split('#').next().unwrap_or("").to_string();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let (host, port) = host_port(authority, Some(80))?;
    let to = Destination::Forward {
        host,
        port,
        authority,
        path,
    };
    Ok((method, version, to))
}

/// The first line of `head`, without its line end.
fn first_line(head: &[u8]) -> &[u8] {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// What a refused head's request line named, if it named a destination: a whole line, or
/// one cut at the size limit after an absolute URI's host had ended (at its path, query or
/// fragment).
fn named(head: &[u8], e: &HeadError, launch: &LaunchOf<'_>) -> Option<Named> {
    let cut;
    let head = if head.contains(&b'\n') {
        head
    } else {
        // Up to a character the limit may have cut in two.
        let text = match std::str::from_utf8(head) {
            Ok(t) => t,
            Err(e) => std::str::from_utf8(&head[..e.valid_up_to()]).ok()?,
        };
        let (method, target) = text.split_once(' ')?;
        let after = target
            .get(..7)
            .filter(|s| s.eq_ignore_ascii_case("http://"))
            .map(|_| &target[7..])?;
        if method.eq_ignore_ascii_case("CONNECT")
            || target.contains(' ')
            || !after.contains(['/', '?', '#'])
        {
            return None;
        }
        cut = format!("{method} {target} HTTP/1.1");
        cut.as_bytes()
    };
    let (_, _, to) = request_line(head).ok()?;
    let (host, port, via) = match to {
        Destination::Connect { host, port } => (host, port, "connect"),
        Destination::Forward { host, port, .. } => (host, port, "http"),
    };
    Some(Named {
        host: host.as_bytes().to_vec(),
        port,
        via,
        reason: format!("malformed request: {e}"),
        launch: credentials_in(head).and_then(|(user, password)| launch(&user, &password)),
    })
}

/// The credentials of the first `Proxy-Authorization` line of a head that did not parse
/// as a whole, for the refused attempt's audit line.
fn credentials_in(head: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    const NAME: &[u8] = b"proxy-authorization:";
    let line = head
        .split(|&b| b == b'\n')
        .skip(1)
        .find(|l| l.len() > NAME.len() && l[..NAME.len()].eq_ignore_ascii_case(NAME))?;
    let value = line[NAME.len()..].trim_ascii();
    basic_credentials(std::str::from_utf8(value).ok()?)
}

/// `launch`: the launch that credentials name, if any. The head is bytes: a header value
/// may hold any but CR, LF and NUL (RFC 9110's obs-text), and goes on as it came.
fn parse(head: &[u8], rest: &[u8], launch: &LaunchOf<'_>) -> Result<Request, HeadError> {
    let (method, version, to) = request_line(head)?;
    // The target and version go to the origin as written: a bare CR there would end the
    // line early for an origin that takes it for a line's end (a header of the client's
    // making ahead of the proxy's `Host`), as it would in a header value. Refused here,
    // after the line was read: what it named is still audited.
    if first_line(head).iter().any(|b| b.is_ascii_control()) {
        return Err(HeadError::BadRequestLine);
    }
    let lines = head
        .split(|&b| b == b'\n')
        .skip(1)
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut headers: Vec<(&str, &[u8])> = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(HeadError::BadHeader)?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        let valid_name = !name.is_empty()
            && name
                .iter()
                .all(|&b| b.is_ascii_graphic() && b != b':' && b != b'"');
        if !valid_name || value.iter().any(|&b| b == b'\r' || b == 0) {
            return Err(HeadError::BadHeader);
        }
        // ASCII graphic only, so UTF-8.
        let name = std::str::from_utf8(name).map_err(|_| HeadError::BadHeader)?;
        headers.push((name, value));
    }
    let launch = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("proxy-authorization"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .and_then(basic_credentials)
        .and_then(|(user, password)| launch(&user, &password));

    let (host, port, authority, path) = match to {
        Destination::Connect { host, port } => {
            return Ok(Request {
                host: host.as_bytes().to_vec(),
                port,
                launch,
                kind: Kind::Connect {
                    early: rest.to_vec(),
                },
            });
        }
        Destination::Forward {
            host,
            port,
            authority,
            path,
        } => (host, port, authority, path),
    };
    let dropped: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    // The origin learns the host from the URL the rule was checked against, never from
    // the client's own Host header (which could name another site on a shared address).
    let mut out = format!("{method} {path} {version}\r\nHost: {authority}\r\n").into_bytes();
    for (name, value) in &headers {
        let lower = name.to_ascii_lowercase();
        if lower == "host" || HOP_BY_HOP.contains(&lower.as_str()) || dropped.contains(&lower) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(rest);
    Ok(Request {
        host: host.as_bytes().to_vec(),
        port,
        launch,
        kind: Kind::Forward { head: out },
    })
}

/// `host:port` (the port defaulting to `default`).
fn host_port(text: &str, default: Option<u16>) -> Result<(&str, u16), HeadError> {
    let (host, port) = split_host_port(text).ok_or(HeadError::BadTarget)?;
    let port = match port {
        Some(p) => parse_port(p).ok_or(HeadError::BadTarget)?,
        None => default.ok_or(HeadError::BadTarget)?,
    };
    if host.is_empty() {
        return Err(HeadError::BadTarget);
    }
    Ok((host, port))
}

/// `Basic base64(user:password)`.
fn basic_credentials(value: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_decode(token.trim())?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let produced = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&n.to_be_bytes()[1..1 + produced]);
    }
    Some(out)
}

/// The status a client gets for an outcome.
pub fn status(outcome: Outcome) -> u16 {
    match outcome {
        Outcome::Denied => 403,
        Outcome::Unresolved | Outcome::Unreachable => 502,
        Outcome::TimedOut => 504,
    }
}

/// Answers with `code` and a short text, and ends the connection.
pub async fn error(client: &mut TcpStream, code: u16, text: &str) -> std::io::Result<()> {
    let reason = match code {
        400 => "Bad Request",
        403 => "Forbidden",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await?;
    // Closing with unread bytes would reset the connection, and a reset can destroy the
    // answer before the client reads it: take what it still sends, for a bounded while.
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left = LINGER_BYTES;
        while left > 0 {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        assert_eq!(base64_decode("bGF1bmNoOjQy").unwrap(), b"launch:42");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert!(base64_decode("Y").is_none());
        assert!(base64_decode("a*bc").is_none());
        assert_eq!(
            basic_credentials("Basic bGF1bmNoOjQy"),
            Some((b"launch".to_vec(), b"42".to_vec()))
        );
        assert_eq!(basic_credentials("Bearer x"), None);
    }

    #[test]
    fn heads_end_at_the_blank_line() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n\r\nbody", 0), Some(18));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(find_end(b"GET / HTTP/1.0\n\n", 0), Some(16));
        // A bare-newline head ends at its own blank line, not at one in the body.
        assert_eq!(find_end(b"GET / HTTP/1.0\n\nbody\r\n\r\n", 0), Some(16));
        assert_eq!(find_end(b"GET / HTTP/1.0\r\n\r\nbody\n\n", 0), Some(18));
    }

    #[test]
    fn a_head_read_piecemeal_ends_where_it_does_read_whole() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"[..],
            b"GET / HTTP/1.0\n\nx",
            b"CONNECT a:1 HTTP/1.1\r\n\nrest",
        ] {
            let whole = find_end(head, 0);
            assert!(whole.is_some());
            for step in 1..5 {
                let (mut scanned, mut found) = (0, None);
                for len in (step..head.len() + step).step_by(step) {
                    let buf = &head[..len.min(head.len())];
                    found = find_end(buf, scanned);
                    if found.is_some() {
                        break;
                    }
                    scanned = buf.len();
                }
                assert_eq!(found, whole, "{head:?} read {step} byte(s) at a time");
            }
        }
    }

    fn forward(head: &str) -> (String, Request) {
        let req = parse(head.as_bytes(), b"body", &|u, p| {
            (u == b"launch").then(|| std::str::from_utf8(p).unwrap().parse().unwrap())
        })
        .unwrap();
        let Kind::Forward { head } = &req.kind else {
            panic!("not forwarded")
        };
        (String::from_utf8(head.clone()).unwrap(), req)
    }

    #[test]
    fn absolute_requests_are_rewritten_for_the_origin() {
        let (head, req) = forward(
            "GET http://Files.Example:8080/a/b?c=1#frag HTTP/1.1\r\nHost: elsewhere.example\r\n\
             Proxy-Authorization: Basic bGF1bmNoOjQy\r\nProxy-Connection: keep-alive\r\n\
             Connection: keep-alive, X-Private\r\nX-Private: 1\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(
            head,
            "GET /a/b?c=1 HTTP/1.1\r\nHost: Files.Example:8080\r\nAccept: */*\r\n\
             Connection: close\r\n\r\nbody"
        );
        assert_eq!(
            (req.host.as_slice(), req.port, req.launch),
            (&b"Files.Example"[..], 8080, Some(42))
        );
        let (head, req) = forward("GET http://a.example HTTP/1.0\r\n\r\n");
        assert_eq!(
            head,
            "GET / HTTP/1.0\r\nHost: a.example\r\nConnection: close\r\n\r\nbody"
        );
        assert_eq!((req.port, req.launch), (80, None));
        let none = |_: &[u8], _: &[u8]| None;
        for bad in [
            "GET https://a.example/ HTTP/1.1\r\n\r\n",
            "GET /relative HTTP/1.1\r\n\r\n",
            "GET ftp://a.example/ HTTP/1.1\r\n\r\n",
            "GET http://a.example/ HTTP/1.1\r\n folded\r\n\r\n",
            "GET http://a.example/ HTTP/1.1\r\nNo colon\r\n\r\n",
            "GET  http://a.example/ HTTP/1.1\r\n\r\n",
            "CONNECT a.example HTTP/1.1\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(parse(bad.as_bytes(), b"", &none).is_err(), "{bad:?}");
        }
        let req = parse(
            b"CONNECT a.example:443 HTTP/1.1\r\n\r\n",
            b"\x16\x03",
            &none,
        )
        .unwrap();
        assert!(matches!(req.kind, Kind::Connect { ref early } if early == b"\x16\x03"));
    }

    #[test]
    fn header_values_go_on_as_bytes_and_never_with_cr_or_nul() {
        let none = |_: &[u8], _: &[u8]| None;
        let req = parse(
            b"GET http://a.example/ HTTP/1.1\r\nX-Name: caf\xe9 \r\n\r\n",
            b"",
            &none,
        )
        .unwrap();
        let Kind::Forward { head } = req.kind else {
            panic!("not forwarded")
        };
        assert_eq!(
            head,
            b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Name: caf\xe9\r\nConnection: close\r\n\r\n"
        );
        for bad in [
            &b"GET http://a.example/ HTTP/1.1\r\nX: a\rHost: b\r\n\r\n"[..],
            b"GET http://a.example/ HTTP/1.1\r\nX: a\0b\r\n\r\n",
            b"GET http://a.example/ HTTP/1.1\r\nX\xe9: a\r\n\r\n",
            b"GET http://a.\xe9xample/ HTTP/1.1\r\n\r\n",
            b"GET http://a.example/ HTTP/1.1\rHost: b\r\n\r\n",
            b"GET http://a.example/x\rHost:b HTTP/1.1\r\n\r\n",
            b"GET http://a.example/x\0 HTTP/1.1\r\n\r\n",
        ] {
            assert!(parse(bad, b"", &none).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_refused_head_names_what_its_request_line_named() {
        let unattributed = |head: &[u8], e: &HeadError| named(head, e, &|_, _| None);
        let e = HeadError::BadHeader;
        let n = unattributed(b"CONNECT evil.example:443 HTTP/1.1\r\nno colon\r\n\r\n", &e).unwrap();
        assert_eq!(
            (n.host.as_slice(), n.port, n.via),
            (&b"evil.example"[..], 443, "connect")
        );
        assert!(n.reason.contains("malformed"), "{}", n.reason);
        let n = unattributed(b"GET http://a.example:81/x HTTP/1.1\r\nX\r\n\r\n", &e).unwrap();
        assert_eq!(
            (n.host.as_slice(), n.port, n.via),
            (&b"a.example"[..], 81, "http")
        );
        // A head too large to end: its first line counts when it is whole, or when an
        // absolute URI's host has ended in it.
        assert!(unattributed(b"CONNECT evil.example:4", &HeadError::TooLarge).is_none());
        assert!(unattributed(b"GET http://evil.example:8", &HeadError::TooLarge).is_none());
        let n = unattributed(b"GET http://evil.example:81/aaaa\xc3", &HeadError::TooLarge).unwrap();
        assert_eq!(
            (n.host.as_slice(), n.port, n.via),
            (&b"evil.example"[..], 81, "http")
        );
        // A request line refused for a control byte still names where it went.
        let n = unattributed(
            b"GET http://evil.example/\rX:y HTTP/1.1\r\n\r\n",
            &HeadError::BadRequestLine,
        )
        .unwrap();
        assert_eq!(n.host.as_slice(), b"evil.example");
        assert!(unattributed(
            b"CONNECT evil.example:443 HTTP/1.1\r\nX-Big: aaaa",
            &HeadError::TooLarge
        )
        .is_some());
        assert!(unattributed(b"SSH-2.0-OpenSSH\r\n\r\n", &HeadError::BadRequestLine).is_none());
    }

    #[test]
    fn a_refused_head_is_attributed_to_the_launch_its_credentials_name() {
        let launch = |u: &[u8], p: &[u8]| (u == b"launch" && p == b"42").then_some(42);
        let head = b"CONNECT evil.example:443 HTTP/1.1\r\nPROXY-Authorization:  Basic bGF1bmNoOjQy \r\nno colon\r\n\r\n";
        let n = named(head, &HeadError::BadHeader, &launch).unwrap();
        assert_eq!(n.launch, Some(42));
        let n = named(
            b"CONNECT evil.example:443 HTTP/1.1\r\nno colon\r\n\r\n",
            &HeadError::BadHeader,
            &launch,
        )
        .unwrap();
        assert_eq!(n.launch, None);
    }

    #[test]
    fn targets() {
        assert_eq!(host_port("a.com:443", None).unwrap(), ("a.com", 443));
        assert_eq!(host_port("[::1]:8080", None).unwrap(), ("::1", 8080));
        assert_eq!(host_port("a.com", Some(80)).unwrap(), ("a.com", 80));
        assert!(host_port("a.com", None).is_err());
        assert!(host_port("a.com:0", None).is_err());
        assert!(host_port(":443", None).is_err());
    }
}
