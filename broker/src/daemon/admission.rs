//! What one uid can make the broker hold: its connections, the bytes and descriptors of
//! its unfinished handshakes (sent before anything about the peer is authorised), and the
//! descriptors its requests passed, until they are closed ([`Closing`]). Counted from
//! `SO_PEERCRED` at accept and given back when the connection's [`Admission`] (or the
//! descriptors' charge) drops. Root (uid 0) outside every context is never counted nor refused: whatever the
//! other uids do, memory and descriptors stay for it. A process of a uid-0 context is
//! counted as uid 0 (only such processes are, then): it is root the broker never trusted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Connections of one uid in their handshake at once. A real client's handshake takes
/// microseconds, but a burst of launches (`xargs -P`, a parallel build, a shell starting
/// jobs) connects faster than the broker reads, and a caller preempted between its connect
/// and its request holds its turn for a time slice: a connection past these waits, unread,
/// for a turn of its own uid (see [`Admission::handshake_turn`]) instead of being refused,
/// when the uid may enter some context (its launches hold that many connections anyway).
/// Unread, it holds one descriptor of the broker (counted); the bytes and descriptors it
/// queued are charged by the kernel to the sender's socket and limits. A uid allowed
/// nowhere, which has no launch to wait for, is refused past them; so is one whose
/// connections in or waiting for a handshake already hold its [`ENTITLED_SHARE`] of the
/// descriptors not reserved for root: silent connections cost their sender nothing, and
/// would otherwise take every descriptor the other uids' launches need.
pub const HANDSHAKING_PER_UID: u32 = 64;
/// Connections of one uid in all: each routed launch holds one while its process runs, so
/// a parallel build routed through the interposer needs room.
pub const CONNECTIONS_PER_UID: u32 = 1024;
/// Bytes the unfinished handshakes of one uid may buffer together: four requests at
/// `ARG_MAX` (argv and environment together reach 2 MiB, the frame limit is 4 MiB).
pub const HANDSHAKE_BYTES_PER_UID: usize = 16 * 1024 * 1024;
/// Descriptors the unfinished handshakes of one uid may carry while it may enter no
/// context: a request passes at most its standard input, output and error. A peer that
/// may enter some context ([`Admission::entitle`]) is not held to it: a launch passes
/// every inheritable descriptor of its caller (a server's thousand sockets), so its uid's
/// handshakes may hold one [`ENTITLED_SHARE`]th of the descriptors not reserved for root.
/// Either bound also holds what the uid's requests past their handshake still hold: a
/// launch keeps its caller's descriptors until its fork, which a path the caller chose can
/// hold up (see [`FORKS_PER_UID`]), and its uid would otherwise pass more with each launch.
pub const HANDSHAKE_FDS_PER_UID: usize = 3 * HANDSHAKING_PER_UID as usize;
/// One uid allowed into a context may hold this fraction of the broker's descriptors not
/// reserved for root in its unfinished handshakes: the others keep the rest.
pub const ENTITLED_SHARE: u64 = 4;
/// Descriptors no uid but root can take: the broker's own (listener, namespace holders,
/// reserved ports, audit log) and a root launch's.
const RESERVED_FDS: u64 = 256;
/// Bytes the connections of one uid may hold past their handshakes, together: the frames
/// being read (each at most `connection::AFTER_HANDSHAKE_FRAME`, a 4 KiB buffer free) and
/// the typed input terminal programs have not read yet (at most `INPUT_BUDGET` per
/// launch). Past it, the uid's connections wait, unread, for a frame that needs more room
/// until some is given back; their senders' sockets fill and they stop sending.
pub const HELD_PER_UID: usize = 32 * 1024 * 1024;
/// Bytes the launches of one uid may hold in their requests (argv, environment, and the
/// plan made of them) between their handshake and their program's exec, together. Apart
/// from [`HELD_PER_UID`]: a uid's terminal input waiting to be read must not keep its new
/// launches from starting. Past it, a launch is told `Busy` and tries again.
pub const REQUESTS_PER_UID: usize = 32 * 1024 * 1024;
/// A request counted this large, let go of, is followed by `malloc_trim`: glibc keeps
/// freed heap pages its arenas cannot give back past the small blocks the running
/// launches hold between them, so large requests would otherwise leave the broker as
/// large as they were.
pub const TRIM_AFTER: usize = 512 * 1024;
/// Terminals the launches of one uid may keep open after their programs ended, for the
/// jobs they left behind (see [`Admissions::linger`]). Each still holds its connection,
/// counted as above; this keeps a context that leaves a process holding every terminal it
/// is given from taking its callers' connections this way. Past it, a terminal is hung up
/// when its program ends.
pub const LINGERING_PER_UID: u32 = 64;
/// Launches of one uid between their start and their program's exec. A fork returns only
/// once its child has exec'd, which a path the caller chose can hold up for as long as a
/// lease break or a hung mount lasts: each such fork holds one of the runtime's blocking
/// threads meanwhile, and this keeps one uid from taking them all. Past it, that uid's
/// next launches wait; the others' do not.
pub const FORKS_PER_UID: usize = 16;
/// What one connection is counted as against `RLIMIT_NOFILE`: its socket, and its launch's
/// pidfd (or, while it is identified, its peer's), PTY master and report pipe.
const FDS_PER_CONNECTION: u64 = 4;
/// What one egress proxy connection holds: the client's socket, the destination's, and
/// the relay's two pipes.
pub const FDS_PER_EGRESS: u64 = 6;
/// Egress connections of all contexts together may hold at most this fraction of the
/// descriptors not reserved for root: a context's proxy, which any program of the context
/// can fill, never takes what launches (its own and the other contexts') need.
const EGRESS_SHARE_ALL: u64 = 2;
/// Of the egress part, this fraction is kept in even parts, one for each egress context,
/// and the rest is common to whichever asks first: a busy context can use more than its
/// part while the others are idle, and contexts that fill the common rest still leave each
/// other context its own part.
const EGRESS_KEPT: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("uid {0} already has {HANDSHAKING_PER_UID} connections in their handshake")]
    Handshaking(u32),
    #[error("uid {0} already has {CONNECTIONS_PER_UID} connections")]
    Connections(u32),
    #[error(
        "uid {uid}: its connections in or waiting for a handshake hold its share of the \
         broker's descriptors ({limit} open files allowed, {RESERVED_FDS} kept for root)"
    )]
    Waiting { uid: u32, limit: u64 },
    #[error(
        "uid {uid}: the descriptors not reserved for root are taken \
         ({limit} open files allowed, {RESERVED_FDS} kept for root)"
    )]
    Descriptors { uid: u32, limit: u64 },
    #[error("uid {uid}: {closing} descriptors it sent are still being closed")]
    Closing { uid: u32, closing: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error(
        "uid {0}'s unfinished handshakes would buffer more than {HANDSHAKE_BYTES_PER_UID} bytes"
    )]
    Bytes(u32),
    #[error(
        "uid {0}'s unfinished handshakes would hold more than {HANDSHAKE_FDS_PER_UID} descriptors"
    )]
    Fds(u32),
    #[error(
        "uid {uid}'s unfinished launches would pass the broker more than {cap} descriptors \
         (a share of its {limit} open files: raise the broker's RLIMIT_NOFILE, \
         LimitNOFILE= in its unit)"
    )]
    EntitledFds { uid: u32, cap: usize, limit: u64 },
    #[error(
        "uid {uid}: the descriptors not reserved for root are taken \
         ({limit} open files allowed, {RESERVED_FDS} kept for root)"
    )]
    Descriptors { uid: u32, limit: u64 },
}

