//! Namespaces: every claim is attacked from a real routed process, and the test asserts
//! the attack fails. PID namespaces (and their holders across reloads and broker deaths),
//! network namespaces.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use ctx_tests::isolation::*;
use ctx_tests::*;

// ---------------------------------------------------------------------------------------
// pid = true
// ---------------------------------------------------------------------------------------

#[test]
fn pid_namespace_ps_shows_no_broker_caller_or_other_context() {
    let b = Broker::start(&isolation_config());
    let other = marked_sleep();
    let other_pid = marked_sleep();
    let plain = background_sleep(&b, "plain", &other);
    let second = background_sleep(&b, "pidctx2", &other_pid);

    let ps = b.exec("pidctx", &["ps", "-eo", "pid,user,args"]).ok();
    assert!(!ps.contains("ctx-broker"), "the broker is visible:\n{ps}");
    assert!(
        !ps.contains("--context"),
        "the caller (ctx exec) is visible:\n{ps}"
    );
    assert!(
        !ps.contains(&other),
        "a plain context's process is visible:\n{ps}"
    );
    assert!(
        !ps.contains(&other_pid),
        "another PID context's process is visible:\n{ps}"
    );
    // Only the namespace's init and ps itself.
    let procs = ps.lines().skip(1).count();
    assert!(procs <= 2, "unexpected processes in the namespace:\n{ps}");
    // Its own /proc: the broker's pid does not exist there.
    let broker = b.pid().to_string();
    let out = b.exec(
        "pidctx",
        &["test", "-e", &format!("/proc/{broker}/cmdline")],
    );
    assert_ne!(out.code(), 0, "/proc/{broker} exists in the namespace");
    stop(plain);
    stop(second);
}

#[test]
fn pid_namespace_cannot_kill_or_pkill_the_broker() {
    let b = Broker::start(&isolation_config());
    let broker = b.pid().to_string();
    let out = b.exec("pidctx", &["pkill", "-9", "-f", "ctx-broker"]);
    assert_ne!(out.code(), 0, "pkill found something: {}", out.show());
    let out = b.exec("pidctx", &["kill", "-9", &broker]);
    assert_ne!(
        out.code(),
        0,
        "kill -9 of the broker succeeded: {}",
        out.show()
    );
    let out = b.exec("pidctx", &["kill", "-9", "1"]);
    assert_ne!(out.code(), 0, "kill -9 1 succeeded: {}", out.show());
    // Even a whole-namespace kill (-1: every process we may signal) leaves the broker.
    let _ = b.exec("pidctx", &["sh", "-c", "kill -9 -1; exit 0"]);
    assert!(run(&mut b.ctx(["status"])).status.success());
    // And the namespace still works afterwards.
    assert_eq!(b.exec("pidctx", &["true"]).code(), 0);
}

#[test]
fn pid_namespace_is_shared_by_the_launches_of_one_context() {
    let b = Broker::start(&isolation_config());
    let marker = marked_sleep();
    let first = background_sleep(&b, "pidctx", &marker);
    let ps = b.exec("pidctx", &["ps", "-eo", "pid,args"]).ok();
    assert!(
        ps.contains(&marker),
        "the first launch is not visible:\n{ps}"
    );
    // The sleep's pid inside is small: it lives in the context's namespace, not the host's.
    let line = ps.lines().find(|l| l.contains(&marker)).unwrap();
    let inner: i32 = line.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        inner > 1 && inner < 1000,
        "pid inside the namespace: {line}"
    );
    // And the second launch may signal it (same uid, same namespace).
    let out = b.exec("pidctx", &["pkill", "-f", &marker]);
    assert_eq!(out.code(), 0, "{}", out.show());
    let gone = poll(Duration::from_secs(5), || {
        pids_with_arg(&marker).is_empty().then_some(())
    });
    assert!(gone.is_some(), "sleep {marker} survived pkill inside");
    stop(first);
}

