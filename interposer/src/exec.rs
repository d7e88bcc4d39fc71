//! The exec-family hook path. It may run between `vfork` and `execve` in a threaded
//! program, so it allocates nothing (stack and `mmap` only), takes no lock, uses no stdio
//! and cannot panic. On success the caller's process becomes the shim (same pid), which
//! holds the broker connection for the routed program's lifetime.

use std::ffi::{c_char, c_int, CStr};

use ctx_protocol::Captured;

use crate::fork_relay;
use crate::state::{self, state, State};
use ctx_hookpath::conn::{self, Verdict};
use ctx_hookpath::ending;
use ctx_hookpath::fds::{self, scan_failure, InlineFds};
use ctx_hookpath::sys::{self, MmapBuf};
use ctx_hookpath::wire::{self, ExecRef, StrList};
use ctx_protocol::Grouping;

type Argv = *const *const c_char;

/// Reply room after the encoded request: greeting plus a verdict with its messages.
const REPLY_ROOM: usize = 64 * 1024;

/// glibc's PATH when the variable is unset (`_CS_PATH`).
pub const DEFAULT_PATH: &CStr = c"/bin:/usr/bin";

/// What to execute.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// This file, as `execve` does.
    Path(&'a CStr),
    /// `file` searched along `path`, as `execvp` does (with the `/bin/sh` fallback).
    Search { file: &'a CStr, path: &'a CStr },
}

impl<'a> Target<'a> {
    pub fn program(&self) -> &'a CStr {
        match *self {
            Target::Path(p) => p,
            Target::Search { file, .. } => file,
        }
    }

    pub fn search_path(&self) -> Option<&'a [u8]> {
        match *self {
            Target::Path(_) => None,
            Target::Search { path, .. } => Some(path.to_bytes()),
        }
    }
}

/// The caller's PATH for an execvp-style search (glibc reads the process environment,
/// not the `envp` being passed).
pub fn search_path_var() -> &'static CStr {
    // SAFETY: getenv reads the environment without allocating; the string lives in it.
    let p = unsafe { libc::getenv(c"PATH".as_ptr()) };
    if p.is_null() {
        DEFAULT_PATH
    } else {
        // SAFETY: a valid C string from the environment.
        unsafe { CStr::from_ptr(p) }
    }
}

/// The errno a local exec of `target` would certainly fail with, decided without the
/// broker. PATH-searching callers (libuv, CPython, musl) exec each candidate and expect a
/// quick ENOENT for the ones that do not exist.
pub fn local_failure(target: Target<'_>) -> Option<i32> {
    let prog = target.program();
    let bytes = prog.to_bytes();
    if bytes.is_empty() {
        return Some(libc::ENOENT);
    }
    if let Target::Search { file, path } = target {
        if !bytes.contains(&b'/') {
            // The broker searches in the target context, but when no candidate exists
            // here at all the answer is ENOENT without a round trip (and not the EACCES
            // the target uid may meet on PATH entries only the caller can enter).
            return nothing_on_path(file.to_bytes(), path.to_bytes()).then_some(libc::ENOENT);
        }
    }
    // SAFETY: stat is plain data.
    let mut sb: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: prog is NUL-terminated; sb is writable.
    if unsafe { libc::stat(prog.as_ptr(), &mut sb) } != 0 {
        let e = sys::errno();
        return match e {
            libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG | libc::EACCES => {
                Some(e)
            }
            _ => None,
        };
    }
    // Not a regular file, or executable by nobody: EACCES for any uid.
    if sb.st_mode & libc::S_IFMT != libc::S_IFREG || sb.st_mode & 0o111 == 0 {
        return Some(libc::EACCES);
    }
    None
}

