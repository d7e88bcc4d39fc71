//! `ctx-broker --stop`: stops the brokers of this program's file where no service manager
//! does, e.g. a package's removal in a container, a chroot, or on a machine whose broker
//! was started by hand.
//!
//! A broker is found two ways, both exact. The process listening on the socket (the
//! kernel's reference to it, `SO_PEERPIDFD`), which needs no privilege; and every process
//! in `/proc` whose executable is this very file (device and inode), or, when an upgrade
//! renamed a new file over it, a deleted file at this path seen from this root and mount
//! namespace (only the package that owns the path puts a file there). The second way reads
//! other processes' executables, which for a broker (it is not dumpable) takes
//! `CAP_SYS_PTRACE`, which a container's root often lacks: the socket still finds the
//! broker there. Each process is held by a pidfd before it is judged, so a pid that was
//! reused in between is never signalled.
//!
//! SIGTERM lets a broker stop its routed processes (it SIGKILLs them after its own grace
//! period) and remove its socket; a process still there after [`GRACE`] is killed. A
//! `--run-in` init of this file gets the SIGTERM too, and passes it on to its agent.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::client::connection::Connection;
use crate::daemon::peer::{alive, peer_pidfd, pidfd_open};

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// How long a broker gets to stop after SIGTERM: its own shutdown SIGKILLs what it runs
/// after 3 s, so this is ample even on a loaded machine.
pub const GRACE: Duration = Duration::from_secs(30);

/// How long a SIGKILLed process gets to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What sending the listener a `Status` request may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// Why `--stop` could not look for brokers at all.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("cannot read this program's own executable (/proc/self/exe): {0}")]
    OwnExe(io::Error),
    #[error("cannot list the processes in /proc: {0}")]
    Proc(io::Error),
}

/// How a process was found to be a broker of this file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How {
    /// It listens on this socket.
    Socket(PathBuf),
    /// Its executable is this program's file.
    Executable,
    /// Its executable is a file an upgrade replaced at this program's path.
    Replaced,
}

/// A broker (or a helper or init of the same file) held by a pidfd.
#[derive(Debug)]
pub struct Found {
    pub pid: i32,
    pub how: How,
    pidfd: OwnedFd,
}

/// What `--stop` did.
#[derive(Debug, Default)]
pub struct Report {
    /// Gone after SIGTERM.
    pub stopped: Vec<Found>,
    /// Gone only after SIGKILL.
    pub killed: Vec<Found>,
    /// Still there after SIGKILL (e.g. the init of a PID namespace, which a SIGKILL from
    /// inside it does not reach).
    pub left: Vec<Found>,
    /// What was seen and left alone, for people: a socket held by another program.
    pub notes: Vec<String>,
}

/// This program's file, and where it sees the filesystem from.
#[derive(Clone)]
struct Own {
    pid: i32,
    dev: u64,
    ino: u64,
    path: PathBuf,
    root: (u64, u64),
    mount_ns: Option<PathBuf>,
}

