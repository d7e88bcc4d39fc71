//! `ctx ps`: the running routed processes, as far as the caller may see them (see
//! [`super::may_touch`]).

use ctx_protocol::ProcessInfo;

use super::may_touch;
use crate::daemon::registry::cut_argv;
use crate::daemon::{Peer, Shared};

/// What the argvs of one `ctx ps` reply may take together: the reply is one frame, at most
/// `MAX_FRAME`, whatever the number of launches.
const ARGV_BUDGET: usize = ctx_protocol::frame::MAX_FRAME / 2;

/// The running processes `peer` may see, oldest first.
pub fn ps(shared: &Shared, peer: &Peer) -> Vec<ProcessInfo> {
    let running = shared.registry.snapshot_of(|r| may_touch(peer, r));
    // Each argv is at most `audit::ARGV_KEEP` bytes already; past the budget, each is
    // cut to its share of it.
    let total: usize = running.iter().map(argv_len).sum();
    let each = (total > ARGV_BUDGET).then(|| (ARGV_BUDGET / running.len()).max(64));
    let mut list: Vec<ProcessInfo> = running
        .into_iter()
        .map(|r| ProcessInfo {
            id: r.id,
            context: r.context,
            pid: r.pid,
            caller_pid: r.caller_pid,
            caller_uid: r.caller_uid,
            argv: match each {
                Some(room) => cut_argv(r.argv, room),
                None => r.argv,
            },
            age_ms: r.started.elapsed().as_millis() as u64,
        })
        .collect();
    list.sort_by_key(|p| p.id);
    list
}

fn argv_len(r: &crate::daemon::registry::Running) -> usize {
    r.argv.iter().map(|a| a.len() + 1).sum()
}

#[cfg(test)]
mod tests {
    use crate::daemon::registry::cut_argv as cut;

    #[test]
    fn an_argv_is_cut_to_its_room_on_a_character_boundary() {
        let argv = vec!["ab".to_string(), "cdé".to_string(), "f".to_string()];
        assert_eq!(cut(argv.clone(), 100), argv);
        assert_eq!(cut(argv.clone(), 3), vec!["ab".to_string()]);
        assert_eq!(
            cut(argv.clone(), 6),
            vec!["ab".to_string(), "cd…".to_string()]
        );
        assert_eq!(cut(argv, 7), vec!["ab".to_string(), "cd…".to_string()]);
    }
}