/// Writes `dir/file` (an empty `dir` is the cwd, as in `execvp`) NUL-terminated into `buf`;
/// its length without the NUL, or `None` when it does not fit.
fn candidate(dir: &[u8], file: &[u8], buf: &mut [u8; 4096]) -> Option<usize> {
    let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
    let n = dir.len() + 1 + file.len();
    if n >= buf.len() {
        return None;
    }
    buf[..dir.len()].copy_from_slice(dir);
    buf[dir.len()] = b'/';
    buf[dir.len() + 1..n].copy_from_slice(file);
    buf[n] = 0;
    Some(n)
}

/// True when `dir/file` does not exist for any entry of `path`.
fn nothing_on_path(file: &[u8], path: &[u8]) -> bool {
    let mut buf = [0u8; 4096];
    for dir in path.split(|&b| b == b':') {
        if candidate(dir, file, &mut buf).is_none() {
            continue;
        }
        // SAFETY: stat is plain data; buf holds a NUL-terminated path.
        let mut sb: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::stat(buf.as_ptr() as *const c_char, &mut sb) } == 0 {
            return false;
        }
        if !matches!(
            sys::errno(),
            libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG
        ) {
            return false;
        }
    }
    true
}

/// The first executable `dir/file` along `path`, written into `buf`.
fn resolve_in_path<'b>(file: &[u8], path: &[u8], buf: &'b mut [u8; 4096]) -> Option<&'b [u8]> {
    for dir in path.split(|&b| b == b':') {
        let Some(n) = candidate(dir, file, buf) else {
            continue;
        };
        // SAFETY: buf holds a NUL-terminated candidate path.
        if unsafe { libc::access(buf.as_ptr() as *const c_char, libc::X_OK) } == 0 {
            return Some(&buf[..n]);
        }
    }
    None
}

/// The first `dir/file` along `path` that is a regular file with an execute bit, as a
/// C string in `buf`: what `posix_spawnp` (which has no `/bin/sh` fallback) would run.
pub fn first_executable_on_path<'b>(
    file: &[u8],
    path: &[u8],
    buf: &'b mut [u8; 4096],
) -> Option<&'b CStr> {
    for dir in path.split(|&b| b == b':') {
        let Some(n) = candidate(dir, file, buf) else {
            continue;
        };
        // SAFETY: stat is plain data; buf holds a NUL-terminated path.
        let mut sb: libc::stat = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::stat(buf.as_ptr() as *const c_char, &mut sb) } == 0
            && sb.st_mode & libc::S_IFMT == libc::S_IFREG
            && sb.st_mode & 0o111 != 0;
        if ok {
            return CStr::from_bytes_with_nul(&buf[..=n]).ok();
        }
    }
    None
}

/// Whether `CTX_PASSTHROUGH` keeps this launch local.
pub fn is_passthrough(st: &State, target: Target<'_>) -> bool {
    let list = st.passthrough.bytes();
    if list.is_empty() {
        return false;
    }
    let name = target.program().to_bytes();
    let mut buf = [0u8; 4096];
    let resolved = match target {
        Target::Search { file, path }
            if !file.to_bytes().contains(&b'/') && state::passthrough_has_paths(list) =>
        {
            resolve_in_path(file.to_bytes(), path.to_bytes(), &mut buf)
        }
        _ => None,
    };
    state::passthrough_matches(list, name, resolved)
}

/// argv[0], or the program when argv is empty: the name messages use.
///
/// # Safety
/// `argv` is null or a NULL-terminated array of C strings.
pub unsafe fn display_name<'a>(argv: Argv, target: Target<'a>) -> &'a [u8] {
    if !argv.is_null() {
        // SAFETY: a non-null array has at least its terminator.
        let a0 = unsafe { *argv };
        if !a0.is_null() {
            // SAFETY: a valid C string.
            let b = unsafe { sys::cstr(a0) };
            if !b.is_empty() {
                return b;
            }
        }
    }
    target.program().to_bytes()
}

