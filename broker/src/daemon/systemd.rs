//! The two halves of systemd's protocol the broker speaks, through the pure-Rust
//! `sd-notify` crate (libsystemd would be a C dependency in a root daemon):
//!
//! - socket activation: a listening socket passed as descriptor 3.. with `LISTEN_FDS`,
//!   `LISTEN_PID` and `LISTEN_FDNAMES` (sd_listen_fds(3));
//! - readiness: `READY=1`, `RELOADING=1`, `STOPPING=1` and `STATUS=` datagrams to
//!   `NOTIFY_SOCKET` (sd_notify(3)), a path or an abstract `@name`.
//!
//! What stays here is ours: whether the variables are meant for this process, taking the
//! descriptors once and early, picking the broker's socket among them, and the abstract
//! notify socket. Both halves are no-ops when the variables are absent, so the broker runs
//! the same by hand.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use sd_notify::NotifyState;

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// The `FileDescriptorName=` of `scripts/ctx-broker.socket`; with several descriptors
/// passed, the one by this name is the broker's.
pub const FD_NAME: &str = "broker";

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("LISTEN_FDS={0:?} is not a descriptor count")]
    BadCount(String),
    #[error(
        "descriptor {fd} passed by the service manager{} is not a listening Unix stream \
         socket; check ListenStream= in ctx-broker.socket",
        name.as_deref().map(|n| format!(" (named {n:?})")).unwrap_or_default()
    )]
    NotAUnixListener { fd: RawFd, name: Option<String> },
    #[error("descriptor {fd} passed by the service manager: {err}")]
    Io { fd: RawFd, err: io::Error },
}

/// The first descriptor a service manager passes (`sd_listen_fds(3)`).
const SD_LISTEN_FDS_START: RawFd = 3;

/// A listening socket the service manager created and passed to us.
#[derive(Debug)]
pub struct Activated {
    pub listener: UnixListener,
    /// Its address as `ctx status` shows it: a path, or `@name` for an abstract socket.
    pub address: PathBuf,
}

// ---------------------------------------------------------------------------------------
// Socket activation
// ---------------------------------------------------------------------------------------

type Adopted = Result<Option<Activated>, SystemdError>;

/// What [`adopt_listen_fds`] found, until the server takes it.
static ADOPTED: Mutex<Option<Adopted>> = Mutex::new(None);

/// Takes the descriptors systemd passed before anything else in the process opens one:
/// `ctx-broker` calls it first thing in `main`. Later, descriptor 3 may be the runtime's
/// own epoll or a log file, and adopting that as a socket would close it under its owner.
pub fn adopt_listen_fds() {
    let adopted = take_listen_fds();
    *ADOPTED.lock().unwrap_or_else(|e| e.into_inner()) = Some(adopted);
}

/// The socket systemd passed, if it passed one to this process: what
/// [`adopt_listen_fds`] took, else what the environment names now.
pub fn activated_listener() -> Adopted {
    let adopted = ADOPTED.lock().unwrap_or_else(|e| e.into_inner()).take();
    adopted.unwrap_or_else(take_listen_fds)
}

/// Takes ownership of every passed descriptor (marking them close-on-exec), so it does so
/// at most once per process.
fn take_listen_fds() -> Adopted {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let (Some(pid), Some(count)) = (
        std::env::var_os("LISTEN_PID"),
        std::env::var("LISTEN_FDS").ok(),
    ) else {
        return Ok(None);
    };
    // A LISTEN_PID of another process means the variables were inherited, not meant for us.
    if pid.as_bytes() != std::process::id().to_string().as_bytes() {
        return Ok(None);
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    let n: RawFd = count
        .trim()
        .parse()
        .ok()
        .filter(|n| (0..=1024).contains(n))
        .ok_or_else(|| SystemdError::BadCount(count.clone()))?;
    if n == 0 {
        return Ok(None);
    }
    // Not `listen_fds_with_names`: it refuses a name count that differs from LISTEN_FDS,
    // where names only help us pick ours.
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|s| s.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    // Every passed descriptor close-on-exec, failing on one that is not open: routed
    // processes get only the descriptors they are given, and the listening socket stays
    // out of anything else the broker may exec. Not `sd_notify::listen_fds`: it parses
    // LISTEN_FDS again without the leniency above, and its error names no descriptor.
    let mut fds: Vec<(OwnedFd, Option<String>)> = Vec::new();
    for (i, raw) in (SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + n).enumerate() {
        // SAFETY: fcntl on a descriptor number; F_SETFD fails with EBADF if it is not open.
        if unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(SystemdError::Io {
                fd: raw,
                err: io::Error::last_os_error(),
            });
        }
        // SAFETY: LISTEN_PID names this process, so the service manager handed us
        // descriptors 3..3+n, each open (above); nothing else in the broker owns them,
        // and TAKEN makes sure they are wrapped only once.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        fds.push((fd, names.get(i).cloned()));
    }

    let chosen = match fds
        .iter()
        .position(|(_, name)| name.as_deref() == Some(FD_NAME))
    {
        Some(i) => i,
        None if fds.len() == 1 => 0,
        None => fds
            .iter()
            .position(|(fd, _)| is_unix_listener(fd))
            .unwrap_or(0),
    };
    let (fd, name) = fds.swap_remove(chosen);
    let raw = fd.as_raw_fd();
    if !is_unix_listener(&fd) {
        return Err(SystemdError::NotAUnixListener { fd: raw, name });
    }
    let listener = UnixListener::from(fd);
    let local = listener
        .local_addr()
        .map_err(|err| SystemdError::Io { fd: raw, err })?;
    Ok(Some(Activated {
        address: display_address(&local),
        listener,
    }))
}

