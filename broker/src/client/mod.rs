//! The `ctx` command line: one module per verb, this one parses and dispatches.
//!
//! Every verb returns an exit code or an [`Error`]; errors are printed here, at the edge,
//! as one `ctx: ...` line, and exit with the code the convention of `env`, `timeout` and
//! `docker run` gives them (125 ctx's own, 126 cannot execute, 127 not found).

pub mod completions;
pub mod connection;
pub mod contexts;
pub mod duration;
pub mod env;
pub mod error;
pub mod exec;
pub mod kill;
pub mod log;
pub mod man;
pub mod ps;
mod relay;
pub mod reload;
pub mod run;
pub mod sh;
pub mod status;
pub mod table;
pub mod terminal;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use ctx_protocol::{Reply, Request};

pub use error::Error;

use connection::Connection;

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

pub use ctx_protocol::DEFAULT_SOCKET;

/// How long a one-shot verb (`status`, `contexts`, `ps`...) waits for the broker's answer.
const ONE_SHOT_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// Run commands in named execution contexts through the ctx broker.
#[derive(Debug, Parser)]
#[command(name = "ctx", version, propagate_version = true)]
pub struct Cli {
    /// The broker's socket [default: $CTX_SOCKET, else /run/ctx/broker.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Run a command in a context, with this terminal's stdio
    #[command(after_help = "Examples:\n  ctx exec --context user -- aws s3 ls\n  \
        ctx exec -it --context user -- bash\n  \
        ctx exec --context user -e AWS_PROFILE=prod --timeout 5m -- ./deploy.sh\n\n\
        Exit status: the command's own; if it died of a signal, ctx dies of the same \
        signal. 124 timed out, 125 ctx's own error, 126 cannot execute, 127 not found.")]
    Exec(exec::ExecArgs),
    /// Run a bash script in a context's persistent shell session
    #[command(
        after_help = "Examples:\n  ctx sh --context user 'cd /srv && export AWS_PROFILE=prod'\n  \
        ctx sh --context user 'pwd; echo $AWS_PROFILE'      # prints /srv and prod\n  \
        ctx sh --context user --session build 'make -j4'\n  \
        ctx sh --context user --reset\n\n\
        cwd, exported and unset variables, shell variables, functions, aliases and set -o/shopt \
        options persist per context and session. Commands of one session run one at a time. \
        Exit codes as for ctx exec."
    )]
    Sh(sh::ShArgs),

    /// Show the broker's state and what isolation it cannot apply here
    Status(status::StatusArgs),

    /// List the contexts the broker serves (environment values masked)
    Contexts(contexts::ContextsArgs),

    /// Start a program with its launches routed to a context
    #[command(
        after_help = "Example:\n  ctx run --route-to user --passthrough node -- node agent.js\n\n\
        Sets LD_PRELOAD (the interposer beside ctx, or $CTX_INTERPOSER), CTX_ROUTE, \
        CTX_SOCKET, CTX_PASSTHROUGH and CTX_ON_BROKER_DOWN, then replaces itself with the \
        program."
    )]
    Run(run::RunArgs),

    /// Print the variables `ctx run` sets, as shell exports
    #[command(after_help = "Example:\n  eval \"$(ctx env --route-to user)\"")]
    Env(env::EnvArgs),

    /// Make the broker re-read its config file (a bad file keeps the running one)
    #[command(
        after_help = "Exit status: 0 reloaded, 1 the file was refused (the error \
        names its file, line and key), 125 the broker could not be reached."
    )]
    Reload(reload::ReloadArgs),

    /// List the routed processes running now
    Ps(ps::PsArgs),

    /// Signal a routed process group, or every one of a context
    #[command(
        after_help = "Examples:\n  ctx kill 12\n  ctx kill --context user --signal KILL\n\n\
        Root may signal any routed process; others only those their uid launched."
    )]
    Kill(kill::KillArgs),

    /// Show the audit log: every launch, refusal, reload and kill
    #[command(after_help = "Examples:\n  ctx log --since 1h --context user\n  \
        ctx log --follow --json | jq .")]
    Log(log::LogArgs),

    /// Print a shell completion script
    Completions(completions::CompletionsArgs),

    /// Print the manual page (roff): `ctx man | man -l -`
    Man(man::ManArgs),
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// The `ctx` binary's whole life: parse, run the verb, exit with its code.
pub fn main() -> ! {
    let code = std::panic::catch_unwind(dispatch).unwrap_or(125);
    std::process::exit(code)
}

