//! One file per request a peer makes, as [`super::dispatch`] hands it over:
//!
//! - [`exec`] and [`shell`]: a routed launch (`ctx exec`, the interposer, `ctx sh`), each
//!   [`authorize`]d against its context, then [`launch`]ed: planned, forked, waited for;
//!   [`relay`] carries the running launch's PTY, signals and modes until it ends;
//!   [`guard`]: what `enforce` and the parent-signal relay add to a launch;
//! - [`status`] and [`contexts`]: `ctx status`, `ctx contexts`;
//! - the operator's: [`reload`] (and SIGHUP), [`ps`], [`kill`].

pub mod authorize;
pub mod contexts;
pub mod exec;
pub mod guard;
pub mod kill;
pub mod launch;
pub mod ps;
pub mod relay;
pub mod reload;
pub mod shell;
pub mod status;

use std::os::fd::BorrowedFd;

use ctx_protocol::{ErrorKind, Reply};

use super::peer::pidfd_signal;
use super::registry::Running;
use super::Peer;

pub use guard::start_supervisor;
pub(crate) use relay::shutdown_grace;

/// The peer as its audit lines name it.
pub fn caller(peer: &Peer) -> crate::audit_event::Caller {
    crate::audit_event::Caller {
        pid: peer.pid,
        uid: peer.uid,
        gid: peer.gid,
        context: peer.context.clone(),
        cgroup_context: peer.contained.clone(),
        confined_root: peer.confined_root,
    }
}

/// `pidfd_send_signal`'s flag (Linux 6.9): to the process group whose id is the pidfd's
/// pid, found through the kernel's own pid object, not its number.
const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;

/// A routed program as the broker signals it: by its pidfd, which names the program and
/// the group its pid leads for as long as the broker holds it, reaped or not, where a
/// number could name whatever process got it next.
#[derive(Clone, Copy)]
pub struct Routed<'a> {
    pub pid: i32,
    pub pidfd: BorrowedFd<'a>,
}

impl Routed<'_> {
    /// Signals the routed process group, and the program itself when it moved into
    /// another group of its session (`setpgid`): it must not escape its timeout, `ctx
    /// kill` or the broker's stop that way. Whether any process was signalled. Before
    /// Linux 6.9 the group is named by number, and only until the program is reaped.
    pub fn kill_group(self, signo: i32) -> bool {
        let group = match pidfd_signal(&self.pidfd, signo, PIDFD_SIGNAL_PROCESS_GROUP) {
            // Before 6.9, by number while the program is not reaped (signal 0 reaches a
            // zombie too): after the reap the number may be anyone's.
            Err(libc::EINVAL) => {
                pidfd_signal(&self.pidfd, 0, 0).is_ok()
                    // SAFETY: plain syscall.
                    && unsafe { libc::kill(-self.pid, signo) } == 0
            }
            sent => sent.is_ok(),
        };
        // By number only to learn the group: a process that got the pid since answers
        // another group (or none), and the signal still goes through the pidfd.
        // SAFETY: plain syscall.
        if unsafe { libc::getpgid(self.pid) } != self.pid {
            return pidfd_signal(&self.pidfd, signo, 0).is_ok() || group;
        }
        group
    }

    /// Signals the routed program alone.
    pub fn kill(self, signo: i32) {
        let _ = pidfd_signal(&self.pidfd, signo, 0);
    }
}

/// Whether this kernel signals a process group through a pidfd (Linux 6.9).
pub fn groups_by_pidfd() -> bool {
    static ASKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ASKED.get_or_init(|| {
        let Ok(own) = super::peer::pidfd_open(std::process::id() as i32) else {
            return false;
        };
        // Signal 0 only asks; our group may not exist (ESRCH): the flag is still known.
        pidfd_signal(&own, 0, PIDFD_SIGNAL_PROCESS_GROUP) != Err(libc::EINVAL)
    })
}

/// Signals the process group of a child of the broker that nobody has reaped (it has no
/// pidfd the broker watches yet): its pid, and so the group id, is still its own.
pub fn kill_unreaped_group(pid: i32, signo: i32) {
    // SAFETY: plain syscall.
    unsafe { libc::kill(-pid, signo) };
}

