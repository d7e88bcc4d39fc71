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
//! worker may be in the same state) polls all listeners and answers each notification:
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
//! run. The residual hole is exactly that window: see [`decide`].
//!
//! Denials are audited per launch up to a burst, then at a steady rate (the rest are
//! counted in the next line), so a process looping on refused execs cannot flood the log.
//! A launch whose listener has no more processes (`POLLHUP`) is forgotten. If this kernel
//! has no seccomp user notification (before 5.0), enforce keeps its Landlock half only and
//! the config load says so.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::process_view;
#[cfg(target_arch = "x86_64")]
use super::seccomp::AUDIT_ARCH_I386;
#[cfg(target_arch = "aarch64")]
use super::seccomp::{AUDIT_ARCH_AARCH64, AUDIT_ARCH_ARM};
use super::seccomp::{AUDIT_ARCH_X86_64, X32_SYSCALL_BIT};

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// The broker's exec guard: started at the first enforced launch, then one thread for the
/// broker's lifetime.
#[derive(Default)]
pub struct ExecGuard {
    state: OnceLock<Result<Running, String>>,
    next_token: AtomicU64,
}

struct Running {
    /// The children's end of the hand-over socket (close-on-exec).
    send: OwnedFd,
    /// Launches armed but whose listener has not arrived yet, by token.
    pending: Arc<Mutex<HashMap<u64, Arc<Policy>>>>,
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

/// Where a launch's signals to its parent go: the broker's pid as its processes name it,
/// and the launch's relay loop.
#[derive(Debug)]
pub struct ParentSignals {
    pub pid: libc::pid_t,
    pub relay: tokio::sync::mpsc::Sender<i32>,
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
    policy: Arc<Policy>,
    budget: Mutex<Budget>,
}

/// Decisions running per uid. Each runs on a thread of its own, so that a path on a hung
/// mount (FUSE, NFS) stalls only the exec that named it; the count bounds the threads one
/// uid's stuck execs can hold.
#[derive(Default)]
struct InFlight(Mutex<HashMap<u32, usize>>);

/// One decision counted in [`InFlight`] until dropped.
struct Slot {
    in_flight: Arc<InFlight>,
    uid: u32,
}

/// Audit lines left for a launch's denials: `AUDIT_BURST` at once, then
/// `AUDIT_PER_SECOND`.
struct Budget {
    tokens: f64,
    last: Instant,
    suppressed: u64,
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

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

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

const AUDIT_BURST: f64 = 100.0;
const AUDIT_PER_SECOND: f64 = 10.0;

const REASON_BYPASS: &str = "enforce: exec bypassing the interposer";
const REASON_LOADER: &str =
    "enforce: explicit exec of the ELF loader (it would run any program unrouted)";
const REASON_UNREADABLE: &str = "enforce: exec whose path the broker cannot read";
const REASON_BUSY: &str =
    "enforce: too many of this user's execs are still being checked (a hung mount?)";

/// Decisions one uid may have running at once (see [`InFlight`]).
const MAX_IN_FLIGHT_PER_UID: usize = 64;
/// How often listeners of ended launches are looked for (see [`watch`]).
const SWEEP_MS: i32 = 1000;
/// A decision's thread reads one path and a page at a time.
const DECISION_STACK: usize = 128 * 1024;

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

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
            .get_or_init(|| Running::start(on_denied()))
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
        self.state.get_or_init(|| Running::start(on_denied()));
    }

    /// Why the guard could not start, once it was tried; for `ctx status`.
    pub fn failure(&self) -> Option<String> {
        self.state.get()?.as_ref().err().cloned()
    }
}

impl Armed<'_> {
    pub fn handover(&self) -> Handover {
        Handover {
            sock: self.running.send.as_raw_fd(),
            token: self.token,
            required: self.required,
        }
    }
}

impl Armed<'_> {
    /// The child exec'd, so its listener was sent: the guard thread takes the policy
    /// when the listener arrives, which may be after this.
    pub fn started(self) {
        std::mem::forget(self);
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        // The child failed or was never started: a listener it sent finds no launch and
        // is closed (its process is gone or about to be).
        lock(&self.running.pending).remove(&self.token);
    }
}

