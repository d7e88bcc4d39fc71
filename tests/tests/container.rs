//! `ctx-broker --run-in CONTEXT -- CMD...` as a container's PID 1, without Docker:
//! `unshare --pid --fork --mount-proc` starts it as PID 1 of a new PID namespace with its
//! own /proc, which is the situation `docker run` gives an entrypoint. The agent runs in a
//! context that routes its launches; orphans are reaped, signals sent to PID 1 reach the
//! agent, its status is the container's, and nothing outlives it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use ctx_tests::*;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// `platform` (ctx-bob) is where the agent runs; its launches run in `user` (ctx-alice).
fn container_config() -> String {
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.platform]
user = "{BOB}"
cwd = "/tmp"
env = {{ PLATFORM_SECRET = "sk-platform" }}
route_children_to = "user"
allow = {{ uids = [0] }}

[contexts.user]
user = "{ALICE}"
cwd = "inherit"
allow = {{ uids = [0], contexts = ["platform"] }}
"#
    )
}

/// A temp dir holding the config, and where the broker keeps its socket, state and log.
struct Container {
    dir: TempDir,
    /// Processes with this in their argv are the test's own: killed on drop, whatever
    /// happened, and looked for to show nothing outlived the container.
    marker: String,
}

impl Container {
    fn new() -> Container {
        require_root();
        let dir = TempDir::new();
        dir.file("contexts.toml", container_config().as_bytes(), 0o644);
        Container {
            dir,
            marker: unique("ctx-container-"),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("broker.sock")
    }

    /// A file in the temp dir the agent's users can read.
    fn script(&self, name: &str, text: &str) -> String {
        let text = text.replace("MARKER", &self.marker);
        let p = self.dir.file(name, text.as_bytes(), 0o644);
        p.to_str().unwrap().to_string()
    }

    /// The broker's own arguments, then `--run-in platform -- AGENT...`.
    fn broker_args(&self, agent: &[&str]) -> Vec<String> {
        let d = self.dir.path();
        let mut args = vec![
            bin("ctx-broker").to_str().unwrap().to_string(),
            "--config".into(),
            d.join("contexts.toml").to_str().unwrap().into(),
            "--socket".into(),
            self.socket().to_str().unwrap().into(),
            "--state-dir".into(),
            d.join("state").to_str().unwrap().into(),
            "--audit-log".into(),
            d.join("audit.jsonl").to_str().unwrap().into(),
            "--run-in".into(),
            "platform".into(),
            "--".into(),
        ];
        args.extend(agent.iter().map(|s| s.to_string()));
        args
    }

    /// The entrypoint as PID 1 of a new PID namespace; `--kill-child` takes the whole
    /// namespace down with `unshare` if the test kills it.
    fn as_pid1(&self, agent: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
            .args(self.broker_args(agent));
        c
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default()
    }

    fn assert_nothing_left(&self) {
        let left = poll(Duration::from_secs(5), || {
            pids_with_arg(&self.marker).is_empty().then_some(())
        });
        assert!(
            left.is_some(),
            "processes outlived the container: {:?}",
            pids_with_arg(&self.marker)
        );
        assert!(
            !self.socket().exists(),
            "the broker's socket {} is left behind",
            self.socket().display()
        );
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        for pid in pids_with_arg(&self.marker) {
            signal(pid as u32, Signal::SIGKILL);
        }
    }
}

/// The host pid of PID 1 in the namespace `unshare` (pid `unshare`) made: its only child.
fn pid1_of(unshare: u32) -> u32 {
    let found = poll(Duration::from_secs(10), || {
        let text =
            std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).ok()?;
        text.split_whitespace().next()?.parse::<u32>().ok()
    });
    found.expect("unshare's child (PID 1 of the namespace)")
}

