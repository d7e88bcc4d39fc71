//! The parent-signal filter the broker's runtime threads and the filtered forking lane's
//! starter (`spawn::forker`, whose threads share it) install once each, at their start,
//! and every child those threads clone inherits: a launch whose only supervision is the
//! relay of its signals to its parent then compiles, installs, hands over and frees no
//! filter of its own (the largest single cost of a routed launch, measured in the
//! README). Each thread's listener joins the guard's set for the broker's lifetime, and a
//! notification is mapped to its launch by the registry's walk up the process tree.
//!
//! A launch that needs a listener of its own (`enforce`, whose execs are checked: the
//! kernel allows one listener per filter chain) or none at all (its own PID namespace,
//! scoped signals) is forked from a forking thread without the filter.
//!
//! The filter also sees the broker's own threads: a call of theirs that names the broker
//! (`abort` raising SIGABRT) goes on as if unfiltered. The guard's thread is started from
//! the forking threads' spawner, which has none, so that it never waits on itself.

use std::cell::Cell;
use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::parent::relay_to_parent;
use super::{lock, Listeners, ParentSignals, Verdict};
use crate::daemon::kernel::seccomp;
use crate::daemon::registry::{birth_clock, BirthClock};

/// What maps a notifying process to the id of the launch it belongs to (the registry's
/// walk); `None`: no running launch.
pub type LaunchOf = Box<dyn Fn(libc::pid_t) -> Option<u64> + Send + Sync>;

/// The launches whose relay the inherited filters serve, by launch id.
#[derive(Default)]
pub struct Relays {
    by_launch: Mutex<HashMap<u64, ParentSignals>>,
    launch_of: OnceLock<LaunchOf>,
    /// Where each process that signalled was placed, by its pidfs inode.
    placed: Mutex<HashMap<u64, Placed>>,
    /// Before 6.9, where a birth is read from `/proc/PID/stat`, which waits while the
    /// process is in an exec: where recent processes were placed, by pid, each with its
    /// pidfd, which while that process lives says the pid is still its own. Asked on the
    /// guard thread without reading /proc; a process not found here is placed on an asking
    /// thread (see `watch`).
    held: Mutex<HashMap<libc::pid_t, (OwnedFd, Placed)>>,
}

/// Entries of [`Relays::held`] (each a descriptor) before it is emptied.
const HELD_MAX: usize = 256;

/// Where a process that signalled the broker's pid belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    Launch(u64),
    /// In a PID namespace of its own, where the number is another process's.
    ForeignPids,
    Nowhere,
}

/// Entries of [`Relays::placed`] before it is emptied.
const PLACED_MAX: usize = 1 << 16;

impl Relays {
    /// Where thread `tid`'s process belongs (a notification names the thread that called:
    /// a Go program's or a JVM's signal comes from any of its threads). Kept by the
    /// process's pidfs inode (its `registry::Birth`), which no other process ever gets:
    /// every later call of that process, from any thread, is placed without reading /proc,
    /// so a flood of them costs the other launches waiting behind it a few system calls
    /// each.
    fn place(&self, tid: libc::pid_t) -> Placed {
        let (pidfd, pid) = match crate::daemon::peer::process_of_thread(tid) {
            Some((fd, pid)) => (Some(fd), pid),
            // The thread may be gone, its pid taken by the thread that exec'd: the
            // process's pidfd all the same, asked of whatever leads it now.
            None => match crate::daemon::registry::thread_group(tid) {
                Some(pid) => (crate::daemon::peer::pidfd_open(pid).ok(), pid),
                None => return Placed::Nowhere,
            },
        };
        let key = pidfd.as_ref().and_then(crate::daemon::registry::birth_of);
        if let Some(placed) = key.and_then(|k| lock(&self.placed).get(&k).copied()) {
            return placed;
        }
        let placed = if !same_pid_namespace(pidfd.as_ref(), pid) {
            Placed::ForeignPids
        } else {
            match self.launch_of.get().and_then(|f| f(pid)) {
                Some(id) => Placed::Launch(id),
                None => return Placed::Nowhere,
            }
        };
        if let Some(key) = key {
            let mut cache = lock(&self.placed);
            if cache.len() >= PLACED_MAX {
                cache.clear();
            }
            cache.insert(key, placed);
        }
        if let (Some(pidfd), BirthClock::StartTicks) = (pidfd, birth_clock()) {
            let mut held = lock(&self.held);
            if held.len() >= HELD_MAX {
                held.retain(|_, (pidfd, _)| crate::daemon::peer::alive(pidfd));
            }
            if held.len() >= HELD_MAX {
                held.clear();
            }
            held.insert(pid, (pidfd, placed));
        }
        placed
    }

