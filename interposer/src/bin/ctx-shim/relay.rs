//! The shim's life after "accepted": one poll loop over the broker connection, a signalfd
//! and (PTY mode) the caller's terminal, until `Exited` gives the status to reproduce
//! (leaving behind, when the program's jobs still hold its PTY, the relay of their output).

use std::os::fd::RawFd;

use ctx_protocol::linger;
use ctx_protocol::terminal::{
    raise_at_foreground, set_window_size, write_all, Hold, Output, Typed,
};
use ctx_protocol::{fdpass, frame, pidfs, ExitStatus, Reply, Request, WinSize};
use serde_bytes::ByteBuf;

use crate::EXIT_CTX;
use ctx_hookpath::{ending, fds, sys};
use ctx_protocol::launcher::Launcher;

struct Tty {
    /// Descriptor the routed program's output is written to.
    out: Option<RawFd>,
    /// The caller's terminal that feeds the PTY: fd 0, or `/dev/tty` (see `run`).
    input: Option<RawFd>,
    /// The caller's terminal while we relay it in the foreground.
    hold: Option<Hold>,
}

impl Tty {
    fn foreground(&self) -> bool {
        // SAFETY: plain queries on a descriptor and our own process group.
        self.input
            .is_some_and(|fd| unsafe { libc::tcgetpgrp(fd) == libc::getpgrp() })
    }

    fn size(&self) -> Option<WinSize> {
        self.out
            .and_then(fds::winsize_of)
            .or_else(|| self.input.and_then(fds::winsize_of))
    }
}

struct Relay<'a> {
    sock: RawFd,
    tty: Tty,
    name: &'a [u8],
    input_open: bool,
    signals: ending::Forwarder,
    /// Where the program's signals to its parent go.
    launcher: Launcher,
    output: Output,
    /// The program's status, once `Exited` brought it.
    exited: Option<ExitStatus>,
}

