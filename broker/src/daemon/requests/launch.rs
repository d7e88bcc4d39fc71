//! One routed launch from its authorised request to its exit: prepare, fork, report
//! `Started` or a classified failure, hand the running launch to [`super::relay`], and
//! send `Exited`. A caller that disconnects takes its process group with it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctx_protocol::{ExecFailure, ExecRequest, ExitStatus, FailureKind, FdSource, Reply, Stage};

use super::guard::{arm_exec_guard, enforce_ruleset};
use super::relay::{hang_up_after_handover, read_fd, wait_exit, watch, Relay, Relayed};
use super::{caller, kill_group};
use crate::audit_event::{Argv, AuditEvent, IsolationInForce};
use crate::config::{BrokerDown, Context, ShellEnv};
use crate::daemon::connection::Conn;
use crate::daemon::kernel::supervisor::{ParentSignals, Policy};
use crate::daemon::plan::{prepare, BrokerIdentity, Lookup};
use crate::daemon::registry::Running;
use crate::daemon::shell_state;
use crate::daemon::spawn::{
    exec_likely, fork_exec, parse_report, EnterNamespaces, Program, SpawnPlan,
};
use crate::daemon::{audit, pty, Peer, Shared};

/// Signals to the parent waiting for the client; more are dropped (the client's own
/// pending signal merges them anyway, as the kernel merges a standard signal).
const PARENT_SIGNALS: usize = 64;

fn lossy(args: &[serde_bytes::ByteBuf]) -> Vec<String> {
    args.iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Who launches, which decides how the program is found and when the caller hears back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// `ctx exec`: the program is searched on the context's PATH.
    Cli,
    /// The interposer: the caller's exact program; it hears `Accepted` before the fork, so
    /// it can become the shim while the broker forks.
    Interposer,
    /// `ctx sh`: bash, by its path.
    Shell,
}

impl Via {
    fn lookup(self) -> Lookup {
        match self {
            Via::Cli => Lookup::ContextPath,
            Via::Interposer | Via::Shell => Lookup::Exact,
        }
    }
}

