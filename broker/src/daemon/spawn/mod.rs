//! The spawn path: everything a routed process needs is built into a [`SpawnPlan`] before
//! `fork`; the child then runs only async-signal-safe syscalls (the broker is a threaded
//! tokio process) and reports the first failing step through a close-on-exec pipe as
//! `(stage, errno)`, which the parent turns into a classified [`ExecFailure`].

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use ctx_protocol::{classify, errno_name, ExecFailure, Stage};

use super::exec_guard::Handover;

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// How the program is found.
pub enum Program {
    /// `execve` this path exactly (relative paths are relative to the cwd).
    Exact(CString),
    /// Try each candidate in order as `execvp` does: skip `ENOENT`/`ENOTDIR`, remember
    /// `EACCES`, and run a file without a shebang (`ENOEXEC`) through `/bin/sh`.
    Search(Vec<CString>),
}

/// Identity the child switches to.
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
}

impl SpawnPlan {
    /// What a relative program path is relative to, as the broker can reach it: the
    /// directory the child will be in (the caller's by its descriptor whenever one came,
    /// see `enter_cwd`).
    pub fn relative_base(&self) -> Option<std::path::PathBuf> {
        match (self.cwd_fd, &self.cwd) {
            (Some(fd), _) => Some(format!("/proc/self/fd/{fd}").into()),
            (None, Some(cwd)) => Some(std::path::PathBuf::from(OsStr::from_bytes(cwd.as_bytes()))),
            (None, None) => None,
        }
    }
}

pub struct SpawnPlan {
    pub program: Program,
    /// `/bin/sh` fallback for `ENOEXEC` also when `program` is exact (`execvp` with a '/').
    pub sh_fallback: bool,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: Option<CString>,
    /// The caller's working directory as a descriptor (`cwd = "inherit"`): entered when
    /// `cwd` is `None`, or when `cwd` names no directory any more (deleted or renamed
    /// since) or another one than the caller's (another mount namespace).
    pub cwd_fd: Option<RawFd>,
    /// `None`: keep the broker's own identity (unprivileged broker, same-uid context).
    pub identity: Option<Identity>,
    /// `(resource, soft, hard)` to set: the context's, and the caller's lower ones (see
    /// `inherit::child_rlimits`).
    pub rlimits: Vec<(i32, u64, u64)>,
    /// What else the caller's process would have passed on (see `inherit.rs`).
    pub inherited: Option<super::inherit::Carried>,
    /// `(source, target)`: the child gets `source` at number `target`.
    pub fds: Vec<(RawFd, i32)>,
    /// The PTY slave to make the controlling terminal (implies a new session).
    pub controlling_tty: Option<RawFd>,
    /// Without a terminal: lead a new session (the caller's child had called `setsid`),
    /// not only a new process group.
    pub new_session: bool,
    /// Drop the capability bounding set and ambient set (needs CAP_SETPCAP: root).
    pub drop_caps: bool,
    /// The context's long-lived namespaces to join (see `namespaces.rs`).
    pub namespaces: Option<EnterNamespaces>,
    /// The files the child writes itself to to join the context's cgroup (one per v1
    /// hierarchy; see `cgroups.rs`).
    pub cgroup_join: Vec<RawFd>,
    /// v2: the context's cgroup directory, which the child is started in directly
    /// (`clone3` with `CLONE_INTO_CGROUP`); `cgroup_join` is then written only where
    /// this kernel or architecture cannot do that.
    pub cgroup_dir: Option<RawFd>,
    /// The Landlock rulesets to restrict the child with, in order (see `landlock.rs`): the
    /// context's, and the per-launch one of `enforce = true`.
    pub landlock: [Option<RawFd>; 2],
    /// Add `LISTEN_PID=<the routed process's own pid>` (systemd socket passing). Only the
    /// child knows that pid (inside a PID namespace it is not the one the broker sees).
    pub listen_pid: bool,
    /// A supervised launch (`enforce = true`, or a program that can name the broker as
    /// its parent): install `supervisor_filter` and hand its listener to the broker's
    /// supervisor (see `exec_guard.rs`) just before the exec.
    pub exec_guard: Option<Handover>,
    /// Built by the broker before the clone (`seccomp::supervised_filter`).
    pub supervisor_filter: Vec<libc::sock_filter>,
    /// The program runs with the broker's own euid and can name the broker's pid: install
    /// the seccomp filter that keeps it from making the broker a file's owner, which would
    /// let it (or anyone sharing the file) aim any signal at it as SIGIO (`seccomp.rs`).
    pub owner_filter: bool,
}

/// A holder's pidfd and the `CLONE_NEW*` flags to `setns` into.
#[derive(Debug, Clone, Copy)]
pub struct EnterNamespaces {
    pub pidfd: RawFd,
    pub flags: i32,
}

/// A started child: its pid, a pidfd to wait on, and the error pipe's read end.
pub struct Forked {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    pub report: OwnedFd,
}

/// One failed step, as the child reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildFailure {
    pub stage: Stage,
    pub errno: i32,
}

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// Bytes of one error-pipe report: stage, three pad bytes, errno (native endian).
const REPORT_LEN: usize = 8;

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// The candidates `execvp` would try for `file` along `path` (empty entries mean the cwd).
pub fn search_candidates(file: &[u8], path: &[u8]) -> Vec<CString> {
    if file.contains(&b'/') {
        return CString::new(file).into_iter().collect();
    }
    path.split(|&b| b == b':')
        .filter_map(|dir| {
            let mut full = Vec::with_capacity(dir.len() + 1 + file.len());
            if dir.is_empty() {
                full.extend_from_slice(b"./");
            } else {
                full.extend_from_slice(dir);
                if !dir.ends_with(b"/") {
                    full.push(b'/');
                }
            }
            full.extend_from_slice(file);
            CString::new(full).ok()
        })
        .collect()
}

