//! `contexts.toml`: the resolved model the broker runs on ([`Config`], [`Context`]) and
//! its loader ([`load`]), which refuses anything it does not understand with the file,
//! line and key.

mod load;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use load::{load, load_str, parse_duration, ConfigError};

/// Default PATH for a context whose env does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from.
    pub path: PathBuf,
    pub broker: BrokerSettings,
    pub contexts: BTreeMap<String, Arc<Context>>,
    /// Non-fatal findings at load (e.g. an isolation option this kernel lacks).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    pub socket: PathBuf,
    pub socket_mode: u32,
    /// Group name and its resolved gid.
    pub socket_group: Option<(String, u32)>,
    pub state_dir: PathBuf,
    pub audit_log: PathBuf,
    pub reserved_ports: Vec<u16>,
    /// Which context may be handed each reserved port's socket (`ctx exec --listen-port`);
    /// a port without an owner is handed only to a root caller.
    pub port_owners: BTreeMap<u16, String>,
    /// Rotate the audit log to `<audit_log>.1` once it reaches this many bytes.
    pub audit_log_max: Option<u64>,
    /// The broker's `tracing` filter when `RUST_LOG` is not set (`"info"`, `"debug"`...).
    pub log_level: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Context {
    pub name: String,
    pub user: User,
    /// Context environment: `env_files` in order, then inline `env` (inline wins), then
    /// `PATH` defaulted. Values are secrets: never log or print them.
    pub env: Vec<(String, String)>,
    /// The `env_files` the environment was read from: secrets too, kept from every
    /// context's Landlock grants.
    pub env_files: Vec<PathBuf>,
    /// Names or globs (`*`, `?`) copied from the caller's environment.
    pub inherit_env: Vec<String>,
    pub cwd: CwdRule,
    pub route_children_to: Option<String>,
    pub allow: Allow,
    pub rlimits: Vec<Rlimit>,
    pub timeout: Option<Duration>,
    pub on_broker_down: BrokerDown,
    /// Whether `ctx exec` and routed launches see what the default `ctx sh` session exports.
    pub shell_env: ShellEnv,
    pub isolation: Isolation,
    pub cgroup: CgroupLimits,
}

/// Per-context cgroup limits (`memory_max`, `pids_max`, `cpu_max`); every context also
/// gets a cgroup without limits where the host has them, so `ctx kill --context` finds
/// all its processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupLimits {
    /// Bytes of memory (and swap) for all of the context's processes together.
    pub memory_max: Option<u64>,
    /// Processes (and threads) at once.
    pub pids_max: Option<u64>,
    /// Percent of one CPU (150 = one and a half CPUs).
    pub cpu_max: Option<u32>,
}

impl CgroupLimits {
    pub fn any(&self) -> bool {
        self.memory_max.is_some() || self.pids_max.is_some() || self.cpu_max.is_some()
    }
}

