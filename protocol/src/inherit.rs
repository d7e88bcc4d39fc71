//! What a process hands its children across `fork(2)` and `execve(2)` besides descriptors
//! and the environment: umask, resource limits, nice value, CPU affinity, I/O priority,
//! `oom_score_adj`, the signal mask and the ignored signals, the personality, the
//! scheduling policy, the timer slack, the NUMA memory policy, and its working directory as a descriptor (so a deleted one still
//! works). [`Inherited`] is its wire form in an
//! `ExecRequest`; [`Captured`] reads the calling thread's own with plain syscalls into a
//! fixed-size value and encodes exactly as [`Inherited`] does, so the interposer's hook
//! (which may run between `vfork` and `execve`) sends it without allocating. The broker
//! applies it as a caller's request that may lower, never raise (see the broker's
//! `daemon/inherit.rs`).

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use serde_bytes::ByteBuf;

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// `RLIM_NLIMITS`: resources 0..16 (`RLIMIT_CPU` .. `RLIMIT_RTTIME`).
pub const MAX_RLIMITS: usize = 16;

/// Bytes of a CPU mask: glibc's `cpu_set_t`, 1024 CPUs.
pub const MAX_AFFINITY: usize = 128;

/// `IOPRIO_WHO_PROCESS` of `ioprio_get(2)`.
const IOPRIO_WHO_PROCESS: libc::c_long = 1;

/// Bytes of a NUMA node mask read and sent: 1024 nodes.
pub const MAX_NODES: usize = 128;

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// One resource limit; `RLIM_INFINITY` is `u64::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `libc::RLIMIT_*`.
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// The caller's inheritable process attributes, as read at its exec. `None` fields could
/// not be read (the broker then leaves its default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inherited {
    pub umask: u32,
    pub rlimits: Vec<Rlimit>,
    /// -20..=19.
    pub nice: Option<i32>,
    /// The CPU mask as `sched_getaffinity(2)` fills it: CPU n is bit n % 8 of byte n / 8.
    pub affinity: Option<ByteBuf>,
    /// `ioprio_get(2)`'s value: class in bits 13-15, level in the low bits.
    pub ioprio: Option<u16>,
    /// -1000..=1000.
    pub oom_score_adj: Option<i32>,
    /// Blocked signals: bit n-1 for signal n.
    pub blocked: u64,
    /// Signals whose disposition is `SIG_IGN` (kept across exec): bit n-1 for signal n.
    pub ignored: u64,
    /// One more descriptor follows the `Passed` slots' ones in the `SCM_RIGHTS` payload:
    /// an `O_PATH` descriptor of the caller's working directory.
    pub cwd_fd: bool,
    /// The execution domain and its flags, `personality(2)` (`setarch -R`, `linux32`).
    pub personality: Option<u32>,
    /// `sched_getscheduler(2)`: the scheduling policy (`chrt -i`, `chrt -b`).
    pub sched_policy: Option<u32>,
    /// `PR_GET_TIMERSLACK`, in nanoseconds.
    pub timer_slack: Option<u64>,
    /// The NUMA memory policy (`numactl --membind`); `None` for the default one.
    pub mempolicy: Option<Mempolicy>,
}

/// `get_mempolicy(2)`'s answer: the mode with its flags, and the node mask (node n is bit
/// n % 8 of byte n / 8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mempolicy {
    pub mode: u32,
    pub nodes: ByteBuf,
}

/// [`Mempolicy`] as [`Captured`] holds it, for its serializer.
#[derive(Serialize)]
struct MempolicyRef<'a> {
    mode: u32,
    nodes: &'a serde_bytes::Bytes,
}