/// Why an egress connection is refused before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EgressRefusal {
    #[error(
        "the broker's descriptors not reserved for root are taken ({limit} open files \
         allowed, {RESERVED_FDS} kept for root)"
    )]
    Descriptors { limit: u64 },
    #[error(
        "the context's egress connections hold their share of the broker's descriptors \
         (the {kept} kept for each of {contexts} egress context(s), and the {common} they \
         share are taken, of its {limit} open files)"
    )]
    Context {
        kept: u64,
        contexts: u64,
        common: u64,
        limit: u64,
    },
    #[error(
        "the egress connections of all contexts hold their share of the broker's \
         descriptors ({cap} of its {limit} open files)"
    )]
    All { cap: u64, limit: u64 },
}

#[derive(Default)]
pub struct Admissions {
    counts: Mutex<Counts>,
    /// Turns to fork, by uid ([`FORKS_PER_UID`]); a uid-0 context's callers share uid 0's.
    forks: Mutex<HashMap<u32, Arc<Semaphore>>>,
    /// By uid: a handshake of it ended, for its connections waiting for a turn.
    handshake_turns: Mutex<HashMap<u32, Arc<Notify>>>,
    /// Descriptors counted against some uid's share, or the broker's, were given back:
    /// for handshakes waiting for room ([`Admission::wait_for_room`]).
    room: Notify,
    /// Bytes held past a handshake were given back: for connections waiting to read a
    /// frame ([`Admission::hold_after_waiting`]).
    held_room: Notify,
}

#[derive(Default)]
struct Counts {
    per_uid: HashMap<u32, PerUid>,
    /// Descriptors non-root connections and egress connections are counted as, against
    /// `RLIMIT_NOFILE`.
    fds: u64,
    /// Of those, the egress connections' ...
    egress: u64,
    /// ... and by context.
    egress_by_context: HashMap<String, u64>,
    /// Contexts with an egress rule in the configuration in force: each has its part of
    /// the egress descriptors kept for it.
    egress_contexts: u64,
    /// Terminals kept open after their program ended, by the uid of the launch's caller.
    lingering: HashMap<u32, u32>,
}

/// One terminal kept open after its program ended, counted until it drops.
pub struct Linger {
    admissions: Arc<Admissions>,
    uid: u32,
    /// Root outside every context is never counted (nor refused).
    counted: bool,
}

impl Drop for Linger {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let mut counts = self.admissions.lock();
        if let Some(n) = counts.lingering.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                counts.lingering.remove(&self.uid);
            }
        }
    }
}

/// One egress connection's descriptors, counted until it drops.
pub struct EgressFds {
    admissions: Arc<Admissions>,
    context: String,
}

impl Drop for EgressFds {
    fn drop(&mut self) {
        let mut counts = self.admissions.lock();
        counts.fds -= FDS_PER_EGRESS;
        counts.egress -= FDS_PER_EGRESS;
        if let Some(n) = counts.egress_by_context.get_mut(&self.context) {
            *n -= FDS_PER_EGRESS;
            if *n == 0 {
                counts.egress_by_context.remove(&self.context);
            }
        }
        drop(counts);
        self.admissions.room.notify_waiters();
    }
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
struct PerUid {
    connections: u32,
    handshaking: u32,
    /// Admitted past [`HANDSHAKING_PER_UID`], waiting unread for a turn.
    waiting: u32,
    bytes: usize,
    fds: usize,
    /// Held by the handshakes of its entitled connections.
    entitled_fds: usize,
    /// Sent by it and waiting to be closed (see `closer`).
    closing: usize,
    /// Received in the handshakes of its requests that are past them, until closed: a
    /// launch holds its caller's until its fork, which a path the caller chose can hold up.
    passed: usize,
    /// Held by its connections past their handshakes ([`HELD_PER_UID`]).
    held_after: usize,
    /// Held by its launches' requests until their programs' exec ([`REQUESTS_PER_UID`]).
    requests: usize,
}

/// One admitted connection's share of its uid's counts, given back on drop.
pub struct Admission {
    admissions: Arc<Admissions>,
    uid: u32,
    /// The operator (root outside every context): never counted.
    exempt: bool,
    handshaking: bool,
    /// Counted in its uid's `waiting` until it takes a turn.
    waiting: bool,
    /// The peer may enter some context: its handshake's descriptors are not held to
    /// [`HANDSHAKE_FDS_PER_UID`] (nor counted in it), only to the global bound.
    entitled: bool,
    bytes: usize,
    fds: usize,
    /// Held past the handshake, counted in its uid's `held_after`.
    held_after: usize,
    /// Its launch's request, counted in its uid's `requests`.
    request: usize,
}

impl Admissions {
    /// Counts a new connection of `uid` (`in_context`: the peer runs in a context;
    /// `entitled`: it may enter some context), or says why it is refused.
    pub fn admit(
        self: &Arc<Self>,
        uid: u32,
        in_context: bool,
        entitled: bool,
    ) -> Result<Admission, Refusal> {
        let exempt = uid == 0 && !in_context;
        // Built only once counted: its drop gives back what it counted.
        let admission = || Admission {
            admissions: self.clone(),
            uid,
            exempt,
            handshaking: !exempt,
            waiting: false,
            entitled: false,
            bytes: 0,
            fds: 0,
            held_after: 0,
            request: 0,
        };
        if exempt {
            return Ok(admission());
        }
        // Read at each admission: an operator may raise it on the running broker (prlimit).
        let limit = nofile_limit();
        let mut counts = self.lock();
        if counts.fds + FDS_PER_CONNECTION > limit.saturating_sub(RESERVED_FDS) {
            return Err(Refusal::Descriptors { uid, limit });
        }
        let entry = counts.per_uid.entry(uid).or_default();
        if entry.connections >= CONNECTIONS_PER_UID {
            return Err(Refusal::Connections(uid));
        }
        // Connections that gave their turn back to wait for bytes count too: silent ones
        // would otherwise never reach a bound.
        let unfinished = entry.handshaking + entry.waiting;
        if unfinished >= HANDSHAKING_PER_UID {
            if !entitled {
                return Err(Refusal::Handshaking(uid));
            }
            if u64::from(unfinished + 1) * FDS_PER_CONNECTION > entitled_cap(limit) as u64 {
                return Err(Refusal::Waiting { uid, limit });
            }
        }
        let turn = entry.handshaking < HANDSHAKING_PER_UID;
        if !turn {
            entry.waiting += 1;
        } else {
            entry.handshaking += 1;
        }
        entry.connections += 1;
        counts.fds += FDS_PER_CONNECTION;
        let mut admitted = admission();
        admitted.handshaking = turn;
        admitted.waiting = !turn;
        Ok(admitted)
    }