    /// Where thread `tid`'s process was placed, if it was recently, found without reading
    /// anything that waits (see [`Relays::held`]).
    fn placed_before(&self, tid: libc::pid_t) -> Option<Placed> {
        let pid = if crate::daemon::peer::pidfd_open(tid).is_ok() {
            tid
        } else {
            crate::daemon::registry::thread_group(tid)?
        };
        let mut held = lock(&self.held);
        let (pidfd, placed) = held.get(&pid)?;
        if crate::daemon::peer::alive(pidfd) {
            return Some(*placed);
        }
        held.remove(&pid);
        None
    }
}

/// A signal call aimed at the broker's pid, decided on the guard thread if that needs no
/// read that may wait: always from 6.9, before only for a process placed recently.
pub(super) fn decide_at_once(
    listener: RawFd,
    req: &libc::seccomp_notif,
    call: seccomp::SignalCall,
    relays: &Relays,
) -> Option<Verdict> {
    if birth_clock() == BirthClock::Pidfs {
        return Some(decide(listener, req, call, relays));
    }
    let pid = req.pid as libc::pid_t;
    // SAFETY: signal 0 to a thread of our own process only checks that it exists.
    if unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), pid, 0) } == 0 {
        return Some(Verdict::Continue);
    }
    let placed = relays.placed_before(pid)?;
    Some(answer(listener, req, call, relays, placed))
}

/// One launch's entry in [`Relays`], removed when dropped (the launch ended).
pub struct InheritedRelay<'a> {
    relays: &'a Relays,
    launch: u64,
}

impl Relays {
    /// What places a notifying process in its launch (the registry's walk).
    pub fn resolve_with(&self, launch_of: LaunchOf) {
        let _ = self.launch_of.set(launch_of);
    }

    /// Serves `launch`'s relay from the inherited filters; gives `parent` back when this
    /// thread's children inherit none (the launch then installs a filter of its own).
    pub fn relay(
        &self,
        launch: u64,
        parent: ParentSignals,
    ) -> Result<InheritedRelay<'_>, ParentSignals> {
        if !here() {
            return Err(parent);
        }
        lock(&self.by_launch).insert(launch, parent);
        Ok(InheritedRelay {
            relays: self,
            launch,
        })
    }
}

impl Drop for InheritedRelay<'_> {
    fn drop(&mut self) {
        lock(&self.relays.by_launch).remove(&self.launch);
        // Its processes' pidfds go with it: a later signal of one finds no parent either
        // way.
        let ended = Placed::Launch(self.launch);
        lock(&self.relays.held).retain(|_, (_, placed)| *placed != ended);
    }
}

thread_local! {
    /// This thread installed the inherited filter.
    static FILTERED: Cell<bool> = const { Cell::new(false) };
}

/// Keys of the threads' listeners in the guard's epoll set, apart from launch tokens.
const THREAD_KEYS: u64 = 1 << 62;

enum Adoption {
    /// Listeners of threads started before the guard.
    Waiting(Vec<OwnedFd>),
    Adopted(Arc<Listeners>, u64),
    /// The guard could not start: no thread installs the filter any more.
    Refused,
}

static ADOPTION: Mutex<Adoption> = Mutex::new(Adoption::Waiting(Vec::new()));
/// The guard adopted the threads' listeners and answers them.
static ANSWERED: AtomicBool = AtomicBool::new(false);
/// The runtime's and the filtered forking threads install the filter (see [`prepare`]):
/// how many filters the broker's threads had before, someone else's (systemd's
/// `SystemCallFilter=`, a container runtime's profile).
static IN_USE: OnceLock<u32> = OnceLock::new();

/// Call once, on the main thread before the runtime's threads and `spawn::forker::start`:
/// the threads started after it (with [`on_thread_start`]) install the filter, also on
/// top of filters someone else put on the broker (its service unit's, a container's): the
/// count of those, read here, tells a thread that inherited ours from one that must
/// install it.
pub fn prepare() {
    if !super::available() {
        return;
    }
    if let Some(foreign) = filters_on_this_thread() {
        let _ = IN_USE.set(foreign);
    }
}

fn filters_on_this_thread() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp_filters:"))?
        .trim()
        .parse()
        .ok()
}

