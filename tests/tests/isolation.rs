//! Isolation: every claim is attacked from a real routed process, and the test
//! asserts the attack fails. PID namespaces, network namespaces.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use ctx_tests::*;

/// `pidctx` (ctx-alice, own PID namespace), `pidctx2` (another one), `plain` (ctx-alice, no
/// isolation), `netctx` (loopback only).
fn isolation_config() -> String {
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.pidctx]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ pid = true }}

[contexts.pidctx2]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ pid = true }}

[contexts.plain]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}

[contexts.netctx]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ network = "none" }}
"#
    )
}

/// A `sleep` whose argument no other process has.
fn marked_sleep() -> String {
    let n = unique("").replace('x', "");
    format!("1000.{}", &n[n.len().saturating_sub(12)..])
}

/// Starts `ctx exec --context CONTEXT -- sleep MARKER` in the background and waits until the
/// sleep runs.
fn background_sleep(b: &Broker, context: &str, marker: &str) -> std::process::Child {
    let child = b
        .exec_cmd(context, &["sleep", marker])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ctx exec");
    routed_pid(marker);
    child
}

/// The pid of the routed process (not the root `ctx exec` client) whose argv holds
/// `marker`, once it runs.
fn routed_pid(marker: &str) -> i32 {
    poll(Duration::from_secs(10), || {
        pids_with_arg(marker)
            .into_iter()
            .find(|p| proc_uid(*p).is_some_and(|u| u != 0))
    })
    .unwrap_or_else(|| panic!("sleep {marker} did not start"))
}

fn stop(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

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

// ---------------------------------------------------------------------------------------
// reserved_ports
// ---------------------------------------------------------------------------------------

/// Two TCP ports free on this machine right now.
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("0.0.0.0:0").unwrap();
    let b = TcpListener::bind("0.0.0.0:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// `platform` (ctx-alice, in its own PID namespace) owns `owned`; `user` (ctx-bob, which
/// ctx-bob may enter) owns nothing; `spare` is reserved with no owner.
fn ports_config(owned: u16, spare: u16) -> String {
    let bob = user(BOB).uid;
    format!(
        r#"[broker]
socket_mode = "0666"
reserved_ports = [{owned}, {spare}]
port_owners = {{ {owned} = "platform" }}

[contexts.platform]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ pid = true }}

[contexts.user]
user = "{BOB}"
cwd = "/"
allow = {{ uids = [0, {bob}] }}
"#
    )
}

#[test]
fn reserved_ports_cannot_be_bound_by_contexts() {
    let (owned, spare) = free_ports();
    let b = Broker::start(&ports_config(owned, spare));
    for port in [owned, spare] {
        let out = run_with(
            &mut b.exec_cmd("user", &["python3", "-m", "http.server", &port.to_string()]),
            None,
            Duration::from_secs(20),
        );
        assert_ne!(out.code(), 0, "http.server bound {port}: {}", out.show());
        let err = out.stderr_str();
        assert!(
            err.contains("Address already in use") || err.contains("Permission denied"),
            "{}",
            out.show()
        );
        for addr in ["127.0.0.1", "0.0.0.0", "::", "::1"] {
            let family = if addr.contains(':') {
                "AF_INET6"
            } else {
                "AF_INET"
            };
            let script = format!(
                "import socket,sys\ns=socket.socket(socket.{family})\n\
                 s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n\
                 try:\n s.bind(('{addr}',{port})); s.listen(1)\nexcept OSError as e:\n print(e.errno); sys.exit(3)\n"
            );
            let out = b.exec("user", &["python3", "-c", &script]);
            assert_eq!(out.code(), 3, "bound {addr}:{port}: {}", out.show());
            let errno: i32 = out.stdout_str().trim().parse().unwrap();
            assert!(
                errno == libc::EADDRINUSE || errno == libc::EACCES,
                "{addr}:{port}: errno {errno}"
            );
        }
    }
}

