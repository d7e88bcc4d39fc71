//! `enforce = true`, second half: every `execve`/`execveat` of an enforced launch (and of
//! everything it starts) is shown to the broker before the kernel runs it, so that a
//! bypass attempt is refused *and audited*, and so that the ELF loader, which Landlock must
//! leave executable, cannot be executed by name.
//!
//! The spawn child installs a seccomp filter that answers `SECCOMP_RET_USER_NOTIF` for the
//! exec syscalls, created with `SECCOMP_FILTER_FLAG_NEW_LISTENER`; it hands the listener to
//! the broker with `SCM_RIGHTS` over a socket prepared before the clone, closes its own copy
//! and execs. One dedicated thread (not a tokio task: the tokio worker that forked is
//! suspended until the child's exec, which waits for this thread's answer, and every other
//! worker may be in the same state) waits on all listeners (one epoll set) and answers each
//! notification. A launch supervised only for its signals to the parent has no exec to
//! wait for: its listener goes over a second socket, which the launch's worker reads once
//! the child exec'd, and joins the set without waking the thread. Notifications:
//!
//! - from a process that still shares the broker's memory (the spawn child before its
//!   exec: the broker's own exec of the program, its `PATH` candidates and `/bin/sh`
//!   fallback) → continue, at once;
//!
//! every other one is decided on a short-lived thread of its own that looks at the path
//! with the launch user's file-system identity (so a path on a hung mount stalls only
//! that exec, and a refusal reveals nothing the user could not see):
//!
//! - of an ELF loader (`LOADERS`) → `EACCES`, audited (the loader would run any program);
//! - of the shim, the launch's program or its script interpreter → continue;
//! - of anything else → `EACCES`, audited (the exec bypassed the interposer).
//!
//! Continuing is safe because Landlock still checks the exec in the kernel: whatever
//! happens between this check and the exec, only the files the Landlock ruleset grants can
//! run. The residual hole is exactly that window: see [`exec::decide`].
//!
//! Denials are audited per launch up to a burst, then at a steady rate (the rest are
//! counted in the next line), so a process looping on refused execs cannot flood the log.
//! A launch whose listener has no more processes (`POLLHUP`) is forgotten. If this kernel
//! has no seccomp user notification (before 5.0), enforce keeps its Landlock half only and
//! the config load says so.
//!
//! Here: the guard, its policies and their hand-over; [`watch`]: its thread, which
//! receives listeners and notifications; [`exec`]: the decision for an exec; [`parent`]:
//! signals to the parent, relayed; [`budget`]: the audit rate limit.

mod budget;
mod exec;
pub mod inherited;
mod parent;
#[cfg(test)]
mod testing;
mod watch;

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

#[cfg(target_arch = "x86_64")]
use super::seccomp::AUDIT_ARCH_I386;
#[cfg(target_arch = "aarch64")]
use super::seccomp::{AUDIT_ARCH_AARCH64, AUDIT_ARCH_ARM};
use super::seccomp::{AUDIT_ARCH_X86_64, X32_SYSCALL_BIT};
use budget::Budget;

pub use inherited::{InheritedRelay, LaunchOf, Relays};
pub use parent::ParentSignals;

/// The broker's exec guard: started at the first enforced launch, then one thread for the
/// broker's lifetime.
#[derive(Default)]
pub struct ExecGuard {
    state: OnceLock<Result<Running, String>>,
    next_token: AtomicU64,
    /// Launches relayed by the runtime threads' inherited filters ([`inherited`]).
    pub relays: Arc<Relays>,
}

struct Running {
    /// The children's end of the hand-over socket the guard thread reads (close-on-exec):
    /// for launches whose execs are checked, whose child's own exec waits for the guard.
    send: OwnedFd,
    /// The children's end of the hand-over socket the launches' workers read once their
    /// child has exec'd: for launches supervised for their signals to the parent only,
    /// whose listener then joins the guard's set without waking it.
    send_direct: OwnedFd,
    recv_direct: OwnedFd,
    /// Launches armed but whose listener has not arrived yet, by token.
    pending: Arc<Mutex<HashMap<u64, Arc<Policy>>>>,
    /// The listeners the guard thread waits on.
    set: Arc<Listeners>,
}

