//! One peer connection: bounded handshake, authentication, and dispatch of its request.

use std::sync::Arc;
use std::time::Duration;

use ctx_protocol::fdpass::MAX_FDS;
use ctx_protocol::frame::decode;
use ctx_protocol::{ClientKind, ErrorKind, Hello, Reply, Request, MAGIC, PROTOCOL_VERSION};
use tokio::net::UnixStream;

use super::admission::{Admission, OverBudget};
use super::connection::{Conn, WireError};
use super::quiet_log::Quiet;
use super::{requests, Peer, Shared};

/// A peer has this long to send its hello and request before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Of that, what is left to answer a request still waiting for room for its descriptors:
/// it is then refused with the bound that held it, not dropped unanswered.
const ROOM_ANSWER: Duration = Duration::from_millis(500);
/// Largest hello payload: magic, version and client kind take a dozen bytes; anything near
/// this is not a ctx client and need not be buffered.
const HELLO_MAX: usize = 256;

/// Serves one connection, holding its `admission` (its share of its uid's bounds) until it
/// closes.
pub async fn serve(shared: Arc<Shared>, stream: UnixStream, peer: Peer, admission: Admission) {
    let mut conn = Conn::new(stream, admission);
    conn.wait_for_room_until(tokio::time::Instant::now() + HANDSHAKE_TIMEOUT - ROOM_ANSWER);
    // The wait for a turn counts in the deadline: past it, a connection queued behind its
    // uid's stalled handshakes is dropped like one that stalled itself.
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        conn.handshake_turn().await;
        handshake(&mut conn).await
    })
    .await;
    let (client, request) = match first {
        Ok(Ok(v)) => v,
        Ok(Err(message)) => {
            // Not held while the refusal is answered.
            drop(conn.take_fds());
            if let Some(more) = handshake_failures() {
                tracing::info!(
                    pid = peer.pid,
                    uid = peer.uid,
                    "refused connection: {message}{more}"
                );
            }
            let (kind, message) = if let Some(why) = message.strip_prefix(BUSY) {
                (ErrorKind::Busy, why.to_string())
            } else if message.contains("version") {
                (ErrorKind::VersionMismatch, message)
            } else {
                (ErrorKind::BadRequest, message)
            };
            // One write for both: `ctx` looks for a `Busy` refusal only in what arrives
            // with the greeting (a launch's next reply may be long in coming), and read
            // apart, a burst's `Busy` ended the launch instead of trying again.
            let _ = conn.hold(&hello());
            let _ = conn
                .send(&Reply::Error {
                    kind,
                    message: message.into(),
                })
                .await;
            return;
        }
        Err(_) => {
            if let Some(more) = handshake_failures() {
                tracing::info!(pid = peer.pid, uid = peer.uid, "handshake timed out{more}");
            }
            return;
        }
    };
    // The interposer's hook reads the greeting and then the verdict: sent together, they
    // wake it once. Every exec path answers (Accepted, Started, ExecFailed or Error).
    let greeted = if client == ClientKind::Interposer && matches!(request, Request::Exec(_)) {
        conn.hold(&hello()).is_ok()
    } else {
        conn.send(&hello()).await.is_ok()
    };
    if !greeted {
        return;
    }
    match request {
        // Boxed: a launch's future is large (its relay loop), and tokio copies the
        // connection task's future by value when it spawns and polls it.
        Request::Exec(req) => {
            Box::pin(requests::exec::run(&shared, &mut conn, &peer, client, req)).await
        }
        Request::Shell(sh) => Box::pin(requests::shell::shell(&shared, &mut conn, &peer, sh)).await,
        Request::Status => {
            let report = requests::status::status(&shared);
            answer(&shared, &mut conn, &Reply::Status(report)).await;
        }
        Request::Contexts => {
            let list = requests::contexts::contexts(&shared, &peer);
            answer(&shared, &mut conn, &Reply::Contexts(list)).await;
        }
        Request::Reload => {
            let reply = requests::reload::reload_request(&shared, &peer).await;
            answer(&shared, &mut conn, &reply).await;
        }
        Request::Ps => {
            let list = requests::ps::ps(&shared, &peer);
            answer(&shared, &mut conn, &Reply::Processes(list)).await;
        }
        Request::Kill { target, signo } => {
            let reply = requests::kill::kill(&shared, &peer, &target, signo);
            answer(&shared, &mut conn, &reply).await;
        }
        _ => {
            let message =
                "expected Exec, Status, Contexts, Reload, Ps or Kill as the first request";
            let _ = conn
                .send(&Reply::Error {
                    kind: ErrorKind::BadRequest,
                    message: message.into(),
                })
                .await;
        }
    }
}

/// Sends an operator request's reply, which may be larger than the socket takes: a
/// client that does not read it holds its connection only until a little after the broker
/// began to shut down (the broker's exit waits for every connection).
async fn answer(shared: &Shared, conn: &mut Conn, reply: &Reply<'_>) {
    let grace = requests::shutdown_grace(shared.shutdown_rx.clone());
    let _ = conn.send_before(reply, grace).await;
}

