//! One routed launch from request to exit: authorise, prepare, fork, report `Started` or a
//! classified failure, then relay signals, window size and PTY bytes until the process
//! ends, and send `Exited`. A caller that disconnects takes its process group with it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctx_protocol::{
    ClientKind, ErrorKind, ExecFailure, ExecRequest, ExitStatus, FailureKind, FdSource, Reply,
    Request, ShellRequest, Stage, TermModes,
};
use serde_json::json;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::connection::{Conn, WireError};
use super::exec_guard::{Armed, Denied, ParentSignals, Policy};
use super::plan::{prepare, BrokerIdentity, Lookup};
use super::registry::Running;
use super::shell_state::{self, SessionError};
use super::spawn::{exec_likely, fork_exec, parse_report, EnterNamespaces, Program, SpawnPlan};
use super::{audit, job_control, pty, Peer, Shared};
use crate::config::{BrokerDown, Context, ShellEnv};

/// How long a process group gets between SIGTERM and SIGKILL at broker shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long PTY output is still collected after the process exits (its last writes, or a
/// background job's, may still be in flight).
const PTY_DRAIN: Duration = Duration::from_millis(100);
/// Largest `Output` frame. A PTY master returns at most one line-discipline buffer (about
/// 4 KiB) per read; the relay reads until the master is empty or this much is gathered and
/// sends it as one frame, so a fast writer costs one frame and one client wake-up per
/// 64 KiB instead of per 4 KiB.
const PTY_BATCH: usize = 64 * 1024;
/// Typed or pasted input held for a PTY program that is not reading it. Past this, the
/// caller's frames stay unread in the socket (and the caller stops sending) until the
/// program reads: a program that never reads cannot make the broker hold more.
const INPUT_BUDGET: usize = 1024 * 1024;
/// How often the PTY's modes are compared with the caller's terminal's when no output
/// brings them along (a program that turns echo off and waits for input silently).
const MODE_POLL: Duration = Duration::from_millis(50);
/// Between reads of a PTY master whose slaves are all closed while the program lives on.
const MASTER_REST: Duration = Duration::from_millis(5);
/// Signals to the parent waiting for the client; more are dropped (the client's own
/// pending signal merges them anyway, as the kernel merges a standard signal).
const PARENT_SIGNALS: usize = 64;
/// How often signals to the parent a client did not take are offered again.
const PARENT_RETRY: Duration = Duration::from_millis(20);