/// [`Inherited`] on the stack: what [`Captured::read`] found.
#[derive(Debug, Clone, Copy)]
pub struct Captured {
    pub umask: u32,
    rlimits: [Rlimit; MAX_RLIMITS],
    n_rlimits: usize,
    pub nice: Option<i32>,
    affinity: [u8; MAX_AFFINITY],
    /// 0: not read.
    affinity_len: usize,
    pub ioprio: Option<u16>,
    pub oom_score_adj: Option<i32>,
    pub blocked: u64,
    pub ignored: u64,
    pub cwd_fd: bool,
    pub personality: Option<u32>,
    pub sched_policy: Option<u32>,
    pub timer_slack: Option<u64>,
    /// `MPOL_DEFAULT` (0): nothing to send.
    mempolicy_mode: u32,
    mempolicy_nodes: [u8; MAX_NODES],
}

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl Captured {
    /// Nothing read: every optional field `None`, no limits, umask 022.
    pub const fn empty() -> Captured {
        Captured {
            umask: 0o022,
            rlimits: [Rlimit {
                resource: 0,
                soft: 0,
                hard: 0,
            }; MAX_RLIMITS],
            n_rlimits: 0,
            nice: None,
            affinity: [0; MAX_AFFINITY],
            affinity_len: 0,
            ioprio: None,
            oom_score_adj: None,
            blocked: 0,
            ignored: 0,
            cwd_fd: false,
            personality: None,
            sched_policy: None,
            timer_slack: None,
            mempolicy_mode: 0,
            mempolicy_nodes: [0; MAX_NODES],
        }
    }

    /// The calling thread's attributes. Plain syscalls, a stack buffer for the one `/proc`
    /// file: no heap, no locks, no stdio (async-signal-safe). `cwd_fd` stays false; the
    /// sender sets it when it sends the descriptor.
    pub fn read() -> Captured {
        let mut c = Captured::empty();
        c.umask = read_umask();
        for resource in 0..MAX_RLIMITS as u32 {
            let mut old = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: prlimit64 on ourselves (pid 0) writes one rlimit into `old`.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_prlimit64,
                    0,
                    resource,
                    std::ptr::null::<libc::rlimit>(),
                    &mut old as *mut libc::rlimit,
                )
            };
            if r == 0 {
                c.rlimits[c.n_rlimits] = Rlimit {
                    resource,
                    soft: old.rlim_cur,
                    hard: old.rlim_max,
                };
                c.n_rlimits += 1;
            }
        }
        // The raw syscall returns 20 - nice (1..=40), so an error (-1) is not ambiguous
        // with nice -1 as glibc's getpriority is.
        // SAFETY: getpriority takes no pointers.
        let prio = unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 0) };
        if (1..=40).contains(&prio) {
            c.nice = Some(20 - prio as i32);
        }
        // The raw syscall returns how many bytes of the mask it wrote (nr_cpu_ids rounded up
        // to a long); it fails with EINVAL on a machine with more CPUs than fit.
        // SAFETY: sched_getaffinity writes at most MAX_AFFINITY bytes into the array.
        let n = unsafe {
            libc::syscall(
                libc::SYS_sched_getaffinity,
                0,
                MAX_AFFINITY,
                c.affinity.as_mut_ptr(),
            )
        };
        if n > 0 && n as usize <= MAX_AFFINITY {
            c.affinity_len = n as usize;
        }
        // SAFETY: ioprio_get takes no pointers.
        let io = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) };
        if (0..=0xffff).contains(&io) {
            c.ioprio = Some(io as u16);
        }
        c.oom_score_adj = read_oom_score_adj();
        c.blocked = blocked_signals();
        c.ignored = ignored_signals();
        // SAFETY: 0xffffffff only queries the persona; no pointers.
        let persona =
            unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu32 as libc::c_long) };
        if persona >= 0 {
            c.personality = Some(persona as u32);
        }
        // SAFETY: takes no pointers.
        let policy = unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) };
        if policy >= 0 {
            c.sched_policy = Some(policy as u32);
        }
        // SAFETY: takes no pointers.
        let slack = unsafe { libc::syscall(libc::SYS_prctl, libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) };
        if slack > 0 {
            c.timer_slack = Some(slack as u64);
        }
        let mut mode: libc::c_int = 0;
        // SAFETY: the kernel writes one int and at most MAX_NODES * 8 bits of mask; no
        // address is asked about (flags 0).
        let r = unsafe {
            libc::syscall(
                libc::SYS_get_mempolicy,
                &mut mode as *mut libc::c_int,
                c.mempolicy_nodes.as_mut_ptr(),
                (MAX_NODES * 8) as libc::c_ulong,
                std::ptr::null::<u8>(),
                0,
            )
        };
        if r == 0 && mode > 0 {
            c.mempolicy_mode = mode as u32;
        }
        c
    }

    pub fn mempolicy(&self) -> Option<Mempolicy> {
        (self.mempolicy_mode != 0).then(|| Mempolicy {
            mode: self.mempolicy_mode,
            nodes: ByteBuf::from(self.mempolicy_nodes.to_vec()),
        })
    }

    pub fn rlimits(&self) -> &[Rlimit] {
        &self.rlimits[..self.n_rlimits]
    }

    pub fn affinity(&self) -> Option<&[u8]> {
        (self.affinity_len > 0).then(|| &self.affinity[..self.affinity_len])
    }

    /// Replaces the affinity mask (at most [`MAX_AFFINITY`] bytes are kept).
    pub fn set_affinity(&mut self, mask: Option<&[u8]>) {
        let mask = mask.unwrap_or(&[]);
        let n = mask.len().min(MAX_AFFINITY);
        self.affinity[..n].copy_from_slice(&mask[..n]);
        self.affinity_len = n;
    }

    /// Replaces the limits (at most [`MAX_RLIMITS`] are kept).
    pub fn set_rlimits(&mut self, limits: &[Rlimit]) {
        let n = limits.len().min(MAX_RLIMITS);
        self.rlimits[..n].copy_from_slice(&limits[..n]);
        self.n_rlimits = n;
    }

    /// The owned wire form (for clients that may allocate, like the CLI).
    pub fn to_inherited(&self) -> Inherited {
        Inherited {
            umask: self.umask,
            rlimits: self.rlimits().to_vec(),
            nice: self.nice,
            affinity: self.affinity().map(|a| ByteBuf::from(a.to_vec())),
            ioprio: self.ioprio,
            oom_score_adj: self.oom_score_adj,
            blocked: self.blocked,
            ignored: self.ignored,
            cwd_fd: self.cwd_fd,
            personality: self.personality,
            sched_policy: self.sched_policy,
            timer_slack: self.timer_slack,
            mempolicy: self.mempolicy(),
        }
    }
}

