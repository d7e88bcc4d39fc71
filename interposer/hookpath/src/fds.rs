//! Which descriptors a launch carries: every open descriptor without `FD_CLOEXEC`, at its
//! own number. Descriptors 0-2 that are terminals become PTY slots (a terminal fd is never
//! handed to another uid: `TIOCSTI` would let it type into the caller's terminal); other
//! terminal descriptors are left behind.
//!
//! The result lives on the stack for the usual handful of descriptors ([`InlineFds`]); a
//! caller holding more (a server's `pass_fds` of a thousand sockets) gets an `mmap`ed
//! [`BigFds`] sized by a count of its descriptor table: no heap on the hook path either way.

use ctx_protocol::{FdSlot, FdSource, TermModes, TtyInfo, WinSize};

use super::sys::MmapBuf;

/// Passed descriptors the stack storage holds: one `SCM_RIGHTS` message's worth.
pub const INLINE_FDS: usize = ctx_protocol::fdpass::MAX_FDS;

/// Descriptors a [`BigFds`] leaves room for beyond the count it was sized by: another
/// thread of an exec'ing (not forked) caller may open some between the count and the scan.
const BIG_SLACK: usize = 64;

/// The scan's result: slots and passed descriptors in storage the caller provides.
pub struct FdSet<'s> {
    slots: &'s mut [FdSlot],
    nslots: usize,
    /// Descriptors to send, in `Passed` slot order.
    passed: &'s mut [i32],
    npassed: usize,
    /// Bit n set: descriptor n (0..=2) is a terminal relayed through a PTY; or
    /// [`CTTY_ONLY`].
    pub pty_mask: u8,
    pub tty: Option<TtyInfo>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ScanError {
    /// More inheritable descriptors than the storage holds.
    TooMany,
    /// No memory for a large descriptor table's scan.
    NoMemory,
}

/// `pty_mask` of a launch whose stdio are no terminals while the caller has a controlling
/// terminal: the PTY is only the routed program's controlling terminal (`/dev/tty`).
pub const CTTY_ONLY: u8 = 8;

const EMPTY_SLOT: FdSlot = FdSlot {
    target: 0,
    source: FdSource::Passed,
};

/// Stack storage for a scan (about 3 KiB).
pub struct InlineFds {
    slots: [FdSlot; INLINE_FDS + 3],
    passed: [i32; INLINE_FDS],
}

impl InlineFds {
    pub const fn new() -> InlineFds {
        InlineFds {
            slots: [EMPTY_SLOT; INLINE_FDS + 3],
            passed: [0; INLINE_FDS],
        }
    }

    pub fn set(&mut self) -> FdSet<'_> {
        FdSet::new(&mut self.slots, &mut self.passed)
    }
}

impl Default for InlineFds {
    fn default() -> Self {
        Self::new()
    }
}

/// `mmap`ed storage for `cap` passed descriptors (and three PTY slots).
pub struct BigFds {
    map: MmapBuf,
    cap: usize,
}

impl BigFds {
    pub fn new(cap: usize) -> Option<BigFds> {
        let len = Self::passed_offset(cap)?.checked_add(cap.checked_mul(4)?)?;
        Some(BigFds {
            map: MmapBuf::new(len)?,
            cap,
        })
    }

    /// Where the `i32` array starts: after the slots, aligned for `i32`.
    fn passed_offset(cap: usize) -> Option<usize> {
        let slots = (cap + 3).checked_mul(std::mem::size_of::<FdSlot>())?;
        Some(slots.checked_add(3)? & !3)
    }

    pub fn set(&mut self) -> FdSet<'_> {
        let cap = self.cap;
        let off = Self::passed_offset(cap).unwrap_or(0);
        let bytes = self.map.bytes_mut();
        let (head, tail) = bytes.split_at_mut(off);
        let slot_ptr = head.as_mut_ptr() as *mut FdSlot;
        for i in 0..cap + 3 {
            // SAFETY: the mapping is page-aligned (so aligned for FdSlot) and `head` holds
            // `cap + 3` slots; each is written before the slice below is made.
            unsafe { slot_ptr.add(i).write(EMPTY_SLOT) };
        }
        // SAFETY: `cap + 3` initialised slots in `head`; `tail` starts 4-aligned (page
        // plus a multiple of 4) and holds `cap` i32s, all zero (valid) in a fresh mapping.
        let (slots, passed) = unsafe {
            (
                std::slice::from_raw_parts_mut(slot_ptr, cap + 3),
                std::slice::from_raw_parts_mut(tail.as_mut_ptr() as *mut i32, cap),
            )
        };
        FdSet::new(slots, passed)
    }
}

