//! `posix_spawn`, `posix_spawnp`, `pidfd_spawn*`, `system` and `popen`/`pclose`.
//!
//! Without file actions the hook routes the launch itself, as an exec, and spawns the shim
//! attached to the accepted launch. With them: glibc's file-actions and attribute objects
//! are opaque, so glibc applies them: the real `posix_spawn` starts the shim in `--spawn`
//! mode instead of the program. The shim then
//! sees exactly the descriptors, cwd and signal state the program would have had, sends
//! the launch itself, and reports "started" or "failed, errno N" over a pipe. The hook
//! waits for that report only (launch time), so `posix_spawn` returns the same error a
//! local spawn would, and on success the pid is the shim's, which lives as long as the
//! routed program and exits with its status.

use std::ffi::{c_char, c_int, CStr};
use std::sync::Mutex;

use ctx_protocol::{Captured, Grouping};

use crate::exec::{self, Target};
use crate::state::{state, SpawnFn, State};
use ctx_hookpath::conn;
use ctx_hookpath::sys::{self, MmapBuf};

type Argv = *const *const c_char;

/// The shim's report: `S` (started) or `F` (failed), three zero bytes, the errno (LE).
pub const REPORT_LEN: usize = 8;

fn real_spawn(st: &State, search: bool) -> Option<SpawnFn> {
    if search {
        st.real.posix_spawnp
    } else {
        st.real.posix_spawn
    }
}

