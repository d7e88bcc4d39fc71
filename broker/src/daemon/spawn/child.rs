//! The spawn child, from the clone to the exec. It shares the broker's memory (CLONE_VM)
//! while the broker's thread waits (CLONE_VFORK): only async-signal-safe calls on memory
//! prepared before the clone; nothing here allocates, locks or does std I/O. A failing step
//! reports `(stage, errno)` through the error pipe and exits (`report::fail`).

use std::os::fd::RawFd;

use ctx_protocol::Stage;

use super::caps::BOUNDING_DROPPED;
use super::cwd;
use super::report::{errno, fail};
use super::signals::reset_signal_handlers;
use super::SpawnPlan;

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// Everything the child reads; it lives on the parent's stack, which the parent does not
/// touch until the child has exec'd or exited (CLONE_VFORK).
pub(super) struct ChildArgs<'a> {
    pub(super) plan: &'a SpawnPlan,
    pub(super) report: RawFd,
    pub(super) floor: i32,
    /// Every target descriptor number, ascending, each once.
    pub(super) targets: &'a [i32],
    /// `plan.fds.len()` slots for the child's copies of the sources.
    pub(super) moved: *mut RawFd,
    pub(super) candidates: &'a [*const libc::c_char],
    pub(super) searching: bool,
    pub(super) argv: *const *const libc::c_char,
    pub(super) envp: *const *const libc::c_char,
    pub(super) sh_argv: *mut *const libc::c_char,
    pub(super) last_cap: i32,
    /// `LISTEN_PID=` buffer to complete with our pid, or null.
    pub(super) listen_pid: *mut u8,
    /// Written by the first child when it had to clone again to enter a PID namespace: the
    /// pid (in the broker's namespace) of the process that runs the program.
    pub(super) grandchild: std::sync::atomic::AtomicI32,
    /// Top of the second half of the stack mapping, for that second clone.
    pub(super) grand_stack: std::sync::atomic::AtomicPtr<libc::c_void>,
    /// Set by the parent before the clone: the child was born in its cgroup and must not
    /// write itself into it.
    pub(super) born_in_cgroup: std::sync::atomic::AtomicBool,
}

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// The broker's pid, for the child's die-with-the-broker check (the child shares our
/// memory, so it reads this without a syscall and without the race of asking `getppid`
/// before the request is in force).
pub(super) static BROKER_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

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

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

pub(super) extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
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

/// Installs the supervised filter and sends its listener to the broker's supervisor with
/// the launch's `token`, then closes our copies: the routed program must never hold the
/// listener (it could answer its own notifications). Async-signal-safe (`fdpass` is raw
/// syscalls on the stack).
unsafe fn install_exec_guard(report: RawFd, sock: RawFd, token: u64, filter: &[libc::sock_filter]) {
    let listener = match crate::daemon::seccomp::install_supervised(filter) {
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
        crate::daemon::inherit::apply_scheduling(carried);
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

    if let Err(e) = cwd::enter(plan.cwd.as_deref(), cwd_fd) {
        fail(report, Stage::Chdir, e);
    }

    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
        fail(report, Stage::NoNewPrivs, errno());
    }
    if plan.owner_filter {
        if let Err(e) = crate::daemon::seccomp::install_owner_filter() {
            fail(report, Stage::Seccomp, e);
        }
    }

    if let Some(guard) = plan.exec_guard {
        // Last, so that it sees exactly the execs below and everything after them; the
        // guard lets the spawn child's own execs through (it still shares our memory).
        install_exec_guard(report, guard_sock, guard.token, &plan.supervisor_filter);
    }

    if let Some(carried) = &plan.inherited {
        crate::daemon::inherit::apply_signals(carried);
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
