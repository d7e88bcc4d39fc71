//! The end-to-end test harness: starts a real `ctx-broker` as a child process on a socket in
//! a fresh temporary directory, runs the real `ctx` CLI against it, and reads its audit log.
//!
//! The tests run as root and route into local accounts that `scripts/test.sh` creates:
//! [`ALICE`] (member of [`TESTERS_GROUP`]) and [`BOB`]. Nothing here creates users; a
//! missing user or a non-root run panics with what to do.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub mod isolation;
pub mod older_kernel;
pub mod raw;

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// The main test user: the `user` of the tests' contexts.
pub const ALICE: &str = "ctx-alice";
/// A second user; also the caller a context's `allow` rule refuses.
pub const BOB: &str = "ctx-bob";
/// A supplementary group of [`ALICE`].
pub const TESTERS_GROUP: &str = "ctx-testers";

/// How long the broker may take to answer `ctx status` after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the broker may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on any one `ctx` command a test runs.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Binaries and users
// ---------------------------------------------------------------------------------------

/// Where `ctx` and `ctx-broker` live: `$CTX_BIN_DIR`, else the workspace's
/// `target/release` or `target/debug`, matching the profile these tests were built with.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CTX_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join(profile)
}

/// The path of a built binary; panics with how to build it when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        let flag = if cfg!(debug_assertions) {
            ""
        } else {
            " --release"
        };
        panic!(
            "{} does not exist: build the workspace first (`cargo build{flag}`), \
             or point CTX_BIN_DIR at the directory holding ctx and ctx-broker",
            path.display()
        );
    }
    path
}

/// The repository root (where the shipped `contexts.toml` lives).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// Panics unless the tests run as root: they start a broker that switches uid.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "the ctx end-to-end tests must run as root (they start a broker that switches \
             to the users ctx-alice and ctx-bob): run `bash scripts/test.sh` as root, or as a \
             user who may use sudo"
        );
    }
}

/// A local account as the tests expect it.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Looks up a test user; panics with how to create it when it is missing.
pub fn user(name: &str) -> TestUser {
    require_root();
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => TestUser {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
        },
        _ => panic!(
            "test user {name} does not exist: `scripts/test.sh` creates the test users \
             (ctx-alice, ctx-bob, group ctx-testers); run the tests through it"
        ),
    }
}

/// The gid of a group; panics when it is missing.
pub fn group_gid(name: &str) -> u32 {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => g.gid.as_raw(),
        _ => panic!("test group {name} does not exist: run the tests through scripts/test.sh"),
    }
}

// ---------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A string no other test (or earlier run) uses: for argv markers and file names.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{n}x{nanos}", std::process::id())
}

/// A directory under /tmp, mode 0755 so that the test users can enter it, removed on drop
/// (kept when `CTX_TEST_KEEP` is set).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(unique("ctx-test-"));
        fs::create_dir(&path).expect("create temp dir");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates `name` inside with `mode`; returns its path.
    pub fn subdir(&self, name: &str, mode: u32) -> PathBuf {
        let p = self.path.join(name);
        fs::create_dir_all(&p).expect("create subdir");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod subdir");
        p
    }

    /// Writes `name` inside with `mode`; returns its path.
    pub fn file(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let p = self.path.join(name);
        fs::write(&p, contents).expect("write file");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod file");
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("CTX_TEST_KEEP").is_some() {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------
// Running commands with a deadline
// ---------------------------------------------------------------------------------------

/// What a finished command left behind.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// The exit code; panics (showing the output) when the process died by a signal.
    pub fn code(&self) -> i32 {
        match self.status.code() {
            Some(c) => c,
            None => panic!(
                "expected an exit code, got {}\n{}",
                self.status,
                self.show()
            ),
        }
    }

    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Status, stdout and stderr, for assertion messages.
    pub fn show(&self) -> String {
        format!(
            "status: {}\nstdout: {:?}\nstderr: {:?}",
            self.status,
            self.stdout_str(),
            self.stderr_str()
        )
    }

    /// Asserts exit code 0 and returns stdout as text.
    pub fn ok(&self) -> String {
        assert_eq!(
            self.status.code(),
            Some(0),
            "command failed\n{}",
            self.show()
        );
        self.stdout_str()
    }
}

/// Runs `cmd` with `stdin` as its input (or /dev/null), capturing stdout and stderr;
/// kills it and panics when it runs longer than `timeout`.
pub fn run_with(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let out = read_all(child.stdout.take().expect("stdout pipe"));
    let err = read_all(child.stderr.take().expect("stderr pipe"));
    let status = match wait_deadline(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}\nstdout so far: {:?}\nstderr so far: {:?}",
                String::from_utf8_lossy(&out.join().unwrap_or_default()),
                String::from_utf8_lossy(&err.join().unwrap_or_default())
            );
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// [`run_with`] without input and with [`COMMAND_TIMEOUT`].
pub fn run(cmd: &mut Command) -> Output {
    run_with(cmd, None, COMMAND_TIMEOUT)
}

fn read_all<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Waits for `child` until `timeout`; `None` if it is still running then.
pub fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// Pids of live (not zombie) processes whose command line contains `marker`.
pub fn pids_with_arg(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if !cmdline
            .split(|&b| b == 0)
            .any(|a| a.windows(marker.len()).any(|w| w == marker.as_bytes()))
        {
            continue;
        }
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie {
            found.push(pid);
        }
    }
    found
}