impl<'s> FdSet<'s> {
    pub fn new(slots: &'s mut [FdSlot], passed: &'s mut [i32]) -> FdSet<'s> {
        FdSet {
            slots,
            nslots: 0,
            passed,
            npassed: 0,
            pty_mask: 0,
            tty: None,
        }
    }

    #[inline]
    pub fn slots(&self) -> &[FdSlot] {
        &self.slots[..self.nslots]
    }

    #[inline]
    pub fn passed(&self) -> &[i32] {
        &self.passed[..self.npassed]
    }

    /// Appends a descriptor that rides after the inheritable ones with no slot of its own
    /// (the cwd's); false when the storage has no room left for it.
    pub fn push_unslotted(&mut self, fd: i32) -> bool {
        if self.npassed >= self.passed.len() {
            return false;
        }
        self.passed[self.npassed] = fd;
        self.npassed += 1;
        true
    }

    /// A process whose stdio are no terminals may still have a controlling terminal,
    /// which its child shares locally (`/dev/tty`: ssh and sudo prompts, `read </dev/tty`).
    /// Then the launch asks for a PTY that is only the routed program's controlling
    /// terminal ([`CTTY_ONLY`]), relayed to this one by the shim; the terminal's
    /// descriptor itself never travels.
    fn controlling_terminal(&mut self) {
        if self.pty_mask != 0 {
            return;
        }
        // SAFETY: a constant NUL-terminated path; fails with ENXIO without a terminal.
        let fd = unsafe {
            libc::open(
                c"/dev/tty".as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return;
        }
        if let Some(modes) = termios_of(fd) {
            self.tty = Some(TtyInfo {
                size: winsize_of(fd).unwrap_or_default(),
                termios: Some(modes),
            });
            self.pty_mask = CTTY_ONLY;
        }
        // SAFETY: we opened it above.
        unsafe { libc::close(fd) };
    }

    fn add(&mut self, fd: i32) -> Result<(), ScanError> {
        if fd_cloexec(fd) != Some(false) {
            return Ok(());
        }
        if let Some(modes) = termios_of(fd) {
            if (0..=2).contains(&fd) {
                if self.tty.is_none() {
                    self.tty = Some(TtyInfo {
                        size: winsize_of(fd).unwrap_or_default(),
                        termios: Some(modes),
                    });
                }
                self.pty_mask |= 1 << fd;
                self.push_slot(fd, FdSource::Pty)?;
            }
            return Ok(());
        }
        if self.npassed >= self.passed.len() {
            return Err(ScanError::TooMany);
        }
        open_anonymous_pipe(fd);
        self.passed[self.npassed] = fd;
        self.npassed += 1;
        self.push_slot(fd, FdSource::Passed)
    }

    fn push_slot(&mut self, target: i32, source: FdSource) -> Result<(), ScanError> {
        let slot = self.slots.get_mut(self.nslots).ok_or(ScanError::TooMany)?;
        *slot = FdSlot { target, source };
        self.nslots += 1;
        Ok(())
    }
}

/// Scans into `inline`; a caller with more inheritable descriptors than that holds is
/// scanned again into `big`, mapped for the count found. Both storages outlive the set.
pub fn scan_any<'s>(
    inline: &'s mut InlineFds,
    big: &'s mut Option<BigFds>,
    exclude: i32,
) -> Result<FdSet<'s>, ScanError> {
    let mut set = inline.set();
    match scan(&mut set, exclude) {
        Ok(()) => {
            set.controlling_terminal();
            return Ok(set);
        }
        Err(ScanError::TooMany) => {}
        Err(e) => return Err(e),
    }
    let cap = count_open().saturating_add(BIG_SLACK);
    let storage = big.insert(BigFds::new(cap).ok_or(ScanError::NoMemory)?);
    let mut set = storage.set();
    scan(&mut set, exclude)?;
    set.controlling_terminal();
    Ok(set)
}

/// The one-line reason a scan failed, for the refusal message.
pub fn scan_failure(e: ScanError) -> &'static str {
    match e {
        ScanError::TooMany => {
            "more inheritable descriptors appeared while they were being collected"
        }
        ScanError::NoMemory => "no memory to collect the inheritable descriptors",
    }
}

/// How many descriptors this process has open (an upper bound on what a scan keeps):
/// `/proc/self/fd`'s entries, or the soft `RLIMIT_NOFILE` (bounded) without `/proc`.
fn count_open() -> usize {
    // SAFETY: a constant NUL-terminated path.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return probe_limit() as usize;
    }
    let mut n = 0usize;
    each_dir_fd(dir, |_| {
        n += 1;
        Ok(())
    })
    .ok();
    // SAFETY: we opened `dir` above.
    unsafe { libc::close(dir) };
    n
}

