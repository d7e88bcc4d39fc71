//! From an allowed name to a connected socket, and the relay that counts what crosses it.
//!
//! The broker resolves the name itself (the system resolver, on a blocking thread, with a
//! deadline) and connects only to the addresses it resolved and checked: a client never
//! supplies an address for a name, and a name that leads to the host's own or link-local
//! addresses is refused unless those are listed.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
/// the context's share of them, for ever after its client left.
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    first: &[u8],
) -> (u64, u64, Option<String>) {
    let (mut client_in, mut client_out) = client.into_split();
    let (mut up_in, mut up_out) = upstream.into_split();
    let mut sent = 0u64;
    if !first.is_empty() {
        if let Err(e) = up_out.write_all(first).await {
            return (0, 0, Some(e.to_string()));
        }
        sent = first.len() as u64;
    }
    let (ended_tx, ended_rx) = tokio::sync::watch::channel(false);
    let upward = async {
        let mut buf = vec![0u8; RELAY_BUFFER];
        let mut n_sent = 0u64;
        let result: io::Result<()> = async {
            loop {
                let n = client_in.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                up_out.write_all(&buf[..n]).await?;
                n_sent += n as u64;
            }
            up_out.shutdown().await
        }
        .await;
        let _ = ended_tx.send(true);
        (n_sent, result)
    };
    let downward = async {
        let mut buf = vec![0u8; RELAY_BUFFER];
        let mut received = 0u64;
        let mut ended = ended_rx;
        let result: io::Result<()> = async {
            loop {
                // Made anew for each read: a chunk that arrives restarts the silence.
                let silence = async {
                    let _ = ended.wait_for(|e| *e).await;
                    tokio::time::sleep(AFTER_CLIENT_END).await;
                };
                let n = tokio::select! {
                    r = up_in.read(&mut buf) => r?,
                    _ = silence => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "the destination sent nothing for {}s after the client's end",
                                AFTER_CLIENT_END.as_secs()
                            ),
                        ))
                    }
                };
                if n == 0 {
                    break;
                }
                client_out.write_all(&buf[..n]).await?;
                received += n as u64;
            }
            client_out.shutdown().await
        }
        .await;
        (received, result)
    };
    let ((up, up_result), (down, down_result)) = tokio::join!(upward, downward);
    let error = up_result.err().or(down_result.err()).map(|e| e.to_string());
    (sent + up, down, error)
}