/// Starts `cmd` with stdout piped; returns the child once a line with `ready` was printed,
/// and a reader of the rest.
fn start_until_ready(cmd: &mut Command) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the entrypoint");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("ready") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    if rx.recv_timeout(Duration::from_secs(20)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the agent never said ready: {}", reader.join().unwrap());
    }
    (child, reader)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn the_agent_runs_in_its_context_as_pid_1s_child_and_its_status_is_the_containers() {
    let c = Container::new();
    let agent = c.script(
        "agent.py",
        r#"
import os, subprocess
print("pid1", open("/proc/1/cmdline", "rb").read().split(b"\0")[0].decode(), flush=True)
print("agent", os.getuid(), os.environ.get("PLATFORM_SECRET"), flush=True)
env = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
print("child", subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip(),
      "sk-platform" in env, flush=True)
os._exit(7)
"#,
    );
    let started = Instant::now();
    let out = run(&mut c.as_pid1(&["/usr/bin/python3", &agent]));
    assert_eq!(out.code(), 7, "{}", out.show());
    assert_eq!(
        out.stdout_str(),
        format!(
            "pid1 {}\nagent {} sk-platform\nchild {} False\n",
            bin("ctx-broker").display(),
            user(BOB).uid,
            user(ALICE).uid
        ),
        "{}",
        out.show()
    );
    // The agent's launches went through the broker, from the platform context.
    let audit = c.audit();
    assert!(
        audit.contains(r#""context":"user""#) && audit.contains(r#""context":"platform""#),
        "{audit}"
    );
    c.assert_nothing_left();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the container took {:?} to stop after its agent",
        started.elapsed()
    );
}

#[test]
fn orphans_reparented_to_pid_1_are_reaped() {
    let c = Container::new();
    // Two kinds of orphan: a routed shell's background child (in `user`), and a
    // grandchild the agent forks itself (in `platform`); each outlives its parent, is
    // handed to PID 1, and then exits.
    let agent = c.script(
        "agent.py",
        r#"
import os, time
os.system("(sleep 0.3 &) ; true")
for _ in range(3):
    parent = os.fork()
    if parent == 0:
        if os.fork() == 0:
            time.sleep(0.2)
            print("orphan's parent", os.getppid(), flush=True)
            os._exit(0)
        os._exit(0)
    os.waitpid(parent, 0)
time.sleep(1.5)
zombies = []
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            stat = open(f"/proc/{p}/stat").read()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            zombies.append(stat)
print("zombies", zombies, flush=True)
"#,
    );
    let out = run(&mut c.as_pid1(&["/usr/bin/python3", &agent]));
    assert_eq!(out.code(), 0, "{}", out.show());
    assert_eq!(
        out.stdout_str(),
        "orphan's parent 1\n".repeat(3) + "zombies []\n",
        "{}",
        out.show()
    );
    c.assert_nothing_left();
}

#[test]
fn sigterm_to_pid_1_reaches_the_agent_and_its_status_comes_back() {
    let c = Container::new();
    let agent = c.script(
        "agent.py",
        r#"
import os, signal, time
def term(sig, frame):
    # Not print: the signal may land while the print of "ready" still holds stdout.
    os.write(1, b"agent got SIGTERM\n")
    os._exit(42)
signal.signal(signal.SIGTERM, term)
print("ready MARKER", flush=True)
while True:
    time.sleep(1)
"#,
    );
    let (mut child, reader) = start_until_ready(&mut c.as_pid1(&["/usr/bin/python3", &agent]));
    signal(pid1_of(child.id()), Signal::SIGTERM);
    let status = wait_deadline(&mut child, Duration::from_secs(20)).expect("container stops");
    let text = reader.join().unwrap();
    assert_eq!(status.code(), Some(42), "{text}");
    assert!(text.contains("agent got SIGTERM"), "{text}");
    c.assert_nothing_left();
}

#[test]
fn an_agent_killed_by_sigint_sent_to_pid_1_gives_128_plus_the_signal() {
    let c = Container::new();
    let (mut child, reader) = start_until_ready(&mut c.as_pid1(&[
        "/bin/sh",
        "-c",
        "echo ready; exec sleep 1000",
        &c.marker,
    ]));
    signal(pid1_of(child.id()), Signal::SIGINT);
    let status = wait_deadline(&mut child, Duration::from_secs(20)).expect("container stops");
    let _ = reader.join();
    assert_eq!(status.code(), Some(128 + libc::SIGINT));
    c.assert_nothing_left();
}

