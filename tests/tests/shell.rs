//! `ctx sh`: persistent shell sessions per context and per named session.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ctx_tests::*;

fn sh(b: &Broker, context: &str, script: &str) -> Output {
    run(&mut b.ctx(["sh", "--context", context, script]))
}

fn sh_in(b: &Broker, context: &str, session: &str, script: &str) -> Output {
    run(&mut b.ctx(["sh", "--context", context, "--session", session, script]))
}

#[test]
fn seed_scenario_cwd_and_exports_persist() {
    let b = Broker::start(&standard_config());
    assert_eq!(sh(&b, "alice", "cd /tmp && export MY_VAR=hello").ok(), "");
    assert_eq!(sh(&b, "alice", "pwd").ok(), "/tmp\n");
    assert_eq!(sh(&b, "alice", "echo $MY_VAR").ok(), "hello\n");
    // The variable is exported, not just a shell variable.
    assert_eq!(sh(&b, "alice", "printenv MY_VAR").ok(), "hello\n");
}

#[test]
fn functions_aliases_options_unset_and_shell_variables_persist() {
    let b = Broker::start(&standard_config());
    sh(&b, "alice", "greet() { echo \"hi $1\"; }; alias say='echo said'; set -o pipefail; shopt -s extglob; LOCAL_ONLY=42; unset CONTEXT_SECRET").ok();
    assert_eq!(sh(&b, "alice", "greet bob").ok(), "hi bob\n");
    assert_eq!(sh(&b, "alice", "say it").ok(), "said it\n");
    assert_eq!(sh(&b, "alice", "[[ -o pipefail ]] && echo on").ok(), "on\n");
    assert_eq!(sh(&b, "alice", "shopt -q extglob && echo on").ok(), "on\n");
    assert_eq!(
        sh(
            &b,
            "alice",
            "echo $LOCAL_ONLY; printenv LOCAL_ONLY || echo not-exported"
        )
        .ok(),
        "42\nnot-exported\n"
    );
    assert_eq!(
        sh(&b, "alice", "echo ${CONTEXT_SECRET-unset}").ok(),
        "unset\n"
    );
    // Undoing works too.
    sh(&b, "alice", "unset -f greet; unalias say; set +o pipefail").ok();
    assert_eq!(
        sh(
            &b,
            "alice",
            "type greet >/dev/null 2>&1 || echo gone; [[ -o pipefail ]] || echo off"
        )
        .ok(),
        "gone\noff\n"
    );
}

