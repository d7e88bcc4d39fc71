//! `libctx_interposer.so`: preloaded into an agent, it routes every process launch (the
//! exec family, `posix_spawn`, `system`, `popen`) to the ctx broker instead of running it
//! locally. SPEC section 4 is its contract.
//!
//! Why hand-written exports and not the `redhook` crate (checked against redhook 2.0.0's
//! source, `src/ld_preload.rs`):
//! - it resolves the real function lazily, inside the first call, behind a `std::sync::Once`
//!   (`ONCE.call_once(|| REAL = dlsym_next(..))`): that first call may be an `execve` in a
//!   vfork child, where taking a lock and calling `dlsym` (which allocates and locks) is
//!   undefined behaviour; we resolve everything once in a load-time constructor instead;
//! - its `hook!` macro takes `$($v:ident : $t:ty),*` parameters, so it cannot express the
//!   variadic `execl`, `execlp` and `execle`;
//! - every hook body runs under `catch_unwind(..).unwrap_or_else(|_| real(..))`: a panic
//!   silently runs the program locally, with the agent's secrets. That is fail-open, and
//!   our contract is fail-closed. (`dlsym_next` also panics with a formatted, allocating
//!   message when a symbol is missing.)
//!
//! So the non-variadic hooks are plain `#[no_mangle] extern "C"` functions here, and the
//! variadic ones are C (`variadic.c`) reached through naked-function trampolines.
//!
//! Layout: [`state`] is what the constructor reads and resolves ([`symbols`] finds the real
//! functions); [`exec`] is the exec-family
//! hook path (vfork-safe); [`spawn`] routes `posix_spawn`, `system` and `popen` through the
//! shim; `shared/` is the part the shim runs too (wire encoding, fd scan, broker exchange).

// The exported hooks take raw pointers from C callers; their safety contract is the C
// function's own, documented by POSIX/glibc, so per-function `# Safety` sections would only
// repeat the man pages.
#![allow(clippy::missing_safety_doc)]

pub mod exec;
pub mod fork_relay;
pub mod shared;
pub mod spawn;
pub mod state;
pub mod symbols;

use std::ffi::{c_char, c_int};

use state::state;

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

#[no_mangle]
pub unsafe extern "C" fn execve(path: *const c_char, argv: Argv, envp: Argv) -> c_int {
    exec::execve_hook(path, argv, envp)
}

#[no_mangle]
pub unsafe extern "C" fn execv(path: *const c_char, argv: Argv) -> c_int {
    let st = state();
    if !st.routing {
        if let Some(f) = st.real.execv {
            return f(path, argv);
        }
    }
    exec::execve_hook(path, argv, current_environ())
}

#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: Argv) -> c_int {
    let st = state();
    if !st.routing {
        if let Some(f) = st.real.execvp {
            return f(file, argv);
        }
    }
    exec::execvpe_hook(file, argv, current_environ())
}

#[no_mangle]
pub unsafe extern "C" fn execvpe(file: *const c_char, argv: Argv, envp: Argv) -> c_int {
    exec::execvpe_hook(file, argv, envp)
}

#[no_mangle]
pub unsafe extern "C" fn fexecve(fd: c_int, argv: Argv, envp: Argv) -> c_int {
    exec::fexecve_hook(fd, argv, envp)
}

#[no_mangle]
pub unsafe extern "C" fn execveat(
    dirfd: c_int,
    path: *const c_char,
    argv: Argv,
    envp: Argv,
    flags: c_int,
) -> c_int {
    exec::execveat_hook(dirfd, path, argv, envp, flags)
}

/// Called by `variadic.c` for `execl` and `execle`.
#[no_mangle]
pub unsafe extern "C" fn ctx_entry_execve(path: *const c_char, argv: Argv, envp: Argv) -> c_int {
    exec::execve_hook(path, argv, envp)
}

/// Called by `variadic.c` for `execlp`.
#[no_mangle]
pub unsafe extern "C" fn ctx_entry_execvp(file: *const c_char, argv: Argv) -> c_int {
    let st = state();
    if !st.routing {
        if let Some(f) = st.real.execvp {
            return f(file, argv);
        }
    }
    exec::execvpe_hook(file, argv, current_environ())
}

extern "C" {
    fn ctx_execl();
    fn ctx_execlp();
    fn ctx_execle();
}

// rustc's cdylib version script exports only Rust-defined symbols, hiding anything a C
// object defines; these trampolines give the C variadic bodies exported names. A bare jump
// keeps every argument register, the stack and (x86-64) `%al` exactly as the caller left
// them, which is all a variadic callee reads.
macro_rules! trampoline {
    ($name:ident => $target:ident) => {
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name() {
            #[cfg(target_arch = "x86_64")]
            core::arch::naked_asm!("jmp {}", sym $target);
            #[cfg(target_arch = "aarch64")]
            core::arch::naked_asm!("b {}", sym $target);
        }
    };
}

trampoline!(execl => ctx_execl);
trampoline!(execlp => ctx_execlp);
trampoline!(execle => ctx_execle);

// ---------------------------------------------------------------------------------------
// posix_spawn, system, popen
// ---------------------------------------------------------------------------------------

#[no_mangle]
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

#[no_mangle]
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

#[no_mangle]
pub unsafe extern "C" fn system(command: *const c_char) -> c_int {
    spawn::system_hook(command)
}

#[no_mangle]
pub unsafe extern "C" fn popen(command: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    spawn::popen_hook(command, mode)
}

#[no_mangle]
pub unsafe extern "C" fn pclose(stream: *mut libc::FILE) -> c_int {
    spawn::pclose_hook(stream)
}

// glibc 2.39 added these (this machine's 2.36 lacks them). They are exported anyway so a
// program built against a newer glibc cannot use them to bypass routing; the real ones are
// called when present, ENOSYS otherwise.

#[no_mangle]
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

#[no_mangle]
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
// Load-time constructor
// ---------------------------------------------------------------------------------------

extern "C" fn ctx_init() {
    state::init();
}

/// Runs at load, before `main` and before any hook can be reached through the PLT: reads
/// the routing variables and resolves the real functions while the process is still
/// single-threaded and no vfork is in flight.
#[used]
#[link_section = ".init_array"]
static CTX_INIT: extern "C" fn() = ctx_init;
