//! What of each context's isolation is in force right now, and what it asks for and does
//! not have: the `isolation:` lines of `ctx status`. Nothing degrades silently: each
//! module that could not apply an option warned about it when the broker started or
//! reloaded (naming the context, the option, why, and what to do), `ctx status` repeats
//! those warnings, and the context's line lists the option as NOT in force.
//!
//! One gap no module owns is reported here: a context that runs as the broker's own uid
//! (every context of an unprivileged broker) has no uid separation from the broker.

use ctx_protocol::IsolationLine;

use super::kernel::landlock;
use super::kernel::namespaces::wanted_flags;
use super::Shared;
use crate::config::{Config, Context, Signals};

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// The NOT-in-force item of a context that runs as the broker's own uid.
pub const NO_UID_SEPARATION: &str = "uid separation from the broker";

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// The status line of `ctx`: what holds now, and what it asks for and does not get.
pub fn line(shared: &Shared, ctx: &Context) -> IsolationLine {
    let mut in_force: Vec<String> = Vec::new();
    let mut missing: Vec<(String, String)> = Vec::new();

    let flags = wanted_flags(ctx);
    let namespaces = shared.namespaces.in_force(&ctx.name);
    if namespaces && flags & libc::CLONE_NEWPID != 0 {
        in_force.push("pid namespace".into());
    }
    if namespaces && flags & libc::CLONE_NEWNET != 0 {
        if ctx.isolation.network.egress().is_some() {
            let (items, not) = shared.egress.describe(ctx);
            in_force.extend(items);
            missing.extend(not);
        } else {
            in_force.push("network none (loopback only)".into());
        }
    }
    missing.extend(shared.namespaces.not_in_force(ctx));

    in_force.extend(
        super::kernel::landlock::in_force(ctx)
            .into_iter()
            .map(String::from),
    );
    missing.extend(super::kernel::landlock::not_in_force(ctx));
    if ctx.isolation.enforce && ctx.route_children_to.is_some() && landlock::abi() >= 1 {
        if super::kernel::supervisor::available() && shared.exec_guard.failure().is_none() {
            in_force.push("exec bypass attempts denied and audited".into());
        } else {
            missing.push((
                "exec bypass auditing and the ELF loader check".into(),
                "no seccomp user notification (or the exec guard could not start)".into(),
            ));
        }
    }

    in_force.extend(shared.cgroups.describe(ctx));
    missing.extend(shared.cgroups.not_in_force(ctx));

    // SAFETY: plain getter.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        in_force.push(format!("uid {} (capabilities dropped)", ctx.user.uid));
    }
    if let Some(why) = same_uid(ctx, euid) {
        missing.push((NO_UID_SEPARATION.into(), why));
    } else if euid != 0 {
        missing.push((
            "launches".into(),
            format!("the broker runs unprivileged as uid {euid} and cannot switch uids"),
        ));
    }

    // In its own network namespace every port is the context's own and reaches nothing:
    // the host's reserved ports neither apply nor matter there.
    if !(namespaces && flags & libc::CLONE_NEWNET != 0) {
        let held = shared.ports.in_force();
        if !held.is_empty() {
            let list: Vec<String> = held.iter().map(u16::to_string).collect();
            in_force.push(format!("reserved ports {} unbindable", list.join(",")));
        }
        missing.extend(shared.ports.not_in_force().iter().cloned());
    }

    IsolationLine {
        context: ctx.name.clone(),
        in_force,
        not_in_force: missing.into_iter().map(|(option, _)| option).collect(),
    }
}

/// The warnings about uids, for the start, a reload and `ctx status`: an unprivileged
/// broker (which contexts it cannot run at all), and one per context that runs as the
/// broker's own uid.
pub fn uid_warnings(config: &Config) -> Vec<String> {
    // SAFETY: plain getter.
    let euid = unsafe { libc::geteuid() };
    let mut warnings = Vec::new();
    if euid != 0 {
        let other: Vec<&str> = config
            .contexts
            .values()
            .filter(|c| c.user.uid != euid)
            .map(|c| c.name.as_str())
            .collect();
        warnings.push(format!(
            "broker runs unprivileged as uid {euid}: only contexts of that uid can run \
             (unavailable: {}), without the isolation that needs root (see the NOT in force \
             warnings); start ctx-broker as root for all of it",
            if other.is_empty() {
                "none".into()
            } else {
                other.join(", ")
            }
        ));
    }
    warnings.extend(config.contexts.values().filter_map(|ctx| {
        let why = same_uid(ctx, euid)?;
        Some(format!(
            "contexts.{}: {NO_UID_SEPARATION} NOT in force: {why}",
            ctx.name
        ))
    }));
    warnings
}

/// Why a context of uid `euid` (the broker's) is not separated from the broker, and what
/// still fences it off; `None` for a context of another uid.
fn same_uid(ctx: &Context, euid: u32) -> Option<String> {
    if ctx.user.uid != euid {
        return None;
    }
    let abi = landlock::abi();
    // A root broker is out of its contexts' reach: its real and saved uids are no one's
    // (kill(2) is refused) and the seccomp file-owner filter keeps its processes from
    // aiming SIGIO at it (see `seccomp`). An unprivileged broker shares its uid with the context, so only a
    // Landlock scope or a PID namespace (the broker is not in it) keep those two off.
    let scoped = (ctx.isolation.signals == Signals::Scoped && abi >= 6) || ctx.isolation.pid;
    let fenced = ctx.isolation.has_fs_rules() && abi >= 1;
    let mut can = Vec::new();
    if !scoped {
        can.push(if euid == 0 {
            "signal the broker's other launches"
        } else {
            "send the broker SIGKILL or SIGSTOP and signal its other launches"
        });
    }
    if !fenced {
        can.push("read and write the broker's audit log and state");
    }
    let mut why = format!("the context runs as uid {euid}, the broker's own");
    if can.is_empty() {
        why.push_str(
            " (signals = \"scoped\" and its filesystem rules keep it from signalling the \
             broker and from its audit log and state)",
        );
    } else {
        why.push_str(&format!(": it can {}", can.join(" and ")));
        let mut fixes = Vec::new();
        if !scoped {
            fixes.push("signals = \"scoped\" (or pid = true)");
        }
        if !fenced {
            fixes.push("filesystem rules (e.g. read_only = [\"/\"])");
        }
        why.push_str(&format!(
            "; start ctx-broker as root and give the context a user of its own, or set {}",
            fixes.join(" and ")
        ));
    }
    Some(why)
}
