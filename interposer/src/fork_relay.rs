//! When the hook runs in a fork child (its own copy of the caller's memory, not a vfork
//! child sharing it), that child holds the accepted launch's connection itself instead of
//! exec'ing the shim at once: it forwards signals and ends as the routed program ends. Most
//! launches are short, and an exec is the largest single cost of a routed launch (about
//! 0.3 ms of CPU here), so they finish without one. A launch still running after
//! [`HANDOFF_MS`] is handed to the shim after all (exec, same pid, same connection), so the
//! caller's memory is not kept alive, copy-on-write, for a long-running program.
//!
//! Runs between fork and exec in possibly threaded callers: raw syscalls and the stack
//! only, like the rest of the hook path.

use std::ffi::c_char;

use ctx_protocol::{frame, reply_tag, ExitStatus, Reply, Request, FRAME_HEADER};

use crate::state::State;
use ctx_hookpath::{ending, fds, sys};
use ctx_protocol::launcher::Launcher;

type Argv = *const *const c_char;

/// How long the fork child relays before it execs the shim, unless `CTX_RELAY_MS` says.
pub const HANDOFF_MS: i64 = 5;

const KCMP_VM: libc::c_long = 1;

/// Whether this process may relay the launch itself: it has an address space of its own
/// (not a vfork child or a `CLONE_VM` clone of its parent; unknown, without `kcmp`, counts
/// as shared) and a single thread. A multithreaded process that execs directly, with no
/// fork, expects its other threads to end at the exec: it execs the shim at once.
pub fn may_relay() -> bool {
    own_address_space() && single_threaded()
}

/// One thread: procfs counts a process's threads into the link count of its `task`
/// directory (2 + threads), so one `stat` answers without reading and parsing a file.
fn single_threaded() -> bool {
    // SAFETY: stat is plain data; a constant NUL-terminated path.
    let mut sb: libc::stat = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::stat(c"/proc/self/task".as_ptr(), &mut sb) } == 0;
    ok && sb.st_nlink == 3
}

fn own_address_space() -> bool {
    // SAFETY: kcmp compares two processes' memory maps; it takes no pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            libc::getpid() as libc::c_long,
            libc::getppid() as libc::c_long,
            KCMP_VM,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    r > 0
}