/// `EPERM`, with one line on stderr, when this process changed its uid, gid or groups
/// since the library loaded (a child dropping privileges before exec:
/// `subprocess.run(user=...)`, Node's `uid:`, `preexec_fn=os.setuid`). The routed program
/// would run as the context's user whatever identity was asked for: more privilege than the
/// caller wanted when the context's user is the stronger one, and a different identity in
/// every case. So it is refused; `CTX_PASSTHROUGH` runs such a program here, as asked.
pub fn refuse_changed_identity(st: &State, name: &[u8]) -> Option<i32> {
    let now = state::Creds::current();
    let was = &st.creds;
    if now == *was {
        return None;
    }
    let mut l = conn::refusal(st.route_str(), name);
    l.str("this process changed its ");
    let pair = |l: &mut sys::Line, what: &str, from: u32, to: u32| {
        let mut tmp = [0u8; 24];
        l.str(what)
            .str(" from ")
            .push(sys::fmt_i64(from as i64, &mut tmp));
        l.str(" to ").push(sys::fmt_i64(to as i64, &mut tmp));
    };
    if now.uid != was.uid || now.euid != was.euid {
        let (from, to) = if now.euid != was.euid {
            (was.euid, now.euid)
        } else {
            (was.uid, now.uid)
        };
        pair(&mut l, "uid", from, to);
    } else if now.gid != was.gid || now.egid != was.egid {
        let (from, to) = if now.egid != was.egid {
            (was.egid, now.egid)
        } else {
            (was.gid, now.gid)
        };
        pair(&mut l, "gid", from, to);
    } else {
        l.str("supplementary groups");
    }
    l.str(
        " before exec; a routed launch runs as the context's user, not as the identity \
         it switched to, so it is refused (EPERM); switch inside the routed program instead, \
         or name the program in CTX_PASSTHROUGH to run it here",
    )
    .write_to(2);
    Some(libc::EPERM)
}

pub fn fail(errno: i32) -> c_int {
    sys::set_errno(errno);
    -1
}

/// The outcome of sending a launch to the broker.
pub enum Sent {
    /// The broker accepted (or started) it; the connection must now be held by a shim.
    Routed { sock: i32, pty_mask: u8 },
    /// The broker is unreachable and `CTX_ON_BROKER_DOWN=local` says run it here.
    Local,
    /// It failed (the errno a local exec would give) or was refused (EACCES, with the
    /// reason already on stderr).
    Failed(i32),
}

/// A descriptor of ours, closed when dropped.
struct OwnFd(c_int);

impl Drop for OwnFd {
    fn drop(&mut self) {
        if self.0 >= 0 {
            // SAFETY: a descriptor this module opened and nothing else holds.
            unsafe { libc::close(self.0) };
        }
    }
}

