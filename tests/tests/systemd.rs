//! The broker as a systemd service, without systemd as PID 1 (these machines have none):
//! the unit files pass `systemd-analyze verify`, and a test plays the service manager's
//! part, creating the listening socket and a notify socket, starting the broker with
//! `LISTEN_FDS`/`LISTEN_PID`/`NOTIFY_SOCKET`, and reading what it reports.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use ctx_tests::*;

// ---------------------------------------------------------------------------------------
// Unit files
// ---------------------------------------------------------------------------------------

fn systemd_analyze() -> &'static str {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "systemd-analyze is missing: scripts/test.sh installs the systemd package"
    );
    "systemd-analyze"
}

/// `systemd-analyze verify` on these unit files. `--man=no`: the units name `man:ctx(1)`
/// as documentation, which is not installed on a build machine, and without it verify
/// fails on that alone. Verify needs no running systemd; it loads the units offline.
/// It exits 0 even for unknown keys or bad values, which it only prints, so any output
/// at all is a failure.
fn verify(units: &[PathBuf]) -> Output {
    run(Command::new(systemd_analyze())
        .args(["verify", "--man=no"])
        .args(units))
}

/// The shipped units in a temp dir, ExecStart pointed at the built broker (verify checks
/// the binary exists), as `scripts/install.sh` does for its prefix.
fn units_for_build(dir: &TempDir) -> Vec<PathBuf> {
    let root = repo_root();
    let service = std::fs::read_to_string(root.join("scripts/ctx-broker.service")).unwrap();
    assert!(service.contains("/usr/local/bin/ctx-broker"));
    let service = service.replace(
        "/usr/local/bin/ctx-broker",
        bin("ctx-broker").to_str().unwrap(),
    );
    let socket = std::fs::read(root.join("scripts/ctx-broker.socket")).unwrap();
    vec![
        dir.file("ctx-broker.service", service.as_bytes(), 0o644),
        dir.file("ctx-broker.socket", &socket, 0o644),
    ]
}

#[test]
fn unit_files_pass_systemd_analyze_verify() {
    let dir = TempDir::new();
    let out = verify(&units_for_build(&dir));
    assert_eq!(out.code(), 0, "{}", out.show());
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify complained:\n{}",
        out.show()
    );
}

#[test]
fn verify_would_catch_a_broken_unit() {
    // Guards the test above: the same check notices an unknown key.
    let dir = TempDir::new();
    let units = units_for_build(&dir);
    let text = std::fs::read_to_string(&units[0])
        .unwrap()
        .replace("KillMode=mixed", "KillMode=mixed\nKilMode=typo");
    std::fs::write(&units[0], text).unwrap();
    let out = verify(&units);
    assert!(out.stderr_str().contains("KilMode"), "{}", out.show());
}

#[test]
fn service_unit_keeps_what_the_broker_needs() {
    let text = std::fs::read_to_string(repo_root().join("scripts/ctx-broker.service")).unwrap();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
    };
    assert_eq!(value("Type").as_deref(), Some("notify"));
    assert_eq!(
        value("ExecStart").as_deref(),
        Some("/usr/local/bin/ctx-broker --config /etc/ctx/contexts.toml")
    );
    assert_eq!(
        value("ExecReload").as_deref(),
        Some("/bin/kill -HUP $MAINPID")
    );
    for (key, v) in [
        ("RuntimeDirectory", "ctx"),
        ("StateDirectory", "ctx"),
        ("LogsDirectory", "ctx"),
        ("NoNewPrivileges", "no"),
        ("LimitNOFILE", "1024:524288"),
    ] {
        assert_eq!(value(key).as_deref(), Some(v), "{key}");
    }
    // Nothing that would take uid switching, namespaces or PTYs from routed processes.
    for forbidden in [
        "PrivateDevices=yes",
        "PrivateTmp=yes",
        "ProtectSystem=",
        "RestrictNamespaces=",
        "NoNewPrivileges=yes",
        "User=",
    ] {
        let set = text
            .lines()
            .any(|l| !l.starts_with('#') && l.starts_with(forbidden));
        assert!(!set, "{forbidden} in the service unit");
    }
    let bounding = value("CapabilityBoundingSet").unwrap();
    assert!(bounding.starts_with('~'), "a deny list, not an allow list");
    for needed in ["CAP_SETUID", "CAP_SETGID", "CAP_SYS_ADMIN", "CAP_KILL"] {
        assert!(!bounding.contains(needed), "{needed} must stay");
    }
    let socket = std::fs::read_to_string(repo_root().join("scripts/ctx-broker.socket")).unwrap();
    assert!(socket.contains("ListenStream=/run/ctx/broker.sock"));
    assert!(socket.contains("SocketMode=0660"));
}