pub(super) async fn launch(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    peer: &Peer,
    ctx: &Arc<Context>,
    via: Via,
    req: ExecRequest,
    audit_argv: Option<Vec<serde_bytes::ByteBuf>>,
) {
    let lookup = via.lookup();
    let ctx = ctx.clone();
    let raw_argv = audit_argv.as_deref().unwrap_or(&req.argv);
    // Bounded and lossless for the log; the lossy text for `ctx ps` and the checks below.
    let party = match (peer.context.as_ref().or(peer.contained.as_ref()), peer.uid) {
        (Some(c), _) => Some(c.clone()),
        (None, 0) => None,
        (None, uid) => Some(format!("uid:{uid}")),
    };
    // The caller's cwd is logged too (twice when it is not UTF-8: as text and escaped), and
    // a failure's message may quote it or the program: all of it is charged and cut alike.
    let argv_bytes: usize = raw_argv.iter().map(|a| a.len() + 1).sum();
    let cwd_bytes = req.cwd.len().min(audit::TEXT_KEEP);
    let keep = shared.audit.argv_keep(
        party.as_deref(),
        argv_bytes.min(audit::ARGV_KEEP) + 8 * cwd_bytes,
    );
    let text_keep = if keep == audit::ARGV_KEEP {
        audit::TEXT_KEEP
    } else {
        audit::COMPACT_ARGV_KEEP
    };
    let fields = LaunchFields {
        argv: audit::argv_kept(raw_argv, keep),
        text_keep,
    };
    let audit_argv = lossy(raw_argv);
    let started_at = Instant::now();
    let passed = conn.take_fds();
    // A ctx sh command runs on its own saved state; other launches of a shared context
    // start from what the default session exports.
    let session_env = if ctx.shell_env == ShellEnv::Shared
        && audit_argv.first().map(String::as_str) != Some("ctx-sh")
    {
        shell_state::shared_exports(&shared.state_dir, &ctx)
    } else {
        Vec::new()
    };
    let me = BrokerIdentity::current();
    // Chained contexts: the target's on_broker_down travels in the environment.
    let chained_routing;
    let routing = match &ctx.route_children_to {
        Some(target) => {
            let local = shared
                .config()
                .contexts
                .get(target)
                .is_some_and(|t| t.on_broker_down == BrokerDown::Local);
            chained_routing = crate::daemon::plan::Routing {
                target_runs_local_when_down: local,
                ..shared.routing.clone()
            };
            &chained_routing
        }
        None => &shared.routing,
    };
    let prepared = match prepare(&ctx, &req, lookup, &passed, me, routing, &session_env) {
        Ok(p) => p,
        Err(failure) => return fail(shared, conn, peer, &ctx, &fields, failure, started_at).await,
    };
    // The caller's cwd descriptor (still held in `passed`), when the child is to use it.
    let cwd_unverified = prepared.plan.cwd_fd.and_then(|fd| cwd_unverified(peer, fd));
    let mut plan = prepared.plan;
    if peer.uid != ctx.user.uid {
        if let Some(carried) = &mut plan.inherited {
            carried.for_another_user();
        }
    }
    if let Err(failure) = hand_over_ports(shared, peer, &ctx, &req, &mut plan) {
        return fail(shared, conn, peer, &ctx, &fields, failure, started_at).await;
    }
    // Held until the fork is done: the child joins the namespaces through this pidfd.
    let holder = shared.namespaces.for_context(&ctx);
    plan.namespaces = holder.as_ref().map(|h| EnterNamespaces {
        pidfd: h.pidfd.as_raw_fd(),
        flags: h.flags,
    });
    // Known before the fork: an egress context's launch carries its id to the proxy.
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    if let Some(h) = &holder {
        let proxy_env = shared.egress.launch_env(shared, &ctx, h, id);
        if !proxy_env.is_empty() {
            plan.envp
                .retain(|e| !crate::daemon::egress::Egress::is_proxy_var(e.as_bytes()));
            plan.envp.extend(proxy_env);
        }
    }
    // Held until the fork is done: the child restricts itself with this ruleset.
    let protected = crate::daemon::kernel::landlock::Protected {
        config: shared.config().path.clone(),
        audit_log: shared.audit.path().to_path_buf(),
        state_dir: shared.state_dir.clone(),
        egress_port: holder.as_ref().and_then(|_| shared.egress.port(&ctx.name)),
    };
    let ruleset = match shared.landlock.for_context(&ctx, &protected) {
        Ok(r) => r,
        Err(e) => {
            let failure = ExecFailure {
                kind: FailureKind::Other,
                stage: Stage::Landlock,
                errno: 0,
                errno_name: "".into(),
                message: e.to_string().into(),
            };
            return fail(shared, conn, peer, &ctx, &fields, failure, started_at).await;
        }
    };
    let (enforcing, exec_policy) = match enforce_ruleset(shared, &ctx, &plan) {
        Ok(Some(e)) => (Some(e.ruleset), Some(e.policy)),
        Ok(None) => (None, None),
        Err(e) => {
            let failure = ExecFailure {
                kind: FailureKind::Other,
                stage: Stage::Landlock,
                errno: 0,
                errno_name: "".into(),
                message: format!(
                    "context {:?}: cannot build its enforce ruleset: {e}",
                    ctx.name
                )
                .into(),
            };
            return fail(shared, conn, peer, &ctx, &fields, failure, started_at).await;
        }
    };
    plan.landlock = [
        ruleset.as_ref().map(|r| r.as_raw_fd()),
        enforcing.as_ref().map(|r| r.as_raw_fd()),
    ];
    // The program's parent is the broker: where it can name that pid (no PID namespace
    // of its own), its signals to it are taken to its caller instead; not where signals
    // are scoped to the launch.
    let (parent_tx, parent_signals) = tokio::sync::mpsc::channel::<i32>(PARENT_SIGNALS);
    let relays_parent =
        !ctx.isolation.pid && ctx.isolation.signals != crate::config::Signals::Scoped;
    let enforced_execs = exec_policy.is_some();
    let policy = match exec_policy {
        Some(p) => Some(p),
        None if relays_parent => Some(Policy::execs_unchecked(
            &ctx.name,
            ctx.user.uid,
            audit_argv.first().map(Into::into).unwrap_or_default(),
        )),
        None => None,
    }
    .map(|p| match relays_parent {
        true => p.relaying_parent_signals(ParentSignals {
            pid: std::process::id() as libc::pid_t,
            relay: parent_tx,
        }),
        false => p,
    });
    // Held until the fork is done: the child hands its listener over through it.
    let filter = policy.as_ref().map(Policy::filter).unwrap_or_default();
    let exec_guard = policy.and_then(|p| arm_exec_guard(shared, p, enforced_execs));
    if let Some(armed) = &exec_guard {
        plan.exec_guard = Some(armed.handover());
        plan.supervisor_filter = filter;
    }
    // Held until the fork is done: the child writes itself into these.
    let cgroup = shared.cgroups.for_context(&ctx);
    plan.cgroup_join = cgroup.as_ref().map(|g| g.join_fds()).unwrap_or_default();
    plan.cgroup_dir = cgroup.as_ref().and_then(|g| g.dir_fd());
    let mut pty = None;
    let mut pty_modes = None;
    if prepared.wants_tty {
        let tty = req.tty.clone().unwrap_or(ctx_protocol::TtyInfo {
            size: Default::default(),
            termios: None,
        });
        let owner = (me.euid == 0).then(|| (ctx.user.uid, pty::tty_gid().unwrap_or(ctx.user.gid)));
        match pty::open(tty.size, tty.termios.as_ref(), owner) {
            Ok(p) => {
                for slot in req.fds.iter().filter(|s| s.source == FdSource::Pty) {
                    plan.fds.push((p.slave.as_raw_fd(), slot.target));
                }
                plan.controlling_tty = Some(p.slave.as_raw_fd());
                pty_modes = pty::modes(&p.master);
                pty = Some(p);
            }
            Err(e) => {
                let failure = os_failure(Stage::Terminal, e, "cannot allocate a terminal");
                return fail(shared, conn, peer, &ctx, &fields, failure, started_at).await;
            }
        }
    }

    // exec_likely stats paths the caller chose, as root: on a hung network or FUSE mount
    // that blocks, so the runtime hands this worker's other tasks to another thread.
    let accepted = via == Via::Interposer && tokio::task::block_in_place(|| exec_likely(&plan));
    if accepted {
        // A caller that is gone is noticed at the relay loop's first read (end of file).
        let _ = conn.send(&Reply::Accepted).await;
    }
    let forked = fork_exec(&plan);
    let holder_flags = holder.as_ref().map_or(0, |h| h.flags);
    let ruleset_applied = ruleset.is_some();
    let enforced = enforcing.is_some();
    let exec_guarded = exec_guard.is_some() && enforced_execs;
    drop(holder);
    drop(cgroup);
    drop(ruleset);
    drop(enforcing);
    // The child has its copies; the broker must not keep the caller's descriptors or the
    // slave (the master would never see EOF/EIO).
    drop(passed);
    let master = pty.map(|p| p.master);
    let forked = match forked {
        Ok(f) => f,
        Err(e) => {
            let failure = os_failure(Stage::Fork, e, "cannot fork");
            return fail(shared, conn, peer, &ctx, &fields, failure, started_at).await;
        }
    };
    let mut leader_pid = None;
    if let Some((pid, leader)) = forked.session_leader {
        leader_pid = Some(pid);
        // It ends at the terminal's hangup, when the master is closed.
        if let Ok(leader) = watch(leader) {
            tokio::spawn(async move { wait_exit(&leader).await });
        }
    }
    let pid = forked.pid;
    let pidfd = match watch(forked.pidfd) {
        Ok(fd) => fd,
        Err(e) => {
            kill_group(pid, libc::SIGKILL);
            let failure = os_failure(Stage::Fork, e, "cannot watch the process");
            return fail(shared, conn, peer, &ctx, &fields, failure, started_at).await;
        }
    };

    // Registered before anything else can happen: the program may already be running
    // and routing its own children, whose connections are placed by this entry.
    shared.registry.insert(Running {
        id,
        pid,
        context: ctx.name.clone(),
        caller_pid: peer.pid,
        caller_uid: peer.uid,
        argv: audit_argv.clone(),
        // Before the fork: the registry's lower bound on the process's start time.
        started: started_at,
    });

    // The error pipe closes at a successful exec, or carries the failing step first.
    let mut report = [0u8; 8];
    let n = read_report(forked.report, &mut report).await;
    let child_failed = parse_report(&report[..n]);
    match (exec_guard, child_failed.is_some()) {
        // The child sent its listener before its exec: it is on its way to the guard,
        // which must still find the launch when it arrives.
        (Some(armed), false) => armed.started(),
        (armed, _) => drop(armed),
    }
    if let Some(child_failure) = child_failed {
        shared.registry.remove(id);
        let _ = wait_exit(&pidfd).await;
        let detail = failure_detail(child_failure.stage, &req, &ctx, &prepared.cwd, &plan);
        let failure = child_failure.into_exec_failure(detail);
        return fail(shared, conn, peer, &ctx, &fields, failure, started_at).await;
    }

    shared.launches.fetch_add(1, Ordering::Relaxed);
    // After `Accepted` the interposer's side needs no `Started` (it became the shim
    // already and ignores it): one message and one wake-up less per routed launch.
    let client_alive = accepted || conn.send(&Reply::Started { id, pid }).await.is_ok();
    if !client_alive {
        kill_group(pid, libc::SIGKILL);
    }

    let timeout = effective_timeout(&ctx, &req);
    // The modes the PTY was given: what the caller's terminal had at the launch.
    let launch_modes = req.tty.as_ref().and_then(|t| t.termios);
    let Relayed {
        status,
        timed_out,
        client_alive,
        master,
    } = Relay {
        conn: &mut *conn,
        pid,
        pidfd: &pidfd,
        master,
        pty_modes,
        launch_modes,
        timeout,
        shutdown: shared.shutdown_rx.clone(),
        parent_signals,
        client_alive,
    }
    .run()
    .await;

    shared.registry.remove(id);
    let status = status.unwrap_or(ExitStatus::Code(255));
    if client_alive {
        let _ = conn.send(&Reply::Exited { status, timed_out }).await;
    }
    if let (Some(master), Some(leader)) = (master, leader_pid) {
        tokio::spawn(hang_up_after_handover(master, leader));
    }
    shared.audit.record(AuditEvent::Exec {
        id,
        pid,
        caller: caller(peer),
        context: ctx.name.clone(),
        tty: prepared.wants_tty,
        isolation: isolation(&ctx, holder_flags, ruleset_applied, enforced, exec_guarded),
        status: status.into(),
        timed_out,
        caller_disconnected: !client_alive,
        duration_ms: started_at.elapsed().as_millis() as u64,
        cwd: audit::lossless(&prepared.cwd, fields.text_keep).into(),
        cwd_verified: cwd_unverified.is_some().then_some(false),
        cwd_id: cwd_unverified,
        argv: fields.argv,
    });
}