/// Routes one spawn; `Ok(pid)` of the shim standing in for the program, or the error
/// number posix_spawn returns. `local` is the real call for passthrough programs.
///
/// # Safety
/// The arguments of `posix_spawn(3)`.
#[allow(clippy::too_many_arguments)]
unsafe fn spawn_routed(
    st: &State,
    target: Target<'_>,
    file_actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
    local: impl FnOnce() -> Result<libc::pid_t, c_int>,
) -> Result<libc::pid_t, c_int> {
    if exec::is_passthrough(st, target) {
        return local();
    }
    if let Some(e) = exec::local_failure(target) {
        return Err(e);
    }
    // SAFETY: the caller's array.
    if let Some(e) = exec::refuse_changed_identity(st, unsafe { exec::display_name(argv, target) })
    {
        return Err(e);
    }
    if let Some(why) = st.problem {
        // SAFETY: the caller's array.
        let name = unsafe { exec::display_name(argv, target) };
        let mut l = conn::refusal(st.route_str(), name);
        l.str(why)
            .str(" (")
            .push(st.shim.bytes())
            .str(")")
            .write_to(2);
        return Err(libc::EACCES);
    }
    let Some(real) = st.real.posix_spawn else {
        return Err(libc::ENOSYS);
    };
    // SAFETY: F_GETFD only reads the descriptor's flags.
    let attach_free = st.attach_fd >= 0 && unsafe { libc::fcntl(st.attach_fd, libc::F_GETFD) } < 0;
    if no_file_actions(file_actions) && attach_free {
        // posix_spawnp has no `/bin/sh` fallback for a file without a shebang, unlike the
        // broker's execvp-style search: pick the file here and send its exact path.
        let mut buf = [0u8; 4096];
        let exact = match target {
            Target::Search { file, path } if !file.to_bytes().contains(&b'/') => {
                exec::first_executable_on_path(file.to_bytes(), path.to_bytes(), &mut buf)
                    .map(Target::Path)
            }
            Target::Search { file, .. } => Some(Target::Path(file)),
            Target::Path(_) => Some(target),
        };
        if let Some(t) = exact {
            // SAFETY: the caller's arguments.
            return unsafe { spawn_attached(st, t, attr, argv, envp, real, local) };
        }
    }

    let mut p = [0i32; 2];
    // SAFETY: pipe2 fills the array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(sys::errno());
    }
    let (report_r, report_w0) = (p[0], p[1]);
    // The write end must survive into the shim, so it is inheritable; it sits high, out of
    // the way of the descriptors file actions usually place.
    // SAFETY: duplicating our own pipe end.
    let report_w = unsafe { libc::fcntl(report_w0, libc::F_DUPFD, high_fd()) };
    // SAFETY: our descriptor.
    unsafe { libc::close(report_w0) };
    if report_w < 0 {
        let e = sys::errno();
        // SAFETY: our descriptor.
        unsafe { libc::close(report_r) };
        return Err(e);
    }

    let mut wfd_c = [0u8; 25];
    let mut argc_c = [0u8; 25];
    let mut tmp = [0u8; 24];
    let d = sys::fmt_i64(report_w as i64, &mut tmp);
    wfd_c[..d.len()].copy_from_slice(d);
    // SAFETY: the caller's arrays.
    let (argc, envc) = unsafe { (sys::vec_len(argv), sys::vec_len(envp)) };
    let d = sys::fmt_i64(argc as i64, &mut tmp);
    argc_c[..d.len()].copy_from_slice(d);
    // `p` searches PATH, `-` does not; a trailing `l` is CTX_ON_BROKER_DOWN=local.
    let (flag, path): (&CStr, &CStr) = match (target, st.local_when_down) {
        (Target::Path(_), false) => (c"-", c""),
        (Target::Path(_), true) => (c"-l", c""),
        (Target::Search { path, .. }, false) => (c"p", path),
        (Target::Search { path, .. }, true) => (c"pl", path),
    };
    let head: [*const c_char; 9] = [
        st.shim.as_ptr(),
        c"--spawn".as_ptr(),
        wfd_c.as_ptr() as *const c_char,
        st.route.as_ptr(),
        st.socket.as_ptr(),
        flag.as_ptr(),
        target.program().as_ptr(),
        path.as_ptr(),
        argc_c.as_ptr() as *const c_char,
    ];
    let total = head.len() + argc + envc + 1;
    let Some(mut mem) = MmapBuf::new(total * std::mem::size_of::<*const c_char>()) else {
        // SAFETY: our descriptors.
        unsafe {
            libc::close(report_r);
            libc::close(report_w);
        }
        return Err(libc::ENOMEM);
    };
    let buf = mem.bytes_mut();
    // SAFETY: the mapping is page-aligned and holds `total` pointers.
    let shim_argv: &mut [*const c_char] =
        unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut *const c_char, total) };
    shim_argv[..head.len()].copy_from_slice(&head);
    for i in 0..argc {
        // SAFETY: i < argc.
        shim_argv[head.len() + i] = unsafe { *argv.add(i) };
    }
    for i in 0..envc {
        // SAFETY: i < envc.
        shim_argv[head.len() + argc + i] = unsafe { *envp.add(i) };
    }
    shim_argv[total - 1] = std::ptr::null();

    // SAFETY: the caller's opaque objects; a NULL-terminated argv.
    let empty_env: [*const c_char; 1] = [std::ptr::null()];
    let started = unsafe {
        start_shim(
            st,
            real,
            file_actions,
            attr,
            shim_argv.as_ptr(),
            empty_env.as_ptr(),
        )
    };
    // SAFETY: our descriptor; only the shim holds the write end now.
    unsafe { libc::close(report_w) };
    drop(mem);
    let pid = match started {
        Ok(pid) => pid,
        Err(rc) => {
            // SAFETY: our descriptor.
            unsafe { libc::close(report_r) };
            return Err(rc);
        }
    };
    let report = wait_report(report_r, pid);
    // SAFETY: our descriptor.
    unsafe { libc::close(report_r) };
    match report {
        Some(e) if e != 0 => {
            reap(pid);
            Err(e)
        }
        // Started, or no report at all (the file actions closed the pipe, or the shim
        // died): the shim's exit status tells the caller the rest, as a local child's would.
        _ => Ok(pid),
    }
}

/// No file actions: the program's descriptors and cwd are the caller's own. glibc's
/// `<spawn.h>` declares the object as `{ int __allocated; int __used; ... }` (since 2.2);
/// the libc crate keeps those fields private, so `__used` is read as the second `int`.
fn no_file_actions(fa: *const libc::posix_spawn_file_actions_t) -> bool {
    // SAFETY: a non-null pointer is the caller's initialised object, at least two ints.
    fa.is_null() || unsafe { *(fa as *const c_int).add(1) } == 0
}

