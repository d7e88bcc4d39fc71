//! The table of running routed processes: what `ctx ps`/`status` list, what shutdown
//! signals, and how the broker tells which context a connecting peer runs in.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::spawn::PidSlots;

#[derive(Debug, Clone)]
pub struct Running {
    pub id: u64,
    pub pid: i32,
    pub context: String,
    pub caller_pid: i32,
    pub caller_uid: u32,
    /// The context the caller ran in (none: outside every context, or in one nothing
    /// named: see `caller_in_context`).
    pub caller_context: Option<String>,
    /// Whether the caller ran in a context (see [`crate::daemon::Peer::in_a_context`]).
    pub caller_in_context: bool,
    pub argv: Vec<String>,
    pub started: Instant,
    /// The program's pidfd (the launch's own): what the broker signals it and its group
    /// through, never its pid, which a process may get once the program is reaped.
    pub pidfd: Option<Arc<OwnedFd>>,
}

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<u64, Running>,
    /// Routed pid -> (its [`Birth`], launch id): what [`Registry::context_of`] looks each
    /// ancestor up in. The birth tells the routed process from a later one that got its
    /// pid.
    by_pid: HashMap<i32, (Birth, u64)>,
    /// Launches being forked, by id: their context, a birth no process of theirs can
    /// precede (see [`floor_for_fork`]), and the pids the kernel fills in as it creates
    /// their processes (see [`PidSlots`]).
    forking: HashMap<u64, (String, Birth, Arc<PidSlots>)>,
}

/// What tells a process from every later one that gets its pid, and orders processes by
/// creation (a process is born after its parent). From Linux 6.9 the inode number of its
/// pid in pidfs, which the kernel takes from a 64-bit counter at each new pid: read from
/// a pidfd, it never waits. Before, the start time in clock ticks since boot from
/// `/proc/PID/stat`: ten milliseconds coarse, and that read waits as long as the process
/// is inside an exec, which closing a file of a FUSE server that never answers holds up
/// for good (helper-100). `u64::MAX`: unknown, matches nothing.
pub type Birth = u64;

/// Where this kernel gives a process's [`Birth`] from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BirthClock {
    Pidfs,
    StartTicks,
}

/// The [`BirthClock`] of this kernel, asked once: pidfds are pidfs files from 6.9 on.
pub fn birth_clock() -> BirthClock {
    static CLOCK: std::sync::OnceLock<BirthClock> = std::sync::OnceLock::new();
    /// `PID_FS_MAGIC`.
    const PIDFS_MAGIC: i64 = 0x5049_4446;
    *CLOCK.get_or_init(|| {
        let Ok(own) = super::peer::pidfd_open(std::process::id() as i32) else {
            return BirthClock::StartTicks;
        };
        // SAFETY: statfs is plain data that fstatfs fills.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: our own descriptor and a struct of the right type.
        let rc = unsafe { libc::fstatfs(own.as_raw_fd(), &mut st) };
        // And `PIDFD_THREAD`, of the same release: a kernel that refuses it (an older one,
        // or the tests' emulation of one, `CTX_TEST_KERNEL`) is asked as before 6.9.
        if rc == 0 && st.f_type as i64 == PIDFS_MAGIC && super::peer::pidfds_of_threads() {
            BirthClock::Pidfs
        } else {
            BirthClock::StartTicks
        }
    })
}

/// The birth of the process behind `pidfd`, where the pidfd tells it (pidfs).
pub fn birth_of(pidfd: &impl AsRawFd) -> Option<Birth> {
    if birth_clock() != BirthClock::Pidfs {
        return None;
    }
    // SAFETY: stat is plain data that fstat fills; a valid descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::fstat(pidfd.as_raw_fd(), &mut st) };
    (rc == 0).then_some(st.st_ino)
}

/// The birth of a child the broker just forked (behind `pidfd`), without /proc when it
/// can: from its pidfd, or from the clock around the fork.
pub fn birth_of_child(pidfd: &impl AsRawFd, bracket: &StartBracket) -> Option<Birth> {
    match birth_clock() {
        BirthClock::Pidfs => birth_of(pidfd),
        BirthClock::StartTicks => bracket.ticks(),
    }
}

