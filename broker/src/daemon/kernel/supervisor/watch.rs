//! The guard thread: receives each launch's listener, then each notification, answering
//! it at once or from a decision's thread of its own.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::exec::{decide, shares_our_memory};
use super::parent::relay_to_parent;
use super::{inherited, lock, Denied, Listeners, Policy, Relays, Verdict, Watched, NOTIF_BUF};

const REASON_BUSY: &str =
    "enforce: too many of this user's execs are still being checked (a hung mount?)";

/// Decisions one uid may have running at once (see [`InFlight`]).
const MAX_IN_FLIGHT_PER_UID: usize = 64;

/// How often listeners of ended launches are looked for (see [`watch`]).
const SWEEP_MS: i32 = 1000;

/// A decision's thread reads one path and a page at a time.
const DECISION_STACK: usize = 128 * 1024;

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

/// The epoll key of the guard's own hand-over socket (a launch's token never gets there).
const HANDOVER_KEY: u64 = u64::MAX;

/// The guard thread: waits on its hand-over socket and every launch's listener. Never
/// blocks except in `epoll_wait`: a notification is received only when epoll reported one
/// (and this is the only reader, so the receive cannot wait).
pub(super) fn watch(
    recv: OwnedFd,
    set: Arc<Listeners>,
    pending: Arc<Mutex<HashMap<u64, Arc<Policy>>>>,
    on_denied: Arc<dyn Fn(Denied) + Send + Sync>,
    relays: Arc<Relays>,
) {
    let in_flight = Arc::<InFlight>::default();
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: HANDOVER_KEY,
    };
    // SAFETY: valid descriptors and event.
    if unsafe {
        libc::epoll_ctl(
            set.epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            recv.as_raw_fd(),
            &mut ev,
        )
    } != 0
    {
        tracing::error!(
            "exec guard: cannot watch its socket: {}",
            io::Error::last_os_error()
        );
        return;
    }
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut last_sweep = Instant::now();
    loop {
        // A launch that ended may leave processes (a `setsid` daemon) that keep its
        // listener open: where only signals to the parent were supervised, the listener
        // goes once the launch has ended, looked for every second. Always: such listeners
        // join the set from the launches' workers without waking this thread.
        let timeout = SWEEP_MS;
        // SAFETY: `events` is a writable array of that length.
        let n = unsafe {
            libc::epoll_wait(
                set.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                timeout,
            )
        };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            tracing::error!("exec guard: epoll failed: {}", io::Error::last_os_error());
            return;
        }
        for ev in &events[..n as usize] {
            let (key, revents) = (ev.u64, ev.events);
            if key == HANDOVER_KEY {
                if take_handovers(&recv, &pending, &set, None).0 {
                    // The broker is exiting (its end is dropped with `Shared`). Dropping
                    // the listeners fails later execs of the launches (fail-closed).
                    return;
                }
                continue;
            }
            let Some(w) = lock(&set.by_token).get(&key).cloned() else {
                continue;
            };
            if revents & libc::EPOLLIN as u32 != 0 {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    handle(&w, &on_denied, &in_flight, &relays)
                }));
                if result.is_err() {
                    tracing::error!("exec guard: a notification's handling panicked");
                }
            } else if revents & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                // Every process of the launch is gone.
                set.remove_locked(&mut lock(&set.by_token), key);
            }
        }
        if last_sweep.elapsed().as_millis() >= SWEEP_MS as u128 {
            last_sweep = Instant::now();
            let mut map = lock(&set.by_token);
            let ended: Vec<u64> = map
                .iter()
                .filter(|(_, w)| {
                    (w.policy.as_ref()).is_some_and(|p| !p.guards_exec && p.launch_ended())
                })
                .map(|(&token, _)| token)
                .collect();
            for token in ended {
                set.remove_locked(&mut map, token);
            }
        }
    }
}