pub fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

pub fn cstring_os(s: &OsStr) -> io::Result<CString> {
    cstring(s.as_bytes())
}

/// Whether the child's exec will most likely succeed: the first candidate that exists is a
/// regular file with an execute bit for the identity the child takes, as `execvp` would
/// find it. Directory search rights, ACLs, mount options and Landlock rules are not
/// considered; a wrong guess only means the failure reaches the caller late (see
/// `Reply::Accepted`), so this errs on the side of "no" when unsure.
pub fn exec_likely(plan: &SpawnPlan) -> bool {
    let searching = matches!(plan.program, Program::Search(_));
    let candidates: &[CString] = match &plan.program {
        Program::Exact(p) => std::slice::from_ref(p),
        Program::Search(list) => list,
    };
    let base = plan.relative_base();
    for cand in candidates {
        let bytes = cand.as_bytes();
        let relative = bytes.first().is_some_and(|&c| c != b'/');
        let path = match &base {
            Some(base) if relative => base.join(OsStr::from_bytes(bytes)),
            _ => std::path::PathBuf::from(OsStr::from_bytes(bytes)),
        };
        // Through a descriptor the kernel checks no directory above it, so neither does
        // this guess.
        let above = match (&plan.cwd_fd, &base) {
            (Some(_), Some(base)) if relative => base.ancestors().count() - 1,
            _ => 0,
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e)
                if searching && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) =>
            {
                continue
            }
            Err(_) => return false,
        };
        if !meta.is_file() {
            return false;
        }
        let runnable = match &plan.identity {
            // The directories on the way must be searchable by that uid too.
            Some(id) => {
                let dirs = path.ancestors().count() - 1 - above;
                may_execute(&meta, id)
                    && path.ancestors().skip(1).take(dirs).all(|dir| {
                        dir.as_os_str().is_empty()
                            || std::fs::metadata(dir).is_ok_and(|m| may_execute(&m, id))
                    })
            }
            None => {
                let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
                    return false;
                };
                // SAFETY: a NUL-terminated path; faccessat only reads it.
                unsafe {
                    libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::X_OK, libc::AT_EACCESS) == 0
                }
            }
        };
        // A search goes on past a file it may not run (execvp remembers EACCES), but the
        // guess stays "no" then: the answer depends on what comes later on PATH.
        if !runnable {
            return false;
        }
        // Neither ELF nor `#!`: the kernel says ENOEXEC, which only a `/bin/sh` fallback
        // turns into a run (the caller's own shell may want to see the ENOEXEC).
        return known_format(&path) || searching || plan.sh_fallback;
    }
    false
}

/// Execute (search, for a directory) permission by the mode bits, for `id`.
fn may_execute(meta: &std::fs::Metadata, id: &Identity) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode();
    if id.uid == 0 {
        // Root needs one x bit on a file; directories it may always search.
        return meta.is_dir() || mode & 0o111 != 0;
    }
    if meta.uid() == id.uid {
        mode & 0o100 != 0
    } else if meta.gid() == id.gid || id.groups.contains(&meta.gid()) {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// Whether the file starts like something the kernel executes: an ELF image or a script.
fn known_format(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    // The context chose the path: never a FIFO's or a device's open() as root.
    let Ok(mut f) = super::untrusted_path::open_regular(path) else {
        // Unreadable by the broker (root squash, FUSE), or not a regular file any more:
        // no basis for a guess.
        return false;
    };
    let n = f.read(&mut head).unwrap_or(0);
    (n == 4 && head.starts_with(b"\x7fELF")) || head[..n].starts_with(b"#!")
}

/// Forks and runs `plan` in the child. The parent keeps ownership of the plan's
/// descriptors (close them once this returns).
pub fn fork_exec(plan: &SpawnPlan) -> io::Result<Forked> {
    let argv: Vec<*const libc::c_char> = plan
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // "LISTEN_PID=" and room for any pid; the child writes its pid in place.
    let mut listen_pid = *b"LISTEN_PID=\0\0\0\0\0\0\0\0\0\0\0\0";
    let listen_pid_ptr: *mut u8 = if plan.listen_pid {
        listen_pid.as_mut_ptr()
    } else {
        std::ptr::null_mut()
    };
    let envp: Vec<*const libc::c_char> = plan
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(
            plan.listen_pid
                .then_some(listen_pid_ptr as *const libc::c_char),
        )
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // "/bin/sh", <script>, argv[1..], NULL: slot 1 is filled in by the child.
    let sh = c"/bin/sh";
    let mut sh_argv: Vec<*const libc::c_char> = Vec::with_capacity(argv.len() + 2);
    sh_argv.push(sh.as_ptr());
    sh_argv.push(std::ptr::null());
    sh_argv.extend(argv.iter().skip(1));
    if plan.argv.is_empty() {
        sh_argv.push(std::ptr::null());
    }
    let candidates: Vec<*const libc::c_char> = match &plan.program {
        Program::Exact(p) => vec![p.as_ptr()],
        Program::Search(list) => list.iter().map(|c| c.as_ptr()).collect(),
    };
    let searching = matches!(plan.program, Program::Search(_));
    let last_cap = last_capability();
    let floor = plan.fds.iter().map(|&(_, t)| t).max().unwrap_or(2).max(2) + 1;
    // The targets in order, for the close loop (one close_range per gap between them),
    // and room for the child's moved copies of the sources: any number of descriptors,
    // with nothing allocated in the child.
    let mut targets: Vec<i32> = plan.fds.iter().map(|&(_, t)| t).collect();
    targets.sort_unstable();
    targets.dedup();
    let mut moved: Vec<RawFd> = vec![-1; plan.fds.len()];

    let mut pipe = [0; 2];
    // Non-blocking from the start: the broker reads it without waiting, and the child's one
    // 8-byte report always fits in the empty pipe.
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both ends were just created and are owned here.
    let (report_r, report_w) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };

    let args = ChildArgs {
        plan,
        report: report_w.as_raw_fd(),
        floor,
        targets: &targets,
        moved: moved.as_mut_ptr(),
        candidates: &candidates,
        searching,
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        sh_argv: sh_argv.as_mut_ptr(),
        last_cap,
        listen_pid: listen_pid_ptr,
        grandchild: std::sync::atomic::AtomicI32::new(0),
        grand_stack: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
        born_in_cgroup: std::sync::atomic::AtomicBool::new(false),
    };
    if BROKER_PID.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        BROKER_PID.store(
            std::process::id() as i32,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    let (mut pid, mut pidfd) = clone_vfork(&args)?;
    drop(report_w);
    let grandchild = args.grandchild.load(std::sync::atomic::Ordering::Acquire);
    if grandchild > 0 {
        // The first child exited as soon as the grandchild exec'd (or failed): reap it and
        // watch the grandchild, our own child thanks to CLONE_PARENT. It cannot be reaped
        // by anyone else before pidfd_open, so its pid cannot have been reused.
        // SAFETY: plain syscalls; `pidfd` is the first child's, which we own.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PIDFD,
                pidfd as libc::id_t,
                &mut info,
                libc::WEXITED | libc::__WALL,
            );
            libc::close(pidfd);
            let fd = libc::syscall(libc::SYS_pidfd_open, grandchild, 0) as RawFd;
            if fd < 0 {
                let e = io::Error::last_os_error();
                libc::kill(grandchild, libc::SIGKILL);
                return Err(e);
            }
            pidfd = fd;
        }
        pid = grandchild;
    }
    if plan.controlling_tty.is_none() && !plan.new_session {
        // Also from the parent, so a kill of the group cannot race the child's setpgid.
        // SAFETY: plain syscall on our own child.
        unsafe { libc::setpgid(pid, pid) };
    }
    // SAFETY: pidfd_open returned a fresh descriptor we own (it is close-on-exec).
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Forked {
        pid,
        pidfd,
        report: report_r,
    })
}

