//! `ctx-hookpath`: the code `libctx_route.so`'s hooks and `ctx-shim` both run, everything
//! on the way from "a launch was asked for" to "the broker said started/failed" and on to
//! the routed program's end. All of it keeps the hook path's rules (no heap, no locks, no
//! stdio, no panics: the exec hook may run it in a vfork child), which the shim simply
//! inherits. Its own crate so that each of the two links only what it calls, and so that
//! its tests run here (the shim has no test harness).
//!
//! The small functions the hooks and the relay call are `#[inline]`: across the crate
//! boundary they would otherwise stay calls (there is no LTO), and they were inlined while
//! this code was a module of each binary.

pub mod conn;
pub mod ending;
pub mod fds;
pub mod sys;
pub mod wire;

/// The shim's one environment variable when it is attached to an accepted launch:
/// `<sock>,<pty-mask>,<launcher-pid>,<comm>` (see the library's `exec::ShimLaunch`).
pub const ATTACH_VAR: &str = ctx_protocol::vars::SHIM_ATTACH;
