//! `ctx-broker --run-in CONTEXT -- CMD...`: the broker as a container's entrypoint (PID 1),
//! where there is no systemd to start it and no init to reap orphans.
//!
//! The process splits in three before anything else runs:
//! - the **init** (this process, PID 1 in a container): reaps every orphan the kernel hands
//!   it, forwards the signals the container receives to the agent, and when the agent has
//!   exited stops the broker, kills what is left, and exits with the agent's status;
//! - the **broker**, its first child, which goes on as the ordinary `ctx-broker` (its own
//!   process group, so a terminal's Ctrl-C does not stop it; SIGHUP reloads it);
//! - the **agent**, started once the broker's socket answers: `ctx exec --context CONTEXT
//!   -- CMD...` on the container's stdio (a PTY when it is a terminal), in its own process
//!   group in the terminal's foreground.
//!
//! The broker waits for its routed processes by pidfd, never `waitpid(-1)`: the reaping of
//! orphans must live in another process than the broker, or it would steal their statuses.
//! Not PID 1 (run by hand, or under `docker run --init`), the init is a child subreaper so
//! it still gets the orphans of its own tree, and at the end kills only its own children.
//!
//! No routed process may drive the init: a signal that stops or reloads it stops or reloads
//! the broker. Like the broker (see `daemon::signals`), a root init keeps its effective uid
//! 0 and CAP_KILL but moves its real and saved uids to one no process runs as, so kill(2)
//! from a uid-0 context (which holds no capability) is refused by the kernel, while the
//! container runtime (outside the PID namespace), a terminal (the kernel) and root with
//! CAP_KILL (`docker exec ... kill`, an outer init) still reach it. When it cannot (a user
//! namespace without that uid) it checks each signal's sender itself: see [`obeys`].

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// Signals the container receives that go on to the agent.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// How long the broker may take to answer on its socket after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the broker may take to stop its routed processes and exit after SIGTERM (its
/// own grace period for them is shorter).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the init sleeps in one wait for a signal when it has a deadline to watch.
const TICK: Duration = Duration::from_millis(20);
/// How long the agent has to end after a stop signal passed on to it (Docker's own
/// `docker stop` waits 10 s before its SIGKILL).
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The capability bit that lets a process signal any other (not in the libc crate).
const CAP_KILL: u32 = 5;

/// Exit status of the init when the agent never ran (the broker failed to start).
const FAILED: i32 = 125;

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// What the entrypoint starts: the agent's context and command, on the broker's socket.
#[derive(Debug, Clone)]
pub struct Plan {
    pub socket: PathBuf,
    pub context: String,
    pub command: Vec<OsString>,
}

/// The init's view of its two children.
struct Children {
    broker: Option<libc::pid_t>,
    agent: Option<libc::pid_t>,
    /// The agent's status as an exit code (128 + signal for a death by signal).
    agent_code: Option<i32>,
    /// When the broker was told to stop: SIGKILL after [`STOP_TIMEOUT`].
    stopping_since: Option<Instant>,
    /// When a stop signal was passed on to the agent's client: SIGKILL after
    /// [`AGENT_STOP_TIMEOUT`] (a uid-0 agent can stop its own root client, which would
    /// otherwise keep the container up for ever).
    agent_told_since: Option<Instant>,
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// Splits the process as the module says. Returns in the broker child only (which goes on
/// as the ordinary broker); the init never returns. Call it while the process has one
/// thread: it forks.
pub fn start(plan: &Plan) -> Result<(), String> {
    let ctx_bin = std::env::current_exe()
        .map_err(|e| format!("cannot find the running ctx-broker: {e}"))?
        .with_file_name("ctx");
    if !ctx_bin.is_file() {
        return Err(format!(
            "--run-in needs the ctx CLI beside ctx-broker, at {}",
            ctx_bin.display()
        ));
    }
    if plan.command.is_empty() {
        return Err("--run-in needs the agent's command after --".into());
    }
    // Built before any fork: the agent child only execs.
    let mut argv: Vec<CString> = Vec::new();
    let mut push = |s: &[u8]| -> Result<(), String> {
        argv.push(CString::new(s).map_err(|_| "an argument holds a NUL byte".to_string())?);
        Ok(())
    };
    push(ctx_bin.as_os_str().as_bytes())?;
    push(b"--socket")?;
    push(plan.socket.as_os_str().as_bytes())?;
    push(b"exec")?;
    // The agent's `kill $PPID` would reach this init, which obeys its client's signals.
    push(b"--drop-parent-signals")?;
    push(b"--context")?;
    push(plan.context.as_bytes())?;
    push(b"--")?;
    for a in &plan.command {
        push(a.as_bytes())?;
    }

    let mask = blocked_set();
    // SAFETY: plain calls on this single-threaded process.
    unsafe {
        libc::sigprocmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut());
        if libc::getpid() != 1 {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
    }
    // Before the shield: the agent gets them back (see `spawn_agent`).
    let uids = real_and_saved_uids();
    // Before the fork, so the broker is shielded from its first instruction too (it shields
    // itself again, to the same uids, as it does outside a container).
    let screen = match crate::daemon::signals::shield_credentials() {
        Ok(()) => Screen::Shielded,
        // SAFETY: plain getter.
        Err(why) if unsafe { libc::geteuid() } == 0 => {
            say(&format!(
                "{why}: signals to the init are obeyed only from outside the container, the \
                 kernel or a process with CAP_KILL"
            ));
            Screen::CheckSender
        }
        // Unprivileged, every context runs as the init's own uid: nothing to tell apart.
        Err(_) => Screen::None,
    };
    // SAFETY: single-threaded, so the child may go on running ordinary Rust.
    let broker = unsafe { libc::fork() };
    if broker < 0 {
        return Err(format!(
            "cannot fork the broker: {}",
            std::io::Error::last_os_error()
        ));
    }
    if broker == 0 {
        // SAFETY: plain calls in the new broker process.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
            libc::setpgid(0, 0);
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if null >= 0 {
                libc::dup2(null, 0);
                libc::close(null);
            }
            libc::sigprocmask(libc::SIG_UNBLOCK, &mask, std::ptr::null_mut());
        }
        return Ok(());
    }
    let code = init(plan, broker, &argv, &mask, uids, screen);
    std::process::exit(code);
}

