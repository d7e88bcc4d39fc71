//! The proxy's listening socket, made inside a context's network namespace, and the
//! accept loop that serves it from the broker's runtime in the host's namespace.
//!
//! A socket keeps the namespace it was created in: a short-lived thread enters the
//! namespace (`setns` applies to the calling thread only), binds and listens, and ends.
//! Every connection the broker then makes to a destination is made by its own tasks, in
//! the host's namespace.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::rule::{Refusal, Target};
use super::{dial, http, socks, Attempt, State, HANDSHAKE_TIMEOUT};
use crate::daemon::admission::EgressRefusal;
use crate::daemon::kernel::namespaces::Holder;
use crate::daemon::quiet_log::Quiet;
use http::Head;

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// Room for a burst of connections (200 at once must not wait for SYN retries).
const BACKLOG: libc::c_int = 1024;
/// The first byte of a SOCKS5 greeting; an HTTP request starts with a method's letter.
const SOCKS5: u8 = 0x05;
/// Why a connection the broker's shutdown ended did not go on.
const STOPPED: &str = "the broker stopped";
/// The congestion control of the proxy's end of every client connection, which is
/// loopback: no path to probe, no queue to spare. A pacing algorithm (BBR, where it is the
/// host's default) arms a timer for each burst it sends, and on a virtual machine a timer
/// is dear: a download relayed to the client then costs the host far more CPU than its
/// bytes do. Reno paces nothing and is built into every kernel.
const LOOPBACK_CONGESTION: &[u8] = b"reno";

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// What a client asked for, once its handshake is complete.
pub struct Request {
    pub host: Vec<u8>,
    pub port: u16,
    pub launch: Option<u64>,
    pub kind: Kind,
}

pub enum Kind {
    /// HTTP `CONNECT`: a tunnel; `early` are bytes the client sent after its request.
    Connect {
        early: Vec<u8>,
    },
    /// An absolute-URI request, rewritten for the origin (its head, and any body bytes
    /// that came with it).
    Forward {
        head: Vec<u8>,
    },
    Socks,
}

