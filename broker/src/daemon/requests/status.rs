//! `ctx status`: the broker, its contexts' isolation, and the limits in force.

use std::sync::atomic::Ordering;

use ctx_protocol::StatusReport;

use crate::daemon::{isolation, Shared};

pub fn status(shared: &Shared) -> StatusReport {
    let config = shared.config();
    let mut warnings = config.warnings.clone();
    warnings.extend(
        shared
            .warnings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned(),
    );
    if let Some(w) = shared.audit.health() {
        warnings.push(w);
    }
    warnings.extend(super::reload::reload_refusal());
    warnings.extend(shared.namespaces.warnings());
    warnings.extend(shared.egress.warnings());
    warnings.extend(shared.cgroups.warnings());
    warnings.extend(isolation::uid_warnings(&config));
    warnings.extend(super::reload::socket_warnings(shared, &config));
    warnings.extend(
        shared
            .exec_guard
            .failure()
            .map(|why| format!("enforce: the exec guard is NOT in force: {why}")),
    );
    StatusReport {
        software: concat!("ctx-broker ", env!("CARGO_PKG_VERSION")).into(),
        pid: std::process::id() as i32,
        // SAFETY: plain getter.
        uid: unsafe { libc::geteuid() },
        config_path: config.path.display().to_string(),
        socket_path: shared.socket_path.display().to_string(),
        audit_log: shared.audit.path().display().to_string(),
        uptime_ms: shared.started.elapsed().as_millis() as u64,
        running: shared.registry.len() as u64,
        launches: shared.launches.load(Ordering::Relaxed),
        contexts: config.contexts.keys().cloned().collect(),
        warnings,
        isolation: config
            .contexts
            .values()
            .map(|c| isolation::line(shared, c).render())
            .collect(),
    }
}