/// A resolved account; the spawn path needs every field before it forks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// As written in the file (`"agent"`, `"1000"`, `"1000:1000"`).
    pub spec: String,
    /// Login name (the passwd entry's), or the uid as text when there is no entry.
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
    /// Supplementary groups as `initgroups` would set them (includes `gid`).
    pub groups: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CwdRule {
    /// The caller's working directory.
    Inherit,
    /// The user's home (no `cwd` key).
    Home,
    Path(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allow {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    /// Processes running in these contexts may enter.
    pub contexts: Vec<String>,
    /// No `allow` key: root and the context's own uid.
    pub is_default: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// Key as written (`nofile`).
    pub name: &'static str,
    /// `libc::RLIMIT_*`.
    pub resource: i32,
    /// Applied as both soft and hard limit.
    pub value: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BrokerDown {
    /// Launches fail when the broker cannot be reached.
    #[default]
    Fail,
    /// Launches run locally (opt-in; the caller's own credentials).
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShellEnv {
    /// Session state stays in `ctx sh` (default).
    #[default]
    Private,
    /// The default session's exported variables apply to every launch in the context.
    Shared,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Isolation {
    pub pid: bool,
    pub network: Network,
    pub enforce: bool,
    /// Landlock: may read and execute beneath these paths.
    pub read_only: Vec<PathBuf>,
    /// Landlock: may do anything beneath these paths.
    pub read_write: Vec<PathBuf>,
    /// Landlock: nothing beneath these paths (carved out of the two lists above, or out
    /// of the whole filesystem when neither is given).
    pub no_access: Vec<PathBuf>,
    pub signals: Signals,
    /// Landlock (ABI 4+): the only TCP ports the context may bind; `None` leaves binding
    /// alone, `Some(vec![])` forbids every TCP bind.
    pub tcp_bind: Option<Vec<u16>>,
    /// Landlock (ABI 4+): the only TCP ports the context may connect to.
    pub tcp_connect: Option<Vec<u16>>,
}

impl Isolation {
    /// Whether the context asks for Landlock filesystem rules.
    pub fn has_fs_rules(&self) -> bool {
        !self.read_only.is_empty() || !self.read_write.is_empty() || !self.no_access.is_empty()
    }

    /// Whether the context asks for Landlock TCP port rules.
    pub fn has_tcp_rules(&self) -> bool {
        self.tcp_bind.is_some() || self.tcp_connect.is_some()
    }
}

/// Which processes a context's processes may signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Signals {
    /// Whatever uid separation allows (default).
    #[default]
    Any,
    /// Only processes of their own launch (Landlock `LANDLOCK_SCOPE_SIGNAL`, ABI 6+).
    Scoped,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Network {
    #[default]
    Host,
    /// Loopback only (its own network namespace).
    None,
    /// Loopback only, plus the broker's proxy inside that namespace, which connects only
    /// to what the rule allows.
    Egress(Arc<crate::daemon::egress::rule::Rule>),
}

impl Network {
    /// Whether the context runs in a network namespace of its own.
    pub fn own_namespace(&self) -> bool {
        !matches!(self, Network::Host)
    }

    pub fn egress(&self) -> Option<&Arc<crate::daemon::egress::rule::Rule>> {
        match self {
            Network::Egress(rule) => Some(rule),
            _ => None,
        }
    }
}

/// Shell-style glob (`*` any run, `?` one character) used by `inherit_env`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

impl Context {
    /// Whether `inherit_env` lets the caller's variable `name` through.
    pub fn inherits(&self, name: &str) -> bool {
        self.inherit_env.iter().any(|p| glob_match(p, name))
    }

    /// The context's environment with every value hidden (`****`, or empty when the value
    /// is empty), for listings such as `ctx contexts`.
    pub fn masked_env(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(k, v)| {
                let mask = if v.is_empty() { "" } else { "****" };
                (k.clone(), mask.to_string())
            })
            .collect()
    }

    /// `enforce = true` with a route: the context's processes launch only into its
    /// `route_children_to` target.
    pub fn enforces_routing(&self) -> bool {
        self.isolation.enforce && self.route_children_to.is_some()
    }

    /// The `allow` rule. `peer_context`: the context the peer runs in by its ancestry
    /// (what `allow.contexts` names); `foreign`: the peer runs in a context other than this
    /// one (known by its ancestry or cgroup, or unknown). Root's uid and gid let in root
    /// outside every context, or a process of the context itself: a uid-0 context's
    /// processes enter another context only where its `allow.contexts` names them,
    /// whatever the uids it lists.
    pub fn allows(&self, uid: u32, gid: u32, peer_context: Option<&str>, foreign: bool) -> bool {
        let root_uid = uid == 0 && foreign;
        let root_gid = gid == 0 && foreign;
        if self.allow.is_default {
            return !root_uid && (uid == 0 || uid == self.user.uid);
        }
        (self.allow.uids.contains(&uid) && !root_uid)
            || (self.allow.gids.contains(&gid) && !root_gid)
            || peer_context.is_some_and(|c| self.allow.contexts.iter().any(|a| a == c))
    }

    /// [`Context::allows`] for a connected peer. A context that enforces its routing lets
    /// in a process of a context (itself included) only where its `allow.contexts` names
    /// that context, whatever the uid: its own processes, entering it again directly or
    /// through a context of the same uid, would have the broker run there any program,
    /// which `enforce` exists to forbid (found by the eleventh and twelfth reviews).
    pub fn allows_peer(&self, peer: &crate::daemon::Peer) -> bool {
        if self.enforces_routing() && peer.in_a_context() {
            return peer
                .runs_in()
                .is_some_and(|c| self.allow.contexts.iter().any(|a| a == c));
        }
        let foreign = peer.in_a_context() && peer.runs_in() != Some(self.name.as_str());
        self.allows(peer.uid, peer.gid, peer.context.as_deref(), foreign)
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("LC_*", "LC_ALL"));
        assert!(glob_match("TERM", "TERM"));
        assert!(!glob_match("TERM", "TERMINAL"));
        assert!(glob_match("A?C", "ABC"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("LC_*", "LANG"));
    }
}
