//! The spawn path: everything a routed process needs is built into a [`SpawnPlan`] before
//! `fork`; the child then runs only async-signal-safe syscalls (the broker is a threaded
//! tokio process) and reports the first failing step through a close-on-exec pipe as
//! `(stage, errno)`, which the parent turns into a classified [`ExecFailure`].
//!
//! In the order a launch meets them: `check.rs` guesses before the clone whether the exec
//! will succeed; `fork_exec` (here) prepares the child's memory and `clone.rs` starts it;
//! `child.rs` is the child, one step per mechanism down to the exec; `report.rs` carries a
//! failed step back. `signals.rs`, `caps.rs` and `cwd.rs` hold the broker-wide state and
//! helpers those steps need.
//!
//! [`ExecFailure`]: ctx_protocol::ExecFailure

mod caps;
mod check;
mod child;
mod clone;
mod cwd;
pub mod forker;
pub mod prompt;
mod report;
mod signals;
#[cfg(test)]
pub mod testing;

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::AtomicI32;

use super::kernel::supervisor::Handover;

pub use caps::{capget, capset, drop_bounding_set_process_wide, CapSets};
pub use check::{exec_likely, program_for_rules, search_candidates, ForRules};
pub use child::{child_nofile_soft, set_child_nofile_soft};
pub(crate) use clone::map_stack;
pub use report::{parse_report, ChildFailure};
pub(super) use signals::raw_sigaction;
pub use signals::snapshot_signal_dispositions;

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
    /// see `cwd::enter`).
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
    /// supervisor (see `supervisor`) just before the exec.
    pub exec_guard: Option<Handover>,
    /// Built by the broker before the clone (`seccomp::supervised_filter`).
    pub supervisor_filter: Vec<libc::sock_filter>,
    /// The program runs with the broker's own euid: the seccomp filter that keeps it from
    /// making the broker (or a root terminal's foreground job) a file's owner, which would
    /// let it (or anyone sharing the file) aim any signal there as SIGIO, and from taking
    /// leases on the files it shares with the broker (`seccomp::OWNER_FILTER`, or only
    /// `seccomp::LEASE_FILTER` inside a Landlock signal scope).
    pub owner_filter: Option<&'static [libc::sock_filter]>,
    /// Where the kernel writes the pids of the launch's processes as it creates them (see
    /// [`PidSlots`]); none outside a launch.
    pub pid_slots: Option<std::sync::Arc<PidSlots>>,
    /// Every descriptor the caller passed, at the broker's numbers: the child closes its
    /// copies of them before its exec, while the broker still holds its own (see
    /// `child::close_the_rest`).
    pub passed: Vec<RawFd>,
}

/// The pids (in the broker's namespace) of a launch's first child and of the process that
/// runs its program when that is another one, each written by the kernel as it creates
/// the process, before the process runs (`CLONE_CHILD_SETTID`, `CLONE_PARENT_SETTID`). The
/// fork returns only once the program has exec'd, and the program may route its own
/// children before that thread gets to register it: the registry places their connections
/// by these meanwhile. 0: not (or no longer) such a process.
#[derive(Debug, Default)]
pub struct PidSlots {
    pub first: AtomicI32,
    pub program: AtomicI32,
}

impl PidSlots {
    /// Whether `pid` is one of the launch's processes.
    pub fn holds(&self, pid: libc::pid_t) -> bool {
        pid > 0
            && (self.first.load(std::sync::atomic::Ordering::Acquire) == pid
                || self.program.load(std::sync::atomic::Ordering::Acquire) == pid)
    }
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
    /// Shared with the registry, which signals the program through it (`ctx kill`).
    pub pidfd: std::sync::Arc<OwnedFd>,
    pub report: OwnedFd,
    /// A PTY launch's session leader stand-in, also our child: a pidfd to reap it by once
    /// the master is closed (it ends at the terminal's hangup), and its pid.
    pub session_leader: Option<(libc::pid_t, OwnedFd)>,
}

/// `ctx-shim`, which stands in as the leader of each PTY launch's session (see
/// `child::lead_the_session_by_stand_in`); unset: the program leads it itself.
static SESSION_LEADER: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