    /// Counts a new egress connection of `context`'s proxy, or says why it is refused: its
    /// descriptors come out of what is not reserved for root, within the egress shares.
    pub fn admit_egress(self: &Arc<Self>, context: &str) -> Result<EgressFds, EgressRefusal> {
        // Read at each connection: an operator may raise it on the running broker.
        let limit = nofile_limit();
        let mut counts = self.lock();
        let own = counts.egress_by_context.get(context).copied().unwrap_or(0);
        let shares = EgressShares::new(limit, counts.egress_contexts);
        let borrowed = counts
            .egress_by_context
            .values()
            .map(|held| held.saturating_sub(shares.kept))
            .sum();
        shares.room(counts.fds, counts.egress, own, borrowed)?;
        counts.fds += FDS_PER_EGRESS;
        counts.egress += FDS_PER_EGRESS;
        *counts
            .egress_by_context
            .entry(context.to_string())
            .or_default() += FDS_PER_EGRESS;
        Ok(EgressFds {
            admissions: self.clone(),
            context: context.to_string(),
        })
    }

    /// How many contexts have an egress rule now (at start and after each reload). Says
    /// so when that leaves no connection kept for each: then one busy context can take
    /// all of the common part, and the others get nothing while it holds it.
    pub fn set_egress_contexts(&self, n: usize) -> Option<String> {
        self.lock().egress_contexts = n as u64;
        crowded(nofile_limit(), n as u64)
    }

    /// Counts one more terminal of a launch of `uid` kept open after its program ended,
    /// or `None` when that uid keeps [`LINGERING_PER_UID`] open already. As for
    /// connections, root outside every context is not counted, and a uid-0 context's
    /// callers are counted apart from it: they cannot take the operator's.
    pub fn linger(self: &Arc<Self>, uid: u32, in_context: bool) -> Option<Linger> {
        if uid == 0 && !in_context {
            return Some(Linger {
                admissions: self.clone(),
                uid,
                counted: false,
            });
        }
        let mut counts = self.lock();
        let n = counts.lingering.entry(uid).or_default();
        if *n >= LINGERING_PER_UID {
            return None;
        }
        *n += 1;
        Some(Linger {
            admissions: self.clone(),
            uid,
            counted: true,
        })
    }

    /// Waits for a turn of `uid` to fork a launch ([`FORKS_PER_UID`]), held until the fork
    /// has returned. The operator (root outside every context) never waits.
    pub async fn fork_turn(&self, uid: u32, in_context: bool) -> Option<OwnedSemaphorePermit> {
        if uid == 0 && !in_context {
            return None;
        }
        let turns = self
            .forks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(uid)
            .or_insert_with(|| Arc::new(Semaphore::new(FORKS_PER_UID)))
            .clone();
        // Never closed: acquiring fails only on a closed semaphore.
        turns.acquire_owned().await.ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handshake_turns(&self, uid: u32) -> Arc<Notify> {
        self.handshake_turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(uid)
            .or_default()
            .clone()
    }

    #[cfg(test)]
    fn held(&self, uid: u32) -> Option<(u32, u32, usize, usize)> {
        let counts = self.lock();
        counts
            .per_uid
            .get(&uid)
            .map(|p| (p.connections, p.handshaking, p.bytes, p.fds))
    }
}

/// Descriptors of one uid waiting for a closer thread (or stuck in their close), or those
/// its request passed, from its handshake's end until they are closed: counted against
/// the broker's descriptors not reserved for root, and against the uid's share, which its
/// new handshakes then have less of. The first kind also refuses the uid's new connections
/// while it has too many ([`Admission::check_closing`]).
pub struct Closing {
    admissions: Arc<Admissions>,
    uid: u32,
    n: usize,
    /// Counted in the uid's `passed`, not its `closing`.
    passed: bool,
}

impl Drop for Closing {
    fn drop(&mut self) {
        let mut counts = self.admissions.lock();
        counts.fds -= self.n as u64;
        if let Some(entry) = counts.per_uid.get_mut(&self.uid) {
            if self.passed {
                entry.passed -= self.n;
            } else {
                entry.closing -= self.n;
            }
            if *entry == PerUid::default() {
                counts.per_uid.remove(&self.uid);
            }
        }
        drop(counts);
        self.admissions.room.notify_waiters();
    }
}

/// Charges descriptors to be closed to the uid they came from.
#[derive(Clone)]
pub struct Charger {
    admissions: Arc<Admissions>,
    uid: u32,
}

impl Charger {
    /// The uid charged.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Counts `n` descriptors as closing until the returned charge drops.
    pub fn charge(&self, n: usize) -> Closing {
        let mut counts = self.admissions.lock();
        counts.fds += n as u64;
        counts.per_uid.entry(self.uid).or_default().closing += n;
        Closing {
            admissions: self.admissions.clone(),
            uid: self.uid,
            n,
            passed: false,
        }
    }
}

impl Admissions {
    /// What charges the descriptors a peer of `uid` sent: none for the operator (root
    /// outside every context), who is never counted.
    pub fn charger(self: &Arc<Self>, uid: u32, in_context: bool) -> Option<Charger> {
        (uid != 0 || in_context).then(|| Charger {
            admissions: self.clone(),
            uid,
        })
    }
}

impl Admission {
    /// What charges the descriptors this connection's peer sent, once they are handed to
    /// be closed; `None` for the operator.
    pub fn charger(&self) -> Option<Charger> {
        (!self.exempt).then(|| Charger {
            admissions: self.admissions.clone(),
            uid: self.uid,
        })
    }