#[test]
fn pid_namespace_keeps_exit_codes_and_signals() {
    let b = Broker::start(&isolation_config());
    assert_eq!(b.exec("pidctx", &["sh", "-c", "exit 7"]).code(), 7);
    let out = b.exec("pidctx", &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.signal(), Some(libc::SIGTERM), "{}", out.show());
    assert_eq!(b.exec("pidctx", &["sh", "-c", "echo hi"]).ok(), "hi\n");
    let out = b.exec("pidctx", &["/nonexistent/program"]);
    assert_eq!(out.code(), 127, "{}", out.show());
    // The routed process is a child of the broker: ctx ps shows it with its host pid.
    let marker = marked_sleep();
    let bg = background_sleep(&b, "pidctx", &marker);
    let ps = b.ctx(["ps"]).output().expect("ctx ps");
    let host_pid = routed_pid(&marker).to_string();
    assert!(
        String::from_utf8_lossy(&ps.stdout).contains(&host_pid),
        "ctx ps does not list host pid {host_pid}"
    );
    stop(bg);
}

#[test]
fn pid_namespace_client_kill_and_timeout_kill_everything() {
    let b = Broker::start(&isolation_config());
    let marker = marked_sleep();
    let script = format!("sleep {marker} & sleep {marker}; wait");
    let mut client = b
        .exec_cmd("pidctx", &["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    poll(Duration::from_secs(10), || {
        (pids_with_arg(&marker).len() >= 2).then_some(())
    })
    .expect("both sleeps started");
    client.kill().unwrap();
    let _ = client.wait();
    let gone = poll(Duration::from_secs(5), || {
        pids_with_arg(&marker).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "left behind after SIGKILL of ctx: {:?}",
        pids_with_arg(&marker)
    );

    let marker = marked_sleep();
    let script = format!("sleep {marker} & sleep {marker}; wait");
    let out = run(&mut b.ctx([
        "exec",
        "--context",
        "pidctx",
        "--timeout",
        "1s",
        "--",
        "sh",
        "-c",
        &script,
    ]));
    assert_eq!(out.code(), 124, "{}", out.show());
    let gone = poll(Duration::from_secs(5), || {
        pids_with_arg(&marker).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "left behind after --timeout: {:?}",
        pids_with_arg(&marker)
    );
}

#[test]
fn pid_namespace_init_reaps_orphans() {
    let b = Broker::start(&isolation_config());
    // The subshell's sleep is orphaned at once and reparented to the namespace's init.
    let out = b.exec("pidctx", &["sh", "-c", "(sleep 0.2 &) ; exit 0"]);
    assert_eq!(out.code(), 0, "{}", out.show());
    std::thread::sleep(Duration::from_millis(600));
    let ps = b.exec("pidctx", &["ps", "-eo", "stat,args"]).ok();
    assert!(
        !ps.lines().skip(1).any(|l| l.trim_start().starts_with('Z')),
        "zombies in the namespace:\n{ps}"
    );
}

/// The namespace holders (`ctx-ns-init`) whose parent is `broker`.
fn holders_of(broker: u32) -> Vec<i32> {
    pids_with_arg("ctx-ns-init")
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .is_ok_and(|s| s.contains(&format!("PPid:\t{broker}\n")))
        })
        .collect()
}

