//! Turns a context and an exec request into a [`SpawnPlan`]: the routed process's
//! environment (the context's, plus `inherit_env`, never the caller's secrets), its working
//! directory, identity, limits and program lookup. Runs before fork, so it may allocate.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use ctx_protocol::{ExecFailure, ExecRequest, FailureKind, FdSource, Grouping, Stage};

use crate::config::{Context, CwdRule, DEFAULT_PATH};

use super::inherit::{child_rlimits, Carried};
use super::kernel::seccomp;
use super::spawn::{child_nofile_soft, cstring, search_candidates, Identity, Program, SpawnPlan};

use ctx_protocol::vars::{self, ROUTING as ROUTING_VARS};

/// The broker's own credentials, which decide whether a uid switch is possible.
#[derive(Debug, Clone, Copy)]
pub struct BrokerIdentity {
    pub euid: u32,
    pub egid: u32,
}

impl BrokerIdentity {
    pub fn current() -> BrokerIdentity {
        // SAFETY: plain getters.
        unsafe {
            BrokerIdentity {
                euid: libc::geteuid(),
                egid: libc::getegid(),
            }
        }
    }
}

fn refuse(kind: FailureKind, stage: Stage, errno: i32, message: String) -> ExecFailure<'static> {
    ExecFailure {
        kind,
        stage,
        errno,
        errno_name: ctx_protocol::errno_name(errno).into(),
        message: message.into(),
    }
}

/// What a context with `route_children_to` needs to route its own launches: the
/// interposer to preload and the socket of this broker.
#[derive(Debug, Clone)]
pub struct Routing {
    pub interposer: std::path::PathBuf,
    pub socket: std::path::PathBuf,
    /// The `route_children_to` target of the launching context has
    /// `on_broker_down = "local"`: its interposer gets `CTX_ON_BROKER_DOWN=local`, since it
    /// cannot read contexts.toml itself. Set per launch (see `requests::launch`).
    pub target_runs_local_when_down: bool,
}

impl Routing {
    /// `CTX_INTERPOSER`, else the interposer beside the broker binary (a build tree), else in
    /// `../lib/ctx/` from it (where `scripts/install.sh` and the Debian package put it:
    /// `PREFIX/bin/ctx-broker`, `PREFIX/lib/ctx/libctx_interposer.so`), as `ctx run` finds it.
    pub fn locate(socket: &std::path::Path) -> Routing {
        const FILE: &str = "libctx_interposer.so";
        let interposer = std::env::var_os(vars::INTERPOSER)
            .map(Into::into)
            .unwrap_or_else(|| {
                let exe = std::env::current_exe().ok();
                let bin = exe.as_deref().and_then(std::path::Path::parent);
                let beside = bin.map(|d| d.join(FILE));
                let installed = bin
                    .and_then(std::path::Path::parent)
                    .map(|prefix| prefix.join("lib/ctx").join(FILE));
                match (beside, installed) {
                    (Some(b), _) if b.exists() => b,
                    (_, Some(i)) if i.exists() => i,
                    (Some(b), _) => b,
                    _ => format!("/usr/local/lib/ctx/{FILE}").into(),
                }
            });
        let socket = std::path::absolute(socket).unwrap_or_else(|_| socket.to_path_buf());
        Routing {
            interposer,
            socket,
            target_runs_local_when_down: false,
        }
    }
}

/// The environment of a routed process, in precedence order: the user's HOME/USER/
/// LOGNAME/SHELL, then the caller's variables that `inherit_env` names, then the context's
/// `env` (and its PATH), then explicit `-e` settings.
/// A change to the environment: set to `Some(value)`, or unset.
pub type EnvChange = (Vec<u8>, Option<Vec<u8>>);

