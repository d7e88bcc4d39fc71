//! End to end: a real `ctx-broker` on a temporary socket, real launchers preloaded with the
//! library, each routed launch checked for the target context's uid and environment, the
//! caller's secret, exit status, errno and stdio. The fixture is in `common/`; the other
//! files of this directory cover the launcher matrix's failure cases (`matrix.rs`),
//! terminals (`pty.rs`) and the shim's and broker's lifecycle (`lifecycle.rs`).

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// What `tests/c/launch_all.c` takes as its first argument: each exported launch function
/// (the `_plain` ones without file actions, `vfork` with execve).
const LAUNCHERS: [&str; 16] = [
    "execve",
    "execv",
    "execvp",
    "execvpe",
    "execl",
    "execlp",
    "execle",
    "execveat",
    "fexecve",
    "vfork",
    "posix_spawn",
    "posix_spawnp",
    "posix_spawn_plain",
    "posix_spawnp_plain",
    "system",
    "popen",
];

/// `tests/c/launch_all.c`, built into `dir`.
fn launch_all(dir: &Path) -> std::path::PathBuf {
    let exe = dir.join("launch_all");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/launch_all.c");
    cc(&[], &exe, &src);
    exe
}

#[test]
fn shells_route_with_context_env_and_exit_codes() {
    let b = start_broker();
    for shell in ["bash", "dash"] {
        // The probe must run in a routed program, not in the (local) caller shell.
        let o = b.sh(
            shell,
            &format!("sh -c '{PROBE}'; x=$(echo sub | tr a-z A-Z); echo $x; sh -c 'exit 3'"),
        );
        assert_eq!(o.status.code(), Some(3), "{shell}");
        assert_eq!(stdout(&o), format!("{}\nSUB\n", probe_line(&b)), "{shell}");
    }
    let o = b.sh("bash", "nonexistent-cmd-xyz; echo rc=$?");
    assert_eq!(stdout(&o), "rc=127\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("command not found"));
    // A grandchild is in the context too.
    let o = b.sh("bash", "sh -c 'sh -c \"id -u\"'");
    assert_eq!(stdout(&o), format!("{}\n", b.uid));
}

/// A signal the caller left ignored is not passed on (`trap '' USR1`, as `cmd &` in a
/// non-interactive shell ignores SIGINT): the routed program, whose USR1 is at its default
/// (death), lives on. Whether the fork relay still holds the launch (`CTX_RELAY_MS=60000`)
/// or the shim does (0). And one not ignored still arrives.
#[test]
fn a_signal_the_caller_ignores_is_not_passed_on() {
    let b = start_broker();
    for ms in ["60000", "0"] {
        let o = b
            .cmd(&[
                "bash",
                "-c",
                "trap '' USR1; sleep 1.5 & p=$!; sleep 0.5; kill -USR1 $p; wait $p; echo rc=$?",
            ])
            .env("CTX_RELAY_MS", ms)
            .output()
            .unwrap();
        assert_eq!(stdout(&o), "rc=0\n", "CTX_RELAY_MS={ms}");
        let o = b
            .cmd(&[
                "bash",
                "-c",
                "sleep 1.5 & p=$!; sleep 0.5; kill -USR1 $p; wait $p; echo rc=$?",
            ])
            .env("CTX_RELAY_MS", ms)
            .output()
            .unwrap();
        assert_eq!(stdout(&o), "rc=138\n", "CTX_RELAY_MS={ms}");
    }
}

#[test]
fn death_by_signal_reaches_the_caller() {
    let b = start_broker();
    let o = b.sh("bash", "sh -c 'kill -TERM $$'; echo rc=$?");
    assert_eq!(stdout(&o), "rc=143\n");
    // Signals sent to the pid the caller holds reach the routed program.
    let o = b.sh(
        "bash",
        "sleep 30 & p=$!; sleep 0.5; kill -TERM $p; wait $p; echo rc=$?",
    );
    assert_eq!(stdout(&o), "rc=143\n");
}

#[test]
fn every_exported_function_routes() {
    let b = start_broker();
    let exe = launch_all(&b.dir);
    let exe = exe.to_str().unwrap();
    let script = format!("{PROBE}; exit 3");
    for f in LAUNCHERS {
        let o = b.run(&[exe, f, &script]);
        assert_eq!(stdout(&o), format!("{}\n", probe_line(&b)), "{f}");
        assert_eq!(o.status.code(), Some(3), "{f}");
    }
    // posix_spawn file actions are applied to what the routed program gets.
    let o = b.run(&[
        exe,
        "posix_spawn",
        "pwd; cat <&6 >/dev/null && echo six; echo five >&5; [ -e /proc/self/fd/7 ] || echo no7",
    ]);
    assert_eq!(stdout(&o), "/\nsix\nfive\nno7\n");
    // The descriptor the fast path hands the shim its connection at is taken: the launch
    // takes the other path (glibc starts the shim), and the caller's descriptor stays.
    let o = b.run(&[exe, "posix_spawn_busy", &format!("{PROBE}; exit 3")]);
    assert_eq!(stdout(&o), format!("{}\nkept1023\n", probe_line(&b)));
    assert_eq!(o.status.code(), Some(3));
    // Without file actions the caller's own descriptors and cwd are the program's: an
    // inheritable one arrives, a close-on-exec one does not.
    for f in ["posix_spawn_plain", "posix_spawnp_plain"] {
        let o = b.run(&[
            exe,
            f,
            "pwd; echo eight >&8; [ -e /proc/self/fd/9 ] || echo no9",
        ]);
        assert_eq!(
            stdout(&o),
            format!("{}\neight\nno9\n", b.dir.display()),
            "{f}"
        );
    }
    for f in [
        "execve",
        "execv",
        "execvp",
        "execvpe",
        "execl",
        "execlp",
        "execle",
        "execveat",
        "posix_spawn",
        "posix_spawnp",
    ] {
        let o = b.run(&[exe, &format!("enoent:{f}"), "x"]);
        assert_eq!(stdout(&o), "ENOENT\n", "{f}");
    }
}

#[test]
fn python_launchers() {
    let Some(py) = python() else {
        eprintln!("no system python3; skipped");
        return;
    };
    let b = start_broker();
    let script = format!(
        r#"
import os, subprocess, sys
probe = {PROBE:?}
want = {want:?}
assert subprocess.run(["sh", "-c", probe], capture_output=True).stdout.decode() == want + "\n"
assert subprocess.run(probe, shell=True, capture_output=True).stdout.decode() == want + "\n"
try:
    subprocess.run(["nonexistent-xyz"]); sys.exit("no FileNotFoundError")
except FileNotFoundError:
    pass
assert subprocess.run(["sh", "-c", "exit 7"]).returncode == 7
assert subprocess.run(["sh", "-c", "kill -INT $$"]).returncode == -2
assert subprocess.run(["pwd"], cwd="/", capture_output=True).stdout == b"/\n"
env = subprocess.run(["env"], env={{}}, capture_output=True).stdout.decode()
assert "CTX_ONLY=context-value" in env and "SECRET" not in env, env
big = os.urandom(1 << 20)
assert subprocess.run(["cat"], input=big, capture_output=True).stdout == big
r, w = os.pipe()
subprocess.run(["sh", "-c", "echo passed >&%d" % w], pass_fds=[w]); os.close(w)
assert os.read(r, 100) == b"passed\n"
assert os.system("exit 4") >> 8 == 4
assert os.popen("id -u").read().strip() == want.split()[0]
pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 5"], os.environ)
assert os.waitpid(pid, 0)[1] >> 8 == 5
pid = os.posix_spawnp("sh", ["sh", "-c", "exit 6"], os.environ)
assert os.waitpid(pid, 0)[1] >> 8 == 6
try:
    os.posix_spawnp("nonexistent-xyz", ["x"], os.environ); sys.exit("spawnp found it")
except FileNotFoundError:
    pass
out = subprocess.run(["printf", "%s", b"\xff\xfe-bytes"], capture_output=True).stdout
assert out == b"\xff\xfe-bytes", out
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(16) as ex:
    res = list(ex.map(lambda i: subprocess.run(["sh", "-c", "echo %d" % i], capture_output=True).stdout, range(100)))
assert res == [b"%d\n" % i for i in range(100)]
os.execvp("sh", ["sh", "-c", "exit 9"])
"#,
        want = probe_line(&b)
    );
    let o = b.run(&[py, "-c", &script]);
    assert_eq!(o.status.code(), Some(9), "python checks failed");
}

#[test]
fn node_launchers() {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("no node; skipped");
        return;
    }
    let b = start_broker();
    let script = format!(
        r#"
const cp = require('child_process'); const assert = require('assert');
assert.strictEqual(cp.execFileSync('sh', ['-c', {PROBE:?}]).toString(), {want:?} + "\n");
assert.strictEqual(cp.spawnSync('exit 5', {{shell: true}}).status, 5);
assert.strictEqual(cp.spawnSync('nonexistent-xyz').error.code, 'ENOENT');
assert.ok(cp.spawnSync('ls', ['/']).stdout.toString().includes('tmp'));
cp.exec('echo $SECRET', (err, out) => {{ assert.strictEqual(out, "\n"); process.exit(8); }});
"#,
        want = probe_line(&b)
    );
    let o = b.run(&["node", "-e", &script]);
    assert_eq!(o.status.code(), Some(8));
}