// ---------------------------------------------------------------------------------------
// The operator's requests: reload, ps, kill
// ---------------------------------------------------------------------------------------
//
// Who may do what: root (or the uid the broker itself runs as, when it runs unprivileged)
// outside every context may reload and see and signal every routed process; anyone else
// sees and signals only the processes their own uid launched from where it runs (outside
// every context, or in the same one). A process in a context is never the operator,
// whatever its uid: a uid-0 context is fenced by its isolation, which the socket must not
// undo.

/// Root, or the broker's own uid (an unprivileged broker's operator is its owner), when
/// the peer runs in no context.
pub fn is_operator(peer: &Peer) -> bool {
    // SAFETY: plain getter.
    (peer.uid == 0 || peer.uid == unsafe { libc::geteuid() }) && !peer.in_a_context()
}

/// Whether `peer` may see and signal `running`.
pub fn may_touch(peer: &Peer, running: &Running) -> bool {
    if is_operator(peer) {
        return true;
    }
    // A peer in a context nothing names (a uid-0 orphan known by its confinement alone)
    // cannot be told from any other such: it touches nothing.
    let unknown = peer.in_a_context() && peer.runs_in().is_none();
    !unknown
        && running.caller_uid == peer.uid
        && running.caller_in_context == peer.in_a_context()
        && running.caller_context.as_deref() == peer.runs_in()
}

/// The peer as a refusal names it: `uid N`, and its context when it runs in one.
pub fn who(peer: &Peer) -> String {
    match peer.runs_in() {
        Some(c) => format!("uid {} in context {c:?}", peer.uid),
        None => format!("uid {}", peer.uid),
    }
}

/// What a refusal or other record of `peer` is charged to in the audit log: `None` for
/// the operator, whose lines are never metered.
pub fn audit_charge(peer: &Peer) -> Option<u32> {
    (!is_operator(peer)).then_some(peer.uid)
}

fn error(kind: ErrorKind, message: String) -> Reply<'static> {
    Reply::Error {
        kind,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;

    fn exited(pidfd: &OwnedFd, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    }

    /// Both came with Linux 6.9: a kernel with pidfs births signals groups by pidfd.
    #[test]
    fn groups_are_signalled_by_pidfd_where_births_come_from_pidfs() {
        use crate::daemon::registry::{birth_clock, BirthClock};
        assert_eq!(groups_by_pidfd(), birth_clock() == BirthClock::Pidfs);
    }

    /// The routed program has ended and been reaped while a process it left lives on in
    /// its group: the group signal reaches that one. Once it is gone too, a process that
    /// got the program's pid and leads a group of that number (reused on purpose through
    /// `ns_last_pid`) is never reached: `kill(-pid)` would have killed it.
    #[test]
    fn a_group_signal_through_the_pidfd_never_reaches_a_process_that_got_the_pid() {
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to write ns_last_pid");
            return;
        }
        // The member, orphaned when its shell ends, is reparented here and reaped here,
        // so that its pid (the group's number) is freed.
        // SAFETY: plain prctl on this test process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let mut reused = 0;
        for _ in 0..20 {
            let mut sh = std::process::Command::new("sh")
                .args(["-c", "sleep 30 & echo $!"])
                .process_group(0)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let pid = sh.id() as i32;
            let program = crate::daemon::peer::pidfd_open(pid).unwrap();
            let mut line = String::new();
            std::io::BufReader::new(sh.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let member_pid: i32 = line.trim().parse().unwrap();
            let member = crate::daemon::peer::pidfd_open(member_pid).unwrap();
            sh.wait().unwrap();
            let routed = Routed {
                pid,
                pidfd: program.as_fd(),
            };
            routed.kill_group(libc::SIGTERM);
            assert!(
                exited(&member, 5000),
                "the group's member outlived the group signal"
            );
            // SAFETY: reaping our own (adopted) child.
            unsafe { libc::waitpid(member_pid, std::ptr::null_mut(), 0) };
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
            let mut stranger = std::process::Command::new("sleep")
                .arg("30")
                .process_group(0)
                .spawn()
                .unwrap();
            if stranger.id() as i32 == pid {
                reused += 1;
                let theirs = crate::daemon::peer::pidfd_open(pid).unwrap();
                routed.kill_group(libc::SIGKILL);
                routed.kill(libc::SIGKILL);
                assert!(
                    !exited(&theirs, 200),
                    "a process that got the program's pid was signalled"
                );
            }
            let _ = stranger.kill();
            let _ = stranger.wait();
        }
        assert!(reused > 0, "never got the pid again: nothing was tried");
    }
}
