//! One cgroup per context: its limits (`memory_max`, `pids_max`, `cpu_max`) and the list
//! of all its processes, which `ctx kill --context` signals (a process that left its
//! launch's process group with `setsid` is still in it).
//!
//! cgroup v2 where `/sys/fs/cgroup` is a v2 mount with the memory, pids and cpu controllers;
//! otherwise v1, one directory per hierarchy (`pids` always, as the list of members;
//! `memory` and `cpu` only for their limit, each costing every launch a write). They are
//! `ctx-<broker pid>/<context>` below the broker's own cgroup in each hierarchy, so that two
//! brokers never share one, and are removed at shutdown.
//!
//! A launch joins in the spawn child by writing `0` ("the writer") to a file the broker
//! opened beforehand: one `write` per hierarchy, no allocation. Its children inherit the
//! cgroup, escaping it needs root. On v1 that file is `tasks`, not `cgroup.procs`: a
//! process moving itself through `cgroup.procs` takes the kernel's threadgroup lock for
//! writing, which waits for an RCU grace period whenever no move happened in the last
//! one, 5-30 ms on a quiet host (every launch after a pause paid it). Moving only the
//! calling thread skips that lock, and the spawn child is single-threaded, so the thread
//! is the whole process. v2 has no such file outside threaded subtrees; there the child is
//! born in its cgroup instead (`clone3` with `CLONE_INTO_CGROUP`), and writes
//! `cgroup.procs` only on kernels before 5.7.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::{CgroupLimits, Config, Context};

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// Which cgroup interface the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The unified hierarchy at this path (the broker's own cgroup in it).
    V2(PathBuf),
    /// v1: the broker's cgroup in the memory, pids and cpu hierarchies (any may be absent).
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
        cpu: Option<PathBuf>,
    },
}

/// One context's cgroup directories and the open files the child writes itself to.
#[derive(Debug)]
pub struct Group {
    dirs: Vec<PathBuf>,
    join: Vec<OwnedFd>,
    /// v2: the directory itself, for `clone3(CLONE_INTO_CGROUP)` (see `spawn.rs`).
    dir: Option<OwnedFd>,
    /// The limits in force: those asked for, less those the host has no controller for.
    applied: CgroupLimits,
}

/// Every context's cgroup.
pub struct Cgroups {
    backend: Option<Backend>,
    groups: Mutex<HashMap<String, Arc<Group>>>,
    failures: Mutex<HashMap<String, Failure>>,
}

/// What of a context's cgroup is not in force, and why.
#[derive(Debug, Clone)]
struct Failure {
    /// The limits it asked for and does not have (`memory_max`, ...); empty when it asked
    /// for none and only its cgroup (what `ctx kill --context` reads) is missing.
    missing: Vec<&'static str>,
    /// Why, with what to do about it.
    reason: String,
}

/// A cgroup directory or file that could not be made or written.
#[derive(Debug)]
pub struct CgroupError {
    path: PathBuf,
    err: io::Error,
}