/// Decodes what the child wrote to the error pipe: nothing (exec succeeded) or one report.
pub fn parse_report(buf: &[u8]) -> Option<ChildFailure> {
    if buf.len() < REPORT_LEN {
        return None;
    }
    let stage = Stage::from_u8(buf[0]).unwrap_or(Stage::Exec);
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    Some(ChildFailure { stage, errno })
}

impl ChildFailure {
    /// `detail` says what the errno alone does not (which path, which uid); the client
    /// prints it after the kind and errno name.
    pub fn into_exec_failure(self, detail: String) -> ExecFailure<'static> {
        ExecFailure {
            kind: classify(self.stage, self.errno),
            stage: self.stage,
            errno: self.errno,
            errno_name: errno_name(self.errno).into(),
            message: detail.into(),
        }
    }
}

/// Highest capability number this kernel knows (read once).
fn last_capability() -> i32 {
    static LAST: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40)
    })
}

/// Everything the child reads; it lives on the parent's stack, which the parent does not
/// touch until the child has exec'd or exited (CLONE_VFORK).
struct ChildArgs<'a> {
    plan: &'a SpawnPlan,
    report: RawFd,
    floor: i32,
    /// Every target descriptor number, ascending, each once.
    targets: &'a [i32],
    /// `plan.fds.len()` slots for the child's copies of the sources.
    moved: *mut RawFd,
    candidates: &'a [*const libc::c_char],
    searching: bool,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    sh_argv: *mut *const libc::c_char,
    last_cap: i32,
    /// `LISTEN_PID=` buffer to complete with our pid, or null.
    listen_pid: *mut u8,
    /// Written by the first child when it had to clone again to enter a PID namespace: the
    /// pid (in the broker's namespace) of the process that runs the program.
    grandchild: std::sync::atomic::AtomicI32,
    /// Top of the second half of the stack mapping, for that second clone.
    grand_stack: std::sync::atomic::AtomicPtr<libc::c_void>,
    /// Set by the parent before the clone: the child was born in its cgroup and must not
    /// write itself into it.
    born_in_cgroup: std::sync::atomic::AtomicBool,
}

/// Set once the whole broker runs with an empty capability bounding set: every thread, and
/// so every spawn child, inherits it, and the child need not drop 41 capabilities one
/// `prctl` (and one credential commit) at a time.
static BOUNDING_DROPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Empties the capability bounding set of the calling thread, which must be the only one:
/// threads created afterwards inherit it. The broker keeps its own effective capabilities
/// (the bounding set only limits what an exec can grant), and it never execs anything but
/// routed programs, which must get none. Without CAP_SETPCAP (unprivileged broker) this
/// does nothing and the spawn child tries itself.
pub fn drop_bounding_set_process_wide() {
    let last = last_capability();
    let mut all = true;
    for cap in 0..=last {
        // SAFETY: plain prctl on our own credentials.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if r < 0 && errno_now() != libc::EINVAL {
            all = false;
        }
    }
    BOUNDING_DROPPED.store(all, std::sync::atomic::Ordering::Relaxed);
}

/// The soft `RLIMIT_NOFILE` the broker started with, which routed programs get back (the
/// broker raises its own to the hard limit); zero: leave the inherited one.
static CHILD_NOFILE_SOFT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Routed programs start with soft `RLIMIT_NOFILE` `soft` (capped by the hard limit), as
/// they would have without the broker raising its own.
pub fn set_child_nofile_soft(soft: u64) {
    CHILD_NOFILE_SOFT.store(soft, std::sync::atomic::Ordering::Relaxed);
}

/// The soft `RLIMIT_NOFILE` routed programs start with; 0: the broker's own.
pub fn child_nofile_soft() -> u64 {
    CHILD_NOFILE_SOFT.load(std::sync::atomic::Ordering::Relaxed)
}

