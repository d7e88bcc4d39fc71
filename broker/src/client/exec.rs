//! `ctx exec`: run one command in a context. The caller's non-terminal stdio travels to
//! the broker as descriptors (the routed process writes straight into them); terminal
//! stdio is replaced by a broker PTY whose bytes this module relays. Signals sent to `ctx`
//! are forwarded, and `ctx` exits as the routed process did (same code, same signal).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use clap::Args;
use ctx_protocol::{
    errno_name, Captured, ExecFailure, ExecRequest, ExitStatus, FdSlot, FdSource, Grouping, Reply,
    Request,
};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use serde_bytes::ByteBuf;

use super::connection::{unexpected, Connection};
use super::error::Error;
use super::terminal::{self, Controlling};
use ctx_protocol::terminal::{Hold, Output, Typed};

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

/// The options `ctx exec` and `ctx sh` share: how one launch runs.
#[derive(Debug, Args)]
pub struct LaunchOptions {
    /// Give the command a terminal (a broker PTY) on stdin, stdout and stderr even when
    /// they are not terminals here
    #[arg(short = 't', long)]
    pub tty: bool,

    /// Working directory for the command, instead of the context's
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,

    /// Set an environment variable in the command, over the context's own (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub set_env: Vec<OsString>,

    /// Kill the command after this long: 500ms, 30s, 10m, 1h, 1m30s, or bare seconds
    #[arg(long, value_name = "DUR")]
    pub timeout: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The context to run the command in (see `ctx contexts`)
    #[arg(long, value_name = "NAME")]
    pub context: String,

    #[command(flatten)]
    pub launch: LaunchOptions,

    /// Keep stdin attached (always the case; accepted for `docker exec -i` habits)
    #[arg(short = 'i', long)]
    pub interactive: bool,

    /// Hand the command the broker's listening socket for this reserved port at fd 3
    /// (then 4...), with LISTEN_FDS and LISTEN_PID set as systemd does (repeatable). Only
    /// the port's owning context (`[broker] port_owners`) or a root caller may claim it
    #[arg(long = "listen-port", value_name = "PORT")]
    pub listen_ports: Vec<u16>,

    /// Drop the signals the command sends to its parent (`kill -USR1 $PPID`) instead of
    /// passing them on to the process that ran ctx (a container's init starts its agent
    /// this way: the agent must not drive it)
    #[arg(long)]
    pub drop_parent_signals: bool,

    /// The command and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

/// What one of our standard descriptors is, which decides how it reaches the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdFd {
    Closed,
    Terminal,
    Other,
}

/// The request's descriptor slots and the descriptors to send for its `Passed` ones.
#[derive(Debug, PartialEq, Eq)]
pub struct FdPlan {
    pub slots: Vec<FdSlot>,
    pub passed: Vec<RawFd>,
}

/// How the launch ended, before it is turned into our own exit.
enum Outcome {
    Exit(i32),
    Signaled(i32),
}

/// Forwarded signals, read from a signalfd so that the relay stays one `poll` loop.
struct Signals {
    fd: SignalFd,
}

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl FdPlan {
    /// Terminals become the broker's PTY (a terminal is never handed to another uid: it
    /// could push keystrokes into ours with TIOCSTI); everything else is passed as is; a
    /// closed descriptor stays closed. `force_tty` (`-t`) makes all three the PTY.
    pub fn new(std: [StdFd; 3], force_tty: bool) -> FdPlan {
        let mut plan = FdPlan {
            slots: Vec::with_capacity(3),
            passed: Vec::with_capacity(3),
        };
        for (fd, state) in std.into_iter().enumerate() {
            let source = match state {
                _ if force_tty => FdSource::Pty,
                StdFd::Terminal => FdSource::Pty,
                StdFd::Other => FdSource::Passed,
                StdFd::Closed => continue,
            };
            if source == FdSource::Passed {
                plan.passed.push(fd as RawFd);
            }
            plan.slots.push(FdSlot {
                target: fd as i32,
                source,
            });
        }
        plan
    }

    pub fn is_pty(&self, target: i32) -> bool {
        self.slots
            .iter()
            .any(|s| s.target == target && s.source == FdSource::Pty)
    }

    pub fn any_pty(&self) -> bool {
        self.slots.iter().any(|s| s.source == FdSource::Pty)
    }

    /// Where the PTY's output goes: our stdout, else our stderr if that is what the PTY
    /// stands for, else the terminal on stdin (so typed input still echoes).
    pub fn output_fd(&self, std: [StdFd; 3]) -> Option<RawFd> {
        [1, 2]
            .into_iter()
            .find(|&fd| self.is_pty(fd) && std[fd as usize] != StdFd::Closed)
            .or_else(|| (self.is_pty(0) && std[0] == StdFd::Terminal).then_some(0))
    }
}

