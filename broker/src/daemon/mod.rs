//! The broker daemon.