#[test]
fn perl_make_xargs_find_env_git() {
    let b = start_broker();
    let want = format!("{}\n", b.uid);
    let o = b.run(&[
        "perl",
        "-e",
        "system('id -u'); print `id -u`; exec('id','-u')",
    ]);
    assert_eq!(stdout(&o), want.repeat(3));
    std::fs::write(b.dir.join("Makefile"), "all: a b c d\na b c d:\n\t@id -u\n").unwrap();
    let o = b.run(&["make", "-s", "-j4"]);
    assert_eq!(stdout(&o), want.repeat(4));
    let mut c = b.cmd(&["xargs", "-P4", "-n1", "sh", "-c", "id -u"]);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"1 2 3 4\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(stdout(&o), want.repeat(4));
    let o = b.run(&["find", ".", "-maxdepth", "0", "-exec", "id", "-u", ";"]);
    assert_eq!(stdout(&o), want);
    // A cleared environment does not switch routing off.
    let o = b.run(&["bash", "-c", "env -i id -u; env -i sh -c 'id -u'"]);
    assert_eq!(stdout(&o), want.repeat(2));
}

#[test]
fn git_alias_and_hooks_route() {
    let b = start_broker();
    let want = probe_line(&b);
    let g = b.dir.join("repo");
    let git = |args: &[&str]| {
        let mut a = vec!["git", "-C", g.to_str().unwrap()];
        a.extend_from_slice(args);
        b.run(&a)
    };
    assert!(Command::new("git")
        .args(["init", "-q"])
        .arg(&g)
        .status()
        .unwrap()
        .success());
    // An alias `!cmd` runs through the shell git starts: both are routed.
    let alias = format!("alias.probe=!{PROBE}");
    let o = git(&["-c", &alias, "probe"]);
    assert_eq!(stdout(&o), format!("{want}\n"));
    assert!(o.status.success());
    // Hooks: git forks and execs the hook file itself; it runs in the context, so it
    // prints the context's uid and variable and does not see the caller's secret. Git sends
    // a hook's stdout to stderr.
    for hook in ["pre-commit", "post-commit"] {
        let h = g.join(".git/hooks").join(hook);
        std::fs::write(&h, format!("#!/bin/sh\necho \"{hook} $({PROBE})\"\n")).unwrap();
        std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let o = git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.invalid",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "m",
    ]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("pre-commit {want}\n")), "{err}");
    assert!(err.contains(&format!("post-commit {want}\n")), "{err}");
    // A failing pre-commit hook fails the commit, as locally.
    let h = g.join(".git/hooks/pre-commit");
    std::fs::write(&h, "#!/bin/sh\nexit 1\n").unwrap();
    let o = git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.invalid",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "n",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("identity"));
}

