//! Denial of service from below: a local user allowed into no context (ctx-bob) floods
//! the broker with connections, descriptors and half-sent frames, and a routed program
//! never reads the input its caller pushes. The broker's memory and descriptors must stay
//! bounded and root must still be served at once.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ctx_protocol::frame::encode_vec;
use ctx_protocol::{ClientKind, Hello, Reply, Request};

use ctx_tests::raw;
use ctx_tests::*;

/// Generous: the broker idles at about 15 MB.
const RSS_BOUND_KB: u64 = 100 * 1024;
/// Generous: a root launch takes milliseconds.
const ROOT_SERVED_WITHIN: Duration = Duration::from_secs(10);

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples the broker's RSS and descriptor count until dropped; the peaks.
struct Sampler {
    stop: Arc<AtomicBool>,
    rss: Arc<AtomicU64>,
    fds: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let rss = Arc::new(AtomicU64::new(0));
        let fds = Arc::new(AtomicU64::new(0));
        let (s, r, f) = (stop.clone(), rss.clone(), fds.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                r.fetch_max(rss_kb(pid), Ordering::Relaxed);
                f.fetch_max(raw::fd_count(pid) as u64, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            stop,
            rss,
            fds,
            thread: Some(thread),
        }
    }

    /// Peak RSS (KiB) and descriptor count seen.
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.rss.load(Ordering::Relaxed),
            self.fds.load(Ordering::Relaxed),
        )
    }
}

/// Holds `n` connections to the broker for `secs` seconds, reopening each one the broker
/// closes or answers. `mode`: `silent` (connect only), `fds` (a hello, one byte of the
/// request, 20 descriptors), `drip` (a hello, then a request frame announcing 4 MiB whose
/// bytes are sent but for the last few), `manyfds` (a hello, a request frame announcing
/// 1 MiB, then eight one-byte messages with 253 descriptors each, as a launch passing
/// 2,024 descriptors would send them).
const FLOOD: &str = r#"
import os, select, socket, struct, sys, time
path, mode, n, secs, hello = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), bytes.fromhex(sys.argv[5])
null = os.open("/dev/null", os.O_RDWR)
big = 4 * 1024 * 1024
def opening(s):
    if mode == "fds":
        socket.send_fds(s, [hello + b"\x00"], [null] * 20)
    elif mode == "manyfds":
        s.sendall(hello + struct.pack("<I", 1 << 20))
        for _ in range(8):
            socket.send_fds(s, [b"\x00"], [null] * 253)
    elif mode == "drip":
        s.sendall(hello + struct.pack("<I", big))
        chunk = b"\x01" * (256 * 1024)
        left = big - 16
        while left > 0:
            s.sendall(chunk[:left])
            left -= len(chunk)
held, poller = {}, select.poll()
opened = dropped = 0
end = time.time() + secs
print("flooding", flush=True)
while time.time() < end:
    while len(held) < n and time.time() < end:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(path)
            opening(s)
        except OSError:
            s.close()
            dropped += 1
            break
        held[s.fileno()] = s
        poller.register(s, select.POLLIN)
        opened += 1
    for fd, _ in poller.poll(10):
        poller.unregister(fd)
        held.pop(fd).close()
        dropped += 1
print(f"opened {opened} dropped {dropped}", flush=True)
"#;

/// Starts the flood as ctx-bob; returns once it is under way.
fn flood(b: &Broker, mode: &str, n: usize, secs: u32) -> Child {
    let cmd = as_user(BOB);
    flood_with(cmd, b, mode, n, secs)
}

/// Starts the flood as `launcher` runs it (`launcher` then `python3 -c FLOOD ARGS`).
fn flood_with(mut launcher: Command, b: &Broker, mode: &str, n: usize, secs: u32) -> Child {
    let mut hello = Vec::new();
    encode_vec(&Hello::new(ClientKind::Cli), &mut hello).unwrap();
    let hex = raw::hex(&hello);
    let mut child = launcher
        .args(["/usr/bin/python3", "-c", FLOOD])
        .arg(b.socket())
        .args([mode, &n.to_string(), &secs.to_string(), &hex])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the flood");
    let mut first = [0u8; 9];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .expect("the flood starts");
    // Let it reach its cap (or the broker's limit).
    thread::sleep(Duration::from_secs(2));
    child
}

fn finish_flood(mut child: Child) -> String {
    let status = wait_deadline(&mut child, Duration::from_secs(60)).expect("the flood ends");
    let mut out = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    assert!(status.success(), "the flood failed: {out}");
    out.trim().to_string()
}

/// Runs the flood `start` begins, has root launch meanwhile (which must be served), and
/// returns the broker's descriptors before and at their peak.
fn under_flood(b: &Broker, label: &str, start: impl FnOnce() -> Child) -> (u64, u64) {
    let baseline = raw::settle_fds(b.pid(), 0, Duration::from_millis(200)) as u64;
    let sampler = Sampler::start(b.pid());
    let flooder = start();
    let took = root_is_served(b);
    let (rss, fds) = sampler.finish();
    let report = finish_flood(flooder);
    eprintln!(
        "{label} ({report}): root served in {took:?}; broker peak {fds} fds \
         (baseline {baseline}), {rss} KiB"
    );
    (baseline, fds)
}

/// Root's `ctx exec` while the flood runs: how long it took.
fn root_is_served(b: &Broker) -> Duration {
    let start = Instant::now();
    let out = run_with(
        &mut b.exec_cmd("alice", &["echo", "served"]),
        None,
        Duration::from_secs(60),
    );
    let took = start.elapsed();
    assert_eq!(out.ok(), "served\n");
    assert!(
        took < ROOT_SERVED_WITHIN,
        "root's ctx exec took {took:?} under the flood"
    );
    took
}

/// The broker as an old unit left it: a soft and hard limit of 1024 open files.
const OLD_UNIT_FILES: u64 = 1024;

/// ctx-bob, allowed into no context, may still ask for the status: once the flood is
/// over, nothing of it is still counted against him.
fn bob_is_served_again(b: &Broker) {
    let out = run(as_user(BOB)
        .arg(bin("ctx"))
        .arg("--socket")
        .arg(b.socket())
        .arg("status"));
    assert_eq!(out.code(), 0, "{}", out.show());
}

#[test]
fn a_connection_flood_from_a_user_allowed_nowhere_leaves_root_served() {
    let b = Broker::start_with_files(&standard_config(), OLD_UNIT_FILES);
    let (baseline, fds) = under_flood(&b, "silent flood", || flood(&b, "silent", 1500, 8));
    assert!(
        fds < baseline + 200,
        "ctx-bob's flood made the broker hold {fds} descriptors (baseline {baseline})"
    );
    assert!(
        b.stderr().contains("refused a connection"),
        "{}",
        b.stderr()
    );
    bob_is_served_again(&b);
}

/// Root in a context is not the operator: a uid-0 context's routed process (no
/// capabilities, in the registry) is counted like any uid, and root outside is served.
#[test]
fn a_connection_flood_from_a_uid_0_context_leaves_the_operator_served() {
    let config = format!(
        "{}\n[contexts.root0]\nuser = \"root\"\ncwd = \"/\"\nallow = {{ uids = [0] }}\n",
        standard_config()
    );
    let b = Broker::start_with_files(&config, OLD_UNIT_FILES);
    let (baseline, fds) = under_flood(&b, "uid-0 context flood", || {
        flood_with(
            b.exec_cmd("root0", &[]),
            &b,
            "silent",
            // The routed process has the broker's 1024 files too.
            900,
            8,
        )
    });
    assert!(
        fds < baseline + 200,
        "the uid-0 context's flood made the broker hold {fds} descriptors (baseline {baseline})"
    );
    assert!(
        b.stderr().contains("refused a connection: uid 0"),
        "{}",
        b.stderr()
    );
}

/// Every refused or failed connection used to log a line: a flood of them filled the
/// broker's log (and, under systemd, journald's rate limit then hid its real warnings).
/// The broker may hang up before the junk is written (EPIPE): a failed handshake too.
#[test]
fn a_flood_of_failed_handshakes_adds_a_line_a_second_to_the_log() {
    let b = Broker::start(&standard_config());
    let before = b.stderr().len();
    let script = "import socket, sys, time\n\
        end = time.time() + 3; n = 0\n\
        while time.time() < end:\n\
        \x20   s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
        \x20   try: s.send(b'junk')\n\
        \x20   except OSError: pass\n\
        \x20   s.close(); n += 1\n\
        print(n)\n";
    let out = run(as_user(BOB)
        .args(["/usr/bin/python3", "-c", script])
        .arg(b.socket()));
    let connections: u64 = out.ok().trim().parse().unwrap();
    assert!(
        connections > 100,
        "the flood made {connections} connections"
    );
    std::thread::sleep(Duration::from_millis(1200));
    let added = &b.stderr()[before..];
    let lines = added.lines().count();
    assert!(
        lines <= 10,
        "{connections} failed connections added {lines} log lines:\n{added}"
    );
    assert!(added.contains("more since the last message"), "{added}");
}

#[test]
fn descriptors_sent_in_unfinished_handshakes_are_bounded_per_uid() {
    let b = Broker::start_with_files(&standard_config(), OLD_UNIT_FILES);
    let (baseline, fds) = under_flood(&b, "descriptor flood", || flood(&b, "fds", 500, 8));
    // 64 handshakes and 192 descriptors at most, slack for root's launch, and the
    // connections being refused at that instant with the descriptors their hello brought
    // (on a host where the flood makes 30,000 connections a second, samples of 250-460
    // in all). Unbounded, the flood's 500 connections would hold 4,500.
    assert!(
        fds < baseline + 600,
        "ctx-bob's handshakes made the broker hold {fds} descriptors (baseline {baseline})"
    );
    bob_is_served_again(&b);
}

/// A uid allowed into a context may pass many descriptors with a launch, but its
/// unfinished handshakes hold at most a quarter of the broker's descriptors not kept for
/// root: another uid's launch with hundreds of descriptors is still served.
#[test]
fn a_uid_allowed_into_a_context_holds_at_most_its_share_of_descriptors() {
    let config = both_entitled_config();
    const FILES: u64 = 4096;
    // (4096 - 256 kept for root) / 4.
    const SHARE: u64 = 960;
    let b = Broker::start_with_files(&config, FILES);
    let baseline = raw::settle_fds(b.pid(), 0, Duration::from_millis(200)) as u64;
    let sampler = Sampler::start(b.pid());
    let flooder = flood(&b, "manyfds", 64, 8);
    // Alice's launch passes 600 descriptors of hers meanwhile.
    let probe = "import os, subprocess\n\
        fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(600)]\n\
        for fd in fds: os.set_inheritable(fd, True)\n\
        subprocess.run(['sh', '-c', 'ls /proc/self/fd | wc -l'], close_fds=False, check=True)";
    let mut cmd = as_user(ALICE);
    cmd.arg(bin("ctx")).arg("--socket").arg(b.socket()).args([
        "run",
        "--route-to",
        "alice",
        "--",
        "python3",
        "-c",
        probe,
    ]);
    let out = run_with(&mut cmd, None, Duration::from_secs(60));
    let (_, fds) = sampler.finish();
    let report = finish_flood(flooder);
    eprintln!("descriptor flood by an entitled uid ({report}): broker peak {fds} fds (baseline {baseline})");
    let seen: u64 = out.ok().trim().parse().unwrap();
    assert!(seen > 600, "alice's launch got {seen} descriptors");
    // Bob's share, alice's launch (600), and a few per connection.
    assert!(
        fds < baseline + SHARE + 600 + 64 * 4 + 50,
        "ctx-bob's handshakes made the broker hold {fds} descriptors (baseline {baseline})"
    );
}

/// Context `alice`, which root and ctx-alice may enter, then `extra`.
fn alice_entitled_config(extra: &str) -> String {
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.alice]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0, {uid}] }}
{extra}"#,
        uid = user(ALICE).uid
    )
}

/// Contexts `alice` and `bob`, each allowing its own user: both users may enter one.
fn both_entitled_config() -> String {
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.alice]
user = "{ALICE}"
allow = {{ uids = [{alice}] }}

[contexts.bob]
user = "{BOB}"
allow = {{ uids = [{bob}] }}
"#,
        alice = user(ALICE).uid,
        bob = user(BOB).uid,
    )
}

/// A uid allowed into a context has its connections past the handshake turns wait for a
/// turn instead of being refused. Silent ones (connected, nothing sent) cost it nothing,
/// and each is counted against the broker's descriptors: under a unit's old limit of 1024
/// files they took every descriptor not kept for root, and another user's launch was
/// refused ("the descriptors not reserved for root are taken") although that user had
/// sent nothing.
#[test]
fn silent_connections_waiting_for_a_turn_leave_another_uid_served() {
    let b = Broker::start_with_files(&both_entitled_config(), OLD_UNIT_FILES);
    let flooder = flood(&b, "silent", 1000, 8);
    let mut cmd = as_user(ALICE);
    cmd.arg(bin("ctx")).arg("--socket").arg(b.socket()).args([
        "exec",
        "--context",
        "alice",
        "--",
        "echo",
        "served",
    ]);
    let out = run_with(&mut cmd, None, Duration::from_secs(30));
    let report = finish_flood(flooder);
    eprintln!("silent flood by an entitled uid: {report}");
    assert_eq!(out.ok(), "served\n", "{}", out.show());
}

#[test]
fn half_sent_large_frames_cannot_grow_the_broker() {
    let b = Broker::start(&standard_config());
    let before = rss_kb(b.pid());
    let sampler = Sampler::start(b.pid());
    let flooder = flood(&b, "drip", 100, 8);
    let took = root_is_served(&b);
    let (rss, fds) = sampler.finish();
    let report = finish_flood(flooder);
    eprintln!(
        "4 MiB frames flood ({report}): root served in {took:?}; broker RSS {before} KiB \
         before, peak {rss} KiB, {fds} fds"
    );
    assert!(
        rss < RSS_BOUND_KB,
        "ctx-bob's half-sent frames grew the broker to {rss} KiB (from {before} KiB)"
    );
    bob_is_served_again(&b);
}