    /// Refuses this connection while its uid has more descriptors waiting to be closed
    /// than its handshakes may hold: a uid whose closes are stuck (a lingering socket, a
    /// hung mount) cannot make the broker hold more of them by sending more.
    pub fn check_closing(&self) -> Result<(), Refusal> {
        if self.exempt {
            return Ok(());
        }
        let cap = if self.entitled {
            entitled_cap(nofile_limit())
        } else {
            HANDSHAKE_FDS_PER_UID
        };
        let counts = self.admissions.lock();
        let closing = counts.per_uid.get(&self.uid).map_or(0, |e| e.closing);
        if closing > cap {
            return Err(Refusal::Closing {
                uid: self.uid,
                closing,
            });
        }
        Ok(())
    }

    /// The peer may enter some context (decided from its pinned identity at accept): the
    /// descriptors its handshake carries are bounded by the broker's descriptors not
    /// reserved for root, not by its uid's [`HANDSHAKE_FDS_PER_UID`]. A uid allowed
    /// nowhere keeps that small budget.
    /// Whether this admission counts a connection as [`Admissions::admit`] of `uid` with
    /// `in_context` and `entitled` would: then it can stand for that one.
    pub fn counts_as(&self, uid: u32, in_context: bool, entitled: bool) -> bool {
        self.uid == uid && self.exempt == (uid == 0 && !in_context) && self.entitled == entitled
    }

    pub fn entitle(&mut self) {
        // Only before the handshake holds any: those were counted in the uid's budget, and
        // are given back from there.
        if self.fds == 0 {
            self.entitled = true;
        }
    }

    /// How many more descriptors this connection may receive now (its uid's and the
    /// broker's bounds): the receive buffer is sized to it, so that the kernel discards
    /// any beyond instead of installing them in the broker first.
    pub fn fd_room(&self) -> usize {
        if !self.handshaking {
            return usize::MAX;
        }
        let limit = nofile_limit();
        let counts = self.admissions.lock();
        let global = limit
            .saturating_sub(RESERVED_FDS)
            .saturating_sub(counts.fds) as usize;
        let entry = counts.per_uid.get(&self.uid).copied().unwrap_or_default();
        // Descriptors of the uid's still being closed count too: a uid whose closes are
        // slow (or stuck) must not make the broker hold more meanwhile; so do those its
        // launches hold until their forks, which it can make wait.
        let others = entry.closing + entry.passed;
        let own = if self.entitled {
            entitled_cap(limit).saturating_sub(entry.entitled_fds + others)
        } else {
            HANDSHAKE_FDS_PER_UID.saturating_sub(entry.fds + others)
        };
        global.min(own)
    }

    /// The most descriptors this connection's uid may hold in its handshakes (and its
    /// launches waiting to fork) together, were nothing else of it counted: a request
    /// passing more can never be taken, however long it waits.
    pub fn fd_cap(&self) -> usize {
        if !self.handshaking {
            return usize::MAX;
        }
        if self.entitled {
            entitled_cap(nofile_limit())
        } else {
            HANDSHAKE_FDS_PER_UID
        }
    }

    /// Waits until `ready` says there is room, checking it again each time descriptors
    /// counted against any share are given back; `None` once `deadline` passes first. A
    /// request whose descriptors fit its uid's share but not what its uid's other launches
    /// leave now waits for them to fork (or end) instead of being refused: a burst of
    /// launches (`xargs -P`, a parallel build) then runs whole, as it does locally, and the
    /// uid still never holds more than its share.
    pub async fn wait_for_room<T>(
        &mut self,
        deadline: tokio::time::Instant,
        mut ready: impl FnMut(&mut Admission) -> Option<T>,
    ) -> Option<T> {
        let admissions = self.admissions.clone();
        loop {
            let freed = admissions.room.notified();
            tokio::pin!(freed);
            // Registered before the check: room given back in between still wakes it.
            freed.as_mut().enable();
            if let Some(v) = ready(self) {
                return Some(v);
            }
            tokio::time::timeout_at(deadline, freed).await.ok()?;
        }
    }

    /// Sets what this connection's handshake holds to `bytes` buffered and `fds` received;
    /// refused (nothing changed) when its uid's unfinished handshakes would then exceed their
    /// budget. Free once the handshake is over, and for root.
    pub fn hold(&mut self, bytes: usize, fds: usize) -> Result<(), OverBudget> {
        if !self.handshaking || (bytes == self.bytes && fds == self.fds) {
            return Ok(());
        }
        let mut counts = self.admissions.lock();
        let global = counts.fds - self.fds as u64 + fds as u64;
        // Read only when descriptors grow: an operator may raise it on the running broker,
        // and the bytes-only path stays free of the syscall.
        let limit = if fds > self.fds {
            let limit = nofile_limit();
            if global > limit.saturating_sub(RESERVED_FDS) {
                return Err(OverBudget::Descriptors {
                    uid: self.uid,
                    limit,
                });
            }
            Some(limit)
        } else {
            None
        };
        let (uid, entitled) = (self.uid, self.entitled);
        let entry = counts.per_uid.entry(uid).or_default();
        let others = entry.closing + entry.passed;
        let new_bytes = (entry.bytes - self.bytes)
            .checked_add(bytes)
            .filter(|&b| b <= HANDSHAKE_BYTES_PER_UID)
            .ok_or(OverBudget::Bytes(uid))?;
        let (held, cap, over) = if entitled {
            // Shrinking (no limit read) is always allowed.
            let cap = limit.map_or(usize::MAX, entitled_cap);
            let over = OverBudget::EntitledFds {
                uid,
                cap,
                limit: limit.unwrap_or(0),
            };
            (&mut entry.entitled_fds, cap, over)
        } else {
            (&mut entry.fds, HANDSHAKE_FDS_PER_UID, OverBudget::Fds(uid))
        };
        // Growing, the uid's descriptors still being closed or held by its launches count
        // too (see `fd_room`).
        let room = if fds > self.fds {
            cap.saturating_sub(others)
        } else {
            cap
        };
        let new_fds = (*held - self.fds)
            .checked_add(fds)
            .filter(|&f| f <= room)
            .ok_or(over)?;
        *held = new_fds;
        entry.bytes = new_bytes;
        counts.fds = global;
        self.bytes = bytes;
        self.fds = fds;
        Ok(())
    }

    /// Waits, unread, until this connection's uid has fewer than [`HANDSHAKING_PER_UID`]
    /// connections in their handshake, then takes that turn; at once when it was admitted
    /// with one (and always for the operator).
    pub async fn handshake_turn(&mut self) {
        if self.exempt || self.handshaking {
            return;
        }
        let turns = self.admissions.handshake_turns(self.uid);
        loop {
            let ended = turns.notified();
            tokio::pin!(ended);
            // Registered before the check: a turn freed in between still wakes it.
            ended.as_mut().enable();
            {
                let mut counts = self.admissions.lock();
                let entry = counts.per_uid.entry(self.uid).or_default();
                if entry.handshaking < HANDSHAKING_PER_UID {
                    entry.handshaking += 1;
                    entry.waiting -= 1;
                    self.handshaking = true;
                    self.waiting = false;
                    return;
                }
            }
            ended.await;
        }
    }

