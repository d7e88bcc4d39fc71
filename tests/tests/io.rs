//! The routed process's stdio: pipes pass through byte-exact and fast, `-t` gives it a
//! terminal of its own with the client's window size.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ctx_tests::*;

/// Every byte value, ascending, with no trailing newline.
fn all_bytes() -> Vec<u8> {
    (0..=255u8).collect()
}

#[test]
fn stdin_is_piped_through() {
    let b = Broker::start(&standard_config());
    let out = run_with(
        &mut b.exec_cmd("alice", &["cat"]),
        Some(b"data"),
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.code(), 0, "{}", out.show());
    assert_eq!(out.stdout, b"data");
    assert!(out.stderr.is_empty(), "{}", out.show());
}

#[test]
fn binary_stdin_comes_back_byte_exact() {
    let b = Broker::start(&standard_config());
    let data: Vec<u8> = all_bytes().repeat(1000);
    let out = run_with(
        &mut b.exec_cmd("alice", &["cat"]),
        Some(&data),
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.code(), 0, "{}", out.show());
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "stdout differs from stdin");
    assert!(out.stderr.is_empty(), "{}", out.show());
}

#[test]
fn stdout_and_stderr_stay_separate_and_byte_exact() {
    let b = Broker::start(&standard_config());
    let to_out = all_bytes();
    let mut to_err = all_bytes();
    to_err.reverse();
    let f_out = b.dir().file("out.bin", &to_out, 0o644);
    let f_err = b.dir().file("err.bin", &to_err, 0o644);
    let out = b.exec(
        "alice",
        &[
            "sh",
            "-c",
            r#"cat "$1"; cat "$2" >&2; cat "$1""#,
            "sh",
            f_out.to_str().unwrap(),
            f_err.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code(), 0, "{}", out.show());
    assert_eq!(out.stdout, [to_out.clone(), to_out].concat());
    assert_eq!(out.stderr, to_err);
}

/// Reads `cmd`'s stdout to the end (bounded by 120 s); returns (bytes, all zero, seconds,
/// exit code).
fn drain(cmd: &mut std::process::Command) -> (u64, bool, f64, Option<i32>) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().unwrap();
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        let mut zero = true;
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    zero &= buf[..n].iter().all(|&x| x == 0);
                    total += n as u64;
                }
            }
        }
        let _ = tx.send((total, zero));
    });
    let got = rx.recv_timeout(Duration::from_secs(120));
    let secs = start.elapsed().as_secs_f64();
    let status = wait_deadline(&mut child, Duration::from_secs(10));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (total, zero) = got.expect("output did not end within 120 s");
    (total, zero, secs, status.and_then(|s| s.code()))
}

#[test]
fn one_gigabyte_through_a_pipe() {
    const GIB: u64 = 1 << 30;
    let b = Broker::start(&standard_config());
    let (total, zero, secs, code) =
        drain(&mut b.exec_cmd("alice", &["head", "-c", "1G", "/dev/zero"]));
    assert_eq!(code, Some(0));
    assert_eq!(total, GIB, "byte count");
    assert!(zero, "/dev/zero produced non-zero bytes");
    // The same without ctx, for the ratio (printed, not asserted: a throughput
    // target belongs to the benchmark, not to a timed test).
    let (local, _, local_secs, _) =
        drain(std::process::Command::new("head").args(["-c", "1G", "/dev/zero"]));
    assert_eq!(local, GIB);
    let rate = GIB as f64 / 1e6 / secs;
    let local_rate = GIB as f64 / 1e6 / local_secs;
    eprintln!(
        "1 GiB through ctx exec: {secs:.2} s, {rate:.0} MB/s; locally {local_rate:.0} MB/s \
         ({:.0}% of local)",
        100.0 * rate / local_rate
    );
}

/// Opens a pty of `rows`x`cols`; returns (master, slave).
fn pty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    let ws = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let p = nix::pty::openpty(Some(&ws), None).expect("openpty");
    (p.master, p.slave)
}

fn tty_name(fd: &OwnedFd) -> String {
    nix::unistd::ttyname(fd)
        .expect("ttyname")
        .display()
        .to_string()
}

