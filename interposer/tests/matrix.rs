//! The launcher matrix's failure cases, per launcher (bash, dash, python3 subprocess,
//! os.system, os.posix_spawn/posix_spawnp, node spawn, perl system, make): death by signal,
//! ENOENT, EACCES and a script without a shebang. Each launcher runs the same script twice,
//! locally and routed; what the caller observes must be identical (with the uid the
//! no-shebang script prints replaced by `UID`), and is also pinned to known values so a
//! change in a local tool cannot make both sides wrong together.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use common::*;

/// The no-shebang script prints the uid it ran as: the context's when routed.
const NOSHEBANG: &str = "echo \"noshebang ran as $(id -u)\"\n";

fn setup(b: &Broker) {
    let w = |name: &str, body: &str, mode: u32| {
        let p = b.dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    w("noexec", "echo should-not-run\n", 0o644);
    w("noshebang", NOSHEBANG, 0o755);
}

fn show(o: &Output) -> String {
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.stderr.is_empty() {
        s.push_str("stderr:\n");
        s.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    s.push_str(&format!("exit {:?}\n", o.status.code()));
    s
}

/// Runs `argv` locally and routed; returns both outputs with uids normalised.
fn both(b: &Broker, argv: &[&str]) -> (String, String) {
    let mut local: Command = b.cmd(argv);
    local.env_remove("LD_PRELOAD").env_remove("CTX_ROUTE");
    let lo = local.output().unwrap();
    let ro = b.cmd(argv).output().unwrap();
    // SAFETY: plain getter.
    let me = unsafe { libc::getuid() };
    let l = show(&lo).replace(&format!("ran as {me}"), "ran as UID");
    let r = show(&ro).replace(&format!("ran as {}", b.uid), "ran as UID");
    eprintln!("{argv:?}\n--- local:\n{l}--- routed:\n{r}");
    if r.contains("ran as") {
        assert!(
            show(&ro).contains(&format!("ran as {}", b.uid)),
            "routed no-shebang script did not run in the context: {r}"
        );
    }
    (l, r)
}

fn check(b: &Broker, argv: &[&str], want: &str) {
    let (l, r) = both(b, argv);
    assert_eq!(r, l, "routed differs from local for {argv:?}");
    assert_eq!(r, want, "{argv:?}");
}

const SHELL_SCRIPT: &str = r#"
sh -c 'kill -TERM $$'; echo "sig $?"
nonexistent-xyz 2>/dev/null; echo "enoent $?"
./noexec 2>/dev/null; echo "eacces $?"
./noshebang; echo "noshebang $?"
"#;

#[test]
fn bash_and_dash() {
    let b = start_broker();
    setup(&b);
    // The shells report the signal death themselves ("Terminated" on stderr).
    let want = "sig 143\nenoent 127\neacces 126\nnoshebang ran as UID\nnoshebang 0\n";
    let (l, r) = both(&b, &["bash", "-c", SHELL_SCRIPT]);
    assert_eq!(r, l);
    assert!(
        r.starts_with(want) && r.contains("Terminated") && r.ends_with("exit Some(0)\n"),
        "{r}"
    );
    let (l, r) = both(&b, &["dash", "-c", SHELL_SCRIPT]);
    assert_eq!(r, l);
    assert!(r.starts_with(want) && r.ends_with("exit Some(0)\n"), "{r}");
    // The messages are the shells' own.
    let o = b.sh("bash", "nonexistent-xyz; ./noexec");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nonexistent-xyz: command not found"), "{err}");
    assert!(err.contains("./noexec: Permission denied"), "{err}");
}

#[test]
fn python_subprocess_system_and_posix_spawn() {
    let Some(py) = python() else {
        eprintln!("no system python3; skipped");
        return;
    };
    let b = start_broker();
    setup(&b);
    let script = r#"
import errno, os, subprocess
def err(e): return type(e).__name__ + " " + errno.errorcode[e.errno]
r = subprocess.run(["sh", "-c", "kill -TERM $$"]); print("subprocess sig", r.returncode)
for name, argv in (("enoent", ["nonexistent-xyz"]), ("eacces", ["./noexec"]), ("noshebang", ["./noshebang"])):
    try:
        r = subprocess.run(argv, capture_output=True, text=True)
        print("subprocess", name, r.returncode, r.stdout.strip())
    except OSError as e:
        print("subprocess", name, err(e))
st = os.system("kill -TERM $$")
print("system sig", os.WIFSIGNALED(st) and os.WTERMSIG(st))
for name, cmd in (("enoent", "nonexistent-xyz"), ("eacces", "./noexec"), ("noshebang", "./noshebang")):
    st = os.system(cmd + " 2>/dev/null")
    print("system", name, os.waitstatus_to_exitcode(st))
for fn in ("posix_spawn", "posix_spawnp"):
    spawn = getattr(os, fn)
    pid = spawn("/bin/sh", ["sh", "-c", "kill -TERM $$"], os.environ)
    st = os.waitpid(pid, 0)[1]
    print(fn, "sig", os.WIFSIGNALED(st) and os.WTERMSIG(st))
    for name, prog in (("enoent", "/nonexistent-xyz" if fn == "posix_spawn" else "nonexistent-xyz"),
                       ("eacces", "./noexec"), ("noshebang", "./noshebang")):
        try:
            pid = spawn(prog, [prog], os.environ)
            print(fn, name, "exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        except OSError as e:
            print(fn, name, err(e))
"#;
    let want = "\
subprocess sig -15
subprocess enoent FileNotFoundError ENOENT
subprocess eacces PermissionError EACCES
subprocess noshebang OSError ENOEXEC
system sig 15
system enoent 127
system eacces 126
noshebang ran as UID
system noshebang 0
posix_spawn sig 15
posix_spawn enoent FileNotFoundError ENOENT
posix_spawn eacces PermissionError EACCES
posix_spawn noshebang OSError ENOEXEC
posix_spawnp sig 15
posix_spawnp enoent FileNotFoundError ENOENT
posix_spawnp eacces PermissionError EACCES
posix_spawnp noshebang OSError ENOEXEC
exit Some(0)
";
    check(&b, &[py, "-c", script], want);
}

#[test]
fn node_spawn() {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("no node; skipped");
        return;
    }
    let b = start_broker();
    setup(&b);
    let script = r#"
const cp = require('child_process');
let r = cp.spawnSync('sh', ['-c', 'kill -TERM $$']);
console.log('spawnSync sig', r.signal, r.status);
for (const [n, c] of [['enoent', 'nonexistent-xyz'], ['eacces', './noexec'], ['noshebang', './noshebang']]) {
  r = cp.spawnSync(c);
  console.log('spawnSync', n, r.error ? r.error.code : r.status + ' ' + r.stdout.toString().trim());
}
const c = cp.spawn('sh', ['-c', 'kill -TERM $$']);
c.on('exit', (code, sig) => {
  console.log('spawn sig', sig, code);
  const d = cp.spawn('./noexec');
  d.on('error', (e) => console.log('spawn eacces', e.code));
});
"#;
    let want = "\
spawnSync sig SIGTERM null
spawnSync enoent ENOENT
spawnSync eacces EACCES
spawnSync noshebang 0 noshebang ran as UID
spawn sig SIGTERM null
spawn eacces EACCES
exit Some(0)
";
    check(&b, &["node", "-e", script], want);
}

#[test]
fn perl_system() {
    let b = start_broker();
    setup(&b);
    let script = r#"
system("sh", "-c", 'kill -TERM $$'); print "sig ", $? & 127, "\n";
for (["enoent", "nonexistent-xyz"], ["eacces", "./noexec"], ["noshebang", "./noshebang"]) {
    my $r = system($_->[1]);
    print "$_->[0] ", ($r == -1 ? "failed " . ($! + 0) : "rc " . ($? >> 8)), "\n";
}
"#;
    let want = format!(
        "sig 15\nenoent failed {}\neacces failed {}\nnoshebang ran as UID\nnoshebang rc 0\nexit Some(0)\n",
        libc::ENOENT,
        libc::EACCES
    );
    check(&b, &["perl", "-e", script], &want);
}

#[test]
fn make_recipes() {
    let b = start_broker();
    setup(&b);
    // `-` keeps make going; make reports each failure on stderr.
    std::fs::write(
        b.dir.join("Makefile"),
        "all:\n\t-@sh -c 'kill -TERM $$$$'\n\t-@nonexistent-xyz\n\t-@./noexec\n\t-@./noshebang\n",
    )
    .unwrap();
    let (l, r) = both(&b, &["make"]);
    assert_eq!(r, l);
    for line in [
        "Terminated",
        "nonexistent-xyz: No such file or directory",
        // make 4.3 reports a failed exec, EACCES included, as 127.
        "[Makefile:3: all] Error 127 (ignored)",
        "[Makefile:4: all] Error 127 (ignored)",
        "./noexec: Permission denied",
        "noshebang ran as UID",
    ] {
        assert!(r.contains(line), "{line:?} missing from:\n{r}");
    }
}

/// Whether an exec will work is guessed by the broker, as root, before the caller hears
/// `Accepted`. That guess must not tell the caller whether a file exists where the
/// context's user cannot look: a script whose `#!` interpreter lies behind a directory
/// that user cannot search fails alike whether it exists or not (a version that checked
/// interpreters answered `Accepted` for an existing one, then failed late, and with an
/// errno for a missing one: helper-84, helper-85).
#[test]
fn a_scripts_interpreter_behind_an_unsearchable_directory_reveals_nothing() {
    let Some(py) = python() else {
        eprintln!("no system python3; skipped");
        return;
    };
    let b = start_broker();
    let hidden = b.dir.join("hidden");
    std::fs::create_dir_all(hidden.join("pub")).unwrap();
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(hidden.join("pub"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy("/bin/true", hidden.join("pub/tool")).unwrap();
    std::os::unix::fs::symlink(hidden.join("pub"), b.dir.join("l")).unwrap();
    let w = |name: &str, interpreter: &str| {
        let p = b.dir.join(name);
        std::fs::write(&p, format!("#!{}\n", b.dir.join(interpreter).display())).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    w("probe_there", "l/tool");
    w("probe_missing", "l/nothere");
    let script = r#"
import errno, subprocess
for name in ("./probe_there", "./probe_missing"):
    try:
        r = subprocess.run([name], capture_output=True, text=True)
        print(name, "ran", r.returncode, r.stderr.strip())
    except OSError as e:
        print(name, type(e).__name__, errno.errorcode[e.errno])
"#;
    let out = b.cmd(&[py, "-c", script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(
        lines[0].replace("./probe_there", "P"),
        lines[1].replace("./probe_missing", "P"),
        "the two probes differ"
    );
}

/// A script whose `#!` interpreter is missing, or is a script without one itself, fails
/// the exec (ENOENT, ENOEXEC) routed as locally, not as a command exiting 127/126 after
/// an early `Accepted` (git's t1800 "hook with a bad shebang", helper-82).
#[test]
fn a_script_whose_interpreter_cannot_run_fails_its_exec_as_locally() {
    let Some(py) = python() else {
        eprintln!("no system python3; skipped");
        return;
    };
    let b = start_broker();
    setup(&b);
    let w = |name: &str, body: String| {
        let p = b.dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    w("bad_shebang", "#!/no/such/interpreter\nexit 0\n".into());
    w(
        "nested",
        format!("#!{}\n", b.dir.join("noshebang").display()),
    );
    w("good", "#!/bin/sh\necho good\n".into());
    let script = r#"
import errno, os, subprocess
for name in ("./bad_shebang", "./nested", "./good"):
    try:
        r = subprocess.run([name], capture_output=True, text=True)
        print("subprocess", name, r.returncode, r.stdout.strip())
    except OSError as e:
        print("subprocess", name, type(e).__name__, errno.errorcode[e.errno])
    try:
        pid = os.posix_spawn(name, [name], os.environ)
        print("posix_spawn", name, "exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    except OSError as e:
        print("posix_spawn", name, type(e).__name__, errno.errorcode[e.errno])
"#;
    let want = "\
subprocess ./bad_shebang FileNotFoundError ENOENT
posix_spawn ./bad_shebang FileNotFoundError ENOENT
subprocess ./nested OSError ENOEXEC
posix_spawn ./nested OSError ENOEXEC
subprocess ./good 0 good
good
posix_spawn ./good exit 0
exit Some(0)
";
    check(&b, &[py, "-c", script], want);
}

/// An argument list the kernel will not copy (E2BIG), and a file that only starts like an
/// ELF image (ENOEXEC), fail the caller's exec as locally: the caller goes on, it does not
/// become a shim exiting 126 (helper-87).
#[test]
fn an_exec_the_kernel_refuses_fails_as_locally() {
    let Some(py) = python() else {
        eprintln!("no system python3; skipped");
        return;
    };
    let b = start_broker();
    let fake = b.dir.join("fake_elf");
    std::fs::write(&fake, b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x01\0").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = r#"
import errno, os, subprocess
def show(what, f):
    try:
        print(what, "ran", f())
    except OSError as e:
        print(what, type(e).__name__, errno.errorcode[e.errno])
show("subprocess long", lambda: subprocess.run(["/bin/true", "x" * 200000]).returncode)
show("subprocess many", lambda: subprocess.run(["/bin/true"] + ["x" * 1000] * 3000).returncode)
show("subprocess fake", lambda: subprocess.run(["./fake_elf"]).returncode)
show("execv long", lambda: os.execv("/bin/true", ["true", "x" * 200000]))
print("still here")
"#;
    let want = "\
subprocess long OSError E2BIG
subprocess many OSError E2BIG
subprocess fake OSError ENOEXEC
execv long OSError E2BIG
still here
exit Some(0)
";
    check(&b, &[py, "-c", script], want);
}

/// A timer armed before the exec (`alarm N; exec`, a `preexec_fn` setting one) fires at
/// the shim, which holds it: its SIGALRM comes from the kernel (`SI_KERNEL`) as a
/// terminal's signals do, yet it is for the program alone, as locally, not for its
/// children (helper-89: `sleep` died of it routed).
#[test]
fn a_timer_armed_before_the_exec_signals_the_program_alone() {
    let b = start_broker();
    // perl runs here, with the hook: its exec is the routed launch.
    let argv = [
        "perl",
        "-e",
        "alarm 1; exec @ARGV or die",
        "sh",
        "-c",
        r#"trap "echo trapped" ALRM; sleep 2; echo end $?"#,
    ];
    check(&b, &argv, "trapped\nend 0\nexit Some(0)\n");
}
