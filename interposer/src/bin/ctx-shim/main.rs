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

/// `ctx-shim --session-leader <pidfd>`, started by the broker: leads a terminal launch's
/// session in the program's place (the pidfd is the program's), so that the program's exit
/// hangs nothing up and its background jobs live on, as they do locally. When the program
/// ends it puts its own group in the terminal's foreground, as a shell takes the terminal
/// back when its job ends: the hangup that follows (the broker closes the master) then
/// signals this group alone. Every signal stays blocked; SIGHUP is read, and ends it.
fn lead_session(program: Option<i32>) -> ! {
    sys::set_comm(b"ctx-session");
    // SAFETY: signal masks, signalfd, poll, open and ioctl on values we own.
    unsafe {
        let all = sys::signals::full();
        sys::signals::procmask(libc::SIG_BLOCK, Some(&all), None);
        let mut hup = sys::signals::empty();
        sys::signals::add(&mut hup, libc::SIGHUP);
        let hangup = libc::signalfd(-1, &hup, libc::SFD_CLOEXEC);
        let mut fds = [
            libc::pollfd {
                fd: hangup,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: program.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        while fds[1].fd >= 0 {
            if libc::poll(fds.as_mut_ptr(), 2, -1) < 0 {
                continue; // EINTR: nothing else can fail here
            }
            if fds[0].revents != 0 {
                libc::_exit(0);
            }
            if fds[1].revents != 0 {
                fds[1].fd = -1;
                let tty = libc::open(
                    c"/dev/tty".as_ptr(),
                    libc::O_RDWR | libc::O_NOCTTY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                );
                if tty >= 0 {
                    let me = libc::getpid();
                    libc::ioctl(tty, libc::TIOCSPGRP, &me as *const libc::pid_t);
                    libc::close(tty);
                }
            }
        }
        while libc::sigwaitinfo(&hup, std::ptr::null_mut()) != libc::SIGHUP {}
        libc::_exit(0)
    }
}

/// Linked against musl (see `static-link`), the shim still carries this system's static
/// unwinder, built for glibc, which looks a code address up with glibc's
/// `_dl_find_object`. Nothing in the shim catches a panic, and one aborts at `main`'s C
/// boundary anyway: "not found" only makes it abort before it unwinds.
#[cfg(ctx_musl)]
#[no_mangle]
extern "C" fn _dl_find_object(_pc: *mut libc::c_void, _found: *mut libc::c_void) -> libc::c_int {
    -1
}

#[no_mangle]
extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    // From `main`'s own arguments: `std::env::args_os` reads what glibc's start-up hands
    // to initializers, which musl's does not.
    let a: Vec<&[u8]> = (0..usize::try_from(argc).unwrap_or(0))
        // SAFETY: the C start-up passes argc NUL-terminated strings in argv, which live as
        // long as the process.
        .map(|i| unsafe { sys::cstr(*argv.add(i)) })
        .collect();
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
        Some(b"--session-leader") => lead_session(
            a.get(2)
                .and_then(|n| sys::parse_u64(n))
                .and_then(|n| i32::try_from(n).ok()),
        ),
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
