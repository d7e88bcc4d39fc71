//! The operator's requests: `ctx reload` (and SIGHUP), `ctx ps`, `ctx kill`.
//!
//! Who may do what: root (or the uid the broker itself runs as, when it runs unprivileged)
//! may reload and see and signal every routed process; anyone else sees and signals only
//! the processes their own uid launched. Every reload and kill is audited.

use std::sync::{Arc, Mutex};

/// Why the last reload was refused, until one succeeds: `ctx status` shows it, so an
/// operator who sent SIGHUP (which has no one to answer) still learns the file was bad.
static LAST_REFUSAL: Mutex<Option<String>> = Mutex::new(None);

use ctx_protocol::{ErrorKind, KillTarget, ProcessInfo, Reply, Request};

use super::connection::Conn;
use super::registry::Running;
use super::requests::{caller, kill_group};
use super::{systemd, Peer, Shared};
use crate::audit_event::{AuditEvent, Caller, Requester};
use crate::config::{self, BrokerSettings, Config, ConfigError};

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// What a successful reload put in force.
#[derive(Debug)]
pub struct Reloaded {
    pub contexts: Vec<String>,
    /// The new file's own warnings, and the `[broker]` changes that wait for a restart.
    pub warnings: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// Answers one operator request on `conn`.
pub async fn serve(shared: &Arc<Shared>, conn: &mut Conn, peer: &Peer, request: Request) {
    let reply = match request {
        Request::Reload => reload_request(shared, peer).await,
        Request::Ps => Reply::Processes(ps(shared, peer)),
        Request::Kill { target, signo } => kill(shared, peer, &target, signo),
        _ => error(ErrorKind::BadRequest, "not an operator request".into()),
    };
    let _ = conn.send(&reply).await;
}

/// Root, or the broker's own uid (an unprivileged broker's operator is its owner).
pub fn is_operator(peer: &Peer) -> bool {
    // SAFETY: plain getter.
    peer.uid == 0 || peer.uid == unsafe { libc::geteuid() }
}

async fn reload_request(shared: &Arc<Shared>, peer: &Peer) -> Reply<'static> {
    if !is_operator(peer) {
        shared.audit.record_refusal(
            peer.uid,
            AuditEvent::Refused {
                reason: "reload needs root".into(),
                caller: caller(peer),
                context: None,
                argv: None,
                ids: None,
                signal: None,
            },
        );
        return error(
            ErrorKind::Refused,
            format!(
                "uid {} may not reload the broker; run ctx reload as root",
                peer.uid
            ),
        );
    }
    let worker = shared.clone();
    let caller = caller(peer);
    // Loading resolves users and groups through NSS, which may block.
    let joined = tokio::task::spawn_blocking(move || reload(&worker, Some(caller))).await;
    match joined {
        Ok(Ok(done)) => Reply::Reloaded {
            contexts: done.contexts,
            warnings: done.warnings,
        },
        Ok(Err(e)) => error(
            ErrorKind::ConfigRejected,
            format!("{e}\nreload refused: the running configuration stays in force"),
        ),
        Err(e) => error(ErrorKind::Internal, format!("reload failed: {e}")),
    }
}

