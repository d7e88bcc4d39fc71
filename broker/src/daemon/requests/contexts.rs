//! `ctx contexts`: what each context is, for the peers that may enter it.

use ctx_protocol::ContextInfo;

use crate::daemon::{Peer, Shared};

/// The contexts this peer may enter (the operator sees all), with env values masked.
pub fn contexts(shared: &Shared, peer: &Peer) -> Vec<ContextInfo> {
    let config = shared.config();
    config
        .contexts
        .values()
        .filter(|c| super::is_operator(peer) || c.allows_peer(peer))
        .map(|c| ContextInfo {
            name: c.name.clone(),
            user: c.user.name.clone(),
            uid: c.user.uid,
            gid: c.user.gid,
            cwd: match &c.cwd {
                crate::config::CwdRule::Inherit => "inherit".into(),
                crate::config::CwdRule::Home => format!("{} (home)", c.user.home.display()),
                crate::config::CwdRule::Path(p) => p.display().to_string(),
            },
            env: c.masked_env(),
            inherit_env: c.inherit_env.clone(),
            allow: if c.allow.is_default {
                format!("root, uid {}", c.user.uid)
            } else {
                format!(
                    "uids {:?} gids {:?} contexts {:?}",
                    c.allow.uids, c.allow.gids, c.allow.contexts
                )
            },
            timeout_ms: c.timeout.map(|t| t.as_millis() as u64),
            rlimits: c
                .rlimits
                .iter()
                .map(|r| (r.name.to_string(), r.value))
                .collect(),
        })
        .collect()
}
