//! `ctx sh`: a script in a context's persistent shell session. cwd, variables, functions,
//! aliases and shell options a command leaves behind are there for the next command of the
//! same session; each command keeps its own stdio, exit code, signals and timeout.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::Args;
use ctx_protocol::{Request, ShellRequest};
use serde_bytes::ByteBuf;

use super::exec::{self, ExecArgs};
use super::Error;

#[derive(Debug, Args)]
pub struct ShArgs {
    /// The context whose shell session runs the script
    #[arg(long, value_name = "NAME")]
    pub context: String,

    /// Session name: sessions of one context are independent
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub session: String,

    /// Forget the session's saved state before running (alone: just forget it)
    #[arg(long)]
    pub reset: bool,

    /// Give the command a terminal even when stdin/stdout are not terminals here
    #[arg(short = 't', long)]
    pub tty: bool,

    /// Working directory for this command, instead of the session's
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,

    /// Set an environment variable for this command (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub set_env: Vec<OsString>,

    /// Kill the command after this long: 500ms, 30s, 10m, 1h
    #[arg(long, value_name = "DUR")]
    pub timeout: Option<String>,

    /// The bash script to run; without one (at a terminal), an interactive shell
    #[arg(value_name = "SCRIPT")]
    pub script: Option<OsString>,
}

pub fn run(socket: &Path, args: ShArgs) -> Result<i32, Error> {
    use std::os::unix::ffi::OsStringExt;
    // `--reset` without a script only forgets the state (the broker runs nothing).
    let script = args.script.map(|s| ByteBuf::from(s.into_vec()));
    let session = args.session;
    let reset = args.reset;
    let exec_args = ExecArgs {
        context: args.context,
        tty: args.tty,
        interactive: false,
        cwd: args.cwd,
        set_env: args.set_env,
        timeout: args.timeout,
        listen_ports: Vec::new(),
        command: vec![OsString::from("bash")],
    };
    exec::run_as(socket, exec_args, move |exec| {
        Request::Shell(ShellRequest {
            exec,
            session,
            script,
            reset,
        })
    })
}