// ---------------------------------------------------------------------------------------
// Input a program does not read
// ---------------------------------------------------------------------------------------

#[test]
fn a_pty_program_that_never_reads_cannot_make_the_broker_hold_its_input() {
    let b = Broker::start(&standard_config());
    let marker = "60.4242";
    let before = rss_kb(b.pid());
    let mut client = b
        .ctx(["exec", "-t", "--context", "alice", "--", "sleep", marker])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let mut stdout = client.stdout.take().unwrap();
    // The terminal echoes what it took in; that output must be read.
    let drain = thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stdout.read_to_end(&mut sink);
    });
    let fed = Arc::new(AtomicU64::new(0));
    let counter = fed.clone();
    let feeder = thread::spawn(move || {
        let line = b"the same line again and again, never read by anyone at all\n".repeat(1024);
        while counter.load(Ordering::Relaxed) < 400 * 1024 * 1024 {
            if stdin.write_all(&line).is_err() {
                break;
            }
            counter.fetch_add(line.len() as u64, Ordering::Relaxed);
        }
    });
    assert!(
        poll(Duration::from_secs(10), || (!pids_with_arg(marker)
            .is_empty())
        .then_some(()))
        .is_some(),
        "the routed sleep did not start"
    );
    let sampler = Sampler::start(b.pid());
    thread::sleep(Duration::from_secs(5));
    let (rss, _) = sampler.finish();
    let pushed = fed.load(Ordering::Relaxed);
    // The caller goes away while the broker leaves its frames unread: the program must
    // still go with it.
    let _ = client.kill();
    let _ = client.wait();
    let gone = poll(Duration::from_secs(10), || {
        pids_with_arg(marker).is_empty().then_some(())
    });
    let _ = feeder.join();
    let _ = drain.join();
    eprintln!(
        "ctx took {} KiB of input for a program that never reads; broker RSS {before} KiB \
         before, peak {rss} KiB",
        pushed / 1024
    );
    assert!(
        rss < RSS_BOUND_KB,
        "unread input grew the broker to {rss} KiB (from {before} KiB); ctx pushed {} MiB",
        pushed >> 20
    );
    assert!(
        gone.is_some(),
        "the program outlived its caller while the broker held back its input"
    );
}

/// Starts `n` terminal launches as ctx-alice, each `feed | ctx exec -t -- PROGRAM... > out`
/// in the background, in a process group of their own; returns their shell.
fn terminal_launches(b: &Broker, n: usize, feed: &str, program: &str, out: &str) -> Child {
    let script = format!(
        "for i in $(seq {n}); do \
           {feed} | {ctx} --socket {sock} exec -t --context alice -- {program} {out} 2>/dev/null & \
         done; wait",
        ctx = bin("ctx").display(),
        sock = b.socket().display(),
    );
    as_user(ALICE)
        .args(["sh", "-c", &script])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

/// The `sleep` processes with `marker` in their command line: the routed programs, not
/// the `ctx` clients that name them.
fn sleeps_with_arg(marker: &str) -> usize {
    pids_with_arg(marker)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
        .count()
}

/// The broker's RSS once it has stopped growing: less than 256 KiB more over a second (at
/// least 2 s, at most 20 s), the peak seen.
fn settled_rss(pid: u32) -> u64 {
    let start = Instant::now();
    let mut seen = vec![rss_kb(pid)];
    loop {
        thread::sleep(Duration::from_millis(250));
        seen.push(rss_kb(pid));
        let peak = *seen.iter().max().unwrap();
        let second_ago = seen[seen.len().saturating_sub(5)];
        let waited = start.elapsed();
        if (waited >= Duration::from_secs(2) && peak < second_ago + 256)
            || waited >= Duration::from_secs(20)
        {
            return peak;
        }
    }
}

/// What terminal launches make the broker hold is bounded per uid, not only per launch.
/// ctx-alice starts 80 terminal launches of a program that never reads, each fed 3 MiB:
/// each held about 2.4 MB (a review found 200 launches at 520 MB, and 1,024 connections
/// per uid would allow 2.4 GB); the uid's launches now hold `admission::HELD_PER_UID`
/// (32 MiB) together, plus each one's fixed buffers. Then, with that share full, 80 more
/// whose program writes without end to a caller that does not read: each kept output
/// buffers of about 370 KiB (80: +29.5 MB); with no room left in the share they keep
/// their first, small ones (+13.9 MB, what a terminal launch holds anyway).
#[test]
fn what_one_uids_terminal_launches_hold_is_bounded_per_uid() {
    const LAUNCHES: usize = 80;
    let b = Broker::start(&alice_entitled_config(""));
    let (readless, writer) = ("61.4242", "61.4343");
    let before = rss_kb(b.pid());
    let mut feeders = terminal_launches(
        &b,
        LAUNCHES,
        "head -c 3M /dev/zero",
        &format!("sleep {readless}"),
        ">/dev/null",
    );
    let started = poll(Duration::from_secs(30), || {
        (sleeps_with_arg(readless) >= LAUNCHES).then_some(())
    });
    let with_input = settled_rss(b.pid());
    // The callers' output goes to a pipe that `sleep` never reads.
    let mut writers = terminal_launches(
        &b,
        LAUNCHES,
        "true",
        &format!("sh -c 'exec yes {writer}'"),
        "| sleep 60",
    );
    let writing = poll(Duration::from_secs(30), || {
        (pids_with_arg(writer).len() >= 2 * LAUNCHES).then_some(())
    });
    let with_output = settled_rss(b.pid());
    for shell in [&mut feeders, &mut writers] {
        // SAFETY: kill(2) of the launchers' own process group.
        unsafe { libc::kill(-(shell.id() as i32), libc::SIGKILL) };
        let _ = shell.wait();
    }
    let gone = poll(Duration::from_secs(15), || {
        (pids_with_arg(readless).is_empty() && pids_with_arg(writer).is_empty()).then_some(())
    });
    eprintln!(
        "ctx-alice's terminal launches: broker RSS {before} KiB before, {with_input} KiB with \
         {LAUNCHES} holding 3 MiB of unread input each, {with_output} KiB with {LAUNCHES} more \
         writing to callers that do not read"
    );
    assert!(
        started.is_some(),
        "the {LAUNCHES} routed sleeps did not all start"
    );
    assert!(
        writing.is_some(),
        "the {LAUNCHES} routed writers did not all start"
    );
    assert!(
        with_input < before + 80 * 1024,
        "unread input of one uid's terminal launches grew the broker from {before} KiB to \
         {with_input} KiB"
    );
    assert!(
        with_output < with_input + 22 * 1024,
        "output buffers of one uid's terminal launches past its share grew the broker from \
         {with_input} KiB to {with_output} KiB"
    );
    assert!(gone.is_some(), "routed programs outlived their callers");
}

/// What running launches keep of their requests is bounded per uid (found by the eighth
/// review): a launch kept its caller's whole argv and environment, the plan made of them
/// and two text copies of the argv for as long as its program ran, about 15 MB for an
/// argv of 1.8 MiB of `\xff` bytes (50 launches of one uid: +760 MB, 1,024 allowed).
/// Now a request counts twice its frame against the uid's share until its program's exec,
/// which lets go of it (and trims the heap after a large one); what `ctx ps` and the
/// registry keep is cut to 4 KiB; a burst past the uid's room is told `Busy` and tries
/// again (before, some of the 50 failed: "unfinished handshakes would buffer more").
/// Measured: +515 MB before, +23 MB now. And root's `ctx ps` answers with them all
/// running (one 5.4 MB argv made it fail for everyone).
#[test]
fn what_running_launches_keep_of_their_requests_is_bounded_per_uid() {
    const LAUNCHES: usize = 50;
    let b = Broker::start(&alice_entitled_config(""));
    let marker = "61.5151";
    let before = rss_kb(b.pid());
    let script = format!(
        r#"
import subprocess, sys
big = [b"\xff" * 131071] * 14
for _ in range({LAUNCHES}):
    subprocess.Popen([sys.argv[1], "--socket", sys.argv[2], "exec", "--context", "alice",
                      "--", "sh", "-c", "exec sleep {marker}", "x"] + big,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
"#
    );
    let mut launcher = as_user(ALICE)
        .args(["/usr/bin/python3", "-c", &script])
        .arg(bin("ctx"))
        .arg(b.socket())
        .current_dir("/")
        .process_group(0)
        .spawn()
        .unwrap();
    let started = poll(Duration::from_secs(60), || {
        (sleeps_with_arg(marker) >= LAUNCHES).then_some(())
    });
    let running = settled_rss(b.pid());
    let ps = run(&mut b.ctx(["ps", "--json"]));
    // SAFETY: kill(2) of the launchers' own process group.
    unsafe { libc::kill(-(launcher.id() as i32), libc::SIGKILL) };
    let _ = launcher.wait();
    for pid in pids_with_arg(marker) {
        // SAFETY: kill(2) of the routed sleeps this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    eprintln!(
        "{LAUNCHES} launches of 1.8 MiB argvs: broker RSS {before} KiB before, {running} KiB \
         with them running"
    );
    assert!(
        started.is_some(),
        "the {LAUNCHES} routed sleeps did not all start"
    );
    assert!(
        running < before + 64 * 1024,
        "running launches' requests grew the broker from {before} KiB to {running} KiB"
    );
    let listed: serde_json::Value = serde_json::from_str(&ps.ok()).expect("ctx ps --json");
    let listed = listed.as_array().expect("a list");
    let ours: Vec<_> = listed
        .iter()
        .filter(|p| p["argv"].to_string().contains(marker))
        .collect();
    assert_eq!(ours.len(), LAUNCHES, "ctx ps lists every launch");
    for p in ours {
        let argv = p["argv"].as_array().expect("argv");
        let bytes: usize = argv.iter().map(|a| a.as_str().unwrap().len() + 1).sum();
        assert!(bytes <= 4096 + 4, "an argv of {bytes} bytes kept");
        assert!(argv.last().unwrap().as_str().unwrap().ends_with('…'));
    }
}

/// The same with requests made of many empty items (found by the ninth review): counted
/// by their frame, 90,000 `-e A=` cost about 180 KB each, but held 38 bytes an item
/// decoded: 60 `ctx sh` commands queued behind a session's running one kept the broker at
/// +300 MB for as long as it ran. Items count too now: past the uid's room the queued
/// commands are told `Busy` (and fail after trying for a while), and the broker stays
/// small.
#[test]
fn queued_requests_of_many_empty_items_are_bounded_per_uid() {
    const QUEUED: usize = 60;
    let b = Broker::start(&alice_entitled_config(""));
    let before = rss_kb(b.pid());
    let script = format!(
        r#"
import os, subprocess, sys, time
ctx, sock = sys.argv[1], sys.argv[2]
base = [ctx, "--socket", sock, "sh", "--context", "alice", "--session", "q"]
hold = subprocess.Popen(base + ["sleep 8"], stdout=subprocess.DEVNULL)
time.sleep(1)
items = []
for _ in range(90000):
    items += ["-e", "A="]
for _ in range({QUEUED}):
    subprocess.Popen(base + items + ["true"], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
hold.wait()
"#
    );
    let mut launcher = as_user(ALICE)
        .args(["/usr/bin/python3", "-c", &script])
        .arg(bin("ctx"))
        .arg(b.socket())
        .current_dir("/")
        .process_group(0)
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_secs(5));
    let queued = settled_rss(b.pid());
    // SAFETY: kill(2) of the launchers' own process group.
    unsafe { libc::kill(-(launcher.id() as i32), libc::SIGKILL) };
    let _ = launcher.wait();
    eprintln!("{QUEUED} queued requests of 180,000 items: {before} KiB before, {queued} KiB");
    assert!(
        queued < before + 64 * 1024,
        "queued requests grew the broker from {before} KiB to {queued} KiB"
    );
    assert_eq!(run(&mut b.ctx(["status"])).code(), 0);
}

/// The hex of an `Input` frame's header and encoding for `size` bytes of input, which the
/// raw client appends itself (an argument holds at most 128 KiB).
fn input_frame_prefix(size: usize) -> String {
    let mut frame = Vec::new();
    encode_vec(&Request::Input(vec![b'a'; size].into()), &mut frame).unwrap();
    raw::hex(&frame[..frame.len() - size])
}

/// A raw Python client run as ctx-alice, a step at a time: it prints a line when a step
/// is done and reads one from its stdin before the next.
struct Stepped {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    input: std::process::ChildStdin,
}

impl Stepped {
    fn start(script: &str, socket: &std::path::Path, args: &[String]) -> Stepped {
        let mut child = as_user(ALICE)
            .args(["/usr/bin/python3", "-c", script])
            .arg(socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let input = child.stdin.take().unwrap();
        Stepped { child, out, input }
    }

    /// The line that ends its current step.
    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line
    }

    /// Lets it take its next step.
    fn go(&mut self) {
        self.input.write_all(b"\n").unwrap();
    }

    /// Lets it end, and makes sure it has.
    fn finish(mut self) {
        let _ = self.input.write_all(b"\n");
        let _ = wait_deadline(&mut self.child, Duration::from_secs(10));
        let _ = self.child.kill();
    }
}

/// ctx-alice's raw client: `n` launches of `sleep FILL` each sent an `Input` frame but
/// its last byte (what the broker holds of it fills the uid's share), then one launch of
/// `sleep VICTIM` that sends the same; its frame waits for room. On a line on stdin it
/// closes the victim's connection; on another, it ends.
const FILL_AND_HANG_UP: &str = r#"
import os, socket, sys
path, fill, victim, prefix, n, size = sys.argv[1:7]
fill, victim, prefix, n, size = bytes.fromhex(fill), bytes.fromhex(victim), bytes.fromhex(prefix), int(n), int(size)
null = os.open("/dev/null", os.O_RDWR)
def launch(opening):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    socket.send_fds(s, [opening], [null] * 3)
    s.settimeout(0.5)
    try:
        s.sendall(prefix + b"a" * (size - 1))
    except socket.timeout:
        pass  # the rest waits unread: the share is full
    return s
held = [launch(fill) for _ in range(n)]
v = launch(victim)
print("sent", flush=True)
sys.stdin.readline()
v.close()
print("closed", flush=True)
sys.stdin.readline()
"#;

/// A launch whose caller's frame waits for room in the uid's full share still notices
/// its caller going away, and ends: the wait reads nothing from the socket, and the end of
/// the stream showed only there (helper-67: the program ran on for as long as the share
/// stayed full). The share is filled by frames sent but for their last byte, which the
/// broker holds as they arrive.
#[test]
fn a_caller_that_goes_away_while_its_frame_waits_for_room_ends_its_launch() {
    const FILLERS: usize = 140;
    let b = Broker::start(&alice_entitled_config(""));
    let (fill, victim) = ("62.4242", "62.4343");
    let opening = |marker: &str| {
        raw::hex(&raw::opening(&Request::Exec(raw::exec_request(
            "alice",
            &[b"sleep", marker.as_bytes()],
        ))))
    };
    // `Input` frames of 255 KiB.
    let size = 255 * 1024;
    let mut client = Stepped::start(
        FILL_AND_HANG_UP,
        &b.socket(),
        &[
            opening(fill),
            opening(victim),
            input_frame_prefix(size),
            FILLERS.to_string(),
            size.to_string(),
        ],
    );
    assert_eq!(client.line(), "sent\n");
    let started = poll(Duration::from_secs(30), || {
        (sleeps_with_arg(fill) == FILLERS && sleeps_with_arg(victim) == 1).then_some(())
    });
    let full = settled_rss(b.pid());
    client.go();
    client.line();
    let ended = poll(Duration::from_secs(5), || {
        (sleeps_with_arg(victim) == 0).then_some(())
    });
    let fillers_still_there = sleeps_with_arg(fill);
    client.finish();
    let gone = poll(Duration::from_secs(15), || {
        (sleeps_with_arg(fill) == 0).then_some(())
    });
    eprintln!("the share full of frames: broker RSS {full} KiB");
    assert!(started.is_some(), "the launches did not start");
    assert_eq!(fillers_still_there, FILLERS, "the share must still be full");
    assert!(
        ended.is_some(),
        "the routed program ran on after its caller went away"
    );
    assert!(gone.is_some(), "routed programs outlived their callers");
}

/// ctx-alice's raw client: `n` terminal launches of `opening`, whose program fills the
/// client's socket with signals to its parent (the client reads nothing past `Started`);
/// then one `input` frame on each, ending in the suspend key.
const STOPPED_UNREAD: &str = r#"
import socket, struct, sys, time
path, opening, prefix, size, n = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
frame = prefix + b"a" * (size - 1) + b"\x1a"
def started(s):
    buf = b""
    s.settimeout(10)
    while True:
        d = s.recv(65536)
        if not d:
            return False
        buf += d
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack("<I", buf[:4])[0]:
            k = struct.unpack("<I", buf[:4])[0]
            if buf[4:5] == b"\x02":
                return True
            buf = buf[4 + k:]
held = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(opening)
    assert started(s)
    held.append(s)
time.sleep(3)  # the programs fill their callers' sockets
print("launched", flush=True)
sys.stdin.readline()
for s in held:
    s.settimeout(1)
    try:
        s.sendall(frame)
    except socket.timeout:
        pass  # the rest waits unread: the share is full
print("sent", flush=True)
sys.stdin.readline()
"#;

/// A terminal launch's input split by the suspend key is counted against its uid while
/// the relay waits to tell a caller that does not read that its program stopped: the
/// relay queued the input, stopped the program and waited on the caller's full socket
/// with the input and the frame uncounted, so each launch's next frame found room again
/// (helper-68: 400 launches held 870 kB each outside the bound).
#[test]
fn input_held_while_a_stop_waits_on_a_caller_that_does_not_read_is_counted() {
    const LAUNCHES: usize = 200;
    let b = Broker::start(&alice_entitled_config(""));
    let marker = "63.4242";
    let mut req = raw::exec_request(
        "alice",
        &[
            b"sh",
            b"-c",
            b"i=0; while [ $i -lt 600 ]; do kill -USR1 $PPID; i=$((i+1)); done; exec sleep 63.4242",
        ],
    );
    req.fds = (0..3)
        .map(|target| ctx_protocol::FdSlot {
            target,
            source: ctx_protocol::FdSource::Pty,
        })
        .collect();
    req.tty = Some(ctx_protocol::TtyInfo {
        size: ctx_protocol::WinSize {
            rows: 24,
            cols: 80,
            xpixel: 0,
            ypixel: 0,
        },
        termios: None,
    });
    let opening = raw::hex(&raw::opening(&Request::Exec(req)));
    // `Input` frames of 256 KiB, ending in the suspend key.
    let size = 256 * 1024 - 16;
    let mut client = Stepped::start(
        STOPPED_UNREAD,
        &b.socket(),
        &[
            opening,
            input_frame_prefix(size),
            size.to_string(),
            LAUNCHES.to_string(),
        ],
    );
    assert_eq!(client.line(), "launched\n");
    let launched = settled_rss(b.pid());
    let running = sleeps_with_arg(marker);
    client.go();
    client.line();
    let after = settled_rss(b.pid());
    client.finish();
    let gone = poll(Duration::from_secs(15), || {
        (sleeps_with_arg(marker) == 0).then_some(())
    });
    eprintln!(
        "{LAUNCHES} terminal launches with full sockets: broker RSS {launched} KiB, {after} KiB \
         after a 256 KiB frame ending in ^Z on each"
    );
    assert_eq!(running, LAUNCHES, "the programs did not all run");
    assert!(
        after < launched + 64 * 1024,
        "input held while stops waited grew the broker from {launched} KiB to {after} KiB"
    );
    assert!(gone.is_some(), "routed programs outlived their callers");
}

#[test]
fn input_frames_to_a_pipe_launch_are_not_kept() {
    let b = Broker::start(&standard_config());
    let before = rss_kb(b.pid());
    let null = std::fs::File::open("/dev/null").unwrap();
    let fd = null.as_raw_fd();
    let req = raw::exec_request("alice", &[b"sleep", b"30"]);
    let mut s = raw::send_opening(&b.socket(), &raw::opening(&Request::Exec(req)), &[fd; 3]);
    let mut frame = Vec::new();
    encode_vec(&Request::Input(vec![b'x'; 64 * 1024].into()), &mut frame).unwrap();
    let sampler = Sampler::start(b.pid());
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut sent = 0u64;
        for _ in 0..(300 * 16) {
            if w.write_all(&frame).is_err() {
                break;
            }
            sent += frame.len() as u64;
        }
        let mut term = Vec::new();
        encode_vec(
            &Request::Signal {
                signo: libc::SIGTERM,
            },
            &mut term,
        )
        .unwrap();
        let _ = w.write_all(&term);
        sent
    });
    let sent = writer.join().unwrap();
    let (frames, closed) = raw::read_until_close(&mut s, Duration::from_secs(30));
    let (rss, _) = sampler.finish();
    eprintln!(
        "{} MiB of Input to a pipe launch; broker RSS {before} KiB before, peak {rss} KiB",
        sent >> 20
    );
    assert!(closed);
    assert!(
        frames.iter().any(|p| matches!(
            ctx_protocol::frame::decode::<Reply>(p),
            Ok(Reply::Exited { .. })
        )),
        "the launch did not end with Exited"
    );
    assert!(
        rss < RSS_BOUND_KB,
        "Input to a pipe launch grew the broker to {rss} KiB (from {before} KiB)"
    );
}