#[test]
fn reserved_port_is_handed_to_its_owner_systemd_style() {
    let (owned, spare) = free_ports();
    let b = Broker::start(&ports_config(owned, spare));
    // The service checks LISTEN_FDS/LISTEN_PID as sd_listen_fds() does, then serves once.
    let service = "import os,socket,sys\n\
        assert os.environ['LISTEN_FDS']=='1', os.environ.get('LISTEN_FDS')\n\
        assert int(os.environ['LISTEN_PID'])==os.getpid(), (os.environ['LISTEN_PID'], os.getpid())\n\
        s=socket.socket(fileno=3)\n\
        c,_=s.accept(); c.sendall(b'served by the owner\\n'); c.close()\n";
    let mut svc = b
        .ctx([
            "exec",
            "--context",
            "platform",
            "--listen-port",
            &owned.to_string(),
            "--",
            "python3",
            "-c",
            service,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The socket already listens (the broker's): connecting never races the service.
    let mut conn = TcpStream::connect(("127.0.0.1", owned)).expect("connect to the owned port");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).unwrap();
    let status = wait_deadline(&mut svc, Duration::from_secs(10)).expect("service ends");
    let mut err = String::new();
    svc.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "service failed: {err}");
    assert_eq!(got, "served by the owner\n");
}

#[test]
fn reserved_port_is_refused_to_other_contexts_and_non_root() {
    let (owned, spare) = free_ports();
    let b = Broker::start(&ports_config(owned, spare));
    let bob = user(BOB);
    for port in [owned, spare] {
        let mut cmd = b.ctx([
            "exec",
            "--context",
            "user",
            "--listen-port",
            &port.to_string(),
            "--",
            "true",
        ]);
        std::os::unix::process::CommandExt::uid(&mut cmd, bob.uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, bob.gid);
        cmd.current_dir("/");
        let out = run(&mut cmd);
        // Refused before any exec: ctx's own error (125), as every step before the exec.
        assert_eq!(
            out.code(),
            125,
            "ctx-bob claimed port {port}: {}",
            out.show()
        );
        assert!(
            out.stderr_str().contains(&port.to_string()),
            "{}",
            out.show()
        );
    }
    b.wait_audit(2, |l| {
        json_has_str(l, "exec_failed") && json_has_str(l, "port")
    });
}

// ---------------------------------------------------------------------------------------
// Landlock: filesystem rules and signal scoping
// ---------------------------------------------------------------------------------------

/// `fs` (ctx-alice): reads everything, writes only `rw`, nothing in `secret`, signals
/// scoped; `plain` (ctx-alice, no rules). Paths are in `dir`, whose files are all
/// world-readable and writable: only Landlock stands in the way.
fn landlock_config(dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.fs]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ read_only = ["/"], read_write = ["{d}/rw"], no_access = ["{d}/secret"], signals = "scoped" }}

[contexts.plain]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
"#
    )
}

fn landlock_setup() -> (TempDir, Broker) {
    let dir = TempDir::new();
    dir.subdir("rw", 0o777);
    dir.subdir("ro", 0o777);
    dir.subdir("secret", 0o777);
    dir.file("secret/key", b"top secret\n", 0o666);
    dir.file("ro/file", b"read me\n", 0o666);
    let b = Broker::start(&landlock_config(dir.path()));
    (dir, b)
}

#[test]
fn landlock_no_access_path_cannot_be_read_or_listed() {
    let (dir, b) = landlock_setup();
    let key = dir.path().join("secret/key");
    let key = key.to_str().unwrap();
    // The control: the same uid without rules reads it (mode 0666).
    assert_eq!(b.exec("plain", &["cat", key]).ok(), "top secret\n");
    let out = b.exec("fs", &["cat", key]);
    assert_ne!(out.code(), 0, "read a no_access file: {}", out.show());
    assert!(
        out.stderr_str().contains("Permission denied"),
        "{}",
        out.show()
    );
    let out = b.exec("fs", &["cp", key, "/dev/null"]);
    assert_ne!(out.code(), 0, "{}", out.show());
    // Not even through another name for it.
    let out = b.exec(
        "fs",
        &[
            "sh",
            "-c",
            &format!("cd {} && cat secret/../secret/key", dir.path().display()),
        ],
    );
    assert_ne!(out.code(), 0, "{}", out.show());
    // Everything else stays readable.
    let ro = dir.path().join("ro/file");
    assert_eq!(
        b.exec("fs", &["cat", ro.to_str().unwrap()]).ok(),
        "read me\n"
    );
    assert!(b.exec("fs", &["ls", "/"]).ok().contains("usr"));
}

