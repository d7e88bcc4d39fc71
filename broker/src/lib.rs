//! ctx: named execution contexts. This crate holds the broker daemon (`ctx-broker`), the
//! operator and user CLI (`ctx`), and the `contexts.toml` model both read.
//!
//! - [`config`]: parsing and validating `contexts.toml` into resolved contexts;
//! - [`daemon`]: the tokio broker: socket, authentication, spawn path, PTYs, audit log;
//! - [`client`]: the `ctx` verbs, one module per verb;
//! - [`entrypoint`]: `ctx-broker --run-in`, the broker as a container's PID 1;
//! - [`stop`]: `ctx-broker --stop`, the brokers of this file stopped without a service
//!   manager (a package's removal);
//! - [`escape`]: untrusted text made safe for a terminal, losslessly;
//! - [`audit_event`]: the audit log's lines as types, written by the daemon and read by
//!   `ctx log`.

pub mod audit_event;
pub mod client;
pub mod config;
pub mod daemon;
pub mod entrypoint;
pub mod escape;
pub mod stop;