fn now_ms() -> i64 {
    // SAFETY: timespec is plain data filled by clock_gettime.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

fn send(sock: i32, req: &Request) {
    let mut buf = [0u8; 64];
    if let Ok(n) = frame::encode_into(req, &mut buf) {
        let mut data = &buf[..n];
        while !data.is_empty() {
            // SAFETY: a valid readable slice of our stack buffer.
            let k =
                unsafe { libc::send(sock, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
            if k < 0 && sys::errno() == libc::EINTR {
                continue;
            }
            if k <= 0 {
                // A broken connection shows up as EOF on the read side.
                return;
            }
            data = &data[k as usize..];
        }
    }
}

fn die(name: &[u8], what: &str, detail: &str, code: i32) -> ! {
    let mut l = sys::Line::new();
    l.str("ctx: ").quoted(name).str(": ").str(what).str(detail);
    l.write_to(2);
    // SAFETY: ending the process without running the caller's atexit handlers.
    unsafe { libc::_exit(code) }
}

/// What one reply means for the relay.
fn on_reply(st: &State, name: &[u8], launcher: &Launcher, payload: &[u8]) {
    // Only the variants this relay can meet, and none that would allocate to decode.
    let wanted = matches!(
        payload.first(),
        Some(
            &(reply_tag::EXITED
                | reply_tag::STOPPED
                | reply_tag::EXEC_FAILED
                | reply_tag::ERROR
                | reply_tag::SIGNAL_PARENT)
        )
    );
    if !wanted {
        return;
    }
    match frame::decode_reply(payload) {
        Ok(Reply::Exited {
            status: ExitStatus::Signaled { signal, core: true },
            ..
        }) => die_with_core(st, signal),
        Ok(Reply::Exited { status, .. }) => ending::reproduce(status),
        Ok(Reply::Stopped { .. }) => {
            // SAFETY: job control: stop with the routed program; SIGCONT resumes us.
            unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
        }
        // The program signalled its parent: we hold its place.
        Ok(Reply::SignalParent { signal, guarded }) => launcher.signal(signal, guarded),
        Ok(Reply::ExecFailed(f)) => ending::exec_failed(name, &f),
        Ok(Reply::Error { message, .. }) => die(name, "broker: ", &message, 125),
        _ => die(name, "malformed message from the broker", "", 125),
    }
}

/// The routed program dumped core: so must the process the caller waits for, or the
/// caller's `WCOREDUMP` would be false. Not this one, whose core would be a copy of the
/// caller's memory, secrets included: the shim's is a few pages of nothing.
fn die_with_core(st: &State, signal: i32) -> ! {
    let mut sig = [0u8; 12];
    let mut tmp = [0u8; 24];
    let digits = sys::fmt_i64(signal as i64, &mut tmp);
    sig[..digits.len()].copy_from_slice(digits);
    let argv: [*const c_char; 4] = [
        st.shim.as_ptr(),
        c"--die".as_ptr(),
        sig.as_ptr() as *const c_char,
        std::ptr::null(),
    ];
    let envp: [*const c_char; 1] = [std::ptr::null()];
    if let Some(exec) = st.real.execve {
        // SAFETY: NUL-terminated path, NULL-terminated arrays on this frame.
        unsafe { exec(st.shim.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    }
    ending::reproduce(ExitStatus::Signaled {
        signal,
        core: false,
    })
}

/// Relays the accepted launch on `sock` from this fork child; ends as the routed program
/// ends, or becomes the shim after [`HANDOFF_MS`]. Never returns.
///
/// # Safety
/// `argv` is null or a NULL-terminated array of C strings; this process is a fork child
/// ([`may_relay`]) with no terminal among the launch's descriptors. `program` is the
/// executed path.
pub unsafe fn relay(st: &State, sock: i32, launcher: libc::pid_t, program: &[u8], argv: Argv) -> ! {
    // SAFETY: the caller's array (for messages and the shim's argv).
    let name = unsafe { crate::exec::display_name(argv, crate::exec::Target::Path(c"?")) };
    // What the program's /proc/PID/comm will say, as the shim would (one prctl); the
    // command line stays the caller's until the shim takes over (only an exec sets it).
    sys::set_comm(sys::basename(program));
    // As the shim does: hold nothing of the caller's but the connection and stderr, so
    // that the caller's pipes see EOF when the routed program ends.
    fds::keep_only(sock, 0);
    let mut sfd = ending::signal_fd();
    let handoff_at = now_ms() + st.relay_ms;
    let mut handed = false;
    let mut signals = ending::Forwarder::default();
    let launcher = Launcher::hold(launcher);
    let mut buf = [0u8; 16 * 1024];
    let mut have = 0usize;
    loop {
        let timeout = if handed {
            -1
        } else {
            (handoff_at - now_ms()).max(0) as i32
        };
        let mut pfd = [sys::poll_in(sock), sys::poll_in(sfd)];
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(pfd.as_mut_ptr(), 2, timeout) };
        if n < 0 && sys::errno() != libc::EINTR {
            die(name, "poll failed", "", 125);
        }
        if n == 0 && !handed && have == 0 {
            // Still running: the shim takes over (same pid, same connection), so this
            // copy of the caller's memory can go. Pending signals survive the exec.
            // SAFETY: our signalfd.
            unsafe { libc::close(sfd) };
            // SAFETY: the caller's array; returns only if the exec failed.
            unsafe { crate::exec::exec_shim(st, sock, 0, launcher.pid(), program, argv) };
            // The shim could not start: relay here until the end after all.
            handed = true;
            sfd = ending::signal_fd();
            continue;
        }
        if pfd[1].revents & libc::POLLIN != 0 {
            while let Some(caught) = ending::next_signal(sfd) {
                send(sock, &signals.request(caught));
                if matches!(caught.signo, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU) {
                    // Stop with the routed program, so the caller's shell sees the job stop.
                    // SAFETY: stopping ourselves; SIGCONT resumes us (and is forwarded).
                    unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
                }
            }
        }
        if pfd[0].revents != 0 {
            have = read_replies(st, sock, name, &launcher, &mut buf, have);
        }
    }
}

/// Reads what the broker sent and acts on every complete frame; returns the bytes of an
/// incomplete one kept at the start of `buf`.
fn read_replies(
    st: &State,
    sock: i32,
    name: &[u8],
    launcher: &Launcher,
    buf: &mut [u8],
    mut have: usize,
) -> usize {
    // SAFETY: reads into the free tail of buf.
    let k = unsafe { libc::read(sock, buf[have..].as_mut_ptr().cast(), buf.len() - have) };
    if k < 0 {
        if !matches!(sys::errno(), libc::EINTR | libc::EAGAIN) {
            die(name, "lost the connection to the broker", "", 125);
        }
        return have;
    }
    if k == 0 {
        die(
            name,
            "the broker closed the connection before the program exited",
            "",
            125,
        );
    }
    have += k as usize;
    let mut start = 0;
    loop {
        match frame::complete_frame(&buf[start..have]) {
            Ok(Some(total)) => {
                on_reply(
                    st,
                    name,
                    launcher,
                    &buf[start + FRAME_HEADER..start + total],
                );
                start += total;
            }
            Ok(None) => break,
            Err(_) => die(name, "oversized message from the broker", "", 125),
        }
    }
    if start == 0 && have == buf.len() {
        // A frame larger than this relay expects (none of the variants it reads is).
        die(name, "oversized message from the broker", "", 125);
    }
    buf.copy_within(start..have, 0);
    have - start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_child_may_relay_a_threaded_process_may_not() {
        // The test harness runs this on a thread of its own: more than one thread here.
        let helper =
            std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        assert!(!single_threaded());
        assert!(!may_relay());
        // SAFETY: the child only makes the two checks (syscalls) and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = single_threaded() && own_address_space() && may_relay();
            // SAFETY: ending the child without running the harness's exit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        helper.join().unwrap();
    }
}
