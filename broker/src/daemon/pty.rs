//! PTY allocation for routed processes whose caller sits at a terminal. The caller's own
//! terminal never reaches the routed process (TIOCSTI injection, CVE-2017-5226): it gets a
//! fresh PTY whose master the broker relays over the connection.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use ctx_protocol::{TermModes, WinSize};

pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Opens a PTY pair, both ends close-on-exec (no other child may inherit them), applies the
/// caller's window size and modes, and hands the slave to `owner` (uid, tty group gid) as
/// `login` does, so programs that reopen their tty by name (ssh, sudo, `tty`) can.
pub fn open(
    size: WinSize,
    modes: Option<&TermModes>,
    owner: Option<(u32, u32)>,
) -> io::Result<Pty> {
    // SAFETY: plain syscall; the path is a valid C string.
    let m = unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if m < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: m is a fresh descriptor owned here.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    let mut unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK takes a pointer to an int.
    if unsafe { libc::ioctl(m, libc::TIOCSPTLCK, &mut unlock) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER opens the peer with the given flags and returns a new descriptor.
    let s = unsafe {
        libc::ioctl(
            m,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: s is a fresh descriptor owned here.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    if let Some(modes) = modes {
        apply_modes(slave.as_raw_fd(), modes)?;
    }
    resize(&master, size)?;
    if let Some((uid, gid)) = owner {
        // SAFETY: plain syscalls on a descriptor we own.
        unsafe {
            if libc::fchown(s, uid, gid) < 0 || libc::fchmod(s, 0o620) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    set_nonblocking(&master)?;
    Ok(Pty { master, slave })
}

pub fn resize(master: &OwnedFd, size: WinSize) -> io::Result<()> {
    if size.rows == 0 || size.cols == 0 {
        return Ok(());
    }
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: size.xpixel,
        ws_ypixel: size.ypixel,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn apply_modes(fd: i32, modes: &TermModes) -> io::Result<()> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is a terminal we own.
    if unsafe { libc::tcgetattr(fd, &mut t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // The caller's terminal may be relaying another routed program (EXTPROC): the PTY
    // processes its own input.
    modes.logical().write_to(&mut t);
    // SAFETY: as above.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The PTY's modes, read through the master (`TCGETS` on a master reads the slave's).
pub fn modes(master: &OwnedFd) -> Option<TermModes> {
    // SAFETY: termios is plain data; tcgetattr fills it or fails.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer.
    (unsafe { libc::tcgetattr(master.as_raw_fd(), &mut t) } == 0)
        .then(|| TermModes::from_termios(&t))
}

/// The PTY's window size now.
pub fn size(master: &OwnedFd) -> Option<WinSize> {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it or fails.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a pointer to one winsize.
    (unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0).then_some(
        WinSize {
            rows: ws.ws_row,
            cols: ws.ws_col,
            xpixel: ws.ws_xpixel,
            ypixel: ws.ws_ypixel,
        },
    )
}

/// Whether no process holds the PTY's slave open any more (the master polls as hung up).
pub fn slave_closed(master: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: master.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a zero timeout does not block.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & libc::POLLHUP != 0
}

/// Gives the PTY these modes at once (the caller changed its terminal's).
pub fn set_modes(master: &OwnedFd, modes: &TermModes) -> io::Result<()> {
    apply_modes(master.as_raw_fd(), modes)
}

/// The terminal's end-of-file character (`^D` unless changed).
pub fn eof_char(master: &OwnedFd) -> u8 {
    // SAFETY: termios is plain data; tcgetattr fills it or fails.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer.
    if unsafe { libc::tcgetattr(master.as_raw_fd(), &mut t) } == 0 {
        t.c_cc[libc::VEOF]
    } else {
        4
    }
}

pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain fcntl calls on a valid descriptor.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The gid of the `tty` group (owner group of PTY slaves), if the system has one.
pub fn tty_gid() -> Option<u32> {
    nix::unistd::Group::from_name("tty")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}
