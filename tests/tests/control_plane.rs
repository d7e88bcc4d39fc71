//! The root broker attacked as a tool: code running
//! in a context, or a local user allowed into no context, tries to make the broker open,
//! write, believe or suffer something on its behalf. Every test here is an attack that
//! must fail.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ctx_tests::*;

/// A child killed and reaped when the test ends, passed or not.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `root0`: root, the broker's default isolation, root may enter.
const ROOT0: &str = r#"[broker]
socket_mode = "0666"

[contexts.root0]
user = "root"
cwd = "/"
allow = { uids = [0] }
"#;

/// `shared` (ctx-alice, `shell_env = "shared"`).
fn shared_config() -> String {
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.shared]
user = "{ALICE}"
cwd = "/"
shell_env = "shared"
allow = {{ uids = [0] }}
"#
    )
}

/// Runs an interactive `ctx sh --context CONTEXT` on a python-made terminal, types `line`
/// and `exit 3`; returns what the terminal showed and the exit code.
fn interactive_sh(b: &Broker, context: &str, line: &str) -> (String, i32) {
    let script = format!(
        r#"
import os, pty, select, time, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv({ctx:?}, ["ctx", "--socket", {sock:?}, "sh", "--context", {context:?}])
def drain(t):
    end = time.time() + t; out = b""
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try: out += os.read(fd, 4096)
            except OSError: break
    return out
out = drain(1.0)
os.write(fd, {line:?}.encode() + b"\r")
out += drain(1.0)
os.write(fd, b"exit 3\r")
out += drain(1.0)
_, st = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace") + "\n@@%d" % os.waitstatus_to_exitcode(st))
"#,
        ctx = bin("ctx").display().to_string(),
        sock = b.socket().display().to_string(),
    );
    let out = run(Command::new("python3").arg("-c").arg(script));
    let text = out.stdout_str();
    let (shown, code) = text.rsplit_once("\n@@").expect("the harness's exit line");
    (shown.to_string(), code.trim().parse().expect("exit code"))
}

/// Finding: the broker read `default.bash.env` as root, following symlinks, in a directory
/// the context's uid owns. Planted links to another process's environment and to a
/// root-only file, and a FIFO, must neither leak into the context nor hang the broker.
#[test]
fn a_shared_session_cannot_make_root_read_through_a_planted_link() {
    let b = Broker::start(&shared_config());
    let secret_file = b
        .dir()
        .file("root-only.env", b"FILE_SECRET=f1le-s3cret\n", 0o600);
    let marker = format!("1000.{}", std::process::id());
    let victim = Reaped(
        Command::new("sleep")
            .arg(&marker)
            .env("VICTIM_SECRET", "env-s3cret")
            .stdin(Stdio::null())
            .spawn()
            .expect("start the victim"),
    );
    // The session directory exists once the context used `ctx sh`.
    run(&mut b.ctx(["sh", "--context", "shared", "export LEGIT=1"])).ok();
    let dir = b.dir().path().join("state/shells/shared");
    let planted = dir.join("default.bash.env");
    let planted = planted.to_str().unwrap();
    assert_eq!(
        b.exec("shared", &["sh", "-c", "echo ${LEGIT-none}"]).ok(),
        "1\n",
        "the shared export itself works"
    );
    let environ = format!("/proc/{}/environ", victim.0.id());
    for target in [environ.as_str(), secret_file.to_str().unwrap()] {
        // The context's own code plants the link: it owns the directory.
        b.exec("shared", &["ln", "-sfn", target, planted]).ok();
        let out = b.exec("shared", &["env"]);
        let env = out.ok();
        assert!(
            !env.contains("env-s3cret") && !env.contains("f1le-s3cret"),
            "a link to {target} leaked into the context:\n{env}"
        );
    }
    b.exec(
        "shared",
        &["sh", "-c", &format!("rm -f {planted} && mkfifo {planted}")],
    )
    .ok();
    let out = run_with(
        &mut b.exec_cmd("shared", &["echo", "served"]),
        None,
        Duration::from_secs(15),
    );
    assert_eq!(out.ok(), "served\n", "a FIFO must not hang the broker");
    assert!(
        b.stderr().contains("ignoring"),
        "the broker says what it ignored:\n{}",
        b.stderr()
    );
}

