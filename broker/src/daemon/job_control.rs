//! Job control for routed programs. A routed program leads its own process group (and, on
//! a PTY, its own session) while its parent, the broker, lives in another session: to the
//! kernel its group is orphaned, and an orphaned group ignores the default action of
//! `SIGTSTP`, `SIGTTIN` and `SIGTTOU`. A stop the caller asks for (the suspend key typed
//! into the relayed terminal, or a stop signal forwarded to the group) would silently do
//! nothing. So where the program keeps the default action, the broker stops it with
//! `SIGSTOP`, which is never ignored; a program that handles or ignores the signal gets
//! it as sent, as it would locally.

use std::os::fd::{AsRawFd, OwnedFd};

/// The signal to send to `pid`'s group for `signo`: `SIGSTOP` in place of a terminal stop
/// signal the group leader leaves at its default action.
pub fn deliverable(pid: i32, signo: i32) -> i32 {
    let terminal_stop = matches!(signo, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU);
    if terminal_stop && default_action(pid, signo) {
        libc::SIGSTOP
    } else {
        signo
    }
}

/// Where in `input` the terminal's suspend character is, when the line discipline would
/// turn it into a `SIGTSTP` that the foreground group (the routed program's own) would
/// ignore; `None` when the byte may go to the terminal as it is.
pub fn suspend_at(master: &OwnedFd, pid: i32, input: &[u8]) -> Option<usize> {
    // SAFETY: termios is plain data that tcgetattr fills.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and pointer; on a master it reads the slave's modes.
    if unsafe { libc::tcgetattr(master.as_raw_fd(), &mut t) } != 0 || t.c_lflag & libc::ISIG == 0 {
        return None;
    }
    let susp = t.c_cc[libc::VSUSP];
    if susp == 0 {
        // _POSIX_VDISABLE: no suspend key.
        return None;
    }
    let at = input.iter().position(|&b| b == susp)?;
    // SAFETY: TIOCGPGRP on the master reports the slave's foreground group.
    let foreground = unsafe { libc::tcgetpgrp(master.as_raw_fd()) };
    // A shell in the PTY that put a job in the foreground does its own job control.
    (foreground == pid && default_action(pid, libc::SIGTSTP)).then_some(at)
}

/// Whether `pid` neither ignores nor catches `signo`, from `/proc/<pid>/status`.
fn default_action(pid: i32, signo: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    let bit = 1u64 << (signo - 1);
    match (mask("SigIgn:"), mask("SigCgt:")) {
        (Some(ign), Some(cgt)) => (ign | cgt) & bit == 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_dispositions_are_read() {
        let me = std::process::id() as i32;
        // The test process has SIGTTIN at its default action, and std ignores SIGPIPE.
        assert!(default_action(me, libc::SIGTTIN));
        assert!(!default_action(me, libc::SIGPIPE));
        assert_eq!(deliverable(me, libc::SIGTTIN), libc::SIGSTOP);
        assert_eq!(deliverable(me, libc::SIGTERM), libc::SIGTERM);
        assert!(!default_action(i32::MAX, libc::SIGTSTP));
    }
}
