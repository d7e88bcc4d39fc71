//! Reserved ports: no context binds them, and the owner gets the broker's held socket.

use std::io::Read;
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use ctx_tests::isolation::*;
use ctx_tests::*;

// ---------------------------------------------------------------------------------------
// reserved_ports
// ---------------------------------------------------------------------------------------

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
            let out = b.exec("user", &["python3", "-c", &bind_attempt(addr, port, true)]);
            assert_eq!(out.code(), 3, "bound {addr}:{port}: {}", out.show());
            let errno: i32 = out.stdout_str().trim().parse().unwrap();
            assert!(
                errno == libc::EADDRINUSE || errno == libc::EACCES,
                "{addr}:{port}: errno {errno}"
            );
        }
    }
}

/// A Python script that binds `addr:port` and listens (with `SO_REUSEADDR` and
/// `SO_REUSEPORT` when `reuse`), exiting 3 with the errno printed when it cannot.
fn bind_attempt(addr: &str, port: u16, reuse: bool) -> String {
    let family = if addr.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let reuse = if reuse {
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n"
    } else {
        ""
    };
    format!(
        "import socket,sys\ns=socket.socket(socket.{family})\n{reuse}\
         try:\n s.bind(('{addr}',{port})); s.listen(1)\nexcept OSError as e:\n print(e.errno); sys.exit(3)\n"
    )
}

/// The owner turns `SO_REUSEPORT` off on the socket it was handed (a new socket's bind
/// would conflict with it), binds it to a device (for good, for an unprivileged process)
/// and shuts it down (which, the only one bound, would free the port): no one, of any
/// uid, binds the port then, and the owner's next launch gets a socket that listens, on
/// every device. Nothing listens on the IPv6 side, so a client there is refused at
/// once (it used to wait in a queue no one accepted from).
#[test]
fn the_owner_shutting_its_socket_down_frees_the_port_for_no_one() {
    let (owned, spare) = free_ports();
    let b = Broker::start(&ports_config(owned, spare));
    let port = owned.to_string();
    let shut = "import socket\ns=socket.socket(fileno=3)\n\
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)\n\
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'lo')\n\
        s.shutdown(socket.SHUT_RDWR)\n";
    let out = run(&mut b.ctx([
        "exec",
        "--context",
        "platform",
        "--listen-port",
        &port,
        "--",
        "python3",
        "-c",
        shut,
    ]));
    assert_eq!(out.code(), 0, "{}", out.show());
    let bob = user(BOB);
    for addr in ["0.0.0.0", "127.0.0.1"] {
        for reuse in [false, true] {
            let script = bind_attempt(addr, owned, reuse);
            // A context's process, a user allowed into none, root outside every context.
            let routed = b.exec("user", &["python3", "-c", &script]);
            let mut local = std::process::Command::new("python3");
            local.args(["-c", &script]).current_dir("/");
            std::os::unix::process::CommandExt::uid(&mut local, bob.uid);
            std::os::unix::process::CommandExt::gid(&mut local, bob.gid);
            let local = run(&mut local);
            let root = run(std::process::Command::new("python3").args(["-c", &script]));
            for (who, out) in [("routed", routed), ("ctx-bob", local), ("root", root)] {
                assert_eq!(
                    out.code(),
                    3,
                    "{who} bound {addr}:{owned} (reuse {reuse}): {}",
                    out.show()
                );
                let errno: i32 = out.stdout_str().trim().parse().unwrap();
                assert_eq!(
                    errno,
                    libc::EADDRINUSE,
                    "{who} {addr}:{owned} (reuse {reuse})"
                );
            }
        }
    }
    // The next claim listens again and serves.
    // SO_BINDTOIFINDEX (62): the device binding the last owner left is gone too, which
    // a process of the owner's could never undo itself.
    let serve = "import socket\ns=socket.socket(fileno=3)\n\
        dev=s.getsockopt(socket.SOL_SOCKET, 62)\n\
        c,_=s.accept(); c.sendall(b'served again, device %d\\n' % dev); c.close()\n";
    assert_eq!(serve_once(&b, owned, serve), "served again, device 0\n");
    let v6: std::net::SocketAddr = format!("[::1]:{owned}").parse().unwrap();
    match TcpStream::connect_timeout(&v6, Duration::from_secs(3)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        // A host without IPv6 loopback.
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
        other => panic!("[::1]:{owned}: {other:?}"),
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
    // The socket already listens (the broker's): connecting never races the service.
    assert_eq!(serve_once(&b, owned, service), "served by the owner\n");
}

/// Runs the Python `service` in `platform` with `port` handed over, connects to the port
/// once (it listens already: never a race with the service) and gives back what it sent;
/// the service must end well.
fn serve_once(b: &Broker, port: u16, service: &str) -> String {
    let mut svc = b
        .ctx([
            "exec",
            "--context",
            "platform",
            "--listen-port",
            &port.to_string(),
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
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to the owned port");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).unwrap();
    let status = wait_deadline(&mut svc, Duration::from_secs(10)).expect("service ends");
    let mut err = String::new();
    svc.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "service failed: {err}");
    got
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