#[test]
fn input_to_a_slow_reader_arrives_whole() {
    let b = Broker::start(&standard_config());
    // 8 MiB of printable lines: eight times what the broker holds back, and nothing the
    // terminal's line discipline would interpret.
    let mut data = Vec::with_capacity(8 << 20);
    let mut x: u32 = 12345;
    while data.len() < 8 << 20 {
        for _ in 0..63 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            data.push(
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                    [(x >> 16) as usize % 62],
            );
        }
        data.push(b'\n');
    }
    let dir = TempDir::new();
    let file = dir.file("input", &data, 0o644);
    let want = run(Command::new("sha256sum").arg(&file)).ok();
    let want = want.split_whitespace().next().unwrap().to_string();
    let out = run_with(
        &mut b.ctx([
            "exec",
            "-t",
            "--context",
            "alice",
            "--",
            "sh",
            "-c",
            "sleep 3; sha256sum",
        ]),
        Some(&data),
        Duration::from_secs(120),
    );
    assert_eq!(out.code(), 0, "{}", out.show());
    let text = out.stdout_str();
    assert!(
        text.contains(&format!("{want}  -")),
        "the program read other bytes than were sent (want {want}); output ends {:?}",
        &text[text.len().saturating_sub(300)..]
    );
}

/// Sends the broker TCP sockets whose close blocks (unsent data the other end never reads,
/// `SO_LINGER` on): in handshakes that fail (a hello header over the hello limit), with a
/// launch that passes its handshake and fails to prepare (it names two descriptors and
/// sends one), and after the handshake of a running launch. The attacker closes its own
/// copy while the broker still waits for the rest of the frame the socket came with, so
/// that the broker's close is the last. After the handshake the broker takes descriptors
/// as they come: that one is closed on a thread of the attacker's, whose close may then be
/// the last instead. Prints `stalled`, then holds the sockets' peers.
const LINGER: &str = r#"
import resource, socket, struct, sys, threading, time
# The kernel bounds descriptors in flight per user by the sender's soft limit.
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
path, bad, launch, running, hold = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4]), float(sys.argv[5])
lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
lst.bind(("127.0.0.1", 0))
lst.listen(64)
keep = []
def lingering():
    c = socket.socket()
    c.connect(lst.getsockname())
    s, _ = lst.accept()
    keep.append(s)  # never read: the data c sent stays unsent
    c.setblocking(False)
    # Far more than the receiver's small buffer can ever take (it makes some room by
    # packing its queue), until it takes nothing more: the close then waits for an
    # acknowledgement that never comes.
    idle = rounds = 0
    while idle < 3 and rounds < 40:
        rounds += 1
        sent = 0
        try:
            while True:
                sent += c.send(b"x" * 4096)
        except BlockingIOError:
            pass
        idle = idle + 1 if sent == 0 else 0
        time.sleep(0.05)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 100000))
    return c
def broker():
    b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    b.connect(path)
    keep.append(b)
    return b
def split(data):
    c = lingering()
    b = broker()
    socket.send_fds(b, [data[:1]], [c.fileno()])
    c.close()
    b.sendall(data[1:])
for _ in range(bad):
    split(struct.pack("<I", 300))
split(launch)
null = open("/dev/null", "rb")
b = broker()
socket.send_fds(b, [running], [null.fileno()] * 3)
b.settimeout(10)
try:
    b.recv(4096)  # the hello: the handshake is over
except socket.timeout:
    pass  # a broker whose workers are stuck answers nothing
c = lingering()
socket.send_fds(b, [b"\x00"], [c.fileno()])
threading.Thread(target=c.close, daemon=True).start()
print("stalled", flush=True)
time.sleep(hold)
"#;

