//! The fixture every end-to-end test file shares: a real `ctx-broker` on a temporary
//! socket, and launchers preloaded with the library routing to its `user` context.
//! Needs the workspace built (`cargo build`) so that `ctx-broker` sits beside the shim.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------

pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ctx-shim"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds a C program or library with the system's `cc`: `flags`, then `-o out source`.
pub fn cc(flags: &[&str], out: &Path, source: &Path) {
    let st = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(source)
        .status()
        .expect("run cc");
    assert!(
        st.success(),
        "cc {flags:?} -o {} {}",
        out.display(),
        source.display()
    );
}

pub struct Broker {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The uid routed programs run as.
    pub uid: u32,
}

impl Drop for Broker {
    fn drop(&mut self) {
        // SAFETY: signals the broker this fixture started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn start_broker() -> Broker {
    start_broker_with("")
}

/// A broker whose `user` context gets `extra` (TOML lines) appended to its table.
pub fn start_broker_with(extra: &str) -> Broker {
    static N: AtomicUsize = AtomicUsize::new(0);
    let broker = bin_dir().join("ctx-broker");
    assert!(
        broker.exists(),
        "{} is missing: run `cargo build` for the whole workspace first",
        broker.display()
    );
    let dir = std::env::temp_dir().join(format!(
        "ctx-interposer-e2e-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: plain getters.
    let me = unsafe { libc::getuid() };
    let (user, uid) = if me == 0 {
        ("\"nobody\"".to_string(), 65534)
    } else {
        (format!("\"{me}\""), me)
    };
    let socket = dir.join("broker.sock");
    let config = dir.join("contexts.toml");
    std::fs::write(
        &config,
        format!(
            r#"[broker]
socket = "{sock}"
state_dir = "{d}/state"
audit_log = "{d}/audit.jsonl"

[contexts.user]
user = {user}
cwd = "inherit"
env = {{ CTX_ONLY = "context-value" }}
inherit_env = ["LANG"]
allow = {{ uids = [{me}] }}
{extra}
"#,
            sock = socket.display(),
            d = dir.display(),
        ),
    )
    .unwrap();
    let child = Command::new(&broker)
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("broker.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "broker did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Broker {
        child,
        dir,
        socket,
        uid,
    }
}

impl Broker {
    /// `argv` run locally with routing switched on for its launches.
    pub fn cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..])
            .current_dir(&self.dir)
            .env("LD_PRELOAD", bin_dir().join("libctx_interposer.so"))
            .env("CTX_ROUTE", "user")
            .env("CTX_SOCKET", &self.socket)
            .env("SECRET", "agent-canary")
            .env_remove("CTX_PASSTHROUGH")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, argv: &[&str]) -> Output {
        let out = self.cmd(argv).output().unwrap();
        eprintln!(
            "{argv:?} -> {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn sh(&self, shell: &str, script: &str) -> Output {
        self.run(&[shell, "-c", script])
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The canonical probe: uid, the context's variable, the caller's secret (must be empty).
pub const PROBE: &str = r#"echo "$(id -u) ${CTX_ONLY:-none} ${SECRET:-nosecret}""#;

pub fn probe_line(b: &Broker) -> String {
    format!("{} context-value nosecret", b.uid)
}

pub fn python() -> Option<&'static str> {
    // A pyenv shim is a bash script that would itself be routed; use a real interpreter.
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}
