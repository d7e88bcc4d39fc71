//! One routed launch from its authorised request to its exit: prepare, fork, report
//! `Started` or a classified failure, hand the running launch to [`super::relay`], and
//! send `Exited`. A caller that disconnects takes its process group with it.
//!
//! [`launch`] lists the steps in the order they run; each is a method of [`Launch`], which
//! holds what the steps acquire until the fork.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctx_protocol::{
    ExecFailure, ExecRequest, ExitStatus, FailureKind, FdSource, Reply, Stage, TermModes,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use super::authorize::authorize;
use super::guard::{arm_exec_guard, enforce_ruleset};
use super::relay::{
    ended, hang_up_after_handover, linger, read_fd, sent, shutdown_grace, wait_exit, watch,
    LingerBudget, Relay, Relayed, CLOSE_WAIT,
};
use super::{caller, kill_unreaped_group, Routed};
use crate::audit_event::{Argv, AuditEvent, IsolationInForce};
use crate::config::{BrokerDown, Context, ShellEnv};
use crate::daemon::admission::{Linger, TRIM_AFTER};
use crate::daemon::closer::{self, PeerFds};
use crate::daemon::connection::Conn;
use crate::daemon::kernel::cgroups::Group;
use crate::daemon::kernel::namespaces::Holder;
use crate::daemon::kernel::supervisor::{Armed, InheritedRelay, ParentSignals, Policy, Supervised};
use crate::daemon::plan::{prepare, BrokerIdentity, Lookup, Prepared};
use crate::daemon::registry::{birth_of_child, Birth, Running, StartBracket};
use crate::daemon::spawn::{
    exec_likely, fork_exec_in, forker::Lane, parse_report, prompt, EnterNamespaces, Forked,
    Program, SpawnPlan,
};
use crate::daemon::{audit, pty, Peer, Shared};
use crate::daemon::{inherit, shell_state, untrusted_path};

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// Signals to the parent waiting for the client; more are dropped (the client's own
/// pending signal merges them anyway, as the kernel merges a standard signal).
const PARENT_SIGNALS: usize = 64;

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

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

/// What a `ctx sh` launch brings: the command line its audit line shows (the script, not
/// the wrapper that keeps the session's state), and its session's lock, held while the
/// program runs.
pub(super) struct ShellLaunch {
    pub label: Vec<serde_bytes::ByteBuf>,
    pub session: tokio::sync::OwnedMutexGuard<()>,
}

/// Variables and arguments past which a launch's plan is built off the runtime's workers.
const LARGE_REQUEST: usize = 4096;

/// What the steps of [`launch`] share: the request, what its audit line keeps, and what
/// the steps acquire. A refused launch lets go of what it holds only once the refusal is
/// audited and sent; the fields are in the reverse order of their acquisition, so they are
/// let go of in the order locals would be.
struct Launch<'a> {
    /// The caller's turn to look up the paths it chose and fork ([`FORKS_PER_UID`]), from
    /// the first step until the fork has returned.
    ///
    /// [`FORKS_PER_UID`]: crate::daemon::admission::FORKS_PER_UID
    turn: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A PTY launch's master, from the fork on.
    master: Option<OwnedFd>,
    // Held until the fork is done (the exec guard until the child's report): the child
    // joins, restricts itself with or hands over through each.
    pty: Option<pty::Pty>,
    cgroup: Option<Arc<Group>>,
    exec_guard: Option<Armed<'a>>,
    /// Its signals to the broker relayed through the forking thread's inherited filter
    /// (no filter of its own), from before the fork until the launch ends.
    relayed: Option<InheritedRelay<'a>>,
    /// The running program's listener, when the exec guard leaves it to the launch.
    supervised: Option<Supervised<'a>>,
    enforcing: Option<OwnedFd>,
    ruleset: Option<Arc<OwnedFd>>,
    /// The reserved ports' sockets the child places (a shut-down one may be replaced
    /// meanwhile): held until the fork.
    ports: Vec<Arc<OwnedFd>>,
    /// This launch's claims of reserved ports, given back when it ends.
    port_claims: Vec<crate::daemon::kernel::ports::Claim<'a>>,
    holder: Option<Arc<Holder>>,
    /// The caller's descriptors (its cwd's among them), until the child has its copies.
    passed: Option<PeerFds>,
    /// Heard once the closer thread has closed `passed`, after the fork.
    closed: Option<oneshot::Receiver<()>>,

    shared: &'a Arc<Shared>,
    peer: &'a Peer,
    ctx: Arc<Context>,
    via: Via,
    req: ExecRequest,
    fields: LaunchFields,
    /// The argv, lossy: for `ctx ps` and the checks of the steps.
    argv: Vec<String>,
    started_at: Instant,
    me: BrokerIdentity,
    /// Known before the fork: an egress context's launch carries it to the proxy.
    id: u64,
    /// See [`cwd_unverified`].
    cwd_unverified: Option<String>,
    /// The exec guard decides the launch's execs (`enforce = true`), not only relays
    /// its signals to the parent.
    enforced_execs: bool,
    /// The modes the PTY was opened with.
    pty_modes: Option<TermModes>,
    pty_size: Option<ctx_protocol::WinSize>,
    /// The session leader stand-in of a PTY launch.
    leader_pid: Option<libc::pid_t>,
    applied: Applied,
}

