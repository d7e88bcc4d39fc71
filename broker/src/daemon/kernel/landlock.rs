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
//! With filesystem rules in force, the broker's config file, audit log (and its rotated
//! generation), state dir and every context's `env_files` are carved out too (except the
//! context's own shell-session directory), unless a rule names them exactly. The broker's
//! socket stays reachable: connecting to a Unix socket is not a Landlock right before
//! ABI 9, and the broker authenticates every peer anyway.

pub mod probe;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, NetPort, PathBeneath, Ruleset, RulesetAttr,
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
    #[error(
        "context {context:?}: {path} changed while its Landlock rules were built ({source}); \
         try again"
    )]
    Changed {
        context: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("context {context:?}: cannot build its Landlock rules: {what}: {source}")]
    Io {
        context: String,
        what: String,
        #[source]
        source: std::io::Error,
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
    /// One build at a time per context.
    gates: Mutex<HashMap<String, Arc<Mutex<()>>>>,
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

/// Entries of one directory on the way to a denied path that a ruleset makes rules for
/// (one each): every launch's Landlock domain holds them in kernel memory (500,000 took
/// 35 MB a launch and 2.6 s to build; found by the thirteenth review).
const MAX_CARVED_ENTRIES: usize = 16_384;
/// The same for all the directories on the way together.
const MAX_CARVED_RULES: usize = 65_536;

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl Rulesets {
    /// The ruleset fd a launch into `ctx` restricts itself with, or `None` when the context
    /// asks for nothing this kernel can enforce (the load-time warning says so).
    /// `secrets`: the other files that hold secrets (every context's `env_files`, the
    /// audit log's rotated generation), asked for only when a ruleset is built, off the
    /// launch's path.
    pub fn for_context(
        &self,
        ctx: &Arc<Context>,
        protected: &Protected,
        secrets: impl FnOnce() -> Vec<PathBuf>,
    ) -> Result<Option<Arc<OwnedFd>>, LandlockError> {
        // Most contexts ask for nothing Landlock does: no cache, stat or hand-off of the
        // worker for them on every launch.
        if !wants_ruleset(ctx, abi()) {
            return Ok(None);
        }
        let key = Arc::as_ptr(ctx) as usize;
        let sessions = exists_now(&protected.sessions_of(ctx));
        let hidden: Vec<bool> = ctx
            .isolation
            .no_access
            .iter()
            .map(|p| exists_now(p))
            .collect();
        let cached = || -> Option<Arc<OwnedFd>> {
            let cache = self.lock();
            let c = cache.get(&ctx.name)?;
            (c.context == key
                && c.sessions == sessions
                && c.hidden == hidden
                && c.egress_port == protected.egress_port
                && c.own_proc == protected.own_proc)
                .then(|| c.fd.clone())
        };
        if let Some(fd) = cached() {
            return Ok(Some(fd));
        }
        // A build walks directories others may have filled: off the runtime's worker, and
        // one per context at a time, the launches that wait for it taking its result
        // (found by the thirteenth review: a rebuild over 500,000 entries held a worker,
        // and every launch on it, for 2.6 s).
        let gate = self
            .gates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ctx.name.clone())
            .or_default()
            .clone();
        tokio::task::block_in_place(|| {
            let _one = gate.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(fd) = cached() {
                return Ok(Some(fd));
            }
            self.build_and_keep(ctx, protected, &secrets(), key, sessions, hidden.clone())
        })
    }

    fn build_and_keep(
        &self,
        ctx: &Arc<Context>,
        protected: &Protected,
        secrets: &[PathBuf],
        key: usize,
        sessions: bool,
        hidden: Vec<bool>,
    ) -> Result<Option<Arc<OwnedFd>>, LandlockError> {
        // A path that changed under the build (someone renaming in a directory on the way
        // to a denied path) fails it; a few tries make that someone's loop no one else's
        // failure, mostly.
        let mut tries = 0;
        let built = loop {
            match build(ctx, protected, secrets) {
                Err(LandlockError::Changed { .. }) if tries < 4 => tries += 1,
                built => break built,
            }
        };
        let Some(fd) = built? else {
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

/// Whether `path` exists, asked on the launch's async worker: of the kernel's caches
/// first (`RESOLVE_CACHED`), which never wait on a filesystem; only what they cannot tell
/// is looked up for real, with the worker handed over first. A context's user may mount a
/// FUSE filesystem of its own over its session directory or over a `no_access` path it
/// owns, and a `stat` there waits on its server: on the worker, every launch and root's
/// `ctx status` waited with it (helper-110).
fn exists_now(path: &Path) -> bool {
    cached_exists(path).unwrap_or_else(|| {
        tokio::task::block_in_place(|| deny_chain(path).is_ok_and(|chain| chain.is_some()))
    })
}

/// Whether `path` (or the link it ends in) exists, from the kernel's caches alone, as
/// [`deny_chain`] would say; `None` when they cannot tell, or a link is on the way.
fn cached_exists(path: &Path) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let resolve = libc::RESOLVE_CACHED | libc::RESOLVE_NO_SYMLINKS;
    match crate::daemon::untrusted_path::openat2(&c, flags, resolve) {
        Ok(_) => Some(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Some(false),
        Err(_) => None,
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
        // Only a regular file: a rule on a directory (a script's `#!/`, a program path
        // the caller swapped for one) would cover everything beneath it.
        let Ok(fd) = open_path(path) else { continue };
        if !stat_of(&fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG) {
            continue;
        }
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
pub fn shebang_interpreter(head: &[u8]) -> Option<&[u8]> {
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

/// Whether `ctx` asks for anything a Landlock ruleset of this kernel's `abi_version`
/// enforces (file rules, a signal scope, TCP port rules).
fn wants_ruleset(ctx: &Context, abi_version: i32) -> bool {
    (ctx.isolation.has_fs_rules() && abi_version >= 1)
        || (ctx.isolation.signals == Signals::Scoped && abi_version >= 6)
        || (ctx.isolation.has_tcp_rules() && abi_version >= 4)
}

fn build(
    ctx: &Context,
    protected: &Protected,
    secrets: &[PathBuf],
) -> Result<Option<OwnedFd>, LandlockError> {
    let abi_version = abi();
    if !wants_ruleset(ctx, abi_version) {
        return Ok(None);
    }
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
        // Each rule goes into the ruleset as soon as its file is opened, and the descriptor
        // is closed: a directory of 30,000 entries on the way to a denied path held them
        // all at once, and the broker ran out of descriptors (found by the twelfth review).
        let mut add = |fd: OwnedFd, access: BitFlags<AccessFs>| -> Result<(), LandlockError> {
            (&mut created)
                .add_rule(PathBeneath::new(fd, access))
                .map(drop)
                .map_err(err)
        };
        fs_rules(ctx, protected, secrets, abi, &mut add)?;
    }
    Ok(Option::<OwnedFd>::from(created))
}

/// The rules of a context, each an opened file or directory and its rights, with
/// `no_access` and the protected paths carved out of every grant.
///
/// The configured paths were resolved when the config was loaded; here no link is
/// followed. Every name is opened once, relative to its directory's descriptor
/// (`O_PATH|O_NOFOLLOW`), and the rule is made on that descriptor: a name is never looked
/// up again, since whoever can write a directory on the way could swap an entry for a link
/// between two lookups and have the rule land on the link's target (`/`, or the hidden
/// path itself; found by the eleventh review). Denied paths and the directories leading
/// to them are compared by identity (device and inode), not name.
fn fs_rules(
    ctx: &Context,
    protected: &Protected,
    secrets: &[PathBuf],
    abi: ABI,
    add: &mut Add<'_>,
) -> Result<(), LandlockError> {
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
    // Paths others may change (a `no_access` path in `/tmp`, an env file in a user's
    // directory) are taken as written, canonical since the config's load, and never
    // followed through a link met now: the link itself is what is denied (found by the
    // fourteenth review: a user's link aimed a `no_access` path at `/`, which then
    // denied everything, or at a deep tree whose every directory was carved).
    let as_written: Vec<&PathBuf> = iso
        .no_access
        .iter()
        .chain(secrets.iter().filter(|p| !named(p)))
        .collect();
    let mut denied: Vec<PathBuf> = Vec::new();
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
    let changed = |path: &Path, source: std::io::Error| LandlockError::Changed {
        context: ctx.name.clone(),
        path: path.to_path_buf(),
        source,
    };
    let mut tree = Tree::default();
    for path in &denied {
        // Canonical, so that a rule reached through a symlink still compares; one that does
        // not exist hides nothing (a `no_access` path that appears makes a new ruleset).
        let Ok(canonical) = std::fs::canonicalize(path) else {
            continue;
        };
        let (_, chain) = open_canonical(&canonical).map_err(|e| changed(&canonical, e))?;
        let (last, on_the_way) = chain.split_last().expect("a path has a root");
        tree.denied.insert(*last);
        tree.on_the_way.extend(on_the_way);
    }
    for path in as_written {
        let Some(chain) = deny_chain(path).map_err(|e| changed(path, e))? else {
            continue;
        };
        let (last, on_the_way) = chain.split_last().expect("a path has a root");
        tree.denied.insert(*last);
        tree.on_the_way.extend(on_the_way);
    }
    tree.keep = std::fs::canonicalize(&own_sessions)
        .ok()
        .and_then(|p| open_canonical(&p).ok())
        .and_then(|(_, chain)| chain.last().copied());

    let failed = |what: String, source: std::io::Error| LandlockError::Io {
        context: ctx.name.clone(),
        what,
        source,
    };
    for (path, access) in grants {
        // Canonical since the config's load (the operator's moment), and followed through no
        // link met now: whoever can write a directory on its way (a user's home, `/tmp`; a
        // uid-0 context owns root's) could aim a link anywhere, and a check of its owner by
        // name races with an exchange of directories (found by the twelfth, thirteenth and
        // fourteenth reviews). The common devices may be links within `/dev`.
        let path = match DEVICES.iter().any(|d| Path::new(d) == path) {
            true => match std::fs::canonicalize(&path) {
                Ok(p) if p.starts_with("/dev/") => p,
                _ => continue,
            },
            false => path,
        };
        let (fd, chain) = match open_canonical(&path) {
            Ok(opened) => opened,
            Err(e) => {
                if cached_exists(&path) != Some(false) {
                    tracing::warn!(
                        context = %ctx.name,
                        "{}: {e} (a link, or a path changed since the config was loaded): \
                         granted nothing",
                        path.display()
                    );
                }
                continue;
            }
        };
        let id = *chain.last().expect("a path has a root");
        if Some(id) == tree.keep {
            add(fd, access)?;
            continue;
        }
        if chain.iter().any(|c| tree.denied.contains(c)) {
            continue;
        }
        let mut visited = std::collections::HashSet::from([id]);
        tree.carve(fd, id, access, abi, &mut visited, &failed, add)?;
    }
    if let Some(own) = protected
        .own_proc
        .as_ref()
        .filter(|_| !proc_access.is_empty())
    {
        // Not canonicalised: that would name the host's /proc again. Reached through the
        // holder's root, a magic link: granted only if what was opened is a procfs.
        if let Ok(fd) = open_path(own) {
            if is_procfs(&fd) {
                add(fd, proc_access)?;
            }
        }
    }
    Ok(())
}

/// Where [`fs_rules`] puts each rule as it makes it.
type Add<'a> = dyn FnMut(OwnedFd, BitFlags<AccessFs>) -> Result<(), LandlockError> + 'a;

/// A file's identity: device and inode.
type Identity = (u64, u64);

/// The denied files and directories, and the directories that lead to them.
#[derive(Default)]
struct Tree {
    denied: std::collections::HashSet<Identity>,
    on_the_way: std::collections::HashSet<Identity>,
    /// The context's own sessions directory, granted on its own.
    keep: Option<Identity>,
    /// Entries listed so far in directories on the way.
    carved: std::cell::Cell<usize>,
}

impl Tree {
    /// Grants `access` beneath the directory `dir` (identity `id`) except beneath the
    /// denied entries. A directory on the way to one keeps only listing, since any other
    /// right would reach the denied paths beneath it too, and each of its entries is
    /// opened from it, not following links (a link is governed by the rules of what it
    /// points to), and treated the same way.
    #[allow(clippy::too_many_arguments)]
    fn carve(
        &self,
        dir: OwnedFd,
        id: Identity,
        access: BitFlags<AccessFs>,
        abi: ABI,
        visited: &mut std::collections::HashSet<Identity>,
        failed: &dyn Fn(String, std::io::Error) -> LandlockError,
        add: &mut Add<'_>,
    ) -> Result<(), LandlockError> {
        if !self.on_the_way.contains(&id) {
            return add(dir, access);
        }
        let on_the_way = || "a directory on the way to a denied path".to_string();
        let names = list(&dir).map_err(|e| failed(on_the_way(), e))?;
        self.carved.set(self.carved.get() + names.len());
        if self.carved.get() > MAX_CARVED_RULES {
            return Err(failed(
                format!(
                    "the directories on the way to its denied paths hold more than \
                     {MAX_CARVED_RULES} entries together (keep no_access paths and the broker's \
                     files out of directories others can fill)"
                ),
                std::io::Error::from_raw_os_error(libc::E2BIG),
            ));
        }
        if names.len() > MAX_CARVED_ENTRIES {
            use std::os::fd::AsRawFd;
            let path = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
                .unwrap_or_default();
            return Err(failed(
                format!(
                    "{} holds {} entries, more than the {MAX_CARVED_ENTRIES} a carve-out \
                     around a denied path beneath it may make rules for (keep no_access paths \
                     and the broker's files out of directories others can fill)",
                    path.display(),
                    names.len()
                ),
                std::io::Error::from_raw_os_error(libc::E2BIG),
            ));
        }
        for name in names {
            let (entry, st) = match open_entry(&dir, &name) {
                Ok(opened) => opened,
                // Gone since it was listed: nothing to grant.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                // Out of descriptors or memory: a build that silently granted less would be
                // kept; this one is not.
                Err(e) => return Err(failed(on_the_way(), e)),
            };
            let entry_id = (st.st_dev, st.st_ino);
            let kind = st.st_mode & libc::S_IFMT;
            if kind == libc::S_IFLNK
                || Some(entry_id) == self.keep
                || self.denied.contains(&entry_id)
            {
                continue;
            }
            if kind == libc::S_IFDIR {
                // A bind mount may show a directory on the way beneath itself.
                if visited.insert(entry_id) {
                    self.carve(entry, entry_id, access, abi, visited, failed, add)?;
                }
            } else if !(access & AccessFs::from_file(abi)).is_empty() {
                add(entry, access & AccessFs::from_file(abi))?;
            }
        }
        add(dir, access & AccessFs::ReadDir)
    }
}

/// Opens the canonical `path` one component at a time from `/`, following no symlink (a
/// canonical path has none; one found was swapped in meanwhile): the last component's
/// descriptor (`O_PATH`) and the identity of each component, `/` first.
fn open_canonical(path: &Path) -> std::io::Result<(OwnedFd, Vec<Identity>)> {
    use std::os::unix::ffi::OsStrExt;
    let root = std::ffi::CString::new("/").expect("no NUL");
    // SAFETY: a NUL-terminated path; O_PATH opens nothing for I/O.
    let fd = unsafe {
        libc::open(
            root.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open just returned this descriptor and nothing else owns it.
    let mut at = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut chain = vec![identity(&at)?];
    let mut components = path.components().skip(1).peekable();
    while let Some(c) = components.next() {
        let std::path::Component::Normal(name) = c else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        let name = std::ffi::CString::new(name.as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let (next, st) = open_entry(&at, &name)?;
        let kind = st.st_mode & libc::S_IFMT;
        if kind == libc::S_IFLNK || (components.peek().is_some() && kind != libc::S_IFDIR) {
            return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
        }
        chain.push((st.st_dev, st.st_ino));
        at = next;
    }
    Ok((at, chain))
}

/// The identities on the way to `path` (`/` first) and of the path itself, walked
/// following no link: a link met is itself the last, what it points to is not looked at.
/// `None` when the path does not exist (nothing to deny yet).
///
/// A name the kernel has not cached is looked up only on a filesystem that surely
/// answers: beneath a FUSE mount (its server, a user's, may never answer) or a network
/// one, the mount itself is what is denied, its root the chain's last (a `no_access`
/// path beneath a user's FUSE mount held every launch of its context: helper-110).
fn deny_chain(path: &Path) -> std::io::Result<Option<Vec<Identity>>> {
    use std::os::unix::ffi::OsStrExt;
    let mut at = open_path(Path::new("/"))?;
    let mut chain = vec![identity(&at)?];
    // The mount `at` is on, and where in `chain` its root is.
    let mut mount = (mount_of(&at), 0);
    for c in path.components().skip(1) {
        let std::path::Component::Normal(name) = c else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        let name = std::ffi::CString::new(name.as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let opened = match open_cached_entry(&at, &name) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                if mount.0.is_some_and(|id| !surely_answers(id)) {
                    chain.truncate(mount.1 + 1);
                    return Ok(Some(chain));
                }
                open_entry(&at, &name)
            }
            opened => opened,
        };
        let (next, st) = match opened {
            Ok(opened) => opened,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        chain.push((st.st_dev, st.st_ino));
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            break;
        }
        let next_mount = mount_of(&next);
        if next_mount != mount.0 {
            mount = (next_mount, chain.len() - 1);
        }
        at = next;
    }
    Ok(Some(chain))
}

/// [`open_entry`] from the kernel's caches alone: `EAGAIN` where a lookup would be needed.
fn open_cached_entry(
    dir: &OwnedFd,
    name: &std::ffi::CStr,
) -> std::io::Result<(OwnedFd, libc::stat)> {
    use std::os::fd::AsFd;
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let resolve = libc::RESOLVE_CACHED | libc::RESOLVE_BENEATH;
    let fd = crate::daemon::untrusted_path::openat2_in(dir.as_fd(), name, flags, resolve)?;
    let st = stat_of(&fd)?;
    Ok((fd, st))
}

/// The mount `fd` is on (`STATX_MNT_ID`), from cached attributes.
fn mount_of(fd: &OwnedFd) -> Option<u64> {
    let stx = cached_statx(fd, libc::STATX_MNT_ID).ok()?;
    (stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

/// `statx` of `fd` itself for `mask`, from cached attributes (`AT_STATX_DONT_SYNC`).
fn cached_statx(fd: &OwnedFd, mask: libc::c_uint) -> std::io::Result<libc::statx> {
    use std::os::fd::AsRawFd;
    // SAFETY: statx is plain data filled by the call.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an empty path with AT_EMPTY_PATH names `fd` itself; `stx` is ours to fill.
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
            mask,
            &mut stx,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stx)
}

/// Whether the filesystem of mount `id` answers lookups for sure: not FUSE (its server
/// may be any user's) nor a network filesystem, by its type in `/proc/self/mountinfo`
/// (which asks no filesystem). Unknown: not for sure.
fn surely_answers(id: u64) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|info| fs_type_of(&info, id).is_some_and(type_surely_answers))
}

/// The filesystem type of mount `id` in a `mountinfo` text.
fn fs_type_of(mountinfo: &str, id: u64) -> Option<&str> {
    let prefix = format!("{id} ");
    mountinfo
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.split_once(" - "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
}

/// See [`surely_answers`].
fn type_surely_answers(fs_type: &str) -> bool {
    !(fs_type == "fuse"
        || fs_type == "fuseblk"
        || fs_type.starts_with("fuse.")
        || matches!(
            fs_type,
            "nfs" | "nfs4" | "cifs" | "smb3" | "9p" | "ceph" | "afs" | "glusterfs" | "lustre"
        ))
}

/// `name` in the directory `dir`, opened `O_PATH` without following a link, and its
/// attributes.
fn open_entry(dir: &OwnedFd, name: &std::ffi::CStr) -> std::io::Result<(OwnedFd, libc::stat)> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated name relative to our own directory descriptor.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = stat_of(&fd)?;
    Ok((fd, st))
}

/// The type, device and inode of `fd` as the kernel has them cached
/// (`AT_STATX_DONT_SYNC`): the root of a FUSE mount a context's user made over a path
/// the ruleset names (its session directory, a `no_access` path it owns) is never asked
/// of its server, which may never answer (helper-110). What else is set is zero.
fn stat_of(fd: &OwnedFd) -> std::io::Result<libc::stat> {
    let stx = cached_statx(fd, libc::STATX_TYPE | libc::STATX_INO)?;
    // SAFETY: libc::stat is plain data; all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    st.st_dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    st.st_ino = stx.stx_ino;
    st.st_mode = libc::mode_t::from(stx.stx_mode);
    Ok(st)
}

fn identity(fd: &OwnedFd) -> std::io::Result<Identity> {
    stat_of(fd).map(|st| (st.st_dev, st.st_ino))
}

/// The names in the directory `dir` (an `O_PATH` descriptor), read through its
/// descriptor's own entry in `/proc/self/fd`, which names that very directory.
fn list(dir: &OwnedFd) -> std::io::Result<Vec<std::ffi::CString>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        if let Ok(name) = std::ffi::CString::new(entry?.file_name().as_bytes()) {
            names.push(name);
        }
    }
    Ok(names)
}

/// `path` opened `O_PATH`, following symlinks (magic ones too).
fn open_path(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a NUL-terminated path; O_PATH opens nothing for I/O.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `fd` is on a procfs (checked on the open descriptor, not its path).
fn is_procfs(fd: &OwnedFd) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A filesystem whose lookups a user's server or a network answers is told from the
    /// others by its type in `mountinfo` (the separator ` - ` comes after optional fields).
    #[test]
    fn filesystems_that_may_never_answer_are_told_by_their_type() {
        let info = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    95 22 0:50 / /home/alice/mnt rw,nosuid shared:40 master:2 - fuse.sshfs alice@h: rw\n\
                    96 22 0:51 / /net rw - nfs4 srv:/ rw\n";
        assert_eq!(fs_type_of(info, 22), Some("ext4"));
        assert_eq!(fs_type_of(info, 95), Some("fuse.sshfs"));
        assert_eq!(fs_type_of(info, 9), None);
        assert!(type_surely_answers("ext4"));
        assert!(type_surely_answers("tmpfs"));
        for t in ["fuse", "fuse.sshfs", "fuseblk", "nfs4", "cifs", "9p"] {
            assert!(!type_surely_answers(t), "{t}");
        }
    }

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
