//! From an allowed name to a connected socket, and the relay that counts what crosses it.
//!
//! The broker resolves the name itself (the system resolver, on a blocking thread, with a
//! deadline) and connects only to the addresses it resolved and checked: a client never
//! supplies an address for a name, and a name that leads to the host's own or link-local
//! addresses is refused unless those are listed.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::listener::Outcome;
use super::rule::{canonical, Rule, Target};
use super::{CONNECT_TIMEOUT, RESOLVE_TIMEOUT};

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// Pipe per direction: 256 KiB moves a download with a third less of the broker's CPU than
/// 64 KiB (a pipe's default) here, and bounds what a context at its connection cap makes
/// the kernel hold for the relay to 256 MiB.
const RELAY_BUFFER: usize = 256 * 1024;
/// How long nothing may move either way once the client has ended its side, or while the
/// destination takes none of what it sent.
const AFTER_CLIENT_END: std::time::Duration = std::time::Duration::from_secs(30);
/// How soon a relay whose two sides have ended looks again whether each has taken what
/// is queued for it; it then looks half as often each time, down to once a tick.
const DRAIN_FIRST_LOOK: std::time::Duration = std::time::Duration::from_millis(5);
/// A socket's `tcpi_state` once it is closed, or was reset (`include/net/tcp_states.h`).
const TCP_CLOSE: u8 = 7;
/// How often the relay's watchdog looks.
const WATCHDOG_TICK: std::time::Duration = std::time::Duration::from_secs(1);
/// Name lookups in progress at once, for all contexts together.
const MAX_RESOLVERS: usize = 32;
/// ... and for one context: a context looking up names that never answer waits on its
/// own share, and leaves the others theirs.
pub const LOOKUPS_PER_CONTEXT: usize = 8;

/// New connections one context may open to one destination (address and port) within
/// [`DIAL_WINDOW`]. Each connection whose client ends first leaves the host's side in
/// TIME_WAIT for a minute, holding one of the host's ephemeral ports to that destination
/// (28,232 by default): a context opening and ending tunnels in a loop took them all, and
/// every other context and root's own connections to that address failed with
/// EADDRNOTAVAIL (helper-106). A seventh of the default range; a build's downloads open
/// far fewer to any one address.
pub const DIALS_PER_DESTINATION: usize = 4096;

/// How long a dial counts against [`DIALS_PER_DESTINATION`]: TIME_WAIT's length on Linux.
pub const DIAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("it resolves only to addresses that are not listed ({0})")]
    Internal(String),
    #[error("cannot resolve it: {0}")]
    Resolve(io::Error),
    #[error("resolving it took longer than {}s", RESOLVE_TIMEOUT.as_secs())]
    ResolveTimeout,
    #[error("it resolves to no address")]
    NoAddress,
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, io::Error),
    #[error("connecting took longer than {}s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout,
    #[error(
        "this context opened {n} connections to {0} in the last {secs}s, the most it may \
         (each holds one of the host's ports to it for a minute after it ends); try again \
         later or keep connections open",
        n = DIALS_PER_DESTINATION,
        secs = DIAL_WINDOW.as_secs()
    )]
    TooMany(SocketAddr),
}

/// The dials one context made recently, by destination (see [`DIALS_PER_DESTINATION`]).
#[derive(Default)]
pub struct DialBudget {
    recent: std::sync::Mutex<
        std::collections::HashMap<SocketAddr, std::collections::VecDeque<Instant>>,
    >,
}

impl DialBudget {
    /// Counts a dial to `to` now, unless the window already holds as many as it may.
    pub fn take(&self, to: SocketAddr) -> bool {
        self.take_at(to, Instant::now())
    }