/// The guard thread's epoll set and the listeners in it, by their launch's token (the
/// token is each listener's epoll key).
struct Listeners {
    epoll: OwnedFd,
    by_token: Mutex<HashMap<u64, Arc<Watched>>>,
}

/// Where the guard reports denials (any thread of the guard may call it).
pub type DeniedSink = Box<dyn Fn(Denied) + Send + Sync>;

/// What one enforced launch may exec, and what to say when it tries something else.
#[derive(Debug)]
pub struct Policy {
    pub context: String,
    pub uid: u32,
    /// `(gid, groups)` of the launch's user, which the checks of its paths take on with
    /// its uid (`None`: the broker's own identity, which the launch has too).
    looks_as: Option<(u32, Vec<libc::gid_t>)>,
    /// The launch's own program, for the audit line.
    pub program: PathBuf,
    /// The shim, the program, its interpreter.
    allowed: Vec<FileId>,
    loaders: Vec<FileId>,
    /// Its execs are checked (`enforce`); otherwise the filter never sends one.
    guards_exec: bool,
    /// Signals the launch's processes send to the broker, which is their parent: they go
    /// to the launch's client, which raises them at the process that launched it.
    parent: Option<ParentSignals>,
}

/// A refused exec, for the audit log.
#[derive(Debug, Clone)]
pub struct Denied {
    pub context: String,
    pub uid: u32,
    pub program: PathBuf,
    /// The pid of the process that tried (in the broker's PID namespace).
    pub pid: u32,
    /// The path as the process gave it (bytes: the audit tells apart ones that differ).
    pub path: Vec<u8>,
    /// What it resolved to, when it could be resolved.
    pub target: Option<String>,
    pub reason: &'static str,
    pub errno: i32,
    /// Denials of the same launch left out of the audit log before this one (rate limit).
    pub suppressed: u64,
}

/// The armed hand-over of one launch; dropping it forgets the launch if its child never
/// handed a listener over (it failed before, or was killed).
pub struct Armed<'a> {
    running: &'a Running,
    token: u64,
    required: bool,
}

/// What the spawn child needs: the socket to send its listener on and the launch's token.
#[derive(Debug, Clone, Copy)]
pub struct Handover {
    pub sock: RawFd,
    pub token: u64,
    /// The launch's execs are checked (`enforce`): without the listener it must not run.
    /// Otherwise a process that holds a listener of its own already (a nested broker,
    /// a container runtime; the kernel allows one) runs unsupervised.
    pub required: bool,
}

/// One launch's listener, as the guard thread and its decisions in flight hold it.
struct Watched {
    listener: OwnedFd,
    /// `None`: a runtime thread's inherited filter, shared by the launches it forks.
    policy: Option<Arc<Policy>>,
    budget: Mutex<Budget>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Continue,
    /// Refused without an audit line: the exec would have failed anyway (no such file).
    Fail(i32),
    Deny {
        errno: i32,
        reason: &'static str,
    },
    /// The syscall returns 0 without running: the broker did what it asked.
    Done,
}

/// `(arch, execve, execveat)` of every ABI a process on this kernel can call with.
#[cfg(target_arch = "x86_64")]
pub const EXEC_SYSCALLS: [(u32, u32, u32); 3] = [
    (AUDIT_ARCH_X86_64, 59, 322),
    // x32: its own entries, with the x32 bit set, under the x86_64 arch.
    (
        AUDIT_ARCH_X86_64,
        X32_SYSCALL_BIT | 520,
        X32_SYSCALL_BIT | 545,
    ),
    (AUDIT_ARCH_I386, 11, 358),
];

#[cfg(target_arch = "aarch64")]
pub const EXEC_SYSCALLS: [(u32, u32, u32); 2] =
    [(AUDIT_ARCH_AARCH64, 221, 281), (AUDIT_ARCH_ARM, 11, 387)];

