//! The two halves of systemd's protocol the broker speaks, written out here rather than
//! linked from libsystemd (one datagram and a few environment variables do not justify a
//! C dependency in a root daemon):
//!
//! - socket activation: a listening socket passed as descriptor 3.. with `LISTEN_FDS`,
//!   `LISTEN_PID` and `LISTEN_FDNAMES` (sd_listen_fds(3));
//! - readiness: `READY=1`, `RELOADING=1`, `STOPPING=1` and `STATUS=` datagrams to
//!   `NOTIFY_SOCKET` (sd_notify(3)), a path or an abstract `@name`.
//!
//! Both are no-ops when the variables are absent, so the broker runs the same by hand.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// sd_listen_fds(3): passed descriptors start here.
const LISTEN_FDS_START: RawFd = 3;

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
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|s| s.split(':').map(str::to_owned).collect())
        .unwrap_or_default();

    let mut fds: Vec<(OwnedFd, Option<String>)> = Vec::new();
    for i in 0..n {
        let raw = LISTEN_FDS_START + i;
        // SAFETY: F_GETFD only reads the flags of a descriptor number.
        if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
            let err = io::Error::last_os_error();
            return Err(SystemdError::Io { fd: raw, err });
        }
        // SAFETY: LISTEN_PID names this process, so the service manager handed us
        // descriptors 3..3+n; nothing else in the broker owns them, and TAKEN makes sure
        // they are wrapped only once.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Routed processes get only the descriptors they are given; this also keeps the
        // listening socket out of anything else the broker may exec.
        set_cloexec(&fd).map_err(|err| SystemdError::Io { fd: raw, err })?;
        fds.push((fd, names.get(i as usize).cloned()));
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

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; F_SETFD takes an int flag set.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockopt_int(fd: &OwnedFd, option: libc::c_int) -> Option<libc::c_int> {
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

/// Sends `lines` (e.g. `["READY=1", "STATUS=serving"]`) to `NOTIFY_SOCKET` as one datagram.
/// Without a notify socket it does nothing; a failure is logged and otherwise ignored,
/// since the broker serves the same whether or not systemd hears about it.
pub fn notify(lines: &[&str]) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()) else {
        return;
    };
    if let Err(e) = send_notify(target.as_bytes(), lines.join("\n").as_bytes()) {
        tracing::warn!(
            "cannot notify the service manager at {}: {e}",
            target.to_string_lossy()
        );
    }
}

fn send_notify(target: &[u8], message: &[u8]) -> io::Result<()> {
    let addr = match target.split_first() {
        Some((b'@', name)) => SocketAddr::from_abstract_name(name)?,
        Some((b'/', _)) => SocketAddr::from_pathname(OsStr::from_bytes(target))?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only path and @abstract notify sockets are supported",
            ))
        }
    };
    let socket = UnixDatagram::unbound()?;
    let sent = socket.send_to_addr(message, &addr)?;
    if sent != message.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short datagram"));
    }
    Ok(())
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    notify(&["READY=1", &format!("STATUS={status}")]);
}

/// `RELOADING=1` with the `MONOTONIC_USEC` systemd 253+ requires to match it to the reload
/// it started; older managers ignore the extra field.
pub fn reloading() {
    notify(&[
        "RELOADING=1",
        &format!("MONOTONIC_USEC={}", monotonic_usec()),
        "STATUS=reloading the configuration",
    ]);
}

pub fn stopping() {
    notify(&["STOPPING=1", "STATUS=stopping routed processes"]);
}

fn monotonic_usec() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: CLOCK_MONOTONIC always exists; ts is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("ctx-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        send_notify(path.as_os_str().as_bytes(), b"READY=1\nSTATUS=x").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn notify_reaches_an_abstract_socket() {
        let name = format!("ctx-notify-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        send_notify(format!("@{name}").as_bytes(), b"STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn other_notify_addresses_are_refused() {
        assert!(send_notify(b"vsock:2:1", b"READY=1").is_err());
    }

    #[test]
    fn monotonic_clock_moves() {
        let a = monotonic_usec();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(monotonic_usec() > a);
    }
}
