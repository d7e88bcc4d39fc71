//! A started launch until its program exits: the caller's signals, window size and input
//! to the program; its PTY output and terminal modes, and its signals to its parent, back
//! to the caller; the launch's timeout and the broker's shutdown. Then, for a PTY the
//! processes the program left behind still hold, their output until they let go of it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctx_protocol::{ExitStatus, Reply, Request, TermModes, WinSize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};

use super::Routed;
use crate::daemon::admission::{Admissions, Linger};
use crate::daemon::connection::{Conn, WireError, AFTER_HANDSHAKE_FRAME};
use crate::daemon::kernel::supervisor::Supervised;
use crate::daemon::{job_control, pty};

/// How long a process group gets between SIGTERM and SIGKILL at broker shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How long PTY output is still collected after the process exits (its last writes, or a
/// background job's, may still be in flight), when the terminal cannot be kept open for
/// the jobs that hold it.
const PTY_DRAIN: Duration = Duration::from_millis(100);

/// How long a session leader stand-in may take to put its own group in the terminal's
/// foreground once the program has ended (a few syscalls: this only bounds a stuck one).
const HANDOVER: Duration = Duration::from_millis(200);

/// How long the terminal must still be held once the stand-in has the foreground before it
/// is kept open for the holders: the stand-in closes the terminal it opened right after.
const STAND_IN_SETTLE: Duration = Duration::from_millis(10);

/// Largest `Output` frame. A PTY master returns at most one line-discipline buffer (about
/// 4 KiB) per read; the relay reads until the master is empty or this much is gathered and
/// sends it as one frame, so a fast writer costs one frame and one client wake-up per
/// batch instead of per 4 KiB.
const PTY_BATCH: usize = 128 * 1024;

/// A read of the master that gathers this much found a writer faster than the relay: its
/// bytes wait for more (at most [`COALESCE_WAIT`]) instead of going out as a frame of their
/// own, since a master drains to empty after a few reads however fast its writer is.
const COALESCE_FROM: usize = 16 * 1024;

/// How long output of a fast writer waits for more before it is sent anyway: far below
/// what a person at a terminal can see.
const COALESCE_WAIT: Duration = Duration::from_millis(2);

/// The PTY read buffer a terminal launch starts with: what a terminal passes in one read.
/// A read that fills it found a fast writer, and the buffer grows to [`PTY_BATCH`] where
/// the caller's uid has room for that (`Conn::hold_output`).
const PTY_FIRST_BATCH: usize = 4 * 1024;

/// What growing the read buffer to [`PTY_BATCH`] is counted as against the caller's uid:
/// the buffer's growth, and as much again twice for the frames encoded from it and held
/// back from a caller that does not read them (`Conn::send`).
const PTY_BATCH_HELD: usize = 3 * (PTY_BATCH - PTY_FIRST_BATCH);

/// Typed or pasted input held for a PTY program that is not reading it, at most. Once the
/// next frame might not fit, the caller's frames stay unread in the socket (and the caller
/// stops sending) until the program reads: a program that never reads cannot make the
/// broker hold more. All launches of one uid together hold at most what its share of
/// `admission::HELD_PER_UID` leaves.
const INPUT_BUDGET: usize = 1024 * 1024;

/// How often the PTY's modes are compared with the caller's terminal's when no output
/// brings them along (a program that turns echo off and waits for input silently).
const MODE_POLL: Duration = Duration::from_millis(50);

/// Between reads of a PTY master whose slaves are all closed while the program lives on.
const MASTER_REST: Duration = Duration::from_millis(5);

/// How long the end of a launch waits for the caller's descriptors the broker held to be
/// closed (on a closer thread: usually microseconds). A close held up longer is one the
/// caller arranged (a pipe whose lock its splice holds); the end does not wait for it.
pub(super) const CLOSE_WAIT: Duration = Duration::from_millis(10);

/// How often signals to the parent a client did not take are offered again.
const PARENT_RETRY: Duration = Duration::from_millis(20);

/// A started launch, as its relay needs it.
pub(super) struct Relay<'a> {
    pub conn: &'a mut Conn,
    pub pid: i32,
    pub pidfd: &'a AsyncFd<Arc<OwnedFd>>,
    /// The client watches the program's pidfd (`Reply::Watch`) and may end as soon as the
    /// program is reaped: what must reach it first is sent before the reap.
    pub watched: bool,
    /// Heard once a closer thread has closed the broker's copies of the caller's
    /// descriptors (handed to it at the fork).
    pub closed: Option<oneshot::Receiver<()>>,
    /// A PTY launch's master (the broker holds no slave: the master sees EOF/EIO).
    pub master: Option<OwnedFd>,
    /// The PTY's modes as opened.
    pub pty_modes: Option<TermModes>,
    /// The PTY's window size as opened: the caller's terminal's.
    pub pty_size: Option<WinSize>,
    /// The modes the PTY was given: what the caller's terminal had at the launch.
    pub launch_modes: Option<TermModes>,
    pub timeout: Option<Duration>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Signals the program sent to its parent (the broker), for the caller.
    pub parent_signals: mpsc::Receiver<i32>,
    /// The program runs as another uid than the caller: the client passes on only the
    /// signals that cannot end or stop the launcher (`Reply::SignalParent`).
    pub parent_guarded: bool,
    /// Whether the caller is still there to hear from the launch.
    pub client_alive: bool,
    /// Where a PTY launch whose program leaves processes holding its terminal may count
    /// keeping it open for them (`None`: the terminal is hung up when the program ends).
    pub linger: Option<LingerBudget<'a>>,
    /// The program's exec guard listener, while the launch keeps it (see [`Supervised`]).
    pub supervised: Option<Supervised<'a>>,
}

