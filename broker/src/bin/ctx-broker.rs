//! `ctx-broker`: the daemon that owns the contexts of `contexts.toml`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ctx_broker::{config, daemon, entrypoint, stop};

/// Runs routed launches in the named execution contexts of contexts.toml.
#[derive(Parser, Debug)]
#[command(
    name = "ctx-broker",
    version,
    about = "The broker of ctx: runs routed launches in the named execution contexts of \
        contexts.toml",
    long_about = "Runs routed launches in the named execution contexts of contexts.toml: \
        each launch a caller sends over the broker's Unix socket (from ctx exec, ctx sh, or \
        the interposer that ctx run and route_children_to preload) runs as its context's \
        user, with its credentials, limits and isolation, and is written to the audit log. \
        Run it as root (systemd's ctx-broker.service, or a container's entrypoint with \
        --run-in); as another user it runs only contexts of its own uid.",
    after_help = "Signals: SIGTERM or SIGINT stop it (its routed process groups get SIGTERM, \
        SIGKILL 3 s later, and the socket is removed); SIGHUP reloads the config, as ctx \
        reload does. [broker] socket, socket_mode and socket_group apply at start only.\n\n\
        Files: /etc/ctx/contexts.toml, /run/ctx/broker.sock, /var/lib/ctx (state), \
        /var/log/ctx/audit.jsonl (audit log), as the config names them.\n\n\
        Exit status: 0 stopped or checked clean, 1 refused or failed; with --run-in the \
        agent's status (128 + N after signal N), 125 when the broker could not start.\n\n\
        See also: ctx(1), ctx-status(1), ctx-reload(1), ctx-log(1)."
)]
struct Args {
    /// The contexts file.
    #[arg(long, env = "CTX_CONFIG", default_value = "/etc/ctx/contexts.toml")]
    config: PathBuf,
    /// Listen on this socket instead of the config's [broker] socket.
    #[arg(long, env = "CTX_SOCKET")]
    socket: Option<PathBuf>,
    /// State directory (persistent shells) instead of the config's.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Audit log file instead of the config's.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Validate the config file and exit: 0 when it is good, 1 with the reason when not. A
    /// routing context whose user could not connect to the socket a broker of this uid
    /// would create fails it (every launch of its processes would fail); warnings (e.g.
    /// isolation this machine cannot give) go to stderr and do not.
    #[arg(long)]
    check: bool,
    /// Stop the broker listening on the socket (--socket, else the config's) and every
    /// process of this program's file, without a service manager (the Debian package's
    /// removal runs it): SIGTERM, then SIGKILL what is left after 30 s. Exit 0 when none
    /// is left running.
    #[arg(long, conflicts_with_all = ["check", "run_in"])]
    stop: bool,
    /// Print this manual page, ctx-broker(1), in roff and exit (`ctx-broker --man | man
    /// -l -`; the install and the package install it).
    #[arg(long, exclusive = true)]
    man: bool,
    /// Container entrypoint (PID 1): run COMMAND in this context as the agent, reap orphans,
    /// pass SIGTERM/SIGINT/SIGQUIT/SIGUSR1/SIGUSR2/SIGWINCH on to it (SIGHUP reloads the
    /// broker), and when it exits stop the broker and everything left, exiting with its
    /// status (128 + N for a death by signal N; 125 when it never started).
    #[arg(
        long,
        value_name = "CONTEXT",
        requires = "command",
        conflicts_with = "check"
    )]
    run_in: Option<String>,
    /// The agent's command and arguments, after `--` (with --run-in).
    #[arg(last = true, value_name = "COMMAND", requires = "run_in")]
    command: Vec<OsString>,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.man {
        return man();
    }
    if let Some(context) = args.run_in.take() {
        // Before anything else: it forks, and only the broker child comes back here.
        let socket = entrypoint::socket_of(args.socket.as_deref(), &args.config);
        let plan = entrypoint::Plan {
            socket: socket.clone(),
            context,
            command: std::mem::take(&mut args.command),
        };
        if let Err(e) = entrypoint::start(&plan) {
            eprintln!("ctx-broker: {e}");
            return ExitCode::from(125);
        }
        args.socket = Some(socket);
    }
    if args.check {
        return check(&args);
    }
    if args.stop {
        return stop_brokers(&args);
    }
    // Before anything can be routed: a terminal the broker kept would be the controlling
    // terminal of every routed process without one of its own (see `daemon::session`).
    let left_terminal = match daemon::session::leave_controlling_terminal() {
        Ok(left) => left,
        Err(e) => {
            eprintln!(
                "ctx-broker: cannot give up the controlling terminal it was started on: {e}; \
                 start it with setsid(1), or as a service"
            );
            return ExitCode::from(1);
        }
    };
    // While this is the only thread, so that every thread and spawn child inherits it.
    daemon::spawn::drop_bounding_set_process_wide();
    daemon::signals::protect_process();
    // RUST_LOG is the operator's override for one run; the config holds the standing level.
    // Both take `LEVEL` or `target=LEVEL,...` (tracing's `Targets` syntax).
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .or_else(|| configured_log_level(&args.config)?.parse().ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
        });
    daemon::systemd::adopt_listen_fds();
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .with(filter)
            .init();
    }
    if left_terminal == daemon::session::Left::Terminal {
        tracing::info!("gave up the controlling terminal it was started on");
    }
    if let Err(why) = daemon::signals::shield_credentials() {
        tracing::debug!("not shielded from signals of the broker's own uid: {why}");
    }
    // Before the runtime's threads, in the shared descriptor table and under no filter of
    // ours: the thread that starts the forking threads (see `spawn::forker`). Then each
    // runtime thread installs the parent-signal filter. No thread of the runtime ends
    // while idle: a worker whose tasks `block_in_place` handed on goes on as a thread of
    // the blocking pool, and what it started (a namespace holder's thread) may be tied
    // to it.
    daemon::kernel::supervisor::inherited::prepare();
    daemon::spawn::forker::start();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(std::time::Duration::MAX)
        .on_thread_start(daemon::kernel::supervisor::inherited::on_thread_start)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ctx-broker: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = daemon::Options {
        config: args.config,
        socket: args.socket,
        state_dir: args.state_dir,
        audit_log: args.audit_log,
    };
    // On a worker thread, not in block_on: a connection the accept loop spawns then runs
    // on the same worker without a cross-thread wake-up, which costs tens of microseconds
    // per launch on a virtual machine.
    match runtime.block_on(async { tokio::spawn(daemon::run(opts)).await }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("ctx-broker: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("ctx-broker: internal error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--man`: the page, generated from the definitions `--help` prints.
fn man() -> ExitCode {
    use clap::CommandFactory;
    let mut page = Vec::new();
    if let Err(e) = clap_mangen::Man::new(Args::command()).render(&mut page) {
        eprintln!("ctx-broker: cannot render the manual page: {e}");
        return ExitCode::from(1);
    }
    let mut out = std::io::stdout().lock();
    // A reader that went away (`| head`) is not an error.
    let _ = std::io::Write::write_all(&mut out, &page);
    let _ = std::io::Write::flush(&mut out);
    ExitCode::SUCCESS
}

/// `--check`: loads the file, then asks whether each routing context's user could connect
/// to the socket as a broker started by this uid would make it.
fn check(args: &Args) -> ExitCode {
    let cfg = match config::load(&args.config, daemon::kernel::landlock::abi()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("ctx-broker: {e}");
            return ExitCode::from(1);
        }
    };
    for w in &cfg.warnings {
        eprintln!("ctx-broker: warning: {w}");
    }
    let socket = args.socket.as_ref().unwrap_or(&cfg.broker.socket);
    let access = daemon::socket_reach::SocketAccess::planned(&cfg, socket);
    let unreachable = daemon::socket_reach::unreachable(&cfg, &access);
    let file = args.config.display();
    if unreachable.is_empty() {
        println!("{file}: ok ({} contexts)", cfg.contexts.len());
        return ExitCode::SUCCESS;
    }
    for u in &unreachable {
        eprintln!("ctx-broker: {file}: {u}");
    }
    eprintln!(
        "ctx-broker: {file}: refused: {} routing context(s) could not reach {} as a broker \
         started by uid {} makes it",
        unreachable.len(),
        socket.display(),
        access.socket.uid
    );
    ExitCode::from(1)
}

/// `--stop`: what was stopped, killed or left, one line each.
fn stop_brokers(args: &Args) -> ExitCode {
    let socket = entrypoint::socket_of(args.socket.as_deref(), &args.config);
    let report = match stop::stop(&socket, stop::GRACE) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ctx-broker: --stop: {e}");
            return ExitCode::from(1);
        }
    };
    let what = |f: &stop::Found| match &f.how {
        stop::How::Socket(path) => format!("the broker on {} (pid {})", path.display(), f.pid),
        stop::How::Executable => format!("pid {} (this program's file)", f.pid),
        stop::How::Replaced => format!("pid {} (a version an upgrade replaced)", f.pid),
    };
    for note in &report.notes {
        eprintln!("ctx-broker: --stop: {note}");
    }
    for f in &report.stopped {
        println!("ctx-broker: stopped {}", what(f));
    }
    for f in &report.killed {
        println!(
            "ctx-broker: killed {}: still running {:?} after SIGTERM",
            what(f),
            stop::GRACE
        );
    }
    for f in &report.left {
        eprintln!(
            "ctx-broker: --stop: {} is still running after SIGKILL",
            what(f)
        );
    }
    if report.left.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `[broker] log_level`, read ahead of the full load because logging must be set up before
/// the load can report anything; an invalid value is refused by that load, with its line.
fn configured_log_level(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = text.parse().ok()?;
    let level = table.get("broker")?.get("log_level")?.as_str()?;
    Some(level.to_ascii_lowercase())
}