fn lossy(args: &[serde_bytes::ByteBuf]) -> Vec<String> {
    args.iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// `event` with the fields of `more` (an object) added.
fn merged(mut event: serde_json::Value, more: &serde_json::Value) -> serde_json::Value {
    if let (Some(e), Some(m)) = (event.as_object_mut(), more.as_object()) {
        e.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    event
}

fn caller_json(peer: &Peer) -> serde_json::Value {
    json!({ "pid": peer.pid, "uid": peer.uid, "gid": peer.gid, "context": peer.context, "cgroup_context": peer.contained })
}

pub async fn run(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    peer: &Peer,
    client: ClientKind,
    req: ExecRequest,
) {
    let Some(ctx) = authorize(shared, conn, peer, &req.context, &req.argv).await else {
        return;
    };
    let via = match client {
        ClientKind::Cli => Via::Cli,
        ClientKind::Interposer => Via::Interposer,
    };
    launch(shared, conn, peer, &ctx, via, req, None).await
}

/// Who launches, which decides how the program is found and when the caller hears back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
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

/// `ctx sh`: the request's command becomes bash running the script in the session's saved
/// state; commands of one session run one at a time.
pub async fn shell(shared: &Arc<Shared>, conn: &mut Conn, peer: &Peer, sh: ShellRequest) {
    let label = vec![
        serde_bytes::ByteBuf::from(b"ctx-sh".to_vec()),
        serde_bytes::ByteBuf::from(sh.session.clone().into_bytes()),
        serde_bytes::ByteBuf::from(
            sh.script
                .as_ref()
                .map(|s| s.to_vec())
                .unwrap_or_else(|| b"(interactive)".to_vec()),
        ),
    ];
    let Some(ctx) = authorize(shared, conn, peer, &sh.exec.context, &label).await else {
        return;
    };
    let session = match shell_state::prepare(&shared.state_dir, &ctx, &sh.session, sh.reset) {
        Ok(s) => s,
        Err(e) => {
            let kind = if matches!(e, SessionError::BadName(_)) {
                ErrorKind::BadRequest
            } else {
                ErrorKind::Internal
            };
            let _ = conn
                .send(&Reply::Error {
                    kind,
                    message: e.to_string().into(),
                })
                .await;
            return;
        }
    };
    let lock = shared.sessions.get(&ctx.name, &sh.session);
    let _serialised = lock.lock().await;
    let mut req = sh.exec;
    let share_env = ctx.shell_env == ShellEnv::Shared && sh.session == "default";
    match &sh.script {
        Some(script) => req.argv = shell_state::script_argv(session.state(), script, share_env),
        None if sh.reset => {
            // Reset alone: the state is gone; report success the usual way.
            req.argv = vec![serde_bytes::ByteBuf::from(b"true".to_vec())];
            req.program = Some(serde_bytes::ByteBuf::from(b"/bin/true".to_vec()));
            return launch(shared, conn, peer, &ctx, Via::Shell, req, Some(label)).await;
        }
        None => {
            if !req.fds.iter().any(|s| s.source == FdSource::Pty) {
                let message = "an interactive session needs a terminal: give a script, or run ctx sh from a terminal (or with -t)";
                let _ = conn
                    .send(&Reply::Error {
                        kind: ErrorKind::BadRequest,
                        message: message.into(),
                    })
                    .await;
                return;
            }
            match shell_state::interactive_argv(&session, share_env) {
                Ok((argv, env)) => {
                    req.argv = argv;
                    req.set_env
                        .extend(env.into_iter().map(serde_bytes::ByteBuf::from));
                }
                Err(e) => {
                    let _ = conn
                        .send(&Reply::Error {
                            kind: ErrorKind::Internal,
                            message: e.to_string().into(),
                        })
                        .await;
                    return;
                }
            }
        }
    }
    req.program = Some(serde_bytes::ByteBuf::from(b"/bin/bash".to_vec()));
    req.search_path = None;
    launch(shared, conn, peer, &ctx, Via::Shell, req, Some(label)).await
}

/// Looks the context up and applies its `allow` rule; refusals are answered and audited.
async fn authorize(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    peer: &Peer,
    name: &str,
    argv: &[serde_bytes::ByteBuf],
) -> Option<Arc<Context>> {
    let config = shared.config();
    let Some(ctx) = config.contexts.get(name).cloned() else {
        // The name is the caller's own, of any length: bounded like its argv.
        let event = json!({
            "event": "refused", "reason": "unknown context", "caller": caller_json(peer),
        });
        let event = audit::with_bytes(event, "context", name.as_bytes(), audit::NAME_KEEP);
        shared
            .audit
            .record_refusal(peer.uid, audit::with_argv(event, argv));
        let message = format!(
            "no context named {:?} (known: {})",
            name,
            config
                .contexts
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = conn
            .send(&Reply::Error {
                kind: ErrorKind::UnknownContext,
                message: message.into(),
            })
            .await;
        return None;
    };
    // The identity was pinned at connect; a peer gone since has nobody left to serve.
    if !ctx.allows(peer.uid, peer.gid, peer.context.as_deref()) || !peer.still_there() {
        let event = json!({
            "event": "refused", "reason": "not allowed", "context": ctx.name,
            "caller": caller_json(peer),
        });
        shared
            .audit
            .record_refusal(peer.uid, audit::with_argv(event, argv));
        let message = format!(
            "uid {} (pid {}) may not enter context {:?}; its allow rule is {}",
            peer.uid,
            peer.pid,
            ctx.name,
            describe_allow(&ctx)
        );
        let _ = conn
            .send(&Reply::Error {
                kind: ErrorKind::Refused,
                message: message.into(),
            })
            .await;
        return None;
    }
    if shared.shutting_down.load(Ordering::Relaxed) {
        let _ = conn
            .send(&Reply::Error {
                kind: ErrorKind::ShuttingDown,
                message: "the broker is shutting down".into(),
            })
            .await;
        return None;
    }
    Some(ctx)
}

async fn launch(
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
        argv: audit::with_argv_kept(json!({}), raw_argv, keep),
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
            chained_routing = super::plan::Routing {
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
                .retain(|e| !super::egress::Egress::is_proxy_var(e.as_bytes()));
            plan.envp.extend(proxy_env);
        }
    }
    // Held until the fork is done: the child restricts itself with this ruleset.
    let protected = super::landlock::Protected {
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
    let (parent_tx, mut parent_signals) = tokio::sync::mpsc::channel::<i32>(PARENT_SIGNALS);
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
    let mut client_alive = accepted || conn.send(&Reply::Started { id, pid }).await.is_ok();
    if !client_alive {
        kill_group(pid, libc::SIGKILL);
    }

    let timeout = effective_timeout(&ctx, &req);
    // The modes the PTY was given: what the caller's terminal had at the launch.
    let launch_modes = req.tty.as_ref().and_then(|t| t.termios);
    let mut mirror: Option<Mirror> = None;
    // The client mirrors the PTY's modes onto the caller's terminal: watch them.
    let mut mirroring = false;
    let mut mode_tick = master.as_ref().map(|_| {
        let mut t = tokio::time::interval(MODE_POLL);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let far = Instant::now() + Duration::from_secs(10 * 365 * 86_400);
    let deadline =
        tokio::time::Instant::from_std(timeout.map(|t| Instant::now() + t).unwrap_or(far));
    let mut timed_out = false;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut shutdown = shared.shutdown_rx.clone();
    let mut shutdown_seen = *shutdown.borrow();
    if shutdown_seen {
        kill_group(pid, libc::SIGTERM);
        kill_at = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
    }
    let master = master.map(watch).transpose().unwrap_or_default();
    // Only a PTY launch has somewhere to put `Input`: a pipe launch's program reads the
    // caller's own descriptor, and the frames (which no client sends then) are dropped.
    let mut input: VecDeque<u8> = VecDeque::new();
    // Only a PTY launch relays output; a pipe launch allocates nothing for it.
    let mut out = if master.is_some() {
        vec![0u8; PTY_BATCH]
    } else {
        Vec::new()
    };

    // A master that reads EIO (every slave closed) while the process lives on stays
    // readable: it rests a moment between reads instead of spinning, without holding up
    // the loop (the exit, typically, comes right after).
    let mut master_rests: Option<tokio::time::Instant> = None;
    // Signals to the parent not yet taken by a client that is not reading (stopped, or
    // hostile): kept as a set, as the kernel keeps pending signals, so a flood neither
    // grows anything nor holds up this loop (the timeout, the shutdown).
    let mut parent_pending: u64 = 0;
    let mut parent_retry = tokio::time::interval(PARENT_RETRY);
    parent_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let status = loop {
        tokio::select! {
            exited = wait_exit(&pidfd) => break exited,
            Some(signal) = parent_signals.recv(), if client_alive => {
                parent_pending |= signal_bit(signal);
                if flush_parent_signals(conn, &mut parent_pending).is_err() {
                    client_alive = false;
                    kill_group(pid, libc::SIGKILL);
                }
            }
            _ = parent_retry.tick(), if parent_pending != 0 && client_alive => {
                if flush_parent_signals(conn, &mut parent_pending).is_err() {
                    client_alive = false;
                    kill_group(pid, libc::SIGKILL);
                }
            }
            _ = async { tokio::time::sleep_until(master_rests.unwrap()).await }, if master_rests.is_some() => {
                master_rests = None;
            }
            frame = next_frame(conn, input.len() >= INPUT_BUDGET), if client_alive => {
                match frame {
                    Ok(Some(payload)) => match ctx_protocol::frame::decode::<Request>(&payload) {
                        Ok(Request::Signal { signo }) if (1..=64).contains(&signo) => {
                            kill_group(pid, job_control::deliverable(pid, signo))
                        }
                        // `kill(pid)` of the shim: locally that reaches the child alone,
                        // never its children (`Popen.terminate()`, a forkserver's kill).
                        Ok(Request::SignalProcess { signo }) if (1..=64).contains(&signo) => {
                            kill_process(pid, job_control::deliverable(pid, signo))
                        }
                        Ok(Request::Resize(size)) => {
                            if let Some(m) = &master { let _ = pty::resize(m.get_ref(), size); }
                        }
                        Ok(Request::Input(_)) if master.is_none() => {}
                        Ok(Request::Input(bytes)) => match master.as_ref().and_then(|m| job_control::suspend_at(m.get_ref(), pid, &bytes)) {
                            // The suspend key for a program that would ignore the stop the
                            // terminal sends it: stop it ourselves and tell the client.
                            Some(at) => {
                                input.extend(&bytes[..at]);
                                kill_group(pid, libc::SIGSTOP);
                                if conn.send(&Reply::Stopped { signal: libc::SIGTSTP }).await.is_err() {
                                    client_alive = false;
                                    kill_group(pid, libc::SIGKILL);
                                }
                                input.extend(&bytes[at + 1..]);
                            }
                            None => input.extend(&bytes[..]),
                        },
                        Ok(Request::InputEof) => {
                            if let Some(m) = &master { input.push_back(pty::eof_char(m.get_ref())); }
                        }
                        Ok(Request::Modes(caller)) => {
                            mirroring = true;
                            if let Some(m) = &master {
                                if let Some(next) = mirror_caller(m.get_ref(), &mut mirror, launch_modes, caller) {
                                    if conn.send(&Reply::Modes(next)).await.is_err() {
                                        client_alive = false;
                                        kill_group(pid, libc::SIGKILL);
                                    }
                                }
                            }
                        }
                        _ => {
                            // Out of protocol: treat as a broken caller.
                            client_alive = false;
                            kill_group(pid, libc::SIGKILL);
                        }
                    },
                    Ok(None) | Err(_) => {
                        client_alive = false;
                        kill_group(pid, libc::SIGKILL);
                    }
                }

            }
            ready = async { master.as_ref().unwrap().readable().await }, if master.is_some() && master_rests.is_none() => {
                if let Ok(mut guard) = ready {
                    let fd = master.as_ref().unwrap().get_ref().as_raw_fd();
                    let (n, more) = read_batch(fd, &mut out);
                    if !more {
                        // Drained to EAGAIN: let the reactor wait for the next bytes.
                        guard.clear_ready();
                    }
                    if n > 0 && client_alive {
                        // A mode the program set before writing (getpass turns echo off,
                        // then prompts) reaches the client before the bytes, which it
                        // writes under them.
                        if mirror.is_none() {
                            mirror = pty_modes.map(|m| Mirror { caller: m, pty: m });
                        }
                        let now = pty::modes(master.as_ref().unwrap().get_ref());
                        if let Some(changed) = mirror_program(&mut mirror, now) {
                            if conn.send(&Reply::Modes(changed)).await.is_err() {
                                client_alive = false;
                                kill_group(pid, libc::SIGKILL);
                            }
                        }
                    }
                    if n > 0 && client_alive {
                        if conn.send(&Reply::Output(out[..n].into())).await.is_err() {
                            client_alive = false;
                            kill_group(pid, libc::SIGKILL);
                        }
                    } else if n == 0 && more {
                        master_rests = Some(tokio::time::Instant::now() + MASTER_REST);
                    }
                }
            }
            ready = async { master.as_ref().unwrap().writable().await }, if master.is_some() && !input.is_empty() => {
                if let Ok(mut guard) = ready {
                    let fd = master.as_ref().unwrap().get_ref().as_raw_fd();
                    match guard.try_io(|_| write_fd(fd, input.as_slices().0)) {
                        Ok(Ok(n)) => {
                            input.drain(..n);
                        }
                        // EIO: no slave is open any more; nothing will ever read it, and a
                        // master that stays writable must not be retried without end.
                        Ok(Err(_)) => input.clear(),
                        Err(_would_block) => {}
                    }
                }
            }
            // A mode set without output following (`stty -echo`, `read -s`).
            _ = async { mode_tick.as_mut().unwrap().tick().await }, if mirroring && client_alive => {
                let now = pty::modes(master.as_ref().unwrap().get_ref());
                if let Some(changed) = mirror_program(&mut mirror, now) {
                    if conn.send(&Reply::Modes(changed)).await.is_err() {
                        client_alive = false;
                        kill_group(pid, libc::SIGKILL);
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline), if !timed_out && timeout.is_some() => {
                timed_out = true;
                kill_group(pid, libc::SIGKILL);
            }
            _ = shutdown.changed(), if !shutdown_seen => {
                shutdown_seen = true;
                kill_group(pid, libc::SIGTERM);
                kill_at = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
            }
            _ = async { tokio::time::sleep_until(kill_at.unwrap()).await }, if kill_at.is_some() => {
                kill_at = None;
                kill_group(pid, libc::SIGKILL);
            }
        }
    };
    if !client_alive {
        // No one is left to see the rest of the group.
        kill_group(pid, libc::SIGKILL);
    }
    // A signal sent to the parent just before the end reaches the caller before the
    // status, as it would locally; later ones find no parent.
    parent_signals.close();
    while let Ok(signal) = parent_signals.try_recv() {
        parent_pending |= signal_bit(signal);
    }
    for signal in (1..=64).filter(|&s| parent_pending & signal_bit(s) != 0) {
        if !client_alive || conn.send(&Reply::SignalParent { signal }).await.is_err() {
            break;
        }
    }

    if let (Some(m), true) = (&master, client_alive) {
        let until = tokio::time::Instant::now() + PTY_DRAIN;
        loop {
            let fd = m.get_ref().as_raw_fd();
            let ready = tokio::time::timeout_at(until, m.readable()).await;
            let Ok(Ok(mut guard)) = ready else { break };
            let (n, more) = read_batch(fd, &mut out);
            if !more {
                guard.clear_ready();
            }
            if n > 0 {
                if let Some(changed) = mirror_program(&mut mirror, pty::modes(m.get_ref())) {
                    if conn.send(&Reply::Modes(changed)).await.is_err() {
                        break;
                    }
                }
            }
            if n > 0 {
                if conn.send(&Reply::Output(out[..n].into())).await.is_err() {
                    break;
                }
            } else if more {
                break; // EIO: every slave descriptor is closed
            }
        }
    }

    if let (Some(m), true) = (&master, client_alive) {
        // The modes the program left the terminal in stay, as they would locally; also
        // for a program that ended before its client said it mirrors (`stty -echo`).
        if mirror.is_none() {
            mirror = pty_modes.map(|m| Mirror { caller: m, pty: m });
        }
        if let Some(changed) = mirror_program(&mut mirror, pty::modes(m.get_ref())) {
            let _ = conn.send(&Reply::Modes(changed)).await;
        }
    }

    shared.registry.remove(id);
    let status = status.unwrap_or(ExitStatus::Code(255));
    if client_alive {
        let _ = conn.send(&Reply::Exited { status, timed_out }).await;
    }
    let event = json!({
        "event": "exec",
        "id": id,
        "pid": pid,
        "caller": caller_json(peer),
        "context": ctx.name,
        "tty": prepared.wants_tty,
        "isolation": isolation_json(&ctx, holder_flags, ruleset_applied, enforced, exec_guarded),
        "status": status_json(status),
        "timed_out": timed_out,
        "caller_disconnected": !client_alive,
        "duration_ms": started_at.elapsed().as_millis() as u64,
    });
    let mut event = audit::with_bytes(event, "cwd", &prepared.cwd, fields.text_keep);
    if let Some(id) = cwd_unverified {
        event["cwd_verified"] = false.into();
        event["cwd_id"] = id.into();
    }
    shared.audit.record(merged(event, &fields.argv));
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

/// A PTY launch whose client mirrors the modes onto the caller's terminal: the caller's
/// modes as last heard, and the PTY's as last sent.
#[derive(Clone, Copy)]
struct Mirror {
    caller: TermModes,
    pty: TermModes,
}

/// The caller changed its terminal's modes: applies what changed since it last said to the
/// PTY. Returns the PTY's modes when they differ from the caller's (the program changed
/// some meanwhile), for the client to take.
fn mirror_caller(
    master: &std::os::fd::OwnedFd,
    mirror: &mut Option<Mirror>,
    launch: Option<TermModes>,
    caller: TermModes,
) -> Option<TermModes> {
    let caller = caller.logical();
    let cur = pty::modes(master)?;
    let base = mirror.map(|m| m.caller).or(launch).unwrap_or(cur);
    let next = cur.merged(&base, &caller);
    if next != cur {
        let _ = pty::set_modes(master, &next);
    }
    let next = pty::modes(master).unwrap_or(next);
    *mirror = Some(Mirror { caller, pty: next });
    (next != caller).then_some(next)
}

/// The PTY's modes `now`, when the program changed them since they were last sent; the
/// client will give the caller's terminal the same, so they are the caller's from then on.
fn mirror_program(mirror: &mut Option<Mirror>, now: Option<TermModes>) -> Option<TermModes> {
    let (m, now) = (mirror.as_mut()?, now?);
    if now == m.pty {
        return None;
    }
    *m = Mirror {
        caller: now,
        pty: now,
    };
    Some(now)
}

/// What a launch's audit line carries of what its caller chose: the argv fields, and how
/// many bytes of the cwd and of a failure's message to keep (see `Audit::argv_keep`).
struct LaunchFields {
    argv: serde_json::Value,
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
    let event = json!({
        "event": "exec_failed",
        "caller": caller_json(peer),
        "context": ctx.name,
        "kind": format!("{:?}", failure.kind),
        "stage": failure.stage.as_str(),
        "errno": failure.errno_name,
        "duration_ms": started_at.elapsed().as_millis() as u64,
    });
    // The message may quote the caller's cwd or program, whatever their length.
    let event = audit::with_bytes(
        event,
        "message",
        failure.message.as_bytes(),
        fields.text_keep,
    );
    shared.audit.record(merged(event, &fields.argv));
    let _ = conn.send(&Reply::ExecFailed(failure)).await;
}

/// What isolation a launch ran under, for its audit record.
fn isolation_json(
    ctx: &Context,
    ns_flags: i32,
    landlock: bool,
    enforced: bool,
    exec_guarded: bool,
) -> serde_json::Value {
    json!({
        "pid_namespace": ns_flags & libc::CLONE_NEWPID != 0,
        "network_none": ns_flags & libc::CLONE_NEWNET != 0,
        "egress": ns_flags & libc::CLONE_NEWNET != 0 && ctx.isolation.network.egress().is_some(),
        "landlock": landlock,
        "signals_scoped": landlock && ctx.isolation.signals == crate::config::Signals::Scoped,
        "enforce": enforced,
        "exec_guard": exec_guarded,
    })
}

/// `enforce = true`: the per-launch Landlock ruleset and what the exec guard allows.
struct Enforce {
    ruleset: OwnedFd,
    policy: Policy,
}

/// `enforce = true` on a routing context: the launch may exec only the shim (every routed
/// launch goes through it), its own program and that program's script interpreter.
fn enforce_ruleset(
    shared: &Shared,
    ctx: &Context,
    plan: &SpawnPlan,
) -> Result<Option<Enforce>, landlock::RulesetError> {
    if !ctx.isolation.enforce || ctx.route_children_to.is_none() {
        return Ok(None);
    }
    use std::os::unix::ffi::OsStrExt;
    let base = plan.relative_base();
    let candidates: Vec<&std::ffi::CStr> = match &plan.program {
        Program::Exact(p) => vec![p.as_c_str()],
        Program::Search(list) => list.iter().map(|c| c.as_c_str()).collect(),
    };
    // The file the child's exec will find first (as root; the context's uid may be refused
    // it, which then fails the launch anyway).
    let program = candidates
        .iter()
        .map(|c| {
            let c = std::ffi::OsStr::from_bytes(c.to_bytes());
            base.as_ref().map_or_else(|| c.into(), |b| b.join(c))
        })
        .find(|p| p.is_file());
    let mut allowed = vec![shared.routing.interposer.with_file_name("ctx-shim")];
    if let Some(p) = &program {
        match super::landlock::script_interpreter(p) {
            Some(interp) => allowed.push(interp),
            None if plan.sh_fallback => allowed.push("/bin/sh".into()),
            None => {}
        }
        allowed.push(p.clone());
    }
    let Some(ruleset) = super::landlock::exec_only(&allowed)? else {
        return Ok(None);
    };
    // Named for the audit by its real name: a `/proc/self/fd/N/...` base means nothing
    // once the child runs (the rules above hold the files themselves).
    let program = program.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    let program = program.unwrap_or_else(|| {
        candidates
            .first()
            .map(|c| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(c.to_bytes())))
            .unwrap_or_default()
    });
    let mut policy = Policy::new(&ctx.name, ctx.user.uid, program, &allowed);
    if let Some(id) = &plan.identity {
        policy = policy.looking_as(id.gid, &id.groups);
    }
    Ok(Some(Enforce { ruleset, policy }))
}

fn signal_bit(signal: i32) -> u64 {
    1u64 << ((signal - 1) & 63)
}

/// Offers the pending signals to the parent to the client, lowest first (as the kernel
/// delivers pending signals), as far as it takes them without waiting.
fn flush_parent_signals(conn: &mut Conn, pending: &mut u64) -> Result<(), WireError> {
    for signal in 1..=64 {
        if *pending & signal_bit(signal) != 0 {
            if !conn.try_send(&Reply::SignalParent { signal })? {
                return Ok(());
            }
            *pending &= !signal_bit(signal);
        }
    }
    Ok(())
}

/// Starts the exec guard, whose denials go to the audit log (a failure is reported at
/// the first launch that needs it, and by `ctx status`).
pub fn start_supervisor(shared: &Arc<Shared>) {
    if super::exec_guard::available() {
        shared.exec_guard.start(denials_to_audit(shared));
    }
}

fn denials_to_audit(shared: &Arc<Shared>) -> impl FnOnce() -> super::exec_guard::DeniedSink {
    let weak = Arc::downgrade(shared);
    move || -> super::exec_guard::DeniedSink {
        Box::new(move |d: Denied| {
            if let Some(shared) = weak.upgrade() {
                shared.audit.record(super::exec_guard::audit_json(&d));
            }
        })
    }
}

/// Arms the exec guard for one enforced launch: its denials go to the audit log. `None`
/// (Landlock's half of enforce only) when this kernel or broker cannot run the guard; the
/// load warnings and `ctx status` say so.
fn arm_exec_guard(shared: &Arc<Shared>, policy: Policy, enforced: bool) -> Option<Armed<'_>> {
    if !super::exec_guard::available() {
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

fn describe_allow(ctx: &Context) -> String {
    let a = &ctx.allow;
    if a.is_default {
        return format!("the default (root and uid {})", ctx.user.uid);
    }
    format!(
        "uids {:?}, gids {:?}, contexts {:?}",
        a.uids, a.gids, a.contexts
    )
}

fn effective_timeout(ctx: &Context, req: &ExecRequest) -> Option<Duration> {
    let asked = req.timeout_ms.map(Duration::from_millis);
    match (ctx.timeout, asked) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pub fn status_json(status: ExitStatus) -> serde_json::Value {
    match status {
        ExitStatus::Code(c) => json!({ "code": c }),
        ExitStatus::Signaled { signal, core } => json!({ "signal": signal, "core": core }),
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

/// Waits for the process behind the pidfd to exit and reaps it.
async fn wait_exit(pidfd: &AsyncFd<OwnedFd>) -> io::Result<ExitStatus> {
    loop {
        let mut guard = pidfd.readable().await?;
        // SAFETY: siginfo_t is plain data; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: P_PIDFD with a valid pidfd; WNOHANG so a spurious wakeup cannot block.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.get_ref().as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: waitid filled info; si_pid is 0 when nothing was reaped (WNOHANG).
        let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
        if pid == 0 {
            guard.clear_ready();
            continue;
        }
        return Ok(ExitStatus::from_siginfo(code, status));
    }
}

/// The caller's next frame. While `backlogged` none is read: this only waits for the
/// caller to hang up (a caller that goes away still takes its process group with it), which
/// reads as the end of the stream.
async fn next_frame(conn: &mut Conn, backlogged: bool) -> Result<Option<Vec<u8>>, WireError> {
    if backlogged {
        hung_up(conn.stream()).await;
        return Ok(None);
    }
    conn.read_frame().await
}

/// Returns once the peer has closed its side of `stream` (or the socket failed), without
/// reading what it sent.
async fn hung_up(stream: &tokio::net::UnixStream) {
    loop {
        match stream.ready(Interest::READABLE).await {
            Ok(ready) if ready.is_read_closed() => return,
            // Unread frames make it readable: clear that, and wait for the next event.
            Ok(_) => {
                let _ = stream.try_io(Interest::READABLE, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
            }
            Err(_) => return,
        }
    }
}

/// Registers a descriptor we own with the reactor.
fn watch(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open
    // and unshared for as long as it is registered.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into())
}

fn read_fd(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid writable slice.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EIO) {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// Reads the non-blocking PTY master into `buf` until it is full, empty (`EAGAIN`) or
/// closed (`EIO`, end of file). Returns the bytes read and whether the master may still be
/// readable: `false` only when a read ended in `EAGAIN`, so the caller clears its
/// readiness exactly then (clearing it otherwise could lose a wake-up).
fn read_batch(fd: i32, buf: &mut [u8]) -> (usize, bool) {
    let mut got = 0;
    while got < buf.len() {
        match read_fd(fd, &mut buf[got..]) {
            Ok(0) => return (got, true),
            Ok(n) => got += n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (got, false),
            Err(_) => return (got, true),
        }
    }
    (got, true)
}

fn write_fd(fd: i32, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid readable slice.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
