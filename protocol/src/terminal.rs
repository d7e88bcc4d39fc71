//! One terminal, two line disciplines: how the caller's terminal and the broker's PTY share
//! a single set of modes while a routed program runs on the PTY.
//!
//! Locally a program and its caller share one terminal, so a mode either of them sets is
//! seen by both. Routed, the program's modes live on the broker's PTY, which does all of
//! the input processing (echo, line editing, the interrupt and end-of-file keys); the
//! caller's terminal shows the same modes but has `EXTPROC` set while it relays, which
//! makes its line discipline pass typed bytes through untouched without changing what
//! `tcgetattr` reports there (`stty`, pexpect's `getecho`, `getpass`). Changes on either
//! side are carried to the other ([`crate::Request::Modes`], [`crate::Reply::Modes`]) and
//! merged: only the fields that changed on one side are applied to the other.
//!
//! Output is processed once as well: the PTY turns `\n` into `\r\n` (`ONLCR`); when the
//! caller's terminal will do the same, the client takes the `\r` out again
//! ([`undo_onlcr`], [`Output`]), so that the caller's terminal, whose `OPOST` other local writers
//! need, produces exactly what a local run would.

use std::os::fd::RawFd;

use crate::TermModes;

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// `EXTPROC`: input processing is done elsewhere; the line discipline passes bytes on.
pub const EXTPROC: u32 = libc::EXTPROC;

/// Output flags the broker can undo exactly. Any other output processing (`OCRNL`,
/// `ONLRET`, `OLCUC`, tab expansion, fill characters) cannot be told apart from what the
/// program wrote, so the caller's terminal then relays with `OPOST` off instead.
const UNDOABLE_OUTPUT: u32 = libc::OPOST | libc::ONLCR;

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// What a terminal in canonical mode had ready when the relay took it: a line (or the
/// text before an end-of-file key), or the end-of-file key itself.
pub enum Typed<'a> {
    Bytes(&'a [u8]),
    /// The end-of-file key: the broker writes the PTY's own `VEOF`, which the program
    /// reads as end of file (or as the end of the text before it), as it would locally.
    End,
}

/// The caller's terminal while a relay holds it in the foreground: it shows the program's
/// modes (with `EXTPROC` when it relays input). Dropping it leaves the program's modes
/// without `EXTPROC`, as a local program leaves its terminal.
pub struct Hold {
    fd: i32,
    input: bool,
    /// The program's modes, as far as this side knows.
    logical: TermModes,
    /// What this side last put on the terminal.
    set: TermModes,
}

/// Writes a PTY's output to the caller's terminal, processed once.
pub struct Output {
    /// The PTY's modes, as the last [`crate::Reply::Modes`] (or the launch) gave them.
    pub pty: Option<TermModes>,
}

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl Output {
    /// Writes `bytes` to `fd` with `write` (which writes all it is given or fails); the
    /// PTY's `ONLCR` is taken out where the terminal `fd` puts it back.
    pub fn write(&self, fd: i32, bytes: &[u8], mut write: impl FnMut(&[u8]) -> bool) -> bool {
        let redone = |m: &TermModes| m.oflag & libc::OPOST != 0 && m.oflag & libc::ONLCR != 0;
        let undo = self.pty.is_some_and(|m| m.output_redone())
            && get(fd).is_some_and(|t| redone(&TermModes::from_termios(&t)));
        if !undo {
            return write(bytes);
        }
        let mut buf = [0u8; 8192];
        for chunk in bytes.chunks(buf.len()) {
            // A `\r\n` split between two chunks keeps its `\r`: the caller's terminal
            // shows `\r\r\n`, which looks the same.
            buf[..chunk.len()].copy_from_slice(chunk);
            let n = undo_onlcr(&mut buf, chunk.len());
            if !write(&buf[..n]) {
                return false;
            }
        }
        true
    }
}

