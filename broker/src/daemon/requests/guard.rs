//! What the exec guard adds to a launch: `enforce`'s exec-only ruleset and the policy the
//! guard decides its execs by, and the guard armed for it (also for the parent-signal
//! relay), its denials going to the audit log.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::config::Context;
use crate::daemon::kernel::supervisor::{Armed, Denied, Policy};
use crate::daemon::spawn::{program_for_rules, Program, SpawnPlan};
use crate::daemon::Shared;

/// `enforce = true`: the per-launch Landlock ruleset and what the exec guard allows.
pub(super) struct Enforce {
    pub(super) ruleset: OwnedFd,
    pub(super) policy: Policy,
}

/// `enforce = true` on a routing context: the launch may exec only the shim (every routed
/// launch goes through it), its own program and that program's script interpreter.
pub(super) fn enforce_ruleset(
    shared: &Shared,
    ctx: &Context,
    plan: &SpawnPlan,
) -> Result<Option<Enforce>, landlock::RulesetError> {
    if !ctx.isolation.enforce || ctx.route_children_to.is_none() {
        return Ok(None);
    }
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    // The files the rules allow are the ones the context's user finds (the caller chose
    // the path): each named below by this process's own descriptor of it, so nothing is
    // looked up again by a name as root (`/proc/self/fd/N` leads to that very file).
    let found = program_for_rules(plan);
    let held = |fd: &OwnedFd| std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let mut allowed = vec![shared.routing.interposer.with_file_name("ctx-shim")];
    if let Some(found) = &found {
        match &found.interpreter {
            Some(interp) => allowed.push(held(interp)),
            None if plan.sh_fallback => allowed.push("/bin/sh".into()),
            None => {}
        }
        allowed.push(held(&found.program));
    }
    let Some(ruleset) = crate::daemon::kernel::landlock::exec_only(&allowed)? else {
        return Ok(None);
    };
    // Named for the audit by the kernel's name of the file found.
    let program = match &found {
        Some(f) => std::fs::read_link(held(&f.program)).unwrap_or_default(),
        None => {
            let first = match &plan.program {
                Program::Exact(p) => Some(p),
                Program::Search(list) => list.first(),
            };
            first
                .map(|c| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(c.to_bytes())))
                .unwrap_or_default()
        }
    };
    let mut policy = Policy::new(&ctx.name, ctx.user.uid, program, &allowed);
    if let Some(id) = &plan.identity {
        policy = policy.looking_as(id.gid, &id.groups);
    }
    Ok(Some(Enforce { ruleset, policy }))
}

/// Starts the exec guard, whose denials go to the audit log (a failure is reported at
/// the first launch that needs it, and by `ctx status`).
pub fn start_supervisor(shared: &Arc<Shared>) {
    if crate::daemon::kernel::supervisor::available() {
        // The process a signal to the broker came from, placed in its launch as a
        // connecting peer is.
        let weak = Arc::downgrade(shared);
        shared.exec_guard.relays.resolve_with(Box::new(move |pid| {
            let shared = weak.upgrade()?;
            let (ppid, birth) = crate::daemon::registry::parent_and_birth(pid)?;
            shared.registry.launch_of(pid, ppid, birth)
        }));
        shared.exec_guard.start(denials_to_audit(shared));
    }
}

pub(super) fn denials_to_audit(
    shared: &Arc<Shared>,
) -> impl FnOnce() -> crate::daemon::kernel::supervisor::DeniedSink {
    let weak = Arc::downgrade(shared);
    move || -> crate::daemon::kernel::supervisor::DeniedSink {
        Box::new(move |d: Denied| {
            if let Some(shared) = weak.upgrade() {
                shared
                    .audit
                    .record(crate::daemon::kernel::supervisor::audit_event(&d));
            }
        })
    }
}

/// Arms the exec guard for one enforced launch: its denials go to the audit log. `None`
/// (Landlock's half of enforce only) when this kernel or broker cannot run the guard; the
/// load warnings and `ctx status` say so.
pub(super) fn arm_exec_guard(
    shared: &Arc<Shared>,
    policy: Policy,
    enforced: bool,
) -> Option<Armed<'_>> {
    if !crate::daemon::kernel::supervisor::available() {
        return None;
    }
    match shared.exec_guard.arm(policy, denials_to_audit(shared)) {
        Ok(armed) => Some(armed),
        Err(why) if enforced => {
            tracing::warn!("enforce: exec guard NOT in force: {why}");
            None
        }
        Err(why) => {
            tracing::debug!("signals to the parent are not relayed: {why}");
            None
        }
    }
}
