//! `ctx-shim`: stands in for a routed program in the caller's process tree.
//!
//! The interposer's exec hook gets the broker's "accepted" verdict and then execs this
//! binary in place of the program (with the program's argv and `CTX_SHIM_ATTACH` in its
//! environment), so the pid the caller holds is the shim's, named like the program:
//! it keeps the broker connection, forwards the caller's signals, relays a terminal through
//! the broker's PTY, and exits with the routed program's status (or dies by its signal).
//! For `posix_spawn` with file actions, glibc starts the shim itself (`--spawn`) after applying the caller's
//! file actions; the shim then sends the launch and reports the verdict to the hook.
//!
//! It is in every routed launch's critical path, so it does no work before the relay loop
//! that the loop does not need.

// No std runtime start-up: it would set up stack-overflow guards, and finding the main
// thread's stack reads /proc/self/maps, a cost every routed launch would pay.
#![no_main]

mod relay;
mod spawn;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use ctx_hookpath::sys;

/// ctx's own failure, as `env`/`docker run` use it.
pub const EXIT_CTX: i32 = 125;

fn usage() -> ! {
    sys::Line::new()
        .str("ctx-shim: internal helper of libctx_interposer.so, not meant to be run by hand")
        .write_to(2);
    std::process::exit(EXIT_CTX)
}

/// `CTX_SHIM_ATTACH=<sock>,<pty-mask>,<launcher-pid>,<comm>`: the parameters of an
/// attached shim, whose argv is the routed program's own (see the library's
/// `exec::ShimLaunch`).
fn attach_params() -> Option<(i32, u8, libc::pid_t, OsString)> {
    let v = std::env::var_os(ctx_hookpath::ATTACH_VAR)?;
    let mut parts = v.as_bytes().splitn(4, |&b| b == b',');
    let sock = sys::parse_u64(parts.next()?)?;
    let mask = sys::parse_u64(parts.next()?)?;
    let launcher = sys::parse_u64(parts.next()?)?;
    let comm = OsString::from(std::ffi::OsStr::from_bytes(parts.next()?));
    Some((
        i32::try_from(sock).ok()?,
        (mask & 15) as u8,
        libc::pid_t::try_from(launcher).ok()?,
        comm,
    ))
}

#[no_mangle]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    let args: Vec<OsString> = std::env::args_os().collect();
    let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
    if std::env::var_os(ctx_hookpath::ATTACH_VAR).is_some() {
        let Some((sock, mask, launcher, comm)) = attach_params() else {
            usage()
        };
        // ps, pgrep and psutil read the pid the caller holds: make it look like the program
        // (its argv already is the program's).
        sys::set_comm(comm.as_bytes());
        let name = match a.first() {
            Some(n) if !n.is_empty() => n,
            _ => comm.as_bytes(),
        };
        ctx_hookpath::fds::keep_only(sock, mask);
        relay::run(sock, mask, launcher, name)
    }
    match a.get(1).copied() {
        Some(b"--spawn") => spawn::run(&a),
        // ctx-shim --die <signal>: the hook's fork relay saw the routed program dump core;
        // this process dies the same way, with a core of its own (not the caller's).
        Some(b"--die") => match a.get(2).and_then(|s| sys::parse_u64(s)) {
            Some(signal) if (1..=64).contains(&signal) => {
                ctx_hookpath::ending::reproduce(ctx_protocol::ExitStatus::Signaled {
                    signal: signal as i32,
                    core: true,
                })
            }
            _ => usage(),
        },
        _ => usage(),
    }
}
