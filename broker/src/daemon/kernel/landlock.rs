//! Landlock rulesets per context: filesystem rules (`read_only`, `read_write`,
//! `no_access`) and signal scoping (`signals = "scoped"`).
//!
//! Building a ruleset allocates and opens one `O_PATH` descriptor per rule, which the spawn
//! child may not do; so the broker builds each context's ruleset once (at the first launch
//! after start or reload), keeps its descriptor, and the child only calls
//! `landlock_restrict_self(fd)`. One ruleset fd serves any number of launches; each launch
//! becomes its own Landlock domain.
//!
//! Landlock only grants: it cannot take a right back beneath a granted directory. So a
//! `no_access` path beneath a granted tree is carved out: the granted directory and each
//! directory on the way down keep only `READ_DIR` (their entries can be listed), and every
//! other entry along the way gets the full grant. Entries created later directly in those
//! directories are not covered (they get only `READ_DIR`); a reload rebuilds the rules.
//! A `no_access` path that does not exist yet hides nothing; the ruleset is rebuilt when
//! it appears, so launches that start after that are kept out (ones already running, in
//! their own Landlock domain, are not: the loader warns about such a path).
//!
//! With filesystem rules in force, the broker's config file, audit log and state dir are
//! carved out too (except the context's own shell-session directory), unless a rule names
//! them exactly. The broker's socket stays reachable: connecting to a Unix socket is not
//! a Landlock right before ABI 9, and the broker authenticates every peer anyway.

pub mod probe;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};

pub use probe::{abi, load_warnings};
use probe::{no_truncate, NO_LANDLOCK, NO_TRUNCATE_ITEM};

use crate::config::{Context, Signals};

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("context {context:?}: cannot build its Landlock ruleset: {source}")]
    Build {
        context: String,
        #[source]
        source: landlock::RulesetError,
    },
}

/// Paths the broker protects from every context with filesystem rules.
#[derive(Debug, Clone)]
pub struct Protected {
    pub config: PathBuf,
    pub audit_log: PathBuf,
    pub state_dir: PathBuf,
    /// The egress proxy's port in the context's namespace: `tcp_connect` must not cut
    /// the context off from its own proxy.
    pub egress_port: Option<u16>,
    /// The `/proc` the context's PID namespace mounts, as the broker reaches it
    /// (`/proc/<holder>/root/proc`): a rule on the host's `/proc` does not cover a procfs
    /// mounted over it, so it gets the rights the grants give `/proc`.
    pub own_proc: Option<PathBuf>,
}

