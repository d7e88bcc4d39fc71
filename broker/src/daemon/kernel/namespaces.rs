//! Long-lived namespaces per context: `isolation.pid = true` (a PID namespace with its own
//! `/proc`) and `isolation.network = "none"` (a network namespace with only loopback up;
//! an egress allow list gets the same, and `egress` adds its proxy's listener inside).
//!
//! Design. Creating a namespace costs more than a launch may (the README's Performance
//! gives the figures), so each context gets ONE set of namespaces,
//! created when the broker starts (and again after a reload that changes them, or when its
//! holder has died) and kept alive by a **holder**: a tiny process forked from the broker
//! with `clone(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET...)`. In a PID namespace the holder
//! is PID 1: it mounts a fresh `/proc` in its private mount namespace (a slave of the host's,
//! so later host mounts still show) and then only reaps the orphans the kernel reparents to
//! it. It ignores every signal a process inside can send (the kernel drops signals to a
//! namespace init that has no handler), and it dies with the broker (`PR_SET_PDEATHSIG`
//! from a dedicated thread that lives as long as the broker: the death signal follows the
//! creating *thread*, so a tokio worker that retires would take the holder with it).
//! Killing a holder kills everything in its PID namespace: that is how a context's
//! namespace is torn down at shutdown or after a reload that changes it.
//!
//! A launch enters the namespaces in the spawn child (see `spawn.rs`): the child is a
//! single-threaded process, so it may `setns(holder_pidfd, flags)`. Joining a PID namespace
//! only applies to the caller's *children*, so the child clones once more with
//! `CLONE_PARENT`: the grandchild, PID n inside, is the broker's own child, which keeps
//! waiting on it with a pidfd and signalling its process group exactly as for a plain
//! launch. The grandchild's pid travels back through the memory the vfork-style clones
//! share with the broker.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use crate::config::{Config, Context};

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// One context's namespaces, held open by a holder process.
#[derive(Debug)]
pub struct Holder {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    /// The `CLONE_NEW*` flags the holder created; a launch passes them to `setns`.
    pub flags: i32,
}

/// Why a holder could not be created; shown as a warning, the context then runs without.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NamespaceError {
    #[error("cannot create the namespaces ({what}): {err}")]
    Create {
        what: &'static str,
        err: String,
        errno: i32,
    },
    #[error("the namespace holder thread is gone")]
    ThreadGone,
}

impl NamespaceError {
    /// What the operator can do about it, when we know.
    fn hint(&self) -> Option<&'static str> {
        let NamespaceError::Create { errno, .. } = self else {
            return None;
        };
        if *errno != libc::EPERM && *errno != libc::EACCES {
            return None;
        }
        // SAFETY: plain getter.
        Some(if unsafe { libc::geteuid() } != 0 {
            "creating namespaces needs root: start ctx-broker as root"
        } else {
            "the broker lacks CAP_SYS_ADMIN (a container or a service sandbox that forbids \
             namespaces?): allow it, or drop the option"
        })
    }
}

/// Every context's holder, and the thread that creates them.
pub struct Namespaces {
    holders: Mutex<HashMap<String, Arc<Holder>>>,
    /// Why a context's namespaces are not in force, by context: the options, the reason.
    failures: Mutex<HashMap<String, Failure>>,
    maker: Mutex<std::sync::mpsc::Sender<Job>>,
}

/// Namespaces a context asked for and does not have.
#[derive(Debug, Clone)]
struct Failure {
    flags: i32,
    /// The network namespace was for an egress rule, not `network = "none"`.
    egress: bool,
    error: NamespaceError,
}

struct Job {
    flags: i32,
    /// The holder's pid and flags: its pidfd is opened by the thread that asked, in the
    /// broker's descriptor table.
    reply: std::sync::mpsc::Sender<Result<(libc::pid_t, i32), NamespaceError>>,
}

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// What `ps` inside a context shows for its PID 1 (and what `pkill -f ctx-broker` misses).
static HOLDER_NAME: &[u8] = b"ctx-ns-init\0";
const HOLDER_STACK: usize = 64 * 1024;
/// Report byte meaning "namespaces ready".
const READY: u8 = 0xff;
/// Steps of the holder's set-up, as reported through its pipe.
const STEP_MOUNT_PRIVATE: u8 = 1;
const STEP_MOUNT_PROC: u8 = 2;
const STEP_LOOPBACK: u8 = 3;
const STEP_PDEATHSIG: u8 = 4;

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

/// The namespace flags a context asks for (0: none).
pub fn wanted_flags(ctx: &Context) -> i32 {
    let mut flags = 0;
    if ctx.isolation.pid {
        flags |= libc::CLONE_NEWPID | libc::CLONE_NEWNS;
    }
    if ctx.isolation.network.own_namespace() {
        flags |= libc::CLONE_NEWNET;
    }
    flags
}

