//! Terminals: a caller whose stdio is a terminal (a PTY this test makes, with the caller as
//! its session leader) gets, for each routed launch, a fresh PTY from the broker. Its own
//! terminal descriptor never reaches the routed process, so `TIOCSTI` from there cannot
//! type into the caller's terminal.

mod common;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A caller running on a fresh PTY: the master side, what it has printed so far, and the
/// caller's terminal name.
struct OnPty {
    master: std::fs::File,
    output: Arc<Mutex<Vec<u8>>>,
    child: Child,
    tty_name: String,
}

impl OnPty {
    /// Runs the argv `make_argv` builds from the caller's terminal name.
    fn start(b: &Broker, make_argv: impl Fn(&str) -> Vec<String>, rows: u16, cols: u16) -> OnPty {
        Self::start_as(b, make_argv, rows, cols, true)
    }

    /// The same caller, its launches routed or run locally (to compare the two).
    fn start_as(
        b: &Broker,
        make_argv: impl Fn(&str) -> Vec<String>,
        rows: u16,
        cols: u16,
        routed: bool,
    ) -> OnPty {
        let (mut m, mut s) = (-1, -1);
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two descriptors; the name buffer is not used; the termios
        // pointer is null (defaults) and the winsize is a valid struct.
        let r =
            unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
        assert_eq!(r, 0, "openpty");
        // SAFETY: fresh descriptors owned from here on.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        let tty_name = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let argv = make_argv(&tty_name);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = b.cmd(&argv);
        if !routed {
            cmd.env_remove("LD_PRELOAD").env_remove("CTX_ROUTE");
        }
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()))
            .env("TERM", "xterm");
        // SAFETY: setsid and ioctl are async-signal-safe; the child makes the PTY (its
        // stdin) its controlling terminal, as a terminal emulator's shell has it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(slave);
        let master = std::fs::File::from(master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let out = output.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            // EIO once the last slave descriptor is closed.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        OnPty {
            master,
            output,
            child,
            tty_name,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until the caller's terminal shows `needle`.
    fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "terminal never showed {needle:?}; it shows:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn type_bytes(&mut self, b: &[u8]) {
        self.master.write_all(b).unwrap();
    }

    /// Waits for the caller to exit (bounded) and returns its exit code.
    fn finish(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the reader thread drain what is left.
                std::thread::sleep(Duration::from_millis(100));
                return (st.code(), self.text());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("caller did not exit; terminal shows:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn a_terminal_caller_gets_a_fresh_pty_with_its_size_and_input() {
    let b = start_broker();
    // The routed sh reports its terminal, size and descriptors, then reads a line.
    let routed = "tty; stty size; ls -l /proc/$$/fd; echo READY; read x; echo \"got:$x\"; exit 7";
    let mut p = OnPty::start(
        &b,
        |_| vec!["bash".into(), "-c".into(), format!("sh -c '{routed}'")],
        33,
        111,
    );
    p.wait_for("READY");
    p.type_bytes(b"hello\n");
    let caller_tty = p.tty_name.clone();
    let (code, text) = p.finish();
    eprintln!("caller tty {caller_tty}; terminal:\n{text}");
    assert_eq!(code, Some(7), "{text}");
    let routed_tty = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("/dev/pts/"))
        .unwrap_or_else(|| panic!("no tty line in:\n{text}"))
        .to_string();
    assert_ne!(
        routed_tty, caller_tty,
        "the routed program got the caller's terminal"
    );
    assert!(text.contains("33 111"), "size not carried:\n{text}");
    assert!(text.contains("got:hello"), "input not relayed:\n{text}");
    // None of the routed process's descriptors is the caller's terminal; its stdio is
    // the fresh PTY.
    assert!(!text.contains(&format!("-> {caller_tty}")), "{text}");
    for fd in 0..3 {
        assert!(
            text.contains(&format!(" {fd} -> {routed_tty}")),
            "fd {fd} is not the fresh PTY:\n{text}"
        );
    }
}

/// A child handed a terminal that is not its controlling terminal (CPython's
/// test_readline runs its children on a fresh PTY's slave that way) reads what is typed
/// there locally; routed it does not: the shim relays a terminal's keys only while its job
/// owns the terminal's foreground, and such a terminal has none (`tcgetpgrp`: ENOTTY).
/// Relaying anyway took keys from whatever else reads that terminal (another session's
/// shell, whose terminal it is) for a program that may never read, and could leave the
/// shim blocked in its read after the program had ended (helper-68); passing the terminal
/// itself would hand the context a terminal of the caller's. The README's terminal row
/// says so; this pins both sides and that the terminal's modes are left alone.
#[test]
fn keys_typed_at_a_terminal_that_is_not_the_controlling_one_stay_there() {
    let b = start_broker();
    let py = python().expect("python3");
    let script = r#"
import os, pty, select, subprocess, sys, termios, time
master, slave = pty.openpty()
before = termios.tcgetattr(slave)
child = 'import select, sys; r, _, _ = select.select([sys.stdin], [], [], 3); print("got" if r else "nothing", flush=True)'
proc = subprocess.Popen([sys.executable, "-c", child], stdin=slave, stdout=slave, stderr=slave)
time.sleep(0.5)
os.write(master, b"dummy input\r")
out, start = bytearray(), time.monotonic()
while time.monotonic() - start < 10 and b"got" not in out and b"nothing" not in out:
    r, _, _ = select.select([master], [], [], 0.5)
    if r:
        try:
            out += os.read(master, 4096)
        except OSError:
            break
status = proc.wait(10)
print("child said:", "got" if b"got" in out else "nothing" if b"nothing" in out else bytes(out))
print("status:", status, "modes kept:", termios.tcgetattr(slave) == before)
"#;
    let run = |routed: bool| {
        let mut cmd = b.cmd(&[py, "-c", script]);
        if !routed {
            cmd.env_remove("LD_PRELOAD").env_remove("CTX_ROUTE");
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!(
            "{} -> {:?}\n{text}{}",
            if routed { "routed" } else { "local" },
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    assert_eq!(run(false), "child said: got\nstatus: 0 modes kept: True\n");
    assert_eq!(
        run(true),
        "child said: nothing\nstatus: 0 modes kept: True\n"
    );
}

#[test]
fn tiocsti_from_a_routed_program_cannot_type_into_the_callers_terminal() {
    let Some(py) = python() else {
        eprintln!("no system python3; skipped");
        return;
    };
    let b = start_broker();
    // The routed program pushes a command line into every terminal it can reach: its
    // stdio and /dev/tty (the fresh PTY), and the caller's terminal by name (which its
    // uid cannot open). Then the caller, a shell, reads its own terminal for a second:
    // nothing may be there.
    let inject = r#"
import fcntl, os, sys, termios
def push(fd, what):
    try:
        for c in b"echo INJECTED\n":
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))
        print("pushed into", what)
    except OSError as e:
        print("refused", what, e.errno)
push(0, "stdin")
push(os.open("/dev/tty", os.O_RDWR), "/dev/tty")
try:
    push(os.open(sys.argv[1], os.O_RDWR), "caller")
except OSError as e:
    print("cannot open caller tty", e.errno)
print("INJECTOR-DONE")
"#;
    let caller = |tty: &str| {
        let script = format!(
            "{py} -c '{}' {tty}; if read -t 1 y; then echo \"caller-read:[$y]\"; \
             else echo caller-read-nothing; fi",
            inject.replace('\'', "'\\''")
        );
        vec!["bash".to_string(), "-c".into(), script]
    };
    let p = OnPty::start(&b, caller, 24, 80);
    let caller_tty = p.tty_name.clone();
    let (code, text) = p.finish();
    eprintln!("caller tty {caller_tty}; terminal:\n{text}");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("INJECTOR-DONE"), "{text}");
    assert!(
        text.contains(&format!("cannot open caller tty {}", libc::EACCES)),
        "{text}"
    );
    assert!(text.contains("caller-read-nothing"), "{text}");
    assert!(!text.contains("caller-read:["), "{text}");
}

