//! Degraded isolation: a broker that lacks a privilege or a kernel
//! feature still starts, warns at load once per option it cannot apply (naming the
//! context, the option and what to do), lists per context in `ctx status` what is in force
//! and what is NOT, and its launches really lack what it said is missing while what it
//! said holds does hold.
//!
//! Most tests start a real broker unprivileged, as ctx-alice (`setpriv --reuid --regid
//! --init-groups`, see `Broker::start_as`), on contexts of that same user: it cannot create
//! namespaces or cgroups, nor bind ports below 1024, while Landlock works unprivileged.
//! The kernel features themselves cannot be switched off from a test (no knob in the
//! code, and a fake kernel would prove nothing); the one degradation a root broker shows on
//! this machine is a reserved port that something else holds.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use ctx_tests::*;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// `lim` asks for everything; `plain` for nothing. Both run as ctx-alice.
fn degraded_config(secret_dir: &std::path::Path, low: u16, high: u16) -> String {
    format!(
        r#"[broker]
socket_mode = "0666"
reserved_ports = [{low}, {high}]

[contexts.lim]
user = "{ALICE}"
cwd = "/"
pids_max = 16
memory_max = "64M"
isolation = {{ pid = true, network = "none", no_access = ["{}"], signals = "scoped" }}

[contexts.plain]
user = "{ALICE}"
cwd = "/"
"#,
        secret_dir.display()
    )
}

/// A TCP port below 1024 that nothing listens on now (the tests run as root, so they may
/// try), skipping `not`.
fn free_low_port(not: &[u16]) -> u16 {
    (700..1000)
        .find(|p| !not.contains(p) && TcpListener::bind(("0.0.0.0", *p)).is_ok())
        .expect("a free port below 1024")
}

/// A free TCP port from 1024 up.
fn free_high_port() -> u16 {
    TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory with `secret/key` (mode 0644 in 0755 dirs: the uid alone does not hide it).
fn secret_dir() -> TempDir {
    let dir = TempDir::new();
    dir.subdir("secret", 0o755);
    dir.file("secret/key", b"top secret\n", 0o644);
    dir
}

/// The `isolation:` line of `context` in `ctx status`, split into what is in force and
/// what is not.
fn isolation_of(status: &str, context: &str) -> (String, String) {
    let line = status
        .lines()
        .filter_map(|l| l.strip_prefix("isolation:"))
        .map(str::trim)
        .find(|l| l.starts_with(&format!("{context}: ")))
        .unwrap_or_else(|| panic!("no isolation line for {context}:\n{status}"));
    let rest = &line[context.len() + 2..];
    match rest.split_once("; NOT in force: ") {
        Some((yes, no)) => (yes.to_string(), no.to_string()),
        None => (rest.to_string(), String::new()),
    }
}

/// Asserts that the broker's log has a warning line holding every one of `needles`.
fn assert_warned(b: &Broker, needles: &[&str]) {
    let log = b.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && needles.iter().all(|n| l.contains(n))),
        "no warning with {needles:?} in the broker's log:\n{log}"
    );
}

/// A number no other process's argv holds, for `sleep`.
fn marker() -> String {
    let n = unique("").replace('x', "");
    n[n.len().saturating_sub(9)..].to_string()
}

// ---------------------------------------------------------------------------------------
// An unprivileged broker
// ---------------------------------------------------------------------------------------

#[test]
fn unprivileged_broker_starts_and_warns_once_per_option_it_cannot_apply() {
    let dir = secret_dir();
    let high = free_high_port();
    let low = free_low_port(&[]);
    let b = Broker::start_as(ALICE, &[], &degraded_config(dir.path(), low, high));
    let alice = user(ALICE);

    // Each missing option: the context, the option, and what to do.
    assert_warned(
        &b,
        &[
            "contexts.lim.isolation: pid = true NOT in force",
            "start ctx-broker as root",
        ],
    );
    assert_warned(
        &b,
        &[
            "contexts.lim.isolation: network = \"none\" NOT in force",
            "start ctx-broker as root",
        ],
    );
    for limit in ["pids_max", "memory_max"] {
        assert_warned(
            &b,
            &[
                &format!("contexts.lim: {limit} NOT in force"),
                "Permission denied",
                "start ctx-broker as root",
            ],
        );
    }
    assert_warned(
        &b,
        &[
            &format!("reserved port {low} NOT in force"),
            "CAP_NET_BIND_SERVICE",
            "start ctx-broker as root",
        ],
    );
    assert_warned(
        &b,
        &["no cgroup for context(s) plain", "ctx kill --context"],
    );
    assert_warned(
        &b,
        &[
            "contexts.plain: uid separation from the broker NOT in force",
            &format!("uid {}", alice.uid),
            "signals = \"scoped\"",
        ],
    );
    assert_warned(
        &b,
        &["broker runs unprivileged", "start ctx-broker as root"],
    );
    // What works unprivileged is not warned about.
    let log = b.stderr();
    for working in [
        "no_access",
        "signals = \"scoped\" NOT",
        &format!("port {high} NOT"),
    ] {
        assert!(!log.contains(working), "{working:?} warned:\n{log}");
    }
    // One warning per missing option, not one per launch or per status.
    assert_eq!(log.matches("pid = true NOT in force").count(), 1, "{log}");
}

