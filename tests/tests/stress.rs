//! Load and faults: many clients at once, clients and brokers killed at the worst moment,
//! a full audit filesystem, and routed commands that misbehave. Each test is bounded in
//! time and count and prints what it measured.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ctx_protocol::ExitStatus;
use nix::sys::signal::Signal;

use ctx_tests::raw;
use ctx_tests::*;

/// How long a routed process group may outlive its killed client (the bound).
const GONE_WITHIN: Duration = Duration::from_secs(1);

/// `sleep` with a duration no other process on the machine has: its argv is the marker.
fn marked_sleep() -> String {
    let n = unique("").replace('x', "");
    format!("1000.{}", &n[n.len().saturating_sub(15)..])
}

/// Live processes owned by `uid` whose argv contains `marker`.
fn routed(marker: &str, uid: u32) -> Vec<i32> {
    pids_with_arg(marker)
        .into_iter()
        .filter(|&p| proc_uid(p) == Some(uid))
        .collect()
}

/// Waits (10 s at most) until `n` routed processes carry `marker`.
fn wait_routed(marker: &str, uid: u32, n: usize) {
    poll(Duration::from_secs(10), || {
        (routed(marker, uid).len() >= n).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "expected {n} routed processes with {marker}, found {:?}",
            routed(marker, uid)
        )
    });
}

/// Asserts every process carrying `marker` is gone within `bound`; kills leftovers.
fn assert_gone_within(marker: &str, bound: Duration, what: &str) {
    let start = Instant::now();
    let gone = poll(bound, || pids_with_arg(marker).is_empty().then_some(()));
    if gone.is_none() {
        let left = pids_with_arg(marker);
        for &p in &left {
            signal(p as u32, Signal::SIGKILL);
        }
        panic!("{what}: process(es) {left:?} still alive after {bound:?}");
    }
    eprintln!("{what}: routed processes gone after {:?}", start.elapsed());
}

/// `ctx status` answers, and within `bound`.
fn assert_responsive(b: &Broker, bound: Duration, what: &str) {
    let start = Instant::now();
    let out = run_with(
        &mut b.ctx(["status"]),
        None,
        bound + Duration::from_secs(10),
    );
    assert_eq!(out.code(), 0, "{what}: status failed\n{}", out.show());
    let took = start.elapsed();
    assert!(
        took < bound,
        "{what}: `ctx status` took {took:?} (bound {bound:?})"
    );
}

fn devnull() -> OwnedFd {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .expect("open /dev/null")
        .into()
}