impl Namespaces {
    /// Starts the holder thread. It must be a thread that lives as long as the broker: the
    /// holders' death signal fires when the thread that created them exits.
    pub fn start() -> io::Result<Namespaces> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("ctx-namespaces".into())
            .spawn(move || {
                // A holder is a copy of this process: cloned from the shared table, it
                // would hold (and close) the descriptors callers passed with their
                // launches (see `spawn::forker`). Started before the first connection, so
                // the copy this makes holds no caller's descriptor.
                if let Err(e) = crate::daemon::spawn::forker::leave_the_shared_table() {
                    tracing::warn!("namespace holders: no descriptor table of their own ({e})");
                }
                // Ends when the broker drops its `Namespaces` (shutdown): the holders then
                // receive their death signal, which ends every namespace.
                while let Ok(job) = rx.recv() {
                    let _ = job.reply.send(create_holder(job.flags).map(Holder::let_go));
                }
            })?;
        Ok(Namespaces {
            holders: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            maker: Mutex::new(tx),
        })
    }

    fn create(&self, flags: i32) -> Result<Holder, NamespaceError> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.maker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Job { flags, reply })
            .map_err(|_| NamespaceError::ThreadGone)?;
        let (pid, flags) = answer.recv().map_err(|_| NamespaceError::ThreadGone)??;
        let pidfd =
            crate::daemon::spawn::pidfd_of_child(pid).map_err(|err| NamespaceError::Create {
                what: "pidfd_open",
                errno: err.raw_os_error().unwrap_or(0),
                err: err.to_string(),
            })?;
        Ok(Holder { pid, pidfd, flags })
    }

    /// Makes the holders match `config`: creates the missing ones, replaces those whose
    /// flags changed and drops those no context needs (which ends their processes). May
    /// block for a few milliseconds per holder: call it off the async workers.
    pub fn sync(&self, config: &Config) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut keep = Vec::new();
        for ctx in config.contexts.values() {
            let flags = wanted_flags(ctx);
            if flags == 0 {
                continue;
            }
            keep.push(ctx.name.clone());
            let current = self.lock().get(&ctx.name).cloned();
            if current.is_some_and(|h| h.flags == flags && h.alive()) {
                continue;
            }
            match self.create(flags) {
                Ok(h) => {
                    self.lock().insert(ctx.name.clone(), Arc::new(h));
                    self.failures_lock().remove(&ctx.name);
                }
                Err(error) => {
                    let failure = Failure {
                        flags,
                        egress: ctx.isolation.network.egress().is_some(),
                        error,
                    };
                    self.lock().remove(&ctx.name);
                    warnings.extend(failure.warnings(&ctx.name));
                    self.failures_lock().insert(ctx.name.clone(), failure);
                }
            }
        }
        self.lock().retain(|name, _| keep.contains(name));
        self.failures_lock().retain(|name, _| keep.contains(name));
        warnings
    }

    /// The holder a launch into `ctx` enters, re-created if it died. `None`: the context
    /// wants no namespace, or they could not be created (a warning says so).
    pub fn for_context(&self, ctx: &Context) -> Option<Arc<Holder>> {
        let flags = wanted_flags(ctx);
        if flags == 0 {
            return None;
        }
        if let Some(h) = self.lock().get(&ctx.name) {
            if h.flags == flags && h.alive() {
                return Some(h.clone());
            }
        }
        // Dead (someone with root killed it) or changed: make a new one.
        match self.create(flags) {
            Ok(h) => {
                let h = Arc::new(h);
                self.lock().insert(ctx.name.clone(), h.clone());
                self.failures_lock().remove(&ctx.name);
                Some(h)
            }
            Err(error) => {
                let failure = Failure {
                    flags,
                    egress: ctx.isolation.network.egress().is_some(),
                    error,
                };
                let mut failures = self.failures_lock();
                // Warned once per cause: a broker that may not create namespaces at all
                // (unprivileged) fails the same way at every launch.
                let known = failures
                    .get(&ctx.name)
                    .is_some_and(|f| f.flags == flags && f.reason() == failure.reason());
                if !known {
                    for w in failure.warnings(&ctx.name) {
                        tracing::warn!("{w}");
                    }
                }
                failures.insert(ctx.name.clone(), failure);
                None
            }
        }
    }

    /// Whether the context's namespaces are in force now.
    pub fn in_force(&self, name: &str) -> bool {
        self.lock().get(name).is_some_and(|h| h.alive())
    }

    /// The warnings `ctx status` shows for namespaces that could not be created.
    pub fn warnings(&self) -> Vec<String> {
        let failures = self.failures_lock();
        let mut names: Vec<&String> = failures.keys().collect();
        names.sort();
        names
            .into_iter()
            .flat_map(|name| failures[name].warnings(name))
            .collect()
    }

    /// The options of `ctx` whose namespaces are not in force now, each with the reason.
    pub fn not_in_force(&self, ctx: &Context) -> Vec<(String, String)> {
        let flags = wanted_flags(ctx);
        if flags == 0 || self.in_force(&ctx.name) {
            return Vec::new();
        }
        let reason = match self.failures_lock().get(&ctx.name) {
            Some(f) => f.reason(),
            None => "its namespace holder has ended; the next launch re-creates it".into(),
        };
        options(flags, ctx.isolation.network.egress().is_some())
            .into_iter()
            .map(|o| (o.to_string(), reason.clone()))
            .collect()
    }

    /// Ends every namespace (broker shutdown).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Holder>>> {
        self.holders.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failures_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failure>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Failure {
    /// The error and what to do about it.
    fn reason(&self) -> String {
        match self.error.hint() {
            Some(hint) => format!("{}; {hint}", self.error),
            None => self.error.to_string(),
        }
    }

    /// One warning per option not in force, naming the context and the option.
    fn warnings(&self, context: &str) -> Vec<String> {
        let reason = self.reason();
        options(self.flags, self.egress)
            .into_iter()
            .map(|o| format!("contexts.{context}.isolation: {o} NOT in force: {reason}"))
            .collect()
    }
}

