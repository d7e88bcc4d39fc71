//! `ctx kill`: signals routed launches by id or by context, as far as the caller may touch
//! them (see [`super::may_touch`]); every kill and refusal is audited.

use ctx_protocol::{ErrorKind, KillTarget, Reply};

use std::os::fd::AsFd;

use super::{audit_charge, caller, error, is_operator, may_touch, Routed};
use crate::audit_event::AuditEvent;
use crate::daemon::registry::Running;
use crate::daemon::{Peer, Shared};

/// Signals the process group of every running launch `target` names that `peer` may touch.
pub fn kill(shared: &Shared, peer: &Peer, target: &KillTarget, signo: i32) -> Reply<'static> {
    if !(1..=libc::SIGRTMAX()).contains(&signo) {
        return error(
            ErrorKind::BadRequest,
            format!("{signo} is not a signal number (1 to {})", libc::SIGRTMAX()),
        );
    }
    let matching: Vec<Running> = shared
        .registry
        .snapshot()
        .into_iter()
        .filter(|r| match target {
            KillTarget::Id(id) => r.id == *id,
            KillTarget::Context(name) => &r.context == name,
        })
        .collect();
    let what = match target {
        KillTarget::Id(id) => format!("with id {id}"),
        KillTarget::Context(name) => format!("in context {name:?}"),
    };
    // The operator's `ctx kill --context X` reaches every process in X's cgroup too: also
    // those that left their launch's process group (setsid, double fork).
    let whole_context = match target {
        KillTarget::Context(name) if is_operator(peer) => Some(name.as_str()),
        _ => None,
    };
    if matching.is_empty() {
        if let Some(name) = whole_context {
            let n = shared.cgroups.kill(name, signo, &[]);
            if n > 0 {
                shared.audit.record(AuditEvent::Kill {
                    caller: caller(peer),
                    ids: Vec::new(),
                    contexts: vec![name.to_string()],
                    cgroup_processes: n as u64,
                    signal: signo,
                });
                return killed(Vec::new(), n);
            }
        }
        return error(
            ErrorKind::NoSuchProcess,
            format!("no running routed process {what} (see ctx ps)"),
        );
    }
    let (allowed, denied): (Vec<Running>, Vec<Running>) =
        matching.into_iter().partition(|r| may_touch(peer, r));
    if allowed.is_empty() {
        shared.audit.record_refusal(
            audit_charge(peer),
            AuditEvent::Refused {
                reason: "kill of another uid's process".into(),
                caller: caller(peer),
                context: None,
                argv: None,
                ids: Some(denied.iter().map(|r| r.id).collect()),
                signal: Some(signo),
            },
        );
        return error(
            ErrorKind::Refused,
            format!(
                "{} may not signal the routed process(es) {what}: only root outside every \
                 context, or the uid that launched them from where it runs, may",
                super::who(peer)
            ),
        );
    }
    let mut ids = Vec::with_capacity(allowed.len());
    let mut groups = Vec::with_capacity(allowed.len());
    for r in &allowed {
        // Through the program's pidfd: the launch's entry outlives the program's reap by
        // as long as its caller takes to read the end (helper-103: a caller that did not
        // read kept it for good), and a process that got the pid since is never reached.
        let reached = r.pidfd.as_ref().is_some_and(|pidfd| {
            Routed {
                pid: r.pid,
                pidfd: pidfd.as_fd(),
            }
            .kill_group(signo)
        });
        if reached {
            ids.push(r.id);
            groups.push(r.pid);
        }
    }
    // The rest of the context: what its cgroup holds outside the groups just signalled.
    let in_cgroup = whole_context.map_or(0, |name| shared.cgroups.kill(name, signo, &groups));
    // Every kill is audited, one that reached nothing too (its `ids` empty).
    shared.audit.record(AuditEvent::Kill {
        caller: caller(peer),
        ids: ids.clone(),
        contexts: allowed.iter().map(|r| r.context.clone()).collect(),
        cgroup_processes: in_cgroup as u64,
        signal: signo,
    });
    if ids.is_empty() && in_cgroup == 0 {
        let why = if super::groups_by_pidfd() {
            "nothing was signalled"
        } else {
            // The group is named by number before Linux 6.9, which after the program's
            // reap may be a stranger's (helper-105).
            "what they left in their process group cannot be signalled safely on this \
             kernel (Linux 6.9 signals a group through a pidfd); `ctx kill --context NAME` \
             as root reaches it through the context's cgroup"
        };
        return error(
            ErrorKind::NoSuchProcess,
            format!("the routed program(s) {what} have ended: {why}"),
        );
    }
    killed(ids, in_cgroup)
}

/// The answer to a kill: `Killed` as older clients know it, unless processes outside the
/// launches' groups were signalled too.
fn killed(ids: Vec<u64>, others: usize) -> Reply<'static> {
    if others == 0 {
        Reply::Killed { ids }
    } else {
        Reply::KilledInContext {
            ids,
            others: others as u64,
        }
    }
}
