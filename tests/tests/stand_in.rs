//! The session leader stand-in of a terminal launch (`ctx-shim --session-leader`) that
//! ends before the broker has taken the program's pidfd from it (its exec failed, it was
//! killed): in a `pid = true` context the launch is reported as failed ("cannot fork"), yet
//! the program was started and is left running, in no `ctx ps`, under no timeout, and
//! neither it nor the stand-in is ever reaped (zombies of the broker).

use std::process::{Command, Stdio};
use std::time::Duration;

use ctx_tests::{bin, poll, require_root, TempDir};

fn children_of(pid: u32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else { continue };
        let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
        if rest.get(1).and_then(|s| s.parse::<u32>().ok()) == Some(pid) {
            out.push((p, format!("{} {}", rest[0], &stat[stat.find('(').unwrap()..=close])));
        }
    }
    out
}

#[test]
fn a_stand_in_that_dies_early_leaves_no_untracked_program_and_no_zombies() {
    require_root();
    let dir = TempDir::new();
    // The broker finds ctx-shim beside the interposer library: put one there whose exec
    // fails (a script cannot be exec'd from an O_CLOEXEC descriptor), as a stand-in that
    // dies before the broker reads its descriptor table.
    let lib = dir.subdir("lib", 0o755);
    std::fs::copy(bin("libctx_interposer.so"), lib.join("libctx_interposer.so")).unwrap();
    dir.file("lib/ctx-shim", b"#!/bin/sh\nexit 2\n", 0o755);
    let config = dir.file(
        "contexts.toml",
        br#"[contexts.ns]
user = "nobody"
cwd = "/"
allow = { uids = [0] }
isolation = { pid = true }
"#,
        0o644,
    );
    let socket = dir.path().join("broker.sock");
    let mut broker = Command::new(bin("ctx-broker"))
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .env("CTX_INTERPOSER", lib.join("libctx_interposer.so"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(poll(Duration::from_secs(10), || socket.exists().then_some(())).is_some());
    std::thread::sleep(Duration::from_millis(300));
    let marker = format!("stand-in-marker-{}", std::process::id());
    // The caller ignores SIGHUP (nohup), so the program does too and survives the
    // stand-in's exit.
    let script = format!(
        "trap '' HUP; {} --socket {} exec -t --context ns -- /bin/sh -c 'sleep 3; true {marker}'; echo rc=$?",
        bin("ctx").display(),
        socket.display()
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
    let kids = children_of(broker.id());
    eprintln!("broker's children: {kids:?}");
    let running_untracked = ctx_tests::pids_with_arg(&marker);
    let zombies: Vec<_> = kids.iter().filter(|(_, s)| s.starts_with('Z')).collect();
    let _ = broker.kill();
    let _ = broker.wait();
    for p in &running_untracked {
        // SAFETY: plain syscall on a test leftover.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    if text.contains("cannot fork") {
        assert!(
            running_untracked.is_empty(),
            "the launch was reported failed, yet its program runs on: {running_untracked:?}"
        );
    }
    assert!(zombies.is_empty(), "the broker leaves zombies: {zombies:?}");
}