/// The real uid owning a process.
pub fn proc_uid(pid: i32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Sends `sig` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

// ---------------------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------------------

/// A running `ctx-broker` on its own socket, state dir and audit log in a fresh temp dir.
/// Dropping it sends SIGTERM, waits, then SIGKILLs: no broker process outlives a test.
pub struct Broker {
    dir: TempDir,
    child: Option<Child>,
    config: PathBuf,
    /// `setpriv` arguments that start the broker as another user (see [`Broker::start_as`]).
    run_as: Option<Vec<String>>,
    /// RLIMIT_NOFILE (soft and hard) the broker starts with (see [`Broker::start_with_files`]).
    nofile: Option<u64>,
    /// Variables set in the broker's environment (see [`Broker::start_with_env`]).
    env: Vec<(String, PathBuf)>,
    /// Files mounted over others in the broker's own mount namespace (see
    /// [`Broker::start_with_binds`]).
    binds: Vec<(PathBuf, PathBuf)>,
    /// Started under a seccomp filter of someone else's (see
    /// [`Broker::start_under_a_filter`]).
    foreign_filter: bool,
}

impl Broker {
    /// Writes `config_toml` to a temp dir, starts the broker on it and waits (up to 10 s)
    /// until `ctx status` answers. Panics with the broker's stderr when it does not.
    pub fn start(config_toml: &str) -> Broker {
        require_root();
        Broker::start_limited(config_toml, None)
    }

    /// Like [`Broker::start`] without requiring root, for a config whose contexts run as
    /// the caller's own uid: a broker started by any user can serve those, and the
    /// interposer's tests run as any user.
    pub fn start_as_caller(config_toml: &str) -> Broker {
        Broker::start_limited(config_toml, None)
    }

    /// Like [`Broker::start`], with RLIMIT_NOFILE set to `limit` (soft and hard) in the
    /// broker from its start: a root broker's real uid is not root's, and root here lacks
    /// CAP_SYS_RESOURCE, so a `prlimit` from outside is refused.
    pub fn start_with_files(config_toml: &str, limit: u64) -> Broker {
        require_root();
        Broker::start_limited(config_toml, Some(limit))
    }

    /// Like [`Broker::start`], with `env` set in the broker's environment (e.g.
    /// `CTX_INTERPOSER`, where it finds the interposer and the shim).
    pub fn start_with_env(config_toml: &str, env: &[(&str, &Path)]) -> Broker {
        require_root();
        Broker::start_configured(config_toml, None, env)
    }

    /// Like [`Broker::start`], in a mount namespace of its own where each `(file, over)`
    /// is bind-mounted over `over` (e.g. a test's `resolv.conf` over `/etc/resolv.conf`):
    /// the broker, and only it, sees the test's file, and the host's is left alone.
    pub fn start_with_binds(config_toml: &str, binds: &[(&Path, &Path)]) -> Broker {
        require_root();
        let mut b = Broker::unstarted(config_toml, None, &[]);
        b.binds = binds
            .iter()
            .map(|(f, o)| (f.to_path_buf(), o.to_path_buf()))
            .collect();
        b.spawn();
        b
    }

    /// Like [`Broker::start`], under a seccomp filter that allows every call, as systemd's
    /// `SystemCallFilter=` or a container runtime's profile puts one on the broker before
    /// it starts.
    pub fn start_under_a_filter(config_toml: &str) -> Broker {
        require_root();
        let mut b = Broker::unstarted(config_toml, None, &[]);
        b.foreign_filter = true;
        b.spawn();
        b
    }

    fn start_limited(config_toml: &str, nofile: Option<u64>) -> Broker {
        Broker::start_configured(config_toml, nofile, &[])
    }

    fn start_configured(config_toml: &str, nofile: Option<u64>, env: &[(&str, &Path)]) -> Broker {
        let mut b = Broker::unstarted(config_toml, nofile, env);
        b.spawn();
        b
    }

    fn unstarted(config_toml: &str, nofile: Option<u64>, env: &[(&str, &Path)]) -> Broker {
        let dir = TempDir::new();
        let config = dir.file("contexts.toml", config_toml.as_bytes(), 0o644);
        Broker {
            dir,
            child: None,
            config,
            run_as: None,
            nofile,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_path_buf()))
                .collect(),
            binds: Vec::new(),
            foreign_filter: false,
        }
    }

    /// Like [`Broker::start`], but the broker runs unprivileged as `user` (its uid, gid and
    /// groups, no capabilities): started through `setpriv --reuid --regid --init-groups`,
    /// with `extra` setpriv options before the command (e.g. `--ambient-caps`), on a temp
    /// dir that belongs to `user`. The tests still talk to it as root.
    pub fn start_as(user: &str, extra: &[&str], config_toml: &str) -> Broker {
        require_root();
        let account = self::user(user);
        let dir = TempDir::new();
        nix::unistd::chown(
            dir.path(),
            Some(nix::unistd::Uid::from_raw(account.uid)),
            Some(nix::unistd::Gid::from_raw(account.gid)),
        )
        .expect("chown the broker's temp dir");
        let config = dir.file("contexts.toml", config_toml.as_bytes(), 0o644);
        let mut run_as = vec![
            format!("--reuid={user}"),
            format!("--regid={user}"),
            "--init-groups".to_string(),
        ];
        run_as.extend(extra.iter().map(|s| s.to_string()));
        let mut b = Broker {
            dir,
            child: None,
            config,
            run_as: Some(run_as),
            nofile: None,
            env: Vec::new(),
            binds: Vec::new(),
            foreign_filter: false,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        older_kernel::emulate_from_env();
        let stderr = fs::File::create(self.stderr_path()).expect("broker stderr file");
        let mut command = match &self.run_as {
            None => Command::new(bin("ctx-broker")),
            Some(args) => {
                // setpriv execs the broker: the child's pid is the broker's.
                let mut c = Command::new("setpriv");
                c.args(args).arg("--").arg(bin("ctx-broker"));
                c
            }
        };
        if let Some(limit) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                command.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if self.foreign_filter {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; the one-instruction program is a constant.
            unsafe {
                command.pre_exec(|| {
                    static ALLOW: [libc::sock_filter; 1] = [libc::sock_filter {
                        code: (libc::BPF_RET | libc::BPF_K) as u16,
                        jt: 0,
                        jf: 0,
                        k: libc::SECCOMP_RET_ALLOW,
                    }];
                    let prog = libc::sock_fprog {
                        len: 1,
                        filter: ALLOW.as_ptr() as *mut libc::sock_filter,
                    };
                    // Root needs no `no_new_privs` for it (CAP_SYS_ADMIN), as systemd sets none.
                    if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if !self.binds.is_empty() {
            use std::os::unix::ffi::OsStrExt;
            use std::os::unix::process::CommandExt;
            let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path");
            // Made before the fork: the child may not allocate.
            let binds: Vec<_> = self.binds.iter().map(|(f, o)| (c(f), c(o))).collect();
            // SAFETY: unshare and mount are plain syscalls, async-signal-safe, on strings
            // made before the fork; they change only the child's mount namespace.
            unsafe {
                command.pre_exec(move || {
                    let fail = || Err(std::io::Error::last_os_error());
                    if libc::unshare(libc::CLONE_NEWNS) != 0 {
                        return fail();
                    }
                    // Private first, so the mounts below do not propagate to the host's.
                    let root = c"/".as_ptr();
                    let flags = libc::MS_REC | libc::MS_PRIVATE;
                    let none = std::ptr::null();
                    if libc::mount(none, root, none, flags, std::ptr::null()) != 0 {
                        return fail();
                    }
                    for (file, over) in &binds {
                        let (f, o) = (file.as_ptr(), over.as_ptr());
                        if libc::mount(f, o, none, libc::MS_BIND, std::ptr::null()) != 0 {
                            return fail();
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--audit-log")
            .arg(self.audit_path())
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("dup"))
            .stderr(stderr)
            .spawn()
            .expect("start ctx-broker");
        self.child = Some(child);
        let socket = self.socket();
        let ctx = bin("ctx");
        let mut exited = None;
        let ready = poll(READY_TIMEOUT, || {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                exited = Some(st);
                return Some(());
            }
            let st = Command::new(&ctx)
                .arg("--socket")
                .arg(&socket)
                .arg("status")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()?;
            st.success().then_some(())
        });
        if let Some(st) = exited {
            self.child = None;
            panic!(
                "ctx-broker exited during start-up with {st}\nconfig:\n{}\nbroker stderr:\n{}",
                fs::read_to_string(&self.config).unwrap_or_default(),
                self.stderr()
            );
        }
        if ready.is_none() {
            panic!(
                "ctx-broker did not answer `ctx --socket {} status` within {READY_TIMEOUT:?}\n\
                 broker stderr:\n{}",
                socket.display(),
                self.stderr()
            );
        }
    }

    /// Stops the broker with SIGTERM and starts a new one on the same config, socket,
    /// state dir and audit log.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), Signal::SIGTERM);
            if wait_deadline(&mut child, STOP_TIMEOUT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ctx-broker ignored SIGTERM for {STOP_TIMEOUT:?}");
            }
        }
        self.spawn();
    }

    /// The temp directory holding the socket, state and audit log (mode 0755).
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("broker.sock")
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("broker.stderr")
    }

    /// What the broker wrote to stderr (and stdout) so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker running").id()
    }

    /// `ctx --socket S ARGS...`, ready to run.
    pub fn ctx<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(bin("ctx"));
        c.arg("--socket").arg(self.socket()).args(args);
        c
    }

    /// `ctx --socket S exec --context CONTEXT -- ARGV...`, ready to run.
    pub fn exec_cmd(&self, context: &str, argv: &[&str]) -> Command {
        let mut c = self.ctx(["exec", "--context", context, "--"]);
        c.args(argv);
        c
    }

    /// Runs `ctx exec --context CONTEXT -- ARGV...` to completion.
    pub fn exec(&self, context: &str, argv: &[&str]) -> Output {
        run(&mut self.exec_cmd(context, argv))
    }

    /// The audit log, one parsed JSON value per line; panics on a line that is not JSON.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        let text = fs::read_to_string(self.audit_path()).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Polls the audit log (up to 5 s) until `pred` holds for `count` lines; returns them.
    pub fn wait_audit(
        &self,
        count: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let found = poll(Duration::from_secs(5), || {
            let hits: Vec<_> = self.audit_lines().into_iter().filter(&pred).collect();
            (hits.len() >= count).then_some(hits)
        });
        found.unwrap_or_else(|| {
            panic!(
                "expected {count} matching audit line(s) in {}; the log holds:\n{}",
                self.audit_path().display(),
                fs::read_to_string(self.audit_path()).unwrap_or_default()
            )
        })
    }

    /// Sends SIGTERM and waits up to `timeout` for the broker to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        signal(child.id(), Signal::SIGTERM);
        let st = wait_deadline(child, timeout);
        if st.is_some() {
            self.child = None;
        }
        st
    }
}

impl Broker {
    /// SIGKILLs the broker and reaps it at once (a crash, as routed processes see it).
    pub fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), Signal::SIGTERM);
        if wait_deadline(&mut child, STOP_TIMEOUT).is_none() {
            eprintln!(
                "ctx-broker (pid {}) ignored SIGTERM for {STOP_TIMEOUT:?}: killing it",
                child.id()
            );
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!("--- ctx-broker stderr ---\n{}", self.stderr());
        }
    }
}