    fn take_at(&self, to: SocketAddr, now: Instant) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let passed = |t: &Instant| now.saturating_duration_since(*t) >= DIAL_WINDOW;
        // Destinations not dialled for a window are forgotten now and then: what is kept
        // is at most the window's own dials.
        if recent.len() >= 1024 {
            recent.retain(|_, q| q.back().is_some_and(|t| !passed(t)));
        }
        let q = recent.entry(to).or_default();
        while q.front().is_some_and(passed) {
            q.pop_front();
        }
        if q.len() >= DIALS_PER_DESTINATION {
            return false;
        }
        q.push_back(now);
        true
    }
}

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl DialError {
    pub fn outcome(&self) -> Outcome {
        match self {
            DialError::Internal(_) => Outcome::Denied,
            DialError::Resolve(_) | DialError::NoAddress => Outcome::Unresolved,
            DialError::ResolveTimeout | DialError::ConnectTimeout => Outcome::TimedOut,
            DialError::Connect(..) | DialError::TooMany(_) => Outcome::Unreachable,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// Connects to `target:port`, which `rule` allowed: an address as it is (it is listed), a
/// name through the resolver, trying each resolved address `rule` lets it reach in turn.
pub async fn connect(
    rule: &Rule,
    target: &Target,
    port: u16,
    lookups: &Arc<tokio::sync::Semaphore>,
    budget: &DialBudget,
) -> Result<TcpStream, DialError> {
    let addresses: Vec<SocketAddr> = match target {
        Target::Address(ip) => vec![SocketAddr::new(canonical(*ip), port)],
        Target::Name { .. } => {
            let name = target.lookup_name().unwrap_or_default();
            let lookup = resolve(name, port, lookups.clone());
            let all = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
                .await
                .map_err(|_| DialError::ResolveTimeout)??;
            if all.is_empty() {
                return Err(DialError::NoAddress);
            }
            // The host's own addresses (any interface's, not only loopback) lead to every
            // service it runs on all interfaces: only where listed, as loopback.
            let usable: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| rule.may_connect(a.ip(), port))
                .filter(|a| !host_local(a.ip()) || rule.lists_address(a.ip(), port))
                .collect();
            if usable.is_empty() {
                let mut shown: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
                shown.dedup();
                return Err(DialError::Internal(shown.join(", ")));
            }
            usable
        }
    };
    let attempt = async {
        let mut last = None;
        for a in &addresses {
            if !budget.take(*a) {
                last = Some(DialError::TooMany(*a));
                continue;
            }
            match TcpStream::connect(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(DialError::Connect(*a, e)),
            }
        }
        Err(last.unwrap_or(DialError::NoAddress))
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| DialError::ConnectTimeout)??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Resolves, with why, once a reload leaves the connection to `target:port`, which reached
/// `address`, no longer allowed: its context has no egress any more, or the new rule
/// refuses the name or port, or the address the name led to. Never resolves otherwise.
pub async fn revoked(
    mut rules: tokio::sync::watch::Receiver<Option<Arc<Rule>>>,
    target: Target,
    port: u16,
    address: Option<SocketAddr>,
) -> String {
    loop {
        if rules.changed().await.is_err() {
            // The rule can no longer change.
            return std::future::pending().await;
        }
        let why = match rules.borrow_and_update().as_deref() {
            None => Some("its context no longer has egress".to_string()),
            Some(rule) => refused_now(rule, &target, port, address),
        };
        if let Some(why) = why {
            return format!("a reload ended it: {why}");
        }
    }
}

/// Why `rule` would not let a new connection to `target:port` reach `address`, if it would
/// not: the checks of [`Rule::check`] and of [`connect`] for the address.
fn refused_now(
    rule: &Rule,
    target: &Target,
    port: u16,
    address: Option<SocketAddr>,
) -> Option<String> {
    if let Err(refusal) = rule.check(target, port) {
        return Some(refusal.to_string());
    }
    let ip = address?.ip();
    let reachable = match target {
        Target::Address(_) => true,
        Target::Name { .. } => {
            rule.may_connect(ip, port) && (!host_local(ip) || rule.lists_address(ip, port))
        }
    };
    (!reachable).then(|| DialError::Internal(ip.to_string()).to_string())
}

/// Whether `ip` is one of this host's own addresses, in the broker's namespace (the
/// host's): a connection to it stays on the host and reaches every service listening on
/// all interfaces.
///
/// Two probes, neither of which sends anything. A UDP socket's `connect` only looks up the
/// route, and picks `ip` itself as the source for an address assigned to an interface.
/// That misses the rest of a `local` route: an address in a prefix on `lo`
/// (`198.18.0.1/24` makes all of `198.18.0.0/24` the host's, as `127.0.0.0/8` is) or an
/// AnyIP route (`ip route add local PREFIX dev lo`), for which the kernel picks another
/// source. `bind` to `ip` succeeds exactly where the kernel routes it as local (also for
/// a broadcast or multicast address, which TCP cannot reach anyway); it fails with
/// `EADDRNOTAVAIL` for any other. Where the host lets any address be bound
/// (`net.ipv4.ip_nonlocal_bind`, `net.ipv6.ip_nonlocal_bind`) every address passes, so a
/// name is refused unless its addresses are listed: wrongly closed rather than wrongly
/// open, as when the probe cannot be made at all (no descriptor left).
fn host_local(ip: std::net::IpAddr) -> bool {
    let any: SocketAddr = match ip {
        std::net::IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        std::net::IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    match std::net::UdpSocket::bind((ip, 0)) {
        // No IPv6 at all: nothing reaches such an address, the host's services neither.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)
            ) => {}
        _ => return true,
    }
    let Ok(probe) = std::net::UdpSocket::bind(any) else {
        return false;
    };
    probe.connect((ip, 9)).is_ok() && probe.local_addr().is_ok_and(|l| l.ip() == ip)
}

/// The system resolver on a blocking thread. A lookup that outlives its deadline keeps its
/// thread until the resolver gives up, so the threads are bounded here, for all contexts
/// together (each holds its permit until its lookup returns): a context cannot take the
/// runtime's blocking pool, which reloads and requests also use, with lookups of slow
/// names under a `*.` entry.
async fn resolve(
    name: String,
    port: u16,
    share: Arc<tokio::sync::Semaphore>,
) -> Result<Vec<SocketAddr>, DialError> {
    static RESOLVERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_RESOLVERS);
    // The context's share first: a context at its share waits without taking any of the
    // others'.
    let own = share
        .acquire_owned()
        .await
        .map_err(|_| DialError::ResolveTimeout)?;
    let permit = RESOLVERS
        .acquire()
        .await
        .map_err(|_| DialError::ResolveTimeout)?;
    let lookup = tokio::task::spawn_blocking(move || {
        use std::net::ToSocketAddrs;
        // Never under a search domain: the name the rule matched is the name dialled (a
        // `*.github.com` rule must not reach `x.github.com.corp.example`). So a name the
        // client wrote without the trailing dot is looked up as absolute; but glibc's hosts
        // file matches only names written the same way, so that file is read here first.
        let in_hosts = if name.ends_with('.') {
            Vec::new()
        } else {
            std::fs::read_to_string(HOSTS)
                .map(|text| hosts_entries(&text, &name))
                .unwrap_or_default()
        };
        let found: io::Result<Vec<SocketAddr>> = if !in_hosts.is_empty() {
            Ok(in_hosts
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect())
        } else if name.ends_with('.') {
            (name.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect)
        } else {
            (format!("{name}."), port)
                .to_socket_addrs()
                .map(Iterator::collect)
        };
        drop(permit);
        drop(own);
        found
    });
    lookup
        .await
        .map_err(|e| DialError::Resolve(io::Error::other(e)))?
        .map_err(DialError::Resolve)
}

/// The hosts file a relative name is looked up in before DNS (see `resolve`).
const HOSTS: &str = "/etc/hosts";

/// The addresses `hosts` (the text of an `/etc/hosts`) gives `name` (lower case, no
/// trailing dot), in the file's order: each line an address then its names, `#` to the
/// end of the line a comment, names compared without regard to case.
fn hosts_entries(hosts: &str, name: &str) -> Vec<std::net::IpAddr> {
    hosts
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let ip: std::net::IpAddr = words.next()?.parse().ok()?;
            words.any(|w| w.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .collect()
}

/// Sends `first` to the destination, then relays both ways until both sides are done.
/// Returns the bytes sent to the destination, the bytes received from it, and the error
/// that ended the relay early, if one did. A relay ended early resets both sockets: a
/// client (or a destination) that sees a plain end after a cut would take a truncated
/// answer (or upload) for a whole one.
///
/// Each direction moves its bytes socket to pipe to socket with `splice(2)`: the kernel
/// hands the pages along and the broker never copies them, which is what keeps a proxied
/// download near a direct one when curl, the relay and the server share two CPUs (the
/// README's egress cost section has the figures).
///
/// A watchdog ends a connection on which nothing has moved either way for
/// [`AFTER_CLIENT_END`] once the client has ended its side (it half-closed, or is gone: on
/// loopback the two look alike), or while bytes the client sent wait for a destination
/// that takes none of them. Otherwise a destination that never answers nor closes would
/// hold the connection, and the context's share of them, for ever after its client left.
/// The second case is the same one where the broker cannot see it: a client that closes
/// with bytes still unsent queues its end behind them, and a destination that reads
/// nothing keeps them, and the end, from ever arriving. A client that is still there,
/// waiting for such a destination, is cut the same way.
///
/// `revoked` ends the relay the same way, with its reason, when a reload no longer allows
/// the connection.
pub async fn relay(
    client: TcpStream,
    mut upstream: TcpStream,
    first: &[u8],
    revoked: impl std::future::Future<Output = String>,
) -> (u64, u64, Option<String>) {
    let base = Instant::now();
    let (client_seen, up_seen) = (Seen::default(), Seen::default());
    let moved = AtomicU64::new(0);
    let draining = AtomicBool::new(false);
    if !first.is_empty() {
        if let Err(e) = upstream.write_all(first).await {
            reset(&client);
            reset(&upstream);
            return (0, 0, Some(e.to_string()));
        }
        up_seen.written.store(first.len() as u64, Ordering::Relaxed);
    }
    let silence = AFTER_CLIENT_END.as_millis() as u64;
    let watchdog = async {
        // What the kernel delivered and had acknowledged, both ways: bytes reaching a
        // slow reader count although the pump waits to write until a third of the
        // socket's buffer is free again, which at a few KiB/s takes longer than the
        // watchdog's patience. Read only while the watchdog is armed: it is the only
        // reader, and arming comes with a byte moved (the client's end, or its bytes
        // that now wait), so the first reading once armed is the baseline.
        let mut counted: Option<u64> = None;
        loop {
            tokio::time::sleep(WATCHDOG_TICK).await;
            let ended = client_seen.ended.load(Ordering::Relaxed);
            let stuck = client_seen.waiting.load(Ordering::Relaxed);
            if !(ended || stuck) {
                counted = None;
                continue;
            }
            let now = base.elapsed().as_millis() as u64;
            let seen = delivered(&client, &upstream);
            if counted.is_some_and(|c| c != seen) {
                moved.fetch_max(now, Ordering::Relaxed);
            }
            counted = Some(seen);
            if now.saturating_sub(moved.load(Ordering::Relaxed)) < silence {
                continue;
            }
            let secs = AFTER_CLIENT_END.as_secs();
            return if draining.load(Ordering::Relaxed) {
                let who = if holds_unsent(&client, &client_seen) {
                    "client"
                } else {
                    "destination"
                };
                format!(
                    "the {who} took none of what was left to send it for {secs}s after both ends"
                )
            } else if !ended {
                format!("the destination took none of the client's bytes, and nothing moved either way, for {secs}s")
            } else if up_seen.waiting.load(Ordering::Relaxed) {
                format!("the client took none of the destination's bytes for {secs}s after its end")
            } else {
                format!("the destination sent nothing for {secs}s after the client's end")
            };
        }
    };
    let both = async {
        let (up_pipe, down_pipe) = (Pipe::new()?, Pipe::new()?);
        let _ = tokio::try_join!(
            pump(
                &client,
                &upstream,
                up_pipe,
                &client_seen,
                &up_seen,
                &moved,
                base
            ),
            pump(
                &upstream,
                &client,
                down_pipe,
                &up_seen,
                &client_seen,
                &moved,
                base
            ),
        )?;
        // Closed with bytes still queued, a socket goes on sending them on its own (an
        // orphan) for as long as its peer takes them, while the connection no longer
        // counts against the context's slots or its share of the buffer pool: a client
        // that reads slowly would have the broker hold any number of such sockets. So the
        // connection lasts until each side has taken everything, under the watchdog.
        let mut pause = DRAIN_FIRST_LOOK;
        while holds_unsent(&client, &client_seen) || holds_unsent(&upstream, &up_seen) {
            draining.store(true, Ordering::Relaxed);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(WATCHDOG_TICK);
        }
        Ok::<(), io::Error>(())
    };
    let error = tokio::select! {
        copied = both => copied.err().map(|e| e.to_string()),
        why = watchdog => Some(why),
        why = revoked => Some(why),
    };
    let mut up = up_seen.written.load(Ordering::Relaxed);
    if error.is_some() {
        // A reset drops what the destination has not acknowledged: it was never sent. The
        // end the relay passed on takes a place in that queue too, after every byte, so
        // it is unacknowledged whenever anything is.
        let fin = u64::from(up_seen.fin_sent.load(Ordering::Relaxed));
        up = up.saturating_sub(unacknowledged(&upstream).saturating_sub(fin));
        reset(&client);
        reset(&upstream);
    }
    (up, up_seen.read.load(Ordering::Relaxed), error)
}

/// Moves what `from` sends to `to` through `pipe` until `from` ends, then ends `to`'s
/// receiving side (a half-close, as the client or the destination did). Every byte moved
/// either way marks `moved`.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    mut pipe: Pipe,
    from_seen: &Seen,
    to_seen: &Seen,
    moved: &AtomicU64,
    base: Instant,
) -> io::Result<()> {
    let (src, dst) = (from.as_raw_fd(), to.as_raw_fd());
    loop {
        // Filled only when empty, so an EAGAIN here is the socket's, never a full pipe's.
        if pipe.held == 0 {
            let w = pipe.w.as_raw_fd();
            let n = from
                .async_io(Interest::READABLE, || splice(src, w, RELAY_BUFFER))
                .await?;
            moved.fetch_max(base.elapsed().as_millis() as u64, Ordering::Relaxed);
            if n == 0 {
                from_seen.ended.store(true, Ordering::Relaxed);
                // SAFETY: plain syscall on a socket this relay holds open.
                let shut = unsafe { libc::shutdown(dst, libc::SHUT_WR) } == 0;
                to_seen.fin_sent.store(shut, Ordering::Relaxed);
                return Ok(());
            }
            pipe.held = n;
            from_seen.waiting.store(true, Ordering::Relaxed);
            from_seen.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        let r = pipe.r.as_raw_fd();
        let n = to
            .async_io(Interest::WRITABLE, || splice(r, dst, pipe.held))
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        moved.fetch_max(base.elapsed().as_millis() as u64, Ordering::Relaxed);
        pipe.held -= n;
        from_seen.waiting.store(pipe.held > 0, Ordering::Relaxed);
        to_seen.written.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Bytes the kernel received on, and had acknowledged from, either socket (`TCP_INFO`).
/// A socket that cannot say counts as zero, and only the other one then shows progress.
fn delivered(client: &TcpStream, upstream: &TcpStream) -> u64 {
    [client.as_raw_fd(), upstream.as_raw_fd()]
        .into_iter()
        .map(|fd| {
            tcp_info(fd).map_or(0, |info| {
                info.tcpi_bytes_acked.wrapping_add(info.tcpi_bytes_received)
            })
        })
        .fold(0, u64::wrapping_add)
}

/// The kernel's `TCP_INFO` of the socket, if it gives it.
fn tcp_info(fd: RawFd) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain integers, for which zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info` and stores how many it
    // wrote back into `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(info)
}

/// Whether the socket still holds bytes its peer has not acknowledged, beyond the end
/// the relay passed on (which takes a place in that queue). A socket its peer reset
/// holds nothing, whatever its counters say.
fn holds_unsent(s: &TcpStream, seen: &Seen) -> bool {
    if tcp_info(s.as_raw_fd()).is_none_or(|i| i.tcpi_state == TCP_CLOSE) {
        return false;
    }
    unacknowledged(s) > u64::from(seen.fin_sent.load(Ordering::Relaxed))
}

/// Bytes written to the socket that its peer has not acknowledged yet (`SIOCOUTQ`).
fn unacknowledged(s: &TcpStream) -> u64 {
    let mut n: libc::c_int = 0;
    // SAFETY: this ioctl stores one int through the pointer it is given.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r == 0 {
        n.max(0) as u64
    } else {
        0
    }
}

/// Sets the socket's receive and send buffers to `bytes` each (the kernel keeps twice
/// that for its bookkeeping), which also ends their autotuning. The forced options lift
/// `rmem_max`/`wmem_max`, which are a limit for unprivileged programs; without them (the
/// broker not root in the namespace's owner) the plain ones still bound the buffers.
pub fn set_buffers(s: &impl AsRawFd, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (forced, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for option in [forced, plain] {
            // SAFETY: setsockopt reads `value` for as long as the call lasts.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
        }
    }
}

/// Makes the socket's close a reset (`SO_LINGER` of zero), which a peer cannot take for
/// the end of what it was sent. Closing does not wait on such a socket.
fn reset(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `linger` for as long as the call lasts.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// One `splice(2)` of at most `len` bytes, without blocking (a socket not ready is
/// `WouldBlock`, which tokio turns into a wait for readiness).
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: both are descriptors this relay holds open; null offsets are what a pipe
    // and a socket take.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One direction's pipe, and how many bytes sit in it.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    held: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 just returned these two descriptors, owned by nothing else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Failing (a lowered pipe-max-size) leaves the default, which is only slower.
        // SAFETY: plain fcntl on a pipe just made.
        unsafe {
            libc::fcntl(
                w.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                RELAY_BUFFER as libc::c_int,
            )
        };
        Ok(Pipe { r, w, held: 0 })
    }
}

/// What one side of a relay saw.
#[derive(Default)]
struct Seen {
    read: AtomicU64,
    written: AtomicU64,
    /// It ended its side (its read returned 0).
    ended: AtomicBool,
    /// Bytes it sent wait in the relay for the other side to take them.
    waiting: AtomicBool,
    /// The relay ended what it sends this side (the other side's end, passed on).
    fin_sent: AtomicBool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context's dials to one destination stop at the bound within a window, go on to
    /// another destination, and come back as the window moves past them (helper-106).
    #[test]
    fn dials_to_one_destination_are_bounded_per_window() {
        let budget = DialBudget::default();
        let a: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:443".parse().unwrap();
        let start = Instant::now();
        for i in 0..DIALS_PER_DESTINATION {
            let at = start + std::time::Duration::from_millis(i as u64);
            assert!(budget.take_at(a, at), "dial {i}");
        }
        let late = start + std::time::Duration::from_secs(30);
        assert!(!budget.take_at(a, late));
        assert!(budget.take_at(b, late));
        // The first dials leave the window one by one: a minute and a millisecond on, the
        // two made at 0 and 1 ms have.
        let after = start + DIAL_WINDOW + std::time::Duration::from_millis(1);
        assert!(budget.take_at(a, after));
        assert!(budget.take_at(a, after));
        assert!(!budget.take_at(a, after));
        // Told as a connection that failed.
        assert!(matches!(
            DialError::TooMany(a).outcome(),
            Outcome::Unreachable
        ));
    }

    #[test]
    fn a_new_rule_is_checked_against_the_name_port_and_address_reached() {
        let rule = |allow: &[&str]| Rule {
            allow: allow
                .iter()
                .map(|p| super::super::rule::Pattern::parse(p).unwrap())
                .collect(),
            deny: Vec::new(),
        };
        let name = Target::parse(b"a.test").unwrap();
        let loopback: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let elsewhere: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let now = |r: &Rule, t: &Target, a| refused_now(r, t, 80, Some(a));
        assert_eq!(now(&rule(&["a.test", "127.0.0.1"]), &name, loopback), None);
        assert_eq!(now(&rule(&["a.test:80"]), &name, elsewhere), None);
        assert_eq!(
            now(&rule(&["a.test:443"]), &name, elsewhere).as_deref(),
            Some("not in the allow list")
        );
        // The address it reached is one a name may reach only where it is listed.
        assert_eq!(
            now(&rule(&["a.test"]), &name, loopback).as_deref(),
            Some("it resolves only to addresses that are not listed (127.0.0.1)")
        );
        // A listed address reached as itself needs only its own entry.
        let address = Target::parse(b"127.0.0.1").unwrap();
        assert_eq!(now(&rule(&["127.0.0.1"]), &address, loopback), None);
        assert!(now(&rule(&["a.test"]), &address, loopback).is_some());
    }

    #[test]
    fn hosts_file_entries_match_by_name_in_file_order() {
        let hosts = "127.0.0.1 localhost\n\
                     # 192.0.2.9 commented.test\n\
                     192.0.2.10\tpkg.test  Mirror.Test # trailing comment\n\
                     2001:db8::1 pkg.test\n\
                     not-an-address pkg.test\n\
                     192.0.2.11 pkg.test.\n";
        let ips = |name| hosts_entries(hosts, name);
        assert_eq!(
            ips("pkg.test"),
            vec![
                "192.0.2.10".parse::<std::net::IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert_eq!(
            ips("mirror.test"),
            vec!["192.0.2.10".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(ips("commented.test").is_empty());
        assert!(ips("test").is_empty(), "a suffix is not the name");
    }
}
