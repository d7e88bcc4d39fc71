//! The threads a launch is cloned from, each with a descriptor table of its own that holds,
//! while it forks, only what that launch's child needs.
//!
//! A clone without `CLONE_FILES` copies its thread's table. Cloned from the broker's shared
//! table, every child got the descriptors other callers passed with their own launches,
//! held by the broker until their forks, and closed them at its exec: when that other
//! launch's copies were closed first, the child's close was the last one, and the release
//! of a pipe whose lock a caller holds (a splice into a full socket) waits as long as that
//! caller likes; a file on a FUSE mount whose server does not answer FLUSH blocks every
//! close of it. Any uid allowed into a context could so hold up other users' programs in
//! their exec. Here a thread brings a launch's descriptors into its own table with
//! `pidfd_getfd` (always allowed within one thread group) and closes them again before the
//! launch goes on, while the broker still holds its own copies: no close here or in the
//! child is ever the last.
//!
//! A table of one's own is made by `close_range(3, ~0, CLOSE_RANGE_UNSHARE)`, which copies
//! the table up to a multiple of 64 descriptors and then closes the range in the copy: done
//! on a thread in the shared table, those closes would be of callers' descriptors. So each
//! lane has a starter thread that leaves the shared table when the broker starts, before
//! it holds any caller's descriptor (`start` waits for it), and the lane's threads are
//! started from it: their copies hold nothing but stdio.
//!
//! Two lanes: `Filtered` threads have the parent-signal filter of their starter (see
//! `supervisor::inherited`; one listener for them all), which the launches they fork
//! inherit; `Plain` threads have none. A lane's threads are started on demand and never
//! end: a child's parent-death signal follows the thread that cloned it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{channel, sync_channel, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// Which threads a job runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Under no filter of the broker's.
    Plain,
    /// Under the inherited parent-signal filter (`supervisor::inherited::here`).
    Filtered,
}

/// The descriptors a job was given, by the broker's number and by this thread's. Closed
/// when dropped.
pub struct Imported {
    /// `(broker's, this thread's)`, by the broker's number; empty where this thread uses
    /// the broker's table.
    pairs: Vec<(RawFd, OwnedFd)>,
}

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Spawner {
    lanes: [Pool; 2],
    /// The thread in the shared table that runs [`on_spawner`]'s jobs.
    shared: Mutex<Sender<Job>>,
    /// Each lane's starter, asked for one more thread.
    starters: [Mutex<Sender<()>>; 2],
}

#[derive(Default)]
struct Pool {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    /// Jobs no thread was free for.
    jobs: VecDeque<Job>,
    /// Threads waiting for a job, the last one to go idle last.
    idle: Vec<Arc<Idle>>,
    threads: usize,
}

/// A thread of a lane waiting for a job of its own.
struct Idle {
    tid: libc::pid_t,
    thread: std::thread::Thread,
    job: Mutex<Option<Job>>,
}

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// As tokio's blocking pool: beyond this many forks held up at once in a lane, the next
/// waits.
const MAX_THREADS: usize = 512;

static SPAWNER: OnceLock<Spawner> = OnceLock::new();

thread_local! {
    /// This thread left the shared table.
    static PRIVATE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl Lane {
    /// The lane's threads' name (`ps -L`, `/proc/PID/task/TID/comm`).
    fn thread_name(self) -> &'static str {
        match self {
            Lane::Plain => "ctx-fork",
            Lane::Filtered => "ctx-fork-filter",
        }
    }

    /// Its starter's name.
    fn starter_name(self) -> &'static str {
        match self {
            Lane::Plain => "ctx-forkstart",
            Lane::Filtered => "ctx-forkstart-f",
        }
    }

    fn index(self) -> usize {
        match self {
            Lane::Plain => 0,
            Lane::Filtered => 1,
        }
    }
}