/// Sends one launch, with this process's inheritable descriptors, cwd (its name and a
/// descriptor) and what else a child inherits across exec (umask, limits, scheduling,
/// signal state; for a `posix_spawn`, changed as glibc's would change them with `spawn`'s
/// attribute object, null or not), and reads the verdict. No allocation: it runs in vfork
/// children too.
///
/// # Safety
/// `argv`/`envp` are null or NULL-terminated arrays of C strings; `spawn` holds null or an
/// initialised attribute object.
pub unsafe fn send(
    st: &State,
    target: Target<'_>,
    argv: Argv,
    envp: Argv,
    grouping: Grouping,
    spawn: Option<*const libc::posix_spawnattr_t>,
) -> Sent {
    // SAFETY: the caller's contract.
    let name = unsafe { display_name(argv, target) };
    let context = st.route_str();
    if let Some(why) = st.problem {
        let mut l = conn::refusal(context, name);
        l.str(why)
            .str(" (")
            .push(st.shim.bytes())
            .str(")")
            .write_to(2);
        return Sent::Failed(libc::EACCES);
    }

    // Connected first: the broker identifies the caller (its `/proc` entries, its cgroup)
    // on its other CPU while this process gathers what it inherits. The socket is
    // close-on-exec, so the scan below never counts it among the passed descriptors.
    let sock = match conn::connect(st.socket.bytes_nul()) {
        Ok(s) => s,
        Err(e) if st.local_when_down => {
            conn::running_locally(context, name, st.socket.bytes(), e);
            return Sent::Local;
        }
        Err(e) => {
            let mut l = conn::refusal(context, name);
            l.str("broker at ")
                .push(st.socket.bytes())
                .str(" unreachable: ")
                .errno_name(e)
                .write_to(2);
            return Sent::Failed(libc::EACCES);
        }
    };
    let failed = |e: i32| {
        // SAFETY: our socket, closed once on the way out.
        unsafe { libc::close(sock) };
        Sent::Failed(e)
    };
    let mut inline = InlineFds::new();
    let mut big = None;
    let mut set = match fds::scan_any(&mut inline, &mut big, sock) {
        Ok(set) => set,
        Err(e) => {
            let mut l = conn::refusal(context, name);
            l.str(scan_failure(e)).write_to(2);
            return failed(libc::EMFILE);
        }
    };
    let mut cwd = [0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: getcwd writes at most cwd.len() bytes; with a buffer it never allocates.
    let cwd_bytes: &[u8] =
        if unsafe { libc::getcwd(cwd.as_mut_ptr() as *mut c_char, cwd.len()) }.is_null() {
            // A deleted or unreachable cwd: the broker reports it as a bad cwd if it needs it.
            b""
        } else {
            // SAFETY: getcwd NUL-terminated the buffer.
            unsafe { sys::cstr(cwd.as_ptr() as *const c_char) }
        };
    let mut inherited = Captured::read();
    if let Some(attr) = spawn {
        // SAFETY: the caller's contract on `spawn`.
        unsafe { crate::spawn::apply_attributes(&mut inherited, attr) };
    }
    // The descriptor rides after the inheritable ones, if the storage has room for it;
    // without it, the broker uses the name alone.
    let cwd_fd = OwnFd(fds::open_cwd());
    if cwd_fd.0 >= 0 && set.push_unslotted(cwd_fd.0) {
        inherited.cwd_fd = true;
    }

    let req = ExecRef {
        context,
        argv: StrList::C(argv),
        program: Some(target.program().to_bytes()),
        search_path: target.search_path(),
        env: StrList::C(envp),
        cwd: cwd_bytes,
        fds: set.slots(),
        tty: set.tty.as_ref(),
        grouping,
        inherited: Some(&inherited),
    };
    let bound = req.encoded_bound();
    let Some(mut mem) = MmapBuf::new(bound + REPLY_ROOM) else {
        return failed(libc::ENOMEM);
    };
    let (out, reply) = mem.bytes_mut().split_at_mut(bound);
    let Ok(n) = wire::encode_launch(&req, out) else {
        // Only a launch over the protocol's frame limit (far above ARG_MAX) gets here.
        return failed(libc::E2BIG);
    };
    let verdict = conn::exchange(sock, st.socket.bytes_nul(), &out[..n], set.passed(), reply);
    drop(cwd_fd);
    let refused = match verdict {
        Verdict::Started { .. } | Verdict::Accepted => None,
        Verdict::Failed { errno, .. } => Some(errno),
        ref v => {
            let mut l = conn::refusal(context, name);
            conn::explain(&mut l, st.socket.bytes(), v);
            l.write_to(2);
            Some(libc::EACCES)
        }
    };
    if let Some(e) = refused {
        return failed(e);
    }
    conn::clear_timeout(sock);
    Sent::Routed {
        sock,
        pty_mask: set.pty_mask,
    }
}

/// Routes one exec. `local` runs the real function (passthrough, and an unreachable broker
/// under `CTX_ON_BROKER_DOWN=local`). Returns only on failure, with errno set as a local
/// exec would have set it.
///
/// # Safety
/// `argv`/`envp` are null or NULL-terminated arrays of C strings.
pub unsafe fn route(
    st: &State,
    target: Target<'_>,
    argv: Argv,
    envp: Argv,
    local: impl FnOnce() -> c_int,
) -> c_int {
    if is_passthrough(st, target) {
        return local();
    }
    if let Some(e) = local_failure(target) {
        return fail(e);
    }
    // SAFETY: the caller's array.
    if let Some(e) = refuse_changed_identity(st, unsafe { display_name(argv, target) }) {
        return fail(e);
    }
    // SAFETY: the caller's arrays.
    let grouping = wire::own_grouping();
    // The program takes this process's place: its parent is who launched it.
    // SAFETY: plain getter.
    let launcher = unsafe { libc::getppid() };
    let (sock, pty_mask) = match unsafe { send(st, target, argv, envp, grouping, None) } {
        Sent::Routed { sock, pty_mask } => (sock, pty_mask),
        Sent::Local => return local(),
        Sent::Failed(e) => return fail(e),
    };
    let program = target.program().to_bytes();
    let mask = ending::block_forwarded();
    if pty_mask == 0 && fork_relay::may_relay() {
        // SAFETY: a single-threaded process with its own memory, no terminal involved.
        unsafe { fork_relay::relay(st, sock, launcher, program, argv) }
    }
    // SAFETY: the caller's array becomes the shim's argv.
    let e = unsafe { exec_shim(st, sock, pty_mask, launcher, program, argv) };
    ending::restore_mask(&mask);
    // The routed program runs but nothing can hold its connection: closing it makes the
    // broker kill it, and the caller sees a failed exec.
    // SAFETY: our socket.
    unsafe { libc::close(sock) };
    // SAFETY: the caller's array.
    let name = unsafe { display_name(argv, target) };
    let mut l = conn::refusal(st.route_str(), name);
    l.str("cannot start ")
        .push(st.shim.bytes())
        .str(": ")
        .errno_name(e)
        .write_to(2);
    fail(e)
}

/// How the shim is started for an accepted launch. Its argv is the program's own, so that
/// `/proc/PID/cmdline` of the pid the caller holds (`ps`, `pgrep -f`, psutil) shows what
/// the caller ran; its parameters travel in its only environment variable,
/// `CTX_SHIM_ATTACH=<sock>,<pty-mask>,<launcher-pid>,<comm>`, where the launcher is the
/// process the program's signals to its parent go to (see `ctx_protocol::launcher`) and comm is
/// what the program's `/proc/PID/comm` will read (the basename of the executed path, as
/// the kernel sets it), which the shim takes for its own.
pub struct ShimLaunch {
    var: [u8; 64],
}

impl ShimLaunch {
    pub fn new(sock: i32, pty_mask: u8, launcher: libc::pid_t, program: &[u8]) -> ShimLaunch {
        let mut var = [0u8; 64];
        let mut n = 0;
        let mut put = |b: &[u8]| {
            // Fits: 16 + 11 + 3 + 11 + 1 + 15 bytes and the NUL.
            var[n..n + b.len()].copy_from_slice(b);
            n += b.len();
        };
        put(ctx_hookpath::ATTACH_VAR.as_bytes());
        put(b"=");
        let mut tmp = [0u8; 24];
        put(sys::fmt_i64(sock as i64, &mut tmp));
        put(&[b',', b'0' + (pty_mask & 15).min(9), b',']);
        put(sys::fmt_i64(launcher.max(0) as i64, &mut tmp));
        put(b",");
        let comm = sys::basename(program);
        put(&comm[..comm.len().min(sys::COMM_LEN)]);
        ShimLaunch { var }
    }

    pub fn envp(&self) -> [*const c_char; 2] {
        [self.var.as_ptr() as *const c_char, std::ptr::null()]
    }
}

/// The argv to start the shim with: the caller's, or `[""]` when it is null or empty (a
/// process always has an argv[0], as the kernel gives one since 5.18).
///
/// # Safety
/// `argv` is null or a NULL-terminated array of C strings.
pub unsafe fn shim_argv(argv: Argv, empty: &mut [*const c_char; 2]) -> Argv {
    // SAFETY: a non-null array has at least its terminator.
    if argv.is_null() || unsafe { (*argv).is_null() } {
        *empty = [c"".as_ptr(), std::ptr::null()];
        return empty.as_ptr();
    }
    argv
}

/// Replaces this process with the shim attached to `sock` (see [`ShimLaunch`]), without
/// the caller's environment (LD_PRELOAD must not follow it). Returns only on failure, the
/// errno.
///
/// # Safety
/// `argv` is null or a NULL-terminated array of C strings.
pub unsafe fn exec_shim(
    st: &State,
    sock: i32,
    pty_mask: u8,
    launcher: libc::pid_t,
    program: &[u8],
    argv: Argv,
) -> i32 {
    // SAFETY: clearing close-on-exec on our own socket so the shim inherits it.
    unsafe { libc::fcntl(sock, libc::F_SETFD, 0) };
    let launch = ShimLaunch::new(sock, pty_mask, launcher, program);
    let envp = launch.envp();
    let mut empty = [std::ptr::null(); 2];
    // SAFETY: the caller's array.
    let argv = unsafe { shim_argv(argv, &mut empty) };
    match st.real.execve {
        Some(f) => {
            // SAFETY: NUL-terminated path and NULL-terminated arrays alive for the call.
            unsafe { f(st.shim.as_ptr(), argv, envp.as_ptr()) };
            sys::errno()
        }
        None => libc::ENOSYS,
    }
}

// ---------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------

/// # Safety
/// The arguments of `execve(2)`.
pub unsafe fn execve_hook(path: *const c_char, argv: Argv, envp: Argv) -> c_int {
    let st = state();
    let real = || match st.real.execve {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(path, argv, envp) },
        None => fail(libc::ENOSYS),
    };
    if path.is_null() {
        return fail(libc::EFAULT);
    }
    // SAFETY: a non-null path is a C string by execve's contract.
    let p = unsafe { CStr::from_ptr(path) };
    // SAFETY: the caller's arrays.
    unsafe { route(st, Target::Path(p), argv, envp, real) }
}

