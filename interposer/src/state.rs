//! What is settled once, when the preloaded library loads this one: whether to route,
//! where to (context, socket), what stays local, where the shim is, and the real libc
//! functions (found by the preloaded library). Hooks only read it, so routing survives a
//! program that later clears its environment.

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Once;

use ctx_protocol::vars;

use ctx_hookpath::sys;

pub type ExecveFn =
    unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;
pub type ExecvFn = unsafe extern "C" fn(*const c_char, *const *const c_char) -> c_int;
pub type FexecveFn =
    unsafe extern "C" fn(c_int, *const *const c_char, *const *const c_char) -> c_int;
pub type ExecveatFn = unsafe extern "C" fn(
    c_int,
    *const c_char,
    *const *const c_char,
    *const *const c_char,
    c_int,
) -> c_int;
pub type SpawnFn = unsafe extern "C" fn(
    *mut libc::pid_t,
    *const c_char,
    *const libc::posix_spawn_file_actions_t,
    *const libc::posix_spawnattr_t,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
pub type PidfdSpawnFn = unsafe extern "C" fn(
    *mut c_int,
    *const c_char,
    *const libc::posix_spawn_file_actions_t,
    *const libc::posix_spawnattr_t,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
pub type SystemFn = unsafe extern "C" fn(*const c_char) -> c_int;
pub type PopenFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut libc::FILE;
pub type PcloseFn = unsafe extern "C" fn(*mut libc::FILE) -> c_int;

/// Version of [`Launchers`]' layout, shared with `preload.c`'s `struct ctx_launchers`.
pub const LAUNCHERS_VERSION: u32 = 1;

/// The launch functions, as `preload.c` lays them out: the real ones it found (the next
/// definitions after it, normally glibc's), or this library's hooks it forwards to.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Launchers {
    pub size: u32,
    pub version: u32,
    pub execve: Option<ExecveFn>,
    pub execv: Option<ExecvFn>,
    pub execvp: Option<ExecvFn>,
    pub execvpe: Option<ExecveFn>,
    pub fexecve: Option<FexecveFn>,
    pub execveat: Option<ExecveatFn>,
    pub posix_spawn: Option<SpawnFn>,
    pub posix_spawnp: Option<SpawnFn>,
    pub pidfd_spawn: Option<PidfdSpawnFn>,
    pub pidfd_spawnp: Option<PidfdSpawnFn>,
    pub system: Option<SystemFn>,
    pub popen: Option<PopenFn>,
    pub pclose: Option<PcloseFn>,
}

/// A NUL-terminated string in a fixed buffer.
pub struct FixedStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> FixedStr<N> {
    const fn empty() -> Self {
        FixedStr {
            buf: [0; N],
            len: 0,
        }
    }

    /// Fills in place (the state lives in a static; no 4 KiB moves at load). `None`, and
    /// unchanged, when `s` does not fit.
    fn set(&mut self, s: &[u8]) -> Option<()> {
        sys::to_cbuf(s, &mut self.buf)?;
        self.len = s.len();
        Some(())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// With the terminating NUL.
    pub fn bytes_nul(&self) -> &[u8] {
        &self.buf[..=self.len]
    }

    pub fn as_ptr(&self) -> *const c_char {
        self.buf.as_ptr() as *const c_char
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub use ctx_protocol::DEFAULT_SOCKET;

/// Only a process that routes loads this library (`preload.c` loads it when `CTX_ROUTE` is
/// set), so there is no "not routing" state here.
pub struct State {
    /// The target context (valid UTF-8 when `problem` is `None`).
    pub route: FixedStr<256>,
    pub socket: FixedStr<108>,
    /// `CTX_PASSTHROUGH`, colon-separated.
    pub passthrough: FixedStr<4096>,
    pub shim: FixedStr<4096>,
    /// `CTX_ON_BROKER_DOWN=local`: when the broker cannot be reached (connect fails), the
    /// launch runs locally instead of failing closed. Anything else means fail.
    pub local_when_down: bool,
    /// Why routing cannot work at all (bad variable, missing shim); every routed launch then
    /// fails closed with this reason.
    pub problem: Option<&'static str>,
    pub real: Launchers,
    /// For `posix_spawn` without file actions: the descriptor number the broker connection
    /// is placed at for the shim (`dup3` with close-on-exec), and file actions, built here
    /// at load because building them allocates, that `dup2` it onto itself, which clears
    /// close-on-exec in the shim only. `attach_fd` is -1 when they could not be built.
    pub attach_fd: c_int,
    pub attach_actions: libc::posix_spawn_file_actions_t,
    /// `CTX_RELAY_MS`: how long a fork child relays a launch itself before it execs the
    /// shim (default [`crate::fork_relay::HANDOFF_MS`]; 0: at once).
    pub relay_ms: i64,
    /// This process's identity when the library loaded: a launch after the process changed
    /// it (`subprocess.run(user=...)`, `preexec_fn=os.setuid`) is refused.
    pub creds: Creds,
}

/// Supplementary groups compared one by one; beyond these only their count is.
const GROUPS_COMPARED: usize = 32;

/// A process's real and effective ids and supplementary groups.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
    pub ngroups: i32,
    pub groups: [u32; GROUPS_COMPARED],
}

impl Creds {
    const NONE: Creds = Creds {
        uid: 0,
        euid: 0,
        gid: 0,
        egid: 0,
        ngroups: 0,
        groups: [0; GROUPS_COMPARED],
    };

    /// This process's, now. Plain syscalls on the stack: the hook path may call it.
    pub fn current() -> Creds {
        let mut c = Creds::NONE;
        // SAFETY: plain getters; getgroups writes at most GROUPS_COMPARED ids into the
        // array when the process has no more than that, and only counts otherwise.
        unsafe {
            c.uid = libc::getuid();
            c.euid = libc::geteuid();
            c.gid = libc::getgid();
            c.egid = libc::getegid();
            c.ngroups = libc::getgroups(0, std::ptr::null_mut());
            if (0..=GROUPS_COMPARED as i32).contains(&c.ngroups) {
                c.ngroups = libc::getgroups(GROUPS_COMPARED as i32, c.groups.as_mut_ptr());
            }
        }
        c
    }
}

impl State {
    pub fn route_str(&self) -> &str {
        std::str::from_utf8(self.route.bytes()).unwrap_or("?")
    }
}

impl Launchers {
    const NONE: Launchers = Launchers {
        size: std::mem::size_of::<Launchers>() as u32,
        version: LAUNCHERS_VERSION,
        execve: None,
        execv: None,
        execvp: None,
        execvpe: None,
        fexecve: None,
        execveat: None,
        posix_spawn: None,
        posix_spawnp: None,
        pidfd_spawn: None,
        pidfd_spawnp: None,
        system: None,
        popen: None,
        pclose: None,
    };
}

impl State {
    const EMPTY: State = State {
        route: FixedStr::empty(),
        socket: FixedStr::empty(),
        passthrough: FixedStr::empty(),
        shim: FixedStr::empty(),
        local_when_down: false,
        problem: None,
        real: Launchers::NONE,
        attach_fd: -1,
        // SAFETY: an all-zero posix_spawn_file_actions_t is plain data (never handed to
        // glibc before `init` fills it).
        attach_actions: unsafe { std::mem::zeroed() },
        relay_ms: crate::fork_relay::HANDOFF_MS,
        creds: Creds::NONE,
    };
}

/// The state, in place in zero-initialised memory: every process the library is preloaded
/// into pays for its load, so it is filled field by field, never built and moved.
struct Slot(UnsafeCell<State>);

// SAFETY: written once, inside `INIT.call_once`, before any reader can pass the
// `is_completed` check; read-only afterwards.
unsafe impl Sync for Slot {}

static STATE: Slot = Slot(UnsafeCell::new(State::EMPTY));
static INIT: Once = Once::new();

/// Filled by [`init`] before any hook can be reached (the hooks are only handed out by
/// `ctx_route_init`); read-only afterwards.
pub fn state() -> &'static State {
    // SAFETY: written only inside `INIT.call_once`, before the hooks are handed out.
    unsafe { &*STATE.0.get() }
}

/// Reads the routing variables and takes the real functions `real` (the preloaded
/// library's table). Only the first call counts.
pub fn init(real: &Launchers) {
    INIT.call_once(|| {
        // SAFETY: the only writer, under the Once; no reader exists before it completes.
        let st = unsafe { &mut *STATE.0.get() };
        st.real = *real;
        load(st);
    });
}

fn env(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: getenv returns null or a NUL-terminated string in the environment block,
    // read here at load time before the program can change it.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        None
    } else {
        // SAFETY: p is a valid C string.
        Some(unsafe { sys::cstr(p) })
    }
}

/// `ctx-shim` beside this library, found through the path the loader opened it by.
fn shim_beside_library(out: &mut FixedStr<4096>) -> bool {
    // SAFETY: Dl_info is plain data that dladdr fills.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: any address inside this library identifies it.
    if unsafe { libc::dladdr(init as *const c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return false;
    }
    let mut real = [0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: realpath writes at most PATH_MAX bytes into `real`. Resolving now makes a
    // relative LD_PRELOAD path survive a later chdir.
    let r = unsafe { libc::realpath(info.dli_fname, real.as_mut_ptr() as *mut c_char) };
    let lib = if r.is_null() {
        // SAFETY: dli_fname is a C string owned by the loader.
        unsafe { sys::cstr(info.dli_fname) }
    } else {
        // SAFETY: realpath NUL-terminated `real`.
        unsafe { sys::cstr(real.as_ptr() as *const c_char) }
    };
    let dir = match lib.iter().rposition(|&b| b == b'/') {
        Some(i) => &lib[..=i],
        None => b"./",
    };
    let mut path = [0u8; 4096];
    let name = b"ctx-shim";
    if dir.len() + name.len() >= path.len() {
        return false;
    }
    path[..dir.len()].copy_from_slice(dir);
    path[dir.len()..dir.len() + name.len()].copy_from_slice(name);
    out.set(&path[..dir.len() + name.len()]).is_some()
}

fn load(st: &mut State) {
    st.creds = Creds::current();
    st.local_when_down = env(vars::ON_BROKER_DOWN_C) == Some(b"local");
    let route_var = env(vars::ROUTE_C).unwrap_or(b"");
    if route_var.is_empty()
        || std::str::from_utf8(route_var).is_err()
        || st.route.set(route_var).is_none()
    {
        st.problem = Some("CTX_ROUTE is not a valid context name");
    }
    let socket = env(vars::SOCKET_C)
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SOCKET.as_bytes());
    if st.socket.set(socket).is_none() {
        st.problem = Some("CTX_SOCKET is longer than a Unix socket path may be");
    }
    if let Some(p) = env(vars::PASSTHROUGH_C) {
        if st.passthrough.set(p).is_none() {
            st.problem = Some("CTX_PASSTHROUGH is too long");
        }
    }
    let found = match env(vars::SHIM_C).filter(|s| !s.is_empty()) {
        Some(s) => st.shim.set(s).is_some(),
        None => shim_beside_library(&mut st.shim),
    };
    prepare_attach_actions(st);
    if let Some(ms) = env(vars::RELAY_MS_C).and_then(sys::parse_u64) {
        st.relay_ms = ms.min(3_600_000) as i64;
    }
    if !found {
        st.problem = Some("cannot locate the ctx-shim helper (set CTX_SHIM)");
    // SAFETY: a NUL-terminated path.
    } else if unsafe { libc::access(st.shim.as_ptr(), libc::X_OK) } != 0 {
        st.problem = Some("the ctx-shim helper is missing or not executable");
    }
}

/// Builds `attach_actions` at descriptor 1023 (or the limit's last one if lower): above
/// what a program normally uses, as descriptors are allocated lowest first, and not so
/// high that the descriptor table must grow (which costs every spawn from then on).
fn prepare_attach_actions(st: &mut State) {
    // SAFETY: rlimit is plain data filled by getrlimit.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes one rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 || rl.rlim_cur < 64 {
        return;
    }
    let fd = (rl.rlim_cur.min(1024) - 1) as c_int;
    // SAFETY: init then one dup2 action on our own object; at load, where allocating is fine.
    unsafe {
        if libc::posix_spawn_file_actions_init(&mut st.attach_actions) != 0 {
            return;
        }
        if libc::posix_spawn_file_actions_adddup2(&mut st.attach_actions, fd, fd) != 0 {
            libc::posix_spawn_file_actions_destroy(&mut st.attach_actions);
            return;
        }
    }
    st.attach_fd = fd;
}

/// Does `CTX_PASSTHROUGH` name this program? An entry with a '/' matches the full path
/// `resolved` (when known), any other entry matches the basename of `name`.
pub fn passthrough_matches(list: &[u8], name: &[u8], resolved: Option<&[u8]>) -> bool {
    let base = sys::basename(name);
    list.split(|&b| b == b':')
        .filter(|e| !e.is_empty())
        .any(|e| {
            if e.contains(&b'/') {
                resolved.unwrap_or(name) == e
            } else {
                base == e
            }
        })
}

/// Whether some entry is a path (so a PATH search must resolve the program to compare).
pub fn passthrough_has_paths(list: &[u8]) -> bool {
    list.split(|&b| b == b':').any(|e| e.contains(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough() {
        let l = b"node:/usr/bin/python3::bash";
        assert!(passthrough_matches(l, b"node", None));
        assert!(passthrough_matches(l, b"/opt/node/bin/node", None));
        assert!(passthrough_matches(l, b"/usr/bin/python3", None));
        assert!(!passthrough_matches(l, b"/usr/local/bin/python3", None));
        assert!(passthrough_matches(
            l,
            b"python3",
            Some(b"/usr/bin/python3")
        ));
        assert!(!passthrough_matches(l, b"python3", Some(b"/bin/python3")));
        assert!(!passthrough_matches(l, b"nodejs", None));
        assert!(!passthrough_matches(l, b"", None));
        assert!(!passthrough_matches(b"", b"ls", None));
        assert!(passthrough_has_paths(l));
        assert!(!passthrough_has_paths(b"node:bash"));
    }
}
