//! Who is on the other end of a connection, pinned to the process that connected.
//!
//! `SO_PEERCRED` records a pid at `connect()`, but a pid is only a number: once that process
//! exits, another may get it, and a walk of "whatever holds that pid now" would take the
//! newcomer's context for the peer's. So the kernel's own reference to the connecting
//! process (`SO_PEERPIDFD`) is taken, everything is read first, and only then is the
//! pidfd asked whether that process still lives: if it does, its pid cannot have been
//! reused in between, so what was read was the peer's. Ancestors are pinned by their
//! birth (see [`super::registry::Registry::context_of`]).
//!
//! A file of /proc that waits for its process (`stat`, and every link: `ns/*`, `root`,
//! `cwd`, `fd/N`, `exe`) waits as long as that process is inside an exec, which a
//! close-on-exec FUSE file whose server never answers the flush holds up for good;
//! `status` and the pidfd's own answers do not (helper-100). Where the kernel leaves no
//! other way (births before 6.9, a root peer's user namespace before 6.11, the holder of
//! the connection before 6.5), [`Pinned::may_wait`] says so and the reading is done off the
//! accept loop (helper-108).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use ctx_protocol::pidfs;
use tokio::net::UnixStream;

use super::registry::{self, Registry};

/// Why the broker will not deal with a peer.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the connecting process (pid {0}) exited before its identity could be checked")]
    Gone(i32),
    #[error("the connecting process (pid {pid}) now runs as uid {now}, not uid {at_connect} as it connected")]
    UidChanged { pid: i32, at_connect: u32, now: u32 },
    #[error(
        "the process holding pid {0} does not hold the connection: the one that connected \
         exited and its pid is another's, or it let go of the connection before the broker \
         took it (before Linux 6.5 the broker cannot tell the two apart: keep the connection \
         open in the process that connects until the broker answers)"
    )]
    NotTheConnector(i32),
    #[error("the connecting process (pid {0}) could not be identified in time: it or an ancestor is held in an exec")]
    Unanswered(i32),
    #[error("peer credentials unavailable: {0}")]
    Credentials(io::Error),
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// The context the peer process runs in, when it is (a descendant of) a routed process.
    pub context: Option<String>,
    /// The context whose cgroup holds the peer when its ancestry names none (it left its
    /// launch's process tree): never a grant, but it is not the operator either.
    pub contained: Option<String>,
    /// A uid-0 peer of a root broker that holds no capability, as every process the broker
    /// starts, or is in another user namespace (where a process gets them again): in some
    /// context even when neither its ancestry nor its cgroup says which (an orphan of a
    /// uid-0 context, out of its cgroup too), so never the operator. Root under
    /// `no_new_privs` (a container's, under `no-new-privileges`) is not.
    pub confined_root: bool,
    /// The connecting process's birth (see [`registry::Birth`]), which with its pid names
    /// it for the checks after the one at connect (none when its pid is not visible here).
    /// Its pidfd is not kept: one descriptor more per connection is what a flood would
    /// make the broker hold.
    start: Option<registry::Birth>,
    /// Whose share of the asking threads a read about it that may wait takes (see
    /// [`Pinned::lane`]; only before 6.9).
    lane: Option<u32>,
}

/// The process that connected, pinned at `accept`: its pid, uid and gid as the kernel
/// recorded them at `connect()`, and a pidfd of it. Nothing is read yet that may wait for
/// the process; [`Pinned::identify`] reads the rest.
#[derive(Debug)]
pub struct Pinned {
    pid: i32,
    uid: u32,
    gid: u32,
    pidfd: Option<OwnedFd>,
    /// Before 6.5, where the pidfd is of whatever holds the peer's pid at `accept`: the
    /// inode of the connection's other end, which that process must hold.
    by_number: Option<u64>,
}

