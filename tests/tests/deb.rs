//! The Debian package (`scripts/deb.sh`): built from the release build, installed with
//! `apt install ./ctx_*.deb`, its broker started as the unit's ExecStart says (these
//! machines run no systemd) and used through the installed `ctx`, then `apt remove` with
//! the broker running (it stops it) and `apt purge`, after which nothing of it is left;
//! then installed again and purged straight away under a broker an upgrade left running.
//!
//! The install happens in a throwaway copy of this machine: an overlay over `/` (the
//! changes land in a tmpfs) in private mount, PID and network namespaces, entered with
//! `chroot`. The other tests running at the same time keep this machine's own `/usr`,
//! `/etc`, users, dpkg database and ports; whatever happens, the copy vanishes with its
//! namespaces when the test ends. What the overlay's upper layer holds is exactly what the
//! package changed, which is how "nothing left behind" is checked.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ctx_tests::*;

// ---------------------------------------------------------------------------------------
// A copy of this machine
// ---------------------------------------------------------------------------------------

/// The overlay, its namespaces, and the process that holds them (PID 1 inside).
struct Machine {
    ns_dir: PathBuf,
    holder: Child,
    /// Host pid of the namespaces' PID 1, for nsenter.
    init: u32,
}

impl Machine {
    fn new(ns_dir: PathBuf) -> Machine {
        let d = ns_dir.display();
        let setup = format!(
            "set -e
             mount -t tmpfs -o mode=0755 ctx-deb-test {d}
             mkdir {d}/upper {d}/work {d}/root
             mount -t overlay overlay -o lowerdir=/,upperdir={d}/upper,workdir={d}/work {d}/root
             mount -t proc proc {d}/root/proc
             mount --rbind /dev {d}/root/dev
             mount --rbind /sys {d}/root/sys
             mount -t tmpfs -o mode=0755 run {d}/root/run
             echo ready
             exec sleep infinity"
        );
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            "--net",
            "--",
            "bash",
            "-c",
            &setup,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe and touches only the child. Should this test
        // die, unshare dies with it, and its --kill-child takes the namespaces down.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        let mut holder = cmd.spawn().expect("unshare");
        let mut line = String::new();
        let _ = BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = holder.kill();
            let _ = holder.wait();
            panic!("could not make the overlay copy of this machine (see stderr)");
        }
        let id = holder.id();
        let init = poll(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("the namespaces' PID 1");
        Machine {
            ns_dir,
            holder,
            init,
        }
    }

