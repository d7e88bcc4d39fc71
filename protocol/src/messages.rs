//! Every message of the protocol. Append-only: add variants and types at the end.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Bumped whenever an existing message changes its encoding.
pub const PROTOCOL_VERSION: u32 = 6;

/// First four bytes of every client's [`Hello`]; lets the broker tell a ctx peer from a
/// stray one before it reads anything else.
pub const MAGIC: [u8; 4] = *b"CTX1";

// ---------------------------------------------------------------------------------------
// Client to broker
// ---------------------------------------------------------------------------------------

/// The first frame of every connection. Its shape never changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 4],
    pub version: u32,
    pub client: ClientKind,
}

impl Hello {
    pub const fn new(client: ClientKind) -> Self {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            client,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientKind {
    Cli,
    Interposer,
}

/// What a client asks; one `Exec`/`Status`/`Contexts`/`Reload`/`Ps`/`Kill` per connection,
/// then, for `Exec`, any number of `Signal`, `Resize`, `Input` and one `InputEof`.
// One request is decoded per connection; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Exec(ExecRequest),
    /// Deliver this signal number to the routed process group (what a terminal's keys and
    /// `ctx exec`'s forwarding do).
    Signal {
        signo: i32,
    },
    /// The caller's terminal changed size (PTY mode).
    Resize(WinSize),
    /// Bytes the caller typed (PTY mode).
    Input(ByteBuf),
    /// The caller's input ended (PTY mode): the broker sends the terminal's EOF character.
    InputEof,
    Status,
    Contexts,
    /// Run a script in a context's persistent shell session (`ctx sh`).
    Shell(ShellRequest),
    /// Re-read the config file the broker was started with (`ctx reload`).
    Reload,
    /// List the running routed processes the peer may see (`ctx ps`).
    Ps,
    /// Signal running routed process groups (`ctx kill`).
    Kill {
        target: KillTarget,
        signo: i32,
    },
    /// Deliver this signal number to the routed program's own process, not its group:
    /// what `kill(pid)` of the pid the caller holds (the shim) does to a local child.
    SignalProcess {
        signo: i32,
    },
    /// PTY mode: the caller's terminal's modes (without the relay's `EXTPROC`), sent when
    /// the relay starts and whenever the caller changed them since; the broker applies
    /// what changed to the PTY (see [`crate::terminal`]). The first one also tells the
    /// broker that the client mirrors the PTY's modes onto the caller's terminal.
    Modes(TermModes),
}

/// A launch. Byte strings are raw: argv, env and paths need not be UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Target context name.
    pub context: String,
    pub argv: Vec<ByteBuf>,
    /// The file to execute; `None` means `argv[0]`.
    pub program: Option<ByteBuf>,
    /// `Some(PATH)` searches `program` along this PATH value as `execvp` does (including the
    /// `/bin/sh` fallback for files without a shebang); `None` executes `program` as given.
    pub search_path: Option<ByteBuf>,
    /// The caller's environment as `KEY=VALUE`; only names the context's `inherit_env`
    /// matches cross into the routed process.
    pub env: Vec<ByteBuf>,
    /// Explicit `KEY=VALUE` settings (`ctx exec -e`), applied over the context's env.
    pub set_env: Vec<ByteBuf>,
    /// The caller's working directory, used when the context's `cwd` is `"inherit"`.
    pub cwd: ByteBuf,
    /// An explicit working directory (`ctx exec --cwd`), overriding the context's.
    pub cwd_override: Option<ByteBuf>,
    /// Where the routed process's descriptors come from, by target number.
    pub fds: Vec<FdSlot>,
    /// Present when some slot is [`FdSource::Pty`]: the terminal to emulate.
    pub tty: Option<TtyInfo>,
    /// Kill the routed process group after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// Whether the caller's child led its own process group or session when it exec'd.
    pub grouping: Grouping,
    /// What the caller's process would have passed on across `execve` (umask, limits,
    /// scheduling, signal state, its cwd as a descriptor); the broker applies what lowers
    /// the routed process's defaults and nothing that raises them. `None`: its defaults.
    pub inherited: Option<crate::inherit::Inherited>,
}

/// Where the process that asked for the launch stood when it exec'd (its process group and
/// session); the routed program stands the same where it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Grouping {
    /// In its parent's process group (a plain `fork`). The routed program cannot join the
    /// caller's group (it lives in another session), so it leads a group of its own.
    #[default]
    Member,
    /// It led its own process group (`setpgid(0, 0)`, a shell's job, `process_group=0`):
    /// the routed program leads its own group.
    GroupLeader,
    /// It led its own session (`setsid()`, `start_new_session=True`): the routed program
    /// leads its own session (it always does on a PTY, whose controlling process it is).
    SessionLeader,
}