/// The built rulesets, by context; a reload's new `Context` makes a new one.
#[derive(Default)]
pub struct Rulesets {
    cache: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    /// The `Arc<Context>` it was built for (a reload makes new ones).
    context: usize,
    /// Whether the context's shell-session directory existed then (`ctx sh` creates it
    /// later: the ruleset is rebuilt once it exists, to grant it).
    sessions: bool,
    /// Which of its `no_access` paths existed then: a path that appears later is carved
    /// out by a rebuilt ruleset, so the launches that start after it cannot reach it.
    hidden: Vec<bool>,
    /// The proxy port granted to `tcp_connect` (a new listener gets a new port).
    egress_port: Option<u16>,
    /// The namespace's `/proc` granted (a new holder mounts a new one).
    own_proc: Option<PathBuf>,
    fd: Arc<OwnedFd>,
}

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// Devices every program expects to open read-write; granted whenever filesystem rules
/// are in force.
const DEVICES: [&str; 9] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/pts",
    "/dev/ptmx",
    "/dev/shm",
];

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl Rulesets {
    /// The ruleset fd a launch into `ctx` restricts itself with, or `None` when the context
    /// asks for nothing this kernel can enforce (the load-time warning says so).
    pub fn for_context(
        &self,
        ctx: &Arc<Context>,
        protected: &Protected,
    ) -> Result<Option<Arc<OwnedFd>>, LandlockError> {
        let key = Arc::as_ptr(ctx) as usize;
        let sessions = protected.sessions_of(ctx).exists();
        let hidden: Vec<bool> = ctx.isolation.no_access.iter().map(|p| p.exists()).collect();
        if let Some(c) = self.lock().get(&ctx.name) {
            let same_port = c.egress_port == protected.egress_port;
            let same_proc = c.own_proc == protected.own_proc;
            if c.context == key
                && c.sessions == sessions
                && c.hidden == hidden
                && same_port
                && same_proc
            {
                return Ok(Some(c.fd.clone()));
            }
        }
        let Some(fd) = build(ctx, protected)? else {
            return Ok(None);
        };
        let fd = Arc::new(fd);
        let cached = Cached {
            context: key,
            sessions,
            hidden,
            egress_port: protected.egress_port,
            own_proc: protected.own_proc.clone(),
            fd: fd.clone(),
        };
        self.lock().insert(ctx.name.clone(), cached);
        Ok(Some(fd))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Protected {
    /// Where `ctx sh` keeps the context's sessions (see `shell_state.rs`).
    fn sessions_of(&self, ctx: &Context) -> PathBuf {
        self.state_dir.join("shells").join(&ctx.name)
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// ELF interpreters a dynamic program (the shim included) needs to be executable.
pub(crate) const LOADERS: [&str; 5] = [
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/ld-linux-aarch64.so.1",
    "/lib/ld-linux.so.2",
    "/lib/ld-musl-x86_64.so.1",
    "/lib/ld-musl-aarch64.so.1",
];

/// `enforce = true`: a ruleset that handles only `EXECUTE` and grants it on `programs`
/// (the shim, the launch's own program and its script interpreter) and the ELF loaders.
/// It is stacked on the context's other ruleset (Landlock layers intersect), and built per
/// launch because the program differs: a handful of syscalls.
///
/// Every launch the interposer routes execs the shim, so it keeps working; a raw `execve`
/// of anything else (a static binary, a Go program, a cleared `LD_PRELOAD`) gets `EACCES`.
/// The loader itself must stay executable, so Landlock alone lets a raw
/// `execve("/lib64/ld-linux-x86-64.so.2", [.., PROGRAM])` run PROGRAM: the exec guard
/// (`supervisor`) refuses the loader by name and audits every refusal.
pub fn exec_only(programs: &[PathBuf]) -> Result<Option<OwnedFd>, landlock::RulesetError> {
    if abi() < 1 {
        return Ok(None);
    }
    let mut created = Ruleset::default()
        .handle_access(AccessFs::Execute)?
        .create()?;
    let files = programs
        .iter()
        .map(PathBuf::as_path)
        .chain(LOADERS.iter().map(Path::new));
    for path in files {
        let Ok(fd) = PathFd::new(path) else { continue };
        created = created.add_rule(PathBeneath::new(fd, AccessFs::Execute))?;
    }
    Ok(Option::<OwnedFd>::from(created))
}

/// Bytes of a file the kernel reads to find its `#!` line (`BINPRM_BUF_SIZE`).
const BINPRM_BUF: usize = 256;

/// The interpreter a `#!` script names, if `path` is one.
pub fn script_interpreter(path: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut head = [0u8; BINPRM_BUF];
    // The context chose the path: never a FIFO's or a device's open() as root.
    let mut file = crate::daemon::untrusted_path::open_regular(path).ok()?;
    let n = crate::daemon::registry::fill(&mut file, &mut head)?;
    let name = shebang_interpreter(&head[..n])?;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(name)))
}

/// The interpreter of a `#!` line, read exactly as the kernel reads it
/// (`fs/binfmt_script.c`): the name runs from the first byte after `#!` that is not a
/// space or a tab to the next space, tab, NUL or newline; without a newline in the first
/// [`BINPRM_BUF`] bytes the name must end before them. Only spaces and tabs separate: a
/// form feed or any other whitespace is part of the name, as it is for the kernel, so the
/// file the rules allow is the one the kernel will run.
fn shebang_interpreter(head: &[u8]) -> Option<&[u8]> {
    let spacetab = |b: u8| b == b' ' || b == b'\t';
    let terminator = |b: u8| spacetab(b) || b == 0;
    let head = &head[..head.len().min(BINPRM_BUF)];
    let line = head.strip_prefix(b"#!")?;
    let line = match line.iter().position(|&b| b == b'\n') {
        Some(end) => &line[..end],
        None => {
            // The whole buffer, short of its last byte, where a name that ends in it was
            // not cut short (the kernel refuses a truncated interpreter path).
            let line = &line[..line.len().min(BINPRM_BUF - 3)];
            let start = line.iter().position(|&b| !spacetab(b))?;
            // A file shorter than the buffer is followed there by NULs, which end it.
            if head.len() == BINPRM_BUF {
                line[start..].iter().position(|&b| terminator(b))?;
            }
            line
        }
    };
    let start = line.iter().position(|&b| !spacetab(b))?;
    let name = &line[start..];
    let end = name
        .iter()
        .position(|&b| terminator(b))
        .unwrap_or(name.len());
    (end > 0).then_some(&name[..end])
}

/// What of the context's Landlock isolation this kernel enforces, for `ctx status`.
pub fn in_force(ctx: &Context) -> Vec<&'static str> {
    in_force_at(ctx, abi())
}

/// [`in_force`] on a kernel with Landlock ABI `abi`.
pub fn in_force_at(ctx: &Context, abi: i32) -> Vec<&'static str> {
    let mut out = Vec::new();
    if ctx.isolation.has_fs_rules() && abi >= 1 {
        out.push("filesystem rules");
    }
    if ctx.isolation.signals == Signals::Scoped && abi >= 6 {
        out.push("signals scoped");
    }
    if ctx.isolation.enforce && ctx.route_children_to.is_some() && abi >= 1 {
        out.push("routing enforced (exec only through the shim)");
    }
    if ctx.isolation.tcp_bind.is_some() && abi >= 4 {
        out.push("TCP bind limited to tcp_bind");
    }
    if ctx.isolation.tcp_connect.is_some() && abi >= 4 {
        out.push("TCP connect limited to tcp_connect");
    }
    out
}