/// The caller's cwd descriptor is named by the caller's own path for it; when the caller
/// sits in another mount namespace than the broker, that name may mean another directory
/// here (or none), so the audit marks it and records the directory's `dev:ino` instead of
/// passing the name off as fact. `None`: same namespace, the name stands.
fn cwd_unverified(peer: &Peer, fd: RawFd) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(format!("/proc/{}/ns/mnt", peer.pid)).ok();
    let ours = std::fs::metadata("/proc/self/ns/mnt").ok();
    let same =
        matches!((&theirs, &ours), (Some(a), Some(b)) if a.ino() == b.ino() && a.dev() == b.dev());
    if same {
        return None;
    }
    let dir = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?;
    Some(format!("{}:{}", dir.dev(), dir.ino()))
}

/// What a launch's audit line carries of what its caller chose: the argv fields, and how
/// many bytes of the cwd and of a failure's message to keep (see `Audit::argv_keep`).
struct LaunchFields {
    argv: Argv,
    text_keep: usize,
}

async fn fail(
    shared: &Shared,
    conn: &mut Conn,
    peer: &Peer,
    ctx: &Context,
    fields: &LaunchFields,
    failure: ExecFailure<'static>,
    started_at: Instant,
) {
    shared.audit.record(AuditEvent::ExecFailed {
        caller: caller(peer),
        context: ctx.name.clone(),
        kind: format!("{:?}", failure.kind),
        stage: failure.stage.as_str().into(),
        errno: failure.errno_name.to_string(),
        duration_ms: started_at.elapsed().as_millis() as u64,
        // The message may quote the caller's cwd or program, whatever their length.
        message: audit::lossless(failure.message.as_bytes(), fields.text_keep).into(),
        argv: fields.argv.clone(),
    });
    let _ = conn.send(&Reply::ExecFailed(failure)).await;
}