impl Relay<'_> {
    /// Takes the caller's terminal when stdin is one and we own its foreground: the
    /// broker's PTY does the line discipline, so every key (Ctrl-C included) goes to the
    /// routed program, while the caller's terminal shows the program's modes.
    fn hold(&mut self) {
        let Some(fd) = self.tty.input else { return };
        if self.tty.hold.is_some() || !self.tty.foreground() {
            return;
        }
        let mut typed: Vec<Request> = Vec::new();
        let hold = Hold::take(fd, self.input_open, |t| {
            typed.push(match t {
                Typed::Bytes(b) => Request::Input(ByteBuf::from(b)),
                Typed::End => Request::InputEof,
            })
        });
        for req in &typed {
            self.send(req);
        }
        if let Some(hold) = hold {
            self.send(&Request::Modes(hold.modes()));
            self.tty.hold = Some(hold);
        }
    }

    /// Gives the caller its terminal back, with the program's modes as they are now.
    fn release(&mut self) {
        drop(self.tty.hold.take());
    }

    fn send(&mut self, req: &Request) {
        let mut buf = Vec::with_capacity(64);
        if frame::encode_vec(req, &mut buf).is_ok() {
            // A failed send shows up as EOF on the read side, which ends the relay. Never
            // with a SIGPIPE: that signal is ours to forward, so each failed send would
            // queue another and the signal loop would spin on a dead broker for ever.
            let mut data = &buf[..];
            while !data.is_empty() {
                // SAFETY: a valid readable slice.
                let n = unsafe {
                    libc::send(
                        self.sock,
                        data.as_ptr().cast(),
                        data.len(),
                        libc::MSG_NOSIGNAL,
                    )
                };
                if n < 0 && sys::errno() == libc::EINTR {
                    continue;
                }
                if n <= 0 {
                    return;
                }
                data = &data[n as usize..];
            }
        }
    }

    fn die(&mut self, what: &str) -> ! {
        self.release();
        let mut l = sys::Line::new();
        l.str("ctx: ").quoted(self.name).str(": ").str(what);
        l.write_to(2);
        // SAFETY: ending the process without running anything else.
        unsafe { libc::_exit(EXIT_CTX) }
    }

    /// Reproduces the routed program's end for the caller's waitpid, once the caller's
    /// terminal is given back. When processes the program left behind still hold its PTY,
    /// a detached process goes on copying their output to that terminal (see
    /// `ctx_protocol::linger`); `buf[..have]` holds what was read after `Exited`.
    fn finish(&mut self, status: ExitStatus, buf: &mut Vec<u8>, mut have: usize) -> ! {
        self.release();
        if let Some(out) = self.tty.out {
            if buf.len() < linger::RELAY_BUFFER {
                buf.resize(linger::RELAY_BUFFER, 0);
            }
            if linger::lingering_follows(self.sock, buf, &mut have)
                && linger::detach(&[self.sock, out])
            {
                linger::relay(self.sock, out, self.output.pty, buf, have)
            }
        }
        ending::reproduce(status)
    }

    fn on_reply(&mut self, payload: &[u8]) {
        match frame::decode_reply(payload) {
            Ok(Reply::Output(bytes)) => {
                if let Some(fd) = self.tty.out {
                    self.output.write(fd, &bytes, |b| write_all(fd, b));
                }
            }
            Ok(Reply::Exited { status, .. }) => self.exited = Some(status),
            // The program signalled its parent: the shim holds its place.
            Ok(Reply::SignalParent { signal, guarded }) => self.launcher.signal(signal, guarded),
            Ok(Reply::Modes(modes)) => {
                self.output.pty = Some(modes);
                if let Some(hold) = self.tty.hold.as_mut() {
                    hold.program_set(modes);
                }
            }
            Ok(Reply::Size(size)) => {
                if let Some(fd) = self.tty.out.or(self.tty.input) {
                    set_window_size(fd, size);
                }
            }
            Ok(Reply::Stopped { signal }) => {
                // Job control: the routed program stopped (the suspend key reached its
                // PTY); stop with it so the caller's shell sees the job stop. Its SIGCONT
                // resumes us and is forwarded. Where the kernel drops that stop (an
                // orphaned group: `ssh -t host cmd`, `script -c`), so it would a local
                // program's, which runs on: ours is continued (helper-85).
                self.signals.group_stopped();
                self.release();
                if !stop_by(signal) {
                    self.continue_program();
                }
            }
            Ok(Reply::ExecFailed(f)) => {
                self.release();
                ending::exec_failed(self.name, &f)
            }
            Ok(Reply::Error { message, .. }) => {
                let mut what = String::from("broker: ");
                what.push_str(&message);
                self.die(&what)
            }
            Ok(_) => {}
            Err(_) => self.die("malformed message from the broker"),
        }
    }

    /// Reads what the broker sent, with the program's pidfd if it rides along, and acts
    /// on every whole frame. Whether anything came; `None` at the end of the stream.
    fn receive(
        &mut self,
        buf: &mut Vec<u8>,
        have: &mut usize,
        watch: &mut Option<RawFd>,
    ) -> Option<bool> {
        if *have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let mut fd = [-1];
        let k = match fdpass::recv_with_fds(self.sock, &mut buf[*have..], &mut fd) {
            Ok((0, _)) => return None,
            Ok((k, got)) => {
                if got == 1 {
                    match watch {
                        None => *watch = Some(fd[0]),
                        // SAFETY: a descriptor just received, ours alone.
                        Some(_) => unsafe {
                            libc::close(fd[0]);
                        },
                    }
                }
                k
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => {
                return Some(false)
            }
            Err(_) => self.die("lost the connection to the broker"),
        };
        *have += k;
        let mut start = 0;
        loop {
            match frame::complete_frame(&buf[start..*have]) {
                Ok(Some(total)) => {
                    let payload = &buf[start + ctx_protocol::FRAME_HEADER..start + total];
                    self.on_reply(payload);
                    start += total;
                    if let Some(status) = self.exited {
                        buf.copy_within(start..*have, 0);
                        self.finish(status, buf, *have - start);
                    }
                }
                Ok(None) => break,
                Err(_) => self.die("oversized message from the broker"),
            }
        }
        buf.copy_within(start..*have, 0);
        *have -= start;
        if let Ok(Some(_)) | Ok(None) = frame::complete_frame(&buf[..*have]) {
            let need = if *have >= 4 {
                ctx_protocol::FRAME_HEADER
                    + u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
            } else {
                0
            };
            if need > buf.len() {
                buf.resize(need, 0);
            }
        }
        Some(true)
    }

    /// Takes everything the broker has sent so far, without waiting for more.
    fn drain(&mut self, buf: &mut Vec<u8>, have: &mut usize, watch: &mut Option<RawFd>) {
        while readable_now(self.sock) && self.receive(buf, have, watch) == Some(true) {}
    }

    /// Undoes a stop asked of the program that the kernel dropped for us.
    fn continue_program(&mut self) {
        let go_on = self.signals.request(ending::Caught {
            signo: libc::SIGCONT,
            from_terminal: false,
            from_self: false,
        });
        self.send(&go_on);
    }

    fn on_signal(&mut self, caught: ending::Caught) {
        if caught.from_self {
            // Raised at the caller's group for a key the PTY turned into a signal of its
            // own for the program (see `on_input`): not the program's twice.
            return;
        }
        let signo = caught.signo;
        match signo {
            libc::SIGWINCH => match self.tty.size() {
                Some(size) if self.tty.out.is_some() || self.tty.input.is_some() => {
                    self.send(&Request::Resize(size))
                }
                _ => {
                    let req = self.signals.request(caught);
                    self.send(&req)
                }
            },
            libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => {
                // Stop the routed program, give the caller its terminal back, and stop
                // ourselves so the caller's shell sees the job stop.
                let req = self.signals.request(caught);
                self.send(&req);
                self.release();
                if !stop_by(signo) {
                    // The kernel dropped the stop (our group is orphaned): so it does a
                    // local program's, which runs on. So does ours; stopped by SIGSTOP, no
                    // one would ever continue it (helper-84).
                    self.continue_program();
                }
            }
            libc::SIGCONT => {
                let req = self.signals.request(caught);
                self.send(&req);
                self.hold();
                if let Some(size) = self.tty.size() {
                    self.send(&Request::Resize(size));
                }
            }
            _ => {
                let req = self.signals.request(caught);
                self.send(&req)
            }
        }
    }

    fn on_input(&mut self) {
        // A mode the caller set before typing (echo off) applies to what it typed.
        if let Some(modes) = self.tty.hold.as_mut().and_then(Hold::caller_changed) {
            self.send(&Request::Modes(modes));
        }
        let Some(fd) = self.tty.input else { return };
        let mut buf = [0u8; 16384];
        // SAFETY: reads into a stack buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut _, buf.len()) };
        if n > 0 {
            let typed = &buf[..n as usize];
            self.send(&Request::Input(ByteBuf::from(typed)));
            if let Some(signo) = self.output.pty.and_then(|m| m.signal_typed(typed)) {
                raise_at_foreground(fd, signo);
            }
        } else if n == 0 {
            self.send(&Request::InputEof);
            self.input_open = false;
        } else if !matches!(sys::errno(), libc::EINTR | libc::EAGAIN) {
            // EIO: we lost the terminal (hangup, or read from the background).
            self.input_open = false;
        }
    }
}

