//! The client's side of [`crate::Reply::Lingering`]: a terminal launch whose program has
//! ended while processes it left behind (`cmd &`) still hold its PTY. Locally those jobs
//! keep writing to the caller's terminal after the caller has the program's status; routed,
//! the client that waits for the program ([`lingering_follows`]) leaves behind a detached
//! process ([`detach`]) that copies their output to the caller's terminal ([`relay`]) until
//! the broker ends the connection, and exits with the program's status at once.
//!
//! Shared by the shim and `ctx exec`. [`detach`] and [`relay`] run in a forked child of
//! the client: system calls, the stack and the buffer the client allocated before, nothing
//! else.

use std::os::fd::RawFd;

use crate::frame::{self, FRAME_HEADER};
use crate::terminal::{write_all, Output};
use crate::{reply_tag, Reply, TermModes};

/// The most output the broker sends in one frame once the program has ended.
pub const LINGER_OUTPUT: usize = 64 * 1024;

/// A buffer the relay can read every frame the broker sends it into: an `Output` of
/// [`LINGER_OUTPUT`], with room for its encoding and a partial frame behind it.
pub const RELAY_BUFFER: usize = 192 * 1024;
const _: () = assert!(RELAY_BUFFER >= 2 * (LINGER_OUTPUT + 64));

/// How long the client waits, after `Exited`, for `Lingering` or the end of the stream (a
/// broker sends either right after `Exited`; this only bounds a stuck one).
pub const NOTICE_MS: i32 = 1000;

/// Whether `Lingering` follows `Exited` on `sock`. `buf[..*have]` holds what was already
/// read after `Exited`; on return it holds what followed `Lingering`. `false` at the end of
/// the stream, on any other message, and when the broker says nothing.
pub fn lingering_follows(sock: RawFd, buf: &mut [u8], have: &mut usize) -> bool {
    loop {
        match frame::complete_frame(&buf[..*have]) {
            Ok(Some(total)) => {
                // Told by its tag, as the relay tells its messages: nothing is decoded here
                // that could allocate.
                let yes = buf[FRAME_HEADER..total] == [reply_tag::LINGERING];
                buf.copy_within(total..*have, 0);
                *have -= total;
                return yes;
            }
            Ok(None) if *have < buf.len() => {}
            _ => return false,
        }
        let mut p = libc::pollfd {
            fd: sock,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, NOTICE_MS) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            return false;
        }
        // SAFETY: reads into the free tail of buf.
        let k = unsafe { libc::read(sock, buf[*have..].as_mut_ptr().cast(), buf.len() - *have) };
        if k < 0 && matches!(errno(), libc::EINTR | libc::EAGAIN) {
            continue;
        }
        if k <= 0 {
            return false;
        }
        *have += k as usize;
    }
}