fn errno_now() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Signals (bit n-1 for signal n) whose disposition is not the default in the broker: its
/// handlers (tokio's TERM/INT/HUP) and ignores (std's SIGPIPE). The spawn child resets
/// exactly these instead of all 64. Zero means "not taken": the child resets everything.
static NON_DEFAULT_SIGNALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records which signals the broker handles or ignores. Call it after the last signal
/// handler is installed (the server does, once its handlers are in place); a handler
/// installed later would otherwise survive into a child until its exec.
pub fn snapshot_signal_dispositions() {
    let mut mask = 0u64;
    for sig in 1..=libc::SIGRTMAX().min(64) {
        if raw_sigaction(sig, None).is_some_and(|handler| handler != libc::SIG_DFL) {
            mask |= 1 << (sig - 1);
        }
    }
    // A set bit that is never used is harmless; bit 63 marks the snapshot as taken.
    NON_DEFAULT_SIGNALS.store(mask | 1 << 63, std::sync::atomic::Ordering::Relaxed);
}

/// The kernel's `struct sigaction` (x86_64, aarch64).
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// `rt_sigaction` itself: glibc's wrapper refuses its own signals 32 and 33 (EINVAL), yet
/// a broker can inherit them ignored, and an ignored signal stays ignored across exec.
/// With `set`, installs that handler (no flags, empty mask). Returns the previous handler.
/// Async-signal-safe.
pub(super) fn raw_sigaction(
    sig: i32,
    set: Option<libc::sighandler_t>,
) -> Option<libc::sighandler_t> {
    let act = set.map(|handler| KernelSigaction {
        handler,
        flags: 0,
        restorer: 0,
        mask: 0,
    });
    let act_ptr = act
        .as_ref()
        .map_or(std::ptr::null(), |a| a as *const KernelSigaction);
    let mut old = KernelSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: valid pointers to kernel-layout structs (or null); 8 is the kernel's sigset
    // size on these architectures.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            act_ptr,
            &mut old as *mut KernelSigaction,
            8usize,
        )
    };
    (r == 0).then_some(old.handler)
}

/// The broker's pid, for the child's die-with-the-broker check (the child shares our
/// memory, so it reads this without a syscall and without the race of asking `getppid`
/// before the request is in force).
static BROKER_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Bytes of the child's own stack; the child path uses a few KiB.
const CHILD_STACK: usize = 256 * 1024;

/// The child's stack, kept per thread from one launch to the next: CLONE_VFORK returns
/// only once the child has exec'd or exited, so the mapping is free again by then. A fresh
/// mmap and munmap per launch cost page faults and, the broker being multi-threaded, a TLB
/// shoot-down IPI to the other CPUs, which is slow on a virtual machine.
struct ChildStack {
    base: std::cell::Cell<*mut libc::c_void>,
    size: std::cell::Cell<usize>,
}

thread_local! {
    static CHILD_STACKS: ChildStack = const {
        ChildStack {
            base: std::cell::Cell::new(std::ptr::null_mut()),
            size: std::cell::Cell::new(0),
        }
    };
}

/// A fresh private mapping of `size` bytes for a cloned child's stack; the caller unmaps it.
pub(crate) fn map_stack(size: usize) -> io::Result<*mut libc::c_void> {
    // SAFETY: a new anonymous mapping, touching no existing memory.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(base)
    }
}

impl ChildStack {
    /// The base of this thread's stack mapping, at least `size` bytes long.
    fn take(size: usize) -> io::Result<*mut libc::c_void> {
        CHILD_STACKS.with(|s| {
            if s.size.get() >= size {
                return Ok(s.base.get());
            }
            s.release();
            let base = map_stack(size)?;
            s.base.set(base);
            s.size.set(size);
            Ok(base)
        })
    }

    fn release(&self) {
        if self.size.get() > 0 {
            // SAFETY: our own mapping, which no child uses any more (see `take`).
            unsafe { libc::munmap(self.base.get(), self.size.get()) };
            self.size.set(0);
        }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        self.release();
    }
}

/// Starts the child the way posix_spawn does: sharing our memory (no page tables to copy,
/// which a fork of a threaded tokio process pays on every launch) on a stack of its own,
/// with this thread suspended until the child has exec'd or exited. All signals are
/// blocked around it so that none of the broker's handlers can run in the child before it
/// has reset them. Returns the pid and a pidfd obtained atomically with CLONE_PIDFD.
fn clone_vfork(args: &ChildArgs<'_>) -> io::Result<(libc::pid_t, RawFd)> {
    let twice = args
        .plan
        .namespaces
        .is_some_and(|ns| ns.flags & libc::CLONE_NEWPID != 0);
    let size = if twice { 2 * CHILD_STACK } else { CHILD_STACK };
    let stack = ChildStack::take(size)?;
    if twice {
        // The grandchild's stack is the lower half; the first child uses the upper one.
        // SAFETY: inside the mapping.
        let mid = unsafe { (stack as *mut u8).add(CHILD_STACK) };
        args.grand_stack
            .store(mid.cast(), std::sync::atomic::Ordering::Release);
    }
    // SAFETY: sigset_t is plain data, filled by sigfillset/pthread_sigmask.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut pidfd: libc::c_int = -1;
    // SAFETY: the stack top is inside the mapping (stacks grow down on x86_64/aarch64); the
    // child runs `child_entry`, which only makes async-signal-safe calls on memory prepared
    // before this point and ends in execve or _exit; CLONE_VFORK keeps this thread (and so
    // `args` and the stack mapping) in place until then.
    let arg = args as *const ChildArgs as *mut libc::c_void;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD;
    // SAFETY: the stack top is inside the mapping (stacks grow down on x86_64/aarch64); the
    // child runs `child_entry`, which only makes async-signal-safe calls on memory prepared
    // before this point and ends in execve or _exit; CLONE_VFORK keeps this thread (and so
    // `args` and the stack mapping) in place until then.
    let pid = unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let top = (stack as *mut u8).add(size) as *mut libc::c_void;
        let mut pid = -1;
        if let Some(dir) = args.plan.cgroup_dir {
            args.born_in_cgroup
                .store(true, std::sync::atomic::Ordering::Relaxed);
            // Any refusal (pids_max reached, say) is retried the old way below, whose write
            // reports it at the cgroup step as on every other host.
            if let Ok(p) = clone3_into_cgroup(flags, stack, size, dir, arg, &mut pidfd) {
                pid = p;
            }
        }
        if pid < 0 {
            args.born_in_cgroup
                .store(false, std::sync::atomic::Ordering::Relaxed);
            pid = libc::clone(
                child_entry,
                top,
                flags | libc::SIGCHLD,
                arg,
                &mut pidfd as *mut libc::c_int,
            );
        }
        let err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(err);
        }
        pid
    };
    Ok((pid, pidfd))
}

