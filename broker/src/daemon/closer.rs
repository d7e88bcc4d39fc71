//! Closes what peers handed the broker, and unlinks and renames what they own, off the
//! async workers.
//!
//! Closing the last reference to a file can block: a TCP socket with `SO_LINGER` and
//! unsent data waits out its linger time, a file on a hung NFS or FUSE mount waits in its
//! flush, and closing a Unix socket releases the descriptors still queued in it, each of
//! which may be such a file. A peer chooses all of that, so nothing it sent is closed on a
//! tokio worker (two stuck closes would stall every connection, root's too): it is handed
//! here, to a pool of small threads that grows while its threads are stuck.
//!
//! Fairness: the jobs of one uid occupy at most [`THREADS_PER_UID`] threads at a time, the
//! others wait in the queue for that uid's earlier closes, so one uid's stuck closes never
//! hold back another's. Non-root jobs run on at most [`THREADS`] threads; root's (the
//! operator's, uncounted) may use [`ROOT_THREADS`] more, so its closes never queue behind
//! anyone's stall. What waits here stays charged to its uid (see `admission::Closing`), so
//! a uid whose closes are stuck is refused more connections instead of filling the queue.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::admission::{Charger, Closing};

/// Threads the jobs of non-root uids may occupy together (in the closing pool).
pub const THREADS: usize = 48;
/// Threads one uid's jobs may occupy at a time.
pub const THREADS_PER_UID: usize = 8;
/// Threads beyond a pool's share for uids, kept for the operator's jobs: only its jobs
/// run there.
pub const ROOT_THREADS: usize = 16;
/// Threads the asking pool's non-root jobs may occupy together: a uid whose processes are
/// held in an exec holds up to [`THREADS_PER_UID`] of them for good, so this is how many
/// such uids it takes to make the others wait (helper-109 filled the 48 with eight).
pub const ASKING_THREADS: usize = 128;
/// A close needs little stack; there may be many of these threads.
const STACK: usize = 64 * 1024;
/// An idle thread beyond the first leaves after this long.
const IDLE: Duration = Duration::from_secs(30);

struct Job {
    /// Run before the descriptors are closed (see [`run`]).
    work: Option<Box<dyn FnOnce() + Send>>,
    fds: Vec<OwnedFd>,
    /// The uid the descriptors came from; `None` for the operator.
    owner: Option<u32>,
    /// Given back once the descriptors are closed.
    charge: Option<Closing>,
    /// Dropped once they are closed: its receiver then knows.
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    threads: usize,
    /// Threads waiting for a job.
    waiting: usize,
    /// Threads closing the jobs of each uid now.
    busy: HashMap<u32, usize>,
    /// Threads running the jobs of non-root uids now.
    busy_uids: usize,
}

impl State {
    /// Whether a job may start now: its uid's share is not taken, and a job of a uid
    /// never takes a thread beyond the pool's share for uids (those are the operator's).
    fn eligible(&self, job: &Job, pool: &Pool) -> bool {
        job.owner.is_none_or(|uid| {
            self.busy.get(&uid).copied().unwrap_or(0) < THREADS_PER_UID
                && self.busy_uids < pool.uid_threads
        })
    }
}

/// A pool of closer threads.
struct Pool {
    state: Mutex<Option<State>>,
    wake: Condvar,
    /// Threads the jobs of non-root uids may occupy together.
    uid_threads: usize,
    name: &'static str,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Option<State>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Closes, and root's unlinks and renames in a context's directories.
static CLOSER: Pool = Pool {
    state: Mutex::new(None),
    wake: Condvar::new(),
    uid_threads: THREADS,
    name: "ctx-closer",
};

/// Reads of /proc that may wait for a process held in an exec, on kernels that leave no
/// other way (see `peer::Pinned::may_wait`): apart from the closing pool, so that what a
/// uid holds up here never delays the work done for others on that uid (an operator's
/// `ctx sh` into its context, helper-109).
static ASKER: Pool = Pool {
    state: Mutex::new(None),
    wake: Condvar::new(),
    uid_threads: ASKING_THREADS,
    name: "ctx-asker",
};

/// Closes `fds` (which came from the peer of uid `owner`, `None` for the operator) on a
/// closer thread, then drops `charge`. Never blocks on the close.
pub fn close(fds: Vec<OwnedFd>, owner: Option<u32>, charge: Option<Closing>) {
    enqueue(&CLOSER, None, fds, owner, charge, None);
}

/// Runs `f` on a closer thread, among the jobs of `owner` (`None`: the operator), and gives
/// back what it returned (`None`: it could not run). For what root does in a directory a
/// context's uid may change: the unlink of a file, or a rename over one, whose last link
/// goes frees the file's blocks in that very call, as the last close of an unlinked file
/// does, which for a large fragmented file takes seconds (helper-107).
pub async fn run<R: Send + 'static>(
    owner: Option<u32>,
    f: impl FnOnce() -> R + Send + 'static,
) -> Option<R> {
    call(&CLOSER, owner, f, false).await
}

