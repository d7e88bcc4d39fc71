//! Parsing and validation of `contexts.toml` into the resolved [`Config`].
//!
//! Two passes: serde reads the text into `Raw*` structs that keep each value's byte span
//! (`toml::Spanned`) and refuse unknown keys; then [`Loader`] checks and resolves every
//! value (accounts, groups, env files, routes) and turns spans back into `file:line:col`.

mod envfile;
mod secret_file;
mod spans;
mod values;
pub use values::parse_duration;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::unistd::{Gid, Group, Uid};
use serde::Deserialize;
use toml::Spanned;

use super::{
    Allow, BrokerDown, BrokerSettings, CgroupLimits, Config, Context, CwdRule, Isolation, Network,
    Rlimit, ShellEnv, Signals, User,
};
use crate::daemon::egress;
use crate::daemon::kernel::landlock;
use values::{EnvTable, Scalar};

// ---------- Constants ----------

use ctx_protocol::DEFAULT_SOCKET;
const DEFAULT_SOCKET_MODE: u32 = 0o660;
const DEFAULT_STATE_DIR: &str = "/var/lib/ctx";
const DEFAULT_AUDIT_LOG: &str = "/var/log/ctx/audit.jsonl";

/// Context names become file names (session state) and log fields.
const MAX_CONTEXT_NAME: usize = 64;

/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// `rlimits` keys and the resource each sets.
// glibc types RLIMIT_* as unsigned and musl as signed; every value fits an i32.
const RLIMITS: [(&str, i32); 14] = [
    ("nofile", libc::RLIMIT_NOFILE as i32),
    ("nproc", libc::RLIMIT_NPROC as i32),
    ("core", libc::RLIMIT_CORE as i32),
    ("cpu", libc::RLIMIT_CPU as i32),
    ("fsize", libc::RLIMIT_FSIZE as i32),
    ("data", libc::RLIMIT_DATA as i32),
    ("stack", libc::RLIMIT_STACK as i32),
    ("as", libc::RLIMIT_AS as i32),
    ("memlock", libc::RLIMIT_MEMLOCK as i32),
    ("locks", libc::RLIMIT_LOCKS as i32),
    ("sigpending", libc::RLIMIT_SIGPENDING as i32),
    ("msgqueue", libc::RLIMIT_MSGQUEUE as i32),
    ("nice", libc::RLIMIT_NICE as i32),
    ("rtprio", libc::RLIMIT_RTPRIO as i32),
];

// ---------- Error ----------

/// Why a config was refused. Displays as `FILE:LINE:COL: KEY: REASON`, leaving out the
/// parts it does not have (a file that cannot be read has no line).
///
/// Never holds a value from `env` or `env_files`: those are secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// The config file.
    pub path: PathBuf,
    /// 1-based line and column (in characters) in `path`.
    pub at: Option<(usize, usize)>,
    /// Dotted key the error is about (`contexts.user.user`).
    pub key: Option<String>,
    pub reason: String,
}

impl ConfigError {
    fn render(&self) -> String {
        let mut out = self.path.display().to_string();
        if let Some((line, column)) = self.at {
            out.push_str(&format!(":{line}:{column}"));
        }
        out.push_str(": ");
        if let Some(key) = &self.key {
            out.push_str(key);
            out.push_str(": ");
        }
        out.push_str(&self.reason);
        out
    }
}

// ---------- Functions ----------

/// Reads and resolves the config at `path`, warning about the Landlock options a kernel
/// with Landlock ABI `landlock_abi` leaves out (the broker passes
/// [`landlock::abi`], this kernel's).
pub fn load(path: &Path, landlock_abi: i32) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        at: None,
        key: None,
        reason: format!("cannot read the config: {e}"),
    })?;
    load_str(&text, path, landlock_abi)
}

/// Resolves config `text`; `path` is only used to name the file in errors and warnings
/// (and is kept in [`Config::path`]); `landlock_abi` as for [`load`].
pub fn load_str(text: &str, path: &Path, landlock_abi: i32) -> Result<Config, ConfigError> {
    let loader = Loader {
        text,
        path,
        landlock_abi,
        warnings: Vec::new(),
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| loader.toml_error(&e))?;
    loader.resolve(raw)
}

