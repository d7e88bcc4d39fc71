//! Frame I/O on one broker connection: reads frames together with any `SCM_RIGHTS`
//! descriptors that arrive with them (received close-on-exec), writes replies. A launch
//! with more descriptors than one message carries sends them in several, each riding on
//! bytes of its request: they are all here once its frame is, bounded by the connection's
//! [`Admission`].

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ctx_protocol::fdpass::{peek_fds, recv_with_fds_kept, FD_FRAME_MAX, MAX_FDS};
use ctx_protocol::frame::{complete_frame, encode_vec, payload_len, FrameError, FRAME_HEADER};
use ctx_protocol::Reply;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use super::admission::{Admission, Charger, OverBudget};
use super::closer::{self, PeerFds};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("frame of {len} bytes where at most {max} are accepted")]
    TooLarge { len: usize, max: usize },
    #[error("{0}")]
    OverBudget(#[from] OverBudget),
}

/// Everything the peer sent is closed on a closer thread (see `closer`): the descriptors
/// held, and the socket itself when its close would release descriptors still queued in it.
pub struct Conn {
    /// Taken only by `drop`.
    stream: ManuallyDrop<UnixStream>,
    buf: Vec<u8>,
    /// Receive scratch, on the heap: on the stack it would sit in every read future, which
    /// is created per relay-loop turn and moved into the connection's task.
    chunk: Box<[u8]>,
    /// Received in the handshake, and counted against its budget.
    fds: Vec<OwnedFd>,
    /// Those, once the handshake is over: still counted against the peer's uid, until
    /// they are closed.
    passed: Option<PeerFds>,
    /// Encoding buffer for replies, kept so that a PTY relay's `Output` frames (up to
    /// 128 KiB) do not each grow a fresh `Vec` from nothing.
    out: Vec<u8>,
    /// Encoded replies held back to go out with the next one, in the same write.
    held: Vec<u8>,
    /// Largest payload the next frames may announce (the protocol's limit is far above
    /// what most messages need).
    max_frame: usize,
    /// This connection's share of its uid's bounds; the buffer and descriptors held during
    /// the handshake are charged to it.
    admission: Admission,
    /// Charges what this connection hands the closer to its peer's uid.
    charger: Option<Charger>,
    /// Descriptors arriving from now on are closed at once, not kept.
    after_handshake: bool,
    /// Descriptors of a request that came without them, counted against the uid's share
    /// before the client was asked for them ([`Conn::receive_deferred_fds`]).
    reserved: usize,
    /// Past it, a handshake waiting for room for its descriptors is refused: before the
    /// handshake's own deadline, so that the client learns why.
    room_deadline: Option<tokio::time::Instant>,
    /// Typed input its relay holds for a terminal program, counted with the buffer
    /// against the uid's [`admission::HELD_PER_UID`].
    input_held: usize,
    /// What its relay's larger output buffers hold room for ([`Conn::hold_output`]).
    output_held: usize,
}

/// Largest payload after the request: an `Input` chunk is 64 KiB from the CLI, 16 KiB from
/// the shim.
pub const AFTER_HANDSHAKE_FRAME: usize = 256 * 1024;

/// The receive buffer a connection keeps past its handshake, not counted against its uid:
/// `Signal`, `Resize` and a terminal's keys fit. A larger frame's room is counted as its
/// bytes arrive (a frame announced and never sent costs nothing), and given back with it.
const KEPT_BUFFER: usize = 4096;

/// While a frame waits for room in its uid's share, how often the peer is checked for a
/// hang-up: the wait reads nothing, so the end of the stream would not show otherwise.
const HANGUP_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

impl Conn {
    pub fn new(stream: UnixStream, admission: Admission) -> Conn {
        Conn {
            stream: ManuallyDrop::new(stream),
            charger: admission.charger(),
            buf: Vec::with_capacity(4096),
            chunk: vec![0u8; 16 * 1024].into_boxed_slice(),
            fds: Vec::new(),
            passed: None,
            out: Vec::new(),
            held: Vec::new(),
            max_frame: ctx_protocol::frame::MAX_FRAME,
            admission,
            after_handshake: false,
            reserved: 0,
            room_deadline: None,
            input_held: 0,
            output_held: 0,
        }
    }

