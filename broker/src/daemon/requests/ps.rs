//! `ctx ps`: the running routed processes, as far as the caller may see them (see
//! [`super::may_touch`]).

use ctx_protocol::ProcessInfo;

use super::may_touch;
use crate::daemon::{Peer, Shared};

/// The running processes `peer` may see, oldest first.
pub fn ps(shared: &Shared, peer: &Peer) -> Vec<ProcessInfo> {
    let mut list: Vec<ProcessInfo> = shared
        .registry
        .snapshot()
        .into_iter()
        .filter(|r| may_touch(peer, r))
        .map(|r| ProcessInfo {
            id: r.id,
            context: r.context,
            pid: r.pid,
            caller_pid: r.caller_pid,
            caller_uid: r.caller_uid,
            argv: r.argv,
            age_ms: r.started.elapsed().as_millis() as u64,
        })
        .collect();
    list.sort_by_key(|p| p.id);
    list
}
