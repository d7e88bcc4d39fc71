//! The broker daemon: a tokio process that listens on a Unix socket, authenticates each
//! peer with `SO_PEERCRED`, and runs routed launches in the contexts of `contexts.toml`.
//!
//! - [`server`]: the socket, the accept loop, shutdown and reload;
//! - [`dispatch`]: one peer: handshake, dispatch of its request;
//! - [`connection`]: its frames and the descriptors that ride on them;
//! - [`admission`]: what each uid may make the broker hold (connections, handshakes);
//! - [`requests`]: one file per request: a launch from request to exit status, its relay,
//!   `ctx sh`, `ctx status`, `ctx contexts`, and the operator's `ctx reload`, `ps`, `kill`;
//! - [`plan`] and [`spawn`]: the fork/exec path; [`inherit`]: what the caller passes on
//!   across exec (umask, limits, scheduling, signal state); [`pty`]: terminals;
//! - [`kernel`]: the kernel's mechanisms each context is isolated by: its long-lived
//!   namespaces, its cgroup, its Landlock ruleset, the seccomp filters, the supervisor
//!   (`enforce`'s exec guard, the parent-signal relay), the reserved ports;
//! - [`egress`]: the proxy inside an egress context's namespace, reaching allowed names;
//! - [`isolation`]: what of each context's isolation is in force, and what is not;
//! - [`socket_reach`]: whether each routing context's uid can connect to the socket;
//! - [`audit`]: the JSON-lines audit log; [`registry`]: running processes;
//! - [`systemd`]: socket activation, sd_notify; [`session`]: the broker holds no terminal.

pub mod admission;
pub mod audit;
pub mod closer;
pub mod connection;
pub mod dispatch;
pub mod egress;
pub mod inherit;
pub mod isolation;
pub mod job_control;
pub mod kernel;
pub mod peer;
pub mod plan;
pub mod process_view;
pub mod pty;
pub mod quiet_log;
pub mod registry;
pub mod requests;
pub mod server;
pub mod session;
pub mod shell_state;
pub mod signals;
pub mod socket_peer;
pub mod socket_reach;
pub mod spawn;
pub mod systemd;
pub mod untrusted_path;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::config::Config;

pub use server::{run, Options};

pub use peer::Peer;

/// State every connection task shares.
pub struct Shared {
    config: RwLock<Arc<Config>>,
    pub socket_path: PathBuf,
    pub state_dir: PathBuf,
    pub routing: plan::Routing,
    pub sessions: shell_state::SessionLocks,
    pub audit: audit::Audit,
    pub registry: registry::Registry,
    pub next_id: AtomicU64,
    pub launches: AtomicU64,
    pub started: Instant,
    pub shutting_down: AtomicBool,
    pub shutdown_rx: tokio::sync::watch::Receiver<bool>,
    /// Limits in force that `ctx status` reports.
    pub warnings: RwLock<Vec<String>>,
    pub namespaces: kernel::namespaces::Namespaces,
    pub egress: egress::Egress,
    pub ports: kernel::ports::ReservedPorts,
    pub landlock: kernel::landlock::Rulesets,
    pub exec_guard: kernel::supervisor::ExecGuard,
    pub cgroups: kernel::cgroups::Cgroups,
    pub admissions: Arc<admission::Admissions>,
}

impl Shared {
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Files other than the config, audit log and state dir that hold secrets: every
    /// context's `env_files` and the audit log's rotated generation.
    pub fn secret_files(&self) -> Vec<PathBuf> {
        let config = self.config();
        let mut files: Vec<PathBuf> = config
            .contexts
            .values()
            .flat_map(|c| c.env_files.iter().cloned())
            .collect();
        // Canonical, as the env files are since the load: it is followed through no link.
        let rotated = self.audit.rotated_path();
        let canonical = rotated
            .parent()
            .and_then(|d| std::fs::canonicalize(d).ok())
            .zip(rotated.file_name())
            .map(|(d, f)| d.join(f));
        files.push(canonical.unwrap_or(rotated));
        files
    }

    pub fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }
}