/// A library preloaded after ours that wraps the real functions, announces each call on
/// stderr and forwards it: what our hooks call when they do not route must be the next
/// library's definition, as `dlsym(RTLD_NEXT, ..)` would find, not glibc's directly.
const NEXT_LIBRARY: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static void say(const char *f) { write(2, "next:", 5); write(2, f, strlen(f)); write(2, "\n", 1); }
#define NEXT(f) ((__typeof__(&f))dlsym(RTLD_NEXT, #f))
int execve(const char *p, char *const a[], char *const e[]) { say("execve"); return NEXT(execve)(p, a, e); }
int execv(const char *p, char *const a[]) { say("execv"); return NEXT(execv)(p, a); }
int execvp(const char *p, char *const a[]) { say("execvp"); return NEXT(execvp)(p, a); }
int execvpe(const char *p, char *const a[], char *const e[]) { say("execvpe"); return NEXT(execvpe)(p, a, e); }
int fexecve(int fd, char *const a[], char *const e[]) { say("fexecve"); return NEXT(fexecve)(fd, a, e); }
int execveat(int d, const char *p, char *const a[], char *const e[], int f) { say("execveat"); return NEXT(execveat)(d, p, a, e, f); }
int posix_spawn(pid_t *pid, const char *p, const posix_spawn_file_actions_t *fa, const posix_spawnattr_t *at, char *const a[], char *const e[]) { say("posix_spawn"); return NEXT(posix_spawn)(pid, p, fa, at, a, e); }
int posix_spawnp(pid_t *pid, const char *p, const posix_spawn_file_actions_t *fa, const posix_spawnattr_t *at, char *const a[], char *const e[]) { say("posix_spawnp"); return NEXT(posix_spawnp)(pid, p, fa, at, a, e); }
int system(const char *c) { say("system"); return NEXT(system)(c); }
FILE *popen(const char *c, const char *m) { say("popen"); return NEXT(popen)(c, m); }
"#;