/// Set once `clone3` with `CLONE_INTO_CGROUP` proved missing (kernel before 5.7).
static CLONE3_MISSING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `struct clone_args` of `clone3(2)` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7), a 64-bit flag only `clone3` takes.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Like the `libc::clone` in `clone_vfork`, but the child starts as a member of the cgroup
/// `dir`. Moving it in afterwards through `cgroup.procs` takes the kernel's threadgroup
/// lock for writing, which waits for an RCU grace period on a quiet host (5-30 ms).
/// glibc has no `clone3` wrapper that runs a function on a new stack, so the child's first
/// instructions are ours: a few lines of assembly, x86_64 only (elsewhere: ENOSYS, and the
/// caller writes `cgroup.procs`).
///
/// # Safety
/// As for `libc::clone` with CLONE_VM: `stack` must be a mapping of `size` bytes nobody
/// else uses until the child execs or exits, and `entry` must never return.
unsafe fn clone3_into_cgroup(
    flags: i32,
    stack: *mut libc::c_void,
    size: usize,
    dir: RawFd,
    arg: *mut libc::c_void,
    pidfd: &mut libc::c_int,
) -> io::Result<libc::pid_t> {
    if CLONE3_MISSING.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    let cl = CloneArgs {
        flags: flags as u32 as u64 | CLONE_INTO_CGROUP,
        pidfd: pidfd as *mut libc::c_int as u64,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack as u64,
        stack_size: size as u64,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: dir as u64,
    };
    #[cfg(target_arch = "x86_64")]
    {
        let ret: i64;
        let entry: extern "C" fn(*mut libc::c_void) -> libc::c_int = child_entry;
        // The kernel starts the child at the instruction after `syscall` with rax = 0, the
        // stack pointer at `stack + size` (16-byte aligned: the top of a mapping) and every
        // other register as the parent had it. So it finds the entry and its argument in
        // r12 and r13, calls it on its own stack, and never comes back into this frame,
        // which belongs to the suspended parent. `exit` is the end should `entry` return.
        // SAFETY: see the function's contract; the parent path is a plain syscall.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r13",
                "call r12",
                "mov edi, eax",
                "mov eax, {exit}",
                "syscall",
                "ud2",
                "2:",
                exit = const libc::SYS_exit,
                inlateout("rax") libc::SYS_clone3 => ret,
                in("rdi") &cl as *const CloneArgs,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") entry,
                in("r13") arg,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        if ret < 0 {
            let err = -ret as i32;
            // No clone3 (before 5.3), or one without CLONE_INTO_CGROUP (5.3-5.6).
            if matches!(err, libc::ENOSYS | libc::EINVAL | libc::E2BIG) {
                CLONE3_MISSING.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            return Err(io::Error::from_raw_os_error(err));
        }
        Ok(ret as libc::pid_t)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (cl, arg);
        CLONE3_MISSING.store(true, std::sync::atomic::Ordering::Relaxed);
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
}

extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildArgs clone_vfork passed, alive until we exec or exit.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        reset_signal_handlers();
        if let Some(ns) = a.plan.namespaces {
            if libc::setns(ns.pidfd, ns.flags) < 0 {
                fail(a.report, Stage::Namespace, errno());
            }
            if ns.flags & libc::CLONE_NEWPID != 0 {
                // Only our children are born in the joined PID namespace: clone once more,
                // as a sibling (CLONE_PARENT) so the broker waits on it directly.
                let top = a.grand_stack.load(std::sync::atomic::Ordering::Acquire);
                let pid = libc::clone(
                    grandchild_entry,
                    top,
                    libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT,
                    arg,
                );
                if pid < 0 {
                    fail(a.report, Stage::Namespace, errno());
                }
                a.grandchild
                    .store(pid, std::sync::atomic::Ordering::Release);
                libc::_exit(0);
            }
        }
        run_child(a)
    }
}

extern "C" fn grandchild_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: as for child_entry: the broker thread and the first child are both suspended
    // (CLONE_VFORK) until this process execs or exits.
    unsafe { run_child(&*(arg as *const ChildArgs)) }
}

