//! The broker's own session. A routed process without a terminal of the caller's stays in
//! the broker's session (it leads only a process group of its own), so whatever terminal
//! the broker was started on would be that process's controlling terminal too: its
//! `/dev/tty`, where it could `TIOCSTI` keystrokes into the operator's shell, take the
//! foreground and read what is typed, or type the interrupt key at the broker. So before
//! anything else the broker leaves any controlling terminal it has.

use std::io;

/// What [`leave_controlling_terminal`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// A new session of its own, which has no terminal (started as a member of another
    /// process's group: `ctx-broker &` from a script).
    NewSession,
    /// It leads its group or session already and gave up the terminal it had (a shell's
    /// job, a container's PID 1 on `docker run -t`).
    Terminal,
    /// It leads its group or session already and had no terminal (a systemd service).
    NothingToLeave,
}

/// Leaves any controlling terminal: a new session when this process may start one, else
/// `TIOCNOTTY` on the terminal it has. Call it while the process has one thread and before
/// [`super::signals::protect_process`] blocks SIGHUP.
pub fn leave_controlling_terminal() -> io::Result<Left> {
    // SAFETY: setsid takes no arguments and changes only this process's session.
    if unsafe { libc::setsid() } >= 0 {
        return Ok(Left::NewSession);
    }
    // EPERM: this process leads its group (or session) already.
    // SAFETY: a NUL-terminated path; O_NOCTTY, so the open itself can acquire nothing.
    let tty = unsafe {
        libc::open(
            c"/dev/tty".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if tty < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            // No controlling terminal.
            Some(libc::ENXIO) => Ok(Left::NothingToLeave),
            _ => Err(e),
        };
    }
    // A session leader that gives up its terminal hangs up the terminal's foreground
    // group, which may be its own: a signal that arrives while ignored (and not blocked)
    // is dropped, so both are ignored for the call and put back after it.
    let hup = ignore_for_now(libc::SIGHUP);
    let cont = ignore_for_now(libc::SIGCONT);
    // SAFETY: TIOCNOTTY takes no argument; `tty` is our own descriptor.
    let r = unsafe { libc::ioctl(tty, libc::TIOCNOTTY) };
    let e = io::Error::last_os_error();
    for (sig, old) in [(libc::SIGHUP, hup), (libc::SIGCONT, cont)] {
        // SAFETY: puts back the action `ignore_for_now` read, as the kernel gave it.
        unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
    }
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(tty) };
    if r < 0 {
        return Err(e);
    }
    Ok(Left::Terminal)
}

/// Ignores `sig`; gives back its action before.
fn ignore_for_now(sig: libc::c_int) -> libc::sigaction {
    // SAFETY: sigaction is plain data, filled by the kernel.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above; SIG_IGN needs no handler code.
    unsafe {
        let mut ign: libc::sigaction = std::mem::zeroed();
        ign.sa_sigaction = libc::SIG_IGN;
        libc::sigemptyset(&mut ign.sa_mask);
        libc::sigaction(sig, &ign, &mut old);
    }
    old
}