/// `ctx sh`: `exec.argv` is ignored; the broker runs bash with the session's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellRequest {
    pub exec: ExecRequest,
    /// Session name; `default` when the user names none.
    pub session: String,
    /// The script; `None` opens an interactive shell (needs a PTY).
    pub script: Option<ByteBuf>,
    /// Forget the session's saved state first.
    pub reset: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdSlot {
    /// Descriptor number in the routed process.
    pub target: i32,
    pub source: FdSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdSource {
    /// The next descriptor of the request's `SCM_RIGHTS` payload, in slot order.
    Passed,
    /// The slave side of the PTY the broker allocates for this launch.
    Pty,
    /// The listening TCP socket the broker holds for this reserved port (`[broker]
    /// reserved_ports`), handed over systemd-style (`ctx exec --listen-port`).
    ReservedPort(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtyInfo {
    pub size: WinSize,
    /// The caller terminal's modes, copied onto the PTY so erase/kill/intr keys match.
    pub termios: Option<TermModes>,
}

/// The portable part of a `struct termios`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermModes {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub cc: [u8; 32],
}

// ---------------------------------------------------------------------------------------
// Broker to client
// ---------------------------------------------------------------------------------------

/// Everything the broker sends. Text fields borrow from the frame when decoded with
/// [`crate::frame::decode`], so the interposer can read `Started`/`ExecFailed`/`Error`
/// without allocating.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply<'a> {
    /// Always first: the broker's protocol version and software version.
    Hello {
        version: u32,
        #[serde(borrow)]
        software: Cow<'a, str>,
    },
    /// The request was refused or could not be understood; the connection ends.
    Error {
        kind: ErrorKind,
        #[serde(borrow)]
        message: Cow<'a, str>,
    },
    /// The routed program was executed (its `execve` succeeded).
    Started {
        id: u64,
        pid: i32,
    },
    /// The routed program could not be started; nothing runs.
    ExecFailed(#[serde(borrow)] ExecFailure<'a>),
    /// The routed process ended; the last message of an exec but for a PTY launch's
    /// `Lingering` and what follows it.
    Exited {
        status: ExitStatus,
        timed_out: bool,
    },
    /// Bytes the routed process wrote to its PTY. Encoded as bytes, not as a sequence of
    /// `u8` (serde's default for a slice), which postcard writes one call per byte; the
    /// bytes on the wire are the same either way.
    Output(#[serde(borrow, with = "serde_bytes")] Cow<'a, [u8]>),
    Status(StatusReport),
    Contexts(Vec<ContextInfo>),
    /// The new config is in force; these are its contexts.
    Reloaded {
        contexts: Vec<String>,
        /// The file's warnings and the `[broker]` changes that wait for a restart.
        warnings: Vec<String>,
    },
    Processes(Vec<ProcessInfo>),
    /// These launch ids were signalled.
    Killed {
        ids: Vec<u64>,
    },
    /// Interposer clients only: the launch is authorised and prepared, and its program
    /// passed the broker's checks for the context's uid; the process is being started.
    /// The caller may become the shim now, while the broker forks. No `Started` follows;
    /// rarely, when the exec itself fails after all, `ExecFailed` does.
    Accepted,
    /// The routed program was stopped by job control: the terminal's suspend key, which
    /// the broker turns into `SIGSTOP` because the kernel ignores terminal stops sent to a
    /// program whose parent (the broker) is outside its session. The client stops itself
    /// too, so the caller's shell sees the job stop; its `SIGCONT` resumes both.
    Stopped {
        signal: i32,
    },
    /// `ctx kill --context` by the operator: these launch ids' process groups, and
    /// `others` more processes of the context that its cgroup holds outside those groups
    /// (they left them, or no launch of it runs any more). Sent instead of `Killed` only
    /// when `others` is not 0, so that older clients keep understanding the usual answer.
    KilledInContext {
        ids: Vec<u64>,
        others: u64,
    },
    /// PTY mode: the PTY's modes changed (the program set them), sent before the output
    /// written under them. A client that holds the caller's terminal gives it the same;
    /// every client takes out the PTY's `ONLCR` where its terminal puts it back
    /// (see [`crate::terminal`]).
    Modes(TermModes),
    /// A process of the launch sent `signal` to its parent (`kill -USR1 $PPID`); the
    /// broker, which is that parent, took it instead. The client raises it at the process
    /// that launched the program (its own parent: the shim took the program's place).
    /// `guarded`: the program runs as another uid than the caller, which the kernel would
    /// not let signal the launcher; only a signal that cannot end or stop it (one it
    /// catches or ignores, or whose default is to do neither) is passed on.
    SignalParent {
        signal: i32,
        guarded: bool,
    },
    /// PTY mode, right after `Exited`: processes the program left behind (`cmd &`) still
    /// hold its terminal. Their output keeps coming as `Output` (and their mode changes as
    /// `Modes`) until the last of them closes it; the broker then ends the connection. A
    /// client that hangs up instead makes the broker hang the terminal up. When this does
    /// not follow `Exited`, the broker ends the connection right after it.
    Lingering,
    /// Before the greeting: the broker has made room for the descriptors of a request that
    /// names more than one message carries and came without them; the client sends them
    /// now, in one frame of their own (see [`crate::fdpass::send_fds_frame`]).
    SendDescriptors,
    /// The routed program changed its terminal's window size (`stty cols 100`, `resize`):
    /// the client sets it on the caller's terminal, as the program would have locally.
    Size(WinSize),
    /// Interposer clients of a launch without a terminal, right after the fork: the
    /// program's pidfd rides with this frame (`SCM_RIGHTS`). The shim learns the program's
    /// end from it (`PIDFD_INFO_EXIT`, once the broker has reaped it) instead of waiting for
    /// `Exited`, and wakes at the exit itself, while the broker reaps. Whatever the broker
    /// sends before the reap (a signal to the parent) is in the socket by then. A reader
    /// that takes no descriptors (`read`) gets none: the kernel drops it.
    Watch,
}

/// Variant numbers of [`Reply`] as postcard writes them (the first payload byte), so a
/// reader that must not allocate can refuse variants it does not expect before decoding.
pub mod reply_tag {
    pub const HELLO: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const STARTED: u8 = 2;
    pub const EXEC_FAILED: u8 = 3;
    pub const EXITED: u8 = 4;
    pub const OUTPUT: u8 = 5;
    pub const STATUS: u8 = 6;
    pub const CONTEXTS: u8 = 7;
    pub const RELOADED: u8 = 8;
    pub const PROCESSES: u8 = 9;
    pub const KILLED: u8 = 10;
    pub const ACCEPTED: u8 = 11;
    pub const STOPPED: u8 = 12;
    pub const KILLED_IN_CONTEXT: u8 = 13;
    pub const MODES: u8 = 14;
    pub const SIGNAL_PARENT: u8 = 15;
    pub const LINGERING: u8 = 16;
    pub const SEND_DESCRIPTORS: u8 = 17;
    pub const SIZE: u8 = 18;
    pub const WATCH: u8 = 19;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The peer speaks another protocol version or is not a ctx client.
    VersionMismatch,
    /// A malformed, oversized or out-of-order message.
    BadRequest,
    /// No context of that name.
    UnknownContext,
    /// The peer may not enter the context (its `allow` rule).
    Refused,
    /// The broker is shutting down.
    ShuttingDown,
    /// Anything else on the broker's side.
    Internal,
    /// `Reload`: the new config file was refused; the running one stays in force.
    ConfigRejected,
    /// `Kill`: no running routed process matches.
    NoSuchProcess,
    /// Refused before the handshake while the broker's room for the caller's uid is taken
    /// by its other connections: they end in moments, and the client may connect again.
    Busy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecFailure<'a> {
    pub kind: FailureKind,
    pub stage: Stage,
    /// The errno of the failing call (0 when the failure is not a system call's).
    pub errno: i32,
    #[serde(borrow)]
    pub errno_name: Cow<'a, str>,
    #[serde(borrow)]
    pub message: Cow<'a, str>,
}

/// What went wrong, in the words a user needs to act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    NotFound,
    PermissionDenied,
    NotExecutable,
    BadCwd,
    UnknownUser,
    SetUid,
    ResourceLimit,
    OutOfMemory,
    Other,
}

/// Which step of the spawn path failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    Fork,
    Session,
    Terminal,
    Fds,
    Rlimits,
    Groups,
    SetGid,
    SetUid,
    Chdir,
    NoNewPrivs,
    Capabilities,
    Exec,
    User,
    /// Joining the context's namespaces (`isolation.pid`, `isolation.network`).
    Namespace,
    /// Applying the context's Landlock ruleset (filesystem rules, signal scoping).
    Landlock,
    /// Joining the context's cgroup (memory, pids, cpu limits).
    Cgroup,
    /// Installing a seccomp filter (the signal filter, enforce's exec guard).
    Seccomp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// Normal exit with this code (0..=255).
    Code(i32),
    /// Killed by this signal; `core` when the kernel reported a core dump.
    Signaled { signal: i32, core: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub software: String,
    pub pid: i32,
    pub uid: u32,
    pub config_path: String,
    pub socket_path: String,
    pub audit_log: String,
    pub uptime_ms: u64,
    pub running: u64,
    pub launches: u64,
    pub contexts: Vec<String>,
    /// One line per limitation in force (e.g. "not root: contexts must use uid 1000").
    pub warnings: Vec<String>,
    /// One line per context: the isolation in force for it right now, then what it asks
    /// for and does not have (`user: pid namespace, network none; NOT in force:
    /// memory_max`), as [`IsolationLine`] writes and reads it. Why each item is not in
    /// force is in `warnings`.
    pub isolation: Vec<String>,
}

/// One context's entry in [`StatusReport::isolation`]: `NAME: A, B; NOT in force: C, D`
/// (`none` when nothing is in force; the second part only when something is missing).
/// Items never contain `", "` outside parentheses, nor `"; "`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationLine {
    pub context: String,
    pub in_force: Vec<String>,
    pub not_in_force: Vec<String>,
}

impl IsolationLine {
    const MISSING: &'static str = "; NOT in force: ";

    pub fn render(&self) -> String {
        let mut line = format!("{}: ", self.context);
        if self.in_force.is_empty() {
            line.push_str("none");
        } else {
            line.push_str(&self.in_force.join(", "));
        }
        if !self.not_in_force.is_empty() {
            line.push_str(Self::MISSING);
            line.push_str(&self.not_in_force.join(", "));
        }
        line
    }

    /// Reads a line [`IsolationLine::render`] wrote (`None`: not such a line).
    pub fn parse(line: &str) -> Option<IsolationLine> {
        let (context, rest) = line.split_once(": ")?;
        let (in_force, missing) = match rest.split_once(Self::MISSING) {
            Some((a, b)) => (a, b),
            None => (rest, ""),
        };
        let in_force = if in_force == "none" {
            Vec::new()
        } else {
            split_items(in_force)
        };
        Some(IsolationLine {
            context: context.to_string(),
            in_force,
            not_in_force: split_items(missing),
        })
    }
}

/// Splits `a, b (c, d), e` at the `", "` outside parentheses.
fn split_items(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b',' if depth == 0 && bytes.get(i + 1) == Some(&b' ') => {
                items.push(text[start..i].to_string());
                start = i + 2;
            }
            _ => {}
        }
    }
    if start < text.len() {
        items.push(text[start..].to_string());
    }
    items
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextInfo {
    pub name: String,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub cwd: String,
    /// Environment names with their values masked.
    pub env: Vec<(String, String)>,
    pub inherit_env: Vec<String>,
    pub allow: String,
    pub timeout_ms: Option<u64>,
    pub rlimits: Vec<(String, u64)>,
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

impl ExitStatus {
    /// Decodes a `waitid` result (`si_code`, `si_status`).
    pub fn from_siginfo(code: i32, status: i32) -> ExitStatus {
        match code {
            libc::CLD_EXITED => ExitStatus::Code(status),
            libc::CLD_DUMPED => ExitStatus::Signaled {
                signal: status,
                core: true,
            },
            _ => ExitStatus::Signaled {
                signal: status,
                core: false,
            },
        }
    }

    /// A `waitpid` status word (as `PIDFD_INFO_EXIT` reports it): an exit code or a
    /// signal, with or without a core. `None` for a stop or continue.
    pub fn from_wait_status(status: i32) -> Option<ExitStatus> {
        let signal = status & 0x7f;
        match signal {
            0 => Some(ExitStatus::Code((status >> 8) & 0xff)),
            0x7f => None,
            _ => Some(ExitStatus::Signaled {
                signal,
                core: status & 0x80 != 0,
            }),
        }
    }

    /// The shell's view: the code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signaled { signal, .. } => 128 + signal,
        }
    }
}