/// Re-reads the config file in force and swaps it in whole, or keeps the running one when
/// the file is refused. Routed processes keep running: each holds the context it started
/// with. `caller` is who asked (`None`: SIGHUP).
pub fn reload(shared: &Arc<Shared>, caller: Option<Caller>) -> Result<Reloaded, ConfigError> {
    // Two reloads at once must not finish in the opposite order they read the file.
    static RELOADING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = RELOADING.lock().unwrap_or_else(|e| e.into_inner());
    systemd::reloading();
    let old = shared.config();
    let loaded = config::load(&old.path);
    let caller = caller.map_or_else(|| Requester::Signal("SIGHUP".into()), Requester::Peer);
    match loaded {
        Ok(new) => {
            let mut warnings = new.warnings.clone();
            warnings.extend(restart_needed(&old.broker, &new.broker));
            for w in &warnings {
                tracing::warn!("{w}");
            }
            shared.audit.set_max_size(new.broker.audit_log_max);
            *LAST_REFUSAL.lock().unwrap_or_else(|e| e.into_inner()) = None;
            let contexts: Vec<String> = new.contexts.keys().cloned().collect();
            // Namespaces a context no longer wants (or wants differently) end here, with the
            // processes still running in them.
            let mut degraded = shared.namespaces.sync(&new);
            // The proxies follow: same namespace, new rule; or a listener in a new one.
            degraded.extend(shared.egress.sync(shared, &new));
            degraded.extend(shared.cgroups.sync(&new));
            degraded.extend(super::isolation::uid_warnings(&new));
            degraded.extend(socket_warnings(shared, &new));
            for w in &degraded {
                tracing::warn!("{w}");
            }
            warnings.extend(degraded);
            shared.set_config(new);
            tracing::info!(config = %old.path.display(), "configuration reloaded");
            shared.audit.record(AuditEvent::Reload {
                ok: true,
                config: old.path.display().to_string(),
                contexts: Some(contexts.clone()),
                error: None,
                caller,
            });
            systemd::ready(&serving(&shared.config()));
            Ok(Reloaded { contexts, warnings })
        }
        Err(e) => {
            tracing::error!("reload refused, keeping the running configuration: {e}");
            *LAST_REFUSAL.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                "the last reload was refused, the previous configuration is in force: {e}"
            ));
            shared.audit.record(AuditEvent::Reload {
                ok: false,
                config: old.path.display().to_string(),
                contexts: None,
                error: Some(e.to_string()),
                caller,
            });
            systemd::ready(&format!("{}; last reload refused: {e}", serving(&old)));
            Err(e)
        }
    }
}

/// The warning `ctx status` shows while the last reload stands refused.
pub fn reload_refusal() -> Option<String> {
    LAST_REFUSAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// The contexts of `config` whose processes cannot connect to the socket as it is now
/// (a reload may have changed their users' groups; the socket's mode waits for a restart).
pub fn socket_warnings(shared: &Shared, config: &Config) -> Vec<String> {
    super::socket_reach::SocketAccess::on_disk(&shared.socket_path)
        .map(|access| super::socket_reach::warnings(config, &access))
        .unwrap_or_default()
}

/// The `STATUS=` line systemd shows for a serving broker.
pub fn serving(config: &Config) -> String {
    format!("serving {} context(s)", config.contexts.len())
}

/// `[broker]` settings a running broker cannot change under its clients.
fn restart_needed(old: &BrokerSettings, new: &BrokerSettings) -> Vec<String> {
    let mut changed = Vec::new();
    if old.socket != new.socket || old.socket_mode != new.socket_mode {
        changed.push("socket");
    }
    if old.socket_group != new.socket_group {
        changed.push("socket_group");
    }
    if old.state_dir != new.state_dir {
        changed.push("state_dir");
    }
    if old.audit_log != new.audit_log {
        changed.push("audit_log");
    }
    if old.log_level != new.log_level {
        changed.push("log_level");
    }
    if old.reserved_ports != new.reserved_ports {
        changed.push("reserved_ports");
    }
    changed
        .into_iter()
        .map(|key| format!("[broker] {key} changed: it takes effect when the broker restarts"))
        .collect()
}

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

fn may_touch(peer: &Peer, running: &Running) -> bool {
    is_operator(peer) || running.caller_uid == peer.uid
}

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
            peer.uid,
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
                "uid {} may not signal the routed process(es) {what}: only root or the uid that \
                 launched them may",
                peer.uid
            ),
        );
    }
    let mut ids = Vec::with_capacity(allowed.len());
    let mut groups = Vec::with_capacity(allowed.len());
    for r in &allowed {
        // The registry drops an entry only after its leader is reaped, and a process group
        // id stays taken while any member lives, so this cannot reach a stranger's group
        // except in the instant between that reap and the entry's removal.
        kill_group(r.pid, signo);
        ids.push(r.id);
        groups.push(r.pid);
    }
    // The rest of the context: what its cgroup holds outside the groups just signalled.
    let in_cgroup = whole_context.map_or(0, |name| shared.cgroups.kill(name, signo, &groups));
    shared.audit.record(AuditEvent::Kill {
        caller: caller(peer),
        ids: ids.clone(),
        contexts: allowed.iter().map(|r| r.context.clone()).collect(),
        cgroup_processes: in_cgroup as u64,
        signal: signo,
    });
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

fn error(kind: ErrorKind, message: String) -> Reply<'static> {
    Reply::Error {
        kind,
        message: message.into(),
    }
}