/// `execvp`/`execvpe`/`execlp`: the PATH search happens in the target context.
///
/// # Safety
/// The arguments of `execvpe(3)`.
pub unsafe fn execvpe_hook(file: *const c_char, argv: Argv, envp: Argv) -> c_int {
    let st = state();
    let real = || match st.real.execvpe {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(file, argv, envp) },
        None => fail(libc::ENOSYS),
    };
    if file.is_null() {
        return fail(libc::EFAULT);
    }
    // SAFETY: a C string by contract.
    let f = unsafe { CStr::from_ptr(file) };
    let target = Target::Search {
        file: f,
        path: search_path_var(),
    };
    // SAFETY: the caller's arrays.
    unsafe { route(st, target, argv, envp, real) }
}

/// The path `/proc/self/fd/<fd>` points at, if it is a real path (not a memfd, socket,
/// or deleted file), NUL-terminated in `buf`.
fn fd_path(fd: c_int, buf: &mut [u8; 4097]) -> Option<&CStr> {
    let mut link = [0u8; 40];
    let prefix = b"/proc/self/fd/";
    let mut tmp = [0u8; 24];
    let digits = sys::fmt_i64(fd as i64, &mut tmp);
    link[..prefix.len()].copy_from_slice(prefix);
    link[prefix.len()..prefix.len() + digits.len()].copy_from_slice(digits);
    // SAFETY: link is NUL-terminated (zero-filled); buf has room for the result.
    let n = unsafe {
        libc::readlink(
            link.as_ptr() as *const c_char,
            buf.as_mut_ptr() as *mut c_char,
            buf.len() - 1,
        )
    };
    if n <= 0 || n as usize >= buf.len() - 1 {
        return None;
    }
    let n = n as usize;
    buf[n] = 0;
    let s = &buf[..n];
    if s.first() != Some(&b'/') || s.ends_with(b" (deleted)") {
        return None;
    }
    CStr::from_bytes_with_nul(&buf[..=n]).ok()
}