/// The runtime's `on_thread_start`, and a filtered forking thread's: installs the filter
/// on this thread. A thread that
/// cannot (a broker without `CAP_SYS_ADMIN`, one under a listener of its own already)
/// goes on without: its launches install their own.
pub fn on_thread_start() {
    let Some(&foreign) = IN_USE.get() else {
        return;
    };
    match filters_on_this_thread() {
        Some(n) if n == foreign => {}
        // Started by a thread that installed it (a runtime thread's blocking helper, a
        // filtered forking thread): its filter is this one's too. Only ours is ever added.
        Some(n) if n == foreign + 1 => {
            FILTERED.with(|f| f.set(true));
            return;
        }
        _ => return,
    }
    static FILTER: OnceLock<Vec<libc::sock_filter>> = OnceLock::new();
    let filter = FILTER
        .get_or_init(|| seccomp::supervised_filter(&[], Some(std::process::id() as libc::pid_t)));
    let mut adoption = lock(&ADOPTION);
    if matches!(*adoption, Adoption::Refused) {
        return;
    }
    // SAFETY: a valid program built above; the listener is a new descriptor of ours.
    let listener = match unsafe { seccomp::install_supervised(filter) } {
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        // EBUSY: a listener of someone else's is on the chain (a broker started in a
        // context), whose notifications would never reach the guard.
        Err(e) => {
            tracing::debug!(
                "signals to the parent: no inherited filter on this thread (errno {e})"
            );
            return;
        }
    };
    FILTERED.with(|f| f.set(true));
    match &mut *adoption {
        Adoption::Waiting(list) => list.push(listener),
        Adoption::Adopted(set, next) => {
            set.add(THREAD_KEYS + *next, listener, None);
            *next += 1;
        }
        Adoption::Refused => unreachable!("checked above"),
    }
}

/// The guard started: it answers every thread's listener from now on.
pub(super) fn adopt(set: &Arc<Listeners>) {
    let mut adoption = lock(&ADOPTION);
    let waiting = match std::mem::replace(&mut *adoption, Adoption::Refused) {
        Adoption::Waiting(list) => list,
        other => {
            *adoption = other;
            return;
        }
    };
    let n = waiting.len() as u64;
    for (i, listener) in waiting.into_iter().enumerate() {
        set.add(THREAD_KEYS + i as u64, listener, None);
    }
    *adoption = Adoption::Adopted(set.clone(), n);
    ANSWERED.store(true, Ordering::Release);
}

/// The guard cannot start, or stopped: the listeners are closed (a filtered call then
/// fails with ENOSYS instead of waiting for ever) and launches install their own filters.
pub(super) fn refuse() {
    ANSWERED.store(false, Ordering::Release);
    let was = std::mem::replace(&mut *lock(&ADOPTION), Adoption::Refused);
    if let Adoption::Adopted(set, _) = was {
        lock(&set.by_token).retain(|&key, _| key < THREAD_KEYS);
    }
}

/// This thread's children inherit a filter whose notifications the guard answers.
pub fn here() -> bool {
    FILTERED.with(Cell::get) && ANSWERED.load(Ordering::Acquire)
}

/// A signal call a process under an inherited filter aimed at the broker's pid.
pub(super) fn decide(
    listener: RawFd,
    req: &libc::seccomp_notif,
    call: seccomp::SignalCall,
    relays: &Relays,
) -> Verdict {
    let pid = req.pid as libc::pid_t;
    // A thread of the broker (`abort`): as unfiltered. Before any lock: it may hold one.
    // SAFETY: signal 0 to a thread of our own process only checks that it exists.
    if unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), pid, 0) } == 0 {
        return Verdict::Continue;
    }
    let placed = relays.place(pid);
    answer(listener, req, call, relays, placed)
}

fn answer(
    listener: RawFd,
    req: &libc::seccomp_notif,
    call: seccomp::SignalCall,
    relays: &Relays,
    placed: Placed,
) -> Verdict {
    // What was read by its number was the asking thread's only if it still waits in its
    // call.
    if !id_valid(listener, req.id) {
        return Verdict::Fail(libc::ESRCH);
    }
    let parent = match placed {
        // A PID namespace of its own cannot name the broker: the number is another
        // process's there.
        Placed::ForeignPids => return Verdict::Continue,
        Placed::Launch(id) => lock(&relays.by_launch).get(&id).cloned(),
        Placed::Nowhere => None,
    };
    match parent {
        Some(parent) => relay_to_parent(req, call, Some(&parent)),
        // Left behind by a launch that ended (only relayed launches are forked under the
        // filter), or of none: its parent is gone.
        None => Verdict::Fail(libc::ESRCH),
    }
}

