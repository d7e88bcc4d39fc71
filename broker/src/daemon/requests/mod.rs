//! One file per request a peer makes, as [`super::dispatch`] hands it over:
//!
//! - [`exec`] and [`shell`]: a routed launch (`ctx exec`, the interposer, `ctx sh`), each
//!   [`authorize`]d against its context, then [`launch`]ed: planned, forked, waited for;
//!   [`relay`] carries the running launch's PTY, signals and modes until it ends;
//!   [`guard`]: what `enforce` and the parent-signal relay add to a launch;
//! - [`status`] and [`contexts`]: `ctx status`, `ctx contexts`.

pub mod authorize;
pub mod contexts;
pub mod exec;
pub mod guard;
pub mod launch;
pub mod relay;
pub mod shell;
pub mod status;

use super::Peer;

pub use guard::start_supervisor;

/// The peer as its audit lines name it.
pub fn caller(peer: &Peer) -> crate::audit_event::Caller {
    crate::audit_event::Caller {
        pid: peer.pid,
        uid: peer.uid,
        gid: peer.gid,
        context: peer.context.clone(),
        cgroup_context: peer.contained.clone(),
    }
}

/// Signals the routed process group. The leader is not reaped before this can run (only
/// `wait_exit` reaps), so its pid, and thus the group id, cannot have been reused.
pub fn kill_group(pid: i32, signo: i32) {
    // SAFETY: plain syscall.
    unsafe { libc::kill(-pid, signo) };
}

/// Signals the routed program alone. Like [`kill_group`], it cannot reach a reused pid:
/// only `wait_exit` reaps the program.
pub fn kill_process(pid: i32, signo: i32) {
    // SAFETY: plain syscall.
    unsafe { libc::kill(pid, signo) };
}