impl Pinned {
    /// Takes what the kernel recorded at `connect()` and pins its process.
    pub fn take(stream: &UnixStream) -> Result<Pinned, IdentityError> {
        let cred = stream.peer_cred().map_err(IdentityError::Credentials)?;
        let pid = cred.pid().unwrap_or(0);
        let mut pinned = Pinned {
            pid,
            uid: cred.uid(),
            gid: cred.gid(),
            pidfd: None,
            by_number: None,
        };
        if pid <= 0 {
            // In a pid namespace this broker cannot see into: only the uid and gid speak.
            return Ok(pinned);
        }
        let (pidfd, by_number) =
            peer_pidfd_how(stream.as_fd(), pid).map_err(|e| match e.raw_os_error() {
                Some(libc::ESRCH) => IdentityError::Gone(pid),
                _ => IdentityError::Credentials(e),
            })?;
        pinned.pidfd = Some(pidfd);
        if by_number {
            // Taken now, while the broker's end is surely this connection's.
            let other = super::socket_peer::other_end(stream.as_raw_fd())
                .map_err(|e| IdentityError::Credentials(io::Error::other(e)))?;
            pinned.by_number = Some(other);
        }
        Ok(pinned)
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// Whether identifying this peer may wait for its process (or an ancestor) while it is
    /// in an exec, which a FUSE file's flush holds up for good (helper-108): births from
    /// `/proc/PID/stat` before 6.9, the descriptors of a peer pinned by number before 6.5,
    /// a uid-0 peer's user namespace from `/proc` before 6.11. Such a peer is identified
    /// off the accept loop (see `server`).
    pub fn may_wait(&self) -> bool {
        if self.pidfd.is_none() {
            return false;
        }
        self.by_number.is_some()
            || registry::birth_clock() == registry::BirthClock::StartTicks
            || (self.uid == 0 && root_broker() && !pidfds_tell_namespaces() && holds_caps(self.pid))
    }

    /// Whose share of the threads that identify may wait its identification takes (see
    /// `closer::ask`): its uid's, or for root, the operator's (`None`) when it holds
    /// capabilities in a user namespace that maps all of root's ids, as the operator does
    /// and nothing the broker started can. Read without waiting for the process; it
    /// decides no grant, only whose turn it is.
    pub fn lane(&self) -> Option<u32> {
        lane_of(self.pid, self.uid)
    }

    /// Reads who the pinned process is: its uid now, its context by ancestry or cgroup,
    /// whether it is confined root. Read first, then the pidfd is asked whether that
    /// process still lives: if it does, its pid cannot have been reused in between.
    pub fn identify(self, registry: &Registry) -> Result<Peer, IdentityError> {
        let Pinned {
            pid,
            uid,
            gid,
            pidfd,
            by_number,
        } = self;
        let mut peer = Peer {
            pid,
            uid,
            gid,
            context: None,
            contained: None,
            confined_root: false,
            start: None,
            lane: Some(uid),
        };
        let Some(pidfd) = pidfd else {
            return Ok(peer);
        };
        if let Some(other) = by_number {
            // Whoever holds the pid now must hold the other end of the connection too. A
            // broker that is not root cannot read another uid's descriptors; such a peer
            // is in none of its contexts, which all run as the broker's own uid, and the
            // uid is checked below.
            let holds = super::socket_peer::holds(pid, other);
            if holds == Some(false) || (holds.is_none() && (root_broker() || uid == our_uid())) {
                return Err(IdentityError::NotTheConnector(pid));
            }
        }
        let found = registry::identity_of(&pidfd, pid);
        // Only for root, whom the operator's rights go to. Unreadable counts as confined:
        // never the operator by default.
        let confined_root = root_broker() && peer.uid == 0 && confined(&pidfd, pid);
        if !alive(&pidfd) {
            return Err(IdentityError::Gone(pid));
        }
        let Some(found) = found else {
            // Alive, yet /proc unreadable: most likely out of descriptors.
            return Err(IdentityError::Credentials(io::Error::other(format!(
                "cannot read /proc/{pid} of the connecting process: {}",
                io::Error::last_os_error()
            ))));
        };
        if found.euid != peer.uid {
            return Err(IdentityError::UidChanged {
                pid,
                at_connect: peer.uid,
                now: found.euid,
            });
        }
        peer.confined_root = confined_root;
        peer.context = registry.context_of(pid, found.ppid, found.birth);
        if peer.context.is_none() {
            peer.contained = super::kernel::cgroups::context_of_pid(pid);
        }
        peer.start = Some(found.birth);
        if registry::birth_clock() == registry::BirthClock::StartTicks {
            // The operator's `still_there` must not queue behind a uid-0 context's reads
            // (helper-109).
            peer.lane = lane_of(pid, uid);
        }
        Ok(peer)
    }
}

/// See [`Pinned::lane`].
fn lane_of(pid: i32, uid: u32) -> Option<u32> {
    if uid != 0 || !root_broker() {
        return Some(uid);
    }
    let whole_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map"))
        .is_ok_and(|map| map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]);
    if holds_caps(pid) && whole_map {
        None
    } else {
        Some(0)
    }
}

fn holds_caps(pid: i32) -> bool {
    super::spawn::capget(pid)
        .is_ok_and(|sets| sets.iter().any(|h| h.effective != 0 || h.permitted != 0))
}

fn root_broker() -> bool {
    our_uid() == 0
}