/// What isolation a launch ran under, for its audit record.
fn isolation(
    ctx: &Context,
    ns_flags: i32,
    landlock: bool,
    enforced: bool,
    exec_guarded: bool,
) -> IsolationInForce {
    IsolationInForce {
        pid_namespace: ns_flags & libc::CLONE_NEWPID != 0,
        network_none: ns_flags & libc::CLONE_NEWNET != 0,
        egress: ns_flags & libc::CLONE_NEWNET != 0 && ctx.isolation.network.egress().is_some(),
        landlock,
        signals_scoped: landlock && ctx.isolation.signals == crate::config::Signals::Scoped,
        enforce: enforced,
        exec_guard: exec_guarded,
    }
}

/// Places the reserved-port sockets the request claims (`ctx exec --listen-port`) and sets
/// `LISTEN_FDS`/`LISTEN_PID`. A port goes only to a launch into its owning context
/// (`[broker] port_owners`) or to a root caller.
fn hand_over_ports(
    shared: &Shared,
    peer: &Peer,
    ctx: &Context,
    req: &ExecRequest,
    plan: &mut SpawnPlan,
) -> Result<(), ExecFailure<'static>> {
    let config = shared.config();
    let mut count = 0;
    for slot in &req.fds {
        let FdSource::ReservedPort(port) = slot.source else {
            continue;
        };
        let owner = config.broker.port_owners.get(&port);
        if peer.uid != 0 && owner != Some(&ctx.name) {
            let message = match owner {
                Some(o) => format!("port {port} belongs to context {o:?}, not {:?}", ctx.name),
                None => format!(
                    "port {port} has no owner in [broker] port_owners: only root may claim it"
                ),
            };
            return Err(ExecFailure {
                kind: FailureKind::PermissionDenied,
                stage: Stage::Fds,
                errno: libc::EACCES,
                errno_name: ctx_protocol::errno_name(libc::EACCES).into(),
                message: message.into(),
            });
        }
        let Some(fd) = shared.ports.socket(port) else {
            return Err(ExecFailure {
                kind: FailureKind::Other,
                stage: Stage::Fds,
                errno: libc::EADDRNOTAVAIL,
                errno_name: ctx_protocol::errno_name(libc::EADDRNOTAVAIL).into(),
                message: format!(
                    "port {port} is not held by the broker (not in [broker] reserved_ports, \
                     or it could not be bound at start: see ctx status)"
                )
                .into(),
            });
        };
        plan.fds.push((fd, slot.target));
        count += 1;
    }
    if count > 0 {
        if let Ok(kv) = std::ffi::CString::new(format!("LISTEN_FDS={count}")) {
            plan.envp.retain(|e| {
                let b = e.as_bytes();
                !b.starts_with(b"LISTEN_FDS=") && !b.starts_with(b"LISTEN_PID=")
            });
            plan.envp.push(kv);
        }
        plan.listen_pid = true;
    }
    Ok(())
}