/// What a launch's audit line carries of what its caller chose: the argv fields, and how
/// many bytes of the cwd and of a failure's message to keep (see `Audit::argv_keep`).
/// Variables a shared session exports: `(name, Some(value))` to set, `(name, None)` to unset.
type SessionEnv = Vec<(Vec<u8>, Option<Vec<u8>>)>;

struct LaunchFields {
    argv: Argv,
    text_keep: usize,
}

/// What isolation the fork handed the child, for the audit record.
#[derive(Default, Clone, Copy)]
struct Applied {
    ns_flags: i32,
    landlock: bool,
    enforced: bool,
    exec_guarded: bool,
}

/// A terminal kept open after its program ended, counted against its caller's uid.
struct Lingering {
    master: AsyncFd<OwnedFd>,
    leader: libc::pid_t,
    _count: Linger,
}

/// The forked process, watched.
struct Child {
    pid: libc::pid_t,
    pidfd: AsyncFd<Arc<OwnedFd>>,
}

impl Child {
    fn program(&self) -> Routed<'_> {
        Routed {
            pid: self.pid,
            pidfd: self.pidfd.get_ref().as_fd(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// Runs one authorised launch to its end. A step that refuses the launch ends it there: the
/// failure is audited and sent, and only then is what the launch holds let go of.
pub(super) async fn launch(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    peer: &Peer,
    ctx: &Arc<Context>,
    via: Via,
    req: ExecRequest,
    shell: Option<ShellLaunch>,
) {
    let (audit_argv, held) = shell.map_or((None, None), |s| (Some(s.label), Some(s.session)));
    // A reload may have come since the context was looked up (a `ctx sh` command waits
    // for its session first): what runs is what the configuration in force allows and
    // says, never a definition the operator replaced.
    let current = shared.config().contexts.get(&ctx.name).cloned();
    let fresh;
    let ctx = match current {
        Some(c) if Arc::ptr_eq(&c, ctx) => ctx,
        _ => {
            let argv = audit_argv.as_deref().unwrap_or(&req.argv);
            match authorize(shared, conn, peer, &ctx.name, argv).await {
                Some(c) => {
                    fresh = c;
                    &fresh
                }
                None => return,
            }
        }
    };
    let mut l = Launch::new(shared, conn, peer, ctx, via, req, audit_argv);
    let ran: Result<(), ExecFailure<'static>> = prompt::lowered_at_each_wait(async {
        // Before the first step: `prepare` and `landlock` may look up paths the caller
        // chose too, as the fork does.
        l.turn = (shared.admissions)
            .fork_turn(peer.uid, peer.in_a_context())
            .await;
        // A request of many thousand variables takes the plan hundreds of milliseconds
        // (helper-91: 0.5 s for 300,000): built where it does not hold up the other
        // connections this worker serves.
        let session_env = l.session_exports().await;
        let mut prepared = match large(&l.req) {
            true => tokio::task::block_in_place(|| l.prepare(session_env)),
            false => l.prepare(session_env),
        }?;
        let plan = &mut prepared.plan;
        l.hand_over_ports(plan)?;
        l.enter_namespaces(plan);
        let exec_policy = l.landlock(plan)?;
        let parent_signals = l.exec_guard(plan, exec_policy);
        l.cgroup(plan);
        l.terminal(plan, prepared.wants_tty)?;
        let (accepted, forked) = l.accept_and_fork(conn, plan);
        let forked = forked?;
        let (child, report) = l.watch(forked)?;
        l.await_exec(report, &child, &prepared).await?;
        l.let_go_of_request(conn, &mut prepared);
        let client_alive = l.started(conn, &child, accepted).await;
        let watched = client_alive && l.hand_over_exit(conn, &child, accepted);
        let relayed = l
            .relay(conn, &child, parent_signals, client_alive, watched)
            .await;
        let lingering = l.end(conn, child.pid, relayed, prepared).await;
        // A `ctx sh` session's next command waits for this program, not for its jobs.
        drop(held);
        if let Some(lingering) = lingering {
            drop(child);
            l.linger(conn, lingering).await;
        }
        Ok(())
    })
    .await;
    if let Err(failure) = ran {
        // Not held while the refusal is sent.
        drop(l.turn.take());
        // The caller's descriptors closed first: a failed exec's caller that reads a pipe
        // it passed sees its end once the exec has failed, as locally (helper-94).
        let closed = l
            .closed
            .take()
            .or_else(|| l.passed.take().map(PeerFds::close_telling));
        if let Some(closed) = closed {
            let _ = tokio::time::timeout(CLOSE_WAIT, closed).await;
        }
        l.fail(conn, failure).await;
    }
}

// ---------------------------------------------------------------------------------------
// Methods: the steps, in order
// ---------------------------------------------------------------------------------------

impl<'a> Launch<'a> {
    /// Charges the caller's argv to its audit budget and takes its descriptors.
    fn new(
        shared: &'a Arc<Shared>,
        conn: &mut Conn,
        peer: &'a Peer,
        ctx: &Arc<Context>,
        via: Via,
        req: ExecRequest,
        audit_argv: Option<Vec<serde_bytes::ByteBuf>>,
    ) -> Launch<'a> {
        let raw_argv = audit_argv.as_deref().unwrap_or(&req.argv);
        // Bounded and lossless for the log; the lossy text for `ctx ps` and the checks below.
        let party = match (peer.context.as_ref().or(peer.contained.as_ref()), peer.uid) {
            (Some(c), _) => Some(c.clone()),
            (None, 0) => None,
            (None, uid) => Some(format!("uid:{uid}")),
        };
        // The caller's cwd is logged too (twice when it is not UTF-8: as text and escaped),
        // and a failure's message may quote it or the program: all of it is charged and cut
        // alike.
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
        let argv = lossy(raw_argv);
        Launch {
            turn: None,
            master: None,
            pty: None,
            cgroup: None,
            exec_guard: None,
            relayed: None,
            supervised: None,
            enforcing: None,
            ruleset: None,
            ports: Vec::new(),
            port_claims: Vec::new(),
            holder: None,
            shared,
            peer,
            ctx: ctx.clone(),
            via,
            fields,
            argv,
            started_at: Instant::now(),
            passed: Some(conn.take_fds()),
            closed: None,
            req,
            me: BrokerIdentity::current(),
            id: 0,
            cwd_unverified: None,
            enforced_execs: false,
            pty_modes: None,
            pty_size: None,
            leader_pid: None,
            applied: Applied::default(),
        }
    }