    /// Until `deadline`, a message carrying more descriptors than the uid's bounds leave
    /// room for now waits for room, where its uid's share could ever hold it; without one
    /// it is refused at once.
    pub fn wait_for_room_until(&mut self, deadline: tokio::time::Instant) {
        self.room_deadline = Some(deadline);
    }

    /// What the handshake's descriptors count as: those received, or those reserved.
    fn held_fds(&self) -> usize {
        self.fds.len().max(self.reserved)
    }

    /// A request named `named` descriptors and came without them (more than one message
    /// carries): waits until its uid's share has room for them all, counts them, asks the
    /// client for them (`SendDescriptors`) and reads the frame that carries them.
    pub async fn receive_deferred_fds(&mut self, named: usize) -> Result<(), WireError> {
        let bytes = self.buf.capacity();
        let deadline = self.room_deadline;
        let reserved = match deadline {
            Some(deadline) if named <= self.admission.fd_cap() => {
                self.admission
                    .wait_for_room(deadline, |a| a.hold(bytes, named).ok())
                    .await
            }
            _ => None,
        };
        if reserved.is_none() {
            // Says which bound it was.
            self.admission.hold(bytes, named)?;
        }
        self.reserved = named;
        self.send(&Reply::SendDescriptors).await?;
        let max = std::mem::replace(&mut self.max_frame, FD_FRAME_MAX);
        let carried = self.read_frame().await?;
        self.max_frame = max;
        if carried.is_none() {
            return Err(WireError::Truncated);
        }
        let got = self.fds.len();
        self.reserved = 0;
        if got != named {
            return Err(WireError::Io(io::Error::other(format!(
                "{got} descriptors sent where the request names {named}"
            ))));
        }
        Ok(())
    }

    /// Frames announcing a payload over `max` bytes are refused from now on.
    pub fn limit_frames(&mut self, max: usize) {
        self.max_frame = max;
    }

    /// The handshake is over: nothing more is charged to the uid's handshake budget, a
    /// large request's buffer is given back instead of living as long as the launch, and
    /// the frames that may follow (`Signal`, `Resize`, `Input`, `InputEof`) are small and
    /// carry no descriptors.
    /// Waits for the peer's first bytes without a turn (see `Admission::step_back`), then
    /// for a handshake turn of its uid (see `Admission::handshake_turn`).
    pub async fn handshake_turn(&mut self) {
        let fd = self.stream.as_raw_fd();
        // Through the reactor, so that a readiness it reported with nothing to read is
        // cleared (the peek's WouldBlock) and the next wait is for real bytes: a turn
        // taken on a stale readiness would wait in the read for a sender that cannot send.
        while let Err(e) = self.stream.try_io(Interest::READABLE, || peek(fd)) {
            if e.kind() != io::ErrorKind::WouldBlock {
                break;
            }
            self.admission.step_back();
            let _ = self.stream.readable().await;
        }
        self.admission.handshake_turn().await;
    }

    /// The request is read: its bytes stop counting as a handshake's and `request` bytes
    /// (what the decoded request and the launch's plan will hold until the program's
    /// exec) count against the uid's [`admission::REQUESTS_PER_UID`]. False, with nothing
    /// counted, when that has no room for them: the uid's own launches starting hold it,
    /// and the caller is told `Busy`, as a hook whose uid's handshakes are at their bound is.
    pub fn handshake_done(&mut self, request: usize) -> bool {
        let charge = self.admission.handshake_done();
        let owner = self.charger.as_ref().map(Charger::uid);
        let fds = std::mem::take(&mut self.fds);
        self.passed = Some(PeerFds::charged(fds, owner, charge));
        self.buf.shrink_to(KEPT_BUFFER);
        self.max_frame = AFTER_HANDSHAKE_FRAME;
        self.after_handshake = true;
        self.admission.hold_request(request)
    }

    /// The launch has let go of its request (its program exec'd).
    pub fn let_go_of_request(&mut self) {
        self.admission.let_go_of_request();
    }

    /// What its launch's request is counted as until the program's exec.
    pub fn request_held(&self) -> usize {
        self.admission.request()
    }

