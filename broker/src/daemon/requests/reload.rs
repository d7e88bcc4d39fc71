//! `ctx reload` (and SIGHUP): the operator swaps in the config file again. Only the
//! operator (see [`super::is_operator`]) may; every reload is audited.

use std::sync::{Arc, Mutex};

/// Why the last reload was refused, until one succeeds: `ctx status` shows it, so an
/// operator who sent SIGHUP (which has no one to answer) still learns the file was bad.
static LAST_REFUSAL: Mutex<Option<String>> = Mutex::new(None);

use ctx_protocol::{ErrorKind, Reply};

use super::{caller, error, is_operator};
use crate::audit_event::{AuditEvent, Caller, Requester};
use crate::config::{self, BrokerSettings, Config, ConfigError};
use crate::daemon::kernel::landlock;
use crate::daemon::{systemd, Peer, Shared};

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

pub async fn reload_request(shared: &Arc<Shared>, peer: &Peer) -> Reply<'static> {
    if !is_operator(peer) {
        shared.audit.record_refusal(
            super::audit_charge(peer),
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
                "{} may not reload the broker; run ctx reload as root, outside every context",
                super::who(peer)
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
    let loaded = config::load(&old.path, landlock::abi());
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
            degraded.extend(crate::daemon::isolation::uid_warnings(&new));
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
    crate::daemon::socket_reach::SocketAccess::on_disk(&shared.socket_path)
        .map(|access| crate::daemon::socket_reach::warnings(config, &access))
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
