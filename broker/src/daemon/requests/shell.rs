//! `ctx sh`: bash in a session whose state is saved between commands.

use std::sync::Arc;

use ctx_protocol::{ErrorKind, FdSource, Reply, ShellRequest};

use super::authorize::authorize;
use super::launch::{launch, ShellLaunch, Via};
use crate::config::ShellEnv;
use crate::daemon::closer;
use crate::daemon::connection::Conn;
use crate::daemon::shell_state::{self, SessionError};
use crate::daemon::{Peer, Shared};

/// `ctx sh`: the request's command becomes bash running the script in the session's saved
/// state; commands of one session run one at a time.
pub async fn shell(shared: &Arc<Shared>, conn: &mut Conn, peer: &Peer, sh: ShellRequest) {
    let label = vec![
        serde_bytes::ByteBuf::from(b"ctx-sh".to_vec()),
        serde_bytes::ByteBuf::from(sh.session.clone().into_bytes()),
        serde_bytes::ByteBuf::from(
            sh.script
                .as_ref()
                .map(|s| s.to_vec())
                .unwrap_or_else(|| b"(interactive)".to_vec()),
        ),
    ];
    let Some(ctx) = authorize(shared, conn, peer, &sh.exec.context, &label).await else {
        return;
    };
    // Unlinks (`--reset`) and renames in a directory the context's uid owns, whose files it
    // chose: on a closer thread, among that uid's jobs (see `closer::run`).
    let owner = Some(ctx.user.uid);
    let prepared = {
        let (state_dir, ctx, name) = (shared.state_dir.clone(), ctx.clone(), sh.session.clone());
        closer::run(owner, move || {
            shell_state::prepare(&state_dir, &ctx, &name, sh.reset)
        })
        .await
    };
    let session = match prepared.unwrap_or(Err(SessionError::Unrun)) {
        Ok(s) => s,
        Err(e) => {
            let kind = if matches!(e, SessionError::BadName(_)) {
                ErrorKind::BadRequest
            } else {
                ErrorKind::Internal
            };
            let _ = conn
                .send(&Reply::Error {
                    kind,
                    message: e.to_string().into(),
                })
                .await;
            return;
        }
    };
    let lock = shared.sessions.get(&ctx.name, &sh.session);
    let serialised = lock.lock_owned().await;
    let mut req = sh.exec;
    let share_env = ctx.shell_env == ShellEnv::Shared && sh.session == "default";
    let program: &[u8] = match &sh.script {
        Some(script) => {
            req.argv = shell_state::script_argv(session.state(), script, share_env);
            b"/bin/bash"
        }
        None if sh.reset => {
            // Reset alone: the state is gone; report success the usual way.
            req.argv = vec![serde_bytes::ByteBuf::from(b"true".to_vec())];
            b"/bin/true"
        }
        None => {
            if !req.fds.iter().any(|s| s.source == FdSource::Pty) {
                let message = "an interactive session needs a terminal: give a script, or run ctx sh from a terminal (or with -t)";
                let _ = conn
                    .send(&Reply::Error {
                        kind: ErrorKind::BadRequest,
                        message: message.into(),
                    })
                    .await;
                return;
            }
            let argv = closer::run(owner, move || {
                shell_state::interactive_argv(&session, share_env)
            })
            .await;
            match argv.unwrap_or(Err(SessionError::Unrun)) {
                Ok((argv, env)) => {
                    req.argv = argv;
                    req.set_env
                        .extend(env.into_iter().map(serde_bytes::ByteBuf::from));
                }
                Err(e) => {
                    let _ = conn
                        .send(&Reply::Error {
                            kind: ErrorKind::Internal,
                            message: e.to_string().into(),
                        })
                        .await;
                    return;
                }
            }
            b"/bin/bash"
        }
    };
    req.program = Some(serde_bytes::ByteBuf::from(program.to_vec()));
    req.search_path = None;
    launch(
        shared,
        conn,
        peer,
        &ctx,
        Via::Shell,
        req,
        Some(ShellLaunch {
            label,
            session: serialised,
        }),
    )
    .await
}