/// Runs `f`, a read that may wait for a process held in an exec, on a thread of the asking
/// pool among the jobs of `owner` (`None`: the operator), and gives back what it returned
/// (`None`: it could not run). A job whose caller stopped waiting before it started is
/// dropped unrun, with what it holds.
pub async fn ask<R: Send + 'static>(
    owner: Option<u32>,
    f: impl FnOnce() -> R + Send + 'static,
) -> Option<R> {
    call(&ASKER, owner, f, true).await
}

/// Runs `f` on a thread of `pool` among the jobs of `owner` and gives back what it
/// returned; unrun when `unless_abandoned` and its caller stopped waiting first.
async fn call<R: Send + 'static>(
    pool: &'static Pool,
    owner: Option<u32>,
    f: impl FnOnce() -> R + Send + 'static,
    unless_abandoned: bool,
) -> Option<R> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let work: Box<dyn FnOnce() + Send> = Box::new(move || {
        if !(unless_abandoned && tx.is_closed()) {
            let _ = tx.send(f());
        }
    });
    enqueue(pool, Some(work), Vec::new(), owner, None, None);
    rx.await.ok()
}

/// Runs `f` on a thread of the asking pool among the jobs of `owner` (`None`: the
/// operator), without waiting for it: for a decision that may wait on a process (see
/// `supervisor::watch`).
pub fn ask_aside(owner: Option<u32>, f: impl FnOnce() + Send + 'static) {
    enqueue(&ASKER, Some(Box::new(f)), Vec::new(), owner, None, None);
}

fn enqueue(
    pool: &'static Pool,
    task: Option<Box<dyn FnOnce() + Send>>,
    fds: Vec<OwnedFd>,
    owner: Option<u32>,
    charge: Option<Closing>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
) {
    if fds.is_empty() && task.is_none() {
        return;
    }
    let mut guard = pool.lock();
    let state = guard.get_or_insert_with(State::default);
    let job = Job {
        work: task,
        fds,
        owner,
        charge,
        done,
    };
    let eligible = state.eligible(&job, pool);
    state.queue.push_back(job);
    if !eligible {
        // Runs once one of its uid's closes finishes, on that thread.
        return;
    }
    if state.waiting > 0 {
        pool.wake.notify_one();
        // A thread is woken per eligible job: more waiting ones than queued jobs.
        let ready = state
            .queue
            .iter()
            .filter(|j| state.eligible(j, pool))
            .count();
        if ready <= state.waiting {
            return;
        }
    }
    let cap = if owner.is_none() {
        pool.uid_threads + ROOT_THREADS
    } else {
        pool.uid_threads
    };
    if state.threads >= cap {
        return;
    }
    state.threads += 1;
    let spawned = std::thread::Builder::new()
        .name(pool.name.into())
        .stack_size(STACK)
        .spawn(move || work(pool));
    if let Err(e) = spawned {
        state.threads -= 1;
        // The job stays queued for the threads there are (or the next one spawned).
        tracing::warn!("cannot start a thread to close descriptors: {e}");
    }
}

/// Closes `fds`, sent by the peer `charger` charges (`None`: the operator), on a closer
/// thread, charged to that peer's uid until they are closed.
pub fn close_from(fds: Vec<OwnedFd>, charger: Option<&Charger>) {
    if fds.is_empty() {
        return;
    }
    let charge = charger.map(|c| c.charge(fds.len()));
    close(fds, charger.map(Charger::uid), charge);
}

/// Closes here those of `dups` whose close cannot wait, and hands the others to a closer
/// thread, charged to `charger`'s uid: duplicates a peek installed of descriptors still
/// queued in the peer's message, so that no close of them is the last one, and only a
/// flush can wait (a FUSE or network file's; a file on a FUSE mount whose server never
/// answers FLUSH blocks every close of it). Closing here what surely cannot wait keeps a
/// burst of handshakes from filling the uid's share of descriptors being closed.
pub fn close_duplicates(dups: Vec<OwnedFd>, charger: Option<&Charger>) {
    let (here, elsewhere): (Vec<OwnedFd>, Vec<OwnedFd>) = dups
        .into_iter()
        .partition(|fd| flush_cannot_wait(fd.as_raw_fd()));
    drop(here);
    close_from(elsewhere, charger);
}