/// What of the context's Landlock isolation this kernel (or the config) leaves out, each
/// with the reason, for `ctx status`; the loader warned about each at load.
pub fn not_in_force(ctx: &Context) -> Vec<(String, String)> {
    not_in_force_at(ctx, abi())
}

/// [`not_in_force`] on a kernel with Landlock ABI `abi`.
pub fn not_in_force_at(ctx: &Context, abi: i32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if ctx.isolation.has_fs_rules() && abi < 1 {
        out.push((
            "read_only/read_write/no_access".to_string(),
            NO_LANDLOCK.to_string(),
        ));
    } else if ctx.isolation.has_fs_rules() && abi < 3 {
        out.push((NO_TRUNCATE_ITEM.to_string(), no_truncate(abi)));
    }
    if ctx.isolation.has_tcp_rules() && abi < 4 {
        out.push((
            "tcp_bind/tcp_connect".to_string(),
            format!("they need Landlock ABI 4 (Linux 6.7), this kernel has {abi}"),
        ));
    }
    if ctx.isolation.signals == Signals::Scoped && abi < 6 {
        out.push((
            "signals = \"scoped\"".to_string(),
            format!("it needs Landlock ABI 6 (Linux 6.12), this kernel has {abi}"),
        ));
    }
    if ctx.isolation.enforce && ctx.route_children_to.is_none() {
        out.push((
            "enforce = true".to_string(),
            "the context does not route its launches (set route_children_to)".to_string(),
        ));
    } else if ctx.isolation.enforce && abi < 1 {
        out.push(("enforce = true".to_string(), NO_LANDLOCK.to_string()));
    }
    out
}

fn build(ctx: &Context, protected: &Protected) -> Result<Option<OwnedFd>, LandlockError> {
    let abi_version = abi();
    let fs = ctx.isolation.has_fs_rules() && abi_version >= 1;
    let signals = ctx.isolation.signals == Signals::Scoped && abi_version >= 6;
    let (bind, connect) = if abi_version >= 4 {
        (
            ctx.isolation.tcp_bind.as_deref(),
            ctx.isolation.tcp_connect.as_deref(),
        )
    } else {
        (None, None)
    };
    if !fs && !signals && bind.is_none() && connect.is_none() {
        return Ok(None);
    }
    let err = |source: landlock::RulesetError| LandlockError::Build {
        context: ctx.name.clone(),
        source,
    };
    let abi = ABI::from(abi_version);
    let mut ruleset = Ruleset::default();
    if fs {
        ruleset = ruleset
            .handle_access(AccessFs::from_all(abi))
            .map_err(err)?;
    }
    if signals {
        ruleset = ruleset.scope(Scope::Signal).map_err(err)?;
    }
    // A handled right with no rule is denied for every port: `tcp_bind = []` forbids
    // binding any TCP port, an absent key leaves binding alone.
    if bind.is_some() {
        ruleset = ruleset.handle_access(AccessNet::BindTcp).map_err(err)?;
    }
    if connect.is_some() {
        ruleset = ruleset.handle_access(AccessNet::ConnectTcp).map_err(err)?;
    }
    let mut created = ruleset.create().map_err(err)?;
    for (ports, access) in [(bind, AccessNet::BindTcp), (connect, AccessNet::ConnectTcp)] {
        for &port in ports.unwrap_or(&[]) {
            created = created.add_rule(NetPort::new(port, access)).map_err(err)?;
        }
    }
    if let (Some(_), Some(port)) = (connect, protected.egress_port) {
        created = created
            .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
            .map_err(err)?;
    }
    if fs {
        for (path, access) in fs_rules(ctx, protected, abi) {
            // A path that does not exist (yet) grants nothing; skip it.
            let Ok(fd) = PathFd::new(&path) else { continue };
            // Reached through the holder's root, a magic link: granted only if what was
            // opened is a procfs, whatever that path led to.
            if protected.own_proc.as_ref() == Some(&path) && !is_procfs(&fd) {
                continue;
            }
            let access = if path.is_dir() {
                access
            } else {
                access & AccessFs::from_file(abi)
            };
            if access.is_empty() {
                continue;
            }
            created = created
                .add_rule(PathBeneath::new(fd, access))
                .map_err(err)?;
        }
    }
    Ok(Option::<OwnedFd>::from(created))
}