/// One warning per uid that two or more contexts share: the kernel cannot tell their
/// processes apart, so each reads the other's `/proc/PID/environ` (its secrets), signals and
/// traces its processes, and, under the default `allow` (root and the context's uid), enters
/// the other and so escapes its own Landlock and network rules.
fn shared_uid_warnings(contexts: &BTreeMap<String, Arc<Context>>) -> Vec<String> {
    let mut by_uid: BTreeMap<u32, Vec<&Context>> = BTreeMap::new();
    for ctx in contexts.values() {
        by_uid.entry(ctx.user.uid).or_default().push(ctx);
    }
    by_uid
        .into_iter()
        .filter(|(_, list)| list.len() > 1)
        .map(|(uid, list)| {
            let names: Vec<String> = list
                .iter()
                .map(|c| format!("contexts.{}", c.name))
                .collect();
            // Root's uid lets no context's process into another (only by name).
            let open_doors: Vec<String> = list
                .iter()
                .filter(|c| uid != 0 && (c.allow.is_default || c.allow.uids.contains(&uid)))
                .map(|c| c.name.clone())
                .collect();
            let mut text = format!(
                "{} all run as uid {uid} ({}): they are NOT separated from each other; each can \
                 read the others' secrets from /proc/PID/environ and signal or trace their \
                 processes",
                names.join(", "),
                list[0].user.name
            );
            if !open_doors.is_empty() {
                text.push_str(&format!(
                    ", and their allow rules let uid {uid} enter {} (out of its own isolation)",
                    open_doors.join(", ")
                ));
            }
            text.push_str("; give each context a user of its own");
            text
        })
        .collect()
}

/// One warning per context whose children the context it routes them to would refuse:
/// every one of their launches fails closed. Its `allow` must name the context, or let in
/// its uid (never root's: uid 0 enters another context only by name).
fn routes_refused(
    routes: &[(String, Spanned<String>)],
    contexts: &BTreeMap<String, Arc<Context>>,
) -> Vec<String> {
    routes
        .iter()
        .filter_map(|(from, to)| {
            let to = to.get_ref();
            let (source, target) = (contexts.get(from)?, contexts.get(to)?);
            let user = &source.user;
            if target.allows(user.uid, user.gid, Some(from), true) {
                return None;
            }
            let why = match user.uid {
                0 => "uid 0 enters another context only where its allow names it".to_string(),
                uid => format!("its allow rule does not let uid {uid} ({}) in", user.name),
            };
            Some(format!(
                "contexts.{from}: route_children_to = {to:?} cannot work: contexts.{to} refuses \
                 the processes of {from:?} ({why}), so every launch they make fails closed; add \
                 {from:?} to contexts.{to}.allow.contexts"
            ))
        })
        .collect()
}

/// An environment variable name as POSIX shells accept it: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_context_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CONTEXT_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