// ---------------------------------------------------------------------------------------
// Playing systemd: socket activation and readiness
// ---------------------------------------------------------------------------------------

/// The notify socket we listen on, as systemd would.
struct Notify {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Notify {
    fn bind(path: &Path) -> Notify {
        let socket = UnixDatagram::bind(path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Notify {
            socket,
            seen: Vec::new(),
        }
    }

    /// Waits up to 10 s for a datagram with a line `line`; returns that datagram.
    fn expect(&mut self, line: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            let Ok(n) = self.socket.recv(&mut buf) else {
                continue;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(msg.clone());
            if msg.lines().any(|l| l == line) {
                return msg;
            }
        }
        panic!("no {line:?} from the broker; got {:?}", self.seen);
    }
}

/// Starts the broker as systemd would with a socket unit: the listening socket at fd 3,
/// `LISTEN_FDS=1`, `LISTEN_FDNAMES=broker`, and `LISTEN_PID` naming the broker itself.
/// The pid is only known in the child, so a shell sets it (`$$`) and execs the broker
/// in place, keeping its pid; the pre-exec hook only moves the socket to fd 3.
fn start_activated(dir: &TempDir, listener: &UnixListener, notify: &Path) -> Child {
    start_activated_with(dir, listener, notify, "1")
}

/// The same, with `LISTEN_FDS` set to `count`.
fn start_activated_with(
    dir: &TempDir,
    listener: &UnixListener,
    notify: &Path,
    count: &str,
) -> Child {
    let config = dir.file("contexts.toml", standard_config().as_bytes(), 0o644);
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"")
        .arg(bin("ctx-broker"))
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .env("LISTEN_FDS", count)
        .env("LISTEN_FDNAMES", "broker")
        .env("NOTIFY_SOCKET", notify)
        .env_remove("CTX_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("broker.stderr")).unwrap());
    // SAFETY: dup2 and fcntl are async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Inherited across exec, as sd_listen_fds expects (dup2 clears the flag, but
            // not when the socket already was descriptor 3).
            if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("start ctx-broker through sh")
}

#[test]
fn socket_activation_and_readiness_notification() {
    require_root();
    let dir = TempDir::new();
    let sock = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&sock).expect("bind the service socket");
    let notify_path = dir.path().join("notify.sock");
    let mut notify = Notify::bind(&notify_path);
    let mut broker = start_activated(&dir, &listener, &notify_path);
    let stderr = || std::fs::read_to_string(dir.path().join("broker.stderr")).unwrap_or_default();

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ready = notify.expect("READY=1");
        assert!(ready.contains("STATUS=serving 2 context(s)"), "{ready}");

        // It answers on the socket we made, and says so.
        let ctx = |args: &[&str]| {
            let mut c = Command::new(bin("ctx"));
            c.arg("--socket").arg(&sock).args(args);
            c
        };
        let status = run(&mut ctx(&["status", "--json"])).ok();
        let report: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(report["socket_path"], sock.to_str().unwrap(), "{status}");
        assert_eq!(
            report["pid"],
            broker.id(),
            "LISTEN_PID must be the broker's own pid"
        );
        let out = run(&mut ctx(&["exec", "--context", "alice", "--", "id", "-un"]));
        assert_eq!(out.ok().trim(), ALICE);

        // A reload is bracketed by RELOADING=1 (with the clock systemd 253+ checks) and
        // READY=1.
        signal(broker.id(), Signal::SIGHUP);
        let reloading = notify.expect("RELOADING=1");
        assert!(
            reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")
                && l["MONOTONIC_USEC=".len()..].parse::<u64>().is_ok()),
            "{reloading}"
        );
        notify.expect("READY=1");

        signal(broker.id(), Signal::SIGTERM);
        notify.expect("STOPPING=1");
        let st = wait_deadline(&mut broker, Duration::from_secs(15)).expect("broker exits");
        assert_eq!(st.code(), Some(0), "{}", stderr());
        // The socket belongs to the service manager: the broker leaves it in place.
        assert!(
            sock.exists(),
            "the broker removed a socket it did not create"
        );
    }));
    if broker.try_wait().ok().flatten().is_none() {
        signal(broker.id(), Signal::SIGKILL);
        let _ = broker.wait();
    }
    if let Err(e) = result {
        eprintln!("--- broker stderr ---\n{}", stderr());
        std::panic::resume_unwind(e);
    }
}

