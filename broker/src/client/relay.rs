//! The relay of one `ctx exec` launch once the broker has opened it: a single `poll` loop
//! over the broker connection, a signalfd and the input, which carries the PTY's bytes,
//! forwards our signals to the routed program, passes its signals to our parent on, and
//! turns the end of the launch into our own (same code, same signal).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, RawFd};

use ctx_protocol::launcher::Launcher;
use ctx_protocol::linger;
use ctx_protocol::terminal::{raise_at_foreground, set_window_size, Hold, Output, Typed};
use ctx_protocol::{errno_name, ExecFailure, ExitStatus, Reply, Request};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use serde_bytes::ByteBuf;

use super::connection::{unexpected, Connection};
use super::duration::format_duration;
use super::error::Error;
use super::terminal::Controlling;

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// Signals `ctx exec` passes on to the routed process group instead of dying of them.
/// SIGWINCH becomes a `Resize`; SIGTSTP/SIGCONT also stop and resume `ctx` itself so the
/// caller's shell keeps job control.
const HANDLED: [Signal; 9] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGTSTP,
    Signal::SIGCONT,
];

const INPUT_CHUNK: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// One launch as ctx follows it once the broker has the request: the PTY's bytes both
/// ways, our signals to the program, the program's signals to our parent.
pub(super) struct Relay<'a> {
    pub(super) context: &'a str,
    pub(super) program: &'a str,
    pub(super) timeout_ms: Option<u64>,
    /// What feeds the PTY: our stdin, or our controlling terminal when the PTY is only
    /// the command's controlling terminal.
    pub(super) input: Option<RawFd>,
    /// That input is a terminal to put in raw mode while the command runs.
    pub(super) raw: bool,
    pub(super) output: Option<RawFd>,
    pub(super) resize: bool,
    pub(super) controlling: &'a Controlling,
    /// Where the command's signals to its parent go (`None`: dropped).
    pub(super) launcher: Option<&'a Launcher>,
    /// The PTY's modes, for writing its output processed once.
    pub(super) pty_output: std::cell::RefCell<Output>,
}

/// How the launch ended, before it is turned into our own exit.
pub(super) enum Outcome {
    Exit(i32),
    Signaled(i32),
}