/// Gives `cmd` the pty `slave` as stdio and controlling terminal (a new session), as a
/// terminal emulator starts its shell.
fn on_pty(cmd: &mut std::process::Command, slave: &OwnedFd) {
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: setsid and ioctl are async-signal-safe; fd 0 is the pty slave here.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `ctx ARGS` with a fresh pty of `rows`x`cols` as its controlling terminal and stdio;
/// returns its exit code and everything it wrote to the terminal.
fn run_on_pty(
    b: &Broker,
    rows: u16,
    cols: u16,
    args: &[&str],
    input: &[u8],
) -> (Option<i32>, String, String) {
    let (master, slave) = pty(rows, cols);
    let our_tty = tty_name(&slave);
    let mut cmd = b.ctx(args);
    on_pty(&mut cmd, &slave);
    let mut child = cmd.spawn().expect("spawn ctx on a pty");
    drop(cmd);
    drop(slave);

    if !input.is_empty() {
        nix::unistd::write(&master, input).expect("write to pty");
    }
    // Read the master until the last slave closes (EIO) in a thread; bounded below.
    let master_fd = master.as_raw_fd();
    // SAFETY: dup gives the reader its own descriptor, closed when the File drops.
    let mut reader = unsafe { std::fs::File::from_raw_fd(libc::dup(master_fd)) };
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(all);
    });
    let status = wait_deadline(&mut child, COMMAND_TIMEOUT);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    drop(master);
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = status.unwrap_or_else(|| panic!("ctx -t did not finish; terminal showed {out:?}"));
    (status.code(), out, our_tty)
}

#[test]
fn exec_t_gives_a_terminal_of_the_clients_size() {
    let b = Broker::start(&standard_config());
    let (code, out, our_tty) = run_on_pty(
        &b,
        37,
        121,
        &[
            "exec",
            "-t",
            "--context",
            "alice",
            "--",
            "sh",
            "-c",
            "tty; stty size",
        ],
        b"",
    );
    assert_eq!(code, Some(0), "terminal showed {out:?}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words.len(),
        3,
        "expected `tty` and `stty size` output, got {out:?}"
    );
    assert!(
        words[0].starts_with("/dev/pts/"),
        "tty printed {:?}, not a pty (whole output {out:?})",
        words[0]
    );
    assert_ne!(
        words[0], our_tty,
        "the routed process got the caller's own terminal"
    );
    assert_eq!(
        &words[1..],
        ["37", "121"],
        "stty size; whole output {out:?}"
    );
}

#[test]
fn exec_t_terminal_belongs_to_the_routed_user_and_is_controlling() {
    let alice = user(ALICE);
    let b = Broker::start(&standard_config());
    // `ps -o tty= -p $$` names the controlling terminal; stat -c %u its owner.
    let (code, out, _) = run_on_pty(
        &b,
        24,
        80,
        &[
            "exec",
            "-t",
            "--context",
            "alice",
            "--",
            "sh",
            "-c",
            r#"t=$(tty); echo "owner=$(stat -c %u "$t") ctty=$(ps -o tty= -p $$)""#,
        ],
        b"",
    );
    assert_eq!(code, Some(0), "terminal showed {out:?}");
    assert!(
        out.contains(&format!("owner={}", alice.uid)),
        "pty not owned by {ALICE}: {out:?}"
    );
    assert!(
        out.contains("ctty=pts/"),
        "no controlling terminal: {out:?}"
    );
}

#[test]
fn exec_t_exit_code_comes_back() {
    let b = Broker::start(&standard_config());
    let (code, out, _) = run_on_pty(
        &b,
        24,
        80,
        &[
            "exec",
            "-t",
            "--context",
            "alice",
            "--",
            "sh",
            "-c",
            "exit 3",
        ],
        b"",
    );
    assert_eq!(code, Some(3), "terminal showed {out:?}");
}