/// The attacker's process, killed however the test ends: its sockets' peers then close,
/// and every stuck close in the broker returns.
struct Attacker(Child);

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Threads of `pid` waiting in a lingering TCP close (`sk_stream_wait_close` waits in
/// `wait_woken`, which is where the kernel reports it; nothing else the broker does waits
/// there), by thread id.
fn lingering_closes(pid: u32) -> std::collections::BTreeSet<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Default::default();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let wchan = std::fs::read_to_string(t.path().join("wchan")).ok()?;
            (wchan.contains("sk_stream_wait_close") || wchan.contains("wait_woken"))
                .then(|| t.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// Root's `ctx exec -- echo served` into a context, started while an attack holds.
struct RootExec {
    child: Child,
    start: Instant,
}

/// Whether root's launch was served in time, and how long it took.
struct Served {
    ok: bool,
    took: Duration,
}

impl RootExec {
    fn start(b: &Broker, context: &str) -> RootExec {
        let start = Instant::now();
        let child = b
            .exec_cmd(context, &["echo", "served"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        RootExec { child, start }
    }

    /// Waits 5 s at most; a launch still waiting then is killed.
    fn wait(mut self) -> Served {
        let status = wait_deadline(&mut self.child, Duration::from_secs(5));
        let took = self.start.elapsed();
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        Served {
            ok: status.is_some_and(|s| s.success()),
            took,
        }
    }
}

/// `setpriv` as the test user `name` (its uid, gid and groups), ready for the command.
fn as_user(name: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={name}"),
        &format!("--regid={name}"),
        "--init-groups",
        "--",
    ]);
    cmd
}

impl Attacker {
    /// The first `n` lines the attacker prints (fewer if it ends first), trimmed; read on a
    /// thread, so that a test never hangs on an attacker that does.
    fn report(&mut self, n: usize) -> Vec<String> {
        let mut out = std::io::BufReader::new(self.0.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = Vec::new();
            for _ in 0..n {
                let mut line = String::new();
                if out.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                lines.push(line.trim().to_string());
            }
            let _ = tx.send(lines);
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the attacker reports in time")
    }

    /// Waits for the attacker's `stalled` line, which says its descriptors are sent; read
    /// on a thread, so that a test never hangs on an attacker that does.
    fn await_stalled(&mut self) {
        let mut out = self.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut line = [0u8; 8];
            let _ = tx.send(out.read_exact(&mut line).map(|_| line));
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the attacker sends its sockets in time")
            .expect("the attacker sends its sockets");
        assert_eq!(&line, b"stalled\n");
    }
}

/// Every thread of `pid` and where it waits, for a failure's message.
fn threads(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return String::new();
    };
    tasks
        .filter_map(|t| {
            let p = t.ok()?.path();
            let comm = std::fs::read_to_string(p.join("comm")).ok()?;
            let wchan = std::fs::read_to_string(p.join("wchan")).ok()?;
            Some(format!("{} {wchan}\n", comm.trim()))
        })
        .collect()
}

/// Closing the last reference to a socket a peer sent may block for as long as that peer
/// likes; root must be served meanwhile. The attacker is ctx-alice, allowed into a context
/// so that it can also launch: a failed handshake's descriptors are closed alike for a uid
/// allowed nowhere, and the other tests here flood as ctx-bob (the kernel bounds the
/// descriptors in flight per user, which their floods take).
#[test]
fn closes_that_block_on_descriptors_a_peer_sent_leave_root_served() {
    let config = format!(
        r#"[broker]
socket_mode = "0666"

[contexts.alice]
user = "{ALICE}"
allow = {{ uids = [0, {alice}] }}
"#,
        alice = user(ALICE).uid,
    );
    let b = Broker::start(&config);
    let baseline = raw::settle_fds(b.pid(), 0, Duration::from_millis(200)) as u64;
    let mut launch = raw::exec_request("alice", &[b"true"]);
    launch.fds.truncate(2);
    let launch = raw::opening(&Request::Exec(launch));
    let running = raw::opening(&Request::Exec(raw::exec_request(
        "alice",
        &[b"sleep", b"60"],
    )));
    let hex = raw::hex;
    const BAD: usize = 4;
    let child = as_user(ALICE)
        .args(["/usr/bin/python3", "-c", LINGER])
        .arg(b.socket())
        .args([&BAD.to_string(), &hex(&launch), &hex(&running), "120"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the attacker");
    let mut attacker = Attacker(child);
    attacker.await_stalled();
    // The sockets sent in handshakes are in closes that wait (the broker's copy is the
    // last); the one sent after, perhaps. A waiting thread wakes for a moment at each
    // window probe the other end answers: the threads seen waiting are gathered.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = lingering_closes(b.pid());
    while seen.len() <= BAD && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        seen.extend(lingering_closes(b.pid()));
    }
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        thread::sleep(Duration::from_millis(20));
        seen.extend(lingering_closes(b.pid()));
    }
    let stuck = seen.len();
    eprintln!("{stuck} of the broker's threads wait in a lingering close");

    let start = Instant::now();
    let out = run_with(
        &mut b.exec_cmd("alice", &["echo", "served"]),
        None,
        Duration::from_secs(20),
    );
    let took = start.elapsed();
    assert_eq!(out.ok(), "served\n");
    assert!(
        took < Duration::from_secs(5),
        "root's ctx exec took {took:?} while closes of ctx-alice's sockets were stuck"
    );
    // The attack is real: more closes stuck than a tokio runtime on two workers survives.
    // (Five are expected; under the other tests' load one of them sometimes completes.)
    assert!(
        stuck >= 3,
        "only {stuck} of the sockets sent in handshakes are in a close in the broker:\n{}",
        threads(b.pid())
    );

    drop(attacker);
    let fds = raw::settle_fds(b.pid(), baseline as usize, Duration::from_secs(10)) as u64;
    assert!(
        fds <= baseline,
        "the broker holds {fds} descriptors once the attacker is gone (baseline {baseline})"
    );
    assert!(lingering_closes(b.pid()).is_empty(), "{}", threads(b.pid()));
}

/// Like [`LINGER`], but each lingering TCP socket rides on an out-of-band byte
/// (`MSG_OOB`): the broker never asks for out-of-band data, so its next ordinary
/// `recvmsg` skips that byte and the kernel frees it with its descriptors right there, in
/// the read on the tokio worker (the last reference: the attacker closed its copy), not
/// as descriptors handed to the closer threads. Prints `stalled`, then holds the peers.
const OOB_LINGER: &str = r#"
import array, resource, socket, struct, sys, time
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
path, n, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
lst.bind(("127.0.0.1", 0))
lst.listen(64)
keep = []
def lingering():
    c = socket.socket()
    c.connect(lst.getsockname())
    s, _ = lst.accept()
    keep.append(s)
    c.setblocking(False)
    idle = rounds = 0
    while idle < 3 and rounds < 40:
        rounds += 1
        sent = 0
        try:
            while True:
                sent += c.send(b"x" * 4096)
        except BlockingIOError:
            pass
        idle = idle + 1 if sent == 0 else 0
        time.sleep(0.05)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 100000))
    return c
socks = [lingering() for _ in range(n)]
for c in socks:
    b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    b.connect(path)
    keep.append(b)
    b.sendmsg([b"\x00"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [c.fileno()]))], socket.MSG_OOB)
    c.close()
    # Something ordinary behind it: the broker reads on past the out-of-band byte.
    b.send(struct.pack("<I", 4))
print("stalled", flush=True)
time.sleep(hold)
"#;

/// A user allowed into nothing (ctx-bob) sends lingering TCP sockets as out-of-band
/// bytes' descriptors: the broker's ordinary reads discard those bytes, and the kernel
/// closes their descriptors in the read, on the tokio worker, which then waits in the
/// lingering close. Root must stay served (and no worker wait there).
#[test]
fn descriptors_on_out_of_band_bytes_are_not_closed_on_a_worker() {
    let b = Broker::start(&standard_config());
    const N: usize = 4;
    let child = as_user(BOB)
        .args(["/usr/bin/python3", "-c", OOB_LINGER])
        .arg(b.socket())
        .args([&N.to_string(), "120"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the attacker");
    let mut attacker = Attacker(child);
    attacker.await_stalled();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = lingering_closes(b.pid());
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        seen.extend(lingering_closes(b.pid()));
    }
    eprintln!(
        "{} of the broker's threads wait in a lingering close:\n{}",
        seen.len(),
        threads(b.pid())
    );
    let root = RootExec::start(&b, "alice");
    let Served { ok: served, took } = root.wait();
    // The attacker's end: its sockets' peers close, every stuck close returns.
    drop(attacker);
    assert!(
        served,
        "root's ctx exec was not served in {took:?} while ctx-bob's out-of-band \
         descriptors were closed on a worker ({} threads seen in a lingering close)",
        seen.len()
    );
}

/// Mounts a FUSE file system nobody serves at `argv[1]` (run in a mount namespace of its
/// own: the broker's table stays all local), becomes uid `argv[3]`, prints `mounted`, then
/// holds it. (Root mounts it because /dev/fuse is root's here; where /dev/fuse is open to
/// all, a user makes the same in a user namespace of its own.)
const HUNG_FUSE: &str = r#"
import ctypes, os, sys, time
d = sys.argv[1]
fd = os.open("/dev/fuse", os.O_RDWR)
libc = ctypes.CDLL(None, use_errno=True)
opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
if libc.mount(b"hung", d.encode(), b"fuse", 0, opts) != 0:
    print("mount failed:", os.strerror(ctypes.get_errno()), flush=True)
    sys.exit(1)
# Then as the given user, as a user's own FUSE mount in a namespace of its own would be:
# its processes (a launch's spawn child as that user) may follow /proc/PID/root here.
uid = int(sys.argv[3])
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
print("mounted", flush=True)
time.sleep(float(sys.argv[2]))
"#;

/// The interposer's early check (`exec_likely`) looks up a path the caller chose, and
/// `/proc/PID/root` (likewise `/proc/PID/cwd`, `/proc/self/fd/N` of a directory the caller
/// passed) leads into another mount namespace, here onto a FUSE mount nobody answers.
/// Two such launches take the runtime's two workers; root must stay served.
#[test]
fn an_early_check_through_another_mount_namespace_does_not_block_a_worker() {
    launches_onto_a_hung_fuse_mount_leave_root_served(ClientKind::Interposer);
}

/// The same path from the CLI, which has no early check: the spawn child's own `execve`
/// looks it up, and the child is a `CLONE_VFORK` one, so the thread that cloned it waits
/// as long as the lookup does (here: for ever).
#[test]
fn an_exec_through_another_mount_namespace_does_not_suspend_a_worker() {
    launches_onto_a_hung_fuse_mount_leave_root_served(ClientKind::Cli);
}

/// Two launches of `/proc/PID/root/.../prog`, PID a process in a mount namespace of its own
/// with a FUSE mount nobody serves there; root's launch must still be served.
fn launches_onto_a_hung_fuse_mount_leave_root_served(client: ClientKind) {
    if no_fuse() {
        return;
    }
    let b = Broker::start(&standard_config());
    let mnt = b.dir().path().join("hung");
    let holder = hung_fuse_holder(&mnt, user(ALICE).uid);
    // The holder exec'd python in place: its pid names the namespace with the mount.
    let program = format!("/proc/{}/root{}/prog", holder.0.id(), mnt.display());
    let null = std::fs::File::open("/dev/null").unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut req = raw::exec_request("alice", &[b"prog"]);
        req.program = Some(serde_bytes::ByteBuf::from(program.as_bytes().to_vec()));
        let mut bytes = Vec::new();
        encode_vec(&Hello::new(client), &mut bytes).unwrap();
        encode_vec(&Request::Exec(req), &mut bytes).unwrap();
        let fd = null.as_raw_fd();
        held.push(raw::send_opening(&b.socket(), &bytes, &[fd, fd, fd]));
    }
    thread::sleep(Duration::from_secs(1));
    eprintln!("broker threads:\n{}", threads(b.pid()));
    let root = RootExec::start(&b, "alice");
    let Served { ok: served, took } = root.wait();
    // Ending the holder aborts the FUSE connection: every stuck lookup returns.
    drop(holder);
    drop(held);
    assert!(
        served,
        "root's ctx exec was not served in {took:?} while two {client:?} launches waited on a \
         FUSE mount"
    );
}

/// Mounts a FUSE file system at `argv[1]` (in a mount namespace of its own) that serves
/// one file, `f`, and answers every request but FLUSH, which it never answers: every
/// close(2) of `f` waits for ever (a close flushes, last or not). Then becomes uid
/// `argv[2]`, prints `mounted`, and serves until killed, which aborts the connection.
/// Optional: `argv[3]`, more opcodes never answered (comma-separated: `17` STATFS);
/// `argv[4]`, opcodes never answered once `f` was opened (`3` GETATTR: attributes are
/// never cached here, so every `fstat` of the open file asks). With `RELEASE` in the
/// environment, the FLUSHes held so far are answered whenever that file appears (and it
/// is removed).
const FLUSHLESS_FUSE: &str = r#"
import ctypes, errno, os, select, struct, sys, time
mnt, uid = sys.argv[1], int(sys.argv[2])
def ops(i):
    return {int(o) for o in sys.argv[i].split(",") if o} if len(sys.argv) > i else set()
never, after_open, opened = ops(3), ops(4), False
fd = os.open("/dev/fuse", os.O_RDWR)
libc = ctypes.CDLL(None, use_errno=True)
opts = f"fd={fd},rootmode=40000,user_id={uid},group_id={uid},allow_other".encode()
if libc.mount(b"flushless", mnt.encode(), b"fuse", 0, opts) != 0:
    print("mount failed:", os.strerror(ctypes.get_errno()), flush=True)
    sys.exit(1)
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: the user reaches the mount by /proc/PID/root
print("mounted", flush=True)
def attr(ino, mode):
    now = int(time.time())
    return struct.pack("<QQQQQQIIIIIIIIII", ino, 0, 0, now, now, now, 0, 0, 0, mode, 1,
                       uid, uid, 0, 4096, 0)
def reply(unique, err=0, body=b""):
    os.write(fd, struct.pack("<IiQ", 16 + len(body), -err, unique) + body)
release, held = os.environ.get("RELEASE"), []
while True:
    if release and held and os.path.exists(release):
        for unique in held:
            reply(unique)
        held.clear()
        os.unlink(release)
    if release and not select.select([fd], [], [], 0.02)[0]:
        continue
    try:
        buf = os.read(fd, (1 << 20) + 4096)
    except OSError as e:
        if e.errno == errno.EINTR:
            continue
        break
    ln, op, unique, node = struct.unpack_from("<IIQQ", buf, 0)
    body = buf[40:ln]
    if op in never or (opened and op in after_open):
        continue
    if op == 14:
        opened = True
    if op == 26:  # INIT
        reply(unique, 0, struct.pack("<IIIIHHIIHHII", 7, 31, 0, 0, 16, 12, 65536, 1, 32, 0,
                                     0, 0) + bytes(24))
    elif op == 1:  # LOOKUP
        if node == 1 and body.split(b"\0")[0] == b"f":
            reply(unique, 0, struct.pack("<QQQQII", 2, 0, 0, 0, 0, 0) + attr(2, 0o100666))
        else:
            reply(unique, errno.ENOENT)
    elif op == 3:  # GETATTR
        a = attr(1, 0o40755) if node == 1 else attr(2, 0o100666)
        reply(unique, 0, struct.pack("<QII", 0, 0, 0) + a)
    elif op in (14, 27):  # OPEN, OPENDIR
        reply(unique, 0, struct.pack("<QII", 0, 0, 0))
    elif op == 16:  # WRITE
        reply(unique, 0, struct.pack("<II", struct.unpack_from("<QQI", body, 0)[2], 0))
    elif op == 25 and release:
        held.append(unique)
    elif op in (25, 2, 42, 36):  # FLUSH: never; FORGET, BATCH_FORGET, INTERRUPT: no reply
        pass
    elif op in (18, 29):  # RELEASE, RELEASEDIR
        reply(unique, 0)
    else:
        reply(unique, errno.ENOSYS)
"#;

/// Opens `argv[1]` (the FUSE file) as fd 1 and execs `argv[2:]`: a launch whose stdout
/// is a file whose every close waits for ever.
const STDOUT_ONTO: &str = r#"
import os, sys
os.close(1)
assert os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND) == 1
os.set_inheritable(1, True)
os.execv(sys.argv[2], sys.argv[2:])
"#;

/// A user allowed into a context launches with its stdout a file on a FUSE mount of its
/// own whose server never answers FLUSH. The broker's check of a handshake's descriptors
/// (a peek, which installs duplicates of them) closed those duplicates on the async
/// worker, where the close waited for the FLUSH: the worker hung, and root's launches
/// with it (found by helper-96). Root must stay served.
#[test]
fn a_passed_file_whose_every_close_waits_leaves_root_served() {
    if no_fuse() {
        return;
    }
    let alice = user(ALICE);
    let b = Broker::start(&format!(
        r#"[broker]
socket_mode = "0666"

[contexts.alice]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0, {uid}] }}

[contexts.root]
user = "root"
cwd = "/"
allow = {{ uids = [0] }}
"#,
        uid = alice.uid
    ));
    root_served_while_a_launch_passes_a_fuse_file(&b, ALICE, alice.uid, "alice", &[]);
}