    /// What the default session of a `shell_env = "shared"` context exports, for its other
    /// launches (a ctx sh command runs on its own saved state). Read on a closer thread:
    /// the file is the context's, which can unlink it while root reads, so that root's
    /// close frees it, seconds for a large fragmented file (helper-107).
    async fn session_exports(&self) -> SessionEnv {
        let ctx = &self.ctx;
        if ctx.shell_env != ShellEnv::Shared
            || self.argv.first().map(String::as_str) == Some("ctx-sh")
        {
            return Vec::new();
        }
        let (dir, ctx) = (self.shared.state_dir.clone(), ctx.clone());
        closer::run(Some(ctx.user.uid), move || {
            shell_state::shared_exports(&dir, &ctx)
        })
        .await
        .unwrap_or_default()
    }

    /// The authorised request made a plan: the program found, the environment and cwd
    /// resolved.
    fn prepare(&mut self, session_env: SessionEnv) -> Result<Prepared, ExecFailure<'static>> {
        let (shared, ctx) = (self.shared, &self.ctx);
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
        let passed = self.passed.as_deref().unwrap_or_default();
        let lookup = self.via.lookup();
        let mut prepared = prepare(
            ctx,
            &self.req,
            lookup,
            passed,
            self.me,
            routing,
            &session_env,
        )?;
        // The caller's cwd descriptor (still held in `passed`), when the child is to use it.
        self.cwd_unverified = prepared
            .plan
            .cwd_fd
            .and_then(|fd| cwd_unverified(&prepared.cwd, fd));
        if let Some(carried) = &mut prepared.plan.inherited {
            if self.peer.uid != ctx.user.uid {
                carried.for_another_user();
            }
            carried.skip_oom_score_adj_not_above(inherit::broker_oom_score_adj());
        }
        Ok(prepared)
    }

    /// Places the reserved-port sockets the request claims (`ctx exec --listen-port`) and
    /// sets `LISTEN_FDS`/`LISTEN_PID`. A port goes only to a launch into its owning context
    /// (`[broker] port_owners`) or to a root caller.
    fn hand_over_ports(&mut self, plan: &mut SpawnPlan) -> Result<(), ExecFailure<'static>> {
        let (shared, peer, ctx) = (self.shared, self.peer, &self.ctx);
        let config = shared.config();
        let mut count = 0;
        for slot in &self.req.fds {
            let FdSource::ReservedPort(port) = slot.source else {
                continue;
            };
            let owner = config.broker.port_owners.get(&port);
            // Root outside every context: a uid-0 context claims only its own ports.
            if (peer.uid != 0 || peer.in_a_context()) && owner != Some(&ctx.name) {
                let message = match owner {
                    Some(o) => {
                        format!("port {port} belongs to context {o:?}, not {:?}", ctx.name)
                    }
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
            let Some(socket) = shared.ports.claim(port) else {
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
            let (socket, claim) = socket.map_err(|e| ExecFailure {
                kind: FailureKind::Other,
                stage: Stage::Fds,
                errno: e.raw_os_error().unwrap_or(libc::EIO),
                errno_name: ctx_protocol::errno_name(e.raw_os_error().unwrap_or(libc::EIO)).into(),
                message: format!(
                    "port {port}: its socket was shut down, and listening on it again failed: {e}"
                )
                .into(),
            })?;
            plan.fds.push((socket.as_raw_fd(), slot.target));
            self.ports.push(socket);
            self.port_claims.push(claim);
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

    /// The context's namespaces, which the child joins through the holder's pidfd; the
    /// launch's id, and an egress context's proxy settings carrying it.
    fn enter_namespaces(&mut self, plan: &mut SpawnPlan) {
        let shared = self.shared;
        self.holder = shared.namespaces.for_context(&self.ctx);
        plan.namespaces = self.holder.as_ref().map(|h| EnterNamespaces {
            pidfd: h.pidfd.as_raw_fd(),
            flags: h.flags,
        });
        self.id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = &self.holder {
            let proxy_env = shared.egress.launch_env(shared, &self.ctx.name, h, self.id);
            if !proxy_env.is_empty() {
                plan.envp
                    .retain(|e| !crate::daemon::egress::Egress::is_proxy_var(e.as_bytes()));
                plan.envp.extend(proxy_env);
            }
        }
    }

    /// The context's Landlock ruleset, and `enforce`'s exec-only one stacked on it; gives
    /// back what `enforce`'s exec guard is to allow.
    fn landlock(&mut self, plan: &mut SpawnPlan) -> Result<Option<Policy>, ExecFailure<'static>> {
        let (shared, ctx) = (self.shared, &self.ctx);
        let protected = crate::daemon::kernel::landlock::Protected {
            config: shared.config().path.clone(),
            audit_log: shared.audit.path().to_path_buf(),
            state_dir: shared.state_dir.clone(),
            egress_port: self
                .holder
                .as_ref()
                .and_then(|_| shared.egress.port(&ctx.name)),
            own_proc: self
                .holder
                .as_ref()
                .filter(|h| h.flags & libc::CLONE_NEWPID != 0)
                .map(|h| format!("/proc/{}/root/proc", h.pid).into()),
        };
        self.ruleset = match shared
            .landlock
            .for_context(ctx, &protected, || shared.secret_files())
        {
            Ok(r) => r,
            Err(e) => {
                return Err(ExecFailure {
                    kind: FailureKind::Other,
                    stage: Stage::Landlock,
                    errno: 0,
                    errno_name: "".into(),
                    message: e.to_string().into(),
                });
            }
        };
        // It looks for the program, a path the caller chose, as root: see
        // `accept_and_fork`.
        let enforced = || enforce_ruleset(shared, ctx, plan);
        let enforced = match ctx.isolation.enforce {
            true => tokio::task::block_in_place(enforced),
            false => enforced(),
        };
        let exec_policy = match enforced {
            Ok(Some(e)) => {
                self.enforcing = Some(e.ruleset);
                Some(e.policy)
            }
            Ok(None) => None,
            Err(e) => {
                return Err(ExecFailure {
                    kind: FailureKind::Other,
                    stage: Stage::Landlock,
                    errno: 0,
                    errno_name: "".into(),
                    message: format!(
                        "context {:?}: cannot build its enforce ruleset: {e}",
                        ctx.name
                    )
                    .into(),
                });
            }
        };
        plan.landlock = [
            self.ruleset.as_ref().map(|r| r.as_raw_fd()),
            self.enforcing.as_ref().map(|r| r.as_raw_fd()),
        ];
        Ok(exec_policy)
    }

    /// The exec guard: `enforce`'s exec policy, and the relay of the program's signals to
    /// its parent (the broker) where it can name that pid (no PID namespace of its own) and
    /// its signals are not scoped to the launch. Gives back where those signals arrive.
    fn exec_guard(
        &mut self,
        plan: &mut SpawnPlan,
        exec_policy: Option<Policy>,
    ) -> mpsc::Receiver<i32> {
        let ctx = &self.ctx;
        let (parent_tx, parent_signals) = mpsc::channel::<i32>(PARENT_SIGNALS);
        let relays_parent =
            !ctx.isolation.pid && ctx.isolation.signals != crate::config::Signals::Scoped;
        self.enforced_execs = exec_policy.is_some();
        let parent = ParentSignals {
            pid: std::process::id() as libc::pid_t,
            relay: parent_tx,
        };
        if exec_policy.is_none() && relays_parent {
            // This thread forks it (no await before the fork), and its children inherit
            // the thread's filter: nothing to install.
            match self.shared.exec_guard.relays.relay(self.id, parent) {
                Ok(relayed) => {
                    self.relayed = Some(relayed);
                    return parent_signals;
                }
                Err(parent) => {
                    return self.own_exec_guard(plan, None, Some(parent), parent_signals)
                }
            }
        }
        self.own_exec_guard(
            plan,
            exec_policy,
            relays_parent.then_some(parent),
            parent_signals,
        )
    }

    /// A filter of the launch's own: `enforce`'s, or the relay where this thread has no
    /// inherited one.
    fn own_exec_guard(
        &mut self,
        plan: &mut SpawnPlan,
        exec_policy: Option<Policy>,
        parent: Option<ParentSignals>,
        parent_signals: mpsc::Receiver<i32>,
    ) -> mpsc::Receiver<i32> {
        let ctx = &self.ctx;
        let policy = match exec_policy {
            Some(p) => Some(p),
            None if parent.is_some() => Some(Policy::execs_unchecked(
                &ctx.name,
                ctx.user.uid,
                self.argv.first().map(Into::into).unwrap_or_default(),
            )),
            None => None,
        }
        .map(|p| match parent {
            Some(parent) => p.relaying_parent_signals(parent),
            None => p,
        });
        let filter = policy.as_ref().map(Policy::filter).unwrap_or_default();
        self.exec_guard = policy.and_then(|p| arm_exec_guard(self.shared, p, self.enforced_execs));
        if let Some(armed) = &self.exec_guard {
            plan.exec_guard = Some(armed.handover());
            plan.supervisor_filter = filter;
        }
        parent_signals
    }

    /// The context's cgroup, which the child writes itself into.
    fn cgroup(&mut self, plan: &mut SpawnPlan) {
        self.cgroup = self.shared.cgroups.for_context(&self.ctx);
        plan.cgroup_join = self
            .cgroup
            .as_ref()
            .map(|g| g.join_fds())
            .unwrap_or_default();
        plan.cgroup_dir = self.cgroup.as_ref().and_then(|g| g.dir_fd());
    }

    /// A terminal launch's PTY, with the caller's size and modes; its slave becomes the
    /// child's controlling terminal.
    fn terminal(
        &mut self,
        plan: &mut SpawnPlan,
        wants_tty: bool,
    ) -> Result<(), ExecFailure<'static>> {
        if !wants_tty {
            return Ok(());
        }
        let ctx = &self.ctx;
        let tty = self.req.tty.clone().unwrap_or(ctx_protocol::TtyInfo {
            size: Default::default(),
            termios: None,
        });
        let owner =
            (self.me.euid == 0).then(|| (ctx.user.uid, pty::tty_gid().unwrap_or(ctx.user.gid)));
        let p = pty::open(tty.size, tty.termios.as_ref(), owner)
            .map_err(|e| os_failure(Stage::Terminal, e, "cannot allocate a terminal"))?;
        for slot in self.req.fds.iter().filter(|s| s.source == FdSource::Pty) {
            plan.fds.push((p.slave.as_raw_fd(), slot.target));
        }
        plan.controlling_tty = Some(p.slave.as_raw_fd());
        self.pty_modes = pty::modes(&p.master);
        self.pty_size = pty::size(&p.master);
        self.pty = Some(p);
        Ok(())
    }

    /// The interposer's caller hears `Accepted` before the fork when the exec is likely to
    /// succeed, so it can become the shim meanwhile; then the fork. Gives back whether the
    /// caller heard `Accepted`, and the fork's outcome.
    fn accept_and_fork(
        &mut self,
        conn: &mut Conn,
        plan: &mut SpawnPlan,
    ) -> (bool, Result<Forked, ExecFailure<'static>>) {
        let _turn = self.turn.take();
        let registry = &self.shared.registry;
        let floor = crate::daemon::registry::floor_for_fork(self.started_at, self.peer.birth());
        plan.pid_slots = Some(registry.forking(self.id, &self.ctx.name, floor));
        // Both steps look up paths the caller chose, as root (the fork waits for the
        // child's exec, which a lease break or a hung network or FUSE mount holds up), so
        // the runtime hands this worker's other tasks to another thread meanwhile. The
        // forking thread stays the runtime's for good (`thread_keep_alive`): the child's
        // parent-death signal follows it. A caller that is not reading (or is gone) hears
        // `Started` instead, or is noticed at the relay loop's first read.
        tokio::task::block_in_place(|| {
            // Not under filesystem rules: the check runs without the context's Landlock
            // domain, and its reading a file's head would tell whether one the context
            // may not read starts like a program.
            let likely = self.via == Via::Interposer
                && !self.ctx.isolation.has_fs_rules()
                && exec_likely(plan);
            // Before `Accepted`, whose wake-up would put the caller on this CPU ahead of
            // the clone; not for a request large enough that letting go of it (freeing
            // its items, trimming the heap after it) is long.
            if !large(&self.req) && conn.request_held() <= TRIM_AFTER {
                prompt::raise();
            }
            let accepted = likely && conn.try_send(&Reply::Accepted).unwrap_or(false);
            (accepted, self.fork(plan))
        })
    }

    /// Forks the child, then lets go of what only the child needed.
    fn fork(&mut self, plan: &mut SpawnPlan) -> Result<Forked, ExecFailure<'static>> {
        // Only a launch relayed by the inherited filter may have it: any other needs a
        // listener of its own (which the kernel refuses under one) or none.
        let bracket = StartBracket::before();
        let lane = match self.relayed {
            Some(_) => Lane::Filtered,
            None => Lane::Plain,
        };
        let forked = fork_exec_in(lane, plan);
        match &forked {
            // At once: the program runs already and may be routing its own children,
            // whose connections this entry places.
            Ok(f) => self.register(f.pid, &f.pidfd, birth_of_child(&f.pidfd, &bracket)),
            Err(_) => self.shared.registry.remove(self.id),
        }
        self.applied = Applied {
            ns_flags: self.holder.as_ref().map_or(0, |h| h.flags),
            landlock: self.ruleset.is_some(),
            enforced: self.enforcing.is_some(),
            exec_guarded: self.exec_guard.is_some() && self.enforced_execs,
        };
        drop(self.holder.take());
        drop(self.cgroup.take());
        drop(self.ruleset.take());
        drop(self.enforcing.take());
        self.ports.clear();
        // The child has its copies; the broker must not keep the caller's descriptors or the
        // slave (the master would never see EOF/EIO). Not closed here, whatever their kind:
        // the broker's copy may be the last (the program closed its own, or never got it,
        // as a cwd descriptor the request overrides), and a last close can wait as long as
        // the caller likes even for a pipe (its release takes the pipe's lock, which a
        // splice into a full socket holds). A closer thread closes them; the reap, or a
        // refusal, waits until it has (`Relay::closed`).
        self.closed = self.passed.take().map(PeerFds::close_telling);
        self.master = self.pty.take().map(|p| p.master);
        forked.map_err(|e| os_failure(Stage::Fork, e, "cannot fork"))
    }

    /// Watches the forked process (and a PTY launch's session leader stand-in, which ends
    /// at the terminal's hangup, when the master is closed); gives back its error pipe.
    fn watch(&mut self, forked: Forked) -> Result<(Child, OwnedFd), ExecFailure<'static>> {
        if let Some((pid, leader)) = forked.session_leader {
            self.leader_pid = Some(pid);
            if let Ok(leader) = watch(leader) {
                tokio::spawn(async move { wait_exit(&leader).await });
            }
        }
        let pid = forked.pid;
        let pidfd = watch(forked.pidfd).map_err(|e| {
            // Not reaped (only `wait_exit` reaps, through the pidfd that failed here).
            kill_unreaped_group(pid, libc::SIGKILL);
            self.shared.registry.remove(self.id);
            os_failure(Stage::Fork, e, "cannot watch the process")
        })?;
        Ok((Child { pid, pidfd }, forked.report))
    }

    /// Registered before anything else can happen: the program may already be running
    /// and routing its own children, whose connections are placed by this entry.
    fn register(&self, pid: libc::pid_t, pidfd: &Arc<OwnedFd>, birth: Option<Birth>) {
        self.shared.registry.insert_started(
            Running {
                id: self.id,
                pid,
                context: self.ctx.name.clone(),
                caller_pid: self.peer.pid,
                caller_uid: self.peer.uid,
                caller_context: self.peer.runs_in().map(str::to_string),
                caller_in_context: self.peer.in_a_context(),
                argv: self.argv.clone(),
                pidfd: Some(pidfd.clone()),
                // Before the fork: the registry's lower bound on the process's start time.
                started: self.started_at,
            },
            birth,
        );
    }

    /// The child's report (`report`): the error pipe closes at a successful exec, or
    /// carries the failing step first.
    async fn await_exec(
        &mut self,
        report: OwnedFd,
        child: &Child,
        prepared: &Prepared,
    ) -> Result<(), ExecFailure<'static>> {
        let mut buf = [0u8; 8];
        let n = read_report(report, &mut buf).await;
        let child_failed = parse_report(&buf[..n]);
        match (self.exec_guard.take(), child_failed.is_some()) {
            // The child sent its listener before its exec: it is on its way to the guard,
            // which must still find the launch when it arrives.
            (Some(armed), false) => self.supervised = armed.started(),
            (armed, _) => drop(armed),
        }
        if let Some(child_failure) = child_failed {
            self.shared.registry.remove(self.id);
            let _ = wait_exit(&child.pidfd).await;
            let detail = failure_detail(
                child_failure.stage,
                &self.req,
                &self.ctx,
                &prepared.cwd,
                &prepared.plan,
            );
            return Err(child_failure.into_exec_failure(detail));
        }
        Ok(())
    }

    /// The program runs: the caller's argv and environment, and the plan's copies, are
    /// not needed any more (the audit and `ctx ps` keep bounded copies), and their room
    /// in the uid's share goes back (`Conn::handshake_done`).
    fn let_go_of_request(&mut self, conn: &mut Conn, prepared: &mut Prepared) {
        self.req.argv = Vec::new();
        self.req.env = Vec::new();
        prepared.plan.argv = Vec::new();
        prepared.plan.envp = Vec::new();
        conn.let_go_of_request();
    }

    /// Counts the launch and tells the caller it started; whether the caller is there.
    async fn started(&self, conn: &mut Conn, child: &Child, accepted: bool) -> bool {
        let pid = child.pid;
        self.shared.launches.fetch_add(1, Ordering::Relaxed);
        // After `Accepted` the interposer's side needs no `Started` (it became the shim
        // already and ignores it): one message and one wake-up less per routed launch.
        let client_alive = accepted
            || conn
                .send(&Reply::Started { id: self.id, pid })
                .await
                .is_ok();
        if !client_alive {
            child.program().kill_group(libc::SIGKILL);
        }
        client_alive
    }

    /// The shim of a launch without a terminal gets the program's pidfd (`Reply::Watch`):
    /// it then learns the end from the kernel as the broker reaps, one wake-up sooner than
    /// from `Exited` (tens of microseconds on a virtual machine, where waking an idle CPU
    /// is dear). A terminal launch's end waits for its output, which only `Exited` follows.
    /// A program that has ended already (the forking thread often runs again only after a
    /// short program's end) is reaped next: `Exited` is as soon, and the client is not
    /// woken twice. Whether the client has it.
    fn hand_over_exit(&self, conn: &mut Conn, child: &Child, accepted: bool) -> bool {
        let plain = accepted && self.master.is_none() && self.leader_pid.is_none();
        plain
            && !ended(&child.pidfd)
            && conn
                .try_send_with_fd(&Reply::Watch, child.pidfd.get_ref().as_raw_fd())
                .unwrap_or(false)
    }

    /// Relays between the caller and the running program until it exits.
    async fn relay(
        &mut self,
        conn: &mut Conn,
        child: &Child,
        parent_signals: mpsc::Receiver<i32>,
        client_alive: bool,
        watched: bool,
    ) -> Relayed {
        Relay {
            conn,
            pid: child.pid,
            pidfd: &child.pidfd,
            watched,
            closed: self.closed.take(),
            master: self.master.take(),
            pty_modes: self.pty_modes,
            pty_size: self.pty_size,
            // The modes the PTY was given: what the caller's terminal had at the launch.
            launch_modes: self.req.tty.as_ref().and_then(|t| t.termios),
            timeout: effective_timeout(&self.ctx, &self.req),
            shutdown: self.shared.shutdown_rx.clone(),
            parent_signals,
            // As the kernel would decide for a program of this uid signalling the caller.
            parent_guarded: self.ctx.user.uid != self.peer.uid,
            client_alive,
            // Only a stand-in leading the session lets the program end without hanging
            // its terminal up.
            linger: self.leader_pid.map(|leader| LingerBudget {
                admissions: &self.shared.admissions,
                uid: self.peer.uid,
                in_context: self.peer.in_a_context(),
                leader,
            }),
            supervised: self.supervised.take(),
        }
        .run()
        .await
    }

    /// Sends `Exited` (and `Lingering` when the terminal stays open for the processes the
    /// program left holding it: given back then), hands the terminal over to the session
    /// leader stand-in, and writes the audit line, last.
    async fn end(
        &mut self,
        conn: &mut Conn,
        pid: libc::pid_t,
        relayed: Relayed,
        prepared: Prepared,
    ) -> Option<Lingering> {
        let Relayed {
            status,
            timed_out,
            client_alive,
            master,
            linger,
        } = relayed;
        self.shared.registry.remove(self.id);
        // A program that shut its reserved port's socket down, or changed it, leaves it
        // listening again, whole once no launch holds it, for the port's next connections.
        self.port_claims.clear();
        let status = status.unwrap_or(ExitStatus::Code(255));
        let mut told = false;
        // A caller who is not reading holds this up only until a little after the broker
        // began to shut down.
        let grace = || shutdown_grace(self.shared.shutdown_rx.clone());
        if client_alive {
            let reply = Reply::Exited { status, timed_out };
            told = sent(conn.send_before(&reply, grace()).await);
        }
        let lingering = match (master, self.leader_pid, linger) {
            (Some(master), Some(leader), Some(count))
                if told && sent(conn.send_before(&Reply::Lingering, grace()).await) =>
            {
                Some(Lingering {
                    master,
                    leader,
                    _count: count,
                })
            }
            (master, leader, _) => {
                conn.end_replies();
                if let (Some(master), Some(leader)) = (master, leader) {
                    tokio::spawn(hang_up_after_handover(master, leader));
                }
                None
            }
        };
        let ctx = &self.ctx;
        self.shared.audit.record(AuditEvent::Exec {
            id: self.id,
            pid,
            caller: caller(self.peer),
            context: ctx.name.clone(),
            tty: prepared.wants_tty,
            isolation: isolation(ctx, &self.applied),
            status: status.into(),
            timed_out,
            caller_disconnected: !client_alive,
            duration_ms: self.started_at.elapsed().as_millis() as u64,
            cwd: audit::lossless(&prepared.cwd, self.fields.text_keep).into(),
            cwd_verified: self.cwd_unverified.is_some().then_some(false),
            cwd_id: self.cwd_unverified.take(),
            argv: std::mem::take(&mut self.fields.argv),
        });
        lingering
    }

    /// Keeps the terminal open for the processes the program left holding it, relaying
    /// their output to the caller, until none holds it; then hangs it up as [`Self::end`]
    /// would have.
    async fn linger(&self, conn: &mut Conn, lingering: Lingering) {
        let deadline = effective_timeout(&self.ctx, &self.req)
            .map(|t| tokio::time::Instant::from_std(self.started_at + t));
        linger(
            conn,
            &lingering.master,
            self.shared.shutdown_rx.clone(),
            deadline,
        )
        .await;
        conn.end_replies();
        hang_up_after_handover(lingering.master, lingering.leader).await;
    }

    /// A refused launch: audited, and the failure sent to the caller.
    async fn fail(&self, conn: &mut Conn, failure: ExecFailure<'static>) {
        let fields = &self.fields;
        self.shared.audit.record(AuditEvent::ExecFailed {
            caller: caller(self.peer),
            context: self.ctx.name.clone(),
            kind: format!("{:?}", failure.kind),
            stage: failure.stage.as_str().into(),
            errno: failure.errno_name.to_string(),
            duration_ms: self.started_at.elapsed().as_millis() as u64,
            // The message may quote the caller's cwd or program, whatever their length.
            message: audit::lossless(failure.message.as_bytes(), fields.text_keep).into(),
            argv: fields.argv.clone(),
        });
        let _ = conn.send(&Reply::ExecFailed(failure)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Functions: helpers of the steps
// ---------------------------------------------------------------------------------------

/// The argv as text for `ctx ps` and the registry, at most [`audit::ARGV_KEEP`] bytes of
/// it (an argument cut short ends in `…`): a launch keeps it as long as its program runs.
/// A request of more items than [`LARGE_REQUEST`]: its plan, and letting go of it, are
/// long.
fn large(req: &ExecRequest) -> bool {
    req.env.len() + req.argv.len() > LARGE_REQUEST
}

fn lossy(args: &[serde_bytes::ByteBuf]) -> Vec<String> {
    // Only what can be kept is converted: one byte past the room marks an argument cut
    // (lossy text is never shorter than its bytes).
    let mut converted = 0;
    let mut texts = Vec::new();
    for a in args {
        if converted > audit::ARGV_KEEP {
            break;
        }
        let head = &a[..a.len().min(audit::ARGV_KEEP + 1)];
        converted += head.len() + 1;
        texts.push(String::from_utf8_lossy(head).into_owned());
    }
    crate::daemon::registry::cut_argv(texts, audit::ARGV_KEEP)
}

/// The caller's cwd descriptor comes with the caller's own name for it, which in another
/// mount namespace (the caller's, or that of whatever process sent the request over the
/// connection) may mean another directory here, or none: the audit marks the name
/// unverified, with the directory's `dev:ino`, unless the name leads here to the very
/// directory passed (same mount, same inode). Both looks are made from what the kernel has
/// cached (`untrusted_path`): a mount the caller chose cannot hold the worker.
fn cwd_unverified(name: &[u8], fd: RawFd) -> Option<String> {
    let passed = untrusted_path::cached_identity_of_fd(fd);
    if passed.is_some() && untrusted_path::cached_identity_of_name(name) == passed {
        return None;
    }
    Some(passed.map_or_else(|| "unknown".into(), |(dev, ino, _)| format!("{dev}:{ino}")))
}

/// What isolation a launch ran under, for its audit record.
fn isolation(ctx: &Context, applied: &Applied) -> IsolationInForce {
    let Applied {
        ns_flags,
        landlock,
        enforced,
        exec_guarded,
    } = *applied;
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
                let file: &[u8] = match &req.program {
                    Some(p) => p,
                    None => &req.argv[0],
                };
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