/// The fast path, for a spawn without file actions: this process's descriptors and cwd
/// are the program's, so the hook sends the launch itself, as the exec hook does, and
/// starts the shim in `--attach` mode once the broker has accepted it: the routed program
/// starts while the shim does, instead of after it. The caller's attributes (process
/// group, session, signal mask) apply to the shim, the pid the caller holds.
///
/// # Safety
/// The arguments of `posix_spawn(3)`.
unsafe fn spawn_attached(
    st: &State,
    target: Target<'_>,
    attr: *const libc::posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
    real: SpawnFn,
    local: impl FnOnce() -> Result<libc::pid_t, c_int>,
) -> Result<libc::pid_t, c_int> {
    // SAFETY: the caller's arrays and attributes.
    let grouping = unsafe { spawned_grouping(attr) };
    // SAFETY: the caller's arrays.
    let (sock, pty_mask) = match unsafe { exec::send(st, target, argv, envp, grouping, Some(attr)) }
    {
        exec::Sent::Routed { sock, pty_mask } => (sock, pty_mask),
        exec::Sent::Local => return local(),
        exec::Sent::Failed(e) => return Err(e),
    };
    // The shim gets the connection at `attach_fd` through the file actions built at load
    // (a dup2 onto itself clears close-on-exec in the shim only, glibc 2.29+); here it stays
    // close-on-exec, so another thread's fork cannot inherit it, and nothing allocates.
    let fd = st.attach_fd;
    // SAFETY: F_GETFD only reads the descriptor's flags.
    let free = fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0;
    // SAFETY: our socket, placed at a free number above everything the program holds.
    let placed = free && unsafe { libc::dup3(sock, fd, libc::O_CLOEXEC) } == fd;
    let rc = if placed {
        // The shim is our child: we launched the program.
        // SAFETY: plain getter.
        let launcher = unsafe { libc::getpid() };
        let launch = exec::ShimLaunch::new(fd, pty_mask, launcher, target.program().to_bytes());
        let envp = launch.envp();
        let mut empty = [std::ptr::null(); 2];
        // SAFETY: the caller's array.
        let shim_argv = unsafe { exec::shim_argv(argv, &mut empty) };
        // SAFETY: the caller's attributes.
        let attr = unsafe { shim_attributes(attr) };
        // SAFETY: file actions built at load, attributes initialised above, NULL-terminated
        // arrays alive for the call.
        let started = unsafe {
            start_shim(
                st,
                real,
                &st.attach_actions,
                &attr,
                shim_argv,
                envp.as_ptr(),
            )
        };
        // SAFETY: our descriptor; the shim has its own copy now.
        unsafe { libc::close(fd) };
        match started {
            Ok(pid) => {
                // SAFETY: our socket, which the shim holds now.
                unsafe { libc::close(sock) };
                return Ok(pid);
            }
            Err(rc) => rc,
        }
    } else {
        // Taken since the check in spawn_routed (another thread opened its descriptor
        // limit's worth): no way to hand the connection over.
        libc::EMFILE
    };
    // No shim holds the connection: closing it makes the broker kill what it started.
    // SAFETY: our socket.
    unsafe { libc::close(sock) };
    Err(rc)
}

/// The caller's attributes (null: none) for the shim of an accepted launch, with every
/// signal the shim forwards blocked from its start, as the exec hook leaves them blocked
/// across the shim's exec: a `kill` of the returned pid before the shim runs (a caller
/// quicker than its start) stays pending for it to forward, where it would kill the
/// starting shim and, with it, the whole routed group. The program's own mask was sent
/// with the launch; this one is only the shim's.
///
/// # Safety
/// `attr` is null or the caller's initialised attributes.
unsafe fn shim_attributes(attr: *const libc::posix_spawnattr_t) -> libc::posix_spawnattr_t {
    // SAFETY: glibc's attributes are plain data (flags, group, masks, scheduling), so a
    // copy is a whole one; a fresh object is initialised before use; masks are plain data.
    unsafe {
        let mut copy: libc::posix_spawnattr_t = std::mem::zeroed();
        if attr.is_null() {
            libc::posix_spawnattr_init(&mut copy);
        } else {
            copy = std::ptr::read(attr);
        }
        let mut flags: libc::c_short = 0;
        libc::posix_spawnattr_getflags(&copy, &mut flags);
        let mut mask: libc::sigset_t = std::mem::zeroed();
        if flags & libc::POSIX_SPAWN_SETSIGMASK as libc::c_short != 0 {
            libc::posix_spawnattr_getsigmask(&copy, &mut mask);
        } else {
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
        }
        ctx_hookpath::ending::add_forwarded(&mut mask);
        libc::posix_spawnattr_setsigmask(&mut copy, &mask);
        libc::posix_spawnattr_setflags(
            &mut copy,
            flags | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short,
        );
        copy
    }
}