impl Signals {
    /// Blocks [`HANDLED`] so they queue on the signalfd instead of killing `ctx`.
    fn install() -> Result<Signals, Error> {
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

    fn next(&self) -> Option<Signal> {
        match self.fd.read_signal() {
            Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// An `O_PATH` descriptor of our working directory, which the broker can enter even when
/// it has no name (deleted); `None` when even that fails.
fn open_cwd() -> Option<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(".")
        .ok()
        .map(OwnedFd::from)
}

pub fn run(socket: &Path, args: ExecArgs) -> Result<i32, Error> {
    run_as(socket, args, Request::Exec)
}

/// Runs the launch `args` describe, with `wrap` choosing the request that carries it
/// (`ctx sh` wraps it in a shell request).
pub fn run_as(
    socket: &Path,
    args: ExecArgs,
    wrap: impl FnOnce(ExecRequest) -> Request,
) -> Result<i32, Error> {
    match launch(socket, args, wrap)? {
        Outcome::Exit(code) => Ok(code),
        Outcome::Signaled(signo) => Ok(die_by(signo)),
    }
}

fn launch(
    socket: &Path,
    args: ExecArgs,
    wrap: impl FnOnce(ExecRequest) -> Request,
) -> Result<Outcome, Error> {
    // First, before ctx changes anything of its own (it blocks the signals it forwards
    // below): what a child of the caller's shell would inherit is what ctx has now.
    let mut inherited = Captured::read();
    let timeout_ms = args
        .launch
        .timeout
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| Error::Usage(format!("--timeout: {e}")))?;
    let set_env = args
        .launch
        .set_env
        .iter()
        .map(|kv| parse_set_env(kv.as_bytes()).map(|()| ByteBuf::from(kv.as_bytes())))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Usage)?;
    let program = args.command[0].to_string_lossy().into_owned();

    // Probe before anything opens a descriptor that could land on a closed 0, 1 or 2.
    let std = [probe(0), probe(1), probe(2)];
    let mut plan = FdPlan::new(std, args.launch.tty);
    for (i, port) in args.listen_ports.iter().enumerate() {
        // SD_LISTEN_FDS_START: the sockets follow stdio.
        plan.slots.push(FdSlot {
            target: 3 + i as i32,
            source: FdSource::ReservedPort(*port),
        });
    }
    // The cwd as a descriptor too, after the passed ones: a deleted cwd has no name.
    let cwd_fd = open_cwd();
    let mut passed = plan.passed.clone();
    if let Some(fd) = &cwd_fd {
        passed.push(fd.as_raw_fd());
        inherited.cwd_fd = true;
    }
    let controlling = Controlling::find();
    // No stdio is a terminal, yet we have a controlling terminal: locally the command
    // would share it (`/dev/tty`: ssh and sudo prompts, `read </dev/tty`). It gets a PTY
    // of the broker's as its controlling terminal only, relayed to ours.
    let ctty_only = !plan.any_pty() && matches!(controlling, Controlling::DevTty(_));
    let tty_info = (plan.any_pty() || ctty_only).then(|| controlling.info());
    // Stdin is no terminal, but the command may still read its controlling terminal
    // (`read </dev/tty`): fed from ours when what is typed there is this job's to read.
    let job_tty = (tty_info.is_some() && !plan.is_pty(0))
        .then(terminal::job_terminal)
        .flatten();
    let tty_modes = tty_info.as_ref().and_then(|t| t.termios);
    let request = wrap(ExecRequest {
        context: args.context.clone(),
        argv: args
            .command
            .into_iter()
            .map(|a| ByteBuf::from(a.into_vec()))
            .collect(),
        program: None,
        search_path: None,
        env: std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                ByteBuf::from(kv)
            })
            .collect(),
        set_env,
        cwd: ByteBuf::from(
            std::env::current_dir()
                .map(|d| d.into_os_string().into_vec())
                .unwrap_or_default(),
        ),
        cwd_override: args
            .launch
            .cwd
            .map(|d| ByteBuf::from(d.into_os_string().into_vec())),
        fds: plan.slots.clone(),
        tty: tty_info.clone(),
        timeout_ms,
        // As `docker exec`: the command leads a group of its own, which signals reach.
        grouping: Grouping::GroupLeader,
        inherited: Some(inherited.to_inherited()),
    });

    // Our parent now: the command's signals to its parent go there while it still is.
    // SAFETY: plain getter.
    let launcher = Launcher::hold(unsafe { libc::getppid() });
    // Block the forwarded signals first, so none is lost between Started and the loop.
    let signals = Signals::install()?;
    let mut conn = Connection::connect(socket)?;
    conn.open(&request, &passed)?;
    drop(request);
    drop(cwd_fd);

    let relay = Relay {
        context: &args.context,
        program: &program,
        timeout_ms,
        input: match &job_tty {
            Some(f) if !plan.is_pty(0) => Some(f.as_raw_fd()),
            _ => (plan.is_pty(0) && std[0] != StdFd::Closed).then_some(0),
        },
        raw: match &job_tty {
            Some(_) if !plan.is_pty(0) => true,
            _ => plan.is_pty(0) && std[0] == StdFd::Terminal,
        },
        output: match controlling.raw_fd() {
            Some(fd) if ctty_only => Some(fd),
            _ => plan.output_fd(std),
        },
        resize: plan.any_pty() || ctty_only,
        controlling: &controlling,
        launcher: (!args.drop_parent_signals).then_some(&launcher),
        pty_output: std::cell::RefCell::new(Output { pty: tty_modes }),
    };
    relay.run(&mut conn, &signals)
}