/// Leaves behind a process that is neither the caller's child nor in its session (two
/// forks, `setsid` between them): the caller's `waitpid` never sees it, its terminal's
/// signals never reach it, and it can take no controlling terminal. Returns `true` in that
/// process, which holds only `keep` of its descriptors, no blocked signal, and `/` as its
/// cwd; `false` in the client, once the middle process is reaped (also when a fork failed:
/// the client then exits without one, and the broker hangs the PTY up).
pub fn detach(keep: &[RawFd]) -> bool {
    // SAFETY: fork, setsid, waitpid and _exit take no memory of ours.
    unsafe {
        let middle = libc::fork();
        if middle < 0 {
            return false;
        }
        if middle > 0 {
            while libc::waitpid(middle, std::ptr::null_mut(), 0) < 0 && errno() == libc::EINTR {}
            return false;
        }
        libc::setsid();
        match libc::fork() {
            0 => {}
            _ => libc::_exit(0),
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::chdir(c"/".as_ptr());
    }
    retitle(b"ctx-linger");
    // SAFETY: sets this process's name from a constant string.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            c"ctx-linger".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    close_all_but(keep);
    true
}

/// Gives this process `title` as its command line (`ps`, `pgrep -f`): the client's is the
/// routed program's own (the shim's argv) or `ctx exec`'s, which would pass it off as the
/// program, and a `pkill -f` meant for the program's jobs would end it. Overwrites the
/// argument area in place, as `setproctitle` does; the client reads its arguments no more.
fn retitle(title: &[u8]) {
    let mut stat = [0u8; 1024];
    // SAFETY: a constant path; reads into a stack buffer.
    let n = unsafe {
        let fd = libc::open(
            c"/proc/self/stat".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return;
        }
        let n = libc::read(fd, stat.as_mut_ptr().cast(), stat.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return;
    }
    let Some((start, end)) = arg_area(&stat[..n as usize]) else {
        return;
    };
    let len = end - start;
    if len == 0 {
        return;
    }
    // SAFETY: [start, end) is this process's argument area, as the kernel reports it:
    // mapped and writable (the initial stack), and nothing reads it from here on.
    unsafe {
        let area = start as *mut u8;
        std::ptr::write_bytes(area, 0, len);
        std::ptr::copy_nonoverlapping(title.as_ptr(), area, title.len().min(len - 1));
    }
}

/// `arg_start` and `arg_end` (fields 48 and 49) of a `/proc/PID/stat` line.
fn arg_area(stat: &[u8]) -> Option<(usize, usize)> {
    // The name (field 2) may hold spaces and parentheses: fields count from its last `)`.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let mut fields = stat[close + 1..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty())
        .skip(48 - 3);
    let start = decimal(fields.next()?)?;
    let end = decimal(fields.next()?)?;
    (start != 0 && end >= start).then_some((start, end))
}

fn decimal(digits: &[u8]) -> Option<usize> {
    let digits = digits.strip_suffix(b"\n").unwrap_or(digits);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add((d - b'0') as usize))
            .flatten()
    })
}

/// Copies the PTY's output the broker sends on `sock` to `out` (the caller's terminal),
/// its `ONLCR` taken out as the client took it out while the program ran, until the broker
/// ends the connection or `out` is gone; then exits. `buf[..have]` holds what was already
/// read. The caller's terminal's modes are never changed: the program's ended with it.
pub fn relay(
    sock: RawFd,
    out: RawFd,
    pty: Option<TermModes>,
    buf: &mut [u8],
    mut have: usize,
) -> ! {
    let mut output = Output { pty };
    loop {
        let mut start = 0;
        loop {
            match frame::complete_frame(&buf[start..have]) {
                Ok(Some(total)) => {
                    let payload = &buf[start + FRAME_HEADER..start + total];
                    // Only the two messages that follow `Lingering`, and neither allocates
                    // to decode; whatever else a broker sends is skipped undecoded.
                    let wanted = matches!(
                        payload.first(),
                        Some(&(reply_tag::OUTPUT | reply_tag::MODES))
                    );
                    if wanted {
                        match frame::decode_reply(payload) {
                            Ok(Reply::Output(bytes)) => {
                                if !output.write(out, &bytes, |b| write_all(out, b)) {
                                    end();
                                }
                            }
                            Ok(Reply::Modes(modes)) => output.pty = Some(modes),
                            _ => end(),
                        }
                    }
                    start += total;
                }
                Ok(None) => break,
                Err(_) => end(),
            }
        }
        buf.copy_within(start..have, 0);
        have -= start;
        if have == buf.len() {
            end();
        }
        // The caller's terminal hung up (or the pipe's reader left): nothing to copy to.
        let mut p = [
            libc::pollfd {
                fd: sock,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: out,
                events: 0,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        if unsafe { libc::poll(p.as_mut_ptr(), 2, -1) } < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            end();
        }
        if p[1].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            end();
        }
        if p[0].revents == 0 {
            continue;
        }
        // SAFETY: reads into the free tail of buf.
        let k = unsafe { libc::read(sock, buf[have..].as_mut_ptr().cast(), buf.len() - have) };
        if k < 0 && matches!(errno(), libc::EINTR | libc::EAGAIN) {
            continue;
        }
        if k <= 0 {
            end();
        }
        have += k as usize;
    }
}

