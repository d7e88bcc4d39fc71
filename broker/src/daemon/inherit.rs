//! What a local child would have inherited from the caller across `fork` + `execve`
//! (umask, resource limits, nice value, CPU affinity, I/O priority, `oom_score_adj`, the
//! signal mask and ignored signals), applied to the routed process. The rule throughout:
//! a caller lowers, never raises. Each attribute starts at what the routed process would
//! have without the caller (the broker's own, the context's `rlimits` as a ceiling) and
//! takes the caller's value only where that is lower, so a caller gets no more than it
//! had and no more than the context allows. The checks run before fork; the `apply_*`
//! functions run in the spawn child (async-signal-safe, no allocation).

use ctx_protocol::inherit::{Inherited, MAX_AFFINITY, MAX_NODES, MAX_RLIMITS};

use crate::config::Rlimit as ContextRlimit;

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

const IOPRIO_WHO_PROCESS: libc::c_long = 1;
const IOPRIO_CLASS_SHIFT: u16 = 13;
const IOPRIO_CLASS_NONE: u16 = 0;
const IOPRIO_CLASS_RT: u16 = 1;
const IOPRIO_CLASS_BE: u16 = 2;
const IOPRIO_CLASS_IDLE: u16 = 3;
/// The level bits of the best-effort and realtime classes (0 is the highest).
const IOPRIO_LEVEL_MASK: u16 = 7;

const KERNEL_SIGSET: usize = 8;

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// The caller's attributes the spawn child applies, checked before fork. Limits are not
/// here: they are merged into the plan's own (see [`child_rlimits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    pub umask: libc::mode_t,
    /// -20..=19.
    pub nice: Option<i32>,
    /// The caller's CPU mask (bit n % 8 of byte n / 8 for CPU n), at most
    /// [`MAX_AFFINITY`] bytes.
    pub affinity: Option<Vec<u8>>,
    /// A best-effort or idle class value; a realtime or unset class is dropped here.
    pub ioprio: Option<u16>,
    /// -1000..=1000.
    pub oom_score_adj: Option<i32>,
    /// Bit n-1 for signal n.
    pub blocked: u64,
    /// Bit n-1 for signal n; SIGKILL and SIGSTOP never.
    pub ignored: u64,
    /// The caller's persona; [`Carried::for_another_user`] takes out what the kernel
    /// clears across a set-id exec.
    pub personality: Option<u32>,
    /// `SCHED_BATCH` or `SCHED_IDLE`: the policies below the default one. The realtime
    /// ones would be a raise; `SCHED_DEADLINE` is not inherited across fork at all.
    pub sched_policy: Option<i32>,
    /// Nanoseconds; any value is the caller's to choose for its own processes.
    pub timer_slack: Option<u64>,
    /// `(mode with flags, node mask)`; the kernel holds it within the context's cpuset.
    pub mempolicy: Option<(i32, Vec<u8>)>,
}

// ---------------------------------------------------------------------------------------
// Functions: before fork
// ---------------------------------------------------------------------------------------

