//! One cgroup per context: its limits (`memory_max`, `pids_max`, `cpu_max`) and the list
//! of all its processes, which `ctx kill --context` signals (a process that left its
//! launch's process group with `setsid` is still in it).
//!
//! cgroup v2 where `/sys/fs/cgroup` is a v2 mount with the memory, pids and cpu controllers;
//! otherwise v1, one directory per hierarchy (`memory`, `pids`, `cpu`). The directories are
//! `ctx-<broker pid>/<context>` below the broker's own cgroup in each hierarchy, so that two
//! brokers never share one, and are removed at shutdown.
//!
//! A launch joins in the spawn child by writing `0` ("the writer") to each `cgroup.procs`
//! the broker opened beforehand: one `write` per hierarchy, no allocation. Its children
//! inherit the cgroup, escaping it needs root.

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

/// One context's cgroup directories and the open `cgroup.procs` the child writes to.
#[derive(Debug)]
pub struct Group {
    dirs: Vec<PathBuf>,
    procs: Vec<OwnedFd>,
    limits: CgroupLimits,
}

/// Every context's cgroup.
pub struct Cgroups {
    backend: Option<Backend>,
    groups: Mutex<HashMap<String, Arc<Group>>>,
    failures: Mutex<HashMap<String, String>>,
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

    /// Creates (or updates) each context's cgroup; returns a warning per context whose
    /// limits are not in force.
    pub fn sync(&self, config: &Config) -> Vec<String> {
        let mut warnings = Vec::new();
        let Some(backend) = &self.backend else {
            for ctx in config.contexts.values().filter(|c| c.cgroup.any()) {
                let w = format!(
                    "contexts.{}: memory_max/pids_max/cpu_max NOT in force: this host offers \
                     no usable cgroup (neither v2 with memory, pids, cpu nor v1)",
                    ctx.name
                );
                self.failures_lock().insert(ctx.name.clone(), w.clone());
                warnings.push(w);
            }
            return warnings;
        };
        for ctx in config.contexts.values() {
            match create(backend, &ctx.name, &ctx.cgroup) {
                Ok((group, missing)) => {
                    self.lock().insert(ctx.name.clone(), Arc::new(group));
                    if missing.is_empty() {
                        self.failures_lock().remove(&ctx.name);
                    } else {
                        let w = format!(
                            "contexts.{}: {} NOT in force: {}",
                            ctx.name,
                            missing.join(", "),
                            "this host's cgroups lack the controller"
                        );
                        self.failures_lock().insert(ctx.name.clone(), w.clone());
                        warnings.push(w);
                    }
                }
                Err(e) => {
                    let w = format!("contexts.{}: no cgroup: {e}", ctx.name);
                    if ctx.cgroup.any() {
                        self.failures_lock().insert(ctx.name.clone(), w.clone());
                        warnings.push(w);
                    } else {
                        tracing::debug!("{w}");
                    }
                }
            }
        }
        self.lock()
            .retain(|name, _| config.contexts.contains_key(name));
        warnings
    }

    /// The `cgroup.procs` descriptors a launch into `ctx` writes itself to.
    pub fn for_context(&self, ctx: &Context) -> Option<Arc<Group>> {
        self.lock().get(&ctx.name).cloned()
    }

