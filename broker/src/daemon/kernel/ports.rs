//! `[broker] reserved_ports`: ports the control plane owns. The broker binds each one at
//! start, on `0.0.0.0` and on `::` (IPv6-only, so both can coexist), with a guard socket
//! that is bound and never listens nor leaves the broker; on IPv4 (IPv6 on a host without
//! it) also with a listening socket that the owning service gets handed over systemd-style
//! (`ctx exec --listen-port 8080`: the socket at fd 3, `LISTEN_FDS=1`, `LISTEN_PID`),
//! which also keeps the port and its queue across restarts of that service. All have
//! `SO_REUSEPORT` and belong to a uid no account has ([`HOLDER_UID`]; made with the
//! broker's file-system uid switched to it, which `CAP_SETUID` allows): the kernel lets a
//! socket share their port only with the same option and the same owner, so no routed
//! process, of any uid (root's included), can bind the port on any address. The guard is
//! what keeps it so after the owner shuts the handed-over socket down or changes its
//! options (which freed, or spoiled, a port a shared socket held alone: helper-81,
//! helper-83); the next claim, or the end of the launch that held it, gets it back as it
//! was, listening. A broker that cannot switch to that uid (not root, or in a user
//! namespace that does not map it) holds each port with one listening socket per family,
//! as any program would, and says at start that an owner can free it. Who may claim a
//! port: a launch into the context `[broker] port_owners` names for it, or any launch a
//! root caller makes.
//!
//! Scope: TCP, in the host's network namespace. A context with `network = "none"` has its
//! own ports, which reach nothing outside it.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use crate::daemon::systemd::sockopt_int;

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
    /// Bound, never listening, never handed over; `None` where the broker cannot make
    /// sockets as [`HOLDER_UID`]: then the listening socket alone holds the port.
    guard: Option<OwnedFd>,
    /// The socket claims get (`None`: the IPv6 side, held by its guard alone, where
    /// nothing would accept): restored, or replaced, when a holder changed it.
    listener: Mutex<Listener>,
}

/// The listening socket and how many running launches were handed it.
#[derive(Debug)]
struct Listener {
    socket: Option<Arc<OwnedFd>>,
    holders: usize,
}

/// A launch's claim of a reserved port: given back when dropped (the launch ended, or
/// failed), so that the socket can be put back whole once no launch holds it.
pub struct Claim<'a> {
    family: &'a Family,
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
        let mut alone = None;
        for &port in ports {
            let v4 = Family::take(libc::AF_INET, port, true, &mut alone);
            let v6 = Family::take(libc::AF_INET6, port, v4.is_err(), &mut alone);
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
        let mut warnings: Vec<String> = failed
            .iter()
            .map(|(what, why)| {
                format!(
                    "[broker] reserved_ports: {what} NOT in force (contexts may bind it): {why}"
                )
            })
            .collect();
        if let Some(why) = alone {
            warnings.push(format!(
                "[broker] reserved_ports: each port is held by its listening socket alone \
                 ({why}): an owner that shuts the socket it was handed down frees the port \
                 for anyone; run the broker as root with CAP_SETUID, outside a user \
                 namespace that leaves uid {HOLDER_UID} unmapped"
            ));
        }
        (ReservedPorts { held, failed }, warnings)
    }

    /// The reserved ports (or one family of them) the broker could not take, each with
    /// the reason.
    pub fn not_in_force(&self) -> &[(String, String)] {
        &self.failed
    }

    /// The socket handed to the port's owner (IPv4 wildcard, else IPv6), if held, with
    /// the launch's claim on it (see [`Family::claim`]). `None`: the port is not held;
    /// `Err`: it is, but no listening socket could be made again.
    pub fn claim(&self, port: u16) -> Option<io::Result<(Arc<OwnedFd>, Claim<'_>)>> {
        let held = self.held.get(&port)?;
        [held.v4.as_ref(), held.v6.as_ref()]
            .into_iter()
            .flatten()
            .find_map(Family::claim)
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
    /// Binds the guard, then (`listens`) the listening socket. Where no socket can be made
    /// as [`HOLDER_UID`], a listening socket alone, and `alone` says why.
    fn take(
        family: i32,
        port: u16,
        listens: bool,
        alone: &mut Option<String>,
    ) -> io::Result<Family> {
        let guard = match holder_socket(family) {
            Ok(fd) => Some(bound(fd, family, port)?),
            Err(why) => {
                *alone = Some(why);
                None
            }
        };
        let listener = match &guard {
            Some(_) if !listens => None,
            Some(_) => Some(shared_listener(family, port)?),
            None => Some(listening_alone(family, port)?),
        };
        Ok(Family {
            family,
            port,
            guard,
            listener: Mutex::new(Listener {
                socket: listener.map(Arc::new),
                holders: 0,
            }),
        })
    }

    /// The listening socket for one more launch: one open file description that every
    /// owner launch, and whatever it leaves running, shares, as systemd's sockets are (so
    /// its non-blocking mode, options and backlog are what the last holder left, which the
    /// next can set back). A holder may also have shut it down or changed what the next one
    /// cannot undo (`SO_REUSEPORT` off makes a new socket's bind conflict with it; a device
    /// binding keeps connections off it, and an unprivileged process may set one once,
    /// never change it). With a guard holding the port, `SO_REUSEPORT` and listening are
    /// put back on the same socket at every claim, and `SO_REUSEADDR`, the device binding
    /// and a reuseport program too when no running launch holds it (a live service's own
    /// choices stay: helper-84; a finished one's do not: helper-85); a socket that cannot
    /// be put back is replaced. `None`: no listener here.
    fn claim(&self) -> Option<io::Result<(Arc<OwnedFd>, Claim<'_>)>> {
        let mut l = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        let socket = l.socket.as_ref()?;
        if self.guard.is_some() && restore(socket, l.holders == 0).is_err() {
            match shared_listener(self.family, self.port) {
                Ok(new) => l.socket = Some(Arc::new(new)),
                Err(e) => return Some(Err(e)),
            }
        }
        l.holders += 1;
        let socket = l.socket.clone()?;
        Some(Ok((socket, Claim { family: self })))
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let f = self.family;
        let mut l = f.listener.lock().unwrap_or_else(|e| e.into_inner());
        l.holders = l.holders.saturating_sub(1);
        if l.holders > 0 || f.guard.is_none() {
            return;
        }
        // The last launch holding it ended: the socket, whole again, listens for the port's
        // next connections (the port itself stayed held meanwhile).
        let whole = l.socket.as_ref().map(|s| restore(s, true));
        if let Some(Err(_)) = whole {
            match shared_listener(f.family, f.port) {
                Ok(new) => l.socket = Some(Arc::new(new)),
                Err(e) => {
                    tracing::warn!("reserved port {}: cannot listen on it again: {e}", f.port)
                }
            }
        }
    }
}

