//! `libctx_route.so`: the routing half of the interposer. `libctx_interposer.so` (the
//! preloaded half, `preload.c`) loads it into a process that routes (`CTX_ROUTE` set) and
//! forwards every launch to it: the exec family, `posix_spawn`, `system` and `popen` go to
//! the ctx broker instead of running locally (the README's "What a routed launch inherits"
//! says what must hold). A process
//! that does not route never loads it, so it may carry Rust's std.
//!
//! Why hand-written hooks and not the `redhook` crate (checked against redhook 2.0.0's
//! source, `src/ld_preload.rs`):
//! - it resolves the real function lazily, inside the first call, behind a `std::sync::Once`
//!   (`ONCE.call_once(|| REAL = dlsym_next(..))`): that first call may be an `execve` in a
//!   vfork child, where taking a lock and calling `dlsym` (which allocates and locks) is
//!   undefined behaviour; the preloaded half resolves everything once, at load, instead;
//! - its `hook!` macro takes `$($v:ident : $t:ty),*` parameters, so it cannot express the
//!   variadic `execl`, `execlp` and `execle`;
//! - every hook body runs under `catch_unwind(..).unwrap_or_else(|_| real(..))`: a panic
//!   silently runs the program locally, with the agent's secrets. That is fail-open, and
//!   our contract is fail-closed. (`dlsym_next` also panics with a formatted, allocating
//!   message when a symbol is missing.)
//! - and a Rust library preloaded into every process costs each exec about 30 us more than
//!   a small C one (std's relocations and imports), paid by processes that never route.
//!
//! So the exported names are C (`preload.c`, no libc at link time), and these hooks are
//! plain `extern "C"` functions it reaches through the table [`ctx_route_init`] returns.
//!
//! Layout: [`state`] is what is read once at load; [`exec`] is the exec-family hook path
//! (vfork-safe); [`spawn`] routes `posix_spawn`, `system` and `popen` through the shim;
//! the part the shim runs too (wire encoding, fd scan, broker exchange) is the
//! `ctx-hookpath` crate (`hookpath/`).

// The hooks take raw pointers from C callers; their safety contract is the C function's
// own, documented by POSIX/glibc, so per-function `# Safety` sections would only repeat the
// man pages.
#![allow(clippy::missing_safety_doc)]

pub mod exec;
pub mod fork_relay;
pub mod spawn;
pub mod state;

use std::ffi::{c_char, c_int};

use state::Launchers;

type Argv = *const *const c_char;

extern "C" {
    static environ: *const *const c_char;
}

/// The process's current environment block.
pub fn current_environ() -> Argv {
    // SAFETY: reading the `environ` pointer itself; glibc keeps it valid.
    unsafe { environ }
}

// ---------------------------------------------------------------------------------------
// The exec family
// ---------------------------------------------------------------------------------------

pub unsafe extern "C" fn execve(path: *const c_char, argv: Argv, envp: Argv) -> c_int {
    exec::execve_hook(path, argv, envp)
}

pub unsafe extern "C" fn execv(path: *const c_char, argv: Argv) -> c_int {
    exec::execve_hook(path, argv, current_environ())
}

pub unsafe extern "C" fn execvp(file: *const c_char, argv: Argv) -> c_int {
    exec::execvpe_hook(file, argv, current_environ())
}

pub unsafe extern "C" fn execvpe(file: *const c_char, argv: Argv, envp: Argv) -> c_int {
    exec::execvpe_hook(file, argv, envp)
}

pub unsafe extern "C" fn fexecve(fd: c_int, argv: Argv, envp: Argv) -> c_int {
    exec::fexecve_hook(fd, argv, envp)
}

pub unsafe extern "C" fn execveat(
    dirfd: c_int,
    path: *const c_char,
    argv: Argv,
    envp: Argv,
    flags: c_int,
) -> c_int {
    exec::execveat_hook(dirfd, path, argv, envp, flags)
}

// ---------------------------------------------------------------------------------------
// posix_spawn, system, popen
// ---------------------------------------------------------------------------------------

pub unsafe extern "C" fn posix_spawn(
    pid: *mut libc::pid_t,
    path: *const c_char,
    file_actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
) -> c_int {
    spawn::posix_spawn_hook(pid, path, file_actions, attr, argv, envp, false)
}

pub unsafe extern "C" fn posix_spawnp(
    pid: *mut libc::pid_t,
    file: *const c_char,
    file_actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
) -> c_int {
    spawn::posix_spawn_hook(pid, file, file_actions, attr, argv, envp, true)
}

pub unsafe extern "C" fn system(command: *const c_char) -> c_int {
    spawn::system_hook(command)
}

pub unsafe extern "C" fn popen(command: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    spawn::popen_hook(command, mode)
}

pub unsafe extern "C" fn pclose(stream: *mut libc::FILE) -> c_int {
    spawn::pclose_hook(stream)
}

// glibc 2.39 added these (this machine's 2.36 lacks them). They are exported anyway so a
// program built against a newer glibc cannot use them to bypass routing; the real ones are
// called when present, ENOSYS otherwise.

pub unsafe extern "C" fn pidfd_spawn(
    pidfd: *mut c_int,
    path: *const c_char,
    file_actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
) -> c_int {
    spawn::pidfd_spawn_hook(pidfd, path, file_actions, attr, argv, envp, false)
}

pub unsafe extern "C" fn pidfd_spawnp(
    pidfd: *mut c_int,
    file: *const c_char,
    file_actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
) -> c_int {
    spawn::pidfd_spawn_hook(pidfd, file, file_actions, attr, argv, envp, true)
}

// ---------------------------------------------------------------------------------------
// The entry point `preload.c` calls
// ---------------------------------------------------------------------------------------

static HOOKS: Launchers = Launchers {
    size: std::mem::size_of::<Launchers>() as u32,
    version: state::LAUNCHERS_VERSION,
    execve: Some(execve),
    execv: Some(execv),
    execvp: Some(execvp),
    execvpe: Some(execvpe),
    fexecve: Some(fexecve),
    execveat: Some(execveat),
    posix_spawn: Some(posix_spawn),
    posix_spawnp: Some(posix_spawnp),
    pidfd_spawn: Some(pidfd_spawn),
    pidfd_spawnp: Some(pidfd_spawnp),
    system: Some(system),
    popen: Some(popen),
    pclose: Some(pclose),
};

/// Called once by `libctx_interposer.so` from its constructor, with the real functions it
/// found: reads the routing variables and hands back the hooks. Null when `real` comes
/// from another build (another layout).
#[no_mangle]
pub unsafe extern "C" fn ctx_route_init(real: *const Launchers) -> *const Launchers {
    // SAFETY: null or the preloaded library's table, alive as long as the process.
    let Some(real) = (unsafe { real.as_ref() }) else {
        return std::ptr::null();
    };
    if real.size as usize != std::mem::size_of::<Launchers>()
        || real.version != state::LAUNCHERS_VERSION
    {
        return std::ptr::null();
    }
    state::init(real);
    &HOOKS
}