/// Whether a process runs this program's file.
enum Verdict {
    Ours(How),
    NotOurs,
    /// Its executable may not be read from here (no `CAP_SYS_PTRACE`).
    Unreadable,
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// Finds the broker listening on `socket` and every process of this program's file,
/// SIGTERMs them, and SIGKILLs what is left after `grace`.
pub fn stop(socket: &Path, grace: Duration) -> Result<Report, StopError> {
    let own = own()?;
    let mut report = Report::default();
    let mut found: Vec<Found> = Vec::new();
    match listener(socket, &own) {
        Ok(Some(f)) => found.push(f),
        Ok(None) => {}
        Err(note) => report.notes.push(note),
    }
    for f in scan(&own, &mut report.notes)? {
        if !found.iter().any(|g| g.pid == f.pid) {
            found.push(f);
        }
    }
    for f in &found {
        signal(&f.pidfd, libc::SIGTERM);
    }
    let (gone, mut still) = wait_gone(found, grace);
    report.stopped = gone;
    for f in &still {
        signal(&f.pidfd, libc::SIGKILL);
    }
    (report.killed, still) = wait_gone(still, KILL_WAIT);
    report.left = still;
    Ok(report)
}

fn own() -> Result<Own, StopError> {
    let meta = std::fs::metadata("/proc/self/exe").map_err(StopError::OwnExe)?;
    let path = std::fs::read_link("/proc/self/exe").map_err(StopError::OwnExe)?;
    let root = std::fs::metadata("/").map_err(StopError::OwnExe)?;
    Ok(Own {
        pid: std::process::id() as i32,
        dev: meta.dev(),
        ino: meta.ino(),
        path,
        root: (root.dev(), root.ino()),
        mount_ns: std::fs::read_link("/proc/self/ns/mnt").ok(),
    })
}

/// The process listening on `socket`, when it is a broker of this file. `Err` says why a
/// process that listens there is left alone.
fn listener(socket: &Path, own: &Own) -> Result<Option<Found>, String> {
    let mut conn = match Connection::connect_now(socket) {
        Ok(Some(conn)) => conn,
        // Its queue is full: a stopped or wedged listener. If it is a broker of this file,
        // the scan below finds it by its executable.
        Ok(None) => return Ok(None),
        Err(_) => return Ok(None), // no socket, or no one listening: nothing runs there
    };
    let cred = nix::sys::socket::getsockopt(&conn.fd(), nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("cannot tell who listens on {}: {e}", socket.display()))?;
    let pid = cred.pid();
    if pid <= 0 {
        return Err(format!(
            "the broker on {} runs in a PID namespace not visible from here: stop it there",
            socket.display()
        ));
    }
    let pidfd = peer_pidfd(conn.fd(), pid).map_err(|e| {
        format!(
            "cannot hold the listener of {} (pid {pid}): {e}",
            socket.display()
        )
    })?;
    // A full request, so the broker does not log a peer that hung up. Its answer is not
    // waited for: a listener that is no broker could dribble one out for hours.
    let _ = conn.set_write_timeout(Some(STATUS_TIMEOUT));
    let _ = conn.open(&ctx_protocol::Request::Status, &[]);
    drop(conn);
    let comm = comm(pid);
    let ours = match judge(pid, own) {
        Verdict::Ours(_) => true,
        // The socket's directory is root's: its listener naming itself so is a broker.
        Verdict::Unreadable => comm.as_deref() == Some("ctx-broker"),
        Verdict::NotOurs => false,
    };
    if !alive(&pidfd) {
        return Ok(None);
    }
    if !ours {
        return Err(format!(
            "{} is held by pid {pid} ({}), not a ctx-broker of {}: left alone",
            socket.display(),
            comm.as_deref().unwrap_or("?"),
            own.path.display()
        ));
    }
    Ok(Some(Found {
        pid,
        how: How::Socket(socket.to_path_buf()),
        pidfd,
    }))
}

/// How long the scan waits for the judgments of every process: reading a process's
/// `exe` (and `root`, `ns/mnt`) waits as long as it is inside an exec, which any user can
/// hold up for good (a close-on-exec file on a FUSE mount of theirs whose FLUSH never
/// comes; helper-101). Such a process runs no broker yet: it is left out.
const JUDGED_WITHIN: Duration = Duration::from_secs(2);

/// Every other process whose executable is (or was, before an upgrade) this file.
/// Judged on a thread each, all at once: one that cannot be read in time is not waited
/// for (the thread is left behind; the process's exit ends its wait).
fn scan(own: &Own, notes: &mut Vec<String>) -> Result<Vec<Found>, StopError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut asked = 0;
    for entry in std::fs::read_dir("/proc")
        .map_err(StopError::Proc)?
        .flatten()
    {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == own.pid {
            continue;
        }
        // Held first, judged next, then asked whether it still lives: if it does, what
        // was read was its own.
        let Ok(pidfd) = pidfd_open(pid) else {
            continue;
        };
        let (tx, own) = (tx.clone(), own.clone());
        let judging = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let verdict = judge(pid, &own);
                let _ = tx.send((pid, pidfd, verdict));
            });
        match judging {
            Ok(_) => asked += 1,
            Err(e) => return Err(StopError::Proc(e)),
        }
    }
    drop(tx);
    let deadline = Instant::now() + JUDGED_WITHIN;
    let mut found = Vec::new();
    for answered in 0..asked {
        let Ok((pid, pidfd, verdict)) =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        else {
            notes.push(format!(
                "{} process(es) could not be read within {JUDGED_WITHIN:?} (inside an exec?): \
                 left alone",
                asked - answered
            ));
            break;
        };
        if let Verdict::Ours(how) = verdict {
            if alive(&pidfd) {
                found.push(Found { pid, how, pidfd });
            }
        }
    }
    Ok(found)
}

fn judge(pid: i32, own: &Own) -> Verdict {
    let exe = format!("/proc/{pid}/exe");
    match std::fs::metadata(&exe) {
        Ok(m) if (m.dev(), m.ino()) == (own.dev, own.ino) => Verdict::Ours(How::Executable),
        Ok(_) => {
            let mut deleted = own.path.clone().into_os_string();
            deleted.push(" (deleted)");
            let replaced = std::fs::read_link(&exe).is_ok_and(|l| l.as_os_str() == deleted)
                && std::fs::metadata(format!("/proc/{pid}/root"))
                    .is_ok_and(|r| (r.dev(), r.ino()) == own.root)
                && own.mount_ns.is_some()
                && std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok() == own.mount_ns;
            if replaced {
                Verdict::Ours(How::Replaced)
            } else {
                Verdict::NotOurs
            }
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Verdict::Unreadable,
        // Gone, or a kernel thread.
        Err(_) => Verdict::NotOurs,
    }
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

fn signal(pidfd: &OwnedFd, sig: libc::c_int) {
    // SAFETY: a valid pidfd, no siginfo, no flags; a process already gone is ESRCH.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

/// Waits up to `timeout` for the processes to exit (a pidfd turns readable then, zombie
/// or not); returns those gone and those still running.
fn wait_gone(mut running: Vec<Found>, timeout: Duration) -> (Vec<Found>, Vec<Found>) {
    let deadline = Instant::now() + timeout;
    let mut gone = Vec::new();
    while !running.is_empty() {
        let mut fds: Vec<libc::pollfd> = running
            .iter()
            .map(|f| libc::pollfd {
                fd: f.pidfd.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a live array of pollfd of the length given.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        let (exited, still): (Vec<_>, Vec<_>) = running
            .into_iter()
            .zip(&fds)
            .partition(|(_, p)| p.revents != 0);
        gone.extend(exited.into_iter().map(|(f, _)| f));
        running = still.into_iter().map(|(f, _)| f).collect();
    }
    (gone, running)
}