fn dispatch() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Usage errors are ctx's own (125), not the command's.
            return if e.use_stderr() { 125 } else { 0 };
        }
    };
    let socket = socket_path(cli.socket);
    let result = match cli.verb {
        Verb::Exec(args) => exec::run(&socket, args),
        Verb::Sh(args) => sh::run(&socket, args),
        Verb::Status(args) => status::run(&socket, args),
        Verb::Contexts(args) => contexts::run(&socket, args),
        Verb::Run(args) => run::run(&socket, args),
        Verb::Env(args) => env::run(&socket, args),
        Verb::Reload(args) => reload::run(&socket, args),
        Verb::Ps(args) => ps::run(&socket, args),
        Verb::Kill(args) => kill::run(&socket, args),
        Verb::Log(args) => log::run(&socket, args),
        Verb::Completions(args) => completions::run(args),
        Verb::Man(args) => man::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ctx: {e}");
            e.exit_code()
        }
    }
}

/// `--socket`, else `CTX_SOCKET`, else the default.
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os(ctx_protocol::vars::SOCKET)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Sends one request that has one answer, and returns that answer (owned, with the
/// socket path for messages about it).
pub(crate) fn one_shot(
    socket: &Path,
    request: &Request,
) -> Result<(PathBuf, Reply<'static>), Error> {
    let mut conn = Connection::connect(socket)?;
    conn.set_read_timeout(Some(ONE_SHOT_TIMEOUT))?;
    conn.open(request, &[])?;
    let reply = match conn.recv()? {
        Reply::Status(r) => Reply::Status(r),
        Reply::Contexts(c) => Reply::Contexts(c),
        Reply::Reloaded { contexts, warnings } => Reply::Reloaded { contexts, warnings },
        Reply::Processes(p) => Reply::Processes(p),
        Reply::Killed { ids } => Reply::Killed { ids },
        Reply::KilledInContext { ids, others } => Reply::KilledInContext { ids, others },
        other => return Err(connection::unexpected(socket, other)),
    };
    Ok((socket.to_path_buf(), reply))
}

/// Writes a verb's output; a reader that went away (`| head`) is not an error.
fn print(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_takes_the_command_after_dashes_as_bytes() {
        let cli = Cli::try_parse_from([
            "ctx",
            "--socket",
            "/tmp/s",
            "exec",
            "--context",
            "user",
            "-it",
            "-e",
            "A=1",
            "--timeout",
            "1m30s",
            "--",
            "ls",
            "-l",
            "--color",
        ])
        .unwrap();
        assert_eq!(cli.socket.as_deref(), Some(Path::new("/tmp/s")));
        let Verb::Exec(a) = cli.verb else { panic!() };
        assert_eq!(a.context, "user");
        assert!(a.launch.tty && a.interactive);
        assert_eq!(a.command, ["ls", "-l", "--color"]);
        assert_eq!(a.launch.timeout.as_deref(), Some("1m30s"));
    }

    #[test]
    fn exec_needs_a_context_and_a_command() {
        assert!(Cli::try_parse_from(["ctx", "exec", "--", "ls"]).is_err());
        assert!(Cli::try_parse_from(["ctx", "exec", "--context", "u"]).is_err());
    }

    #[test]
    fn socket_flag_wins_over_env() {
        assert_eq!(socket_path(Some(PathBuf::from("/x"))), PathBuf::from("/x"));
    }

    #[test]
    fn run_collects_passthroughs() {
        let cli = Cli::try_parse_from([
            "ctx",
            "run",
            "--route-to",
            "user",
            "--passthrough",
            "node",
            "--passthrough",
            "/usr/bin/python3",
            "--",
            "node",
            "agent.js",
        ])
        .unwrap();
        let Verb::Run(a) = cli.verb else { panic!() };
        assert_eq!(a.route.route_to, "user");
        assert_eq!(a.route.passthrough, ["node", "/usr/bin/python3"]);
        assert_eq!(a.command, ["node", "agent.js"]);
    }

    #[test]
    fn error_lines_name_the_socket_and_what_to_do() {
        let e = Error::Connect {
            socket: PathBuf::from("/run/ctx/broker.sock"),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach the broker at /run/ctx/broker.sock: No such file or directory (is ctx-broker running? set --socket or CTX_SOCKET)"
        );
        assert_eq!(e.exit_code(), 125);
    }
}
