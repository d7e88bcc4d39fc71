//! The `ctx` CLI.
//!
//! Rust's own `main` would run the runtime's start-up first, and that reopens a closed
//! stdin/stdout/stderr onto /dev/null and ignores SIGPIPE. `ctx exec` must see a closed
//! descriptor as closed (the routed command then gets none), and a program `ctx run`
//! starts must not inherit an ignored SIGPIPE; so ctx defines the C `main` itself.
//! Arguments and environment still come through std (glibc hands them to it at load).
//! (The test harness brings its own `main`, hence the `cfg`s.)
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    ctx_broker::client::main()
}