/// Whether to log this failed handshake (one line a second across all peers: a flood of
/// them must not fill the log), with the count of the ones left out.
fn handshake_failures() -> Option<String> {
    static QUIET: std::sync::Mutex<Quiet> = std::sync::Mutex::new(Quiet::new());
    QUIET.lock().unwrap_or_else(|e| e.into_inner()).should_log()
}

fn hello() -> Reply<'static> {
    Reply::Hello {
        version: PROTOCOL_VERSION,
        software: concat!("ctx-broker ", env!("CARGO_PKG_VERSION")).into(),
    }
}

/// Marks a refusal for room the uid's own other connections hold and give back as their
/// launches go on: told as `Busy`, the caller connects again a moment later.
const BUSY: &str = "busy: ";

async fn handshake(conn: &mut Conn) -> Result<(ClientKind, Request), String> {
    conn.limit_frames(HELLO_MAX);
    let payload = match conn.read_frame().await {
        Ok(Some(p)) => p,
        Ok(None) => return Err("connection closed before the hello".into()),
        Err(e) => return Err(format!("bad hello frame: {e}")),
    };
    let hello: Hello = decode(&payload).map_err(|e| format!("not a ctx hello ({e})"))?;
    if hello.magic != MAGIC {
        return Err("not a ctx client (bad magic)".into());
    }
    if hello.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version mismatch: client speaks {}, broker speaks {PROTOCOL_VERSION}; \
             use a ctx, interposer and broker from the same release",
            hello.version
        ));
    }
    conn.limit_frames(ctx_protocol::frame::MAX_FRAME);
    let payload = match conn.read_frame().await {
        Ok(Some(p)) => p,
        Ok(None) => return Err("connection closed before the request".into()),
        // The uid's other handshakes give their room back within moments.
        Err(e @ WireError::OverBudget(OverBudget::Bytes(_))) => return Err(format!("{BUSY}{e}")),
        Err(e) => return Err(format!("bad request frame: {e}")),
    };
    let request: Request = decode(&payload).map_err(|e| format!("malformed request: {e}"))?;
    let launch = match &request {
        Request::Exec(e) => Some(e),
        Request::Shell(s) => Some(&s.exec),
        _ => None,
    };
    let limits = launch
        .and_then(|e| e.inherited.as_ref())
        .map_or(0, |i| i.rlimits.len());
    if limits > ctx_protocol::inherit::MAX_RLIMITS {
        return Err(format!(
            "{limits} carried resource limits (a process has {})",
            ctx_protocol::inherit::MAX_RLIMITS
        ));
    }
    let named = match &request {
        Request::Exec(e) => passed_slots(e),
        Request::Shell(s) => passed_slots(&s.exec),
        _ => 0,
    };
    if named == 0 && conn.pending_fds() > 0 {
        return Err("descriptors sent with a request that takes none".into());
    }
    if conn.pending_fds() > named {
        return Err(format!(
            "{} descriptors sent with a request that names {named}",
            conn.pending_fds()
        ));
    }
    if conn.pending_fds() == 0 && named > MAX_FDS {
        conn.receive_deferred_fds(named)
            .await
            .map_err(|e| format!("the request's {named} descriptors: {e}"))?;
    }
    // A launch holds its request (argv, environment), and the plan made of it, until its
    // program's exec: counted against what its uid may hold.
    let held = match &request {
        Request::Exec(e) => request_weight(e, payload.len()),
        Request::Shell(s) => request_weight(&s.exec, payload.len()),
        _ => 0,
    };
    drop(payload);
    if !conn.handshake_done(held) {
        return Err(format!(
            "{BUSY}the running launches of this uid hold all the room the broker keeps for \
             it until their programs start"
        ));
    }
    Ok((hello.client, request))
}

/// What a launch's request will hold in the broker until its program's exec: its frame
/// twice (the decoded request, the plan's copies), and for each argument, variable,
/// descriptor slot and carried limit what an item costs beyond its bytes (a buffer's header and the
/// allocator's smallest block, in the request and again in the plan), which a frame of
/// empty arguments (one byte each) would otherwise hide (measured: about 38 bytes each).
fn request_weight(req: &ctx_protocol::ExecRequest, frame: usize) -> usize {
    const PER_ITEM: usize = 64;
    let inherited = req.inherited.as_ref().map_or(0, |i| i.rlimits.len());
    let items = req.argv.len() + req.env.len() + req.set_env.len() + req.fds.len() + inherited;
    2 * frame + PER_ITEM * items
}

/// How many descriptors a launch request says it sends (its `Passed` slots, and its
/// cwd's when it carries one).
fn passed_slots(req: &ctx_protocol::ExecRequest) -> usize {
    req.fds
        .iter()
        .filter(|s| s.source == ctx_protocol::FdSource::Passed)
        .count()
        + usize::from(req.inherited.as_ref().is_some_and(|i| i.cwd_fd))
}