impl Running {
    fn start(on_denied: DeniedSink) -> Result<Running, String> {
        if !available() {
            return Err("this kernel has no seccomp user notification".into());
        }
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
        let (recv, send) =
            unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
        set_nonblocking(&recv).map_err(|e| format!("cannot set up its socket: {e}"))?;
        let pending: Arc<Mutex<HashMap<u64, Arc<Policy>>>> = Arc::default();
        let thread_pending = pending.clone();
        std::thread::Builder::new()
            .name("exec-guard".into())
            .spawn(move || watch(recv, thread_pending, Arc::from(on_denied)))
            .map_err(|e| format!("cannot start its thread: {e}"))?;
        Ok(Running { send, pending })
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

impl InFlight {
    fn enter(self: &Arc<Self>, uid: u32) -> Option<Slot> {
        let mut counts = lock(&self.0);
        let n = counts.entry(uid).or_insert(0);
        if *n >= MAX_IN_FLIGHT_PER_UID {
            return None;
        }
        *n += 1;
        Some(Slot {
            in_flight: self.clone(),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = lock(&self.in_flight.0);
        if let Some(n) = counts.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

impl Budget {
    fn new() -> Budget {
        Budget {
            tokens: AUDIT_BURST,
            last: Instant::now(),
            suppressed: 0,
        }
    }

    /// `Some(denials suppressed since the last audited one)` when this one may be audited.
    fn take(&mut self, now: Instant) -> Option<u64> {
        let refill = now.duration_since(self.last).as_secs_f64() * AUDIT_PER_SECOND;
        self.tokens = (self.tokens + refill).min(AUDIT_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

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

/// The guard thread: polls the hand-over socket and every launch's listener. Never
/// blocks except in `poll`: a notification is received only when `poll` reported one (and
/// this is the only reader, so the receive cannot wait).
fn watch(
    recv: OwnedFd,
    pending: Arc<Mutex<HashMap<u64, Arc<Policy>>>>,
    on_denied: Arc<dyn Fn(Denied) + Send + Sync>,
) {
    let in_flight = Arc::<InFlight>::default();
    let mut listeners: Vec<Arc<Watched>> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        fds.clear();
        fds.push(libc::pollfd {
            fd: recv.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        fds.extend(listeners.iter().map(|w| libc::pollfd {
            fd: w.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // A launch that ended may leave processes (a `setsid` daemon) that keep its
        // listener open: where only signals to the parent were supervised, the listener
        // goes once the launch has ended, looked for every second while there are such.
        let sweep = listeners.iter().any(|w| !w.policy.guards_exec);
        let timeout = if sweep { SWEEP_MS } else { -1 };
        // SAFETY: `fds` is a valid array of pollfd of that length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            tracing::error!("exec guard: poll failed: {}", io::Error::last_os_error());
            return;
        }
        // Listeners first (their indices match `fds[1..]`), newest last so removal by index
        // from the back keeps the others' positions.
        for i in (0..listeners.len()).rev() {
            let revents = fds[i + 1].revents;
            if revents & libc::POLLIN != 0 {
                let w = &listeners[i];
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    handle(w, &on_denied, &in_flight)
                }));
                if result.is_err() {
                    tracing::error!("exec guard: a notification's handling panicked");
                }
            } else if revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                // Every process of the launch is gone.
                listeners.swap_remove(i);
            }
        }
        if sweep {
            // After the listeners' events, whose indices match `fds`.
            listeners.retain(|w| w.policy.guards_exec || !w.policy.launch_ended());
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            loop {
                match receive(&recv) {
                    // The child could not install its listener and runs without one.
                    Received::Without(token) => {
                        lock(&pending).remove(&token);
                    }
                    Received::Listener(token, listener) => match lock(&pending).remove(&token) {
                        Some(policy) => listeners.push(Arc::new(Watched {
                            listener,
                            policy,
                            budget: Mutex::new(Budget::new()),
                        })),
                        // Its launch gave up (the child exited without exec'ing): closing
                        // the listener fails any exec still asked of it (ENOSYS).
                        None => tracing::debug!("exec guard: a listener for a launch that failed"),
                    },
                    Received::Empty => break,
                    // The broker is exiting (its end is dropped with `Shared`). Dropping
                    // the listeners fails later execs of the launches (fail-closed).
                    Received::Closed => return,
                }
            }
        }
    }
}

enum Received {
    Listener(u64, OwnedFd),
    Without(u64),
    Empty,
    Closed,
}

/// One listener from the hand-over socket, with its launch's token.
fn receive(recv: &OwnedFd) -> Received {
    loop {
        let mut token = [0u8; 8];
        let mut fds = [-1; 1];
        // The socket is non-blocking: EAGAIN says the queue is empty.
        let (n, count) =
            match ctx_protocol::fdpass::recv_with_fds(recv.as_raw_fd(), &mut token, &mut fds) {
                Ok(got) => got,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Received::Empty,
                    // More than one descriptor (all closed already): not a hand-over.
                    Some(libc::EMSGSIZE) => {
                        tracing::warn!("exec guard: a malformed hand-over message");
                        continue;
                    }
                    _ => {
                        tracing::error!("exec guard: cannot receive: {e}");
                        return Received::Closed;
                    }
                },
            };
        // SAFETY: recv_with_fds handed over this new descriptor, owned here at once.
        let fd = (count == 1).then(|| unsafe { OwnedFd::from_raw_fd(fds[0]) });
        if n == 0 && fd.is_none() {
            return Received::Closed; // end of file: every sender is gone
        }
        match (n == token.len(), fd) {
            (true, Some(fd)) => return Received::Listener(u64::from_ne_bytes(token), fd),
            (true, None) => return Received::Without(u64::from_ne_bytes(token)),
            _ => tracing::warn!("exec guard: a malformed hand-over message"),
        }
    }
}

/// Receives one notification and answers it: at once for the spawn child's own exec, else
/// from a thread of its own (see [`InFlight`]), which checks the path as the launch's user.
fn handle(
    w: &Arc<Watched>,
    on_denied: &Arc<dyn Fn(Denied) + Send + Sync>,
    in_flight: &Arc<InFlight>,
) {
    let listener = w.listener.as_raw_fd();
    let mut buf = [0u64; NOTIF_BUF / 8];
    // SAFETY: the kernel writes at most `SECCOMP_GET_NOTIF_SIZES` bytes (checked to fit)
    // into the zeroed buffer, which is aligned for `seccomp_notif`.
    let req = unsafe {
        if libc::ioctl(
            listener,
            libc::SECCOMP_IOCTL_NOTIF_RECV as _,
            buf.as_mut_ptr(),
        ) < 0
        {
            // ENOENT: the process died between poll and here.
            return;
        }
        std::ptr::read(buf.as_ptr() as *const libc::seccomp_notif)
    };
    if let Some(call) = super::seccomp::signal_call(req.data.arch, req.data.nr as u32) {
        // Answered here, at once: relaying is a channel send, and the sender waits.
        let verdict = relay_to_parent(&req, call, w.policy.parent.as_ref());
        respond(listener, req.id, &verdict);
        return;
    }
    if !w.policy.guards_exec || shares_our_memory(req.pid as libc::pid_t) {
        // The spawn child before its exec: the broker's own exec of the program.
        respond(listener, req.id, &Verdict::Continue);
        return;
    }
    let busy = Verdict::Deny {
        errno: libc::EACCES,
        reason: REASON_BUSY,
    };
    let Some(slot) = in_flight.enter(w.policy.uid) else {
        respond(listener, req.id, &busy);
        report(w, &**on_denied, &req, busy, b"?".to_vec(), None);
        return;
    };
    let (watched, sink) = (w.clone(), on_denied.clone());
    let spawned = std::thread::Builder::new()
        .name("exec-guard-check".into())
        .stack_size(DECISION_STACK)
        .spawn(move || {
            let _slot = slot;
            let policy = &*watched.policy;
            let listener = watched.listener.as_raw_fd();
            let (verdict, path, target) = decide(listener, &req, policy);
            respond(listener, req.id, &verdict);
            report(&watched, &*sink, &req, verdict, path, target);
        });
    if spawned.is_err() {
        respond(listener, req.id, &busy);
        report(w, &**on_denied, &req, busy, b"?".to_vec(), None);
    }
}

/// Audits a denial (after answering, so the process waits no longer than the decision).
fn report(
    w: &Watched,
    on_denied: &(dyn Fn(Denied) + Send + Sync),
    req: &libc::seccomp_notif,
    verdict: Verdict,
    path: Vec<u8>,
    target: Option<String>,
) {
    let policy = &*w.policy;
    if let Verdict::Deny { errno, reason } = verdict {
        // A process that loops on denied execs must not flood the log (it is refused
        // either way).
        let Some(suppressed) = lock(&w.budget).take(Instant::now()) else {
            return;
        };
        tracing::warn!(
            context = %policy.context,
            pid = req.pid,
            path = %String::from_utf8_lossy(&path),
            target = target.as_deref().unwrap_or("?"),
            "exec denied: {reason}"
        );
        on_denied(Denied {
            context: policy.context.clone(),
            uid: policy.uid,
            program: policy.program.clone(),
            pid: req.pid,
            path,
            target,
            reason,
            errno,
            suppressed,
        });
    }
}

fn respond(listener: RawFd, id: u64, verdict: &Verdict) {
    let mut buf = [0u64; NOTIF_BUF / 8];
    // SAFETY: a zeroed buffer big enough for the kernel's `seccomp_notif_resp`, ours at its
    // start; the ioctl only reads it. ENOENT (the process is gone) needs nothing more.
    unsafe {
        let resp = buf.as_mut_ptr() as *mut libc::seccomp_notif_resp;
        (*resp).id = id;
        match verdict {
            Verdict::Continue => (*resp).flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
            Verdict::Fail(e) | Verdict::Deny { errno: e, .. } => (*resp).error = -e,
            Verdict::Done => {}
        }
        libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_SEND as _, buf.as_ptr());
    }
}

/// A signal a launch's process sends to the broker, its parent: passed to the launch's
/// client, which raises it at the process that launched the program, so `kill -USR1
/// $PPID` reaches whom it would locally. The broker itself never receives it. Signal 0
/// (does the parent exist?) is answered yes while the launch runs; a signal sent after
/// the launch ended (by an orphan it left) finds no parent (`ESRCH`). A queued value
/// (`sigqueue`) is not carried: the client raises the plain signal.
fn relay_to_parent(
    req: &libc::seccomp_notif,
    (_, _, _, sig_arg, tid_arg): super::seccomp::SignalCall,
    parent: Option<&ParentSignals>,
) -> Verdict {
    let Some(parent) = parent else {
        return Verdict::Fail(libc::EPERM);
    };
    let signal = req.data.args[sig_arg] as i32;
    if !(0..=64).contains(&signal) {
        return Verdict::Fail(libc::EINVAL);
    }
    // A thread of the broker other than its first is no thread of the parent process the
    // program knows: refused as the kernel would refuse it.
    if tid_arg.is_some_and(|t| req.data.args[t] as i32 != parent.pid) {
        return Verdict::Fail(libc::EPERM);
    }
    // Any process of the launch may be meant: a subshell's `kill $PPID`, a make
    // recipe's `/bin/kill`, all name the routed program's parent, which is the broker.
    if parent.relay.is_closed() {
        return Verdict::Fail(libc::ESRCH);
    }
    if signal != 0 {
        // Full: the client has not read the last ones yet; a signal already pending there
        // would merge with this one anyway.
        let _ = parent.relay.try_send(signal);
    }
    Verdict::Done
}

/// The decision for one exec, with the path as given and its resolved target.
///
/// Why CONTINUE is good enough: the kernel re-reads the path after our answer, so a
/// multithreaded process (or one sharing memory with another) can swap the string between
/// our read and the exec. What it can gain is bounded by Landlock, which still checks the
/// exec in the kernel: the allowed files and the ELF loaders. So the one residual hole is
/// the loader reached through such a race (README, Known limits).
fn decide(
    listener: RawFd,
    req: &libc::seccomp_notif,
    policy: &Policy,
) -> (Verdict, Vec<u8>, Option<String>) {
    let pid = req.pid as libc::pid_t;
    let data = &req.data;
    let Some(execveat) = exec_kind(data.arch, data.nr as u32) else {
        // The filter only sends exec syscalls; anything else is refused.
        return (Verdict::Fail(libc::ENOSYS), Vec::new(), None);
    };
    let (dirfd, ptr, flags) = if execveat {
        (data.args[0] as i32, data.args[1], data.args[4] as i32)
    } else {
        (libc::AT_FDCWD, data.args[0], 0)
    };
    let raw = match read_string(pid, ptr) {
        Ok(raw) => raw,
        Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {
            return (Verdict::Fail(libc::EFAULT), Vec::new(), None);
        }
        Err(e) => {
            let path = format!("? ({e})").into_bytes();
            let deny = Verdict::Deny {
                errno: libc::EACCES,
                reason: REASON_UNREADABLE,
            };
            return (deny, path, None);
        }
    };
    let identity = policy
        .looks_as
        .as_ref()
        .map(|(gid, groups)| process_view::Identity {
            uid: policy.uid,
            gid: *gid,
            groups,
        });
    let view = match process_view::enter(req.pid, dirfd, identity.as_ref()) {
        Ok(v) => v,
        Err(libc::ESRCH | libc::ENOENT) => return (Verdict::Fail(libc::ESRCH), raw, None),
        Err(e) => {
            tracing::warn!(
                "exec guard: cannot take the view of pid {}: errno {e}",
                req.pid
            );
            let deny = Verdict::Deny {
                errno: libc::EACCES,
                reason: REASON_UNREADABLE,
            };
            return (deny, raw, None);
        }
    };
    let found = match (raw.is_empty(), raw.first()) {
        (true, _) if flags & libc::AT_EMPTY_PATH != 0 && dirfd >= 0 => Ok(process_view::Found {
            file: view.base,
            path: format!("(descriptor {dirfd})").into_bytes(),
        }),
        (true, _) => Err(libc::ENOENT),
        (false, Some(&b'/')) => process_view::walk(&raw, view.ids),
        (false, _) if !view.base_is_dir => Err(libc::ENOTDIR),
        (false, _) => process_view::walk(&raw, view.ids),
    };
    let path = raw;
    let id = found
        .as_ref()
        .map_err(|e| *e)
        .and_then(|f| process_view::file_id(&f.file).map(|(dev, ino)| FileId { dev, ino }));
    // The path and the files are read: only now is it certain they were the process's
    // (its pid could have been reused had it died meanwhile).
    if !id_valid(listener, req.id) {
        return (Verdict::Fail(libc::ESRCH), path, None);
    }
    let id = match id {
        Ok(id) => id,
        // Nothing to run there: the exec would fail the same way.
        Err(e) => return (Verdict::Fail(e), path, None),
    };
    let reason = if policy.loaders.contains(&id) {
        REASON_LOADER
    } else if policy.allowed.contains(&id) {
        return (Verdict::Continue, path, None);
    } else {
        REASON_BYPASS
    };
    // For the audit line: what it resolved to, as the process names it.
    let target = found.ok().map(|f| process_view::display(&f.path));
    let deny = Verdict::Deny {
        errno: libc::EACCES,
        reason,
    };
    (deny, path, target)
}

/// `Some(is_execveat)` for an exec syscall of a known ABI.
fn exec_kind(arch: u32, nr: u32) -> Option<bool> {
    // x86_64 and x32 share the arch; the filter compares without the x32 bit.
    let nr = if arch == AUDIT_ARCH_X86_64 {
        nr & !X32_SYSCALL_BIT
    } else {
        nr
    };
    EXEC_SYSCALLS
        .iter()
        .filter(|(a, ..)| *a == arch)
        .find_map(|&(_, execve, execveat)| {
            if nr == execve & !X32_SYSCALL_BIT {
                Some(false)
            } else if nr == execveat & !X32_SYSCALL_BIT {
                Some(true)
            } else {
                None
            }
        })
}

/// Whether `pid` still shares the broker's address space: the spawn child (or its
/// grandchild in a PID namespace) before its exec.
fn shares_our_memory(pid: libc::pid_t) -> bool {
    const KCMP_VM: libc::c_int = 1;
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, libc::getpid(), pid, KCMP_VM, 0, 0) };
    if r >= 0 {
        return r == 0;
    }
    // Without kcmp (CONFIG_KCMP off): still running the broker's executable. A routed
    // process cannot exec the broker (Landlock grants it no EXECUTE).
    match (
        file_id(Path::new(&format!("/proc/{pid}/exe"))),
        file_id(Path::new("/proc/self/exe")),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Reads the NUL-terminated string at `ptr` in `pid` (at most `PATH_MAX` bytes), a page
/// at a time so that a string near the end of a mapping is still read.
fn read_string(pid: libc::pid_t, ptr: u64) -> io::Result<Vec<u8>> {
    const PAGE: u64 = 4096;
    let max = libc::PATH_MAX as usize;
    let mut out: Vec<u8> = Vec::with_capacity(256);
    let mut at = ptr;
    let mut chunk = [0u8; PAGE as usize];
    while out.len() < max {
        let len = (PAGE - at % PAGE) as usize;
        let local = libc::iovec {
            iov_base: chunk.as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: at as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: `local` points into `chunk`, `len` <= its size; `remote` is only read by
        // the kernel, in the other process.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        let got = &chunk[..n as usize];
        if let Some(end) = got.iter().position(|&b| b == 0) {
            out.extend_from_slice(&got[..end]);
            return Ok(out);
        }
        out.extend_from_slice(got);
        at += n as u64;
    }
    Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG))
}

fn id_valid(listener: RawFd, id: u64) -> bool {
    // SAFETY: the ioctl reads the u64 id.
    unsafe {
        libc::ioctl(
            listener,
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _,
            &id as *const u64,
        ) == 0
    }
}

/// The audit event of a denial.
pub fn audit_json(d: &Denied) -> serde_json::Value {
    let mut event = serde_json::json!({
        "event": "exec_denied",
        "context": d.context,
        "uid": d.uid,
        "pid": d.pid,
        "target": d.target,
        "program": d.program.to_string_lossy(),
        "reason": d.reason,
        "errno": ctx_protocol::errno_name(d.errno),
    });
    if d.suppressed > 0 {
        event["suppressed"] = d.suppressed.into();
    }
    super::audit::with_bytes(event, "path", &d.path, super::audit::TEXT_KEEP)
}

#[cfg(test)]
mod tests {
    use super::super::spawn::fork_exec;
    use super::super::spawn::testing::{test_plan, wait_end};
    use super::*;
    use std::io::Read;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Runs `sh -c SCRIPT` under the guard, allowing only `sh`; returns its output and the
    /// denials the guard reported (waiting for at least one).
    fn guarded_sh(script: &str) -> (String, Vec<Denied>) {
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let (out, denied) = supervised_sh(script, Policy::new("test", 0, sh.clone(), &[sh]));
        // A denial is audited after the answer, so its report may trail the program's end.
        let mut all: Vec<Denied> = denied
            .recv_timeout(Duration::from_secs(10))
            .into_iter()
            .collect();
        all.extend(std::iter::from_fn(|| {
            denied.recv_timeout(Duration::from_millis(200)).ok()
        }));
        (out, all)
    }

    /// Runs `sh -c SCRIPT` supervised by `policy`: its output and where denials arrive.
    fn supervised_sh(script: &str, policy: Policy) -> (String, mpsc::Receiver<Denied>) {
        let (tx, rx) = mpsc::channel();
        if !available() {
            eprintln!("skipped: no seccomp user notification on this kernel");
            return (String::new(), rx);
        }
        let guard = ExecGuard::default();
        let tx = Mutex::new(tx);
        let filter = policy.filter();
        let armed = guard
            .arm(policy, move || {
                Box::new(move |d| {
                    let _ = lock(&tx).send(d);
                })
            })
            .unwrap();
        let mut pipe = [0; 2];
        // SAFETY: pipe2 fills the array.
        assert_eq!(
            unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) },
            0
        );
        // SAFETY: just created, owned here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
        let mut plan = test_plan(
            &["/bin/sh", "-c", script],
            vec![(w.as_raw_fd(), 1), (w.as_raw_fd(), 2)],
        );
        plan.exec_guard = Some(armed.handover());
        plan.supervisor_filter = filter;
        let forked = fork_exec(&plan).unwrap();
        armed.started();
        drop(w);
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        wait_end(&forked);
        (out, rx)
    }

    /// Signals this test process (the spawned shell's parent, standing for the broker)
    /// received: any would mean one escaped the filter.
    static ESCAPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    extern "C" fn count_escaped(_: libc::c_int) {
        ESCAPED.fetch_add(1, Ordering::SeqCst);
    }

    /// This process's pid, with handlers counting the signals the tests relay.
    fn standing_for_the_broker() -> libc::pid_t {
        for sig in [libc::SIGUSR1, libc::SIGHUP, libc::SIGTERM] {
            // SAFETY: the handler only touches an atomic.
            unsafe { libc::signal(sig, count_escaped as *const () as libc::sighandler_t) };
        }
        // SAFETY: plain getter.
        unsafe { libc::getpid() }
    }

    #[test]
    fn signals_to_the_parent_are_relayed_not_delivered() {
        let ppid = standing_for_the_broker();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let policy = Policy::execs_unchecked("test", 0, "/bin/sh".into()).relaying_parent_signals(
            ParentSignals {
                pid: ppid,
                relay: tx,
            },
        );
        let (out, _) = supervised_sh(
            &format!(
                "kill -USR1 $PPID; echo usr1=$?; kill -0 {ppid}; echo probe=$?; \
                 kill -TERM {ppid}; echo term=$?; kill -KILL $PPID; echo kill=$?; \
                 /bin/kill -HUP {ppid}; echo grandchild=$?; /bin/echo exec-unchecked"
            ),
            policy,
        );
        if !available() {
            return;
        }
        assert!(out.contains("usr1=0"), "{out}");
        assert!(out.contains("probe=0"), "{out}");
        assert!(out.contains("term=0"), "{out}");
        assert!(out.contains("kill=0"), "{out}");
        // A process of the launch that is not the program names its parent too.
        assert!(out.contains("grandchild=0"), "{out}");
        assert!(out.contains("exec-unchecked"), "execs run unchecked: {out}");
        let got: Vec<i32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            got,
            [libc::SIGUSR1, libc::SIGTERM, libc::SIGKILL, libc::SIGHUP]
        );
        assert_eq!(ESCAPED.load(Ordering::SeqCst), 0, "a signal was delivered");
    }

    #[test]
    fn signals_to_others_and_after_the_launch_are_the_kernels() {
        let ppid = standing_for_the_broker();
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        drop(rx); // the launch has ended: its relay is closed
        let policy = Policy::execs_unchecked("test", 0, "/bin/sh".into()).relaying_parent_signals(
            ParentSignals {
                pid: ppid,
                relay: tx,
            },
        );
        let (out, _) = supervised_sh(
            &format!(
                "kill -USR1 $PPID; echo after=$?; kill -TERM {}; echo other=$?",
                other.id()
            ),
            policy,
        );
        if !available() {
            let _ = other.kill();
        }
        let status = other.wait().unwrap();
        if !available() {
            return;
        }
        assert!(out.contains("after=1"), "no parent any more: {out}");
        assert!(out.contains("other=0"), "{out}");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
        assert_eq!(ESCAPED.load(Ordering::SeqCst), 0, "a signal was delivered");
    }

    #[test]
    fn an_enforced_launch_has_its_execs_checked_and_its_parent_signals_relayed() {
        let ppid = standing_for_the_broker();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let policy =
            Policy::new("test", 0, sh.clone(), &[sh]).relaying_parent_signals(ParentSignals {
                pid: ppid,
                relay: tx,
            });
        let (out, denied) = supervised_sh(
            "kill -HUP $PPID; echo hup=$?; /usr/bin/id -u; echo rc=$?",
            policy,
        );
        if !available() {
            return;
        }
        assert!(out.contains("hup=0"), "{out}");
        assert!(out.contains("rc=126"), "{out}");
        assert_eq!(rx.try_recv().ok(), Some(libc::SIGHUP));
        let d = denied.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(d.reason, REASON_BYPASS);
        assert_eq!(ESCAPED.load(Ordering::SeqCst), 0, "a signal was delivered");
    }

    #[test]
    fn the_guard_lets_the_program_start_and_denies_other_execs() {
        let (out, denied) = guarded_sh("/usr/bin/id -u; echo rc=$?; exec /bin/sh -c 'echo again'");
        if !available() {
            return;
        }
        assert!(out.contains("rc=126"), "{out}");
        assert!(out.contains("again"), "sh itself may run again: {out}");
        assert_eq!(denied.len(), 1, "{denied:?}");
        assert_eq!(denied[0].path, b"/usr/bin/id");
        assert_eq!(denied[0].reason, REASON_BYPASS);
        assert_eq!(denied[0].errno, libc::EACCES);
    }

    #[test]
    fn the_guard_denies_the_elf_loader() {
        let Some(loader) = super::super::landlock::LOADERS
            .iter()
            .find(|l| Path::new(l).exists())
        else {
            return;
        };
        let (out, denied) = guarded_sh(&format!("{loader} /usr/bin/id; echo rc=$?"));
        if !available() {
            return;
        }
        assert!(!out.contains("uid="), "{out}");
        assert!(out.contains("rc=126"), "{out}");
        assert_eq!(denied.len(), 1, "{denied:?}");
        assert_eq!(denied[0].reason, REASON_LOADER);
    }

    #[test]
    fn exec_syscalls_are_recognised_per_abi() {
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(exec_kind(AUDIT_ARCH_X86_64, 59), Some(false));
            assert_eq!(exec_kind(AUDIT_ARCH_X86_64, 322), Some(true));
            assert_eq!(
                exec_kind(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 520),
                Some(false)
            );
            assert_eq!(
                exec_kind(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 545),
                Some(true)
            );
            assert_eq!(
                exec_kind(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 59),
                Some(false)
            );
            assert_eq!(exec_kind(AUDIT_ARCH_I386, 11), Some(false));
            assert_eq!(exec_kind(AUDIT_ARCH_I386, 358), Some(true));
            assert_eq!(exec_kind(AUDIT_ARCH_I386, 59), None);
            assert_eq!(exec_kind(AUDIT_ARCH_X86_64, 0), None);
        }
        assert_eq!(exec_kind(0x1234, 59), None);
    }

    #[test]
    fn denials_beyond_the_burst_are_counted_not_audited() {
        let mut b = Budget::new();
        let t = b.last;
        for _ in 0..AUDIT_BURST as usize {
            assert_eq!(b.take(t), Some(0));
        }
        assert_eq!(b.take(t), None);
        assert_eq!(b.take(t), None);
        // A tenth of a second later one more line may go, saying what it left out.
        let later = t + std::time::Duration::from_millis(100);
        assert_eq!(b.take(later), Some(2));
        assert_eq!(b.take(later), None);
    }
}
