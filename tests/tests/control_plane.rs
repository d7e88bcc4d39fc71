//! The root broker attacked as a tool (SPEC 6, rules for the control plane): code running
//! in a context, or a local user allowed into no context, tries to make the broker open,
//! write, believe or suffer something on its behalf. Every test here is an attack that
//! must fail.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use ctx_tests::*;

/// A child killed and reaped when the test ends, passed or not.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `shared` (ctx-alice, `shell_env = "shared"`).
fn shared_config() -> String {
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.shared]
user = "{ALICE}"
cwd = "/"
shell_env = "shared"
allow = {{ uids = [0] }}
"#
    )
}

/// Runs an interactive `ctx sh --context CONTEXT` on a python-made terminal, types `line`
/// and `exit 3`; returns what the terminal showed and the exit code.
fn interactive_sh(b: &Broker, context: &str, line: &str) -> (String, i32) {
    let script = format!(
        r#"
import os, pty, select, time, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv({ctx:?}, ["ctx", "--socket", {sock:?}, "sh", "--context", {context:?}])
def drain(t):
    end = time.time() + t; out = b""
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try: out += os.read(fd, 4096)
            except OSError: break
    return out
out = drain(1.0)
os.write(fd, {line:?}.encode() + b"\r")
out += drain(1.0)
os.write(fd, b"exit 3\r")
out += drain(1.0)
_, st = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace") + "\n@@%d" % os.waitstatus_to_exitcode(st))
"#,
        ctx = bin("ctx").display().to_string(),
        sock = b.socket().display().to_string(),
    );
    let out = run(Command::new("python3").arg("-c").arg(script));
    let text = out.stdout_str();
    let (shown, code) = text.rsplit_once("\n@@").expect("the harness's exit line");
    (shown.to_string(), code.trim().parse().expect("exit code"))
}

/// Finding: the broker read `default.bash.env` as root, following symlinks, in a directory
/// the context's uid owns. Planted links to another process's environment and to a
/// root-only file, and a FIFO, must neither leak into the context nor hang the broker.
#[test]
fn a_shared_session_cannot_make_root_read_through_a_planted_link() {
    let b = Broker::start(&shared_config());
    let secret_file = b
        .dir()
        .file("root-only.env", b"FILE_SECRET=f1le-s3cret\n", 0o600);
    let marker = format!("1000.{}", std::process::id());
    let victim = Reaped(
        Command::new("sleep")
            .arg(&marker)
            .env("VICTIM_SECRET", "env-s3cret")
            .stdin(Stdio::null())
            .spawn()
            .expect("start the victim"),
    );
    // The session directory exists once the context used `ctx sh`.
    run(&mut b.ctx(["sh", "--context", "shared", "export LEGIT=1"])).ok();
    let dir = b.dir().path().join("state/shells/shared");
    let planted = dir.join("default.bash.env");
    let planted = planted.to_str().unwrap();
    assert_eq!(
        b.exec("shared", &["sh", "-c", "echo ${LEGIT-none}"]).ok(),
        "1\n",
        "the shared export itself works"
    );
    let environ = format!("/proc/{}/environ", victim.0.id());
    for target in [environ.as_str(), secret_file.to_str().unwrap()] {
        // The context's own code plants the link: it owns the directory.
        b.exec("shared", &["ln", "-sfn", target, planted]).ok();
        let out = b.exec("shared", &["env"]);
        let env = out.ok();
        assert!(
            !env.contains("env-s3cret") && !env.contains("f1le-s3cret"),
            "a link to {target} leaked into the context:\n{env}"
        );
    }
    b.exec(
        "shared",
        &["sh", "-c", &format!("rm -f {planted} && mkfifo {planted}")],
    )
    .ok();
    let out = run_with(
        &mut b.exec_cmd("shared", &["echo", "served"]),
        None,
        Duration::from_secs(15),
    );
    assert_eq!(out.ok(), "served\n", "a FIFO must not hang the broker");
    assert!(
        b.stderr().contains("ignoring"),
        "the broker says what it ignored:\n{}",
        b.stderr()
    );
}

/// Finding: an interactive `ctx sh` wrote `SESSION.rc` as root through whatever the
/// context planted at that name. A link to a root-owned file must leave the file intact.
#[test]
fn an_interactive_session_cannot_make_root_write_through_a_planted_link() {
    let b = Broker::start(&shared_config());
    let guarded = b.dir().subdir("guarded", 0o755);
    let victim = guarded.join("victim.conf");
    fs::write(&victim, "original\n").unwrap();
    let absent = guarded.join("created-by-root");
    run(&mut b.ctx(["sh", "--context", "shared", "true"])).ok();
    let dir = b.dir().path().join("state/shells/shared");
    for (target, name) in [(&victim, "default.rc"), (&absent, "default.rc")] {
        b.exec(
            "shared",
            &[
                "ln",
                "-sfn",
                target.to_str().unwrap(),
                dir.join(name).to_str().unwrap(),
            ],
        )
        .ok();
        let (shown, code) = interactive_sh(&b, "shared", "echo typed-$((6*7))");
        assert!(shown.contains("typed-42"), "the session works: {shown}");
        assert_eq!(code, 3, "{shown}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "original\n");
        assert!(!absent.exists(), "root created {}", absent.display());
    }
    // The rcfile is now a plain file in the session directory, not the link.
    let meta = fs::symlink_metadata(dir.join("default.rc")).unwrap();
    assert!(meta.file_type().is_file(), "{meta:?}");
}
