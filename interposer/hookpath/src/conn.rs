//! One launch's conversation with the broker, up to its verdict: connect, send `Hello` +
//! `Exec` with the descriptors, read `Hello` and then `Accepted`, `Started`, `ExecFailed` or
//! `Error`.
//! Replies are checked by their first byte before decoding, so no variant that would
//! allocate is ever decoded here.

use std::mem::{size_of, zeroed};

use ctx_protocol::fdpass;
use ctx_protocol::{frame, reply_tag, ErrorKind, Reply};

/// How long the hook waits for the broker's verdict before failing closed.
const VERDICT_TIMEOUT_SECS: libc::time_t = 60;
/// The same in milliseconds, for `poll` (one value: see the test below).
const VERDICT_TIMEOUT_MS: i64 = 60_000;
/// How long a launch waits for room to send its descriptors (see
/// `fdpass::send_with_fds_patiently`): within the broker's deadline for a request, which
/// runs from the connect.
const SEND_PATIENCE_MS: u32 = 3000;

/// The broker's answer to a launch.
pub enum Verdict<'a> {
    /// The routed program is running.
    Started { id: u64, pid: i32 },
    /// It is being started and will most likely run: the caller may go on (become the
    /// shim) now; only a late `ExecFailed` may follow.
    Accepted,
    /// It could not be started; nothing runs. The caller sees this errno.
    Failed { errno: i32, message: &'a str },
    /// The broker refused the request (unknown context, not allowed, ...).
    Refused { message: &'a str },
    /// The conversation broke: `what` failed with `errno`.
    Broken { what: &'static str, errno: i32 },
}

/// The start of every fail-closed message: `ctx: cannot route "ls" to context user: `.
pub fn refusal(context: &str, name: &[u8]) -> super::sys::Line {
    let mut l = super::sys::Line::new();
    l.str("ctx: cannot route ")
        .quoted(name)
        .str(" to context ")
        .str(context)
        .str(": ");
    l
}

/// The one line `on_broker_down = "local"` writes when it runs a launch locally:
/// `ctx: broker at /run/ctx/broker.sock unreachable (ENOENT): running "ls" locally, not in
/// context user (on_broker_down = local)`.
pub fn running_locally(context: &str, name: &[u8], socket: &[u8], errno: i32) {
    let mut l = super::sys::Line::new();
    l.str("ctx: broker at ")
        .push(socket)
        .str(" unreachable (")
        .errno_name(errno)
        .str("): running ")
        .quoted(name)
        .str(" locally, not in context ")
        .str(context)
        .str(" (on_broker_down = local)")
        .write_to(2);
}

/// Appends the reason a verdict other than started/failed gives, naming the socket.
pub fn explain(l: &mut super::sys::Line, socket: &[u8], v: &Verdict<'_>) {
    match v {
        Verdict::Refused { message } => {
            l.str(message);
        }
        Verdict::Broken { what, errno } => {
            l.str("broker at ")
                .push(socket)
                .str(": ")
                .str(what)
                .str(": ")
                .errno_name(*errno);
        }
        Verdict::Started { .. } | Verdict::Accepted | Verdict::Failed { .. } => {}
    }
}

/// A connected, close-on-exec stream socket to the broker at `path` (a C string with its
/// NUL), numbered 3 or above so it can never sit where the routed stdio belongs.
pub fn connect(path_c: &[u8]) -> Result<i32, i32> {
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path_c.len() > addr.sun_path.len() {
        return Err(libc::ENAMETOOLONG);
    }
    for (d, s) in addr.sun_path.iter_mut().zip(path_c.iter()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket creation.
    let mut fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(super::sys::errno());
    }
    if fd < 3 {
        // SAFETY: duplicates our own socket above the stdio numbers, then drops the low one.
        let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        // SAFETY: `fd` is ours.
        unsafe { libc::close(fd) };
        if high < 0 {
            return Err(super::sys::errno());
        }
        fd = high;
    }
    let tv = libc::timeval {
        tv_sec: VERDICT_TIMEOUT_SECS,
        tv_usec: 0,
    };
    // SAFETY: sets a receive timeout from a valid timeval.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const _,
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    loop {
        // SAFETY: addr is a valid sockaddr_un of the given size.
        let r = unsafe {
            libc::connect(
                fd,
                &addr as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return Ok(fd);
        }
        let e = super::sys::errno();
        if e != libc::EINTR {
            // SAFETY: `fd` is ours.
            unsafe { libc::close(fd) };
            return Err(e);
        }
    }
}

/// Clears the receive timeout once the verdict is in: the shim then waits for the routed
/// program as long as it runs.
#[inline]
pub fn clear_timeout(fd: i32) {
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: sets a receive timeout from a valid timeval.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const _,
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

fn io_errno(e: &std::io::Error) -> i32 {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => libc::ECONNRESET,
        _ => e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// Waits until the broker has written something (or hung up), for the verdict's time at
/// most. A `read` blocked on the socket would be woken, for nothing, each time the broker
/// reads part of the request (the kernel wakes a stream socket's sleepers when its peer
/// makes room to write, and a blocked reader sleeps there too); `poll` for POLLIN only is
/// not. Woken on the broker's CPU, the caller would preempt the broker's thread there.
/// The deadline holds across interruptions: a caller whose timer fires every 200 ms must
/// not wait for ever for a broker that never answers (helper-95).
fn wait_readable(sock: i32) -> Result<(), i32> {
    let deadline = monotonic_ms() + VERDICT_TIMEOUT_MS;
    let mut pfd = super::sys::poll_in(sock);
    loop {
        let left = (deadline - monotonic_ms()).clamp(0, i32::MAX as i64) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left) };
        match n {
            0 => return Err(libc::EAGAIN),
            n if n > 0 => return Ok(()),
            _ if super::sys::errno() == libc::EINTR => continue,
            _ => return Err(super::sys::errno()),
        }
    }
}

fn monotonic_ms() -> i64 {
    // SAFETY: timespec is plain data that clock_gettime fills.
    let mut ts: libc::timespec = unsafe { zeroed() };
    // SAFETY: a valid clock id and pointer; async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i64 * 1000 + ts.tv_nsec as i64 / 1_000_000
}

fn read_reply(sock: i32, buf: &mut [u8]) -> Result<usize, Verdict<'static>> {
    if let Err(errno) = wait_readable(sock) {
        return Err(Verdict::Broken {
            what: "reading the broker's reply",
            errno,
        });
    }
    match fdpass::read_frame(sock, buf) {
        Ok(n) => Ok(n),
        Err(fdpass::ReadFrameError::Io(e)) => Err(Verdict::Broken {
            what: "reading the broker's reply",
            errno: io_errno(&e),
        }),
        Err(fdpass::ReadFrameError::Frame(_)) => Err(Verdict::Broken {
            what: "reading the broker's reply (malformed frame)",
            errno: libc::EPROTO,
        }),
    }
}

/// Sends the encoded launch with `fds` on `sock` and reads the verdict into `buf`. A
/// refusal because the broker's room for this uid is taken by its other connections
/// (`Busy`: a burst of launches from it) connects again to `path_c` after a pause, on the
/// same descriptor number, for up to [`BUSY_PATIENCE_MS`].
pub fn exchange<'b>(
    sock: i32,
    path_c: &[u8],
    request: &[u8],
    fds: &[i32],
    buf: &'b mut [u8],
) -> Verdict<'b> {
    let mut left_us = u64::from(BUSY_PATIENCE_MS) * 1000;
    let mut pause_us = 1000;
    let n = loop {
        let n = match converse(sock, request, fds, buf) {
            Ok(n) => n,
            Err(v) => return v,
        };
        if left_us == 0 || !busy(buf.get(..n).unwrap_or(&[])) {
            break n;
        }
        let pause = pause_us.min(left_us);
        super::sys::sleep_us(pause);
        left_us -= pause;
        pause_us = (pause_us * 2).min(64_000);
        if reconnect(sock, path_c).is_err() {
            break n;
        }
    };
    decode_verdict(buf.get(..n).unwrap_or(&[]))
}