impl Hold {
    /// Takes the terminal `fd` for a relay (`input`: it also reads what is typed there).
    /// Lines and end-of-file keys the terminal's canonical mode already holds (typed
    /// before the relay started) go to `typed` first: once the terminal passes bytes on
    /// untouched, an end-of-file key queued in canonical mode would read as a NUL byte.
    /// The caller's modes are then [`Hold::modes`], for the broker.
    pub fn take(fd: i32, input: bool, mut typed: impl FnMut(Typed<'_>)) -> Option<Hold> {
        let mut t = get(fd)?;
        let caller = TermModes::from_termios(&t).logical();
        if input && caller.canonical() {
            // From here an end-of-file key is an ordinary byte, so none can be queued as
            // a marker between the last read below and EXTPROC.
            let mut no_eof = t;
            no_eof.c_cc[libc::VEOF] = 0;
            set(fd, &no_eof, libc::TCSANOW);
            let mut buf = [0u8; 4096];
            while readable(fd) {
                // SAFETY: reads into a stack buffer; a canonical line is at most 4095 bytes.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    break;
                }
                let n = n as usize;
                if n > 0 {
                    typed(Typed::Bytes(&buf[..n]));
                }
                if n == 0 || !caller.ends_line(buf[n - 1]) {
                    typed(Typed::End);
                }
            }
        }
        let relayed = caller.while_relayed(input);
        relayed.write_to(&mut t);
        set(fd, &t, libc::TCSANOW);
        Some(Hold {
            fd,
            input,
            logical: caller,
            set: relayed,
        })
    }

    /// The program's modes as this side knows them (the caller's, right after `take`).
    pub fn modes(&self) -> TermModes {
        self.logical
    }

    /// Whether someone changed the terminal's modes since this side set them (the caller:
    /// pexpect's `setecho`, `stty` run locally). Returns the program's modes with those
    /// changes, to send to the broker; the terminal keeps relaying.
    pub fn caller_changed(&mut self) -> Option<TermModes> {
        let t = get(self.fd)?;
        let now = TermModes::from_termios(&t);
        if now == self.set {
            return None;
        }
        self.logical = self.logical.merged(&self.set, &now);
        self.put(t);
        Some(self.logical)
    }

    /// The program changed its modes: the terminal shows them too.
    pub fn program_set(&mut self, modes: TermModes) {
        self.logical = modes.logical();
        if let Some(t) = get(self.fd) {
            self.put(t);
        }
    }

    fn put(&mut self, mut t: libc::termios) {
        let want = self.logical.while_relayed(self.input);
        if TermModes::from_termios(&t) != want {
            want.write_to(&mut t);
            set(self.fd, &t, libc::TCSANOW);
        }
        self.set = want;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = self.caller_changed();
        if let Some(mut t) = get(self.fd) {
            self.logical.write_to(&mut t);
            set(self.fd, &t, libc::TCSADRAIN);
        }
    }
}

impl TermModes {
    pub fn from_termios(t: &libc::termios) -> TermModes {
        let mut cc = [0u8; 32];
        for (d, s) in cc.iter_mut().zip(t.c_cc.iter()) {
            *d = *s;
        }
        TermModes {
            iflag: t.c_iflag,
            oflag: t.c_oflag,
            cflag: t.c_cflag,
            lflag: t.c_lflag,
            cc,
        }
    }

    /// Writes these modes into `t`, keeping what they do not carry (line discipline,
    /// speeds).
    pub fn write_to(&self, t: &mut libc::termios) {
        t.c_iflag = self.iflag;
        t.c_oflag = self.oflag;
        t.c_cflag = self.cflag;
        t.c_lflag = self.lflag;
        for (d, s) in t.c_cc.iter_mut().zip(self.cc.iter()) {
            *d = *s;
        }
    }

    /// The signal that typing `typed` raises at a terminal with these modes: its interrupt
    /// or quit key with `ISIG` on (the last one typed wins). Locally that signal reaches
    /// the whole foreground group of the caller's terminal, the caller's shell with it;
    /// routed, only the PTY's group gets it, so the client raises it at the caller's.
    pub fn signal_typed(&self, typed: &[u8]) -> Option<i32> {
        if self.lflag & libc::ISIG == 0 {
            return None;
        }
        let key = |i: usize| Some(self.cc[i]).filter(|&c| c != libc::_POSIX_VDISABLE);
        let (intr, quit) = (key(libc::VINTR), key(libc::VQUIT));
        typed.iter().rev().find_map(|&b| {
            if Some(b) == intr {
                Some(libc::SIGINT)
            } else if Some(b) == quit {
                Some(libc::SIGQUIT)
            } else {
                None
            }
        })
    }

    /// The modes a program sees: without the relay's `EXTPROC`.
    pub fn logical(mut self) -> TermModes {
        self.lflag &= !EXTPROC;
        self
    }

