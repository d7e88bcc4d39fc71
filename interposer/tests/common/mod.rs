//! The fixture every end-to-end test file shares: a real `ctx-broker` on a temporary
//! socket, started by the same fixture as the workspace's end-to-end tests (`ctx-tests`),
//! and launchers preloaded with the library routing to its `user` context. Needs the
//! workspace built (`cargo build`) so that `ctx-broker` and `ctx` sit beside the shim.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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

/// The end-to-end tests' broker (`ctx_tests::Broker`) on a config of one context, `user`,
/// which the launches below route to.
pub struct Broker {
    broker: ctx_tests::Broker,
    /// The broker's temporary directory; the tests' own files go there too.
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The uid routed programs run as.
    pub uid: u32,
}

pub fn start_broker() -> Broker {
    start_broker_with("")
}

/// A broker whose `user` context gets `extra` (TOML lines) appended to its table.
pub fn start_broker_with(extra: &str) -> Broker {
    // SAFETY: plain getters.
    let me = unsafe { libc::getuid() };
    // Without root, the broker can only run programs as the caller itself.
    let (user, uid) = if me == 0 {
        ("\"nobody\"".to_string(), 65534)
    } else {
        (format!("\"{me}\""), me)
    };
    let config = format!(
        r#"[contexts.user]
user = {user}
cwd = "inherit"
env = {{ CTX_ONLY = "context-value" }}
inherit_env = ["LANG"]
allow = {{ uids = [{me}] }}
{extra}
"#
    );
    let broker = ctx_tests::Broker::start_as_caller(&config);
    Broker {
        dir: broker.dir().path().to_path_buf(),
        socket: broker.socket(),
        uid,
        broker,
    }
}

/// A broker on `config` (the whole contexts.toml), its launches routed to `user` as above.
pub fn start_broker_config(config: &str, uid: u32) -> Broker {
    let broker = ctx_tests::Broker::start_as_caller(config);
    Broker {
        dir: broker.dir().path().to_path_buf(),
        socket: broker.socket(),
        uid,
        broker,
    }
}

impl Broker {
    pub fn pid(&self) -> u32 {
        self.broker.pid()
    }

    /// Sends SIGTERM and waits up to `timeout` for the broker to exit.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        self.broker.terminate(timeout)
    }

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
