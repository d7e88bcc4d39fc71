//! One connection to the broker: connect, the opening `Hello` + request (with the caller's
//! descriptors as `SCM_RIGHTS`), the broker's `Hello` check, and frame I/O. Blocking and
//! synchronous on purpose: `ctx exec -- /bin/true` is measured against a direct launch,
//! so the CLI pays for no runtime.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ctx_protocol::frame::{self, complete_frame, FRAME_HEADER};
use ctx_protocol::{
    fdpass, reply_tag, ClientKind, ErrorKind, Hello, Reply, Request, PROTOCOL_VERSION,
};

use super::error::Error;

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// Free room kept at the end of the read buffer before each read; PTY output arrives in
/// frames of a few tens of KiB, so one read usually takes several of them.
const READ_ROOM: usize = 128 * 1024;

/// How long the broker may take to say why it hung up on a request we could not finish
/// sending.
const LAST_WORDS: Duration = Duration::from_secs(1);
/// How long a launch refused as `Busy` keeps connecting again (the hook's patience).
const BUSY_PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

pub struct Connection {
    stream: UnixStream,
    socket: PathBuf,
    /// Received bytes; `buf[start..end]` is not yet decoded.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Whether the broker's `Hello` has been read and accepted.
    greeted: bool,
}

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl Connection {
    pub fn connect(socket: &Path) -> Result<Connection, Error> {
        let stream = UnixStream::connect(socket).map_err(|source| Error::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
        Ok(Connection::over(stream, socket))
    }

    /// Connects without waiting on a listener whose queue is full (a stopped or wedged
    /// broker): `Ok(None)` then. For `ctx-broker --stop`, which must not hang on the very
    /// broker it is there to kill.
    pub fn connect_now(socket: &Path) -> std::io::Result<Option<Connection>> {
        use nix::sys::socket::{
            connect, socket as new_socket, AddressFamily, SockFlag, SockType, UnixAddr,
        };
        let fd = new_socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let addr = UnixAddr::new(socket)?;
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {}
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINPROGRESS) => {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        }
        let stream = UnixStream::from(fd);
        stream.set_nonblocking(false)?;
        Ok(Some(Connection::over(stream, socket)))
    }

    fn over(stream: UnixStream, socket: &Path) -> Connection {
        Connection {
            stream,
            socket: socket.to_path_buf(),
            buf: vec![0; 2 * READ_ROOM],
            start: 0,
            end: 0,
            greeted: false,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Bounds every later blocking read (for the one-shot verbs: a stuck broker must not
    /// hang a script polling `ctx status`).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        self.stream
            .set_write_timeout(timeout)
            .map_err(|e| Error::io("setting the socket's write timeout", e))
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        self.stream
            .set_read_timeout(timeout)
            .map_err(|e| Error::io("setting the socket's read timeout", e))
    }

    /// Sends the client `Hello` and `request` in one message, `fds` riding along. No round
    /// trip: the broker's `Hello` is read with the first reply.
    pub fn open(&mut self, request: &Request, fds: &[RawFd]) -> Result<(), Error> {
        let mut bytes = Vec::with_capacity(4096);
        frame::encode_vec(&Hello::new(ClientKind::Cli), &mut bytes)
            .map_err(|e| self.bad_request(e))?;
        frame::encode_vec(request, &mut bytes).map_err(|e| self.bad_request(e))?;
        if let Err(source) = fdpass::send_with_fds(self.stream.as_raw_fd(), &bytes, fds) {
            return Err(self.last_words().unwrap_or(Error::Send {
                socket: self.socket.clone(),
                source,
            }));
        }
        Ok(())
    }

    /// Connects and sends a launch's opening. The broker's `Busy` refusal (its room for this
    /// uid is held by the uid's other connections, for the moment a burst of launches
    /// takes) connects again after a pause, for [`BUSY_PATIENCE`] at most, as the hook does.
    /// The wait for the first reply ends too when `signals` (the relay's signalfd) is
    /// readable: the relay then handles the signal as it would have without this wait (a
    /// second SIGINT before `Started` ends ctx, on a broker that never answers too).
    pub fn launch(
        socket: &Path,
        request: &Request,
        fds: &[RawFd],
        signals: BorrowedFd<'_>,
    ) -> Result<Connection, Error> {
        let deadline = std::time::Instant::now() + BUSY_PATIENCE;
        let mut pause = Duration::from_millis(1);
        loop {
            let mut conn = Connection::connect(socket)?;
            let busy = match conn.open(request, fds) {
                Ok(()) => conn.refused_busy(signals)?,
                Err(Error::Broker {
                    kind: ErrorKind::Busy,
                    ..
                }) => true,
                Err(e) => return Err(e),
            };
            if !busy || std::time::Instant::now() + pause > deadline {
                return Ok(conn);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(64));
        }
    }

    /// Whether the first reply is the broker's `Busy` refusal. Peeked at, not read: the
    /// relay that reads the replies waits on the socket, not on this buffer. A refusal, at
    /// accept or in the handshake, comes in one write with the greeting before it; past a
    /// greeting, only what arrived with it is looked at, since a launch's next reply may
    /// be long in coming.
    /// A signal before any reply is not a refusal: the relay takes it from there.
    fn refused_busy(&self, signals: BorrowedFd<'_>) -> Result<bool, Error> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        loop {
            let mut fds = [
                PollFd::new(self.stream.as_fd(), PollFlags::POLLIN),
                PollFd::new(signals, PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                // For the relay, which polls the same two, to report.
                Err(_) => return Ok(false),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[0]) {
                break;
            }
            if ready(&fds[1]) {
                return Ok(false);
            }
        }
        let mut head = [0u8; 1024];
        let n = loop {
            // SAFETY: peeks into our own buffer on our own socket.
            let n = unsafe {
                libc::recv(
                    self.stream.as_raw_fd(),
                    head.as_mut_ptr().cast(),
                    head.len(),
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                // For the reader of the replies to report.
                return Ok(false);
            }
        };
        let busy = |payload: &[u8]| {
            payload.first() == Some(&reply_tag::ERROR)
                && matches!(
                    frame::decode::<Reply>(payload),
                    Ok(Reply::Error {
                        kind: ErrorKind::Busy,
                        ..
                    })
                )
        };
        let pending = &head[..n];
        let Ok(Some(total)) = complete_frame(pending) else {
            return Ok(false);
        };
        let first = &pending[FRAME_HEADER..total];
        if first.first() != Some(&reply_tag::HELLO) {
            return Ok(busy(first));
        }
        let rest = &pending[total..];
        Ok(matches!(complete_frame(rest), Ok(Some(next)) if busy(&rest[FRAME_HEADER..next])))
    }

    /// Sends a follow-up request (`Signal`, `Resize`, `Input`, `InputEof`).
    pub fn send(&self, request: &Request) -> Result<(), Error> {
        let mut bytes = Vec::new();
        frame::encode_vec(request, &mut bytes).map_err(|e| self.bad_request(e))?;
        fdpass::send_with_fds(self.stream.as_raw_fd(), &bytes, &[]).map_err(|source| Error::Send {
            socket: self.socket.clone(),
            source,
        })
    }

    /// One `read` from the socket into the buffer; `Ok(false)` at end of stream.
    pub fn fill(&mut self) -> Result<bool, Error> {
        self.make_room()?;
        loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Error::NoAnswer {
                        socket: self.socket.clone(),
                    })
                }
                Err(source) => {
                    return Err(Error::Read {
                        socket: self.socket.clone(),
                        source,
                    })
                }
            }
        }
    }

    /// The next buffered reply after the broker's `Hello`, if one has fully arrived.
    pub fn next_reply(&mut self) -> Result<Option<Reply<'_>>, Error> {
        let Some(total) = self.ready_frame()? else {
            return Ok(None);
        };
        let payload = self.start + FRAME_HEADER..self.start + total;
        self.start += total;
        match frame::decode(&self.buf[payload]) {
            Ok(reply) => Ok(Some(reply)),
            Err(e) => Err(Error::Malformed {
                socket: self.socket.clone(),
                detail: e.to_string(),
            }),
        }
    }

    /// The socket, and the bytes read from it but not yet decoded, moved to the start of
    /// the buffer (which holds at least `ctx_protocol::linger::RELAY_BUFFER`): for the
    /// relay that outlives the launch.
    pub fn unread(&mut self) -> (RawFd, &mut [u8], usize) {
        self.buf.copy_within(self.start..self.end, 0);
        let have = self.end - self.start;
        (self.start, self.end) = (0, have);
        if self.buf.len() < ctx_protocol::linger::RELAY_BUFFER {
            self.buf.resize(ctx_protocol::linger::RELAY_BUFFER, 0);
        }
        (self.stream.as_raw_fd(), &mut self.buf, have)
    }

    /// Blocks until the next reply; end of stream is [`Error::Lost`].
    pub fn recv(&mut self) -> Result<Reply<'_>, Error> {
        while self.ready_frame()?.is_none() {
            if !self.fill()? {
                return Err(Error::Lost {
                    socket: self.socket.clone(),
                });
            }
        }
        Ok(self.next_reply()?.expect("a complete frame was just seen"))
    }

    /// Consumes the broker's `Hello` if it is first in the buffer, then returns the length
    /// of the complete frame at the front, if any.
    fn ready_frame(&mut self) -> Result<Option<usize>, Error> {
        loop {
            let pending = &self.buf[self.start..self.end];
            let Some(total) = complete_frame(pending).map_err(|e| Error::Malformed {
                socket: self.socket.clone(),
                detail: e.to_string(),
            })?
            else {
                return Ok(None);
            };
            if self.greeted {
                return Ok(Some(total));
            }
            let tag = pending.get(FRAME_HEADER).copied();
            if tag == Some(reply_tag::ERROR) {
                // A broker that refuses us outright may skip its Hello; its reason matters more.
                return Ok(Some(total));
            }
            if tag != Some(reply_tag::HELLO) {
                return Err(Error::Unexpected {
                    socket: self.socket.clone(),
                    what: "a reply before its Hello".into(),
                });
            }
            let payload = &pending[FRAME_HEADER..total];
            match frame::decode::<Reply>(payload) {
                Ok(Reply::Hello { version, software }) if version == PROTOCOL_VERSION => {
                    let _ = software;
                }
                Ok(Reply::Hello { version, software }) => {
                    return Err(Error::VersionMismatch {
                        socket: self.socket.clone(),
                        broker: version,
                        ours: PROTOCOL_VERSION,
                        software: software.into_owned(),
                    })
                }
                Ok(_) => unreachable!("tag says Hello"),
                Err(e) => {
                    return Err(Error::Malformed {
                        socket: self.socket.clone(),
                        detail: format!("its Hello: {e}"),
                    })
                }
            }
            self.greeted = true;
            self.start += total;
        }
    }

    /// Compacts the buffer, and grows it when the frame at its front needs more room.
    fn make_room(&mut self) -> Result<(), Error> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let pending = &self.buf[self.start..self.end];
        let frame_len = if pending.len() >= FRAME_HEADER {
            let head = [pending[0], pending[1], pending[2], pending[3]];
            let len = frame::payload_len(head).map_err(|e| Error::Malformed {
                socket: self.socket.clone(),
                detail: e.to_string(),
            })?;
            FRAME_HEADER + len
        } else {
            0
        };
        if self.buf.len() - self.end >= READ_ROOM / 2 && self.buf.len() - self.start >= frame_len {
            return Ok(());
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.buf.len() < frame_len + READ_ROOM {
            self.buf.resize(frame_len + READ_ROOM, 0);
        }
        Ok(())
    }

    /// After a failed send: the broker may have hung up with a reason already written.
    fn last_words(&mut self) -> Option<Error> {
        self.stream.set_read_timeout(Some(LAST_WORDS)).ok()?;
        match self.recv() {
            Ok(Reply::Error { kind, message }) => Some(Error::Broker {
                kind,
                message: message.into_owned(),
            }),
            Err(e @ Error::VersionMismatch { .. }) => Some(e),
            _ => None,
        }
    }

    fn bad_request(&self, e: frame::FrameError) -> Error {
        Error::Usage(format!(
            "cannot encode the request for the broker at {}: {e}",
            self.socket.display()
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// Turns the broker's `Error` reply into ours; every other reply is unexpected here.
pub fn unexpected(socket: &Path, reply: Reply<'_>) -> Error {
    match reply {
        Reply::Error { kind, message } => Error::Broker {
            kind,
            message: message.into_owned(),
        },
        other => Error::Unexpected {
            socket: socket.to_path_buf(),
            what: reply_name(&other).into(),
        },
    }
}

pub fn reply_name(reply: &Reply<'_>) -> &'static str {
    match reply {
        Reply::Hello { .. } => "Hello",
        Reply::Error { .. } => "Error",
        Reply::Started { .. } => "Started",
        Reply::ExecFailed(_) => "ExecFailed",
        Reply::Exited { .. } => "Exited",
        Reply::Output(_) => "Output",
        Reply::Status(_) => "Status",
        Reply::Contexts(_) => "Contexts",
        Reply::Reloaded { .. } => "Reloaded",
        Reply::Processes(_) => "Processes",
        Reply::Killed { .. } => "Killed",
        Reply::Accepted => "Accepted",
        Reply::Stopped { .. } => "Stopped",
        Reply::KilledInContext { .. } => "KilledInContext",
        Reply::Modes(_) => "Modes",
        Reply::SignalParent { .. } => "SignalParent",
        Reply::Lingering => "Lingering",
        Reply::SendDescriptors => "SendDescriptors",
        Reply::Size(_) => "Size",
        Reply::Watch => "Watch",
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;
    use std::io::Write;

    use ctx_protocol::{ErrorKind, ExitStatus};

    fn frames(replies: &[Reply<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in replies {
            frame::encode_vec(r, &mut out).unwrap();
        }
        out
    }

    fn hello(version: u32) -> Reply<'static> {
        Reply::Hello {
            version,
            software: Cow::Borrowed("ctx-broker 9.9.9"),
        }
    }

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Connection::over(a, Path::new("/test.sock")), b)
    }

    #[test]
    fn hello_is_checked_and_skipped() {
        let (mut conn, mut broker) = pair();
        broker
            .write_all(&frames(&[
                hello(PROTOCOL_VERSION),
                Reply::Started { id: 1, pid: 42 },
            ]))
            .unwrap();
        assert_eq!(conn.recv().unwrap(), Reply::Started { id: 1, pid: 42 });
    }

    #[test]
    fn another_protocol_version_names_both() {
        let (mut conn, mut broker) = pair();
        broker
            .write_all(&frames(&[hello(PROTOCOL_VERSION + 1)]))
            .unwrap();
        let e = conn.recv().unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::VersionMismatch { .. }), "{text}");
        assert!(
            text.contains(&format!("version {}", PROTOCOL_VERSION + 1)),
            "{text}"
        );
        assert!(
            text.contains(&format!("speaks version {PROTOCOL_VERSION}")),
            "{text}"
        );
        assert!(text.contains("/test.sock"), "{text}");
    }

    #[test]
    fn an_error_before_hello_is_the_brokers_reason() {
        let (mut conn, mut broker) = pair();
        let refusal = Reply::Error {
            kind: ErrorKind::Refused,
            message: Cow::Borrowed("uid 1000 may not enter context \"platform\""),
        };
        broker.write_all(&frames(&[refusal])).unwrap();
        let e = unexpected(Path::new("/test.sock"), conn.recv().unwrap());
        assert_eq!(e.to_string(), "uid 1000 may not enter context \"platform\"");
        assert_eq!(e.exit_code(), 125);
    }

    #[test]
    fn frames_split_across_reads_and_larger_than_the_buffer_arrive_whole() {
        let (mut conn, mut broker) = pair();
        let big = vec![7u8; 3 * READ_ROOM + 5];
        let bytes = frames(&[
            hello(PROTOCOL_VERSION),
            Reply::Output(Cow::Borrowed(&big)),
            Reply::Exited {
                status: ExitStatus::Code(0),
                timed_out: false,
            },
        ]);
        let writer = std::thread::spawn(move || {
            for chunk in bytes.chunks(1000) {
                broker.write_all(chunk).unwrap();
            }
        });
        match conn.recv().unwrap() {
            Reply::Output(b) => assert_eq!(&*b, &big[..]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(conn.recv().unwrap(), Reply::Exited { .. }));
        writer.join().unwrap();
    }

    #[test]
    fn end_of_stream_is_a_lost_connection() {
        let (mut conn, broker) = pair();
        drop(broker);
        let e = conn.recv().unwrap_err();
        assert_eq!(e.to_string(), "lost connection to the broker at /test.sock");
    }

    #[test]
    fn garbage_is_reported_not_trusted() {
        let (mut conn, mut broker) = pair();
        broker.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
        assert!(matches!(conn.recv().unwrap_err(), Error::Malformed { .. }));
    }
}
