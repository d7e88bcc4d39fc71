//! `ctx sh`: a script in a context's persistent shell session. cwd, variables, functions,
//! aliases and shell options a command leaves behind are there for the next command of the
//! same session; each command keeps its own stdio, exit code, signals and timeout.

use std::ffi::OsString;
use std::path::Path;

use clap::Args;
use ctx_protocol::{Request, ShellRequest};
use serde_bytes::ByteBuf;

use super::exec::{self, ExecArgs, LaunchOptions};
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

    #[command(flatten)]
    pub launch: LaunchOptions,

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
        launch: args.launch,
        interactive: false,
        listen_ports: Vec::new(),
        drop_parent_signals: false,
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