// ---------- Raw file shape ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    broker: Option<RawBroker>,
    #[serde(default)]
    contexts: BTreeMap<Spanned<String>, RawContext>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    socket: Option<Spanned<String>>,
    socket_mode: Option<Spanned<Scalar>>,
    socket_group: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    audit_log: Option<Spanned<String>>,
    reserved_ports: Option<Vec<Spanned<i64>>>,
    port_owners: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    audit_log_max: Option<Spanned<Scalar>>,
    log_level: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContext {
    user: Spanned<Scalar>,
    env: Option<EnvTable>,
    env_files: Option<Vec<Spanned<String>>>,
    inherit_env: Option<Vec<Spanned<String>>>,
    cwd: Option<Spanned<String>>,
    route_children_to: Option<Spanned<String>>,
    allow: Option<RawAllow>,
    rlimits: Option<BTreeMap<Spanned<String>, Spanned<Scalar>>>,
    timeout: Option<Spanned<Scalar>>,
    on_broker_down: Option<Spanned<String>>,
    shell_env: Option<Spanned<String>>,
    isolation: Option<RawIsolation>,
    memory_max: Option<Spanned<Scalar>>,
    pids_max: Option<Spanned<Scalar>>,
    cpu_max: Option<Spanned<Scalar>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    gids: Vec<u32>,
    #[serde(default)]
    contexts: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIsolation {
    pid: Option<bool>,
    network: Option<Spanned<RawNetwork>>,
    enforce: Option<bool>,
    read_only: Option<Vec<Spanned<String>>>,
    read_write: Option<Vec<Spanned<String>>>,
    no_access: Option<Vec<Spanned<String>>>,
    signals: Option<Spanned<String>>,
    tcp_bind: Option<Vec<Spanned<i64>>>,
    tcp_connect: Option<Vec<Spanned<i64>>>,
}

/// `isolation.network`: `"host"`, `"none"`, or `{ allow = [..], deny = [..] }`. Read by
/// hand rather than as an untagged enum, which would lose the entries' spans.
enum RawNetwork {
    Mode(String),
    Egress {
        allow: Vec<Spanned<String>>,
        deny: Vec<Spanned<String>>,
    },
}

impl<'de> Deserialize<'de> for RawNetwork {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawNetwork;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"host\", \"none\" or a table { allow = [..], deny = [..] }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawNetwork, E> {
                Ok(RawNetwork::Mode(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawNetwork, A::Error> {
                use serde::de::Error;
                let mut allow = None;
                let mut deny = None;
                while let Some(key) = map.next_key::<String>()? {
                    let slot = match key.as_str() {
                        "allow" => &mut allow,
                        "deny" => &mut deny,
                        other => return Err(A::Error::unknown_field(other, &["allow", "deny"])),
                    };
                    if slot.is_some() {
                        return Err(A::Error::duplicate_field("allow or deny"));
                    }
                    *slot = Some(map.next_value::<Vec<Spanned<String>>>()?);
                }
                Ok(RawNetwork::Egress {
                    allow: allow.ok_or_else(|| A::Error::missing_field("allow"))?,
                    deny: deny.unwrap_or_default(),
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

// ---------- Resolution ----------

/// Holds what every error needs (the text for line numbers, the path) and collects
/// warnings while the raw file is resolved.
struct Loader<'a> {
    text: &'a str,
    path: &'a Path,
    /// The kernel's Landlock ABI the warnings are about (0: none).
    landlock_abi: i32,
    warnings: Vec<String>,
}

/// A context's key prefix for errors (`contexts.user`).
struct Scope<'n>(&'n str);

impl Scope<'_> {
    fn key(&self, field: &str) -> String {
        spans::join_key(&["contexts", self.0, field])
    }
    fn indexed(&self, field: &str, index: usize) -> String {
        format!("{}[{index}]", self.key(field))
    }
}

impl fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&spans::join_key(&["contexts", self.0]))
    }
}

impl Loader<'_> {
    fn err(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            at: Some(spans::line_col(self.text, span.start)),
            key: Some(key.into()),
            reason: reason.into(),
        }
    }

    /// A serde or syntax error: only `message()` is used, because the error's own Display
    /// prints the offending source line, which may hold a secret.
    fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span();
        let reason = error
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
            .replace("unknown field `", "unknown key `")
            .replace("missing field `", "missing required key `")
            .replace("expected a map", "expected a table")
            .replace("expected a sequence", "expected a list");
        // Only a file that is valid TOML has keys to name; otherwise say it is syntax.
        let syntax = toml::from_str::<toml::Table>(self.text).is_err();
        ConfigError {
            path: self.path.to_path_buf(),
            at: span.as_ref().map(|s| spans::line_col(self.text, s.start)),
            key: match &span {
                Some(s) if !syntax => spans::key_at(self.text, s),
                _ => None,
            },
            reason: if syntax {
                format!("TOML syntax: {reason}")
            } else {
                reason
            },
        }
    }

    fn resolve(mut self, mut raw: RawFile) -> Result<Config, ConfigError> {
        let owners = raw.broker.as_mut().and_then(|b| b.port_owners.take());
        let mut broker = self.broker(raw.broker)?;
        if raw.contexts.is_empty() {
            return Err(ConfigError {
                path: self.path.to_path_buf(),
                at: None,
                key: Some("contexts".into()),
                reason: "no contexts defined; add at least one [contexts.NAME] table".into(),
            });
        }

        // File order, so the first error reported is the first one a reader meets.
        let mut entries: Vec<_> = raw.contexts.into_iter().collect();
        entries.sort_by_key(|(name, _)| name.span().start);

        for (name, _) in &entries {
            if !is_context_name(name.get_ref()) {
                return Err(self.err(
                    name.span(),
                    spans::join_key(&["contexts", name.get_ref()]),
                    format!(
                        "{:?} is not a valid context name (1 to {MAX_CONTEXT_NAME} of A-Z a-z 0-9 _ . -, not \".\" or \"..\")",
                        name.get_ref()
                    ),
                ));
            }
        }
        let names: Vec<String> = entries.iter().map(|(n, _)| n.get_ref().clone()).collect();

        let mut contexts = BTreeMap::new();
        let mut routes = Vec::new();
        for (name, raw) in entries {
            let name = name.into_inner();
            if let Some(route) = &raw.route_children_to {
                routes.push((name.clone(), route.clone()));
            }
            let context = self.context(&name, raw, &names)?;
            contexts.insert(name, Arc::new(context));
        }
        self.check_route_cycles(&routes)?;
        self.warnings.extend(routes_refused(&routes, &contexts));
        broker.port_owners = self.port_owners(owners, &broker.reserved_ports, &names)?;
        self.warnings.extend(shared_uid_warnings(&contexts));

        Ok(Config {
            path: self.path.to_path_buf(),
            broker,
            contexts,
            warnings: self.warnings,
        })
    }

    fn broker(&self, raw: Option<RawBroker>) -> Result<BrokerSettings, ConfigError> {
        let Some(raw) = raw else {
            return Ok(BrokerSettings {
                socket: DEFAULT_SOCKET.into(),
                socket_mode: DEFAULT_SOCKET_MODE,
                socket_group: None,
                state_dir: DEFAULT_STATE_DIR.into(),
                audit_log: DEFAULT_AUDIT_LOG.into(),
                reserved_ports: Vec::new(),
                port_owners: BTreeMap::new(),
                audit_log_max: None,
                log_level: None,
            });
        };

        let socket = self.abs_path(raw.socket.as_ref(), "broker.socket", DEFAULT_SOCKET)?;
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            if let Some(s) = &raw.socket {
                return Err(self.err(
                    s.span(),
                    "broker.socket",
                    format!(
                        "longer than {MAX_SOCKET_PATH} bytes, the limit for a Unix socket path"
                    ),
                ));
            }
        }

        let socket_mode = match &raw.socket_mode {
            Some(mode) => values::parse_mode(mode.get_ref())
                .map_err(|reason| self.err(mode.span(), "broker.socket_mode", reason))?,
            None => DEFAULT_SOCKET_MODE,
        };

        let socket_group = match &raw.socket_group {
            None => None,
            Some(group) => {
                let name = group.get_ref();
                let fail = |reason: String| self.err(group.span(), "broker.socket_group", reason);
                match Group::from_name(name) {
                    Ok(Some(g)) => Some((name.clone(), g.gid.as_raw())),
                    Ok(None) => {
                        return Err(fail(format!(
                        "no such group {name:?} (create it with groupadd, or remove socket_group)"
                    )))
                    }
                    Err(e) => return Err(fail(format!("cannot look up group {name:?}: {e}"))),
                }
            }
        };

        let state_dir = self.abs_path(
            raw.state_dir.as_ref(),
            "broker.state_dir",
            DEFAULT_STATE_DIR,
        )?;
        let audit_log = self.abs_path(
            raw.audit_log.as_ref(),
            "broker.audit_log",
            DEFAULT_AUDIT_LOG,
        )?;

        let mut reserved_ports: Vec<u16> = Vec::new();
        for (index, port) in raw.reserved_ports.iter().flatten().enumerate() {
            let value = u16::try_from(*port.get_ref()).ok().filter(|p| *p != 0);
            let Some(value) = value else {
                return Err(self.err(
                    port.span(),
                    format!("broker.reserved_ports[{index}]"),
                    format!("{} is not a port (1 to 65535)", port.get_ref()),
                ));
            };
            if !reserved_ports.contains(&value) {
                reserved_ports.push(value);
            }
        }

        let audit_log_max = match &raw.audit_log_max {
            Some(size) => Some(
                values::parse_size(size.get_ref())
                    .map_err(|reason| self.err(size.span(), "broker.audit_log_max", reason))?,
            ),
            None => None,
        };
        let log_level = match &raw.log_level {
            Some(level) => Some(
                values::parse_log_level(level.get_ref())
                    .map_err(|reason| self.err(level.span(), "broker.log_level", reason))?,
            ),
            None => None,
        };

        Ok(BrokerSettings {
            socket,
            socket_mode,
            socket_group,
            state_dir,
            audit_log,
            reserved_ports,
            port_owners: BTreeMap::new(),
            audit_log_max,
            log_level,
        })
    }

    /// `[broker] port_owners = { 8080 = "platform" }`: each key a reserved port, each
    /// value a context.
    fn port_owners(
        &self,
        raw: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
        reserved: &[u16],
        names: &[String],
    ) -> Result<BTreeMap<u16, String>, ConfigError> {
        let mut owners = BTreeMap::new();
        for (port, owner) in raw.unwrap_or_default() {
            let key = format!("broker.port_owners.{}", port.get_ref());
            let Some(number) = port.get_ref().parse::<u16>().ok().filter(|p| *p != 0) else {
                return Err(self.err(
                    port.span(),
                    key,
                    format!("{:?} is not a port (1 to 65535)", port.get_ref()),
                ));
            };
            if !reserved.contains(&number) {
                return Err(self.err(
                    port.span(),
                    key,
                    format!("port {number} is not in reserved_ports; add it there first"),
                ));
            }
            if !names.contains(owner.get_ref()) {
                return Err(self.err(owner.span(), key, no_such_context(owner.get_ref(), names)));
            }
            owners.insert(number, owner.into_inner());
        }
        Ok(owners)
    }

    fn abs_path(
        &self,
        value: Option<&Spanned<String>>,
        key: &str,
        default: &str,
    ) -> Result<PathBuf, ConfigError> {
        let Some(value) = value else {
            return Ok(default.into());
        };
        let path = value.get_ref();
        if !path.starts_with('/') {
            return Err(self.err(
                value.span(),
                key,
                format!("{path:?} is not an absolute path"),
            ));
        }
        if path.contains('\0') {
            return Err(self.err(value.span(), key, "the path contains a NUL byte"));
        }
        Ok(path.into())
    }

    fn context(
        &mut self,
        name: &str,
        raw: RawContext,
        names: &[String],
    ) -> Result<Context, ConfigError> {
        let scope = Scope(name);

        let user = resolve_user(raw.user.get_ref())
            .map_err(|reason| self.err(raw.user.span(), scope.key("user"), reason))?;
        if let Some(note) = &user.1 {
            self.warnings.push(format!("{}: {note}", scope.key("user")));
        }
        let user = user.0;

        let env_files = raw
            .env_files
            .iter()
            .flatten()
            .map(|f| {
                let path = PathBuf::from(f.get_ref());
                std::fs::canonicalize(&path).unwrap_or(path)
            })
            .collect();
        let env = self.env(&scope, user.uid, raw.env_files.as_deref(), raw.env)?;

        let mut inherit_env = Vec::new();
        for (index, pattern) in raw.inherit_env.iter().flatten().enumerate() {
            let p = pattern.get_ref();
            let ok = !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'*' | b'?'));
            if !ok {
                return Err(self.err(
                    pattern.span(),
                    scope.indexed("inherit_env", index),
                    format!("{p:?} is not a variable name or glob (A-Z a-z 0-9 _ and * ?)"),
                ));
            }
            inherit_env.push(p.clone());
        }

        let cwd = match &raw.cwd {
            None => CwdRule::Home,
            Some(cwd) if cwd.get_ref() == "inherit" => CwdRule::Inherit,
            Some(cwd) => {
                let path = cwd.get_ref();
                if !path.starts_with('/') || path.contains('\0') {
                    return Err(self.err(
                        cwd.span(),
                        scope.key("cwd"),
                        format!("{path:?} is neither \"inherit\" nor an absolute path"),
                    ));
                }
                CwdRule::Path(path.into())
            }
        };

        let route_children_to = match &raw.route_children_to {
            None => None,
            Some(route) => {
                let target = route.get_ref();
                let fail =
                    |reason: String| self.err(route.span(), scope.key("route_children_to"), reason);
                if target == name {
                    return Err(fail(format!(
                        "context {name:?} routes its children to itself; leave route_children_to out instead"
                    )));
                }
                if !names.contains(target) {
                    return Err(fail(no_such_context(target, names)));
                }
                Some(target.clone())
            }
        };

        let allow = match raw.allow {
            None => Allow {
                is_default: true,
                ..Allow::default()
            },
            Some(allow) => {
                let mut contexts = Vec::new();
                for (index, c) in allow.contexts.iter().enumerate() {
                    if !names.contains(c.get_ref()) {
                        return Err(self.err(
                            c.span(),
                            format!("{}.contexts[{index}]", scope.key("allow")),
                            no_such_context(c.get_ref(), names),
                        ));
                    }
                    contexts.push(c.get_ref().clone());
                }
                if allow.uids.is_empty() && allow.gids.is_empty() && contexts.is_empty() {
                    self.warnings.push(format!(
                        "{}: empty, so nobody may enter this context (leave allow out for root and the context's own uid)",
                        scope.key("allow")
                    ));
                }
                Allow {
                    uids: allow.uids,
                    gids: allow.gids,
                    contexts,
                    is_default: false,
                }
            }
        };

        let mut rlimits = Vec::new();
        for (key, value) in raw.rlimits.iter().flatten() {
            let field = format!("{}.{}", scope.key("rlimits"), key.get_ref());
            let Some(&(name, resource)) = RLIMITS.iter().find(|(n, _)| n == key.get_ref()) else {
                let known: Vec<&str> = RLIMITS.iter().map(|(n, _)| *n).collect();
                return Err(self.err(
                    key.span(),
                    field,
                    format!("unknown limit; known: {}", known.join(", ")),
                ));
            };
            let limit = match value.get_ref() {
                Scalar::Int(n) => u64::try_from(*n).ok(),
                Scalar::Str(s) if s == "unlimited" => Some(libc::RLIM_INFINITY),
                Scalar::Str(_) => None,
            };
            let Some(limit) = limit else {
                return Err(self.err(
                    value.span(),
                    field,
                    "expected a non-negative integer or \"unlimited\"",
                ));
            };
            rlimits.push(Rlimit {
                name,
                resource,
                value: limit,
            });
        }

        let timeout = match &raw.timeout {
            None => None,
            Some(timeout) => {
                let parsed = match timeout.get_ref() {
                    Scalar::Str(s) => values::parse_duration(s),
                    Scalar::Int(n) if *n > 0 => values::parse_duration(&n.to_string()),
                    Scalar::Int(n) => Err(format!("{n} seconds: a timeout must be more than zero")),
                };
                Some(
                    parsed
                        .map_err(|reason| self.err(timeout.span(), scope.key("timeout"), reason))?,
                )
            }
        };

        let on_broker_down = match &raw.on_broker_down {
            None => BrokerDown::Fail,
            Some(v) => match v.get_ref().as_str() {
                "fail" => BrokerDown::Fail,
                "local" => BrokerDown::Local,
                other => {
                    return Err(self.err(
                        v.span(),
                        scope.key("on_broker_down"),
                        format!("{other:?}: expected \"fail\" or \"local\""),
                    ))
                }
            },
        };

        let shell_env = match &raw.shell_env {
            None => ShellEnv::Private,
            Some(v) => match v.get_ref().as_str() {
                "private" => ShellEnv::Private,
                "shared" => ShellEnv::Shared,
                other => {
                    return Err(self.err(
                        v.span(),
                        scope.key("shell_env"),
                        format!("{other:?}: expected \"private\" or \"shared\""),
                    ))
                }
            },
        };

        let mut untrusted: Vec<String> = Vec::new();
        let isolation = match raw.isolation {
            None => Isolation::default(),
            Some(iso) => {
                let network = match &iso.network {
                    None => Network::Host,
                    Some(v) => match v.get_ref() {
                        RawNetwork::Mode(mode) => match mode.as_str() {
                            "host" => Network::Host,
                            "none" => Network::None,
                            other => {
                                return Err(self.err(
                                    v.span(),
                                    format!("{}.network", scope.key("isolation")),
                                    format!(
                                        "{other:?}: expected \"host\", \"none\" or \
                                         {{ allow = [\"NAME[:PORT]\", ...] }}"
                                    ),
                                ))
                            }
                        },
                        RawNetwork::Egress { allow, deny } => {
                            let key = format!("{}.network", scope.key("isolation"));
                            Network::Egress(Arc::new(egress::rule::Rule {
                                allow: self.egress_list(&key, "allow", allow)?,
                                deny: self.egress_list(&key, "deny", deny)?,
                            }))
                        }
                    },
                };
                let signals = match &iso.signals {
                    None => Signals::Any,
                    Some(v) => match v.get_ref().as_str() {
                        "any" => Signals::Any,
                        "scoped" => Signals::Scoped,
                        other => {
                            return Err(self.err(
                                v.span(),
                                format!("{}.signals", scope.key("isolation")),
                                format!("{other:?}: expected \"any\" or \"scoped\""),
                            ))
                        }
                    },
                };
                let mut paths = |field: &str, list: &Option<Vec<Spanned<String>>>| {
                    let mut out = Vec::new();
                    for (index, p) in list.iter().flatten().enumerate() {
                        let key = format!("{}.{field}[{index}]", scope.key("isolation"));
                        if !p.get_ref().starts_with('/') || p.get_ref().contains('\0') {
                            return Err(self.err(
                                p.span(),
                                key,
                                format!("{:?} is not an absolute path", p.get_ref()),
                            ));
                        }
                        if Path::new(p.get_ref())
                            .components()
                            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
                        {
                            return Err(self.err(
                                p.span(),
                                key,
                                format!(
                                    "{:?} has a `.` or `..` component: write the path itself",
                                    p.get_ref()
                                ),
                            ));
                        }
                        // Resolved now, the operator's moment, through links only root can
                        // change (as env files are): the broker follows no link in these
                        // paths when it builds the rules later, so a link someone else
                        // placed grants nothing (a denied one denies the link).
                        // A path that does not exist yet is resolved as far as it does
                        // (`/var/run/x` is `/run/x`), the rest appended.
                        let path = PathBuf::from(p.get_ref());
                        let mut existing = path.clone();
                        let mut tail = Vec::new();
                        while existing.symlink_metadata().is_err() {
                            match (existing.file_name(), existing.parent()) {
                                (Some(name), Some(parent)) => {
                                    tail.push(name.to_owned());
                                    existing = parent.to_path_buf();
                                }
                                _ => break,
                            }
                        }
                        let path = match secret_file::resolve_trusted_links(&existing) {
                            Ok(resolved) => tail.iter().rev().fold(resolved, |p, n| p.join(n)),
                            Err(why) => {
                                untrusted.push(format!("{key}: {}: {why}", path.display()));
                                path
                            }
                        };
                        out.push(path);
                    }
                    Ok(out)
                };
                let ports = |field: &str, list: &Option<Vec<Spanned<i64>>>| {
                    let Some(list) = list else {
                        return Ok(None);
                    };
                    let mut out: Vec<u16> = Vec::new();
                    for (index, p) in list.iter().enumerate() {
                        let Some(port) = u16::try_from(*p.get_ref()).ok() else {
                            return Err(self.err(
                                p.span(),
                                format!("{}.{field}[{index}]", scope.key("isolation")),
                                format!("{} is not a port (0 to 65535)", p.get_ref()),
                            ));
                        };
                        if !out.contains(&port) {
                            out.push(port);
                        }
                    }
                    Ok(Some(out))
                };
                Isolation {
                    pid: iso.pid.unwrap_or(false),
                    network,
                    enforce: iso.enforce.unwrap_or(false),
                    read_only: paths("read_only", &iso.read_only)?,
                    read_write: paths("read_write", &iso.read_write)?,
                    no_access: paths("no_access", &iso.no_access)?,
                    signals,
                    tcp_bind: ports("tcp_bind", &iso.tcp_bind)?,
                    tcp_connect: ports("tcp_connect", &iso.tcp_connect)?,
                }
            }
        };
        self.warnings.extend(untrusted.into_iter().map(|w| {
            format!("{w}: it grants nothing (a denied path denies the link itself); name the path it leads to")
        }));
        self.warnings.extend(landlock::load_warnings(
            &scope.key("isolation"),
            &isolation,
            raw.route_children_to.is_some(),
            self.landlock_abi,
        ));
        for (index, path) in isolation.no_access.iter().enumerate() {
            if let Some((dir, owner)) = secret_file::changeable_on_the_way(path) {
                self.warnings.push(format!(
                    "{}.no_access[{index}]: {} lies in {}, where uid {owner} (or others) can \
                     rename it and so expose it to this context; keep no_access paths in \
                     directories only root can change",
                    scope.key("isolation"),
                    path.display(),
                    dir.display()
                ));
            }
            if !path.exists() {
                self.warnings.push(format!(
                    "{}.no_access[{index}]: {} does not exist: nothing to hide now; launches \
                     that start after it appears are kept out of it, launches already running \
                     then are not",
                    scope.key("isolation"),
                    path.display()
                ));
            }
        }

        let memory_max = match &raw.memory_max {
            None => None,
            Some(v) => {
                let bytes = values::parse_bytes(v.get_ref())
                    .map_err(|reason| self.err(v.span(), scope.key("memory_max"), reason))?;
                if bytes < 1 << 20 {
                    return Err(self.err(
                        v.span(),
                        scope.key("memory_max"),
                        format!(
                            "{bytes} bytes is too little to start a program; use at least \"1M\""
                        ),
                    ));
                }
                Some(bytes)
            }
        };
        let pids_max = match &raw.pids_max {
            None => None,
            Some(v) => match v.get_ref() {
                Scalar::Int(n) if *n >= 1 => Some(*n as u64),
                _ => {
                    return Err(self.err(
                        v.span(),
                        scope.key("pids_max"),
                        "expected a number of processes, at least 1",
                    ))
                }
            },
        };
        let cpu_max = match &raw.cpu_max {
            None => None,
            Some(v) => Some(
                values::parse_cpu(v.get_ref())
                    .map_err(|reason| self.err(v.span(), scope.key("cpu_max"), reason))?,
            ),
        };
        let cgroup = CgroupLimits {
            memory_max,
            pids_max,
            cpu_max,
        };

        Ok(Context {
            name: name.to_string(),
            user,
            env,
            env_files,
            inherit_env,
            cwd,
            route_children_to,
            allow,
            rlimits,
            timeout,
            on_broker_down,
            shell_env,
            isolation,
            cgroup,
        })
    }

    /// The entries of an egress `allow` or `deny` list (`key`: `contexts.NAME.isolation.network`).
    fn egress_list(
        &self,
        key: &str,
        field: &str,
        list: &[Spanned<String>],
    ) -> Result<Vec<egress::rule::Pattern>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(index, entry)| {
                egress::rule::Pattern::parse(entry.get_ref()).map_err(|reason| {
                    self.err(entry.span(), format!("{key}.{field}[{index}]"), reason)
                })
            })
            .collect()
    }

    /// `env_files` in order, then inline `env` (inline wins), then `PATH` if still unset.
    fn env(
        &mut self,
        scope: &Scope,
        uid: u32,
        files: Option<&[Spanned<String>]>,
        inline: Option<EnvTable>,
    ) -> Result<Vec<(String, String)>, ConfigError> {
        let mut env: Vec<(String, String)> = Vec::new();
        let set = |env: &mut Vec<(String, String)>, key: String, value: String| match env
            .iter_mut()
            .find(|(k, _)| *k == key)
        {
            Some(slot) => slot.1 = value,
            None => env.push((key, value)),
        };

        for (index, entry) in files.unwrap_or_default().iter().enumerate() {
            let key = scope.indexed("env_files", index);
            let file = entry.get_ref();
            let fail = |reason: String| self.err(entry.span(), key.clone(), reason);
            if !file.starts_with('/') || file.contains('\0') {
                return Err(fail(format!("{file:?} is not an absolute path")));
            }
            let (bytes, notes) = secret_file::read(Path::new(file), uid)
                .map_err(|e| fail(format!("{file}: {e}")))?;
            let text =
                String::from_utf8(bytes).map_err(|_| fail(format!("{file} is not UTF-8 text")))?;
            let vars = envfile::parse(&text)
                .map_err(|e| fail(format!("{file}:{}: {}", e.line, e.reason)))?;
            self.warnings.extend(
                notes
                    .into_iter()
                    .map(|note| format!("{key}: {file} {note}")),
            );
            for (k, v) in vars {
                set(&mut env, k, v);
            }
        }

        for (key, value) in inline.map(|t| t.0).unwrap_or_default() {
            let field = format!("{}.{}", scope.key("env"), key.get_ref());
            if !is_env_name(key.get_ref()) {
                return Err(self.err(
                    key.span(),
                    field,
                    "not a variable name (letters, digits and _, not starting with a digit)",
                ));
            }
            if value.get_ref().0.contains('\0') {
                return Err(self.err(value.span(), field, "the value contains a NUL byte"));
            }
            set(&mut env, key.into_inner(), value.into_inner().0);
        }
        Ok(env)
    }

    /// Each context routes to at most one other, so following the chain from every
    /// context finds every cycle.
    fn check_route_cycles(&self, routes: &[(String, Spanned<String>)]) -> Result<(), ConfigError> {
        let next = |name: &str| routes.iter().find(|(from, _)| from == name);
        for (start, _) in routes {
            let mut chain: Vec<&str> = vec![start];
            let mut current: &str = start;
            while let Some((_, to)) = next(current) {
                let to = to.get_ref().as_str();
                if let Some(pos) = chain.iter().position(|c| *c == to) {
                    let mut cycle = chain[pos..].to_vec();
                    cycle.push(to);
                    let head = cycle[0];
                    let span = next(head).map(|(_, s)| s.span()).unwrap_or(0..0);
                    return Err(self.err(
                        span,
                        Scope(head).key("route_children_to"),
                        format!("route_children_to forms a cycle: {}", cycle.join(" -> ")),
                    ));
                }
                chain.push(to);
                current = to;
            }
        }
        Ok(())
    }
}