/// The caller's controlling terminal, for a program whose PTY is only its controlling
/// terminal (its stdio are no terminals): what it writes to `/dev/tty` shows there.
fn open_controlling_terminal() -> Option<RawFd> {
    // SAFETY: a constant NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/dev/tty".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    (fd >= 0).then_some(fd)
}

/// Whether what is typed at the controlling terminal is this launch's to read: we run as
/// a job of our own (a job-control shell put our process group in the foreground and our
/// parent is not in it), as a program prompting on `/dev/tty` from a pipeline does. A
/// program in its caller's own group (an agent's `subprocess.run`) gets none: the relay
/// would read every key before the caller could, where locally the program takes only
/// what it reads.
fn owns_job() -> bool {
    // SAFETY: plain queries of process groups.
    unsafe { libc::getpgid(libc::getppid()) != libc::getpgrp() }
}

/// Stops this process by `signo`, a terminal stop signal the relay keeps blocked, as the
/// kernel stops a local job (the caller's `waitpid` sees that signal): raised at ourselves
/// and unblocked until it has been taken. Whether we were stopped and continued since
/// (`SIGCONT`, blocked for the relay, is then pending); `false` when the kernel dropped the
/// stop, as it does for an orphaned group, or the signal is ignored.
fn stop_by(signo: i32) -> bool {
    // SAFETY: sigset_t is plain data the sig* calls fill; signal calls on ourselves.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signo);
        libc::kill(libc::getpid(), signo);
        // Taken on the way out of this call: we stop here until a SIGCONT.
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut pending: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut pending);
        libc::sigismember(&pending, libc::SIGCONT) == 1
    }
}