/// A user allowed into no context connects with a launch whose stdout is a file on a FUSE
/// mount of its own (`allow_other`) whose server answers neither STATFS nor, once the file
/// is open, GETATTR. The handshake's check of the queued descriptors asked their file
/// system what they were (`fstat`, `fstatfs`) on the async worker, before the `allow`
/// rule: the worker waited for the server, the accept loop behind it, and nobody was
/// served, root included (helper-98: over 11 minutes). Root must stay served.
#[test]
fn a_passed_file_whose_file_system_never_answers_leaves_root_served() {
    if no_fuse() {
        return;
    }
    let bob = user(BOB);
    let b = Broker::start(
        r#"[broker]
socket_mode = "0666"

[contexts.alice]
user = "ctx-alice"
cwd = "/"
allow = { uids = [0] }

[contexts.root]
user = "root"
cwd = "/"
allow = { uids = [0] }
"#,
    );
    root_served_while_a_launch_passes_a_fuse_file(&b, BOB, bob.uid, "alice", &["17", "3"]);
}

/// Mounts [`FLUSHLESS_FUSE`] (with `fuse_args` after the mount point and uid) served as
/// `uid`; `launcher` then starts `ctx exec --context CONTEXT` with its stdout that FUSE
/// file; root's `ctx exec` must be served meanwhile.
fn root_served_while_a_launch_passes_a_fuse_file(
    b: &Broker,
    launcher: &str,
    uid: u32,
    context: &str,
    fuse_args: &[&str],
) {
    let (server, file) = flushless_fuse(b, uid, fuse_args);
    let launch = as_user(launcher)
        .args(["/usr/bin/python3", "-c", STDOUT_ONTO, &file])
        .arg(bin("ctx"))
        .arg("--socket")
        .arg(b.socket())
        .args(["exec", "--context", context, "--", "/bin/echo", "x"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let launch = Attacker(launch);
    thread::sleep(Duration::from_secs(1));
    eprintln!("broker threads:\n{}", threads(b.pid()));
    let root = RootExec::start(b, "root");
    let Served { ok: served, took } = root.wait();
    if !served {
        eprintln!("broker threads after:\n{}", threads(b.pid()));
    }
    // Killing the server aborts the connection: every waiting call returns.
    drop(server);
    drop(launch);
    assert!(
        served,
        "root's ctx exec was not served in {took:?} while {launcher}'s launch passed a file \
         on a FUSE mount whose server does not answer"
    );
}

/// Q opens the FUSE file (`argv[1]`, close-on-exec), forks P, and execs `/bin/true`:
/// the exec's close of the file waits for a FLUSH that never comes. P connects to the
/// broker (`argv[2]`) once Q is in that exec, says `connected`, and sends nothing until
/// Q ends.
const STUCK_PARENT: &str = r#"
import ctypes, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
if os.fork() == 0:
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG: SIGKILL once Q is gone
    time.sleep(1.0)
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[2])
    print("connected", flush=True)
    time.sleep(60)
    os._exit(0)
os.execv("/bin/true", ["true"])
"#;

/// A user allowed into nothing connects from a process whose parent is stuck in an exec
/// (its close of a file on the user's own FUSE mount waits for a FLUSH that never comes),
/// while some launch runs. Placing the peer walked its ancestors through
/// `/proc/PID/stat`, which waits for as long as that process is in its exec: on the
/// accept loop, so nobody was served, root included (helper-100: 1213 s, until the FUSE
/// server was killed). Root must stay served.
#[test]
fn a_peer_whose_parent_is_stuck_in_an_exec_leaves_root_served() {
    if no_fuse() {
        return;
    }
    let b = Broker::start(
        r#"[broker]
socket_mode = "0666"

[contexts.alice]
user = "ctx-alice"
cwd = "/"
allow = { uids = [0] }

[contexts.root]
user = "root"
cwd = "/"
allow = { uids = [0] }
"#,
    );
    // A launch that runs meanwhile: the walk climbs from the peer to every ancestor born
    // since the oldest running launch, its parent included.
    let mut running = b
        .exec_cmd("alice", &["sh", "-c", "echo up; exec sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = [0u8; 3];
    running
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut up)
        .unwrap();
    let running = Attacker(running);
    let (server, file) = flushless_fuse(&b, user(BOB).uid, &[]);
    let stuck = as_user(BOB)
        .args(["/usr/bin/python3", "-c", STUCK_PARENT, &file])
        .arg(b.socket())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stuck = Attacker(stuck);
    assert_eq!(stuck.report(1), ["connected"]);
    thread::sleep(Duration::from_millis(300));
    let root = RootExec::start(&b, "root");
    let Served { ok: served, took } = root.wait();
    if !served {
        eprintln!("broker threads:\n{}", threads(b.pid()));
    }
    // Killing the server aborts the connection: the exec goes on.
    drop(server);
    drop(stuck);
    drop(running);
    assert!(
        served,
        "root's ctx exec was not served in {took:?} while a peer's parent was stuck in an exec"
    );
}

/// Q connects to the broker (`argv[1]`) `argv[2]` times, keeping the connections across
/// its exec, and, when `argv[3]` is `userns`, in a user namespace of its own first (where it
/// holds every capability); says `connected`, then execs holding its descriptor 3
/// close-on-exec: a file on a FUSE mount whose server never answers the FLUSH the exec's
/// close sends, so Q stays in that exec. Each identification of Q waits there.
const HELD_WITH_ITS_CONNECTIONS: &str = r#"
import ctypes, os, socket, sys
if sys.argv[3] == "userns" and ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:
    sys.exit("unshare(CLONE_NEWUSER): errno %d" % ctypes.get_errno())
os.set_inheritable(3, False)
held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.set_inheritable(True)
    s.connect(sys.argv[1])
    held.append(s)
print("connected", flush=True)
os.execv("/bin/true", ["true"])
"#;

/// Starts [`HELD_WITH_ITS_CONNECTIONS`] as `who` (a command prefix such as `setpriv ...`),
/// its descriptor 3 the FUSE `file` (opened by root, who can reach the server's mount), and
/// waits until it has connected `n` times. Drop the FUSE server before it.
fn held_with_its_connections(
    b: &Broker,
    file: &str,
    who: &[&str],
    n: usize,
    userns: bool,
) -> Attacker {
    let child = Command::new("sh")
        .args(["-c", r#"exec 3<>"$0" && exec "$@""#, file])
        .args(who)
        .args(["/usr/bin/python3", "-c", HELD_WITH_ITS_CONNECTIONS])
        .arg(b.socket())
        .arg(n.to_string())
        .arg(if userns { "userns" } else { "-" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut held = Attacker(child);
    assert_eq!(held.report(1), ["connected"], "{who:?}");
    held
}

/// Processes held in an exec by a FUSE mount's server, which is killed first (letting
/// their exec go on) however the test ends: killed and waited for before it, each would
/// wait for good.
struct HeldOnFuse {
    server: Option<Attacker>,
    held: Vec<Attacker>,
}

impl HeldOnFuse {
    fn new(server: Attacker) -> HeldOnFuse {
        HeldOnFuse {
            server: Some(server),
            held: Vec::new(),
        }
    }

    fn push(&mut self, held: Attacker) {
        self.held.push(held);
    }
}

impl Drop for HeldOnFuse {
    fn drop(&mut self) {
        drop(self.server.take());
        self.held.clear();
    }
}

/// Root without capabilities: a `user = "root"` context's process, as the broker sees one.
const ROOT_WITHOUT_CAPS: [&str; 4] = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"];

/// Runs `args` with the `ctx` CLI as the operator; fails unless it succeeds within 3 s
/// (a peer the broker gave up identifying is refused after 5).
fn operator_served(b: &Broker, args: &[&str]) {
    let (code, took, said) = timed(b, &mut b.ctx(args));
    assert!(
        code == Some(0) && took < Duration::from_secs(3),
        "the operator's `ctx {}` took {took:?}, exit {code:?}: {said}\nbroker threads:\n{}",
        args.join(" "),
        threads(b.pid())
    );
}

/// Runs `cmd` for 10 s at most (killed then): its exit code, how long it took and what it
/// printed. Its output goes to a file, never a pipe: the descriptors a launch passes stay
/// in the broker's hands until it reads the request, so a pipe would not end with `cmd`.
fn timed(b: &Broker, cmd: &mut Command) -> (Option<i32>, Duration, String) {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = b
        .dir()
        .path()
        .join(format!("timed.{}", N.fetch_add(1, Ordering::Relaxed)));
    let out = std::fs::File::create(&path).unwrap();
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let status = wait_deadline(&mut child, Duration::from_secs(10));
    let took = start.elapsed();
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let said = std::fs::read_to_string(&path).unwrap_or_default();
    (status.and_then(|s| s.code()), took, said)
}

/// helper-109, before 6.9 and 6.11 (`CTX_TEST_KERNEL=6.1`, `6.10`): root in a context
/// (no capabilities; in a user namespace of its own, where it holds them all) held twelve
/// identifications of its own in an exec, more than uid 0's share of the threads that
/// identify. The operator's own check of its peer ran in uid 0's share too: its `ctx exec`
/// was refused after 5 s; and its `ctx sh --context root` queued for good behind them (the
/// session's work shared those threads). The operator's work has its own.
#[test]
fn root_in_a_context_held_in_its_identifications_leaves_the_operator_served() {
    if no_fuse() {
        return;
    }
    let b = Broker::start(
        r#"[broker]
socket_mode = "0666"

[contexts.alice]
user = "ctx-alice"
cwd = "/"
allow = { uids = [0] }

[contexts.root]
user = "root"
cwd = "/"
allow = { uids = [0] }
"#,
    );
    let (server, file) = flushless_fuse(&b, 0, &[]);
    let mut held = HeldOnFuse::new(server);
    held.push(held_with_its_connections(
        &b,
        &file,
        &ROOT_WITHOUT_CAPS,
        12,
        true,
    ));
    thread::sleep(Duration::from_millis(300));
    operator_served(&b, &["exec", "--context", "alice", "--", "true"]);
    operator_served(&b, &["exec", "--context", "root", "--", "true"]);
    operator_served(&b, &["status"]);
    operator_served(&b, &["sh", "--context", "root", "echo hi"]);
    drop(held);
}

/// helper-109, before 6.9 (`CTX_TEST_KERNEL=6.1`): eleven users allowed into nothing each
/// held nine identifications in an exec: all 48 threads the broker had for such work, and
/// the operator's 16 spare ones took the queued jobs too: nobody was served. Now the
/// reads that may wait have threads of their own (128, 8 per user): with eleven users a
/// user of a context is still served, and with seventeen, more than those threads, the
/// operator still is (its spare threads run its work only).
#[test]
fn users_held_in_their_identifications_leave_the_operator_and_then_other_users_served() {
    if no_fuse() {
        return;
    }
    let b = Broker::start(&format!(
        r#"[broker]
socket_mode = "0666"

[contexts.bob]
user = "{BOB}"
cwd = "/"
allow = {{ uids = [0, {bob}] }}
"#,
        bob = user(BOB).uid
    ));
    let (server, file) = flushless_fuse(&b, 0, &[]);
    let mut held = HeldOnFuse::new(server);
    let strangers = |from: u32, to: u32| (from..to).map(|uid| format!("--reuid={uid}"));
    for uid in strangers(40001, 40012) {
        let who = [uid.as_str(), "--regid=40000", "--clear-groups", "--"];
        held.push(held_with_its_connections(
            &b,
            &file,
            &["setpriv"].iter().chain(&who).copied().collect::<Vec<_>>(),
            9,
            false,
        ));
    }
    thread::sleep(Duration::from_millis(300));
    let (code, took, said) = timed(
        &b,
        as_user(BOB)
            .args([bin("ctx").to_str().unwrap(), "--socket"])
            .arg(b.socket())
            .args(["exec", "--context", "bob", "--", "true"]),
    );
    assert!(
        code == Some(0) && took < Duration::from_secs(3),
        "bob took {took:?}, exit {code:?}: {said}\nbroker threads:\n{}",
        threads(b.pid())
    );
    operator_served(&b, &["exec", "--context", "bob", "--", "true"]);
    for uid in strangers(40012, 40018) {
        let who = [uid.as_str(), "--regid=40000", "--clear-groups", "--"];
        held.push(held_with_its_connections(
            &b,
            &file,
            &["setpriv"].iter().chain(&who).copied().collect::<Vec<_>>(),
            9,
            false,
        ));
    }
    thread::sleep(Duration::from_millis(300));
    operator_served(&b, &["exec", "--context", "bob", "--", "true"]);
    operator_served(&b, &["status"]);
    drop(held);
}

/// P, a child of Q, connects to the broker (`argv[1]`) `argv[2]` times a round, holds the
/// connections 5.6 s (the broker gives up identifying one after 5), closes them and starts
/// over, `argv[3]` rounds; says `round N` after each. Q execs holding its descriptor 3
/// close-on-exec (see [`HELD_WITH_ITS_CONNECTIONS`]): each identification of P, walking
/// its ancestry, waits in Q's exec.
const CHURN_UNDER_A_HELD_PARENT: &str = r#"
import ctypes, os, socket, sys, time
os.set_inheritable(3, False)
if os.fork() == 0:
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG: SIGKILL once Q is gone
    time.sleep(0.5)
    for r in range(int(sys.argv[3])):
        held = []
        for _ in range(int(sys.argv[2])):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(sys.argv[1])
                held.append(s)
            except OSError:
                s.close()
        time.sleep(5.6)
        for s in held:
            s.close()
        print("round", r, len(held), flush=True)
    time.sleep(60)
    os._exit(0)
os.execv("/bin/true", ["true"])
"#;

/// helper-109, before 6.9 (`CTX_TEST_KERNEL=6.1`): an identification the broker gave up on
/// after 5 s left its job queued, with the peer's pidfd, and no longer counted against the
/// peer's uid: a user reconnecting every 5 s grew the broker's descriptors without bound
/// (two users took 2,000 in 42 s). A job waiting to identify counts as the connection did.
#[test]
fn identifications_given_up_on_leave_the_broker_bounded_descriptors() {
    if no_fuse() {
        return;
    }
    let b = Broker::start(&standard_config());
    // A launch that runs meanwhile: the walk climbs from the peer to every ancestor born
    // since the oldest running launch, its parent included.
    let mut running = b
        .exec_cmd("alice", &["sh", "-c", "echo up; exec sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = [0u8; 3];
    running
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut up)
        .unwrap();
    let running = Attacker(running);
    let baseline = raw::fd_count(b.pid());
    let (server, file) = flushless_fuse(&b, 0, &[]);
    let child = Command::new("sh")
        .args(["-c", r#"exec 3<>"$0" && exec "$@""#, &file])
        .args([
            "setpriv",
            "--reuid=40001",
            "--regid=40000",
            "--clear-groups",
            "--",
        ])
        .args(["/usr/bin/python3", "-c", CHURN_UNDER_A_HELD_PARENT])
        .arg(b.socket())
        .args(["200", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut churn = HeldOnFuse::new(server);
    churn.push(Attacker(child));
    let rounds = churn.held[0].report(4);
    let most = raw::fd_count(b.pid());
    operator_served(&b, &["status"]);
    drop(churn);
    drop(running);
    assert_eq!(rounds.len(), 4, "{rounds:?}");
    assert!(
        most < baseline + 150,
        "the broker held {most} descriptors after four rounds, {baseline} before: {rounds:?}"
    );
}

/// helper-110: a `no_access` path of one context that a user owns (here ctx-alice, allowed
/// into nothing) and mounts a FUSE filesystem of its own over, whose server never answers.
/// Each launch into the context asked whether the path exists on the async worker: the
/// first held it, the second the other, and nobody was served, root's `ctx status` included.
#[test]
fn a_filesystem_a_user_mounts_over_a_no_access_path_holds_up_no_one() {
    if no_fuse() {
        return;
    }
    let (_dir, secret) = alices_home_and("secret");
    let alice = user(ALICE);
    let b = Broker::start(&bob_denied(
        &secret.display().to_string(),
        &format!("[contexts.alice]\nuser = \"{ALICE}\"\ncwd = \"/\"\nallow = {{ uids = [0] }}\n"),
    ));
    operator_served(&b, &["exec", "--context", "bob", "--", "true"]);
    let mounted = fuse_mounted_here(&secret, alice.uid, "1,3,14,27,34");
    for _ in 0..3 {
        operator_served(&b, &["exec", "--context", "bob", "--", "true"]);
    }
    operator_served(&b, &["status"]);
    operator_served(&b, &["exec", "--context", "alice", "--", "true"]);
    drop(mounted);
}

/// A temp dir holding ctx-alice's `alice-home` (0755) and in it her directory `name`
/// (0700): the dir, and the path of `name`.
fn alices_home_and(name: &str) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new();
    let home = dir.subdir("alice-home", 0o755);
    let inner = dir.subdir(&format!("alice-home/{name}"), 0o700);
    let alice = user(ALICE);
    for d in [&home, &inner] {
        std::os::unix::fs::chown(d, Some(alice.uid), Some(alice.gid)).unwrap();
    }
    (dir, inner)
}

/// A config whose context `bob` (ctx-bob, root may enter) has `denied` as its `no_access`
/// path, followed by `more`.
fn bob_denied(denied: &str, more: &str) -> String {
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.bob]
user = "{BOB}"
cwd = "/"
isolation = {{ no_access = ["{denied}"] }}
allow = {{ uids = [0] }}

{more}"#
    )
}

/// helper-110: a `no_access` path beneath (not over) a FUSE mount a user made, whose server
/// never answers: the ruleset's build looked its names up in that filesystem, and every
/// launch into the context waited for good. Now a name the kernel has not cached is looked
/// up only on a filesystem that surely answers, and beneath FUSE the mount is denied
/// whole: the launch runs, and (with a server that answers) a file there is refused.
#[test]
fn a_no_access_path_beneath_a_users_filesystem_that_never_answers_denies_that_filesystem() {
    if no_fuse() {
        return;
    }
    let (_dir, mnt) = alices_home_and("mnt");
    let alice = user(ALICE);
    let config = bob_denied(&format!("{}/deeper/secret", mnt.display()), "");
    let b = Broker::start(&config);
    let mounted = fuse_mounted_here(&mnt, alice.uid, "1,3,14,27,34");
    let (code, took, said) = timed(&b, &mut b.ctx(["exec", "--context", "bob", "--", "true"]));
    drop(mounted);
    assert!(
        code == Some(0) && took < Duration::from_secs(3),
        "bob's launch after {took:?}, exit {code:?}: {said}"
    );
    drop(b);
    // Its file `f` answered, `deeper` not there: only the whole mount's denial keeps bob out.
    let b = Broker::start(&config);
    let mounted = fuse_mounted_here(&mnt, alice.uid, "");
    let file = format!("{}/f", mnt.display());
    let (code, took, said) = timed(
        &b,
        &mut b.ctx(["exec", "--context", "bob", "--", "cat", &file]),
    );
    drop(mounted);
    assert!(
        code.is_some_and(|c| c != 0)
            && said.contains("Permission denied")
            && took < Duration::from_secs(3),
        "bob read a file of the mount beneath which his no_access path lies, after {took:?}, \
         exit {code:?}: {said}"
    );
}

/// helper-108: a context's user owns its `ctx sh` session directory, and where FUSE's
/// `user_allow_other` is on (`/etc/fuse.conf`) it can mount a filesystem of its own over it
/// that root enters too (here root mounts it for the user, as `fusermount3 -o allow_other`
/// would). The broker's `ctx sh` set-up entered it under a lock every context's set-up
/// takes: a server that never answers held every context's `ctx sh` for good, and the
/// context's own launches, whose shared exports the broker reads there; and a context
/// with Landlock rules had each launch ask whether that directory exists on the async
/// worker, which two launches took both of (helper-110). Now the broker never enters such a
/// mount: the context's sessions are refused saying why, its launches run without the
/// exports, and other contexts are served.
#[test]
fn a_filesystem_a_context_mounts_over_its_session_directory_holds_up_no_one() {
    if no_fuse() {
        return;
    }
    let b = Broker::start(&format!(
        r#"[broker]
socket_mode = "0666"

[contexts.alice]
user = "{ALICE}"
cwd = "/"
shell_env = "shared"
isolation = {{ no_access = ["/srv/ctx-test-nothing-here"] }}
allow = {{ uids = [0] }}

[contexts.bob]
user = "{BOB}"
cwd = "/"
allow = {{ uids = [0] }}
"#
    ));
    operator_served(&b, &["sh", "--context", "alice", "export SHARED=1"]);
    let session_dir = b.dir().path().join("state/shells/alice");
    // FUSE's LOOKUP, GETATTR, OPEN, OPENDIR and ACCESS: never answered.
    let mounted = fuse_mounted_here(&session_dir, user(ALICE).uid, "1,3,14,27,34");
    operator_served(&b, &["sh", "--context", "bob", "echo hi"]);
    // Twice: each launch into alice asks about her session directory (helper-110: on the
    // async worker, until both workers waited).
    operator_served(&b, &["exec", "--context", "alice", "--", "true"]);
    operator_served(&b, &["exec", "--context", "alice", "--", "true"]);
    operator_served(&b, &["status"]);
    let (code, took, said) = timed(&b, &mut b.ctx(["sh", "--context", "alice", "echo hi"]));
    assert!(
        code.is_some_and(|c| c != 0)
            && said.contains("a filesystem is mounted there")
            && took < Duration::from_secs(3),
        "alice's own session over her mount, after {took:?}, exit {code:?}: {said}"
    );
    operator_served(&b, &["sh", "--context", "bob", "echo hi"]);
    drop(mounted);
}

/// A mount made with [`FLUSHLESS_FUSE`] in the broker's own mount namespace: its server is
/// killed, then the mount taken away (lazily: it may be busy) when this is dropped.
struct MountedHere {
    server: Option<Attacker>,
    mnt: std::path::PathBuf,
}

impl Drop for MountedHere {
    fn drop(&mut self) {
        // Killing the server aborts the connection: every waiting call returns.
        drop(self.server.take());
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// Mounts [`FLUSHLESS_FUSE`] over the existing directory `mnt` in this (the broker's)
/// mount namespace, served as `uid`, never answering the FUSE operations `never` (their
/// numbers, comma-separated).
fn fuse_mounted_here(mnt: &std::path::Path, uid: u32, never: &str) -> MountedHere {
    let child = Command::new("/usr/bin/python3")
        .args(["-c", FLUSHLESS_FUSE])
        .arg(mnt)
        .arg(uid.to_string())
        .arg(never)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the FUSE server");
    let mut server = Attacker(child);
    let mut line = [0u8; 8];
    server
        .0
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    let mounted = MountedHere {
        server: Some(server),
        mnt: mnt.to_path_buf(),
    };
    assert_eq!(&line, b"mounted\n");
    mounted
}

/// Each attempt: a fresh process whose leader B calls `kill(BROKER, 0)` (a notification
/// the guard thread places) while its thread A execs holding a close-on-exec file of the
/// FUSE mount, whose FLUSH waits until the attempt is over. Then a new process's
/// `kill(BROKER, 0)` must be answered within 300 ms. Prints `win` at the first attempt
/// where it is not, else `held` after them all. `argv`: broker pid, the FUSE file, the
/// release file, attempts.
const GUARD_RACE: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
static int broker; static volatile int go; static long spin;
static void *execer(void *x) {
    (void)x;
    while (!go) ;
    for (volatile long i = 0; i < spin; i++) ;
    char *argv[] = {"true", NULL}; char *envp[] = {NULL};
    syscall(SYS_execve, "/bin/true", argv, envp);
    return NULL;
}
static int answered(void) {
    pid_t p = fork();
    if (p == 0) { syscall(SYS_kill, broker, 0); _exit(0); }
    for (int i = 0; i < 30; i++) { usleep(10000); if (waitpid(p, NULL, WNOHANG) == p) return 1; }
    return 0;
}
int main(int argc, char **argv) {
    (void)argc;
    broker = atoi(argv[1]); srand(getpid());
    for (int a = 0; a < atoi(argv[4]); a++) {
        spin = rand() % 100000;
        pid_t c = fork();
        if (c == 0) {
            if (open(argv[2], O_WRONLY | O_CLOEXEC) < 0) { perror("open"); _exit(1); }
            pthread_t t; pthread_create(&t, NULL, execer, NULL);
            usleep(2000); go = 1;
            syscall(SYS_kill, broker, 0);
            pause(); _exit(0);
        }
        usleep(30000);
        if (!answered()) { printf("win %d\n", a); return 0; }
        close(open(argv[3], O_CREAT | O_WRONLY, 0666));
        waitpid(c, NULL, 0);
    }
    printf("held\n");
    return 0;
}
"#;

/// A routed process's signal aimed at the broker's pid is placed, on the one guard thread
/// that answers every launch, in its PID namespace: by `/proc/PID/ns/pid`, whose open
/// waits while the process is inside an exec. A leader's `kill(BROKER, 0)` raced with its
/// other thread's exec, held by a FUSE file's flush: the guard thread waited for good, and
/// every routed `kill -0 $PPID` and every enforced launch with it (helper-101: won within
/// 25 attempts each time). The guard must keep answering.
#[test]
fn a_signal_to_the_broker_raced_with_an_exec_leaves_the_guard_answering() {
    if no_fuse() {
        return;
    }
    let bob = user(BOB);
    let b = Broker::start(&format!(
        r#"[broker]
socket_mode = "0666"

[contexts.bob]
user = "{BOB}"
cwd = "/"
allow = {{ uids = [{uid}] }}
"#,
        uid = bob.uid
    ));
    let own = b.dir().path().join("bob");
    std::fs::create_dir(&own).unwrap();
    std::os::unix::fs::chown(&own, Some(bob.uid), Some(bob.gid)).unwrap();
    let src = own.join("race.c");
    std::fs::write(&src, GUARD_RACE).unwrap();
    let race = own.join("race");
    let cc = Command::new("cc")
        .args(["-O1", "-pthread", "-o"])
        .arg(&race)
        .arg(&src)
        .status()
        .unwrap();
    assert!(cc.success());
    let release = own.join("release");
    let (server, file) = flushless_fuse_releasing(b.dir().path(), bob.uid, &[], Some(&release));
    let racer = as_user(BOB)
        .arg(bin("ctx"))
        .arg("--socket")
        .arg(b.socket())
        .args(["exec", "--context", "bob", "--"])
        .arg(&race)
        .arg(b.pid().to_string())
        .arg(&file)
        .arg(&release)
        .arg("200")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Read on a thread: an attempt stuck in its exec holds the output open.
    let mut racer = Attacker(racer);
    let said = racer.report(1);
    if said != ["held"] {
        eprintln!("broker threads:\n{}", threads(b.pid()));
    }
    // Killing the server ends the held exec.
    drop(server);
    drop(racer);
    assert_eq!(said, ["held"], "the guard stopped answering");
}

/// Opens the FUSE file `argv[1]` close-on-exec and execs `/bin/true`: the exec's close
/// waits for a FLUSH that never comes.
const EXEC_HOLDING: &str = r#"
import os, sys
os.open(sys.argv[1], os.O_WRONLY)
os.execv("/bin/true", ["true"])
"#;

/// `ctx-broker --stop` (what the package's removal runs without systemd) read every
/// process's `/proc/PID/exe`, which waits as long as that process is inside an exec: one
/// process of any user held in its exec (a file of its own FUSE mount whose FLUSH never
/// comes) kept `--stop` waiting for good, before it signalled anything (helper-101). The
/// broker must be stopped all the same.
#[test]
fn stop_stops_the_broker_while_a_users_process_is_held_in_its_exec() {
    if no_fuse() {
        return;
    }
    // `--stop` stops every broker of its own file: a copy of its own, so that the other
    // tests' brokers, of the build's file, are left alone.
    let dir = TempDir::new();
    let broker = dir.path().join("ctx-broker");
    std::fs::copy(bin("ctx-broker"), &broker).unwrap();
    let config = dir.file("contexts.toml", standard_config().as_bytes(), 0o644);
    let socket = dir.path().join("broker.sock");
    let started = Command::new(&broker)
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
        .unwrap();
    let mut started = Attacker(started);
    let ready = poll(Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    });
    assert!(ready.is_some(), "the broker did not start listening");
    let (server, file) = flushless_fuse_releasing(dir.path(), user(BOB).uid, &[], None);
    let held = as_user(BOB)
        .args(["/usr/bin/python3", "-c", EXEC_HOLDING, &file])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let held = Attacker(held);
    let in_exec = poll(Duration::from_secs(10), || {
        let stat = std::fs::read_to_string(format!("/proc/{}/status", held.0.id())).ok()?;
        stat.starts_with("Name:\tpython3").then_some(())
    });
    assert!(in_exec.is_some(), "the held process started");
    thread::sleep(Duration::from_millis(500));
    let mut stop = Command::new(&broker)
        .args(["--stop", "--config"])
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stopped = wait_deadline(&mut stop, Duration::from_secs(20));
    if stopped.is_none() {
        let _ = stop.kill();
        let _ = stop.wait();
    }
    let mut said = String::new();
    let _ = stop.stderr.take().unwrap().read_to_string(&mut said);
    // Reaped here if it ended: it is this test's child.
    let ended = wait_deadline(&mut started.0, Duration::from_secs(5));
    drop(server);
    drop(held);
    assert!(
        stopped.is_some_and(|s| s.success()),
        "--stop did not finish in 20 s while a process was held in its exec: {said}"
    );
    assert!(
        ended.is_some(),
        "the broker still runs; --stop said: {said}"
    );
}

/// Mounts [`FLUSHLESS_FUSE`] (with `fuse_args` after the mount point and uid) served as
/// `uid`: the server, whose end aborts the connection, and the path of its file.
fn flushless_fuse(b: &Broker, uid: u32, fuse_args: &[&str]) -> (Attacker, String) {
    flushless_fuse_releasing(b.dir().path(), uid, fuse_args, None)
}

/// As [`flushless_fuse`], its held FLUSHes answered whenever `release` appears.
fn flushless_fuse_releasing(
    dir: &std::path::Path,
    uid: u32,
    fuse_args: &[&str],
    release: Option<&std::path::Path>,
) -> (Attacker, String) {
    let mnt = dir.join("flushless");
    std::fs::create_dir(&mnt).unwrap();
    let child = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "/usr/bin/python3",
            "-c",
            FLUSHLESS_FUSE,
        ])
        .arg(&mnt)
        .arg(uid.to_string())
        .args(fuse_args)
        .envs(release.map(|r| ("RELEASE", r)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the FUSE server");
    let mut server = Attacker(child);
    let mut line = [0u8; 8];
    server
        .0
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    assert_eq!(&line, b"mounted\n");
    let file = format!("/proc/{}/root{}/f", server.0.id(), mnt.display());
    (server, file)
}

/// Every spawn child used to get a copy of the broker's whole descriptor table, with the
/// descriptors other callers had passed with launches not yet forked, and closed them at
/// its exec: when that other launch's copies were closed first, the child's close was the
/// last, and a pipe whose lock its caller holds (a splice into a full socket) or a file on
/// a FUSE mount that never answers FLUSH hung the child in its exec. Two launches here
/// stay in their exec (onto a FUSE mount nobody serves), each with a pipe of its own as
/// stdout; the second's child must hold its own pipe and never the first's.
#[test]
fn a_launch_never_holds_the_descriptors_another_launch_passed() {
    if no_fuse() {
        return;
    }
    let b = Broker::start(&standard_config());
    let mnt = b.dir().path().join("hung");
    let holder = hung_fuse_holder(&mnt, user(ALICE).uid);
    let program = format!("/proc/{}/root{}/prog", holder.0.id(), mnt.display());
    let null = std::fs::File::open("/dev/null").unwrap();
    let mut pipes = Vec::new();
    let mut held = Vec::new();
    for _ in 0..2 {
        let (r, w) = std::io::pipe().unwrap();
        let mut req = raw::exec_request("alice", &[b"prog"]);
        req.program = Some(serde_bytes::ByteBuf::from(program.as_bytes().to_vec()));
        let mut bytes = Vec::new();
        encode_vec(&Hello::new(ClientKind::Cli), &mut bytes).unwrap();
        encode_vec(&Request::Exec(req), &mut bytes).unwrap();
        let n = null.as_raw_fd();
        held.push(raw::send_opening(
            &b.socket(),
            &bytes,
            &[n, w.as_raw_fd(), n],
        ));
        let link = std::fs::read_link(format!("/proc/self/fd/{}", r.as_raw_fd())).unwrap();
        drop(w);
        pipes.push((r, link));
        // The first launch's child is in its exec before the second is read.
        thread::sleep(Duration::from_millis(300));
    }
    let (first, second) = (&pipes[0].1, &pipes[1].1);
    let me = std::process::id();
    let holding = |link: &std::path::Path| -> Vec<u32> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me || pid == b.pid() {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            if fds
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == link))
            {
                pids.push(pid);
            }
        }
        pids
    };
    // Each launch's child holds its own pipe, as its stdout.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut with_first, mut with_second) = (holding(first), holding(second));
    while (with_first.is_empty() || with_second.is_empty()) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        (with_first, with_second) = (holding(first), holding(second));
    }
    drop(holder);
    drop(held);
    assert!(
        !with_first.is_empty() && !with_second.is_empty(),
        "the launches' children were not seen in their exec: {with_first:?} {with_second:?}"
    );
    let both: Vec<u32> = with_second
        .iter()
        .copied()
        .filter(|p| with_first.contains(p))
        .collect();
    assert!(
        both.is_empty(),
        "process(es) {both:?} of the second launch hold the first launch's pipe \
         (first: {with_first:?}, second: {with_second:?})"
    );
}

/// Takes a write lease on `argv[1]` (a script of its own) and holds it: an open of the
/// file by anyone else waits for the lease to be let go or broken by force, which takes
/// `/proc/sys/fs/lease-break-time` (45 s by default). Prints `leased`.
const LEASED: &str = r##"
import fcntl, os, signal, sys, time
signal.signal(signal.SIGIO, signal.SIG_IGN)
path = sys.argv[1]
with open(path, "w") as f:
    f.write("#!/bin/sh\necho ran\n")
os.chmod(path, 0o755)
fd = os.open(path, os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("leased", flush=True)
time.sleep(float(sys.argv[2]))
"##;

/// A user allowed into a context launches a file of its own on which it holds a write
/// lease: the spawn child's `execve` waits in the lease break (45 s by default; then the
/// attacker takes a new lease), and the child is a `CLONE_VFORK` one, so the thread that
/// cloned it waits as long. More such launches than one uid may fork at once: root and
/// another user must stay served, and once the lease goes every one of them runs.
#[test]
fn a_leased_program_does_not_suspend_a_worker_in_the_spawn() {
    let alice = user(ALICE);
    let bob = user(BOB);
    let b = Broker::start(&format!(
        r#"[broker]
socket_mode = "0666"

[contexts.alice]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0, {uid}] }}

[contexts.other]
user = "{BOB}"
cwd = "/"
allow = {{ uids = [0, {bob}] }}
"#,
        uid = alice.uid,
        bob = bob.uid
    ));
    let dir = b.dir().path().join("leased");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(alice.uid), Some(alice.gid)).unwrap();
    let prog = dir.join("prog");
    let mut holder = as_user(ALICE);
    let child = holder
        .args(["/usr/bin/python3", "-c", LEASED])
        .arg(&prog)
        .arg("120")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the lease holder");
    let mut holder = Attacker(child);
    let mut line = [0u8; 7];
    holder
        .0
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .expect("the lease is taken");
    assert_eq!(&line, b"leased\n");
    // More than FORKS_PER_UID (16): the ones past it wait for a turn.
    let mut launches = Vec::new();
    for _ in 0..20 {
        let mut c = as_user(ALICE);
        let l = c
            .arg(bin("ctx"))
            .arg("--socket")
            .arg(b.socket())
            .args(["exec", "--context", "alice", "--"])
            .arg(&prog)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        launches.push(Attacker(l));
    }
    thread::sleep(Duration::from_secs(1));
    let listing = threads(b.pid());
    eprintln!("broker threads:\n{listing}");
    // Each thread waiting for a child's exec sleeps in the clone call.
    let forking = listing
        .lines()
        .filter(|l| l.ends_with("kernel_clone") || l.ends_with("_do_fork"))
        .count();
    assert!(
        (1..=16).contains(&forking),
        "{forking} broker threads wait in a fork for {ALICE}'s leased launches (at most 16)"
    );
    let root = RootExec::start(&b, "other");
    let mut by_bob = as_user(BOB);
    let mut by_bob = by_bob
        .arg(bin("ctx"))
        .arg("--socket")
        .arg(b.socket())
        .args(["exec", "--context", "other", "--", "echo", "served"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let Served { ok: served, took } = root.wait();
    let bob_served = wait_deadline(&mut by_bob, Duration::from_secs(5));
    // The holder's end lets go of the lease: the waiting execs go on.
    drop(holder);
    let _ = by_bob.kill();
    let _ = by_bob.wait();
    let mut ran = 0;
    for mut l in launches.drain(..) {
        // Its one short line fits in the pipe: waiting first cannot block on it.
        let ended = wait_deadline(&mut l.0, Duration::from_secs(20));
        let mut out = String::new();
        if ended.is_some() {
            let _ = l.0.stdout.take().unwrap().read_to_string(&mut out);
        }
        if ended.is_some_and(|s| s.success()) && out == "ran\n" {
            ran += 1;
        }
    }
    assert!(
        served,
        "root's ctx exec was not served in {took:?} while spawn children waited on a lease \
         break"
    );
    assert!(
        bob_served.is_some_and(|s| s.success()),
        "another user's ctx exec was not served while {ALICE}'s spawn children waited on a \
         lease break"
    );
    assert_eq!(
        ran, 20,
        "of {ALICE}'s 20 leased launches, only {ran} ran once the lease went"
    );
}

/// Starts the [`HUNG_FUSE`] holder in a mount namespace of its own, with its mount at
/// `mnt`, the mount's processes as `uid`; gives it back once the mount is made.
fn hung_fuse_holder(mnt: &std::path::Path, uid: u32) -> Attacker {
    std::fs::create_dir(mnt).unwrap();
    let child = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "/usr/bin/python3",
            "-c",
            HUNG_FUSE,
        ])
        .arg(mnt)
        .arg("120")
        .arg(uid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the FUSE holder");
    let mut holder = Attacker(child);
    let mut line = [0u8; 8];
    holder
        .0
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .expect("the FUSE mount is made");
    assert_eq!(&line, b"mounted\n");
    holder
}

/// Whether this machine lacks `/dev/fuse` (said on stderr), which the hung-mount tests need.
fn no_fuse() -> bool {
    let missing = !std::path::Path::new("/dev/fuse").exists();
    if missing {
        eprintln!("no /dev/fuse here: skipped");
    }
    missing
}

/// `enforce = true` looks for the program before the fork, as root, to allow it by
/// Landlock (`enforce_ruleset`): a path the caller chose, looked up on the async worker.
/// A user allowed into an enforcing context (ctx-alice) launches
/// `/proc/PID/root/.../prog` onto a FUSE mount nobody serves, twice, with the CLI; root
/// must stay served.
#[test]
fn an_enforced_launch_through_another_mount_namespace_does_not_block_a_worker() {
    if no_fuse() {
        return;
    }
    let alice = user(ALICE);
    let b = Broker::start(&format!(
        r#"[broker]
socket_mode = "0666"

[contexts.agent]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0, {uid}] }}
route_children_to = "user"
isolation = {{ enforce = true }}

[contexts.user]
user = "{BOB}"
cwd = "/"
allow = {{ uids = [0], contexts = ["agent"] }}
"#,
        uid = alice.uid
    ));
    let mnt = b.dir().path().join("hung");
    let holder = hung_fuse_holder(&mnt, alice.uid);
    let program = format!("/proc/{}/root{}/prog", holder.0.id(), mnt.display());
    let mut launches = Vec::new();
    for _ in 0..2 {
        let l = as_user(ALICE)
            .arg(bin("ctx"))
            .arg("--socket")
            .arg(b.socket())
            .args(["exec", "--context", "agent", "--"])
            .arg(&program)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        launches.push(Attacker(l));
    }
    thread::sleep(Duration::from_secs(1));
    eprintln!("broker threads:\n{}", threads(b.pid()));
    let root = RootExec::start(&b, "user");
    let Served { ok: served, took } = root.wait();
    // Ending the holder aborts the FUSE connection: every stuck lookup returns.
    drop(holder);
    drop(launches);
    assert!(
        served,
        "root's ctx exec was not served in {took:?} while two enforced launches of {ALICE} \
         looked up a path on a FUSE mount nobody serves"
    );
}

