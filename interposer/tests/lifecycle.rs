//! The shim's and the broker's lifecycle under stress: a shim killed outright takes its
//! routed process group with it, many concurrent launches from a threaded caller that
//! allocates all the while, and the broker-unreachable policy (`on_broker_down`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Pids of live (non-zombie) processes whose command line is exactly `want` (args
/// joined by spaces).
fn pids_with_cmdline(want: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.trim_end() == want && stat_fields(pid).is_some_and(|(state, _)| state != 'Z') {
            out.push(pid);
        }
    }
    out
}

/// State letter and process group of `pid` from /proc/PID/stat.
fn stat_fields(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is parenthesised and may hold spaces: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Live (non-zombie) members of process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some((state, g)) = stat_fields(pid) {
            if g == pgid && state != 'Z' {
                out.push(pid);
            }
        }
    }
    out
}

#[test]
fn shim_killed_by_sigkill_takes_the_routed_group_and_the_broker_keeps_serving() {
    let b = start_broker();
    // Unique sleep lengths mark the routed processes in /proc.
    let tag = format!("{}", 300_000 + std::process::id() % 100_000);
    let (m1, m2) = (format!("{tag}.25"), format!("{tag}.75"));
    // `env` execs sh, so the routed sh's shim is the very process we hold.
    let mut shim = b
        .cmd(&["env", "sh", "-c", &format!("sleep {m1} & sleep {m2}; :")])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (p1, p2) = loop {
        let (a, c) = (
            pids_with_cmdline(&format!("sleep {m1}")),
            pids_with_cmdline(&format!("sleep {m2}")),
        );
        if let (Some(&a), Some(&c)) = (a.first(), c.first()) {
            break (a, c);
        }
        assert!(Instant::now() < deadline, "the routed sleeps did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let pgid = stat_fields(p1).unwrap().1;
    assert_eq!(stat_fields(p2).unwrap().1, pgid, "one routed process group");
    assert_ne!(pgid, shim.id() as i32, "the routed group is not the shim's");
    let members = group_members(pgid);
    assert!(members.len() >= 3, "sh and two sleeps: {members:?}");
    // The routed processes run as the context's uid, outside the caller's tree.
    let status = std::fs::read_to_string(format!("/proc/{p1}/status")).unwrap();
    assert!(status.contains(&format!("\nUid:\t{}\t", b.uid)), "{status}");

    // SAFETY: kills the shim this test started, by its pid.
    unsafe { libc::kill(shim.id() as i32, libc::SIGKILL) };
    let st = shim.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    let killed_at = Instant::now();
    loop {
        let left = group_members(pgid);
        if left.is_empty() {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(1),
            "routed group {pgid} still has {left:?} a second after the shim died"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("routed group gone {:?} after the shim", killed_at.elapsed());

    // The broker is still up and serving.
    let (state, _) = stat_fields(b.pid() as i32).expect("broker process");
    assert_ne!(state, 'Z', "the broker died");
    let o = b.run(&["env", "sh", "-c", PROBE]);
    assert_eq!(stdout(&o), format!("{}\n", probe_line(&b)));
}

#[test]
fn two_hundred_concurrent_launches_while_threads_allocate() {
    let Some(py) = python() else {
        eprintln!("no system python3; skipped");
        return;
    };
    let b = start_broker();
    let uid = b.uid;
    // 200 launches at once (subprocess: vfork + execve from a threaded program) while four
    // threads build and drop large lists and byte strings, so malloc's locks are busy in
    // every vfork/fork window. Every launch's exit code and output is checked.
    let script = format!(
        r#"
import subprocess, sys, threading
from concurrent.futures import ThreadPoolExecutor
stop = threading.Event()
def churn():
    n = 0
    while not stop.is_set():
        l = [bytes(1000 + (n % 97)) for _ in range(2000)]
        s = b"x" * (1 << 20)
        d = {{i: str(i) * 10 for i in range(5000)}}
        del l, s, d
        n += 1
    return n
churners = [threading.Thread(target=churn) for _ in range(4)]
for t in churners: t.start()
def launch(i):
    r = subprocess.run(["sh", "-c", 'echo "$1 $(id -u) ${{CTX_ONLY}} ${{SECRET:-nosecret}}"; exit $(($1 % 7))', "sh", str(i)],
                       capture_output=True, timeout=120)
    return i, r.returncode, r.stdout, r.stderr
try:
    with ThreadPoolExecutor(200) as ex:
        results = list(ex.map(launch, range(200)))
finally:
    stop.set()
    for t in churners: t.join()
bad = [(i, rc, out, err) for i, rc, out, err in results
       if rc != i % 7 or out != b"%d {uid} context-value nosecret\n" % i or err != b""]
if bad:
    print("bad:", len(bad), bad[:5]); sys.exit(1)
print("ok", len(results))
"#
    );
    let started = Instant::now();
    let mut child = b
        .cmd(&[py, "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a deadlock would hang here, so the test kills it and fails.
    let deadline = started + Duration::from_secs(180);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: kills the caller this test started, by its pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let o = child.wait_with_output().unwrap();
            panic!(
                "deadlock: 200 launches not done in 180 s\n{}",
                String::from_utf8_lossy(&o.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    eprintln!(
        "200 launches in {:?}\nstdout: {}\nstderr: {}",
        started.elapsed(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(stdout(&o), "ok 200\n");
    assert!(o.status.success());
}

/// `ctx run --socket <nowhere> --route-to user [--on-broker-down POLICY] -- ARGV`.
fn ctx_run_unreachable(b: &Broker, policy: Option<&str>, argv: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new(bin_dir().join("ctx"));
    c.arg("--socket")
        .arg(b.dir.join("no-broker-here.sock"))
        .args(["run", "--route-to", "user"]);
    if let Some(p) = policy {
        c.args(["--on-broker-down", p]);
    }
    let o = c
        .arg("--")
        .args(argv)
        .current_dir(&b.dir)
        .env_remove("LD_PRELOAD")
        .env_remove("CTX_ON_BROKER_DOWN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "{policy:?} {argv:?} -> {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `on_broker_down = "local"` for a `posix_spawn` with file actions (the shim's `--spawn`,
/// which then execs the program itself): the program gets the mask the caller asked for,
/// glibc's `SIGRTMIN` (34) included, which musl's `sigprocmask` hides from the old mask the
/// shim restores (as it did before it read the mask from the kernel itself).
#[test]
fn a_local_fallback_keeps_the_blocked_signals_the_caller_asked_for() {
    let b = start_broker();
    let script = "import os\n\
        r, w = os.pipe()\n\
        pid = os.posix_spawn('/bin/grep', ['grep', 'SigBlk', '/proc/self/status'], os.environ,\n\
        \x20   file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)], setsigmask=[34, 35])\n\
        os.close(w)\n\
        print(os.fdopen(r).read().strip(), os.waitpid(pid, 0)[1])\n";
    let local = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .output()
        .unwrap();
    assert_eq!(stdout(&local), "SigBlk:\t0000000600000000 0\n");
    let o = ctx_run_unreachable(&b, Some("local"), &["/usr/bin/python3", "-c", script]);
    assert_eq!(stdout(&o), stdout(&local));
}

#[test]
fn on_broker_down_local_runs_launches_locally_and_fail_is_the_default() {
    let b = start_broker();
    // SAFETY: plain getter.
    let me = unsafe { libc::getuid() };
    let sock = b.dir.join("no-broker-here.sock");
    let marker = b.dir.join("ran-locally");
    let script = format!("id -u; touch {}; echo rc=$?", marker.display());

    // Default (and explicit) fail: nothing runs, one line names the socket.
    for policy in [None, Some("fail")] {
        let o = ctx_run_unreachable(&b, policy, &["bash", "-c", &script]);
        assert_eq!(stdout(&o), "rc=126\n");
        assert!(!marker.exists(), "ran locally under {policy:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!(
                "ctx: cannot route \"id\" to context user: broker at {} unreachable: ENOENT",
                sock.display()
            )),
            "{err}"
        );
    }

    // local: the exec family runs the program here, as the caller, with one line each.
    let o = ctx_run_unreachable(&b, Some("local"), &["bash", "-c", &script]);
    assert_eq!(stdout(&o), format!("{me}\nrc=0\n"));
    assert!(marker.exists());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "ctx: broker at {} unreachable (ENOENT): running \"id\" locally, not in context user (on_broker_down = local)",
            sock.display()
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 2, "one line per launch: {err}");

    // posix_spawn, system and popen go through the shim, which becomes the program; errno
    // and exit status stay those of a local launch.
    if let Some(py) = python() {
        let script = r#"
import os, subprocess
print(subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip())
pid = os.posix_spawnp("sh", ["sh", "-c", "exit 4"], os.environ)
print(os.waitpid(pid, 0)[1] >> 8)
pid = os.posix_spawn("/bin/sh", ["sh", "-c", "kill -TERM $$"], os.environ)
print(os.WTERMSIG(os.waitpid(pid, 0)[1]))
print(os.system("exit 5") >> 8)
print(os.popen("id -u").read().strip())
try:
    os.posix_spawn("./noexec", ["x"], os.environ)
except PermissionError:
    print("EACCES")
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
for kw in [{}, {"setsigmask": {signal.SIGUSR1}}]:
    sys.stdout.flush()
    fa = [(os.POSIX_SPAWN_DUP2, 1, 1)]
    argv = ["grep", "SigBlk", "/proc/self/status"]
    os.waitpid(os.posix_spawnp("grep", argv, os.environ, file_actions=fa, **kw), 0)
"#;
        std::fs::write(b.dir.join("noexec"), "true\n").unwrap();
        let o = ctx_run_unreachable(&b, Some("local"), &[py, "-c", script]);
        // The shim that became the program (file actions) gave it the program's mask, not
        // the relay's.
        let masks = "SigBlk:\t0000000000000800\nSigBlk:\t0000000000000200\n";
        assert_eq!(stdout(&o), format!("{me}\n4\n15\n5\n{me}\nEACCES\n{masks}"));
        assert!(o.status.success());
        let o = ctx_run_unreachable(
            &b,
            None,
            &[py, "-c", "import os; print(os.system('exit 5') >> 8)"],
        );
        // Fail closed: the shell did not run; system() reports it as glibc does when it
        // cannot start the shell (127).
        assert_eq!(stdout(&o), "127\n");
    }

    // A reachable broker still routes under `local`.
    let o = b
        .cmd(&["bash", "-c", &format!("sh -c '{PROBE}'")])
        .env("CTX_ON_BROKER_DOWN", "local")
        .output()
        .unwrap();
    assert_eq!(stdout(&o), format!("{}\n", probe_line(&b)));
}

/// A fork child (not a vfork child) relays a short launch itself, without exec'ing the
/// shim, and hands a launch still running after a few milliseconds to the shim (same pid,
/// same connection): its image becomes ctx-shim, and a signal to it still reaches the
/// routed program.
#[test]
fn a_fork_child_relays_at_first_and_hands_a_long_launch_to_the_shim() {
    let Some(py) = python() else {
        eprintln!("no system python3; skipped");
        return;
    };
    let b = start_broker();
    let script = r#"
import os, signal, sys, time
shim = sys.argv[1]
pid = os.fork()
if pid == 0:
    os.execv("/bin/sleep", ["sleep", "30"])
t0 = time.monotonic()
seen, became = [], None
while time.monotonic() - t0 < 5:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        break
    if not seen or seen[-1] != exe:
        seen.append(exe)
        if exe == shim:
            became = time.monotonic() - t0
            break
    time.sleep(0.0002)
print("caller-first", seen[0] == sys.executable or seen[0] == os.path.realpath(sys.executable))
print("became-shim", became is not None and became >= 0.003)
os.kill(pid, signal.SIGTERM)
_, st = os.waitpid(pid, 0)
print("term", os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGTERM)
"#;
    let shim = bin_dir().join("ctx-shim");
    let o = b.run(&[py, "-c", script, shim.to_str().unwrap()]);
    assert_eq!(
        stdout(&o),
        "caller-first True\nbecame-shim True\nterm True\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A routed program that dumps core: the caller's waitpid sees the core flag, and the core
/// file that the fork relay's process leaves is the shim's, never a copy of the caller's
/// memory (which holds the agent's secrets).
#[test]
fn a_core_dump_is_reported_without_dumping_the_callers_memory() {
    let Some(py) = python() else {
        eprintln!("no system python3; skipped");
        return;
    };
    let b = start_broker();
    let routed_dir = b.dir.join("routed-cwd");
    std::fs::create_dir(&routed_dir).unwrap();
    std::fs::set_permissions(&routed_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let caller_dir = b.dir.join("caller-cwd");
    std::fs::create_dir(&caller_dir).unwrap();
    let script = format!(
        r#"
import os, resource
resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
os.chdir({caller:?})
pid = os.fork()
if pid == 0:
    os.execv("/bin/sh", ["sh", "-c", "cd {routed}; ulimit -c unlimited; kill -SEGV $$"])
_, st = os.waitpid(pid, 0)
print("segv", os.WIFSIGNALED(st) and os.WTERMSIG(st) == 11, "core", os.WCOREDUMP(st))
"#,
        caller = caller_dir.display().to_string(),
        routed = routed_dir.display(),
    );
    // Both ways the caller's side can end: the fork child still relaying (a long relay
    // window), and the shim it handed over to (no window).
    for relay_ms in ["60000", "0"] {
        let o = b
            .cmd(&[py, "-c", &script])
            .env("CTX_RELAY_MS", relay_ms)
            .output()
            .unwrap();
        assert_eq!(
            stdout(&o),
            "segv True core True\n",
            "CTX_RELAY_MS={relay_ms}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        // The core the caller's side left is the shim's, and none holds the caller's secret.
        let core = caller_dir.join("core");
        let bytes = std::fs::read(&core).unwrap_or_default();
        assert!(
            bytes.windows(8).any(|w| w == b"ctx-shim"),
            "CTX_RELAY_MS={relay_ms}: no core of the shim in {}",
            caller_dir.display()
        );
        assert!(
            !bytes.windows(12).any(|w| w == b"agent-canary"),
            "CTX_RELAY_MS={relay_ms}: the core holds the caller's memory"
        );
        let _ = std::fs::remove_file(&core);
    }
}