/// Raises this process's descriptor limit to its hard limit (the brokers and clients the
/// test starts inherit it): hundreds of launches at once hold thousands of descriptors.
fn raise_nofile() {
    // SAFETY: rlimit is plain data; getrlimit fills it and setrlimit reads it.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------

/// Clients x launches of the load test. 32 x 500 is the figure; on 2 vCPUs it
/// takes about a minute over the raw protocol (no CLI process per launch).
const CLIENTS: usize = 32;
const LAUNCHES: usize = 500;

#[test]
fn thirty_two_clients_each_launching_five_hundred_times_lose_nothing() {
    raise_nofile();
    let b = Broker::start(&standard_config());
    // Warm up (first launch loads the user's groups, etc.), then take the baseline.
    assert_eq!(b.exec("alice", &["true"]).code(), 0);
    let pid = b.pid();
    let baseline = raw::settle_fds(pid, 0, Duration::from_millis(200));
    let socket = b.socket();
    let wrong = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let socket = socket.clone();
            let wrong = wrong.clone();
            let done = done.clone();
            thread::spawn(move || {
                let null = devnull();
                let fd = null.as_raw_fd();
                for i in 0..LAUNCHES {
                    let code = ((c * LAUNCHES + i) % 256) as i32;
                    let script = format!("exit {code}");
                    let (status, frames) = raw::exec(
                        &socket,
                        "alice",
                        &[b"sh", b"-c", script.as_bytes()],
                        [fd, fd, fd],
                        Duration::from_secs(60),
                    );
                    if status != Some(ExitStatus::Code(code)) {
                        if wrong.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!(
                                "client {c} launch {i}: expected exit {code}, got {status:?} \
                                 (error {:?}, failure {:?})",
                                raw::error_of(&frames),
                                raw::failure_of(&frames)
                            );
                        }
                    } else {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread");
    }
    let took = start.elapsed();
    let total = CLIENTS * LAUNCHES;
    eprintln!(
        "{total} launches from {CLIENTS} clients in {took:?} ({:.0}/s)",
        total as f64 / took.as_secs_f64()
    );
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "launches with a wrong or no status"
    );
    assert_eq!(done.load(Ordering::Relaxed), total, "launches lost");
    let after = raw::settle_fds(pid, baseline, Duration::from_secs(5));
    assert!(
        after <= baseline,
        "broker holds {after} descriptors after the load, {baseline} before"
    );
    let running = run(&mut b.ctx(["status", "--json"])).ok();
    let report: serde_json::Value = serde_json::from_str(&running).unwrap();
    assert_eq!(report["running"], 0, "{report}");
    assert!(
        report["launches"].as_u64().unwrap() > total as u64,
        "{report}"
    );
}

// ---------------------------------------------------------------------------------------
// Clients killed at the worst moment
// ---------------------------------------------------------------------------------------

#[test]
fn client_gone_mid_launch_leaves_no_routed_group() {
    let alice = user(ALICE);
    let b = Broker::start(&standard_config());
    let arg = marked_sleep();
    let script = format!("sleep {arg} & sleep {arg}; wait");
    // 1. Deterministic: the request is sent, the client hangs up before `Started` (even
    //    rounds) or right as `Started` arrives (odd rounds).
    for round in 0..10 {
        let null = devnull();
        let fd = null.as_raw_fd();
        let req = raw::exec_request("alice", &[b"sh", b"-c", script.as_bytes()]);
        let mut s = raw::send_opening(
            &b.socket(),
            &raw::opening(&ctx_protocol::Request::Exec(req)),
            &[fd, fd, fd],
        );
        if round % 2 == 1 {
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            while !raw::split_frames(&got).iter().any(|p| {
                matches!(
                    ctx_protocol::frame::decode::<ctx_protocol::Reply>(p),
                    Ok(ctx_protocol::Reply::Started { .. })
                )
            }) {
                let n = s.read(&mut buf).expect("read until Started");
                assert!(n > 0, "broker hung up before Started");
                got.extend_from_slice(&buf[..n]);
            }
        }
        drop(s);
    }
    // 2. The CLI killed by SIGKILL a little later each time: before it connects, while the
    //    broker forks, after the group started.
    for i in 0..15u64 {
        let mut client = b
            .exec_cmd("alice", &["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ctx");
        thread::sleep(Duration::from_micros(700 * i));
        let _ = client.kill();
        let _ = client.wait();
    }
    // Every group started above must go. The last ones may only just have started.
    assert_gone_within(&arg, GONE_WITHIN, "clients gone mid-launch");
    let _ = alice;
    assert_eq!(b.exec("alice", &["true"]).code(), 0, "broker still serves");
}

/// Opens a PTY pair; the slave side becomes the controlling terminal of the child that
/// `make_controlling` is applied to.
fn open_pty() -> (OwnedFd, OwnedFd) {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    (pty.master, pty.slave)
}

#[test]
fn client_killed_mid_pty_relay_leaves_no_routed_group() {
    let alice = user(ALICE);
    let b = Broker::start(&standard_config());
    let arg = marked_sleep();
    let (master, slave) = open_pty();
    // The routed shell prints without end while a background sleep holds the group.
    let script = format!("sleep {arg} & while :; do echo relay-{arg}; done");
    // `ctx exec -t`, at a terminal the test made.
    let mut cmd = b.ctx([
        "exec",
        "-t",
        "--context",
        "alice",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let slave_fd = slave.as_raw_fd();
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: setsid and ioctl are async-signal-safe; they run in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            libc::ioctl(slave_fd, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let mut client = cmd.spawn().expect("spawn ctx exec -t");
    // The Command holds copies of the slave: with them gone, the master sees EIO once the
    // client dies, which ends the reader below.
    drop(cmd);
    drop(slave);
    // Drain the terminal so the relay keeps flowing; note when the routed output arrives.
    let seen = Arc::new(AtomicUsize::new(0));
    let reader = {
        let seen = seen.clone();
        let mut m = fs::File::from(master.try_clone().unwrap());
        let want = format!("relay-{arg}");
        thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut tail = Vec::new();
            loop {
                match m.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        seen.fetch_add(n, Ordering::Relaxed);
                        if tail.len() < 1 << 20 {
                            tail.extend_from_slice(&buf[..n]);
                        }
                    }
                }
            }
            String::from_utf8_lossy(&tail).contains(&want)
        })
    };
    wait_routed(&arg, alice.uid, 2);
    poll(Duration::from_secs(10), || {
        (seen.load(Ordering::Relaxed) > 256 * 1024).then_some(())
    })
    .expect("routed output relayed through the PTY");
    client.kill().expect("SIGKILL ctx");
    client.wait().expect("reap ctx");
    assert_gone_within(&arg, GONE_WITHIN, "ctx exec -t killed mid-relay");
    drop(master);
    assert!(
        reader.join().unwrap(),
        "the relay carried the routed output"
    );
    assert_eq!(b.exec("alice", &["true"]).code(), 0, "broker still serves");
}

#[test]
fn client_killed_mid_stdin_stream_leaves_no_routed_group() {
    let alice = user(ALICE);
    let b = Broker::start(&standard_config());
    let arg = marked_sleep();
    // A routed reader of an endless stdin stream ($0 carries the marker), plus a child.
    let mut client = b
        .exec_cmd(
            "alice",
            &[
                "sh",
                "-c",
                "sleep \"$0\" & n=0; while read -r l; do n=$((n+1)); done",
                &arg,
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ctx");
    let mut stdin = client.stdin.take().unwrap();
    let writer = thread::spawn(move || {
        let line = [b'x'; 99];
        let mut sent = 0usize;
        while stdin
            .write_all(&line)
            .and_then(|_| stdin.write_all(b"\n"))
            .is_ok()
        {
            sent += 100;
            if sent > 512 << 20 {
                break;
            }
        }
        sent
    });
    wait_routed(&arg, alice.uid, 2);
    thread::sleep(Duration::from_millis(200));
    client.kill().expect("SIGKILL ctx");
    client.wait().expect("reap ctx");
    assert_gone_within(&arg, GONE_WITHIN, "ctx exec killed mid-stdin-stream");
    let sent = writer.join().unwrap();
    eprintln!("{sent} bytes streamed into the routed stdin before the kill");
    assert!(sent > 0);
    assert_eq!(b.exec("alice", &["true"]).code(), 0, "broker still serves");
}

// ---------------------------------------------------------------------------------------
// The broker killed
// ---------------------------------------------------------------------------------------

#[test]
fn broker_killed_with_sigkill_takes_its_launches_along_and_a_new_one_starts() {
    let alice = user(ALICE);
    let mut b = Broker::start(&standard_config());
    let arg = marked_sleep();
    let clients: Vec<Child> = (0..20)
        .map(|_| {
            b.exec_cmd("alice", &["sleep", &arg])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn ctx")
        })
        .collect();
    wait_routed(&arg, alice.uid, 20);
    signal(b.pid(), Signal::SIGKILL);
    // Every waiting client: ctx's own error, with a message.
    for mut c in clients {
        let st = wait_deadline(&mut c, Duration::from_secs(10)).unwrap_or_else(|| {
            let _ = c.kill();
            panic!("ctx exec still waiting 10 s after the broker died");
        });
        let mut err = String::new();
        let _ = c.stderr.take().unwrap().read_to_string(&mut err);
        assert_eq!(st.code(), Some(125), "status {st}, stderr {err:?}");
        assert!(
            err.starts_with("ctx") && err.contains("broker"),
            "message should say the broker is gone: {err:?}"
        );
    }
    // No routed process is left behind.
    assert_gone_within(&arg, GONE_WITHIN, "broker killed by SIGKILL");
    // A new broker starts on the same socket path and serves.
    b.restart();
    assert_eq!(b.exec("alice", &["echo", "again"]).ok(), "again\n");
}

// ---------------------------------------------------------------------------------------
// A full audit filesystem
// ---------------------------------------------------------------------------------------

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(parent: &Path, size: &str) -> Tmpfs {
        let dir = parent.join("small-fs");
        fs::create_dir_all(&dir).unwrap();
        let out = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0755"))
            .arg("tmpfs")
            .arg(&dir));
        assert_eq!(out.code(), 0, "mount tmpfs: {}", out.show());
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Fills the filesystem holding `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = fs::File::create(&path).unwrap();
    let block = vec![0x55u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

#[test]
fn audit_log_on_a_full_filesystem_launches_go_on_and_status_says_so() {
    require_root();
    let td = TempDir::new();
    let fs_small = Tmpfs::mount(td.path(), "256k");
    let audit = fs_small.dir.join("audit.jsonl");
    let config = td.file("contexts.toml", standard_config().as_bytes(), 0o644);
    let sock = td.path().join("broker.sock");
    let mut broker = Command::new(bin("ctx-broker"))
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&sock)
        .arg("--state-dir")
        .arg(td.path().join("state"))
        .arg("--audit-log")
        .arg(&audit)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ctx-broker");
    let ctx = |args: &[&str]| {
        let mut c = Command::new(bin("ctx"));
        c.arg("--socket").arg(&sock).args(args);
        c
    };
    let ready = poll(Duration::from_secs(10), || {
        let st = ctx(&["status"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        st.success().then_some(())
    });
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(ready.is_some(), "broker did not start");
        assert_eq!(
            run(&mut ctx(&["exec", "--context", "alice", "--", "true"])).code(),
            0
        );
        let filler = fill(&fs_small.dir);
        // Launches go on, quickly, with the right status.
        let start = Instant::now();
        for i in 0..20 {
            let out = run(&mut ctx(&[
                "exec",
                "--context",
                "alice",
                "--",
                "sh",
                "-c",
                &format!("exit {i}"),
            ]));
            assert_eq!(
                out.code(),
                i,
                "launch {i} on a full audit fs: {}",
                out.show()
            );
        }
        eprintln!("20 launches with a full audit fs in {:?}", start.elapsed());
        let status = run(&mut ctx(&["status"])).ok();
        assert!(
            status.contains("audit log") && status.contains("No space left"),
            "ctx status does not say the audit log is failing:\n{status}"
        );
        // Space again: the log resumes with the next launch.
        fs::remove_file(filler).unwrap();
        let mark = unique("after-full-");
        assert_eq!(
            run(&mut ctx(&[
                "exec",
                "--context",
                "alice",
                "--",
                "echo",
                &mark
            ]))
            .ok(),
            format!("{mark}\n")
        );
        let resumed = poll(Duration::from_secs(5), || {
            fs::read_to_string(&audit)
                .ok()
                .filter(|t| t.contains(&mark))
        });
        assert!(
            resumed.is_some(),
            "audit log did not resume after space was freed"
        );
    }));
    signal(broker.id(), Signal::SIGTERM);
    if wait_deadline(&mut broker, Duration::from_secs(10)).is_none() {
        let _ = broker.kill();
        let _ = broker.wait();
    }
    drop(fs_small);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

// ---------------------------------------------------------------------------------------
// Routed commands that misbehave
// ---------------------------------------------------------------------------------------

/// While `child` (a ctx exec) runs, the broker answers `ctx status` within 2 s and serves
/// another launch; then `child` ends with `code` within `bound`.
fn responsive_while(b: &Broker, mut child: Child, code: i32, bound: Duration, what: &str) {
    thread::sleep(Duration::from_millis(300));
    assert_responsive(b, Duration::from_secs(2), what);
    assert_eq!(
        b.exec("alice", &["true"]).code(),
        0,
        "{what}: another launch"
    );
    let st = wait_deadline(&mut child, bound).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("{what}: ctx exec did not end within {bound:?}");
    });
    assert_eq!(st.code(), Some(code), "{what}: {st}");
}

#[test]
fn a_routed_command_that_closes_its_stdio_is_waited_for_normally() {
    let b = Broker::start(&standard_config());
    let child = b
        .exec_cmd(
            "alice",
            &["sh", "-c", "exec 0<&- 1>&- 2>&-; sleep 1; exit 4"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    responsive_while(&b, child, 4, Duration::from_secs(10), "closed stdio");
}

#[test]
fn a_routed_command_that_daemonizes_returns_and_the_broker_stays_responsive() {
    let alice = user(ALICE);
    let b = Broker::start(&standard_config());
    let arg = marked_sleep();
    // Double fork into a new session, stdio detached: the classic daemon.
    let script = format!("(setsid sleep {arg} </dev/null >/dev/null 2>&1 &); exit 0");
    let start = Instant::now();
    let out = b.exec("alice", &["sh", "-c", &script]);
    assert_eq!(out.code(), 0, "{}", out.show());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "ctx exec waited for the daemon: {:?}",
        start.elapsed()
    );
    wait_routed(&arg, alice.uid, 1);
    assert_responsive(&b, Duration::from_secs(2), "daemon running");
    assert_eq!(b.exec("alice", &["true"]).code(), 0);
    for p in routed(&arg, alice.uid) {
        signal(p as u32, Signal::SIGKILL);
    }
}

#[test]
fn a_routed_command_forking_a_thousand_children_leaves_the_broker_responsive() {
    let b = Broker::start(&standard_config());
    // `sleep 2.<digits>`: two seconds, and an argv no other process has.
    let arg = format!("2.{}", marked_sleep().split('.').nth(1).unwrap());
    let script = format!("i=0; while [ $i -lt 1000 ]; do sleep {arg} & i=$((i+1)); done; wait");
    let child = b
        .exec_cmd("alice", &["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    responsive_while(&b, child, 0, Duration::from_secs(60), "1,000 children");
    assert_gone_within(&arg, Duration::from_secs(5), "1,000 children done");
}