/// A birth that no process a launch is about to fork can precede: `caller`'s (the
/// connecting process, born before its request), or on start times the clock at
/// `started`, before the fork, less two ticks for the rounding of both clocks.
pub fn floor_for_fork(started: Instant, caller: Option<Birth>) -> Birth {
    match birth_clock() {
        BirthClock::Pidfs => caller.unwrap_or(0),
        BirthClock::StartTicks => boot_ticks_at(started).saturating_sub(2),
    }
}

/// What the kernel says of a process, read in one go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcIdentity {
    pub ppid: i32,
    pub birth: Birth,
    pub euid: u32,
}

impl Registry {
    /// `r.started` must be taken before the process was forked: it bounds the process's
    /// start time from below, which is what lets [`Registry::context_of`] stop early.
    /// The process must not have been reaped yet (so that its pid is still its own).
    pub fn insert(&self, r: Running) {
        self.insert_started(r, None);
    }

    /// As [`Registry::insert`], with the process's birth when the caller knows it
    /// ([`birth_of_child`]): it is then not read here. On start times that read comes
    /// right after the fork, when the program is still in its exec, which holds up a read
    /// of its /proc/PID/stat (tens of microseconds of the launch's critical path).
    pub fn insert_started(&self, r: Running, birth: Option<Birth>) {
        // Unreadable only if it is gone already: then no walk may ever match it.
        let birth = birth.unwrap_or_else(|| parent_and_birth(r.pid).map_or(u64::MAX, |(_, b)| b));
        let mut g = self.lock();
        g.forking.remove(&r.id);
        g.by_pid.insert(r.pid, (birth, r.id));
        g.by_id.insert(r.id, r);
    }

    /// A launch of `context` about to be forked: gives the slots its fork fills in, which
    /// place its processes until [`Registry::insert`] (or [`Registry::remove`]) of `id`.
    /// No process of the launch is born before `floor` (see [`floor_for_fork`]).
    pub fn forking(&self, id: u64, context: &str, floor: Birth) -> Arc<PidSlots> {
        let slots = Arc::new(PidSlots::default());
        self.lock()
            .forking
            .insert(id, (context.to_string(), floor, slots.clone()));
        slots
    }

