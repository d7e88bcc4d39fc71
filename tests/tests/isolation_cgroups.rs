//! Cgroups: `memory_max`, `pids_max` and `cpu_max` hold against real programs, and
//! `ctx kill --context` reaches every process of a context.

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use ctx_tests::isolation::*;
use ctx_tests::*;

// ---------------------------------------------------------------------------------------
// cgroups: memory_max, pids_max, cpu_max; ctx kill --context
// ---------------------------------------------------------------------------------------

fn cgroup_config() -> String {
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.limited]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
pids_max = 32
memory_max = "64M"
cpu_max = "20%"

[contexts.plain]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
"#
    )
}

#[test]
fn cgroup_pids_max_contains_a_fork_bomb() {
    let b = Broker::start(&cgroup_config());
    // Counted: how many processes can the context start at once?
    let script = "import os,time\n\
        n=0\n\
        for i in range(200):\n\
        \x20   try:\n\
        \x20       pid=os.fork()\n\
        \x20   except OSError:\n\
        \x20       break\n\
        \x20   if pid==0:\n\
        \x20       time.sleep(2); os._exit(0)\n\
        \x20   n+=1\n\
        print(n)\n";
    let out = b.exec("limited", &["python3", "-c", script]);
    let n: usize = out.ok().trim().parse().unwrap();
    assert!(n > 0 && n < 32, "{n} processes started under pids_max = 32");
    // The same in a context without limits starts them all (the test is not vacuous).
    let out = b.exec("plain", &["python3", "-c", script]);
    assert_eq!(out.ok().trim(), "200");

    // A real fork bomb, bounded by a timeout: the broker and the host stay responsive.
    let mut bomb = b
        .ctx([
            "exec",
            "--context",
            "limited",
            "--timeout",
            "4s",
            "--",
            "bash",
            "-c",
            ":(){ :|:& };: ; sleep 10",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    assert!(run(&mut b.ctx(["status"])).status.success());
    assert_eq!(b.exec("plain", &["true"]).code(), 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the host slowed down"
    );
    // ctx kill --context ends it, including the bomb's processes outside its group.
    let out = run(&mut b.ctx(["kill", "--context", "limited", "--signal", "KILL"]));
    assert_eq!(out.code(), 0, "{}", out.show());
    let _ = wait_deadline(&mut bomb, Duration::from_secs(10));
    let out = run(&mut b.ctx(["kill", "--context", "limited", "--signal", "KILL"]));
    let empty = poll(Duration::from_secs(5), || {
        let out = run(&mut b.ctx(["kill", "--context", "limited", "--signal", "KILL"]));
        (out.code() != 0).then_some(())
    });
    assert!(
        empty.is_some(),
        "processes left in the context: {}",
        out.show()
    );
}

#[test]
fn cgroup_memory_max_kills_a_process_that_exceeds_it() {
    let b = Broker::start(&cgroup_config());
    let script = "b=bytearray(256<<20)\nfor i in range(0,len(b),4096): b[i]=1\nprint('survived')\n";
    let out = b.exec("limited", &["python3", "-c", script]);
    assert_eq!(out.signal(), Some(libc::SIGKILL), "{}", out.show());
    assert_eq!(
        b.exec("plain", &["python3", "-c", script]).ok(),
        "survived\n"
    );
}

#[test]
fn cgroup_cpu_max_throttles() {
    let b = Broker::start(&cgroup_config());
    let script =
        "import time\nt=time.time()\nwhile time.time()-t<1.5: pass\nprint(time.process_time())\n";
    let used: f64 = b
        .exec("limited", &["python3", "-c", script])
        .ok()
        .trim()
        .parse()
        .unwrap();
    assert!(
        used < 0.7,
        "used {used}s of CPU in 1.5s under cpu_max = 20%"
    );
}

/// A launch joins its context's cgroup without `cgroup.procs`, whose write waits for an RCU
/// grace period on a quiet host: on v1 the broker holds each hierarchy's `tasks` open for
/// the spawn child, on v2 the context's directory (the child is cloned into it). The
/// routed process is a member in every hierarchy its context joins.
#[test]
fn a_launch_joins_its_cgroup_without_cgroup_procs() {
    let b = Broker::start(&cgroup_config());
    // `ctx-PID.PIDNS`: the broker runs in this test's pid namespace.
    let pidns = std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    let leaf = format!("/ctx-{}.{pidns}/", b.pid());
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", b.pid()))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.contains(&leaf))
        .collect();
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").is_ok_and(|c| {
        ["memory", "pids", "cpu"]
            .iter()
            .all(|w| c.split_whitespace().any(|x| x == *w))
    });
    let held_for = |ctx: &str, file: &str| {
        held.iter()
            .filter(|p| p.contains(&format!("{leaf}{ctx}")) && p.ends_with(file))
            .count()
    };
    if v2 {
        assert_eq!(held_for("plain", "plain"), 1, "{held:?}");
        assert_eq!(held_for("limited", "limited"), 1, "{held:?}");
    } else {
        assert!(held.iter().all(|p| p.ends_with("/tasks")), "{held:?}");
        // pids for every context (what ctx kill reads), memory and cpu only for the limits.
        assert_eq!(held_for("plain", "/tasks"), 1, "{held:?}");
        assert_eq!(held_for("limited", "/tasks"), 3, "{held:?}");
    }
    let out = b.exec("limited", &["cat", "/proc/self/cgroup"]);
    let lines = out.ok();
    let member = lines
        .lines()
        .filter(|l| l.ends_with(&format!("{leaf}limited")))
        .count();
    assert_eq!(member, if v2 { 1 } else { 3 }, "{lines}");
}