/// Room for the kernel's `struct seccomp_notif`/`_resp`, whatever their size
/// (`SECCOMP_GET_NOTIF_SIZES`; checked by [`available`]).
const NOTIF_BUF: usize = 256;

impl ExecGuard {
    /// Arms the hand-over for one launch, starting the guard thread on first use
    /// (`on_denied` is used only then). `Err` says why there is no guard: the launch then
    /// runs with Landlock's half of enforce only.
    pub fn arm(
        &self,
        policy: Policy,
        on_denied: impl FnOnce() -> DeniedSink,
    ) -> Result<Armed<'_>, String> {
        let running = self
            .state
            .get_or_init(|| Running::start(on_denied(), self.relays.clone()))
            .as_ref()
            .map_err(Clone::clone)?;
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let required = policy.guards_exec;
        lock(&running.pending).insert(token, Arc::new(policy));
        Ok(Armed {
            running,
            token,
            required,
        })
    }

    /// Starts the guard thread now, if it has not started yet.
    pub fn start(&self, on_denied: impl FnOnce() -> DeniedSink) {
        self.state
            .get_or_init(|| Running::start(on_denied(), self.relays.clone()));
    }

    /// Why the guard could not start, once it was tried; for `ctx status`.
    pub fn failure(&self) -> Option<String> {
        self.state.get()?.as_ref().err().cloned()
    }
}

impl Armed<'_> {
    pub fn handover(&self) -> Handover {
        let sock = match self.required {
            true => &self.running.send,
            false => &self.running.send_direct,
        };
        Handover {
            sock: sock.as_raw_fd(),
            token: self.token,
            required: self.required,
        }
    }
}

impl<'a> Armed<'a> {
    /// The child exec'd, so its listener was sent: the guard thread takes the policy
    /// when the listener arrives, which may be after this. A launch whose execs are not
    /// checked keeps its own listener, when it finds it queued (see [`Supervised`]).
    pub fn started(self) -> Option<Supervised<'a>> {
        let supervised = match self.required {
            true => None,
            false => self
                .running
                .take_direct(Some(self.token))
                .map(|(listener, policy)| Supervised {
                    running: self.running,
                    token: self.token,
                    kept: Some((listener, policy)),
                }),
        };
        std::mem::forget(self);
        supervised
    }
}

/// The listener of a running launch whose execs are not checked (it is supervised only
/// for its signals to the broker, its parent), held by the launch's own worker instead of
/// the guard thread: the kernel hangs it up as the program exits, which would wake the
/// guard only to forget it. The launch watches it beside the program's exit and gives it
/// to the guard ([`Supervised::settle`]) at its first notification, or once the program
/// has ended if processes it left still use its filter; dropped, it settles.
pub struct Supervised<'a> {
    running: &'a Running,
    token: u64,
    kept: Option<(OwnedFd, Arc<Policy>)>,
}

impl Supervised<'_> {
    /// The listener while the launch keeps it, to watch for readiness by.
    pub fn listener(&self) -> Option<RawFd> {
        self.kept.as_ref().map(|(l, _)| l.as_raw_fd())
    }

    /// The listener is ready (or the launch ends): closed if every process that used its
    /// filter is gone, else handed to the guard, which answers what it holds. Whoever
    /// watched it for readiness must have stopped first.
    pub fn settle(&mut self) {
        let Some((listener, policy)) = self.kept.take() else {
            return;
        };
        let mut p = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        let ready = unsafe { libc::poll(&mut p, 1, 0) };
        // The kernel reports the hangup exactly when no process uses the filter any more.
        if ready == 1 && p.revents & libc::POLLHUP != 0 {
            return;
        }
        self.running.set.add(self.token, listener, Some(policy));
    }
}

