//! `enforce = true`: a routed process cannot execute anything around the broker (raw
//! `execve` from a static binary, the ELF loader by name, a cleared `LD_PRELOAD`), and its
//! attempts are audited.

use ctx_tests::*;

// ---------------------------------------------------------------------------------------
// enforce = true
// ---------------------------------------------------------------------------------------

/// `agent` (ctx-alice) routes its launches to `user` (ctx-bob) and enforces it.
fn enforce_config() -> String {
    enforce_config_with("enforce = true")
}

/// `enforce_config` with other isolation options for `agent` (e.g. `pid = true` too).
fn enforce_config_with(isolation: &str) -> String {
    enforce_config_where(isolation, "")
}

/// `enforce_config_with`, with `agent_lines` (TOML) added to `agent`'s table.
fn enforce_config_where(isolation: &str, agent_lines: &str) -> String {
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.agent]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
route_children_to = "user"
isolation = {{ {isolation} }}
{agent_lines}

[contexts.user]
user = "{BOB}"
cwd = "/"
allow = {{ uids = [0], contexts = ["agent"] }}
"#
    )
}

/// A statically linked program that calls the raw execve syscall on argv[1] with argv[1..]
/// as its arguments and prints the errno it got (the interposer cannot see it).
/// `source` compiled with `gcc -static` into `dir/name`; its path.
fn static_binary(dir: &TempDir, name: &str, source: &[u8]) -> String {
    let src = dir.file(&format!("{name}.c"), source, 0o644);
    let bin = dir.path().join(name);
    let out = run(std::process::Command::new("gcc")
        .arg("-static")
        .arg("-o")
        .arg(&bin)
        .arg(&src));
    assert_eq!(
        out.code(),
        0,
        "gcc -static failed (scripts/test.sh installs build-essential): {}",
        out.show()
    );
    bin.to_str().unwrap().to_string()
}

fn static_execve(dir: &TempDir) -> String {
    static_binary(
        dir,
        "raw_execve",
        b"#include <stdio.h>\n#include <errno.h>\n#include <unistd.h>\n#include <sys/syscall.h>\n\
          int main(int c, char **v) { char *e[] = {0};\n\
          syscall(SYS_execve, v[1], v + 1, e); printf(\"%d\\n\", errno); return 3; }\n",
    )
}

#[test]
fn enforce_static_binary_raw_execve_fails_with_eacces() {
    let dir = TempDir::new();
    let bin = static_execve(&dir);
    let b = Broker::start(&enforce_config());
    let out = b.exec("agent", &[&bin, "/bin/true"]);
    assert_eq!(out.code(), 3, "the raw execve went through: {}", out.show());
    assert_eq!(
        out.stdout_str().trim(),
        libc::EACCES.to_string(),
        "{}",
        out.show()
    );
    // The audit log says the launch ran enforced.
    b.wait_audit(1, |l| {
        json_has_str(l, &bin) && l["isolation"]["enforce"] == serde_json::json!(true)
    });
    // And the attempt itself is audited, naming what it tried to run.
    let denied = b.wait_audit(1, |l| {
        l["event"] == "exec_denied" && l["path"] == "/bin/true"
    });
    let target = std::fs::canonicalize("/bin/true").unwrap();
    let d = &denied[0];
    assert_eq!(d["target"], target.to_str().unwrap(), "{d}");
    assert_eq!(d["context"], "agent", "{d}");
    assert_eq!(d["uid"], user(ALICE).uid, "{d}");
    assert_eq!(d["program"], bin.as_str(), "{d}");
    assert_eq!(d["errno"], "EACCES", "{d}");
    assert_eq!(d["reason"], "enforce: exec bypassing the interposer", "{d}");
    assert!(d["pid"].as_u64().is_some_and(|p| p > 0), "{d}");
}