/// Takes every listener queued on a hand-over socket into the guard's set, but the one of
/// launch `keep`, which is given back with its policy; whether the socket reached its end
/// (every sender gone).
pub(super) fn take_handovers(
    recv: &OwnedFd,
    pending: &Mutex<HashMap<u64, Arc<Policy>>>,
    set: &Listeners,
    keep: Option<u64>,
) -> (bool, Option<(OwnedFd, Arc<Policy>)>) {
    let mut kept = None;
    loop {
        match receive(recv) {
            // The child could not install its listener and runs without one.
            Received::Without(token) => {
                lock(pending).remove(&token);
            }
            Received::Listener(token, listener) => {
                let policy = lock(pending).remove(&token);
                match policy {
                    Some(policy) if Some(token) == keep => kept = Some((listener, policy)),
                    Some(policy) => set.add(token, listener, Some(policy)),
                    // Its launch gave up (the child exited without exec'ing): closing
                    // the listener fails any exec still asked of it (ENOSYS).
                    None => tracing::debug!("exec guard: a listener for a launch that failed"),
                }
            }
            Received::Empty => return (false, kept),
            Received::Closed => return (true, kept),
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
    relays: &Arc<Relays>,
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
    if let Some(call) =
        crate::daemon::kernel::seccomp::signal_call(req.data.arch, req.data.nr as u32)
    {
        // Answered here, at once: relaying is a channel send, and the sender waits.
        let verdict = match &w.policy {
            Some(policy) => relay_to_parent(&req, call, policy.parent.as_ref()),
            None => match inherited::decide_at_once(listener, &req, call, relays) {
                Some(verdict) => verdict,
                None => {
                    // Before 6.9, a process not placed recently: placing it reads births
                    // from `/proc/PID/stat`, which waits while it (or an ancestor) is in
                    // an exec. Decided on an asking thread among its uid's jobs, at most
                    // as many at a time as its execs (helper-108).
                    let uid = crate::daemon::registry::euid_of(req.pid as libc::pid_t)
                        .unwrap_or(u32::MAX);
                    let Some(slot) = in_flight.enter(uid) else {
                        respond(listener, req.id, &Verdict::Fail(libc::EAGAIN));
                        return;
                    };
                    let (watched, relays) = (w.clone(), relays.clone());
                    crate::daemon::closer::ask_aside(Some(uid), move || {
                        let _slot = slot;
                        let listener = watched.listener.as_raw_fd();
                        let verdict = inherited::decide(listener, &req, call, &relays);
                        respond(listener, req.id, &verdict);
                    });
                    return;
                }
            },
        };
        respond(listener, req.id, &verdict);
        return;
    }
    // A runtime thread's filter sends nothing else.
    let Some(policy) = &w.policy else {
        respond(listener, req.id, &Verdict::Fail(libc::ENOSYS));
        return;
    };
    if !policy.guards_exec {
        respond(listener, req.id, &Verdict::Continue);
        return;
    }
    let busy = Verdict::Deny {
        errno: libc::EACCES,
        reason: REASON_BUSY,
    };
    let Some(slot) = in_flight.enter(policy.uid) else {
        respond(listener, req.id, &busy);
        report(w, policy, &**on_denied, &req, busy, b"?".to_vec(), None);
        return;
    };
    let (watched, checked, sink) = (w.clone(), policy.clone(), on_denied.clone());
    let spawned = std::thread::Builder::new()
        .name("exec-guard-check".into())
        .stack_size(DECISION_STACK)
        .spawn(move || {
            let _slot = slot;
            let listener = watched.listener.as_raw_fd();
            // The spawn child before its exec: the broker's own exec of the program. Asked
            // here, not on the guard thread: `kcmp` waits as long as the process is inside
            // an exec, which a FUSE file's flush can hold up for good (helper-101).
            if shares_our_memory(req.pid as libc::pid_t) {
                respond(listener, req.id, &Verdict::Continue);
                return;
            }
            let (verdict, path, target) = decide(listener, &req, &checked);
            respond(listener, req.id, &verdict);
            report(&watched, &checked, &*sink, &req, verdict, path, target);
        });
    if spawned.is_err() {
        respond(listener, req.id, &busy);
        report(w, policy, &**on_denied, &req, busy, b"?".to_vec(), None);
    }
}

/// Audits a denial (after answering, so the process waits no longer than the decision).
fn report(
    w: &Watched,
    policy: &Policy,
    on_denied: &(dyn Fn(Denied) + Send + Sync),
    req: &libc::seccomp_notif,
    verdict: Verdict,
    path: Vec<u8>,
    target: Option<String>,
) {
    if let Verdict::Deny { errno, reason } = verdict {
        // A process that loops on denied execs must not flood the log (it is refused
        // either way).
        let Some(suppressed) = lock(&w.budget).take(Instant::now()) else {
            return;
        };
        tracing::warn!(
            context = %policy.context,
            pid = req.pid,
            // Escaped: a program names the file it tried, newlines and all (helper-107
            // forged whole log lines so).
            path = %crate::escape::bytes(&path),
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

pub(super) fn respond(listener: RawFd, id: u64, verdict: &Verdict) {
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