/// The init's life: wait for the broker, start the agent, forward, reap, stop, exit.
fn init(
    plan: &Plan,
    broker: libc::pid_t,
    argv: &[CString],
    mask: &libc::sigset_t,
    uids: (libc::uid_t, libc::uid_t),
    screen: Screen,
) -> i32 {
    let mut kids = Children {
        broker: Some(broker),
        agent: None,
        agent_code: None,
        stopping_since: None,
        agent_told_since: None,
    };
    let started = Instant::now();
    // Until the broker answers: a signal to stop stops it, and the agent never starts.
    while kids.broker.is_some() && kids.stopping_since.is_none() {
        // What `ctx status` asks: a bare connect would be logged as a peer that hung up.
        match crate::client::one_shot(&plan.socket, &ctx_protocol::Request::Status) {
            // Ours (the same PID namespace): the agent starts on it.
            Ok((_, ctx_protocol::Reply::Status(r))) if Some(r.pid) == kids.broker => break,
            // Another broker on a shared socket path: never the agent's.
            Ok((_, ctx_protocol::Reply::Status(r))) => {
                say(&format!(
                    "another broker (pid {}) answers on {}: the agent is not started on it",
                    r.pid,
                    plan.socket.display()
                ));
                stop_broker(&mut kids);
                break;
            }
            _ => {}
        }
        if started.elapsed() > READY_TIMEOUT {
            say(&format!(
                "the broker did not answer on {} within {READY_TIMEOUT:?}: stopping it",
                plan.socket.display()
            ));
            stop_broker(&mut kids);
            break;
        }
        if let Some(info) = wait_signal(mask, Some(TICK)) {
            handle(&info, screen, &mut kids);
        }
    }
    if kids.broker.is_some() && kids.stopping_since.is_none() {
        kids.agent = spawn_agent(argv, mask, uids);
        if kids.agent.is_none() {
            kids.agent_code = Some(FAILED);
            stop_broker(&mut kids);
        }
    } else if kids.broker.is_none() {
        say("the broker exited before it was ready: the agent was not started");
    }
    while kids.broker.is_some() || kids.agent.is_some() {
        let tick = kids.stopping_since.or(kids.agent_told_since).map(|_| TICK);
        if let Some(info) = wait_signal(mask, tick) {
            handle(&info, screen, &mut kids);
        }
        if let (Some(pid), Some(t)) = (kids.agent, kids.agent_told_since) {
            if t.elapsed() > AGENT_STOP_TIMEOUT {
                say("the agent did not stop in time: killing it");
                // SAFETY: plain kill of our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                kids.agent_told_since = None;
            }
        }
        if kids
            .stopping_since
            .is_some_and(|t| t.elapsed() > STOP_TIMEOUT)
        {
            if let Some(pid) = kids.broker {
                say("the broker did not stop in time: killing it");
                // SAFETY: plain kill of our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    kill_leftovers();
    kids.agent_code.unwrap_or(FAILED)
}

/// Acts on one signal the init took: reaps on SIGCHLD, forwards the rest when the sender
/// may drive the init.
fn handle(info: &libc::siginfo_t, screen: Screen, kids: &mut Children) {
    let sig = info.si_signo;
    if sig != libc::SIGCHLD && !obeys(info, screen) {
        // SAFETY: the siginfo is plain data the kernel filled (zeroed where it set nothing).
        let pid = unsafe { info.si_pid() };
        say(&format!(
            "ignored signal {sig} from pid {pid} (code {}): routed processes cannot stop, \
             reload or signal through the init",
            info.si_code
        ));
        return;
    }
    match sig {
        // A SIGCHLD anyone sends costs one WNOHANG sweep.
        libc::SIGCHLD => reap(kids),
        // The broker's own reload; the agent is not the one to ask.
        libc::SIGHUP => {
            if let Some(pid) = kids.broker {
                // SAFETY: plain kill of our own child.
                unsafe { libc::kill(pid, libc::SIGHUP) };
            }
        }
        _ => match kids.agent {
            Some(pid) => {
                // SAFETY: plain kills of our own child.
                unsafe { libc::kill(pid, sig) };
                // `docker stop`'s: a stopped client would act on it only once continued.
                // (An interactive agent's ^C, SIGINT, is only passed on.)
                if sig == libc::SIGTERM {
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGCONT) };
                    kids.agent_told_since.get_or_insert_with(Instant::now);
                }
            }
            None if matches!(sig, libc::SIGTERM | libc::SIGINT | libc::SIGQUIT) => {
                stop_broker(kids)
            }
            None => {}
        },
    }
}

/// Reaps every child that has exited: the agent (then the broker is told to stop), the
/// broker (then a still-running agent is, since none of its launches could run), orphans.
fn reap(kids: &mut Children) {
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid into a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
        if pid <= 0 {
            return;
        }
        if Some(pid) == kids.agent {
            kids.agent = None;
            kids.agent_code = Some(code_of(status));
            stop_broker(kids);
        } else if Some(pid) == kids.broker {
            kids.broker = None;
            if let Some(agent) = kids.agent {
                say(&format!(
                    "the broker exited ({}) while the agent ran: stopping the agent",
                    describe(status)
                ));
                // SAFETY: plain kill of our own child.
                unsafe { libc::kill(agent, libc::SIGTERM) };
            }
        }
    }
}