/// Anonymous pipes are created mode 0600 for the caller's uid, so a routed program of
/// another uid could use its pipe descriptors but not reopen them by name: `/dev/stdin`,
/// `/dev/stderr`, bash's `<(...)` (`/dev/fd/63`) would fail with EACCES where a local run
/// works. Widening the mode of an anonymous pipe (never a named FIFO) exposes nothing: a
/// reopen through `/proc/PID/fd` still needs ptrace access to a process that holds it.
fn open_anonymous_pipe(fd: i32) {
    const PIPEFS_MAGIC: libc::c_long = 0x5049_5045;
    // SAFETY: stat/statfs are plain data filled by the calls.
    let mut sb: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an open descriptor.
    if unsafe { libc::fstat(fd, &mut sb) } != 0
        || sb.st_mode & libc::S_IFMT != libc::S_IFIFO
        || sb.st_mode & 0o666 == 0o666
    {
        return;
    }
    // SAFETY: as above.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs on an open descriptor.
    if unsafe { libc::fstatfs(fd, &mut fs) } == 0 && fs.f_type as libc::c_long == PIPEFS_MAGIC {
        // SAFETY: changes only this anonymous pipe's mode.
        unsafe { libc::fchmod(fd, 0o666) };
    }
}

/// An `O_PATH` descriptor of the working directory, which names it even when it was
/// deleted or has no path from here (another mount namespace, outside a chroot); -1 when
/// it cannot be opened. Close-on-exec, so no launch's descriptor scan ever sees it.
#[inline]
pub fn open_cwd() -> i32 {
    // SAFETY: a constant NUL-terminated path; the descriptor is the caller's to close.
    unsafe {
        libc::open(
            c".".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    }
}

/// `Some(true)` when `fd` is open with close-on-exec, `Some(false)` open without, `None`
/// when it is not open.
#[inline]
pub fn fd_cloexec(fd: i32) -> Option<bool> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    let f = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    (f >= 0).then_some(f & libc::FD_CLOEXEC != 0)
}

/// The terminal modes of `fd` if it is a terminal, as a program sees them (without the
/// `EXTPROC` of a relay that holds it for another routed program).
#[inline]
pub fn termios_of(fd: i32) -> Option<TermModes> {
    // SAFETY: termios is plain data; TCGETS fills it or fails.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: TCGETS writes one termios into `t`.
    if unsafe { libc::ioctl(fd, libc::TCGETS, &mut t) } != 0 {
        return None;
    }
    Some(TermModes::from_termios(&t).logical())
}

#[inline]
pub fn winsize_of(fd: i32) -> Option<WinSize> {
    // SAFETY: winsize is plain data.
    let mut w: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `w`.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) } != 0 {
        return None;
    }
    Some(WinSize {
        rows: w.ws_row,
        cols: w.ws_col,
        xpixel: w.ws_xpixel,
        ypixel: w.ws_ypixel,
    })
}

/// Collects the inheritable descriptors, skipping `exclude` (e.g. the shim's report pipe).
/// Reads `/proc/self/fd` with `getdents64` into a stack buffer; without `/proc`, probes
/// descriptors up to the soft `RLIMIT_NOFILE` (bounded).
pub fn scan(out: &mut FdSet, exclude: i32) -> Result<(), ScanError> {
    // SAFETY: a constant NUL-terminated path; O_CLOEXEC keeps the dirfd out of the scan.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return scan_by_probe(out, exclude);
    }
    let res = scan_dir(out, dir, exclude);
    // SAFETY: we opened `dir` above.
    unsafe { libc::close(dir) };
    res
}

#[repr(C, align(8))]
struct DirBuf([u8; 4096]);

fn scan_dir(out: &mut FdSet, dir: i32, exclude: i32) -> Result<(), ScanError> {
    each_dir_fd(dir, |fd| {
        if fd != dir && fd != exclude {
            out.add(fd)?;
        }
        Ok(())
    })
}

/// Calls `f` with each descriptor number listed in the open directory `dir` (a
/// `/proc/self/fd`), read with `getdents64` into a stack buffer.
fn each_dir_fd(dir: i32, mut f: impl FnMut(i32) -> Result<(), ScanError>) -> Result<(), ScanError> {
    let mut buf = DirBuf([0; 4096]);
    loop {
        // SAFETY: getdents64 writes at most buf.len() bytes into buf.
        let n =
            unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.0.as_mut_ptr(), buf.0.len()) };
        if n <= 0 {
            return Ok(());
        }
        let n = n as usize;
        let mut off = 0;
        // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name...
        while off + 19 < n {
            let reclen = u16::from_ne_bytes([buf.0[off + 16], buf.0[off + 17]]) as usize;
            if reclen < 20 || off + reclen > n {
                break;
            }
            let name = &buf.0[off + 19..off + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(fd) = super::sys::parse_u64(name) {
                f(fd as i32)?;
            }
            off += reclen;
        }
    }
}

