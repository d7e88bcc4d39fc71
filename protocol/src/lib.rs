//! The ctx wire protocol: the messages the broker, the `ctx` CLI, the interposer and the
//! shim exchange over the broker's Unix stream socket, how they are framed, and how the
//! caller's file descriptors travel with them (`SCM_RIGHTS`).
//!
//! A connection starts with the client's [`Hello`] frame, immediately followed (no round
//! trip) by one [`Request`]. The broker answers with [`Reply::Hello`] and then the replies to
//! that request. A launch with more descriptors than one `SCM_RIGHTS` message carries
//! ([`fdpass::MAX_FDS`]) sends its request without them: the broker answers
//! [`Reply::SendDescriptors`] once it has room for them all, and the client then sends
//! them in a frame of their own; unread requests thus never hold a caller's descriptors in
//! flight, which the kernel bounds per user. Message enums are append-only: a new variant goes at the end, so that the
//! variant numbers older peers know keep their meaning. [`PROTOCOL_VERSION`] changes when an
//! existing message changes shape.

pub mod fdpass;
pub mod frame;
pub mod inherit;
pub mod launcher;
pub mod linger;
pub mod messages;
pub mod pidfs;
pub mod sigaction;
pub mod terminal;
pub mod vars;

/// Where the broker listens, and where its clients look, unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ctx/broker.sock";

pub use frame::{FrameError, FRAME_HEADER, MAX_FRAME};
pub use inherit::{Captured, Inherited, Rlimit};
pub use messages::*;