    /// Counts `bytes` of typed input its relay now holds for the program against the
    /// peer's uid, with the receive buffer. Not refused: growing, they came from a frame
    /// whose room was counted until it was read.
    pub fn hold_input(&mut self, bytes: usize) {
        self.input_held = bytes;
        let held = self.held_after(self.buf.capacity());
        self.admission.hold_after(held, true);
    }

    /// Counts `bytes` of room for a terminal's output (the relay's read buffer grown past
    /// its first size, and what encoding and holding back frames that large takes here)
    /// against the peer's uid, with the receive buffer and the input. False, and nothing
    /// counted, when that would take the uid past its bound: the relay keeps its smaller
    /// buffer, and a fast writer's output goes out in smaller frames.
    pub fn hold_output(&mut self, bytes: usize) -> bool {
        let before = std::mem::replace(&mut self.output_held, bytes);
        let held = self.held_after(self.buf.capacity());
        if self.admission.hold_after(held, false) {
            return true;
        }
        self.output_held = before;
        false
    }

    /// Waits until the uid's share has room for this connection to hold `held`, and counts
    /// it; false if the peer hung up meanwhile (its launch is then ended as for any client
    /// that goes away).
    async fn wait_for_held_room(&mut self, held: usize) -> bool {
        let fd = self.stream.as_raw_fd();
        let mut check = tokio::time::interval(HANGUP_CHECK);
        loop {
            tokio::select! {
                _ = self.admission.hold_after_waiting(held) => return true,
                _ = check.tick() => {
                    if peer_hung_up(fd) {
                        return false;
                    }
                }
            }
        }
    }

