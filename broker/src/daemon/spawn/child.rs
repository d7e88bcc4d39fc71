//! The spawn child, from the clone to the exec: one step per mechanism, in the order the
//! steps must run, so that the order in which privileges are dropped reads top to bottom
//! in [`child_entry`] and [`child`].
//!
//! The child shares the broker's memory (CLONE_VM) while the broker's thread waits
//! (CLONE_VFORK): every step makes only async-signal-safe calls on memory prepared before
//! the clone. Nothing here allocates, locks or does std I/O. A step either succeeds or
//! reports `(stage, errno)` through the error pipe and exits (`report::fail`).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};

use ctx_protocol::Stage;

use super::caps::BOUNDING_DROPPED;
use super::cwd;
use super::report::{errno, fail};
use super::signals::{reset_signal_handlers, unblock_signals};
use super::SpawnPlan;
use crate::daemon::{inherit, kernel::seccomp};

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
    pub(super) grandchild: AtomicI32,
    /// Top of the second half of the stack mapping, for that second clone.
    pub(super) grand_stack: AtomicPtr<libc::c_void>,
    /// A PTY launch's session leader stand-in (`ctx-shim --session-leader`, opened
    /// `O_PATH`), or -1: the program leads the PTY's session itself.
    pub(super) session_leader: RawFd,
    /// The socket the session leader hands the broker a pidfd of its clone that runs the
    /// program by (a sibling, our own child thanks to CLONE_PARENT), or -1. A pid would not
    /// do: inside a PID namespace `clone` returns the namespace's number for it.
    pub(super) handover: RawFd,
    /// Set by the session leader once that clone exists.
    pub(super) program_started: AtomicBool,
    /// Top of the stack region for that clone.
    pub(super) program_stack: AtomicPtr<libc::c_void>,
    /// Set by the parent before the clone: the child was born in its cgroup and must not
    /// write itself into it.
    pub(super) born_in_cgroup: AtomicBool,
}

/// What the steps of [`child`] share: the parent's arguments, and the descriptors
/// `place_descriptors` moves above the floor (on the child's own stack: the parent's memory
/// is written only where the parent reads it).
struct Child<'a> {
    args: &'a ChildArgs<'a>,
    plan: &'a SpawnPlan,
    /// The error pipe: the parent's number until `place_descriptors`, then the moved copy.
    report: RawFd,
    /// The caller's working directory, moved; -1: none.
    cwd_fd: RawFd,
    /// The exec guard's socket to the supervisor, moved; -1: none.
    guard_sock: RawFd,
}

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// How a session leader stand-in that could not exec ends (seen only in its wait status).
const EXIT_STAND_IN_FAILED: i32 = 125;

/// The broker's pid, for the child's die-with-the-broker check (the child shares our
/// memory, so it reads this without a syscall and without the race of asking `getppid`
/// before the request is in force).
pub(super) static BROKER_PID: AtomicI32 = AtomicI32::new(0);

/// The soft `RLIMIT_NOFILE` the broker started with, which routed programs get back (the
/// broker raises its own to the hard limit); zero: leave the inherited one.
static CHILD_NOFILE_SOFT: AtomicU64 = AtomicU64::new(0);
/// How long the child waits for room to send a descriptor to the broker once it runs as
/// the context's user: the kernel refuses the send (`ETOOMANYREFS`) while that user's
/// other processes have their `RLIMIT_NOFILE` of descriptors in flight (a burst of its
/// launches waiting to be read), and the broker reading them frees room.
const SEND_PATIENCE_MS: u32 = 3000;