    /// `self` with the fields that differ between `from` and `to` taken from `to`: what
    /// one side changed, applied to the other side's current modes.
    pub fn merged(&self, from: &TermModes, to: &TermModes) -> TermModes {
        let pick = |cur: u32, a: u32, b: u32| (cur & !(a ^ b)) | (b & (a ^ b));
        let mut m = TermModes {
            iflag: pick(self.iflag, from.iflag, to.iflag),
            oflag: pick(self.oflag, from.oflag, to.oflag),
            cflag: pick(self.cflag, from.cflag, to.cflag),
            lflag: pick(self.lflag, from.lflag, to.lflag),
            cc: self.cc,
        };
        for i in 0..m.cc.len() {
            if from.cc[i] != to.cc[i] {
                m.cc[i] = to.cc[i];
            }
        }
        m.logical()
    }

    /// What the caller's terminal holds while it relays to a program with these modes:
    /// the same modes, plus `EXTPROC` when it relays input (its line discipline then
    /// passes keys on as typed, one read each, and the PTY processes them once), and
    /// `OPOST` off when the PTY's output processing cannot be undone.
    pub fn while_relayed(&self, input: bool) -> TermModes {
        let mut t = self.logical();
        if input {
            t.lflag |= EXTPROC;
            // A read returns as soon as one byte is there, whatever the program asked for.
            t.cc[libc::VMIN] = 1;
            t.cc[libc::VTIME] = 0;
        }
        if !self.output_undoable() {
            t.oflag &= !libc::OPOST;
        }
        t
    }

    /// Whether the broker takes the PTY's `ONLCR` out of the output it relays (the
    /// caller's terminal puts it back, for this program's output and everyone else's).
    pub fn output_redone(&self) -> bool {
        self.oflag & libc::OPOST != 0 && self.oflag & libc::ONLCR != 0 && self.output_undoable()
    }

    fn output_undoable(&self) -> bool {
        self.oflag & libc::OPOST == 0 || self.oflag & !UNDOABLE_OUTPUT & (output_processing()) == 0
    }

    /// Whether `b` ends a line in canonical mode (newline, `VEOL`, `VEOL2`).
    pub fn ends_line(&self, b: u8) -> bool {
        b == b'\n' || (b != 0 && (b == self.cc[libc::VEOL] || b == self.cc[libc::VEOL2]))
    }

    /// Canonical mode.
    pub fn canonical(&self) -> bool {
        self.lflag & libc::ICANON != 0
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

fn get(fd: i32) -> Option<libc::termios> {
    // SAFETY: termios is plain data; tcgetattr fills it or fails.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer; a descriptor that is no terminal fails with ENOTTY.
    (unsafe { libc::tcgetattr(fd, &mut t) } == 0).then_some(t)
}

fn set(fd: i32, t: &libc::termios, when: i32) {
    // SAFETY: a valid termios read from this terminal and edited.
    unsafe { libc::tcsetattr(fd, when, t) };
}

/// Whether a read of `fd` would return at once (a complete line or an end-of-file key in
/// canonical mode).
fn readable(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut p, 1, 0) == 1 && p.revents & libc::POLLIN != 0 }
}

/// The output flags that change bytes (delay styles with `OFILL` clear change nothing).
fn output_processing() -> u32 {
    libc::OLCUC
        | libc::OCRNL
        | libc::ONOCR
        | libc::ONLRET
        | libc::OFILL
        | libc::TABDLY
        | libc::NLDLY
        | libc::CRDLY
        | libc::BSDLY
        | libc::VTDLY
        | libc::FFDLY
}