fn refuse_pathless(st: &State, argv: Argv, what: &[u8]) -> c_int {
    // SAFETY: the caller's array; a dummy target supplies the fallback name.
    let name = unsafe { display_name(argv, Target::Path(c"?")) };
    let mut l = conn::refusal(st.route_str(), name);
    l.push(what)
        .str(" has no path the broker can open (memfd or deleted file)")
        .write_to(2);
    fail(libc::EACCES)
}

/// `fexecve`: routed by the path behind the descriptor. A descriptor without one (memfd,
/// unlinked file) cannot be executed in another context and fails closed.
///
/// # Safety
/// The arguments of `fexecve(3)`.
pub unsafe fn fexecve_hook(fd: c_int, argv: Argv, envp: Argv) -> c_int {
    let st = state();
    let real = || match st.real.fexecve {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(fd, argv, envp) },
        None => fail(libc::ENOSYS),
    };
    if fds::fd_cloexec(fd).is_none() {
        return fail(libc::EBADF);
    }
    let mut buf = [0u8; 4097];
    match fd_path(fd, &mut buf) {
        // SAFETY: the caller's arrays.
        Some(p) => unsafe { route(st, Target::Path(p), argv, envp, real) },
        None => refuse_pathless(st, argv, b"the executable's descriptor"),
    }
}