#[test]
fn landlock_read_only_path_cannot_be_written() {
    let (dir, b) = landlock_setup();
    let ro = dir.path().join("ro/file");
    let ro = ro.to_str().unwrap();
    let out = b.exec("fs", &["sh", "-c", &format!("echo pwned > {ro}")]);
    assert_ne!(out.code(), 0, "wrote a read_only file: {}", out.show());
    let out = b.exec("fs", &["rm", "-f", ro]);
    assert_ne!(out.code(), 0, "removed a read_only file: {}", out.show());
    let newfile = dir.path().join("ro/new");
    let out = b.exec("fs", &["touch", newfile.to_str().unwrap()]);
    assert_ne!(
        out.code(),
        0,
        "created a file in a read_only dir: {}",
        out.show()
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ro/file")).unwrap(),
        "read me\n"
    );
    // read_write works.
    let rw = dir.path().join("rw/out");
    let out = b.exec(
        "fs",
        &[
            "sh",
            "-c",
            &format!("echo ok > {} && cat {0}", rw.display()),
        ],
    );
    assert_eq!(out.ok(), "ok\n");
    // /dev/null and friends keep working.
    assert_eq!(
        b.exec("fs", &["sh", "-c", "echo x > /dev/null && echo fine"])
            .ok(),
        "fine\n"
    );
}

#[test]
fn landlock_protects_the_brokers_config_state_and_audit_log() {
    let (_dir, b) = landlock_setup();
    // Make them readable by the context's uid, so only Landlock can stop it.
    let config = b.config_path().to_path_buf();
    let audit = b.audit_path();
    std::fs::set_permissions(&audit, std::os::unix::fs::PermissionsExt::from_mode(0o666)).ok();
    let state = b.dir().path().join("state");
    let other = state.join("shells/plain");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("default.bash"), "export SECRET=1\n").unwrap();
    for p in [&state, &state.join("shells"), &other] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    }
    std::fs::set_permissions(
        other.join("default.bash"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    for target in [config.clone(), audit.clone(), other.join("default.bash")] {
        let t = target.to_str().unwrap();
        assert_eq!(
            b.exec("plain", &["test", "-r", t]).code(),
            0,
            "control: {t}"
        );
        let out = b.exec("fs", &["cat", t]);
        assert_ne!(out.code(), 0, "read {t}: {}", out.show());
        let out = b.exec("fs", &["sh", "-c", &format!("echo x >> {t}")]);
        assert_ne!(out.code(), 0, "appended to {t}: {}", out.show());
    }
    // ctx sh still works in the context: its own session directory is granted.
    let out = run(&mut b.ctx(["sh", "--context", "fs", "export A=1"]));
    assert_eq!(out.code(), 0, "{}", out.show());
    let out = run(&mut b.ctx(["sh", "--context", "fs", "echo $A"]));
    assert_eq!(out.ok(), "1\n");
}

#[test]
fn landlock_scoped_signals_cannot_reach_other_launches_of_the_same_uid() {
    let (_dir, b) = landlock_setup();
    let marker = marked_sleep();
    let victim = background_sleep(&b, "plain", &marker);
    let pid = routed_pid(&marker).to_string();
    // The control: same uid, no scoping: allowed.
    assert_eq!(b.exec("plain", &["kill", "-0", &pid]).code(), 0);
    for sig in ["-0", "-TERM", "-KILL"] {
        let out = b.exec("fs", &["kill", sig, &pid]);
        assert_ne!(
            out.code(),
            0,
            "kill {sig} {pid} went through: {}",
            out.show()
        );
    }
    assert!(!pids_with_arg(&marker).is_empty(), "the victim died");
    // Nor the broker, nor the caller (different uid anyway, and outside the domain), from
    // a process whose parent it is not (its own child's `kill $PPID` goes to its caller).
    let out = b.exec("fs", &["sh", "-c", &format!("/bin/kill -TERM {}", b.pid())]);
    assert_ne!(out.code(), 0, "{}", out.show());
    // Its own children it may still signal.
    let out = b.exec(
        "fs",
        &["sh", "-c", "sleep 30 & kill $! && wait $!; echo $?"],
    );
    assert_eq!(out.ok(), "143\n");
    stop(victim);
}

// ---------------------------------------------------------------------------------------
// ctx status
// ---------------------------------------------------------------------------------------

#[test]
fn status_lists_the_isolation_in_force_per_context() {
    let b = Broker::start(&isolation_config());
    let out = run(&mut b.ctx(["status"])).ok();
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with("isolation:") && l.contains(&format!(" {name}: ")))
            .unwrap_or_else(|| panic!("no isolation line for {name}:\n{out}"))
            .to_string()
    };
    assert!(line("pidctx").contains("pid namespace"), "{out}");
    assert!(!line("pidctx").contains("network none"), "{out}");
    assert!(line("netctx").contains("network none"), "{out}");
    assert!(!line("plain").contains("pid namespace"), "{out}");
    assert!(!out.contains("NOT in force"), "{out}");

    let dir = TempDir::new();
    let b = Broker::start(&landlock_config(dir.path()));
    let out = run(&mut b.ctx(["status"])).ok();
    let fs = out
        .lines()
        .find(|l| l.contains(" fs: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        fs.contains("filesystem rules") && fs.contains("signals scoped"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------
// enforce = true
// ---------------------------------------------------------------------------------------

/// `agent` (ctx-alice) routes its launches to `user` (ctx-bob) and enforces it.
fn enforce_config() -> String {
    enforce_config_with("enforce = true")
}

/// `enforce_config` with other isolation options for `agent` (e.g. `pid = true` too).
fn enforce_config_with(isolation: &str) -> String {
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.agent]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
route_children_to = "user"
isolation = {{ {isolation} }}

[contexts.user]
user = "{BOB}"
cwd = "/"
allow = {{ uids = [0], contexts = ["agent"] }}
"#
    )
}

