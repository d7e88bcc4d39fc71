//! Small async-signal-safe helpers: errno, C strings, an `mmap` buffer and a one-line
//! message builder that ends in a single `write(2)`.

use std::ffi::c_char;

/// The calling thread's errno.
#[inline]
pub fn errno() -> i32 {
    // SAFETY: __errno_location always returns the calling thread's valid errno slot.
    unsafe { *libc::__errno_location() }
}

#[inline]
pub fn set_errno(e: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = e };
}

/// A `poll(2)` entry waiting for `fd` to be readable (a negative `fd` is skipped by poll).
pub const fn poll_in(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// The bytes of a NUL-terminated C string (without the NUL); empty for a null pointer.
///
/// # Safety
/// `p` is null or points at a NUL-terminated string that outlives `'a`.
#[inline]
pub unsafe fn cstr<'a>(p: *const c_char) -> &'a [u8] {
    if p.is_null() {
        return &[];
    }
    // SAFETY: the caller guarantees a terminated string.
    let n = unsafe { libc::strlen(p) };
    // SAFETY: `n` bytes before the NUL are readable.
    unsafe { std::slice::from_raw_parts(p as *const u8, n) }
}

/// Length of a NULL-terminated pointer array; 0 for a null array.
///
/// # Safety
/// `v` is null or a NULL-terminated array of pointers.
pub unsafe fn vec_len(v: *const *const c_char) -> usize {
    if v.is_null() {
        return 0;
    }
    let mut n = 0;
    // SAFETY: the array is terminated, so every read up to the NULL is in bounds.
    while unsafe { !(*v.add(n)).is_null() } {
        n += 1;
    }
    n
}

/// Last path component (everything after the final '/').
/// Bytes of a process name the kernel keeps (`TASK_COMM_LEN` less its NUL).
pub const COMM_LEN: usize = 15;

/// Names this process `name` in `/proc/self/comm` (cut to [`COMM_LEN`] bytes, as the kernel
/// does): what `ps`, `pgrep` and `top` show.
#[inline]
pub fn set_comm(name: &[u8]) {
    let mut buf = [0u8; COMM_LEN + 1];
    let n = name.len().min(COMM_LEN);
    buf[..n].copy_from_slice(&name[..n]);
    // SAFETY: PR_SET_NAME reads at most 16 bytes from a NUL-terminated buffer of 16.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
}

#[inline]
pub fn basename(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => path.get(i + 1..).unwrap_or(&[]),
        None => path,
    }
}

/// Copies `src` plus a NUL into `dst`; `None` when it does not fit or `src` holds a NUL.
#[inline]
pub fn to_cbuf<'a>(src: &[u8], dst: &'a mut [u8]) -> Option<&'a [u8]> {
    if src.len() >= dst.len() || src.contains(&0) {
        return None;
    }
    dst[..src.len()].copy_from_slice(src);
    dst[src.len()] = 0;
    Some(&dst[..=src.len()])
}

/// Writes `n` in decimal into `buf`; returns the digits.
#[inline]
pub fn fmt_i64(n: i64, buf: &mut [u8; 24]) -> &[u8] {
    let mut i = buf.len();
    let neg = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// Parses a non-negative decimal number.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    let mut v = 0u64;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (b - b'0') as u64;
    }
    Some(v)
}

/// An anonymous private mapping, unmapped on drop. The hook path's only large memory:
/// it is neither heap nor shared with a lock, so it is safe between vfork and exec (where
/// the mapping is shared with the frozen parent until it is unmapped again).
pub struct MmapBuf {
    ptr: *mut u8,
    len: usize,
}

impl MmapBuf {
    #[inline]
    pub fn new(len: usize) -> Option<MmapBuf> {
        let len = len.checked_add(4095)? & !4095;
        // SAFETY: an anonymous mapping with no address hint touches no existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(MmapBuf {
            ptr: p as *mut u8,
            len,
        })
    }

    #[inline]
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, and owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for MmapBuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value created.
        unsafe { libc::munmap(self.ptr as *mut _, self.len) };
    }
}

/// One line of text built on the stack and written to a descriptor with one `write(2)`,
/// so concurrent messages never interleave mid-line. Overlong text is cut, never an error.
pub struct Line {
    buf: [u8; 1024],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Line {
    pub const fn new() -> Line {
        Line {
            buf: [0; 1024],
            len: 0,
        }
    }

    #[inline]
    pub fn push(&mut self, s: &[u8]) -> &mut Self {
        // Keep one byte for the newline.
        let room = self.buf.len() - 1 - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self
    }

    #[inline]
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.push(s.as_bytes())
    }

    #[inline]
    pub fn num(&mut self, n: i64) -> &mut Self {
        let mut b = [0u8; 24];
        let digits = fmt_i64(n, &mut b);
        let mut tmp = [0u8; 24];
        let l = digits.len();
        tmp[..l].copy_from_slice(digits);
        self.push(&tmp[..l])
    }