#[test]
fn pid_namespace_holders_end_with_the_broker() {
    let mut b = Broker::start(&isolation_config());
    // pidctx, pidctx2 and netctx each have one holder, made at start.
    let first = holders_of(b.pid());
    assert_eq!(first.len(), 3, "holders: {first:?}");
    b.restart();
    let gone = poll(Duration::from_secs(5), || {
        first
            .iter()
            .all(|p| !pids_with_arg("ctx-ns-init").contains(p))
            .then_some(())
    });
    assert!(gone.is_some(), "holders outlived their broker: {first:?}");
    assert_eq!(b.exec("pidctx", &["true"]).code(), 0);
    // Even a broker killed outright takes its holders with it (PR_SET_PDEATHSIG).
    let second = holders_of(b.pid());
    assert_eq!(second.len(), 3, "holders: {second:?}");
    signal(b.pid(), nix::sys::signal::Signal::SIGKILL);
    let gone = poll(Duration::from_secs(5), || {
        second
            .iter()
            .all(|p| !pids_with_arg("ctx-ns-init").contains(p))
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "holders outlived a killed broker: {second:?}"
    );
}

/// Regression: a broker whose own pids are small (here: PID 1 of a namespace, so its
/// threads are 2, 3...) once hung launches into a PID context, because glibc's setuid
/// wrappers signalled "the other threads" with tgkill(getpid(), tid) and the launch, PID 2
/// inside its context, was one of them. The spawn path now uses raw syscalls.
#[test]
fn pid_namespace_launch_does_not_hang_when_pids_collide_with_broker_threads() {
    require_root();
    let dir = TempDir::new();
    let config = dir.file("contexts.toml", isolation_config().as_bytes(), 0o644);
    let socket = dir.path().join("broker.sock");
    /// Kills the namespaced broker (and with it its namespace) even when an assert fails.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _broker = KillOnDrop(
        std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(bin("ctx-broker"))
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--audit-log")
            .arg(dir.path().join("audit.jsonl"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare"),
    );
    let ctx = |args: &[&str]| {
        let mut c = std::process::Command::new(bin("ctx"));
        c.arg("--socket").arg(&socket).args(args);
        c
    };
    let ready = poll(Duration::from_secs(10), || {
        ctx(&["status"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?
            .success()
            .then_some(())
    });
    assert!(ready.is_some(), "the broker did not start in its namespace");
    for _ in 0..10 {
        let out = run_with(
            &mut ctx(&["exec", "--context", "pidctx", "--", "true"]),
            None,
            Duration::from_secs(10),
        );
        assert_eq!(out.code(), 0, "{}", out.show());
    }
}

#[test]
fn reload_puts_new_namespaces_in_force_and_ends_dropped_ones() {
    let b = Broker::start(&standard_config());
    let ps = b.exec("alice", &["ps", "-e"]).ok();
    assert!(ps.lines().count() > 3, "alice is not isolated yet:\n{ps}");
    let isolated = standard_config().replace(
        "cwd = \"inherit\"\n",
        "cwd = \"inherit\"\nisolation = { pid = true }\n",
    );
    std::fs::write(b.config_path(), isolated).unwrap();
    let out = run(&mut b.ctx(["reload"]));
    assert_eq!(out.code(), 0, "{}", out.show());
    let ps = b.exec("alice", &["ps", "-e", "-o", "pid="]).ok();
    assert!(
        ps.lines().count() <= 2,
        "no PID namespace after reload:\n{ps}"
    );
    let broker = b.pid();
    assert_eq!(holders_of(broker).len(), 1);
    // And back: the holder goes away with the option.
    std::fs::write(b.config_path(), standard_config()).unwrap();
    assert_eq!(run(&mut b.ctx(["reload"])).code(), 0);
    let gone = poll(Duration::from_secs(5), || {
        holders_of(broker).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "the dropped namespace's holder is still there"
    );
}

// ---------------------------------------------------------------------------------------
// network = "none"
// ---------------------------------------------------------------------------------------

#[test]
fn network_none_cannot_reach_the_hosts_loopback() {
    let b = Broker::start(&isolation_config());
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    server.set_nonblocking(true).unwrap();
    let script = format!(
        "import socket,sys\ns=socket.socket()\ns.settimeout(3)\n\
         try:\n s.connect(('127.0.0.1',{port}))\nexcept OSError as e:\n print('refused',e.errno); sys.exit(3)\n\
         print('connected'); sys.exit(0)\n"
    );
    let out = b.exec("netctx", &["python3", "-c", &script]);
    assert_eq!(
        out.code(),
        3,
        "reached the host's 127.0.0.1:{port}: {}",
        out.show()
    );
    assert!(server.accept().is_err(), "the host server saw a connection");
    // The same from a plain context connects (the test is not vacuous).
    let out = b.exec("plain", &["python3", "-c", &script]);
    assert_eq!(out.code(), 0, "{}", out.show());
    // No other interface than lo.
    let out = b.exec("netctx", &["cat", "/proc/net/dev"]).ok();
    let ifaces: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, vec!["lo"], "{out}");
}

#[test]
fn network_none_has_a_working_loopback_of_its_own() {
    let b = Broker::start(&isolation_config());
    let script = "import socket\n\
        s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(1)\n\
        c=socket.create_connection(s.getsockname(), timeout=3)\n\
        a,_=s.accept(); a.sendall(b'ok'); print(c.recv(2).decode())\n";
    assert_eq!(b.exec("netctx", &["python3", "-c", script]).ok(), "ok\n");
    // A port bound inside does not show on the host: bind the same port on the host too.
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let script =
        format!("import socket\ns=socket.socket(); s.bind(('127.0.0.1',{port})); print('bound')\n");
    assert_eq!(
        b.exec("netctx", &["python3", "-c", &script]).ok(),
        "bound\n"
    );
    // The host's listener still works.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut a, _) = host.accept().unwrap();
    c.write_all(b"x").unwrap();
    let mut buf = [0u8; 1];
    a.read_exact(&mut buf).unwrap();
}