    /// Sets what this connection holds past its handshake to `bytes`. Growing is refused
    /// (nothing changes) when its uid's connections would then hold more than
    /// [`HELD_PER_UID`], unless `force`d: for bytes that were counted a moment ago as
    /// something else of the same connection (a frame's buffer becoming typed input).
    /// Shrinking always succeeds. Free for the operator.
    pub fn hold_after(&mut self, bytes: usize, force: bool) -> bool {
        if self.exempt || bytes == self.held_after {
            return true;
        }
        let mut counts = self.admissions.lock();
        let entry = counts.per_uid.entry(self.uid).or_default();
        let total = entry.held_after - self.held_after + bytes;
        if bytes > self.held_after && total > HELD_PER_UID && !force {
            return false;
        }
        entry.held_after = total;
        let shrank = bytes < self.held_after;
        self.held_after = bytes;
        drop(counts);
        if shrank {
            self.admissions.held_room.notify_waiters();
        }
        true
    }

    /// Sets what this connection's launch holds in its request to `bytes`; growing is
    /// refused (nothing changes) past [`REQUESTS_PER_UID`] for its uid. Free for the
    /// operator.
    pub fn hold_request(&mut self, bytes: usize) -> bool {
        if self.exempt || bytes == self.request {
            return true;
        }
        let mut counts = self.admissions.lock();
        let entry = counts.per_uid.entry(self.uid).or_default();
        let total = entry.requests - self.request + bytes;
        if bytes > self.request && total > REQUESTS_PER_UID {
            return false;
        }
        entry.requests = total;
        self.request = bytes;
        true
    }

    /// Its launch's request is freed (its program exec'd, or the connection ends): the
    /// room goes back to the uid, and the heap's pages after a large one.
    pub fn let_go_of_request(&mut self) {
        let was = self.request;
        self.hold_request(0);
        if was > TRIM_AFTER {
            // SAFETY: malloc_trim only returns free heap pages to the kernel.
            unsafe { libc::malloc_trim(0) };
        }
    }

    /// What [`Admission::hold_request`] counts now.
    pub fn request(&self) -> usize {
        self.request
    }

    /// [`Admission::hold_after`], waiting for room as long as it takes. Cancel-safe: it
    /// sets a total, which the next call sets again.
    pub async fn hold_after_waiting(&mut self, bytes: usize) {
        let admissions = self.admissions.clone();
        loop {
            let freed = admissions.held_room.notified();
            tokio::pin!(freed);
            // Registered before the check: room given back in between still wakes it.
            freed.as_mut().enable();
            if self.hold_after(bytes, false) {
                return;
            }
            freed.await;
        }
    }

    /// Gives the turn back to wait, unread, for the request: a turn is for a request that
    /// is there. A caller that connected but has not sent yet (preempted, or its send
    /// refused by the kernel while its uid's descriptors in flight are at its limit, which
    /// the unread requests waiting for a turn keep there) must not hold one those requests
    /// need, or neither goes on until the handshake's deadline.
    pub fn step_back(&mut self) {
        if self.exempt || !self.handshaking {
            return;
        }
        {
            let mut counts = self.admissions.lock();
            let entry = counts.per_uid.entry(self.uid).or_default();
            entry.handshaking -= 1;
            entry.waiting += 1;
        }
        self.handshaking = false;
        self.waiting = true;
        self.admissions.handshake_turns(self.uid).notify_one();
    }

    /// The peer is past its handshake: what it buffered is its request, being served. The
    /// descriptors it received stay counted against its uid until the returned charge
    /// drops (once they are closed); `None` for the operator, and when none were received.
    #[must_use = "the descriptors received stay counted until the charge drops"]
    pub fn handshake_done(&mut self) -> Option<Closing> {
        if !self.handshaking {
            return None;
        }
        // After the count below is down: the woken connection finds the turn free.
        let turns = (!self.exempt).then(|| self.admissions.handshake_turns(self.uid));
        let passed = self.release_turn();
        if let Some(turns) = turns {
            turns.notify_one();
        }
        passed
    }