pub fn environment(
    ctx: &Context,
    req: &ExecRequest,
    tty: bool,
    routing: &Routing,
    session: &[EnvChange],
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut env = EnvBuild::default();
    env.set(b"HOME", ctx.user.home.as_os_str().as_bytes());
    env.set(b"USER", ctx.user.name.as_bytes());
    env.set(b"LOGNAME", ctx.user.name.as_bytes());
    env.set(b"SHELL", ctx.user.shell.as_os_str().as_bytes());
    let caller = req.env.iter().filter_map(|kv| {
        let eq = kv.iter().position(|&b| b == b'=')?;
        Some((&kv[..eq], &kv[eq + 1..]))
    });
    let mut caller_term = None;
    // A name the caller's environment holds twice crosses twice, in its order: `getenv`
    // reads the first, a shell keeps the last, as locally.
    let mut taken = std::collections::HashSet::new();
    for (k, v) in caller {
        // A name that is not UTF-8 is matched as text with its odd bytes replaced (so `*`
        // takes it), and set as the bytes it was.
        let name = String::from_utf8_lossy(k);
        if name == "TERM" {
            caller_term.get_or_insert(v);
        }
        if !ctx.inherits(&name) {
            continue;
        }
        let v = if name == "LD_PRELOAD" {
            // The caller's own preloads (libfaketime, jemalloc, eatmydata) cross; ctx's
            // interposer does not, unless the context routes on (below).
            let kept = without_interposer(v, &routing.interposer);
            if kept.is_empty() {
                continue;
            }
            std::borrow::Cow::Owned(kept)
        } else if ROUTING_VARS.contains(&name.as_ref()) {
            continue;
        } else {
            std::borrow::Cow::Borrowed(v)
        };
        if taken.insert(k) {
            env.set(k, &v);
        } else {
            env.repeat(k, &v);
        }
    }
    for (k, v) in &ctx.env {
        env.set(k.as_bytes(), v.as_bytes());
    }
    // `shell_env = "shared"`: what the default session exported or unset.
    for (k, v) in session {
        if std::str::from_utf8(k).is_ok_and(|n| ROUTING_VARS.contains(&n)) {
            continue;
        }
        match v {
            Some(v) => env.set(k, v),
            None => env.remove(k),
        }
    }
    if env.get(b"PATH").is_none() {
        env.set(b"PATH", DEFAULT_PATH.as_bytes());
    }
    if let Some(target) = &ctx.route_children_to {
        // Chained contexts: everything this context starts is routed on to `target`.
        let mut preload = routing.interposer.as_os_str().as_bytes().to_vec();
        if let Some(old) = env.get(b"LD_PRELOAD") {
            if !old.is_empty() {
                preload.push(b':');
                preload.extend_from_slice(old);
            }
        }
        env.set(b"LD_PRELOAD", &preload);
        env.set(vars::ROUTE.as_bytes(), target.as_bytes());
        env.set(
            vars::SOCKET.as_bytes(),
            routing.socket.as_os_str().as_bytes(),
        );
        if routing.target_runs_local_when_down {
            env.set(vars::ON_BROKER_DOWN.as_bytes(), b"local");
        }
    }
    if tty && env.get(b"TERM").is_none() {
        // A PTY is useless without a terminal type; the caller's is not a secret.
        env.set(b"TERM", caller_term.unwrap_or(b"xterm-256color"));
    }
    for kv in &req.set_env {
        if let Some(eq) = kv.iter().position(|&b| b == b'=') {
            env.set(&kv[..eq], &kv[eq + 1..]);
        }
    }
    env.into_vars()
}

/// An environment being built: in order, each name once but for the caller's own
/// repeats, and every step at the cost of one lookup (a caller may send a million
/// variables).
#[derive(Default)]
struct EnvBuild {
    /// `None`: an entry taken out since.
    vars: Vec<Option<(Vec<u8>, Vec<u8>)>>,
    /// Each name's live entries, first first.
    at: std::collections::HashMap<Vec<u8>, Vec<usize>>,
}

impl EnvBuild {
    fn get(&self, k: &[u8]) -> Option<&[u8]> {
        let &i = self.at.get(k)?.first()?;
        self.vars[i].as_ref().map(|(_, v)| v.as_slice())
    }

    /// `k` is `v`: its first entry takes the value and any repeat goes, so no copy of the
    /// name shadows what ctx sets.
    fn set(&mut self, k: &[u8], v: &[u8]) {
        match self.at.get_mut(k) {
            Some(places) if !places.is_empty() => {
                for &i in &places[1..] {
                    self.vars[i] = None;
                }
                places.truncate(1);
                if let Some((_, value)) = &mut self.vars[places[0]] {
                    *value = v.to_vec();
                }
            }
            _ => self.push(k, v),
        }
    }

    /// Another entry of `k` after the ones there are.
    fn repeat(&mut self, k: &[u8], v: &[u8]) {
        self.push(k, v);
    }

    fn remove(&mut self, k: &[u8]) {
        for i in self.at.remove(k).unwrap_or_default() {
            self.vars[i] = None;
        }
    }

    fn push(&mut self, k: &[u8], v: &[u8]) {
        self.at.entry(k.to_vec()).or_default().push(self.vars.len());
        self.vars.push(Some((k.to_vec(), v.to_vec())));
    }

    fn into_vars(self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.vars.into_iter().flatten().collect()
    }
}

/// Whether a context's processes cannot signal the broker whatever owner they make a file
/// name: a Landlock signal scope is checked against the domain of whoever set the owner.
/// A PID namespace is not enough: `O_ASYNC` on a terminal names its foreground group
/// without a pid (`seccomp::OWNER_FILTER`).
fn signals_fenced(ctx: &Context) -> bool {
    ctx.isolation.signals == crate::config::Signals::Scoped
        && crate::daemon::kernel::landlock::abi() >= 6
}

