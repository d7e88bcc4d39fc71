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

    /// Passes `signal` on to the launcher, if it is still our parent.
    pub fn signal(&self, signal: i32) {
        if self.pid == 0 || !(1..=64).contains(&signal) {
            return;
        }
        // SAFETY: plain syscalls with integer arguments and a null siginfo.
        unsafe {
            if libc::getppid() != self.pid {
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