/// Opens the session leader stand-in once, by descriptor: the clone execs it inside the
/// context's mount namespace, where its path may not exist.
pub fn set_session_leader(shim: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(shim)?;
    let fd = OwnedFd::from(file);
    // SAFETY: statvfs fills the struct we pass.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above, on our own descriptor.
    if unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // An exec that fails after the program started would hang up its terminal: check
    // what can be checked now.
    if st.f_flag & libc::ST_NOEXEC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "on a noexec mount",
        ));
    }
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    if !meta.is_file() || std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 == 0
    {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not an executable file",
        ));
    }
    // A script cannot be exec'd from a close-on-exec descriptor: only the ELF binary will do.
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(
        &mut std::fs::File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?,
        &mut magic,
    )?;
    if &magic != b"\x7fELF" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an ELF executable (is it ctx-shim?)",
        ));
    }
    let _ = SESSION_LEADER.set(fd);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// The child enters a PID namespace, and so clones once more to get into it.
fn twice_cloned(plan: &SpawnPlan) -> bool {
    plan.namespaces
        .is_some_and(|ns| ns.flags & libc::CLONE_NEWPID != 0)
}

/// `(receive, send)`: a datagram socket pair, the receiving end non-blocking (the session
/// leader sends before its exec, which is before the clone returns here).
fn handover_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut pair = [0; 2];
    // SAFETY: socketpair writes two descriptors into the array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both just created and owned here.
    let (receive, send) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    // SAFETY: fcntl on our own descriptor.
    unsafe { libc::fcntl(receive.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    Ok((receive, send))
}

/// The program's pidfd as the session leader sent it, and its pid as we see it.
fn receive_program(receive: &OwnedFd) -> Option<(libc::pid_t, OwnedFd)> {
    let mut byte = [0u8; 1];
    let mut fds = [-1; 1];
    let (_, count) =
        ctx_protocol::fdpass::recv_with_fds(receive.as_raw_fd(), &mut byte, &mut fds).ok()?;
    if count != 1 {
        return None;
    }
    // SAFETY: just received, ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    Some((pidfd_pid(&fd)?, fd))
}

/// The pid a pidfd stands for, in our PID namespace (its `Pid:` line in fdinfo).
fn pidfd_pid(pidfd: &OwnedFd) -> Option<libc::pid_t> {
    crate::daemon::peer::pidfd_info_line(pidfd, "Pid:")?
        .trim()
        .parse()
        .ok()
        .filter(|&p: &libc::pid_t| p > 0)
}

pub fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

pub fn cstring_os(s: &OsStr) -> io::Result<CString> {
    cstring(s.as_bytes())
}

/// Forks and runs `plan` in the child, cloned from this thread. The parent keeps ownership
/// of the plan's descriptors (close them once this returns).
pub fn fork_exec(plan: &SpawnPlan) -> io::Result<Forked> {
    let side = Side::open(plan)?;
    let started = clone_child(plan, side.child_fds());
    side.finish(plan, started?)
}

/// As [`fork_exec`], cloned from a thread of `lane` (see `forker`), whose table holds
/// only this launch's descriptors: the child never gets another launch's.
pub fn fork_exec_in(lane: forker::Lane, plan: &mut SpawnPlan) -> io::Result<Forked> {
    let side = Side::open(plan)?;
    let outside = side.child_fds();
    let mut fds = vec![outside.report, outside.handover, outside.session_leader];
    plan.each_fd(|fd| fds.push(*fd));
    let started = forker::run(lane, &fds, |imported| {
        let mapped = Mapped::new(plan, imported);
        clone_child(mapped.plan, outside.mapped(imported))
    })
    .unwrap_or_else(|| Err(io::Error::other("no thread of the broker could fork")));
    side.finish(plan, started?)
}

/// The descriptors the child uses besides the plan's.
#[derive(Clone, Copy)]
struct ChildFds {
    /// The error pipe's write end.
    report: RawFd,
    /// The session leader stand-in's hand-over socket, or -1.
    handover: RawFd,
    /// The stand-in (`ctx-shim`, `O_PATH`), or -1.
    session_leader: RawFd,
}

impl ChildFds {
    fn mapped(self, imported: &forker::Imported) -> ChildFds {
        ChildFds {
            report: imported.get(self.report),
            handover: imported.get(self.handover),
            session_leader: imported.get(self.session_leader),
        }
    }
}

/// What the fork's thread opens before the clone and finishes after it.
struct Side {
    report_r: OwnedFd,
    report_w: OwnedFd,
    /// A terminal launch's session leader stand-in hands over the program's pidfd here.
    handover: Option<(OwnedFd, OwnedFd)>,
}

/// What the clone started: the pid of our child that runs the program (or of the session
/// leader stand-in, when `program_started`).
struct Started {
    pid: libc::pid_t,
    /// The program runs in the grandchild, in a PID namespace (the first child is reaped).
    grandchild: bool,
    /// The stand-in cloned the program.
    program_started: bool,
}

/// A plan whose descriptors are a forking thread's numbers until dropped, when the
/// broker's come back (whatever the clone did, a panic included: the broker closes them
/// by these numbers).
struct Mapped<'p> {
    plan: &'p mut SpawnPlan,
    originals: Vec<RawFd>,
}

