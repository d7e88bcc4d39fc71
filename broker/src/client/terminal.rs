//! The caller's terminal: which descriptors are terminals, its window size and modes (sent
//! so the broker's PTY matches); `ctx_protocol::terminal::Hold` holds it while relaying.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use ctx_protocol::{TermModes, TtyInfo, WinSize};
use nix::sys::termios;

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// What a terminal-less caller gets, as `ssh -tt` and `docker exec -t` assume.
pub const DEFAULT_SIZE: WinSize = WinSize {
    rows: 24,
    cols: 80,
    xpixel: 0,
    ypixel: 0,
};

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// The terminal whose size and modes the PTY copies: one of our standard descriptors, or
/// `/dev/tty` when none of them is a terminal.
pub enum Controlling {
    Std(RawFd),
    DevTty(File),
    None,
}

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl Controlling {
    /// Stdin's terminal, else stdout's, else `/dev/tty`.
    pub fn find() -> Controlling {
        for fd in [0, 1] {
            if is_terminal(fd) {
                return Controlling::Std(fd);
            }
        }
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open("/dev/tty")
        {
            Ok(f) => Controlling::DevTty(f),
            Err(_) => Controlling::None,
        }
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            // SAFETY: 0 and 1 were checked open (they are terminals) and ctx never closes them.
            Controlling::Std(fd) => Some(unsafe { BorrowedFd::borrow_raw(*fd) }),
            Controlling::DevTty(f) => Some(f.as_fd()),
            Controlling::None => None,
        }
    }

    pub fn raw_fd(&self) -> Option<RawFd> {
        self.fd().map(|fd| fd.as_raw_fd())
    }

    pub fn size(&self) -> WinSize {
        self.fd().and_then(window_size).unwrap_or(DEFAULT_SIZE)
    }

    pub fn info(&self) -> TtyInfo {
        TtyInfo {
            size: self.size(),
            termios: self.fd().and_then(term_modes),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// Our controlling terminal, when what is typed there is ours to read: we run as a job of
/// our own (a job-control shell put our process group in the foreground, our parent is
/// not in it), as a command prompting on `/dev/tty` from a pipeline does. A command in its
/// caller's own group gets none: reading every key before the caller could, ctx would
/// take what locally only the command's own reads take. The routed programs' shim decides
/// the same way.
pub fn job_terminal() -> Option<File> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/tty")
        .ok()?;
    // SAFETY: plain queries of process groups and of a descriptor we hold.
    let ours = unsafe {
        libc::getpgid(libc::getppid()) != libc::getpgrp()
            && libc::tcgetpgrp(tty.as_raw_fd()) == libc::getpgrp()
    };
    ours.then_some(tty)
}

pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor number; a closed one yields EBADF.
    unsafe { libc::isatty(fd) == 1 }
}

pub fn window_size(fd: BorrowedFd<'_>) -> Option<WinSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one struct winsize into the valid pointer we pass.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    if rc != 0 || ws.ws_row == 0 || ws.ws_col == 0 {
        return None;
    }
    Some(WinSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
        xpixel: ws.ws_xpixel,
        ypixel: ws.ws_ypixel,
    })
}

/// The terminal's modes as a program sees them (without the `EXTPROC` of another relay
/// that holds it).
pub fn term_modes(fd: BorrowedFd<'_>) -> Option<TermModes> {
    let t: libc::termios = termios::tcgetattr(fd).ok()?.into();
    Some(TermModes::from_termios(&t).logical())
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use nix::pty::openpty;

    #[test]
    fn reads_size_and_modes_of_a_pty() {
        let ws = libc::winsize {
            ws_row: 33,
            ws_col: 101,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(Some(&ws), None).unwrap();
        let size = window_size(pty.slave.as_fd()).unwrap();
        assert_eq!((size.rows, size.cols), (33, 101));
        let modes = term_modes(pty.slave.as_fd()).unwrap();
        assert_eq!(modes.cc[libc::VINTR], 3, "^C is the interrupt key");
        assert!(is_terminal(pty.slave.as_raw_fd()));
    }

    #[test]
    fn pipes_have_no_window_size() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(window_size(r.as_fd()).is_none());
        assert!(!is_terminal(r.as_raw_fd()));
    }
}