/// A refused exec's path is the program's choice: in the broker's log it is escaped, so a
/// newline in it cannot start a line of its own there (or an entry of the journal), as
/// `x\n<time>  INFO ... configuration reloaded by operator` did (helper-107).
#[test]
fn a_refused_path_cannot_forge_a_line_of_the_brokers_log() {
    let dir = TempDir::new();
    let bin = static_execve(&dir);
    let b = Broker::start(&enforce_config());
    // A file of that name: only an exec of something there is refused (and logged).
    let name = "x\n2030-01-01T00:00:00Z  INFO ctx_broker: forged by the context\rZ";
    let forged = dir.path().join(name);
    std::fs::copy("/bin/true", &forged).unwrap();
    let forged = forged.to_str().unwrap();
    let out = b.exec("agent", &[&bin, forged]);
    assert_eq!(out.code(), 3, "{}", out.show());
    b.wait_audit(1, |l| l["event"] == "exec_denied" && l["path"] == forged);
    let log = b.stderr();
    assert!(log.contains("exec denied"), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("2030-01-01")) && !log.contains('\r'),
        "{log:?}"
    );
    assert!(log.contains("x\\n2030-01-01"), "{log}");
}

/// The guard looks at a refused path as the context's user would: a file in a directory
/// that user may not search is as absent as one that does not exist (both EACCES, as a
/// local exec by that user gets), never "exists" against "not found".
#[test]
fn enforce_does_not_tell_a_context_which_files_exist_where_it_cannot_look() {
    let dir = TempDir::new();
    let bin = static_execve(&dir);
    let private = dir.subdir("private", 0o700);
    dir.file("private/there", b"#!/bin/sh\n", 0o755);
    let b = Broker::start(&enforce_config());
    for name in ["there", "absent"] {
        let path = private.join(name);
        let out = b.exec("agent", &[&bin, path.to_str().unwrap()]);
        assert_eq!(out.code(), 3, "{name}: {}", out.show());
        assert_eq!(
            out.stdout_str().trim(),
            libc::EACCES.to_string(),
            "{name}: {}",
            out.show()
        );
    }
    // And where the user may look, a missing file stays ENOENT (PATH searches rely on it).
    let out = b.exec(
        "agent",
        &[&bin, dir.path().join("absent").to_str().unwrap()],
    );
    assert_eq!(
        out.stdout_str().trim(),
        libc::ENOENT.to_string(),
        "{}",
        out.show()
    );
}

/// Through another user's `/proc/PID/cwd` too: the guard follows it no further than that
/// user could (no `CAP_SYS_PTRACE` borrowed from the broker).
#[test]
fn enforce_does_not_look_through_another_users_proc_links() {
    let dir = TempDir::new();
    let bin = static_execve(&dir);
    let private = dir.subdir("private", 0o700);
    let inner = dir.subdir("private/inner", 0o755);
    dir.file("private/inner/there", b"#!/bin/sh\n", 0o755);
    let _ = private;
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .current_dir(&inner)
        .spawn()
        .unwrap();
    let b = Broker::start(&enforce_config());
    for name in ["there", "absent", "there/"] {
        let path = format!("/proc/{}/cwd/{name}", sleeper.id());
        let out = b.exec("agent", &[&bin, &path]);
        assert_eq!(
            out.stdout_str().trim(),
            libc::EACCES.to_string(),
            "{name}: {}",
            out.show()
        );
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// `/proc/self/..` is the process's own procfs, in its PID namespace: a path through it
/// means what the kernel makes of it for the process, never the broker's `/proc`.
#[test]
fn enforce_resolves_proc_paths_in_the_processs_own_pid_namespace() {
    let dir = TempDir::new();
    let bin = static_execve(&dir);
    let b = Broker::start(&enforce_config_with("enforce = true, pid = true"));
    // The program runs itself again by a path through its procfs (allowed: it is the
    // launch's own program), which then tries /bin/true (refused).
    let out = b.exec("agent", &[&bin, "/proc/self/../self/exe", "/bin/true"]);
    assert_eq!(out.code(), 3, "{}", out.show());
    b.wait_audit(1, |l| {
        l["event"] == "exec_denied" && l["path"] == "/bin/true"
    });
    let wrong: Vec<_> = b
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "exec_denied" && l["path"] != "/bin/true")
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}");
}