#[test]
fn unprivileged_status_lists_what_is_in_force_and_what_is_not() {
    let dir = secret_dir();
    let high = free_high_port();
    let low = free_low_port(&[]);
    let b = Broker::start_as(ALICE, &[], &degraded_config(dir.path(), low, high));
    let alice = user(ALICE);

    let out = run(&mut b.ctx(["status"])).ok();
    assert!(
        out.contains(&format!("uid {})", alice.uid)),
        "the broker's uid:\n{out}"
    );
    let (yes, no) = isolation_of(&out, "lim");
    for held in [
        "filesystem rules",
        "signals scoped",
        &format!("reserved ports {high} unbindable"),
    ] {
        assert!(yes.contains(held), "{held:?} not in force for lim:\n{out}");
    }
    for missing in [
        "pid = true",
        "network = \"none\"",
        "memory_max",
        "pids_max",
        &format!("reserved port {low}"),
        "uid separation from the broker",
    ] {
        assert!(
            no.contains(missing),
            "{missing:?} not listed missing:\n{out}"
        );
        assert!(!yes.contains(missing), "{missing:?} in force?\n{out}");
    }
    for never in [
        "pid namespace",
        "network none",
        "cgroup v",
        "capabilities dropped",
    ] {
        assert!(!yes.contains(never), "{never:?} claimed for lim:\n{out}");
    }
    let (yes, no) = isolation_of(&out, "plain");
    assert!(!yes.contains("filesystem rules"), "{out}");
    assert!(no.contains("cgroup"), "{out}");
    assert!(no.contains("uid separation from the broker"), "{out}");
    // Every NOT in force has its warning, with the reason.
    for w in [
        "warning:    contexts.lim.isolation: pid = true NOT in force",
        "warning:    contexts.lim: pids_max NOT in force",
        "warning:    contexts.lim: memory_max NOT in force",
        "warning:    contexts.lim: uid separation from the broker NOT in force",
    ] {
        assert!(out.contains(w), "{w:?} missing:\n{out}");
    }

    // The same as JSON, per context.
    let json: serde_json::Value =
        serde_json::from_str(&run(&mut b.ctx(["status", "--json"])).ok()).unwrap();
    assert_eq!(json["uid"], serde_json::json!(alice.uid));
    let per = json["isolation_by_context"]
        .as_array()
        .unwrap_or_else(|| panic!("no isolation_by_context: {json:#}"));
    let lim = per
        .iter()
        .find(|c| c["context"] == "lim")
        .unwrap_or_else(|| panic!("{json:#}"));
    let list = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let no = list(&lim["not_in_force"]);
    for missing in ["pid = true", "network = \"none\"", "memory_max", "pids_max"] {
        assert!(no.iter().any(|n| n == missing), "{missing}: {json:#}");
    }
    let yes = list(&lim["in_force"]);
    assert!(yes.iter().any(|y| y == "filesystem rules"), "{json:#}");
    assert!(json_has_str(&json["warnings"], "pids_max NOT in force"));
}