/// Changes `c` as glibc's `posix_spawn` would change the child with `attr` (null: none):
/// its own signals 32 and 33 are left ignored, whatever the caller's handlers of them (it
/// takes the child's handlers down, and ignores these two where it sets others to their
/// default); `POSIX_SPAWN_SETSIGMASK` replaces the signal mask, `POSIX_SPAWN_SETSIGDEF`
/// resets signals to their default (so they are no longer ignored). The scheduling policy
/// (`POSIX_SPAWN_SETSCHEDULER`/`SETSCHEDPARAM`) is not carried, like any caller's policy:
/// the routed process runs under the broker's (see the README's inheritance table).
/// Process group and session attributes apply to the shim, the pid the caller holds.
///
/// # Safety
/// `attr` is null or an initialised attribute object.
pub unsafe fn apply_attributes(c: &mut Captured, attr: *const libc::posix_spawnattr_t) {
    // Bits 31 and 32: signals 32 and 33 (SIGCANCEL, SIGSETXID).
    c.ignored |= 0b11 << 31;
    if attr.is_null() {
        return;
    }
    // glibc's accessors copy fields out of the object: no lock, no allocation.
    // SAFETY: the caller's initialised object; every out-parameter is ours.
    unsafe {
        let mut flags: libc::c_short = 0;
        libc::posix_spawnattr_getflags(attr, &mut flags);
        let flags = flags as c_int;
        let mut set: libc::sigset_t = std::mem::zeroed();
        if flags & libc::POSIX_SPAWN_SETSIGMASK != 0
            && libc::posix_spawnattr_getsigmask(attr, &mut set) == 0
        {
            c.blocked = first_word(&set);
        }
        if flags & libc::POSIX_SPAWN_SETSIGDEF != 0
            && libc::posix_spawnattr_getsigdefault(attr, &mut set) == 0
        {
            c.ignored &= !first_word(&set);
        }
    }
}

/// Signals 1..=64 of a glibc `sigset_t` (bit n-1 for signal n), as the kernel sees them.
fn first_word(set: &libc::sigset_t) -> u64 {
    // SAFETY: glibc's sigset_t is an array of 1024 bits in unsigned longs, starting with
    // the kernel's 64-bit set.
    unsafe { std::ptr::read_unaligned(set as *const libc::sigset_t as *const u64) }
}

/// Where the spawned child will stand, from the caller's attributes: `POSIX_SPAWN_SETSID`
/// makes it a session leader, `POSIX_SPAWN_SETPGROUP` with group 0 a group leader;
/// otherwise it is a member of the caller's group (or of the one named).
///
/// # Safety
/// `attr` is null or an initialised attributes object.
unsafe fn spawned_grouping(attr: *const libc::posix_spawnattr_t) -> Grouping {
    if attr.is_null() {
        return Grouping::Member;
    }
    let mut flags: libc::c_short = 0;
    let mut pgroup: libc::pid_t = -1;
    // SAFETY: getters that only read the caller's initialised object.
    unsafe {
        libc::posix_spawnattr_getflags(attr, &mut flags);
        libc::posix_spawnattr_getpgroup(attr, &mut pgroup);
    }
    if flags & libc::POSIX_SPAWN_SETSID != 0 {
        Grouping::SessionLeader
    } else if flags as libc::c_int & libc::POSIX_SPAWN_SETPGROUP != 0 && pgroup == 0 {
        Grouping::GroupLeader
    } else {
        Grouping::Member
    }
}

