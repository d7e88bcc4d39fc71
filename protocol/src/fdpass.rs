//! Blocking socket I/O with `SCM_RIGHTS`, written against raw syscalls only: no heap, no
//! locks, no stdio, so the interposer may call it between `vfork` and `execve`.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr;

use crate::frame::{payload_len, FrameError, FRAME_HEADER};

/// The kernel's limit on descriptors in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

/// Room for one `cmsghdr` carrying [`MAX_FDS`] descriptors, 8-byte aligned.
#[repr(C, align(8))]
struct CmsgBuf([u8; 24 + MAX_FDS * 4 + 8]);

fn last_errno() -> io::Error {
    io::Error::last_os_error()
}

/// `sendmsg(2)` itself. musl's wrapper (the shim may be linked against musl) copies the
/// control data into a 1024-byte buffer of its own and fails with `ENOMEM` beyond it: a
/// full group of [`MAX_FDS`] descriptors needs 1032.
///
/// # Safety
/// `msg` describes valid buffers for the duration of the call.
unsafe fn sys_sendmsg(sock: RawFd, msg: &libc::msghdr, flags: libc::c_int) -> isize {
    // SAFETY: the caller's buffers; the kernel reads the x86_64/aarch64 msghdr layout
    // that the libc crate's type has.
    unsafe { libc::syscall(libc::SYS_sendmsg, sock, msg as *const libc::msghdr, flags) as isize }
}

/// `recvmsg(2)` itself, as [`sys_sendmsg`] for the same reason.
///
/// # Safety
/// `msg` describes valid writable buffers for the duration of the call.
unsafe fn sys_recvmsg(sock: RawFd, msg: &mut libc::msghdr, flags: libc::c_int) -> isize {
    // SAFETY: as in `sys_sendmsg`.
    unsafe { libc::syscall(libc::SYS_recvmsg, sock, msg as *mut libc::msghdr, flags) as isize }
}

/// Sends all of `data` with `fds`. One message carries at most [`MAX_FDS`] descriptors
/// (`SCM_MAX_FD`), so more ride in groups: each group but the last on one byte of `data`,
/// the last on the rest; the receiver has every descriptor once it has read that many
/// bytes (a Unix stream `recvmsg` never returns the descriptors of two messages at once).
/// `EMFILE` when `data` is too short to carry the groups. Retries on `EINTR`, never raises
/// `SIGPIPE`.
pub fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    send_groups(sock, data, fds, 0)
}

/// One `sendmsg` of (a prefix of) `data` with `fds` (at most [`MAX_FDS`]) on a socket that
/// may not block: the bytes sent, or `WouldBlock`. The descriptors travel with the first
/// byte sent.
pub fn try_send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::from_raw_os_error(libc::EMFILE));
    }
    send_one(
        sock,
        data,
        fds,
        &mut Patience {
            left_us: 0,
            pause_us: 0,
        },
    )
}

/// [`send_with_fds`], waiting up to about `patience_ms` while the kernel refuses a group
/// with `ETOOMANYREFS`: the sender's user has as many descriptors in flight (sent, not yet
/// received, on any socket) as its `RLIMIT_NOFILE`, which its other launches waiting to be
/// read hold there, and the broker reading them frees room. The wait is `nanosleep`, so
/// this stays callable between `vfork` and `execve`.
pub fn send_with_fds_patiently(
    sock: RawFd,
    data: &[u8],
    fds: &[RawFd],
    patience_ms: u32,
) -> io::Result<()> {
    send_groups(sock, data, fds, patience_ms)
}

/// Most payload bytes of a frame sent by [`send_fds_frame`], so most groups of
/// [`MAX_FDS`] descriptors: about a million descriptors in all, past any `RLIMIT_NOFILE`
/// a caller can have.
pub const FD_FRAME_MAX: usize = 4096;

/// Sends `fds` alone, as one frame whose payload is a zero byte per group of [`MAX_FDS`]
/// (each group rides its own byte): the broker asks for it with `SendDescriptors` once it
/// has room for them. Waits on `ETOOMANYREFS` as [`send_with_fds_patiently`] does.
/// `EMFILE` past [`FD_FRAME_MAX`] groups.
pub fn send_fds_frame(sock: RawFd, fds: &[RawFd], patience_ms: u32) -> io::Result<()> {
    // In read-only data, not on the stack of the hook's caller.
    static ZEROS: [u8; FD_FRAME_MAX] = [0; FD_FRAME_MAX];
    let groups = fds.len().div_ceil(MAX_FDS);
    if groups > FD_FRAME_MAX {
        return Err(io::Error::from_raw_os_error(libc::EMFILE));
    }
    send_groups(sock, &(groups as u32).to_le_bytes(), &[], 0)?;
    send_groups(sock, &ZEROS[..groups], fds, patience_ms)
}