impl Carried {
    /// The checked form of what a caller sent; out-of-range values are dropped (the child
    /// then keeps its default for them), never clamped into something the caller did not
    /// have.
    pub fn from_request(inh: &Inherited) -> Carried {
        let ioprio = inh.ioprio.filter(|p| {
            // The unset class follows the nice value, which is carried on its own; a
            // realtime class would be a raise for any process the broker starts.
            matches!(p >> IOPRIO_CLASS_SHIFT, IOPRIO_CLASS_BE | IOPRIO_CLASS_IDLE)
        });
        let unstoppable = 1u64 << (libc::SIGKILL - 1) | 1u64 << (libc::SIGSTOP - 1);
        Carried {
            umask: (inh.umask & 0o777) as libc::mode_t,
            nice: inh.nice.filter(|n| (-20..=19).contains(n)),
            affinity: inh
                .affinity
                .as_ref()
                .filter(|a| !a.is_empty() && a.len() <= MAX_AFFINITY)
                .map(|a| a.to_vec()),
            ioprio,
            oom_score_adj: inh.oom_score_adj.filter(|v| (-1000..=1000).contains(v)),
            blocked: inh.blocked,
            ignored: inh.ignored & !unstoppable,
            personality: inh.personality,
            sched_policy: inh
                .sched_policy
                .map(|p| (p & !(libc::SCHED_RESET_ON_FORK as u32)) as i32)
                .filter(|&p| p == libc::SCHED_BATCH || p == libc::SCHED_IDLE),
            timer_slack: inh.timer_slack.filter(|&n| n > 0),
            mempolicy: inh
                .mempolicy
                .as_ref()
                .filter(|m| m.mode > 0 && m.mode <= i32::MAX as u32)
                .filter(|m| !m.nodes.is_empty() && m.nodes.len() <= MAX_NODES)
                .map(|m| (m.mode as i32, m.nodes.to_vec())),
        }
    }

    /// The spawn child starts with the broker's `oom_score_adj` (`broker`): a caller's
    /// value not above it changes nothing, and the child is spared reading its own (a
    /// lookup of a pid new to `/proc`, on every launch).
    pub fn skip_oom_score_adj_not_above(&mut self, broker: Option<i32>) {
        if broker.is_some_and(|b| self.oom_score_adj.is_some_and(|w| w <= b)) {
            self.oom_score_adj = None;
        }
    }

    /// The program runs as another user than its caller: as across an exec of a set-id
    /// program, the persona loses the flags that weaken a process (`ADDR_NO_RANDOMIZE`,
    /// `READ_IMPLIES_EXEC`, `ADDR_COMPAT_LAYOUT`, `MMAP_PAGE_ZERO`: the kernel's
    /// `PER_CLEAR_ON_SETID`), which a caller must not impose on another user's process.
    pub fn for_another_user(&mut self) {
        if let Some(p) = &mut self.personality {
            *p &= !PER_CLEAR_ON_SETID;
        }
    }
}

/// `READ_IMPLIES_EXEC | ADDR_NO_RANDOMIZE | ADDR_COMPAT_LAYOUT | MMAP_PAGE_ZERO`.
const PER_CLEAR_ON_SETID: u32 = 0x0040_0000 | 0x0004_0000 | 0x0020_0000 | 0x0010_0000;

/// The limits the routed process gets, as `(resource, soft, hard)` to set in the child,
/// listing only what differs from what it inherits from the broker: the context's
/// `rlimits` (soft and hard, as before), then, per resource, the lower of that (or of the
/// broker's own, `own`, whose soft `RLIMIT_NOFILE` is `nofile_soft` when that is not 0)
/// and the caller's, soft and hard each, with soft never above hard.
pub fn child_rlimits(
    context: &[ContextRlimit],
    caller: &[ctx_protocol::Rlimit],
    nofile_soft: u64,
    own: impl Fn(i32) -> Option<(u64, u64)>,
) -> Vec<(i32, u64, u64)> {
    let mut out: Vec<(i32, u64, u64)> = context
        .iter()
        .map(|r| (r.resource, r.value, r.value))
        .collect();
    for c in caller {
        if c.resource as usize >= MAX_RLIMITS || (c.soft == u64::MAX && c.hard == u64::MAX) {
            continue;
        }
        let resource = c.resource as i32;
        let (set, base) = match out.iter().position(|&(r, _, _)| r == resource) {
            Some(i) => (Some(i), (out[i].1, out[i].2)),
            None => {
                let Some((mut soft, hard)) = own(resource) else {
                    continue;
                };
                if resource == libc::RLIMIT_NOFILE as i32 && nofile_soft > 0 {
                    soft = soft.min(nofile_soft);
                }
                (None, (soft, hard))
            }
        };
        let hard = base.1.min(c.hard);
        let soft = base.0.min(c.soft).min(hard);
        match set {
            Some(i) => out[i] = (resource, soft, hard),
            None if (soft, hard) != base => out.push((resource, soft, hard)),
            None => {}
        }
    }
    out
}