/// An interactive bash (no start-up files) on a fresh 24x80 terminal, its launches routed
/// or run locally.
fn interactive_bash(b: &Broker, routed: bool) -> OnPty {
    OnPty::start_as(
        b,
        |_| {
            vec![
                "bash".into(),
                "--norc".into(),
                "--noprofile".into(),
                "-i".into(),
            ]
        },
        24,
        80,
        routed,
    )
}

/// The routed program's `/proc/<pid>/stat` state letter, found by a unique argument (the
/// shim, which shows the same command line, is skipped).
fn routed_state(arg: &str) -> Option<(i32, char)> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        // The caller's side (the shim) carries the program's command line too.
        let shim = std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|exe| exe.ends_with("ctx-shim"));
        if !shim && args.first() == Some(&&b"sleep"[..]) && args.get(1) == Some(&arg.as_bytes()) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let state = stat.rsplit(") ").next()?.chars().next()?;
            return Some((pid, state));
        }
    }
    None
}

fn wait_state(arg: &str, want: char) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match routed_state(arg) {
            Some((pid, s)) if s == want => return pid,
            other => assert!(
                Instant::now() < deadline,
                "routed sleep never reached state {want}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ctrl-Z stops a routed program as it would a local one, the caller's job-control shell
/// reports the job stopped, `fg` resumes it and Ctrl-C then ends it.
#[test]
fn ctrl_z_stops_the_routed_program_and_fg_resumes_it() {
    let b = start_broker();
    let arg = format!(
        "{}.{}",
        4000 + std::process::id() % 1000,
        std::process::id() % 97
    );
    let mut p = interactive_bash(&b, true);
    p.type_bytes(b"PS1='PROMPT> '\n");
    p.wait_for("PROMPT> ");
    p.type_bytes(format!("sleep {arg}\n").as_bytes());
    let pid = wait_state(&arg, 'S');
    // The caller's terminal is raw while the shim relays: ^Z travels as a byte.
    p.type_bytes(b"\x1a");
    p.wait_for("Stopped");
    assert_eq!(
        wait_state(&arg, 'T'),
        pid,
        "the routed program itself is stopped"
    );
    p.type_bytes(b"fg\n");
    assert_eq!(wait_state(&arg, 'S'), pid, "fg resumed the routed program");
    std::thread::sleep(Duration::from_millis(200));
    let prompts = p.text().matches("PROMPT> ").count();
    p.type_bytes(b"\x03");
    // Typed only once the shell is back: input before that goes to the routed program.
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.text().matches("PROMPT> ").count() <= prompts {
        assert!(
            Instant::now() < deadline,
            "no prompt after ^C:\n{}",
            p.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    p.type_bytes(b"echo rc=$?\n");
    p.wait_for("rc=130");
    assert!(routed_state(&arg).is_none(), "Ctrl-C ended it");
    p.type_bytes(b"exit\n");
    let (code, text) = p.finish();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("Stopped"), "{text}");
}

/// Pids of the local processes running `sleep ARG` (not the shims, which show the routed
/// program's command line too).
fn sleeping(arg: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let shim = std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|exe| exe.ends_with("ctx-shim"));
        if !shim && cmdline == format!("sleep\0{arg}\0").as_bytes() {
            found.push(pid);
        }
    }
    found
}

/// An interactive shell that loses its terminal passes the hangup on to each job's group:
/// a routed background job ends with the children it started, as a local one does, and
/// leaves nothing running as the context's user (found by the review of the terminal
/// signals: the shim took the shell's hangup for a `kill` of the program alone).
#[test]
fn a_hangup_ends_a_routed_background_job_and_its_children_as_locally() {
    let b = start_broker();
    for routed in [false, true] {
        let base = 5000 + std::process::id() % 1000 + u32::from(routed) * 7;
        let (first, second) = (format!("{base}.1"), format!("{base}.2"));
        let mut p = interactive_bash(&b, routed);
        p.type_bytes(b"PS1='PROMPT> '\n");
        p.wait_for("PROMPT> ");
        p.type_bytes(format!("sh -c 'sleep {first} & sleep {second}' &\n").as_bytes());
        let deadline = Instant::now() + Duration::from_secs(10);
        while sleeping(&first).is_empty() || sleeping(&second).is_empty() {
            assert!(
                Instant::now() < deadline,
                "routed={routed}: the job never ran"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // What the kernel sends the session's leader when its terminal goes away.
        // SAFETY: plain syscall on the shell this test started.
        unsafe { libc::kill(p.child.id() as i32, libc::SIGHUP) };
        let _ = p.finish();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut left = Vec::new();
        while Instant::now() < deadline {
            left = [sleeping(&first), sleeping(&second)].concat();
            if left.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in &left {
            // SAFETY: plain syscall on a process this test's job left.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        assert!(
            left.is_empty(),
            "routed={routed}: still running after the hangup: {left:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// A routed program's terminal behaves as a local one: each scenario runs with the caller's
// launches run locally, then routed, and what the caller's terminal shows is compared.
// ---------------------------------------------------------------------------------------

/// Runs `script` under `bash -c` on a fresh terminal, locally or routed; `drive` types
/// and checks while it runs. Returns the exit code and the terminal's transcript.
fn transcript(
    b: &Broker,
    script: &str,
    routed: bool,
    drive: impl Fn(&mut OnPty),
) -> (Option<i32>, String) {
    let script = script.to_string();
    let mut p = OnPty::start_as(
        b,
        move |_| vec!["bash".into(), "-c".into(), script.clone()],
        24,
        80,
        routed,
    );
    drive(&mut p);
    p.finish()
}

fn same_as_local(b: &Broker, script: &str, drive: impl Fn(&mut OnPty)) -> String {
    let local = transcript(b, script, false, &drive);
    let routed = transcript(b, script, true, &drive);
    eprintln!("local:  {local:?}\nrouted: {routed:?}");
    assert_eq!(routed, local, "{script}: routed differs from local");
    local.1
}

/// The terminal's modes as its master sees them (Linux reads the slave's).
fn modes(p: &OnPty) -> libc::termios {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and pointer.
    assert_eq!(unsafe { libc::tcgetattr(p.master.as_raw_fd(), &mut t) }, 0);
    t
}

#[test]
fn a_controlling_terminal_is_there_when_stdio_are_not_terminals() {
    let b = start_broker();
    // Writing /dev/tty with every stdio redirected: ssh and sudo prompts do this.
    let text = same_as_local(
        &b,
        "sh -c 'echo to-tty >/dev/tty && echo written >&2' </dev/null >/dev/null 2>/dev/null; \
         sleep 0.3; echo rc=$?",
        |_| {},
    );
    assert!(text.contains("to-tty\r\nrc=0"), "{text}");
}

#[test]
fn a_job_reads_its_controlling_terminal_when_stdin_is_a_pipe() {
    let b = start_broker();
    assert_eq!(job_reads_dev_tty(&b, false, ""), Some(0));
    assert_eq!(job_reads_dev_tty(&b, true, ""), Some(0));
}

/// An interactive bash on a fresh terminal runs `true | VIA sh -c 'read x </dev/tty ...'`
/// as a job (routed or local), and what is typed reaches it; the shell's exit code.
fn job_reads_dev_tty(b: &Broker, routed: bool, via: &str) -> Option<i32> {
    let mut p = interactive_bash(b, routed);
    p.type_bytes(b"PS1='P> '\n");
    p.wait_for("P> ");
    p.type_bytes(format!("true | {via} sh -c 'read x </dev/tty; echo got:$x'\n").as_bytes());
    std::thread::sleep(Duration::from_millis(500));
    p.type_bytes(b"typed\n");
    p.wait_for("got:typed");
    p.type_bytes(b"exit\n");
    p.finish().0
}

#[test]
fn end_of_file_typed_at_once_is_end_of_file() {
    let b = start_broker();
    for _ in 0..3 {
        // ^D typed before the program (or its relay) runs, as pexpect's sendeof() does.
        let text = same_as_local(&b, "cat; echo rc=$?", |p| p.type_bytes(b"\x04"));
        assert_eq!(text, "rc=0\r\n");
    }
    // Text and then ^D: the program reads the text without a newline, then end of file.
    same_as_local(&b, "cat; echo rc=$?", |p| {
        std::thread::sleep(Duration::from_millis(300));
        p.type_bytes(b"abc\x04\x04");
    });
}

#[test]
fn echo_turned_off_by_the_caller_after_the_launch_reaches_the_program() {
    let b = start_broker();
    let text = same_as_local(&b, "cat; echo rc=$?", |p| {
        std::thread::sleep(Duration::from_millis(300));
        // pexpect's setecho(False): on the master, after the program started.
        let mut t = modes(p);
        t.c_lflag &= !libc::ECHO;
        // SAFETY: a valid descriptor and termios.
        assert_eq!(
            unsafe { libc::tcsetattr(p.master.as_raw_fd(), libc::TCSANOW, &t) },
            0
        );
        p.type_bytes(b"secret\n");
        p.wait_for("secret");
        p.type_bytes(b"\x04");
    });
    assert_eq!(text.matches("secret").count(), 1, "echoed: {text}");
}

#[test]
fn modes_the_program_sets_show_on_the_callers_terminal() {
    let b = start_broker();
    for routed in [false, true] {
        // getpass and `read -s` turn echo off, and pexpect's waitnoecho() waits for it.
        let (code, _) = transcript(&b, "stty -echo; sleep 1; stty echo", routed, |p| {
            let deadline = Instant::now() + Duration::from_millis(800);
            while modes(p).c_lflag & libc::ECHO != 0 {
                assert!(
                    Instant::now() < deadline,
                    "echo never went off (routed: {routed})"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        assert_eq!(code, Some(0));
    }
}

/// A window size the program sets on its terminal (`stty cols`, `resize`) is the caller's
/// terminal's afterwards, as locally: routed, it was set on the program's PTY only, and
/// the next command saw the old size (found by the eleventh transparency review). Through
/// the interposer and through `ctx exec`.
#[test]
fn a_window_size_the_program_sets_reaches_the_callers_terminal() {
    let b = start_broker();
    let text = same_as_local(&b, "stty size; stty cols 100 rows 30; stty size", |_| {});
    assert!(text.contains("24 80\r\n30 100\r\n"), "{text}");
    let ctx = bin_dir().join("ctx");
    let (code, text) = transcript(
        &b,
        &format!(
            "{} --socket \"$CTX_SOCKET\" exec --context user -- stty cols 90 rows 20; stty size",
            ctx.display()
        ),
        false,
        |_| {},
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("20 90"), "{text}");
}

/// A caller that gives the terminal's foreground to its running job with `tcsetpgrp`
/// alone (no `SIGCONT`, as a Python caller may): the job's read gets the line typed then,
/// as locally. Routed, the shim took the terminal only at its start, at `SIGCONT` or when
/// something else woke it, so the read waited for ever (found by the eleventh
/// transparency review).
#[test]
fn the_foreground_given_without_a_signal_reaches_a_running_routed_job() {
    let b = start_broker();
    // The caller (Python itself, at the terminal) runs locally; its child, the job, is
    // routed.
    let caller = r#"
import os, signal, subprocess, time
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
p = subprocess.Popen(["/bin/sh", "-c", "sleep 1; read l; echo got $l"], process_group=0)
time.sleep(0.3)
os.tcsetpgrp(0, p.pid)
try:
    rc = p.wait(timeout=5)
except subprocess.TimeoutExpired:
    rc = "timeout"
    p.kill()
    p.wait()
os.tcsetpgrp(0, os.getpgrp())
print("rc", rc)
"#;
    let mut seen = Vec::new();
    for routed in [false, true] {
        let mut p = OnPty::start_as(
            &b,
            |_| vec!["/usr/bin/python3".into(), "-c".into(), caller.into()],
            24,
            80,
            routed,
        );
        std::thread::sleep(Duration::from_millis(1500));
        p.type_bytes(b"one\n");
        seen.push(p.finish());
    }
    eprintln!("local:  {:?}\nrouted: {:?}", seen[0], seen[1]);
    assert!(
        seen[0].1.contains("got one") && seen[0].1.contains("rc 0"),
        "{seen:?}"
    );
    assert_eq!(seen[1], seen[0], "routed differs from local");
}

/// Runs the Python `script` with no terminal, locally and with its launches routed; both
/// must print `want`.
fn prints_locally_and_routed(b: &Broker, script: &str, want: &str) {
    for routed in [false, true] {
        let mut cmd = b.cmd(&["/usr/bin/python3", "-c", script]);
        if !routed {
            cmd.env_remove("LD_PRELOAD").env_remove("CTX_ROUTE");
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.trim(), want, "routed {routed}: {out:?}");
    }
}

/// A child whose stdin is a terminal that is not the caller's controlling one (git's
/// `test-terminal.perl`): when the caller hangs that terminal up, the routed child hears
/// the end of its input instead of waiting for keys that can never come (locally its read
/// fails with EIO; routed it reads end of file).
#[test]
fn a_terminal_given_as_stdin_that_hangs_up_ends_the_routed_programs_input() {
    let b = start_broker();
    let script = r#"
import os, pty, subprocess, time
m, s = pty.openpty()
p = subprocess.Popen(["/bin/cat"], stdin=s, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os.close(s)
time.sleep(0.5)
os.close(m)
try:
    p.wait(timeout=5)
    print("ended")
except subprocess.TimeoutExpired:
    print("still waiting")
    p.kill()
    p.wait()
"#;
    prints_locally_and_routed(&b, script, "ended");
}

/// A routed program in a group of its own session (orphaned: no parent in another group
/// of its session) gets a stop signal sent to the pid its caller holds: the kernel drops a
/// terminal stop there, as it does locally, and the program runs to its end (the shim once
/// stopped itself for good by SIGSTOP: helper-84).
#[test]
fn a_terminal_stop_sent_to_an_orphaned_routed_program_is_dropped_as_locally() {
    let b = start_broker();
    let script = r#"
import os, signal, subprocess, time
p = subprocess.Popen(["/bin/sleep", "1"], start_new_session=True)
time.sleep(0.3)
os.kill(p.pid, signal.SIGTSTP)
try:
    print("rc", p.wait(timeout=6))
except subprocess.TimeoutExpired:
    print("stuck", open(f"/proc/{p.pid}/stat").read().split()[2])
    p.kill()
    p.wait()
"#;
    prints_locally_and_routed(&b, script, "rc 0");
}

/// The suspend key typed at a terminal whose foreground group is orphaned (the program
/// leads its own session on it, as under `ssh -t host cmd` or `script -c`): the kernel
/// drops that stop locally, and the program runs to its end; routed too (the shim stopped
/// itself and the program for good: helper-85).
#[test]
fn the_suspend_key_at_an_orphaned_routed_job_is_dropped_as_locally() {
    let b = start_broker();
    let script = r#"
import os, pty, select, time
pid, fd = pty.fork()
if pid == 0:
    os.execv("/bin/sh", ["/bin/sh", "-c", "sleep 1; echo done-sleeping"])
time.sleep(0.5)
os.write(fd, b"\x1a")
out = b""
end = time.time() + 8
result = "stuck"
while time.time() < end:
    r, _, _ = select.select([fd], [], [], 0.1)
    if r:
        try:
            b = os.read(fd, 4096)
        except OSError:
            b = b""
        out += b
    p, st = os.waitpid(pid, os.WNOHANG)
    if p:
        result = "ended %d" % os.waitstatus_to_exitcode(st)
        break
if result == "stuck":
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(result, b"done-sleeping" in out)
"#;
    prints_locally_and_routed(&b, script, "ended 0 True");
}

#[test]
fn output_is_processed_once_and_local_output_keeps_its_newlines() {
    let b = start_broker();
    // The routed program's "\n" and "\r\n", and a local writer's "\n" while a routed
    // program holds the terminal: each as a local run shows it.
    let text = same_as_local(
        &b,
        "printf 'a\\nb\\r\\n'; (sleep 0.3; /bin/echo local-line) & cat; wait; echo end",
        |p| {
            p.wait_for("local-line");
            p.type_bytes(b"\x04");
        },
    );
    assert!(text.starts_with("a\r\nb\r\r\nlocal-line\r\n"), "{text}");
}

/// `ctx exec` with no stdio a terminal, run from one: the command still has a controlling
/// terminal, as a local child shares its caller's (ssh and sudo prompts).
#[test]
fn ctx_exec_gives_a_controlling_terminal_when_stdio_are_not_terminals() {
    let b = start_broker();
    let ctx = bin_dir().join("ctx");
    let script = |run: &str| {
        format!(
            "{run} sh -c 'echo to-tty >/dev/tty && echo written >&2' </dev/null >/dev/null 2>/dev/null; \
             echo rc=$?"
        )
    };
    let local = transcript(&b, &script(""), false, |_| {});
    let via_ctx = transcript(
        &b,
        &script(&format!(
            "{} --socket \"$CTX_SOCKET\" exec --context user --",
            ctx.display()
        )),
        false,
        |_| {},
    );
    eprintln!("local:  {local:?}\nctx exec: {via_ctx:?}");
    assert!(local.1.contains("to-tty\r\nrc=0"), "{local:?}");
    assert_eq!(via_ctx, local);
}

/// A pipeline's job at an interactive shell prompting on `/dev/tty` with its stdin a pipe
/// reads what is typed, through `ctx exec` as locally.
#[test]
fn ctx_exec_in_a_job_reads_its_controlling_terminal_when_stdin_is_a_pipe() {
    let b = start_broker();
    assert_eq!(job_reads_dev_tty(&b, false, ""), Some(0));
    let via_ctx = format!(
        "{} --socket \"$CTX_SOCKET\" exec --context user --",
        bin_dir().join("ctx").display()
    );
    assert_eq!(job_reads_dev_tty(&b, false, &via_ctx), Some(0));
}

#[test]
fn background_jobs_of_a_terminal_command_live_on_after_it_exits() {
    let b = start_broker();
    let ctx_exec = format!(
        "{} --socket \"$CTX_SOCKET\" exec --context user --",
        bin_dir().join("ctx").display()
    );
    background_jobs_live_on(&b, &[(false, ""), (true, ""), (false, &ctx_exec)]);
}

#[test]
fn background_jobs_of_a_terminal_command_live_on_in_a_pid_namespace() {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: a PID namespace needs a root broker");
        return;
    }
    let b = start_broker_with("isolation = { pid = true }");
    background_jobs_live_on(&b, &[(true, "")]);
}

/// `sh -c 'JOB &'` from a terminal: the job outlives `sh`, locally, routed and through
/// `ctx exec` (`runs`: routed, and a command to run `sh` through). The routed `sh` does
/// not lead the PTY's session (`ctx-session` does), so its exit hangs nothing up.
fn background_jobs_live_on(b: &Broker, runs: &[(bool, &str)]) {
    let jobs = [
        "(sleep 0.5; echo alive >F)",
        "nohup sh -c 'sleep 0.5; echo alive >F' >/dev/null 2>&1",
        "(trap 'echo hup >F; exit' HUP; sleep 0.5; echo alive >F)",
    ];
    for (i, job) in jobs.into_iter().enumerate() {
        // Somewhere the context's user may write; a name of this call's own, as the tests
        // calling this run side by side and each removes its file before each run.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = format!("/tmp/ctx-bg-job-{}-{call}-{i}", std::process::id());
        let job = job.replace('F', &file);
        for &(routed, via) in runs {
            let _ = std::fs::remove_file(&file);
            let script = format!(
                "{via} sh -c '{} &'; sleep 1.5; cat {file} 2>/dev/null || echo gone",
                job.replace('\'', r"'\''")
            );
            let (code, text) = transcript(b, &script, routed, |_| {});
            eprintln!("routed={routed} via={via:?}: {text:?}");
            assert_eq!(code, Some(0));
            assert!(
                text.contains("alive"),
                "routed={routed} via={via:?} {job}: the job did not live on: {text:?}"
            );
        }
        let _ = std::fs::remove_file(&file);
    }
}

/// A terminal launch's program no longer leads its session (the stand-in does), so it may
/// leave the process group the broker signals by joining another group of its session
/// (here the stand-in's own, whose id is the session's). The context's timeout (and `ctx
/// kill`, a vanished caller, the broker's shutdown) signal that group alone: the program
/// must still end at its timeout. Before the stand-in, a session leader could not move.
#[test]
fn a_terminal_program_that_leaves_its_group_still_ends_at_its_timeout() {
    let b = start_broker_with("timeout = \"1s\"");
    // setpgid(0, getsid(0)), then sleep; the marker shows the move worked.
    let script = r#"/usr/bin/python3 -c 'import os, time; sid = os.getsid(0); os.setpgid(0, sid); print("moved to", sid, flush=True); time.sleep(6); print("OUT" "LIVED", flush=True)'; echo "status $?""#;
    let started = Instant::now();
    let (code, text) = transcript(&b, script, true, |_| {});
    let took = started.elapsed();
    eprintln!("took {took:?}: {text:?}");
    assert_eq!(code, Some(0));
    assert!(text.contains("moved to"), "setpgid did not run: {text:?}");
    assert!(
        !text.contains("OUTLIVED"),
        "the program ran past its 1 s timeout ({took:?}): {text:?}"
    );
}

/// `sh -c '(sleep 0.5; echo late) &'` from a terminal: the caller has `sh`'s status at
/// once, and the job's line shows on the caller's terminal half a second later; locally,
/// routed and through `ctx exec -t` alike (`late_output` says how each goes).
#[test]
fn a_background_jobs_output_reaches_the_terminal_after_the_status() {
    let b = start_broker();
    let ctx_exec = format!(
        "{} --socket \"$CTX_SOCKET\" exec -t --context user --",
        bin_dir().join("ctx").display()
    );
    for (routed, via) in [(false, ""), (true, ""), (false, ctx_exec.as_str())] {
        let text = late_output(&b, routed, via, "late");
        let status = text.find("status=0").unwrap_or_else(|| {
            panic!("routed={routed} via={via:?}: no status: {text:?}");
        });
        let late = text.find("late\r\n").unwrap_or_else(|| {
            panic!("routed={routed} via={via:?}: the job's output never came: {text:?}");
        });
        assert!(
            status < late,
            "routed={routed} via={via:?}: the status came after the job's output: {text:?}"
        );
    }
}

/// Runs `VIA sh -c '(sleep 0.5; echo MARK) &'` under bash on a fresh terminal, prints the
/// status with the time since the start, waits past the job, and returns the transcript.
fn late_output(b: &Broker, routed: bool, via: &str, mark: &str) -> String {
    let script = format!(
        "s=$(date +%s%N); {via} sh -c '(sleep 0.5; echo {mark}) &'; \
         echo status=$? after=$((($(date +%s%N) - s) / 1000000))ms; sleep 1.5"
    );
    let (code, text) = transcript(b, &script, routed, |_| {});
    eprintln!("routed={routed} via={via:?}: {text:?}");
    assert_eq!(code, Some(0), "{text:?}");
    text
}

/// Processes that hold the terminal `tty` (a `/dev/pts/N` path) open.
fn holders_of(tty: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|f| std::fs::read_link(f.path()).is_ok_and(|l| l.to_str() == Some(tty)))
        {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_string()));
        }
    }
    out
}

/// The holders of `tty` once one of them is the relay left for a job's output (which
/// names itself right after its fork), or as they are after a while without one.
fn relay_holding(tty: &str) -> Vec<(i32, String)> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let holders = holders_of(tty);
        if holders.iter().any(|(_, comm)| comm == "ctx-linger") || Instant::now() > deadline {
            return holders;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The broker's children, with their state (`Z`: a zombie) and name.
fn children_of(pid: u32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
        if rest.get(1).and_then(|s| s.parse::<u32>().ok()) == Some(pid) {
            out.push((
                p,
                format!("{} {}", rest[0], &stat[stat.find('(').unwrap()..=close]),
            ));
        }
    }
    out
}

/// Once the job that kept a routed terminal open has ended, nothing of it is left: no
/// process holds the caller's terminal (the relay left behind for the job's output is
/// gone), the broker holds as many descriptors as before, and has no child left (the
/// session's stand-in ended at the hangup), zombie or not.
#[test]
fn nothing_is_left_once_the_background_job_ends() {
    let b = start_broker();
    let ctx_exec = format!(
        "{} --socket \"$CTX_SOCKET\" exec -t --context user --",
        bin_dir().join("ctx").display()
    );
    // One launch first: whatever the broker opens once for good is open from then on.
    late_output(&b, true, "", "warm");
    let settle = |what: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !what() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    settle(&|| children_of(b.pid()).is_empty());
    let baseline = ctx_tests::raw::fd_count(b.pid());
    for (routed, via) in [(true, ""), (false, ctx_exec.as_str())] {
        let script =
            format!("{via} sh -c '(sleep 0.5; echo late) &'; echo status=$?; sleep 1.5; echo done");
        let p = OnPty::start_as(
            &b,
            move |_| vec!["bash".into(), "-c".into(), script.clone()],
            24,
            80,
            routed,
        );
        p.wait_for("status=0");
        // While the job runs, a relay holds the caller's terminal for its output, and the
        // broker holds the PTY.
        let tty = p.tty_name.clone();
        let holders = relay_holding(&tty);
        eprintln!("routed={routed} via={via:?}: while the job runs: {holders:?}");
        let relay = holders
            .iter()
            .find(|(_, comm)| comm == "ctx-linger")
            .unwrap_or_else(|| {
                panic!("routed={routed} via={via:?}: no relay for the job's output: {holders:?}")
            })
            .0;
        // Named so that neither `ps` nor `pgrep -f` takes it for the program.
        let cmdline = std::fs::read(format!("/proc/{relay}/cmdline")).unwrap_or_default();
        let words: Vec<&[u8]> = cmdline
            .split(|&b| b == 0)
            .filter(|w| !w.is_empty())
            .collect();
        assert_eq!(
            words,
            [b"ctx-linger"],
            "{}",
            String::from_utf8_lossy(&cmdline)
        );
        // The terminal's number stays ours while we look for its holders: freed, it could
        // name another test's terminal.
        let keep = p.master.try_clone().unwrap();
        let (code, text) = p.finish();
        assert_eq!(code, Some(0));
        assert!(text.contains("late\r\ndone"), "{text:?}");
        settle(&|| holders_of(&tty).is_empty());
        assert_eq!(
            holders_of(&tty),
            vec![],
            "routed={routed} via={via:?}: the caller's terminal is still held"
        );
        settle(&|| children_of(b.pid()).is_empty());
        assert_eq!(
            children_of(b.pid()),
            vec![],
            "routed={routed} via={via:?}: the broker has children (or zombies) left"
        );
        let fds = ctx_tests::raw::settle_fds(b.pid(), baseline, Duration::from_secs(5));
        assert!(
            fds <= baseline,
            "routed={routed} via={via:?}: the broker holds {fds} descriptors, {baseline} before"
        );
        drop(keep);
    }
}

/// The relay left behind for a job's output is killed while the job still runs: the
/// broker hangs the terminal up as it did before there was a relay (the job's later
/// writes fail), and nothing of the launch is left in the broker.
#[test]
fn killing_the_relay_hangs_the_terminal_up() {
    let b = start_broker();
    // Somewhere the context's user may write.
    let file = format!("/tmp/ctx-relay-killed-{}", std::process::id());
    let _ = std::fs::remove_file(&file);
    let script = format!(
        "sh -c '(sleep 1; echo late || echo failed >{file}; echo ended >>{file}) &'; \
         echo status=$?; sleep 2.5; cat {file}"
    );
    let p = OnPty::start_as(
        &b,
        move |_| vec!["bash".into(), "-c".into(), script.clone()],
        24,
        80,
        true,
    );
    p.wait_for("status=0");
    let holders = relay_holding(&p.tty_name);
    let relay = holders
        .iter()
        .find(|(_, comm)| comm == "ctx-linger")
        .unwrap_or_else(|| panic!("no relay for the job's output: {holders:?}"))
        .0;
    // SAFETY: a process of this test's.
    unsafe { libc::kill(relay, libc::SIGKILL) };
    let (code, text) = p.finish();
    eprintln!("{text:?}");
    assert_eq!(code, Some(0));
    assert!(!text.contains("late"), "{text:?}");
    assert!(text.contains("failed\r\nended"), "{text:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children_of(b.pid()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&file);
    assert_eq!(children_of(b.pid()), vec![], "the stand-in is left");
}

/// A caller whose launches all leave a job holding their terminal: at most
/// `LINGERING_PER_UID` (64) terminals stay open for such jobs at once; the launches past
/// that still run and give their status, their terminals hung up when they end. The
/// caller is a uid-0 context's shell (root outside every context is not counted), whose
/// launches go to `user`; their relays hold that shell's terminal.
#[test]
fn terminals_kept_open_for_jobs_are_bounded_per_uid() {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: a root context needs a root broker");
        return;
    }
    let b = start_broker_config(
        r#"[contexts.user]
user = "nobody"
cwd = "inherit"
allow = { uids = [0], contexts = ["rootctx"] }

[contexts.rootctx]
user = "root"
cwd = "inherit"
allow = { uids = [0] }
route_children_to = "user"
"#,
        65534,
    );
    let ctx = bin_dir().join("ctx").display().to_string();
    let socket = b.socket.display().to_string();
    let script = "for i in $(seq 70); do sh -c '(sleep 4) &' || echo failed; done; \
                  echo launched; sleep 5; echo done";
    let p = OnPty::start_as(
        &b,
        move |_| {
            vec![
                ctx.clone(),
                "--socket".into(),
                socket.clone(),
                "exec".into(),
                "-t".into(),
                "--context".into(),
                "rootctx".into(),
                "--".into(),
                "bash".into(),
                "-c".into(),
                script.into(),
            ]
        },
        24,
        80,
        false,
    );
    p.wait_for("launched");
    // The shell's terminal, as the broker's child holds it (a routed `tty` would name
    // its own launch's).
    let shell = children_of(b.pid())
        .into_iter()
        .find(|(_, state_and_name)| state_and_name.ends_with("(bash)"))
        .expect("the context's shell")
        .0;
    let shell_tty = std::fs::read_link(format!("/proc/{shell}/fd/0"))
        .unwrap()
        .display()
        .to_string();
    let relays = holders_of(&shell_tty)
        .into_iter()
        .filter(|(_, comm)| comm == "ctx-linger")
        .count();
    let (code, text) = p.finish();
    eprintln!("{relays} relays on {shell_tty}: {text:?}");
    assert_eq!(code, Some(0));
    assert!(!text.contains("failed"), "{text:?}");
    assert!(
        (60..=64).contains(&relays),
        "{relays} terminals kept open for jobs"
    );
}

/// `ctx exec -t` writing into a pipe: the job's later output goes into the pipe too, and
/// the reader sees its end when the job ends, as locally, where the job holds the pipe.
#[test]
fn ctx_exec_into_a_pipe_passes_a_jobs_later_output_on() {
    let b = start_broker();
    let script =
        |via: &str| format!("{via} sh -c '(sleep 0.5; echo late) &' | tr a-z A-Z; echo status=$?");
    let local = transcript(&b, &script(""), false, |_| {});
    let via_ctx = transcript(
        &b,
        &script(&format!(
            "{} --socket \"$CTX_SOCKET\" exec -t --context user --",
            bin_dir().join("ctx").display()
        )),
        false,
        |_| {},
    );
    eprintln!("local:  {local:?}\nctx exec: {via_ctx:?}");
    assert_eq!(local, (Some(0), "LATE\r\nstatus=0\r\n".to_string()));
    assert_eq!(via_ctx.0, Some(0));
    // The PTY's ONLCR, which a pipe does not take out.
    assert_eq!(via_ctx.1.replace("\r\r\n", "\r\n"), local.1);
}

/// The broker's shutdown does not wait for a job that keeps a routed terminal open: it
/// hangs the terminal up, and the relay left for the job's output ends with it.
#[test]
fn shutdown_ends_a_terminal_kept_open_for_a_job() {
    let mut b = start_broker();
    let script = "sh -c '(sleep 3; echo late) &'; echo status=$?; sleep 4; echo done";
    let p = OnPty::start_as(
        &b,
        move |_| vec!["bash".into(), "-c".into(), script.into()],
        24,
        80,
        true,
    );
    p.wait_for("status=0");
    let holders = relay_holding(&p.tty_name);
    assert!(
        holders.iter().any(|(_, comm)| comm == "ctx-linger"),
        "no relay for the job's output: {holders:?}"
    );
    let asked = Instant::now();
    let stopped = b.terminate(Duration::from_secs(10));
    let took = asked.elapsed();
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    assert!(took < Duration::from_secs(2), "the shutdown took {took:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while holders_of(&p.tty_name)
        .iter()
        .any(|(_, comm)| comm == "ctx-linger")
    {
        assert!(Instant::now() < deadline, "the relay outlived the broker");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, text) = p.finish();
    assert_eq!(code, Some(0));
    assert!(!text.contains("late"), "{text:?}");
    assert!(text.contains("done"), "{text:?}");
}

/// The same in a `pid = true` context, whose processes the broker sees from outside their
/// PID namespace.
#[test]
fn a_background_jobs_output_reaches_the_terminal_in_a_pid_namespace() {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: a PID namespace needs a root broker");
        return;
    }
    let b = start_broker_with("isolation = { pid = true }");
    let text = late_output(&b, true, "", "late");
    let status = text.find("status=0").expect("a status");
    let late = text.find("late\r\n").expect("the job's output");
    assert!(status < late, "{text:?}");
}

// ---------------------------------------------------------------------------------------
// Attacks on the terminal kept open for jobs (review of `linger`)
// ---------------------------------------------------------------------------------------

/// A caller that is a child subreaper (systemd's user manager, tini, a CI harness) and
/// runs terminal programs that leave no job behind: nothing is ever reparented to it. A
/// relay left behind (`ctx-linger`, detached by a double fork) would be, as the job it
/// serves would be locally; with no job there must be none. Returns how many relays (by
/// name) were reparented to the caller over `n` launches of `argv` through `via`.
fn relays_left_by_launches_without_jobs(b: &Broker, n: usize, via: &str) -> (usize, String) {
    let py = python().expect("python3");
    let script = b.dir.join(format!("subreaper-{}.py", std::process::id()));
    std::fs::write(
        &script,
        format!(
            r#"
import ctypes, os, subprocess, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
via = {via:?}.split()
left = []
def reap():
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None:
            return
        try:
            comm = open("/proc/%d/comm" % info.si_pid).read().strip()
        except OSError:
            comm = "?"
        os.waitpid(info.si_pid, 0)
        left.append(comm)
for i in range({n}):
    subprocess.run(via + ["/bin/true"])
    reap()
time.sleep(0.5)
reap()
print("LEFT", len(left), left, flush=True)
"#
        ),
    )
    .unwrap();
    let argv = vec![py.to_string(), script.to_string_lossy().into_owned()];
    let p = OnPty::start_as(b, move |_| argv.clone(), 24, 80, true);
    p.wait_for("LEFT");
    let (code, text) = p.finish();
    let _ = std::fs::remove_file(&script);
    assert_eq!(code, Some(0), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("LEFT"))
        .unwrap()
        .to_string();
    let count = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    (count, line)
}

/// FINDING (low): the broker takes any holder of the PTY's slave, when the program has
/// ended, for a job, but the session's stand-in holds it too at two moments: until its
/// `execveat` of `ctx-shim --session-leader` closes the descriptors it marked close-on-exec
/// (a program as short as `/bin/true` can end before that), and when it opens `/dev/tty`
/// to take the foreground the moment the program ends. Either way (about 1 launch in 10
/// here; still 1 in 50 with the `/dev/tty` open taken out) a program that left no job gets
/// `Lingering`: its client forks twice and leaves a `ctx-linger` behind for nothing (until
/// the stand-in's close makes the master read EIO), a lingering slot of the caller's uid
/// is taken meanwhile, and a caller that is a child subreaper reaps children it never had.
/// Nothing must be left behind by a launch that left no job.
#[test]
fn a_terminal_launch_that_leaves_no_job_leaves_no_relay_behind() {
    if python().is_none() {
        eprintln!("SKIP: no python3");
        return;
    }
    let b = start_broker();
    let ctx_exec = format!(
        "{} --socket {} exec -t --context user --",
        bin_dir().join("ctx").display(),
        b.socket.display()
    );
    let runs: Vec<(String, usize, String)> = ["", ctx_exec.as_str()]
        .into_iter()
        .map(|via| {
            let (left, line) = relays_left_by_launches_without_jobs(&b, 150, via);
            eprintln!("via={via:?}: {line}");
            (via.to_string(), left, line)
        })
        .collect();
    for (via, left, line) in runs {
        assert_eq!(
            left, 0,
            "via={via:?}: 150 routed `/bin/true` on a terminal left {left} processes behind: {line}"
        );
    }
}

/// What differs, by necessity: `ctx exec -t` writing into a pipe (`x=$(ctx exec -t ...)`,
/// `| tee`) keeps that pipe open for any process that still holds the PTY, whatever it
/// holds it for, since a terminal is one device for input and output alike: here a job
/// that only reads the terminal (`</dev/tty`, its output elsewhere). Locally that job
/// holds the caller's terminal, not the pipe, and `$(...)` returns at once. The README's
/// "Terminals" section says so; this test keeps the two behaviours as described.
#[test]
fn ctx_exec_into_a_pipe_is_held_open_by_a_job_that_only_reads_the_terminal() {
    let b = start_broker();
    let script = |via: &str| {
        format!(
            "s=$(date +%s%N); x=$({via} sh -c 'sleep 3 </dev/tty >/dev/null 2>&1 &'); \
             echo got=[$x] took=$((($(date +%s%N) - s) / 1000000))ms"
        )
    };
    let took = |text: &str| -> u64 {
        let at = text.find("took=").expect("a time") + 5;
        text[at..].split("ms").next().unwrap().parse().unwrap()
    };
    let (code, local) = transcript(&b, &script(""), false, |_| {});
    assert_eq!(code, Some(0), "{local:?}");
    let (code, via_ctx) = transcript(
        &b,
        &script(&format!(
            "{} --socket \"$CTX_SOCKET\" exec -t --context user --",
            bin_dir().join("ctx").display()
        )),
        false,
        |_| {},
    );
    eprintln!("local: {local:?}\nctx exec -t: {via_ctx:?}");
    assert_eq!(code, Some(0), "{via_ctx:?}");
    assert!(took(&local) < 1000, "locally: {local:?}");
    assert!(
        took(&via_ctx) >= 2500,
        "`$(ctx exec -t ...)` returned before the job that holds its terminal ended: \
         {via_ctx:?} (the README says it waits)"
    );
}

/// FINDING (low, containment): `timeout` in contexts.toml kills the launch's process group
/// after that long ("kill the process group after this long", README). A job that a
/// non-interactive `sh -c 'JOB &'` leaves is in that very group; when the program ends
/// before the timeout, the broker now keeps the launch's terminal open for that job, and
/// relays it, for as long as the job lives: the timeout no longer applies to anything,
/// so a launch of a 1 s context goes on writing to the caller's terminal seconds later.
/// The broker still holds the launch while it lingers; it should still end the group at
/// the deadline (or not keep the terminal open past it).
#[test]
fn a_job_in_the_programs_group_does_not_outlive_the_timeout_while_its_terminal_is_kept() {
    let b = start_broker_with("timeout = \"1s\"");
    // The caller waits with a builtin: its own `sleep` would be routed, and timed out.
    let script = "sh -c '(sleep 2.5; echo OUTLIVED) &'; echo status=$?; read -t 3.5 x; echo done";
    let (code, text) = transcript(&b, script, true, |_| {});
    eprintln!("{text:?}");
    assert_eq!(code, Some(0), "{text:?}");
    assert!(
        text.contains("status=0") && text.contains("done"),
        "{text:?}"
    );
    assert!(
        !text.contains("OUTLIVED"),
        "a job of the launch's own process group wrote to the caller's terminal 1.5 s past \
         the context's 1 s timeout: {text:?}"
    );
}

/// FINDING (low): root outside every context "is never counted nor refused: whatever the
/// other uids do, memory and descriptors stay for it" (admission.rs), and a process of a
/// uid-0 context is "root the broker never trusted", counted apart from it for
/// connections. The lingering bound is not: `Admissions::linger(uid)` counts by uid alone,
/// so the launches of a uid-0 context that leave a job holding each terminal take all 64
/// of root's slots, and the operator's own terminal launches then have their jobs' output
/// cut off 100 ms after the program ends.
#[test]
fn a_uid0_context_cannot_take_roots_own_terminals_kept_open_for_jobs() {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: a root context needs a root broker");
        return;
    }
    let b = start_broker_config(
        r#"[contexts.user]
user = "nobody"
cwd = "inherit"
allow = { uids = [0], contexts = ["rootctx"] }

[contexts.rootctx]
user = "root"
cwd = "inherit"
allow = { uids = [0] }
route_children_to = "user"
"#,
        65534,
    );
    // Inside the uid-0 context, on a terminal: 64 launches, each leaving a job that holds
    // its terminal for a while.
    let ctx = bin_dir().join("ctx").display().to_string();
    let socket = b.socket.display().to_string();
    let hog = OnPty::start_as(
        &b,
        move |_| {
            vec![
                ctx.clone(),
                "--socket".into(),
                socket.clone(),
                "exec".into(),
                "-t".into(),
                "--context".into(),
                "rootctx".into(),
                "--".into(),
                "bash".into(),
                "-c".into(),
                "for i in $(seq 64); do sh -c '(sleep 8) &'; done; echo launched; sleep 9".into(),
            ]
        },
        24,
        80,
        false,
    );
    hog.wait_for("launched");
    // Root itself, outside every context: its job's later line must reach its terminal.
    let text = late_output(&b, true, "", "late");
    drop(hog);
    assert!(
        text.contains("late\r\n"),
        "root's own terminal was hung up for its job: the uid-0 context took root's \
         lingering slots: {text:?}"
    );
}

/// FINDING (medium): `ctx sh` serialises the commands of a session with a lock held for
/// the whole of `launch()`, and `launch()` now lasts as long as the launch's terminal is
/// kept open for jobs. A command that starts something in the background on a terminal
/// (`ctx sh 'server &'`, `ctx sh -t 'make watch &'`) therefore blocks every later command
/// of that session (`ctx sh 'pwd'`, from this caller or any other sharing the session)
/// until the job lets go of the terminal, for ever for a server. Before `Lingering` the
/// lock went at the program's end (after 100 ms of drain). The lock guards the session's
/// state, which the job does not touch: it must not be held while the terminal lingers.
#[test]
fn a_ctx_sh_job_holding_the_terminal_does_not_block_the_sessions_next_command() {
    let b = start_broker();
    let ctx = format!(
        "{} --socket \"$CTX_SOCKET\"",
        bin_dir().join("ctx").display()
    );
    let script = format!(
        "s=$(date +%s%N); {ctx} sh --context user 'sleep 4 &'; echo first=$?; \
         {ctx} sh --context user 'echo second'; \
         echo took=$((($(date +%s%N) - s) / 1000000))ms"
    );
    let (code, text) = transcript(&b, &script, false, |_| {});
    eprintln!("{text:?}");
    assert_eq!(code, Some(0), "{text:?}");
    assert!(
        text.contains("first=0") && text.contains("second"),
        "{text:?}"
    );
    let at = text.find("took=").expect("a time") + 5;
    let took: u64 = text[at..].split("ms").next().unwrap().parse().unwrap();
    assert!(
        took < 2000,
        "the session's second command waited {took} ms for the first one's background job: \
         {text:?}"
    );
}

/// The interrupt key at a routed terminal program reaches the caller's whole foreground
/// group, as a local terminal's would: a non-interactive shell whose command dies of it
/// stops there too (and one whose command catches it goes on, in both cases), through
/// the shim and through `ctx exec -t`. The caller's terminal relays keys raw, so the PTY
/// alone would signal only the routed program.
#[test]
fn the_interrupt_key_reaches_the_callers_shell_as_locally() {
    let b = start_broker();
    let ctx = format!(
        "{} --socket \"$CTX_SOCKET\" exec -t --context user --",
        bin_dir().join("ctx").display()
    );
    let catching = "python3 -c 'import time\ntry:\n    time.sleep(5)\nexcept KeyboardInterrupt:\n    print(\"caught\")'";
    let interrupt = |p: &mut OnPty| {
        p.wait_for("ready");
        std::thread::sleep(Duration::from_millis(700));
        p.type_bytes(b"\x03");
    };
    for (what, script) in [
        ("dies", "echo ready; sleep 5; echo AFTER".to_string()),
        ("catches", format!("echo ready; {catching}; echo AFTER")),
    ] {
        let (lcode, local) = transcript(&b, &script, false, interrupt);
        let (rcode, routed) = transcript(&b, &script, true, interrupt);
        let via_ctx = script.replacen("; ", &format!("; {ctx} "), 1);
        let (ccode, ctx_t) = transcript(&b, &via_ctx, false, interrupt);
        eprintln!("{what}: local {lcode:?} {local:?}\nrouted {rcode:?} {routed:?}\nctx exec -t {ccode:?} {ctx_t:?}");
        let after = what == "catches";
        assert_eq!(local.contains("AFTER"), after, "local, {what}: {local:?}");
        assert_eq!(
            (rcode, routed.contains("AFTER")),
            (lcode, after),
            "routed, {what}: {routed:?}"
        );
        assert_eq!(
            (ccode, ctx_t.contains("AFTER")),
            (lcode, after),
            "ctx exec -t, {what}: {ctx_t:?}"
        );
    }
}