#[test]
fn a_spaced_count_is_read_and_a_missing_descriptor_is_named() {
    require_root();
    let dir = TempDir::new();
    let sock = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&sock).expect("bind the service socket");
    let notify_path = dir.path().join("notify.sock");
    let mut notify = Notify::bind(&notify_path);
    let stderr = || std::fs::read_to_string(dir.path().join("broker.stderr")).unwrap_or_default();

    let mut broker = start_activated_with(&dir, &listener, &notify_path, " 1 ");
    notify.expect("READY=1");
    signal(broker.id(), Signal::SIGTERM);
    let st = wait_deadline(&mut broker, Duration::from_secs(15)).expect("broker exits");
    assert_eq!(st.code(), Some(0), "{}", stderr());

    // Two announced, one passed: the error says which one is missing.
    let mut broker = start_activated_with(&dir, &listener, &notify_path, "2");
    let st = wait_deadline(&mut broker, Duration::from_secs(15));
    if st.is_none() {
        let _ = broker.kill();
        let _ = broker.wait();
    }
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{}", stderr());
    assert!(stderr().contains("descriptor 4"), "{}", stderr());
}

#[test]
fn listen_fds_meant_for_another_process_are_ignored() {
    // Inherited variables (LISTEN_PID of some parent) must not make the broker adopt
    // whatever happens to be fd 3: it binds its own --socket.
    require_root();
    let dir = TempDir::new();
    let config = dir.file("contexts.toml", standard_config().as_bytes(), 0o644);
    let sock = dir.path().join("own.sock");
    let mut broker = Command::new(bin("ctx-broker"))
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&sock)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = poll(Duration::from_secs(10), || {
        Command::new(bin("ctx"))
            .arg("--socket")
            .arg(&sock)
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?
            .success()
            .then_some(())
    });
    signal(broker.id(), Signal::SIGTERM);
    let st = wait_deadline(&mut broker, Duration::from_secs(10));
    if st.is_none() {
        let _ = broker.kill();
        let _ = broker.wait();
    }
    assert!(up.is_some(), "broker did not bind its own socket");
    assert!(!sock.exists(), "its own socket is removed at exit");
}

/// A socket unit with `PassCredentials=yes` makes its listener `SO_PASSCRED`, which every
/// accepted connection inherits: the kernel then puts `SCM_CREDENTIALS` before a message's
/// descriptors, which left room for 245 of the 253 a message may carry. The broker read the
/// message as truncated, closed what it got on its async worker (where a file whose every
/// close waits hung it, helper-97) and failed the launch. It turns the option off on each
/// connection: a launch passing 300 descriptors through such a listener gets them all.
#[test]
fn a_listener_passing_credentials_loses_no_descriptor() {
    require_root();
    let dir = TempDir::new();
    let sock = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&sock).expect("bind the service socket");
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and an int-sized option value with its length.
    let set = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0);
    let notify_path = dir.path().join("notify.sock");
    let mut notify = Notify::bind(&notify_path);
    let mut broker = start_activated(&dir, &listener, &notify_path);
    let stderr = || std::fs::read_to_string(dir.path().join("broker.stderr")).unwrap_or_default();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        notify.expect("READY=1");
        let count = |routed: bool| {
            let mut c = Command::new("bash");
            c.arg("-c").arg(
                "for i in $(seq 300); do exec {f}</dev/null; done; \
                 /bin/sh -c 'ls /proc/self/fd | wc -l'",
            );
            if routed {
                c.env("LD_PRELOAD", bin("libctx_interposer.so"))
                    .env("CTX_ROUTE", "alice")
                    .env("CTX_SOCKET", &sock);
            }
            run(&mut c).ok().trim().to_string()
        };
        let local = count(false);
        assert!(local.parse::<u32>().unwrap() > 300, "{local}");
        assert_eq!(count(true), local, "descriptors the routed program has");
    }));
    signal(broker.id(), Signal::SIGKILL);
    let _ = broker.wait();
    if let Err(e) = result {
        eprintln!("--- broker stderr ---\n{}", stderr());
        std::panic::resume_unwind(e);
    }
}