/// The `isolation` options behind `flags`, as contexts.toml spells them (`egress`: the
/// network namespace is for an allow list).
pub fn options(flags: i32, egress: bool) -> Vec<&'static str> {
    let mut parts = Vec::new();
    if flags & libc::CLONE_NEWPID != 0 {
        parts.push("pid = true");
    }
    if flags & libc::CLONE_NEWNET != 0 {
        parts.push(if egress {
            "network = { allow = [..] }"
        } else {
            "network = \"none\""
        });
    }
    parts
}

impl Holder {
    /// A pidfd polls readable once its process has exited.
    pub fn alive(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n == 0
    }
}

impl Holder {
    /// Its pid and flags, closing its pidfd without ending it.
    fn let_go(self) -> (libc::pid_t, i32) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: read once out of a value that is never dropped or used again.
        drop(unsafe { std::ptr::read(&this.pidfd) });
        (this.pid, this.flags)
    }
}

impl Drop for Holder {
    /// Kills the holder, which ends its PID namespace and every process in it, and reaps it.
    fn drop(&mut self) {
        let _ = crate::daemon::peer::pidfd_signal(&self.pidfd, libc::SIGKILL, 0);
        // The holder is our child: this reaps it.
        crate::daemon::spawn::reap(&self.pidfd);
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// What the holder child reads; it is a copy of the broker's memory (no `CLONE_VM`).
struct HolderArgs {
    flags: i32,
    /// Where the broker's argv strings live (`/proc/self/stat` arg_start, arg_end).
    argv_area: Option<(usize, usize)>,
    report_r: RawFd,
    report_w: RawFd,
}

/// Forks a holder with new namespaces `flags` and waits until it reports them ready.
fn create_holder(flags: i32) -> Result<Holder, NamespaceError> {
    let fail = |what: &'static str, err: io::Error| NamespaceError::Create {
        what,
        errno: err.raw_os_error().unwrap_or(0),
        err: err.to_string(),
    };
    let mut pipe = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(fail("pipe", io::Error::last_os_error()));
    }
    // SAFETY: both ends were just created and are owned here.
    let (report_r, report_w) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    let args = HolderArgs {
        flags,
        argv_area: argv_area(),
        report_r: report_r.as_raw_fd(),
        report_w: report_w.as_raw_fd(),
    };
    // Unmapped below (the holder has its copy).
    let stack = crate::daemon::spawn::map_stack(HOLDER_STACK).map_err(|e| fail("stack", e))?;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: without CLONE_VM the holder runs on its own copy of our memory (as after
    // fork) and only makes async-signal-safe syscalls; the stack top is in the mapping.
    let pid = unsafe {
        let top = (stack as *mut u8).add(HOLDER_STACK) as *mut libc::c_void;
        libc::clone(
            holder_entry,
            top,
            flags | libc::CLONE_PIDFD | libc::SIGCHLD,
            &args as *const HolderArgs as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: our mapping; the holder has its own copy.
    unsafe { libc::munmap(stack, HOLDER_STACK) };
    if pid < 0 {
        return Err(fail("clone", err));
    }
    drop(report_w);
    // SAFETY: CLONE_PIDFD stored a fresh descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let holder = Holder { pid, pidfd, flags };
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads into the rest of a valid buffer.
        let n = unsafe {
            libc::read(
                report_r.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    if got == buf.len() && buf[0] == READY {
        return Ok(holder);
    }
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let what = match (got, buf[0]) {
        (8, STEP_MOUNT_PRIVATE) => "make the mount namespace private",
        (8, STEP_MOUNT_PROC) => "mount /proc",
        (8, STEP_LOOPBACK) => "bring up loopback",
        (8, STEP_PDEATHSIG) => "tie the holder to the broker",
        _ => "the holder exited during set-up",
    };
    // Dropping `holder` kills and reaps it.
    Err(fail(what, io::Error::from_raw_os_error(errno)))
}

/// The broker's argv area, from fields 48 and 49 of `/proc/self/stat`.
fn argv_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is fields[n - 3].
    let start: usize = fields.get(45)?.parse().ok()?;
    let end: usize = fields.get(46)?.parse().ok()?;
    (start != 0 && end > start).then_some((start, end))
}

extern "C" fn holder_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points into this process's copy of the broker's memory.
    unsafe { holder(&*(arg as *const HolderArgs)) }
}

/// The holder: set up the namespaces, report, then reap forever. Async-signal-safe only.
unsafe fn holder(a: &HolderArgs) -> ! {
    // Signals: no broker handler may run here, and none from inside the namespace may
    // end us (a namespace init without handlers ignores them anyway).
    let mut all: libc::sigset_t = std::mem::zeroed();
    libc::sigfillset(&mut all);
    libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    for sig in 1..=libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    // Keep only the report pipe's write end, at fd 0: none of the broker's descriptors
    // (sockets, callers' pipes) may stay open in a process that lives this long.
    libc::close(a.report_r);
    if libc::dup2(a.report_w, 0) < 0 {
        libc::_exit(1);
    }
    libc::close_range(1, u32::MAX, 0);
    // Not in the broker's session: a Ctrl-C at a foreground broker must not reach us.
    libc::setsid();

    let report = |step: u8, errno: i32| -> ! {
        let mut buf = [0u8; 8];
        buf[0] = step;
        buf[4..8].copy_from_slice(&errno.to_ne_bytes());
        libc::write(0, buf.as_ptr().cast(), buf.len());
        libc::_exit(1)
    };
    let errno = || *libc::__errno_location();

    if a.flags & libc::CLONE_NEWNS != 0 {
        // A slave: host mounts made later still appear, our /proc never leaks out.
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) < 0
        {
            report(STEP_MOUNT_PRIVATE, errno());
        }
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) < 0
        {
            report(STEP_MOUNT_PROC, errno());
        }
    }
    if a.flags & libc::CLONE_NEWNET != 0 {
        if let Err(e) = loopback_up() {
            report(STEP_LOOPBACK, e);
        }
    }

    // Cosmetic but useful: `ps` inside shows "ctx-ns-init", not the broker's command line
    // (and `pkill -f ctx-broker` finds nothing to try). Our argv strings are our own copy.
    libc::prctl(libc::PR_SET_NAME, HOLDER_NAME.as_ptr(), 0, 0, 0);
    if let Some((start, end)) = a.argv_area {
        let area = std::slice::from_raw_parts_mut(start as *mut u8, end - start);
        area.fill(0);
        let n = (HOLDER_NAME.len() - 1).min(area.len().saturating_sub(1));
        area[..n].copy_from_slice(&HOLDER_NAME[..n]);
    }

    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
        report(STEP_PDEATHSIG, errno());
    }
    // The broker holds the read end until it has read this: a failed write means it died
    // before our death signal was armed, so nobody would ever end us.
    let mut ready = [0u8; 8];
    ready[0] = READY;
    if libc::write(0, ready.as_ptr().cast(), ready.len()) != ready.len() as isize {
        libc::_exit(1);
    }
    libc::close(0);

    // Reap every child the kernel reparents to us. SIGCHLD is blocked, so it stays pending
    // until sigwaitinfo takes it: no exit is missed between the reaping and the wait.
    let mut chld: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut chld);
    libc::sigaddset(&mut chld, libc::SIGCHLD);
    loop {
        while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) > 0 {}
        libc::sigwaitinfo(&chld, std::ptr::null_mut());
    }
}

/// `ip link set lo up` with one ioctl pair. Returns the errno on failure.
unsafe fn loopback_up() -> Result<(), i32> {
    #[repr(C)]
    struct IfReqFlags {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if s < 0 {
        return Err(*libc::__errno_location());
    }
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    let mut r = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req);
    if r == 0 {
        req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        r = libc::ioctl(s, libc::SIOCSIFFLAGS, &req);
    }
    let e = *libc::__errno_location();
    libc::close(s);
    if r < 0 {
        Err(e)
    } else {
        Ok(())
    }
}