    /// Gives back the handshake's turn and budget, and charges the descriptors it holds as
    /// passed, under the same lock: no other handshake of the uid takes their room between.
    fn release_turn(&mut self) -> Option<Closing> {
        let passed = self.fds;
        let mut counts = self.admissions.lock();
        let entry = counts.per_uid.entry(self.uid).or_default();
        entry.handshaking -= 1;
        entry.bytes -= self.bytes;
        if self.entitled {
            entry.entitled_fds -= passed;
        } else {
            entry.fds -= passed;
        }
        // They stay in the broker's count (`fds`); only what they are counted as changes.
        entry.passed += passed;
        drop(counts);
        self.handshaking = false;
        self.bytes = 0;
        self.fds = 0;
        (passed > 0).then(|| Closing {
            admissions: self.admissions.clone(),
            uid: self.uid,
            n: passed,
            passed: true,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.exempt {
            return;
        }
        // Its connection, closing, charges what it still holds anew.
        drop(self.handshake_done());
        self.hold_after(0, false);
        // A request given up before its exec (refused, failed, its client gone).
        self.let_go_of_request();
        let mut counts = self.admissions.lock();
        counts.fds -= FDS_PER_CONNECTION;
        if let Some(entry) = counts.per_uid.get_mut(&self.uid) {
            entry.connections -= 1;
            if self.waiting {
                entry.waiting -= 1;
            }
            if *entry == PerUid::default() {
                counts.per_uid.remove(&self.uid);
            }
        }
        drop(counts);
        self.admissions.room.notify_waiters();
    }
}

/// What the handshakes of one entitled uid may hold together under `limit` open files.
fn entitled_cap(limit: u64) -> usize {
    let share = limit.saturating_sub(RESERVED_FDS) / ENTITLED_SHARE;
    (share as usize).max(HANDSHAKE_FDS_PER_UID)
}

/// The warning for `contexts` egress contexts under `limit` open files, if none of them
/// keeps a connection of its own.
fn crowded(limit: u64, contexts: u64) -> Option<String> {
    let shares = EgressShares::new(limit, contexts);
    (contexts > 0 && shares.kept < FDS_PER_EGRESS).then(|| {
        format!(
            "{contexts} contexts with egress rules share {} of the broker's {limit} open \
             files: none keeps a proxy connection of its own, so one of them can take them \
             all; raise the broker's RLIMIT_NOFILE (LimitNOFILE=)",
            shares.pool
        )
    })
}

/// How the descriptors egress connections may hold under one `RLIMIT_NOFILE` are split.
struct EgressShares {
    limit: u64,
    /// Not reserved for root: what launches and egress share.
    free: u64,
    /// What egress connections of all contexts may hold together.
    pool: u64,
    /// Kept for each egress context.
    kept: u64,
    /// Egress contexts counted (at least one).
    contexts: u64,
    /// The rest of the pool, for any context beyond its kept part.
    common: u64,
}

impl EgressShares {
    fn new(limit: u64, contexts: u64) -> EgressShares {
        let free = limit.saturating_sub(RESERVED_FDS);
        let pool = free / EGRESS_SHARE_ALL;
        let contexts = contexts.max(1);
        let kept = pool / EGRESS_KEPT / contexts;
        EgressShares {
            limit,
            free,
            pool,
            kept,
            contexts,
            common: pool - kept * contexts,
        }
    }

    /// Whether one more egress connection fits, with `fds` counted in all, `all` of them
    /// by egress connections, `own` by this context's, and `borrowed` what the contexts
    /// hold beyond their kept parts, together.
    fn room(&self, fds: u64, all: u64, own: u64, borrowed: u64) -> Result<(), EgressRefusal> {
        let limit = self.limit;
        if fds + FDS_PER_EGRESS > self.free {
            return Err(EgressRefusal::Descriptors { limit });
        }
        // Holds also when a reload added contexts after others took the common part.
        if all + FDS_PER_EGRESS > self.pool {
            let cap = self.pool;
            return Err(EgressRefusal::All { cap, limit });
        }
        if own + FDS_PER_EGRESS <= self.kept || borrowed + FDS_PER_EGRESS <= self.common {
            return Ok(());
        }
        Err(EgressRefusal::Context {
            kept: self.kept,
            contexts: self.contexts,
            common: self.common,
            limit,
        })
    }
}

fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit: the per-uid bounds above
/// are what keep a flood away from the last descriptors, not a soft limit of 1024. Returns
/// the soft limit found, which the routed programs get back (some close every descriptor
/// up to it, or use `select`).
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let found = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct; raising the soft limit up to the hard one is
        // always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_connections_are_counted_within_their_shares() {
        let free = 1024 - RESERVED_FDS;
        let pool = free / EGRESS_SHARE_ALL;
        // One egress context: half the pool kept for it, and the common half.
        let one = EgressShares::new(1024, 1);
        assert_eq!((one.kept, one.common), (pool / 2, pool - pool / 2));
        assert_eq!(
            one.room(pool - 6, pool - 6, pool - 6, pool - 6 - one.kept),
            Ok(())
        );
        assert!(matches!(
            one.room(pool, pool, pool, pool - one.kept),
            Err(EgressRefusal::All { .. })
        ));
        // Three: a context past its part borrows from the common rest until it is taken;
        // then it is refused, while another still gets its own part.
        let three = EgressShares::new(1024, 3);
        assert_eq!(three.kept, pool / 2 / 3);
        let greedy = three.kept + three.common;
        assert_eq!(
            three.room(greedy - 6, greedy - 6, greedy - 6, three.common - 6),
            Ok(())
        );
        assert!(matches!(
            three.room(greedy, greedy, greedy, three.common),
            Err(EgressRefusal::Context { .. })
        ));
        let both = greedy + three.kept - 6;
        assert_eq!(three.room(both, both, three.kept - 6, three.common), Ok(()));
        assert!(matches!(
            three.room(both + 6, both + 6, three.kept, three.common),
            Err(EgressRefusal::Context { .. })
        ));
        // The third context still has its part while the other two hold theirs and all
        // of the common rest.
        assert_eq!(three.room(both + 6, both + 6, 0, three.common), Ok(()));
        // Launches' descriptors count too: egress never takes the last ones.
        assert!(matches!(
            one.room(free - 5, 0, 0, 0),
            Err(EgressRefusal::Descriptors { limit: 1024 })
        ));
        // And egress descriptors are counted where launches are admitted.
        let a = Arc::new(Admissions::default());
        let held = a.admit_egress("eg").unwrap();
        assert_eq!(a.lock().fds, FDS_PER_EGRESS);
        drop(held);
        assert_eq!(a.lock().fds, 0);
        assert!(a.lock().egress_by_context.is_empty());
    }

    #[test]
    fn too_many_egress_contexts_for_the_descriptors_are_reported() {
        assert_eq!(crowded(1024, 0), None);
        assert_eq!(crowded(1024, 3), None);
        assert_eq!(crowded(1024, 32), None);
        let warning = crowded(1024, 33).unwrap();
        assert!(
            warning.starts_with("33 contexts with egress rules share 384 "),
            "{warning}"
        );
        assert_eq!(crowded(1 << 20, 1000), None);
    }

    #[test]
    fn two_contexts_at_their_maximum_leave_a_third_its_part() {
        let a = Arc::new(Admissions::default());
        assert_eq!(a.set_egress_contexts(3), None);
        let take = |ctx: &str| -> Vec<EgressFds> {
            std::iter::from_fn(|| a.admit_egress(ctx).ok()).collect()
        };
        let (first, second, third) = (take("a"), take("b"), take("c"));
        let shares = EgressShares::new(nofile_limit(), 3);
        let part = (shares.kept / FDS_PER_EGRESS) as usize;
        assert!(part > 0);
        assert!(first.len() > part, "{} > {part}", first.len());
        assert_eq!((second.len(), third.len()), (part, part));
        assert!(a.admit_egress("c").is_err());
        // Once the first gives back its connections, the common rest is the others' too.
        drop(first);
        assert!(a.admit_egress("c").is_ok());
    }

    #[test]
    fn lingering_terminals_are_bounded_per_uid_and_given_back() {
        let a = Arc::new(Admissions::default());
        let held: Vec<_> = (0..LINGERING_PER_UID)
            .map(|_| a.linger(1000, false).expect("under the cap"))
            .collect();
        assert!(a.linger(1000, false).is_none());
        // Another uid's are its own.
        let other = a.linger(1001, false).expect("another uid");
        drop(held);
        assert!(a.linger(1000, false).is_some());
        drop(other);
        assert!(a.lock().lingering.is_empty());
        // Root's own are not counted; a uid-0 context's are, apart from them.
        let contexts: Vec<_> = (0..LINGERING_PER_UID)
            .map(|_| a.linger(0, true).expect("under the cap"))
            .collect();
        assert!(a.linger(0, true).is_none());
        assert!(a.linger(0, false).is_some());
        drop(contexts);
        assert!(a.lock().lingering.is_empty());
    }