/// A FUSE file system mounted by the test that never answers: every lookup under it waits
/// until the mount is detached and its device closed (on drop).
struct HungMount {
    dir: std::path::PathBuf,
    _device: std::fs::File,
}

impl HungMount {
    fn new(dir: std::path::PathBuf) -> HungMount {
        use std::os::fd::AsRawFd;
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("open /dev/fuse");
        let target = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        let options = std::ffi::CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            device.as_raw_fd()
        ))
        .unwrap();
        // SAFETY: NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                c"ctx-test-hung".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mount fuse: {}", std::io::Error::last_os_error());
        HungMount {
            dir,
            _device: device,
        }
    }
}

impl Drop for HungMount {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.dir.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path. Detached first, so nothing new enters; closing the
        // device then aborts the connection, failing the waiting lookups.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// An exec naming a path on a hung mount waits (as it would locally), but it stalls only
/// itself: another enforced launch's exec is still decided at once.
#[test]
fn an_exec_stuck_on_a_hung_mount_stalls_no_other_launch() {
    let dir = TempDir::new();
    let bin = static_execve(&dir);
    let b = Broker::start(&enforce_config());
    let hung = HungMount::new(dir.subdir("hung", 0o755));
    let stuck_path = hung.dir.join("prog");
    let mut stuck = b
        .exec_cmd("agent", &[&bin, stuck_path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its exec reaches the guard, whose look at the path hangs.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(stuck.try_wait().unwrap().is_none(), "the exec did not wait");
    let mut other = b
        .exec_cmd("agent", &[&bin, "/bin/true"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let done = poll(std::time::Duration::from_secs(10), || {
        other.try_wait().unwrap()
    });
    if done.is_none() {
        let _ = other.kill();
        panic!("another launch's exec waited for the hung one");
    }
    let out = other.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.trim(), libc::EACCES.to_string());
    // Once the mount goes, the stuck exec fails and its launch ends.
    drop(hung);
    let ended = poll(std::time::Duration::from_secs(20), || {
        stuck.try_wait().unwrap()
    });
    assert!(ended.is_some(), "the stuck launch never ended");
    assert_eq!(ended.unwrap().code(), Some(3));
}

/// The ELF interpreter (`PT_INTERP`) of a dynamic 64-bit program, e.g.
/// `/lib64/ld-linux-x86-64.so.2`.
fn elf_interpreter(program: &str) -> String {
    let elf = std::fs::read(program).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF", "{program} is not ELF");
    assert_eq!(elf[4], 2, "{program} is not a 64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) == 3 {
            let (off, size) = (u64_at(ph + 8), u64_at(ph + 32));
            let interp = &elf[off..off + size];
            let end = interp.iter().position(|&b| b == 0).unwrap_or(interp.len());
            return String::from_utf8(interp[..end].to_vec()).unwrap();
        }
    }
    panic!("{program} has no PT_INTERP")
}

#[test]
fn enforce_denies_running_a_program_through_the_elf_loader() {
    let dir = TempDir::new();
    let bin = static_execve(&dir);
    let loader = elf_interpreter("/usr/bin/id");
    let b = Broker::start(&enforce_config());
    // ld.so /usr/bin/id would run id unrouted, in `agent`: Landlock must leave the loader
    // executable (every dynamic program needs it), the exec guard refuses it by name.
    let out = b.exec("agent", &[&bin, &loader, "/usr/bin/id"]);
    assert!(!out.stdout_str().contains("uid="), "id ran: {}", out.show());
    assert_eq!(out.code(), 3, "{}", out.show());
    assert_eq!(
        out.stdout_str().trim(),
        libc::EACCES.to_string(),
        "{}",
        out.show()
    );
    let denied = b.wait_audit(1, |l| {
        l["event"] == "exec_denied" && l["path"] == loader.as_str()
    });
    let d = &denied[0];
    assert_eq!(d["context"], "agent", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("ELF loader"), "{d}");
    // Through a symlink of its own, by a path relative to the cwd (`agent`'s is /): the
    // same file, the same answer.
    let link = dir.path().join("ld.so");
    std::os::unix::fs::symlink(&loader, &link).unwrap();
    let relative = link.to_str().unwrap().trim_start_matches('/').to_string();
    let out = b.exec("agent", &[&bin, &relative, "/usr/bin/id"]);
    assert!(!out.stdout_str().contains("uid="), "id ran: {}", out.show());
    assert_eq!(out.stdout_str().trim(), libc::EACCES.to_string());
    b.wait_audit(1, |l| {
        l["event"] == "exec_denied"
            && l["path"] == relative.as_str()
            && l["reason"].as_str().unwrap_or("").contains("ELF loader")
    });
}

#[test]
fn enforce_denials_are_audited_inside_a_pid_namespace_too() {
    let dir = TempDir::new();
    let bin = static_execve(&dir);
    let b = Broker::start(&enforce_config_with("enforce = true, pid = true"));
    let out = b.exec("agent", &[&bin, "/usr/bin/id"]);
    assert_eq!(out.code(), 3, "{}", out.show());
    assert_eq!(out.stdout_str().trim(), libc::EACCES.to_string());
    b.wait_audit(1, |l| {
        l["event"] == "exec_denied" && l["path"] == "/usr/bin/id"
    });
    // Routed launches still work there.
    assert_eq!(
        b.exec("agent", &["bash", "-c", "ls / >/dev/null; id -un"])
            .ok(),
        format!("{BOB}\n")
    );
}

#[test]
fn enforce_a_flood_of_denied_execs_does_not_flood_the_audit_log() {
    let dir = TempDir::new();
    let bin = static_binary(
        &dir,
        "flood",
        b"#include <stdio.h>\n#include <errno.h>\n#include <unistd.h>\n#include <sys/syscall.h>\n\
          int main(int c, char **v) { char *a[] = {v[1], 0}; char *e[] = {0}; int n = 0;\n\
          for (int i = 0; i < 1000; i++) if (syscall(SYS_execve, v[1], a, e) < 0 && errno == EACCES) n++;\n\
          printf(\"%d\\n\", n); return 0; }\n",
    );
    let b = Broker::start(&enforce_config());
    let out = b.exec("agent", &[&bin, "/usr/bin/id"]);
    // Every attempt is refused...
    assert_eq!(out.ok().trim(), "1000");
    b.wait_audit(1, |l| l["event"] == "exec");
    // ...but the log gets a burst of them, not a thousand lines.
    let denied = b
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "exec_denied")
        .count();
    assert!((100..=150).contains(&denied), "{denied} exec_denied lines");
}

#[test]
fn enforce_status_says_bypass_attempts_are_audited() {
    let b = Broker::start(&enforce_config());
    let out = run(&mut b.ctx(["status"])).ok();
    let line = out
        .lines()
        .find(|l| l.starts_with("isolation:") && l.contains(" agent: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("routing enforced") && line.contains("denied and audited"),
        "{out}"
    );
    assert!(!out.contains("NOT in force"), "{out}");
}

#[test]
fn enforce_raw_syscall_from_a_dynamic_program_fails_with_eacces() {
    let b = Broker::start(&enforce_config());
    let script = "import ctypes,os\n\
        os.environ.pop('LD_PRELOAD', None)\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        argv = (ctypes.c_char_p * 2)(b'/usr/bin/id', None)\n\
        libc.syscall(59, b'/usr/bin/id', argv, None)\n\
        print(ctypes.get_errno())\n";
    let out = b.exec("agent", &["python3", "-c", script]);
    assert_eq!(
        out.stdout_str().trim(),
        libc::EACCES.to_string(),
        "{}",
        out.show()
    );
}

#[test]
fn enforce_keeps_routed_launches_working_even_with_a_cleared_ld_preload() {
    let b = Broker::start(&enforce_config());
    // The agent's children run in `user` (ctx-bob), through the shim.
    assert_eq!(
        b.exec("agent", &["sh", "-c", "id -un"]).ok(),
        format!("{BOB}\n")
    );
    // A program that clears LD_PRELOAD and re-execs is still routed (the hook knows its
    // route from load time), so it lands in `user`, not in `agent`.
    let script =
        "import os\nos.environ.pop('LD_PRELOAD', None)\nos.execv('/usr/bin/id', ['id', '-un'])\n";
    assert_eq!(
        b.exec("agent", &["python3", "-c", script]).ok(),
        format!("{BOB}\n")
    );
    // The routing context's own program still starts (it is the launch's own program).
    assert_eq!(b.exec("agent", &["true"]).code(), 0);
    // A shell running several routed programs, and a script through its interpreter.
    assert_eq!(
        b.exec("agent", &["bash", "-c", "ls / >/dev/null; id -un"])
            .ok(),
        format!("{BOB}\n")
    );
    // The exec guard's listener never reaches the routed program (it could answer its
    // own exec requests with it).
    let fds = "import os\nfor f in os.listdir('/proc/self/fd'):\n    \
               try: print(os.readlink('/proc/self/fd/' + f))\n    except OSError: pass\n";
    let out = b.exec("agent", &["python3", "-c", fds]).ok();
    assert!(!out.contains("seccomp"), "{out}");
    // None of it was a bypass attempt.
    b.wait_audit(6, |l| l["event"] == "exec");
    let denied: Vec<_> = b
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "exec_denied")
        .collect();
    assert!(denied.is_empty(), "{denied:?}");
}

/// `argv[1]` names the ABI: `i386` calls execve then execveat through `int $0x80` (the
/// compat arch), `x32` calls them with the x32 bit; each on /bin/true with static
/// (32-bit addressable: `-no-pie`) arguments, printing the errno each got. A call that
/// went through runs /bin/true and prints nothing more.
const COMPAT_EXECVE: &[u8] = br#"
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <sys/syscall.h>
static char path[] = "/bin/true";
static char *argv_[] = {path, 0};
static char *envp_[] = {0};
static long i386_call(long nr, long a, long b, long c, long d, long e) {
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e) : "memory");
    return r;
}
int main(int c, char **v) {
    if (c > 1 && strcmp(v[1], "i386") == 0) {
        long r = i386_call(11, (long)path, (long)argv_, (long)envp_, 0, 0);
        printf("execve=%ld ", -r);
        r = i386_call(358, -100, (long)path, (long)argv_, (long)envp_, 0);
        printf("execveat=%ld\n", -r);
    } else {
        errno = 0;
        syscall(0x40000000 | 520, path, argv_, envp_);
        printf("execve=%d ", errno);
        errno = 0;
        syscall(0x40000000 | 545, -100, path, argv_, envp_, 0);
        printf("execveat=%d\n", errno);
    }
    return 3;
}
"#;

