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

use ctx_protocol::{ErrorKind, Reply};

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

/// Signals the routed process group. The leader is not reaped before this can run (only
/// `wait_exit` reaps), so its pid, and thus the group id, cannot have been reused. A
/// program that moved itself into another group of its session (`setpgid`) is signalled
/// too: it must not escape its timeout, `ctx kill` or the broker's stop that way.
pub fn kill_group(pid: i32, signo: i32) {
    // SAFETY: plain syscalls on our own unreaped child.
    unsafe {
        libc::kill(-pid, signo);
        if libc::getpgid(pid) != pid {
            libc::kill(pid, signo);
        }
    }
}

/// Signals the routed program alone. Like [`kill_group`], it cannot reach a reused pid:
/// only `wait_exit` reaps the program.
pub fn kill_process(pid: i32, signo: i32) {
    // SAFETY: plain syscall.
    unsafe { libc::kill(pid, signo) };
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