#[test]
fn unprivileged_launch_lacks_exactly_what_status_says_is_missing() {
    let dir = secret_dir();
    let high = free_high_port();
    let low = free_low_port(&[]);
    let b = Broker::start_as(ALICE, &[], &degraded_config(dir.path(), low, high));
    let broker = b.pid();

    // It runs, as the broker's own uid.
    let alice = user(ALICE);
    assert_eq!(
        b.exec("lim", &["id", "-u"]).ok().trim(),
        alice.uid.to_string()
    );

    // pid = true is missing: the host's PID namespace, the broker in plain sight.
    let out = b.exec("lim", &["cat", "/proc/1/comm"]).ok();
    assert_ne!(out.trim(), "ctx-ns-init", "a PID namespace after all?");
    let out = b
        .exec("lim", &["cat", &format!("/proc/{broker}/comm")])
        .ok();
    assert_eq!(out.trim(), "ctx-broker");

    // network = "none" is missing: the host's interfaces and its 127.0.0.1.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let script = format!(
        "import socket\ns=socket.create_connection(('127.0.0.1',{port}),timeout=3)\nprint('connected')\n"
    );
    assert_eq!(
        b.exec("lim", &["python3", "-c", &script]).ok(),
        "connected\n"
    );
    let host_ifaces = std::fs::read_to_string("/proc/net/dev").unwrap();
    let seen = b.exec("lim", &["cat", "/proc/net/dev"]).ok();
    assert_eq!(
        seen.lines().count(),
        host_ifaces.lines().count(),
        "not the host's interfaces:\n{seen}"
    );

    // pids_max = 16 is missing: 40 processes at once start.
    let forks = "import os,time\n\
        n=0\n\
        for i in range(40):\n\
        \x20   pid=os.fork()\n\
        \x20   if pid==0:\n\
        \x20       time.sleep(1); os._exit(0)\n\
        \x20   n+=1\n\
        print(n)\n";
    assert_eq!(b.exec("lim", &["python3", "-c", forks]).ok().trim(), "40");
    // memory_max = "64M" is missing: 96 MiB touched survive.
    let memory = "b=bytearray(96<<20)\nfor i in range(0,len(b),4096): b[i]=1\nprint('survived')\n";
    assert_eq!(b.exec("lim", &["python3", "-c", memory]).ok(), "survived\n");

    // What it said holds, holds. The no_access path: unreadable here, readable next door.
    let key = dir.path().join("secret/key");
    let key = key.to_str().unwrap();
    assert_eq!(b.exec("plain", &["cat", key]).ok(), "top secret\n");
    let out = b.exec("lim", &["cat", key]);
    assert_ne!(out.code(), 0, "read a no_access file: {}", out.show());
    assert!(
        out.stderr_str().contains("Permission denied"),
        "{}",
        out.show()
    );
    // signals = "scoped": the same uid cannot signal the broker from lim (plain can).
    let probe = format!("kill -0 {broker} && echo reached");
    let out = b.exec("lim", &["sh", "-c", &probe]);
    assert_ne!(out.code(), 0, "signalled the broker: {}", out.show());
    assert_eq!(b.exec("plain", &["sh", "-c", &probe]).ok(), "reached\n");
    // The reserved port it could take: no context binds it.
    let bind = |p: u16| {
        format!(
            "import socket,sys\ns=socket.socket()\n\
             try:\n s.bind(('0.0.0.0',{p}))\nexcept OSError as e:\n print(e.errno); sys.exit(3)\n\
             print('bound')\n"
        )
    };
    let out = b.exec("plain", &["python3", "-c", &bind(high)]);
    assert_eq!(out.code(), 3, "bound reserved port {high}: {}", out.show());
    assert_eq!(out.stdout_str().trim(), libc::EADDRINUSE.to_string());
    // The one it could not take is free for anyone allowed to bind it (here: not the
    // context's uid, below 1024, so only the kernel's own rule holds).
    let out = b.exec("plain", &["python3", "-c", &bind(low)]);
    assert_eq!(
        out.stdout_str().trim(),
        libc::EACCES.to_string(),
        "{}",
        out.show()
    );

    // Each launch into lim tried the namespaces again; the warning stayed one.
    let log = b.stderr();
    assert_eq!(log.matches("pid = true NOT in force").count(), 1, "{log}");
}