/// Whether closing a duplicate of `fd` surely returns at once: an `O_PATH` descriptor (no
/// flush), a socket, a pipe or FIFO, or a character device. Anything else (a file or a
/// directory of any file system, a block device) may wait on someone else (a FUSE or
/// network file's flush), and goes to a closer thread. Told from what the kernel keeps of
/// the descriptor, with no question to its file system: `fstat` and `fstatfs` of a file
/// on a FUSE mount the caller serves with `allow_other` wait for its server's answer
/// (GETATTR, STATFS), and one unanswered hung the worker and the broker's accept loop
/// with it (helper-98); `AT_STATX_DONT_SYNC` reads the cached mode.
fn flush_cannot_wait(fd: RawFd) -> bool {
    // SAFETY: plain queries of a descriptor we own, into a struct we own; an empty path
    // with AT_EMPTY_PATH names `fd` itself.
    unsafe {
        if libc::fcntl(fd, libc::F_GETFL) & libc::O_PATH != 0 {
            return true;
        }
        let mut st: libc::statx = std::mem::zeroed();
        let r = libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
            libc::STATX_TYPE,
            &mut st,
        );
        r == 0
            && st.stx_mask & libc::STATX_TYPE != 0
            && matches!(
                u32::from(st.stx_mode) & libc::S_IFMT,
                libc::S_IFSOCK | libc::S_IFIFO | libc::S_IFCHR
            )
    }
}

/// Descriptors a peer sent, closed on a closer thread when dropped, and counted against
/// its uid until then.
pub struct PeerFds {
    fds: Vec<OwnedFd>,
    /// The uid they came from; `None` for the operator.
    owner: Option<u32>,
    charge: Option<Closing>,
}

impl PeerFds {
    /// Descriptors charged to the peer `charger` charges (`None`: the operator) from now on.
    pub fn new(fds: Vec<OwnedFd>, charger: Option<&Charger>) -> PeerFds {
        let charge = charger
            .filter(|_| !fds.is_empty())
            .map(|c| c.charge(fds.len()));
        PeerFds::charged(fds, charger.map(Charger::uid), charge)
    }

    /// Descriptors from the peer of uid `owner`, already counted by `charge`, which is
    /// given back once they are closed.
    pub fn charged(fds: Vec<OwnedFd>, owner: Option<u32>, charge: Option<Closing>) -> PeerFds {
        PeerFds { fds, owner, charge }
    }

    /// Closes them on a closer thread, as dropping them does; the receiver hears once they
    /// are closed.
    pub fn close_telling(mut self) -> tokio::sync::oneshot::Receiver<()> {
        let (done, closed) = tokio::sync::oneshot::channel();
        enqueue(
            &CLOSER,
            None,
            std::mem::take(&mut self.fds),
            self.owner,
            self.charge.take(),
            Some(done),
        );
        closed
    }
}

impl std::ops::Deref for PeerFds {
    type Target = [OwnedFd];
    fn deref(&self) -> &[OwnedFd] {
        &self.fds
    }
}

impl Drop for PeerFds {
    fn drop(&mut self) {
        // With none, the charge (if any) is given back here, at once.
        close(
            std::mem::take(&mut self.fds),
            self.owner,
            self.charge.take(),
        );
    }
}