impl Imported {
    /// Brings `fds` (the broker's numbers; negative ones ignored) into this thread's table;
    /// without a table of its own, this thread uses the broker's numbers as they are.
    fn take(fds: &[RawFd]) -> io::Result<Imported> {
        let mut wanted: Vec<RawFd> = fds.iter().copied().filter(|&fd| fd >= 0).collect();
        wanted.sort_unstable();
        wanted.dedup();
        if !PRIVATE.get() {
            return Ok(Imported { pairs: Vec::new() });
        }
        // Opened for these imports only: the child must not hold a pidfd of the broker.
        let own = own_pidfd()?;
        let own = own.as_raw_fd();
        let mut pairs = Vec::with_capacity(wanted.len());
        for fd in wanted {
            // SAFETY: pidfd_getfd on our own process's pidfd; the result is a new
            // descriptor of this thread's table (close-on-exec), owned at once.
            let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, own, fd, 0u32) };
            if got < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: as above.
            pairs.push((fd, unsafe { OwnedFd::from_raw_fd(got as RawFd) }));
        }
        Ok(Imported { pairs })
    }

    /// This thread's number for the broker's descriptor `fd`; `fd` itself when this thread
    /// uses the broker's table, or for a negative one.
    pub fn get(&self, fd: RawFd) -> RawFd {
        if fd < 0 || self.pairs.is_empty() {
            return fd;
        }
        match self.pairs.binary_search_by_key(&fd, |(b, _)| *b) {
            Ok(i) => self.pairs[i].1.as_raw_fd(),
            // Not brought in: no descriptor of this table (the child's use of it fails
            // with EBADF rather than reaching another one).
            Err(_) => RawFd::MAX,
        }
    }
}

impl Pool {
    fn submit(&self, job: Job, starter: &Mutex<Sender<()>>) {
        let mut q = lock(&self.queue);
        if let Some(idle) = q.idle.pop() {
            drop(q);
            *lock(&idle.job) = Some(job);
            steer(idle.tid);
            idle.thread.unpark();
            return;
        }
        q.jobs.push_back(job);
        // One fork held up by a hung mount must not hold up the next: past the threads
        // there are, another one (up to the bound, then the job waits for a thread).
        if q.threads < MAX_THREADS {
            q.threads += 1;
            drop(q);
            let _ = lock(starter).send(());
        }
    }