/// The broker's own limit of `resource`, which the spawn child starts with.
pub fn own_rlimit(resource: i32) -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`.
    (unsafe { libc::getrlimit(resource as _, &mut lim) } == 0)
        .then_some((lim.rlim_cur, lim.rlim_max))
}

// ---------------------------------------------------------------------------------------
// Functions: in the spawn child
// ---------------------------------------------------------------------------------------

/// The scheduling attributes and the umask. Called before the Landlock restriction (a
/// ruleset may hide `/proc`) and before the uid switch (which leaves `/proc/self` root's
/// until the exec, so the new uid could not write its `oom_score_adj`). Every step is
/// best-effort: each only ever lowers what the process may do, so a failure leaves the
/// default, which is what the process would have had before this existed, and the launch
/// goes on.
///
/// # Safety
/// Only in the spawn child: it changes the calling process.
pub unsafe fn apply_scheduling(c: &Carried) {
    libc::umask(c.umask);
    // The raw syscall answers 20 - nice, free of glibc's errno ambiguity.
    let prio = libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 0);
    let mut nice = if (1..=40).contains(&prio) {
        20 - prio as i32
    } else {
        0
    };
    if let Some(wanted) = c.nice {
        // A higher nice value is a lower priority; a lower one is a raise (and would need
        // CAP_SYS_NICE, which the routed process must not borrow from the broker).
        if wanted > nice && libc::setpriority(libc::PRIO_PROCESS, 0, wanted) == 0 {
            nice = wanted;
        }
    }
    if let Some(wanted) = c.ioprio {
        let current = libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0);
        if current >= 0 && io_rank(wanted, nice) >= io_rank(current as u16, nice) {
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                0,
                wanted as libc::c_long,
            );
        }
    }
    if let Some(mask) = &c.affinity {
        apply_affinity(mask);
    }
    if let Some(wanted) = c.oom_score_adj {
        apply_oom_score_adj(wanted);
    }
    if let Some(policy) = c.sched_policy {
        // From the default policy down to batch or idle needs no privilege.
        let param = libc::sched_param { sched_priority: 0 };
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            policy,
            &param as *const libc::sched_param,
        );
    }
    if let Some(slack) = c.timer_slack {
        libc::prctl(libc::PR_SET_TIMERSLACK, slack as libc::c_ulong, 0, 0, 0);
    }
    if let Some((mode, nodes)) = &c.mempolicy {
        // Nodes outside the cpuset fail (EINVAL) and the default policy stays.
        libc::syscall(
            libc::SYS_set_mempolicy,
            *mode as libc::c_long,
            nodes.as_ptr(),
            (nodes.len() * 8) as libc::c_ulong,
        );
    }
    if let Some(persona) = c.personality {
        // An unknown execution domain fails (EINVAL) and the default stays.
        libc::syscall(libc::SYS_personality, persona as libc::c_long);
    }
}

/// How low an I/O priority is, given the process's nice value: realtime 0, best-effort
/// 1..=8 by level, idle 9. The unset class is best-effort at the level the nice value
/// maps to, as the kernel's schedulers treat it.
fn io_rank(ioprio: u16, nice: i32) -> u32 {
    let level = (ioprio & IOPRIO_LEVEL_MASK) as u32;
    match ioprio >> IOPRIO_CLASS_SHIFT {
        IOPRIO_CLASS_RT => 0,
        IOPRIO_CLASS_BE => 1 + level,
        IOPRIO_CLASS_NONE => 1 + ((nice.clamp(-20, 19) + 20) / 5) as u32,
        _ => 9,
    }
}

/// The caller's CPUs among those the process may use already (the broker's, narrowed by
/// the context's cpuset): never a CPU the broker's placement keeps it off. An empty
/// intersection (the caller pinned to CPUs the context does not have) keeps the default:
/// the kernel would refuse the mask, and a launch that cannot run anywhere helps no one.
unsafe fn apply_affinity(caller: &[u8]) {
    let mut current = [0u8; MAX_AFFINITY];
    let n = libc::syscall(
        libc::SYS_sched_getaffinity,
        0,
        MAX_AFFINITY,
        current.as_mut_ptr(),
    );
    if n <= 0 || n as usize > MAX_AFFINITY {
        return;
    }
    let n = n as usize;
    let mut wanted = [0u8; MAX_AFFINITY];
    let mut any = false;
    for i in 0..n {
        wanted[i] = current[i] & caller.get(i).copied().unwrap_or(0);
        any |= wanted[i] != 0;
    }
    if any && wanted[..n] != current[..n] {
        // A cpuset change since the read can make this fail (EINVAL); the default stays.
        libc::syscall(libc::SYS_sched_setaffinity, 0, n, wanted.as_ptr());
    }
}

/// The broker's own `oom_score_adj`, which every spawn child starts with.
pub fn broker_oom_score_adj() -> Option<i32> {
    let mut buf = [0u8; 16];
    let (_, n) = super::registry::read_proc_file("/proc/self/oom_score_adj", &mut buf)?;
    parse_i32(&buf[..n])
}

/// Raises `oom_score_adj` to the caller's (more killable); a lower value is a raise in
/// protection that needs CAP_SYS_RESOURCE, never the caller's to take.
unsafe fn apply_oom_score_adj(wanted: i32) {
    let path = c"/proc/self/oom_score_adj";
    let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return;
    }
    let mut buf = [0u8; 16];
    let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
    libc::close(fd);
    let current = if n > 0 {
        parse_i32(&buf[..n as usize])
    } else {
        None
    };
    if current.is_none_or(|cur| wanted <= cur) {
        return;
    }
    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    if fd >= 0 {
        let mut text = [0u8; 12];
        let len = format_i32(wanted, &mut text);
        libc::write(fd, text.as_ptr().cast(), len);
        libc::close(fd);
    }
}

/// The caller's ignored signals and signal mask. The very last step before `execve`:
/// until then the child must see every signal the broker may send it (a SIGKILL cannot be
/// blocked, but nothing of ours should depend on that alone), and the entry point reset
/// the handlers and the mask the broker's own would otherwise leave.
///
/// # Safety
/// Only in the spawn child: it changes the calling process.
pub unsafe fn apply_signals(c: &Carried) {
    let mut ignored = c.ignored;
    while ignored != 0 {
        let sig = ignored.trailing_zeros() as i32 + 1;
        ignored &= ignored - 1;
        super::spawn::raw_sigaction(sig, Some(libc::SIG_IGN));
    }
    libc::syscall(
        libc::SYS_rt_sigprocmask,
        libc::SIG_SETMASK,
        &c.blocked as *const u64,
        std::ptr::null_mut::<u64>(),
        KERNEL_SIGSET,
    );
}

fn parse_i32(s: &[u8]) -> Option<i32> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 || end > 9 {
        return None;
    }
    let v = digits[..end]
        .iter()
        .fold(0i32, |v, &b| v * 10 + (b - b'0') as i32);
    Some(if neg { -v } else { v })
}

/// Writes `v` in decimal at the start of `out`; the length.
fn format_i32(v: i32, out: &mut [u8; 12]) -> usize {
    let mut digits = [0u8; 10];
    let mut n = v.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut at = 0;
    if v < 0 {
        out[0] = b'-';
        at = 1;
    }
    for i in 0..len {
        out[at + i] = digits[len - 1 - i];
    }
    at + len
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use ctx_protocol::Rlimit;

    const NOFILE: i32 = libc::RLIMIT_NOFILE as i32;
    const CPU: i32 = libc::RLIMIT_CPU as i32;
    const INF: u64 = u64::MAX;

    #[test]
    fn an_oom_score_adj_not_above_the_brokers_is_left_to_the_child_as_it_starts() {
        let mut c = Carried::from_request(&ctx_protocol::Captured::empty().to_inherited());
        for (wanted, broker, kept) in [
            (Some(0), Some(0), None),
            (Some(-500), Some(0), None),
            (Some(300), Some(0), Some(300)),
            (Some(300), None, Some(300)),
            (None, Some(0), None),
        ] {
            c.oom_score_adj = wanted;
            c.skip_oom_score_adj_not_above(broker);
            assert_eq!(c.oom_score_adj, kept, "{wanted:?} against {broker:?}");
        }
        let text = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
        assert_eq!(broker_oom_score_adj(), text.trim().parse().ok());
    }

    fn caller(resource: i32, soft: u64, hard: u64) -> Rlimit {
        Rlimit {
            resource: resource as u32,
            soft,
            hard,
        }
    }

    fn context(resource: i32, value: u64) -> ContextRlimit {
        ContextRlimit {
            name: "x",
            resource,
            value,
        }
    }

    /// The broker: nofile 524288/524288 (raised), everything else unlimited.
    fn own(resource: i32) -> Option<(u64, u64)> {
        Some(if resource == NOFILE {
            (524_288, 524_288)
        } else {
            (INF, INF)
        })
    }

    #[test]
    fn a_caller_lowers_below_the_broker_and_the_context() {
        // `ulimit -n 64`: both limits.
        let got = child_rlimits(&[], &[caller(NOFILE, 64, 64)], 1024, own);
        assert_eq!(got, vec![(NOFILE, 64, 64)]);
        // Only the soft limit (`ulimit -Sn 100`): the hard one stays the broker's.
        let got = child_rlimits(&[], &[caller(NOFILE, 100, INF)], 1024, own);
        assert_eq!(got, vec![(NOFILE, 100, 524_288)]);
        // Under the context's ceiling.
        let got = child_rlimits(
            &[context(NOFILE, 4096)],
            &[caller(NOFILE, 64, 64)],
            1024,
            own,
        );
        assert_eq!(got, vec![(NOFILE, 64, 64)]);
        // `ulimit -t 7`.
        let got = child_rlimits(&[], &[caller(CPU, 7, 7)], 1024, own);
        assert_eq!(got, vec![(CPU, 7, 7)]);
    }

    #[test]
    fn a_caller_never_raises() {
        // Above the context's limit: the context's.
        let got = child_rlimits(
            &[context(NOFILE, 4096)],
            &[caller(NOFILE, 100_000, 100_000)],
            1024,
            own,
        );
        assert_eq!(got, vec![(NOFILE, 4096, 4096)]);
        // Above the soft limit the broker gives back (1024): nothing to set, the child
        // resets its soft limit to 1024 itself.
        let got = child_rlimits(&[], &[caller(NOFILE, 4096, 524_288)], 1024, own);
        assert_eq!(got, vec![]);
        // Above the broker's hard limit: only the soft one is lowered (to the 1024 the
        // broker gives back anyway), so nothing to set.
        let got = child_rlimits(&[], &[caller(NOFILE, 2048, INF)], 1024, own);
        assert_eq!(got, vec![]);
        // Soft above hard (a hand-made request): soft is capped by hard.
        let got = child_rlimits(&[], &[caller(NOFILE, 500, 100)], 1024, own);
        assert_eq!(got, vec![(NOFILE, 100, 100)]);
    }

    #[test]
    fn unlimited_and_unknown_resources_change_nothing() {
        let got = child_rlimits(
            &[context(CPU, 60)],
            &[
                caller(CPU, INF, INF),
                caller(99, 1, 1),
                caller(NOFILE, INF, INF),
            ],
            1024,
            own,
        );
        assert_eq!(got, vec![(CPU, 60, 60)]);
        let got = child_rlimits(&[], &[], 1024, own);
        assert_eq!(got, vec![]);
    }

    #[test]
    fn io_priorities_rank() {
        let be = |l: u16| IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT | l;
        let idle = IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT;
        let rt = IOPRIO_CLASS_RT << IOPRIO_CLASS_SHIFT;
        assert!(io_rank(idle, 0) > io_rank(be(7), 0));
        assert!(io_rank(be(7), 0) > io_rank(be(0), 0));
        assert!(io_rank(be(0), 0) > io_rank(rt, 0));
        // The unset class at nice 0 is best-effort level 4; at nice 19, level 7.
        assert_eq!(io_rank(0, 0), io_rank(be(4), 0));
        assert_eq!(io_rank(0, 19), io_rank(be(7), 19));
    }

    #[test]
    fn what_a_caller_sends_is_checked() {
        let inh = Inherited {
            umask: 0o7777,
            rlimits: vec![],
            nice: Some(-40),
            affinity: Some(serde_bytes::ByteBuf::from(vec![0; MAX_AFFINITY + 1])),
            ioprio: Some(IOPRIO_CLASS_RT << IOPRIO_CLASS_SHIFT),
            oom_score_adj: Some(5000),
            blocked: u64::MAX,
            ignored: u64::MAX,
            cwd_fd: false,
            personality: Some(0x0040_0000 | 0x0004_0000 | 0x0008),
            sched_policy: Some(libc::SCHED_FIFO as u32),
            timer_slack: Some(0),
            mempolicy: Some(ctx_protocol::inherit::Mempolicy {
                mode: 1,
                nodes: serde_bytes::ByteBuf::from(vec![1; MAX_NODES + 1]),
            }),
        };
        assert_eq!(Carried::from_request(&inh).timer_slack, None);
        assert_eq!(Carried::from_request(&inh).mempolicy, None);
        let mut c = Carried::from_request(&inh);
        // A realtime policy is never taken over; batch and idle are, without the flag.
        assert_eq!(c.sched_policy, None);
        for (sent, taken) in [
            (libc::SCHED_IDLE, Some(libc::SCHED_IDLE)),
            (
                libc::SCHED_BATCH | libc::SCHED_RESET_ON_FORK,
                Some(libc::SCHED_BATCH),
            ),
            (libc::SCHED_RR, None),
            (libc::SCHED_OTHER, None),
        ] {
            let inh = Inherited {
                sched_policy: Some(sent as u32),
                ..inh.clone()
            };
            assert_eq!(Carried::from_request(&inh).sched_policy, taken, "{sent}");
        }
        // The persona keeps its domain; for another user, not the weakening flags.
        assert_eq!(c.personality, Some(0x0040_0000 | 0x0004_0000 | 0x0008));
        c.for_another_user();
        assert_eq!(c.personality, Some(0x0008));
        assert_eq!(c.umask, 0o777);
        assert_eq!(
            (c.nice, &c.affinity, c.ioprio, c.oom_score_adj),
            (None, &None, None, None)
        );
        assert_eq!(c.ignored & (1 << (libc::SIGKILL - 1)), 0);
        assert_eq!(c.ignored & (1 << (libc::SIGSTOP - 1)), 0);
        let idle = IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT;
        let c = Carried::from_request(&Inherited {
            ioprio: Some(idle),
            nice: Some(5),
            oom_score_adj: Some(-1000),
            ..inh
        });
        assert_eq!(
            (c.ioprio, c.nice, c.oom_score_adj),
            (Some(idle), Some(5), Some(-1000))
        );
    }

    #[test]
    fn decimals() {
        let mut b = [0u8; 12];
        let n = format_i32(-1000, &mut b);
        assert_eq!(&b[..n], b"-1000");
        let n = format_i32(0, &mut b);
        assert_eq!(&b[..n], b"0");
        assert_eq!(parse_i32(b"-500\n"), Some(-500));
        assert_eq!(parse_i32(b"\n"), None);
    }
}
