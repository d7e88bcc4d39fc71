//! The routed program's signals and end, as whoever holds its broker connection (the shim,
//! or the hook's own fork child) relays them: which signals are forwarded, the signalfd
//! that collects them, and reproducing the program's exit status or death by signal for
//! the caller's `waitpid`. Raw syscalls only: the hook runs this in a fork child.

use ctx_protocol::{ExecFailure, ExitStatus};

use super::sys;

/// Signals never intercepted: uncatchable ones, SIGCHLD (children the exec'ing caller left
/// behind are ours now, not the routed program's), glibc's internal ones, and synchronous
/// faults, which must kill the relaying process itself.
pub fn forwardable(sig: i32) -> bool {
    !matches!(
        sig,
        libc::SIGKILL
            | libc::SIGSTOP
            | libc::SIGCHLD
            | libc::SIGSEGV
            | libc::SIGBUS
            | libc::SIGFPE
            | libc::SIGILL
            | libc::SIGTRAP
            | libc::SIGSYS
            | 32
            | 33
    )
}

/// Blocks every signal the relay forwards, from the moment a launch is accepted until the
/// relay (here, or the shim the hook execs: a mask survives `execve`) reads them from its
/// signalfd: one arriving meanwhile (`Popen.terminate()` from a caller quicker than the
/// shim's start) stays pending instead of killing the relay, whose end would take the
/// whole routed group. Gives back the mask to restore if the relay cannot start.
pub fn block_forwarded() -> libc::sigset_t {
    let mut set = crate::sys::signals::empty();
    let mut old = crate::sys::signals::empty();
    add_forwarded(&mut set);
    crate::sys::signals::procmask(libc::SIG_BLOCK, Some(&set), Some(&mut old));
    old
}

/// Adds every signal the relay forwards to `set`.
pub fn add_forwarded(set: &mut libc::sigset_t) {
    for sig in (1..=64).filter(|&s| forwardable(s)) {
        crate::sys::signals::add(set, sig);
    }
}

/// Puts back a mask [`block_forwarded`] gave.
pub fn restore_mask(old: &libc::sigset_t) {
    crate::sys::signals::procmask(libc::SIG_SETMASK, Some(old), None);
}

/// Blocks every signal we forward and returns a signalfd for them (-1 on failure).
pub fn signal_fd() -> i32 {
    let mut set = crate::sys::signals::empty();
    add_forwarded(&mut set);
    crate::sys::signals::procmask(libc::SIG_BLOCK, Some(&set), None);
    // SAFETY: a valid set.
    unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) }
}

/// One signal the relaying process received, to forward.
#[derive(Clone, Copy)]
pub struct Caught {
    pub signo: i32,
    /// Sent by the kernel (`SI_KERNEL`): a terminal's interrupt, quit or suspend key, its
    /// hangup or resize. Locally those reach the whole foreground process group, so they
    /// go to the routed group; so does the hangup the session's leader (an interactive
    /// shell that lost its terminal) passes on to each of its jobs' groups. A signal a
    /// process sent (`kill`, `sigqueue`, `pidfd_send_signal`: `Popen.terminate()`)
    /// reaches the routed program only, as it would reach only the local child, not its
    /// children.
    pub from_terminal: bool,
    /// Sent by this very process (`kill`): the interrupt key's signal that the relay
    /// raised at its caller's foreground group, itself among it.
    pub from_self: bool,
}

/// The next signal waiting on `sfd` (a non-blocking [`signal_fd`]) to forward, or `None`
/// when none is. A signal the caller left ignored stays ignored (`cmd &` in a
/// non-interactive shell must survive Ctrl-C as locally): blocked, it still arrives here,
/// and is dropped. Asking at arrival, not for every signal up front, spares each launch
/// about 50 `sigaction` calls (13 us).
#[inline]
pub fn next_signal(sfd: i32) -> Option<Caught> {
    loop {
        // SAFETY: signalfd_siginfo is plain data.
        let mut si: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let sz = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads one whole siginfo record into `si`.
        let n = unsafe { libc::read(sfd, (&mut si as *mut libc::signalfd_siginfo).cast(), sz) };
        if n != sz as isize {
            return None;
        }
        let signo = si.ssi_signo as i32;
        if !ignored(signo) {
            return Some(Caught {
                signo,
                from_terminal: (si.ssi_code == libc::SI_KERNEL && terminal_signal(signo))
                    || (signo == libc::SIGHUP
                        && si.ssi_code == libc::SI_USER
                        // SAFETY: plain getter.
                        && si.ssi_pid == unsafe { libc::getsid(0) } as u32),
                // SAFETY: plain getter.
                from_self: si.ssi_code == libc::SI_USER
                    && si.ssi_pid == unsafe { libc::getpid() } as u32,
            });
        }
    }
}