impl<'a> Child<'a> {
    fn new(args: &'a ChildArgs<'a>) -> Child<'a> {
        Child {
            args,
            plan: args.plan,
            report: args.report,
            cwd_fd: -1,
            guard_sock: -1,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Functions: in the broker
// ---------------------------------------------------------------------------------------

/// Routed programs start with soft `RLIMIT_NOFILE` `soft` (capped by the hard limit), as
/// they would have without the broker raising its own.
pub fn set_child_nofile_soft(soft: u64) {
    CHILD_NOFILE_SOFT.store(soft, Ordering::Relaxed);
}

/// The soft `RLIMIT_NOFILE` routed programs start with; 0: the broker's own.
pub fn child_nofile_soft() -> u64 {
    CHILD_NOFILE_SOFT.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------
// Functions: the child, in order
// ---------------------------------------------------------------------------------------

/// Where the clone starts (`clone::clone_vfork`), with every signal blocked.
pub(super) extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildArgs clone_vfork passed, alive until we exec or exit.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        reset_signal_handlers();
        enter_namespaces(a);
        child(a)
    }
}

extern "C" fn grandchild_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: as for child_entry: the broker thread and the first child are both suspended
    // (CLONE_VFORK) until this process execs or exits.
    unsafe { child(&*(arg as *const ChildArgs)) }
}

extern "C" fn program_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: as for grandchild_entry: the broker thread and the session leader are
    // suspended (CLONE_VFORK) until this process execs or exits.
    unsafe { program(&*(arg as *const ChildArgs)) }
}

/// The child's half of the spawn path, once it is in the context's namespaces. Only
/// syscalls on memory prepared before the clone.
unsafe fn child(a: &ChildArgs) -> ! {
    let c = Child::new(a);
    join_cgroup(&c);
    inherit_scheduling(&c);
    lead_the_session_by_stand_in(&c);
    program(a)
}

/// The steps of the process that execs the program.
unsafe fn program(a: &ChildArgs) -> ! {
    let mut c = Child::new(a);
    landlock(&c);
    write_listen_pid(&c);
    // With every signal still blocked: taking the terminal's foreground from the session
    // leader's group must not raise SIGTTOU.
    new_session_and_terminal(&c);
    unblock_signals();
    place_descriptors(&mut c);
    close_the_rest(&c);
    set_rlimits(&c);
    drop_capabilities(&c);
    switch_identity(&c);
    die_with_broker();
    enter_cwd(&c);
    drop_effective_capabilities(&c);
    no_new_privs(&c);
    owner_filter(&c);
    install_exec_guard(&c);
    lower_nofile(&c);
    inherit_signals(&c);
    exec(&c)
}

/// Joins the context's namespaces. A PID namespace holds only the children of whoever
/// joined it, so this process then goes on as a grandchild and exits here.
unsafe fn enter_namespaces(a: &ChildArgs) {
    let Some(ns) = a.plan.namespaces else {
        return;
    };
    if libc::setns(ns.pidfd, ns.flags) < 0 {
        fail(a.report, Stage::Namespace, errno());
    }
    if ns.flags & libc::CLONE_NEWPID != 0 {
        // Only our children are born in the joined PID namespace: clone once more,
        // as a sibling (CLONE_PARENT) so the broker waits on it directly.
        let top = a.grand_stack.load(Ordering::Acquire);
        // Its pid as this process sees it, which is the broker's namespace's (only our
        // children are born in the joined one).
        let (settid, slot) = match &a.plan.pid_slots {
            Some(s) => (libc::CLONE_PARENT_SETTID, s.program.as_ptr()),
            None => (0, std::ptr::null_mut()),
        };
        let pid = libc::clone(
            grandchild_entry,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT | settid,
            a as *const ChildArgs as *mut libc::c_void,
            slot,
        );
        if pid < 0 {
            fail(a.report, Stage::Namespace, errno());
        }
        a.grandchild.store(pid, Ordering::Release);
        libc::_exit(0);
    }
}

/// The v1 hierarchies, and v2 where `clone3` could not start the child in its cgroup.
unsafe fn join_cgroup(c: &Child) {
    let born_in_cgroup = c.args.born_in_cgroup.load(Ordering::Relaxed);
    for &join in c.plan.cgroup_join.iter().filter(|_| !born_in_cgroup) {
        // "0" is the writer: this process, before anything else runs, so every process
        // of the launch is counted and killable.
        if libc::write(join, b"0".as_ptr().cast(), 1) < 0 {
            fail(c.report, Stage::Cgroup, errno());
        }
    }
}