impl std::fmt::Display for CgroupError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "cannot set up {}: {}", self.path.display(), self.err)?;
        let denied = matches!(
            self.err.raw_os_error(),
            Some(libc::EACCES | libc::EPERM | libc::EROFS)
        );
        if denied {
            // SAFETY: plain getter.
            if unsafe { libc::geteuid() } != 0 {
                write!(
                    f,
                    "; creating cgroups needs root (or a cgroup delegated to the broker's \
                     user): start ctx-broker as root"
                )?;
            } else {
                write!(
                    f,
                    "; is /sys/fs/cgroup read-only here (a container)? give the broker a \
                     writable (delegated) cgroup"
                )?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

const ROOT: &str = "/sys/fs/cgroup";
/// v1 `cpu.cfs_period_us` / v2 `cpu.max` period: 100 ms.
const CPU_PERIOD_US: u64 = 100_000;

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl Cgroups {
    pub fn detect() -> Cgroups {
        let backend = detect_backend();
        if let Some(b) = &backend {
            remove_stale(b);
        }
        Cgroups {
            backend,
            groups: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Creates (or updates) each context's cgroup; returns one warning per limit not in
    /// force (naming the context, the limit and why), and one for the contexts without
    /// limits whose cgroup (what `ctx kill --context` reads) could not be made.
    pub fn sync(&self, config: &Config) -> Vec<String> {
        let mut failures = HashMap::new();
        match &self.backend {
            None => {
                self.lock().clear();
                for ctx in config.contexts.values() {
                    let reason = "this host offers no usable cgroup (neither v2 with the \
                                  memory, pids and cpu controllers nor v1)"
                        .to_string();
                    let missing = requested(&ctx.cgroup);
                    failures.insert(ctx.name.clone(), Failure { missing, reason });
                }
            }
            Some(backend) => {
                for ctx in config.contexts.values() {
                    match create(backend, &ctx.name, &ctx.cgroup) {
                        Ok((group, missing)) => {
                            self.lock().insert(ctx.name.clone(), Arc::new(group));
                            if !missing.is_empty() {
                                let reason = format!(
                                    "this host's cgroup v1 has no {} hierarchy",
                                    missing
                                        .iter()
                                        .map(|m| m.trim_end_matches("_max"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                );
                                failures.insert(ctx.name.clone(), Failure { missing, reason });
                            }
                        }
                        Err(e) => {
                            // Not the previous config's group either: its limits are not
                            // the ones asked for now.
                            self.lock().remove(&ctx.name);
                            let missing = requested(&ctx.cgroup);
                            let reason = e.to_string();
                            failures.insert(ctx.name.clone(), Failure { missing, reason });
                        }
                    }
                }
            }
        }
        self.lock()
            .retain(|name, _| config.contexts.contains_key(name));
        *self.failures_lock() = failures;
        self.warnings()
    }

    /// The context's group; a launch into it writes itself to its join files.
    pub fn for_context(&self, ctx: &Context) -> Option<Arc<Group>> {
        self.lock().get(&ctx.name).cloned()
    }

    /// Signals every process in the context's cgroup except the members of the process
    /// groups `skip` (the caller signalled those already: a second delivery could count
    /// twice in a handler, or queue twice for a real-time signal). Returns how many
    /// distinct processes it signalled.
    pub fn kill(&self, name: &str, signo: i32, skip: &[i32]) -> usize {
        let Some(group) = self.lock().get(name).cloned() else {
            return 0;
        };
        let mut signalled = std::collections::HashSet::new();
        // A process forking while we read the list would be missed: go round until a pass
        // finds no one (bounded, for a fork bomb under a non-fatal signal).
        for _ in 0..16 {
            let mut left = 0;
            each_member(
                &group.pids(),
                || group.read_pids(),
                |pid, pidfd| {
                    // SAFETY: plain syscall.
                    if !skip.is_empty() && skip.contains(&unsafe { libc::getpgid(pid) }) {
                        return;
                    }
                    left += 1;
                    if crate::daemon::peer::pidfd_signal(pidfd, signo, 0).is_ok() {
                        signalled.insert(pid);
                    }
                },
            );
            if left == 0 || signo != libc::SIGKILL {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        signalled.len()
    }

    /// The backend and limits in force for `ctx status`.
    pub fn describe(&self, ctx: &Context) -> Option<String> {
        let backend = self.backend.as_ref()?;
        let group = self.lock().get(&ctx.name).cloned()?;
        let kind = match backend {
            Backend::V2(_) => "cgroup v2",
            Backend::V1 { .. } => "cgroup v1",
        };
        let l = group.applied;
        let mut parts = Vec::new();
        if let Some(m) = l.memory_max {
            parts.push(format!("memory {}M", m >> 20));
        }
        if let Some(p) = l.pids_max {
            parts.push(format!("pids {p}"));
        }
        if let Some(c) = l.cpu_max {
            parts.push(format!("cpu {c}%"));
        }
        Some(if parts.is_empty() {
            kind.to_string()
        } else {
            format!("{kind} ({})", parts.join(", "))
        })
    }

    /// One warning per limit not in force, and one for the contexts (without limits)
    /// that have no cgroup, sorted.
    pub fn warnings(&self) -> Vec<String> {
        let failures = self.failures_lock();
        let mut names: Vec<&String> = failures.keys().collect();
        names.sort();
        let mut warnings = Vec::new();
        let mut bare = Vec::new();
        for name in names {
            let f = &failures[name];
            if f.missing.is_empty() {
                bare.push(name.as_str());
            }
            for limit in &f.missing {
                warnings.push(format!(
                    "contexts.{name}: {limit} NOT in force: {}; its processes are not limited",
                    f.reason
                ));
            }
        }
        if let Some(first) = bare.first() {
            warnings.push(format!(
                "no cgroup for context(s) {}: ctx kill --context reaches only the process \
                 groups of their launches (a process that left its group escapes it): {}",
                bare.join(", "),
                failures[*first].reason
            ));
        }
        warnings
    }

    /// What of `ctx`'s cgroup is not in force: each limit it asked for and does not have,
    /// or `cgroup` (what `ctx kill --context` reads) when it has none; with the reason.
    pub fn not_in_force(&self, ctx: &Context) -> Vec<(String, String)> {
        let Some(f) = self.failures_lock().get(&ctx.name).cloned() else {
            return Vec::new();
        };
        if f.missing.is_empty() {
            let why = format!(
                "{}; ctx kill --context reaches only the process groups of its launches",
                f.reason
            );
            return vec![("cgroup".to_string(), why)];
        }
        f.missing
            .iter()
            .map(|m| (m.to_string(), f.reason.clone()))
            .collect()
    }

    /// Removes every cgroup directory this broker made (shutdown, after its processes).
    pub fn remove_all(&self) {
        let groups: Vec<Arc<Group>> = self.lock().drain().map(|(_, g)| g).collect();
        let mut parents = Vec::new();
        for g in groups {
            for d in &g.dirs {
                let _ = std::fs::remove_dir(d);
                if let Some(p) = d.parent() {
                    parents.push(p.to_path_buf());
                }
            }
        }
        parents.sort();
        parents.dedup();
        for p in parents {
            let _ = std::fs::remove_dir(p);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Group>>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failures_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failure>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Group {
    /// Raw descriptors for the spawn plan.
    pub fn join_fds(&self) -> Vec<RawFd> {
        self.join.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// v2: the directory a launch is cloned into.
    pub fn dir_fd(&self) -> Option<RawFd> {
        self.dir.as_ref().map(|f| f.as_raw_fd())
    }

    /// The processes in the group (from the first hierarchy: all hold the same ones).
    pub fn pids(&self) -> Vec<i32> {
        self.read_pids().unwrap_or_default()
    }

    /// The members, `None` when `cgroup.procs` cannot be read (no descriptor left).
    fn read_pids(&self) -> Option<Vec<i32>> {
        let dir = self.dirs.first()?;
        let text = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
        Some(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// Members whose pidfds are held at once: a cgroup of many processes must not fill the
/// broker's descriptor table (helper-105: 1,000 members against 1,024 descriptors left no
/// room for the second read, and no member was signalled).
const MEMBERS_AT_ONCE: usize = 64;

/// Calls `f` with each process of `listed` (a read of a group's members) through a pidfd,
/// only if its pid is listed again once the pidfd holds it (`again`): a member that ended
/// and was reaped between the first read and its pidfd may have left its pid to a process
/// outside the group, which the second read does not list; a pidfd keeps naming the
/// process it was opened on, whatever its pid becomes. A second read that fails drops no
/// one: those pidfds were opened on pids listed a moment before.
fn each_member(
    listed: &[i32],
    again: impl Fn() -> Option<Vec<i32>>,
    mut f: impl FnMut(i32, &OwnedFd),
) {
    for chunk in listed.chunks(MEMBERS_AT_ONCE) {
        let opened: Vec<(i32, OwnedFd)> = chunk
            .iter()
            .filter_map(|&pid| Some((pid, crate::daemon::peer::pidfd_open(pid).ok()?)))
            .collect();
        if opened.is_empty() {
            continue;
        }
        let again: Option<std::collections::HashSet<i32>> =
            again().map(|pids| pids.into_iter().collect());
        for (pid, pidfd) in &opened {
            if again.as_ref().is_none_or(|a| a.contains(pid)) {
                f(*pid, pidfd);
            }
        }
    }
}

/// The broker's own cgroup path in each hierarchy, from `/proc/self/cgroup`.
fn detect_backend() -> Option<Backend> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path_of = |want: &str| -> Option<String> {
        own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            ctrls
                .split(',')
                .any(|c| c == want)
                .then(|| path.to_string())
        })
    };
    let v2_controllers = std::fs::read_to_string(Path::new(ROOT).join("cgroup.controllers"));
    if let Ok(ctrls) = v2_controllers {
        let has = |c: &str| ctrls.split_whitespace().any(|x| x == c);
        if has("memory") && has("pids") && has("cpu") {
            let rel = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or("/");
            return Some(Backend::V2(join(Path::new(ROOT), rel)));
        }
    }
    let v1 = |ctrl: &str| -> Option<PathBuf> {
        let base = Path::new(ROOT).join(ctrl);
        base.join("cgroup.procs").exists().then_some(())?;
        Some(join(&base, &path_of(ctrl)?))
    };
    let (memory, pids, cpu) = (v1("memory"), v1("pids"), v1("cpu"));
    if memory.is_none() && pids.is_none() && cpu.is_none() {
        return None;
    }
    Some(Backend::V1 { memory, pids, cpu })
}

/// Removes the empty `ctx-<pid>` cgroups of brokers that are gone (killed before they
/// could clean up). A cgroup that still holds processes cannot be removed and stays.
/// Enables memory, pids and cpu for the children of the broker's own v2 cgroup. v2 allows
/// that only in a cgroup without processes of its own (EBUSY otherwise), and under systemd
/// (`Delegate=yes`) the broker's own cgroup holds the broker: so the broker first moves
/// itself into a leaf beside the contexts' cgroups, `ctx-broker-<pid>`, as systemd's
/// delegation rules expect. Failures stay silent here: the limits written next then fail
/// and are warned about with the path.
fn enable_v2_controllers(base: &Path) {
    let control = base.join("cgroup.subtree_control");
    match std::fs::write(&control, "+memory +pids +cpu") {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
        _ => return,
    }
    let own = base.join(format!("ctx-broker-{}", instance()));
    let _ = std::fs::create_dir(&own);
    // Writing the pid moves the whole process, every thread with it.
    if std::fs::write(own.join("cgroup.procs"), std::process::id().to_string()).is_ok() {
        let _ = std::fs::write(&control, "+memory +pids +cpu");
    }
}

/// The context whose cgroup (of this broker) `pid` is in, whatever its ancestry: a process
/// that left its launch's process tree (a double fork reparents it to init) is still in its
/// context's cgroup. Only a process with write access to `cgroup.procs` files (root) can
/// move itself, so this is evidence that a peer is *not* the operator, never a grant.
pub fn context_of_pid(pid: i32) -> Option<String> {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    let (mut f, n) =
        super::super::registry::read_proc_file(&format!("/proc/{pid}/cgroup"), &mut buf)?;
    let long;
    let text = if n < buf.len() {
        std::str::from_utf8(&buf[..n]).ok()?
    } else {
        let mut all = buf.to_vec();
        f.read_to_end(&mut all).ok()?;
        long = all;
        std::str::from_utf8(&long).ok()?
    };
    let leaf = format!("ctx-{}", instance());
    text.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        let mut parts = path.split('/');
        parts.find(|p| *p == leaf)?;
        parts.next().filter(|n| !n.is_empty()).map(str::to_string)
    })
}

/// This broker among the ones sharing the cgroup tree: `PID.PIDNS` (its pid and the inode
/// of its pid namespace). A pid alone would name another broker's groups as stale to a
/// broker in another pid namespace (a container's), which would then remove them from
/// under it.
fn instance() -> &'static str {
    // Asked for every peer that no launch's ancestry names: read once.
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(|| format!("{}.{}", std::process::id(), pid_namespace()))
}

/// The inode of this process's pid namespace (0 if unreadable).
fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
}

/// Removes the groups of brokers of this pid namespace that are gone (their pid is not
/// alive here); the groups of brokers in other pid namespaces, whose pids mean nothing
/// here, are left alone.
fn remove_stale(backend: &Backend) {
    let bases: Vec<&PathBuf> = match backend {
        Backend::V2(b) => vec![b],
        Backend::V1 { memory, pids, cpu } => [memory, pids, cpu].into_iter().flatten().collect(),
    };
    for base in bases {
        let Ok(entries) = std::fs::read_dir(base) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let own_ns = pid_namespace();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("ctx-"))
                .map(|n| n.strip_prefix("broker-").unwrap_or(n))
                .and_then(|n| n.split_once('.'))
                .filter(|(_, ns)| ns.parse::<u64>().ok() == Some(own_ns))
                .and_then(|(p, _)| p.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            if let Ok(children) = std::fs::read_dir(e.path()) {
                for c in children.flatten() {
                    if c.path().is_dir() {
                        let _ = std::fs::remove_dir(c.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// The limits `limits` asks for, by their contexts.toml names.
fn requested(limits: &CgroupLimits) -> Vec<&'static str> {
    let mut out = Vec::new();
    if limits.memory_max.is_some() {
        out.push("memory_max");
    }
    if limits.pids_max.is_some() {
        out.push("pids_max");
    }
    if limits.cpu_max.is_some() {
        out.push("cpu_max");
    }
    out
}

fn join(base: &Path, rel: &str) -> PathBuf {
    base.join(rel.trim_start_matches('/'))
}

/// Makes `<broker cgroup>/ctx-<pid>/<context>` and sets its limits. Returns the group and
/// the limits this host cannot apply; an error names the directory or file that failed.
fn create(
    backend: &Backend,
    name: &str,
    limits: &CgroupLimits,
) -> Result<(Group, Vec<&'static str>), CgroupError> {
    let leaf = format!("ctx-{}", instance());
    let mut dirs = Vec::new();
    let mut missing = Vec::new();
    let mut applied = *limits;
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |err: io::Error| CgroupError { path, err }
    };
    let write = |path: PathBuf, value: String| -> Result<(), CgroupError> {
        std::fs::write(&path, value).map_err(at(&path))
    };
    let mkdir = |dir: &Path| -> Result<(), CgroupError> {
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(at(dir)(e)),
            _ => Ok(()),
        }
    };
    let make = |base: &Path| -> Result<PathBuf, CgroupError> {
        let parent = base.join(&leaf);
        mkdir(&parent)?;
        let dir = parent.join(name);
        mkdir(&dir)?;
        Ok(dir)
    };
    match backend {
        Backend::V2(base) => {
            // Controllers must be enabled for the children of each level we create under.
            let parent = base.join(&leaf);
            mkdir(&parent)?;
            enable_v2_controllers(base);
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
            let dir = make(base)?;
            if let Some(m) = limits.memory_max {
                write(dir.join("memory.max"), m.to_string())?;
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            }
            if let Some(p) = limits.pids_max {
                write(dir.join("pids.max"), p.to_string())?;
            }
            if let Some(c) = limits.cpu_max {
                let quota = CPU_PERIOD_US * c as u64 / 100;
                write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?;
            }
            dirs.push(dir);
        }
        Backend::V1 { memory, pids, cpu } => {
            // pids first: it is the list ctx kill reads.
            match pids {
                Some(base) => {
                    let dir = make(base)?;
                    let max = limits.pids_max.map_or("max".to_string(), |p| p.to_string());
                    write(dir.join("pids.max"), max)?;
                    dirs.push(dir);
                }
                None if limits.pids_max.is_some() => {
                    missing.push("pids_max");
                    applied.pids_max = None;
                }
                None => {}
            }
            // Joining a v1 hierarchy costs every launch a write; memory and cpu are joined
            // only for their limit (or when there is no pids hierarchy to list members).
            let memory = memory
                .as_ref()
                .filter(|_| limits.memory_max.is_some() || pids.is_none());
            let cpu = cpu
                .as_ref()
                .filter(|_| limits.cpu_max.is_some() || (pids.is_none() && memory.is_none()));
            match memory {
                Some(base) => {
                    let dir = make(base)?;
                    // memsw (memory + swap) must stay >= memory: lift it first, then set
                    // both, so that a reload may raise or lower the limit.
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    let _ = std::fs::write(&memsw, "-1");
                    match limits.memory_max {
                        Some(m) => {
                            write(dir.join("memory.limit_in_bytes"), m.to_string())?;
                            // No swapping around the limit where the kernel accounts swap.
                            let _ = std::fs::write(&memsw, m.to_string());
                        }
                        None => {
                            let _ = std::fs::write(dir.join("memory.limit_in_bytes"), "-1");
                        }
                    }
                    dirs.push(dir);
                }
                None if limits.memory_max.is_some() => {
                    missing.push("memory_max");
                    applied.memory_max = None;
                }
                None => {}
            }
            match cpu {
                Some(base) => {
                    let dir = make(base)?;
                    if let Some(c) = limits.cpu_max {
                        let quota = CPU_PERIOD_US * c as u64 / 100;
                        write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                        write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
                    } else {
                        let _ = std::fs::write(dir.join("cpu.cfs_quota_us"), "-1");
                    }
                    dirs.push(dir);
                }
                None if limits.cpu_max.is_some() => {
                    missing.push("cpu_max");
                    applied.cpu_max = None;
                }
                None => {}
            }
        }
    }
    let join_file = match backend {
        Backend::V2(_) => "cgroup.procs",
        Backend::V1 { .. } => "tasks",
    };
    let mut join = Vec::with_capacity(dirs.len());
    for d in &dirs {
        let path = d.join(join_file);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(at(&path))?;
        join.push(OwnedFd::from(f));
    }
    let dir = match backend {
        Backend::V2(_) => {
            let d = std::fs::File::open(&dirs[0]).map_err(at(&dirs[0]))?;
            Some(OwnedFd::from(d))
        }
        Backend::V1 { .. } => None,
    };
    Ok((
        Group {
            dirs,
            join,
            dir,
            applied,
        },
        missing,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::spawn::fork_exec;

    /// More members than the descriptors left: every one is still signalled (helper-105:
    /// all pidfds opened at once left no descriptor for the second read, which then
    /// listed no one).
    #[test]
    fn more_members_than_free_descriptors_are_all_reached() {
        let mut members: Vec<std::process::Child> = (0..300)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap()
            })
            .collect();
        let pids: Vec<i32> = members.iter().map(|c| c.id() as i32).collect();
        // A new file only (`create_new`: O_EXCL, which follows no link another user may
        // have planted under that name in the shared temporary directory).
        let list = std::env::temp_dir().join(format!("ctx-members-{}", std::process::id()));
        std::io::Write::write_all(
            &mut std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&list)
                .unwrap(),
            pids.iter()
                .map(|p| format!("{p}\n"))
                .collect::<String>()
                .as_bytes(),
        )
        .unwrap();
        let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain getter and setter of this test process's own limit.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut old);
            let low = libc::rlimit {
                rlim_cur: open_now + 100,
                rlim_max: old.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &low);
        }
        let read_list = || {
            let text = std::fs::read_to_string(&list).ok()?;
            Some(text.lines().filter_map(|l| l.parse().ok()).collect())
        };
        let mut reached = 0;
        each_member(&pids, read_list, |_, _| reached += 1);
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) };
        let _ = std::fs::remove_file(&list);
        for m in &mut members {
            let _ = m.kill();
            let _ = m.wait();
        }
        assert_eq!(reached, pids.len(), "members were left out");
    }

    /// A member listed, then ended and reaped before its pidfd was opened, its pid taken
    /// by a process outside the group (reused on purpose through `ns_last_pid`): the
    /// second read does not list it, and it is never signalled.
    #[test]
    fn a_pid_reused_outside_the_group_between_two_reads_is_not_a_member() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to write ns_last_pid");
            return;
        }
        let mut reused = 0;
        for _ in 0..20 {
            let mut member = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            let pid = member.id() as i32;
            let listed = vec![pid];
            let _ = member.kill();
            let _ = member.wait();
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
            let mut outsider = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            if outsider.id() as i32 == pid {
                reused += 1;
                let taken = |again: Option<Vec<i32>>| {
                    let mut n = 0;
                    each_member(&listed, || again.clone(), |_, _| n += 1);
                    n
                };
                assert_eq!(
                    taken(Some(Vec::new())),
                    0,
                    "the outsider that got the member's pid was taken for a member"
                );
                assert_eq!(
                    taken(Some(vec![pid])),
                    1,
                    "a member listed twice was dropped"
                );
                assert_eq!(taken(None), 1, "a failed second read dropped a member");
            }
            let _ = outsider.kill();
            let _ = outsider.wait();
        }
        assert!(reused > 0, "never got the pid again: nothing was tried");
    }
    use crate::daemon::spawn::testing::{own_v2_cgroup, test_plan, v2_mount, wait_end};

    /// The v2 backend's plumbing, on whatever v2 hierarchy this host has (its memory, pids
    /// and cpu controllers may all be bound to v1, so no limits): the context's group is
    /// made, a launch is born in it, `ctx kill --context` finds it there and signals it,
    /// and shutdown removes the directories.
    #[test]
    fn a_v2_group_holds_its_launches_and_kill_reaches_them() {
        let backend = Backend::V2(join(&v2_mount(), &own_v2_cgroup()));
        let name = format!("v2test-{}", std::process::id());
        let (group, _) = create(&backend, &name, &CgroupLimits::default()).unwrap();
        let dir = group.dirs[0].clone();
        assert!(group.dir_fd().is_some() && group.join_fds().len() == 1);
        let cgroups = Cgroups {
            backend: Some(backend),
            groups: Mutex::new(HashMap::from([(name.clone(), Arc::new(group))])),
            failures: Mutex::new(HashMap::new()),
        };
        let group = cgroups.lock().get(&name).cloned().unwrap();
        let mut plan = test_plan(&["/bin/sleep", "30"], Vec::new());
        plan.cgroup_join = group.join_fds();
        plan.cgroup_dir = group.dir_fd();
        let forked = fork_exec(&plan).unwrap();
        drop(group);
        let listed = (0..100).find_map(|_| {
            let pids = cgroups.lock()[&name].pids();
            if pids == [forked.pid] {
                return Some(pids);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            None
        });
        assert_eq!(listed, Some(vec![forked.pid]));
        assert_eq!(cgroups.kill(&name, libc::SIGKILL, &[]), 1);
        assert_eq!(wait_end(&forked), (libc::CLD_KILLED, libc::SIGKILL));
        cgroups.remove_all();
        assert!(!dir.exists() && !dir.parent().unwrap().exists(), "{dir:?}");
    }
}