/// A program that writes faster than the relay forwards (its output is gathered into
/// larger frames) and then, after a pause, a last line: every byte arrives, in order, the
/// last line after the rest.
#[test]
fn exec_t_relays_a_fast_writers_output_whole_and_in_order() {
    let b = Broker::start(&standard_config());
    let lines = 300_000;
    let program = format!(
        "import sys, time\n\
         sys.stdout.write(''.join(f'{{i:08d}}\\n' for i in range({lines})))\n\
         sys.stdout.flush()\n\
         time.sleep(0.3)\n\
         print('tail')"
    );
    let (code, out, _) = run_on_pty(
        &b,
        24,
        80,
        &[
            "exec",
            "-t",
            "--context",
            "alice",
            "--",
            "python3",
            "-c",
            &program,
        ],
        b"",
    );
    assert_eq!(code, Some(0));
    let got = out.replace('\r', "");
    let want: String = (0..lines).map(|i| format!("{i:08}\n")).collect::<String>() + "tail\n";
    assert!(
        got == want,
        "{} bytes arrived of {}; first difference at byte {:?}",
        got.len(),
        want.len(),
        got.bytes().zip(want.bytes()).position(|(a, b)| a != b)
    );
}

#[test]
fn exec_t_relays_input() {
    let b = Broker::start(&standard_config());
    let (code, out, _) = run_on_pty(
        &b,
        24,
        80,
        &[
            "exec",
            "-t",
            "--context",
            "alice",
            "--",
            "sh",
            "-c",
            r#"read line; echo "got:$line""#,
        ],
        b"hello-pty\r",
    );
    assert_eq!(code, Some(0), "terminal showed {out:?}");
    assert!(out.contains("got:hello-pty"), "terminal showed {out:?}");
}

#[test]
fn exec_t_follows_window_changes_and_restores_the_terminal() {
    let b = Broker::start(&standard_config());
    let (master, slave) = pty(24, 80);
    let before = nix::sys::termios::tcgetattr(&slave).expect("tcgetattr");
    let mut cmd = b.ctx([
        "exec",
        "-t",
        "--context",
        "alice",
        "--",
        "sh",
        "-c",
        // Prints the size, then waits (bounded) for it to change and prints the new one.
        r#"s0=$(stty size); echo "start $s0"; i=0
           while [ $i -lt 200 ]; do s=$(stty size)
             if [ "$s" != "$s0" ]; then echo "now $s"; exit 0; fi
             sleep 0.05; i=$((i+1)); done; exit 9"#,
    ]);
    on_pty(&mut cmd, &slave);
    let mut child = cmd.spawn().expect("spawn ctx on a pty");
    drop(cmd);

    // SAFETY: dup gives the reader its own descriptor, closed when the File drops.
    let mut reader = unsafe { std::fs::File::from_raw_fd(libc::dup(master.as_raw_fd())) };
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("start 24 80") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Err(_) => panic!("routed shell never printed its size; terminal showed {seen:?}"),
        }
    }
    // Resize the client's terminal: the kernel sends SIGWINCH to ctx, which must resize the
    // routed process's pty.
    let ws = libc::winsize {
        ws_row: 50,
        ws_col: 132,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    assert_eq!(
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
        0
    );

    let status = wait_deadline(&mut child, COMMAND_TIMEOUT);
    let after = nix::sys::termios::tcgetattr(&slave).expect("tcgetattr");
    drop(slave);
    while let Ok(chunk) = rx.recv_timeout(Duration::from_secs(5)) {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(master);
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("ctx -t did not finish; terminal showed {seen:?}")
    });
    assert!(
        seen.contains("now 50 132"),
        "window change not forwarded: {seen:?}"
    );
    assert_eq!(status.code(), Some(0), "terminal showed {seen:?}");
    // ctx put the terminal in raw mode; it must have put it back exactly.
    assert_eq!(after.input_flags, before.input_flags, "iflag not restored");
    assert_eq!(
        after.output_flags, before.output_flags,
        "oflag not restored"
    );
    assert_eq!(after.local_flags, before.local_flags, "lflag not restored");
    assert_eq!(
        after.control_flags, before.control_flags,
        "cflag not restored"
    );
    assert_eq!(
        after.control_chars, before.control_chars,
        "c_cc not restored"
    );
}