/// The `(path, rights)` rules of a context, with `no_access` and the protected paths carved
/// out of every grant.
fn fs_rules(ctx: &Context, protected: &Protected, abi: ABI) -> Vec<(PathBuf, BitFlags<AccessFs>)> {
    let iso = &ctx.isolation;
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let mut grants: Vec<(PathBuf, BitFlags<AccessFs>)> = Vec::new();
    if iso.read_only.is_empty() && iso.read_write.is_empty() {
        // Only `no_access`: everything else stays as it was.
        grants.push(("/".into(), all));
    }
    grants.extend(iso.read_only.iter().map(|p| (p.clone(), read)));
    grants.extend(iso.read_write.iter().map(|p| (p.clone(), all)));
    grants.extend(DEVICES.iter().map(|d| (PathBuf::from(d), all)));
    let proc_access = grants
        .iter()
        .filter(|(g, _)| Path::new("/proc").starts_with(g))
        .fold(BitFlags::<AccessFs>::empty(), |a, (_, x)| a | *x);
    // The context's own shell sessions live under the state dir.
    let own_sessions = protected.sessions_of(ctx);
    grants.push((own_sessions.clone(), all));

    let named = |p: &Path| iso.read_only.iter().chain(&iso.read_write).any(|g| g == p);
    let mut denied: Vec<PathBuf> = iso.no_access.clone();
    // SAFETY: geteuid cannot fail.
    if ctx.user.uid == unsafe { libc::geteuid() } {
        // Root's devices are root's files, which a context of root's uid may open by their
        // names: a raw disk gives every file, a console the keys typed at it.
        denied.extend(roots_devices());
    }
    for p in [
        &protected.config,
        &protected.audit_log,
        &protected.state_dir,
    ] {
        if !named(p) {
            denied.push(p.clone());
        }
    }
    // Canonical forms, so that a rule reached through a symlink still compares.
    let denied: Vec<PathBuf> = denied
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    let own_sessions = std::fs::canonicalize(&own_sessions).unwrap_or(own_sessions);

    let mut rules = Vec::new();
    for (path, access) in grants {
        let Ok(path) = std::fs::canonicalize(&path) else {
            continue;
        };
        if path == own_sessions {
            rules.push((path, access));
            continue;
        }
        if denied.iter().any(|d| path.starts_with(d)) {
            continue;
        }
        let inside: Vec<&PathBuf> = denied.iter().filter(|d| d.starts_with(&path)).collect();
        carve(&path, access, &inside, &own_sessions, &mut rules);
    }
    if let Some(own) = protected
        .own_proc
        .as_ref()
        .filter(|_| !proc_access.is_empty())
    {
        // Not canonicalised: that would name the host's /proc again.
        rules.push((own.clone(), proc_access));
    }
    rules
}

/// Whether `fd` is on a procfs (checked on the open descriptor, not its path).
fn is_procfs(fd: &PathFd) -> bool {
    use std::os::fd::AsFd;
    use std::os::fd::AsRawFd;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs on our own descriptor into our own buffer.
    let ok = unsafe { libc::fstatfs(fd.as_fd().as_raw_fd(), st.as_mut_ptr()) } == 0;
    // SAFETY: filled by the successful call above.
    ok && unsafe { st.assume_init() }.f_type == libc::PROC_SUPER_MAGIC
}