impl<'p> Mapped<'p> {
    fn new(plan: &'p mut SpawnPlan, imported: &forker::Imported) -> Mapped<'p> {
        let mut originals = Vec::new();
        plan.each_fd(|fd| {
            originals.push(*fd);
            *fd = imported.get(*fd);
        });
        Mapped { plan, originals }
    }
}

impl Drop for Mapped<'_> {
    fn drop(&mut self) {
        let mut originals = self.originals.iter();
        self.plan.each_fd(|fd| {
            if let Some(&original) = originals.next() {
                *fd = original;
            }
        });
    }
}

impl SpawnPlan {
    /// Every descriptor the plan names, in one order.
    fn each_fd(&mut self, mut f: impl FnMut(&mut RawFd)) {
        if let Some(fd) = &mut self.cwd_fd {
            f(fd);
        }
        for (source, _) in &mut self.fds {
            f(source);
        }
        if let Some(fd) = &mut self.controlling_tty {
            f(fd);
        }
        if let Some(ns) = &mut self.namespaces {
            f(&mut ns.pidfd);
        }
        for fd in &mut self.cgroup_join {
            f(fd);
        }
        if let Some(fd) = &mut self.cgroup_dir {
            f(fd);
        }
        for fd in self.landlock.iter_mut().flatten() {
            f(fd);
        }
        if let Some(guard) = &mut self.exec_guard {
            f(&mut guard.sock);
        }
        for fd in &mut self.passed {
            f(fd);
        }
    }
}

impl Side {
    fn open(plan: &SpawnPlan) -> io::Result<Side> {
        let mut pipe = [0; 2];
        // Non-blocking from the start: the broker reads it without waiting, and the
        // child's one 8-byte report always fits in the empty pipe.
        // SAFETY: pipe2 writes two descriptors into the array.
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both ends were just created and are owned here.
        let (report_r, report_w) =
            unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
        let stand_in = plan.controlling_tty.is_some() && SESSION_LEADER.get().is_some();
        let handover = if stand_in {
            Some(handover_pair()?)
        } else {
            None
        };
        Ok(Side {
            report_r,
            report_w,
            handover,
        })
    }

    fn child_fds(&self) -> ChildFds {
        ChildFds {
            report: self.report_w.as_raw_fd(),
            handover: self
                .handover
                .as_ref()
                .map_or(-1, |(_, send)| send.as_raw_fd()),
            session_leader: match self.handover {
                Some(_) => SESSION_LEADER.get().map_or(-1, |f| f.as_raw_fd()),
                None => -1,
            },
        }
    }