    fn serve(&self) {
        // SAFETY: plain queries of this thread.
        let me = Arc::new(Idle {
            tid: unsafe { libc::gettid() },
            thread: std::thread::current(),
            job: Mutex::new(None),
        });
        let anywhere = affinity();
        loop {
            let queued = {
                let mut q = lock(&self.queue);
                let job = q.jobs.pop_front();
                if job.is_none() {
                    q.idle.push(me.clone());
                }
                job
            };
            let job = match queued {
                Some(job) => job,
                None => loop {
                    if let Some(job) = lock(&me.job).take() {
                        break job;
                    }
                    std::thread::park();
                },
            };
            // Back to every CPU before the job: what it clones inherits this mask.
            if let Some(set) = &anywhere {
                // SAFETY: sets this thread's own mask from a set it had.
                unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
            }
            job();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// Call once, on the main thread before the runtime's threads start, after
/// `supervisor::inherited::prepare`, under no filter of the broker's and before the broker
/// holds any caller's descriptor: starts the thread that runs [`on_spawner`]'s jobs and
/// each lane's starter, and waits until the starters have tables of their own. Without it
/// (a failure here, the unit tests) jobs run where they are asked for.
pub fn start() {
    let (shared, jobs) = channel::<Job>();
    let started = std::thread::Builder::new()
        .name("ctx-spawner".into())
        .spawn(move || {
            for job in jobs {
                job();
            }
        });
    if let Err(e) = started {
        tracing::warn!("cannot start the forking threads' spawner: {e}");
        return;
    }
    let (ready, left) = channel::<()>();
    let mut starters = Vec::new();
    for lane in [Lane::Plain, Lane::Filtered] {
        let (ask, asked) = channel::<()>();
        let ready = ready.clone();
        let started = std::thread::Builder::new()
            .name(lane.starter_name().into())
            .spawn(move || {
                if lane == Lane::Filtered {
                    // Its listener goes to the guard, in the shared table: installed
                    // before this thread leaves it. The lane's threads share it.
                    crate::daemon::kernel::supervisor::inherited::on_thread_start();
                }
                if let Err(e) = leave_the_shared_table() {
                    tracing::warn!(
                        "forking threads: no descriptor table of their own on this kernel \
                         ({e}): launches are forked from the shared one"
                    );
                }
                drop(ready);
                for () in asked {
                    start_thread(lane);
                }
            });
        if let Err(e) = started {
            tracing::warn!("cannot start the forking threads' starter: {e}");
            return;
        }
        starters.push(Mutex::new(ask));
    }
    drop(ready);
    // Every sender gone: both starters are out of the shared table.
    let _ = left.recv();
    let Ok(starters) = <[Mutex<Sender<()>>; 2]>::try_from(starters) else {
        return;
    };
    let _ = SPAWNER.set(Spawner {
        lanes: Default::default(),
        shared: Mutex::new(shared),
        starters,
    });
}

/// Starts a thread of `lane`, from its starter (see the module's comment).
fn start_thread(lane: Lane) {
    let Some(spawner) = SPAWNER.get() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name(lane.thread_name().into())
        .spawn(move || {
            if lane == Lane::Filtered {
                // It has its starter's filter: this only notes so.
                crate::daemon::kernel::supervisor::inherited::on_thread_start();
            }
            // A copy of its starter's table: stdio.
            match leave_the_shared_table() {
                Ok(()) => PRIVATE.set(true),
                Err(e) => tracing::warn!("forking thread: no table of its own ({e})"),
            }
            spawner.lanes[lane.index()].serve()
        });
    if let Err(e) = spawned {
        // The job that asked for it is given up unrun (its launch fails with an error)
        // rather than left waiting for a thread.
        tracing::warn!("cannot start a forking thread: {e}");
        let pool = &spawner.lanes[lane.index()];
        let job = {
            let mut q = lock(&pool.queue);
            q.threads -= 1;
            q.jobs.pop_back()
        };
        drop(job);
    }
}

/// Gives this thread a descriptor table of its own, a copy of the one it shared with
/// stdio only left open: on a thread whose table holds nothing else (see the module's
/// comment), or before the broker holds any caller's descriptor. Linux 5.9.
pub fn leave_the_shared_table() -> io::Result<()> {
    // SAFETY: changes only this thread's table.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        )
    };
    match r {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// A pidfd of this process, in this thread's table.
fn own_pidfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is a new descriptor of this thread's table.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Runs `job` on a thread of `lane` with `fds` (the broker's numbers) brought into its
/// table: the job reads them by [`Imported::get`]. They are closed there before this
/// returns, while the caller still holds its own. `None`: no thread could take it.
pub fn run<R: Send>(
    lane: Lane,
    fds: &[RawFd],
    job: impl FnOnce(&Imported) -> io::Result<R> + Send,
) -> Option<io::Result<R>> {
    let Some(spawner) = SPAWNER.get() else {
        return Some(job(&Imported { pairs: Vec::new() }));
    };
    let (tx, rx) = sync_channel::<std::thread::Result<io::Result<R>>>(1);
    let raised = super::prompt::raised();
    let work = move || {
        if raised {
            super::prompt::raise();
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if lane == Lane::Filtered && !crate::daemon::kernel::supervisor::inherited::here() {
                return Err(io::Error::other(
                    "no forking thread has the parent-signal filter",
                ));
            }
            let imported = Imported::take(fds)?;
            job(&imported)
        }));
        // Lowered only once the waiting thread has its result: lowered first, this thread
        // waited behind the program it had just started, on the CPU the exec woke it on.
        let _ = tx.send(result);
        super::prompt::lower();
    };
    let work: Box<dyn FnOnce() + Send + '_> = Box::new(work);
    // SAFETY: only the lifetime is changed. This function returns only once the job has
    // sent its result (after `job` and what it borrows are done with) or was dropped unrun
    // (the receive fails), so nothing `work` borrows is used after it returns.
    let work: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(work) };
    spawner.lanes[lane.index()].submit(work, &spawner.starters[lane.index()]);
    match rx.recv() {
        Ok(Ok(r)) => Some(r),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => None,
    }
}

/// Runs `f` on the spawner's own thread: in the shared table, under no filter of the
/// broker's (where a thread that must never wait on the filter is started from). Here,
/// without the spawner. `None`: it could not run.
pub fn on_spawner<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let Some(spawner) = SPAWNER.get() else {
        return Some(f());
    };
    let (tx, rx) = sync_channel::<R>(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    lock(&spawner.shared).send(job).ok()?;
    rx.recv().ok()
}