/// Whether the kernel sends `signo` for a terminal (its keys, hangup, window size, job
/// control): to the whole foreground group, so the relay does too. The kernel's other
/// signals (an interval timer's SIGALRM, SIGIO/SIGURG to an `F_SETOWN` owner, SIGXCPU)
/// are for one process: the program alone.
fn terminal_signal(signo: i32) -> bool {
    matches!(
        signo,
        libc::SIGINT
            | libc::SIGQUIT
            | libc::SIGTSTP
            | libc::SIGTTIN
            | libc::SIGTTOU
            | libc::SIGHUP
            | libc::SIGWINCH
            | libc::SIGCONT
    )
}

/// What the relay sends for the signals it receives, and the one piece of state that
/// takes: whether the routed group as a whole was stopped (job control), so that the
/// `SIGCONT` resuming the caller's job resumes all of it, not the program alone.
#[derive(Default)]
pub struct Forwarder {
    group_stopped: bool,
}

impl Forwarder {
    /// The request forwarding `c`.
    pub fn request(&mut self, c: Caught) -> ctx_protocol::Request {
        use ctx_protocol::Request;
        let stop = matches!(c.signo, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU);
        let group = match c.signo {
            libc::SIGCONT => std::mem::take(&mut self.group_stopped) || c.from_terminal,
            _ if stop && c.from_terminal => {
                self.group_stopped = true;
                true
            }
            _ => c.from_terminal,
        };
        if group {
            Request::Signal { signo: c.signo }
        } else {
            Request::SignalProcess { signo: c.signo }
        }
    }

    /// The broker stopped the whole routed group (the suspend key on its terminal).
    pub fn group_stopped(&mut self) {
        self.group_stopped = true;
    }
}

#[inline]
fn ignored(signo: i32) -> bool {
    crate::sys::signals::ignored(signo)
}

/// Ends this process as the routed program ended: its exit code, or death by the same
/// signal (no core file of ours unless the program dumped one).
pub fn reproduce(status: ExitStatus) -> ! {
    match status {
        // SAFETY: ending the process.
        ExitStatus::Code(c) => unsafe { libc::_exit(c & 0xff) },
        ExitStatus::Signaled { signal, core } => {
            // SAFETY: plain process-state calls on ourselves.
            unsafe {
                if !core {
                    // A dump of ours would be noise; the routed program made none.
                    let zero = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::setrlimit(libc::RLIMIT_CORE, &zero);
                }
                crate::sys::signals::set_default(signal);
                let mut set = crate::sys::signals::empty();
                crate::sys::signals::add(&mut set, signal);
                libc::kill(libc::getpid(), signal);
                crate::sys::signals::procmask(libc::SIG_UNBLOCK, Some(&set), None);
                // Only a signal whose default is not fatal gets here.
                libc::_exit(128 + (signal & 0x7f))
            }
        }
    }
}

/// The code a command that could not be executed ends with, as shells report it.
pub fn failed_exit_code(errno: i32) -> i32 {
    ctx_protocol::failed_exit_code(ctx_protocol::Stage::Exec, errno)
}

/// The broker accepted the launch but the exec itself failed (a check it cannot make
/// beforehand, such as a `noexec` mount): the caller's own exec succeeded already, so this
/// ends like a shell's failed command, 127 or 126, with the reason on stderr. One line for
/// the shim and the fork relay alike, e.g.
/// `ctx: "./prog": permission denied: as nobody (uid 65534) (EACCES)`.
pub fn exec_failed(name: &[u8], f: &ExecFailure<'_>) -> ! {
    let mut l = sys::Line::new();
    l.str("ctx: ").quoted(name).str(": ").str(f.kind.describe());
    if f.message.is_empty() {
        l.str(" at the ").str(f.stage.as_str()).str(" step");
    } else {
        l.str(": ").str(&f.message);
    }
    if !f.errno_name.is_empty() {
        l.str(" (").str(&f.errno_name).str(")");
    }
    l.write_to(2);
    // SAFETY: ending the process without running the caller's atexit handlers.
    unsafe { libc::_exit(f.exit_code()) }
}