/// In the mount namespace it runs in: opens `argv[3]` (`O_PATH`, which asks the FUSE mount
/// nothing), connects to the socket `argv[1]` and sends the bytes `argv[2]` (hex) with
/// /dev/null as stdio and that descriptor as its cwd's. Prints `sent`, then holds on.
const SEND_WITH_CWD: &str = r#"
import os, socket, sys, time
cwd = os.open(sys.argv[3], os.O_PATH | os.O_DIRECTORY)
null = os.open("/dev/null", os.O_RDWR)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
socket.send_fds(s, [bytes.fromhex(sys.argv[2])], [null, null, null, cwd])
print("sent", flush=True)
time.sleep(120)
"#;

/// A caller in another mount namespace than the broker's passes its cwd as a descriptor;
/// the broker looks at that directory (`cwd_unverified`, the audit's `cwd_id`) as root on
/// the async worker. ctx-alice, allowed into a context that inherits the cwd, sits on a
/// FUSE mount nobody serves in a namespace of its own and sends two such launches; root
/// must stay served.
#[test]
fn a_cwd_passed_from_another_mount_namespace_is_not_looked_at_on_a_worker() {
    if no_fuse() {
        return;
    }
    let alice = user(ALICE);
    let b = Broker::start(&format!(
        r#"[broker]
socket_mode = "0666"

[contexts.alice]
user = "{ALICE}"
cwd = "inherit"
allow = {{ uids = [0, {uid}] }}

[contexts.bob]
user = "{BOB}"
cwd = "/"
allow = {{ uids = [0] }}
"#,
        uid = alice.uid
    ));
    let mnt = b.dir().path().join("hung");
    let holder = hung_fuse_holder(&mnt, alice.uid);
    let mut req = raw::exec_request("alice", &[b"true"]);
    req.cwd = serde_bytes::ByteBuf::from(mnt.to_str().unwrap().as_bytes().to_vec());
    let mut inherited = ctx_protocol::inherit::Captured::empty().to_inherited();
    inherited.cwd_fd = true;
    req.inherited = Some(inherited);
    let hex = raw::hex(&raw::opening(&Request::Exec(req)));
    let mut senders = Vec::new();
    for _ in 0..2 {
        let child = Command::new("nsenter")
            .args(["-t", &holder.0.id().to_string(), "-m", "--", "setpriv"])
            .args([
                &format!("--reuid={ALICE}"),
                &format!("--regid={ALICE}"),
                "--init-groups",
                "--",
                "/usr/bin/python3",
                "-c",
                SEND_WITH_CWD,
            ])
            .arg(b.socket())
            .arg(&hex)
            .arg(&mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut sender = Attacker(child);
        let mut line = [0u8; 5];
        sender
            .0
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut line)
            .expect("the launch is sent");
        assert_eq!(&line, b"sent\n");
        senders.push(sender);
    }
    thread::sleep(Duration::from_secs(1));
    eprintln!("broker threads:\n{}", threads(b.pid()));
    let root = RootExec::start(&b, "bob");
    let Served { ok: served, took } = root.wait();
    drop(holder);
    drop(senders);
    assert!(
        served,
        "root's ctx exec was not served in {took:?} while two launches of {ALICE} passed a \
         cwd on a FUSE mount nobody serves"
    );
}