/// What keeping a terminal open after its program is counted against, and its session's
/// stand-in.
#[derive(Clone, Copy)]
pub(super) struct LingerBudget<'a> {
    pub admissions: &'a Arc<Admissions>,
    /// The caller's uid, and whether the caller runs in a context (see `Admissions::linger`).
    pub uid: u32,
    pub in_context: bool,
    pub leader: libc::pid_t,
}

/// How the relay ended.
pub(super) struct Relayed {
    pub status: io::Result<ExitStatus>,
    pub timed_out: bool,
    pub client_alive: bool,
    /// The PTY's master, still open: closing it hangs the terminal up.
    pub master: Option<AsyncFd<OwnedFd>>,
    /// Processes the program left behind still hold its terminal, and keeping it open
    /// for them is counted: the caller is to hear [`Reply::Lingering`] after `Exited`.
    pub linger: Option<Linger>,
}

impl Relay<'_> {
    /// Relays until the program exits (and reaps it), then passes on what it left behind:
    /// its last signals to the parent, output and terminal modes.
    pub(super) async fn run(self) -> Relayed {
        let Relay {
            conn,
            pid,
            pidfd,
            watched,
            mut closed,
            master,
            pty_modes,
            pty_size,
            launch_modes,
            timeout,
            mut shutdown,
            mut parent_signals,
            parent_guarded,
            mut client_alive,
            linger: linger_budget,
            mut supervised,
        } = self;
        let program = Routed {
            pid,
            pidfd: pidfd.get_ref().as_fd(),
        };
        // Watched for readiness here until its first event: a notification (the program
        // signals its parent) or the hangup as the program exits. Not by a terminal
        // launch, whose loop waits in sends of the program's output for as long as the
        // caller does not read (a notification would wait with it), nor if the reactor
        // cannot watch it: the guard, which waits on nobody, then answers from the start.
        let mut guarded = supervised
            .as_ref()
            .filter(|_| master.is_none())
            .and_then(Supervised::listener)
            // SAFETY: `supervised` keeps the descriptor open until after `guarded` is
            // dropped (each time it is handed on, and after the loop).
            .and_then(|fd| {
                unsafe { AsyncFd::register_with_interest(ListenerFd(fd), Interest::READABLE) }.ok()
            });
        if guarded.is_none() {
            if let Some(s) = supervised.as_mut() {
                s.settle();
            }
        }
        let mut mirror: Option<Mirror> = None;
        // The PTY's window size the caller's terminal has: a size the program sets is sent
        // (`Reply::Size`), looked at where its modes are.
        let mut size_seen = pty_size;
        // The client mirrors the PTY's modes onto the caller's terminal: watch them.
        let mut mirroring = false;
        let mut mode_tick = master.as_ref().map(|_| {
            let mut t = tokio::time::interval(MODE_POLL);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let far = Instant::now() + Duration::from_secs(10 * 365 * 86_400);
        let deadline =
            tokio::time::Instant::from_std(timeout.map(|t| Instant::now() + t).unwrap_or(far));
        let mut timed_out = false;
        let mut kill_at: Option<tokio::time::Instant> = None;
        let mut shutdown_seen = *shutdown.borrow();
        if shutdown_seen {
            program.kill_group(libc::SIGTERM);
            kill_at = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
        }
        let mut master = master.map(watch).transpose().unwrap_or_default();
        // Only a PTY launch has somewhere to put `Input`: a pipe launch's program reads the
        // caller's own descriptor, and the frames (which no client sends then) are dropped.
        let mut input: VecDeque<u8> = VecDeque::new();
        // Only a PTY launch relays output; a pipe launch allocates nothing for it.
        let mut out = if master.is_some() {
            vec![0u8; PTY_FIRST_BATCH]
        } else {
            Vec::new()
        };

        // A master that reads EIO (every slave closed) while the process lives on stays
        // readable: it rests a moment between reads instead of spinning, without holding up
        // the loop (the exit, typically, comes right after).
        let mut master_rests: Option<tokio::time::Instant> = None;
        // When the master was last registered again after a hangup: at most once a rest.
        let mut rearmed_at: Option<tokio::time::Instant> = None;
        // Output of a fast writer read but not yet sent (`out[..held]`), and when it goes
        // out at the latest. Anything else sent to the client sends it first.
        let mut held = 0usize;
        let mut flush_at: Option<tokio::time::Instant> = None;
        // Signals to the parent not yet taken by a client that is not reading (stopped, or
        // hostile): kept as a set, as the kernel keeps pending signals, so a flood neither
        // grows anything nor holds up this loop (the timeout, the shutdown).
        let mut parent_pending: u64 = 0;
        let mut parent_retry = tokio::time::interval(PARENT_RETRY);
        parent_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A send to a caller who is not reading waits, but never past what the loop must
        // act on: the program's end, its timeout, the broker's shutdown and the kill after
        // it. Interrupted, the frame's rest goes out first with the next send.
        macro_rules! send {
            ($reply:expr) => {
                conn.send_before(
                    $reply,
                    loop_event(
                        pidfd,
                        (!timed_out && timeout.is_some()).then_some(deadline),
                        kill_at,
                        (!shutdown_seen).then(|| shutdown.clone()),
                    ),
                )
                .await
            };
        }
        // Sends the held output first: whatever is sent next was seen after it was written.
        macro_rules! flush_held {
            () => {{
                flush_at = None;
                let n = std::mem::take(&mut held);
                if n > 0 && client_alive && send!(&Reply::Output(out[..n].into())).is_err() {
                    client_alive = false;
                    program.kill_group(libc::SIGKILL);
                }
            }};
        }
        // The exit is seen before the reap, which the client may end at.
        let mut exit_seen = false;
        let status = loop {
            tokio::select! {
                exited = wait_exit(pidfd), if exit_seen => break exited,
                _ = pidfd.readable(), if !exit_seen => {
                    exit_seen = true;
                    // A signal the program sent its parent before it ended: in the socket
                    // before the reap, so the client raises it before it ends.
                    if watched {
                        client_alive = client_alive
                            && send_parent_signals(conn, &mut parent_signals, &mut parent_pending, parent_guarded, &shutdown).await;
                    }
                    // And the caller's descriptors closed, as a local child's copies are
                    // before its parent's wait returns: a reader then sees the end of a
                    // pipe once the client has ended (helper-94).
                    if let Some(c) = closed.take() {
                        let _ = tokio::time::timeout(CLOSE_WAIT, c).await;
                    }
                }
                _ = async { guarded.as_ref()?.readable().await.ok().map(drop) }, if guarded.is_some() => {
                    drop(guarded.take());
                    if let Some(s) = supervised.as_mut() {
                        s.settle();
                    }
                }
                Some(signal) = parent_signals.recv(), if client_alive => {
                    parent_pending |= signal_bit(signal);
                    flush_held!();
                    if client_alive && flush_parent_signals(conn, &mut parent_pending, parent_guarded).is_err() {
                        client_alive = false;
                        program.kill_group(libc::SIGKILL);
                    }
                }
                _ = parent_retry.tick(), if parent_pending != 0 && client_alive => {
                    if flush_parent_signals(conn, &mut parent_pending, parent_guarded).is_err() {
                        client_alive = false;
                        program.kill_group(libc::SIGKILL);
                    }
                }
                _ = async { tokio::time::sleep_until(master_rests.unwrap()).await }, if master_rests.is_some() => {
                    master_rests = None;
                }
                frame = next_frame(conn, input.len() + AFTER_HANDSHAKE_FRAME > INPUT_BUDGET), if client_alive => {
                    match frame {
                        Ok(Some(payload)) => match decode_consuming(payload) {
                            Ok(Request::Signal { signo }) if (1..=64).contains(&signo) => {
                                program.kill_group(job_control::deliverable(pid, signo));
                            }
                            // `kill(pid)` of the shim: locally that reaches the child alone,
                            // never its children (`Popen.terminate()`, a forkserver's kill).
                            Ok(Request::SignalProcess { signo }) if (1..=64).contains(&signo) => {
                                program.kill(job_control::deliverable(pid, signo))
                            }
                            Ok(Request::Resize(size)) => {
                                if let Some(m) = &master {
                                    if pty::resize(m.get_ref(), size).is_ok() && size.rows != 0 && size.cols != 0 {
                                        size_seen = Some(size);
                                    }
                                }
                            }
                            Ok(Request::Input(_)) if master.is_none() => {}
                            Ok(Request::Input(bytes)) => match master.as_ref().and_then(|m| job_control::suspend_at(m.get_ref(), pid, &bytes)) {
                                // The suspend key for a program that would ignore the stop the
                                // terminal sends it: stop it ourselves and tell the client.
                                Some(at) => {
                                    program.kill_group(libc::SIGSTOP);
                                    // All of it queued and counted before the sends below
                                    // wait on a caller that may not read: nothing reaches
                                    // the terminal before this branch is done anyway.
                                    queue_input(&mut input, &bytes[..at]);
                                    queue_input(&mut input, &bytes[at + 1..]);
                                    drop(bytes);
                                    conn.hold_input(input.capacity());
                                    flush_held!();
                                    if client_alive && send!(&Reply::Stopped { signal: libc::SIGTSTP }).is_err() {
                                        client_alive = false;
                                        program.kill_group(libc::SIGKILL);
                                    }
                                }
                                None => queue_input(&mut input, &bytes),
                            },
                            Ok(Request::InputEof) => {
                                if let Some(m) = &master { queue_input(&mut input, &[pty::eof_char(m.get_ref())]); }
                            }
                            Ok(Request::Modes(caller)) => {
                                mirroring = true;
                                if let Some(m) = &master {
                                    if let Some(next) = mirror_caller(m.get_ref(), &mut mirror, launch_modes, caller) {
                                        flush_held!();
                                        if client_alive && send!(&Reply::Modes(next)).is_err() {
                                            client_alive = false;
                                            program.kill_group(libc::SIGKILL);
                                        }
                                    }
                                }
                            }
                            _ => {
                                // Out of protocol: treat as a broken caller.
                                client_alive = false;
                                program.kill_group(libc::SIGKILL);
                            }
                        },
                        Ok(None) | Err(_) => {
                            client_alive = false;
                            program.kill_group(libc::SIGKILL);
                        }
                    }
                    conn.hold_input(input.capacity());
                }
                ready = async { master.as_ref().unwrap().readable().await }, if master.is_some() && master_rests.is_none() => {
                    let mut rearm = false;
                    if let Ok(mut guard) = ready {
                        let hung_up = guard.ready().is_read_closed();
                        let fd = master.as_ref().unwrap().get_ref().as_raw_fd();
                        let (n, more) = read_batch(fd, &mut out[held..]);
                        if !more {
                            // Drained to EAGAIN: let the reactor wait for the next bytes.
                            guard.clear_ready();
                        }
                        if held + n == out.len() && out.len() < PTY_BATCH && conn.hold_output(PTY_BATCH_HELD) {
                            out.resize(PTY_BATCH, 0);
                        }
                        rearm = hung_up && n == 0 && !more;
                        if n > 0 && client_alive {
                            // A mode the program set before writing (getpass turns echo off,
                            // then prompts) reaches the client before the bytes, which it
                            // writes under them; bytes held from earlier reads go out first.
                            if mirror.is_none() {
                                mirror = pty_modes.map(|m| Mirror { caller: m, pty: m });
                            }
                            let now = pty::modes(master.as_ref().unwrap().get_ref());
                            if let Some(changed) = mirror_program(&mut mirror, now) {
                                if held > 0 {
                                    let earlier = held;
                                    flush_held!();
                                    out.copy_within(earlier..earlier + n, 0);
                                }
                                if client_alive && send!(&Reply::Modes(changed)).is_err() {
                                    client_alive = false;
                                    program.kill_group(libc::SIGKILL);
                                }
                            }
                            if let Some(size) = size_change(master.as_ref().unwrap().get_ref(), &mut size_seen) {
                                if held > 0 {
                                    let earlier = held;
                                    flush_held!();
                                    out.copy_within(earlier..earlier + n, 0);
                                }
                                if client_alive && send!(&Reply::Size(size)).is_err() {
                                    client_alive = false;
                                    program.kill_group(libc::SIGKILL);
                                }
                            }
                        }
                        let total = held + n;
                        let fast = n >= COALESCE_FROM || held > 0;
                        if n == 0 && !more {
                            // Nothing new: held output waits for its time.
                        } else if client_alive && !more && fast && total < out.len() {
                            held = total;
                            flush_at.get_or_insert_with(|| tokio::time::Instant::now() + COALESCE_WAIT);
                        } else if total > 0 && client_alive {
                            held = total;
                            flush_held!();
                        } else if n == 0 && more {
                            master_rests = Some(tokio::time::Instant::now() + MASTER_REST);
                        }
                    }
                    if rearm {
                        let now = tokio::time::Instant::now();
                        if rearmed_at.is_some_and(|at| now < at + MASTER_REST) {
                            // A slave closed and opened again in a loop: rest, then re-arm.
                            master_rests = Some(now + MASTER_REST);
                        } else {
                            rearmed_at = Some(now);
                            master = master.take().and_then(rearm_after_hangup);
                        }
                    }
                }
                ready = async { master.as_ref().unwrap().writable().await }, if master.is_some() && !input.is_empty() => {
                    if let Ok(mut guard) = ready {
                        let fd = master.as_ref().unwrap().get_ref().as_raw_fd();
                        match guard.try_io(|_| write_fd(fd, input.as_slices().0)) {
                            Ok(Ok(n)) => {
                                input.drain(..n);
                            }
                            // EIO: no slave is open any more; nothing will ever read it, and a
                            // master that stays writable must not be retried without end.
                            Ok(Err(_)) => input.clear(),
                            Err(_would_block) => {}
                        }
                        if input.is_empty() {
                            input = VecDeque::new();
                        }
                        conn.hold_input(input.capacity());
                    }
                }
                // A mode set without output following (`stty -echo`, `read -s`).
                _ = async { mode_tick.as_mut().unwrap().tick().await }, if mirroring && client_alive => {
                    let now = pty::modes(master.as_ref().unwrap().get_ref());
                    if let Some(changed) = mirror_program(&mut mirror, now) {
                        flush_held!();
                        if client_alive && send!(&Reply::Modes(changed)).is_err() {
                            client_alive = false;
                            program.kill_group(libc::SIGKILL);
                        }
                    }
                    if let Some(size) = size_change(master.as_ref().unwrap().get_ref(), &mut size_seen) {
                        flush_held!();
                        if client_alive && send!(&Reply::Size(size)).is_err() {
                            client_alive = false;
                            program.kill_group(libc::SIGKILL);
                        }
                    }
                }
                _ = async { tokio::time::sleep_until(flush_at.unwrap()).await }, if flush_at.is_some() => {
                    flush_held!();
                }
                _ = tokio::time::sleep_until(deadline), if !timed_out && timeout.is_some() => {
                    timed_out = true;
                    program.kill_group(libc::SIGKILL);
                }
                _ = shutdown.changed(), if !shutdown_seen => {
                    shutdown_seen = true;
                    program.kill_group(libc::SIGTERM);
                    kill_at = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                }
                _ = async { tokio::time::sleep_until(kill_at.unwrap()).await }, if kill_at.is_some() => {
                    kill_at = None;
                    program.kill_group(libc::SIGKILL);
                }
            }
        };
        // The program is reaped: the listener, if still kept, is closed or goes to the guard
        // for what the program left behind.
        drop(guarded);
        drop(supervised);
        if !client_alive {
            // No one is left to see the rest of the group.
            program.kill_group(libc::SIGKILL);
        }
        // Output held back is older than anything still to come.
        if held > 0 && client_alive {
            let reply = Reply::Output(out[..held].into());
            if !sent(
                conn.send_before(&reply, shutdown_grace(shutdown.clone()))
                    .await,
            ) {
                client_alive = false;
            }
        }
        // A signal sent to the parent just before the end reaches the caller before the
        // status, as it would locally; later ones find no parent.
        parent_signals.close();
        client_alive = client_alive
            && send_parent_signals(
                conn,
                &mut parent_signals,
                &mut parent_pending,
                parent_guarded,
                &shutdown,
            )
            .await;

        let mut linger = None;
        if let (Some(m), true) = (&master, client_alive) {
            let until = tokio::time::Instant::now() + PTY_DRAIN;
            // Whether the terminal may stay open for processes still holding it; asked once
            // the program's own output is read.
            let mut asked = false;
            let budget = linger_budget.filter(|_| !*shutdown.borrow());
            // The first read does not wait: a program that wrote nothing makes the master
            // readable only once the last holder closes it.
            let mut first = true;
            let fd = m.get_ref().as_raw_fd();
            loop {
                let guard = if std::mem::take(&mut first) {
                    None
                } else {
                    match tokio::time::timeout_at(until, m.readable()).await {
                        Ok(Ok(guard)) => Some(guard),
                        Ok(Err(_)) => break,
                        Err(_elapsed) => {
                            // Still written to all along: the rest comes after `Exited`.
                            if let (false, Some(b)) = (asked, budget) {
                                linger = b.ask(m).await;
                            }
                            break;
                        }
                    }
                };
                let hung_up = guard.as_ref().is_some_and(|g| g.ready().is_read_closed());
                let (n, more) = read_batch(fd, &mut out);
                if let (false, Some(mut guard)) = (more, guard) {
                    guard.clear_ready();
                }
                if hung_up && n == 0 && !more {
                    // Ready for good to the reactor, yet empty (see `rearm_after_hangup`).
                    tokio::time::sleep(MASTER_REST).await;
                }
                if n > 0 {
                    if let Some(changed) = mirror_program(&mut mirror, pty::modes(m.get_ref())) {
                        let reply = Reply::Modes(changed);
                        if !sent(
                            conn.send_before(&reply, shutdown_grace(shutdown.clone()))
                                .await,
                        ) {
                            client_alive = false;
                            break;
                        }
                    }
                }
                if n > 0 {
                    let reply = Reply::Output(out[..n].into());
                    if !sent(
                        conn.send_before(&reply, shutdown_grace(shutdown.clone()))
                            .await,
                    ) {
                        client_alive = false;
                        break;
                    }
                } else if more {
                    break; // EIO: every slave descriptor is closed
                }
                // Read to empty: what the program wrote before it ended is all here (a read
                // that finds nothing waits for the kernel to hand over what it still
                // holds). Whatever comes from now on, the caller hears after `Exited`.
                if let (false, false, Some(b)) = (more, asked, budget) {
                    asked = true;
                    linger = b.ask(m).await;
                }
                if linger.is_some() && !more {
                    if !pty::slave_closed(m.get_ref()) {
                        break;
                    }
                    // The last holder closed it just now: read what it wrote, to the EIO.
                    linger = None;
                }
            }
        }

        if let (Some(m), true) = (&master, client_alive) {
            // The modes the program left the terminal in stay, as they would locally; also
            // for a program that ended before its client said it mirrors (`stty -echo`).
            if mirror.is_none() {
                mirror = pty_modes.map(|m| Mirror { caller: m, pty: m });
            }
            if let Some(changed) = mirror_program(&mut mirror, pty::modes(m.get_ref())) {
                let reply = Reply::Modes(changed);
                if !sent(
                    conn.send_before(&reply, shutdown_grace(shutdown.clone()))
                        .await,
                ) {
                    client_alive = false;
                }
            }
            // And the size it left, as locally (`stty cols 100` and nothing after).
            if let Some(size) = size_change(m.get_ref(), &mut size_seen).filter(|_| client_alive) {
                if !sent(
                    conn.send_before(&Reply::Size(size), shutdown_grace(shutdown.clone()))
                        .await,
                ) {
                    client_alive = false;
                }
            }
        }
        Relayed {
            status,
            timed_out,
            client_alive,
            master,
            linger: linger.filter(|_| client_alive),
        }
    }
}

impl LingerBudget<'_> {
    /// Counts keeping the terminal open when processes the program left still hold it,
    /// once the session's stand-in has taken the foreground: the stand-in opens the
    /// terminal for a moment to take it (and holds it until its own exec), which is no job.
    async fn ask(&self, master: &AsyncFd<OwnedFd>) -> Option<Linger> {
        let fd = master.get_ref().as_raw_fd();
        let handover = tokio::time::Instant::now() + HANDOVER;
        while foreground(fd) != Some(self.leader) && tokio::time::Instant::now() < handover {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let settled = tokio::time::Instant::now() + STAND_IN_SETTLE;
        loop {
            if pty::slave_closed(master.get_ref()) {
                return None;
            }
            if tokio::time::Instant::now() >= settled {
                return self.admissions.linger(self.uid, self.in_context);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The terminal's foreground process group, asked of its master.
fn foreground(master: i32) -> Option<libc::pid_t> {
    let mut pgrp: libc::pid_t = 0;
    // SAFETY: TIOCGPGRP writes one pid_t; the master is ours.
    (unsafe { libc::ioctl(master, libc::TIOCGPGRP, &mut pgrp) } == 0).then_some(pgrp)
}

/// After `Exited` and [`Reply::Lingering`]: relays what the processes the program left
/// behind write to its terminal, and the modes they give it, until none of them holds it
/// (the master reads EIO), the client hangs up or the broker shuts down. Nothing goes the
/// other way: the client sends no input once the program has ended. A client that does
/// not read holds this up, and with it the writers, as a terminal nobody reads would.
pub(super) async fn linger(
    conn: &mut Conn,
    master: &AsyncFd<OwnedFd>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    deadline: Option<tokio::time::Instant>,
) {
    let far = tokio::time::Instant::now() + Duration::from_secs(10 * 365 * 86_400);
    let deadline = tokio::time::sleep_until(deadline.unwrap_or(far));
    tokio::pin!(deadline);
    // Read after `Exited` by the client's detached relay, whose buffer is sized for it.
    let mut out = vec![0u8; ctx_protocol::linger::LINGER_OUTPUT];
    // The client has the modes as they are now: `run` sent the last change.
    let mut modes = pty::modes(master.get_ref());
    let fd = master.get_ref().as_raw_fd();
    while !*shutdown.borrow() {
        tokio::select! {
            _ = hung_up(conn.stream()) => return,
            _ = shutdown.changed() => return,
            // The launch's timeout bounds what the broker relays for it too.
            _ = &mut deadline => return,
            ready = master.readable() => {
                let Ok(mut guard) = ready else { return };
                let hung_up = guard.ready().is_read_closed();
                let (n, more) = read_batch(fd, &mut out);
                if !more {
                    guard.clear_ready();
                }
                if n == 0 {
                    if more {
                        return; // EIO: every slave descriptor is closed
                    }
                    if hung_up {
                        // Borrowed, so not registered again: rest between reads instead
                        // (see `rearm_after_hangup`).
                        drop(guard);
                        tokio::time::sleep(MASTER_REST).await;
                    }
                    continue;
                }
                let now = pty::modes(master.get_ref());
                if now != modes {
                    modes = now;
                    if let Some(now) = now {
                        if !send_unless_shutdown(conn, &Reply::Modes(now), &mut shutdown).await {
                            return;
                        }
                    }
                }
                if !send_unless_shutdown(conn, &Reply::Output(out[..n].into()), &mut shutdown).await {
                    return;
                }
            }
        }
    }
}

/// Resolves at the first of what a running launch's loop must act on even while a send
/// waits for its caller: the program's exit (readiness only, nothing reaped), the
/// deadline, the kill after a shutdown, and the shutdown itself (`shutdown` a clone, so
/// the loop's own receiver still sees the change).
async fn loop_event(
    pidfd: &AsyncFd<Arc<OwnedFd>>,
    deadline: Option<tokio::time::Instant>,
    kill_at: Option<tokio::time::Instant>,
    shutdown: Option<tokio::sync::watch::Receiver<bool>>,
) {
    let far = tokio::time::Instant::now() + Duration::from_secs(10 * 365 * 86_400);
    let mut shutdown = shutdown;
    tokio::select! {
        _ = pidfd.readable() => {}
        _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => {}
        _ = tokio::time::sleep_until(kill_at.unwrap_or(far)) => {}
        _ = async { shutdown.as_mut()?.changed().await.ok() }, if shutdown.is_some() => {}
    }
}

/// Resolves `SHUTDOWN_GRACE` after the broker began to shut down: what is left to send
/// once the program has ended waits that long for a caller who is not reading, as the
/// program waited for its kill, and no longer (the broker's exit waits for the connection).
pub(crate) async fn shutdown_grace(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    // A sender gone is a shutdown too.
    let _ = shutdown.wait_for(|&down| down).await;
    tokio::time::sleep(SHUTDOWN_GRACE).await;
}

/// Whether a [`Conn::send_before`] sent its reply whole.
pub(super) fn sent(result: Result<bool, WireError>) -> bool {
    matches!(result, Ok(true))
}

/// Sends `reply`; `false` when that failed, or the broker began to shut down while the
/// client was not reading.
async fn send_unless_shutdown(
    conn: &mut Conn,
    reply: &Reply<'_>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        sent = conn.send(reply) => sent.is_ok(),
        _ = shutdown.changed() => false,
    }
}

/// A PTY launch whose client mirrors the modes onto the caller's terminal: the caller's
/// modes as last heard, and the PTY's as last sent.
#[derive(Clone, Copy)]
struct Mirror {
    caller: TermModes,
    pty: TermModes,
}

/// The caller changed its terminal's modes: applies what changed since it last said to the
/// PTY. Returns the PTY's modes when they differ from the caller's (the program changed
/// some meanwhile), for the client to take.
fn mirror_caller(
    master: &std::os::fd::OwnedFd,
    mirror: &mut Option<Mirror>,
    launch: Option<TermModes>,
    caller: TermModes,
) -> Option<TermModes> {
    let caller = caller.logical();
    let cur = pty::modes(master)?;
    let base = mirror.map(|m| m.caller).or(launch).unwrap_or(cur);
    let next = cur.merged(&base, &caller);
    if next != cur {
        let _ = pty::set_modes(master, &next);
    }
    let next = pty::modes(master).unwrap_or(next);
    *mirror = Some(Mirror { caller, pty: next });
    (next != caller).then_some(next)
}

/// The PTY's modes `now`, when the program changed them since they were last sent; the
/// client will give the caller's terminal the same, so they are the caller's from then on.
fn mirror_program(mirror: &mut Option<Mirror>, now: Option<TermModes>) -> Option<TermModes> {
    let (m, now) = (mirror.as_mut()?, now?);
    if now == m.pty {
        return None;
    }
    *m = Mirror {
        caller: now,
        pty: now,
    };
    Some(now)
}

fn signal_bit(signal: i32) -> u64 {
    1u64 << ((signal - 1) & 63)
}

/// Offers the pending signals to the parent to the client, lowest first (as the kernel
/// delivers pending signals), as far as it takes them without waiting.
fn flush_parent_signals(
    conn: &mut Conn,
    pending: &mut u64,
    guarded: bool,
) -> Result<(), WireError> {
    for signal in 1..=64 {
        if *pending & signal_bit(signal) != 0 {
            if !conn.try_send(&Reply::SignalParent { signal, guarded })? {
                return Ok(());
            }
            *pending &= !signal_bit(signal);
        }
    }
    Ok(())
}

/// Sends the signals to the parent still queued or pending, lowest first. From here on a
/// caller who is not reading is waited for only until a little after the broker began to
/// shut down (its exit waits for this connection); then it is taken as gone: `false`.
async fn send_parent_signals(
    conn: &mut Conn,
    queued: &mut mpsc::Receiver<i32>,
    pending: &mut u64,
    guarded: bool,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> bool {
    while let Ok(signal) = queued.try_recv() {
        *pending |= signal_bit(signal);
    }
    for signal in 1..=64 {
        if *pending & signal_bit(signal) == 0 {
            continue;
        }
        *pending &= !signal_bit(signal);
        let reply = Reply::SignalParent { signal, guarded };
        if !sent(
            conn.send_before(&reply, shutdown_grace(shutdown.clone()))
                .await,
        ) {
            return false;
        }
    }
    true
}

/// The caller's next frame. While `backlogged` none is read: this only waits for the
/// caller to hang up (a caller that goes away still takes its process group with it), which
/// reads as the end of the stream.
/// A frame's request, its bytes let go of: nothing the relay then waits on holds them,
/// since a frame's bytes are counted against the uid only while it is read.
fn decode_consuming(payload: Vec<u8>) -> Result<Request, ctx_protocol::frame::FrameError> {
    ctx_protocol::frame::decode::<Request>(&payload)
}

/// Queues typed input for the program, growing the queue to exactly what it holds: its
/// bytes are counted against the caller's uid (`Conn::hold_input`).
fn queue_input(input: &mut VecDeque<u8>, bytes: &[u8]) {
    input.reserve_exact(bytes.len());
    input.extend(bytes);
}

async fn next_frame(conn: &mut Conn, backlogged: bool) -> Result<Option<Vec<u8>>, WireError> {
    if backlogged {
        hung_up(conn.stream()).await;
        return Ok(None);
    }
    conn.read_frame().await
}

/// Returns once the peer has closed its side of `stream` (or the socket failed), without
/// reading what it sent.
async fn hung_up(stream: &tokio::net::UnixStream) {
    loop {
        match stream.ready(Interest::READABLE).await {
            Ok(ready) if ready.is_read_closed() => return,
            // Unread frames make it readable: clear that, and wait for the next event.
            Ok(_) => {
                let _ = stream.try_io(Interest::READABLE, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
            }
            Err(_) => return,
        }
    }
}

/// Reads the non-blocking PTY master into `buf` until it is full, empty (`EAGAIN`) or
/// closed (`EIO`, end of file). Returns the bytes read and whether the master may still be
/// readable: `false` only when a read ended in `EAGAIN`, so the caller clears its
/// readiness exactly then (clearing it otherwise could lose a wake-up).
fn read_batch(fd: i32, buf: &mut [u8]) -> (usize, bool) {
    let mut got = 0;
    while got < buf.len() {
        match read_fd(fd, &mut buf[got..]) {
            Ok(0) => return (got, true),
            Ok(n) => got += n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (got, false),
            Err(_) => return (got, true),
        }
    }
    (got, true)
}

fn write_fd(fd: i32, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid readable slice.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A kept exec guard listener, as the reactor watches it; the descriptor stays its
/// [`Supervised`]'s.
struct ListenerFd(std::os::fd::RawFd);

impl AsRawFd for ListenerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// The PTY's window size when it differs from the one the caller's terminal has, which
/// it then becomes.
fn size_change(master: &OwnedFd, seen: &mut Option<WinSize>) -> Option<WinSize> {
    let now = pty::size(master)?;
    if *seen == Some(now) || now.rows == 0 || now.cols == 0 {
        return None;
    }
    *seen = Some(now);
    Some(now)
}

/// Whether the process behind the pidfd has ended (not necessarily reaped).
pub(super) fn ended<T: AsRawFd>(pidfd: &AsyncFd<T>) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.get_ref().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

/// Waits for the process behind the pidfd to exit and reaps it.
pub(super) async fn wait_exit<T: AsRawFd>(pidfd: &AsyncFd<T>) -> io::Result<ExitStatus> {
    loop {
        let mut guard = pidfd.readable().await?;
        // SAFETY: siginfo_t is plain data; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: P_PIDFD with a valid pidfd; WNOHANG so a spurious wakeup cannot block.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.get_ref().as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: waitid filled info; si_pid is 0 when nothing was reaped (WNOHANG).
        let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
        if pid == 0 {
            guard.clear_ready();
            continue;
        }
        return Ok(ExitStatus::from_siginfo(code, status));
    }
}

/// A PTY master whose every slave was closed reads EIO and reports a hangup, which the
/// reactor keeps for good; but a slave may be opened again (`/dev/tty`), after which the
/// master reads EAGAIN while the reactor still says it is ready: the relay would spin on it
/// at a full CPU for as long as the slave stays open. A new registration starts from what
/// the master is now. `None`: it could not be registered again (the relay then reads no
/// more of it).
fn rearm_after_hangup(master: AsyncFd<OwnedFd>) -> Option<AsyncFd<OwnedFd>> {
    watch(master.into_inner()).ok()
}

/// Registers a descriptor we own with the reactor.
pub(super) fn watch<T: AsRawFd>(fd: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open
    // and unshared for as long as it is registered.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into())
}

pub(super) fn read_fd(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid writable slice.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EIO) {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// Closes a PTY launch's master once its session's leader stand-in (`leader`) holds the
/// terminal's foreground, which it takes when the program ends: the hangup then leaves the
/// program's group out, so its background jobs live on (the stand-in's exit signals the
/// group that was in the foreground at the hangup). Bounded: a stand-in that is gone or
/// stuck does not keep the terminal open.
pub(super) async fn hang_up_after_handover(master: AsyncFd<OwnedFd>, leader: libc::pid_t) {
    let until = tokio::time::Instant::now() + HANDOVER;
    while tokio::time::Instant::now() < until {
        match foreground(master.get_ref().as_raw_fd()) {
            Some(pgrp) if pgrp != leader => {}
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(master);
}