    /// The program's pidfd (and the stand-in's) in the broker's table.
    fn finish(self, plan: &SpawnPlan, started: Started) -> io::Result<Forked> {
        let Side {
            report_r,
            report_w,
            handover,
        } = self;
        drop(report_w);
        let mut pid = started.pid;
        let mut pidfd = match pidfd_of_child(pid) {
            Ok(fd) => fd,
            Err(e) => {
                if started.grandchild {
                    if let Some(s) = &plan.pid_slots {
                        s.program.store(0, std::sync::atomic::Ordering::Release);
                    }
                }
                return Err(e);
            }
        };
        let mut session_leader = None;
        if let Some((receive, send)) = handover {
            drop(send);
            if started.program_started {
                // What we started leads the PTY's session and has exec'd the stand-in (or
                // failed to, and ended: the program then gets the terminal's hangup, which
                // ends it as it would have ended it had it led its session itself).
                let leader = pidfd;
                let Some((program_pid, program_fd)) = receive_program(&receive) else {
                    // It could not send (out of memory): the program runs, unknown to us.
                    // Ending its session's leader hangs its terminal up. Neither pid is the
                    // launch's once reaped.
                    if let Some(s) = &plan.pid_slots {
                        s.first.store(0, std::sync::atomic::Ordering::Release);
                        s.program.store(0, std::sync::atomic::Ordering::Release);
                    }
                    // SAFETY: plain syscall on our own child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    reap(&leader);
                    return Err(io::Error::other(
                        "the terminal's session leader did not hand the program over",
                    ));
                };
                session_leader = Some((pid, leader));
                pidfd = program_fd;
                pid = program_pid;
            }
        }
        if plan.controlling_tty.is_none() && !plan.new_session {
            // Also from the parent, so a kill of the group cannot race the child's setpgid.
            // SAFETY: plain syscall on our own child.
            unsafe { libc::setpgid(pid, pid) };
        }
        Ok(Forked {
            pid,
            pidfd: std::sync::Arc::new(pidfd),
            report: report_r,
            session_leader,
        })
    }
}

/// A pidfd, in the broker's table, of our child `pid`, which a thread with a table of its
/// own cloned. Nobody else reaps it (the broker never waits for any child), so the pid
/// cannot have been reused. When that fails, the child is killed and reaped.
pub fn pidfd_of_child(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) } as RawFd;
    if fd < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: plain syscalls on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL);
        }
        return Err(e);
    }
    // SAFETY: just opened, owned here (close-on-exec).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits for our child `pidfd` to end and reaps it.
pub fn reap(pidfd: &OwnedFd) {
    // SAFETY: waitid fills a siginfo we own; the pidfd is a child's, which we own.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::__WALL,
        );
    }
}

/// Builds the child's arguments and clones it from this thread, with the descriptors as
/// this thread numbers them.
fn clone_child(plan: &SpawnPlan, fds: ChildFds) -> io::Result<Started> {
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
    let last_cap = caps::last_capability();
    let floor = plan.fds.iter().map(|&(_, t)| t).max().unwrap_or(2).max(2) + 1;
    // The targets in order, for the close loop (one close_range per gap between them),
    // and room for the child's moved copies of the sources: any number of descriptors,
    // with nothing allocated in the child.
    let mut targets: Vec<i32> = plan.fds.iter().map(|&(_, t)| t).collect();
    targets.sort_unstable();
    targets.dedup();
    let mut moved: Vec<RawFd> = vec![-1; plan.fds.len()];

    let args = child::ChildArgs {
        plan,
        report: fds.report,
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
        session_leader: fds.session_leader,
        handover: fds.handover,
        program_started: std::sync::atomic::AtomicBool::new(false),
        program_stack: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
        born_in_cgroup: std::sync::atomic::AtomicBool::new(false),
    };
    if child::BROKER_PID.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        child::BROKER_PID.store(
            std::process::id() as i32,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    let (pid, pidfd) = clone::clone_vfork(&args)?;
    // SAFETY: CLONE_PIDFD gave us this descriptor.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let grandchild = args.grandchild.load(std::sync::atomic::Ordering::Acquire);
    let program_started = args
        .program_started
        .load(std::sync::atomic::Ordering::Acquire);
    if grandchild <= 0 {
        return Ok(Started {
            pid,
            grandchild: false,
            program_started,
        });
    }
    // Its pid is free for reuse once reaped: never a launch's from then on.
    if let Some(s) = &plan.pid_slots {
        s.first.store(0, std::sync::atomic::Ordering::Release);
    }
    // The first child exited as soon as the grandchild exec'd (or failed): reap it (its
    // descriptors are closed by then) and go on with the grandchild, our own child thanks
    // to CLONE_PARENT.
    reap(&pidfd);
    Ok(Started {
        pid: grandchild,
        grandchild: true,
        program_started,
    })
}
