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
