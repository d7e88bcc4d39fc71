//! The process that launched the routed program: where its signals to its parent go
//! (`kill -USR1 $PPID`, which the broker takes and passes on as `Reply::SignalParent`).
//!
//! Only while that process is still our parent: once it is gone, our parent is a
//! subreaper or init, which the routed program never knew and must not reach (locally
//! its `kill $PPID` would find no such process). The launcher is named by the pid
//! recorded when the launch was asked for and held by a pidfd, so a reused pid is never
//! signalled.

/// Held from the start of the relay; raw syscalls only (the hook path's rules: the shim
/// and the hook's fork relay use it, and `ctx exec`).
pub struct Launcher {
    pid: libc::pid_t,
    /// -1 without one: no launcher, or a kernel without `pidfd_open` (then `kill`, while
    /// `getppid()` still names it).
    pidfd: i32,
}

impl Launcher {
    /// `pid` launched the program; held only if it is our parent now.
    pub fn hold(pid: libc::pid_t) -> Launcher {
        // SAFETY: plain syscalls with integer arguments.
        unsafe {
            if pid <= 1 || libc::getppid() != pid {
                return Launcher { pid: 0, pidfd: -1 };
            }
            let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
            // Still our parent once held: the pidfd is that process's, not a reuse's.
            if libc::getppid() != pid {
                if fd >= 0 {
                    libc::close(fd);
                }
                return Launcher { pid: 0, pidfd: -1 };
            }
            Launcher { pid, pidfd: fd }
        }
    }

    /// Passes `signal` on to the launcher, if it is still our parent; `guarded` (the
    /// program runs as another uid), only one that cannot end or stop it.
    pub fn signal(&self, signal: i32, guarded: bool) {
        if self.pid == 0 || !(1..=64).contains(&signal) {
            return;
        }
        // SAFETY: plain syscalls with integer arguments and a null siginfo.
        unsafe {
            if libc::getppid() != self.pid {
                return;
            }
            if guarded && !harmless_to(self.pid, signal) {
                return;
            }
            if self.pidfd >= 0 {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    self.pidfd,
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            } else {
                libc::kill(self.pid, signal);
            }
        }
    }

    /// The recorded pid, to hand to a shim taking over this relay (0: none).
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if self.pidfd >= 0 {
            // SAFETY: our own descriptor, closed once.
            unsafe { libc::close(self.pidfd) };
        }
    }
}

/// Whether `signal` is one a program of another uid may send process `pid`, which the
/// kernel would let it send none: a notification, never a request to stop, end or
/// resume. `SIGCHLD`, `SIGURG` and `SIGWINCH` (ignored unless caught, and a handler of
/// them only looks); `SIGUSR1` and `SIGUSR2` only where `pid` catches or ignores them
/// (`SigCgt`, `SigIgn` in its `/proc/PID/status`: by default they end it). Not the
/// signals a caught handler takes for "hang up", "interrupt", "terminate" or "stop"
/// (an interactive bash exits on its caught SIGHUP, Python on its caught SIGINT), not
/// `SIGCONT` (it would resume a launcher its own user stopped), nor the real-time ones.
/// Raw syscalls into a stack buffer, no allocation. A launcher that changes its
/// disposition meanwhile gets what it chose.
fn harmless_to(pid: libc::pid_t, signal: i32) -> bool {
    if matches!(signal, libc::SIGCHLD | libc::SIGURG | libc::SIGWINCH) {
        return true;
    }
    if signal != libc::SIGUSR1 && signal != libc::SIGUSR2 {
        return false;
    }
    let mut path = [0u8; 32];
    let mut at = write_bytes(&mut path, 0, b"/proc/");
    at = write_decimal(&mut path, at, pid as u32);
    at = write_bytes(&mut path, at, b"/status\0");
    let Some(path) = path
        .get(..at)
        .and_then(|p| std::ffi::CStr::from_bytes_with_nul(p).ok())
    else {
        return false;
    };
    let mut buf = [0u8; 8192];
    let Some(n) = crate::inherit::read_small(path, &mut buf) else {
        return false;
    };
    let text = &buf[..n];
    // Lines start after a newline: a process name (`Name:`, escaped by the kernel) cannot
    // pass for one.
    let mask = |key: &[u8]| match crate::inherit::status_number(text, key, 16) {
        Some((v, 16)) => Some(v),
        _ => None,
    };
    match (mask(b"\nSigIgn:"), mask(b"\nSigCgt:")) {
        (Some(ignored), Some(caught)) => (ignored | caught) & (1u64 << (signal - 1)) != 0,
        _ => false,
    }
}

/// Copies `bytes` into `buf` at `at`; the position after them (past the end: no room).
fn write_bytes(buf: &mut [u8], at: usize, bytes: &[u8]) -> usize {
    let end = at + bytes.len();
    if end <= buf.len() {
        buf[at..end].copy_from_slice(bytes);
    }
    end
}

/// Writes `n` in decimal into `buf` at `at`; the position after it.
fn write_decimal(buf: &mut [u8], at: usize, mut n: u32) -> usize {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits[..len].reverse();
    write_bytes(buf, at, &digits[..len])
}

#[cfg(test)]
mod tests {
    use super::harmless_to;

    /// This test process's own dispositions, as /proc reports them.
    extern "C" fn nothing(_: libc::c_int) {}

    #[test]
    fn only_a_notification_the_launcher_takes_is_harmless() {
        let me = std::process::id() as libc::pid_t;
        // SAFETY: a handler that does nothing, and SIG_IGN, on signals the harness leaves alone.
        unsafe {
            libc::signal(libc::SIGUSR1, nothing as *const () as libc::sighandler_t);
            libc::signal(libc::SIGUSR2, libc::SIG_IGN);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
        }
        assert!(harmless_to(me, libc::SIGUSR1), "caught");
        assert!(harmless_to(me, libc::SIGUSR2), "ignored");
        assert!(harmless_to(me, libc::SIGWINCH), "ignored by default");
        assert!(!harmless_to(me, libc::SIGTERM), "ends it by default");
        // The harness catches none of these; caught, they still mean "stop" or "end".
        for caught in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGTSTP] {
            // SAFETY: a handler that does nothing, on signals nothing sends this test.
            unsafe { libc::signal(caught, nothing as *const () as libc::sighandler_t) };
            assert!(!harmless_to(me, caught), "caught {caught}");
        }
        assert!(!harmless_to(me, libc::SIGCONT));
        assert!(!harmless_to(me, libc::SIGRTMIN()));
        assert!(!harmless_to(me, libc::SIGKILL));
        assert!(!harmless_to(me, libc::SIGSTOP));
        assert!(!harmless_to(i32::MAX, libc::SIGUSR1), "no such process");
    }
}