/// Root's devices, by name: every entry of `/dev` but the common ones of [`DEVICES`], so
/// the consoles and virtual terminals (the keys typed at them), raw disks (every file, the
/// protected ones too), `/dev/kmsg`, `/dev/kvm`... Not `/dev/pts`: a launch reopens its
/// own terminal there by name (`> /dev/stderr`, `ttyname`) and makes new ones (`script`,
/// `openpty`), which Landlock cannot tell from root's (README, Known limits). Symbolic
/// links (`/dev/stdin`, `/dev/fd`) are left: what they lead to is checked where it is.
/// Only names are read (`d_type`, no entry opened or followed), and a name found only
/// takes rights away from the context: an entry someone planted in `/dev` can neither
/// open anything as root nor widen what the context may reach.
fn roots_devices() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/dev") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_symlink()))
        .map(|e| e.path())
        .filter(|p| !DEVICES.iter().any(|d| p == Path::new(d)))
        .collect()
}

/// Grants `access` beneath `dir` except beneath the `denied` paths (all beneath `dir`).
fn carve(
    dir: &Path,
    access: BitFlags<AccessFs>,
    denied: &[&PathBuf],
    keep: &Path,
    rules: &mut Vec<(PathBuf, BitFlags<AccessFs>)>,
) {
    if denied.is_empty() {
        rules.push((dir.to_path_buf(), access));
        return;
    }
    // The directory itself: listing only, because any other right would reach the denied
    // paths beneath it too.
    rules.push((dir.to_path_buf(), access & AccessFs::ReadDir));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // A symlink is governed by the rules of what it points to; following it here could
        // grant a denied target.
        if entry.file_type().map(|t| t.is_symlink()).unwrap_or(true) {
            continue;
        }
        if path == keep {
            continue; // granted on its own
        }
        if denied.iter().any(|d| **d == path) {
            continue;
        }
        let below: Vec<&PathBuf> = denied
            .iter()
            .copied()
            .filter(|d| d.starts_with(&path))
            .collect();
        carve(&path, access, &below, keep, rules);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interpreter_is_read_as_the_kernel_reads_it() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"#!/bin/sh\necho", Some(b"/bin/sh")),
            (b"#! /usr/bin/env python3\n", Some(b"/usr/bin/env")),
            (b"#!\t/bin/bash -e\n", Some(b"/bin/bash")),
            (b"#!/bin/sh\r\n", Some(b"/bin/sh\r")),
            // Only space and tab separate: a form feed is part of the name, so a rule for
            // the directory before it is never made (a review's finding).
            (b"#!/dir/\x0csh\n", Some(b"/dir/\x0csh")),
            (b"#!/dir/\xc2\xa0sh\n", Some(b"/dir/\xc2\xa0sh")),
            (b"#!/opt/\xff\xfe/run arg\n", Some(b"/opt/\xff\xfe/run")),
            (b"#!/bin/sh\0ignored\n", Some(b"/bin/sh")),
            (b"#!/bin/sh", Some(b"/bin/sh")),
            (b"#!\n", None),
            (b"#!   \t\n", None),
            (b"#/bin/sh\n", None),
            (b"\x7fELF", None),
        ];
        for (head, want) in cases {
            assert_eq!(
                shebang_interpreter(head),
                *want,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        // No newline in the first 256 bytes: a name that runs to their end is cut short,
        // which the kernel refuses; one that ends within them stands.
        let mut long = b"#!/".to_vec();
        long.resize(BINPRM_BUF, b'a');
        assert_eq!(shebang_interpreter(&long), None);
        let mut ended = b"#!/bin/sh ".to_vec();
        ended.resize(BINPRM_BUF, b'a');
        assert_eq!(shebang_interpreter(&ended), Some(&b"/bin/sh"[..]));
    }

    fn context(isolation: &str) -> Context {
        let text = format!("[contexts.a]\nuser = \"root\"\nisolation = {isolation}\n");
        let config = crate::config::load_str(&text, Path::new("/t.toml"), abi()).expect("config");
        config.contexts["a"].as_ref().clone()
    }

    #[test]
    fn status_follows_the_kernels_abi() {
        let ctx = context("{ no_access = [\"/srv/x\"], signals = \"scoped\" }");
        let missing = |abi| -> Vec<String> {
            not_in_force_at(&ctx, abi)
                .into_iter()
                .map(|(o, _)| o)
                .collect()
        };
        assert_eq!(
            missing(0),
            ["read_only/read_write/no_access", "signals = \"scoped\""]
        );
        assert!(in_force_at(&ctx, 0).is_empty());
        assert_eq!(
            missing(2),
            [
                "truncate protection of read_only/no_access",
                "signals = \"scoped\""
            ]
        );
        assert_eq!(in_force_at(&ctx, 2), ["filesystem rules"]);
        assert_eq!(missing(3), ["signals = \"scoped\""]);
        assert!(missing(6).is_empty());
        assert_eq!(in_force_at(&ctx, 6), ["filesystem rules", "signals scoped"]);
    }
}