    /// `nsenter` into the namespaces, then `chroot` into the copy: ready for a command.
    fn enter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.init.to_string())
            .args(["-m", "-p", "-n", "--", "chroot"])
            .arg(self.ns_dir.join("root"))
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LANG", "C.UTF-8");
        c
    }

    /// Runs `script` with `sh -c` in the copy.
    fn sh(&self, script: &str) -> Output {
        run_with(
            self.enter().args(["/bin/sh", "-c", script]),
            None,
            Duration::from_secs(120),
        )
    }

    /// Runs `script` in the copy and returns its stdout; panics when it fails.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert_eq!(
            out.code(),
            0,
            "`{script}` failed in the copy:\n{}",
            out.show()
        );
        out.stdout_str()
    }

    fn exists(&self, path: &str) -> bool {
        self.sh(&format!("test -e '{path}' || test -L '{path}'"))
            .code()
            == 0
    }

    /// Every path the overlay's upper layer holds, with its type (`find -printf %y`): what
    /// changed since the copy was made, or was only rewritten or had its time stamps moved.
    fn changed(&self) -> BTreeMap<String, char> {
        let out = run(self
            .in_mount_ns(&["find"])
            .arg(self.ns_dir.join("upper"))
            .args(["-mindepth", "1", "-printf", "%y %P\\n"]));
        out.ok()
            .lines()
            .filter_map(|l| {
                let (kind, path) = l.split_once(' ')?;
                Some((path.to_string(), kind.chars().next()?))
            })
            .collect()
    }

    /// Whether the upper layer's `path` (a type `kind` entry) is this machine's own entry
    /// as it was: a directory it has (copied up when a file in it changed), or a file with
    /// the same bytes (rewritten as it was).
    fn unchanged(&self, path: &str, kind: char) -> bool {
        let host = Path::new("/").join(path);
        match kind {
            'd' => host.is_dir() && !host.is_symlink(),
            'f' => {
                host.is_file()
                    && run(self
                        .in_mount_ns(&["cmp", "-s"])
                        .arg(self.ns_dir.join("upper").join(path))
                        .arg(&host))
                    .code()
                        == 0
            }
            _ => false,
        }
    }

    /// `nsenter` into the mount namespace only, where `/` is still this machine's.
    fn in_mount_ns(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.init.to_string())
            .args(["-m", "--"])
            .args(argv);
        c
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Paths that are dpkg's and apt's own bookkeeping of an install (and man-db's index, which
/// its trigger rebuilds): they change with any package and are not the package's to remove.
fn bookkeeping(path: &str) -> bool {
    [
        "var/lib/dpkg",
        "var/log/dpkg.log",
        "var/log/apt",
        "var/cache/apt",
        "var/cache/debconf",
        "var/cache/ldconfig",
        "var/cache/man",
        "var/lib/apt",
        "etc/ld.so.cache",
    ]
    .iter()
    .any(|p| path == *p || path.starts_with(&format!("{p}/")))
        || ["var", "var/lib", "var/log", "var/cache", "etc"].contains(&path)
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

#[test]
fn the_deb_installs_runs_its_contexts_and_remove_then_purge_leave_nothing() {
    require_root();
    let td = TempDir::new();
    let on_host: Vec<(&str, bool)> = ["/usr/bin/ctx", "/usr/lib/ctx", "/etc/ctx", "/var/lib/ctx"]
        .into_iter()
        .map(|p| (p, Path::new(p).exists()))
        .collect();

    // Built from the release build the other tests use, which it only reads.
    let built = run_with(
        Command::new("bash")
            .arg(repo_root().join("scripts/deb.sh"))
            .args(["--no-build", "--from"])
            .arg(bin_dir())
            .arg("--out")
            .arg(td.path()),
        None,
        Duration::from_secs(300),
    );
    let deb = PathBuf::from(built.ok().trim());
    let name = deb.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with("ctx_") && name.ends_with(".deb"), "{name}");
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb)).ok();
    assert!(info.contains("Package: ctx"), "{info}");
    assert!(
        info.contains("Maintainer: ") && !info.contains("@localhost"),
        "{info}"
    );

    let m = Machine::new(td.subdir("ns", 0o755));
    // A fresh machine: no ctx installed by any means, no group ctx (the test users stay;
    // the shipped contexts name two of them).
    m.ok("dpkg --purge ctx >/dev/null 2>&1 || true
          rm -rf /etc/ctx /var/lib/ctx /var/log/ctx /usr/local/bin/ctx /usr/local/bin/ctx-broker \
                 /usr/local/lib/ctx /etc/systemd/system/ctx-broker.service \
                 /etc/systemd/system/ctx-broker.socket
          if getent group ctx >/dev/null; then groupdel ctx; fi");
    let before = m.changed();

    // --- apt install ----------------------------------------------------------------------
    let installed = m.ok(&format!(
        "apt-get install -y --no-install-recommends '{}' 2>&1",
        deb.display()
    ));
    assert!(
        installed.contains("usermod -aG ctx USER"),
        "postinst says who must join group ctx:\n{installed}"
    );
    let files: Vec<String> = m.ok("dpkg -L ctx").lines().map(String::from).collect();
    for want in [
        "/usr/bin/ctx",
        "/usr/bin/ctx-broker",
        "/usr/lib/ctx/libctx_interposer.so",
        "/usr/lib/ctx/libctx_route.so",
        "/usr/lib/ctx/ctx-shim",
        "/lib/systemd/system/ctx-broker.service",
        "/lib/systemd/system/ctx-broker.socket",
        "/etc/ctx/contexts.toml",
        "/usr/share/man/man1/ctx.1.gz",
        "/usr/share/man/man1/ctx-exec.1.gz",
        "/usr/share/man/man1/ctx-broker.1.gz",
        "/usr/share/bash-completion/completions/ctx",
        "/usr/share/zsh/vendor-completions/_ctx",
        "/usr/share/fish/vendor_completions.d/ctx.fish",
        "/usr/share/doc/ctx/copyright",
        "/usr/share/doc/ctx/changelog.Debian.gz",
        "/usr/share/lintian/overrides/ctx",
    ] {
        assert!(files.iter().any(|f| f == want), "{want} not in dpkg -L ctx");
    }
    // The changelog's newest entry is the package's version; every file is as shipped.
    let version = m.ok("dpkg-query -W -f='${Version}' ctx");
    assert!(
        m.ok("zcat /usr/share/doc/ctx/changelog.Debian.gz")
            .starts_with(&format!("ctx ({version}) ")),
        "{version}"
    );
    assert_eq!(m.ok("dpkg --verify ctx"), "");
    assert_eq!(
        m.ok("dpkg-query -W -f='${Conffiles}' ctx")
            .split_whitespace()
            .next(),
        Some("/etc/ctx/contexts.toml")
    );
    assert_eq!(
        m.ok("stat -c '%a %U %G' /etc/ctx/contexts.toml /var/lib/ctx"),
        "600 root root\n711 root root\n"
    );
    assert!(m.ok("stat -c '%a %U' /var/log/ctx").starts_with("750 root"));
    // Enabled, socket-activated: what `systemctl enable` links.
    for link in [
        "/etc/systemd/system/sockets.target.wants/ctx-broker.socket",
        "/etc/systemd/system/multi-user.target.wants/ctx-broker.service",
    ] {
        assert_eq!(
            m.ok(&format!("readlink {link}")),
            format!(
                "/lib/systemd/system/{}\n",
                Path::new(link).file_name().unwrap().to_str().unwrap()
            ),
            "{link}"
        );
    }
    assert!(m.ok("getent group ctx").starts_with("ctx:"));
    // The man page and completions the CLI generated are readable as such.
    assert!(m
        .ok("zcat /usr/share/man/man1/ctx.1.gz")
        .contains(".TH ctx 1"));
    let broker_page = m.ok("zcat /usr/share/man/man1/ctx-broker.1.gz");
    assert!(
        broker_page.contains(".TH ctx-broker 1") && broker_page.contains("\\-\\-run\\-in"),
        "{broker_page}"
    );

    // The group is fresh and empty: --check refuses the file, naming the routing context
    // it shuts out and what to do; the operator does it.
    let check = m.sh("ctx-broker --check --config /etc/ctx/contexts.toml");
    assert_eq!(check.code(), 1, "{}", check.show());
    assert!(
        check
            .stderr_str()
            .contains("contexts.platform: route_children_to = \"user\" cannot work")
            && check.stderr_str().contains("usermod -aG ctx ctx-agent"),
        "{}",
        check.show()
    );
    m.ok("usermod -aG ctx ctx-agent");
    let check = m.sh("ctx-broker --check --config /etc/ctx/contexts.toml");
    assert_eq!(check.code(), 0, "{}", check.show());
    assert!(
        !check.stderr_str().contains("cannot work"),
        "{}",
        check.show()
    );

    // --- the installed broker, started as the unit starts it ------------------------------
    let unit = m.ok("cat /lib/systemd/system/ctx-broker.service");
    let exec_start: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart in the installed unit")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        exec_start,
        ["/usr/bin/ctx-broker", "--config", "/etc/ctx/contexts.toml"]
    );
    let mut broker = start_broker(&m, &exec_start);
    let status = m.ok("ctx status");
    assert!(
        status.contains("socket:     /run/ctx/broker.sock"),
        "{status}"
    );
    assert!(!status.contains("cannot work"), "{status}");
    // The shipped contexts: their own users, platform's launches routed to user through
    // the installed interposer (found in /usr/lib/ctx), and ctx run from root likewise.
    assert_eq!(m.ok("ctx exec --context user -- id -un"), "ctx-user\n");
    assert_eq!(
        m.ok("cd /tmp && ctx exec --context platform -- sh -c 'echo $USER $(id -un) ${ANTHROPIC_API_KEY:+key}'"),
        "ctx-agent ctx-user key\n"
    );
    assert_eq!(
        m.ok("cd /tmp && ctx run --route-to user -- sh -c 'id -un'"),
        "ctx-user\n"
    );
    assert!(m
        .ok("cat /var/log/ctx/audit.jsonl")
        .contains(r#""context":"user""#));

    // --- apt remove, the broker still running (no systemd to stop it) --------------------
    // A routed process that would outlive a broker nobody stopped.
    let marker = format!("1000.{}", std::process::id());
    let mut routed = m
        .enter()
        .args(["ctx", "exec", "--context", "user", "--", "sleep", &marker])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ctx exec sleep");
    poll(Duration::from_secs(10), || {
        (pids_with_arg(&marker).len() > 1).then_some(())
    })
    .expect("the routed sleep runs");
    // As in a container, whose root may not read a broker's /proc/PID/exe (no
    // CAP_SYS_PTRACE): the broker is found as the listener of its socket.
    let removed = m.ok("setpriv --bounding-set=-sys_ptrace apt-get remove -y ctx 2>&1");
    assert!(
        removed.contains("ctx-broker: stopped the broker on /run/ctx/broker.sock (pid ")
            && !removed.contains("killed"),
        "{removed}"
    );
    assert_stopped(&m, &mut broker, "apt remove");
    let _ = wait_deadline(&mut routed, Duration::from_secs(10));
    assert!(
        poll(Duration::from_secs(10), || pids_with_arg(&marker)
            .is_empty()
            .then_some(()))
        .is_some(),
        "the routed sleep outlived apt remove: {:?}",
        pids_with_arg(&marker)
    );
    assert_eq!(
        m.ok("dpkg-query -W -f='${db:Status-Abbrev}' ctx").trim(),
        "rc"
    );
    for f in &files {
        let kept = f == "/etc/ctx/contexts.toml" || f == "/etc/ctx";
        if Path::new(f).exists() {
            continue; // a directory this machine already had (/usr/bin, /etc, ...)
        }
        assert_eq!(m.exists(f), kept, "{f} after apt remove");
    }
    // The operator's config and data stay.
    assert!(m.exists("/var/lib/ctx") && m.exists("/var/log/ctx/audit.jsonl"));
    assert!(m.ok("getent group ctx").starts_with("ctx:"));

    // --- apt purge: nothing left -----------------------------------------------------------
    m.ok("apt-get purge -y ctx >/dev/null 2>&1");
    assert_nothing_left(&m, &files, &before);

    // --- again, then apt purge straight away, an upgraded broker still running -----------
    m.ok(&format!(
        "apt-get install -y --no-install-recommends '{}' >/dev/null 2>&1",
        deb.display()
    ));
    // On a socket of its own: not the config's, so only its executable tells it.
    let elsewhere: Vec<String> = exec_start
        .iter()
        .cloned()
        .chain(["--socket".into(), "/run/ctx/elsewhere.sock".into()])
        .collect();
    let mut broker = start_broker(&m, &elsewhere);
    // What an upgrade does to a broker no one restarted: dpkg renames the new file over
    // the old one, so the running broker's executable is a deleted file at that path.
    m.ok("cp -p /usr/bin/ctx-broker /usr/bin/ctx-broker.dpkg-new
          mv /usr/bin/ctx-broker.dpkg-new /usr/bin/ctx-broker");
    assert!(
        m.ok(&format!("readlink /proc/{}/exe", broker_pids(&m)[0]))
            .contains("(deleted)"),
        "the running broker's binary was replaced"
    );
    let purged = m.ok("apt-get purge -y ctx 2>&1");
    assert!(
        purged.contains("ctx-broker: stopped pid ")
            && purged.contains("(a version an upgrade replaced)")
            && !purged.contains("killed"),
        "{purged}"
    );
    assert_stopped(&m, &mut broker, "apt purge");
    assert_nothing_left(&m, &files, &before);
    drop(m);
    // Nothing of the copy leaked into this machine.
    for (p, was) in on_host {
        assert_eq!(Path::new(p).exists(), was, "{p} on this machine");
    }
}

/// Starts the installed broker in the copy with `argv`, the unit's `ExecStart` (these
/// machines run no systemd) and maybe a `--socket`, and waits until `ctx status` answers.
fn start_broker(m: &Machine, argv: &[String]) -> Child {
    let mut broker = m
        .enter()
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the installed broker");
    let socket = argv
        .iter()
        .skip_while(|a| *a != "--socket")
        .nth(1)
        .map_or("/run/ctx/broker.sock", String::as_str);
    let ready = poll(Duration::from_secs(15), || {
        (m.sh(&format!("ctx --socket {socket} status >/dev/null 2>&1"))
            .code()
            == 0)
            .then_some(())
    });
    if ready.is_none() {
        let _ = broker.kill();
        let out = broker.wait_with_output().unwrap();
        panic!(
            "the installed broker did not answer on /run/ctx/broker.sock: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    broker
}

/// The copy's processes whose executable is, or was before an upgrade replaced it,
/// `/usr/bin/ctx-broker`.
fn broker_pids(m: &Machine) -> Vec<u32> {
    m.ok("for p in /proc/[0-9]*; do
              case $(readlink $p/exe 2>/dev/null) in
                  /usr/bin/ctx-broker*) echo ${p#/proc/} ;;
              esac
          done")
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// The package's removal stopped the broker: it exited as SIGTERM has it exit, took its
/// socket with it, and no process of the broker's binary is left in the copy.
fn assert_stopped(m: &Machine, broker: &mut Child, by: &str) {
    let stopped = wait_deadline(broker, Duration::from_secs(5));
    assert!(
        stopped.is_some_and(|s| s.success()),
        "{by} did not stop the running broker cleanly: {stopped:?}"
    );
    assert_eq!(broker_pids(m), Vec::<u32>::new(), "after {by}");
    assert_eq!(
        m.ok("ls -A /run/ctx 2>/dev/null || true"),
        "",
        "the socket after {by}"
    );
}

/// After `apt purge`: none of the package's files, none of what it or its broker made,
/// no group it made, and the copy as it was but for the package managers' own records.
fn assert_nothing_left(m: &Machine, files: &[String], before: &BTreeMap<String, char>) {
    assert_ne!(
        m.sh("dpkg-query -W -f='${db:Status-Abbrev}' ctx | grep -q '^i\\|^r'")
            .code(),
        0
    );
    let made = [
        "/var/lib/ctx",
        "/var/log/ctx",
        "/run/ctx",
        "/etc/systemd/system/sockets.target.wants/ctx-broker.socket",
        "/etc/systemd/system/multi-user.target.wants/ctx-broker.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/ctx-broker.socket.dsh-also",
    ];
    for f in files.iter().map(String::as_str).chain(made) {
        if Path::new(f).exists() {
            continue;
        }
        assert!(!m.exists(f), "{f} is left after apt purge");
    }
    assert_ne!(m.sh("getent group ctx").code(), 0, "group ctx is left");
    // Every path the package changed is back as it was, but for the package managers' own
    // records (and /etc/group, changed by the groupdel above).
    let left: Vec<String> = m
        .changed()
        .into_iter()
        .filter(|(p, kind)| !before.contains_key(p) && !bookkeeping(p) && !m.unchanged(p, *kind))
        .map(|(p, kind)| format!("{kind} /{p}"))
        .collect();
    assert!(left.is_empty(), "left behind after apt purge: {left:#?}");
}
