//! Terminals: a routed process cannot type into the caller's terminal.

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use ctx_tests::*;

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

// ---------------------------------------------------------------------------------------
// Terminal: the one the broker was started on reaches no routed process
// ---------------------------------------------------------------------------------------

/// A broker started by `script(1)` on a PTY of its own, the way an operator starts one in
/// a terminal; stopped (and its `script` with it) on drop.
struct BrokerOnTerminal {
    dir: TempDir,
    script: std::process::Child,
}

impl BrokerOnTerminal {
    /// `how` is the shell line that starts the broker (`BROKER` in it is its command line)
    /// and writes its pid to `pid`.
    fn start(how: &str) -> BrokerOnTerminal {
        let dir = TempDir::new();
        let config = dir.file("contexts.toml", standard_config().as_bytes(), 0o644);
        let d = dir.path().display();
        let broker = format!(
            "{} --config {} --socket {d}/s.sock --state-dir {d}/state --audit-log {d}/audit.jsonl 2>{d}/broker.log",
            bin("ctx-broker").display(),
            config.display()
        );
        let line = how
            .replace("BROKER", &broker)
            .replace("PIDFILE", &format!("{d}/pid"));
        let script = std::process::Command::new("script")
            .args(["-qfec", &format!("bash -c '{line}'"), "/dev/null"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("script(1) (bsdutils)");
        let b = BrokerOnTerminal { dir, script };
        let up = poll(Duration::from_secs(10), || {
            let st = b
                .ctx(["status"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()?;
            st.success().then_some(())
        });
        assert!(
            up.is_some(),
            "broker on a terminal did not start: {}",
            b.log()
        );
        b
    }

    fn ctx<const N: usize>(&self, args: [&str; N]) -> std::process::Command {
        let mut c = std::process::Command::new(bin("ctx"));
        c.arg("--socket")
            .arg(self.dir.path().join("s.sock"))
            .args(args);
        c
    }

    fn pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.path().join("pid"))
            .expect("the broker's pid file")
            .trim()
            .parse()
            .expect("a pid")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for BrokerOnTerminal {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("pid")) {
            if let Ok(pid) = pid.trim().parse::<u32>() {
                signal(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
        if wait_deadline(&mut self.script, Duration::from_secs(20)).is_none() {
            let _ = self.script.kill();
            let _ = self.script.wait();
        }
    }
}

/// Field 7 of `/proc/PID/stat`: the controlling terminal's device number, 0 for none.
fn controlling_terminal(pid: i32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    after_comm.split(' ').nth(4).expect("tty_nr").to_string()
}

/// The routed program, launched by a caller without a terminal (an agent in the
/// background, a CI job), must not find the broker's terminal as its own: through
/// `/dev/tty` it could type into the operator's shell (`TIOCSTI`), take the foreground and
/// read what is typed, or send the interrupt key to the broker. However the broker was
/// started on it: in a script's background (`BROKER &`: a new session), as a job of an
/// interactive shell (its group's leader: gives the terminal up), or as the session's
/// leader itself (a container's PID 1 on `docker run -t`: gives it up, and is not hung up
/// by doing so).
#[test]
fn the_terminal_the_broker_was_started_on_reaches_no_routed_process() {
    require_root();
    for how in [
        "BROKER & echo $! > PIDFILE; wait",
        "set -m; BROKER & echo $! > PIDFILE; wait",
        "echo $$ > PIDFILE; exec BROKER",
    ] {
        let b = BrokerOnTerminal::start(how);
        let pid = b.pid();
        assert_eq!(
            controlling_terminal(pid),
            "0",
            "`{how}`: the broker kept its terminal: {}",
            b.log()
        );
        let probe = "if (exec 3<>/dev/tty) 2>/dev/null; then echo opened; else echo none; fi; \
                     ps -o tty= -p $$";
        let mut exec = b.ctx(["exec", "--context", "alice", "--", "sh", "-c", probe]);
        exec.stdin(Stdio::null()).current_dir("/");
        // SAFETY: setsid is async-signal-safe: the caller has no terminal of its own.
        unsafe {
            use std::os::unix::process::CommandExt;
            exec.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = run(&mut exec);
        let stdout = out.ok();
        let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
        assert_eq!(
            lines,
            ["none", "?"],
            "`{how}`: the routed program has the broker's terminal: {}",
            b.log()
        );
        assert!(
            b.ctx(["status"])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success(),
            "`{how}`: the broker did not survive leaving its terminal: {}",
            b.log()
        );
    }
}

/// Clock ticks of CPU (user and system) `pid` has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_comm.split(' ').collect();
    // utime and stime: fields 14 and 15, the 12th and 13th after the command name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Found by running bash's own test suite routed (helper-59): a routed program whose
/// stdio are no terminal gets the PTY as its `/dev/tty` alone; when nothing held the PTY
/// for a moment its master reported a hangup, which the reactor keeps for good, and once
/// a process opened `/dev/tty` again the relay read EAGAIN at a full CPU for as long as it
/// stayed open (two such launches froze a 2-CPU broker). It now waits as before: a
/// 2-second launch costs the broker a few ticks, where it cost 200.
#[test]
fn a_program_that_opens_its_terminal_again_does_not_make_the_broker_spin() {
    let b = Broker::start(
        r#"[contexts.root0]
user = "root"
cwd = "/"
allow = { uids = [0] }
"#,
    );
    let before = cpu_ticks(b.pid());
    // The caller has a terminal (script's); the routed bash has none on its stdio.
    let line = format!(
        "{} --socket {} run --route-to root0 -- sh -c \
         'bash -c \"exec 3</dev/tty; sleep 2\" </dev/null >/dev/null 2>&1'",
        bin("ctx").display(),
        b.socket().display()
    );
    let status = std::process::Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/tmp")
        .status()
        .expect("script(1)");
    assert!(status.success(), "{status}");
    let used = cpu_ticks(b.pid()) - before;
    assert!(
        used < 50,
        "the broker used {used} ticks of CPU over a 2-second launch\n{}",
        b.stderr()
    );
}