/// Starts the shim with the real `posix_spawn`/`posix_spawnp`: its pid, or the error
/// number. What it needs travels in `argv` and `envp`, never the caller's environment (and
/// so never LD_PRELOAD).
///
/// # Safety
/// `file_actions` and `attr` are null or initialised objects; `argv` and `envp` are
/// NULL-terminated.
unsafe fn start_shim(
    st: &State,
    real: SpawnFn,
    file_actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> Result<libc::pid_t, c_int> {
    let mut pid: libc::pid_t = 0;
    // SAFETY: a valid path and the caller's guarantees above.
    match unsafe { real(&mut pid, st.shim.as_ptr(), file_actions, attr, argv, envp) } {
        0 => Ok(pid),
        rc => Err(rc),
    }
}

/// A descriptor number unlikely to collide with file actions' targets, below the limit.
fn high_fd() -> c_int {
    // SAFETY: rlimit is plain data filled by getrlimit.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes one rlimit.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur.min(1024) as c_int
    } else {
        1024
    };
    (soft / 2).max(3)
}

/// Blocks until the shim reports; `Some(0)` started, `Some(errno)` failed, `None` when the
/// shim exited or closed the pipe without reporting. Also watches the shim's pidfd: another
/// thread's fork may briefly have inherited the write end, so EOF alone is not enough.
fn wait_report(r: c_int, pid: libc::pid_t) -> Option<i32> {
    // SAFETY: pidfd_open has no memory arguments.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as c_int;
    let mut rec = [0u8; REPORT_LEN];
    let mut got = 0usize;
    let result = loop {
        let mut pfd = [sys::poll_in(r), sys::poll_in(pidfd)];
        let nfds = if pidfd >= 0 { 2 } else { 1 };
        // SAFETY: pfd holds nfds entries.
        let n = unsafe { libc::poll(pfd.as_mut_ptr(), nfds, -1) };
        if n < 0 {
            if sys::errno() == libc::EINTR {
                continue;
            }
            break None;
        }
        let exited = pidfd >= 0 && pfd[1].revents != 0;
        if pfd[0].revents != 0 || exited {
            if exited {
                // SAFETY: make the last read non-blocking: the shim is gone, a report is
                // either queued already or will never come.
                unsafe { libc::fcntl(r, libc::F_SETFL, libc::O_NONBLOCK) };
            }
            // SAFETY: reading into the rest of rec.
            let k = unsafe { libc::read(r, rec[got..].as_mut_ptr() as *mut _, REPORT_LEN - got) };
            if k < 0 && sys::errno() == libc::EINTR {
                continue;
            }
            if k <= 0 {
                break None;
            }
            got += k as usize;
            if got == REPORT_LEN {
                break match rec[0] {
                    b'S' => Some(0),
                    b'F' => Some(i32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]])),
                    _ => None,
                };
            }
        }
    };
    if pidfd >= 0 {
        // SAFETY: our descriptor.
        unsafe { libc::close(pidfd) };
    }
    result
}

/// Waits for `pid`, retrying on EINTR; the wait status, or -1.
fn reap(pid: libc::pid_t) -> c_int {
    let mut status = 0;
    loop {
        // SAFETY: status is writable.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return status;
        }
        if r < 0 && sys::errno() == libc::EINTR {
            continue;
        }
        return -1;
    }
}

// ---------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------

/// # Safety
/// The arguments of `posix_spawn(3)`/`posix_spawnp(3)`.
pub unsafe fn posix_spawn_hook(
    pid_out: *mut libc::pid_t,
    path: *const c_char,
    file_actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
    search: bool,
) -> c_int {
    let st = state();
    let Some(real) = real_spawn(st, search) else {
        return libc::ENOSYS;
    };
    if path.is_null() {
        return libc::EFAULT;
    }
    let saved = sys::errno();
    // SAFETY: a C string by contract.
    let p = unsafe { CStr::from_ptr(path) };
    let target = if search {
        Target::Search {
            file: p,
            path: exec::search_path_var(),
        }
    } else {
        Target::Path(p)
    };
    let local = || {
        let mut pid = 0;
        // SAFETY: the caller's arguments, with our own pid slot.
        match unsafe { real(&mut pid, path, file_actions, attr, argv, envp) } {
            0 => Ok(pid),
            e => Err(e),
        }
    };
    // SAFETY: the caller's arguments.
    let r = unsafe { spawn_routed(st, target, file_actions, attr, argv, envp, local) };
    sys::set_errno(saved);
    match r {
        Ok(pid) => {
            if !pid_out.is_null() {
                // SAFETY: the caller's out-parameter.
                unsafe { *pid_out = pid };
            }
            0
        }
        Err(e) => e,
    }
}