/// Wakes thread `tid` on this CPU: the thread that hands it a job waits for it at once,
/// and a wake-up of another, idle, CPU costs tens of microseconds on a virtual machine
/// where one on this CPU costs two. The thread widens its mask again before its job.
fn steer(tid: libc::pid_t) {
    // SAFETY: plain calls; the set is plain data filled here.
    unsafe {
        let cpu = libc::sched_getcpu();
        if cpu < 0 {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// This thread's CPU mask.
fn affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: the set is plain data the kernel fills.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// The descriptor numbers open in thread `tid`'s table.
    fn open_in(tid: libc::pid_t) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = std::fs::read_dir(format!("/proc/self/task/{tid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();
        fds
    }

    /// A job's thread holds stdio and the descriptors it was given, under numbers of its
    /// own, and none of the others the broker holds; once the job is done, not those either.
    #[test]
    fn a_forking_thread_holds_only_what_its_job_was_given() {
        start();
        let (given_r, given_w) = std::io::pipe().unwrap();
        // Held by the broker, not given: never in the job's table.
        let _other = std::io::pipe().unwrap();
        let given = given_w.as_raw_fd();
        let (seen, look) = std::sync::mpsc::channel();
        let (looked, go_on) = std::sync::mpsc::channel::<()>();
        let caller = std::thread::spawn(move || {
            run(Lane::Plain, &[given], move |imported| {
                let ours = imported.get(given);
                // Written through our copy: the broker's end of the pipe reads it.
                // SAFETY: a write of a valid buffer to a descriptor of this thread's table.
                let n = unsafe { libc::write(ours, b"x".as_ptr().cast(), 1) };
                // SAFETY: plain query of this thread.
                let _ = seen.send((unsafe { libc::gettid() }, ours, n));
                let _ = go_on.recv();
                Ok(())
            })
        });
        let (tid, ours, written) = look.recv().unwrap();
        let during = open_in(tid);
        looked.send(()).unwrap();
        caller
            .join()
            .unwrap()
            .expect("a thread took the job")
            .unwrap();
        assert_eq!(written, 1);
        let mut byte = [0u8; 1];
        std::io::Read::read_exact(&mut &given_r, &mut byte).unwrap();
        assert_eq!(&byte, b"x");
        // Stdio and the one descriptor given: not the other pipe, and no pidfd of the
        // broker (the child would copy it).
        assert_eq!(
            during,
            vec![0, 1, 2, ours],
            "the job's thread held {during:?}"
        );
        // The job's copy is closed before `run` returns.
        assert_eq!(open_in(tid), vec![0, 1, 2]);
    }

    /// A job handed over by a raised thread (see `prompt`) runs raised, as the fork it
    /// does must, and its thread is lowered once the job is done.
    #[test]
    fn a_raised_threads_job_runs_raised_and_its_thread_is_lowered_after() {
        start();
        let asker = std::thread::spawn(|| {
            super::super::prompt::raise();
            assert!(super::super::prompt::raised(), "root may raise a thread");
            let during = run(Lane::Plain, &[], |_| {
                // SAFETY: plain queries of this thread.
                Ok(unsafe { (libc::gettid(), libc::sched_getscheduler(0)) })
            });
            super::super::prompt::lower();
            during
        });
        let (tid, policy) = asker.join().unwrap().unwrap().unwrap();
        assert_eq!(policy, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK);
        // It lowers itself right after handing the result over.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let after = loop {
            // SAFETY: plain query of a thread of this process.
            let now = unsafe { libc::sched_getscheduler(tid) };
            if now == libc::SCHED_OTHER || std::time::Instant::now() > deadline {
                break now;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(
            after,
            libc::SCHED_OTHER,
            "the forking thread was left raised"
        );
    }

    /// A job of a thread without a table of its own (no spawner) uses the broker's numbers.
    #[test]
    fn without_a_table_of_its_own_a_job_gets_the_brokers_numbers() {
        let imported = Imported { pairs: Vec::new() };
        assert_eq!(imported.get(7), 7);
        assert_eq!(imported.get(-1), -1);
    }
}