fn our_uid() -> u32 {
    // SAFETY: plain getter.
    unsafe { libc::geteuid() }
}

impl Peer {
    /// Whether the peer runs in a context, by its ancestry, its cgroup or its capabilities:
    /// anything but the operator.
    pub fn in_a_context(&self) -> bool {
        self.context.is_some() || self.contained.is_some() || self.confined_root
    }

    /// The context the peer runs in, by its ancestry or else its cgroup.
    pub fn runs_in(&self) -> Option<&str> {
        self.context.as_deref().or(self.contained.as_deref())
    }

    /// Whether the process that connected is still there (or was never visible): checked
    /// again where its identity grants something. Before 6.9 a birth is read from
    /// `/proc/PID/stat`, which waits while the process is in an exec (another thread of the
    /// peer's may exec while it waits for the answer): there it is read on an asking thread
    /// in the peer's lane, and a peer with no answer in time is not there.
    pub async fn still_there(&self) -> bool {
        let Some(start) = self.start else {
            return true;
        };
        let pid = self.pid;
        let now = move || registry::parent_and_birth(pid).is_some_and(|(_, now)| now == start);
        if registry::birth_clock() == registry::BirthClock::Pidfs {
            return now();
        }
        let asked = super::closer::ask(self.lane, now);
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(5), asked).await,
            Ok(Some(true))
        )
    }

    /// The connecting process's birth, when its pid is visible here.
    pub fn birth(&self) -> Option<registry::Birth> {
        self.start
    }
}

/// The kernel's reference to the process on the other end of `socket` (the one that
/// connected; from a client, the one that listened); on a kernel without `SO_PEERPIDFD`
/// (before 6.5), a pidfd for its pid taken now, which narrows the window to the time
/// between `connect()` and this call.
pub fn peer_pidfd(socket: BorrowedFd<'_>, pid: i32) -> io::Result<OwnedFd> {
    peer_pidfd_how(socket, pid).map(|(fd, _)| fd)
}

/// [`peer_pidfd`], and whether it was taken by number (before 6.5).
fn peer_pidfd_how(socket: BorrowedFd<'_>, pid: i32) -> io::Result<(OwnedFd, bool)> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket, and an int-sized buffer with its length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 && fd >= 0 {
        // SAFETY: the kernel just created this descriptor for us.
        return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, false));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOPROTOOPT) {
        return Err(err);
    }
    pidfd_open(pid).map(|fd| (fd, true))
}

/// A pidfd for whatever process holds `pid` now.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with an int argument.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this descriptor for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Not yet in every libc release; the value of the generic socket ABI (x86, arm, riscv).
const SO_PEERPIDFD: libc::c_int = 77;

/// `PIDFD_THREAD` is `O_EXCL`.
const PIDFD_THREAD: libc::c_int = libc::O_EXCL;

/// Whether this kernel gives a pidfd of a thread (`PIDFD_THREAD`, Linux 6.9).
pub fn pidfds_of_threads() -> bool {
    static ASKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ASKED.get_or_init(|| {
        // SAFETY: plain syscall with int arguments; the descriptor is owned at once.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::gettid(), PIDFD_THREAD) };
        if fd < 0 {
            return false;
        }
        // SAFETY: as above.
        drop(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
        true
    })
}

/// The process (thread group) of thread `tid`, as a pidfd, and its pid: asked of a pidfd
/// of the thread (`PIDFD_THREAD`, Linux 6.9) where `tid` is not the group's leader.
pub fn process_of_thread(tid: i32) -> Option<(OwnedFd, i32)> {
    // SAFETY: plain syscall with int arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid, PIDFD_THREAD) };
    if fd < 0 {
        // Before Linux 6.9: only a leader has a pidfd.
        return pidfd_open(tid).ok().map(|fd| (fd, tid));
    }
    // SAFETY: the kernel just created this descriptor for us.
    let thread = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    let tgid = pidfs::info(thread.as_raw_fd(), 0)?.tgid as i32;
    // The leader's pidfd is the process's.
    if tgid == tid {
        return Some((thread, tid));
    }
    Some((pidfd_open(tgid).ok()?, tgid))
}

/// Whether `pid` (behind `pidfd`), a uid-0 peer of a root broker, is a process the broker
/// started or a descendant: it holds no capability (the broker empties its own bounding
/// set at start, so nothing it starts can gain one), or it is in another user namespace
/// than the broker's (the only way to capabilities again, and no way back). `capget` and
/// the pidfd's namespace, not `/proc`: this runs for every launch of a root caller.
/// Anything unreadable counts as confined.
fn confined(pidfd: &OwnedFd, pid: i32) -> bool {
    let holds_none = super::spawn::capget(pid).map_or(true, |sets| {
        sets.iter().all(|h| h.effective == 0 && h.permitted == 0)
    });
    if holds_none {
        return true;
    }
    match (
        own_user_namespace(),
        namespace_of(Some(pidfd), pid, Namespace::User),
    ) {
        (Some(own), Some(theirs)) => own != theirs,
        _ => true,
    }
}

/// `(st_dev, st_ino)` of a namespace file's metadata.
pub fn ns_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// This process's user namespace, taken once.
fn own_user_namespace() -> Option<(u64, u64)> {
    static OWN: std::sync::OnceLock<Option<(u64, u64)>> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| {
        std::fs::metadata("/proc/self/ns/user")
            .ok()
            .map(|m| ns_id(&m))
    })
}

