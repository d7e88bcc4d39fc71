//! Code the preloaded library and the shim both run: everything on the way from "a launch
//! was asked for" to "the broker said started/failed". It is written for the hook path's
//! rules (no heap, no locks, no stdio, no panics), which the shim simply inherits.

pub mod conn;
pub mod ending;
pub mod fds;
pub mod sys;
pub mod wire;

/// The shim's one environment variable when it is attached to an accepted launch:
/// `<sock>,<pty-mask>,<launcher-pid>,<comm>` (see `exec::ShimLaunch`).
pub const ATTACH_VAR: &str = ctx_protocol::vars::SHIM_ATTACH;