// ---------------------------------------------------------------------------------------
// JSON helpers for the audit log (field names are the broker's; match by content)
// ---------------------------------------------------------------------------------------

/// True when some string anywhere in `v` contains `needle`.
pub fn json_has_str(v: &serde_json::Value, needle: &str) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains(needle),
        serde_json::Value::Array(a) => a.iter().any(|x| json_has_str(x, needle)),
        serde_json::Value::Object(o) => o
            .iter()
            .any(|(k, x)| k.contains(needle) || json_has_str(x, needle)),
        _ => false,
    }
}

/// True when the number `n` appears anywhere in `v`.
pub fn json_has_num(v: &serde_json::Value, n: i64) -> bool {
    match v {
        serde_json::Value::Number(x) => x.as_i64() == Some(n),
        serde_json::Value::Array(a) => a.iter().any(|x| json_has_num(x, n)),
        serde_json::Value::Object(o) => o.values().any(|x| json_has_num(x, n)),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------

/// The tests' usual contexts: `alice` (ctx-alice, secret env, LC_* and TERM inherited, cwd
/// inherited, root may enter) and `bob` (ctx-bob, default cwd = home). The socket is
/// world-connectable so that a refused caller reaches the broker's `allow` check.
pub fn standard_config() -> String {
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.alice]
user = "{ALICE}"
env = {{ CONTEXT_SECRET = "alice-key" }}
inherit_env = ["LC_*", "TERM"]
cwd = "inherit"
allow = {{ uids = [0] }}

[contexts.bob]
user = "{BOB}"
env = {{ CONTEXT_SECRET = "bob-key", PATH = "/usr/bin:/bin" }}
allow = {{ uids = [0] }}
"#
    )
}

/// The running kernel's Landlock ABI version (0 without Landlock).
pub fn landlock_abi() -> i64 {
    const CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute and size 0 this only asks for the version.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    v.max(0)
}