/// By the pidfd where the kernel answers it (see `peer::namespace_of`): this runs on the
/// one guard thread that answers every launch.
fn same_pid_namespace(pidfd: Option<&OwnedFd>, pid: libc::pid_t) -> bool {
    use crate::daemon::peer::{namespace_of, ns_id, Namespace};
    if !crate::daemon::peer::pidfds_tell_namespaces() {
        // Before 6.11: never `/proc/PID/ns/pid` (see `in_our_pid_namespace`).
        return pidfd
            .and_then(crate::daemon::peer::in_our_pid_namespace)
            .unwrap_or(true);
    }
    static OURS: OnceLock<Option<(u64, u64)>> = OnceLock::new();
    let ours = *OURS.get_or_init(|| {
        std::fs::metadata("/proc/self/ns/pid")
            .ok()
            .map(|m| ns_id(&m))
    });
    // Gone, or unreadable: never taken for another namespace.
    match (ours, namespace_of(pidfd, pid, Namespace::Pid)) {
        (Some(ours), Some(theirs)) => ours == theirs,
        _ => true,
    }
}

fn id_valid(listener: RawFd, id: u64) -> bool {
    // SAFETY: the ioctl reads the u64 we pass.
    unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _, &id) == 0 }
}

#[cfg(test)]
mod tests {
    use super::super::NOTIF_BUF;
    use super::*;

    /// A thread installs the inherited filter, then runs `then` (on it, or in a process it
    /// forks: `then` gives the errno of its signal call); the listener's first
    /// notification is decided with `relays`; gives the verdict and `then`'s errno.
    fn decided(relays: Relays, fork: bool) -> (Verdict, i32) {
        if !super::super::available() {
            eprintln!("skipped: no seccomp user notification on this kernel");
            return (Verdict::Done, 0);
        }
        let broker = std::process::id() as libc::pid_t;
        let (tx, rx) = std::sync::mpsc::channel();
        let caller = std::thread::spawn(move || {
            let filter = seccomp::supervised_filter(&[], Some(broker));
            // SAFETY: a valid program; the listener is ours.
            let listener = unsafe { seccomp::install_supervised(&filter) }.unwrap();
            tx.send(listener).unwrap();
            // SAFETY: plain syscalls; the forked child makes only async-signal-safe calls.
            unsafe {
                if !fork {
                    return match libc::kill(broker, 0) {
                        0 => 0,
                        _ => *libc::__errno_location(),
                    };
                }
                let pid = libc::fork();
                if pid == 0 {
                    let e = match libc::kill(broker, libc::SIGWINCH) {
                        0 => 0,
                        _ => *libc::__errno_location(),
                    };
                    libc::_exit(e);
                }
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                libc::WEXITSTATUS(status)
            }
        });
        let listener = rx.recv().unwrap();
        let mut buf = [0u64; NOTIF_BUF / 8];
        // SAFETY: a zeroed buffer big enough for the kernel's `seccomp_notif` (checked by
        // `available`).
        let req = unsafe {
            assert_eq!(
                libc::ioctl(
                    listener,
                    libc::SECCOMP_IOCTL_NOTIF_RECV as _,
                    buf.as_mut_ptr()
                ),
                0
            );
            std::ptr::read(buf.as_ptr() as *const libc::seccomp_notif)
        };
        let call = seccomp::signal_call(req.data.arch, req.data.nr as u32).unwrap();
        let verdict = decide(listener, &req, call, &relays);
        super::super::watch::respond(listener, req.id, &verdict);
        let errno = caller.join().unwrap();
        // SAFETY: ours, no longer used.
        unsafe { libc::close(listener) };
        (verdict, errno)
    }

    #[test]
    fn the_brokers_own_threads_signal_it_as_if_unfiltered() {
        assert_eq!(decided(Relays::default(), false), (Verdict::Continue, 0));
    }

    #[test]
    fn a_process_of_no_running_launch_finds_no_parent() {
        let relays = Relays::default();
        relays.resolve_with(Box::new(|_| None));
        assert_eq!(
            decided(relays, true),
            (Verdict::Fail(libc::ESRCH), libc::ESRCH)
        );
    }

    #[test]
    fn a_launchs_process_has_its_signal_relayed_and_an_ended_ones_finds_no_parent() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let relays = Relays::default();
        relays.resolve_with(Box::new(|_| Some(7)));
        lock(&relays.by_launch).insert(
            7,
            ParentSignals {
                pid: std::process::id() as libc::pid_t,
                relay: tx,
            },
        );
        assert_eq!(decided(relays, true), (Verdict::Done, 0));
        assert_eq!(rx.try_recv(), Ok(libc::SIGWINCH));
        // A launch that ended (its entry is gone).
        let relays = Relays::default();
        relays.resolve_with(Box::new(|_| Some(8)));
        assert_eq!(
            decided(relays, true),
            (Verdict::Fail(libc::ESRCH), libc::ESRCH)
        );
    }
}
