//! Whether a peer may launch into the context it names; refusals are answered and audited.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ctx_protocol::{ErrorKind, Reply};

use super::caller;
use crate::audit_event::AuditEvent;
use crate::config::Context;
use crate::daemon::connection::Conn;
use crate::daemon::{audit, Peer, Shared};

/// Looks the context up and applies its `allow` rule; refusals are answered and audited.
pub(super) async fn authorize(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    peer: &Peer,
    name: &str,
    argv: &[serde_bytes::ByteBuf],
) -> Option<Arc<Context>> {
    let config = shared.config();
    let Some(ctx) = config.contexts.get(name).cloned() else {
        // The name is the caller's own, of any length: bounded like its argv.
        let event = AuditEvent::Refused {
            reason: "unknown context".into(),
            caller: caller(peer),
            context: Some(audit::lossless(name.as_bytes(), audit::NAME_KEEP).into()),
            argv: Some(audit::argv(argv)),
            ids: None,
            signal: None,
        };
        shared
            .audit
            .record_refusal(super::audit_charge(peer), event);
        let message = format!(
            "no context named {:?} (known: {})",
            name,
            config
                .contexts
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = conn
            .send(&Reply::Error {
                kind: ErrorKind::UnknownContext,
                message: message.into(),
            })
            .await;
        return None;
    };
    // The identity was pinned at connect; a peer gone since has nobody left to serve.
    if !ctx.allows_peer(peer) || !peer.still_there().await {
        let event = AuditEvent::Refused {
            reason: "not allowed".into(),
            caller: caller(peer),
            context: Some(ctx.name.clone().into()),
            argv: Some(audit::argv(argv)),
            ids: None,
            signal: None,
        };
        shared
            .audit
            .record_refusal(super::audit_charge(peer), event);
        let message = match &ctx.route_children_to {
            Some(route) if ctx.enforces_routing() && peer.runs_in() == Some(&ctx.name) => {
                format!(
                    "{} (pid {}) runs in context {:?}, which enforces its routing: its \
                     processes launch only into {route:?}",
                    super::who(peer),
                    peer.pid,
                    ctx.name
                )
            }
            Some(_) if ctx.enforces_routing() && peer.in_a_context() => format!(
                "{} (pid {}) runs in context {}; context {:?} enforces its routing and lets \
                 in processes of a context only where its allow.contexts names it (it names \
                 {:?})",
                super::who(peer),
                peer.pid,
                peer.runs_in()
                    .map_or("unknown".to_string(), |c| format!("{c:?}")),
                ctx.name,
                ctx.allow.contexts
            ),
            _ => format!(
                "{} (pid {}) may not enter context {:?}; its allow rule is {}",
                super::who(peer),
                peer.pid,
                ctx.name,
                describe_allow(&ctx)
            ),
        };
        let _ = conn
            .send(&Reply::Error {
                kind: ErrorKind::Refused,
                message: message.into(),
            })
            .await;
        return None;
    }
    if shared.shutting_down.load(Ordering::Relaxed) {
        let _ = conn
            .send(&Reply::Error {
                kind: ErrorKind::ShuttingDown,
                message: "the broker is shutting down".into(),
            })
            .await;
        return None;
    }
    Some(ctx)
}

fn describe_allow(ctx: &Context) -> String {
    let a = &ctx.allow;
    if a.is_default {
        return format!(
            "the default (root outside every context, and uid {})",
            ctx.user.uid
        );
    }
    format!(
        "uids {:?}, gids {:?}, contexts {:?}",
        a.uids, a.gids, a.contexts
    )
}