fn end() -> ! {
    // SAFETY: ends this process without running anything of the client's.
    unsafe { libc::_exit(0) }
}

/// Closes every descriptor but `keep` (at most a few, in any order).
fn close_all_but(keep: &[RawFd]) {
    gaps(keep, |from, to| {
        // SAFETY: close_range takes no memory.
        let r = unsafe { libc::syscall(libc::SYS_close_range, from, to, 0u32) };
        if r < 0 {
            for fd in from..=to.min(from.saturating_add(4096)) {
                // SAFETY: closing a descriptor number, open or not.
                unsafe { libc::close(fd as i32) };
            }
        }
    });
}

/// Calls `close` with each range of descriptor numbers (first, last) that holds none of
/// `keep`, lowest first.
fn gaps(keep: &[RawFd], mut close: impl FnMut(u32, u32)) {
    let mut from: u32 = 0;
    loop {
        // The lowest kept descriptor at or above `from`.
        let next = keep
            .iter()
            .filter(|&&k| k >= 0 && k as u32 >= from)
            .min()
            .map(|&k| k as u32);
        match next {
            Some(k) => {
                if k > from {
                    close(from, k - 1);
                }
                from = k + 1;
            }
            None => return close(from, u32::MAX),
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_vec;
    use crate::ExitStatus;
    use std::borrow::Cow;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_argument_area_is_read_from_stat() {
        let stat = std::fs::read("/proc/self/stat").unwrap();
        let (start, end) = arg_area(&stat).unwrap();
        assert!(end > start, "{start} {end}");
        // A name with spaces and a parenthesis, and the fields after it.
        let mut line = b"12 (a) b) S".to_vec();
        for i in 4..=52 {
            line.extend_from_slice(format!(" {i}").as_bytes());
        }
        assert_eq!(arg_area(&line), Some((48, 49)));
        assert_eq!(arg_area(b"12 (x) S 1 2"), None);
    }

    #[test]
    fn every_descriptor_but_the_kept_ones_is_closed() {
        let mut seen = Vec::new();
        gaps(&[5, 3, -1], |a, b| seen.push((a, b)));
        assert_eq!(seen, [(0, 2), (4, 4), (6, u32::MAX)]);
        seen.clear();
        gaps(&[0, 1], |a, b| seen.push((a, b)));
        assert_eq!(seen, [(2, u32::MAX)]);
    }

    fn frames(replies: &[Reply<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in replies {
            encode_vec(r, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn lingering_is_told_by_the_frame_after_exited_and_what_follows_it_is_kept() {
        let (ours, mut broker) = UnixStream::pair().unwrap();
        let mut buf = vec![0u8; RELAY_BUFFER];
        // Part of it already read with `Exited`, the rest still in the socket.
        let bytes = frames(&[Reply::Lingering, Reply::Output(Cow::Borrowed(b"late\n"))]);
        buf[..3].copy_from_slice(&bytes[..3]);
        broker.write_all(&bytes[3..]).unwrap();
        let mut have = 3;
        assert!(lingering_follows(ours.as_raw_fd(), &mut buf, &mut have));
        let rest = frames(&[Reply::Output(Cow::Borrowed(b"late\n"))]);
        assert_eq!(&buf[..have], &rest[..]);

        // The end of the stream, or anything else: no lingering.
        let (ours, broker) = UnixStream::pair().unwrap();
        drop(broker);
        let mut have = 0;
        assert!(!lingering_follows(ours.as_raw_fd(), &mut buf, &mut have));
        let (ours, mut broker) = UnixStream::pair().unwrap();
        broker
            .write_all(&frames(&[Reply::Exited {
                status: ExitStatus::Code(0),
                timed_out: false,
            }]))
            .unwrap();
        let mut have = 0;
        assert!(!lingering_follows(ours.as_raw_fd(), &mut buf, &mut have));
    }
}