fn stop_broker(kids: &mut Children) {
    if kids.stopping_since.is_some() {
        return;
    }
    kids.stopping_since = Some(Instant::now());
    if let Some(pid) = kids.broker {
        // SAFETY: plain kill of our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// Forks the agent's `ctx exec`; `None` (having said why) when it cannot.
fn spawn_agent(
    argv: &[CString],
    mask: &libc::sigset_t,
    (ruid, suid): (libc::uid_t, libc::uid_t),
) -> Option<libc::pid_t> {
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: the init is single-threaded; the child only makes plain syscalls and execs.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        say(&format!(
            "cannot fork the agent: {}",
            std::io::Error::last_os_error()
        ));
        return None;
    }
    if pid == 0 {
        // SAFETY: async-signal-safe calls only, then exec or _exit.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
            // Its own group in the terminal's foreground: the terminal's signals reach the
            // agent, not the init and the broker.
            libc::setpgid(0, 0);
            if libc::isatty(0) == 1 {
                libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(0, libc::getpid());
                libc::signal(libc::SIGTTOU, libc::SIG_DFL);
            }
            libc::sigprocmask(libc::SIG_UNBLOCK, mask, std::ptr::null_mut());
            // The uids the init started with: an exec whose real uid is not its effective
            // one is a set-uid exec (AT_SECURE), where the C library drops TMPDIR, LD_*
            // and more from the environment the agent passes on.
            if libc::syscall(libc::SYS_setresuid, ruid, libc::uid_t::MAX, suid) < 0 {
                let msg = b"ctx-broker: cannot give the agent back its uids\n";
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(FAILED);
            }
            libc::execv(ptrs[0], ptrs.as_ptr());
            let msg = b"ctx-broker: cannot run the ctx CLI for the agent\n";
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(FAILED);
        }
    }
    // The parent sets the group too, so a signal forwarded at once finds it either way.
    // SAFETY: plain call on our own child.
    unsafe { libc::setpgid(pid, pid) };
    Some(pid)
}

