//! `ctx exec` and the interposer's launches: the program is the request's own.

use std::sync::Arc;

use ctx_protocol::{ClientKind, ExecRequest};

use super::authorize::authorize;
use super::launch::{launch, Via};
use crate::daemon::connection::Conn;
use crate::daemon::{Peer, Shared};

pub async fn run(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    peer: &Peer,
    client: ClientKind,
    req: ExecRequest,
) {
    let Some(ctx) = authorize(shared, conn, peer, &req.context, &req.argv).await else {
        return;
    };
    let via = match client {
        ClientKind::Cli => Via::Cli,
        ClientKind::Interposer => Via::Interposer,
    };
    launch(shared, conn, peer, &ctx, via, req, None).await
}
