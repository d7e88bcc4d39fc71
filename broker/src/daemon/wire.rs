//! Frame I/O on one broker connection: reads frames together with any `SCM_RIGHTS`
//! descriptors that arrive with them (received close-on-exec), writes replies.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ctx_protocol::fdpass::{recv_with_fds, MAX_FDS};
use ctx_protocol::frame::{complete_frame, encode_vec, FrameError, FRAME_HEADER};
use ctx_protocol::Reply;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("more than {MAX_FDS} descriptors sent")]
    TooManyFds,
}

pub struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Receive scratch, on the heap: on the stack it would sit in every read future, which
    /// is created per relay-loop turn and moved into the connection's task.
    chunk: Box<[u8]>,
    fds: Vec<OwnedFd>,
    /// Encoding buffer for replies, kept so that a PTY relay's 64 KiB `Output` frames do
    /// not each grow a fresh `Vec` from nothing.
    out: Vec<u8>,
    /// Encoded replies held back to go out with the next one, in the same write.
    held: Vec<u8>,
}

impl Conn {
    pub fn new(stream: UnixStream) -> Conn {
        Conn {
            stream,
            buf: Vec::with_capacity(4096),
            chunk: vec![0u8; 16 * 1024].into_boxed_slice(),
            fds: Vec::new(),
            out: Vec::new(),
            held: Vec::new(),
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// The next frame's payload; `None` at a clean end of stream. Cancel-safe: bytes read
    /// are kept in the connection's buffer until a whole frame is there.
    pub async fn read_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        loop {
            if let Some(total) = complete_frame(&self.buf)? {
                let payload = self.buf[FRAME_HEADER..total].to_vec();
                self.buf.drain(..total);
                return Ok(Some(payload));
            }
            let mut fds: [RawFd; MAX_FDS] = [-1; MAX_FDS];
            let fd = self.stream.as_raw_fd();
            let chunk = &mut self.chunk;
            let (n, nfds) = self
                .stream
                .async_io(Interest::READABLE, || recv_with_fds(fd, chunk, &mut fds))
                .await?;
            for &raw in &fds[..nfds] {
                // SAFETY: recv_with_fds handed us ownership of these new descriptors.
                self.fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
            if self.fds.len() > MAX_FDS {
                return Err(WireError::TooManyFds);
            }
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(WireError::Truncated)
                };
            }
            self.buf.extend_from_slice(&self.chunk[..n]);
        }
    }

    /// Descriptors received so far, in arrival order.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }

    pub fn pending_fds(&self) -> usize {
        self.fds.len()
    }

    pub async fn send(&mut self, reply: &Reply<'_>) -> Result<(), WireError> {
        self.out.clear();
        self.out.append(&mut self.held);
        encode_vec(reply, &mut self.out)?;
        self.stream.write_all(&self.out).await?;
        Ok(())
    }

    /// Queues `reply` to go out with the next `send`, in one write: the client then wakes
    /// once for both.
    pub fn hold(&mut self, reply: &Reply<'_>) -> Result<(), WireError> {
        encode_vec(reply, &mut self.held)?;
        Ok(())
    }
}