/// Takes out the `\r` the PTY's `ONLCR` put before each `\n` of `buf[..len]`, in place;
/// returns the new length. `ONLCR` writes `\r\n` as one piece, so a `\n` that is not
/// preceded by `\r` in the same buffer was not turned into one (left as is).
pub fn undo_onlcr(buf: &mut [u8], len: usize) -> usize {
    let mut w = 0;
    let mut r = 0;
    while r < len {
        let b = buf[r];
        if b == b'\r' && r + 1 < len && buf[r + 1] == b'\n' {
            r += 1;
            continue;
        }
        buf[w] = b;
        w += 1;
        r += 1;
    }
    w
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// Raises `signo` at the foreground group of the caller's terminal `fd`, as its line
/// discipline would have for the key typed there, had the relay not taken it raw.
pub fn raise_at_foreground(fd: RawFd, signo: i32) {
    // SAFETY: plain queries and a signal to a process group.
    unsafe {
        let pgrp = libc::tcgetpgrp(fd);
        if pgrp > 0 {
            libc::kill(-pgrp, signo);
        }
    }
}

/// Gives the caller's terminal `fd` the window size the routed program set on its PTY
/// (`Reply::Size`), as the program's `TIOCSWINSZ` would have locally; the kernel then
/// sends the terminal's foreground group `SIGWINCH`, and the relay's own resize that
/// follows finds the PTY at that size already. Allocates nothing.
pub fn set_window_size(fd: RawFd, size: crate::WinSize) {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: size.xpixel,
        ws_ypixel: size.ypixel,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// Writes all of `data` to `fd` (a terminal or a pipe), waiting out `EAGAIN` on a
/// descriptor someone set non-blocking; `false` on any other error. Allocates nothing.
pub fn write_all(fd: RawFd, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        // SAFETY: a valid readable slice.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            match std::io::Error::last_os_error().raw_os_error().unwrap_or(0) {
                libc::EINTR => continue,
                libc::EAGAIN => {
                    // A terminal someone set non-blocking: wait until it drains.
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut p, 1, -1) };
                    continue;
                }
                _ => return false,
            }
        }
        data = &data[n as usize..];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modes(lflag: u32, oflag: u32) -> TermModes {
        TermModes {
            iflag: 0,
            oflag,
            cflag: 0,
            lflag,
            cc: [0; 32],
        }
    }

    #[test]
    fn the_interrupt_and_quit_keys_signal_only_with_isig() {
        let mut m = modes(libc::ISIG | libc::ICANON, 0);
        m.cc[libc::VINTR] = 0x03;
        m.cc[libc::VQUIT] = 0x1c;
        assert_eq!(m.signal_typed(b"ab\x03"), Some(libc::SIGINT));
        assert_eq!(m.signal_typed(b"\x03x\x1c"), Some(libc::SIGQUIT));
        assert_eq!(m.signal_typed(b"plain text"), None);
        // A disabled key (NUL) is no key: a NUL typed raises nothing.
        m.cc[libc::VQUIT] = libc::_POSIX_VDISABLE;
        assert_eq!(m.signal_typed(b"\x00"), None);
        // Raw mode (vim, a REPL): the byte is data.
        m.lflag &= !libc::ISIG;
        assert_eq!(m.signal_typed(b"\x03"), None);
    }

    #[test]
    fn undo_takes_out_only_the_inserted_cr() {
        // The program wrote "a\nb\r\nc\r": the PTY made it "a\r\nb\r\r\nc\r".
        let mut buf = *b"a\r\nb\r\r\nc\r";
        let n = undo_onlcr(&mut buf, 9);
        assert_eq!(&buf[..n], b"a\nb\r\nc\r");
    }

    #[test]
    fn a_change_on_one_side_is_applied_alone() {
        let base = modes(libc::ICANON | libc::ECHO, libc::OPOST | libc::ONLCR);
        // The program went raw; the caller meanwhile turned echo off.
        let program = modes(0, libc::OPOST | libc::ONLCR);
        let caller = modes(libc::ICANON, libc::OPOST | libc::ONLCR);
        let m = program.merged(&base, &caller);
        assert_eq!(m.lflag, 0, "raw stays raw, echo goes off");
        let mut with_cc = caller;
        with_cc.cc[libc::VINTR] = 7;
        assert_eq!(program.merged(&caller, &with_cc).cc[libc::VINTR], 7);
    }

    #[test]
    fn relaying_keeps_the_modes_visible_and_adds_extproc() {
        let m = modes(libc::ICANON | libc::ECHO, libc::OPOST | libc::ONLCR);
        let r = m.while_relayed(true);
        assert_eq!(r.lflag, libc::ICANON | libc::ECHO | EXTPROC);
        assert_eq!(r.oflag, m.oflag);
        assert!(m.output_redone());
        assert_eq!(r.logical(), {
            let mut l = m;
            l.cc[libc::VMIN] = 1;
            l
        });
        let tabs = modes(libc::ICANON, libc::OPOST | libc::ONLCR | libc::XTABS);
        assert_eq!(tabs.while_relayed(true).oflag & libc::OPOST, 0);
        assert!(!tabs.output_redone());
    }
}