/// A statically linked program that calls the raw execve syscall on argv[1] with argv[1..]
/// as its arguments and prints the errno it got (the interposer cannot see it).
/// `source` compiled with `gcc -static` into `dir/name`; its path.
fn static_binary(dir: &TempDir, name: &str, source: &[u8]) -> String {
    let src = dir.file(&format!("{name}.c"), source, 0o644);
    let bin = dir.path().join(name);
    let out = run(std::process::Command::new("gcc")
        .arg("-static")
        .arg("-o")
        .arg(&bin)
        .arg(&src));
    assert_eq!(
        out.code(),
        0,
        "gcc -static failed (scripts/test.sh installs build-essential): {}",
        out.show()
    );
    bin.to_str().unwrap().to_string()
}

fn static_execve(dir: &TempDir) -> String {
    static_binary(
        dir,
        "raw_execve",
        b"#include <stdio.h>\n#include <errno.h>\n#include <unistd.h>\n#include <sys/syscall.h>\n\
          int main(int c, char **v) { char *e[] = {0};\n\
          syscall(SYS_execve, v[1], v + 1, e); printf(\"%d\\n\", errno); return 3; }\n",
    )
}

#[test]
fn enforce_static_binary_raw_execve_fails_with_eacces() {
    let dir = TempDir::new();
    let bin = static_execve(&dir);
    let b = Broker::start(&enforce_config());
    let out = b.exec("agent", &[&bin, "/bin/true"]);
    assert_eq!(out.code(), 3, "the raw execve went through: {}", out.show());
    assert_eq!(
        out.stdout_str().trim(),
        libc::EACCES.to_string(),
        "{}",
        out.show()
    );
    // The audit log says the launch ran enforced.
    b.wait_audit(1, |l| {
        json_has_str(l, &bin) && l["isolation"]["enforce"] == serde_json::json!(true)
    });
    // And the attempt itself is audited, naming what it tried to run.
    let denied = b.wait_audit(1, |l| {
        l["event"] == "exec_denied" && l["path"] == "/bin/true"
    });
    let target = std::fs::canonicalize("/bin/true").unwrap();
    let d = &denied[0];
    assert_eq!(d["target"], target.to_str().unwrap(), "{d}");
    assert_eq!(d["context"], "agent", "{d}");
    assert_eq!(d["uid"], user(ALICE).uid, "{d}");
    assert_eq!(d["program"], bin.as_str(), "{d}");
    assert_eq!(d["errno"], "EACCES", "{d}");
    assert_eq!(d["reason"], "enforce: exec bypassing the interposer", "{d}");
    assert!(d["pid"].as_u64().is_some_and(|p| p > 0), "{d}");
}