/// After the broker and the agent: as PID 1 everything else in the container (a daemon the
/// agent left behind); otherwise this process's own children (orphans it adopted as
/// subreaper). Then reaps them.
fn kill_leftovers() {
    // SAFETY: plain getter.
    let pid1 = unsafe { libc::getpid() } == 1;
    for _ in 0..50 {
        if pid1 {
            // SAFETY: as PID 1 of its namespace, -1 means every other process in it.
            unsafe { libc::kill(-1, libc::SIGKILL) };
        } else {
            for child in own_children() {
                // SAFETY: plain kill of a child of ours.
                unsafe { libc::kill(child, libc::SIGKILL) };
            }
        }
        // SAFETY: blocking reap of the children just killed; ECHILD ends it.
        let mut any = false;
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::__WALL) } > 0 {
            any = true;
        }
        if !any {
            return;
        }
    }
}

/// This process's children, as `/proc/self/task/*/children` lists them.
fn own_children() -> Vec<libc::pid_t> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// The signals the init takes with `sigtimedwait`: SIGCHLD, the forwarded ones, SIGHUP.
fn blocked_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data that sigemptyset initialises.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in FORWARDED.iter().chain(&[libc::SIGCHLD, libc::SIGHUP]) {
            libc::sigaddset(&mut set, *sig);
        }
        set
    }
}

/// The next blocked signal and who sent it, or `None` after `timeout` (forever without one).
fn wait_signal(mask: &libc::sigset_t, timeout: Option<Duration>) -> Option<libc::siginfo_t> {
    // SAFETY: siginfo_t is plain data for the kernel to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: plain sigwaitinfo/sigtimedwait on a set of blocked signals, into a local.
    let sig = unsafe {
        match timeout {
            None => libc::sigwaitinfo(mask, &mut info),
            Some(t) => {
                let ts = libc::timespec {
                    tv_sec: t.as_secs() as libc::time_t,
                    tv_nsec: t.subsec_nanos() as libc::c_long,
                };
                libc::sigtimedwait(mask, &mut info, &ts)
            }
        }
    };
    (sig > 0).then_some(info)
}

/// How the init tells the signals it obeys from those of routed processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Screen {
    /// The kernel refuses kill(2) from routed processes (the module's note).
    Shielded,
    /// Root without the shield: the init checks each sender itself.
    CheckSender,
    /// Unprivileged: the contexts run as the init's uid, and could SIGKILL it anyway.
    None,
}

/// Whether the init acts on a signal (other than SIGCHLD). Never one delivered through a
/// file's owner (`F_SETOWN`/`F_SETSIG`, si_code POLL_IN..POLL_HUP): any euid-0 process may
/// aim those at any process, no capability needed (the broker's seccomp filter refuses them
/// to routed processes; this is the fence behind it). Unshielded, only a signal from the
/// kernel (a terminal: SI_KERNEL), from outside the PID namespace (the container runtime:
/// si_pid 0) or from a process with CAP_KILL, which the shield would have let through too.
/// A sender already gone counts as a routed one: it can send again from outside.
fn obeys(info: &libc::siginfo_t, screen: Screen) -> bool {
    if (1..=6).contains(&info.si_code) {
        return false;
    }
    if screen != Screen::CheckSender || info.si_code > 0 {
        return true;
    }
    // SAFETY: si_pid is set for every signal a process sends (si_code <= 0).
    let pid = unsafe { info.si_pid() };
    pid == 0 || holds_cap_kill(pid)
}

/// Whether `pid` has CAP_KILL in its effective set, from `/proc/PID/status`.
fn holds_cap_kill(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_KILL) != 0)
}

/// This process's real and saved uids.
fn real_and_saved_uids() -> (libc::uid_t, libc::uid_t) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: plain getter into locals.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    (r, s)
}

/// A wait status as a shell shows it: the code, or 128 + the signal.
fn code_of(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        FAILED
    }
}

fn describe(status: libc::c_int) -> String {
    if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {}", libc::WEXITSTATUS(status))
    }
}

fn say(what: &str) {
    eprintln!("ctx-broker: {what}");
}

/// The socket the broker will listen on: `--socket`, else `[broker] socket` of the file,
/// else the default. Read ahead of the broker's own load, which refuses a bad file itself.
pub fn socket_of(socket: Option<&Path>, config: &Path) -> PathBuf {
    if let Some(s) = socket {
        return std::path::absolute(s).unwrap_or_else(|_| s.to_path_buf());
    }
    std::fs::read_to_string(config)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| Some(PathBuf::from(t.get("broker")?.get("socket")?.as_str()?)))
        .unwrap_or_else(|| PathBuf::from(ctx_protocol::DEFAULT_SOCKET))
}