fn work(pool: &'static Pool) {
    let mut guard = pool.lock();
    loop {
        let state = guard.get_or_insert_with(State::default);
        let next = state.queue.iter().position(|j| state.eligible(j, pool));
        if let Some(job) = next.and_then(|i| state.queue.remove(i)) {
            let owner = job.owner;
            if let Some(uid) = owner {
                *state.busy.entry(uid).or_default() += 1;
                state.busy_uids += 1;
            }
            drop(guard);
            // The work and the close that may block, and only then the charge given back.
            if let Some(work) = job.work {
                // A panic loses the result (its caller hears `None`), not this thread's count.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            }
            drop(job.fds);
            drop(job.charge);
            drop(job.done);
            guard = pool.lock();
            if let Some(uid) = owner {
                let state = guard.get_or_insert_with(State::default);
                state.busy_uids -= 1;
                if let Some(n) = state.busy.get_mut(&uid) {
                    *n -= 1;
                    if *n == 0 {
                        state.busy.remove(&uid);
                    }
                }
            }
            continue;
        }
        state.waiting += 1;
        let (g, timeout) = pool
            .wake
            .wait_timeout(guard, IDLE)
            .unwrap_or_else(|e| e.into_inner());
        guard = g;
        let state = guard.get_or_insert_with(State::default);
        state.waiting -= 1;
        if timeout.timed_out() && state.threads > 1 && state.queue.is_empty() {
            state.threads -= 1;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    use std::time::Instant;

    /// What a peek's duplicates are closed at once for, and what goes to a closer thread
    /// (a FUSE file's: `dos::a_passed_file_whose_every_close_waits_leaves_root_served`).
    #[test]
    fn only_what_no_close_can_make_wait_is_closed_at_once() {
        let (r, w) = pipe();
        let null = std::fs::File::open("/dev/null").unwrap();
        let dir = std::env::temp_dir();
        let file = tempfile_in(&dir);
        let path = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open("/")
            .unwrap();
        for (what, fd) in [
            ("pipe", r.as_raw_fd()),
            ("pipe", w.as_raw_fd()),
            ("/dev/null", null.as_raw_fd()),
            ("O_PATH", path.as_raw_fd()),
        ] {
            assert!(flush_cannot_wait(fd), "{what}");
        }
        // A file or a directory goes to a closer thread, whatever its file system: telling
        // a local one from a FUSE mount's would ask the file system (`fstatfs`).
        assert!(!flush_cannot_wait(file.as_raw_fd()), "a file");
        let dir_fd = std::fs::File::open(&dir).unwrap();
        assert!(!flush_cannot_wait(dir_fd.as_raw_fd()), "a directory");
        // A block device may flush through its driver: never closed at once.
        if let Ok(loop0) = std::fs::File::open("/dev/loop0") {
            assert!(!flush_cannot_wait(loop0.as_raw_fd()));
        }
    }

    fn tempfile_in(dir: &std::path::Path) -> std::fs::File {
        let path = dir.join(format!("ctx-closer-test-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut p = [0; 2];
        // SAFETY: pipe2 fills the array it is given.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both are new descriptors owned here.
        unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
    }

    /// Whether the reading end sees end of file, i.e. the writing end was closed.
    fn closed(read: &OwnedFd, within: Duration) -> bool {
        let until = Instant::now() + within;
        loop {
            let mut p = libc::pollfd {
                fd: read.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, 10) };
            if p.revents & libc::POLLHUP != 0 {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
        }
    }

    #[test]
    fn closes_what_it_is_given() {
        let (r, w) = pipe();
        close(vec![w], Some(4242), None);
        assert!(closed(&r, Duration::from_secs(5)));
    }

    /// A loopback TCP socket whose close blocks for `secs`: unsent data that the peer
    /// never reads, and `SO_LINGER` on.
    fn lingering(secs: i32) -> (OwnedFd, std::net::TcpStream, std::net::TcpListener) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (s, _) = listener.accept().unwrap();
        c.set_nonblocking(true).unwrap();
        while c.write(&[0u8; 65536]).is_ok() {}
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: secs,
        };
        // SAFETY: a valid socket and a linger struct of the size given.
        let rc = unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const _ as *const _,
                std::mem::size_of::<libc::linger>() as u32,
            )
        };
        assert_eq!(rc, 0);
        c.set_nonblocking(false).unwrap();
        (OwnedFd::from(c), s, listener)
    }

    #[test]
    fn one_uid_s_stuck_closes_hold_back_neither_the_caller_nor_other_uids() {
        let mut peers = Vec::new();
        let started = Instant::now();
        for _ in 0..THREADS_PER_UID + 2 {
            let (fd, s, l) = lingering(3);
            close(vec![fd], Some(7000), None);
            peers.push((s, l));
        }
        assert!(started.elapsed() < Duration::from_secs(2), "close() waited");
        let (r, w) = pipe();
        close(vec![w], Some(7001), None);
        assert!(closed(&r, Duration::from_secs(2)), "queued behind uid 7000");
        let (r, w) = pipe();
        close(vec![w], None, None);
        assert!(
            closed(&r, Duration::from_secs(2)),
            "root's queued behind uid 7000"
        );
        // The same uid's next close waits for one of its threads.
        let (r, w) = pipe();
        close(vec![w], Some(7000), None);
        assert!(!closed(&r, Duration::from_millis(500)));
        assert!(closed(&r, Duration::from_secs(10)));
    }
}