/// The guard looks at a refused path as the context's user would: a file in a directory
/// that user may not search is as absent as one that does not exist (both EACCES, as a
/// local exec by that user gets), never "exists" against "not found".
#[test]
fn enforce_does_not_tell_a_context_which_files_exist_where_it_cannot_look() {
    let dir = TempDir::new();
    let bin = static_execve(&dir);
    let private = dir.subdir("private", 0o700);
    dir.file("private/there", b"#!/bin/sh\n", 0o755);
    let b = Broker::start(&enforce_config());
    for name in ["there", "absent"] {
        let path = private.join(name);
        let out = b.exec("agent", &[&bin, path.to_str().unwrap()]);
        assert_eq!(out.code(), 3, "{name}: {}", out.show());
        assert_eq!(
            out.stdout_str().trim(),
            libc::EACCES.to_string(),
            "{name}: {}",
            out.show()
        );
    }
    // And where the user may look, a missing file stays ENOENT (PATH searches rely on it).
    let out = b.exec(
        "agent",
        &[&bin, dir.path().join("absent").to_str().unwrap()],
    );
    assert_eq!(
        out.stdout_str().trim(),
        libc::ENOENT.to_string(),
        "{}",
        out.show()
    );
}

/// Through another user's `/proc/PID/cwd` too: the guard follows it no further than that
/// user could (no `CAP_SYS_PTRACE` borrowed from the broker).
#[test]
fn enforce_does_not_look_through_another_users_proc_links() {
    let dir = TempDir::new();
    let bin = static_execve(&dir);
    let private = dir.subdir("private", 0o700);
    let inner = dir.subdir("private/inner", 0o755);
    dir.file("private/inner/there", b"#!/bin/sh\n", 0o755);
    let _ = private;
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .current_dir(&inner)
        .spawn()
        .unwrap();
    let b = Broker::start(&enforce_config());
    for name in ["there", "absent", "there/"] {
        let path = format!("/proc/{}/cwd/{name}", sleeper.id());
        let out = b.exec("agent", &[&bin, &path]);
        assert_eq!(
            out.stdout_str().trim(),
            libc::EACCES.to_string(),
            "{name}: {}",
            out.show()
        );
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// `/proc/self/..` is the process's own procfs, in its PID namespace: a path through it
/// means what the kernel makes of it for the process, never the broker's `/proc`.
#[test]
fn enforce_resolves_proc_paths_in_the_processs_own_pid_namespace() {
    let dir = TempDir::new();
    let bin = static_execve(&dir);
    let b = Broker::start(&enforce_config_with("enforce = true, pid = true"));
    // The program runs itself again by a path through its procfs (allowed: it is the
    // launch's own program), which then tries /bin/true (refused).
    let out = b.exec("agent", &[&bin, "/proc/self/../self/exe", "/bin/true"]);
    assert_eq!(out.code(), 3, "{}", out.show());
    b.wait_audit(1, |l| {
        l["event"] == "exec_denied" && l["path"] == "/bin/true"
    });
    let wrong: Vec<_> = b
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "exec_denied" && l["path"] != "/bin/true")
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}");
}

/// A FUSE file system mounted by the test that never answers: every lookup under it waits
/// until the mount is detached and its device closed (on drop).
struct HungMount {
    dir: std::path::PathBuf,
    _device: std::fs::File,
}

impl HungMount {
    fn new(dir: std::path::PathBuf) -> HungMount {
        use std::os::fd::AsRawFd;
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("open /dev/fuse");
        let target = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        let options = std::ffi::CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            device.as_raw_fd()
        ))
        .unwrap();
        // SAFETY: NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                c"ctx-test-hung".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mount fuse: {}", std::io::Error::last_os_error());
        HungMount {
            dir,
            _device: device,
        }
    }
}