unsafe fn inherit_scheduling(c: &Child) {
    if let Some(carried) = &c.plan.inherited {
        // In the cgroup already (its cpuset bounds the affinity), still root and not yet
        // restricted by Landlock (see the function).
        inherit::apply_scheduling(carried);
    }
}

unsafe fn landlock(c: &Child) {
    for ruleset in c.plan.landlock.iter().flatten() {
        // First, so that everything after (the exec above all) runs in the domain.
        // landlock_restrict_self needs no_new_privs unless we hold CAP_SYS_ADMIN.
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            fail(c.report, Stage::NoNewPrivs, errno());
        }
        if libc::syscall(libc::SYS_landlock_restrict_self, *ruleset, 0) < 0 {
            fail(c.report, Stage::Landlock, errno());
        }
    }
}

unsafe fn write_listen_pid(c: &Child) {
    let listen_pid = c.args.listen_pid;
    if !listen_pid.is_null() {
        // After the last clone: this is the pid the program will see as its own.
        write_decimal(listen_pid.add(b"LISTEN_PID=".len()), libc::getpid() as u32);
    }
}

/// A PTY launch: this process makes the PTY the controlling terminal of a new session and
/// stays its leader as `ctx-shim --session-leader`; the program runs in a clone of it, in
/// a group of its own in the foreground. A session leader's exit sends the terminal's
/// foreground group SIGHUP: the program no longer leads, so its background jobs live on
/// when it exits, as they do locally. The stand-in then takes the foreground for its own
/// group (as a shell does when its job ends) and ends at the terminal's hangup, when the
/// broker closes the master. Returns only when there is no stand-in.
unsafe fn lead_the_session_by_stand_in(c: &Child) {
    let a = c.args;
    let Some(tty) = c.plan.controlling_tty else {
        return;
    };
    if a.session_leader < 0 {
        return;
    }
    if libc::setsid() < 0 {
        fail(c.report, Stage::Session, errno());
    }
    if libc::ioctl(tty, libc::TIOCSCTTY, 0) < 0 {
        fail(c.report, Stage::Terminal, errno());
    }
    let mut pidfd: libc::c_int = -1;
    // The program writes its own pid, which is the broker's namespace's only outside a
    // PID namespace; inside one the registry learns it when the fork returns.
    let in_pid_ns = c
        .plan
        .namespaces
        .is_some_and(|ns| ns.flags & libc::CLONE_NEWPID != 0);
    let (settid, slot) = match &c.plan.pid_slots {
        Some(s) if !in_pid_ns => (libc::CLONE_CHILD_SETTID, s.program.as_ptr()),
        _ => (0, std::ptr::null_mut()),
    };
    let pid = libc::clone(
        program_entry,
        a.program_stack.load(Ordering::Acquire),
        libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT | libc::CLONE_PIDFD | settid,
        a as *const ChildArgs as *mut libc::c_void,
        &mut pidfd as *mut libc::c_int,
        std::ptr::null_mut::<libc::c_void>(),
        slot,
    );
    if pid < 0 {
        fail(c.report, Stage::Session, errno());
    }
    a.program_started.store(true, Ordering::Release);
    // Before anything else can fail: from here on, the broker holds the program whatever
    // becomes of this process. Should the send fail, the broker finds no pidfd, ends this
    // process and with it (the terminal's hangup) the program.
    let _ =
        ctx_protocol::fdpass::send_with_fds_patiently(a.handover, b"p", &[pidfd], SEND_PATIENCE_MS);
    // The caller's descriptors closed now, while the broker (waiting for this exec) still
    // holds its copies: one closed by the exec could be the last (see `close_the_rest`).
    for &fd in &c.plan.passed {
        libc::close(fd);
    }
    // Nothing of the broker's goes with the stand-in, not even the PTY (the master sees
    // its end of file once the program and its jobs have closed theirs): only the
    // program's pidfd, by which it learns when to take the terminal's foreground.
    if libc::syscall(
        libc::SYS_close_range,
        0u32,
        u32::MAX,
        libc::CLOSE_RANGE_CLOEXEC,
    ) < 0
    {
        for fd in 0..4096 {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    libc::fcntl(pidfd, libc::F_SETFD, 0);
    // The terminal is this session's by now; its slave goes before the exec, not at it: a
    // program that ends at once must not find the stand-in still holding it (a job).
    libc::close(tty);
    let mut number = [0u8; 11];
    write_decimal(number.as_mut_ptr(), pidfd as u32);
    let argv = [
        c"ctx-shim".as_ptr(),
        c"--session-leader".as_ptr(),
        number.as_ptr().cast(),
        std::ptr::null(),
    ];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    libc::syscall(
        libc::SYS_execveat,
        a.session_leader,
        c"".as_ptr(),
        argv.as_ptr(),
        envp.as_ptr(),
        libc::AT_EMPTY_PATH,
    );
    // The program runs already: nothing to report to the broker. This exit hangs up the
    // program's terminal, as its own exit as the session's leader would have.
    libc::_exit(EXIT_STAND_IN_FAILED)
}

unsafe fn new_session_and_terminal(c: &Child) {
    match c.plan.controlling_tty {
        Some(tty) if c.args.session_leader >= 0 => {
            // The session is the stand-in's: a group of our own, in the foreground.
            if libc::setpgid(0, 0) < 0 {
                fail(c.report, Stage::Session, errno());
            }
            let me = libc::getpid();
            if libc::ioctl(tty, libc::TIOCSPGRP, &me as *const libc::pid_t) < 0 {
                fail(c.report, Stage::Terminal, errno());
            }
        }
        Some(tty) => {
            if libc::setsid() < 0 {
                fail(c.report, Stage::Session, errno());
            }
            if libc::ioctl(tty, libc::TIOCSCTTY, 0) < 0 {
                fail(c.report, Stage::Terminal, errno());
            }
        }
        None if c.plan.new_session => {
            if libc::setsid() < 0 {
                fail(c.report, Stage::Session, errno());
            }
        }
        None => {
            if libc::setpgid(0, 0) < 0 {
                fail(c.report, Stage::Session, errno());
            }
        }
    }
}

unsafe fn place_descriptors(c: &mut Child) {
    let a = c.args;
    let plan = c.plan;
    // Move the error pipe and every source above all targets, then place the targets, so
    // that no dup2 overwrites a source still needed.
    let report = libc::fcntl(a.report, libc::F_DUPFD_CLOEXEC, a.floor);
    if report < 0 {
        libc::_exit(127);
    }
    c.report = report;
    // Above the floor too: the caller's cwd descriptor is entered after the uid switch,
    // so that the context's uid must be allowed in.
    c.cwd_fd = match plan.cwd_fd {
        Some(fd) => {
            let moved = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, a.floor);
            if moved < 0 {
                fail(report, Stage::Chdir, errno());
            }
            moved
        }
        None => -1,
    };
    c.guard_sock = match plan.exec_guard {
        Some(h) => {
            let fd = libc::fcntl(h.sock, libc::F_DUPFD_CLOEXEC, a.floor);
            if fd < 0 {
                fail(report, Stage::Seccomp, errno());
            }
            fd
        }
        None => -1,
    };
    // `moved` has one slot per source, prepared by the parent.
    for (i, &(src, _)) in plan.fds.iter().enumerate() {
        let fd = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, a.floor);
        if fd < 0 {
            fail(report, Stage::Fds, errno());
        }
        *a.moved.add(i) = fd;
    }
    for (i, &(_, target)) in plan.fds.iter().enumerate() {
        if libc::dup2(*a.moved.add(i), target) < 0 {
            fail(report, Stage::Fds, errno());
        }
    }
}