/// # Safety
/// The arguments of `pidfd_spawn(3)`/`pidfd_spawnp(3)`.
pub unsafe fn pidfd_spawn_hook(
    pidfd_out: *mut c_int,
    path: *const c_char,
    file_actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
    search: bool,
) -> c_int {
    let st = state();
    // A glibc without them (before 2.39) has none to offer locally either.
    let real = if search {
        st.real.pidfd_spawnp
    } else {
        st.real.pidfd_spawn
    };
    if real.is_none() {
        return libc::ENOSYS;
    }
    let mut pid = 0;
    // SAFETY: the caller's arguments; a routed spawn gives a pid, turned into a pidfd.
    let rc = unsafe { posix_spawn_hook(&mut pid, path, file_actions, attr, argv, envp, search) };
    if rc != 0 {
        return rc;
    }
    let saved = sys::errno();
    // SAFETY: pidfd_open has no memory arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as c_int;
    let e = sys::errno();
    sys::set_errno(saved);
    if fd < 0 {
        return e;
    }
    if !pidfd_out.is_null() {
        // SAFETY: the caller's out-parameter.
        unsafe { *pidfd_out = fd };
    }
    0
}

/// `system(3)` with glibc's signal behaviour: the caller ignores SIGINT/SIGQUIT and blocks
/// SIGCHLD while it waits; the child (the shim, then the routed shell) starts with default
/// SIGINT/SIGQUIT and the caller's original mask.
///
/// # Safety
/// The argument of `system(3)`.
pub unsafe fn system_hook(command: *const c_char) -> c_int {
    let st = state();
    if command.is_null() {
        // A shell is available: in the target context.
        return 1;
    }
    let saved_errno = sys::errno();
    // SAFETY: sigaction/sigset_t are plain data; every call below gets valid pointers.
    unsafe {
        let mut ign: libc::sigaction = std::mem::zeroed();
        ign.sa_sigaction = libc::SIG_IGN;
        libc::sigemptyset(&mut ign.sa_mask);
        let mut old_int: libc::sigaction = std::mem::zeroed();
        let mut old_quit: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGINT, &ign, &mut old_int);
        libc::sigaction(libc::SIGQUIT, &ign, &mut old_quit);
        let mut chld: libc::sigset_t = std::mem::zeroed();
        let mut old_mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &chld, &mut old_mask);

        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        libc::posix_spawnattr_init(&mut attr);
        let mut def: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut def);
        if old_int.sa_sigaction != libc::SIG_IGN {
            libc::sigaddset(&mut def, libc::SIGINT);
        }
        if old_quit.sa_sigaction != libc::SIG_IGN {
            libc::sigaddset(&mut def, libc::SIGQUIT);
        }
        libc::posix_spawnattr_setsigdefault(&mut attr, &def);
        libc::posix_spawnattr_setsigmask(&mut attr, &old_mask);
        libc::posix_spawnattr_setflags(
            &mut attr,
            (libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK) as _,
        );

        let argv: [*const c_char; 4] = [c"sh".as_ptr(), c"-c".as_ptr(), command, std::ptr::null()];
        let envp = crate::current_environ();
        let local = || {
            let mut pid = 0;
            match st.real.posix_spawn {
                Some(f) => match f(
                    &mut pid,
                    c"/bin/sh".as_ptr(),
                    std::ptr::null(),
                    &attr,
                    argv.as_ptr(),
                    envp,
                ) {
                    0 => Ok(pid),
                    e => Err(e),
                },
                None => Err(libc::ENOSYS),
            }
        };
        let r = spawn_routed(
            st,
            Target::Path(c"/bin/sh"),
            std::ptr::null(),
            &attr,
            argv.as_ptr(),
            envp,
            local,
        );
        let status = match r {
            Ok(pid) => reap(pid),
            // As glibc: a shell that could not be started "exited 127".
            Err(_) => 127 << 8,
        };
        libc::posix_spawnattr_destroy(&mut attr);
        libc::sigaction(libc::SIGINT, &old_int, std::ptr::null_mut());
        libc::sigaction(libc::SIGQUIT, &old_quit, std::ptr::null_mut());
        libc::sigprocmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut());
        sys::set_errno(saved_errno);
        status
    }
}