impl Drop for Supervised<'_> {
    fn drop(&mut self) {
        self.settle();
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        // The child failed or was never started: a listener it sent finds no launch and
        // is closed (its process is gone or about to be).
        lock(&self.running.pending).remove(&self.token);
        if !self.required {
            self.running.take_direct(None);
        }
    }
}

impl Running {
    fn start(on_denied: DeniedSink, relays: Arc<Relays>) -> Result<Running, String> {
        let running = Running::start_thread(on_denied, relays);
        match &running {
            Ok(r) => inherited::adopt(&r.set),
            Err(_) => inherited::refuse(),
        }
        running
    }

    fn start_thread(on_denied: DeniedSink, relays: Arc<Relays>) -> Result<Running, String> {
        if !available() {
            return Err("this kernel has no seccomp user notification".into());
        }
        let (recv, send) = handover_socket()?;
        let (recv_direct, send_direct) = handover_socket()?;
        // SAFETY: plain syscall; the descriptor is owned at once.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(format!(
                "cannot create its epoll set: {}",
                io::Error::last_os_error()
            ));
        }
        let set = Arc::new(Listeners {
            // SAFETY: just created, owned here.
            epoll: unsafe { OwnedFd::from_raw_fd(epoll) },
            by_token: Mutex::default(),
        });
        let pending: Arc<Mutex<HashMap<u64, Arc<Policy>>>> = Arc::default();
        let (thread_pending, thread_set) = (pending.clone(), set.clone());
        // Without the inherited filter: a call of its own that named the broker would
        // wait for itself.
        crate::daemon::spawn::forker::on_spawner(move || {
            std::thread::Builder::new()
                .name("exec-guard".into())
                .spawn(move || {
                    let on_denied = Arc::from(on_denied);
                    watch::watch(recv, thread_set, thread_pending, on_denied, relays);
                    // Nobody answers the threads' listeners any more: a signal call under
                    // their filter fails with ENOSYS instead of waiting for ever.
                    inherited::refuse();
                })
                .map(drop)
        })
        .ok_or_else(|| "no thread could start its thread".to_string())?
        .map_err(|e| format!("cannot start its thread: {e}"))?;
        Ok(Running {
            send,
            send_direct,
            recv_direct,
            pending,
            set,
        })
    }

    /// Adds the listeners waiting on the direct hand-over socket to the guard's set, but
    /// launch `keep`'s, which is given back: called by a launch's worker once its child
    /// exec'd (or failed), when its listener, if it sent one, is queued there. It may take
    /// another launch's too, which is as good.
    fn take_direct(&self, keep: Option<u64>) -> Option<(OwnedFd, Arc<Policy>)> {
        watch::take_handovers(&self.recv_direct, &self.pending, &self.set, keep).1
    }
}

/// A hand-over socket: the reading end (non-blocking) and the children's end.
fn handover_socket() -> Result<(OwnedFd, OwnedFd), String> {
    let mut pair = [0; 2];
    // SAFETY: socketpair writes two descriptors into the array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(format!(
            "cannot create its socket: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: both were just created and are owned here.
    let (recv, send) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    set_nonblocking(&recv).map_err(|e| format!("cannot set up its socket: {e}"))?;
    Ok((recv, send))
}

impl Listeners {
    /// Adds a launch's listener. In the map before the epoll set: the guard looks up
    /// whatever epoll reports.
    fn add(&self, token: u64, listener: OwnedFd, policy: Option<Arc<Policy>>) {
        let fd = listener.as_raw_fd();
        let mut map = lock(&self.by_token);
        map.insert(
            token,
            Arc::new(Watched {
                listener,
                policy,
                budget: Mutex::new(Budget::new()),
            }),
        );
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: valid descriptors and event.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0
        {
            // Closing the listener fails the launch's supervised calls (ENOSYS): closed,
            // never silently unsupervised.
            tracing::error!(
                "exec guard: cannot watch a listener: {}",
                io::Error::last_os_error()
            );
            map.remove(&token);
        }
    }