#[test]
fn unprivileged_broker_cannot_be_read_or_ptraced_by_its_same_uid_contexts() {
    let dir = secret_dir();
    let b = Broker::start_as(
        ALICE,
        &[],
        &degraded_config(dir.path(), free_low_port(&[]), free_high_port()),
    );
    let broker = b.pid();
    // The same uid, without Landlock: still no /proc/PID/environ, fd, mem of the broker,
    // and no pidfd_getfd of its descriptors (the reserved ports' sockets, callers' pipes).
    let out = b.exec("plain", &["cat", &format!("/proc/{broker}/environ")]);
    assert_ne!(
        out.code(),
        0,
        "read the broker's environment: {}",
        out.show()
    );
    let out = b.exec("plain", &["ls", &format!("/proc/{broker}/fd/")]);
    assert_ne!(
        out.code(),
        0,
        "listed the broker's descriptors: {}",
        out.show()
    );
    let steal = format!(
        "import ctypes,os,sys\nlibc=ctypes.CDLL(None,use_errno=True)\n\
         pfd=os.pidfd_open({broker})\n\
         fd=libc.syscall(438,pfd,0,0)\n\
         print(ctypes.get_errno() if fd<0 else 'stole')\n"
    );
    let out = b.exec("plain", &["python3", "-c", &steal]).ok();
    assert_eq!(out.trim(), libc::EPERM.to_string(), "pidfd_getfd: {out}");
    // The routed program itself stays an ordinary, dumpable process.
    let out = b.exec(
        "plain",
        &[
            "sh",
            "-c",
            "cat /proc/$$/environ | tr '\\0' '\\n' | grep -c ^HOME=",
        ],
    );
    assert_eq!(out.ok().trim(), "1");
}

#[test]
fn unprivileged_broker_with_an_ambient_capability_passes_none_to_its_contexts() {
    // As a unit with User= and AmbientCapabilities=CAP_NET_BIND_SERVICE would run it.
    let low = free_low_port(&[]);
    let other = free_low_port(&[low]);
    let config = format!(
        r#"[broker]
socket_mode = "0666"
reserved_ports = [{low}]

[contexts.plain]
user = "{ALICE}"
cwd = "/"
"#
    );
    let b = Broker::start_as(
        ALICE,
        &[
            "--inh-caps=+net_bind_service",
            "--ambient-caps=+net_bind_service",
        ],
        &config,
    );
    // With the capability, it holds the low port after all.
    let log = b.stderr();
    assert!(
        !log.contains("NOT in force (contexts may bind it)"),
        "{log}"
    );
    let out = run(&mut b.ctx(["status"])).ok();
    let (yes, no) = isolation_of(&out, "plain");
    assert!(
        yes.contains(&format!("reserved ports {low} unbindable")),
        "{out}"
    );
    assert!(!no.contains("reserved port"), "{out}");
    // The routed program has no capability at all ...
    let caps = b.exec("plain", &["grep", "^Cap", "/proc/self/status"]).ok();
    for set in ["CapPrm", "CapEff", "CapAmb"] {
        let line = caps.lines().find(|l| l.starts_with(set)).unwrap();
        assert!(line.ends_with("0000000000000000"), "{caps}");
    }
    // ... so it cannot bind another low port, which the broker could.
    let bind = format!(
        "import socket,sys\ns=socket.socket()\n\
         try:\n s.bind(('0.0.0.0',{other}))\nexcept OSError as e:\n print(e.errno); sys.exit(3)\n\
         print('bound')\n"
    );
    let out = b.exec("plain", &["python3", "-c", &bind]);
    assert_eq!(
        out.stdout_str().trim(),
        libc::EACCES.to_string(),
        "{}",
        out.show()
    );
}

