//! The one error type of the `ctx` CLI. Each variant renders as the single line printed
//! after `ctx: `, naming the thing involved (socket, context, path) and what to do.

use std::io;
use std::path::PathBuf;

use ctx_protocol::{ErrorKind, FailureKind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot reach the broker at {}: {} (is ctx-broker running? set --socket or CTX_SOCKET)",
        socket.display(),
        plain(source)
    )]
    Connect { socket: PathBuf, source: io::Error },

    #[error("cannot send to the broker at {}: {}", socket.display(), plain(source))]
    Send { socket: PathBuf, source: io::Error },

    #[error("lost connection to the broker at {}", socket.display())]
    Lost { socket: PathBuf },

    #[error("no answer from the broker at {} (is it overloaded or stuck?)", socket.display())]
    NoAnswer { socket: PathBuf },

    #[error("reading from the broker at {}: {}", socket.display(), plain(source))]
    Read { socket: PathBuf, source: io::Error },

    #[error("the broker at {} sent a malformed reply: {detail}", socket.display())]
    Malformed { socket: PathBuf, detail: String },

    #[error("the broker at {} sent an unexpected reply: {what}", socket.display())]
    Unexpected { socket: PathBuf, what: String },

    #[error(
        "the broker at {} speaks protocol version {broker} ({software}) but this ctx speaks version {ours}: install a ctx and ctx-broker from the same build",
        socket.display()
    )]
    VersionMismatch {
        socket: PathBuf,
        broker: u32,
        ours: u32,
        software: String,
    },

    /// The broker refused or could not understand the request; its own words.
    #[error("{message}")]
    Broker { kind: ErrorKind, message: String },

    /// A bad flag value; the message says which flag and what it accepts.
    #[error("{0}")]
    Usage(String),

    #[error(
        "cannot find the interposer at {}: {} (build it with `cargo build`, or set CTX_INTERPOSER to its path)",
        path.display(),
        plain(source)
    )]
    Interposer { path: PathBuf, source: io::Error },

    /// `ctx run` could not execute its command; carries the shell-convention exit code.
    #[error("cannot run \"{program}\": {reason}")]
    Run {
        program: String,
        reason: String,
        code: i32,
    },

    /// The broker could not start the command; nothing ran.
    #[error("{context}: cannot run \"{program}\": {}{detail}", kind.describe())]
    ExecFailed {
        context: String,
        program: String,
        kind: FailureKind,
        /// The parenthesised errno/stage and any words the broker added.
        detail: String,
        /// `ctx_protocol::failed_exit_code`: the shim's table too.
        exit_code: i32,
    },

    /// `after`: "after 1m30s" (`--timeout`), or the context's own timeout, which the
    /// client is not told.
    #[error("{context}: command timed out {after}")]
    TimedOut { context: String, after: String },

    #[error("{what}: {}", plain(source))]
    Io { what: String, source: io::Error },
}

impl Error {
    /// ctx's own failures exit 125, as `env`, `timeout` and `docker run` do; only a
    /// command that cannot be found or executed says 127 or 126.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Run { code, .. } => *code,
            Error::ExecFailed { exit_code, .. } => *exit_code,
            // What timeout(1) exits with, so scripts need not learn a new code.
            Error::TimedOut { .. } => 124,
            Error::Broker { kind, .. } => kind.exit_code(),
            _ => 125,
        }
    }

    pub fn io(what: impl Into<String>, source: impl Into<io::Error>) -> Error {
        Error::Io {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// An OS error as the C library words it ("No such file or directory"), without std's
/// "(os error 2)" suffix, which means nothing to a user.
pub fn plain(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}