unsafe fn close_the_rest(c: &Child) {
    let floor = c.args.floor;
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
    for &t in c.args.targets {
        if t > next {
            close_gap(next, t - 1);
        }
        next = t + 1;
    }
    if next < floor {
        close_gap(next, floor - 1);
    }
    // The caller's descriptors above the floor and this child's moved copies of them:
    // closed now, not by the exec. The broker holds its own copies until the exec has
    // released it, and closes them right then: a copy the exec closed after that could be
    // the last, whose close waits as long as the caller likes (a pipe whose lock a splice
    // holds), and the program would hang in its exec. Below the floor they were closed
    // just now, or replaced by a target.
    for &fd in c.plan.passed.iter().filter(|&&fd| fd >= floor) {
        libc::close(fd);
    }
    for i in 0..c.plan.fds.len() {
        libc::close(*c.args.moved.add(i));
    }
    if libc::close_range(floor as u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) < 0 {
        // Kernels before 5.11: fall back to marking one by one up to a sane bound.
        for fd in floor..4096 {
            if fd != c.report {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
}

unsafe fn set_rlimits(c: &Child) {
    for &(resource, soft, hard) in &c.plan.rlimits {
        // The descriptor limit's soft value comes last (`lower_nofile`); until then the
        // most its hard value allows.
        let soft = if resource == libc::RLIMIT_NOFILE as i32 {
            hard
        } else {
            soft
        };
        set_rlimit(c, resource, soft, hard);
    }
}

unsafe fn set_rlimit(c: &Child, resource: i32, soft: u64, hard: u64) {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    if libc::setrlimit(resource as _, &lim) < 0 {
        fail(c.report, Stage::Rlimits, errno());
    }
}

/// The soft descriptor limit, lowered after the last step that opens a descriptor (the
/// seccomp listeners): the table still holds the broker's own descriptors (close-on-exec)
/// until the exec, and under the caller's limit a new one would be refused (EMFILE)
/// whenever the broker holds that many. Lowering a soft limit needs no privilege.
unsafe fn lower_nofile(c: &Child) {
    let nofile_soft = CHILD_NOFILE_SOFT.load(Ordering::Relaxed);
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
    for &(resource, soft, hard) in &c.plan.rlimits {
        if resource == libc::RLIMIT_NOFILE as i32 {
            set_rlimit(c, resource, soft, hard);
        }
    }
}

unsafe fn drop_capabilities(c: &Child) {
    if c.plan.drop_caps && !BOUNDING_DROPPED.load(Ordering::Relaxed) {
        for cap in 0..=c.args.last_cap {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno() != libc::EINVAL {
                fail(c.report, Stage::Capabilities, errno());
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
}

unsafe fn switch_identity(c: &Child) {
    if let Some(id) = &c.plan.identity {
        // Raw syscalls, not glibc's wrappers: those broadcast the change to every thread in
        // glibc's thread list, which in a CLONE_VM child is the broker's; they signal them
        // with tgkill(getpid(), tid), and inside a PID namespace that getpid() can equal one
        // of those tids (this very process): the wrapper then waits forever for an ack. We
        // are a single-threaded process, so the plain syscalls change all there is.
        if libc::syscall(libc::SYS_setgroups, id.groups.len(), id.groups.as_ptr()) < 0 {
            fail(c.report, Stage::Groups, errno());
        }
        if libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid) < 0 {
            fail(c.report, Stage::SetGid, errno());
        }
        if libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid) < 0 {
            fail(c.report, Stage::SetUid, errno());
        }
    }
}

/// A uid-0 context's root keeps the broker's capabilities until its exec, which takes
/// them (its bounding set is empty): the exec's own path lookup would pass by privilege
/// where the program, once running, cannot (another user's 0700 directory). What is left
/// to do needs none. Entering the cwd comes before, as a local process can hold a cwd it
/// may no longer search.
unsafe fn drop_effective_capabilities(c: &Child) {
    if !c.plan.drop_caps || c.plan.identity.as_ref().is_none_or(|id| id.uid != 0) {
        return;
    }
    let Ok(mut sets) = super::capget(0) else {
        fail(c.report, Stage::Capabilities, errno());
    };
    for half in &mut sets {
        half.effective = 0;
    }
    if let Err(e) = super::capset(&sets) {
        fail(c.report, Stage::Capabilities, e);
    }
}

unsafe fn die_with_broker() {
    // Die with the broker: a broker killed by SIGKILL cannot kill its routed
    // groups, so the routed process asks the kernel to kill it when the broker (its parent)
    // dies. Set after the uid switch, which clears it; then the parent is checked again,
    // as it may have died before the request was in force. A parent outside our PID
    // namespace reads as 0 and cannot be checked (that namespace's init dies with the
    // broker anyway).
    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == 0 {
        let parent = libc::getppid();
        if parent != 0 && parent != BROKER_PID.load(Ordering::Relaxed) {
            libc::_exit(127);
        }
    }
}

unsafe fn enter_cwd(c: &Child) {
    if let Err(e) = cwd::enter(c.plan.cwd.as_deref(), c.cwd_fd) {
        fail(c.report, Stage::Chdir, e);
    }
    // A copy of the caller's: closed before the exec (see `close_the_rest`).
    if c.cwd_fd >= 0 {
        libc::close(c.cwd_fd);
    }
}

unsafe fn no_new_privs(c: &Child) {
    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
        fail(c.report, Stage::NoNewPrivs, errno());
    }
}

unsafe fn owner_filter(c: &Child) {
    if let Some(filter) = c.plan.owner_filter {
        if let Err(e) = seccomp::install_static(filter) {
            fail(c.report, Stage::Seccomp, e);
        }
    }
}

/// Installs the supervised filter and sends its listener to the broker's supervisor with
/// the launch's token, then closes our copies: the routed program must never hold the
/// listener (it could answer its own notifications). Async-signal-safe (`fdpass` is raw
/// syscalls on the stack).
unsafe fn install_exec_guard(c: &Child) {
    // Last, so that it sees exactly the execs below and everything after them; the
    // guard lets the spawn child's own execs through (it still shares our memory).
    let Some(guard) = c.plan.exec_guard else {
        return;
    };
    let (report, sock) = (c.report, c.guard_sock);
    let listener = match seccomp::install_supervised(&c.plan.supervisor_filter) {
        Ok(fd) => fd,
        Err(libc::EBUSY) if !guard.required => {
            // Tells the guard to forget the launch; the program runs unsupervised.
            let bytes = guard.token.to_ne_bytes();
            libc::send(sock, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL);
            libc::close(sock);
            return;
        }
        Err(e) => fail(report, Stage::Seccomp, e),
    };
    let sent = ctx_protocol::fdpass::send_with_fds_patiently(
        sock,
        &guard.token.to_ne_bytes(),
        &[listener],
        SEND_PATIENCE_MS,
    );
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

unsafe fn inherit_signals(c: &Child) {
    if let Some(carried) = &c.plan.inherited {
        inherit::apply_signals(carried);
    }
}

/// Each candidate in turn as `execvp` does; returns only by reporting the failure.
unsafe fn exec(c: &Child) -> ! {
    let (a, report) = (c.args, c.report);
    let mut denied = false;
    let mut last = libc::ENOENT;
    for &cand in a.candidates {
        libc::execve(cand, a.argv, a.envp);
        let e = errno();
        if e == libc::ENOEXEC && (a.searching || c.plan.sh_fallback) {
            *a.sh_argv.add(1) = cand;
            libc::execve(c"/bin/sh".as_ptr(), a.sh_argv as *const _, a.envp);
            fail(report, Stage::Exec, errno());
        }
        if !a.searching {
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

// ---------------------------------------------------------------------------------------
// Functions: helpers
// ---------------------------------------------------------------------------------------

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