/// An `LD_PRELOAD` value without ctx's interposer: entries (separated by `:` or spaces,
/// as ld.so reads them) naming `interposer` or any file called `libctx_interposer.so`.
fn without_interposer(value: &[u8], interposer: &std::path::Path) -> Vec<u8> {
    let ours = interposer.as_os_str().as_bytes();
    let mut kept = Vec::with_capacity(value.len());
    for entry in value
        .split(|&b| b == b':' || b == b' ')
        .filter(|e| !e.is_empty())
    {
        let base = entry.rsplit(|&b| b == b'/').next().unwrap_or(entry);
        if entry == ours || base == crate::client::run::INTERPOSER_FILE.as_bytes() {
            continue;
        }
        if !kept.is_empty() {
            kept.push(b':');
        }
        kept.extend_from_slice(entry);
    }
    kept
}

/// Where the routed process starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingDir {
    /// The path to enter; empty: none (the caller's cwd has no name: deleted, unreachable).
    pub path: Vec<u8>,
    /// It is the caller's own working directory (`cwd = "inherit"`), so the caller's cwd
    /// descriptor, when one came, stands for it.
    pub callers: bool,
}

/// The working directory: `--cwd` (relative to the caller's), else the context's rule.
pub fn working_dir(ctx: &Context, req: &ExecRequest) -> WorkingDir {
    let fixed = |path: Vec<u8>| WorkingDir {
        path,
        callers: false,
    };
    if let Some(dir) = &req.cwd_override {
        if dir.starts_with(b"/") || req.cwd.is_empty() {
            return fixed(dir.to_vec());
        }
        let mut full = req.cwd.to_vec();
        if !full.ends_with(b"/") {
            full.push(b'/');
        }
        full.extend_from_slice(dir);
        return fixed(full);
    }
    match &ctx.cwd {
        CwdRule::Inherit => WorkingDir {
            path: req.cwd.to_vec(),
            callers: true,
        },
        CwdRule::Home => fixed(ctx.user.home.as_os_str().as_bytes().to_vec()),
        CwdRule::Path(p) => fixed(p.as_os_str().as_bytes().to_vec()),
    }
}

/// How the program of a request without `search_path` is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Along the context's PATH, as env(1) and `docker exec` do (the CLI).
    ContextPath,
    /// Exactly as given, as `execve` does (the interposer, the broker's own shells).
    Exact,
}

/// What a launch will run with, ready to fork. The plan refers to the passed descriptors
/// (the caller's cwd's last among them) by number: they stay open until after the fork.
pub struct Prepared {
    pub plan: SpawnPlan,
    /// The working directory, for messages and the audit log: its path, or where the
    /// caller's descriptor points when it has none (`/tmp/d (deleted)`).
    pub cwd: Vec<u8>,
    pub wants_tty: bool,
}