#[test]
fn what_the_agent_leaves_running_is_stopped_when_it_exits() {
    let c = Container::new();
    // A routed process left running, a routed one in a session of its own, and a forked
    // copy of the agent itself: all carry the marker in their argv.
    let agent = c.script(
        "agent.py",
        r#"
import os, subprocess, sys
subprocess.Popen(["sleep", "1000", "MARKER"])
subprocess.Popen(["setsid", "sleep", "1000", "MARKER"])
if os.fork() == 0:
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(1000)", "MARKER"])
print("left three behind", flush=True)
"#,
    );
    let started = Instant::now();
    let out = run(&mut c.as_pid1(&["/usr/bin/python3", &agent]));
    assert_eq!(out.code(), 0, "{}", out.show());
    assert_eq!(out.stdout_str(), "left three behind\n", "{}", out.show());
    c.assert_nothing_left();
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn not_as_pid_1_it_still_reaps_passes_the_status_and_leaves_nothing() {
    // Run by hand (or under `docker run --init`): a child subreaper for its own tree.
    let c = Container::new();
    let agent = c.script(
        "agent.sh",
        "sleep 1000 MARKER &\n(sleep 1000 MARKER &)\necho routed $(id -u)\nexit 3\n",
    );
    let args = c.broker_args(&["/bin/sh", &agent]);
    let out = run(Command::new(&args[0]).args(&args[1..]));
    assert_eq!(out.code(), 3, "{}", out.show());
    assert_eq!(
        out.stdout_str(),
        format!("routed {}\n", user(ALICE).uid),
        "{}",
        out.show()
    );
    c.assert_nothing_left();
}

/// Under `docker run --security-opt no-new-privileges` (Kubernetes' "restricted" pods
/// too) every process has `no_new_privs`, the init's agent client too: it is root outside
/// every context all the same, and gets in (helper-62: refused as a confined root once).
#[test]
fn an_agent_under_no_new_privileges_gets_into_its_context() {
    let c = Container::new();
    let agent = c.script("agent.sh", "echo routed $(id -u)\n");
    let args = c.broker_args(&["/bin/sh", &agent]);
    let out = run(Command::new("setpriv")
        .arg("--no-new-privs")
        .arg("--")
        .args(&args));
    assert_eq!(out.code(), 0, "{}", out.show());
    assert_eq!(
        out.stdout_str(),
        format!("routed {}\n", user(ALICE).uid),
        "{}",
        out.show()
    );
    c.assert_nothing_left();
}

#[test]
fn a_broker_that_cannot_start_fails_the_container_without_running_the_agent() {
    let c = Container::new();
    c.dir.file(
        "contexts.toml",
        b"[contexts.platform]\nuser = \"ctx-no-such-user-anywhere\"\n",
        0o644,
    );
    let out = run(&mut c.as_pid1(&["/bin/echo", "agent ran"]));
    assert_eq!(out.code(), 125, "{}", out.show());
    assert!(!out.stdout_str().contains("agent ran"), "{}", out.show());
    assert!(
        out.stderr_str().contains("ctx-no-such-user-anywhere"),
        "the broker's own reason: {}",
        out.show()
    );
}

#[test]
fn the_example_dockerfile_runs_the_example_agent_routed() {
    // What examples/Dockerfile starts, outside Docker: its ENTRYPOINT and CMD on its
    // contexts.toml, with the image's paths (/etc/ctx/platform.env, /workspace) moved to a
    // temp dir. The users are the shipped contexts' (scripts/test.sh makes ctx-agent a
    // member of ctx, as the Dockerfile does).
    let c = Container::new();
    let root = repo_root();
    let dockerfile = std::fs::read_to_string(root.join("examples/Dockerfile")).unwrap();
    let entrypoint = dockerfile
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT "))
        .expect("ENTRYPOINT in examples/Dockerfile");
    assert_eq!(
        entrypoint,
        r#"ENTRYPOINT ["ctx-broker", "--config", "/etc/ctx/contexts.toml", "--run-in", "platform", "--"]"#
    );
    assert!(dockerfile.contains(r#"CMD ["python3", "-u", "/opt/agent/agent.py"]"#));
    let env = c.dir.file(
        "platform.env",
        b"ANTHROPIC_API_KEY=sk-from-the-secret\n",
        0o600,
    );
    let workspace = c.dir.subdir("workspace", 0o1777);
    let config = std::fs::read_to_string(root.join("examples/container/contexts.toml"))
        .unwrap()
        .replace("/etc/ctx/platform.env", env.to_str().unwrap())
        .replace(
            "\"/workspace\"",
            &format!("{:?}", workspace.to_str().unwrap()),
        )
        .replace("reserved_ports = [8080]", "");
    c.dir.file("contexts.toml", config.as_bytes(), 0o644);
    let agent = root.join("examples/agent.py");
    let out = run(&mut c.as_pid1(&["/usr/bin/python3", "-u", agent.to_str().unwrap()]));
    assert_eq!(out.code(), 0, "{}", out.show());
    let text = out.stdout_str();
    let agent_uid = user("ctx-agent").uid;
    let user_uid = user("ctx-user").uid;
    for needle in [
        format!("uid {agent_uid} holds ANTHROPIC_API_KEY=sk-from-the-secret"),
        format!("child: uid={user_uid} user=ctx-user"),
        "child: ANTHROPIC_API_KEY=<not visible>".to_string(),
        "child: AWS_ACCESS_KEY_ID=AKIAEXAMPLE".to_string(),
    ] {
        assert!(
            text.contains(&needle),
            "{needle:?} missing:\n{}",
            out.show()
        );
    }
    assert!(
        !out.stderr_str().contains("cannot work"),
        "ctx-agent reaches the socket through group ctx: {}",
        out.show()
    );
    c.assert_nothing_left();
}

/// `platform` routes its launches to `root`: a uid-0 context, whose processes run as root
/// but hold no capability.
fn root_routed_config() -> String {
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.platform]
user = "{BOB}"
cwd = "/tmp"
route_children_to = "root"
allow = {{ uids = [0] }}

[contexts.root]
user = "root"
cwd = "/"
allow = {{ uids = [0], contexts = ["platform"] }}
"#
    )
}

/// A routed uid-0 process sends HUP, TERM, INT, USR1 and KILL to the init (PID 1, or the
/// init's own pid when it is not PID 1): none of them reloads or stops the broker or reaches
/// the agent, which goes on and exits with its own status.
fn routed_root_process_signals_the_init(as_pid1: bool) {
    let c = Container::new();
    c.dir
        .file("contexts.toml", root_routed_config().as_bytes(), 0o644);
    let killer = c.script(
        "killer.py",
        r#"
import os, signal, time
def argv(p):
    try:
        return open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return []
def ppid(p):
    return int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
# The init and the broker it forked share a command line; the init is the outer one.
ours = [int(p) for p in os.listdir("/proc") if p.isdigit()
        and argv(p)[:1] != [] and argv(p)[0].endswith(b"ctx-broker") and b"MARKER" in argv(p)]
init = [p for p in ours if ppid(p) not in ours][0]
done = [f"uid={os.getuid()} init={'1' if init == 1 else 'pid'}"]
for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGKILL):
    try:
        os.kill(init, sig)
        done.append(f"{sig.name}:sent")
    except PermissionError:
        done.append(f"{sig.name}:refused")
    time.sleep(0.3)
time.sleep(1)
print(" ".join(done), flush=True)
"#,
    );
    let agent = c.script(
        "agent.py",
        &format!(
            r#"
import subprocess, sys
out = subprocess.run([sys.executable, "{killer}"], capture_output=True, text=True)
print("killer", out.returncode, out.stdout.strip(), flush=True)
if out.stderr:
    print("killer's stderr", out.stderr[-500:], flush=True)
after = subprocess.run(["id", "-u"], capture_output=True, text=True)
print("after", after.returncode, after.stdout.strip(), flush=True)
sys.exit(7)
"#
        ),
    );
    let agent_cmd = ["/usr/bin/python3", agent.as_str(), c.marker.as_str()];
    let out = if as_pid1 {
        run(&mut c.as_pid1(&agent_cmd))
    } else {
        let args = c.broker_args(&agent_cmd);
        run(Command::new(&args[0]).args(&args[1..]))
    };
    assert_eq!(out.code(), 7, "{}", out.show());
    let where_ = if as_pid1 { "1" } else { "pid" };
    assert_eq!(
        out.stdout_str(),
        format!(
            "killer 0 uid=0 init={where_} SIGHUP:refused SIGTERM:refused SIGINT:refused \
             SIGUSR1:refused SIGKILL:refused\nafter 0 0\n"
        ),
        "{}",
        out.show()
    );
    let audit = c.audit();
    assert!(!audit.contains(r#""event":"reload""#), "reloaded: {audit}");
    assert!(
        !out.stderr_str().contains("configuration reloaded"),
        "{}",
        out.show()
    );
    c.assert_nothing_left();
}

#[test]
fn signals_from_a_routed_uid_0_process_to_pid_1_are_refused() {
    routed_root_process_signals_the_init(true);
}

#[test]
fn signals_from_a_routed_uid_0_process_to_the_init_are_refused_when_not_pid_1() {
    routed_root_process_signals_the_init(false);
}

#[test]
fn not_as_pid_1_sigterm_from_root_reaches_the_agent() {
    // Root with CAP_KILL (an operator's kill, `docker exec`, an outer init) is still obeyed.
    let c = Container::new();
    let agent = c.script(
        "agent.py",
        r#"
import os, signal, time
def term(sig, frame):
    os.write(1, b"agent got SIGTERM\n")
    os._exit(42)
signal.signal(signal.SIGTERM, term)
print("ready MARKER", flush=True)
while True:
    time.sleep(1)
"#,
    );
    let args = c.broker_args(&["/usr/bin/python3", &agent]);
    let (mut child, reader) = start_until_ready(Command::new(&args[0]).args(&args[1..]));
    signal(child.id(), Signal::SIGTERM);
    let status = wait_deadline(&mut child, Duration::from_secs(20)).expect("init stops");
    let text = reader.join().unwrap();
    assert_eq!(status.code(), Some(42), "{text}");
    assert!(text.contains("agent got SIGTERM"), "{text}");
    c.assert_nothing_left();
}

/// Whether `.dockerignore`'s `pattern` leaves `path` (relative to the build context) out.
/// Only the forms the file uses are understood, which the test below holds it to: a path
/// (with what lies beneath it), `**/NAME` (a component named so, anywhere) and `**/*.EXT`.
fn docker_ignores(pattern: &str, path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    match pattern.strip_prefix("**/") {
        Some(ext) if ext.starts_with("*.") => path.ends_with(&ext[1..]),
        Some(name) => parts.contains(&name),
        None => path == pattern || path.starts_with(&format!("{pattern}/")),
    }
}

/// `docker build -f examples/Dockerfile .` sends the repository root as its context: what
/// the image builds from is in it, `target/` (gigabytes) and `.git` are not.
#[test]
fn the_docker_build_context_holds_the_sources_and_not_target_or_git() {
    let root = repo_root();
    let dockerfile = std::fs::read_to_string(root.join("examples/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("docker build -f examples/Dockerfile -t ctx-agent ."),
        "the context is the repository root"
    );
    let ignore = std::fs::read_to_string(root.join(".dockerignore"))
        .expect(".dockerignore at the repository root, beside the build context");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for p in &patterns {
        let plain = !p.contains(['*', '?', '[', '!']);
        let named = p
            .strip_prefix("**/")
            .is_some_and(|rest| !rest.contains(['/', '?', '[']) && !rest[1..].contains('*'));
        assert!(
            plain || named,
            "{p:?}: a form this test does not model; extend docker_ignores"
        );
    }
    let ignored = |path: &str| patterns.iter().any(|p| docker_ignores(p, path));
    for out in [
        ".git",
        ".git/HEAD",
        "target",
        "target/release/ctx-broker",
        "fuzz/target/x",
        "broker.log",
    ] {
        assert!(ignored(out), "{out} is sent to the Docker daemon");
    }
    // What the build stage compiles and installs, and what the image copies in.
    let mut needed = vec![
        "Cargo.toml".to_string(),
        "Cargo.lock".into(),
        "contexts.toml".into(),
        "scripts/install.sh".into(),
        "scripts/ctx-broker.service".into(),
        "scripts/ctx-broker.socket".into(),
        "interposer/src/preload.c".into(),
    ];
    for line in dockerfile.lines() {
        if let Some(args) = line.strip_prefix("COPY ") {
            if args.starts_with("--from") {
                continue;
            }
            let words: Vec<&str> = args.split_whitespace().collect();
            needed.extend(words[..words.len() - 1].iter().map(|s| s.to_string()));
        }
    }
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = manifest
        .lines()
        .find_map(|l| l.strip_prefix("members = "))
        .expect("the workspace's members line");
    for member in members.split('"').skip(1).step_by(2) {
        needed.push(format!("{member}/Cargo.toml"));
        needed.push(format!("{member}/src"));
    }
    for path in &needed {
        if path == "." {
            continue;
        }
        assert!(root.join(path).exists(), "{path}: not in the repository");
        assert!(
            !ignored(path),
            "{path} is needed by the image but left out of its context"
        );
    }
}

/// `ctx-broker --stop` (what the package's removal runs where no systemd is) inside a PID
/// namespace, as in a container: the broker on the socket and another one of the same
/// file stop; a broker of another file (another install) and a process of another program
/// that holds a socket are left running.
#[test]
fn stop_ends_the_brokers_of_its_own_file_and_nothing_else() {
    require_root();
    let td = TempDir::new();
    let d = td.path().display().to_string();
    let config = td.file("contexts.toml", container_config().as_bytes(), 0o644);
    let other = td.subdir("other-install", 0o755).join("ctx-broker");
    std::fs::copy(bin("ctx-broker"), &other).unwrap();
    let script = format!(
        r#"set -u
        B={broker}; CTX={ctx}; D={d}; C={config}; O={other}
        start() {{ "$1" --config "$C" --socket "$D/$2.sock" --state-dir "$D/$2.state" \
                      --audit-log "$D/$2.jsonl" 2>>"$D/$2.err" & }}
        start "$B" a; a=$!
        start "$B" b; b=$!
        start "$O" c; c=$!
        python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); time.sleep(120)' "$D/d.sock" &
        p=$!
        i=0
        until [ -S "$D/d.sock" ]; do
            i=$((i + 1)); [ $i -lt 200 ] || {{ echo "python never listened"; exit 1; }}
            sleep 0.05
        done
        for s in a b c; do
            i=0
            until "$CTX" --socket "$D/$s.sock" status >/dev/null 2>&1; do
                i=$((i + 1)); [ $i -lt 200 ] || {{ echo "broker $s never answered"; exit 1; }}
                sleep 0.05
            done
        done
        "$B" --stop --config "$C" --socket "$D/a.sock"; echo "stop-a $?"
        wait $a; echo "a $?"
        wait $b; echo "b $?"
        "$B" --stop --config "$C" --socket "$D/d.sock"; echo "stop-d $?"
        kill -0 $p && echo "python alive"
        "$CTX" --socket "$D/c.sock" status >/dev/null && echo "other install alive"
        kill -TERM $c $p; wait $c; echo "c $?""#,
        broker = bin("ctx-broker").display(),
        ctx = bin("ctx").display(),
        config = config.display(),
        other = other.display(),
    );
    let out = run_with(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
            .args(["bash", "-c", &script]),
        None,
        Duration::from_secs(120),
    );
    let text = out.show();
    let said = out.stdout_str();
    assert!(
        said.contains(&format!(
            "ctx-broker: stopped the broker on {d}/a.sock (pid "
        )) && said.contains("(this program's file)"),
        "{text}"
    );
    for line in [
        "stop-a 0",
        "a 0",
        "b 0",
        "stop-d 0",
        "python alive",
        "other install alive",
        "c 0",
    ] {
        assert!(said.lines().any(|l| l == line), "{line:?} missing:\n{text}");
    }
    assert!(
        out.stderr_str()
            .contains(&format!("{d}/d.sock is held by pid"))
            && out.stderr_str().contains("not a ctx-broker of"),
        "{text}"
    );
    assert!(!said.contains("killed"), "{text}");
}

/// A broker that stopped accepting (stopped, or wedged) with its queue full, which any
/// user who may connect can fill: `--stop` does not wait on it to accept, and kills it.
#[test]
fn stop_does_not_hang_on_a_broker_whose_queue_is_full() {
    require_root();
    let td = TempDir::new();
    let d = td.path().display().to_string();
    let config = td.file("contexts.toml", container_config().as_bytes(), 0o644);
    let script = format!(
        r#"set -u
        B={broker}; CTX={ctx}; D={d}; C={config}
        "$B" --config "$C" --socket "$D/a.sock" --state-dir "$D/a.state" --audit-log "$D/a.jsonl" 2>>"$D/a.err" &
        a=$!
        i=0
        until "$CTX" --socket "$D/a.sock" status >/dev/null 2>&1; do
            i=$((i + 1)); [ $i -lt 200 ] || {{ echo "broker never answered"; exit 1; }}
            sleep 0.05
        done
        kill -STOP $a
        python3 -c 'import socket, sys, time
held = []
while True:
    c = socket.socket(socket.AF_UNIX); c.setblocking(False)
    try: c.connect(sys.argv[1]); held.append(c)
    except BlockingIOError: break
print("queued", len(held) > 0, flush=True); time.sleep(120)' "$D/a.sock" &
        p=$!
        sleep 1
        "$B" --stop --config "$C" --socket "$D/a.sock"; echo "stop $?"
        wait $a; echo "a $?"
        kill $p"#,
        broker = bin("ctx-broker").display(),
        ctx = bin("ctx").display(),
        config = config.display(),
    );
    let out = run_with(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
            .args(["bash", "-c", &script]),
        None,
        Duration::from_secs(90),
    );
    let said = out.stdout_str();
    for line in ["queued True", "stop 0", "a 137"] {
        assert!(
            said.lines().any(|l| l == line),
            "{line:?} missing:\n{}",
            out.show()
        );
    }
    assert!(
        said.contains("still running 30s after SIGTERM"),
        "{}",
        out.show()
    );
}

/// A uid-0 agent can stop its own client (a root `ctx exec`), which would keep the container
/// up for ever: `docker stop`'s SIGTERM continues the client along with passing the signal
/// on, and the container ends with the agent's status.
#[test]
fn a_root_agent_that_stops_its_client_still_ends_on_sigterm() {
    let c = Container::new();
    c.dir.file(
        "contexts.toml",
        r#"[broker]
socket_mode = "0666"

[contexts.platform]
user = "root"
cwd = "/"
allow = { uids = [0] }
"#
        .as_bytes(),
        0o644,
    );
    let (mut child, reader) = start_until_ready(&mut c.as_pid1(&[
        "sh",
        "-c",
        "pkill -STOP -x ctx; echo ready MARKER; sleep 0.5; exit 5",
    ]));
    std::thread::sleep(Duration::from_secs(1));
    signal(pid1_of(child.id()), Signal::SIGTERM);
    let status = wait_deadline(&mut child, Duration::from_secs(20));
    let text = reader.join().unwrap();
    let status = status.unwrap_or_else(|| panic!("the container did not end: {text}"));
    assert_eq!(status.code(), Some(5), "{text}");
    c.assert_nothing_left();
}

/// A socket path another broker already answers on (a `/run/ctx` shared between
/// containers, a stale instance): the agent never starts on that other broker.
#[test]
fn the_agent_is_not_started_on_another_brokers_socket() {
    let other = Broker::start(&container_config());
    let c = Container::new();
    let d = c.dir.path();
    let out = run_with(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
            .arg(bin("ctx-broker"))
            .arg("--config")
            .arg(d.join("contexts.toml"))
            .arg("--socket")
            .arg(other.socket())
            .arg("--state-dir")
            .arg(d.join("state"))
            .arg("--audit-log")
            .arg(d.join("audit.jsonl"))
            .args(["--run-in", "platform", "--", "sh", "-c", "echo AGENT RAN"]),
        None,
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(125), "{}", out.show());
    assert!(!out.stdout_str().contains("AGENT RAN"), "{}", out.show());
    assert!(
        out.stderr_str().contains("the agent is not started on it"),
        "{}",
        out.show()
    );
}