unsafe fn run_child(a: &ChildArgs) -> ! {
    child(
        a.plan,
        a.report,
        a.floor,
        a.targets,
        a.moved,
        a.candidates,
        a.searching,
        a.argv,
        a.envp,
        a.sh_argv,
        a.last_cap,
        a.listen_pid,
        a.born_in_cgroup.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// Nothing of the broker's signal state may leak (std ignores SIGPIPE, tokio handles
/// TERM/INT/HUP). Handlers are reset while every signal is still blocked: in a child
/// sharing the broker's memory, a broker handler must never run.
unsafe fn reset_signal_handlers() {
    let taken = NON_DEFAULT_SIGNALS.load(std::sync::atomic::Ordering::Relaxed);
    for sig in 1..=libc::SIGRTMAX() {
        let listed = sig > 63 || taken & (1 << 63) == 0 || taken & (1 << (sig - 1)) != 0;
        if listed && sig != libc::SIGKILL && sig != libc::SIGSTOP {
            raw_sigaction(sig, Some(libc::SIG_DFL));
        }
    }
}

/// Installs the supervised filter and sends its listener to the broker's supervisor with
/// the launch's `token`, then closes our copies: the routed program must never hold the
/// listener (it could answer its own notifications). Async-signal-safe (`fdpass` is raw
/// syscalls on the stack).
unsafe fn install_exec_guard(report: RawFd, sock: RawFd, token: u64, filter: &[libc::sock_filter]) {
    let listener = match super::seccomp::install_supervised(filter) {
        Ok(fd) => fd,
        Err(e) => fail(report, Stage::Seccomp, e),
    };
    let sent = ctx_protocol::fdpass::send_with_fds(sock, &token.to_ne_bytes(), &[listener]);
    libc::close(listener);
    libc::close(sock);
    if let Err(e) = sent {
        fail(
            report,
            Stage::Seccomp,
            e.raw_os_error().unwrap_or(libc::EIO),
        );
    }
}

/// Enters the working directory: `path` as the context's uid sees it, or the caller's
/// directory by its descriptor `fd` (-1: none) where the path names no directory any more
/// or another one. A path the uid may not search fails here (a clear bad-cwd error) rather
/// than falling back. Async-signal-safe; the errno of the failing call.
unsafe fn enter_cwd(path: Option<&std::ffi::CStr>, fd: RawFd) -> Result<(), i32> {
    let by_fd = |fd: RawFd| {
        if libc::fchdir(fd) < 0 {
            Err(errno())
        } else {
            Ok(())
        }
    };
    match (path, fd) {
        (None, -1) => Ok(()),
        (None, fd) => by_fd(fd),
        (Some(p), fd) => {
            if libc::chdir(p.as_ptr()) == 0 {
                if fd < 0 || same_dir(fd) {
                    return Ok(());
                }
                return by_fd(fd);
            }
            match errno() {
                libc::ENOENT | libc::ENOTDIR if fd >= 0 => by_fd(fd),
                e => Err(e),
            }
        }
    }
}

/// Whether the working directory is the directory `fd` refers to.
unsafe fn same_dir(fd: RawFd) -> bool {
    let mut here: libc::stat = std::mem::zeroed();
    let mut there: libc::stat = std::mem::zeroed();
    libc::stat(c".".as_ptr(), &mut here) == 0
        && libc::fstat(fd, &mut there) == 0
        && (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
}

/// Writes `(stage, errno)` to the error pipe and exits. Async-signal-safe.
unsafe fn fail(report: RawFd, stage: Stage, errno: i32) -> ! {
    let mut buf = [0u8; REPORT_LEN];
    buf[0] = stage as u8;
    buf[4..8].copy_from_slice(&errno.to_ne_bytes());
    libc::write(report, buf.as_ptr().cast(), REPORT_LEN);
    libc::_exit(127)
}

/// Writes `n` in decimal at `out` (room for 10 digits and a NUL). Async-signal-safe.
unsafe fn write_decimal(out: *mut u8, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        *out.add(i) = digits[len - 1 - i];
    }
    *out.add(len) = 0;
}

unsafe fn errno() -> i32 {
    *libc::__errno_location()
}

/// The child's half of the spawn path. Only syscalls on memory prepared before fork.
#[allow(clippy::too_many_arguments)]
unsafe fn child(
    plan: &SpawnPlan,
    report: RawFd,
    floor: i32,
    targets: &[i32],
    moved: *mut RawFd,
    candidates: &[*const libc::c_char],
    searching: bool,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    sh_argv: *mut *const libc::c_char,
    last_cap: i32,
    listen_pid: *mut u8,
    born_in_cgroup: bool,
) -> ! {
    for &join in plan.cgroup_join.iter().filter(|_| !born_in_cgroup) {
        // "0" is the writer: this process, before anything else runs, so every process
        // of the launch is counted and killable.
        if libc::write(join, b"0".as_ptr().cast(), 1) < 0 {
            fail(report, Stage::Cgroup, errno());
        }
    }
    if let Some(carried) = &plan.inherited {
        // In the cgroup already (its cpuset bounds the affinity), still root and not yet
        // restricted by Landlock (see the function).
        super::inherit::apply_scheduling(carried);
    }
    for ruleset in plan.landlock.iter().flatten() {
        // First, so that everything after (the exec above all) runs in the domain.
        // landlock_restrict_self needs no_new_privs unless we hold CAP_SYS_ADMIN.
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            fail(report, Stage::NoNewPrivs, errno());
        }
        if libc::syscall(libc::SYS_landlock_restrict_self, *ruleset, 0) < 0 {
            fail(report, Stage::Landlock, errno());
        }
    }
    if !listen_pid.is_null() {
        // After the last clone: this is the pid the program will see as its own.
        write_decimal(listen_pid.add(b"LISTEN_PID=".len()), libc::getpid() as u32);
    }
    // Handlers were reset by the entry point; now unblock what the broker blocked.
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());

    match plan.controlling_tty {
        Some(tty) => {
            if libc::setsid() < 0 {
                fail(report, Stage::Session, errno());
            }
            if libc::ioctl(tty, libc::TIOCSCTTY, 0) < 0 {
                fail(report, Stage::Terminal, errno());
            }
        }
        None if plan.new_session => {
            if libc::setsid() < 0 {
                fail(report, Stage::Session, errno());
            }
        }
        None => {
            if libc::setpgid(0, 0) < 0 {
                fail(report, Stage::Session, errno());
            }
        }
    }

    // Move the error pipe and every source above all targets, then place the targets, so
    // that no dup2 overwrites a source still needed.
    let report = libc::fcntl(report, libc::F_DUPFD_CLOEXEC, floor);
    if report < 0 {
        libc::_exit(127);
    }
    // Above the floor too: the caller's cwd descriptor is entered after the uid switch,
    // so that the context's uid must be allowed in.
    let cwd_fd = match plan.cwd_fd {
        Some(fd) => {
            let moved = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor);
            if moved < 0 {
                fail(report, Stage::Chdir, errno());
            }
            moved
        }
        None => -1,
    };
    let guard_sock = match plan.exec_guard {
        Some(h) => {
            let fd = libc::fcntl(h.sock, libc::F_DUPFD_CLOEXEC, floor);
            if fd < 0 {
                fail(report, Stage::Seccomp, errno());
            }
            fd
        }
        None => -1,
    };
    // `moved` has one slot per source, prepared by the parent.
    for (i, &(src, _)) in plan.fds.iter().enumerate() {
        let fd = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, floor);
        if fd < 0 {
            fail(report, Stage::Fds, errno());
        }
        *moved.add(i) = fd;
    }
    for (i, &(_, target)) in plan.fds.iter().enumerate() {
        if libc::dup2(*moved.add(i), target) < 0 {
            fail(report, Stage::Fds, errno());
        }
    }
    // Everything below the floor that is not a target is closed now; everything above is
    // marked close-on-exec (the moved copies, the error pipe, anything the broker holds).
    // One close_range per gap between targets (a caller's fd 255 must not cost 250 closes).
    let close_gap = |first: i32, last: i32| {
        if libc::close_range(first as u32, last as u32, 0) < 0 {
            for f in first..=last {
                libc::close(f);
            }
        }
    };
    let mut next = 0;
    for &t in targets {
        if t > next {
            close_gap(next, t - 1);
        }
        next = t + 1;
    }
    if next < floor {
        close_gap(next, floor - 1);
    }
    if libc::close_range(floor as u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) < 0 {
        // Kernels before 5.11: fall back to marking one by one up to a sane bound.
        for fd in floor..4096 {
            if fd != report {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }

    let nofile_soft = CHILD_NOFILE_SOFT.load(std::sync::atomic::Ordering::Relaxed);
    if nofile_soft > 0 {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // A failure leaves the broker's higher soft limit, which is harmless: no report.
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur > nofile_soft {
            lim.rlim_cur = nofile_soft;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    for &(resource, soft, hard) in &plan.rlimits {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        if libc::setrlimit(resource as _, &lim) < 0 {
            fail(report, Stage::Rlimits, errno());
        }
    }

    if plan.drop_caps && !BOUNDING_DROPPED.load(std::sync::atomic::Ordering::Relaxed) {
        for cap in 0..=last_cap {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno() != libc::EINVAL {
                fail(report, Stage::Capabilities, errno());
            }
        }
    }
    // Always, and needing no privilege: an unprivileged broker may hold ambient
    // capabilities (a unit's AmbientCapabilities=), which would otherwise survive the
    // execve. Without them and with no_new_privs, the program starts with none.
    libc::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL,
        0,
        0,
        0,
    );

    if let Some(id) = &plan.identity {
        // Raw syscalls, not glibc's wrappers: those broadcast the change to every thread in
        // glibc's thread list, which in a CLONE_VM child is the broker's; they signal them
        // with tgkill(getpid(), tid), and inside a PID namespace that getpid() can equal one
        // of those tids (this very process): the wrapper then waits forever for an ack. We
        // are a single-threaded process, so the plain syscalls change all there is.
        if libc::syscall(libc::SYS_setgroups, id.groups.len(), id.groups.as_ptr()) < 0 {
            fail(report, Stage::Groups, errno());
        }
        if libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid) < 0 {
            fail(report, Stage::SetGid, errno());
        }
        if libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid) < 0 {
            fail(report, Stage::SetUid, errno());
        }
    }

    // Die with the broker: a broker killed by SIGKILL cannot kill its routed
    // groups, so the routed process asks the kernel to kill it when the broker (its parent)
    // dies. Set after the uid switch, which clears it; then the parent is checked again,
    // as it may have died before the request was in force. A parent outside our PID
    // namespace reads as 0 and cannot be checked (that namespace's init dies with the
    // broker anyway).
    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == 0 {
        let parent = libc::getppid();
        if parent != 0 && parent != BROKER_PID.load(std::sync::atomic::Ordering::Relaxed) {
            libc::_exit(127);
        }
    }

    if let Err(e) = enter_cwd(plan.cwd.as_deref(), cwd_fd) {
        fail(report, Stage::Chdir, e);
    }

    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
        fail(report, Stage::NoNewPrivs, errno());
    }
    if plan.owner_filter {
        if let Err(e) = super::seccomp::install_owner_filter() {
            fail(report, Stage::Seccomp, e);
        }
    }

    if let Some(guard) = plan.exec_guard {
        // Last, so that it sees exactly the execs below and everything after them; the
        // guard lets the spawn child's own execs through (it still shares our memory).
        install_exec_guard(report, guard_sock, guard.token, &plan.supervisor_filter);
    }

    if let Some(carried) = &plan.inherited {
        super::inherit::apply_signals(carried);
    }

    let mut denied = false;
    let mut last = libc::ENOENT;
    for &cand in candidates {
        libc::execve(cand, argv, envp);
        let e = errno();
        if e == libc::ENOEXEC && (searching || plan.sh_fallback) {
            *sh_argv.add(1) = cand;
            libc::execve(c"/bin/sh".as_ptr(), sh_argv as *const _, envp);
            fail(report, Stage::Exec, errno());
        }
        if !searching {
            fail(report, Stage::Exec, e);
        }
        match e {
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ETIMEDOUT | libc::ENODEV => {
                last = e
            }
            libc::EACCES => denied = true,
            _ => fail(report, Stage::Exec, e),
        }
    }
    fail(
        report,
        Stage::Exec,
        if denied { libc::EACCES } else { last },
    )
}