/// The soft `RLIMIT_NOFILE`, bounded: how far a scan without `/proc` probes.
fn probe_limit() -> i32 {
    // SAFETY: rlimit is plain data filled by getrlimit.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes one rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur.min(65536) as i32
    } else {
        1024
    }
}

fn scan_by_probe(out: &mut FdSet, exclude: i32) -> Result<(), ScanError> {
    for fd in 0..probe_limit() {
        if fd != exclude {
            out.add(fd)?;
        }
    }
    Ok(())
}

/// For the process that relays a launch (the shim, or the hook's fork child): closes every
/// descriptor but the connection, stderr (for our one-line messages) and the terminal
/// descriptors we relay: holding a copy of the caller's pipes would delay their
/// EOF (and keep `SIGPIPE` from a reader that went away) past the routed program's exit.
#[inline]
pub fn keep_only(sock: i32, pty_mask: u8) {
    for fd in 0..2 {
        if pty_mask & (1 << fd) == 0 {
            // SAFETY: the relaying process owns its descriptor table.
            unsafe { libc::close(fd) };
        }
    }
    // SAFETY: close_range takes no memory; the two ranges skip exactly `sock`.
    unsafe {
        if sock > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, (sock - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (sock + 1) as u32, u32::MAX, 0u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scans see the whole process: a test that opens descriptors makes the others'
    /// scans see them (past one message's worth, `TooMany`), so they take turns.
    static SCANS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn scan_sees_inheritable_and_skips_cloexec() {
        let _turn = SCANS.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = [0i32; 2];
        // SAFETY: pipe2 fills the array.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: duplicates an fd we own to a fresh, inheritable number.
        let inheritable = unsafe { libc::fcntl(p[0], libc::F_DUPFD, 700) };
        assert!(inheritable >= 700);
        let mut store = InlineFds::new();
        let mut set = store.set();
        scan(&mut set, -1).unwrap();
        let targets: Vec<i32> = set.slots().iter().map(|s| s.target).collect();
        assert!(targets.contains(&inheritable), "{targets:?}");
        assert!(!targets.contains(&p[0]) && !targets.contains(&p[1]));
        assert!(set.passed().contains(&inheritable));

        let mut store2 = InlineFds::new();
        let mut set2 = store2.set();
        scan(&mut set2, inheritable).unwrap();
        assert!(!set2.slots().iter().any(|s| s.target == inheritable));

        let mut store3 = InlineFds::new();
        let mut set3 = store3.set();
        scan_by_probe(&mut set3, -1).unwrap();
        assert!(set3.slots().iter().any(|s| s.target == inheritable));
        // SAFETY: closing descriptors this test opened.
        unsafe {
            libc::close(inheritable);
            libc::close(p[0]);
            libc::close(p[1]);
        }
    }

    #[test]
    fn passed_and_slot_order_agree() {
        let _turn = SCANS.lock().unwrap_or_else(|e| e.into_inner());
        let mut store = InlineFds::new();
        let mut set = store.set();
        scan(&mut set, -1).unwrap();
        let passed_targets: Vec<i32> = set
            .slots()
            .iter()
            .filter(|s| s.source == FdSource::Passed)
            .map(|s| s.target)
            .collect();
        assert_eq!(passed_targets, set.passed());
    }

    #[test]
    fn more_descriptors_than_one_message_are_scanned_into_a_mapping() {
        let _turn = SCANS.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = [0i32; 2];
        // SAFETY: pipe2 fills the array.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: inheritable duplicates of our own pipe end, closed below.
        let dups: Vec<i32> = (0..INLINE_FDS as i32 + 40)
            .map(|i| unsafe { libc::fcntl(p[0], libc::F_DUPFD, 2000 + i) })
            .collect();
        assert!(dups.iter().all(|&d| d >= 2000));
        let mut inline = InlineFds::new();
        assert_eq!(scan(&mut inline.set(), -1).err(), Some(ScanError::TooMany));
        let mut big = None;
        let set = scan_any(&mut inline, &mut big, dups[0]).unwrap();
        assert!(set.passed().len() > INLINE_FDS);
        for &d in &dups[1..] {
            assert!(set.passed().contains(&d), "{d} missing");
        }
        assert!(!set.passed().contains(&dups[0]));
        let passed_targets: Vec<i32> = set
            .slots()
            .iter()
            .filter(|s| s.source == FdSource::Passed)
            .map(|s| s.target)
            .collect();
        assert_eq!(passed_targets, set.passed());
        assert!(big.is_some(), "scanned into the stack storage");
        for d in dups.into_iter().chain(p) {
            // SAFETY: closing descriptors this test opened.
            unsafe { libc::close(d) };
        }
    }
}