/// The exec guard sees the i386 exec calls (`int $0x80`) and x32's, not only x86_64's:
/// each is refused (EACCES), none runs /bin/true.
#[cfg(target_arch = "x86_64")]
#[test]
fn enforce_refuses_the_i386_and_x32_exec_calls_too() {
    let dir = TempDir::new();
    let src = dir.file("compat_execve.c", COMPAT_EXECVE, 0o644);
    let bin = dir.path().join("compat_execve");
    let out = run(std::process::Command::new("gcc")
        .args(["-static", "-no-pie", "-o"])
        .arg(&bin)
        .arg(&src));
    assert_eq!(out.code(), 0, "gcc: {}", out.show());
    let bin = bin.to_str().unwrap();
    let b = Broker::start(&enforce_config());
    let eacces = libc::EACCES;
    for abi in ["i386", "x32"] {
        let out = b.exec("agent", &[bin, abi]);
        assert_eq!(out.code(), 3, "{abi}: an exec went through: {}", out.show());
        assert_eq!(
            out.stdout_str(),
            format!("execve={eacces} execveat={eacces}\n"),
            "{abi}: {}",
            out.show()
        );
    }
}

/// Found by the eleventh attacker review: under the default `allow` (root and the
/// context's own uid), a process of an enforced context asked the broker to launch into
/// that same context, and the broker ran whatever it named there (a static binary, `env`
/// with the context's secrets), unrouted: `enforce` refused the raw `execve` and the
/// broker did it instead. Now a context that enforces its routing lets in a process of a
/// context only where its `allow.contexts` names that context, whatever its uid; its
/// launches into the route's target still go.
#[test]
fn an_enforced_context_cannot_launch_into_itself_through_the_broker() {
    let config = enforce_config().replace(
        "allow = { uids = [0] }\nroute_children_to",
        "route_children_to",
    ) + &format!("\n[contexts.mate]\nuser = \"{ALICE}\"\ncwd = \"/\"\n");
    assert!(!config.contains("[contexts.agent]\nuser = \"ctx-alice\"\ncwd = \"/\"\nallow"));
    let b = Broker::start(&config);
    let ctx = bin("ctx");
    let ctx = ctx.to_str().unwrap();
    let sock = b.socket().to_str().unwrap().to_string();
    let into = |context: &str| {
        b.exec(
            "agent",
            &[
                ctx,
                "--socket",
                &sock,
                "exec",
                "--context",
                context,
                "--",
                "id",
                "-un",
            ],
        )
    };
    // The control: from outside, ctx-alice's own uid may enter (the default allow).
    let outside = run(std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={ALICE}"),
            &format!("--regid={ALICE}"),
            "--init-groups",
            "--",
        ])
        .arg(ctx)
        .args([
            "--socket",
            &sock,
            "exec",
            "--context",
            "agent",
            "--",
            "id",
            "-un",
        ]));
    assert_eq!(outside.ok(), format!("{ALICE}\n"));
    let out = into("agent");
    assert_ne!(out.code(), 0, "entered itself: {}", out.show());
    assert!(
        out.stderr_str().contains("enforces its routing"),
        "{}",
        out.show()
    );
    assert_eq!(into("user").ok(), format!("{BOB}\n"));
    // Nor by a hop through another context of the same uid (found by the twelfth review),
    // which the enforced context's own code may enter.
    let hop = b.exec(
        "agent",
        &[
            ctx,
            "--socket",
            &sock,
            "exec",
            "--context",
            "mate",
            "--",
            ctx,
            "--socket",
            &sock,
            "exec",
            "--context",
            "agent",
            "--",
            "id",
            "-un",
        ],
    );
    assert_ne!(hop.code(), 0, "entered through mate: {}", hop.show());
    assert!(
        hop.stderr_str()
            .contains("lets in processes of a context only where"),
        "{}",
        hop.show()
    );
}

/// `enforce` allows the program the child's `execvp` will run: the first file on PATH its
/// user may execute, past an entry that user may not search (root could: what root sees
/// there decides nothing), as a local search goes on (helper-87).
#[test]
fn enforce_runs_a_program_found_past_a_path_entry_its_user_may_not_search() {
    let dir = TempDir::new();
    let private = dir.subdir("private", 0o700);
    dir.file("private/true", b"#!/bin/sh\nexit 3\n", 0o755);
    let config = enforce_config_where(
        "enforce = true",
        &format!(
            r#"env = {{ PATH = "{}:/usr/bin:/bin" }}"#,
            private.display()
        ),
    );
    let b = Broker::start(&config);
    let out = b.exec("agent", &["true"]);
    assert_eq!(out.code(), 0, "{}", out.show());
}