/// A TCP socket of `family` whose owner (`sk_uid`, which `SO_REUSEPORT` sharing compares)
/// is [`HOLDER_UID`]: made with this thread's file-system uid switched to it. `Err` says
/// why it cannot be.
fn holder_socket(family: i32) -> Result<OwnedFd, String> {
    // SAFETY: setfsuid changes this thread's file-system uid only, and it is switched back
    // before anything else runs on the thread; with -1 it only reports.
    unsafe {
        let before = libc::setfsuid(HOLDER_UID) as u32;
        let now = libc::setfsuid(u32::MAX) as u32;
        let made = (now == HOLDER_UID).then(|| socket(family));
        libc::setfsuid(before);
        match made {
            Some(Ok(fd)) => Ok(fd),
            Some(Err(e)) => Err(format!("cannot make a socket: {e}")),
            None => Err(format!(
                "the broker cannot make sockets as uid {HOLDER_UID}: it lacks CAP_SETUID, or \
                 its user namespace does not map that uid"
            )),
        }
    }
}

/// Puts back what the broker needs of the listening socket: `SO_REUSEPORT` on (off, a new
/// socket's bind would conflict with it) and listening; `whole`: the rest too (no
/// `SO_REUSEADDR`, no device binding, no reuseport program).
fn restore(fd: &OwnedFd, whole: bool) -> io::Result<()> {
    if flag(fd, libc::SO_REUSEPORT) != Some(true) {
        set_flag_to(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    if whole {
        if flag(fd, libc::SO_REUSEADDR) != Some(false) {
            set_flag_to(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0)?;
        }
        if sockopt_int(fd, libc::SO_BINDTOIFINDEX) != Some(0) {
            set_flag_to(fd, libc::SOL_SOCKET, libc::SO_BINDTOIFINDEX, 0)?;
        }
        // ENOENT when there is none.
        let _ = set_flag_to(fd, libc::SOL_SOCKET, libc::SO_DETACH_REUSEPORT_BPF, 0);
    }
    if flag(fd, libc::SO_ACCEPTCONN) != Some(true) {
        // SAFETY: plain syscall on our socket.
        if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn flag(fd: &OwnedFd, name: libc::c_int) -> Option<bool> {
    sockopt_int(fd, name).map(|v| v != 0)
}

/// Sets a boolean socket option; a failure only shows up later as a failed bind.
fn set_flag(fd: &OwnedFd, level: libc::c_int, name: libc::c_int) {
    let _ = set_flag_to(fd, level, name, 1);
}

fn set_flag_to(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a valid c_int for the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fd` (a [`holder_socket`]) bound to the wildcard address of `family` with
/// `SO_REUSEPORT`, never `SO_REUSEADDR` (that would let any socket with it share the port
/// once no socket listens on it).
fn bound(fd: OwnedFd, family: i32, port: u16) -> io::Result<OwnedFd> {
    set_flag(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT);
    bind(fd, family, port)
}

/// A holder's socket listening on the wildcard address of `family`, sharing the port with
/// the guard.
fn shared_listener(family: i32, port: u16) -> io::Result<OwnedFd> {
    let fd = holder_socket(family).map_err(io::Error::other)?;
    let fd = bound(fd, family, port)?;
    // SAFETY: plain syscall on our socket.
    if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// A close-on-exec TCP socket listening on the wildcard address of `family` that holds the
/// port alone (no guard).
fn listening_alone(family: i32, port: u16) -> io::Result<OwnedFd> {
    let fd = socket(family)?;
    // Rebind at once after a broker restart (TIME_WAIT); harmless to others: without
    // SO_REUSEPORT no second listener can share the port.
    set_flag(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR);
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