/// The symbolic name of an errno value (`ENOENT`), or `"E?"` when unknown.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        0 => "OK",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::EPIPE => "EPIPE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ELOOP => "ELOOP",
        libc::ELIBBAD => "ELIBBAD",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        _ => "E?",
    }
}

/// Classifies an errno from a given stage the way a user reads it.
pub fn classify(stage: Stage, errno: i32) -> FailureKind {
    match (stage, errno) {
        (Stage::Chdir, _) => FailureKind::BadCwd,
        (Stage::User, _) => FailureKind::UnknownUser,
        (Stage::SetUid | Stage::SetGid | Stage::Groups, _) => FailureKind::SetUid,
        (Stage::Rlimits, _) => FailureKind::ResourceLimit,
        (_, libc::ENOMEM) => FailureKind::OutOfMemory,
        (Stage::Fork, libc::EAGAIN) => FailureKind::ResourceLimit,
        (Stage::Exec, libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG | libc::ELOOP) => {
            FailureKind::NotFound
        }
        (Stage::Exec, libc::EACCES | libc::EPERM) => FailureKind::PermissionDenied,
        (Stage::Exec, libc::ENOEXEC | libc::ELIBBAD | libc::EISDIR | libc::ETXTBSY) => {
            FailureKind::NotExecutable
        }
        (Stage::Exec, libc::E2BIG | libc::EMFILE | libc::ENFILE | libc::EAGAIN) => {
            FailureKind::ResourceLimit
        }
        _ => FailureKind::Other,
    }
}