#[test]
fn unprivileged_ctx_kill_context_reaches_only_the_launch_groups_as_status_says() {
    let dir = secret_dir();
    let b = Broker::start_as(
        ALICE,
        &[],
        &degraded_config(dir.path(), free_low_port(&[]), free_high_port()),
    );
    let out = run(&mut b.ctx(["status"])).ok();
    assert!(isolation_of(&out, "plain").1.contains("cgroup"), "{out}");

    // A process that left its launch's group, and a launch still running.
    let m = marker();
    let escaped = format!("1000.{m}");
    let script = format!("setsid sleep {escaped} </dev/null >/dev/null 2>&1 & exit 0");
    assert_eq!(b.exec("plain", &["sh", "-c", &script]).code(), 0);
    let running = format!("2000.{m}");
    let mut launch = b
        .exec_cmd("plain", &["sleep", &running])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The routed sleeps (ctx-alice), not the root `ctx exec` client naming the marker.
    let routed = |m: &str| {
        pids_with_arg(m)
            .into_iter()
            .filter(|p| proc_uid(*p).is_some_and(|u| u != 0))
            .collect::<Vec<_>>()
    };
    let up = poll(Duration::from_secs(10), || {
        (!routed(&escaped).is_empty() && !routed(&running).is_empty()).then_some(())
    });
    assert!(up.is_some(), "the sleeps did not start");

    let out = run(&mut b.ctx(["kill", "--context", "plain", "--signal", "KILL"]));
    let text = out.ok();
    assert!(text.contains("1 routed process group(s)"), "{text}");
    assert!(!text.contains("cgroup"), "claims cgroup processes: {text}");
    let _ = wait_deadline(&mut launch, Duration::from_secs(10));
    assert!(
        poll(Duration::from_secs(5), || routed(&running)
            .is_empty()
            .then_some(()))
        .is_some(),
        "the running launch survived"
    );
    // As reported: without a cgroup the escaped process is out of reach.
    let left = routed(&escaped);
    assert_eq!(left.len(), 1, "the escaped sleep: {left:?}");
    for pid in left {
        signal(pid as u32, nix::sys::signal::Signal::SIGKILL);
    }
}

// ---------------------------------------------------------------------------------------
// A root broker
// ---------------------------------------------------------------------------------------

#[test]
fn root_broker_reports_a_reserved_port_another_process_holds() {
    // On [::] without IPV6_V6ONLY: it holds the port on IPv4 and IPv6.
    let squatter = TcpListener::bind("[::]:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let free = free_high_port();
    let config = format!(
        r#"[broker]
socket_mode = "0666"
reserved_ports = [{port}, {free}]
port_owners = {{ {port} = "plain" }}

[contexts.plain]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}

[contexts.net]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ network = "none" }}
"#
    );
    let b = Broker::start(&config);
    assert_warned(
        &b,
        &[
            &format!("reserved port {port} NOT in force"),
            "another process holds",
            "reserve another port",
        ],
    );
    let out = run(&mut b.ctx(["status"])).ok();
    let (yes, no) = isolation_of(&out, "plain");
    assert!(
        yes.contains(&format!("reserved ports {free} unbindable")),
        "{out}"
    );
    assert!(no.contains(&format!("reserved port {port}")), "{out}");
    assert!(!no.contains("uid separation"), "{out}");
    // In its own network namespace the host's ports neither apply nor are missing.
    let (yes, no) = isolation_of(&out, "net");
    assert!(yes.contains("network none"), "{out}");
    assert!(
        !yes.contains("reserved") && !no.contains("reserved"),
        "{out}"
    );
    // Its owner cannot be handed a socket the broker does not hold.
    let out = run(&mut b.ctx([
        "exec",
        "--context",
        "plain",
        "--listen-port",
        &port.to_string(),
        "--",
        "true",
    ]));
    assert_eq!(out.code(), 125, "{}", out.show());
    assert!(
        out.stderr_str().contains("not held by the broker"),
        "{}",
        out.show()
    );
    drop(squatter);
}

// ---------------------------------------------------------------------------------------
// Silent degradations, now warned about or closed
// ---------------------------------------------------------------------------------------

#[test]
fn a_no_access_path_created_after_the_first_launch_is_hidden_from_later_launches() {
    let dir = TempDir::new();
    let later = dir.path().join("later");
    let config = format!(
        r#"[broker]
socket_mode = "0666"

[contexts.fs]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ no_access = ["{}"] }}

[contexts.plain]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
"#,
        later.display()
    );
    let b = Broker::start(&config);
    assert_warned(
        &b,
        &[
            "contexts.fs.isolation.no_access[0]",
            "does not exist",
            "launches already running then are not",
        ],
    );
    // The first launch builds the context's ruleset, while the path does not exist.
    assert_eq!(b.exec("fs", &["true"]).code(), 0);
    dir.subdir("later", 0o755);
    let key = dir.file("later/key", b"appeared\n", 0o644);
    let key = key.to_str().unwrap();
    assert_eq!(b.exec("plain", &["cat", key]).ok(), "appeared\n");
    let out = b.exec("fs", &["cat", key]);
    assert_ne!(
        out.code(),
        0,
        "read a no_access path that appeared: {}",
        out.show()
    );
    assert!(
        out.stderr_str().contains("Permission denied"),
        "{}",
        out.show()
    );
}