/// How the client is told the outcome, in its own protocol.
#[derive(Clone, Copy)]
pub enum Outcome {
    Denied,
    Unresolved,
    Unreachable,
    TimedOut,
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// A listening TCP socket on 127.0.0.1 (a port the kernel picks) in `holder`'s network
/// namespace.
pub fn listen_in(holder: &Holder) -> io::Result<std::net::TcpListener> {
    let pidfd = holder.pidfd.as_raw_fd();
    std::thread::scope(|s| {
        let made = std::thread::Builder::new()
            .name("ctx-egress-ns".into())
            .spawn_scoped(s, || -> io::Result<std::net::TcpListener> {
                // SAFETY: moves only this thread (it ends right after) into the namespace;
                // the pidfd stays open while `holder` is borrowed.
                if unsafe { libc::setns(pidfd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
                // Accepted connections inherit it. Failing leaves the host's default,
                // which is only slower.
                // SAFETY: setsockopt reads the name's bytes for as long as the call lasts.
                unsafe {
                    libc::setsockopt(
                        l.as_raw_fd(),
                        libc::IPPROTO_TCP,
                        libc::TCP_CONGESTION,
                        LOOPBACK_CONGESTION.as_ptr().cast(),
                        LOOPBACK_CONGESTION.len() as libc::socklen_t,
                    )
                };
                // SAFETY: plain syscall on our own listening socket (a larger backlog).
                unsafe { libc::listen(l.as_raw_fd(), BACKLOG) };
                l.set_nonblocking(true)?;
                Ok(l)
            })?;
        made.join()
            .unwrap_or_else(|_| Err(io::Error::other("the listener thread panicked")))
    })
}

/// Accepts until the proxy is dropped (its task aborted). A connection over the
/// context's cap is closed at once: the cap bounds what the context makes the broker hold.
pub async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let mut over_cap = Quiet::default();
    let mut errors = Quiet::default();
    let mut no_descriptors = Quiet::default();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                if let Some(more) = errors.should_log() {
                    tracing::warn!(
                        "egress proxy of {}: accept failed: {e}{more}",
                        state.context
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The floor until the destination answers (a handshake needs no more); set here,
        // not on the listening socket, whose buffer size the kernel would take for the
        // window scale it offers at the handshake, keeping this end's window at 128 KiB
        // whatever share the connection gets later.
        dial::set_buffers(&stream, super::BUFFER_FLOOR);
        let Ok(permit) = state.slots.clone().try_acquire_owned() else {
            if let Some(more) = over_cap.should_log() {
                tracing::warn!(
                    "egress proxy of {}: more than {} connections at once; closing the \
                     newest{more}",
                    state.context,
                    super::MAX_CONNECTIONS
                );
            }
            continue;
        };
        // Its descriptors come out of the broker's, within the egress shares: however many
        // connections a context holds, launches keep theirs.
        let fds = match state.admit_descriptors() {
            Ok(fds) => fds,
            Err(refusal) => {
                if let Some(more) = no_descriptors.should_log() {
                    tracing::warn!(
                        "egress proxy of {}: closing a new connection: {refusal}{more}",
                        state.context
                    );
                }
                refuse_early(&state, refusal);
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            serve(stream, &state).await;
            drop(fds);
            drop(permit);
        });
    }
}

/// The audit line of a connection closed at accept for want of descriptors: before its
/// handshake, so without a name; metered like any refusal.
fn refuse_early(state: &State, refusal: EgressRefusal) {
    state.record(&Attempt {
        launch: None,
        via: "accept",
        host: Vec::new(),
        port: 0,
        allowed: false,
        reason: Some(refusal.to_string()),
        error: None,
        address: None,
        bytes_up: 0,
        bytes_down: 0,
        started: Instant::now(),
    });
}

/// One client connection: handshake (bounded in time and size), decision, connection,
/// relay, audit line.
async fn serve(mut client: TcpStream, state: &State) {
    let started = Instant::now();
    // From the start: a reload while the client is still in its handshake, or while its
    // destination is dialled, is seen once the relay begins.
    let mut rules = state.rules();
    let _ = client.set_nodelay(true);
    let handshake = tokio::select! {
        h = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut client, state)) => h,
        () = state.stopping() => return,
    };
    // A client that never said where to go made no attempt to log; it is just closed.
    let Ok(Some(head)) = handshake else { return };
    let req = match head {
        Head::Request(req) => req,
        // Refused for its form, yet it named where it meant to go: a probe of a denied
        // name must not go unlogged by adding a malformed header. Logged, then answered,
        // outside the handshake's deadline, which a late head's answer ran into.
        Head::Refused {
            status,
            text,
            named,
        } => {
            if let Some(named) = named {
                state.record(&Attempt {
                    launch: named.launch,
                    via: named.via,
                    host: named.host,
                    port: named.port,
                    allowed: false,
                    reason: Some(named.reason),
                    error: None,
                    address: None,
                    bytes_up: 0,
                    bytes_down: 0,
                    started,
                });
            }
            tokio::select! {
                _ = http::error(&mut client, status, &text) => {}
                () = state.stopping() => {}
            }
            return;
        }
    };
    let via = match req.kind {
        Kind::Connect { .. } => "connect",
        Kind::Forward { .. } => "http",
        Kind::Socks => "socks5",
    };
    let mut attempt = Attempt {
        launch: req.launch,
        via,
        host: req.host.clone(),
        port: req.port,
        allowed: false,
        reason: None,
        error: None,
        address: None,
        bytes_up: 0,
        bytes_down: 0,
        started,
    };
    let rule = super::current(&mut rules);
    let target = Target::parse(&req.host).and_then(|t| rule.check(&t, req.port).map(|()| t));
    let target = match target {
        Ok(t) => t,
        Err(refusal) => {
            attempt.reason = Some(refusal.to_string());
            tell(
                &mut client,
                &req.kind,
                Outcome::Denied,
                &explain(state, &req, &refusal),
            )
            .await;
            return state.record(&attempt);
        }
    };
    let dialled = tokio::select! {
        d = dial::connect(&rule, &target, req.port, &state.lookups, &state.dials) => d,
        () = state.stopping() => {
            attempt.allowed = true;
            attempt.error = Some(STOPPED.into());
            return state.record(&attempt);
        }
    };
    let upstream = match dialled {
        Ok(u) => u,
        Err(e) => {
            let outcome = e.outcome();
            match outcome {
                Outcome::Denied => attempt.reason = Some(e.to_string()),
                _ => {
                    attempt.allowed = true;
                    attempt.error = Some(e.to_string());
                }
            }
            let message = format!(
                "ctx: {}:{} from context {}: {e}\n",
                String::from_utf8_lossy(&req.host),
                req.port,
                state.context
            );
            tell(&mut client, &req.kind, outcome, &message).await;
            return state.record(&attempt);
        }
    };
    attempt.allowed = true;
    attempt.address = upstream.peer_addr().ok();
    let (buffers, _share) = state.buffer_share();
    dial::set_buffers(&upstream, buffers.destination);
    dial::set_buffers(&client, buffers.client);
    let first: &[u8] = match &req.kind {
        Kind::Connect { early } => {
            if client.write_all(http::ESTABLISHED).await.is_err() {
                return state.record(&attempt);
            }
            early
        }
        Kind::Forward { head } => head,
        Kind::Socks => {
            if socks::reply(&mut client, socks::SUCCEEDED).await.is_err() {
                return state.record(&attempt);
            }
            &[]
        }
    };
    let revoked = dial::revoked(rules, target, req.port, attempt.address);
    let ended = async {
        tokio::select! {
            why = revoked => why,
            () = state.stopping() => STOPPED.to_string(),
        }
    };
    let (up, down, error) = dial::relay(client, upstream, first, ended).await;
    attempt.bytes_up = up;
    attempt.bytes_down = down;
    attempt.error = error;
    state.record(&attempt);
}

/// Reads the client's request in whichever protocol it speaks; `None` when it gave up
/// or sent something else (after telling it so where the protocol has a way).
async fn handshake(client: &mut TcpStream, state: &State) -> Option<Head> {
    let mut first = [0u8; 1];
    if client.peek(&mut first).await.ok()? == 0 {
        return None;
    }
    if first[0] == SOCKS5 {
        socks::read_request(client, state).await.map(Head::Request)
    } else {
        http::read_request(client, state).await
    }
}

async fn tell(client: &mut TcpStream, kind: &Kind, outcome: Outcome, message: &str) {
    let _ = match kind {
        Kind::Socks => socks::reply(client, socks::code(outcome)).await,
        _ => http::error(client, http::status(outcome), message).await,
    };
}

fn explain(state: &State, req: &Request, refusal: &Refusal) -> String {
    format!(
        "ctx: context {} may not connect to {}:{}: {refusal}\n",
        state.context,
        String::from_utf8_lossy(&req.host),
        req.port
    )
}