    /// What this connection holds past its handshake with a receive buffer of `capacity`.
    fn held_after(&self, capacity: usize) -> usize {
        capacity.saturating_sub(KEPT_BUFFER) + self.input_held + self.output_held
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Nothing more will be sent: the client reads the end of the stream now, not once
    /// the connection is torn down.
    pub fn end_replies(&self) {
        // SAFETY: shutdown of our own socket; it stays open for reading.
        unsafe { libc::shutdown(self.stream.as_raw_fd(), libc::SHUT_WR) };
    }

    /// The next frame's payload; `None` at a clean end of stream. Cancel-safe: bytes read
    /// are kept in the connection's buffer until a whole frame is there.
    pub async fn read_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        loop {
            if let Some(total) = complete_frame(&self.buf)? {
                let payload = self.buf[FRAME_HEADER..total].to_vec();
                self.buf.drain(..total);
                if self.after_handshake && self.buf.capacity() > KEPT_BUFFER {
                    // A large frame's room goes back to the uid with it.
                    self.buf.shrink_to(KEPT_BUFFER);
                    let held = self.held_after(self.buf.capacity());
                    self.admission.hold_after(held, false);
                }
                return Ok(Some(payload));
            }
            if let Some(header) = self.buf.first_chunk::<FRAME_HEADER>() {
                let len = payload_len(*header)?;
                if len > self.max_frame {
                    return Err(WireError::TooLarge {
                        len,
                        max: self.max_frame,
                    });
                }
                // Room for exactly this frame (or, past the handshake, for what of it
                // arrives): growing by doubling would hold up to twice what was charged.
                let want = FRAME_HEADER + len;
                if self.after_handshake {
                    // Past the handshake the peer's uid is known to be allowed here: the
                    // buffer grows as the frame's bytes arrive, each step waiting (unread)
                    // for room in the uid's share instead of failing.
                    if self.buf.len() == self.buf.capacity() && want > self.buf.capacity() {
                        let target = want.min(self.buf.capacity() + self.chunk.len());
                        let held = self.held_after(target);
                        if !self.wait_for_held_room(held).await {
                            return Err(WireError::Truncated);
                        }
                        self.buf.reserve_exact(target - self.buf.len());
                    }
                } else if want > self.buf.capacity() {
                    self.admission.hold(want, self.held_fds())?;
                    self.buf.reserve_exact(want - self.buf.len());
                }
            }
            // In the handshake, only as many as the bounds leave room for reach the
            // broker: a message with more is refused unread (peeked at), and closed with
            // the connection on a closer thread. What is read is read with room for all a
            // message may carry: descriptors that do not fit would be discarded by the
            // kernel, and closed (which may block) on this thread. In a counted handshake, a
            // message's descriptors are counted before it is read: two connections of the
            // uid reading at once must not both take the last room, or the one that finds
            // it gone could neither keep what it received nor wait holding it uncounted.
            // Not only near the bounds: the room read here is gone by the time the message
            // comes whenever another connection of the uid took some meanwhile (a burst of
            // launches each passing most of the share: the second was refused).
            let room = if self.reserved > 0 {
                self.reserved.saturating_sub(self.fds.len())
            } else {
                self.admission.fd_room()
            };
            let counted = self.reserved == 0 && room != usize::MAX && !self.after_handshake;
            let bytes = self.buf.capacity();
            let held = self.fds.len();
            let mut fds: [RawFd; MAX_FDS] = [-1; MAX_FDS];
            let fd = self.stream.as_raw_fd();
            // Past the handshake, no more than the buffer has room for: it grows only for a
            // frame whose room was counted (and always has some until the frame is whole).
            let limit = if self.after_handshake {
                (self.buf.capacity() - self.buf.len()).clamp(1, self.chunk.len())
            } else {
                self.chunk.len()
            };
            let chunk = &mut self.chunk[..limit];
            let admission = &mut self.admission;
            // What the peeks installed: closed here only where no close can wait (see
            // `closer::close_duplicates`).
            let mut peeked = Vec::new();
            let received = self
                .stream
                .async_io(Interest::READABLE, || {
                    if room < MAX_FDS || counted {
                        match peek_fds(fd, room, &mut peeked)? {
                            None => return Ok(Read::TooMany),
                            Some(n)
                                if counted && n > 0 && admission.hold(bytes, held + n).is_err() =>
                            {
                                return Ok(Read::TooMany)
                            }
                            Some(_) => {}
                        }
                    }
                    recv_with_fds_kept(fd, chunk, &mut fds).map(Read::Got)
                })
                .await;
            closer::close_duplicates(peeked, self.charger.as_ref());
            let received = received?;
            let Read::Got(got) = received else {
                if self.wait_for_fd_room().await {
                    continue;
                }
                // More than the room: say which bound it was.
                let over = self
                    .admission
                    .hold(self.buf.capacity(), self.fds.len() + room + 1);
                let e = io::Error::from_raw_os_error(libc::EMSGSIZE);
                return Err(over.err().map_or(WireError::Io(e), WireError::OverBudget));
            };
            let n = got.bytes;
            let received = fds[..got.fds].iter().map(|&raw| {
                // SAFETY: recv_with_fds_kept handed us ownership of these new descriptors.
                unsafe { OwnedFd::from_raw_fd(raw) }
            });
            if got.truncated {
                // The kernel discarded some (another control message took room, as
                // SCM_CREDENTIALS would): what did come is closed off the worker.
                closer::close_from(received.collect(), self.charger.as_ref());
                return Err(WireError::Io(io::Error::from_raw_os_error(libc::EMSGSIZE)));
            }
            if self.after_handshake {
                closer::close_from(received.collect(), self.charger.as_ref());
            } else {
                self.fds.extend(received);
            }
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(WireError::Truncated)
                };
            }
            self.buf.extend_from_slice(&self.chunk[..n]);
            if let Err(over) = self.admission.hold(self.buf.capacity(), self.held_fds()) {
                // Not held while the refusal is answered.
                drop(self.take_fds());
                return Err(over.into());
            }
        }
    }

    /// The next message carries more descriptors than the bounds leave room for now: waits
    /// (within the deadline) for room, when the uid's share could hold them at all. `false`:
    /// refuse it.
    async fn wait_for_fd_room(&mut self) -> bool {
        let Some(deadline) = self.room_deadline else {
            return false;
        };
        // A client sends its descriptors in one message with its request, or in a frame
        // of their own once room was made for them (`reserved`): a connection already
        // holding some is sending what no client does, and waits for nothing. Its
        // messages queued unread would keep its user's descriptors in flight, which the
        // kernel bounds per user: the spawn child of a launch into that user's context
        // hands the broker its seccomp listener that way too.
        if self.reserved > 0 || self.after_handshake || !self.fds.is_empty() {
            return false;
        }
        let fd = self.stream.as_raw_fd();
        let could = self.admission.fd_cap().saturating_sub(self.fds.len());
        // Counted once: every handshake waiting for room wakes each time some is given
        // back, and a check that peeked again would install the message's descriptors in
        // the broker for each of them.
        let mut peeked = Vec::new();
        let peek = peek_fds(fd, could.min(MAX_FDS), &mut peeked);
        closer::close_duplicates(peeked, self.charger.as_ref());
        let Ok(Some(n)) = peek else {
            return false;
        };
        self.admission
            .wait_for_room(deadline, |a| (a.fd_room() >= n).then_some(()))
            .await
            .is_some()
    }

    /// Descriptors received in the handshake, in arrival order; closed on a closer thread
    /// when dropped.
    pub fn take_fds(&mut self) -> PeerFds {
        self.passed
            .take()
            .unwrap_or_else(|| PeerFds::new(std::mem::take(&mut self.fds), self.charger.as_ref()))
    }

    pub fn pending_fds(&self) -> usize {
        self.fds.len() + self.passed.as_ref().map_or(0, |p| p.len())
    }

    pub async fn send(&mut self, reply: &Reply<'_>) -> Result<(), WireError> {
        self.out.clear();
        self.out.append(&mut self.held);
        encode_vec(reply, &mut self.out)?;
        self.stream.write_all(&self.out).await?;
        Ok(())
    }

    /// Sends `reply` unless `until` comes first while the client is not reading: then the
    /// rest of the frame is held for the next send, which writes it first, so the client
    /// only ever sees whole frames. `Ok(false)`: interrupted.
    pub async fn send_before(
        &mut self,
        reply: &Reply<'_>,
        until: impl std::future::Future<Output = ()>,
    ) -> Result<bool, WireError> {
        self.out.clear();
        self.out.append(&mut self.held);
        encode_vec(reply, &mut self.out)?;
        tokio::pin!(until);
        let mut written = 0;
        while written < self.out.len() {
            match self.stream.try_write(&self.out[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::select! {
                        ready = self.stream.writable() => ready?,
                        _ = &mut until => {
                            self.held.extend_from_slice(&self.out[written..]);
                            return Ok(false);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Sends `reply` only if the socket takes it now: `false` (nothing written) when the
    /// client is not reading, so that a caller's loop never waits on it. What is held goes
    /// first; the rest of a partly written frame is held for the next send.
    pub fn try_send(&mut self, reply: &Reply<'_>) -> Result<bool, WireError> {
        // One write for what is held and the reply: the client wakes once for both.
        self.out.clear();
        self.out.extend_from_slice(&self.held);
        let held = self.held.len();
        encode_vec(reply, &mut self.out)?;
        match self.stream.try_write(&self.out) {
            Ok(n) if n >= held => {
                self.held.clear();
                self.held.extend_from_slice(&self.out[n..]);
                Ok(true)
            }
            Ok(n) => {
                self.held.drain(..n);
                Ok(false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends `reply` with the descriptor `fd` if the socket takes it now and nothing is
    /// held before it: `false` (nothing sent) otherwise. The rest of a partly written frame
    /// is held for the next send (the descriptor went with its first byte).
    pub fn try_send_with_fd(&mut self, reply: &Reply<'_>, fd: RawFd) -> Result<bool, WireError> {
        if !self.held.is_empty() {
            return Ok(false);
        }
        self.out.clear();
        encode_vec(reply, &mut self.out)?;
        let sock = self.stream.as_raw_fd();
        let out = &self.out;
        match self.stream.try_io(tokio::io::Interest::WRITABLE, || {
            ctx_protocol::fdpass::try_send_with_fds(sock, out, &[fd])
        }) {
            Ok(n) => {
                self.held.extend_from_slice(&self.out[n..]);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Queues `reply` to go out with the next `send`, in one write: the client then wakes
    /// once for both.
    pub fn hold(&mut self, reply: &Reply<'_>) -> Result<(), WireError> {
        encode_vec(reply, &mut self.held)?;
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: `stream` is not used after this.
        let stream = unsafe { ManuallyDrop::take(&mut self.stream) };
        let mut fds = std::mem::take(&mut self.fds);
        // Out of the reactor first: the descriptor is then closed here or on another thread.
        if let Ok(socket) = stream.into_std() {
            let socket = OwnedFd::from(socket);
            if !holds_nothing(&socket) {
                fds.push(socket);
            }
            // Otherwise dropped here: nothing it holds can make its close wait.
        }
        closer::close_from(fds, self.charger.as_ref());
    }
}

/// One receive in the handshake.
enum Read {
    /// Bytes and descriptors received.
    Got(ctx_protocol::fdpass::Received),
    /// The next message carries more descriptors than there is room for now.
    TooMany,
}

/// Whether the peer of the stream socket `fd` has closed its end (or the socket failed),
/// whatever is still unread in it. Touches no readiness the runtime keeps.
fn peer_hung_up(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Whether the peer sent something a read would take now (or ended): `WouldBlock` when
/// not.
fn peek(fd: RawFd) -> io::Result<()> {
    let mut byte = 0u8;
    // SAFETY: peeks one byte into our own buffer; with no control buffer, descriptors
    // riding on it stay queued.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether closing `socket` can release nothing the peer sent: no more can arrive once
/// its reading side is shut (the kernel checks that under the lock it queues with), and
/// nothing is queued (descriptors travel with at least one byte). Then the close only
/// wakes the peer, and a closer thread's wake-up per connection is saved.
fn holds_nothing(socket: &OwnedFd) -> bool {
    let fd = socket.as_raw_fd();
    let mut queued: libc::c_int = -1;
    // SAFETY: plain calls on a socket we own; FIONREAD writes one int.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RD) == 0
            && libc::ioctl(fd, libc::FIONREAD, &mut queued) == 0
            && queued == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A held reply and the next one go out together, whole and in order; a client
    /// that takes none of them gets nothing of the new one, and the held bytes wait.
    #[tokio::test]
    async fn a_held_reply_goes_out_first_with_the_next_one() {
        use std::io::Read;
        let (ours, mut peer) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let admissions = std::sync::Arc::new(super::super::admission::Admissions::default());
        let mut conn = Conn::new(
            tokio::net::UnixStream::from_std(ours).unwrap(),
            admissions.admit(0, false, false).unwrap(),
        );
        // As the broker's connections, once the reactor has seen the socket.
        conn.stream.writable().await.unwrap();
        conn.hold(&Reply::Lingering).unwrap();
        assert!(conn.try_send(&Reply::Accepted).unwrap());
        let mut expected = Vec::new();
        encode_vec(&Reply::Lingering, &mut expected).unwrap();
        encode_vec(&Reply::Accepted, &mut expected).unwrap();
        let mut got = vec![0u8; expected.len()];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, expected);

        // Fill the socket, then hold a reply: try_send writes none of the next one.
        let big = vec![0u8; 1 << 16];
        while conn.stream.try_write(&big).is_ok() {}
        conn.hold(&Reply::Lingering).unwrap();
        assert!(!conn.try_send(&Reply::Accepted).unwrap());
        assert!(!conn.held.is_empty());
        drop(peer);
    }

    #[test]
    fn a_socket_with_a_descriptor_queued_is_not_closed_in_place() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        ctx_protocol::fdpass::send_with_fds(peer.as_raw_fd(), b"x", &[null.as_raw_fd()]).unwrap();
        assert!(!holds_nothing(&OwnedFd::from(ours)));
    }

    #[test]
    fn a_drained_socket_takes_nothing_more_once_checked() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let ours = OwnedFd::from(ours);
        assert!(holds_nothing(&ours));
        // The peer can no longer queue anything (descriptors included) behind the check.
        let null = std::fs::File::open("/dev/null").unwrap();
        let sent = ctx_protocol::fdpass::send_with_fds(peer.as_raw_fd(), b"x", &[null.as_raw_fd()]);
        assert_eq!(sent.unwrap_err().raw_os_error(), Some(libc::EPIPE));
        use std::io::Write;
        assert!(peer.write_all(b"y").is_err());
        drop(ours);
    }
}
