//! Landlock: filesystem rules, signal scoping and TCP port rules, each attacked from a
//! real routed process against a control without the rule.

use std::net::TcpListener;

use ctx_tests::isolation::*;
use ctx_tests::*;

// ---------------------------------------------------------------------------------------
// Landlock: filesystem rules and signal scoping
// ---------------------------------------------------------------------------------------

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
fn landlock_no_access_path_cannot_be_read() {
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

/// What `no_access` does not hide (README, Known limits): Landlock has no right for stat
/// or path walks, and the listing right on the directories leading to the path covers
/// what is beneath it. Names and metadata show; contents, new files and execution do not.
#[test]
fn no_access_hides_contents_but_not_names() {
    let (dir, b) = landlock_setup();
    let secret = dir.path().join("secret");
    let secret = secret.to_str().unwrap();
    let probe = format!(
        "ls {secret}; stat -c %s {secret}/key; cd {secret} && pwd; \
         cat key || echo read-refused; touch new || echo create-refused"
    );
    let out = b.exec("fs", &["sh", "-c", &probe]);
    assert_eq!(
        out.stdout_str(),
        format!("key\n11\n{secret}\nread-refused\ncreate-refused\n"),
        "{}",
        out.show()
    );
}

/// Found by the tenth review: `pid = true` with `read_only = ["/"]` left `/proc` unreadable
/// (`ps`, `/proc/self/status`: EACCES): the context's PID namespace mounts its own procfs
/// over `/proc`, which a rule on the host's `/proc` does not cover. That procfs gets the
/// rights the grants give `/proc` now; writing there stays refused.
#[test]
fn a_pid_namespace_under_filesystem_rules_reads_its_own_proc() {
    let b = Broker::start(&format!(
        r#"[contexts.fenced]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ pid = true, read_only = ["/"] }}
"#
    ));
    let out = b.exec(
        "fenced",
        &[
            "sh",
            "-c",
            "head -1 /proc/self/status; ps -e -o comm= | grep -c .; \
             echo x > /proc/self/comm 2>/dev/null || echo write-refused",
        ],
    );
    let text = out.ok();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("Name:\thead"), "{}", out.show());
    let procs: usize = lines.next().unwrap_or("0").parse().unwrap_or(0);
    assert!(
        procs >= 2,
        "ps sees the namespace's processes: {}",
        out.show()
    );
    assert_eq!(lines.next(), Some("write-refused"), "{}", out.show());
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