#[test]
fn without_a_route_every_function_runs_locally_through_the_next_library() {
    let b = start_broker();
    let launch_all = launch_all(&b.dir);
    let next = b.dir.join("libnext.so");
    let next_c = b.dir.join("next.c");
    std::fs::write(&next_c, NEXT_LIBRARY).unwrap();
    cc(&["-shared", "-fPIC"], &next, &next_c);
    let ours = bin_dir().join("libctx_interposer.so");
    // SAFETY: plain getter.
    let me = unsafe { libc::getuid() };
    let local = format!("{me} none agent-canary\n");
    for (preload, chained) in [
        (ours.display().to_string(), false),
        (format!("{} {}", ours.display(), next.display()), true),
    ] {
        for f in LAUNCHERS {
            let o = b
                .cmd(&[launch_all.to_str().unwrap(), f, &format!("{PROBE}; exit 3")])
                .env_remove("CTX_ROUTE")
                .env("LD_PRELOAD", &preload)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(stdout(&o), local, "{f} with {preload}: {err}");
            assert_eq!(o.status.code(), Some(3), "{f} with {preload}: {err}");
            let hook = f.trim_end_matches("_plain");
            if chained && !matches!(hook, "execl" | "execlp" | "execle" | "vfork") {
                assert!(err.contains(&format!("next:{hook}\n")), "{f}: {err}");
            }
        }
    }
}

/// The library opened with `dlopen` rather than preloaded: libc comes before it in the
/// loader's list, so its hooks must still find the real functions (through `dlsym`).
const DLOPENER: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <sys/wait.h>
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "%s\n", dlerror()); return 125; }
    int (*sys)(const char *) = (int (*)(const char *))dlsym(h, "system");
    int st = sys(argv[2]);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 125;
}
"#;

#[test]
fn opened_with_dlopen_it_still_runs_locally_without_a_route() {
    let b = start_broker();
    let exe = b.dir.join("dlopener");
    let src = b.dir.join("dlopener.c");
    std::fs::write(&src, DLOPENER).unwrap();
    cc(&[], &exe, &src);
    let lib = bin_dir().join("libctx_interposer.so");
    let o = b
        .cmd(&[
            exe.to_str().unwrap(),
            lib.to_str().unwrap(),
            "echo local; exit 3",
        ])
        .env_remove("CTX_ROUTE")
        .env_remove("LD_PRELOAD")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stdout(&o), "local\n", "{err}");
    assert_eq!(o.status.code(), Some(3), "{err}");
}

