//! `ctx exec`: run one command in a context. The caller's non-terminal stdio travels to
//! the broker as descriptors (the routed process writes straight into them); terminal
//! stdio is replaced by a broker PTY whose bytes the relay (`super::relay`) carries.
//! Signals sent to `ctx` are forwarded, and `ctx` exits as the routed process did (same
//! code, same signal).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use clap::Args;
use ctx_protocol::terminal::Output;
use ctx_protocol::{Captured, ExecRequest, FdSlot, FdSource, Grouping, Request};
use serde_bytes::ByteBuf;

use super::connection::Connection;
use super::duration::parse_duration;
use super::error::Error;
use super::relay::{die_by, Outcome, Relay, Signals};
use super::terminal::{self, Controlling};
use ctx_protocol::launcher::Launcher;

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
    let mut conn = Connection::launch(socket, &request, &passed, signals.fd())?;
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

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

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
}
