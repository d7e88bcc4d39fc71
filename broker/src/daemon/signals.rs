//! No signal a routed process can send may stop or kill the broker.
//!
//! The kernel lets a process signal another when its real or effective uid equals the
//! target's real or saved uid, or when it holds CAP_KILL. Routed processes never hold a
//! capability (the broker empties the bounding set), so a root broker keeps its effective
//! uid 0 (and its capabilities) but moves its real and saved uids to one that no process
//! runs as ([`shield_credentials`]): then not even a uid-0 context can signal it, by any
//! call (kill, tgkill, pidfd_send_signal, SIGKILL and SIGSTOP included). CPython's own test
//! suite, for one, sends SIGUSR1 to its parent.
//!
//! Behind that, for a broker that cannot shield itself (unprivileged, or a user namespace
//! without a spare uid): every catchable signal whose default would end or stop the
//! broker is ignored, and the three the operator uses (SIGTERM and SIGINT: stop; SIGHUP:
//! reload) are read from a signalfd, which tells who sent each one: a signal from a
//! process that runs in a context is logged and dropped.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::io;
use tokio::io::unix::AsyncFd;

use super::registry::{self, Registry};

/// Signals the operator (or systemd, or a terminal) uses to drive the broker.
const OPERATOR: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// Signals a fault raises: a process may also send them, and then they are ignored, but a
/// real fault must still end the broker with a core.
const FAULTS: [libc::c_int; 6] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGSYS,
];

/// Blocks the operator's signals and ignores every other catchable signal that would end or
/// stop the process. Call it while the process has one thread, before the runtime starts:
/// threads inherit the mask. The spawn child resets both before its exec.
pub fn protect_process() {
    let mut operator = SigSet::empty();
    for sig in OPERATOR {
        operator.add(sig);
    }
    let _ = operator.thread_block();
    for sig in 1..=libc::SIGRTMAX() {
        // glibc's own (32, 33: thread cancellation and set*id broadcast): its sigaction
        // refuses them, and it installs their handlers (which drop what another process
        // sends) only when first needed: until then their default would end the broker.
        let reserved = sig > libc::SIGSYS && sig < libc::SIGRTMIN();
        if reserved {
            ignore_unless_handled(sig);
            continue;
        }
        let keep = matches!(
            sig,
            libc::SIGKILL
                | libc::SIGSTOP
                | libc::SIGCHLD
                | libc::SIGCONT
                | libc::SIGURG
                | libc::SIGWINCH
                | libc::SIGTERM
                | libc::SIGINT
                | libc::SIGHUP
        );
        if keep {
            continue;
        }
        // SAFETY: sigaction is plain data; the handler is async-signal-safe.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            if FAULTS.contains(&sig) {
                act.sa_sigaction = on_fault_signal as *const () as usize;
                act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            } else {
                act.sa_sigaction = libc::SIG_IGN;
            }
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}

/// Ignores `sig` if it still has its default action, through the raw syscall (glibc's
/// wrapper refuses its reserved signals); a handler glibc installed stays.
fn ignore_unless_handled(sig: libc::c_int) {
    use ctx_protocol::sigaction::raw_sigaction;
    if raw_sigaction(sig, None) == Some(libc::SIG_DFL) {
        raw_sigaction(sig, Some(libc::SIG_IGN));
    }
}

/// The real and saved uid of a root broker: one no account and no context has.
const SHIELD_UID: u32 = 0xFFFF_FFFE;

static SHIELDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether processes of the broker's own uid cannot signal it (see the module's note).
pub fn shielded() -> bool {
    SHIELDED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A root broker keeps euid 0 and moves its real and saved uids to [`SHIELD_UID`]. Call it
/// while the process has one thread (glibc then has no other thread to tell). Returns why
/// it could not, for the log.
pub fn shield_credentials() -> Result<(), String> {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the broker is not root".into());
    }
    // SAFETY: plain syscall on our own credentials; the effective uid stays 0.
    if unsafe { libc::setresuid(SHIELD_UID, 0, SHIELD_UID) } < 0 {
        return Err(format!(
            "cannot move the broker's real uid to {SHIELD_UID} ({}): processes of uid 0 \
             can signal it",
            io::Error::last_os_error()
        ));
    }
    SHIELDED.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// A fault signal: sent by a process (`si_code` <= 0): nothing happens. Raised by a real
/// fault: the default comes back and the faulting instruction, run again, ends the process
/// as it would have. Async-signal-safe.
extern "C" fn on_fault_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO.
    let code = unsafe { (*info).si_code };
    if code > 0 {
        // SAFETY: resetting a disposition is async-signal-safe.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Stop,
    Reload,
}

/// The operator's signals, as the broker's accept loop reads them.
pub struct OperatorSignals {
    fd: AsyncFd<SignalFd>,
}

impl OperatorSignals {
    pub fn new() -> io::Result<OperatorSignals> {
        let mut set = SigSet::empty();
        for sig in OPERATOR {
            set.add(sig);
        }
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        // SAFETY: the AsyncFd takes ownership of the SignalFd, so the descriptor stays open
        // and unshared for as long as it is registered.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(OperatorSignals { fd })
    }

    /// The next request from someone allowed to make it; a signal from a routed process is
    /// logged and dropped.
    pub async fn next(&mut self, registry: &Registry) -> Request {
        loop {
            let info = match self.fd.readable_mut().await {
                Ok(mut guard) => match guard.get_inner_mut().read_signal() {
                    Ok(Some(info)) => info,
                    Ok(None) => {
                        guard.clear_ready();
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("reading the signalfd failed: {e}");
                        guard.clear_ready();
                        continue;
                    }
                },
                Err(e) => {
                    tracing::warn!("waiting for signals failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let sig = info.ssi_signo as libc::c_int;
            let pid = info.ssi_pid as i32;
            if is_sigio(info.ssi_code) {
                // Nobody drives the broker through a file's owner: this is a process that
                // aimed SIGIO at it with F_SETOWN/F_SETSIG (the seccomp filter refuses
                // these signals to contexts of our euid; this is the fence behind it).
                tracing::warn!(
                    fd = info.ssi_fd,
                    "ignored signal {sig} delivered as SIGIO through a file's owner"
                );
                continue;
            }
            if let Some(context) = sender_context(info.ssi_code, pid, registry) {
                tracing::warn!(
                    pid,
                    uid = info.ssi_uid,
                    context = %context,
                    "ignored signal {sig} from a process in context {context:?}: routed processes cannot stop or reload the broker"
                );
                continue;
            }
            return if sig == libc::SIGHUP {
                Request::Reload
            } else {
                Request::Stop
            };
        }
    }
}

/// Whether a signal came through a file's owner (`F_SETOWN`): the kernel then sets
/// `si_code` to the poll band, POLL_IN (1) to POLL_HUP (6); a terminal's signals carry
/// SI_KERNEL and a process's kill(2) a code of 0 or below.
fn is_sigio(code: i32) -> bool {
    (1..=6).contains(&code)
}

/// The context of the process that sent a signal, if it is in one. Signals the kernel
/// raised (a terminal's ^C or hangup) and senders that are gone already count as the
/// operator's: the operator's `/bin/kill` exits at once, and a process in a context can
/// do worse to a root broker than that (see the module's note on SIGKILL).
fn sender_context(code: i32, pid: i32, registry: &Registry) -> Option<String> {
    if code > 0 || pid <= 0 {
        return None;
    }
    let pidfd = super::peer::pidfd_open(pid).ok()?;
    let found = registry::identity_of(&pidfd, pid)?;
    if !super::peer::alive(&pidfd) {
        return None;
    }
    registry.context_of(pid, found.ppid, found.birth)
}