/// Field for field what `#[derive(Serialize)]` does for [`Inherited`] (a test pins it).
impl Serialize for Captured {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Inherited", 13)?;
        st.serialize_field("umask", &self.umask)?;
        st.serialize_field("rlimits", self.rlimits())?;
        st.serialize_field("nice", &self.nice)?;
        st.serialize_field("affinity", &self.affinity().map(serde_bytes::Bytes::new))?;
        st.serialize_field("ioprio", &self.ioprio)?;
        st.serialize_field("oom_score_adj", &self.oom_score_adj)?;
        st.serialize_field("blocked", &self.blocked)?;
        st.serialize_field("ignored", &self.ignored)?;
        st.serialize_field("cwd_fd", &self.cwd_fd)?;
        st.serialize_field("personality", &self.personality)?;
        st.serialize_field("sched_policy", &self.sched_policy)?;
        st.serialize_field("timer_slack", &self.timer_slack)?;
        let mempolicy = (self.mempolicy_mode != 0).then(|| MempolicyRef {
            mode: self.mempolicy_mode,
            nodes: serde_bytes::Bytes::new(&self.mempolicy_nodes),
        });
        st.serialize_field("mempolicy", &mempolicy)?;
        st.end()
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// The umask. `umask(2)` can only be read by setting it, and every thread of a process
/// shares one: in a process with other threads (a threaded program exec'ing directly, not
/// from a fork or vfork child, which have their own) a file another thread created
/// between the two calls would get the temporary mask. Such a process reads `Umask:` from
/// `/proc/self/status` instead; only without `/proc` does it set and restore, through the
/// most restrictive mask, so that a racing thread's file would be too private, not too
/// open.
fn read_umask() -> u32 {
    if !single_threaded() {
        if let Some(m) = umask_from_status() {
            return m;
        }
    }
    // SAFETY: umask takes no pointers; the old value is put straight back.
    unsafe {
        let old = libc::umask(0o777);
        libc::umask(old);
        old as u32
    }
}

/// One thread: procfs counts a process's threads into the link count of its `task`
/// directory (2 + threads). Unknown counts as threaded.
fn single_threaded() -> bool {
    // SAFETY: stat is plain data; a constant NUL-terminated path.
    let mut sb: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ok = unsafe { libc::stat(c"/proc/self/task".as_ptr(), &mut sb) } == 0;
    ok && sb.st_nlink == 3
}

/// Reads up to `buf.len()` bytes of a small `/proc` file; the bytes read.
pub(crate) fn read_small(path: &std::ffi::CStr, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: a NUL-terminated path; the descriptor is ours and closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads into the rest of buf.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    Some(got)
}

/// `Umask:` of `/proc/self/status` (Linux 4.7+; the second line).
fn umask_from_status() -> Option<u32> {
    let mut buf = [0u8; 256];
    let n = read_small(c"/proc/self/status", &mut buf)?;
    let (v, _) = status_number(&buf[..n], b"\nUmask:", 8)?;
    Some(v as u32 & 0o777)
}

/// The number after `key` (a line's start, `\nName:`) in a `/proc/PID/status` text, in
/// `radix`, with how many digits it had; `None` without one. Allocates nothing.
pub(crate) fn status_number(text: &[u8], key: &[u8], radix: u32) -> Option<(u64, usize)> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let mut v = 0u64;
    let mut digits = 0;
    for &b in text[at..]
        .iter()
        .skip_while(|b| **b == b'\t' || **b == b' ')
    {
        let Some(d) = (b as char).to_digit(radix) else {
            break;
        };
        v = v.checked_mul(u64::from(radix))? + u64::from(d);
        digits += 1;
    }
    (digits > 0).then_some((v, digits))
}