    pub fn remove(&self, id: u64) {
        let mut g = self.lock();
        g.forking.remove(&id);
        if let Some(r) = g.by_id.remove(&id) {
            if g.by_pid.get(&r.pid).map(|e| e.1) == Some(id) {
                g.by_pid.remove(&r.pid);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> Vec<Running> {
        self.lock().by_id.values().cloned().collect()
    }

    /// The entries `keep` takes, copied: a caller that may see few copies only those.
    pub fn snapshot_of(&self, keep: impl Fn(&Running) -> bool) -> Vec<Running> {
        self.lock()
            .by_id
            .values()
            .filter(|r| keep(r))
            .cloned()
            .collect()
    }

    /// The context of the routed process `pid` is, or descends from (following parent
    /// pids), if any. `ppid` and `birth` are what the kernel said of `pid` while the
    /// caller knew `pid` to be the process it means (see [`super::peer`]).
    ///
    /// Each step up is pinned: the parent's birth is read, then the child is read again;
    /// if the child still names that parent, the parent read was the child's own (a reused
    /// pid cannot become the parent of a process that already exists), and a registry
    /// entry counts only with the birth it was registered with.
    ///
    /// A process is born after its parent, so once the walk reaches a process born before
    /// the oldest running routed process, no ancestor further up can be one: the walk
    /// stops there instead of climbing to init. That bounds a connection's /proc reads
    /// to the generations born since the oldest routed launch (one or two for a
    /// long-running agent), not the depth of the whole process tree.
    pub fn context_of(&self, pid: i32, ppid: i32, birth: Birth) -> Option<String> {
        let id = self.launch_of(pid, ppid, birth)?;
        let g = self.lock();
        match g.by_id.get(&id) {
            Some(r) => Some(r.context.clone()),
            None => g.forking.get(&id).map(|f| f.0.clone()),
        }
    }

    /// The id of the launch whose routed process `pid` is, or descends from: the walk
    /// [`Registry::context_of`] describes.
    pub fn launch_of(&self, pid: i32, ppid: i32, birth: Birth) -> Option<u64> {
        let floor = {
            let g = self.lock();
            let forking = g.forking.values().map(|f| f.1);
            let running = g.by_pid.values().map(|e| e.0).filter(|&b| b != u64::MAX);
            running.chain(forking).min()?
        };
        let (mut cur, mut cur_parent, mut cur_start) = (pid, ppid, birth);
        for _ in 0..128 {
            if cur <= 1 {
                return None;
            }
            let slot = {
                let g = self.lock();
                if let Some(&(_, id)) = g.by_pid.get(&cur).filter(|(s, _)| *s == cur_start) {
                    return Some(id);
                }
                g.forking
                    .iter()
                    .find(|(_, f)| f.2.holds(cur))
                    .map(|(&id, f)| (id, f.2.clone()))
            };
            // A slot holds the pid of an unreaped child of ours (see `PidSlots`), but the
            // walk read `cur` before: the process it means may have exited since, its pid
            // gone to the launch's clone. The birth read now is the slot's process's,
            // which names the walk's process only if it is that one.
            if let Some((id, slots)) = slot {
                let now = parent_and_birth(cur).map(|(_, s)| s);
                if now == Some(cur_start) && slots.holds(cur) {
                    return Some(id);
                }
            }
            if cur_start < floor {
                return None;
            }
            let (grandparent, parent_start) = parent_and_birth(cur_parent)?;
            // Still the same process, still the child of the same parent: the parent read
            // above was that parent's.
            if parent_and_birth(cur) != Some((cur_parent, cur_start)) || parent_start > cur_start {
                return None;
            }
            (cur, cur_parent, cur_start) = (cur_parent, grandparent, parent_start);
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Parent, birth and effective uid of whatever process holds `pid` now.
pub fn proc_identity(pid: i32) -> Option<ProcIdentity> {
    if birth_clock() == BirthClock::Pidfs {
        return identity_of(&super::peer::pidfd_open(pid).ok()?, pid);
    }
    let (ppid, birth) = parent_and_birth(pid)?;
    let euid = status_field(pid, "Uid:", 1)?;
    // Read again: the stat and the status were of one process.
    (parent_and_birth(pid)? == (ppid, birth)).then_some(ProcIdentity { ppid, birth, euid })
}

/// Parent, birth and effective uid of the process behind `pidfd` (whose pid is `pid`):
/// on pidfs from the pidfd itself, where nothing waits for the process (helper-100).
/// Describes that process if it is alive after the call (see `peer::alive`).
pub fn identity_of(pidfd: &impl AsRawFd, pid: i32) -> Option<ProcIdentity> {
    let birth = match birth_clock() {
        BirthClock::StartTicks => return proc_identity(pid),
        BirthClock::Pidfs => birth_of(pidfd)?,
    };
    use ctx_protocol::pidfs::{info, PIDFD_INFO_CREDS, PIDFD_INFO_PID};
    static ASKS_PIDFDS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // Asked of this process: another's answers nothing once it is reaped.
    let asks_pidfds = *ASKS_PIDFDS.get_or_init(|| {
        super::peer::pidfd_open(std::process::id() as i32)
            .is_ok_and(|own| info(own.as_raw_fd(), 0).is_some())
    });
    if asks_pidfds {
        // `None` once the process is reaped.
        let found = info(pidfd.as_raw_fd(), PIDFD_INFO_PID | PIDFD_INFO_CREDS)?;
        return (found.mask & PIDFD_INFO_CREDS != 0).then_some(ProcIdentity {
            ppid: found.ppid as i32,
            birth,
            euid: found.euid,
        });
    }
    // 6.9 to 6.12: no PIDFD_GET_INFO, but `status`, unlike `stat`, never waits for an exec.
    let found = ProcIdentity {
        ppid: status_field(pid, "PPid:", 0)?,
        birth,
        euid: status_field(pid, "Uid:", 1)?,
    };
    // Read by pid: the pidfd's process's only if it still holds that pid.
    super::peer::alive(pidfd).then_some(found)
}

/// The effective uid of whatever process holds `pid` now, from `/proc/PID/status`, which
/// never waits for an exec.
pub fn euid_of(pid: i32) -> Option<u32> {
    status_field(pid, "Uid:", 1)
}

/// Field `nth` of the `/proc/PID/status` line starting with `key`.
fn status_field<T: std::str::FromStr>(pid: i32, key: &str, nth: usize) -> Option<T> {
    let mut buf = [0u8; 2048];
    let (_, n) = read_proc_file(&format!("/proc/{pid}/status"), &mut buf)?;
    // As bytes: the name on the first line may be anything a process called itself.
    let line = buf[..n]
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(key.as_bytes()))?;
    std::str::from_utf8(line)
        .ok()?
        .split_ascii_whitespace()
        .nth(nth)?
        .parse()
        .ok()
}

/// The parent pid of whatever process holds `pid` now.
pub fn parent_pid(pid: i32) -> Option<i32> {
    parent_and_birth(pid).map(|(ppid, _)| ppid)
}

/// Parent pid and [`Birth`] of whatever process holds `pid` now: this runs for every
/// connection while launches are running, for the peer and each ancestor it climbs.
pub fn parent_and_birth(pid: i32) -> Option<(i32, Birth)> {
    match birth_clock() {
        BirthClock::Pidfs => {
            let pidfd = super::peer::pidfd_open(pid).ok()?;
            identity_of(&pidfd, pid).map(|i| (i.ppid, i.birth))
        }
        BirthClock::StartTicks => parent_and_start_ticks(pid),
    }
}

/// Parent pid and start time (clock ticks since boot) from `/proc/PID/stat`, read into a
/// stack buffer.
pub fn parent_and_start_ticks(pid: i32) -> Option<(i32, u64)> {
    let mut buf = [0u8; 1024];
    let (_, n) = read_proc_file(&format!("/proc/{pid}/stat"), &mut buf)?;
    parse_stat(&buf[..n])
}

/// Reads the /proc file at `path` into `buf` until its end or until `buf` is full: the
/// open file (to read the rest from, when full) and the bytes read. A /proc file reports
/// no size, and std's whole-file reads would ask for it, then read in growing probes from
/// 32 bytes, a system call each: these run for every connection. Only for paths the
/// broker builds under /proc from a pid (procfs: nothing on them a context can write).
/// The process (thread group) thread `tid` belongs to, from the head of its
/// `/proc/TID/status` (where `Tgid:` is the fourth line).
pub fn thread_group(tid: i32) -> Option<i32> {
    let mut buf = [0u8; 512];
    let (_, n) = read_proc_file(&format!("/proc/{tid}/status"), &mut buf)?;
    // As bytes: the name on the first line may be anything a process called itself.
    let text = buf.get(..n)?;
    let at = text.windows(6).position(|w| w == b"\nTgid:")? + 6;
    let line = text[at..].split(|&b| b == b'\n').next()?;
    std::str::from_utf8(line).ok()?.trim().parse().ok()
}

pub fn read_proc_file(path: &str, buf: &mut [u8]) -> Option<(std::fs::File, usize)> {
    let mut f = std::fs::File::open(path).ok()?;
    let n = fill(&mut f, buf)?;
    Some((f, n))
}

/// Reads `from` into `buf` until its end or until `buf` is full; the bytes read.
pub fn fill(from: &mut impl std::io::Read, buf: &mut [u8]) -> Option<usize> {
    let mut n = 0;
    while n < buf.len() {
        match from.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(n)
}

/// `(ppid, starttime)`: fields 4 and 22 of `/proc/PID/stat`.
fn parse_stat(stat: &[u8]) -> Option<(i32, u64)> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    // Fields 5..=21 lie between ppid and starttime.
    let start = fields.nth(17)?.parse().ok()?;
    Some((ppid, start))
}

/// `at` (a monotonic instant in the past) as clock ticks since boot, the unit and clock
/// (CLOCK_BOOTTIME) of /proc/PID/stat's start time.
fn boot_ticks_at(at: Instant) -> u64 {
    ticks(boot_time().saturating_sub(at.elapsed()))
}

fn boot_time() -> std::time::Duration {
    // SAFETY: timespec is plain data that clock_gettime fills.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A time since boot in clock ticks, rounded down as the kernel rounds a start time.
fn ticks(since_boot: std::time::Duration) -> u64 {
    // SAFETY: plain getter.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u128;
    (since_boot.as_nanos() * hz / 1_000_000_000) as u64
}

/// The clock ticks since boot before and after a fork: the kernel stamps the processes
/// the fork creates between the two (CLOCK_BOOTTIME, in the clock tick /proc/PID/stat
/// shows), so when both fall in one tick, that tick is their start time.
pub struct StartBracket(u64);

impl StartBracket {
    pub fn before() -> StartBracket {
        StartBracket(ticks(boot_time()))
    }

    /// The start time of a process created since [`StartBracket::before`], if the
    /// interval did not cross a tick (then /proc must say).
    pub fn ticks(&self) -> Option<u64> {
        (ticks(boot_time()) == self.0).then_some(self.0)
    }
}

/// `argv` cut to `room` bytes, the last argument kept ending in `…`.
pub fn cut_argv(argv: Vec<String>, mut room: usize) -> Vec<String> {
    let mut kept = Vec::new();
    for mut a in argv {
        if room == 0 {
            break;
        }
        if a.len() + 1 > room {
            let mut end = room.saturating_sub(1).min(a.len());
            while !a.is_char_boundary(end) {
                end -= 1;
            }
            a.truncate(end);
            a.push('…');
            kept.push(a);
            break;
        }
        room -= a.len() + 1;
        kept.push(a);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_of_self() {
        let me = std::process::id() as i32;
        let expected = nix::unistd::getppid().as_raw();
        assert_eq!(super::parent_pid(me), Some(expected));
    }

    #[test]
    fn start_times_are_comparable_with_the_boot_clock() {
        let me = std::process::id() as i32;
        let (_, start) = parent_and_start_ticks(me).unwrap();
        // This process started before now and after boot.
        let now = boot_ticks_at(Instant::now());
        assert!(start <= now + 1, "{start} > {now}");
        assert!(start > 0);
    }

    /// From 6.9 a birth is never read from `/proc/PID/stat` (which waits out a stuck
    /// exec), and a child is born after its parent.
    #[test]
    fn births_come_from_pidfds_where_the_kernel_has_pidfs() {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next().unwrap().parse().unwrap();
        let minor: u32 = parts.next().unwrap().parse().unwrap();
        if (major, minor) >= (6, 9) {
            assert_eq!(birth_clock(), BirthClock::Pidfs, "kernel {release}");
        }
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let (_, mine) = parent_and_birth(me).unwrap();
        let (parent, theirs) = parent_and_birth(child.id() as i32).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(parent, me);
        assert!(
            theirs >= mine,
            "a child born before its parent: {theirs} < {mine}"
        );
        if birth_clock() == BirthClock::Pidfs {
            assert!(theirs > mine);
        }
    }

    #[test]
    fn stat_with_parens_in_the_name() {
        let stat = b"42 (a (b) c) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 1000 1";
        assert_eq!(parse_stat(stat), Some((7, 12345)));
    }

    /// A registered routed program, with no caller to speak of.
    fn program(id: u64, pid: i32, context: impl Into<String>, started: Instant) -> Running {
        Running {
            id,
            pid,
            context: context.into(),
            caller_pid: 0,
            caller_uid: 0,
            caller_context: None,
            caller_in_context: false,
            argv: vec![],
            started,
            pidfd: None,
        }
    }

    /// A start time taken from the clock around a fork is the one /proc shows.
    #[test]
    fn a_bracketed_start_time_is_the_one_proc_shows() {
        let mut known = 0;
        for _ in 0..50 {
            let bracket = StartBracket::before();
            let mut child = std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .unwrap();
            let from_clock = bracket.ticks();
            let from_proc = parent_and_start_ticks(child.id() as i32).map(|(_, s)| s);
            let _ = child.kill();
            let _ = child.wait();
            if let Some(t) = from_clock {
                known += 1;
                assert_eq!(Some(t), from_proc, "bracketed start time");
            }
        }
        assert!(known > 0, "no fork fell within one clock tick");
    }

    /// The walk from what /proc says of `pid` now.
    fn context(reg: &Registry, pid: i32) -> Option<String> {
        let found = proc_identity(pid)?;
        reg.context_of(pid, found.ppid, found.birth)
    }

    #[test]
    fn walk_finds_the_context_of_a_descendant_and_stops_at_older_processes() {
        let reg = Registry::default();
        let me = std::process::id() as i32;
        assert_eq!(context(&reg, me), None, "empty registry");
        // This test process as a routed process started long ago: it and its children are
        // in the context.
        let long_ago = Instant::now()
            .checked_sub(std::time::Duration::from_secs(1))
            .unwrap_or_else(Instant::now);
        reg.insert(program(1, me, "c", long_ago));
        assert_eq!(context(&reg, me).as_deref(), Some("c"));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert_eq!(context(&reg, child.id() as i32).as_deref(), Some("c"));
        reg.remove(1);
        // A routed process registered now: this (older) process is not below it.
        reg.insert(program(2, child.id() as i32, "d", Instant::now()));
        assert_eq!(context(&reg, me), None);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Only a registered program is matched by its pid and start time: a process that
    /// got the pid of one a walk went through, in the same clock tick (10 ms), is placed
    /// by its own ancestry, never by the one that died (found by helper-92 against a
    /// cache of every process a walk went through, which let an outsider's process take
    /// a dead one's context). The pid is reused on purpose through `ns_last_pid`.
    #[test]
    fn a_process_that_got_a_dead_ones_pid_is_not_placed_in_its_launch() {
        use std::io::BufRead;
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to write ns_last_pid");
            return;
        }
        let (mut same_tick, mut misplaced) = (0, 0);
        for _ in 0..50 {
            let reg = Registry::default();
            let long_ago = Instant::now()
                .checked_sub(std::time::Duration::from_secs(1))
                .unwrap_or_else(Instant::now);
            // A launch's program (a shell) and a process below it (its sleep).
            let mut sh = std::process::Command::new("sh")
                .args(["-c", "sleep 5 & echo $!; wait"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufReader::new(sh.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let below: i32 = line.trim().parse().unwrap();
            reg.insert(program(1, sh.id() as i32, "c", long_ago));
            let (Some((ppid, birth)), Some((_, ticks))) =
                (parent_and_birth(below), parent_and_start_ticks(below))
            else {
                continue;
            };
            assert_eq!(reg.launch_of(below, ppid, birth), Some(1));
            // It dies and is reaped (the shell's `wait`); this process's next child gets
            // its pid.
            // SAFETY: plain syscall on the sleep this test started.
            unsafe { libc::kill(below, libc::SIGKILL) };
            let _ = sh.wait();
            if std::fs::write("/proc/sys/kernel/ns_last_pid", (below - 1).to_string()).is_err() {
                eprintln!("skipped: ns_last_pid is not writable here");
                return;
            }
            let mut other = std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .unwrap();
            let pid = other.id() as i32;
            // Same pid, same start time: what only the birth can tell apart.
            let same_start = parent_and_start_ticks(pid).is_some_and(|(_, t)| t == ticks);
            if let (Some((ppid, now)), true) = (parent_and_birth(pid), pid == below && same_start) {
                same_tick += 1;
                if reg.launch_of(pid, ppid, now).is_some() {
                    misplaced += 1;
                }
            }
            let _ = other.kill();
            let _ = other.wait();
        }
        eprintln!("{same_tick} of 50 tries reused the pid in the same tick");
        assert_eq!(misplaced, 0, "placed in a dead process's launch");
        assert!(
            same_tick > 0,
            "never reused a pid in the same tick: nothing was tried"
        );
    }

    #[test]
    fn a_thread_is_placed_by_its_process() {
        let me = std::process::id() as i32;
        assert_eq!(thread_group(me), Some(me));
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // SAFETY: plain getter.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = done.recv();
        });
        let tid = rx.recv().unwrap();
        assert_ne!(tid, me);
        assert_eq!(thread_group(tid), Some(me));
        assert_eq!(
            crate::daemon::peer::process_of_thread(tid).map(|p| p.1),
            Some(me)
        );
        drop(done_tx);
        t.join().unwrap();
    }

    /// A `sleep` child, its pid, and an instant before it started.
    fn sleeper() -> (std::process::Child, i32, Instant) {
        let long_ago = Instant::now()
            .checked_sub(std::time::Duration::from_secs(1))
            .unwrap_or_else(Instant::now);
        let child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        (child, pid, long_ago)
    }

    #[test]
    fn an_entry_counts_only_with_the_birth_it_was_registered_with() {
        let reg = Registry::default();
        let (mut child, pid, long_ago) = sleeper();
        reg.insert(program(1, pid, "c", long_ago));
        let found = proc_identity(pid).unwrap();
        assert_eq!(
            reg.context_of(pid, found.ppid, found.birth).as_deref(),
            Some("c")
        );
        // The same pid with another start time: a later process that reused it.
        assert_eq!(reg.context_of(pid, found.ppid, found.birth + 1), None);
        // A parent link that /proc no longer confirms.
        let me = std::process::id() as i32;
        let mine = proc_identity(me).unwrap();
        assert_eq!(reg.context_of(me, pid, mine.birth), None);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// A slot holds the pid of a process of the launch being forked, but the walk may mean
    /// an earlier process that had the pid: one whose pid it read before that process
    /// exited and the launch's clone got the pid (a connecting peer once its liveness was
    /// checked, or an ancestor read a step before). Only the slot's own process, by its
    /// start time, is placed.
    #[test]
    fn a_slot_places_only_the_process_that_holds_its_pid() {
        let reg = Registry::default();
        let (mut child, pid, long_ago) = sleeper();
        let slots = reg.forking(1, "c", floor_for_fork(long_ago, None));
        slots.first.store(pid, std::sync::atomic::Ordering::Release);
        let found = proc_identity(pid).unwrap();
        assert_eq!(
            reg.context_of(pid, found.ppid, found.birth).as_deref(),
            Some("c")
        );
        // The same pid with another start time: the process that had it before.
        assert_eq!(reg.context_of(pid, found.ppid, found.birth + 1), None);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The fork of a launch returns only once its program has exec'd; the program's own
    /// children connecting before that are placed by the pid the kernel wrote at the
    /// clone. A real spawn fills the slot, and a child of the spawned program is placed in
    /// its context before anything is registered.
    #[test]
    fn a_launch_being_forked_places_its_program_s_children_by_the_kernel_s_pid() {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

        let reg = Registry::default();
        let started = Instant::now();
        let slots = reg.forking(7, "c", floor_for_fork(started, None));
        let mut pipe = [0; 2];
        // SAFETY: pipe2 fills the array.
        assert_eq!(
            unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) },
            0
        );
        // SAFETY: just created, owned here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
        // A program that starts a child and prints the child's pid.
        let mut plan = crate::daemon::spawn::testing::test_plan(
            &["/bin/sh", "-c", "sleep 5 & echo $!; exec sleep 5"],
            vec![(w.as_raw_fd(), 1)],
        );
        plan.pid_slots = Some(slots.clone());
        let forked = crate::daemon::spawn::fork_exec(&plan).unwrap();
        drop(w);
        assert_eq!(
            slots.first.load(std::sync::atomic::Ordering::Acquire),
            forked.pid,
            "the clone wrote the child's pid"
        );
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(std::fs::File::from(r)),
            &mut line,
        )
        .unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        assert_eq!(context(&reg, grandchild).as_deref(), Some("c"));
        assert_eq!(context(&reg, forked.pid).as_deref(), Some("c"));
        reg.remove(7);
        assert_eq!(context(&reg, grandchild), None, "no longer being forked");
        // SAFETY: plain syscalls on our own child and its child.
        unsafe {
            libc::kill(grandchild, libc::SIGKILL);
            libc::kill(forked.pid, libc::SIGKILL);
        }
        crate::daemon::spawn::testing::wait_end(&forked);
    }
}