/// A namespace a pidfd can be asked for (`PIDFD_GET_*_NAMESPACE`, Linux 6.11).
#[derive(Debug, Clone, Copy)]
pub enum Namespace {
    Pid,
    User,
}

impl Namespace {
    fn request(self) -> libc::c_ulong {
        match self {
            Namespace::Pid => 0xFF05,
            Namespace::User => 0xFF09,
        }
    }

    fn proc_name(self) -> &'static str {
        match self {
            Namespace::Pid => "pid",
            Namespace::User => "user",
        }
    }
}

/// `(st_dev, st_ino)` of the `kind` namespace of the process behind `pidfd` (whose pid is
/// `pid`): from the pidfd on a kernel that answers it, else from `/proc/PID/ns/KIND`.
/// Never `/proc` where the pidfd can be asked: opening that waits as long as the process
/// is inside an exec, which a FUSE file's flush can hold up for good, and a pidfd whose
/// leader is exiting in another thread's exec answers nothing for that moment, when the
/// pid is already the exec'ing thread's (helper-101). `None`: gone or unreadable.
pub fn namespace_of(pidfd: Option<&OwnedFd>, pid: i32, kind: Namespace) -> Option<(u64, u64)> {
    if pidfds_tell_namespaces() {
        return asked_of_pidfd(pidfd?, kind);
    }
    std::fs::metadata(format!("/proc/{pid}/ns/{}", kind.proc_name()))
        .ok()
        .map(|m| ns_id(&m))
}

/// Whether this kernel answers a pidfd's namespaces (Linux 6.11).
pub fn pidfds_tell_namespaces() -> bool {
    static ASKS_PIDFDS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ASKS_PIDFDS.get_or_init(|| {
        pidfd_open(std::process::id() as i32)
            .is_ok_and(|own| asked_of_pidfd(&own, Namespace::User).is_some())
    })
}

/// Whether the process behind `pidfd` is in the broker's PID namespace, from the pidfd's
/// `NSpid:` line in the broker's own fdinfo (Linux 5.10): its pid in each namespace from
/// ours down to its own, so one number means ours, and none (`0`) one outside our tree.
/// For kernels that cannot answer `PIDFD_GET_PID_NAMESPACE`: nothing of the process's
/// own `/proc` is read, which waits while the process is in an exec (helper-101's hold,
/// found again on an emulated 6.1 kernel). `None`: gone, or unreadable.
pub fn in_our_pid_namespace(pidfd: &OwnedFd) -> Option<bool> {
    let numbers: Vec<i64> = pidfd_info_line(pidfd, "NSpid:")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match numbers.first() {
        None | Some(-1) => None,
        Some(0) => Some(false),
        Some(_) => Some(numbers.len() == 1),
    }
}

/// What follows `key` on its line of the pidfd's fdinfo (`/proc/self/fdinfo/FD`, the
/// broker's own: nothing of the process's `/proc` is read).
pub fn pidfd_info_line(pidfd: &OwnedFd, key: &str) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::to_string)
}

fn asked_of_pidfd(pidfd: &OwnedFd, kind: Namespace) -> Option<(u64, u64)> {
    // SAFETY: an ioctl without argument on our own pidfd; it returns a new descriptor.
    let ns = unsafe { libc::ioctl(pidfd.as_raw_fd(), kind.request(), 0) };
    if ns < 0 {
        return None;
    }
    // SAFETY: the kernel just gave us this descriptor, owned here from now on.
    let ns = unsafe { OwnedFd::from_raw_fd(ns) };
    std::fs::File::from(ns).metadata().ok().map(|m| ns_id(&m))
}

/// Whether the process behind `pidfd` has not been reaped (a zombie still holds its pid).
/// EPERM (an unprivileged broker asking about another uid's process) also means it is
/// there.
pub fn alive(pidfd: &impl AsRawFd) -> bool {
    // Signal 0 only checks.
    matches!(pidfd_signal(pidfd, 0, 0), Ok(()) | Err(libc::EPERM))
}

