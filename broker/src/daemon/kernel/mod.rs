//! The kernel's mechanisms a context is isolated by, each held by the broker for the
//! contexts that use it:
//!
//! - [`namespaces`]: each context's long-lived PID/mount/network namespaces;
//! - [`cgroups`]: each context's cgroup (limits, and all its processes for `ctx kill`);
//! - [`landlock`]: each context's Landlock ruleset (filesystem rules, signal scoping), and
//!   what this kernel's Landlock ABI enforces of them ([`landlock::probe`]);
//! - [`seccomp`]: the filters a launch's child installs (BPF, per ABI);
//! - [`supervisor`]: the exec guard, `enforce`'s seccomp half: exec attempts refused and
//!   audited; it also relays signals to the parent;
//! - [`ports`]: the reserved ports the broker holds and hands to their owners.

pub mod cgroups;
pub mod landlock;
pub mod namespaces;
pub mod ports;
pub mod seccomp;
pub mod supervisor;