    /// Signals every process in the context's cgroup; returns how many were signalled.
    pub fn kill(&self, name: &str, signo: i32) -> usize {
        let Some(group) = self.lock().get(name).cloned() else {
            return 0;
        };
        let mut signalled = 0;
        // A process forking while we read the list would be missed: go round until a pass
        // finds no one (bounded, for a fork bomb under a non-fatal signal).
        for _ in 0..16 {
            let pids = group.pids();
            if pids.is_empty() {
                break;
            }
            for pid in &pids {
                // SAFETY: plain syscall.
                if unsafe { libc::kill(*pid, signo) } == 0 {
                    signalled += 1;
                }
            }
            if signo != libc::SIGKILL {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        signalled
    }

    /// The backend and limits in force for `ctx status`.
    pub fn describe(&self, ctx: &Context) -> Option<String> {
        let backend = self.backend.as_ref()?;
        let group = self.lock().get(&ctx.name).cloned()?;
        let kind = match backend {
            Backend::V2(_) => "cgroup v2",
            Backend::V1 { .. } => "cgroup v1",
        };
        let l = group.limits;
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

    pub fn warnings(&self) -> Vec<String> {
        let mut w: Vec<String> = self.failures_lock().values().cloned().collect();
        w.sort();
        w
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

    fn failures_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Group {
    /// Raw descriptors for the spawn plan.
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// The processes in the group (from the first hierarchy: all hold the same ones).
    pub fn pids(&self) -> Vec<i32> {
        let Some(dir) = self.dirs.first() else {
            return Vec::new();
        };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

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
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("ctx-"))
                .and_then(|p| p.parse::<u32>().ok())
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

fn join(base: &Path, rel: &str) -> PathBuf {
    base.join(rel.trim_start_matches('/'))
}

/// Makes `<broker cgroup>/ctx-<pid>/<context>` and sets its limits. Returns the group and
/// the limits this host cannot apply.
fn create(
    backend: &Backend,
    name: &str,
    limits: &CgroupLimits,
) -> io::Result<(Group, Vec<&'static str>)> {
    let leaf = format!("ctx-{}", std::process::id());
    let mut dirs = Vec::new();
    let mut missing = Vec::new();
    let make = |base: &Path| -> io::Result<PathBuf> {
        let parent = base.join(&leaf);
        let _ = std::fs::create_dir(&parent);
        let dir = parent.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(dir),
            Err(e) => Err(e),
        }
    };
    match backend {
        Backend::V2(base) => {
            // Controllers must be enabled for the children of each level we create under.
            let parent = base.join(&leaf);
            let _ = std::fs::create_dir(&parent);
            let _ = std::fs::write(base.join("cgroup.subtree_control"), "+memory +pids +cpu");
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
            let dir = make(base)?;
            if let Some(m) = limits.memory_max {
                std::fs::write(dir.join("memory.max"), m.to_string())?;
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            }
            if let Some(p) = limits.pids_max {
                std::fs::write(dir.join("pids.max"), p.to_string())?;
            }
            if let Some(c) = limits.cpu_max {
                let quota = CPU_PERIOD_US * c as u64 / 100;
                std::fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?;
            }
            dirs.push(dir);
        }
        Backend::V1 { memory, pids, cpu } => {
            // pids first: it is the list ctx kill reads.
            match pids {
                Some(base) => {
                    let dir = make(base)?;
                    let max = limits.pids_max.map_or("max".to_string(), |p| p.to_string());
                    std::fs::write(dir.join("pids.max"), max)?;
                    dirs.push(dir);
                }
                None if limits.pids_max.is_some() => missing.push("pids_max"),
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
                            std::fs::write(dir.join("memory.limit_in_bytes"), m.to_string())?;
                            // No swapping around the limit where the kernel accounts swap.
                            let _ = std::fs::write(&memsw, m.to_string());
                        }
                        None => {
                            let _ = std::fs::write(dir.join("memory.limit_in_bytes"), "-1");
                        }
                    }
                    dirs.push(dir);
                }
                None if limits.memory_max.is_some() => missing.push("memory_max"),
                None => {}
            }
            match cpu {
                Some(base) => {
                    let dir = make(base)?;
                    if let Some(c) = limits.cpu_max {
                        let quota = CPU_PERIOD_US * c as u64 / 100;
                        std::fs::write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                        std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
                    } else {
                        let _ = std::fs::write(dir.join("cpu.cfs_quota_us"), "-1");
                    }
                    dirs.push(dir);
                }
                None if limits.cpu_max.is_some() => missing.push("cpu_max"),
                None => {}
            }
        }
    }
    let mut procs = Vec::with_capacity(dirs.len());
    for d in &dirs {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("cgroup.procs"))?;
        procs.push(OwnedFd::from(f));
    }
    Ok((
        Group {
            dirs,
            procs,
            limits: *limits,
        },
        missing,
    ))
}
