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
    use std::os::unix::ffi::OsStrExt;
    // The file the child's exec will find first and its interpreter, looked up as the
    // context's user finds them: the caller chose the path, and what the rules allow
    // must tell it nothing that user could not see (a root-only script's `#!` line).
    let found = program_for_rules(plan);
    let mut allowed = vec![shared.routing.interposer.with_file_name("ctx-shim")];
    let program = found.map(|(program, interpreter)| {
        match interpreter {
            Some(interp) => allowed.push(interp),
            None if plan.sh_fallback => allowed.push("/bin/sh".into()),
            None => {}
        }
        allowed.push(program.clone());
        program
    });
    let Some(ruleset) = crate::daemon::kernel::landlock::exec_only(&allowed)? else {
        return Ok(None);
    };
    // Named for the audit by its real name: a `/proc/self/fd/N/...` base means nothing
    // once the child runs (the rules above hold the files themselves).
    let program = program.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    let program = program.unwrap_or_else(|| {
        let first = match &plan.program {
            Program::Exact(p) => Some(p),
            Program::Search(list) => list.first(),
        };
        first
            .map(|c| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(c.to_bytes())))
            .unwrap_or_default()
    });
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
