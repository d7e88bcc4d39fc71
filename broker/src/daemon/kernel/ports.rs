//! `[broker] reserved_ports`: ports the control plane owns. The broker binds each one at
//! start, on `0.0.0.0` and on `::` (IPv6-only, so both can coexist), twice: a guard socket
//! that is bound and never listens nor leaves the broker, and a listening socket that the
//! owning service gets handed over systemd-style (`ctx exec --listen-port 8080`: the socket
//! at fd 3, `LISTEN_FDS=1`, `LISTEN_PID`), which also keeps the port and its queue across
//! restarts of that service. Both have `SO_REUSEPORT` and belong to a uid no account has
//! ([`HOLDER_UID`]): the kernel lets a socket share their port only with the same option
//! and the same owner, so no routed process, of any uid (root's included), can bind the
//! port on any address. The guard is what keeps it so after the owner shuts the handed-over
//! socket down (which frees a port a shared socket held alone: found by helper-81); the
//! next claim gets a new listening socket. Who may claim a port: a launch into the context
//! `[broker] port_owners` names for it, or any launch a root caller makes.
//!
//! Scope: TCP, in the host's network namespace. A context with `network = "none"` has its
//! own ports, which reach nothing outside it.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// The listening sockets the broker holds, by port.
#[derive(Debug, Default)]
pub struct ReservedPorts {
    held: BTreeMap<u16, Held>,
    /// The ports (or one family of them) it could not take, with why: `ctx status` lists
    /// them as not in force.
    failed: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct Held {
    v4: Option<Family>,
    v6: Option<Family>,
}

/// A port on one address family.
#[derive(Debug)]
struct Family {
    family: i32,
    port: u16,
    /// Bound, never listening, never handed over; `None` where the broker could not give
    /// its sockets to [`HOLDER_UID`] (it is not root): then the listening socket alone
    /// holds the port, as any socket that is not shared would.
    guard: Option<OwnedFd>,
    /// The socket claims get: replaced when it no longer listens.
    listener: Mutex<Arc<OwnedFd>>,
}

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// Backlog of a held socket; the owning service inherits the queue.
const BACKLOG: i32 = 128;

/// The owner of the reserved ports' sockets: no account has it (`(uid_t)-1` and `-2` have
/// meanings of their own; uids this high are not handed out), so no process can join
/// their `SO_REUSEPORT` group.
const HOLDER_UID: u32 = 4_294_967_293;

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl ReservedPorts {
    /// Binds every port; returns what it holds and one warning per port it could not take.
    pub fn bind(ports: &[u16]) -> (ReservedPorts, Vec<String>) {
        let mut held = BTreeMap::new();
        let mut failed = Vec::new();
        for &port in ports {
            let v4 = Family::take(libc::AF_INET, port);
            let v6 = Family::take(libc::AF_INET6, port);
            match (&v4, &v6) {
                (Ok(_), Ok(_)) => {}
                (Err(e), Err(_)) => failed.push((format!("reserved port {port}"), why(port, e))),
                (Err(e), Ok(_)) => {
                    failed.push((format!("reserved port {port} on 0.0.0.0"), why(port, e)))
                }
                // A host without IPv6 has nothing to reserve there.
                (Ok(_), Err(e))
                    if e.raw_os_error() == Some(libc::EAFNOSUPPORT)
                        || e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
                (Ok(_), Err(e)) => {
                    failed.push((format!("reserved port {port} on [::]"), why(port, e)))
                }
            }
            held.insert(
                port,
                Held {
                    v4: v4.ok(),
                    v6: v6.ok(),
                },
            );
        }
        let warnings = failed
            .iter()
            .map(|(what, why)| {
                format!(
                    "[broker] reserved_ports: {what} NOT in force (contexts may bind it): {why}"
                )
            })
            .collect();
        (ReservedPorts { held, failed }, warnings)
    }

    /// The reserved ports (or one family of them) the broker could not take, each with
    /// the reason.
    pub fn not_in_force(&self) -> &[(String, String)] {
        &self.failed
    }

    /// The socket handed to the port's owner (IPv4 wildcard, else IPv6), if held: a new
    /// one when the last was shut down. `None` inside: the port is not held; `Err`: it is,
    /// but no listening socket could be made again.
    pub fn socket(&self, port: u16) -> Option<io::Result<Arc<OwnedFd>>> {
        let held = self.held.get(&port)?;
        Some(held.v4.as_ref().or(held.v6.as_ref())?.listening())
    }

    /// The ports actually held (both families, or the only one the host has).
    pub fn in_force(&self) -> Vec<u16> {
        self.held
            .iter()
            .filter(|(_, h)| h.v4.is_some())
            .map(|(p, _)| *p)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// Why binding `port` failed, and what to do about it.
fn why(port: u16, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .unwrap_or(1024);
            format!(
                "{e}: ports below {start} need root or CAP_NET_BIND_SERVICE: start ctx-broker \
                 as root (or give it that capability), or reserve a port from {start} up"
            )
        }
        Some(libc::EADDRINUSE) => {
            format!("{e}: another process holds port {port}: stop it, or reserve another port")
        }
        _ => e.to_string(),
    }
}

impl Family {
    /// Binds the guard, then the listening socket.
    fn take(family: i32, port: u16) -> io::Result<Family> {
        let guard = match bound(family, port) {
            Ok(g) => Some(g),
            // Not root, so it cannot give sockets away: the listening socket, without
            // SO_REUSEPORT, holds the port alone.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => None,
            Err(e) => return Err(e),
        };
        let listener = listening(family, port, guard.is_some())?;
        Ok(Family {
            family,
            port,
            guard,
            listener: Mutex::new(Arc::new(listener)),
        })
    }