impl Drop for HungMount {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.dir.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path. Detached first, so nothing new enters; closing the
        // device then aborts the connection, failing the waiting lookups.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// An exec naming a path on a hung mount waits (as it would locally), but it stalls only
/// itself: another enforced launch's exec is still decided at once.
#[test]
fn an_exec_stuck_on_a_hung_mount_stalls_no_other_launch() {
    let dir = TempDir::new();
    let bin = static_execve(&dir);
    let b = Broker::start(&enforce_config());
    let hung = HungMount::new(dir.subdir("hung", 0o755));
    let stuck_path = hung.dir.join("prog");
    let mut stuck = b
        .exec_cmd("agent", &[&bin, stuck_path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its exec reaches the guard, whose look at the path hangs.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(stuck.try_wait().unwrap().is_none(), "the exec did not wait");
    let mut other = b
        .exec_cmd("agent", &[&bin, "/bin/true"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let done = poll(std::time::Duration::from_secs(10), || {
        other.try_wait().unwrap()
    });
    if done.is_none() {
        let _ = other.kill();
        panic!("another launch's exec waited for the hung one");
    }
    let out = other.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.trim(), libc::EACCES.to_string());
    // Once the mount goes, the stuck exec fails and its launch ends.
    drop(hung);
    let ended = poll(std::time::Duration::from_secs(20), || {
        stuck.try_wait().unwrap()
    });
    assert!(ended.is_some(), "the stuck launch never ended");
    assert_eq!(ended.unwrap().code(), Some(3));
}

/// The ELF interpreter (`PT_INTERP`) of a dynamic 64-bit program, e.g.
/// `/lib64/ld-linux-x86-64.so.2`.
fn elf_interpreter(program: &str) -> String {
    let elf = std::fs::read(program).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF", "{program} is not ELF");
    assert_eq!(elf[4], 2, "{program} is not a 64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) == 3 {
            let (off, size) = (u64_at(ph + 8), u64_at(ph + 32));
            let interp = &elf[off..off + size];
            let end = interp.iter().position(|&b| b == 0).unwrap_or(interp.len());
            return String::from_utf8(interp[..end].to_vec()).unwrap();
        }
    }
    panic!("{program} has no PT_INTERP")
}

#[test]
fn enforce_denies_running_a_program_through_the_elf_loader() {
    let dir = TempDir::new();
    let bin = static_execve(&dir);
    let loader = elf_interpreter("/usr/bin/id");
    let b = Broker::start(&enforce_config());
    // ld.so /usr/bin/id would run id unrouted, in `agent`: Landlock must leave the loader
    // executable (every dynamic program needs it), the exec guard refuses it by name.
    let out = b.exec("agent", &[&bin, &loader, "/usr/bin/id"]);
    assert!(!out.stdout_str().contains("uid="), "id ran: {}", out.show());
    assert_eq!(out.code(), 3, "{}", out.show());
    assert_eq!(
        out.stdout_str().trim(),
        libc::EACCES.to_string(),
        "{}",
        out.show()
    );
    let denied = b.wait_audit(1, |l| {
        l["event"] == "exec_denied" && l["path"] == loader.as_str()
    });
    let d = &denied[0];
    assert_eq!(d["context"], "agent", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("ELF loader"), "{d}");
    // Through a symlink of its own, by a path relative to the cwd (`agent`'s is /): the
    // same file, the same answer.
    let link = dir.path().join("ld.so");
    std::os::unix::fs::symlink(&loader, &link).unwrap();
    let relative = link.to_str().unwrap().trim_start_matches('/').to_string();
    let out = b.exec("agent", &[&bin, &relative, "/usr/bin/id"]);
    assert!(!out.stdout_str().contains("uid="), "id ran: {}", out.show());
    assert_eq!(out.stdout_str().trim(), libc::EACCES.to_string());
    b.wait_audit(1, |l| {
        l["event"] == "exec_denied"
            && l["path"] == relative.as_str()
            && l["reason"].as_str().unwrap_or("").contains("ELF loader")
    });
}

#[test]
fn enforce_denials_are_audited_inside_a_pid_namespace_too() {
    let dir = TempDir::new();
    let bin = static_execve(&dir);
    let b = Broker::start(&enforce_config_with("enforce = true, pid = true"));
    let out = b.exec("agent", &[&bin, "/usr/bin/id"]);
    assert_eq!(out.code(), 3, "{}", out.show());
    assert_eq!(out.stdout_str().trim(), libc::EACCES.to_string());
    b.wait_audit(1, |l| {
        l["event"] == "exec_denied" && l["path"] == "/usr/bin/id"
    });
    // Routed launches still work there.
    assert_eq!(
        b.exec("agent", &["bash", "-c", "ls / >/dev/null; id -un"])
            .ok(),
        format!("{BOB}\n")
    );
}

#[test]
fn enforce_a_flood_of_denied_execs_does_not_flood_the_audit_log() {
    let dir = TempDir::new();
    let bin = static_binary(
        &dir,
        "flood",
        b"#include <stdio.h>\n#include <errno.h>\n#include <unistd.h>\n#include <sys/syscall.h>\n\
          int main(int c, char **v) { char *a[] = {v[1], 0}; char *e[] = {0}; int n = 0;\n\
          for (int i = 0; i < 1000; i++) if (syscall(SYS_execve, v[1], a, e) < 0 && errno == EACCES) n++;\n\
          printf(\"%d\\n\", n); return 0; }\n",
    );
    let b = Broker::start(&enforce_config());
    let out = b.exec("agent", &[&bin, "/usr/bin/id"]);
    // Every attempt is refused...
    assert_eq!(out.ok().trim(), "1000");
    b.wait_audit(1, |l| l["event"] == "exec");
    // ...but the log gets a burst of them, not a thousand lines.
    let denied = b
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "exec_denied")
        .count();
    assert!((100..=150).contains(&denied), "{denied} exec_denied lines");
}

#[test]
fn enforce_status_says_bypass_attempts_are_audited() {
    let b = Broker::start(&enforce_config());
    let out = run(&mut b.ctx(["status"])).ok();
    let line = out
        .lines()
        .find(|l| l.starts_with("isolation:") && l.contains(" agent: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("routing enforced") && line.contains("denied and audited"),
        "{out}"
    );
    assert!(!out.contains("NOT in force"), "{out}");
}

#[test]
fn enforce_raw_syscall_from_a_dynamic_program_fails_with_eacces() {
    let b = Broker::start(&enforce_config());
    let script = "import ctypes,os\n\
        os.environ.pop('LD_PRELOAD', None)\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        argv = (ctypes.c_char_p * 2)(b'/usr/bin/id', None)\n\
        libc.syscall(59, b'/usr/bin/id', argv, None)\n\
        print(ctypes.get_errno())\n";
    let out = b.exec("agent", &["python3", "-c", script]);
    assert_eq!(
        out.stdout_str().trim(),
        libc::EACCES.to_string(),
        "{}",
        out.show()
    );
}

#[test]
fn enforce_keeps_routed_launches_working_even_with_a_cleared_ld_preload() {
    let b = Broker::start(&enforce_config());
    // The agent's children run in `user` (ctx-bob), through the shim.
    assert_eq!(
        b.exec("agent", &["sh", "-c", "id -un"]).ok(),
        format!("{BOB}\n")
    );
    // A program that clears LD_PRELOAD and re-execs is still routed (the hook knows its
    // route from load time), so it lands in `user`, not in `agent`.
    let script =
        "import os\nos.environ.pop('LD_PRELOAD', None)\nos.execv('/usr/bin/id', ['id', '-un'])\n";
    assert_eq!(
        b.exec("agent", &["python3", "-c", script]).ok(),
        format!("{BOB}\n")
    );
    // The routing context's own program still starts (it is the launch's own program).
    assert_eq!(b.exec("agent", &["true"]).code(), 0);
    // A shell running several routed programs, and a script through its interpreter.
    assert_eq!(
        b.exec("agent", &["bash", "-c", "ls / >/dev/null; id -un"])
            .ok(),
        format!("{BOB}\n")
    );
    // The exec guard's listener never reaches the routed program (it could answer its
    // own exec requests with it).
    let fds = "import os\nfor f in os.listdir('/proc/self/fd'):\n    \
               try: print(os.readlink('/proc/self/fd/' + f))\n    except OSError: pass\n";
    let out = b.exec("agent", &["python3", "-c", fds]).ok();
    assert!(!out.contains("seccomp"), "{out}");
    // None of it was a bypass attempt.
    b.wait_audit(6, |l| l["event"] == "exec");
    let denied: Vec<_> = b
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "exec_denied")
        .collect();
    assert!(denied.is_empty(), "{denied:?}");
}

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

// ---------------------------------------------------------------------------------------
// Terminal: no keystroke injection into the caller's terminal
// ---------------------------------------------------------------------------------------

#[test]
fn tiocsti_from_a_routed_process_cannot_reach_the_callers_terminal() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;

    let b = Broker::start(&standard_config());
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let caller_tty = nix::unistd::ttyname(&pty.slave).unwrap();
    let caller_rdev = std::fs::metadata(&caller_tty).unwrap().rdev();
    // The attack: inject a command into whatever terminal we have, on every descriptor and
    // through /dev/tty; report what we hold.
    let attack = "import fcntl,os,termios\n\
        out=[str(os.fstat(0).st_rdev)]\n\
        for fd in (0,1,2):\n\
        \x20   try:\n\
        \x20       [fcntl.ioctl(fd, termios.TIOCSTI, bytes([c])) for c in b'touch /tmp/pwned\\n']\n\
        \x20       out.append('injected')\n\
        \x20   except OSError as e:\n\
        \x20       out.append('denied')\n\
        try:\n\
        \x20   out.append(str(os.stat('/dev/tty').st_rdev))\n\
        except OSError:\n\
        \x20   out.append('-')\n\
        import sys; sys.stderr.write(' '.join(out)+'\\n')\n";
    let mut cmd = b.ctx(["exec", "--context", "alice", "--", "python3", "-c", attack]);
    let slave = pty.slave.try_clone().unwrap();
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::piped())
        .current_dir("/");
    // SAFETY: setsid and ioctl are async-signal-safe; fd 0 is the pty slave here.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start ctx exec on a pty");
    drop(cmd);
    let mut report = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut report)
        .unwrap();
    let status = wait_deadline(&mut child, Duration::from_secs(20)).expect("ctx exec ends");
    // stderr is a pipe: the routed process's fd 2 is the caller's pipe, its 0 and 1 a PTY.
    let fields: Vec<&str> = report.split_whitespace().collect();
    assert_eq!(fields.len(), 5, "{status}: {report}");
    assert_ne!(
        fields[0],
        caller_rdev.to_string(),
        "the routed process holds the caller's terminal: {report}"
    );
    assert_ne!(
        fields[4],
        caller_rdev.to_string(),
        "/dev/tty is the caller's: {report}"
    );
    // Nothing was pushed into the caller's terminal input.
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes an int.
    unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::FIONREAD, &mut pending) };
    assert_eq!(
        pending, 0,
        "bytes were injected into the caller's terminal: {report}"
    );
    drop(slave);
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
// tcp_bind / tcp_connect (Landlock ABI 4+)
// ---------------------------------------------------------------------------------------

