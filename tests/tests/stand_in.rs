//! The session leader stand-in of a terminal launch (`ctx-shim --session-leader`) that is
//! not what it should be: a script (refused when the broker starts: terminal launches then
//! lead their own session), or an ELF that ends at once (it hands the program's pidfd over
//! before its exec, so the launch is still the broker's). Either way, in a `pid = true`
//! context, the program runs as a tracked launch to its end, and nothing is left running
//! untracked or unreaped.

use std::process::{Command, Stdio};
use std::time::Duration;

use ctx_tests::{bin, require_root, Broker, TempDir};

fn children_of(pid: u32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
        if rest.get(1).and_then(|s| s.parse::<u32>().ok()) == Some(pid) {
            out.push((
                p,
                format!("{} {}", rest[0], &stat[stat.find('(').unwrap()..=close]),
            ));
        }
    }
    out
}

#[test]
fn a_script_in_place_of_the_stand_in_is_refused_and_launches_still_run() {
    let log = stand_in_that_fails(b"#!/bin/sh\nexit 2\n");
    assert!(log.contains("not an ELF executable"), "{log}");
}

#[test]
fn a_stand_in_that_ends_at_once_leaves_no_untracked_program_and_no_zombies() {
    let log = stand_in_that_fails(&std::fs::read("/bin/true").unwrap());
    assert!(!log.contains("ctx-shim"), "{log}");
}

/// Runs a launch at a terminal in a `pid = true` context with `shim` as the stand-in;
/// returns what the broker logged.
fn stand_in_that_fails(shim: &[u8]) -> String {
    require_root();
    // The broker finds ctx-shim beside the interposer library (`CTX_INTERPOSER`): put the
    // one under test there.
    let dir = TempDir::new();
    let lib = dir.subdir("lib", 0o755);
    std::fs::copy(
        bin("libctx_interposer.so"),
        lib.join("libctx_interposer.so"),
    )
    .unwrap();
    dir.file("lib/ctx-shim", shim, 0o755);
    let interposer = lib.join("libctx_interposer.so");
    let broker = Broker::start_with_env(
        r#"[contexts.ns]
user = "nobody"
cwd = "/"
allow = { uids = [0] }
isolation = { pid = true }
"#,
        &[("CTX_INTERPOSER", &interposer)],
    );
    let marker = format!("stand-in-marker-{}", std::process::id());
    // The caller ignores SIGHUP (nohup), so the program does too and survives the
    // stand-in's exit.
    let script = format!(
        "trap '' HUP; {} --socket {} exec -t --context ns -- /bin/sh -c 'sleep 3; true {marker}'; echo rc=$?",
        bin("ctx").display(),
        broker.socket().display()
    );
    let out = Command::new("script")
        .args(["-qec", &script, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("caller saw: {text:?}");
    std::thread::sleep(Duration::from_millis(500));
    // Every process of the broker's making is its child; what is left of this launch:
    let kids = children_of(broker.pid());
    eprintln!("broker's children: {kids:?}");
    let running_untracked = ctx_tests::pids_with_arg(&marker);
    let zombies: Vec<_> = kids.iter().filter(|(_, s)| s.starts_with('Z')).collect();
    let log = broker.stderr();
    drop(broker);
    for p in &running_untracked {
        // SAFETY: plain syscall on a test leftover.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    assert!(
        running_untracked.is_empty(),
        "the program runs on after its launch: {running_untracked:?}"
    );
    assert!(zombies.is_empty(), "the broker leaves zombies: {zombies:?}");
    // The program ignores the hangup, runs to its end, and its status comes back.
    assert!(text.contains("rc=0"), "{text:?}");
    log
}