/// Whether a read of `fd` would take something (or see its end) now.
fn readable_now(fd: RawFd) -> bool {
    let mut pfd = sys::poll_in(fd);
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

/// How long a shim whose broker is gone waits for the program's adopter to reap it.
const ADOPTED_REAP_MS: i32 = 2000;

/// How the program behind `pidfd` ended, when the broker went before it could tell: the
/// status its adopter's reap left (`PIDFD_INFO_EXIT`). `None` while it is not reaped
/// within [`ADOPTED_REAP_MS`] (no adopter reaps, or it still runs), and for a death by
/// `SIGKILL`, which the broker's own end deals a program still running (its
/// parent-death signal): that end is the broker's failure, not the program's.
fn ended_without_the_broker(pidfd: RawFd) -> Option<ExitStatus> {
    // `events` 0: POLLHUP comes at the reap, not at the exit.
    let mut pfd = libc::pollfd {
        fd: pidfd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    while unsafe { libc::poll(&mut pfd, 1, ADOPTED_REAP_MS) } < 0 {
        if sys::errno() != libc::EINTR {
            return None;
        }
    }
    match pidfs::exit_status(pidfd)? {
        ExitStatus::Signaled {
            signal: libc::SIGKILL,
            ..
        } => None,
        status => Some(status),
    }
}

/// How often a routed job in the background of the caller's terminal, whose program may
/// read it, looks whether it was given the foreground.
const FOREGROUND_POLL_MS: i32 = 50;

pub fn run(sock: RawFd, pty_mask: u8, launcher: libc::pid_t, name: &[u8]) -> ! {
    let sfd = ending::signal_fd();
    // Input comes from stdin when it is the terminal; otherwise the program may still
    // read its controlling terminal (`read </dev/tty`), fed from ours when it is our job's.
    let ctty = (pty_mask & 1 == 0)
        .then(open_controlling_terminal)
        .flatten();
    let out = if pty_mask == fds::CTTY_ONLY {
        ctty
    } else {
        [1, 2, 0].into_iter().find(|fd| pty_mask & (1 << fd) != 0)
    };
    let input = if pty_mask & 1 != 0 {
        Some(0)
    } else {
        ctty.filter(|_| owns_job())
    };
    let mut r = Relay {
        sock,
        tty: Tty {
            out,
            input,
            hold: None,
        },
        name,
        input_open: input.is_some(),
        // The PTY starts with the modes the hook read from the caller's terminal.
        output: Output {
            pty: out.or(input).and_then(fds::termios_of),
        },
        signals: ending::Forwarder::default(),
        launcher: Launcher::hold(launcher),
        exited: None,
    };
    r.hold();
    if let (None, Some(modes)) = (&r.tty.hold, r.tty.out.and_then(fds::termios_of)) {
        // A terminal we only write to: the broker still hands over output its caller's
        // terminal processes once (see `ctx_protocol::terminal`).
        r.send(&Request::Modes(modes));
    }
    let mut buf: Vec<u8> = vec![0; 64 * 1024];
    let mut have = 0usize;
    // The program's pidfd, once the broker sent it (`Reply::Watch`).
    let mut watch: Option<RawFd> = None;
    loop {
        // The foreground may come without a signal (the caller's `tcsetpgrp` alone): a job
        // whose input waits for it looks again every `FOREGROUND_POLL_MS`.
        r.hold();
        let awaiting_foreground = r.input_open && r.tty.input.is_some() && r.tty.hold.is_none();
        let relay_input = r.input_open && (r.tty.hold.is_some() || r.tty.foreground());
        // A terminal whose keys are not ours to read is still watched for its hangup
        // (`events` 0: only POLLHUP and POLLERR come): the program then hears the end of
        // its input instead of waiting for keys that can never come (a test harness that
        // closes the master of a terminal it gave as stdin: git's t7006 hung; helper-82).
        let input = match r.tty.input {
            Some(fd) if r.input_open => libc::pollfd {
                fd,
                events: if relay_input { libc::POLLIN } else { 0 },
                revents: 0,
            },
            _ => sys::poll_in(-1),
        };
        // Only its reap matters (`events` 0: POLLHUP comes then, and the kernel does not
        // wake a poller for the exit itself, POLLIN): woken at the exit too, the shim took
        // the CPU the broker was about to reap on, often the same one.
        let program = libc::pollfd {
            fd: watch.unwrap_or(-1),
            events: 0,
            revents: 0,
        };
        let mut pfd = [sys::poll_in(sock), sys::poll_in(sfd), input, program];
        let timeout = if awaiting_foreground {
            FOREGROUND_POLL_MS
        } else {
            -1
        };
        // SAFETY: four valid pollfds.
        let n = unsafe { libc::poll(pfd.as_mut_ptr(), 4, timeout) };
        if n < 0 {
            if sys::errno() == libc::EINTR {
                continue;
            }
            r.die("poll failed");
        }
        if pfd[1].revents & libc::POLLIN != 0 {
            while let Some(caught) = ending::next_signal(sfd) {
                r.on_signal(caught);
            }
        }
        if pfd[0].revents != 0 && r.receive(&mut buf, &mut have, &mut watch).is_none() {
            // The broker is gone. A program that had ended before it could reap it keeps
            // its own status, told by whoever adopts and reaps it (init, systemd).
            if let Some(status) = watch.and_then(ended_without_the_broker) {
                r.finish(status, &mut buf, 0)
            }
            r.die("the broker closed the connection before the program exited");
        }
        if pfd[3].revents != 0 {
            match pidfs::exit_status(pfd[3].fd) {
                Some(status) => {
                    // Reaped: whatever the broker sent before is in the socket.
                    r.drain(&mut buf, &mut have, &mut watch);
                    r.finish(status, &mut buf, have)
                }
                // Reaped, and the kernel keeps no status (before 6.15, or another PID
                // namespace's process) or not all of it (a core another thread dumped):
                // `Exited` brings it.
                None => {
                    // SAFETY: our descriptor, closed once.
                    unsafe { libc::close(pfd[3].fd) };
                    watch = None;
                }
            }
        }
        if pfd[2].revents != 0 {
            if pfd[2].events == 0 {
                r.send(&Request::InputEof);
                r.input_open = false;
            } else {
                r.on_input();
            }
        }
    }
}