/// Forwarded signals, read from a signalfd so that the relay stays one `poll` loop.
pub(super) struct Signals {
    fd: SignalFd,
}

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl Relay<'_> {
    pub(super) fn run(&self, conn: &mut Connection, signals: &Signals) -> Result<Outcome, Error> {
        let mut started = false;
        let mut early_signal: Option<i32> = None;
        let mut input_open = self.input.is_some();
        // Whether an `Input` frame would go out without blocking. The broker stops reading
        // while a program leaves its input unread; blocking in that send, ctx would stop
        // reading the program's output too, and the broker would block sending it.
        let mut sock_writable = true;
        let mut output_ok = self.output.is_some();
        let mut out = Vec::new();
        let mut raw: Option<Hold> = None;
        let mut pending_resize = false;
        let mut buf = vec![0u8; INPUT_CHUNK];
        let socket = conn.socket().to_path_buf();
        let input_fd = self.input.unwrap_or(0);
        // SAFETY: stays open for the life of ctx (0 was probed open, the controlling
        // terminal is held by `controlling`), or is not polled.
        let stdin = unsafe { BorrowedFd::borrow_raw(input_fd) };

        loop {
            let relaying = started && input_open;
            let sock_events = if relaying && !sock_writable {
                PollFlags::POLLIN | PollFlags::POLLOUT
            } else {
                PollFlags::POLLIN
            };
            let mut fds = vec![
                PollFd::new(conn.fd(), sock_events),
                PollFd::new(signals.fd.as_fd(), PollFlags::POLLIN),
            ];
            if relaying && sock_writable {
                fds.push(PollFd::new(stdin, PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::io("waiting for the broker", e)),
            }
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            let sock_events = fds[0].revents().unwrap_or(PollFlags::empty());
            let sock_ready = sock_events.intersects(!PollFlags::POLLOUT);
            sock_writable |= sock_events.contains(PollFlags::POLLOUT);
            let (sig_ready, stdin_ready) = (ready(1), ready(2));
            drop(fds);

            if sig_ready {
                while let Some(sig) = signals.next() {
                    match sig {
                        Signal::SIGWINCH => pending_resize = self.resize,
                        // Sent before Started too: the routed process runs before our
                        // Started arrives, and the broker delivers what it reads right
                        // after Started. Held back, a stop would stop ctx and leave the
                        // program running.
                        Signal::SIGTSTP => {
                            let _ = conn.send(&Request::Signal { signo: sig as i32 });
                            // Give the shell its terminal back as a local job would.
                            drop(raw.take());
                            let _ = signal::raise(Signal::SIGSTOP);
                        }
                        Signal::SIGCONT => {
                            if started {
                                if self.raw && raw.is_none() {
                                    raw = take_terminal(conn, input_fd);
                                }
                                pending_resize = self.resize;
                            }
                            let _ = conn.send(&Request::Signal { signo: sig as i32 });
                        }
                        // Not started yet: the routed process may already run (it starts
                        // before our Started arrives), so the signal is sent now and the
                        // broker delivers it right after Started. A second signal before
                        // Started means the user gave up on the broker: die by it, which
                        // closes the connection and makes the broker kill what it began.
                        _ if !started && early_signal.is_some() => {
                            return Ok(Outcome::Signaled(sig as i32))
                        }
                        _ if !started => {
                            early_signal = Some(sig as i32);
                            let _ = conn.send(&Request::Signal { signo: sig as i32 });
                        }
                        _ => {
                            let _ = conn.send(&Request::Signal { signo: sig as i32 });
                        }
                    }
                }
            }

            if stdin_ready && input_open {
                // A mode the caller set before typing (echo off) applies to what it typed.
                if let Some(modes) = raw.as_mut().and_then(Hold::caller_changed) {
                    let _ = conn.send(&Request::Modes(modes));
                }
                match nix::unistd::read(input_fd, &mut buf) {
                    Ok(0) | Err(Errno::EIO) | Err(Errno::EBADF) => {
                        input_open = false;
                        let _ = conn.send(&Request::InputEof);
                    }
                    Ok(n) => {
                        let _ = conn.send(&Request::Input(ByteBuf::from(&buf[..n])));
                        sock_writable = false;
                        let pty = self.pty_output.borrow().pty;
                        if let Some(signo) = pty.and_then(|m| m.signal_typed(&buf[..n])) {
                            raise_at_foreground(input_fd, signo);
                        }
                    }
                    Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                    Err(_) => {
                        input_open = false;
                        let _ = conn.send(&Request::InputEof);
                    }
                }
            }

            if sock_ready {
                if !conn.fill()? {
                    return Err(Error::Lost { socket });
                }
                while let Some(reply) = conn.next_reply()? {
                    match reply {
                        Reply::Started { .. } if !started => {
                            started = true;
                            if self.raw {
                                raw = take_terminal(conn, input_fd);
                            }
                        }
                        // Gathered and written once per read: PTY frames are small
                        // (a terminal reads ~4 KiB at a time) and a write each would
                        // cost more than the copy.
                        Reply::Output(bytes) if output_ok => out.extend_from_slice(&bytes),
                        Reply::Output(_) => {}
                        Reply::Modes(modes) => {
                            // Output gathered under the old modes goes out under them.
                            self.flush(&mut out, output_ok);
                            self.pty_output.borrow_mut().pty = Some(modes);
                            if let Some(hold) = raw.as_mut() {
                                hold.program_set(modes);
                            }
                        }
                        Reply::Size(size) => {
                            if let Some(fd) = self.controlling.raw_fd() {
                                set_window_size(fd, size);
                            }
                        }
                        Reply::Stopped { .. } => {
                            // Job control: the routed program stopped; so does ctx, and the
                            // shell's SIGCONT resumes both (see the SIGCONT arm above).
                            self.flush(&mut out, output_ok);
                            drop(raw.take());
                            let _ = signal::raise(Signal::SIGSTOP);
                        }
                        Reply::SignalParent { signal, guarded } => {
                            // `kill $PPID` in the program: ctx stands where the program
                            // would be had it been exec'd in place, so its parent is meant.
                            self.flush(&mut out, output_ok);
                            if let Some(l) = self.launcher {
                                l.signal(signal, guarded);
                            }
                        }
                        Reply::Exited { status, timed_out } => {
                            self.flush(&mut out, output_ok);
                            drop(raw.take());
                            if let (Some(fd), true) = (self.output, output_ok) {
                                self.linger(conn, fd);
                            }
                            return self.exited(status, timed_out);
                        }
                        Reply::ExecFailed(failure) => {
                            drop(raw.take());
                            if let Some(sig) = early_signal {
                                return Ok(Outcome::Signaled(sig));
                            }
                            return Err(self.failed(&failure));
                        }
                        other => {
                            drop(raw.take());
                            return Err(unexpected(&socket, other));
                        }
                    }
                }
                if !self.flush(&mut out, output_ok) {
                    // As a local writer would die of SIGPIPE; the command still gets
                    // to exit its own way.
                    output_ok = false;
                    let _ = conn.send(&Request::Signal {
                        signo: libc::SIGPIPE,
                    });
                }
            }

            if pending_resize && started {
                pending_resize = false;
                let _ = conn.send(&Request::Resize(self.controlling.size()));
            }
        }
    }

    /// Processes the program left behind still hold its PTY: a detached process goes on
    /// copying their output to `out` (see `ctx_protocol::linger`), and we return at once.
    fn linger(&self, conn: &mut Connection, out: RawFd) {
        let pty = self.pty_output.borrow().pty;
        let (sock, buf, mut have) = conn.unread();
        if linger::lingering_follows(sock, buf, &mut have) && linger::detach(&[sock, out]) {
            linger::relay(sock, out, pty, buf, have)
        }
    }

    /// Writes the gathered PTY output; false when our output is gone (EPIPE and the like).
    fn flush(&self, out: &mut Vec<u8>, output_ok: bool) -> bool {
        let ok = match (output_ok, self.output) {
            (true, Some(fd)) if !out.is_empty() => self
                .pty_output
                .borrow()
                .write(fd, out, |b| write_all(fd, b).is_ok()),
            _ => true,
        };
        out.clear();
        ok
    }

    fn exited(&self, status: ExitStatus, timed_out: bool) -> Result<Outcome, Error> {
        if timed_out {
            return Err(Error::TimedOut {
                context: self.context.into(),
                after: match self.timeout_ms {
                    Some(ms) => format!("after {}", format_duration(ms)),
                    None => "at its context's timeout (see ctx contexts)".into(),
                },
            });
        }
        Ok(match status {
            ExitStatus::Code(c) => Outcome::Exit(c),
            ExitStatus::Signaled { signal, .. } => Outcome::Signaled(signal),
        })
    }

    fn failed(&self, f: &ExecFailure<'_>) -> Error {
        Error::ExecFailed {
            context: self.context.into(),
            program: self.program.into(),
            kind: f.kind,
            detail: failure_detail(self.program, f),
            exit_code: f.exit_code(),
        }
    }
}