/// The exit status of a launch that failed at `stage` with `errno`, once the caller can
/// only see a status (`ctx exec`, or the shim and fork relay after the caller's own exec
/// succeeded). The one table for all of them, as `env`, `timeout` and `docker run` have
/// it: the exec found nothing (ENOENT) → 127; the exec failed any other way → 126; a step
/// before the exec (cwd, user, limits, isolation: ctx's own) → 125.
pub fn failed_exit_code(stage: Stage, errno: i32) -> i32 {
    match (stage, errno) {
        (Stage::Exec, libc::ENOENT) => 127,
        (Stage::Exec, _) => 126,
        _ => 125,
    }
}

impl ExecFailure<'_> {
    /// See [`failed_exit_code`].
    pub fn exit_code(&self) -> i32 {
        failed_exit_code(self.stage, self.errno)
    }
}

impl FailureKind {
    pub fn describe(self) -> &'static str {
        match self {
            FailureKind::NotFound => "command not found",
            FailureKind::PermissionDenied => "permission denied",
            FailureKind::NotExecutable => "not executable",
            FailureKind::BadCwd => "cannot enter working directory",
            FailureKind::UnknownUser => "unknown user",
            FailureKind::SetUid => "cannot switch user",
            FailureKind::ResourceLimit => "resource limit",
            FailureKind::OutOfMemory => "out of memory",
            FailureKind::Other => "launch failed",
        }
    }
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fork => "fork",
            Stage::Session => "session",
            Stage::Terminal => "terminal",
            Stage::Fds => "fds",
            Stage::Rlimits => "rlimits",
            Stage::Groups => "groups",
            Stage::SetGid => "setgid",
            Stage::SetUid => "setuid",
            Stage::Chdir => "chdir",
            Stage::NoNewPrivs => "no_new_privs",
            Stage::Capabilities => "capabilities",
            Stage::Exec => "exec",
            Stage::User => "user",
            Stage::Namespace => "namespace",
            Stage::Landlock => "landlock",
            Stage::Cgroup => "cgroup",
            Stage::Seccomp => "seccomp",
        }
    }

    /// Stable numbering for the spawn path's error pipe.
    pub fn from_u8(n: u8) -> Option<Stage> {
        const ALL: [Stage; 17] = [
            Stage::Fork,
            Stage::Session,
            Stage::Terminal,
            Stage::Fds,
            Stage::Rlimits,
            Stage::Groups,
            Stage::SetGid,
            Stage::SetUid,
            Stage::Chdir,
            Stage::NoNewPrivs,
            Stage::Capabilities,
            Stage::Exec,
            Stage::User,
            Stage::Namespace,
            Stage::Landlock,
            Stage::Cgroup,
            Stage::Seccomp,
        ];
        ALL.get(n as usize).copied()
    }
}

impl ErrorKind {
    /// The `ctx` CLI's exit code for this error: ctx's own (125), except the answers an
    /// operator's script branches on, which exit 1 as `ctx-broker --check` and `kill(1)` do.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::ConfigRejected | ErrorKind::NoSuchProcess => 1,
            _ => 125,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Operator requests (appended)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KillTarget {
    /// The launch id `ctx ps` shows.
    Id(u64),
    /// Every running launch of this context.
    Context(String),
}

/// One running routed process, as `ctx ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub id: u64,
    pub context: String,
    /// The routed process (leader of its process group).
    pub pid: i32,
    pub caller_pid: i32,
    pub caller_uid: u32,
    /// Lossy UTF-8: for display only.
    pub argv: Vec<String>,
    pub age_ms: u64,
}