fn no_such_context(name: &str, names: &[String]) -> String {
    format!("no context named {name:?} (defined: {})", names.join(", "))
}

// ---------- Accounts ----------

/// Resolves `user` (`"agent"`, `"1000"`, `"1000:1000"`, or an integer). Returns the user and
/// an optional note for the warnings.
fn resolve_user(spec: &Scalar) -> Result<(User, Option<String>), String> {
    let spec = match spec {
        Scalar::Str(s) => s.clone(),
        Scalar::Int(n) if *n >= 0 => n.to_string(),
        Scalar::Int(n) => return Err(format!("{n} is not a uid")),
    };
    let (uid_part, gid_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec.as_str(), None),
    };
    if uid_part.is_empty() {
        return Err("empty; expected a login name, a numeric uid, or \"uid:gid\"".into());
    }
    let gid = gid_part
        .map(|g| parse_id(g).map_err(|e| format!("{spec:?}: the gid {e}")))
        .transpose()?;

    let numeric = uid_part.bytes().all(|b| b.is_ascii_digit());
    let entry = if numeric {
        let uid = parse_id(uid_part).map_err(|e| format!("{spec:?}: the uid {e}"))?;
        match nix::unistd::User::from_uid(Uid::from_raw(uid)) {
            Ok(entry) => entry,
            Err(e) => return Err(format!("cannot look up uid {uid}: {e}")),
        }
        .ok_or(uid)
    } else {
        if gid_part.is_some() {
            return Err(format!(
                "{spec:?}: with a gid, give the uid as a number (\"1000:1000\"), or give just the login name"
            ));
        }
        match nix::unistd::User::from_name(uid_part) {
            Ok(Some(entry)) => Ok(entry),
            Ok(None) => {
                return Err(format!(
                    "no such user {uid_part:?} (create the account or use a numeric uid)"
                ))
            }
            Err(e) => return Err(format!("cannot look up user {uid_part:?}: {e}")),
        }
    };

    match entry {
        Ok(entry) => {
            let gid = gid.unwrap_or(entry.gid.as_raw());
            let (groups, note) = match CString::new(entry.name.clone())
                .ok()
                .and_then(|n| nix::unistd::getgrouplist(&n, Gid::from_raw(gid)).ok())
            {
                Some(list) => (list.into_iter().map(Gid::as_raw).collect(), None),
                None => (
                    Vec::new(),
                    Some(format!(
                        "cannot list the supplementary groups of {:?}; it runs with group {gid} only",
                        entry.name
                    )),
                ),
            };
            Ok((
                User {
                    spec,
                    name: entry.name,
                    uid: entry.uid.as_raw(),
                    gid,
                    home: entry.dir,
                    shell: entry.shell,
                    groups: with_primary(groups, gid),
                },
                note,
            ))
        }
        // A uid with no passwd entry is allowed (containers often run such ids); it gets
        // a minimal identity instead of one read from the system.
        Err(uid) => {
            let gid = gid.unwrap_or(uid);
            Ok((
                User {
                    name: uid.to_string(),
                    spec,
                    uid,
                    gid,
                    home: PathBuf::from("/"),
                    shell: PathBuf::from("/bin/sh"),
                    groups: vec![gid],
                },
                None,
            ))
        }
    }
}

/// `(uid_t)-1` means "leave unchanged" to setuid/setgid, so it cannot name an account.
fn parse_id(text: &str) -> Result<u32, String> {
    let number = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    match text.parse::<u32>() {
        Ok(u32::MAX) => Err(format!(
            "{text:?} is not usable (4294967295 means \"no change\" to the kernel)"
        )),
        Ok(id) if number => Ok(id),
        _ => Err(format!("{text:?} is not a number from 0 to 4294967294")),
    }
}

fn with_primary(mut groups: Vec<u32>, gid: u32) -> Vec<u32> {
    if !groups.contains(&gid) {
        groups.insert(0, gid);
    }
    let mut seen = Vec::with_capacity(groups.len());
    groups.retain(|g| {
        let new = !seen.contains(g);
        seen.push(*g);
        new
    });
    groups
}

// ---------- Tests ----------

#[cfg(test)]
mod tests;