/// Finding: an interactive `ctx sh` wrote `SESSION.rc` as root through whatever the
/// context planted at that name. A link to a root-owned file must leave the file intact.
/// The context's uid owns its session directory and chooses what is in it. A file whose
/// last link root removes (`ctx sh --reset` unlinks the saved state; an interactive `ctx
/// sh` renames its rcfile over the old one; a shared context's launch reads the exports
/// file, which the context may unlink meanwhile, and closes it) is freed in that very
/// call, seconds for a large fragmented one. Done on a tokio worker, two at once held up
/// every connection, root's `ctx status` too (helper-107: 2.5 to 20 s). Timed against
/// the resets themselves, in the same run: root's status must answer in a fraction of
/// their time.
#[test]
fn root_freeing_a_contexts_large_files_holds_up_no_one_else() {
    let b = Broker::start(&shared_config());
    let dir = b.dir().path().join("state/shells/shared");
    let plant = r#"
import os, sys
# Every other 4 KiB block over 320 MB: 40,000 extents, allocated (fsync) so that freeing
# them is the file system's work, not a page cache drop.
for path in sys.argv[1:]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block = b"x" * 4096
    for i in range(40000):
        os.pwrite(fd, block, i * 8192)
    os.fsync(fd)
    os.close(fd)
"#;
    let sessions = ["big1", "big2"];
    for s in sessions {
        run(&mut b.ctx(["sh", "--context", "shared", "--session", s, "true"])).ok();
    }
    let files: Vec<String> = sessions
        .iter()
        .map(|s| dir.join(format!("{s}.bash")).display().to_string())
        .collect();
    let mut argv = vec!["/usr/bin/python3", "-c", plant];
    argv.extend(files.iter().map(String::as_str));
    b.exec("shared", &argv).ok();
    let started = Instant::now();
    let resets: Vec<_> = sessions
        .iter()
        .map(|s| {
            b.ctx(["sh", "--context", "shared", "--session", s, "--reset"])
                .spawn()
                .expect("ctx sh --reset")
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut resets: Vec<_> = resets.into_iter().map(Some).collect();
    let mut took = Duration::ZERO;
    while resets.iter().any(Option::is_some) {
        let asked = Instant::now();
        run(&mut b.ctx(["status"])).ok();
        slowest = slowest.max(asked.elapsed());
        for r in resets.iter_mut() {
            if let Some(c) = r {
                if let Some(st) = c.try_wait().unwrap() {
                    assert!(st.success(), "ctx sh --reset: {st}");
                    took = started.elapsed();
                    *r = None;
                }
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        took >= Duration::from_millis(300),
        "the resets took {took:?}: too quick to tell anything (the state directory must be \
         on a disk file system, as /tmp is on the test machines)"
    );
    assert!(
        slowest * 4 < took,
        "root's ctx status waited {slowest:?} while two resets took {took:?}"
    );
    for f in &files {
        assert!(!std::path::Path::new(f).exists(), "{f} was not removed");
    }
}

#[test]
fn an_interactive_session_cannot_make_root_write_through_a_planted_link() {
    let b = Broker::start(&shared_config());
    let guarded = b.dir().subdir("guarded", 0o755);
    let victim = guarded.join("victim.conf");
    fs::write(&victim, "original\n").unwrap();
    let absent = guarded.join("created-by-root");
    run(&mut b.ctx(["sh", "--context", "shared", "true"])).ok();
    let dir = b.dir().path().join("state/shells/shared");
    for (target, name) in [(&victim, "default.rc"), (&absent, "default.rc")] {
        b.exec(
            "shared",
            &[
                "ln",
                "-sfn",
                target.to_str().unwrap(),
                dir.join(name).to_str().unwrap(),
            ],
        )
        .ok();
        let (shown, code) = interactive_sh(&b, "shared", "echo typed-$((6*7))");
        assert!(shown.contains("typed-42"), "the session works: {shown}");
        assert_eq!(code, 3, "{shown}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "original\n");
        assert!(!absent.exists(), "root created {}", absent.display());
    }
    // The rcfile is now a plain file in the session directory, not the link.
    let meta = fs::symlink_metadata(dir.join("default.rc")).unwrap();
    assert!(meta.file_type().is_file(), "{meta:?}");
}

/// The harness of the pid-reuse attack, run as pid 1 of a fresh pid namespace (so that
/// `ns_last_pid` decides which pid the next process gets). argv: broker ctx config socket
/// state audit mode. Prints one JSON line: whether the pid was reused, what the broker
/// answered on the stolen connection, what the routed program printed. Mode `context`: a
/// user allowed nowhere runs `ctx exec --context user`, and a `platform` process gets its
/// pid; mode `operator`: root without capabilities (as in a uid-0 context) runs `ctx
/// reload`, and a root process with all of them gets its pid.
const PID_REUSE_HARNESS: &str = r#"
import ctypes, json, os, signal, subprocess, sys, time
broker, ctx, config, sock, state, audit, mode = sys.argv[1:8]
libc = ctypes.CDLL(None, use_errno=True)
err = open(state + ".stderr", "w")
b = subprocess.Popen([broker, "--config", config, "--socket", sock, "--state-dir", state,
                      "--audit-log", audit], stdout=err, stderr=err, stdin=subprocess.DEVNULL)
for _ in range(200):
    if subprocess.call([ctx, "--socket", sock, "status"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL) == 0:
        break
    time.sleep(0.05)
# A platform process that forks one child when told to, and says the child's pid.
spawner = subprocess.Popen([ctx, "--socket", sock, "exec", "--context", "platform", "--",
    "python3", "-c", "import os, sys, time\n"
    "print('ready', flush=True); sys.stdin.readline()\n"
    "p = os.fork()\n"
    "if p == 0:\n time.sleep(60); os._exit(0)\n"
    "print(p, flush=True); time.sleep(60)"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
assert spawner.stdout.readline().strip() == "ready"
# The broker accepts late (here: stopped; in the wild: a connection flood). A group stop
# reaches each thread on its own time: wait until every one has stopped.
os.kill(b.pid, signal.SIGSTOP)
def all_stopped():
    try:
        for t in os.listdir("/proc/%d/task" % b.pid):
            with open("/proc/%d/task/%s/stat" % (b.pid, t)) as f:
                if f.read().rsplit(") ", 1)[1][0] != "T":
                    return False
        return True
    except OSError:
        return False
for _ in range(500):
    if all_stopped():
        break
    time.sleep(0.01)
if mode == "operator":
    command = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", ctx, "--socket", sock,
               "reload"]
else:
    command = ["setpriv", "--reuid=ctx-bob", "--regid=ctx-bob", "--clear-groups", ctx,
               "--socket", sock, "exec", "--context", "user", "--", "sh", "-c",
               "echo LEAK:$SECRET_OF_USER"]
attacker = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL)
pid = attacker.pid
def sockets():
    out = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("socket:"):
                out.append(int(fd))
        except OSError:
            pass
    return out
for _ in range(200):
    if sockets():
        break
    time.sleep(0.01)
time.sleep(0.5)  # hello and request sent; the client waits for the answer
# The attacker keeps the connection and lets the connecting process go (here the
# harness takes the descriptor; a real attacker passes it to its parent).
pidfd = os.pidfd_open(pid)
stolen = []
for fd in sockets():
    n = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
    if n >= 0:
        stolen.append(n)
os.kill(pid, signal.SIGKILL)
attacker.wait()
# The next process gets the connecting process's pid: a platform process.
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write(str(pid - 1))
if mode == "operator":
    # A root process of its own: not holding what the harness took.
    r, w = os.pipe()
    root = os.fork()
    if root == 0:
        for s in stolen:
            os.close(s)
        os.write(w, b"x")
        time.sleep(60)
        os._exit(0)
    os.read(r, 1)
    reused = root == pid
else:
    spawner.stdin.write("go\n"); spawner.stdin.flush()
    reused = int(spawner.stdout.readline()) == pid
os.kill(b.pid, signal.SIGCONT)
reply = b""
for s in stolen:
    os.set_blocking(s, False)
end = time.time() + 5
while time.time() < end:
    for s in stolen:
        try:
            reply += os.read(s, 65536)
        except (BlockingIOError, ConnectionResetError):
            pass
    time.sleep(0.05)
os.set_blocking(attacker.stdout.fileno(), False)
leak = b""
end = time.time() + 3
while time.time() < end:
    try:
        chunk = os.read(attacker.stdout.fileno(), 65536)
        if not chunk:
            break
        leak += chunk
    except BlockingIOError:
        time.sleep(0.05)
print(json.dumps({"reused": reused, "stolen": len(stolen),
                  "reply": reply.decode("latin-1"), "leak": leak.decode("latin-1")}))
sys.stdout.flush()
b.kill()
os._exit(0)
"#;

/// Finding: the broker took "whatever process holds the peer's pid when the broker looks"
/// for the peer. A user allowed into nothing connects, hands the connection on and exits;
/// a `platform` process gets its pid; the request must not run as `platform`'s.
#[test]
fn a_reused_pid_does_not_lend_its_context_to_a_stranger() {
    let (result, broker_log) = pid_reuse("context");
    let leak = result["leak"].as_str().unwrap();
    assert!(
        !leak.contains("us3r-s3cret"),
        "the stranger ran in `user` as if it were `platform`: {leak}\nbroker:\n{broker_log}"
    );
}

/// helper-108, before 6.5 (emulated, `CTX_TEST_KERNEL=6.1`): the broker pins a peer by its
/// pid at `accept`, so root in a context (no capabilities) that connects and exits before
/// then, its connection handed on, was served as the operator once a root process with
/// capabilities got its pid: its `reload` ran. The new holder of the pid must hold the
/// connection.
#[test]
fn a_reused_pid_does_not_lend_the_operators_rights_to_root_in_a_context() {
    let (result, broker_log) = pid_reuse("operator");
    let audit = result["audit"].as_str().unwrap_or_default();
    assert!(
        !audit.contains("reload"),
        "the broker reloaded for root in a context: {audit}\nbroker:\n{broker_log}"
    );
}

/// Connects to the broker (argv[1]) while it is stopped (argv[3], its pid), forks a child
/// that keeps the connection, lets go of it, and only then lets the broker go on; the
/// child sends the launch (argv[2], hex) and prints the broker's reply in hex.
const LET_GO_BEFORE_TAKEN: &str = r#"
import os, signal, socket, sys, time
path, opening, broker = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3])
os.kill(broker, signal.SIGSTOP)
def all_stopped():
    try:
        for t in os.listdir("/proc/%d/task" % broker):
            with open("/proc/%d/task/%s/stat" % (broker, t)) as f:
                if f.read().rsplit(") ", 1)[1][0] != "T":
                    return False
        return True
    except OSError:
        return False
while not all_stopped():
    time.sleep(0.01)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    os.read(r, 1)
    null = os.open("/dev/null", os.O_RDWR)
    try:
        socket.send_fds(s, [opening], [null, null, null])
    except BrokenPipeError:
        pass  # refused before it was sent: the reason is waiting to be read
    reply = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        reply += chunk
    print(reply.hex(), flush=True)
    os._exit(0)
s.close()
os.kill(broker, signal.SIGCONT)
os.close(w)
os.waitpid(pid, 0)
"#;

/// A connection handed on (here to a forked child; `SCM_RIGHTS` does the same) and let go
/// of by the process that connected, still alive, before the broker took it. From 6.5 the
/// kernel's pidfd of the connector names it: served. Before (`CTX_TEST_KERNEL=6.1`) the
/// broker can tell such a connector from a process that got a dead connector's pid only by
/// whether it holds the connection (helper-108): refused, saying what to do, never served
/// as whatever holds the pid.
#[test]
fn a_connection_its_connector_let_go_of_before_the_broker_took_it_is_refused_before_6_5() {
    let mut b = Broker::start(ROOT0);
    let bytes = ctx_tests::raw::opening(&ctx_protocol::Request::Exec(
        ctx_tests::raw::exec_request("root0", &[b"sh", b"-c", b"exit 7"]),
    ));
    let out = run(Command::new("python3")
        .args(["-c", LET_GO_BEFORE_TAKEN])
        .arg(b.socket())
        .arg(ctx_tests::raw::hex(&bytes))
        .arg(b.pid().to_string()));
    let hex = out.ok();
    let reply: Vec<u8> = (0..hex.trim().len() / 2)
        .map(|i| u8::from_str_radix(&hex.trim()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let frames = ctx_tests::raw::split_frames(&reply);
    if ctx_tests::older_kernel::has(6, 5) {
        assert_eq!(
            ctx_tests::raw::exit_of(&frames),
            Some(ctx_protocol::ExitStatus::Code(7)),
            "{frames:?}\nbroker:\n{}",
            b.stderr()
        );
    } else {
        let (_, message) = ctx_tests::raw::error_of(&frames)
            .unwrap_or_else(|| panic!("refused: {frames:?}\nbroker:\n{}", b.stderr()));
        assert!(
            message.contains("does not hold the connection")
                && message.contains("keep the connection open"),
            "{message}"
        );
        assert!(b.audit_lines().iter().all(|l| l["event"] != "exec"));
    }
    assert!(b.terminate(Duration::from_secs(10)).is_some());
}

/// Runs [`PID_REUSE_HARNESS`] in `mode`, checks that the pid was reused and that the broker
/// refused the stolen connection saying why; gives the harness's result (with the audit
/// log as `audit`) and the broker's log.
fn pid_reuse(mode: &str) -> (serde_json::Value, String) {
    require_root();
    let dir = TempDir::new();
    let config = dir.file(
        "contexts.toml",
        format!(
            r#"[broker]
socket_mode = "0666"

[contexts.platform]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}

[contexts.user]
user = "ctx-user"
cwd = "/"
env = {{ SECRET_OF_USER = "us3r-s3cret" }}
allow = {{ uids = [0], contexts = ["platform"] }}
"#
        )
        .as_bytes(),
        0o644,
    );
    let state = dir.path().join("state");
    // Before 6.5 (`CTX_TEST_KERNEL`) the broker pins the peer by its pid at accept: the
    // platform process's (helper-108 was served as the operator so).
    ctx_tests::older_kernel::emulate_from_env();
    let out = run_with(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "python3", "-c"])
            .arg(PID_REUSE_HARNESS)
            .arg(bin("ctx-broker"))
            .arg(bin("ctx"))
            .arg(&config)
            .arg(dir.path().join("broker.sock"))
            .arg(&state)
            .arg(dir.path().join("audit.jsonl"))
            .arg(mode),
        None,
        Duration::from_secs(60),
    );
    let broker_log = fs::read_to_string(dir.path().join("state.stderr")).unwrap_or_default();
    let line = out.stdout_str();
    let mut result: serde_json::Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("harness said {e}: {}\nbroker:\n{broker_log}", out.show()));
    assert_eq!(
        result["reused"], true,
        "the set-up must reuse the pid: {result}"
    );
    assert!(result["stolen"].as_u64() > Some(0), "{result}");
    let reply = result["reply"].as_str().unwrap();
    let why = if ctx_tests::older_kernel::has(6, 5) {
        "exited before its identity could be checked"
    } else {
        "does not hold the connection"
    };
    assert!(
        reply.contains(why),
        "the broker refuses, saying why: {reply:?}\nbroker:\n{broker_log}"
    );
    result["audit"] = fs::read_to_string(dir.path().join("audit.jsonl"))
        .unwrap_or_default()
        .into();
    (result, broker_log)
}

/// `python3 CATCHER ctx exec --context CONTEXT -- sh -c SCRIPT`: the process that launched
/// `ctx exec`, which a routed program's `kill $PPID` reaches, catches every catchable
/// signal and prints their names after the command's output.
fn exec_under_catcher(b: &Broker, context: &str, script: &str) -> Output {
    const CATCHER: &str = r#"
import signal, subprocess, sys
got = []
for s in signal.valid_signals():
    if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
        signal.signal(s, lambda n, f: got.append(n))
out = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(out.stdout, end="")
print("caught:", " ".join(str(n) for n in got))
sys.exit(out.returncode)
"#;
    let socket = b.socket();
    run(Command::new("python3").args([
        "-c",
        CATCHER,
        bin("ctx").to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
        "exec",
        "--context",
        context,
        "--",
        "sh",
        "-c",
        script,
    ]))
}

/// The number of signal `name` (as `kill -l` spells it).
fn signal_number(name: &str) -> i32 {
    let out = run(Command::new("bash").args(["-c", &format!("kill -l {name}")]));
    out.ok().trim().parse().unwrap()
}

/// Finding: a routed process of a uid-0 context that signals its parent (CPython's test
/// suite sends SIGUSR1 to it) killed the broker. No signal from a process in a context may
/// stop, kill or reload it; the operator's SIGHUP and SIGTERM still work. The routed
/// program's `kill $PPID` goes to the process that launched it (as locally), and anything
/// else naming the broker is refused.
#[test]
fn signals_from_a_routed_root_process_neither_stop_nor_kill_the_broker() {
    let config = ROOT0;
    let mut b = Broker::start(config);
    let broker = b.pid().to_string();
    // The routed shell's parent is the broker.
    assert_eq!(
        b.exec("root0", &["sh", "-c", "echo $PPID"]).ok().trim(),
        broker
    );
    let alive = |b: &Broker, after: &str| {
        let status = fs::read_to_string(format!("/proc/{broker}/stat"))
            .unwrap_or_else(|_| panic!("{after} killed the broker"));
        let state = status.rsplit_once(") ").unwrap().1.chars().next().unwrap();
        assert!(
            state != 'T' && state != 'Z',
            "{after} left the broker in state {state}"
        );
        assert_eq!(
            b.exec("root0", &["echo", "alive"]).ok(),
            "alive\n",
            "after {after}: {}",
            b.stderr()
        );
    };
    let signals = [
        "USR1", "USR2", "ALRM", "VTALRM", "PROF", "IO", "PWR", "XCPU", "XFSZ", "QUIT", "ABRT",
        "SEGV", "BUS", "FPE", "ILL", "TRAP", "SYS", "STKFLT", "TSTP", "TTIN", "TTOU", "RTMIN",
        "RTMIN+5", "RTMAX", "HUP", "INT", "TERM",
    ];
    for sig in signals {
        // The shell's builtin (its parent is the broker: relayed to the caller).
        let n = signal_number(sig);
        let script = format!("kill -{n} $PPID && echo relayed; sleep 0.05");
        let out = exec_under_catcher(&b, "root0", &script);
        assert_eq!(
            out.ok(),
            format!("relayed\ncaught: {n}\n"),
            "SIG{sig}: {}",
            out.show()
        );
        alive(&b, &format!("SIG{sig}"));
    }
    // Any process of the launch naming the broker names the program's parent: a
    // grandchild's /bin/kill is relayed too.
    let out = exec_under_catcher(
        &b,
        "root0",
        &format!("/bin/kill -s USR2 {broker} && echo relayed; sleep 0.05"),
    );
    assert_eq!(
        out.ok(),
        format!("relayed\ncaught: {}\n", libc::SIGUSR2),
        "{}",
        out.show()
    );
    alive(&b, "a grandchild's SIGUSR2");
    // STOP and KILL reach the caller too; the broker neither stops nor dies.
    let catcher = |script: &str| {
        let socket = b.socket();
        Command::new("sh")
            .args(["-c", "\"$@\"; echo ended", "catcher"])
            .arg(bin("ctx"))
            .arg("--socket")
            .arg(socket)
            .args(["exec", "--context", "root0", "--", "sh", "-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut killed = catcher("kill -KILL $PPID; sleep 0.2");
    let status = killed.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "SIGKILL reached the caller"
    );
    alive(&b, "SIGKILL");
    let mut stopped = catcher("kill -STOP $PPID");
    let state_of = |pid: u32| {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.chars().next().unwrap()))
    };
    let sh = stopped.id();
    assert!(
        poll(Duration::from_secs(10), || (state_of(sh) == Some('T'))
            .then_some(()))
        .is_some(),
        "SIGSTOP reached the caller"
    );
    alive(&b, "SIGSTOP");
    signal(sh, nix::sys::signal::Signal::SIGCONT);
    assert!(stopped.wait().unwrap().success());
    // CPython's way goes to the caller; a pidfd of the broker is refused by the kernel
    // (the broker's real uid is not the sender's).
    let py = "import os, signal\n\
        os.kill(os.getppid(), signal.SIGUSR2)\n\
        fd = os.pidfd_open(os.getppid())\n\
        for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGKILL):\n\
        \x20   try: signal.pidfd_send_signal(fd, s)\n\
        \x20   except PermissionError: print('EPERM')\n";
    let out = exec_under_catcher(&b, "root0", &format!("exec python3 -c \"{py}\""));
    assert_eq!(
        out.ok(),
        format!("EPERM\nEPERM\nEPERM\ncaught: {}\n", libc::SIGUSR2),
        "{}",
        out.show()
    );
    alive(&b, "pidfd_send_signal");
    assert!(
        !b.stderr().contains("configuration reloaded"),
        "a routed SIGHUP reloaded the broker:\n{}",
        b.stderr()
    );
    // The operator (not in a context) still reloads and stops it.
    signal(b.pid(), nix::sys::signal::Signal::SIGHUP);
    assert!(
        poll(Duration::from_secs(10), || b
            .stderr()
            .contains("configuration reloaded")
            .then_some(()))
        .is_some(),
        "SIGHUP from the operator reloads:\n{}",
        b.stderr()
    );
    let status = b.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM from the operator stops it cleanly: {status:?}\n{}",
        b.stderr()
    );
}

/// An unprivileged broker's contexts of its own uid may signal it as far as the kernel is
/// concerned: every signal that would end, stop or reload it is ignored when it comes from
/// a process in a context. Their `kill $PPID` goes to their caller; a pidfd reaches the
/// broker itself, which must shrug it off.
#[test]
fn an_unprivileged_broker_ignores_signals_from_its_own_contexts() {
    let config = format!(
        r#"[broker]
socket_mode = "0666"

[contexts.own]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
"#
    );
    let b = Broker::start_as(ALICE, &[], &config);
    let broker = b.pid().to_string();
    assert_eq!(
        b.exec("own", &["sh", "-c", "echo $PPID"]).ok().trim(),
        broker
    );
    // The caller is root, the program ctx-alice: a notification that changes nothing
    // passes, USR1 and TERM do not (`a_program_of_another_uid_cannot_end_or_stop_its_launcher`).
    for (sig, passed) in [("WINCH", true), ("USR1", false), ("TERM", false)] {
        let out = exec_under_catcher(&b, "own", &format!("kill -{sig} $PPID"));
        let caught = if passed {
            signal_number(sig).to_string()
        } else {
            String::new()
        };
        assert_eq!(out.ok(), format!("caught: {caught}\n"), "{}", out.show());
    }
    for sig in [
        "USR1", "USR2", "ALRM", "QUIT", "SEGV", "TSTP", "RTMIN", "HUP", "INT", "TERM",
    ] {
        // Through a pidfd, which names the broker itself; the sender is alive while the
        // broker looks at it.
        let py = format!(
            "import os, signal, time\n\
             signal.pidfd_send_signal(os.pidfd_open(os.getppid()), {})\n\
             time.sleep(0.1)\n",
            signal_number(sig)
        );
        let out = b.exec("own", &["python3", "-c", &py]);
        assert_eq!(out.code(), 0, "SIG{sig}: {}", out.show());
        assert_eq!(
            b.exec("own", &["echo", "alive"]).ok(),
            "alive\n",
            "after SIG{sig}"
        );
    }
    let log = b.stderr();
    assert!(
        log.contains("ignored signal 15 from a process in context \"own\""),
        "{log}"
    );
    assert!(!log.contains("configuration reloaded"), "{log}");
}

/// Finding: two contexts of one uid are not separated, and nothing said so. The attack is
/// real (one reads the other's secrets through /proc and enters it under the default
/// allow), so `--check` and `ctx status` must name both.
#[test]
fn contexts_sharing_a_uid_are_named_by_check_and_status() {
    let config = format!(
        r#"[broker]
socket_mode = "0666"

[contexts.first]
user = "{ALICE}"
cwd = "/"
env = {{ FIRST_SECRET = "f1rst-s3cret" }}

[contexts.second]
user = "{ALICE}"
cwd = "/"

[contexts.other]
user = "{BOB}"
cwd = "/"
"#
    );
    let b = Broker::start(&config);
    let check = run(Command::new(bin("ctx-broker"))
        .arg("--check")
        .arg("--config")
        .arg(b.config_path()));
    assert_eq!(check.code(), 0, "{}", check.show());
    let status = run(&mut b.ctx(["status"])).ok();
    for text in [check.stderr_str(), status] {
        assert!(
            text.contains("contexts.first, contexts.second all run as uid")
                && text.contains("NOT separated")
                && text.contains("enter first, second"),
            "{text}"
        );
        assert!(!text.contains("contexts.other,"), "{text}");
    }
    // What the warning says: a process of `second` reads `first`'s secret.
    let marker = format!("1000.{}", std::process::id());
    let mut first = b
        .exec_cmd("first", &["sleep", &marker])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let alice = user(ALICE).uid;
    let pid = poll(Duration::from_secs(10), || {
        pids_with_arg(&marker)
            .into_iter()
            .find(|p| proc_uid(*p) == Some(alice))
    })
    .expect("the routed sleep runs");
    let out = b.exec(
        "second",
        &["sh", "-c", &format!("tr '\\0' '\\n' < /proc/{pid}/environ")],
    );
    assert!(out.ok().contains("f1rst-s3cret"));
    let _ = first.kill();
    let _ = first.wait();
}

/// `victim` (ctx-bob) with a root-only env file holding `VICTIM_KEY`; `mine` (ctx-alice)
/// whose env file lies in a directory ctx-alice owns. Returns the temp dir (keep it), the
/// victim's file, mine's file and the running broker.
fn env_file_victim() -> (TempDir, std::path::PathBuf, std::path::PathBuf, Broker) {
    let dir = TempDir::new();
    let secret = dir.file("victim.env", b"VICTIM_KEY=v1ctim-s3cret\n", 0o600);
    let own = dir.subdir("alice-owned", 0o755);
    let alice = user(ALICE);
    nix::unistd::chown(
        &own,
        Some(nix::unistd::Uid::from_raw(alice.uid)),
        Some(nix::unistd::Gid::from_raw(alice.gid)),
    )
    .unwrap();
    let env_file = own.join("app.env");
    fs::write(&env_file, "APP_MODE=dev\n").unwrap();
    let config = format!(
        r#"[broker]
socket_mode = "0666"

[contexts.victim]
user = "{BOB}"
cwd = "/"
env_files = ["{secret}"]

[contexts.mine]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
env_files = ["{env}"]
"#,
        secret = secret.display(),
        env = env_file.display()
    );
    let b = Broker::start(&config);
    (dir, secret, env_file, b)
}

/// Class of findings 1 and 3, for `env_files`: the broker reads them as root at every load.
/// A context's user who can write the directory of its own env file swaps the file for a
/// link to another context's root-only secrets; the next reload must refuse it, not hand
/// those secrets to the context.
#[test]
fn an_env_file_swapped_for_a_link_does_not_make_root_read_another_contexts_secrets() {
    let (_dir, secret, env_file, b) = env_file_victim();
    let warned = run(&mut b.ctx(["status"])).ok();
    assert!(
        warned.contains("alice-owned") && warned.contains("can write"),
        "the risky place is named: {warned}"
    );
    assert_eq!(
        b.exec("mine", &["sh", "-c", "echo $APP_MODE ${VICTIM_KEY-none}"])
            .ok(),
        "dev none\n"
    );
    // The context's own code swaps its env file for a link to the victim's secrets.
    b.exec(
        "mine",
        &[
            "ln",
            "-sfn",
            secret.to_str().unwrap(),
            env_file.to_str().unwrap(),
        ],
    )
    .ok();
    let reload = run(&mut b.ctx(["reload"]));
    assert_ne!(reload.code(), 0, "{}", reload.show());
    assert!(
        reload.stderr_str().contains("symlink"),
        "the refusal names the link: {}",
        reload.show()
    );
    let check = run(Command::new(bin("ctx-broker"))
        .arg("--check")
        .arg("--config")
        .arg(b.config_path()));
    assert_eq!(check.code(), 1, "{}", check.show());
    assert_eq!(
        b.exec("mine", &["sh", "-c", "echo ${VICTIM_KEY-none}"])
            .ok(),
        "none\n"
    );
}

/// Found by the second attacker review: a process of a uid-0 context that double-forks is
/// reparented out of its launch's tree, and was then taken for the operator (exempt from
/// every bound, its launches logged as root's own). Its cgroup still says where it runs.
#[test]
fn a_double_forked_process_of_a_root_context_is_not_taken_for_the_operator() {
    let config = ROOT0;
    let b = Broker::start(config);
    let ctx = bin("ctx");
    let script = format!(
        "( ( sleep 0.3; {ctx} --socket {sock} exec --context root0 -- echo ORPHAN-LAUNCH ) & ); \
         {ctx} --socket {sock} exec --context root0 -- echo DIRECT-LAUNCH; sleep 1",
        ctx = ctx.display(),
        sock = b.socket().display()
    );
    b.exec("root0", &["sh", "-c", &script]).ok();
    let lines = b.wait_audit(3, |e| e["event"] == "exec");
    let caller = |word: &str| {
        lines
            .iter()
            .find(|e| e["argv"][1] == word)
            .unwrap_or_else(|| panic!("no {word}: {lines:?}"))["caller"]
            .clone()
    };
    assert_eq!(caller("DIRECT-LAUNCH")["context"], "root0");
    let orphan = caller("ORPHAN-LAUNCH");
    assert!(
        orphan["context"] == "root0" || orphan["cgroup_context"] == "root0",
        "the orphan passed for the operator: {orphan}"
    );
}

/// A routed `sleep` of the operator's in `context`, marked with `prefix` and this test's
/// pid: its client (killed on drop), the sleep's pid, its launch id and the mark.
fn operators_sleep(b: &Broker, context: &str, prefix: &str) -> (Reaped, i32, u64, String) {
    let mark = format!("{prefix}.{}", std::process::id());
    let client = Reaped(
        b.exec_cmd(context, &["sleep", &mark])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = poll(Duration::from_secs(10), || {
        pids_with_arg(&mark).into_iter().find(|&p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
    })
    .expect("the operator's routed sleep");
    let ps = run(&mut b.ctx(["ps", "--json"])).ok();
    let ps: serde_json::Value = serde_json::from_str(&ps).unwrap();
    let id = ps
        .as_array()
        .and_then(|a| a.iter().find(|p| json_has_str(&p["argv"], &mark)))
        .and_then(|p| p["id"].as_u64())
        .unwrap_or_else(|| panic!("the operator's sleep in ctx ps: {ps}"));
    (client, pid, id, mark)
}

/// The review of the third attacker round: an orphan of a uid-0 context that left its
/// launch's process tree and also its cgroups (root may write any v1 `cgroup.procs`
/// without a capability; a host without cgroups has none to leave) was known by nothing
/// and passed for the operator: it entered every context that lets root in, reloaded
/// the broker, listed and killed the operator's launches; from a user namespace of its
/// own its capability bounding set was full again. Every process a root broker starts
/// holds no capability and can gain none in the broker's user namespace, and a user
/// namespace of its own gives it away: such a uid-0 peer is in some context, whichever,
/// and touches no launch.
#[test]
fn a_uid0_contexts_orphan_out_of_its_cgroups_is_not_the_operator() {
    let config = format!(
        r#"{ROOT0}
[contexts.victim]
user = "root"
cwd = "/"
env = {{ VICTIM_SECRET = "victim-key" }}
allow = {{ uids = [0] }}
"#
    );
    let b = Broker::start(&config);
    // A launch of the operator's, which the orphan must neither see nor signal.
    let (victim, victim_pid, victim_id, mark) = operators_sleep(&b, "victim", "901");
    let out_dir = TempDir::new();
    let ctx = format!("{} --socket {}", bin("ctx").display(), b.socket().display());
    let asks = format!(
        "{ctx} exec --context victim -- env; echo enter=\\$?; {ctx} reload; \
         echo reload=\\$?; {ctx} kill {victim_id}; echo kill=\\$?; {ctx} ps; echo done"
    );
    // The orphan: its own session, out of every cgroup it can leave; it waits for its
    // launch to end before it asks, as it is and from a user namespace of its own (which
    // gives it a full capability bounding set again).
    for (how, wrap) in [("plain", ""), ("userns", "unshare -U ")] {
        let report = out_dir.path().join(format!("{how}.out"));
        let orphan = format!(
            "for f in /sys/fs/cgroup/*/cgroup.procs /sys/fs/cgroup/cgroup.procs; do \
               echo $$ > $f 2>/dev/null; done; sleep 1; \
             {wrap}sh -c \"{asks}\" > {out} 2>&1",
            out = report.display()
        );
        let script = format!("setsid -f sh -c '{orphan}'; echo launched");
        assert_eq!(
            b.exec("root0", &["sh", "-c", &script]).ok().trim(),
            "launched"
        );
        let text = poll(Duration::from_secs(20), || {
            fs::read_to_string(&report)
                .ok()
                .filter(|t| t.contains("done"))
        })
        .unwrap_or_else(|| panic!("{how}: the orphan never reported\n{}", b.stderr()));
        assert!(
            !text.contains("victim-key"),
            "{how}: read another context's secret: {text}"
        );
        assert!(text.contains("enter=125"), "{how}: {text}");
        assert!(
            text.contains("reload=125"),
            "{how}: reloaded the broker: {text}"
        );
        assert!(
            !text.contains("kill=0"),
            "{how}: signalled the operator's launch: {text}"
        );
        assert!(
            !text.contains(&mark),
            "{how}: listed the operator's launch: {text}"
        );
    }
    assert!(
        fs::read_to_string(format!("/proc/{victim_pid}/comm")).is_ok_and(|c| c.trim() == "sleep"),
        "the operator's launch was killed"
    );
    let refused = b.wait_audit(4, |e| e["event"] == "refused" && e["caller"]["uid"] == 0);
    assert!(
        refused.iter().all(|e| e["caller"]["confined_root"] == true),
        "{refused:?}"
    );
    drop(victim);
}

/// The second attacker review: SIGIO through F_SETOWN/F_SETSIG, which the kernel allows
/// any euid-0 process towards any process, stops a root broker from a plain uid-0 context.
/// In its own pid namespace the broker's pid does not exist for the context: it holds.
#[test]
fn a_root_context_in_its_own_pid_namespace_cannot_reach_the_broker_through_sigio() {
    let config = r#"[broker]
socket_mode = "0666"

[contexts.root0]
user = "root"
cwd = "/"
allow = { uids = [0] }
isolation = { pid = true }
"#;
    let b = Broker::start(config);
    let broker = b.pid().to_string();
    let py = "import fcntl, os, signal, socket, sys\n\
        a, b = socket.socketpair()\n\
        try:\n\
        \x20   fcntl.fcntl(a, fcntl.F_SETOWN, int(sys.argv[1]))\n\
        \x20   fcntl.fcntl(a, 10, int(signal.SIGSTOP))\n\
        \x20   fcntl.fcntl(a, fcntl.F_SETFL, fcntl.fcntl(a, fcntl.F_GETFL) | os.O_ASYNC)\n\
        \x20   b.send(b'x')\n\
        \x20   print('aimed')\n\
        except OSError as e:\n\
        \x20   print('refused', e.errno)\n";
    let out = b.exec("root0", &["python3", "-c", py, &broker]);
    assert_eq!(out.code(), 0, "{}", out.show());
    std::thread::sleep(Duration::from_millis(200));
    let stat = fs::read_to_string(format!("/proc/{broker}/stat")).expect("the broker lives");
    let state = stat.rsplit_once(") ").unwrap().1.chars().next().unwrap();
    assert_ne!(
        state,
        'T',
        "SIGIO stopped the broker ({})",
        out.stdout_str()
    );
    assert_eq!(b.exec("root0", &["echo", "alive"]).ok(), "alive\n");
}

/// The second attacker review: where `fs.protected_hardlinks` is 0, a user who owns the
/// directory of its own env file can replace it with a hard link to another context's
/// root-only secrets (made here by root, standing in for such a host).
#[test]
fn an_env_file_replaced_by_a_hard_link_to_another_contexts_secrets_is_refused() {
    let (_dir, secret, env_file, b) = env_file_victim();
    fs::remove_file(&env_file).unwrap();
    fs::hard_link(&secret, &env_file).unwrap();
    let reload = run(&mut b.ctx(["reload"]));
    assert_ne!(reload.code(), 0, "{}", reload.show());
    assert!(
        reload.stderr_str().contains("hard links"),
        "{}",
        reload.show()
    );
    assert_eq!(
        b.exec("mine", &["sh", "-c", "echo ${VICTIM_KEY-none}"])
            .ok(),
        "none\n"
    );
}

/// The Python both SIGIO tests run: aims SIGIO, with each signal given, at the pid in
/// argv[1] through a socket's owner, and prints per signal `aimed` or `refused ERRNO`.
const AIM_SIGIO: &str = "import fcntl, os, signal, socket, sys\n\
    for sig in sys.argv[2:]:\n\
    \x20   a, b = socket.socketpair()\n\
    \x20   try:\n\
    \x20       fcntl.fcntl(a, fcntl.F_SETOWN, int(sys.argv[1]))\n\
    \x20       fcntl.fcntl(a, 10, int(sig))\n\
    \x20       fcntl.fcntl(a, fcntl.F_SETFL, fcntl.fcntl(a, fcntl.F_GETFL) | os.O_ASYNC)\n\
    \x20       b.send(b'x')\n\
    \x20       print(sig, 'aimed')\n\
    \x20   except OSError as e:\n\
    \x20       print(sig, 'refused', e.errno)\n";

/// The broker's state letter from /proc (`T`: stopped); panics when it is gone.
fn broker_state(b: &Broker) -> char {
    let stat = fs::read_to_string(format!("/proc/{}/stat", b.pid())).expect("the broker lives");
    stat.rsplit_once(") ").unwrap().1.chars().next().unwrap()
}

/// Python: names the pid in argv[1] as a socket's owner each way the kernel offers and
/// prints one word per way: `named` or `refused ERRNO`.
const NAME_OWNER: &str = "import fcntl, socket, struct, sys\n\
    pid = int(sys.argv[1])\n\
    ways = [('setown', lambda a: fcntl.fcntl(a, fcntl.F_SETOWN, pid)),\n\
    \x20       ('setpgrp', lambda a: fcntl.fcntl(a, fcntl.F_SETOWN, -pid)),\n\
    \x20       ('setown_ex', lambda a: fcntl.fcntl(a, 15, struct.pack('ii', 1, pid))),\n\
    \x20       ('fiosetown', lambda a: fcntl.ioctl(a, 0x8901, struct.pack('i', pid))),\n\
    \x20       ('siocspgrp', lambda a: fcntl.ioctl(a, 0x8902, struct.pack('i', pid)))]\n\
    for name, way in ways:\n\
    \x20   a, b = socket.socketpair()\n\
    \x20   try:\n\
    \x20       way(a)\n\
    \x20       print(name, 'named')\n\
    \x20   except OSError as e:\n\
    \x20       print(name, 'refused', e.errno)\n";

/// Issue 14, the last path: a plain uid-0 context (no pid namespace, no signal scope)
/// cannot make the broker a file's owner, by any of the four ways (the kernel would let
/// an euid-0 owner's SIGIO carry any signal, SIGKILL and SIGSTOP included, and
/// `F_SETSIG` can be set by any other process sharing the file: the second attacker
/// review killed the broker with a ctx-alice process doing it). Refused with EPERM; the
/// broker keeps serving.
#[test]
fn a_root_context_cannot_make_the_broker_a_files_owner() {
    let config = r#"[broker]
socket_mode = "0666"

[contexts.root0]
user = "root"
cwd = "/"
allow = { uids = [0] }
isolation = { read_only = ["/"] }

[contexts.plain]
user = "root"
cwd = "/"
allow = { uids = [0] }
"#;
    let b = Broker::start(config);
    let broker = b.pid().to_string();
    for context in ["root0", "plain"] {
        let out = b.exec(context, &["python3", "-c", NAME_OWNER, &broker]);
        assert_eq!(out.code(), 0, "{}", out.show());
        for way in ["setown", "setpgrp", "setown_ex", "fiosetown", "siocspgrp"] {
            assert!(
                out.stdout_str()
                    .contains(&format!("{way} refused {}", libc::EPERM)),
                "{context}: {way} was not refused: {}",
                out.show()
            );
        }
    }
    // The attack in full, as the review ran it: the owner set, SIGKILL picked, the file
    // made async and written to.
    let out = b.exec(
        "plain",
        &["python3", "-c", AIM_SIGIO, &broker, "9", "19", "32"],
    );
    assert_eq!(out.code(), 0, "{}", out.show());
    std::thread::sleep(Duration::from_millis(300));
    assert_ne!(broker_state(&b), 'T', "the broker was stopped");
    assert_eq!(b.exec("plain", &["echo", "alive"]).ok(), "alive\n");
    let status = run(&mut b.ctx(["status"])).ok();
    assert!(
        status.contains("signal the broker's other launches") && !status.contains("SIGKILL"),
        "status should say what is left, and no longer SIGKILL: {status}"
    );
}

/// What the filter costs a program, and where it does not apply: in a plain uid-0 context
/// a program cannot use SIGIO with an owner (EPERM), nor turn on O_ASYNC in its own PID
/// namespace; under a Landlock signal scope it can, with the signal it chose.
#[test]
fn sigio_to_itself_works_where_the_broker_cannot_be_named() {
    let config = r#"[contexts.plain]
user = "root"
cwd = "/"
allow = { uids = [0] }

[contexts.own_pids]
user = "root"
cwd = "/"
allow = { uids = [0] }
isolation = { pid = true }

[contexts.scoped]
user = "root"
cwd = "/"
allow = { uids = [0] }
isolation = { signals = "scoped" }
"#;
    let b = Broker::start(config);
    let py = "import fcntl, os, signal, socket, time\n\
        got = []\n\
        signal.signal(signal.SIGRTMIN + 3, lambda s, f: got.append(s))\n\
        a, b = socket.socketpair()\n\
        try:\n\
        \x20   fcntl.fcntl(a, fcntl.F_SETOWN, os.getpid())\n\
        except OSError as e:\n\
        \x20   print('refused', e.errno)\n\
        \x20   raise SystemExit\n\
        fcntl.fcntl(a, 10, int(signal.SIGRTMIN + 3))\n\
        try:\n\
        \x20   fcntl.fcntl(a, fcntl.F_SETFL, fcntl.fcntl(a, fcntl.F_GETFL) | os.O_ASYNC)\n\
        except OSError as e:\n\
        \x20   print('async refused', e.errno)\n\
        \x20   raise SystemExit\n\
        b.send(b'x')\n\
        time.sleep(0.2)\n\
        print('got', got == [signal.SIGRTMIN + 3])\n";
    assert_eq!(
        b.exec("plain", &["python3", "-c", py]).ok(),
        format!("refused {}\n", libc::EPERM)
    );
    // In its own PID namespace too: O_ASYNC on a terminal names the foreground group,
    // namespace or not (`o_async_on_a_root_terminal_cannot_signal_its_foreground_job`).
    assert_eq!(
        b.exec("own_pids", &["python3", "-c", py]).ok(),
        format!("refused {}\n", libc::EPERM)
    );
    // Under a Landlock signal scope (ABI 6) the kernel itself keeps SIGIO inside the
    // context, and no filter is needed.
    let scoped = b.exec("scoped", &["python3", "-c", py]).ok();
    if landlock_abi() >= 6 {
        assert_eq!(scoped, "got True\n");
    } else {
        assert_eq!(scoped, format!("refused {}\n", libc::EPERM));
    }
}

/// Found by the ninth and tenth attacker reviews: a uid-0 context fenced with
/// `read_only = ["/"]` (and `pid = true`) opened root's devices by name: a raw block
/// device (every file, the protected ones too), the kernel log, the consoles. Carved out
/// of a root context's Landlock grants now, all but the common devices. Root's PTY slaves
/// stay reachable (README, Known limits): the launch reopens its own terminal there by
/// name and makes new ones, which Landlock cannot tell apart; pinned here both ways.
#[test]
fn a_fenced_root_context_cannot_open_roots_devices_by_name() {
    let config = r#"[contexts.fenced]
user = "root"
cwd = "/"
allow = { uids = [0] }
isolation = { pid = true, read_only = ["/"] }
"#;
    let b = Broker::start(config);
    let driver = r#"
import os, subprocess, sys
master, slave = os.openpty()
path = os.ttyname(slave)
probe = """
import os, sys
for flags in (os.O_RDONLY, os.O_RDWR):
    try:
        os.close(os.open(sys.argv[1], flags | os.O_NOCTTY))
        print("opened")
    except OSError as e:
        print("refused", e.errno)
"""
out = subprocess.run([sys.argv[1], "--socket", sys.argv[2], "exec", "--context", "fenced",
                      "--", "python3", "-c", probe, path], capture_output=True, text=True)
print(out.stdout, end="")
# Root's other devices: the kernel log, a raw block device, a virtual console.
for device in ("/dev/kmsg", "/dev/loop0", "/dev/tty1", "/dev/console"):
    if os.path.exists(device):
        out = subprocess.run([sys.argv[1], "--socket", sys.argv[2], "exec", "--context",
                              "fenced", "--", "python3", "-c", probe.replace("os.O_RDWR", "os.O_RDONLY"), device],
                             capture_output=True, text=True)
        if out.stdout != "refused 13\nrefused 13\n":
            print(device, out.stdout)
own = subprocess.run([sys.argv[1], "--socket", sys.argv[2], "exec", "-t", "--context",
                      "fenced", "--", "sh", "-c",
                      "stty -echo && echo own-terminal >/dev/stderr && "
                      "python3 -c 'import pty; pty.openpty()' && echo new-terminal"],
                     capture_output=True, text=True)
print(own.stdout.strip())
"#;
    let out = run(Command::new("python3")
        .args(["-c", driver])
        .arg(bin("ctx"))
        .arg(b.socket()))
    .ok();
    // Root's PTY slave: reachable (the limit); the devices: refused; its own terminal
    // reopened by name, and a new one made.
    assert_eq!(out, "opened\nopened\nown-terminal\nnew-terminal\n");
}

/// The broker lists `/dev` as root to build a root context's carve-out: an entry planted
/// there (a symbolic link to a directory the context may read, a directory of its own) is
/// never followed or opened, and only ever takes rights away: the link's target stays
/// readable, the broker's audit log stays refused.
#[test]
fn entries_planted_in_dev_neither_follow_nor_widen_the_carve_out() {
    let config = r#"[contexts.fenced]
user = "root"
cwd = "/"
allow = { uids = [0] }
isolation = { read_only = ["/"] }
"#;
    let b = Broker::start(config);
    let target = b.dir().subdir("readable", 0o755);
    b.dir().file("readable/note", b"still here\n", 0o644);
    let tag = std::process::id();
    let link = format!("/dev/ctx-planted-link-{tag}");
    let dir = format!("/dev/ctx-planted-dir-{tag}");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    fs::create_dir(&dir).unwrap();
    let note = target.join("note");
    let read = b.exec("fenced", &["cat", note.to_str().unwrap()]);
    let audit = b.exec("fenced", &["cat", b.audit_path().to_str().unwrap()]);
    let _ = fs::remove_file(&link);
    let _ = fs::remove_dir(&dir);
    assert_eq!(read.ok(), "still here\n");
    assert_ne!(audit.code(), 0, "the audit log was read: {}", audit.show());
}

/// Found by the ninth attacker review: a uid-0 context owns every root file, the shim
/// and the programs root runs among them, and a lease on one (taken through a read-only
/// descriptor) held root's next exec of it, and every routed launch's exec of the shim, for
/// the lease-break time (45 s), again and again. Refused (EPERM) in every context of the
/// broker's euid, inside a Landlock signal scope too; root outside ctx still may.
#[test]
fn a_root_context_cannot_take_a_lease_on_roots_files() {
    let config = r#"[contexts.plain]
user = "root"
cwd = "/"
allow = { uids = [0] }

[contexts.fenced]
user = "root"
cwd = "/"
allow = { uids = [0] }
isolation = { pid = true, signals = "scoped", read_only = ["/"] }
"#;
    let b = Broker::start(config);
    let file = b.dir().file("roots-binary", b"#!/bin/sh\n", 0o755);
    let py = "import fcntl, os, sys\n\
        fd = os.open(sys.argv[1], os.O_RDONLY)\n\
        try:\n\
        \x20   fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)\n\
        \x20   print('leased')\n\
        \x20   fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)\n\
        except OSError as e:\n\
        \x20   print('refused', e.errno)\n";
    let file = file.to_str().unwrap();
    let local = run(Command::new("python3").args(["-c", py, file])).ok();
    assert_eq!(local, "leased\n", "the control: root itself may");
    for context in ["plain", "fenced"] {
        assert_eq!(
            b.exec(context, &["python3", "-c", py, file]).ok(),
            format!("refused {}\n", libc::EPERM),
            "{context}"
        );
    }
}

/// Found by the eighth attacker review: `O_ASYNC` on a terminal makes the kernel name the
/// terminal's foreground process group the file's owner, with the caller's euid and no pid
/// given (`__tty_fasync`), so `F_SETSIG` + `F_SETFL O_ASYNC` on a root terminal let a
/// uid-0 context SIGKILL that terminal's foreground job at the next key typed: a broker
/// started as one, or, from its own PID namespace, any root process outside it. Refused
/// now (EPERM) wherever no Landlock signal scope holds; the job survives typing.
#[test]
fn o_async_on_a_root_terminal_cannot_signal_its_foreground_job() {
    let config = r#"[contexts.plain]
user = "root"
cwd = "/"
allow = { uids = [0] }

[contexts.own_pids]
user = "root"
cwd = "/"
allow = { uids = [0] }
isolation = { pid = true }
"#;
    let b = Broker::start(config);
    // Run natively: a root terminal whose foreground job is a `sleep` leading its own
    // session, the routed attack on the terminal's path, a key typed while it is armed.
    let driver = r#"
import fcntl, os, subprocess, sys, time, termios
master, slave = os.openpty()
path = os.ttyname(slave)
victim = os.fork()
if victim == 0:
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    os.execv("/bin/sleep", ["sleep", "30"])
time.sleep(0.3)
arm = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NOCTTY)
fcntl.fcntl(fd, 10, 9)
try:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    print('armed', flush=True)
except OSError as e:
    print('refused', e.errno, flush=True)
time.sleep(1)
"""
for context in sys.argv[3:]:
    p = subprocess.Popen([sys.argv[1], "--socket", sys.argv[2], "exec", "--context", context,
                          "--", "python3", "-c", arm, path], stdout=subprocess.PIPE, text=True)
    said = p.stdout.readline().strip()
    os.write(master, b"x\n")
    time.sleep(0.3)
    try:
        alive = os.waitpid(victim, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        alive = False
    p.wait()
    print(context, said, "alive" if alive else "killed")
try:
    os.kill(victim, 9)
except ProcessLookupError:
    pass
"#;
    let out = run(Command::new("python3")
        .args(["-c", driver])
        .arg(bin("ctx"))
        .arg(b.socket())
        .args(["plain", "own_pids"]))
    .ok();
    let eperm = libc::EPERM;
    assert_eq!(
        out,
        format!("plain refused {eperm} alive\nown_pids refused {eperm} alive\n")
    );
    assert_eq!(b.exec("plain", &["echo", "alive"]).ok(), "alive\n");
}

/// Found by the second attacker review: glibc installs its handler for signal 32 (thread
/// cancellation) only on first use, so its default action ended the broker. Now ignored:
/// sent by root itself (kill(2) and as SIGIO), it changes nothing.
#[test]
fn glibcs_reserved_signals_do_not_end_the_broker() {
    let b = Broker::start("[contexts.root0]\nuser = \"root\"\ncwd = \"/\"\n");
    let broker = b.pid().to_string();
    for sig in ["32", "33"] {
        let out = run(Command::new("kill").args([&format!("-{sig}"), &broker]));
        assert_eq!(out.code(), 0, "{}", out.show());
    }
    let out = run(Command::new("python3").args(["-c", AIM_SIGIO, &broker, "32", "33"]));
    assert_eq!(out.code(), 0, "{}", out.show());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.exec("root0", &["echo", "alive"]).ok(), "alive\n");
}

/// The fence behind the filter: the operator's signals arriving as SIGIO (here aimed by
/// a root process outside every context, which the filter does not cover) neither stop
/// nor reload the broker.
#[test]
fn the_operators_signals_delivered_as_sigio_are_dropped() {
    let b = Broker::start("[contexts.root0]\nuser = \"root\"\ncwd = \"/\"\n");
    let broker = b.pid().to_string();
    let out = run(Command::new("python3").args(["-c", AIM_SIGIO, &broker, "15", "2", "1"]));
    assert_eq!(out.code(), 0, "{}", out.show());
    std::thread::sleep(Duration::from_millis(300));
    assert_ne!(broker_state(&b), 'Z');
    assert_eq!(b.exec("root0", &["echo", "alive"]).ok(), "alive\n");
}

/// Finding: the broker sets its socket's mode and group by path, as root. In a directory
/// another user can change, that user can swap the socket for a link to another file (here
/// a root socket of mode 0600) between the bind and the chmod. Such a directory is refused
/// at start, before anything is done there: the planted link's target keeps its mode and
/// group, and so does the socket's directory with mode 0777 that is not sticky.
#[test]
fn a_socket_directory_another_user_can_change_is_refused() {
    let td = TempDir::new();
    let config = td.file(
        "contexts.toml",
        b"[broker]\nsocket_mode = \"0666\"\nsocket_group = \"ctx\"\n\n[contexts.u]\nuser = \"ctx-user\"\ncwd = \"/\"\n",
        0o644,
    );
    // A root socket no one else may use.
    let victim_dir = td.subdir("victim", 0o755);
    let victim = victim_dir.join("root.sock");
    let _listening = std::os::unix::net::UnixListener::bind(&victim).unwrap();
    fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let alices = td.subdir("alices", 0o755);
    let alice = user(ALICE);
    nix::unistd::chown(
        &alices,
        Some(nix::unistd::Uid::from_raw(alice.uid)),
        Some(nix::unistd::Gid::from_raw(alice.gid)),
    )
    .unwrap();
    std::os::unix::fs::symlink(&victim, alices.join("broker.sock")).unwrap();
    let open = td.subdir("open", 0o777);
    fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    for (socket, why) in [
        (
            alices.join("broker.sock"),
            format!("it belongs to uid {}", alice.uid),
        ),
        (
            open.join("broker.sock"),
            "its mode 0777 lets its group or others change it".to_string(),
        ),
    ] {
        let out = run_with(
            Command::new(bin("ctx-broker"))
                .arg("--config")
                .arg(&config)
                .arg("--socket")
                .arg(&socket)
                .arg("--state-dir")
                .arg(td.path().join("state"))
                .arg("--audit-log")
                .arg(td.path().join("audit.jsonl")),
            None,
            Duration::from_secs(20),
        );
        assert_ne!(out.status.code(), Some(0), "{}", out.show());
        assert!(out.stderr_str().contains("is not safe"), "{}", out.show());
        assert!(out.stderr_str().contains(&why), "{}", out.show());
        assert!(!open.join("broker.sock").exists(), "nothing is bound there");
    }
    let meta = fs::metadata(&victim).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        meta.mode() & 0o777,
        0o600,
        "the link's target kept its mode"
    );
    assert_eq!(meta.gid(), 0, "the link's target kept its group");
}

/// The third attacker review: a process of a uid-0 context is root by its uid, but not the
/// operator. Through the socket it could enter any context that lets root in (the default
/// rule: every context's secrets), reload, kill and list every context's launches, and
/// claim another context's reserved port. Now it is a party like any other: it enters
/// itself and what names it in `allow.contexts`, and sees and signals only its own.
#[test]
fn a_uid0_contexts_process_is_not_the_operator() {
    let (owned, spare) = ctx_tests::isolation::free_ports();
    let config = format!(
        r#"[broker]
socket_mode = "0666"
reserved_ports = [{owned}, {spare}]
port_owners = {{ {owned} = "alice" }}

[contexts.rootc]
user = "root"
cwd = "/"
allow = {{ uids = [0] }}

[contexts.alice]
user = "{ALICE}"
cwd = "/"
env = {{ CONTEXT_SECRET = "alice-key" }}
allow = {{ uids = [0] }}

[contexts.namer]
user = "{BOB}"
cwd = "/"
allow = {{ contexts = ["rootc"] }}
"#
    );
    let b = Broker::start(&config);
    // A launch of the operator's, which the context must neither see nor signal.
    let (victim, victim_pid, victim_id, mark) = operators_sleep(&b, "alice", "900");
    let ctx = format!("{} --socket {}", bin("ctx").display(), b.socket().display());
    let script = format!(
        "{ctx} exec --context alice -- env; echo enter-alice=$?; \
         {ctx} exec --context rootc -- true; echo enter-itself=$?; \
         {ctx} exec --context namer -- true; echo enter-named=$?; \
         {ctx} exec --context namer --listen-port {owned} -- true; echo alices-port=$?; \
         {ctx} exec --context namer --listen-port {spare} -- true; echo spare-port=$?; \
         {ctx} reload; echo reload=$?; \
         {ctx} kill --context alice; echo kill-alice=$?; \
         {ctx} kill {victim_id}; echo kill-id=$?; \
         {ctx} ps; {ctx} contexts"
    );
    let out = b.exec("rootc", &["sh", "-c", &script]);
    let text = format!("{}{}", out.stdout_str(), out.stderr_str());
    for (line, why) in [
        ("enter-alice=125", "entered a context that lets root in"),
        ("enter-itself=0", "could not enter its own context"),
        ("enter-named=0", "could not enter a context naming it"),
        ("alices-port=125", "claimed another context's reserved port"),
        ("spare-port=125", "claimed a reserved port with no owner"),
        ("kill-alice=125", "signalled another context's launches"),
        ("kill-id=125", "signalled the operator's launch"),
    ] {
        assert!(text.contains(line), "{why}: {text}");
    }
    assert!(!text.contains("alice-key"), "read alice's secret: {text}");
    assert!(!text.contains("reload=0"), "reloaded the broker: {text}");
    assert!(
        !text.contains(&mark),
        "listed the operator's launch: {text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.split_whitespace().next() == Some("alice")),
        "listed a context it may not enter: {text}"
    );
    assert!(
        fs::read_to_string(format!("/proc/{victim_pid}/comm")).is_ok_and(|c| c.trim() == "sleep"),
        "the operator's launch was killed: {text}"
    );
    drop(victim);
}

/// The third attacker review: a context's `ctx sh` state is its uid's. When the operator
/// gives the context another user, a slot the old uid left (newer than any, world
/// readable) was loaded by the new uid's next command and ran as the new uid, with its
/// credentials; the directory changed hands but kept the old uid's files. Now the old
/// directory becomes root's and moves out of reach whole (a clean-up entry by entry could
/// be stopped by what was planted, or kept busy), and the session starts afresh.
#[test]
fn shell_state_left_by_a_contexts_old_user_never_runs_as_its_new_one() {
    let config = |who: &str| {
        format!(
            r#"[broker]
socket_mode = "0666"

[contexts.dev]
user = "{who}"
cwd = "/"
env = {{ DEV_TOKEN = "token-of-{who}" }}
allow = {{ uids = [0] }}
"#
        )
    };
    let b = Broker::start(&config(ALICE));
    run(&mut b.ctx(["sh", "--context", "dev", "KEPT=1"])).ok();
    let dir = b.dir().path().join("state/shells/dev");
    // What the old uid can write there: a slot newer than any the broker made, running
    // a command at load, and a link where the next save would go.
    let alice = user(ALICE);
    let planted = dir.join("default.bash.1");
    fs::write(
        &planted,
        "echo PLANTED-RAN-AS-$(id -u)-$DEV_TOKEN\n: ctx-sh-end 999999\n",
    )
    .unwrap();
    let link = dir.join("default.bash.tmp-link");
    std::os::unix::fs::symlink("/etc/shadow", &link).unwrap();
    // The slot the next save writes, as a link to a file the new uid may write: the save
    // would go there, where the old uid reads it.
    let bob = user(BOB);
    let out_dir = TempDir::new();
    let lure = out_dir.file("lure", b"untouched\n", 0o666);
    std::os::unix::fs::chown(&lure, Some(bob.uid), Some(bob.gid)).unwrap();
    let slot = dir.join("default.bash");
    fs::remove_file(&slot).unwrap();
    std::os::unix::fs::symlink(&lure, &slot).unwrap();
    // Directories in the way of whatever name the clean-up might rename them to, and
    // ones it must rename: none may stop it.
    let mut planted_dirs = Vec::new();
    for i in 0..4 {
        for name in [
            format!(".previous-owner.{}.{i}", b.pid()),
            format!("full{i}"),
        ] {
            let d = dir.join(name);
            fs::create_dir(&d).unwrap();
            fs::write(d.join("x"), "x").unwrap();
            planted_dirs.push(d);
        }
    }
    for p in planted_dirs
        .iter()
        .flat_map(|d| [d.clone(), d.join("x")])
        .chain([planted.clone(), link.clone(), slot.clone()])
    {
        nix::unistd::fchownat(
            None,
            &p,
            Some(nix::unistd::Uid::from_raw(alice.uid)),
            Some(nix::unistd::Gid::from_raw(alice.gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
    fs::set_permissions(
        &planted,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    fs::write(b.config_path(), config(BOB)).unwrap();
    run(&mut b.ctx(["reload"])).ok();
    let out = run(&mut b.ctx([
        "sh",
        "--context",
        "dev",
        "echo uid=$(id -u) kept=${KEPT-no}",
    ]));
    let text = out.ok();
    assert!(
        !text.contains("PLANTED"),
        "the old user's state ran: {text}"
    );
    assert_eq!(text.trim(), format!("uid={} kept=no", bob.uid));
    assert_eq!(
        fs::read_to_string(&lure).unwrap(),
        "untouched\n",
        "saved through a link"
    );
    // Only directories are left of the old user's, renamed out of every slot's way.
    let left: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let meta = e.path().symlink_metadata().unwrap();
            std::os::unix::fs::MetadataExt::uid(&meta) != bob.uid
                && !(meta.is_dir()
                    && e.file_name()
                        .to_string_lossy()
                        .starts_with(".previous-owner."))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.is_empty(),
        "the old user's entries are still there: {left:?}"
    );
    // All of it moved, whole and in one step, out of every context's reach: root's.
    let quarantine = b.dir().path().join("state/shells/@previous-owners");
    let moved: Vec<_> = fs::read_dir(&quarantine)
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    let meta = moved[0].path().symlink_metadata().unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    assert!(moved[0].path().join("default.bash.1").exists());
    for d in [&quarantine, &moved[0].path()] {
        let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(d).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o700, "{}", d.display());
    }
    // The new user's own state carries on as ever.
    run(&mut b.ctx(["sh", "--context", "dev", "NEW=2"])).ok();
    let out = run(&mut b.ctx(["sh", "--context", "dev", "echo new=$NEW"]));
    assert_eq!(out.ok().trim(), "new=2");
}

/// What the wrapper of `ctx sh` loads and where it saves, whatever lies in its directory:
/// a slot its uid does not own is never loaded, and a slot that is a link is neither
/// loaded nor written through (a hand-over that moves the old owner's directory away is
/// the first line; this is the second).
#[test]
fn a_session_slot_its_uid_does_not_own_or_a_link_is_never_loaded_or_written() {
    let config = format!(
        r#"[broker]
socket_mode = "0666"

[contexts.dev]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
"#
    );
    let b = Broker::start(&config);
    run(&mut b.ctx(["sh", "--context", "dev", "KEPT=1"])).ok();
    let dir = b.dir().path().join("state/shells/dev");
    let alice = user(ALICE);
    let planted = "echo PLANTED\n: ctx-sh-end 999999\n";
    // Newer than any slot, not the session's uid's.
    let slot = dir.join("default.bash.1");
    fs::write(&slot, planted).unwrap();
    let out = run(&mut b.ctx(["sh", "--context", "dev", "echo kept=$KEPT"]));
    assert_eq!(out.ok().trim(), "kept=1", "another uid's slot was loaded");
    // A link to a file of the session's uid: not loaded, and the next save goes nowhere
    // through it.
    fs::remove_file(&slot).unwrap();
    let target = dir.join("target");
    fs::write(&target, planted).unwrap();
    std::os::unix::fs::chown(&target, Some(alice.uid), Some(alice.gid)).unwrap();
    std::os::unix::fs::symlink(&target, &slot).unwrap();
    for _ in 0..2 {
        let out = run(&mut b.ctx(["sh", "--context", "dev", "echo kept=$KEPT"]));
        assert_eq!(out.ok().trim(), "kept=1", "a linked slot was loaded");
    }
    assert_eq!(
        fs::read_to_string(&target).unwrap(),
        planted,
        "saved through a link"
    );
}

/// Found by the eleventh attacker review: the broker listed the directories on the way to
/// a `no_access` path, then opened each entry it had listed again by name, as root,
/// following symlinks, to make its rule. A user who can write such a directory swapped an
/// entry for a link (`renameat2(RENAME_EXCHANGE)`) between the two, and the rule landed on
/// the link's target: a user allowed into a fenced root context wrote a root-only
/// directory and read the hidden path within a dozen launches (each rebuild of the
/// ruleset, which a `no_access` path appearing forces, is a try). Now every entry is opened
/// once from its directory's descriptor without following links, and the rule is made on
/// that descriptor. The same race run for 60 launches: nothing written, nothing read.
#[test]
fn a_link_swapped_in_while_rules_are_built_widens_nothing() {
    let alice = user(ALICE);
    let dir = TempDir::new();
    let rw = dir.subdir("rw", 0o1777);
    let secret = dir.subdir("rw/secret", 0o755);
    dir.file("rw/secret/s.txt", b"hidden-42\n", 0o644);
    let rootonly = dir.subdir("rootonly", 0o755);
    let maybe = rw.join("maybe");
    let config = format!(
        r#"[broker]
socket_mode = "0666"

[contexts.fenced]
user = "root"
cwd = "/"
allow = {{ uids = [0, {uid}] }}
isolation = {{ read_only = ["/"], read_write = ["{rw}"], no_access = ["{secret}", "{maybe}"] }}
"#,
        uid = alice.uid,
        rw = rw.display(),
        secret = secret.display(),
        maybe = maybe.display(),
    );
    let b = Broker::start(&config);
    let probe = format!(
        "echo x > {rootonly}/written 2>/dev/null && echo WROTE; cat {secret}/s.txt 2>/dev/null; true",
        rootonly = rootonly.display(),
        secret = secret.display()
    );
    // The control: before any race, the context can do neither.
    assert_eq!(b.exec("fenced", &["sh", "-c", &probe]).ok(), "");
    let race = r#"
import ctypes, os, subprocess, sys, threading
ctx, sock, rw, maybe, target, probe = sys.argv[1:7]
libc = ctypes.CDLL(None, use_errno=True)
x, y = os.path.join(rw, "x").encode(), os.path.join(rw, "y").encode()
os.mkdir(x)
os.symlink(target, y)
stop = False
def swap():
    while not stop:
        libc.renameat2(-100, x, -100, y, 2)
threading.Thread(target=swap, daemon=True).start()
won, ran = None, 0
for i in range(60):
    if os.path.exists(maybe):
        os.rmdir(maybe)
    else:
        os.mkdir(maybe)
    r = subprocess.run([ctx, "--socket", sock, "exec", "--context", "fenced", "--",
                        "sh", "-c", probe + "; echo ran"], capture_output=True, text=True)
    ran += r.stdout.endswith("ran\n")
    if r.stdout.strip() not in ("", "ran"):
        won = f"attempt {i}: {r.stdout.strip()}"
        break
stop = True
print(won or f"none, {ran} ran")
"#;
    for target in [PathBuf::from("/"), rootonly.clone(), secret.clone()] {
        let out = run(alice_racing(race, &b)
            .arg(&rw)
            .arg(&maybe)
            .arg(&target)
            .arg(&probe)
            .current_dir("/"));
        for name in ["x", "y"] {
            let p = rw.join(name);
            let _ = fs::remove_file(&p).or_else(|_| fs::remove_dir(&p));
        }
        // A build that saw a path change fails that launch ("try again"): most run.
        let out = out.ok();
        let ran: u32 = out
            .strip_prefix("none, ")
            .and_then(|r| r.strip_suffix(" ran\n"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "a link to {} swapped in while the rules were built: {out}",
                    target.display()
                )
            });
        assert!(ran >= 40, "only {ran} of 60 launches ran");
    }
    assert!(!rootonly.join("written").exists());
}

/// Found by the eleventh attacker review: a fenced uid-0 context (`read_only = ["/"]`) read
/// another context's `env_files` (root's files, mode 0600: secrets, as the README says),
/// and the audit log's rotated generation (every context's launches), since only the
/// config, the current audit log and the state dir were carved out of its grants. Now
/// every context's env files and `<audit_log>.1` are too.
#[test]
fn a_fenced_root_context_reads_neither_env_files_nor_the_rotated_audit_log() {
    let dir = TempDir::new();
    let secret = dir.file("other.env", b"OTHER_KEY=0ther-s3cret\n", 0o600);
    let config = format!(
        r#"[contexts.other]
user = "{BOB}"
cwd = "/"
env_files = ["{secret}"]

[contexts.fenced]
user = "root"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ read_only = ["/"] }}
"#,
        secret = secret.display()
    );
    let b = Broker::start(&config);
    let rotated = format!("{}.1", b.audit_path().display());
    fs::write(&rotated, "{\"event\":\"exec\",\"argv\":[\"old-launch\"]}\n").unwrap();
    // The rules are built at the context's first launch, with the rotated log there.
    for file in [secret.to_str().unwrap(), &rotated] {
        assert_eq!(
            run(Command::new("test").args(["-r", file])).code(),
            0,
            "the control: root reads {file}"
        );
        let out = b.exec("fenced", &["cat", file]);
        assert_ne!(out.code(), 0, "read {file}: {}", out.show());
        assert!(
            out.stderr_str().contains("Permission denied"),
            "{}",
            out.show()
        );
    }
    // Everything else stays readable.
    assert!(b
        .exec("fenced", &["cat", "/etc/passwd"])
        .ok()
        .contains("root:"));
}

/// Found by the twelfth attacker review, both in how the broker builds a fenced context's
/// Landlock rules. A granted path that its user turned into a symlink to `/` (in a
/// directory the user can write) granted `/`: the rule followed the link. And the build
/// held a descriptor for every entry of a directory on the way to a `no_access` path until
/// the end: a user who filled such a directory (`/tmp`, say) with 21,000 links ran the
/// broker out of descriptors, the context silently lost its grants (`/dev/null` refused),
/// and other launches failed with `EMFILE`. Now a symlink in a granted path counts only
/// where no one but root can change it (else the grant grants nothing, with a warning),
/// and each rule goes into the ruleset as its file is opened.
#[test]
fn a_fenced_contexts_grants_neither_follow_a_users_link_nor_run_the_broker_out_of_files() {
    let dir = TempDir::new();
    let home = dir.subdir("home", 0o1777);
    let rootonly = dir.subdir("rootonly", 0o755);
    let crowded = dir.subdir("crowded", 0o755);
    dir.subdir("crowded/hidden", 0o755);
    for n in 0..3000 {
        dir.file(&format!("crowded/f{n}"), b"x\n", 0o644);
    }
    // ctx-alice's link, in a directory everyone may write.
    let work = home.join("work");
    std::os::unix::fs::symlink("/", &work).unwrap();
    let alice = user(ALICE);
    std::os::unix::fs::lchown(&work, Some(alice.uid), Some(alice.gid)).unwrap();
    let config = format!(
        r#"[contexts.fenced]
user = "root"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ read_only = ["/"], read_write = ["{work}"], no_access = ["{hidden}"] }}
"#,
        work = work.display(),
        hidden = crowded.join("hidden").display(),
    );
    let b = Broker::start_with_files(&config, 1024);
    let crowd = b.exec(
        "fenced",
        &[
            "sh",
            "-c",
            &format!("echo ok > /dev/null && cat {}/f2999", crowded.display()),
        ],
    );
    assert_eq!(crowd.ok(), "x\n", "{}", crowd.show());
    let write = b.exec(
        "fenced",
        &[
            "sh",
            "-c",
            &format!(
                "echo x > {}/written && echo WROTE; true",
                rootonly.display()
            ),
        ],
    );
    assert_eq!(write.stdout_str(), "", "{}", write.show());
    assert!(!rootonly.join("written").exists());
    // And the launches beside it go on.
    assert_eq!(b.exec("fenced", &["true"]).code(), 0);
}

/// Found by the thirteenth attacker review: a symlink in a granted path was followed where
/// only root could change it, but checked by name: a user who owns the directory above
/// swapped the root-owned directory holding the link with one of their own holding a link
/// to a root-only directory (`renameat2` exchange, in a loop) between the check and the
/// link's read, and the fenced root context wrote there (10 launches in 100). Now the
/// path is resolved when the config is loaded and the build follows no link.
#[test]
fn a_granted_links_directory_swapped_during_the_build_widens_nothing() {
    let alice = user(ALICE);
    let dir = TempDir::new();
    let home = dir.subdir("home", 0o755);
    let own = |p: &std::path::Path| {
        std::os::unix::fs::lchown(p, Some(alice.uid), Some(alice.gid)).unwrap()
    };
    own(&home);
    let toolsdir = dir.subdir("toolsdir", 0o777);
    let rootonly = dir.subdir("rootonly", 0o755);
    let tools = dir.subdir("home/tools", 0o755);
    std::os::unix::fs::symlink(&toolsdir, tools.join("current")).unwrap();
    let evil = dir.subdir("home/evil", 0o755);
    own(&evil);
    std::os::unix::fs::symlink(&rootonly, evil.join("current")).unwrap();
    own(&evil.join("current"));
    let hideme = home.join("hideme");
    let config = format!(
        r#"[broker]
socket_mode = "0666"

[contexts.fenced]
user = "root"
cwd = "/"
allow = {{ uids = [0, {uid}] }}
isolation = {{ read_only = ["/"], read_write = ["{granted}"], no_access = ["{hideme}"] }}
"#,
        uid = alice.uid,
        granted = tools.join("current").display(),
        hideme = hideme.display(),
    );
    let b = Broker::start(&config);
    let probe = format!(
        "echo x > {}/written 2>/dev/null && echo WROTE; true",
        rootonly.display()
    );
    // The control: the granted path is writable.
    let control = b.exec(
        "fenced",
        &[
            "sh",
            "-c",
            &format!(
                "echo ok > {}/f && cat {0}/f",
                tools.join("current").display()
            ),
        ],
    );
    assert_eq!(control.ok(), "ok\n");
    let race = r#"
import ctypes, os, subprocess, sys, threading
ctx, sock, a, b, hideme, probe = sys.argv[1:7]
libc = ctypes.CDLL(None, use_errno=True)
stop = False
def swap():
    while not stop:
        libc.renameat2(-100, a.encode(), -100, b.encode(), 2)
threading.Thread(target=swap, daemon=True).start()
won = None
for i in range(80):
    if os.path.exists(hideme):
        os.rmdir(hideme)
    else:
        os.mkdir(hideme)
    r = subprocess.run([ctx, "--socket", sock, "exec", "--context", "fenced", "--",
                        "sh", "-c", probe], capture_output=True, text=True)
    if "WROTE" in r.stdout:
        won = f"attempt {i}"
        break
stop = True
print(won or "none")
"#;
    let out = run(alice_racing(race, &b)
        .arg(&tools)
        .arg(&evil)
        .arg(&hideme)
        .arg(&probe)
        .current_dir("/"));
    assert_eq!(out.ok(), "none\n", "the root-only directory was written");
    assert!(!rootonly.join("written").exists());
}

/// Found by the thirteenth attacker review: a user who filled a directory on the way to a
/// context's `no_access` path with 500,000 entries made each rebuild take 2.6 s on a
/// runtime worker (other users' launches waited up to 5 s) and each launch's Landlock
/// domain hold 35 MB of kernel memory (one rule an entry). Past 16,384 entries in such a
/// directory the launch now fails, naming the directory, and builds run off the workers.
#[test]
fn a_crowded_directory_on_the_way_to_a_denied_path_is_refused_by_name() {
    let dir = TempDir::new();
    let crowded = dir.subdir("crowded", 0o755);
    dir.subdir("crowded/hidden", 0o755);
    for n in 0..16_400 {
        fs::File::create(crowded.join(format!("e{n}"))).unwrap();
    }
    let config = format!(
        r#"[contexts.fenced]
user = "root"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ no_access = ["{hidden}"] }}

[contexts.plain]
user = "root"
cwd = "/"
allow = {{ uids = [0] }}
"#,
        hidden = crowded.join("hidden").display(),
    );
    let b = Broker::start(&config);
    let out = b.exec("fenced", &["true"]);
    assert_ne!(out.code(), 0, "{}", out.show());
    assert!(
        out.stderr_str().contains("more than the 16384")
            && out.stderr_str().contains(crowded.to_str().unwrap()),
        "{}",
        out.show()
    );
    assert_eq!(b.exec("plain", &["true"]).code(), 0);
    // Below the bound it builds.
    fs::remove_file(crowded.join("e0")).unwrap();
    for n in 1..100 {
        fs::remove_file(crowded.join(format!("e{n}"))).unwrap();
    }
    fs::remove_dir(crowded.join("hidden")).unwrap();
    fs::create_dir(crowded.join("hidden")).unwrap();
    assert_eq!(b.exec("fenced", &["true"]).code(), 0);
}

/// Found by the fourteenth attacker review. A uid-0 context owns root's directories and
/// makes root-owned links: one fenced to write only `/tmp` replaced another context's
/// granted directory there with a link to `/` (a link root owns, in a sticky directory
/// root owns, so "trusted"), and at the next rebuild that other fenced context wrote
/// `/etc`. And a user's link at a missing `no_access` path, aimed at `/`, denied
/// everything: every launch of the context failed. Now configured paths are made
/// canonical when the config is loaded and followed through no link at build time: a
/// granted path that became a link grants nothing, a denied path that is a link denies
/// the link.
#[test]
fn links_planted_at_configured_paths_are_not_followed_when_rules_are_built() {
    let alice = user(ALICE);
    let dir = TempDir::new();
    let tmp = dir.subdir("tmp", 0o1777);
    let out = dir.subdir("tmp/out", 0o755);
    let rootonly = dir.subdir("rootonly", 0o755);
    let hidden = tmp.join("hidden");
    let missing = tmp.join("missing");
    let config = format!(
        r#"[broker]
socket_mode = "0666"

[contexts.scratch]
user = "root"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ read_only = ["/"], read_write = ["{tmp}"] }}

[contexts.builder]
user = "root"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ read_only = ["/"], read_write = ["{out}"], no_access = ["{hidden}", "{missing}"] }}
"#,
        tmp = tmp.display(),
        out = out.display(),
        hidden = hidden.display(),
        missing = missing.display(),
    );
    let b = Broker::start(&config);
    let write = format!(
        "echo x > {}/written 2>/dev/null && echo WROTE; true",
        rootonly.display()
    );
    assert_eq!(b.exec("builder", &["sh", "-c", &write]).ok(), "");
    // The fenced uid-0 context plants a root-owned link where the other's grant is.
    let plant = format!(
        "mv {out} {out}.old && ln -s {target} {out} && echo planted",
        out = out.display(),
        target = rootonly.display()
    );
    assert_eq!(b.exec("scratch", &["sh", "-c", &plant]).ok(), "planted\n");
    fs::create_dir(&hidden).unwrap(); // a rebuild
    assert_eq!(b.exec("builder", &["sh", "-c", &write]).ok(), "");
    assert!(!rootonly.join("written").exists());
    // A user's link at a missing no_access path, aimed at `/`: launches go on.
    std::os::unix::fs::symlink("/", &missing).unwrap();
    std::os::unix::fs::lchown(&missing, Some(alice.uid), Some(alice.gid)).unwrap();
    assert_eq!(b.exec("builder", &["cat", "/etc/hostname"]).code(), 0);
}

/// Found by the fifteenth attacker review: a `no_access` path missing at load, under a link
/// only root can change (`/var/run/...`, `/var/lock/...`), was kept as written, and the
/// rules, which follow no link, denied the link only: once the path appeared, a fenced
/// context read it through both names. Now the load resolves such a path as far as it
/// exists and appends the rest.
#[test]
fn a_no_access_path_under_a_root_link_that_appears_after_load_stays_hidden() {
    let dir = TempDir::new();
    let real = dir.subdir("real", 0o755);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let config = format!(
        r#"[contexts.fenced]
user = "root"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ read_only = ["/"], no_access = ["{}"] }}
"#,
        link.join("secret/key").display()
    );
    let b = Broker::start(&config);
    assert_eq!(b.exec("fenced", &["true"]).code(), 0);
    dir.subdir("real/secret", 0o755);
    dir.file("real/secret/key", b"appeared-later\n", 0o644);
    for name in [link.join("secret/key"), real.join("secret/key")] {
        let out = b.exec("fenced", &["cat", name.to_str().unwrap()]);
        assert_ne!(out.code(), 0, "read {}: {}", name.display(), out.show());
    }
}

/// The Python `race` run as ctx-alice from `/`, given `ctx` and `b`'s socket as its first
/// two arguments; the caller adds the rest.
fn alice_racing(race: &str, b: &Broker) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={ALICE}"),
        &format!("--regid={ALICE}"),
        "--init-groups",
        "--",
        "/usr/bin/python3",
        "-c",
        race,
    ])
    .arg(bin("ctx"))
    .arg(b.socket())
    .current_dir("/");
    cmd
}

/// The broker's answers to one interposer-kind launch of `program` (exact, no search)
/// into `context`, spoken directly as a client that skips the hook's own checks would:
/// each reply's kind, with a failure's kind, stage and errno.
fn early_answers(b: &Broker, context: &str, program: &str) -> Vec<String> {
    use ctx_protocol::frame::{decode, encode_vec};
    use ctx_protocol::{ClientKind, Hello, Reply, Request};
    let mut req = raw::exec_request(context, &[b"prog"]);
    req.program = Some(serde_bytes::ByteBuf::from(program.as_bytes().to_vec()));
    let mut bytes = Vec::new();
    encode_vec(&Hello::new(ClientKind::Interposer), &mut bytes).unwrap();
    encode_vec(&Request::Exec(req), &mut bytes).unwrap();
    let null = fs::File::open("/dev/null").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&null);
    let mut s = raw::send_opening(&b.socket(), &bytes, &[fd, fd, fd]);
    let (frames, closed) = raw::read_until_close(&mut s, Duration::from_secs(10));
    assert!(closed, "the broker answered {program} and closed");
    frames
        .iter()
        .map(|f| match decode::<Reply>(f) {
            Ok(Reply::Hello { .. }) => "hello".to_string(),
            Ok(Reply::Accepted) => "accepted".to_string(),
            Ok(Reply::ExecFailed(e)) => format!("failed {:?} {:?} {}", e.kind, e.stage, e.errno),
            Ok(Reply::Exited { status, .. }) => format!("exited {status:?}"),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("undecodable {e}"),
        })
        .collect()
}

/// Found by the tenth session's review (helper-84): the early exec check behind
/// `Reply::Accepted` looked the caller's path up as root, following the caller's own
/// symlink into a directory neither the caller nor the context's user may enter, so
/// whether it answered `Accepted` told whether a runnable file was there. It must tell
/// nothing the context user's own exec would not: the same answers, file or no file.
#[test]
fn the_early_exec_check_tells_no_caller_what_a_private_directory_holds() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let private = dir.subdir("private", 0o700);
    let inner = private.join("inner");
    fs::create_dir(&inner).unwrap();
    fs::set_permissions(&inner, fs::Permissions::from_mode(0o755)).unwrap();
    fs::copy("/bin/true", inner.join("prog")).unwrap();
    fs::write(inner.join("script"), "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(inner.join("script"), fs::Permissions::from_mode(0o755)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&inner, &link).unwrap();
    let b = Broker::start(&standard_config());
    let at = |name: &str| format!("{}/{name}", link.display());

    let absent = early_answers(&b, "alice", &at("absent"));
    assert!(
        absent.iter().any(|a| a.starts_with("failed")) && !absent.contains(&"accepted".into()),
        "{absent:?}"
    );
    for name in ["prog", "script"] {
        let present = early_answers(&b, "alice", &at(name));
        assert_eq!(
            present, absent,
            "{name}: a file there is told apart from none"
        );
    }
    // The same through `..` out of the caller's link, and through a magic link of the
    // broker's own (its `/proc/self/root` is the host's root, as the child's is).
    let dotdot = format!("{}/../inner/prog", link.display());
    assert_eq!(early_answers(&b, "alice", &dotdot), absent, "{dotdot}");
    let magic = format!("/proc/self/root{}", at("prog"));
    let magic_absent = format!("/proc/self/root{}", at("absent"));
    assert_eq!(
        early_answers(&b, "alice", &magic),
        early_answers(&b, "alice", &magic_absent),
        "{magic}"
    );
    // The check still says yes where the context's user may run the program.
    let usual = early_answers(&b, "alice", "/bin/true");
    assert!(usual.contains(&"accepted".into()), "{usual:?}");
}

/// Found by helper-88: a uid-0 context's launch exec'd with the broker's capabilities
/// still in force, so a caller could run (and, through `/proc/self/mem`, read) a program
/// in another user's private directory that the context's capability-less root can
/// neither search nor run from inside. The exec, and the early check, are made without
/// them now: EACCES, as inside the context.
#[test]
fn a_uid0_context_execs_nothing_its_capability_less_root_could_not() {
    let dir = TempDir::new();
    let private = dir.subdir("alice-private", 0o700);
    let prog = private.join("tool");
    fs::copy("/bin/true", &prog).unwrap();
    let alice = user(ALICE);
    for p in [&private, &prog] {
        nix::unistd::chown(
            p,
            Some(nix::unistd::Uid::from_raw(alice.uid)),
            Some(nix::unistd::Gid::from_raw(alice.gid)),
        )
        .unwrap();
    }
    let b = Broker::start(ROOT0);
    // From inside the context, as the reference.
    let inside = b.exec(
        "root0",
        &["sh", "-c", &format!("{}; echo $?", prog.display())],
    );
    assert_eq!(
        inside.stdout_str().trim_end().lines().last(),
        Some("126"),
        "{}",
        inside.show()
    );
    let out = b.exec("root0", &[prog.to_str().unwrap()]);
    assert_eq!(out.code(), 126, "{}", out.show());
    assert!(out.stderr_str().contains("EACCES"), "{}", out.show());
    let early = early_answers(&b, "root0", prog.to_str().unwrap());
    assert_eq!(early, ["hello", "failed PermissionDenied Exec 13"]);
    // Its own files it runs as before.
    assert_eq!(b.exec("root0", &["/bin/true"]).code(), 0);
}

/// Found by helper-88: under filesystem rules the early check (which runs without the
/// context's Landlock domain) read the head of a file the context may not read, and
/// `Accepted` told whether it started like a program. Such contexts get no early answer.
#[test]
fn the_early_check_reads_nothing_a_contexts_filesystem_rules_deny() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let secret = dir.subdir("secret", 0o755);
    fs::copy("/bin/true", secret.join("elf")).unwrap();
    fs::write(secret.join("plain"), "echo not a program\n").unwrap();
    for f in ["elf", "plain"] {
        fs::set_permissions(secret.join(f), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let b = Broker::start(&format!(
        r#"[broker]
socket_mode = "0666"

[contexts.fenced]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ no_access = ["{secret}"] }}
"#,
        secret = secret.display()
    ));
    if landlock_abi() < 1 {
        eprintln!("no Landlock here: skipped");
        return;
    }
    let elf = early_answers(&b, "fenced", &format!("{}/elf", secret.display()));
    let plain = early_answers(&b, "fenced", &format!("{}/plain", secret.display()));
    assert!(!elf.contains(&"accepted".to_string()), "{elf:?}");
    assert_eq!(elf, plain);
}