fn os_failure(stage: Stage, e: io::Error, what: &str) -> ExecFailure<'static> {
    let errno = e.raw_os_error().unwrap_or(0);
    ExecFailure {
        kind: if errno == libc::ENOMEM {
            FailureKind::OutOfMemory
        } else {
            ctx_protocol::classify(stage, errno)
        },
        stage,
        errno,
        errno_name: ctx_protocol::errno_name(errno).into(),
        message: format!("{what}: {e}").into(),
    }
}

/// What a failed step was doing, in the terms of the request and the context.
fn failure_detail(
    stage: Stage,
    req: &ExecRequest,
    ctx: &Context,
    cwd: &[u8],
    plan: &SpawnPlan,
) -> String {
    let user = format!("{} (uid {})", ctx.user.name, ctx.user.uid);
    match stage {
        Stage::Chdir => format!("cannot enter {:?} as {user}", String::from_utf8_lossy(cwd)),
        Stage::Exec => match &plan.program {
            Program::Search(c) if c.len() > 1 || req.search_path.is_some() => {
                let file = req.program.as_deref().unwrap_or(&req.argv[0]);
                let dirs: Vec<String> = c
                    .iter()
                    .map(|p| {
                        let p = p.to_bytes();
                        let dir = &p[..p.len().saturating_sub(file.len() + 1)];
                        String::from_utf8_lossy(dir).into_owned()
                    })
                    .collect();
                format!("looked in {} as {user}", dirs.join(":"))
            }
            _ => format!("as {user}"),
        },
        Stage::Groups | Stage::SetGid | Stage::SetUid => {
            format!("switching to {user} (gid {})", ctx.user.gid)
        }
        Stage::Rlimits => "applying the context's rlimits and the caller's lower ones".into(),
        Stage::Landlock => "applying the context's Landlock ruleset".into(),
        Stage::Seccomp if ctx.isolation.enforce => {
            "installing the seccomp filters (enforce's exec guard, the broker's file-owner filter)"
                .into()
        }
        Stage::Seccomp => {
            "installing the broker's seccomp filters (the file-owner filter, the supervisor's \
             listener for signals to the parent)"
                .into()
        }
        Stage::Cgroup => format!(
            "joining context {:?}'s cgroup (pids_max reached, or a cgroup the broker's \
             scheduling class cannot enter)",
            ctx.name
        ),
        Stage::Namespace => format!("entering context {:?}'s namespaces", ctx.name),
        Stage::Capabilities => "dropping capabilities".into(),
        Stage::NoNewPrivs => "setting no_new_privs".into(),
        Stage::Fds => "placing the caller's descriptors".into(),
        Stage::Session | Stage::Terminal => "setting up the process group or terminal".into(),
        _ => String::new(),
    }
}

fn effective_timeout(ctx: &Context, req: &ExecRequest) -> Option<Duration> {
    let asked = req.timeout_ms.map(Duration::from_millis);
    match (ctx.timeout, asked) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The pipe is non-blocking from its creation (`spawn::fork_exec`).
async fn read_report(fd: OwnedFd, buf: &mut [u8; 8]) -> usize {
    // The clone returned after the child's exec or exit, so the answer is usually there
    // already; only a write end inherited by a concurrent launch's child can delay EOF.
    let mut got = match read_fd(fd.as_raw_fd(), buf) {
        Ok(0) => return 0,
        Ok(n) => n,
        Err(_) => 0,
    };
    if got == buf.len() {
        return got;
    }
    let Ok(afd) = watch(fd) else { return got };
    while got < buf.len() {
        let Ok(mut guard) = afd.readable().await else {
            return got;
        };
        let raw = afd.get_ref().as_raw_fd();
        match guard.try_io(|_| read_fd(raw, &mut buf[got..])) {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got += n,
            Err(_) => continue,
        }
    }
    got
}