    /// The listening socket, made again if its last holder shut it down (only possible
    /// with a guard holding the port meanwhile).
    fn listening(&self) -> io::Result<Arc<OwnedFd>> {
        let mut current = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        if self.guard.is_some() && !accepts(&current) {
            *current = Arc::new(listening(self.family, self.port, true)?);
        }
        Ok(current.clone())
    }
}

/// Whether `fd` still listens (`SO_ACCEPTCONN`).
fn accepts(fd: &OwnedFd) -> bool {
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int-sized buffer with its length, on our socket.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut on as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && on != 0
}

/// Gives the socket to [`HOLDER_UID`] (its `sk_uid`, which `SO_REUSEPORT` sharing
/// compares); only root may.
fn hold(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain syscall on our socket.
    if unsafe { libc::fchown(fd.as_raw_fd(), HOLDER_UID, u32::MAX) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets a boolean socket option; a failure only shows up later as a failed bind.
fn set_flag(fd: &OwnedFd, level: libc::c_int, name: libc::c_int) {
    let one: libc::c_int = 1;
    // SAFETY: the option value is a valid c_int for the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A close-on-exec TCP socket bound to the wildcard address of `family`, held by
/// [`HOLDER_UID`] with `SO_REUSEPORT` (never `SO_REUSEADDR`: that would let any socket
/// with it share the port once no socket listens on it).
fn bound(family: i32, port: u16) -> io::Result<OwnedFd> {
    let fd = socket(family)?;
    set_flag(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT);
    hold(&fd)?;
    bind(fd, family, port)
}

/// A close-on-exec TCP socket listening on the wildcard address of `family`: one that
/// shares the port with the guard (`shared`), or else one that holds it alone.
fn listening(family: i32, port: u16, shared: bool) -> io::Result<OwnedFd> {
    let fd = socket(family)?;
    if shared {
        set_flag(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT);
        hold(&fd)?;
    } else {
        // Rebind at once after a broker restart (TIME_WAIT); harmless to others: without
        // SO_REUSEPORT no second listener can share the port.
        set_flag(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR);
    }
    let fd = bind(fd, family, port)?;
    // SAFETY: plain syscall on our socket.
    if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn socket(family: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked and owned below.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bind(fd: OwnedFd, family: i32, port: u16) -> io::Result<OwnedFd> {
    let r = if family == libc::AF_INET {
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        // SAFETY: the address is valid for the size given.
        unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
    } else {
        set_flag(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
        // SAFETY: sockaddr_in6 is plain data.
        let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        addr.sin6_port = port.to_be();
        // SAFETY: the address is valid for the size given.
        unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_in6).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}