/// Streams opened by our `popen`, with the shim's pid. popen is not async-signal-safe, so a
/// lock and heap are fine here.
static POPEN: Mutex<Vec<(usize, libc::pid_t)>> = Mutex::new(Vec::new());

fn popen_table() -> std::sync::MutexGuard<'static, Vec<(usize, libc::pid_t)>> {
    POPEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// # Safety
/// The arguments of `popen(3)`.
pub unsafe fn popen_hook(command: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    let st = state();
    if command.is_null() || mode.is_null() {
        sys::set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    // SAFETY: a C string by contract.
    let m = unsafe { sys::cstr(mode) };
    let reading = match m.first() {
        Some(b'r') => true,
        Some(b'w') => false,
        _ => {
            sys::set_errno(libc::EINVAL);
            return std::ptr::null_mut();
        }
    };
    let cloexec = m.contains(&b'e');
    let mut p = [0i32; 2];
    // SAFETY: pipe2 fills the array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return std::ptr::null_mut();
    }
    let (parent, child, target) = if reading {
        (p[0], p[1], 1)
    } else {
        (p[1], p[0], 0)
    };
    let saved = sys::errno();
    let mut table = popen_table();
    // SAFETY: file actions are initialised before use and destroyed below.
    let r = unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        libc::posix_spawn_file_actions_init(&mut fa);
        // dup2 onto itself clears close-on-exec (glibc >= 2.29).
        libc::posix_spawn_file_actions_adddup2(&mut fa, child, target);
        // POSIX: the child must not inherit the other popen streams.
        for &(fp, _) in table.iter() {
            let fd = libc::fileno(fp as *mut libc::FILE);
            if fd >= 0 && fd != target {
                libc::posix_spawn_file_actions_addclose(&mut fa, fd);
            }
        }
        let argv: [*const c_char; 4] = [c"sh".as_ptr(), c"-c".as_ptr(), command, std::ptr::null()];
        let envp = crate::current_environ();
        let local = || {
            let mut pid = 0;
            match st.real.posix_spawn {
                Some(f) => match f(
                    &mut pid,
                    c"/bin/sh".as_ptr(),
                    &fa,
                    std::ptr::null(),
                    argv.as_ptr(),
                    envp,
                ) {
                    0 => Ok(pid),
                    e => Err(e),
                },
                None => Err(libc::ENOSYS),
            }
        };
        let r = spawn_routed(
            st,
            Target::Path(c"/bin/sh"),
            &fa,
            std::ptr::null(),
            argv.as_ptr(),
            envp,
            local,
        );
        libc::posix_spawn_file_actions_destroy(&mut fa);
        libc::close(child);
        r
    };
    let pid = match r {
        Ok(pid) => pid,
        Err(e) => {
            // SAFETY: our descriptor.
            unsafe { libc::close(parent) };
            sys::set_errno(e);
            return std::ptr::null_mut();
        }
    };
    if !cloexec {
        // SAFETY: our descriptor: popen streams are inheritable unless "e" was given.
        unsafe { libc::fcntl(parent, libc::F_SETFD, 0) };
    }
    let fmode: &CStr = if reading { c"r" } else { c"w" };
    // SAFETY: our descriptor and a valid mode string.
    let fp = unsafe { libc::fdopen(parent, fmode.as_ptr()) };
    if fp.is_null() {
        let e = sys::errno();
        // SAFETY: our descriptor; the shim sees EOF/EPIPE and finishes on its own.
        unsafe { libc::close(parent) };
        reap(pid);
        sys::set_errno(e);
        return std::ptr::null_mut();
    }
    table.push((fp as usize, pid));
    sys::set_errno(saved);
    fp
}

/// # Safety
/// The argument of `pclose(3)`.
pub unsafe fn pclose_hook(stream: *mut libc::FILE) -> c_int {
    let st = state();
    let ours = {
        let mut t = popen_table();
        t.iter()
            .position(|&(fp, _)| fp == stream as usize)
            .map(|i| t.swap_remove(i).1)
    };
    match ours {
        Some(pid) => {
            // SAFETY: a stream our popen opened with fdopen.
            unsafe { libc::fclose(stream) };
            reap(pid)
        }
        None => match st.real.pclose {
            // SAFETY: forwarding unchanged.
            Some(f) => unsafe { f(stream) },
            None => -1,
        },
    }
}