#[test]
fn without_the_routing_library_a_routed_launch_fails_closed() {
    let b = start_broker();
    // The preloaded library alone, as a broken install would leave it.
    let alone = b.dir.join("alone");
    std::fs::create_dir_all(&alone).unwrap();
    let lib = alone.join("libctx_interposer.so");
    std::fs::copy(bin_dir().join("libctx_interposer.so"), &lib).unwrap();
    let o = b
        .cmd(&["bash", "-c", "/bin/echo ran; echo rc=$?"])
        .env("LD_PRELOAD", &lib)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stdout(&o), "rc=126\n", "{err}");
    assert!(
        err.contains(&format!(
            "ctx: cannot route \"/bin/echo\" to context user: cannot load the routing library: {}",
            alone.join("libctx_route.so").display()
        )),
        "{err}"
    );
    // Not routing, it needs nothing else.
    let o = b
        .cmd(&["bash", "-c", "/bin/echo ran"])
        .env("LD_PRELOAD", &lib)
        .env_remove("CTX_ROUTE")
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "ran\n");
    // `ctx run` says so before it starts anything.
    let o = Command::new(bin_dir().join("ctx"))
        .arg("--socket")
        .arg(&b.socket)
        .args(["run", "--route-to", "user", "--", "/bin/echo", "ran"])
        .env("CTX_INTERPOSER", &lib)
        .env_remove("LD_PRELOAD")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert_eq!(stdout(&o), "");
    assert!(
        err.contains(&format!(
            "cannot find the interposer at {}: No such file or directory",
            alone.join("libctx_route.so").display()
        )),
        "{err}"
    );
    // A broker whose contexts route on warns at start that those launches will fail.
    let dir = b.dir.join("chained");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("contexts.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nstate_dir = \"{d}/state\"\naudit_log = \"{d}/audit.jsonl\"\n\n\
             [contexts.outer]\nuser = \"{uid}\"\nroute_children_to = \"inner\"\n\n\
             [contexts.inner]\nuser = \"{uid}\"\n",
            d = dir.display(),
            uid = b.uid
        ),
    )
    .unwrap();
    let socket = dir.join("broker.sock");
    let log = dir.join("broker.log");
    let mut broker = Command::new(bin_dir().join("ctx-broker"))
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .env("CTX_INTERPOSER", &lib)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Start-up warnings come before the "ready" line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut text = String::new();
    while !text.contains("ctx-broker ready") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        text = std::fs::read_to_string(&log).unwrap();
    }
    let _ = broker.kill();
    let _ = broker.wait();
    assert!(
        text.contains(&format!(
            "route_children_to of outer needs the interposer at {}, which does not exist",
            alone.join("libctx_route.so").display()
        )),
        "{text}"
    );
}

#[test]
fn passthrough_stays_local_and_children_still_route() {
    let b = start_broker();
    // SAFETY: plain getter.
    let me = unsafe { libc::getuid() };
    let o = b
        .cmd(&["bash", "-c", "id -u; bash -c 'id -u'"])
        .env("CTX_PASSTHROUGH", "/usr/bin/id:bash")
        .output()
        .unwrap();
    assert_eq!(stdout(&o), format!("{me}\n{me}\n"));
    let o = b
        .cmd(&["bash", "-c", "sh -c 'id -u'"])
        .env("CTX_PASSTHROUGH", "sh")
        .output()
        .unwrap();
    assert_eq!(stdout(&o), format!("{}\n", b.uid));
}

#[test]
fn unreachable_broker_fails_closed() {
    let b = start_broker();
    let marker = b.dir.join("ran-locally");
    let o = b
        .cmd(&[
            "bash",
            "-c",
            &format!("touch {}; echo rc=$?", marker.display()),
        ])
        .env("CTX_SOCKET", "/nonexistent/ctx.sock")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!marker.exists(), "ran locally");
    assert!(
        err.contains("ctx: cannot route \"touch\" to context user: broker at /nonexistent/ctx.sock unreachable: ENOENT"),
        "{err}"
    );
    assert_eq!(stdout(&o), "rc=126\n");
}