pub fn prepare(
    ctx: &Context,
    req: &ExecRequest,
    lookup: Lookup,
    passed: &[OwnedFd],
    me: BrokerIdentity,
    routing: &Routing,
    session: &[EnvChange],
) -> Result<Prepared, ExecFailure<'static>> {
    let bad = |m: String| refuse(FailureKind::Other, Stage::Exec, libc::EINVAL, m);
    // An empty argv with a program named (`execve(path, {NULL}, ...)`) runs with `[""]`,
    // as the kernel gives it (Linux 5.18); with neither, there is nothing to run.
    if req.argv.is_empty() && req.program.is_none() {
        return Err(bad("empty command line".into()));
    }
    let n_passed = req
        .fds
        .iter()
        .filter(|s| s.source == FdSource::Passed)
        .count();
    let with_cwd = req.inherited.as_ref().is_some_and(|i| i.cwd_fd);
    if n_passed + usize::from(with_cwd) != passed.len() {
        return Err(bad(format!(
            "request names {n_passed} passed descriptors{} but {} arrived",
            if with_cwd { " and its cwd's" } else { "" },
            passed.len()
        )));
    }
    let all_passed: Vec<std::os::fd::RawFd> = passed.iter().map(|f| f.as_raw_fd()).collect();
    let (passed, caller_cwd) = match passed.split_last() {
        Some((cwd, rest)) if with_cwd => (rest, Some(cwd)),
        _ => (passed, None),
    };
    let mut seen = std::collections::HashSet::new();
    for slot in &req.fds {
        if !(0..=1_048_576).contains(&slot.target) || !seen.insert(slot.target) {
            return Err(bad(format!(
                "bad or repeated descriptor number {}",
                slot.target
            )));
        }
    }
    // A `tty` without a `Pty` slot: the caller's stdio are no terminals but it has a
    // controlling terminal, which the routed program gets a PTY for.
    let wants_tty = req.fds.iter().any(|s| s.source == FdSource::Pty) || req.tty.is_some();

    let uid = ctx.user.uid;
    let gid = ctx.user.gid;
    let identity = if me.euid == 0 {
        Some(Identity {
            uid,
            gid,
            groups: ctx.user.groups.clone(),
        })
    } else if uid == me.euid && gid == me.egid {
        None
    } else {
        return Err(refuse(
            FailureKind::SetUid,
            Stage::SetUid,
            libc::EPERM,
            format!(
                "context {:?} runs as uid {uid} but the broker runs unprivileged as uid {}; \
                 start ctx-broker as root",
                ctx.name, me.euid
            ),
        ));
    };

    let env = environment(ctx, req, wants_tty, routing, session);
    let envp = env
        .iter()
        .filter_map(|(k, v)| {
            let mut kv = Vec::with_capacity(k.len() + v.len() + 1);
            kv.extend_from_slice(k);
            kv.push(b'=');
            kv.extend_from_slice(v);
            CString::new(kv).ok()
        })
        .collect();
    let argv = req
        .argv
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad("an argument contains a NUL byte".into()))?;
    let argv = if argv.is_empty() {
        vec![CString::default()]
    } else {
        argv
    };
    let file: &[u8] = match &req.program {
        Some(p) => p,
        None => &req.argv[0],
    };
    let (program, sh_fallback) = match (&req.search_path, lookup) {
        (Some(path), _) => (Program::Search(search_candidates(file, path)), true),
        // The CLI, like env(1) and docker exec, looks the command up in the context's PATH.
        (None, Lookup::ContextPath) => {
            let path = env
                .iter()
                .find(|(k, _)| k == b"PATH")
                .map(|(_, v)| v.as_slice());
            (
                Program::Search(search_candidates(
                    file,
                    path.unwrap_or(DEFAULT_PATH.as_bytes()),
                )),
                true,
            )
        }
        (None, Lookup::Exact) => (
            Program::Exact(cstring(file).map_err(|_| bad("program path contains NUL".into()))?),
            false,
        ),
    };
    let dir = working_dir(ctx, req);
    let cwd_c = if dir.path.is_empty() {
        None
    } else {
        Some(cstring(&dir.path).map_err(|_| bad("cwd contains NUL".into()))?)
    };
    // The descriptor only stands for the caller's own directory; any other is dropped.
    let cwd_fd = caller_cwd.filter(|_| dir.callers);
    if dir.callers && cwd_c.is_none() && cwd_fd.is_none() {
        // Neither a name nor a descriptor: running it in the broker's own cwd instead
        // would be a guess.
        return Err(refuse(
            FailureKind::BadCwd,
            Stage::Chdir,
            libc::ENOENT,
            "the caller's working directory has no path (deleted?) and no descriptor of it \
             came with the request"
                .into(),
        ));
    }
    // Whatever the name says, a child given the descriptor ends up in its directory
    // (`enter_cwd`), so that is the one the audit names.
    let cwd = match &cwd_fd {
        Some(fd) => std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map(|p| p.into_os_string().into_vec())
            .unwrap_or(dir.path),
        None => dir.path,
    };
    let own = super::inherit::own_rlimit;
    let caller_limits = req.inherited.as_ref().map_or(&[][..], |i| &i.rlimits[..]);
    let rlimits = child_rlimits(&ctx.rlimits, caller_limits, child_nofile_soft(), own);

    let mut fds = Vec::with_capacity(req.fds.len());
    let mut next = passed.iter();
    for slot in &req.fds {
        if slot.source == FdSource::Passed {
            // Counted above: there is one descriptor per Passed slot.
            if let Some(fd) = next.next() {
                fds.push((fd.as_raw_fd(), slot.target));
            }
        }
    }
    let plan = SpawnPlan {
        program,
        sh_fallback,
        argv,
        envp,
        cwd: cwd_c,
        cwd_fd: cwd_fd.map(|fd| fd.as_raw_fd()),
        identity,
        rlimits,
        inherited: req.inherited.as_ref().map(Carried::from_request),
        fds,
        controlling_tty: None,
        new_session: req.grouping == Grouping::SessionLeader,
        drop_caps: me.euid == 0,
        namespaces: None,
        listen_pid: false,
        exec_guard: None,
        supervisor_filter: Vec::new(),
        owner_filter: match (uid == me.euid, signals_fenced(ctx)) {
            (false, _) => None,
            (true, false) => Some(&seccomp::OWNER_FILTER),
            (true, true) => Some(&seccomp::LEASE_FILTER),
        },
        landlock: [None, None],
        cgroup_join: Vec::new(),
        cgroup_dir: None,
        pid_slots: None,
        passed: all_passed,
    };
    Ok(Prepared {
        plan,
        cwd,
        wants_tty,
    })
}