/// `execveat`: the path is made absolute from `dirfd`; `AT_EMPTY_PATH` with an empty path
/// is `fexecve`; `AT_SYMLINK_NOFOLLOW` on a symlink fails locally with ELOOP.
///
/// # Safety
/// The arguments of `execveat(2)`.
pub unsafe fn execveat_hook(
    dirfd: c_int,
    path: *const c_char,
    argv: Argv,
    envp: Argv,
    flags: c_int,
) -> c_int {
    let st = state();
    let real = || match st.real.execveat {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(dirfd, path, argv, envp, flags) },
        None => fail(libc::ENOSYS),
    };
    if path.is_null() {
        return fail(libc::EFAULT);
    }
    // SAFETY: a C string by contract.
    let p = unsafe { CStr::from_ptr(path) };
    let rel = p.to_bytes();
    let mut dirbuf = [0u8; 4097];
    let mut full = [0u8; 4097];
    let target: &CStr = if rel.is_empty() {
        if flags & libc::AT_EMPTY_PATH == 0 {
            return fail(libc::ENOENT);
        }
        if fds::fd_cloexec(dirfd).is_none() {
            return fail(libc::EBADF);
        }
        match fd_path(dirfd, &mut dirbuf) {
            Some(t) => t,
            None => return refuse_pathless(st, argv, b"the executable's descriptor"),
        }
    } else if rel.first() == Some(&b'/') || dirfd == libc::AT_FDCWD {
        p
    } else {
        if fds::fd_cloexec(dirfd).is_none() {
            return fail(libc::EBADF);
        }
        let Some(dir) = fd_path(dirfd, &mut dirbuf) else {
            return refuse_pathless(st, argv, b"the directory descriptor");
        };
        let d = dir.to_bytes();
        let n = d.len() + 1 + rel.len();
        if n >= full.len() {
            return fail(libc::ENAMETOOLONG);
        }
        full[..d.len()].copy_from_slice(d);
        full[d.len()] = b'/';
        full[d.len() + 1..n].copy_from_slice(rel);
        match CStr::from_bytes_with_nul(&full[..=n]) {
            Ok(c) => c,
            Err(_) => return fail(libc::EINVAL),
        }
    };
    if flags & libc::AT_SYMLINK_NOFOLLOW != 0 {
        // SAFETY: stat is plain data; target is NUL-terminated.
        let mut sb: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::lstat(target.as_ptr(), &mut sb) } == 0
            && sb.st_mode & libc::S_IFMT == libc::S_IFLNK
        {
            return fail(libc::ELOOP);
        }
    }
    // SAFETY: the caller's arrays.
    unsafe { route(st, Target::Path(target), argv, envp, real) }
}