    /// Appends `s` quoted, with control bytes and quotes escaped, so a hostile argv[0]
    /// cannot forge terminal output.
    pub fn quoted(&mut self, s: &[u8]) -> &mut Self {
        self.push(b"\"");
        for &b in s.iter().take(200) {
            match b {
                b'"' | b'\\' => {
                    self.push(&[b'\\', b]);
                }
                0x20..=0x7e | 0x80..=0xff => {
                    self.push(&[b]);
                }
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    self.push(&[b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
                }
            }
        }
        self.push(b"\"")
    }

    pub fn errno_name(&mut self, e: i32) -> &mut Self {
        let name = ctx_protocol::errno_name(e);
        if name == "E?" {
            self.str("errno ").num(e as i64)
        } else {
            self.str(name)
        }
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Writes the line plus a newline to `fd`, keeping the caller's errno.
    #[inline]
    pub fn write_to(&mut self, fd: i32) {
        let saved = errno();
        self.buf[self.len] = b'\n';
        let mut off = 0;
        while off <= self.len {
            // SAFETY: the range is within buf.
            let n = unsafe {
                libc::write(
                    fd,
                    self.buf.as_ptr().add(off) as *const _,
                    self.len + 1 - off,
                )
            };
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            off += n as usize;
        }
        set_errno(saved);
    }
}

/// Sleeps about `us` microseconds (`nanosleep`: async-signal-safe); a signal only cuts it
/// short.
pub fn sleep_us(us: u64) {
    let t = libc::timespec {
        tv_sec: (us / 1_000_000) as libc::time_t,
        tv_nsec: ((us % 1_000_000) * 1000) as libc::c_long,
    };
    // SAFETY: a valid timespec; no remainder is asked for.
    unsafe { libc::nanosleep(&t, std::ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        let mut b = [0u8; 24];
        assert_eq!(fmt_i64(0, &mut b), b"0");
        assert_eq!(fmt_i64(-125, &mut b), b"-125");
        assert_eq!(fmt_i64(i64::MIN, &mut b), b"-9223372036854775808");
        assert_eq!(parse_u64(b"1023"), Some(1023));
        assert_eq!(parse_u64(b"1x"), None);
        assert_eq!(parse_u64(b""), None);
    }

    #[test]
    fn line_quotes_and_truncates() {
        let mut l = Line::new();
        l.str("run ").quoted(b"a\"b\x1b\xff").str(" ").num(-3);
        assert_eq!(l.as_bytes(), b"run \"a\\\"b\\x1b\xff\" -3");
        let mut l = Line::new();
        for _ in 0..100 {
            l.push(&[b'x'; 50]);
        }
        assert_eq!(l.as_bytes().len(), 1023);
    }

    #[test]
    fn basenames() {
        assert_eq!(basename(b"/usr/bin/ls"), b"ls");
        assert_eq!(basename(b"ls"), b"ls");
        assert_eq!(basename(b"dir/"), b"");
    }
}

/// Signal sets and dispositions through the kernel's own calls. The C libraries' wrappers
/// refuse the signals they keep for themselves (glibc 32 and 33, musl 32 to 34), and the
/// shim may be linked against either, while a caller's signal 34 is glibc's `SIGRTMIN`,
/// a signal like any other to the routed program.
pub mod signals {
    use ctx_protocol::sigaction::{raw_sigaction, KERNEL_SIGSET};

    /// Bits in one word of a `sigset_t`, which is an array of `unsigned long`.
    const WORD_BITS: usize = 8 * std::mem::size_of::<libc::c_ulong>();

    /// Adds signal `sig` (1..=64) to `set`.
    pub fn add(set: &mut libc::sigset_t, sig: i32) {
        if (1..=64).contains(&sig) {
            let bit = (sig - 1) as usize;
            // SAFETY: every C library's sigset_t is an array of `unsigned long` (at least
            // 64 bits of them), bit n-1 for signal n counted word by word, as the kernel's.
            unsafe {
                *(set as *mut libc::sigset_t)
                    .cast::<libc::c_ulong>()
                    .add(bit / WORD_BITS) |= 1 << (bit % WORD_BITS)
            };
        }
    }

    /// `rt_sigprocmask(2)` itself: the C libraries' wrappers hide the signals they keep for
    /// themselves in the old mask they return (musl: 32 to 34), which a restore would then
    /// unblock.
    pub fn procmask(how: i32, set: Option<&libc::sigset_t>, old: Option<&mut libc::sigset_t>) {
        // SAFETY: null or valid sets; the kernel reads and writes its own 8-byte mask, the
        // first 64 bits of each.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                how,
                set.map_or(std::ptr::null(), |s| s as *const libc::sigset_t),
                old.map_or(std::ptr::null_mut(), |o| o as *mut libc::sigset_t),
                KERNEL_SIGSET,
            )
        };
    }

    /// An empty set.
    pub fn empty() -> libc::sigset_t {
        // SAFETY: sigset_t is plain data; all zeroes is the empty set.
        unsafe { std::mem::zeroed() }
    }

    /// Every signal.
    pub fn full() -> libc::sigset_t {
        let mut set = empty();
        for sig in 1..=64 {
            add(&mut set, sig);
        }
        set
    }

    /// Whether signal `sig` is ignored.
    pub fn ignored(sig: i32) -> bool {
        raw_sigaction(sig, None) == Some(libc::SIG_IGN)
    }

    /// Gives signal `sig` its default action.
    pub fn set_default(sig: i32) {
        raw_sigaction(sig, Some(libc::SIG_DFL));
    }
}
