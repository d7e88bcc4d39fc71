//! From an allowed name to a connected socket, and the relay that counts what crosses it.
//!
//! The broker resolves the name itself (the system resolver, on a blocking thread, with a
//! deadline) and connects only to the addresses it resolved and checked: a client never
//! supplies an address for a name, and a name that leads to the host's own or link-local
//! addresses is refused unless those are listed.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::listener::Outcome;
use super::rule::{canonical, Rule, Target};
use super::{CONNECT_TIMEOUT, RESOLVE_TIMEOUT};

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// Relay buffer per direction: 64 KiB is as fast as 512 KiB here (scripts/bench-egress.sh),
/// and bounds what a context at its connection cap makes the broker hold to 64 MiB.
const RELAY_BUFFER: usize = 64 * 1024;
/// How long a destination may stay silent once the client has ended its side.
const AFTER_CLIENT_END: std::time::Duration = std::time::Duration::from_secs(30);
/// How often the relay's watchdog looks.
const WATCHDOG_TICK: std::time::Duration = std::time::Duration::from_secs(1);
/// Name lookups in progress at once, for all contexts together.
const MAX_RESOLVERS: usize = 32;
/// ... and for one context: a context looking up names that never answer waits on its
/// own share, and leaves the others theirs.
pub const LOOKUPS_PER_CONTEXT: usize = 8;

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
            DialError::Connect(..) => Outcome::Unreachable,
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
) -> Result<TcpStream, DialError> {
    let addresses: Vec<SocketAddr> = match target {
        Target::Address(ip) => vec![SocketAddr::new(canonical(*ip), port)],
        Target::Name(name) => {
            let lookup = resolve(name.clone(), port, lookups.clone());
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

/// Whether `ip` is one of this host's own addresses: the kernel routes a connection to it
/// through `lo` and picks it as its own source. Asked of a UDP socket, whose `connect`
/// only looks up the route (nothing is sent). In the broker's namespace: the host's.
fn host_local(ip: std::net::IpAddr) -> bool {
    let any: SocketAddr = match ip {
        std::net::IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        std::net::IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
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
        let found = (name.as_str(), port)
            .to_socket_addrs()
            .map(Iterator::collect);
        drop(permit);
        drop(own);
        found
    });
    lookup
        .await
        .map_err(|e| DialError::Resolve(io::Error::other(e)))?
        .map_err(DialError::Resolve)
}

/// Sends `first` to the destination, then relays both ways until both sides are done.
/// Returns the bytes sent to the destination, the bytes received from it, and the error
/// that ended the relay early, if one did.
///
/// Once the client has ended its side (it half-closed, or is gone: on loopback the two
/// look alike), the destination has [`AFTER_CLIENT_END`] of silence at a time to finish:
/// a destination that never answers nor closes would otherwise hold the connection, and
/// the context's share of them, for ever after its client left. A watchdog looks at what
/// the two streams saw, so the copying itself stays tokio's.
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    first: &[u8],
) -> (u64, u64, Option<String>) {
    let base = Instant::now();
    let (client_seen, up_seen) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    let mut client = Counted {
        inner: client,
        seen: client_seen.clone(),
        base,
    };
    let mut upstream = Counted {
        inner: upstream,
        seen: up_seen.clone(),
        base,
    };
    let mut error = None;
    if !first.is_empty() {
        if let Err(e) = upstream.write_all(first).await {
            error = Some(e.to_string());
        }
    }
    if error.is_none() {
        let silence = AFTER_CLIENT_END.as_millis() as u64;
        let watchdog = async {
            loop {
                tokio::time::sleep(WATCHDOG_TICK).await;
                if !client_seen.ended.load(Ordering::Relaxed) {
                    continue;
                }
                let last = client_seen
                    .ended_at
                    .load(Ordering::Relaxed)
                    .max(up_seen.last_read.load(Ordering::Relaxed));
                if (base.elapsed().as_millis() as u64).saturating_sub(last) >= silence {
                    return;
                }
            }
        };
        tokio::select! {
            copied = tokio::io::copy_bidirectional_with_sizes(
                &mut client,
                &mut upstream,
                RELAY_BUFFER,
                RELAY_BUFFER,
            ) => {
                if let Err(e) = copied {
                    error = Some(e.to_string());
                }
            }
            _ = watchdog => {
                error = Some(format!(
                    "the destination sent nothing for {}s after the client's end",
                    AFTER_CLIENT_END.as_secs()
                ));
            }
        }
    }
    (
        up_seen.written.load(Ordering::Relaxed),
        up_seen.read.load(Ordering::Relaxed),
        error,
    )
}

/// What one side of a relay saw, in milliseconds since the relay began.
#[derive(Default)]
struct Seen {
    read: AtomicU64,
    written: AtomicU64,
    last_read: AtomicU64,
    ended: AtomicBool,
    ended_at: AtomicU64,
}

/// A stream that records what crosses it in its [`Seen`].
struct Counted<S> {
    inner: S,
    seen: Arc<Seen>,
    base: Instant,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut me.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = (buf.filled().len() - before) as u64;
            let now = me.base.elapsed().as_millis() as u64;
            if n == 0 {
                me.seen.ended_at.store(now, Ordering::Relaxed);
                me.seen.ended.store(true, Ordering::Relaxed);
            } else {
                me.seen.read.fetch_add(n, Ordering::Relaxed);
                me.seen.last_read.store(now, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            me.seen.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