#[test]
fn exec_t_failures_are_classified_as_in_pipe_mode() {
    let b = Broker::start(&standard_config());
    let cases: [(&[&str], i32, &str); 3] = [
        (
            &[
                "exec",
                "-t",
                "--context",
                "alice",
                "--",
                "no-such-program-xyz",
            ],
            127,
            "command not found",
        ),
        (
            &["exec", "-t", "--context", "alice", "--", "/etc/passwd"],
            126,
            "permission denied",
        ),
        (
            &[
                "exec",
                "-t",
                "--context",
                "alice",
                "--cwd",
                "/root",
                "--",
                "true",
            ],
            125,
            "/root",
        ),
    ];
    for (args, code, words) in cases {
        let (got, out, _) = run_on_pty(&b, 24, 80, args, b"");
        assert_eq!(got, Some(code), "{args:?}: terminal showed {out:?}");
        assert!(
            out.contains(words),
            "{args:?}: expected {words:?} in {out:?}"
        );
    }
}

/// The state letter and pid of the process whose argv is `sleep ARG`.
fn sleep_state(arg: &str) -> Option<(i32, char)> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.first() != Some(&&b"sleep"[..]) || args.get(1) != Some(&arg.as_bytes()) {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some((pid, stat.rsplit(") ").next()?.chars().next()?))
    })
}

fn wait_sleep_state(arg: &str, want: char) -> i32 {
    poll(Duration::from_secs(10), || {
        sleep_state(arg).and_then(|(pid, s)| (s == want).then_some(pid))
    })
    .unwrap_or_else(|| {
        panic!(
            "sleep {arg} never reached state {want}: {:?}",
            sleep_state(arg)
        )
    })
}

/// `ctx` (the test's child `child`) stops, and so does the routed `sleep ARG` (pid `pid`);
/// SIGCONT to ctx resumes the program; SIGTERM to ctx ends both, ctx by that signal.
fn stopped_then_resumed_then_ended(child: &mut std::process::Child, arg: &str, pid: i32) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let ctx_pid = nix::unistd::Pid::from_raw(child.id() as i32);
    match waitpid(ctx_pid, Some(WaitPidFlag::WUNTRACED)).unwrap() {
        WaitStatus::Stopped(_, _) => {}
        other => panic!("ctx did not stop: {other:?}"),
    }
    assert_eq!(
        wait_sleep_state(arg, 'T'),
        pid,
        "the routed program is stopped"
    );
    signal(child.id(), nix::sys::signal::Signal::SIGCONT);
    assert_eq!(
        wait_sleep_state(arg, 'S'),
        pid,
        "SIGCONT resumed the routed program"
    );
    signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    let status = wait_deadline(child, COMMAND_TIMEOUT).expect("ctx ends");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM)
    );
}

/// The suspend key typed at `ctx exec -t` stops the routed program (which, leading its own
/// session under the broker, would ignore the terminal's SIGTSTP) and ctx itself, as a
/// local job stops; SIGCONT resumes both.
#[test]
fn exec_t_ctrl_z_stops_the_program_and_ctx_and_sigcont_resumes_them() {
    let b = Broker::start(&standard_config());
    let arg = format!(
        "{}.{}",
        5000 + std::process::id() % 1000,
        std::process::id() % 89
    );
    let (master, slave) = pty(24, 80);
    let mut cmd = b.ctx(["exec", "-t", "--context", "alice", "--", "sleep", &arg]);
    on_pty(&mut cmd, &slave);
    let mut child = cmd.spawn().expect("spawn ctx on a pty");
    drop(slave);
    let pid = wait_sleep_state(&arg, 'S');
    // ctx holds its terminal raw: the suspend key arrives as a byte and goes to the broker.
    nix::unistd::write(&master, b"\x1a").unwrap();
    stopped_then_resumed_then_ended(&mut child, &arg, pid);
    assert!(sleep_state(&arg).is_none(), "the routed program is gone");
    drop(master);
}

/// Without a terminal too: a SIGTSTP sent to `ctx exec` stops ctx and the routed program
/// (which, its group orphaned under the broker, would ignore a plain SIGTSTP), and
/// SIGCONT resumes both.
#[test]
fn sigtstp_to_ctx_exec_stops_the_routed_program_in_pipe_mode() {
    let b = Broker::start(&standard_config());
    let arg = format!(
        "{}.{}",
        6000 + std::process::id() % 1000,
        std::process::id() % 83
    );
    let mut child = b
        .exec_cmd("alice", &["sleep", &arg])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = wait_sleep_state(&arg, 'S');
    signal(child.id(), nix::sys::signal::Signal::SIGTSTP);
    stopped_then_resumed_then_ended(&mut child, &arg, pid);
}