#[test]
fn ctx_kill_context_reaches_processes_that_left_their_group() {
    let b = Broker::start(&cgroup_config());
    let marker = marked_sleep();
    let script = format!("setsid sleep {marker} </dev/null >/dev/null 2>&1 & exit 0");
    assert_eq!(b.exec("plain", &["sh", "-c", &script]).code(), 0);
    let alive = poll(Duration::from_secs(5), || {
        (!pids_with_arg(&marker).is_empty()).then_some(())
    });
    assert!(alive.is_some(), "the escaped sleep did not start");
    let out = run(&mut b.ctx(["kill", "--context", "plain", "--signal", "KILL"]));
    assert_eq!(out.code(), 0, "{}", out.show());
    // It says what it signalled: no launch ran, one process was found in the cgroup.
    assert_eq!(
        out.stdout_str(),
        "sent SIGKILL to 1 process(es) of context \"plain\" found in its cgroup\n"
    );
    let gone = poll(Duration::from_secs(5), || {
        pids_with_arg(&marker).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "ctx kill --context missed {:?}",
        pids_with_arg(&marker)
    );
}

#[test]
fn ctx_kill_context_counts_launches_and_other_processes_and_signals_each_once() {
    let b = Broker::start(&cgroup_config());
    let dir = TempDir::new();
    let log = dir.path().join("usr1.log");
    std::fs::File::create(&log).unwrap();
    std::fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    // A running launch whose process counts the SIGUSR1s it receives, and a process that
    // left its launch's group (it counts them too).
    let counter = |tag: &str| {
        format!(
            "import signal,time\n\
             def h(s,f):\n open('{}','a').write('{tag}\\n')\n\
             signal.signal(signal.SIGUSR1,h)\n\
             print('ready',flush=True)\n\
             time.sleep(30)\n",
            log.display()
        )
    };
    let escaped = "setsid python3 -c \"$0\" </dev/null >/dev/null 2>&1 & exit 0";
    assert_eq!(
        b.exec("plain", &["sh", "-c", escaped, &counter("escaped")])
            .code(),
        0
    );
    let mut launch = b
        .exec_cmd("plain", &["python3", "-c", &counter("launch")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    launch
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    assert!(
        poll(Duration::from_secs(5), || {
            (pids_with_arg("escaped\\n").len() == 1).then_some(())
        })
        .is_some(),
        "the escaped counter did not start"
    );
    std::thread::sleep(Duration::from_millis(300));

    let out = run(&mut b.ctx(["kill", "--context", "plain", "--signal", "USR1"]));
    let text = out.ok();
    assert!(
        text.starts_with("sent SIGUSR1 to 1 routed process group(s) (launch ")
            && text
                .ends_with(" and 1 other process(es) of context \"plain\" found in its cgroup\n"),
        "{text}"
    );
    // Each process got the signal once: the launch's through its group, the other one
    // through the cgroup, not both.
    let seen = poll(Duration::from_secs(5), || {
        let t = std::fs::read_to_string(&log).unwrap();
        (t.lines().count() >= 2).then_some(t)
    })
    .expect("the counters saw no signal");
    std::thread::sleep(Duration::from_millis(300));
    let seen = std::fs::read_to_string(&log).unwrap_or(seen);
    let mut lines: Vec<&str> = seen.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["escaped", "launch"], "{seen}");

    let out = run(&mut b.ctx(["kill", "--context", "plain", "--signal", "KILL"]));
    assert_eq!(out.code(), 0, "{}", out.show());
    let _ = wait_deadline(&mut launch, Duration::from_secs(10));
    assert!(
        poll(Duration::from_secs(5), || pids_with_arg("escaped\\n")
            .is_empty()
            .then_some(()))
        .is_some(),
        "the escaped counter survived"
    );
}