/// How long a launch refused as `Busy` keeps connecting again: the room is freed as the
/// uid's other launches exec their programs, which a burst of large requests on a loaded
/// machine can stretch past a few seconds (3 s failed one of 50 launches of 1.8 MiB argvs
/// on the CI machine).
const BUSY_PATIENCE_MS: u32 = 30_000;

/// Replaces the connection on `sock` with a new one to the broker at `path_c`.
fn reconnect(sock: i32, path_c: &[u8]) -> Result<(), i32> {
    let fresh = connect(path_c)?;
    // SAFETY: both descriptors are ours; the old connection closes in the swap.
    let r = unsafe { libc::dup3(fresh, sock, libc::O_CLOEXEC) };
    let e = super::sys::errno();
    // SAFETY: `fresh` is ours, and now duplicated at `sock`.
    unsafe { libc::close(fresh) };
    if r < 0 {
        return Err(e);
    }
    Ok(())
}

/// Whether the verdict is the broker's `Busy` refusal.
fn busy(payload: &[u8]) -> bool {
    payload.first() == Some(&reply_tag::ERROR)
        && matches!(
            frame::decode_reply(payload),
            Ok(Reply::Error {
                kind: ErrorKind::Busy,
                ..
            })
        )
}

/// One conversation up to the verdict: its length in `buf`. More descriptors than one
/// message carries wait for the broker's `SendDescriptors`: sent with the request, the
/// first ones would stay in flight, charged to the caller's user, for as long as the
/// request waits unread, and a burst of such launches would hold the user's whole
/// allowance there (`ETOOMANYREFS`) while the requests the broker did read wait for theirs.
fn converse(
    sock: i32,
    request: &[u8],
    fds: &[i32],
    buf: &mut [u8],
) -> Result<usize, Verdict<'static>> {
    let deferred = fds.len() > fdpass::MAX_FDS;
    let with_request = if deferred { &[][..] } else { fds };
    let sent = fdpass::send_with_fds_patiently(sock, request, with_request, SEND_PATIENCE_MS);
    let closed =
        |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET));
    let mut first = match sent {
        Ok(()) => read_reply(sock, buf)?,
        // Refused at once, the broker may have closed before the request was all sent:
        // its reason is still there to read. Any other failure leaves it waiting for the
        // request, and nothing to read but its deadline.
        Err(e) => match closed(&e).then(|| read_reply(sock, buf)) {
            Some(Ok(n)) if matches!(buf.first(), Some(&(reply_tag::HELLO | reply_tag::ERROR))) => n,
            _ => {
                return Err(Verdict::Broken {
                    what: "sending the launch",
                    errno: e.raw_os_error().unwrap_or(libc::EIO),
                })
            }
        },
    };
    if deferred && buf.first() == Some(&reply_tag::SEND_DESCRIPTORS) {
        if let Err(e) = fdpass::send_fds_frame(sock, fds, SEND_PATIENCE_MS) {
            return Err(Verdict::Broken {
                what: "sending the launch's descriptors",
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            });
        }
        first = read_reply(sock, buf)?;
    }
    match buf.first() {
        Some(&reply_tag::HELLO) => read_reply(sock, buf),
        // A refusal may come instead of the greeting (e.g. a version mismatch).
        Some(&reply_tag::ERROR) => Ok(first),
        _ => Err(Verdict::Broken {
            what: "the broker's greeting",
            errno: libc::EPROTO,
        }),
    }
}