/// `pidfd_send_signal(pidfd, signo, NULL, flags)`; the errno on failure.
pub fn pidfd_signal(pidfd: &impl AsRawFd, signo: i32, flags: libc::c_uint) -> Result<(), i32> {
    // SAFETY: plain syscall on a pidfd the caller holds; no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signo,
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process in a user namespace of its own ends and is reaped; a process of the
    /// broker's own user namespace gets its pid (reused on purpose through
    /// `ns_last_pid`). Asked of the first one's pidfd, its namespace is unknown, never the
    /// second one's: by `/proc/PID/ns/user` a uid-0 peer that had exited would have been
    /// taken for one outside every user namespace, the operator.
    #[test]
    fn a_dead_process_namespace_is_never_read_from_the_process_that_got_its_pid() {
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to write ns_last_pid");
            return;
        }
        let ours = std::fs::metadata("/proc/self/ns/user")
            .map(|m| ns_id(&m))
            .unwrap();
        let mut reused = 0;
        for _ in 0..20 {
            let mut confined = std::process::Command::new("unshare")
                .args(["--user", "--map-root-user", "sleep", "30"])
                .spawn()
                .unwrap();
            let pid = confined.id() as i32;
            let pidfd = pidfd_open(pid).unwrap();
            // Wait until it is in its namespace (unshare execs sleep after entering it).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while namespace_of(Some(&pidfd), pid, Namespace::User) == Some(ours) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never left our namespace"
                );
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let _ = confined.kill();
            let _ = confined.wait();
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
            let mut other = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            if other.id() as i32 == pid {
                reused += 1;
                assert_ne!(
                    namespace_of(Some(&pidfd), pid, Namespace::User),
                    Some(ours),
                    "read the namespace of the process that got the pid"
                );
            }
            let _ = other.kill();
            let _ = other.wait();
        }
        assert!(reused > 0, "never got the pid again: nothing was tried");
    }

    /// The fdinfo's `NSpid:` tells a process of our PID namespace from one of a namespace
    /// below it, and from one gone, without the process's own `/proc`.
    #[test]
    fn the_pid_namespace_is_told_from_our_own_fdinfo() {
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to make a PID namespace");
            return;
        }
        let own = pidfd_open(std::process::id() as i32).unwrap();
        assert_eq!(in_our_pid_namespace(&own), Some(true));
        // `unshare --fork` stays in ours; the `sleep` it forks is in the new one.
        let mut outer = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "sleep", "30"])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let inner = loop {
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", outer.id()))
                    .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                break pid.parse::<i32>().unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "no inner process");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let outer_fd = pidfd_open(outer.id() as i32).unwrap();
        let inner_fd = pidfd_open(inner).unwrap();
        assert_eq!(in_our_pid_namespace(&outer_fd), Some(true));
        assert_eq!(in_our_pid_namespace(&inner_fd), Some(false));
        let _ = pidfd_signal(&inner_fd, libc::SIGKILL, 0);
        let _ = outer.kill();
        let _ = outer.wait();
        // Reaped: gone, never "ours".
        assert_eq!(in_our_pid_namespace(&outer_fd), None);
    }

    #[test]
    fn the_pidfd_names_the_same_effective_uid_as_proc() {
        use std::os::unix::process::CommandExt;
        // SAFETY: plain getter.
        let root = unsafe { libc::geteuid() } == 0;
        // As root, a child of another uid; otherwise this process's own.
        let mut cmd = std::process::Command::new("/bin/sleep");
        cmd.arg("5");
        if root {
            cmd.uid(65534);
        }
        let mut child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        let pidfd = pidfd_open(pid).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let from_proc: Option<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_ascii_whitespace().nth(1)?.parse().ok());
        let from_pidfd = registry::identity_of(&pidfd, pid).map(|p| p.euid);
        child.kill().unwrap();
        child.wait().unwrap();
        // SAFETY: plain getter.
        let expected = if root {
            65534
        } else {
            unsafe { libc::geteuid() }
        };
        assert_eq!(from_proc, Some(expected));
        assert_eq!(from_pidfd, Some(expected));
    }

    #[test]
    fn a_reaped_process_has_no_credentials_to_give() {
        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pidfd = pidfd_open(child.id() as i32).unwrap();
        child.wait().unwrap();
        if registry::birth_clock() == registry::BirthClock::Pidfs {
            assert_eq!(registry::identity_of(&pidfd, child.id() as i32), None);
        }
        assert!(!alive(&pidfd));
    }
}