struct Relay<'a> {
    context: &'a str,
    program: &'a str,
    timeout_ms: Option<u64>,
    /// What feeds the PTY: our stdin, or our controlling terminal when the PTY is only
    /// the command's controlling terminal.
    input: Option<RawFd>,
    /// That input is a terminal to put in raw mode while the command runs.
    raw: bool,
    output: Option<RawFd>,
    resize: bool,
    controlling: &'a Controlling,
    /// Where the command's signals to its parent go (`None`: dropped).
    launcher: Option<&'a Launcher>,
    /// The PTY's modes, for writing its output processed once.
    pty_output: std::cell::RefCell<Output>,
}

impl Relay<'_> {
    fn run(&self, conn: &mut Connection, signals: &Signals) -> Result<Outcome, Error> {
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
                        Reply::Stopped { .. } => {
                            // Job control: the routed program stopped; so does ctx, and the
                            // shell's SIGCONT resumes both (see the SIGCONT arm above).
                            self.flush(&mut out, output_ok);
                            drop(raw.take());
                            let _ = signal::raise(Signal::SIGSTOP);
                        }
                        Reply::SignalParent { signal } => {
                            // `kill $PPID` in the program: ctx stands where the program
                            // would be had it been exec'd in place, so its parent is meant.
                            self.flush(&mut out, output_ok);
                            if let Some(l) = self.launcher {
                                l.signal(signal);
                            }
                        }
                        Reply::Exited { status, timed_out } => {
                            self.flush(&mut out, output_ok);
                            drop(raw.take());
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
                after: format_duration(self.timeout_ms.unwrap_or(0)),
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

pub fn probe(fd: RawFd) -> StdFd {
    // SAFETY: F_GETFD only inspects the descriptor number.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        StdFd::Closed
    } else if terminal::is_terminal(fd) {
        StdFd::Terminal
    } else {
        StdFd::Other
    }
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
fn die_by(signo: i32) -> i32 {
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

/// Parses `500ms`, `30s`, `10m`, `1h`, `1m30s`, or bare seconds, into milliseconds, with
/// the same rules as the config's `timeout`.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    crate::config::parse_duration(text.trim()).map(|d| d.as_millis().min(u64::MAX as u128) as u64)
}

/// The inverse of [`parse_duration`], for messages: `1m30s`, `500ms`, `2h`.
pub fn format_duration(ms: u64) -> String {
    let mut out = String::new();
    let (h, m, s, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (milli, "ms")] {
        if n != 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// Checks one `-e KEY=VALUE`: a `=` and a shell-valid name before it.
pub fn parse_set_env(kv: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(kv);
    let Some(eq) = kv.iter().position(|&b| b == b'=') else {
        return Err(format!("-e {shown:?}: expected KEY=VALUE"));
    };
    let key = &kv[..eq];
    let valid = !key.is_empty()
        && !key[0].is_ascii_digit()
        && key.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(format!(
            "-e {shown:?}: {:?} is not a valid variable name (letters, digits and _, not starting with a digit)",
            String::from_utf8_lossy(key)
        ));
    }
    Ok(())
}

/// The process that ran `ctx exec`, held by a pidfd while it is still our parent: once it
/// is gone, our parent is a subreaper or init, which the command's `kill $PPID` must not
/// reach (locally it would find no such process).
struct Launcher {
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
}

impl Launcher {
    fn hold(pid: libc::pid_t) -> Launcher {
        // SAFETY: plain syscalls with integer arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
        // SAFETY: a new descriptor, owned from here.
        let pidfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
        // Held and still our parent: the pidfd is that process's, not a reuse's.
        // SAFETY: plain getter.
        let parent = pid > 1 && unsafe { libc::getppid() } == pid;
        Launcher {
            pid: if parent { pid } else { 0 },
            pidfd,
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: plain getter.
        if self.pid == 0 || !(1..=64).contains(&signal) || unsafe { libc::getppid() } != self.pid {
            return;
        }
        // SAFETY: plain syscalls with integer arguments and a null siginfo.
        unsafe {
            match &self.pidfd {
                Some(fd) => libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                ),
                None => libc::kill(self.pid, signal) as libc::c_long,
            };
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use ctx_protocol::{FailureKind, Stage};
    use std::borrow::Cow;
    use std::os::fd::AsRawFd;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("10m"), Ok(600_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000));
        assert_eq!(parse_duration("1h2m3s4ms"), Ok(3_723_004));
        assert_eq!(parse_duration("15"), Ok(15_000));
        for bad in [
            "",
            "0",
            "0s",
            "s",
            "10x",
            "1.5s",
            "-1",
            "10 s",
            "m10",
            "99999999999999999999",
            "18446744073709551615s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn durations_format_back() {
        for (ms, text) in [
            (500, "500ms"),
            (30_000, "30s"),
            (90_000, "1m30s"),
            (3_600_000, "1h"),
            (3_723_004, "1h2m3s4ms"),
        ] {
            assert_eq!(format_duration(ms), text);
            assert_eq!(parse_duration(text), Ok(ms));
        }
    }

    #[test]
    fn set_env_validation() {
        assert!(parse_set_env(b"FOO=bar").is_ok());
        assert!(parse_set_env(b"_x1=").is_ok());
        assert!(parse_set_env(b"A=b=c").is_ok());
        assert!(parse_set_env(b"A=\xff\xfe").is_ok(), "values are bytes");
        assert!(parse_set_env(b"FOO").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_set_env(b"=x").is_err());
        assert!(parse_set_env(b"1X=y").unwrap_err().contains("not a valid"));
        assert!(parse_set_env(b"A-B=c").is_err());
        assert!(parse_set_env(b"A B=c").is_err());
    }

    fn slot(target: i32, source: FdSource) -> FdSlot {
        FdSlot { target, source }
    }

    #[test]
    fn pipes_are_passed_and_terminals_get_the_pty() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        assert_eq!(probe(r.as_raw_fd()), StdFd::Other);
        assert_eq!(probe(w.as_raw_fd()), StdFd::Other);
        assert_eq!(probe(pty.slave.as_raw_fd()), StdFd::Terminal);
        let closed = {
            let (r2, _w2) = nix::unistd::pipe().unwrap();
            r2.as_raw_fd()
        };
        assert_eq!(probe(closed), StdFd::Closed);

        let plan = FdPlan::new([StdFd::Other, StdFd::Terminal, StdFd::Other], false);
        assert_eq!(
            plan.slots,
            vec![
                slot(0, FdSource::Passed),
                slot(1, FdSource::Pty),
                slot(2, FdSource::Passed)
            ]
        );
        assert_eq!(plan.passed, vec![0, 2], "sent in slot order");
        assert!(plan.any_pty());
    }

    #[test]
    fn all_pipes_means_no_pty() {
        let plan = FdPlan::new([StdFd::Other; 3], false);
        assert_eq!(plan.passed, vec![0, 1, 2]);
        assert!(!plan.any_pty());
        assert_eq!(plan.output_fd([StdFd::Other; 3]), None);
    }

    #[test]
    fn closed_descriptors_get_no_slot() {
        let plan = FdPlan::new([StdFd::Closed, StdFd::Other, StdFd::Closed], false);
        assert_eq!(plan.slots, vec![slot(1, FdSource::Passed)]);
        assert_eq!(plan.passed, vec![1]);
    }

    #[test]
    fn force_tty_makes_every_slot_the_pty() {
        let std = [StdFd::Other, StdFd::Other, StdFd::Terminal];
        let plan = FdPlan::new(std, true);
        assert!(plan.slots.iter().all(|s| s.source == FdSource::Pty));
        assert_eq!(plan.slots.len(), 3);
        assert!(plan.passed.is_empty(), "-t passes nothing");
        assert_eq!(plan.output_fd(std), Some(1));
    }

    #[test]
    fn pty_output_goes_where_the_pty_stands_in() {
        // `ctx exec -- cmd > file` on a terminal: the PTY is stdin and stderr.
        let std = [StdFd::Terminal, StdFd::Other, StdFd::Terminal];
        assert_eq!(FdPlan::new(std, false).output_fd(std), Some(2));
        // `ctx exec -- cmd >file 2>&1` on a terminal: only stdin, so echo goes to it.
        let std = [StdFd::Terminal, StdFd::Other, StdFd::Other];
        assert_eq!(FdPlan::new(std, false).output_fd(std), Some(0));
    }

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
    }
}