fn decode_verdict(payload: &[u8]) -> Verdict<'_> {
    let expected = matches!(
        payload.first(),
        Some(
            &(reply_tag::ERROR | reply_tag::STARTED | reply_tag::EXEC_FAILED | reply_tag::ACCEPTED)
        )
    );
    let broken = Verdict::Broken {
        what: "the broker's verdict",
        errno: libc::EPROTO,
    };
    if !expected {
        return broken;
    }
    match frame::decode_reply(payload) {
        Ok(Reply::Started { id, pid }) => Verdict::Started { id, pid },
        Ok(Reply::Accepted) => Verdict::Accepted,
        Ok(Reply::ExecFailed(f)) => Verdict::Failed {
            errno: if f.errno > 0 { f.errno } else { libc::EACCES },
            message: cow_str(f.message),
        },
        Ok(Reply::Error { message, .. }) => Verdict::Refused {
            message: cow_str(message),
        },
        _ => broken,
    }
}

/// Decoding from a byte slice always borrows; an owned value cannot occur, and would only
/// lose the message text.
fn cow_str(c: std::borrow::Cow<'_, str>) -> &'_ str {
    match c {
        std::borrow::Cow::Borrowed(s) => s,
        std::borrow::Cow::Owned(_) => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctx_protocol::{ErrorKind, ExecFailure, FailureKind, Stage};
    use std::borrow::Cow;

    fn payload(r: &Reply<'_>) -> Vec<u8> {
        postcard::to_allocvec(r).unwrap()
    }

    #[test]
    fn the_verdict_timeout_is_one_value() {
        assert_eq!(
            i128::from(VERDICT_TIMEOUT_SECS) * 1000,
            i128::from(VERDICT_TIMEOUT_MS)
        );
    }

    #[test]
    fn verdicts_decode() {
        let p = payload(&Reply::Started { id: 7, pid: 42 });
        assert!(matches!(
            decode_verdict(&p),
            Verdict::Started { id: 7, pid: 42 }
        ));
        let p = payload(&Reply::ExecFailed(ExecFailure {
            kind: FailureKind::NotFound,
            stage: Stage::Exec,
            errno: libc::ENOENT,
            errno_name: Cow::Borrowed("ENOENT"),
            message: Cow::Borrowed("no such file"),
        }));
        assert!(matches!(
            decode_verdict(&p),
            Verdict::Failed {
                errno: libc::ENOENT,
                message: "no such file"
            }
        ));
        let p = payload(&Reply::Error {
            kind: ErrorKind::Refused,
            message: Cow::Borrowed("uid 5 may not enter user"),
        });
        assert!(matches!(
            decode_verdict(&p),
            Verdict::Refused {
                message: "uid 5 may not enter user"
            }
        ));
        assert!(matches!(
            decode_verdict(&payload(&Reply::Accepted)),
            Verdict::Accepted
        ));
        let p = payload(&Reply::Contexts(vec![]));
        assert!(matches!(decode_verdict(&p), Verdict::Broken { .. }));
        assert!(matches!(decode_verdict(&[]), Verdict::Broken { .. }));
    }
}