/// Holds a pipe's lock for as long as it runs, then sends the launch in `argv[2]` (hex)
/// with /dev/null as descriptors 0-2 and that pipe's write end as the "cwd" descriptor,
/// closing its own copy: the broker's is the last (but for a broker faster than that
/// close). The lock: a splice from the pipe into a
/// Unix socket whose buffer is full waits in the socket's send with the pipe locked, and a
/// pipe end's last close takes that lock. Prints `sent`, then the broker's replies (hex,
/// until it closes or `argv[3]` seconds pass), then holds the lock `argv[4]` seconds more.
const PIPE_LOCK: &str = r#"
import os, socket, sys, threading, time
path, opening, wait, hold = sys.argv[1], bytes.fromhex(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
r, w = os.pipe()
full, peer = socket.socketpair()
full.setblocking(False)
try:
    while True:
        full.send(b"x" * 65536)
except BlockingIOError:
    pass
full.setblocking(True)
os.write(w, b"y" * 4096)
def splice():
    try:
        os.splice(r, full.fileno(), 4096)
    except OSError:
        pass
threading.Thread(target=splice, daemon=True).start()
time.sleep(0.5)
null = os.open("/dev/null", os.O_RDWR)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
socket.send_fds(s, [opening], [null, null, null, w])
# Closed on a thread of its own: on a loaded machine the broker may have run the launch
# and closed its copy first, and this close, the last then, waits for the lock for good.
threading.Thread(target=os.close, args=(w,), daemon=True).start()
print("sent", flush=True)
got = b""
deadline = time.monotonic() + wait
while time.monotonic() < deadline:
    s.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        chunk = s.recv(65536)
    except socket.timeout:
        break
    if not chunk:
        break
    got += chunk
print(got.hex(), flush=True)
time.sleep(hold)
"#;

/// A launch's caller passes a cwd descriptor the child never gets (the request names its
/// own cwd, `cwd_override`), so the broker's copy is the last: it is a pipe's end whose
/// lock the caller keeps held (a splice into a full socket), and its close waits for that
/// lock for as long as the caller likes. The launch must run to its end all the same: the
/// caller hears its exit, as for any other descriptor whose close may wait.
#[test]
fn a_passed_pipe_whose_close_waits_does_not_hold_up_its_launch() {
    let alice = user(ALICE);
    let b = Broker::start(&format!(
        r#"[broker]
socket_mode = "0666"

[contexts.alice]
user = "{ALICE}"
allow = {{ uids = [0, {uid}] }}
"#,
        uid = alice.uid
    ));
    let mut req = raw::exec_request("alice", &[b"true"]);
    req.cwd_override = Some(serde_bytes::ByteBuf::from(b"/".to_vec()));
    let mut inherited = ctx_protocol::inherit::Captured::empty().to_inherited();
    inherited.cwd_fd = true;
    req.inherited = Some(inherited);
    let hex = raw::hex(&raw::opening(&Request::Exec(req)));
    let child = as_user(ALICE)
        .args(["/usr/bin/python3", "-c", PIPE_LOCK])
        .arg(b.socket())
        .args([&hex, "10", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the attacker");
    let mut attacker = Attacker(child);
    let lines = attacker.report(2);
    assert_eq!(lines.first().map(String::as_str), Some("sent"));
    let bytes: Vec<u8> = lines
        .get(1)
        .map(|h| {
            (0..h.len() / 2)
                .filter_map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
                .collect()
        })
        .unwrap_or_default();
    let frames = raw::split_frames(&bytes);
    let stuck = threads(b.pid());
    drop(attacker);
    assert!(
        raw::exit_of(&frames) == Some(ctx_protocol::ExitStatus::Code(0)),
        "the launch did not end while its passed pipe's close waited ({} replies: {:?}); \
         broker threads:\n{stuck}",
        frames.len(),
        frames
            .iter()
            .map(|f| ctx_protocol::frame::decode::<Reply>(f).map(|r| format!("{r:?}")))
            .collect::<Vec<_>>()
    );
}

/// Sends launches to the socket `argv[1]`: for each `size:opening` argument after the
/// first two (`opening` hex bytes, with `size` descriptors of /dev/null sent along), as
/// many as the broker runs, at most `argv[2]` in all. Waits for each one's handshake to
/// end (its greeting) before the next: a launch the broker refused ends soon after, one it
/// runs stays open. Keeps the open ones; prints `stalled`, then how many descriptors they
/// passed, and holds them for `argv[3]` seconds.
const MANY_LAUNCHES: &str = r#"
import os, resource, socket, sys, time
# The kernel bounds descriptors in flight per user by the sender's soft limit.
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
path, most, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
null = os.open("/dev/null", os.O_RDWR)
keep, passed = [], 0
def launch(opening, fds):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        socket.send_fds(s, [opening], [null] * fds)
        s.settimeout(10)
        s.recv(65536)
        s.settimeout(0.5)
        while s.recv(65536):
            pass
    except socket.timeout:
        keep.append(s)
        return True
    except OSError:
        pass
    s.close()
    return False
for arg in sys.argv[4:]:
    size, opening = arg.split(":")
    size, opening = int(size), bytes.fromhex(opening)
    while len(keep) < most and launch(opening, size):
        passed += size
print("stalled", flush=True)
print(f"{len(keep)} launches passing {passed} descriptors", flush=True)
time.sleep(hold)
"#;

/// A uid allowed into a context passes a launch up to its share of the descriptors not
/// kept for root, and its launches past their handshake hold theirs until the fork has
/// the child's copies, which a path the caller chose can hold up for as long as it likes
/// (here a FUSE mount nobody serves). Those must still count against its share: ctx-alice
/// sends such launches to a broker of 1024 files, one at a time, each as large as the
/// broker takes, and root's launch must still be served. They were counted only during
/// their handshake: the broker took them up to its last descriptor, and root's connection
/// was refused ("peer credentials unavailable: Too many open files").
#[test]
fn launches_waiting_to_fork_hold_at_most_their_uid_s_share_of_descriptors() {
    if no_fuse() {
        return;
    }
    let alice = user(ALICE);
    let b = Broker::start_with_files(&alice_entitled_config(""), OLD_UNIT_FILES);
    let baseline = raw::settle_fds(b.pid(), 0, Duration::from_millis(200)) as u64;
    let mnt = b.dir().path().join("hung");
    let holder = hung_fuse_holder(&mnt, alice.uid);
    let program = format!("/proc/{}/root{}/prog", holder.0.id(), mnt.display());
    // The first under the share (192 of 1024 files) by itself; then smaller ones, to take
    // what is left.
    let openings = [180, 20, 1].map(|passed| {
        let mut req = raw::exec_request("alice", &[b"prog"]);
        req.program = Some(serde_bytes::ByteBuf::from(program.as_bytes().to_vec()));
        req.fds = raw::passed_slots(passed);
        let opening = raw::opening(&Request::Exec(req));
        let hex = raw::hex(&opening);
        format!("{passed}:{hex}")
    });
    let sampler = Sampler::start(b.pid());
    let child = as_user(ALICE)
        .args(["/usr/bin/python3", "-c", MANY_LAUNCHES])
        .arg(b.socket())
        .args(["150", "120"])
        .args(&openings)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the attacker");
    let mut attacker = Attacker(child);
    let lines = attacker.report(2);
    assert_eq!(
        lines.first().map(String::as_str),
        Some("stalled"),
        "its launches are sent"
    );
    let open = lines.get(1).cloned().unwrap_or_default();
    let root = RootExec::start(&b, "alice");
    let Served { ok: served, took } = root.wait();
    let (_, peak) = sampler.finish();
    eprintln!(
        "{open} still running: broker peak {peak} fds (baseline {baseline}); root's launch \
         served: {served} in {took:?}"
    );
    // Ending the holder aborts the FUSE connection: every stuck fork returns.
    drop(holder);
    drop(attacker);
    assert!(
        served,
        "root's ctx exec was not served in {took:?} while {ALICE}'s launches waited to fork \
         ({open}; broker peak {peak} of {OLD_UNIT_FILES} files)"
    );
    // Its share, what one more handshake may bring, and a few per connection and fork.
    let share = (OLD_UNIT_FILES - 256) / 4;
    assert!(
        peak < baseline + share + 100,
        "{ALICE}'s launches made the broker hold {peak} descriptors (baseline {baseline})"
    );
    let fds = raw::settle_fds(b.pid(), baseline as usize, Duration::from_secs(10)) as u64;
    assert!(
        fds <= baseline,
        "the broker holds {fds} descriptors once the launches are gone (baseline {baseline})"
    );
}

/// The descriptors a launch passed count against its uid until they are closed, however
/// the launch ends: after launches that ran, failed to exec, were refused, ran on a PTY
/// leaving a job behind, or whose client was killed or signalled, ctx-alice may still
/// pass a launch of nearly her whole share (192 of a broker of 1024 files).
#[test]
fn descriptors_passed_by_ended_launches_no_longer_count() {
    let b = Broker::start_with_files(
        &alice_entitled_config(&format!(
            r#"
[contexts.closed]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
"#
        )),
        OLD_UNIT_FILES,
    );
    let ctx = bin("ctx");
    let sock = b.socket();
    let script = format!(
        "exec 5</dev/null 6</dev/null 7</dev/null\n\
         C='{ctx} --socket {sock}'\n\
         for i in $(seq 15); do\n\
           $C exec --context alice -- /bin/true\n\
           $C exec --context alice -- /nonexistent 2>/dev/null\n\
           $C exec --context closed -- /bin/true 2>/dev/null\n\
           $C exec --context nope -- /bin/true 2>/dev/null\n\
           script -qec \"$C exec -t --context alice -- sh -c 'echo hi; sleep 0.01 & exit 0'\" /dev/null >/dev/null\n\
           $C exec --context alice -- sleep 30 & p=$!; sleep 0.05; kill -9 $p\n\
           $C exec --context alice -- sleep 30 & p=$!; sleep 0.05; kill -TERM $p; wait $p\n\
         done\n\
         wait\n\
         echo done",
        ctx = ctx.display(),
        sock = sock.display()
    );
    let out = run_with(
        as_user(ALICE).args(["bash", "-c", &script]),
        None,
        Duration::from_secs(120),
    );
    assert!(out.ok().ends_with("done\n"), "{}", out.show());
    thread::sleep(Duration::from_secs(2));
    // Held open by the program, so that the script reports it as running.
    let passed = 188;
    let mut req = raw::exec_request("alice", &[b"sleep", b"5"]);
    req.fds = raw::passed_slots(passed);
    let opening = raw::opening(&Request::Exec(req));
    let hex = raw::hex(&opening);
    let child = as_user(ALICE)
        .args(["/usr/bin/python3", "-c", MANY_LAUNCHES])
        .arg(b.socket())
        .args(["1", "0"])
        .arg(format!("{passed}:{hex}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .expect("run the launch");
    let said = String::from_utf8_lossy(&child.stdout);
    assert!(
        said.contains(&format!("1 launches passing {passed} descriptors")),
        "{said}"
    );
}

/// Opens 64 connections to the socket `argv[1]` and keeps them silent, then one more, and
/// prints (hex) everything the broker sends on that one before it closes it.
const PAST_THE_TURNS: &str = r#"
import socket, sys
path, held = sys.argv[1], []
for _ in range(64):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    held.append(s)
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.settimeout(5)
data = b""
try:
    while chunk := s.recv(4096):
        data += chunk
except OSError:
    pass
print(data.hex(), flush=True)
"#;

/// A connection refused at accept is told why before it is closed (a hook told `Busy`
/// connects again only if it reads the reason): a uid allowed nowhere, past its 64
/// connections in their handshake.
#[test]
fn a_connection_refused_at_accept_is_told_why() {
    let b = Broker::start(&standard_config());
    let out = run(as_user(BOB)
        .args(["/usr/bin/python3", "-c", PAST_THE_TURNS])
        .arg(b.socket()));
    let hex = out.ok();
    let bytes: Vec<u8> = (0..hex.trim().len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let frames = raw::split_frames(&bytes);
    let (kind, message) = raw::error_of(&frames).expect("a refusal with its reason");
    assert_eq!(kind, ctx_protocol::ErrorKind::Refused, "{message}");
    assert!(
        message.contains("connections in their handshake"),
        "{message}"
    );
}