/// What the broker's tests of the spawn path share.
#[cfg(test)]
pub mod testing {
    use super::*;

    /// A plan that runs `argv` (an absolute program path first) as the broker itself, with
    /// these descriptors and nothing else set.
    pub fn test_plan(argv: &[&str], fds: Vec<(RawFd, i32)>) -> SpawnPlan {
        SpawnPlan {
            program: Program::Exact(CString::new(argv[0]).unwrap()),
            sh_fallback: false,
            argv: argv.iter().map(|a| CString::new(*a).unwrap()).collect(),
            envp: vec![CString::new("PATH=/usr/bin:/bin").unwrap()],
            cwd: None,
            cwd_fd: None,
            identity: None,
            rlimits: Vec::new(),
            inherited: None,
            fds,
            controlling_tty: None,
            new_session: false,
            drop_caps: false,
            namespaces: None,
            cgroup_join: Vec::new(),
            cgroup_dir: None,
            landlock: [None, None],
            listen_pid: false,
            exec_guard: None,
            supervisor_filter: Vec::new(),
            owner_filter: false,
        }
    }

    /// Waits for the started child to end: `(si_code, si_status)` of its `waitid`.
    pub fn wait_end(forked: &Forked) -> (i32, i32) {
        // SAFETY: waitid on our child's pidfd, into a zeroed siginfo.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PIDFD,
                forked.pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            );
            (info.si_code, info.si_status())
        }
    }

    /// The v2 hierarchy's mount point (hybrid or unified).
    pub fn v2_mount() -> std::path::PathBuf {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| std::path::PathBuf::from(f[1]))
            })
            .expect("a cgroup2 mount (hybrid or unified): these tests need one")
    }

    /// This process's own v2 cgroup, as a path below `v2_mount()`.
    pub fn own_v2_cgroup() -> String {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        own.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap()
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn candidates_follow_path() {
        let c = search_candidates(b"ls", b"/usr/bin::/bin/");
        let c: Vec<&[u8]> = c.iter().map(|c| c.as_bytes()).collect();
        assert_eq!(c, vec![&b"/usr/bin/ls"[..], b"./ls", b"/bin/ls"]);
        let c = search_candidates(b"./x", b"/usr/bin");
        assert_eq!(c[0].as_bytes(), b"./x");
    }

    #[test]
    fn report_roundtrip() {
        let mut buf = [0u8; REPORT_LEN];
        buf[0] = Stage::Chdir as u8;
        buf[4..8].copy_from_slice(&libc::EACCES.to_ne_bytes());
        assert_eq!(
            parse_report(&buf),
            Some(ChildFailure {
                stage: Stage::Chdir,
                errno: libc::EACCES
            })
        );
        assert_eq!(parse_report(&[]), None);
    }

    /// Runs `cat /proc/self/cgroup` with the given cgroup fields; returns its v2 line.
    fn v2_line_of_child(dir: Option<RawFd>, join: Vec<RawFd>) -> String {
        let mut pipe = [0; 2];
        // SAFETY: pipe2 fills the array.
        assert_eq!(
            unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) },
            0
        );
        // SAFETY: just created, owned here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
        let mut plan = test_plan(&["/bin/cat", "/proc/self/cgroup"], vec![(w.as_raw_fd(), 1)]);
        plan.cgroup_join = join;
        plan.cgroup_dir = dir;
        let forked = fork_exec(&plan).unwrap();
        drop(w);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut out).unwrap();
        assert_eq!(wait_end(&forked).1, 0, "cat: {out}");
        out.lines()
            .find(|l| l.starts_with("0::"))
            .unwrap_or_default()
            .to_string()
    }

    /// A v2 cgroup made for one test, removed (empty by then) at the end: its path below
    /// the mount, as `/proc/PID/cgroup` names it, and its directory.
    struct TestCgroup(String, std::path::PathBuf);

    impl TestCgroup {
        fn new(tag: &str) -> TestCgroup {
            let own = own_v2_cgroup();
            let rel = format!(
                "{}/ctx-spawn-{tag}-{}",
                own.trim_end_matches('/'),
                std::process::id()
            );
            let dir = v2_mount().join(rel.trim_start_matches('/'));
            std::fs::create_dir(&dir).expect("creating a v2 cgroup (the tests run as root)");
            TestCgroup(rel, dir)
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.1);
        }
    }

    #[test]
    fn a_v2_launch_is_born_in_its_cgroup() {
        let cg = TestCgroup::new("born");
        let dir = std::fs::File::open(&cg.1).unwrap();
        let line = v2_line_of_child(Some(dir.as_raw_fd()), Vec::new());
        assert_eq!(line, format!("0::{}", cg.0));
        #[cfg(target_arch = "x86_64")]
        assert!(
            !CLONE3_MISSING.load(std::sync::atomic::Ordering::Relaxed),
            "clone3(CLONE_INTO_CGROUP) was refused on this kernel"
        );
    }

    /// When clone3 refuses the directory, the child joins through `cgroup.procs` instead.
    #[test]
    fn a_refused_clone3_falls_back_to_joining_by_write() {
        let cg = TestCgroup::new("fallback");
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(cg.1.join("cgroup.procs"))
            .unwrap();
        // Not a cgroup: clone3 fails with EBADF, which must not disable it for later.
        let not_a_cgroup = std::fs::File::open("/").unwrap();
        let line = v2_line_of_child(Some(not_a_cgroup.as_raw_fd()), vec![procs.as_raw_fd()]);
        assert_eq!(line, format!("0::{}", cg.0));
        assert!(!CLONE3_MISSING.load(std::sync::atomic::Ordering::Relaxed));
    }
}