    /// Forgets a launch's listener. Out of the epoll set first: a decision in flight may
    /// hold the listener open a while, and its hangup must not be reported again.
    fn remove_locked(&self, map: &mut HashMap<u64, Arc<Watched>>, token: u64) {
        if let Some(w) = map.remove(&token) {
            // SAFETY: valid descriptors; the event argument may be null for a removal.
            unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    w.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                )
            };
        }
    }
}

impl Policy {
    /// `allowed`: the files the launch's Landlock ruleset grants besides the loaders.
    pub fn new(context: &str, uid: u32, program: PathBuf, allowed: &[PathBuf]) -> Policy {
        Policy {
            context: context.to_string(),
            uid,
            looks_as: None,
            program,
            allowed: allowed.iter().filter_map(|p| file_id(p).ok()).collect(),
            loaders: super::landlock::LOADERS
                .iter()
                .filter_map(|p| file_id(Path::new(p)).ok())
                .collect(),
            guards_exec: true,
            parent: None,
        }
    }

    /// A launch whose execs are not checked (no `enforce`), supervised for its signals to
    /// its parent only.
    pub fn execs_unchecked(context: &str, uid: u32, program: PathBuf) -> Policy {
        Policy {
            context: context.to_string(),
            uid,
            looks_as: None,
            program,
            allowed: Vec::new(),
            loaders: Vec::new(),
            guards_exec: false,
            parent: None,
        }
    }

    /// Its launch's relay loop is gone (only known where signals to the parent are
    /// relayed).
    fn launch_ended(&self) -> bool {
        self.parent.as_ref().is_some_and(|p| p.relay.is_closed())
    }

    pub fn relaying_parent_signals(mut self, parent: ParentSignals) -> Policy {
        self.parent = Some(parent);
        self
    }

    /// The filter the launch's child installs for this policy.
    pub fn filter(&self) -> Vec<libc::sock_filter> {
        let exec: &[(u32, u32, u32)] = if self.guards_exec {
            &EXEC_SYSCALLS
        } else {
            &[]
        };
        super::seccomp::supervised_filter(exec, self.parent.as_ref().map(|p| p.pid))
    }

    /// The launch runs as another user than the broker: its paths are checked with that
    /// user's file-system identity, so that a refusal tells it no more than the kernel
    /// would (no "exists" where it may not look).
    pub fn looking_as(mut self, gid: u32, groups: &[libc::gid_t]) -> Policy {
        self.looks_as = Some((gid, groups.to_vec()));
        self
    }
}

/// Whether this kernel offers seccomp user notification with structures that fit ours.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let action: u32 = libc::SECCOMP_RET_USER_NOTIF;
        // SAFETY: the documented queries; the kernel reads `action` and fills `sizes`.
        unsafe {
            if libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_GET_ACTION_AVAIL,
                0,
                &action as *const u32,
            ) != 0
            {
                return false;
            }
            let mut sizes: libc::seccomp_notif_sizes = std::mem::zeroed();
            if libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_GET_NOTIF_SIZES,
                0,
                &mut sizes as *mut libc::seccomp_notif_sizes,
            ) != 0
            {
                return false;
            }
            (sizes.seccomp_notif as usize) <= NOTIF_BUF
                && (sizes.seccomp_notif_resp as usize) <= NOTIF_BUF
        }
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn file_id(path: &Path) -> io::Result<FileId> {
    let m = std::fs::metadata(path)?;
    Ok(FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// The audit event of a denial.
pub fn audit_event(d: &Denied) -> crate::audit_event::AuditEvent {
    use crate::daemon::audit;
    crate::audit_event::AuditEvent::ExecDenied {
        context: d.context.clone(),
        uid: d.uid,
        pid: d.pid,
        path: audit::lossless(&d.path, audit::TEXT_KEEP).into(),
        target: d.target.clone(),
        program: d.program.to_string_lossy().into_owned(),
        reason: d.reason.into(),
        errno: ctx_protocol::errno_name(d.errno).into(),
        suppressed: (d.suppressed > 0).then_some(d.suppressed),
    }
}