fn send_groups(sock: RawFd, data: &[u8], fds: &[RawFd], patience_ms: u32) -> io::Result<()> {
    // One budget for the whole request, however many groups it takes.
    let mut patience = Patience {
        left_us: u64::from(patience_ms) * 1000,
        pause_us: 100,
    };
    let groups = fds.len().div_ceil(MAX_FDS);
    if groups > data.len() {
        return Err(io::Error::from_raw_os_error(libc::EMFILE));
    }
    let mut sent = 0usize;
    for (i, group) in fds.chunks(MAX_FDS).enumerate() {
        let part = if i + 1 == groups {
            &data[sent..]
        } else {
            &data[sent..sent + 1]
        };
        let n = send_one(sock, part, group, &mut patience)?;
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        sent += n;
    }
    while sent < data.len() {
        let rest = &data[sent..];
        // SAFETY: rest is a valid readable slice.
        let n = unsafe {
            libc::send(
                sock,
                rest.as_ptr() as *const _,
                rest.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = last_errno();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
    }
    Ok(())
}

/// One `sendmsg` of (a prefix of) `data` with at most [`MAX_FDS`] descriptors; the bytes
/// it sent.
/// What is left of a send's wait for room (`ETOOMANYREFS`), and the next pause.
struct Patience {
    left_us: u64,
    pause_us: u64,
}

fn send_one(sock: RawFd, data: &[u8], fds: &[RawFd], patience: &mut Patience) -> io::Result<usize> {
    let mut cbuf = CmsgBuf([0; 24 + MAX_FDS * 4 + 8]);
    let payload = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid starting value.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr() as *mut _;
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at a buffer of at least `space` aligned bytes, and `fds`
    // holds at most MAX_FDS descriptors, which the buffer has room for.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
        ptr::copy_nonoverlapping(
            fds.as_ptr() as *const u8,
            libc::CMSG_DATA(cmsg),
            payload as usize,
        );
    }
    loop {
        // SAFETY: msg describes valid buffers for the duration of the call.
        let n = unsafe { sys_sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = last_errno();
        if e.raw_os_error() == Some(libc::ETOOMANYREFS) && patience.left_us > 0 {
            let pause_us = patience.pause_us.min(patience.left_us);
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: (pause_us * 1000) as libc::c_long,
            };
            // SAFETY: a valid timespec; an interruption only shortens this pause.
            unsafe { libc::nanosleep(&pause, ptr::null_mut()) };
            patience.left_us -= pause_us;
            patience.pause_us = (patience.pause_us * 2).min(10_000);
            continue;
        }
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// One `recvmsg` into `buf`; received descriptors (close-on-exec) are stored in `fds` and
/// counted in the second value. Returns `(0, 0)` at end of stream. The control buffer has
/// room for `fds.len()` descriptors only: the kernel discards any beyond without ever
/// installing them here, and that is reported as `EMSGSIZE` (as is a truncated control
/// message), the ones received then closed here.
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8], fds: &mut [RawFd]) -> io::Result<(usize, usize)> {
    let got = recv_with_fds_kept(sock, buf, fds)?;
    if got.truncated {
        for &fd in &fds[..got.fds] {
            // SAFETY: we own these just-received descriptors.
            unsafe { libc::close(fd) };
        }
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    Ok((got.bytes, got.fds))
}

/// What [`recv_with_fds_kept`] received.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub bytes: usize,
    /// Descriptors stored in `fds`, owned by the caller whatever else happened.
    pub fds: usize,
    /// The kernel discarded descriptors or control data that did not fit.
    pub truncated: bool,
}

/// As [`recv_with_fds`], but a truncated message's descriptors are left to the caller too,
/// to be closed where a close may wait (a peer's file on a FUSE mount that never answers
/// FLUSH blocks every close of it).
pub fn recv_with_fds_kept(sock: RawFd, buf: &mut [u8], fds: &mut [RawFd]) -> io::Result<Received> {
    let mut cbuf = CmsgBuf([0; 24 + MAX_FDS * 4 + 8]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut _,
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid starting value.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let room = fds.len().min(MAX_FDS);
    if room > 0 {
        msg.msg_control = cbuf.0.as_mut_ptr() as *mut _;
        // SAFETY: CMSG_LEN is a pure computation; the kernel fits (len - header) / 4 fds.
        msg.msg_controllen = unsafe { libc::CMSG_LEN((room * size_of::<RawFd>()) as u32) } as _;
    }
    let n = loop {
        // SAFETY: msg describes valid writable buffers for the duration of the call.
        let n = unsafe { sys_recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = last_errno();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    };
    let (count, overflow) = take_fds(&msg, fds);
    Ok(Received {
        bytes: n,
        fds: count,
        truncated: overflow || msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// How many descriptors the next message on `sock` carries, when at most `room` (`None`:
/// more), without consuming it (`MSG_PEEK`, non-blocking: `WouldBlock` when nothing is
/// queued). A peek installs duplicates of the queued descriptors: they are pushed onto
/// `dups` for the caller to close where a close may wait (a file on a FUSE mount whose
/// server does not answer FLUSH blocks every close of it, not only the last), and any
/// beyond the control buffer are released by the kernel uninstalled, which never flushes.
/// A receiver bounding what it accepts peeks first, then receives with room for all, so
/// that the kernel never discards descriptors on its receiving thread (a discarded
/// descriptor's close may be its last, and may block).
pub fn peek_fds(sock: RawFd, room: usize, dups: &mut Vec<OwnedFd>) -> io::Result<Option<usize>> {
    let mut cbuf = CmsgBuf([0; 24 + MAX_FDS * 4 + 8]);
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut _,
        iov_len: 1,
    };
    // SAFETY: msghdr is plain data; zeroed is a valid starting value.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let room = room.min(MAX_FDS);
    if room > 0 {
        msg.msg_control = cbuf.0.as_mut_ptr() as *mut _;
        // SAFETY: CMSG_LEN is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_LEN((room * size_of::<RawFd>()) as u32) } as _;
    }
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    loop {
        // SAFETY: msg describes valid writable buffers for the duration of the call.
        let n = unsafe { sys_recvmsg(sock, &mut msg, flags) };
        if n >= 0 {
            break;
        }
        let e = last_errno();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    let mut installed = [-1; MAX_FDS];
    let (count, overflow) = take_fds(&msg, &mut installed[..room]);
    // SAFETY: duplicates this peek installed, owned from here on.
    dups.extend(
        installed[..count]
            .iter()
            .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) }),
    );
    Ok((!overflow && msg.msg_flags & libc::MSG_CTRUNC == 0).then_some(count))
}

/// Copies the `SCM_RIGHTS` descriptors of `msg` into `out`; closes any that do not fit
/// (and any other control message's descriptors) and then reports overflow.
pub fn take_fds(msg: &libc::msghdr, out: &mut [RawFd]) -> (usize, bool) {
    let mut count = 0;
    let mut overflow = false;
    // SAFETY: msg was filled in by recvmsg; CMSG_* walk its control buffer within bounds.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                let n = len / size_of::<RawFd>();
                for i in 0..n {
                    let fd = ptr::read_unaligned((data as *const RawFd).add(i));
                    if count < out.len() {
                        out[count] = fd;
                        count += 1;
                    } else {
                        libc::close(fd);
                        overflow = true;
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    (count, overflow)
}

/// Reads exactly `buf.len()` bytes; `UnexpectedEof` if the stream ends first.
pub fn read_exact(sock: RawFd, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: rest is a valid writable slice.
        let n = unsafe { libc::read(sock, rest.as_mut_ptr() as *mut _, rest.len()) };
        if n < 0 {
            let e = last_errno();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        got += n as usize;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
}

/// Reads one whole frame's payload into `buf` (blocking); returns the payload length.
pub fn read_frame(sock: RawFd, buf: &mut [u8]) -> Result<usize, ReadFrameError> {
    let mut head = [0u8; FRAME_HEADER];
    read_exact(sock, &mut head)?;
    let len = payload_len(head)?;
    if len > buf.len() {
        return Err(FrameError::BufferTooSmall(buf.len()).into());
    }
    read_exact(sock, &mut buf[..len])?;
    Ok(len)
}
