//! What the isolation tests (`tests/isolation_*.rs`) share: the configs more than one of
//! them starts a broker on, and routed processes to aim at.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use crate::{pids_with_arg, poll, proc_uid, unique, Broker, ALICE};

/// `pidctx` (ctx-alice, own PID namespace), `pidctx2` (another one), `plain` (ctx-alice, no
/// isolation), `netctx` (loopback only).
pub fn isolation_config() -> String {
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.pidctx]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ pid = true }}

[contexts.pidctx2]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ pid = true }}

[contexts.plain]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}

[contexts.netctx]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ network = "none" }}
"#
    )
}

/// `fs` (ctx-alice): reads everything, writes only `rw`, nothing in `secret`, signals
/// scoped; `plain` (ctx-alice, no rules). Paths are in `dir`, whose files are all
/// world-readable and writable: only Landlock stands in the way.
pub fn landlock_config(dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.fs]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ read_only = ["/"], read_write = ["{d}/rw"], no_access = ["{d}/secret"], signals = "scoped" }}

[contexts.plain]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
"#
    )
}

/// A `sleep` whose argument no other process has.
pub fn marked_sleep() -> String {
    let n = unique("").replace('x', "");
    format!("1000.{}", &n[n.len().saturating_sub(12)..])
}

/// Starts `ctx exec --context CONTEXT -- sleep MARKER` in the background and waits until the
/// sleep runs.
pub fn background_sleep(b: &Broker, context: &str, marker: &str) -> std::process::Child {
    let child = b
        .exec_cmd(context, &["sleep", marker])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ctx exec");
    routed_pid(marker);
    child
}

/// The pid of the routed process (not the root `ctx exec` client) whose argv holds
/// `marker`, once it runs.
pub fn routed_pid(marker: &str) -> i32 {
    poll(Duration::from_secs(10), || {
        pids_with_arg(marker)
            .into_iter()
            .find(|p| proc_uid(*p).is_some_and(|u| u != 0))
    })
    .unwrap_or_else(|| panic!("sleep {marker} did not start"))
}

/// Kills and reaps a `ctx exec` started by [`background_sleep`].
pub fn stop(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Two TCP ports free on this machine right now.
pub fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("0.0.0.0:0").unwrap();
    let b = TcpListener::bind("0.0.0.0:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}