/// Binding and connecting from a context limited to one TCP port each: the listed ports
/// work, any other fails with EACCES; a context without the keys is not limited.
#[test]
fn tcp_port_rules_limit_what_a_context_binds_and_connects_to() {
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let (allowed_port, other_port) = (
        allowed.local_addr().unwrap().port(),
        other.local_addr().unwrap().port(),
    );
    // Two ports free to bind: found by binding and releasing them.
    let (bind_ok, bind_denied) = free_ports();
    let config = format!(
        r#"[broker]
socket_mode = "0666"

[contexts.tcpctx]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ tcp_bind = [{bind_ok}], tcp_connect = [{allowed_port}] }}

[contexts.plain]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
"#
    );
    let b = Broker::start(&config);
    let script = format!(
        "import socket\n\
         def bind(p):\n s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n \
         try:\n  s.bind(('127.0.0.1',p)); return 'ok'\n except OSError as e:\n  return 'errno%d' % e.errno\n\
         def connect(p):\n s=socket.socket(); s.settimeout(3)\n \
         try:\n  s.connect(('127.0.0.1',p)); return 'ok'\n except OSError as e:\n  return 'errno%d' % e.errno\n\
         print('bind', bind({bind_ok}), bind({bind_denied}))\n\
         print('connect', connect({allowed_port}), connect({other_port}))\n"
    );
    let eacces = libc::EACCES;
    let out = b.exec("tcpctx", &["python3", "-c", &script]);
    assert_eq!(
        out.ok(),
        format!("bind ok errno{eacces}\nconnect ok errno{eacces}\n"),
        "{}",
        out.show()
    );
    // Not vacuous: a context without the keys binds and connects anywhere.
    let out = b.exec("plain", &["python3", "-c", &script]);
    assert_eq!(out.ok(), "bind ok ok\nconnect ok ok\n", "{}", out.show());
    // ctx status says so.
    let status = run(&mut b.ctx(["status"])).ok();
    assert!(
        status.contains("TCP bind limited to tcp_bind")
            && status.contains("TCP connect limited to tcp_connect"),
        "{status}"
    );
    drop((allowed, other));
}

#[test]
fn tcp_port_rules_reject_a_value_that_is_not_a_port() {
    let dir = TempDir::new();
    let path = dir.path().join("contexts.toml");
    std::fs::write(
        &path,
        format!("[contexts.x]\nuser = \"{ALICE}\"\nisolation = {{ tcp_bind = [8080, 70000] }}\n"),
    )
    .unwrap();
    let out = run(std::process::Command::new(bin("ctx-broker"))
        .arg("--check")
        .arg("--config")
        .arg(&path));
    assert_eq!(out.code(), 1, "{}", out.show());
    assert!(
        out.show().contains("contexts.x.isolation.tcp_bind[1]")
            && out.show().contains("70000 is not a port"),
        "{}",
        out.show()
    );
}