    #[test]
    fn root_in_a_context_is_counted_like_any_uid() {
        let a = Arc::new(Admissions::default());
        let held: Vec<_> = (0..HANDSHAKING_PER_UID)
            .map(|_| a.admit(0, true, false).expect("under the cap"))
            .collect();
        // Allowed nowhere, refused; allowed into some context, it waits for a turn.
        assert_eq!(a.admit(0, true, false).err(), Some(Refusal::Handshaking(0)));
        let waiting = a
            .admit(0, true, true)
            .expect("admitted, to wait for a turn");
        assert_eq!(
            a.held(0),
            Some((HANDSHAKING_PER_UID + 1, HANDSHAKING_PER_UID, 0, 0))
        );
        drop(waiting);
        // The operator is still served.
        assert!(a.admit(0, false, false).is_ok());
        drop(held);
        assert_eq!(a.held(0), None);
    }

    #[test]
    fn root_is_never_counted_nor_refused() {
        let a = Arc::new(Admissions::default());
        let mut held: Vec<Admission> = (0..HANDSHAKING_PER_UID + 10)
            .map(|_| a.admit(0, false, false).expect("root admitted"))
            .collect();
        for h in &mut held {
            h.hold(HANDSHAKE_BYTES_PER_UID, 200)
                .expect("root has no budget");
        }
        assert_eq!(a.held(0), None);
        assert_eq!(a.lock().fds, 0);
    }

    /// Past the cap, a uid's connection is admitted unread and waits for a turn of its own
    /// uid; another uid's is not held up.
    #[tokio::test]
    async fn a_connection_past_the_handshake_cap_waits_for_a_turn_of_its_uid() {
        use std::time::Duration;
        let a = Arc::new(Admissions::default());
        let mut held: Vec<Admission> = (0..HANDSHAKING_PER_UID)
            .map(|_| a.admit(1000, false, false).expect("under the cap"))
            .collect();
        let mut next = a.admit(1000, false, true).expect("admitted, to wait");
        assert_eq!(
            a.held(1000),
            Some((HANDSHAKING_PER_UID + 1, HANDSHAKING_PER_UID, 0, 0))
        );
        let soon = Duration::from_millis(50);
        assert!(tokio::time::timeout(soon, next.handshake_turn())
            .await
            .is_err());
        let mut other = a.admit(1001, false, false).expect("another uid");
        assert!(tokio::time::timeout(soon, other.handshake_turn())
            .await
            .is_ok());
        drop(other);
        // A finished handshake hands its turn on; the finished one still counts as a
        // connection.
        assert!(held[0].handshake_done().is_none());
        tokio::time::timeout(Duration::from_secs(5), next.handshake_turn())
            .await
            .expect("a turn once a handshake ended");
        assert_eq!(
            a.held(1000),
            Some((HANDSHAKING_PER_UID + 1, HANDSHAKING_PER_UID, 0, 0))
        );
        // A turn given back while its connection waits for bytes goes to a waiter.
        let mut silent = a.admit(1000, false, true).expect("admitted, to wait");
        assert!(held[2].handshake_done().is_none());
        silent.handshake_turn().await;
        let mut behind = a.admit(1000, false, true).expect("admitted, to wait");
        silent.step_back();
        tokio::time::timeout(Duration::from_secs(5), behind.handshake_turn())
            .await
            .expect("the turn given back");
        drop(behind);
        drop(silent);
        // A connection that took a turn and closes hands it on.
        let mut third = a.admit(1000, false, true).expect("admitted, to wait");
        let mut fourth = a.admit(1000, false, true).expect("admitted, to wait");
        assert!(held[1].handshake_done().is_none());
        drop(tokio::time::timeout(Duration::ZERO, third.handshake_turn()).await);
        drop(third);
        tokio::time::timeout(Duration::from_secs(5), fourth.handshake_turn())
            .await
            .expect("the turn passed on");
        drop(fourth);
        drop(next);
        drop(held);
        assert_eq!(a.held(1000), None);
        assert_eq!(a.lock().fds, 0);
    }

    #[test]
    fn total_connections_are_capped_per_uid() {
        let a = Arc::new(Admissions::default());
        if nofile_limit() < RESERVED_FDS + FDS_PER_CONNECTION * (CONNECTIONS_PER_UID as u64 + 1) {
            return; // the descriptor bound would refuse first under this limit
        }
        let held: Vec<Admission> = (0..CONNECTIONS_PER_UID)
            .map(|_| {
                let mut c = a.admit(1000, false, false).expect("under the cap");
                assert!(c.handshake_done().is_none());
                c
            })
            .collect();
        assert_eq!(
            a.admit(1000, false, false).err(),
            Some(Refusal::Connections(1000))
        );
        drop(held);
        assert!(a.admit(1000, false, false).is_ok());
    }

    #[test]
    fn handshake_bytes_and_fds_are_budgeted_per_uid() {
        let a = Arc::new(Admissions::default());
        let mut one = a.admit(1000, false, false).unwrap();
        let mut two = a.admit(1000, false, false).unwrap();
        one.hold(HANDSHAKE_BYTES_PER_UID - 10, 3).unwrap();
        assert_eq!(two.hold(11, 0), Err(OverBudget::Bytes(1000)));
        two.hold(10, 0).unwrap();
        // Shrinking what one holds gives room back.
        one.hold(100, 3).unwrap();
        two.hold(4 * 1024 * 1024, HANDSHAKE_FDS_PER_UID - 3)
            .unwrap();
        assert_eq!(one.hold(100, 4), Err(OverBudget::Fds(1000)));
        // After the handshake its bytes are not budgeted, but the descriptors it received
        // count until they are closed (the charge drops).
        let passed = two.handshake_done().expect("descriptors received");
        one.hold(HANDSHAKE_BYTES_PER_UID, 3).unwrap();
        assert_eq!(one.hold(100, 4), Err(OverBudget::Fds(1000)));
        two.hold(usize::MAX, usize::MAX).unwrap();
        drop(passed);
        one.hold(HANDSHAKE_BYTES_PER_UID, HANDSHAKE_FDS_PER_UID)
            .unwrap();
        drop((one, two));
        assert_eq!(a.held(1000), None);
        assert_eq!(a.lock().fds, 0);
    }