#[test]
fn sourcing_a_virtualenv_style_script_persists() {
    let b = Broker::start(&standard_config());
    let dir = b.dir().subdir("venv", 0o755);
    let activate = dir.join("activate");
    std::fs::write(
        &activate,
        format!(
            "export VIRTUAL_ENV={d}\nexport PATH=\"{d}/bin:$PATH\"\ndeactivate() {{ export PATH=\"${{PATH#{d}/bin:}}\"; unset VIRTUAL_ENV; unset -f deactivate; }}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&activate, std::fs::Permissions::from_mode(0o644)).unwrap();
    sh(&b, "alice", &format!("source {}", activate.display())).ok();
    assert_eq!(
        sh(&b, "alice", "echo $VIRTUAL_ENV").ok(),
        format!("{}\n", dir.display())
    );
    assert!(sh(&b, "alice", "echo $PATH")
        .ok()
        .starts_with(&format!("{}/bin:", dir.display())));
    sh(&b, "alice", "deactivate").ok();
    assert_eq!(
        sh(
            &b,
            "alice",
            "echo ${VIRTUAL_ENV-none}; type deactivate >/dev/null 2>&1 || echo no-fn"
        )
        .ok(),
        "none\nno-fn\n"
    );
}

#[test]
fn sessions_and_contexts_do_not_see_each_other() {
    let b = Broker::start(&standard_config());
    sh(&b, "alice", "export SHARED=default-session; cd /tmp").ok();
    assert_eq!(
        sh_in(&b, "alice", "other", "echo ${SHARED-none}").ok(),
        "none\n"
    );
    sh_in(&b, "alice", "other", "export SHARED=other-session").ok();
    assert_eq!(sh(&b, "alice", "echo $SHARED").ok(), "default-session\n");
    assert_eq!(
        sh_in(&b, "alice", "other", "echo $SHARED").ok(),
        "other-session\n"
    );
    assert_eq!(
        sh(&b, "bob", "echo ${SHARED-none}; echo $CONTEXT_SECRET").ok(),
        "none\nbob-key\n"
    );
    // Not shared with ctx exec either (shell state stays in the session).
    assert_eq!(
        b.exec("alice", &["sh", "-c", "echo ${SHARED-none}"]).ok(),
        "none\n"
    );
}

#[test]
fn the_session_starts_from_the_context_env_and_cwd() {
    let b = Broker::start(&standard_config());
    let out = run(b
        .ctx([
            "sh",
            "--context",
            "alice",
            "pwd; echo $CONTEXT_SECRET; id -un",
        ])
        .current_dir("/usr"));
    assert_eq!(out.ok(), format!("/usr\nalice-key\n{ALICE}\n"));
    let bob = user(BOB);
    assert_eq!(
        sh(&b, "bob", "pwd").ok(),
        format!("{}\n", bob.home.display())
    );
}

#[test]
fn exit_codes_are_exact_and_the_session_lives_on() {
    let b = Broker::start(&standard_config());
    sh(&b, "alice", "export KEEP=1").ok();
    assert_eq!(sh(&b, "alice", "export KEEP=2; exit 3").code(), 3);
    assert_eq!(sh(&b, "alice", "false").code(), 1);
    assert_eq!(sh(&b, "alice", "exit 255").code(), 255);
    // State of a command that exits with a code is kept (it completed).
    assert_eq!(sh(&b, "alice", "echo $KEEP").ok(), "2\n");
}

#[test]
fn a_killed_command_leaves_the_previous_state() {
    let b = Broker::start(&standard_config());
    sh(&b, "alice", "export STATE=old; cd /tmp").ok();
    let out = sh(&b, "alice", "export STATE=new; cd /; kill -KILL $$");
    assert_eq!(out.signal(), Some(libc::SIGKILL), "{}", out.show());
    assert_eq!(sh(&b, "alice", "echo $STATE; pwd").ok(), "old\n/tmp\n");
    let out = run(&mut b.ctx([
        "sh",
        "--context",
        "alice",
        "--timeout",
        "500ms",
        "export STATE=timed; sleep 30",
    ]));
    assert_eq!(out.code(), 124, "{}", out.show());
    assert_eq!(sh(&b, "alice", "echo $STATE").ok(), "old\n");
}

#[test]
fn output_is_byte_exact_and_never_parsed() {
    let b = Broker::start(&standard_config());
    let out = sh(
        &b,
        "alice",
        r#"printf '\000\001\377no newline'; printf '__CTX_END__ 0\n' >&2"#,
    );
    assert_eq!(out.code(), 0);
    assert_eq!(out.stdout, b"\x00\x01\xffno newline");
    assert_eq!(out.stderr, b"__CTX_END__ 0\n");
    let all: Vec<u8> = (0..=255u8).collect();
    let out = run_with(
        &mut b.ctx(["sh", "--context", "alice", "cat"]),
        Some(&all),
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.stdout, all);
    // xtrace in a session shows the user's commands, not the session machinery.
    sh(&b, "alice", "set -x").ok();
    let out = sh(&b, "alice", "echo traced");
    assert_eq!(out.stdout, b"traced\n");
    let err = out.stderr_str();
    assert!(
        err.contains("echo traced") && !err.contains("__ctx"),
        "stderr: {err}"
    );
}

#[test]
fn state_is_private_survives_a_restart_and_can_be_reset() {
    let mut b = Broker::start(&standard_config());
    let alice = user(ALICE);
    sh(&b, "alice", "cd /tmp; export SURVIVES=yes").ok();
    let dir = b.dir().path().join("state/shells/alice");
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (alice.uid, 0o700));
    let file = std::fs::metadata(dir.join("default.bash")).unwrap();
    assert_eq!((file.uid(), file.mode() & 0o777), (alice.uid, 0o600));
    // bob cannot read alice's session.
    let out = sh(&b, "bob", &format!("cat {}/default.bash", dir.display()));
    assert_ne!(out.code(), 0);
    assert!(!out.stdout_str().contains("SURVIVES"));

    b.restart();
    assert_eq!(sh(&b, "alice", "pwd; echo $SURVIVES").ok(), "/tmp\nyes\n");
    assert_eq!(
        run(&mut b.ctx(["sh", "--context", "alice", "--reset"])).code(),
        0
    );
    let out = run(b
        .ctx(["sh", "--context", "alice", "pwd; echo ${SURVIVES-reset}"])
        .current_dir("/usr"));
    assert_eq!(out.ok(), "/usr\nreset\n");
}

#[test]
fn two_commands_in_one_session_run_one_after_the_other() {
    let b = Broker::start(&standard_config());
    let started = Instant::now();
    let mut first = b
        .ctx([
            "sh",
            "--context",
            "alice",
            "sleep 1; export ORDER=first-done",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Queued behind the first: it sees the first's state and ends after it.
    let second = sh(&b, "alice", "echo $ORDER");
    assert_eq!(second.ok(), "first-done\n");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(first.wait().unwrap().success());
    // Another session is not held up.
    let t = Instant::now();
    let mut slow = b
        .ctx(["sh", "--context", "alice", "sleep 2"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sh_in(&b, "alice", "fast", "echo quick").ok(), "quick\n");
    assert!(
        t.elapsed() < Duration::from_millis(1800),
        "other session waited: {:?}",
        t.elapsed()
    );
    slow.wait().unwrap();
}

#[test]
fn signals_reach_the_command() {
    let b = Broker::start(&standard_config());
    let marker = unique("shsig");
    let mut child = b
        .ctx([
            "sh",
            "--context",
            "alice",
            &format!("exec sleep 300 # {marker}"),
        ])
        .spawn()
        .unwrap();
    assert!(poll(Duration::from_secs(5), || (!pids_with_arg(&marker)
        .is_empty())
    .then_some(()))
    .is_some());
    signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    let st = wait_deadline(&mut child, Duration::from_secs(5)).expect("ctx sh exits after SIGTERM");
    assert_eq!(st.signal(), Some(libc::SIGTERM));
}

#[test]
fn bad_session_names_are_refused() {
    let b = Broker::start(&standard_config());
    for bad in ["../x", "a/b", ""] {
        let out = run(&mut b.ctx(["sh", "--context", "alice", "--session", bad, "true"]));
        assert_eq!(out.code(), 125, "{bad:?}: {}", out.show());
        assert!(out.stderr_str().contains("session"), "{}", out.show());
    }
}

#[test]
fn interactive_session_at_a_terminal_persists_too() {
    let b = Broker::start(&standard_config());
    // A python pty plays the terminal: type two lines, exit with a code.
    let script = format!(
        r#"
import os, pty, select, time, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv({ctx:?}, ["ctx", "--socket", {sock:?}, "sh", "--context", "alice"])
def drain(t):
    end = time.time() + t; out = b""
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try: out += os.read(fd, 4096)
            except OSError: break
    return out
drain(1.0)
os.write(fd, b"cd /var && export INTER=typed && echo ok-$INTER\r")
out = drain(1.0)
os.write(fd, b"exit 4\r")
drain(1.0)
_, st = os.waitpid(pid, 0)
sys.stdout.write("%s %d" % ("ok-typed" in out.decode(errors="replace"), os.waitstatus_to_exitcode(st)))
"#,
        ctx = bin("ctx").display().to_string(),
        sock = b.socket().display().to_string()
    );
    let out = run(Command::new("python3").arg("-c").arg(script));
    assert_eq!(out.ok(), "True 4");
    assert_eq!(sh(&b, "alice", "pwd; echo $INTER").ok(), "/var\ntyped\n");
}

#[test]
fn shell_env_shared_makes_the_default_sessions_exports_visible_to_exec() {
    let config = format!(
        r#"[broker]
socket_mode = "0666"

[contexts.alice]
user = "{ALICE}"
env = {{ CONTEXT_SECRET = "alice-key", DROPPED = "x" }}
cwd = "inherit"
shell_env = "shared"
allow = {{ uids = [0] }}
"#
    );
    let b = Broker::start(&config);
    sh(
        &b,
        "alice",
        "export AWS_PROFILE=prod; unset DROPPED; LOCAL=1",
    )
    .ok();
    let out = b.exec(
        "alice",
        &[
            "sh",
            "-c",
            "echo $AWS_PROFILE ${DROPPED-unset} ${LOCAL-none} $CONTEXT_SECRET",
        ],
    );
    assert_eq!(out.ok(), "prod unset none alice-key\n");
    // Only the default session is shared.
    sh_in(&b, "alice", "side", "export SIDE=1").ok();
    assert_eq!(
        b.exec("alice", &["sh", "-c", "echo ${SIDE-none}"]).ok(),
        "none\n"
    );
    // A reset forgets it for exec too.
    run(&mut b.ctx(["sh", "--context", "alice", "--reset"]));
    assert_eq!(
        b.exec("alice", &["sh", "-c", "echo ${AWS_PROFILE-none}"])
            .ok(),
        "none\n"
    );
}

#[test]
fn a_save_cut_short_falls_back_to_the_last_complete_state() {
    let b = Broker::start(&standard_config());
    sh(&b, "alice", "export STEP=one").ok();
    sh(&b, "alice", "export STEP=two").ok();
    let dir = b.dir().path().join("state/shells/alice");
    // The second save went into the other slot; cut it as a kill mid-write would.
    let newest = ["default.bash", "default.bash.1"]
        .iter()
        .map(|n| dir.join(n))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap();
    let text = std::fs::read_to_string(&newest).unwrap();
    assert!(text.contains("STEP=\"two\""), "{text}");
    let cut = &text[..text.len() / 2];
    std::fs::write(&newest, cut).unwrap();
    assert_eq!(sh(&b, "alice", "echo $STEP").ok(), "one\n");
    // And the session goes on from there.
    sh(&b, "alice", "export STEP=three").ok();
    assert_eq!(sh(&b, "alice", "echo $STEP").ok(), "three\n");
}

/// A command queued behind its session's running one waits, possibly across a reload: it
/// runs under the configuration in force when it starts, not the one it was first checked
/// against. A changed environment applies to it, and a caller the reload no longer allows
/// is refused, with nothing run.
#[test]
fn a_command_queued_across_a_reload_runs_under_the_new_configuration() {
    let b = Broker::start(&standard_config());
    let queue = |script: &str| {
        b.ctx(["sh", "--context", "alice", "--session", "q", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let reload_with = |config: String| {
        std::fs::write(b.config_path(), config).unwrap();
        run(&mut b.ctx(["reload"])).ok();
    };
    // The context's secret changes while the command waits.
    let holder = queue("sleep 2");
    std::thread::sleep(Duration::from_millis(500));
    let queued = queue("echo secret=$CONTEXT_SECRET");
    std::thread::sleep(Duration::from_millis(500));
    reload_with(standard_config().replace("alice-key", "alice-key-2"));
    assert!(holder.wait_with_output().unwrap().status.success());
    let out = queued.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "secret=alice-key-2\n");

    // Root is no longer allowed into alice while the next one waits.
    let holder = queue("sleep 2");
    std::thread::sleep(Duration::from_millis(500));
    let marker = b.dir().path().join("ran");
    let queued = queue(&format!("touch {}", marker.display()));
    std::thread::sleep(Duration::from_millis(500));
    reload_with(
        standard_config()
            .replace("alice-key", "alice-key-2")
            .replacen("allow = { uids = [0] }", "allow = { uids = [4242] }", 1),
    );
    let _ = holder.wait_with_output();
    let out = queued.wait_with_output().unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not enter context"),
        "{out:?}"
    );
    assert!(!marker.exists(), "the refused command ran");
}