#[test]
fn script_without_shebang_and_bytes() {
    let b = start_broker();
    let s = b.dir.join("noshebang");
    std::fs::write(&s, "echo from-sh $(id -u)\n").unwrap();
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = b.sh("bash", "./noshebang");
    assert_eq!(stdout(&o), format!("from-sh {}\n", b.uid));
    let o = b.sh("bash", "printf '%s' $'\\xff\\x01-x'");
    assert_eq!(o.stdout, b"\xff\x01-x");
}

/// The broker checks, before it answers "accepted" (and the caller becomes the shim), that
/// the context's uid may reach and run the program; a directory that uid cannot search
/// gives the caller its EACCES as a local exec would.
#[test]
fn a_program_the_context_uid_cannot_reach_fails_with_eacces() {
    let b = start_broker();
    let private = b.dir.join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let prog = private.join("prog");
    std::fs::copy("/bin/true", &prog).unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = b.sh("bash", &format!("{}; echo rc=$?", prog.display()));
    assert_eq!(stdout(&o), "rc=126\n");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    if let Some(py) = python() {
        let script = format!(
            "import subprocess\ntry:\n    subprocess.run([{:?}])\n    print('ran')\nexcept PermissionError:\n    print('PermissionError')\n",
            prog.display().to_string()
        );
        let o = b.run(&[py, "-c", &script]);
        assert_eq!(stdout(&o), "PermissionError\n");
    }
}

/// What the broker cannot foresee (here a program open for writing: ETXTBSY) fails after
/// the caller became the shim: it ends like a shell's failed command, 126 with the reason
/// on stderr. The same line whether the fork relay still holds the launch
/// (`CTX_RELAY_MS=60000`) or the shim took it over at once (`0`). What it can foresee (an
/// ELF loader that is not there, a `noexec` mount: the kernel's own lookups and access
/// check as the context's user say so) fails the caller's exec itself, as locally.
#[test]
fn an_exec_failing_after_acceptance_ends_like_a_failed_command() {
    let b = start_broker();
    let prog = b.dir.join("prog");
    std::fs::copy("/bin/true", &prog).unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let writer = std::fs::OpenOptions::new().write(true).open(&prog).unwrap();
    let script = format!("{}; echo rc=$?", prog.display());
    let want = format!(
        "ctx: {:?}: not executable: as nobody (uid 65534) (ETXTBSY)\n",
        prog.display().to_string()
    );
    for ms in ["60000", "0"] {
        let o = b
            .cmd(&["bash", "-c", &script])
            .env("CTX_RELAY_MS", ms)
            .output()
            .unwrap();
        assert_eq!(stdout(&o), "rc=126\n", "CTX_RELAY_MS={ms}");
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            want,
            "CTX_RELAY_MS={ms}"
        );
    }
    drop(writer);

    let no_loader = b.dir.join("no_loader");
    let mut image = std::fs::read("/bin/true").unwrap();
    let at = image
        .windows(8)
        .position(|w| w == b"ld-linux")
        .expect("a dynamic /bin/true");
    image[at + 7] = b'X';
    std::fs::write(&no_loader, image).unwrap();
    std::fs::set_permissions(&no_loader, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = format!("{}; echo rc=$?", no_loader.display());
    let mut local = b.cmd(&["bash", "-c", &script]);
    local.env_remove("LD_PRELOAD");
    let (local, routed) = (
        local.output().unwrap(),
        b.cmd(&["bash", "-c", &script]).output().unwrap(),
    );
    assert_eq!(stdout(&local), "rc=127\n");
    assert_eq!(stdout(&routed), stdout(&local));
    assert_eq!(routed.stderr, local.stderr);

    let mnt = b.dir.join("noexec");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "noexec,mode=755", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs (the tests run as root)");
    let prog = mnt.join("prog");
    std::fs::copy("/bin/true", &prog).unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = format!("{} 2>/dev/null; echo rc=$?", prog.display());
    let mut local = b.cmd(&["bash", "-c", &script]);
    local.env_remove("LD_PRELOAD");
    let (local, routed) = (
        local.output().unwrap(),
        b.cmd(&["bash", "-c", &script]).output().unwrap(),
    );
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(stdout(&local), "rc=126\n");
    assert_eq!(stdout(&routed), stdout(&local));
}