    #[test]
    fn an_entitled_peer_carries_many_descriptors_within_the_global_bound() {
        let a = Arc::new(Admissions::default());
        let limit = nofile_limit();
        let room = (limit.saturating_sub(RESERVED_FDS + FDS_PER_CONNECTION * 2)) as usize;
        if room < 1000 {
            return; // this limit leaves too little to tell the bounds apart
        }
        let mut stranger = a.admit(1000, false, false).unwrap();
        let mut entitled = a.admit(1000, false, false).unwrap();
        entitled.entitle();
        assert_eq!(
            stranger.hold(10, HANDSHAKE_FDS_PER_UID + 1),
            Err(OverBudget::Fds(1000))
        );
        entitled
            .hold(10, 1000)
            .expect("a launch with 1000 descriptors");
        // Not counted in the uid's budget: a stranger's handshake of that uid still has it.
        stranger.hold(10, HANDSHAKE_FDS_PER_UID).unwrap();
        // But never the descriptors kept for root.
        assert!(matches!(
            entitled.hold(10, room + 1),
            Err(OverBudget::Descriptors { uid: 1000, .. })
        ));
        drop((stranger, entitled));
        assert_eq!(a.held(1000), None);
        assert_eq!(a.lock().fds, 0);
    }

    #[test]
    fn an_entitled_uids_handshakes_hold_at_most_its_share() {
        let a = Arc::new(Admissions::default());
        let limit = nofile_limit();
        let cap = entitled_cap(limit);
        if (cap as u64) * 2 + 64 > limit.saturating_sub(RESERVED_FDS) {
            return; // this limit leaves too little to tell the bounds apart
        }
        let mut one = a.admit(1000, false, false).unwrap();
        let mut two = a.admit(1000, false, false).unwrap();
        one.entitle();
        two.entitle();
        one.hold(10, cap - 5).unwrap();
        assert_eq!(two.fd_room(), 5);
        assert!(matches!(
            two.hold(10, 6),
            Err(OverBudget::EntitledFds { uid: 1000, .. })
        ));
        two.hold(10, 5).unwrap();
        assert_eq!(two.fd_room(), 0);
        // Another uid keeps its own share.
        let mut other = a.admit(2000, false, false).unwrap();
        other.entitle();
        assert_eq!(other.fd_room(), cap);
        other.hold(10, cap).unwrap();
        // Past the handshake nothing more is received, so nothing is bounded; but what it
        // received still takes its uid's share until it is closed.
        let passed = one.handshake_done().expect("descriptors received");
        assert_eq!(one.fd_room(), usize::MAX);
        drop(two);
        let mut three = a.admit(1000, false, false).unwrap();
        three.entitle();
        assert_eq!(three.fd_room(), 5);
        drop(passed);
        assert_eq!(three.fd_room(), cap);
        drop((one, three, other));
        assert_eq!(a.held(1000), None);
        assert_eq!(a.lock().fds, 0);
    }

    /// A launch's descriptors count against its uid from its handshake until they are
    /// closed, whenever its connection ends; then nothing of them is counted.
    #[test]
    fn descriptors_passed_count_until_closed() {
        use std::os::fd::{FromRawFd, OwnedFd};
        let a = Arc::new(Admissions::default());
        let mut launch = a.admit(1000, false, false).unwrap();
        launch.entitle();
        let fds: Vec<OwnedFd> = (0..3)
            .map(|_| {
                let mut p = [0; 2];
                // SAFETY: pipe2 fills the array it is given.
                assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
                // SAFETY: new descriptors, owned here; the write ends are closed at once.
                unsafe {
                    drop(OwnedFd::from_raw_fd(p[1]));
                    OwnedFd::from_raw_fd(p[0])
                }
            })
            .collect();
        launch.hold(100, fds.len()).unwrap();
        let charge = launch.handshake_done();
        let passed = super::super::closer::PeerFds::charged(fds, Some(1000), charge);
        assert_eq!(a.lock().per_uid[&1000].passed, 3);
        assert_eq!(a.lock().fds, FDS_PER_CONNECTION + 3);
        // The connection may end first (a launch dropped before its fork).
        drop(launch);
        assert_eq!(a.lock().fds, 3);
        drop(passed);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while a.lock().fds > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(a.lock().fds, 0);
        assert_eq!(a.held(1000), None);
        assert!(a.lock().per_uid.is_empty());
    }

    #[test]
    fn requests_held_until_exec_are_bounded_per_uid_apart_from_input_and_given_back() {
        let a = Arc::new(Admissions::default());
        let mut one = a.admit(1000, false, true).unwrap();
        let mut two = a.admit(1000, false, true).unwrap();
        let mut other = a.admit(1001, false, true).unwrap();
        let mut root = a.admit(0, false, false).unwrap();
        // A uid's held input does not take its launches' room.
        assert!(one.hold_after(HELD_PER_UID, false));
        assert!(one.hold_request(REQUESTS_PER_UID - 10));
        assert!(!two.hold_request(11), "past the uid's bound");
        assert_eq!(two.request(), 0, "nothing counted when refused");
        assert!(two.hold_request(10));
        assert!(
            other.hold_request(REQUESTS_PER_UID),
            "another uid has its own"
        );
        assert!(
            root.hold_request(usize::MAX / 2),
            "the operator is not counted"
        );
        assert!(one.hold_request(0));
        assert!(two.hold_request(REQUESTS_PER_UID), "given back");
        drop(two);
        drop(one);
        assert_eq!(a.lock().per_uid.get(&1000).map(|p| p.requests), None);
    }

    #[test]
    fn bytes_held_past_handshakes_are_bounded_per_uid_and_given_back() {
        let a = Arc::new(Admissions::default());
        let mut one = a.admit(1000, false, true).unwrap();
        let mut two = a.admit(1000, false, true).unwrap();
        let mut other = a.admit(1001, false, true).unwrap();
        let mut root = a.admit(0, false, false).unwrap();
        assert!(one.hold_after(HELD_PER_UID - 10, false));
        assert!(!two.hold_after(11, false), "past the uid's bound");
        assert!(two.hold_after(10, false));
        assert!(
            other.hold_after(HELD_PER_UID, false),
            "another uid has its own"
        );
        assert!(
            root.hold_after(usize::MAX / 2, false),
            "the operator is not counted"
        );
        // Bytes moved from a counted frame into typed input may pass it; then nothing grows.
        assert!(two.hold_after(20, true));
        assert!(!two.hold_after(21, false));
        // What one gives back the other may take, and a waiter is woken for it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let waiting = async {
                two.hold_after_waiting(1024).await;
                two
            };
            let giving = async {
                tokio::task::yield_now().await;
                assert!(one.hold_after(0, false));
                one
            };
            let (two, one) = tokio::join!(waiting, giving);
            drop((one, two));
        });
        assert_eq!(a.lock().per_uid.get(&1000).map(|p| p.held_after), None);
        drop(other);
        assert!(!a.lock().per_uid.contains_key(&1001));
    }
}
