//! Whether a process holds the other end of one of the broker's connections: the proof a
//! kernel before 6.5 leaves for who connected. Without `SO_PEERPIDFD` the broker pins the
//! peer by the pid `SO_PEERCRED` recorded at `connect()`, and by then that process may be
//! gone and its pid another's (helper-108 had a root process with capabilities take the pid
//! of a uid-0 context's process, and was served as the operator). Whoever got the number
//! does not hold the connection; the connector still does, as it waits for the answer.
//!
//! The other end's inode comes from the kernel's socket diagnostics (`NETLINK_SOCK_DIAG`,
//! the `unix_diag` module, which `ss -x` uses too); the process's descriptors from
//! `/proc/PID/fd`, whose links wait while the process is in an exec: asked only off the
//! accept loop (see `server`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Why it could not be told.
#[derive(Debug, thiserror::Error)]
pub enum PeerEndError {
    #[error(
        "the kernel's socket diagnostics are not available ({0}); on a kernel before 6.5 the \
         broker needs them (module unix_diag) to tell who connected"
    )]
    NoDiagnostics(io::Error),
    #[error("the connection's other end is already closed")]
    Closed,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_PEER: u16 = 2;
/// `INET_DIAG_NOCOOKIE`: look the socket up by its inode alone.
const NO_COOKIE: u32 = !0;

#[repr(C)]
struct Request {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    protocol: u8,
    pad: u16,
    states: u32,
    ino: u32,
    show: u32,
    cookie: [u32; 2],
}

/// The inode of the socket at the other end of `socket` (a connected Unix socket of ours).
pub fn other_end(socket: RawFd) -> Result<u64, PeerEndError> {
    let own = own_inode(socket).map_err(PeerEndError::NoDiagnostics)?;
    let ino = u32::try_from(own).map_err(|_| {
        PeerEndError::NoDiagnostics(io::Error::other("a socket inode beyond 32 bits"))
    })?;
    // SAFETY: plain syscall; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(PeerEndError::NoDiagnostics(io::Error::last_os_error()));
    }
    // SAFETY: just created, ours alone.
    let nl = unsafe { OwnedFd::from_raw_fd(fd) };
    let req = Request {
        len: std::mem::size_of::<Request>() as u32,
        kind: SOCK_DIAG_BY_FAMILY,
        flags: libc::NLM_F_REQUEST as u16,
        seq: 1,
        pid: 0,
        family: libc::AF_UNIX as u8,
        protocol: 0,
        pad: 0,
        states: !0,
        ino,
        show: UDIAG_SHOW_PEER,
        cookie: [NO_COOKIE; 2],
    };
    // SAFETY: sends the request struct from our own memory to the kernel.
    let sent = unsafe {
        libc::send(
            nl.as_raw_fd(),
            (&req as *const Request).cast(),
            std::mem::size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(PeerEndError::NoDiagnostics(io::Error::last_os_error()));
    }
    let mut buf = [0u32; 1024];
    // SAFETY: the kernel writes at most the buffer's length.
    let n = unsafe {
        libc::recv(
            nl.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            std::mem::size_of_val(&buf),
            0,
        )
    };
    if n < 0 {
        return Err(PeerEndError::NoDiagnostics(io::Error::last_os_error()));
    }
    // SAFETY: u32s viewed as their bytes, within what the kernel wrote.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
    parse_reply(bytes)
}

/// The peer inode in a `SOCK_DIAG_BY_FAMILY` reply for one Unix socket.
fn parse_reply(bytes: &[u8]) -> Result<u64, PeerEndError> {
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let malformed =
        || PeerEndError::NoDiagnostics(io::Error::other("a malformed diagnostics reply"));
    let len = u32_at(0).ok_or_else(malformed)? as usize;
    let kind = u16_at(4).ok_or_else(malformed)?;
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = u32_at(16).map_or(libc::EIO, |e| -(e as i32));
        return Err(PeerEndError::NoDiagnostics(io::Error::from_raw_os_error(
            errno,
        )));
    }
    if kind != SOCK_DIAG_BY_FAMILY || len > bytes.len() {
        return Err(malformed());
    }
    // nlmsghdr (16) and unix_diag_msg (16), then attributes, each 4-aligned.
    let mut at = 32;
    while at + 4 <= len {
        let attr_len = u16_at(at).ok_or_else(malformed)? as usize;
        let attr_kind = u16_at(at + 2).ok_or_else(malformed)?;
        if attr_len < 4 {
            return Err(malformed());
        }
        if attr_kind == UNIX_DIAG_PEER {
            return match u32_at(at + 4).ok_or_else(malformed)? {
                0 => Err(PeerEndError::Closed),
                peer => Ok(u64::from(peer)),
            };
        }
        at += (attr_len + 3) & !3;
    }
    Err(PeerEndError::Closed)
}

fn own_inode(socket: RawFd) -> io::Result<u64> {
    // SAFETY: fstat fills a plain struct for a descriptor we hold.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(socket, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_ino)
}

/// Whether process `pid` has a descriptor for socket inode `ino` now (a link of
/// `/proc/PID/fd` names it `socket:[INO]`); `None` when its descriptors are not ours to
/// read (another uid's process, to a broker that is not root). May wait while the process
/// is in an exec.
pub fn holds(pid: i32, ino: u64) -> Option<bool> {
    let want = format!("socket:[{ino}]");
    let fd_dir = format!("/proc/{pid}/fd");
    let dir = match std::fs::read_dir(&fd_dir) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return None,
        Err(_) => return Some(false),
    };
    // Newest first: a socket just connected most often has the highest number, and a
    // process with thousands of descriptors (a server, a pool of tunnels) connecting again
    // and again would otherwise cost a link read of every one of them each time.
    let mut fds: Vec<u32> = dir
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable_by(|a, b| b.cmp(a));
    Some(fds.into_iter().any(|fd| {
        std::fs::read_link(format!("{fd_dir}/{fd}"))
            .is_ok_and(|link| link.as_os_str().as_encoded_bytes() == want.as_bytes())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    /// The other end found by the diagnostics is the connecting socket, which this process
    /// holds and a child that never had it does not.
    #[test]
    fn the_other_end_of_a_connection_is_found_in_its_holder_only() {
        let dir = std::env::temp_dir().join(format!("ctx-socket-peer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let peer = match other_end(accepted.as_raw_fd()) {
            Err(PeerEndError::NoDiagnostics(e)) => {
                eprintln!("skipped: no socket diagnostics here ({e})");
                return;
            }
            other => other.unwrap(),
        };
        assert_eq!(peer, own_inode(client.as_raw_fd()).unwrap());
        assert_eq!(holds(std::process::id() as i32, peer), Some(true));
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        assert_eq!(holds(child.id() as i32, peer), Some(false));
        child.kill().unwrap();
        child.wait().unwrap();
        drop(client);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