fn display_address(addr: &SocketAddr) -> PathBuf {
    if let Some(path) = addr.as_pathname() {
        return path.to_path_buf();
    }
    let mut name = b"@".to_vec();
    name.extend_from_slice(addr.as_abstract_name().unwrap_or_default());
    PathBuf::from(OsStr::from_bytes(&name))
}

/// An int option at `SOL_SOCKET` of `fd`.
pub(crate) fn sockopt_int(fd: &OwnedFd, option: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len describe a valid c_int buffer the kernel fills.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(value)
}

/// sd_is_socket_unix(fd, SOCK_STREAM, listening = 1, ...).
fn is_unix_listener(fd: &OwnedFd) -> bool {
    sockopt_int(fd, libc::SO_DOMAIN) == Some(libc::AF_UNIX)
        && sockopt_int(fd, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && sockopt_int(fd, libc::SO_ACCEPTCONN) == Some(1)
}

// ---------------------------------------------------------------------------------------
// Readiness notification
// ---------------------------------------------------------------------------------------

/// Sends `states` to `NOTIFY_SOCKET` as one datagram. Without a notify socket it does
/// nothing; a failure is logged and otherwise ignored, since the broker serves the same
/// whether or not systemd hears about it.
pub fn notify(states: &[NotifyState<'_>]) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()) else {
        return;
    };
    if let Err(e) = send_notify(target.as_bytes(), states) {
        tracing::warn!(
            "cannot notify the service manager at {}: {e}",
            target.to_string_lossy()
        );
    }
}

/// `target` is NOTIFY_SOCKET's value; sd-notify reads it again for a path.
fn send_notify(target: &[u8], states: &[NotifyState<'_>]) -> io::Result<()> {
    match target.first() {
        Some(b'/') => sd_notify::notify(states),
        // sd-notify connects to NOTIFY_SOCKET as a path, so an abstract name is sent here.
        Some(b'@') => send_abstract(&target[1..], states),
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "only path and @abstract notify sockets are supported",
        )),
    }
}

fn send_abstract(name: &[u8], states: &[NotifyState<'_>]) -> io::Result<()> {
    // The datagram sd-notify sends: one line per state.
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    let addr = SocketAddr::from_abstract_name(name)?;
    let socket = UnixDatagram::unbound()?;
    let sent = socket.send_to_addr(message.as_bytes(), &addr)?;
    if sent != message.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short datagram"));
    }
    Ok(())
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` with the `MONOTONIC_USEC` systemd 253+ requires to match it to the reload
/// it started; older managers ignore the extra field.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    states.extend(NotifyState::monotonic_usec_now().ok());
    states.push(NotifyState::Status("reloading the configuration"));
    notify(&states);
}

pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping routed processes"),
    ]);
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    // A path socket is sd-notify's own case; tests/tests/systemd.rs sees the broker reach one.

    #[test]
    fn notify_reaches_an_abstract_socket() {
        let name = format!("ctx-notify-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let states = [NotifyState::Stopping, NotifyState::Status("x")];
        send_notify(format!("@{name}").as_bytes(), &states).unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=x\n");
    }

    #[test]
    fn other_notify_addresses_are_refused() {
        assert!(send_notify(b"vsock:2:1", &[NotifyState::Ready]).is_err());
    }
}