impl Signals {
    /// Blocks [`HANDLED`] so they queue on the signalfd instead of killing `ctx`.
    pub(super) fn install() -> Result<Signals, Error> {
        let mut set = SigSet::empty();
        for s in HANDLED {
            set.add(s);
        }
        set.thread_block()
            .map_err(|e| Error::io("blocking signals", e))?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| Error::io("creating a signalfd", e))?;
        Ok(Signals { fd })
    }

    /// The signalfd, for a wait before the relay's (see [`Connection::launch`]) to end
    /// on a signal and leave it to the relay.
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn next(&self) -> Option<Signal> {
        loop {
            match self.fd.read_signal() {
                // Raised at the caller's group for a key the PTY turned into a signal of
                // its own for the program (see `raise_at_foreground`): not the program's
                // twice.
                Ok(Some(info))
                    if info.ssi_code == libc::SI_USER && info.ssi_pid == std::process::id() => {}
                Ok(Some(info)) => return Signal::try_from(info.ssi_signo as i32).ok(),
                _ => return None,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// ` (ENOENT at stage exec)`, then the broker's own words when they say more than that.
fn failure_detail(program: &str, f: &ExecFailure<'_>) -> String {
    let stage = f.stage.as_str();
    let mut detail = if f.errno != 0 {
        let name = if f.errno_name.is_empty() {
            errno_name(f.errno)
        } else {
            &f.errno_name
        };
        format!(" ({name} at stage {stage})")
    } else {
        format!(" (at stage {stage})")
    };
    let msg = f.message.trim();
    // The broker's message often restates program and kind; only say it when it adds.
    let says_kind = msg.to_lowercase().contains(f.kind.describe());
    let restates = says_kind && (msg.len() == f.kind.describe().len() || msg.contains(program));
    if !msg.is_empty() && !restates {
        detail.push_str(": ");
        detail.push_str(msg);
    }
    detail
}

/// Takes our terminal (stdin) for the relay: what was typed before goes first, then the
/// modes the program gets from then on (see `ctx_protocol::terminal`).
fn take_terminal(conn: &mut Connection, fd: RawFd) -> Option<Hold> {
    let hold = Hold::take(fd, true, |typed| {
        let _ = match typed {
            Typed::Bytes(b) => conn.send(&Request::Input(ByteBuf::from(b))),
            Typed::End => conn.send(&Request::InputEof),
        };
    })?;
    let _ = conn.send(&Request::Modes(hold.modes()));
    Some(hold)
}

/// Writes all of `bytes`, waiting out `EAGAIN` when the descriptor is non-blocking
/// (a terminal shared with a program that set `O_NONBLOCK` on it).
fn write_all(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    // SAFETY: the output descriptor is one of 0-2, probed open, or the controlling
    // terminal `Controlling` holds; ctx closes neither while it relays.
    let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
    while !bytes.is_empty() {
        match nix::unistd::write(bfd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let mut p = [PollFd::new(bfd, PollFlags::POLLOUT)];
                let _ = poll(&mut p, PollTimeout::NONE);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Dies of `signo` the way the routed process did, so a shell or `waitpid` above us sees
/// the same death; returns the shell's code for it if the signal does not kill.
pub(super) fn die_by(signo: i32) -> i32 {
    // A core file of ctx would be noise: the crash happened elsewhere.
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    if let Ok(sig) = Signal::try_from(signo) {
        // SAFETY: restoring the default disposition installs no handler code.
        let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
        let mut set = SigSet::empty();
        set.add(sig);
        let _ = set.thread_unblock();
        let _ = signal::raise(sig);
    }
    128 + signo
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use ctx_protocol::{FailureKind, Stage};
    use std::borrow::Cow;

    fn failure(kind: FailureKind, errno: i32, message: &'static str) -> ExecFailure<'static> {
        ExecFailure {
            kind,
            stage: Stage::Exec,
            errno,
            errno_name: Cow::Borrowed(""),
            message: Cow::Borrowed(message),
        }
    }

    #[test]
    fn exec_failures_render_and_map_to_exit_codes() {
        let relay_err = |f: &ExecFailure| Error::ExecFailed {
            context: "user".into(),
            program: "foo".into(),
            kind: f.kind,
            detail: failure_detail("foo", f),
            exit_code: f.exit_code(),
        };
        let e = relay_err(&failure(
            FailureKind::NotFound,
            libc::ENOENT,
            "command not found",
        ));
        assert_eq!(
            e.to_string(),
            "user: cannot run \"foo\": command not found (ENOENT at stage exec)"
        );
        assert_eq!(e.exit_code(), 127);
        let e = relay_err(&failure(
            FailureKind::PermissionDenied,
            libc::EACCES,
            "/srv/foo is mode 0600",
        ));
        assert_eq!(
            e.to_string(),
            "user: cannot run \"foo\": permission denied (EACCES at stage exec): /srv/foo is mode 0600"
        );
        assert_eq!(e.exit_code(), 126);
        assert_eq!(
            relay_err(&failure(FailureKind::NotExecutable, libc::ENOEXEC, "")).exit_code(),
            126
        );
        let mut cwd = failure(FailureKind::BadCwd, libc::ENOENT, "");
        cwd.stage = Stage::Chdir;
        assert_eq!(relay_err(&cwd).exit_code(), 125);
        // The shim's table, not a second one: ELOOP and ETXTBSY are "cannot execute".
        assert_eq!(
            relay_err(&failure(FailureKind::NotFound, libc::ELOOP, "")).exit_code(),
            126
        );
        assert_eq!(
            relay_err(&failure(FailureKind::NotExecutable, libc::ETXTBSY, "")).exit_code(),
            126
        );
        let mut other = failure(FailureKind::Other, 0, "");
        other.stage = Stage::Landlock;
        assert_eq!(relay_err(&other).exit_code(), 125);
    }

    #[test]
    fn dying_by_a_blocked_signal_still_dies_by_it() {
        use nix::sys::wait::{waitpid, WaitStatus};
        use nix::unistd::{fork, ForkResult};
        // SAFETY: the child only makes system calls (sigprocmask, setrlimit, signal,
        // raise) before _exit; nothing that needs locks held by other test threads.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let mut set = SigSet::empty();
                set.add(Signal::SIGINT);
                let _ = set.thread_block();
                let code = die_by(libc::SIGINT);
                // SAFETY: _exit is always safe; reached only if the signal did not kill.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                assert_eq!(
                    waitpid(child, None).unwrap(),
                    WaitStatus::Signaled(child, Signal::SIGINT, false)
                );
            }
        }
    }

    #[test]
    fn timeouts_exit_124_and_say_how_long() {
        let relay = Relay {
            context: "user",
            program: "sleep",
            timeout_ms: Some(90_000),
            input: None,
            raw: false,
            output: None,
            resize: false,
            controlling: &Controlling::None,
            launcher: None,
            pty_output: std::cell::RefCell::new(Output { pty: None }),
        };
        let Err(e) = relay.exited(
            ExitStatus::Signaled {
                signal: 9,
                core: false,
            },
            true,
        ) else {
            panic!("a timeout is an error");
        };
        assert_eq!(e.to_string(), "user: command timed out after 1m30s");
        assert_eq!(e.exit_code(), 124);
        assert!(matches!(
            relay.exited(ExitStatus::Code(3), false),
            Ok(Outcome::Exit(3))
        ));
        assert!(matches!(
            relay.exited(
                ExitStatus::Signaled {
                    signal: 2,
                    core: false
                },
                false
            ),
            Ok(Outcome::Signaled(2))
        ));
        // Without --timeout it was the context's own, whose length the client is not told.
        let by_context = Relay {
            timeout_ms: None,
            ..relay
        };
        let Err(e) = by_context.exited(ExitStatus::Code(137), true) else {
            panic!("a timeout is an error");
        };
        assert_eq!(
            e.to_string(),
            "user: command timed out at its context's timeout (see ctx contexts)"
        );
    }
}