fn read_oom_score_adj() -> Option<i32> {
    let mut buf = [0u8; 16];
    let n = read_small(c"/proc/self/oom_score_adj", &mut buf)?;
    parse_i32(&buf[..n])
}

/// A decimal with an optional '-' and trailing whitespace.
fn parse_i32(s: &[u8]) -> Option<i32> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let digits = &digits[..digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len())];
    if digits.is_empty() || digits.len() > 9 {
        return None;
    }
    let v = digits.iter().fold(0i32, |v, &b| v * 10 + (b - b'0') as i32);
    Some(if neg { -v } else { v })
}

/// The calling thread's signal mask: bit n-1 for signal n.
fn blocked_signals() -> u64 {
    let mut old = 0u64;
    // SAFETY: SIG_BLOCK with a null set only reads the mask into `old` (kernel size).
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            std::ptr::null::<u64>(),
            &mut old as *mut u64,
            crate::sigaction::KERNEL_SIGSET,
        )
    };
    old
}

/// Signals whose disposition is `SIG_IGN`: bit n-1 for signal n.
fn ignored_signals() -> u64 {
    (1..=64)
        .filter(|&sig| crate::sigaction::raw_sigaction(sig, None) == Some(libc::SIG_IGN))
        .fold(0u64, |mask, sig| mask | 1 << (sig - 1))
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_encodes_as_inherited() {
        let mut c = Captured::read();
        c.cwd_fd = true;
        let owned = c.to_inherited();
        assert_eq!(
            postcard::to_allocvec(&c).unwrap(),
            postcard::to_allocvec(&owned).unwrap()
        );
        let mut e = Captured::empty();
        e.set_rlimits(&[Rlimit {
            resource: 7,
            soft: 64,
            hard: u64::MAX,
        }]);
        e.nice = Some(-3);
        e.oom_score_adj = Some(-1000);
        e.timer_slack = Some(1);
        e.mempolicy_mode = 2;
        e.mempolicy_nodes[0] = 1;
        assert_eq!(
            postcard::to_allocvec(&e).unwrap(),
            postcard::to_allocvec(&e.to_inherited()).unwrap()
        );
    }

    #[test]
    fn reads_this_process() {
        let c = Captured::read();
        assert_eq!(c.rlimits().len(), MAX_RLIMITS);
        // SAFETY: plain getter, and the value is put back.
        let mask = unsafe {
            let m = libc::umask(0o022);
            libc::umask(m);
            m as u32
        };
        assert_eq!(c.umask, mask);
        assert!(c.nice.is_some() && c.affinity().is_some() && c.ioprio.is_some());
        assert!(c.oom_score_adj.is_some_and(|v| (-1000..=1000).contains(&v)));
        // The test harness is threaded: the umask came from /proc/self/status.
        assert_eq!(umask_from_status(), Some(mask));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_i32(b"-500\n"), Some(-500));
        assert_eq!(parse_i32(b"0"), Some(0));
        assert_eq!(parse_i32(b"1000\n"), Some(1000));
        assert_eq!(parse_i32(b"\n"), None);
        assert_eq!(parse_i32(b"-"), None);
    }
}
