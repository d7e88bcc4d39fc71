//! What a child inherits across fork + execve reaches a routed process as it
//! reaches a local one: umask, resource limits, nice value, CPU affinity, I/O priority,
//! `oom_score_adj`, the signal mask and ignored signals, and a working directory even when
//! it was deleted. Each probe runs locally, then with its launches routed by the
//! interposer (`ctx run`), and through `ctx exec` where the CLI is the caller; the outputs
//! must match. And a caller lowers, never raises: what would be more than the routed
//! process gets by default (a lower nice value, a realtime I/O class, a lower
//! `oom_score_adj`, a limit above the context's `rlimits`) is not carried.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use ctx_tests::*;

// ---------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------

/// `root` and `alice` inherit the caller's cwd; `capped` caps open files at 4096;
/// `fixed` always starts in /tmp.
fn config() -> String {
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.root]
user = "root"
cwd = "inherit"
allow = {{ uids = [0] }}

[contexts.alice]
user = "{ALICE}"
cwd = "inherit"
allow = {{ uids = [0] }}

[contexts.capped]
user = "root"
cwd = "inherit"
rlimits = {{ nofile = 4096 }}
allow = {{ uids = [0] }}

[contexts.fixed]
user = "root"
cwd = "/tmp"
allow = {{ uids = [0] }}
"#
    )
}

/// Launches into `context` the audit log has recorded so far.
fn launches(b: &Broker, context: &str) -> usize {
    b.audit_lines()
        .iter()
        .filter(|l| l["event"] == "exec" && l["context"] == context)
        .count()
}

/// Runs `cmd`, expecting success; asserts that it routed at least one launch into
/// `context` (a probe that ran locally by mistake would compare equal too).
fn routed_ok(b: &Broker, context: &str, cmd: &mut Command) -> String {
    let before = launches(b, context);
    let out = run(cmd).ok();
    b.wait_audit(before + 1, |l| {
        l["event"] == "exec" && l["context"] == context
    });
    out
}

/// `bash -c 'SETUP; sh -c "$0"' PROBE`: the caller sets something up, then starts a shell
/// that prints what it got.
fn local(setup: &str, probe: &str) -> String {
    run(Command::new("bash").args(["-c", &format!("{setup}; sh -c \"$0\""), probe])).ok()
}

/// Tools a setup runs to change the caller itself (`renice -p $$`): they must run in the
/// caller, not routed.
const SETUP_TOOLS: [&str; 3] = ["renice", "ionice", "taskset"];

/// The same with the caller's launches routed to `context` by the interposer.
fn via_interposer(b: &Broker, context: &str, setup: &str, probe: &str) -> String {
    let mut cmd = b.ctx(["run", "--route-to", context]);
    for tool in SETUP_TOOLS {
        cmd.args(["--passthrough", tool]);
    }
    cmd.args(["--", "bash", "-c"]);
    cmd.args([&format!("{setup}; sh -c \"$0\""), probe]);
    routed_ok(b, context, &mut cmd)
}

/// The same with the caller exec'ing `ctx exec --context CONTEXT -- sh -c PROBE`.
fn via_cli(b: &Broker, context: &str, setup: &str, probe: &str) -> String {
    let script =
        format!("{setup}; exec \"$1\" --socket \"$2\" exec --context {context} -- sh -c \"$0\"");
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &script, probe])
        .arg(bin("ctx"))
        .arg(b.socket());
    routed_ok(b, context, &mut cmd)
}

/// Asserts that `SETUP; sh -c PROBE` prints `expected` locally and routed to each of
/// `contexts`, by the interposer and by the CLI.
fn same_everywhere(b: &Broker, contexts: &[&str], setup: &str, probe: &str, expected: &str) {
    assert_eq!(local(setup, probe), expected, "locally: {setup}; {probe}");
    same_as_local(b, contexts, setup, probe);
}

/// Asserts that `SETUP; sh -c PROBE` prints what it prints locally when routed to each of
/// `contexts`, by the interposer and by the CLI; returns the local output.
fn same_as_local(b: &Broker, contexts: &[&str], setup: &str, probe: &str) -> String {
    let expected = local(setup, probe);
    for ctx in contexts {
        assert_eq!(
            via_interposer(b, ctx, setup, probe),
            expected,
            "routed to {ctx} by the interposer: {setup}; {probe}"
        );
        assert_eq!(
            via_cli(b, ctx, setup, probe),
            expected,
            "routed to {ctx} by ctx exec: {setup}; {probe}"
        );
    }
    expected
}

/// The `SigIgn:` mask in a line of `/proc/PID/status`.
fn sig_ign(status_line: &str) -> u64 {
    let hex = status_line
        .trim()
        .strip_prefix("SigIgn:")
        .expect("a SigIgn line");
    u64::from_str_radix(hex.trim(), 16).expect("hexadecimal")
}

/// Bit n-1 for signal n.
fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

/// `ARGV` run locally, and by `ctx run --route-to CONTEXT -- ARGV` (its own launches
/// routed); both outputs.
fn both(b: &Broker, context: &str, argv: &[&str]) -> (String, String) {
    let local = run(Command::new(argv[0]).args(&argv[1..])).ok();
    let mut cmd = b.ctx(["run", "--route-to", context, "--"]);
    cmd.args(argv);
    (local, routed_ok(b, context, &mut cmd))
}

// ---------------------------------------------------------------------------------------
// umask and resource limits
// ---------------------------------------------------------------------------------------

#[test]
fn the_umask_is_carried() {
    let b = Broker::start(&config());
    same_everywhere(&b, &["root", "alice"], "umask 027", "umask", "0027\n");
    same_everywhere(&b, &["alice"], "umask 0", "umask", "0000\n");
}

#[test]
fn a_lowered_open_files_limit_is_carried() {
    let b = Broker::start(&config());
    same_everywhere(
        &b,
        &["root", "alice", "capped"],
        "ulimit -n 64",
        "ulimit -Sn; ulimit -Hn",
        "64\n64\n",
    );
    // Only the soft limit: the hard one stays what the routed process has anyway.
    same_everywhere(
        &b,
        &["root", "alice"],
        "ulimit -Sn 100",
        "ulimit -Sn",
        "100\n",
    );
}

#[test]
fn a_cpu_time_limit_is_carried() {
    let b = Broker::start(&config());
    same_everywhere(
        &b,
        &["root", "alice"],
        "ulimit -t 7",
        "ulimit -St; ulimit -Ht",
        "7\n7\n",
    );
    // And it is in force: a busy loop dies of SIGXCPU after a second of CPU time.
    let setup = "ulimit -St 1";
    let probe = "sh -c \"while :; do :; done\"; echo status=$?";
    let expected = format!("status={}\n", 128 + libc::SIGXCPU);
    assert_eq!(local(setup, probe), expected);
    assert_eq!(via_interposer(&b, "alice", setup, probe), expected);
}

#[test]
fn a_caller_cannot_raise_a_limit_above_the_contexts() {
    let b = Broker::start(&config());
    // Locally 10000 (below this host's hard limit); the context allows 4096.
    assert_eq!(local("ulimit -n 10000", "ulimit -n"), "10000\n");
    assert_eq!(
        via_interposer(&b, "capped", "ulimit -n 10000", "ulimit -Sn; ulimit -Hn"),
        "4096\n4096\n"
    );
    assert_eq!(
        via_cli(&b, "capped", "ulimit -n 10000", "ulimit -Sn; ulimit -Hn"),
        "4096\n4096\n"
    );
    // Lower than the context's: the caller's.
    assert_eq!(
        via_interposer(&b, "capped", "ulimit -n 64", "ulimit -n"),
        "64\n"
    );
    // Nothing said: the context's, and the broker's default soft limit elsewhere.
    assert_eq!(
        run(&mut b.exec_cmd("capped", &["sh", "-c", "ulimit -n"])).ok(),
        "4096\n"
    );
}

/// `preexec_fn` runs between Python's fork and exec: the limit it sets is the exec'ing
/// process's own, which the hook reads.
#[test]
fn a_limit_set_in_pythons_preexec_fn_reaches_the_child() {
    let b = Broker::start(&config());
    let script = r#"
import resource, subprocess
lim = 1 << 30
out = subprocess.run(["sh", "-c", "ulimit -v; ulimit -Hv"], capture_output=True, text=True,
    preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (lim, lim)), check=True)
print(out.stdout, end="")
"#;
    let (local, routed) = both(&b, "alice", &["/usr/bin/python3", "-c", script]);
    assert_eq!(local, "1048576\n1048576\n");
    assert_eq!(routed, local);
}

// ---------------------------------------------------------------------------------------
// Scheduling: nice, affinity, I/O priority, oom_score_adj
// ---------------------------------------------------------------------------------------

#[test]
fn a_higher_nice_value_is_carried() {
    let b = Broker::start(&config());
    for ctx in ["root", "alice"] {
        let (local, routed) = both(&b, ctx, &["nice", "-n", "5", "sh", "-c", "nice"]);
        assert_eq!(local, "5\n");
        assert_eq!(routed, local, "{ctx}");
    }
    same_everywhere(
        &b,
        &["alice"],
        "renice -n 7 -p $$ >/dev/null",
        "nice",
        "7\n",
    );
}

#[test]
fn a_lower_nice_value_is_not_carried() {
    let b = Broker::start(&config());
    // Root may lower its own nice value; the routed process starts at the broker's (0).
    let (local, routed) = both(&b, "root", &["nice", "-n", "-5", "sh", "-c", "nice"]);
    assert_eq!(local, "-5\n");
    assert_eq!(routed, "0\n");
}

/// A broker the operator runs at a higher nice value starts its programs there, by the
/// interposer and by `ctx exec`, whatever the thread that forks does meanwhile (raised to
/// a realtime priority reset on fork, it handed them nice 0: helper-95).
#[test]
fn a_broker_at_a_higher_nice_value_starts_its_programs_there() {
    let b = Broker::start(&config());
    for task in std::fs::read_dir(format!("/proc/{}/task", b.pid())).unwrap() {
        let tid: i32 = task.unwrap().file_name().to_str().unwrap().parse().unwrap();
        // SAFETY: setpriority(2) of one of the test's broker's threads.
        assert_eq!(
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as u32, 10) },
            0
        );
    }
    for ctx in ["root", "alice"] {
        assert_eq!(
            via_interposer(&b, ctx, "true", "nice"),
            "10\n",
            "{ctx}, interposer"
        );
        assert_eq!(via_cli(&b, ctx, "true", "nice"), "10\n", "{ctx}, ctx exec");
    }
}

/// `setarch linux32 -R`: the execution domain (what `uname -m` says) and its flags reach a
/// routed program of the caller's own uid whole; another user's program gets the domain
/// but not `ADDR_NO_RANDOMIZE` (the kernel clears it across a set-id exec too).
#[test]
fn the_personality_is_carried_without_its_weakening_flags_for_another_user() {
    let b = Broker::start(&config());
    let probe = [
        "setarch",
        "linux32",
        "-R",
        "sh",
        "-c",
        "cat /proc/self/personality; uname -m",
    ];
    let (local, routed) = both(&b, "root", &probe);
    assert_eq!(local, "00040008\ni686\n");
    assert_eq!(routed, local);
    let (_, routed) = both(&b, "alice", &probe);
    assert_eq!(routed, "00000008\ni686\n");
}

/// `chrt -i` and `chrt -b` (a build started idle) reach the routed program; a realtime
/// policy, which would be a raise for it, does not.
#[test]
fn an_idle_or_batch_scheduling_policy_is_carried_a_realtime_one_is_not() {
    let b = Broker::start(&config());
    let probe = "chrt -p $$ | head -1 | sed 's/.*: //'";
    for (flag, policy) in [("-i", "SCHED_IDLE\n"), ("-b", "SCHED_BATCH\n")] {
        for ctx in ["root", "alice"] {
            let (local, routed) = both(&b, ctx, &["chrt", flag, "0", "sh", "-c", probe]);
            assert_eq!(local, policy);
            assert_eq!(routed, local, "{ctx} {flag}");
        }
    }
    let (local, routed) = both(&b, "root", &["chrt", "-f", "10", "sh", "-c", probe]);
    assert_eq!(local, "SCHED_FIFO\n");
    assert_eq!(routed, "SCHED_OTHER\n");
}

/// A caller's timer slack and NUMA memory policy (set with `prctl` and `set_mempolicy`,
/// as `numactl --preferred=0` does) reach the routed program.
#[test]
fn the_timer_slack_and_the_numa_policy_are_carried() {
    let b = Broker::start(&config());
    // The probe prints its timer slack and its memory policy's mode and first mask word.
    let probe = "cat /proc/self/timerslack_ns; /usr/bin/python3 -c \"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
mode, mask = ctypes.c_int(), (ctypes.c_ulong * 16)()
assert libc.syscall(239, ctypes.byref(mode), mask, ctypes.c_ulong(1024), None, ctypes.c_ulong(0)) == 0
print(mode.value, mask[0])\"";
    let setup = format!(
        "import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(29, ctypes.c_ulong(123456), 0, 0, 0) == 0
mask = ctypes.c_ulong(1)
assert libc.syscall(238, 1, ctypes.byref(mask), ctypes.c_ulong(64)) == 0
os.execvp('sh', ['sh', '-c', {probe:?}])"
    );
    for ctx in ["root", "alice"] {
        let (local, routed) = both(&b, ctx, &["/usr/bin/python3", "-c", &setup]);
        // MPOL_PREFERRED (1) on node 0.
        assert_eq!(local, "123456\n1 1\n");
        assert_eq!(routed, local, "{ctx}");
    }
}

#[test]
fn the_cpu_affinity_is_carried() {
    let b = Broker::start(&config());
    let probe = ["sh", "-c", "grep Cpus_allowed_list /proc/self/status"];
    for ctx in ["root", "alice"] {
        let mut argv = vec!["taskset", "-c", "0"];
        argv.extend(probe);
        let (local, routed) = both(&b, ctx, &argv);
        assert_eq!(local, "Cpus_allowed_list:\t0\n");
        assert_eq!(routed, local, "{ctx}");
    }
    same_everywhere(
        &b,
        &["alice"],
        "taskset -pc 0 $$ >/dev/null",
        "grep Cpus_allowed_list /proc/self/status",
        "Cpus_allowed_list:\t0\n",
    );
}

#[test]
fn a_lower_io_priority_is_carried() {
    let b = Broker::start(&config());
    for ctx in ["root", "alice"] {
        let (local, routed) = both(&b, ctx, &["ionice", "-c", "3", "sh", "-c", "ionice"]);
        assert_eq!(local, "idle\n");
        assert_eq!(routed, local, "{ctx}");
        let (local, routed) = both(
            &b,
            ctx,
            &["ionice", "-c", "2", "-n", "7", "sh", "-c", "ionice"],
        );
        assert_eq!(local, "best-effort: prio 7\n");
        assert_eq!(routed, local, "{ctx}");
    }
    same_everywhere(&b, &["alice"], "ionice -c 3 -p $$", "ionice", "idle\n");
}

#[test]
fn a_higher_io_priority_is_not_carried() {
    let b = Broker::start(&config());
    let default = run(&mut b.exec_cmd("root", &["ionice"])).ok();
    // Realtime (root may ask for it locally) and the highest best-effort level.
    for class in [&["-c", "1"][..], &["-c", "2", "-n", "0"]] {
        let mut argv = vec!["ionice"];
        argv.extend(class);
        argv.extend(["sh", "-c", "ionice"]);
        let (local, routed) = both(&b, "root", &argv);
        assert_ne!(local, default, "{argv:?}");
        assert_eq!(routed, default, "{argv:?}");
    }
}

/// Sets this test process's own `oom_score_adj` (each test runs in a process of its own),
/// which the broker started next inherits as its default.
fn set_own_oom_score_adj(value: i32) {
    std::fs::write("/proc/self/oom_score_adj", value.to_string())
        .expect("raising our own oom_score_adj needs no privilege");
}

#[test]
fn a_higher_oom_score_adj_is_carried() {
    let b = Broker::start(&config());
    same_everywhere(
        &b,
        &["root", "alice"],
        "echo 500 > /proc/self/oom_score_adj",
        "cat /proc/self/oom_score_adj",
        "500\n",
    );
}

#[test]
fn a_lower_oom_score_adj_is_not_carried() {
    // The broker (and so every routed process) defaults to 300; the caller lowers its own
    // to 100, which root without CAP_SYS_RESOURCE may (it never went below 0).
    set_own_oom_score_adj(300);
    let b = Broker::start(&config());
    let setup = "echo 100 > /proc/self/oom_score_adj";
    let probe = "cat /proc/self/oom_score_adj";
    assert_eq!(local(setup, probe), "100\n");
    for ctx in ["root", "alice"] {
        assert_eq!(via_interposer(&b, ctx, setup, probe), "300\n", "{ctx}");
        assert_eq!(via_cli(&b, ctx, setup, probe), "300\n", "{ctx}");
    }
}

/// The broker's own `oom_score_adj` changed while it runs (from outside, through
/// /proc/PID): each launch starts from the broker's value at that launch, and a caller's
/// value is carried exactly when it is above it. Callers at 0, 500 and 1000 against the
/// broker at 0, 300 (raised) and 100 (lowered again, which its floor of 0 allows).
#[test]
fn a_routed_oom_score_adj_is_the_callers_or_the_brokers_current_whichever_is_higher() {
    let b = Broker::start(&config());
    let probe = "cat /proc/self/oom_score_adj";
    for broker in [0, 300, 100] {
        std::fs::write(
            format!("/proc/{}/oom_score_adj", b.pid()),
            broker.to_string(),
        )
        .unwrap();
        for caller in [0, 500, 1000] {
            let setup = format!("echo {caller} > /proc/self/oom_score_adj");
            assert_eq!(local(&setup, probe), format!("{caller}\n"));
            let want = format!("{}\n", caller.max(broker));
            for ctx in ["root", "alice"] {
                assert_eq!(
                    via_interposer(&b, ctx, &setup, probe),
                    want,
                    "{ctx}: caller {caller}, broker {broker}"
                );
                assert_eq!(
                    via_cli(&b, ctx, &setup, probe),
                    want,
                    "{ctx}: caller {caller}, broker {broker}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------

/// `trap '' PIPE`: `yes` then gets EPIPE instead of dying of SIGPIPE, and exits 1.
#[test]
fn an_ignored_sigpipe_is_carried() {
    let b = Broker::start(&config());
    let script = "trap '' PIPE; yes | head -1; echo ${PIPESTATUS[0]}";
    for ctx in ["root", "alice"] {
        let (local, routed) = both(&b, ctx, &["bash", "-c", script]);
        assert_eq!(local, "y\n1\n");
        assert_eq!(routed, local, "{ctx}");
    }
    // Not ignored: both die of it.
    let (local, routed) = both(
        &b,
        "alice",
        &["bash", "-c", "yes | head -1; echo ${PIPESTATUS[0]}"],
    );
    assert_eq!(local, "y\n141\n");
    assert_eq!(routed, local);
}

#[test]
fn ignored_signals_are_carried() {
    let b = Broker::start(&config());
    let probe = "grep SigIgn /proc/self/status";
    // Compared with the local run, whose mask also holds what the test runner ignores.
    let got = same_as_local(&b, &["root", "alice"], "trap '' INT TERM", probe);
    assert_eq!(
        sig_ign(&got) & (bit(libc::SIGINT) | bit(libc::SIGTERM) | bit(libc::SIGHUP)),
        bit(libc::SIGINT) | bit(libc::SIGTERM),
        "{got}"
    );
    // nohup ignores SIGHUP and execs its command: the exec is the routed one.
    for ctx in ["root", "alice"] {
        let (local, routed) = both(&b, ctx, &["nohup", "sh", "-c", probe]);
        assert_ne!(sig_ign(&local) & bit(libc::SIGHUP), 0, "{local}");
        assert_eq!(routed, local, "{ctx}");
    }
}

/// glibc's `posix_spawn` leaves its own signals 32 and 33 (thread cancellation, setxid)
/// ignored in the child, which keeps them so across its exec; a program spawned without
/// file actions, which the hook routes itself, got the caller's dispositions of them
/// instead: their default in a caller started by fork and exec (a login shell, a service),
/// whose own launcher never ignored them. `system(3)` spawns its shell so too.
#[test]
fn a_spawned_program_has_glibc_s_signals_ignored_as_locally() {
    use std::os::unix::process::CommandExt;
    let b = Broker::start(&config());
    let script = r#"
import os, sys
if sys.argv[1] == "system":
    os.system("grep SigIgn /proc/self/status")
    sys.exit()
attrs = {"setsigdef": {2}} if sys.argv[1] == "setsigdef" else {}
pid = os.posix_spawn("/bin/grep", ["grep", "SigIgn", "/proc/self/status"], os.environ, **attrs)
os.waitpid(pid, 0)
"#;
    let internal = (1u64 << 31) | (1 << 32);
    let with_defaults = |mut cmd: Command| {
        // SAFETY: only raw rt_sigaction calls between fork and exec (glibc's wrapper
        // refuses these two numbers); this test harness, spawned itself, has them ignored.
        unsafe {
            cmd.pre_exec(|| {
                let dfl = [0u64; 4];
                for sig in [32, 33] {
                    libc::syscall(libc::SYS_rt_sigaction, sig, dfl.as_ptr(), 0usize, 8usize);
                }
                Ok(())
            });
        }
        cmd
    };
    for ctx in ["root", "alice"] {
        for case in ["plain", "setsigdef", "system"] {
            let mut cmd = with_defaults(Command::new("/usr/bin/python3"));
            cmd.args(["-c", script, case]);
            let local = run(&mut cmd).ok();
            assert_eq!(sig_ign(&local) & internal, internal, "{case}: {local}");
            let mut cmd = with_defaults(b.ctx(["run", "--route-to", ctx, "--"]));
            cmd.args(["/usr/bin/python3", "-c", script, case]);
            let routed = routed_ok(&b, ctx, &mut cmd);
            assert_eq!(routed, local, "{ctx}, {case}");
        }
    }
}

/// `system(3)` ignores SIGINT and SIGQUIT in the caller while it waits, and blocks
/// SIGCHLD; its child gets them back (glibc's posix_spawn attributes, which the hook
/// applies to what it sends) unless the caller ignored them before.
#[test]
fn system_gives_its_child_the_callers_signal_state() {
    let b = Broker::start(&config());
    let script = r#"
import os, signal, sys
if sys.argv[1] == "quit-ignored":
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
os.system("grep SigIgn /proc/self/status")
"#;
    for case in ["plain", "quit-ignored"] {
        let (local, routed) = both(&b, "alice", &["/usr/bin/python3", "-c", script, case]);
        let ign = sig_ign(&local);
        assert_eq!(ign & bit(libc::SIGINT), 0, "{case}: {local}");
        assert_eq!(
            ign & bit(libc::SIGQUIT) != 0,
            case == "quit-ignored",
            "{local}"
        );
        assert_eq!(routed, local, "{case}");
    }
}

/// Python blocks SIGUSR1, keeps its own ignored SIGPIPE and SIGXFSZ for the child
/// (`restore_signals=False`), and launches by vfork + exec.
#[test]
fn the_signal_mask_is_carried() {
    let b = Broker::start(&config());
    let script = r#"
import signal, subprocess
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
subprocess.run(["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"], restore_signals=False, check=True)
"#;
    for ctx in ["root", "alice"] {
        let (local, routed) = both(&b, ctx, &["/usr/bin/python3", "-c", script]);
        let lines: Vec<&str> = local.lines().collect();
        assert_eq!(lines[0], "SigBlk:\t0000000000000200", "{local}");
        let pipe_xfsz = bit(libc::SIGPIPE) | bit(libc::SIGXFSZ);
        assert_eq!(sig_ign(lines[1]) & pipe_xfsz, pipe_xfsz, "{local}");
        assert_eq!(routed, local, "{ctx}");
    }
    // The CLI: a blocked SIGUSR2 (bit 11) in the shell that runs ctx exec.
    let script = r#"
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
os.execv(sys.argv[1], [sys.argv[1], "--socket", sys.argv[2], "exec", "--context", "alice",
    "--", "grep", "SigBlk", "/proc/self/status"])
"#;
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", script]).arg(bin("ctx")).arg(b.socket());
    assert_eq!(
        routed_ok(&b, "alice", &mut cmd),
        "SigBlk:\t0000000000000800\n"
    );
}

// ---------------------------------------------------------------------------------------
// Working directory
// ---------------------------------------------------------------------------------------

#[test]
fn a_deleted_cwd_is_carried() {
    let b = Broker::start(&config());
    let tmp = TempDir::new();
    // Where alice may create and remove a directory (her mkdir is a routed one).
    let dir = tmp.subdir("shared", 0o1777);
    // The inode of the directory, then the probe's view of its cwd once it is gone: the
    // same inode, and empty (not even `.` and `..` are listed in a deleted directory).
    // Nothing that writes: a probe that ran elsewhere must not leave files behind.
    let setup = "mkdir d && cd d && stat -c %i . && rmdir ../d";
    let probe = "stat -c %i .; ls -a | wc -l";
    let in_dir = |mut cmd: Command| {
        cmd.current_dir(&dir);
        cmd
    };
    let mut cmd = in_dir(Command::new("bash"));
    cmd.args(["-c", &format!("{setup}; sh -c \"$0\""), probe]);
    let local = run(&mut cmd).ok();
    let lines: Vec<&str> = local.lines().collect();
    assert_eq!(lines.len(), 3, "{local}");
    assert_eq!(lines[0], lines[1], "same inode: {local}");
    assert_eq!(lines[2], "0", "{local}");
    for ctx in ["root", "alice"] {
        let mut cmd = in_dir(b.ctx(["run", "--route-to", ctx, "--", "bash", "-c"]));
        cmd.args([&format!("{setup}; sh -c \"$0\""), probe]);
        let routed = routed_ok(&b, ctx, &mut cmd);
        let r: Vec<&str> = routed.lines().collect();
        assert_eq!(r.len(), 3, "{ctx}: {routed}");
        assert_eq!(r[0], r[1], "{ctx}: the same directory: {routed}");
        assert_eq!(r[2], "0", "{ctx}: {routed}");

        let script =
            format!("{setup}; exec \"$1\" --socket \"$2\" exec --context {ctx} -- sh -c \"$0\"");
        let mut cmd = in_dir(Command::new("bash"));
        cmd.args(["-c", &script, probe])
            .arg(bin("ctx"))
            .arg(b.socket());
        let routed = routed_ok(&b, ctx, &mut cmd);
        let r: Vec<&str> = routed.lines().collect();
        assert_eq!(r.len(), 3, "{ctx} by ctx exec: {routed}");
        assert_eq!(r[0], r[1], "{ctx} by ctx exec: {routed}");
        assert_eq!(r[2], "0", "{ctx} by ctx exec: {routed}");
    }
    // A context with a cwd of its own keeps it (mkdir and rmdir run here, in the caller's
    // cwd: routed, they would run in the context's).
    let mut cmd = in_dir(b.ctx(["run", "--route-to", "fixed", "--passthrough", "mkdir"]));
    cmd.args(["--passthrough", "rmdir", "--", "bash", "-c"]);
    cmd.args(["mkdir e && cd e && rmdir ../e && sh -c pwd"]);
    assert_eq!(routed_ok(&b, "fixed", &mut cmd), "/tmp\n");
}

/// A cwd that still exists is entered by its path, as the context's uid: one it may not
/// reach stays a clear bad-cwd error, not something the descriptor gets around.
#[test]
fn a_cwd_the_context_user_cannot_reach_is_still_refused() {
    let b = Broker::start(&config());
    let dir = TempDir::new();
    dir.subdir("private", 0o700);
    let inner = dir.subdir("private/inner", 0o755);
    let mut cmd = b.ctx([
        "run",
        "--route-to",
        "alice",
        "--",
        "sh",
        "-c",
        "sh -c pwd; echo rc=$?",
    ]);
    cmd.current_dir(&inner);
    let out = run(&mut cmd);
    // A late failure before the exec: ctx's own (125), by the one table `ctx exec` uses.
    assert_eq!(out.stdout_str(), "rc=125\n", "{}", out.show());
    let mut cmd = b.exec_cmd("alice", &["pwd"]);
    cmd.current_dir(&inner);
    let out = run(&mut cmd);
    assert_eq!(out.code(), 125, "{}", out.show());
    assert!(out.stderr_str().contains("cannot enter"), "{}", out.show());
}

/// A request whose cwd name and cwd descriptor disagree runs where the descriptor is, as
/// a local child would (its cwd is the directory, not a name), and the audit says so:
/// `./id` named under `/usr/bin` must not be recorded as `/usr/bin/id`.
#[test]
fn a_cwd_named_unlike_its_descriptor_runs_and_is_audited_by_the_descriptor() {
    use std::io::Read;
    use std::os::fd::AsRawFd;

    let b = Broker::start(&config());
    let tmp = TempDir::new();
    let dir = tmp.subdir("planted", 0o755);
    std::fs::write(dir.join("id"), "#!/bin/sh\necho planted in \"$(pwd -P)\"\n").unwrap();
    std::fs::set_permissions(dir.join("id"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cwd = std::fs::File::open(&dir).unwrap();
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let mut out_r = std::fs::File::from(out_r);
    let null = std::fs::File::open("/dev/null").unwrap();

    let mut req = raw::exec_request("alice", &[b"./id"]);
    req.cwd = b"/usr/bin".to_vec().into();
    let mut inherited = ctx_protocol::inherit::Captured::empty().to_inherited();
    inherited.cwd_fd = true;
    req.inherited = Some(inherited);
    let fds = [
        null.as_raw_fd(),
        out_w.as_raw_fd(),
        out_w.as_raw_fd(),
        cwd.as_raw_fd(),
    ];
    let bytes = raw::opening(&ctx_protocol::Request::Exec(req));
    let mut s = raw::send_opening(&b.socket(), &bytes, &fds);
    drop(out_w);
    let (frames, _) = raw::read_until_close(&mut s, std::time::Duration::from_secs(20));
    let mut out = String::new();
    out_r.read_to_string(&mut out).unwrap();
    assert!(
        matches!(
            raw::exit_of(&frames),
            Some(ctx_protocol::ExitStatus::Code(0))
        ),
        "{out}"
    );
    let real = std::fs::canonicalize(&dir).unwrap();
    let real = real.to_str().unwrap();
    assert_eq!(out, format!("planted in {real}\n"));
    let lines = b.wait_audit(1, |l| l["event"] == "exec" && l["context"] == "alice");
    assert_eq!(lines[0]["cwd"], real, "{}", lines[0]);
}

/// A caller in a private mount namespace names its cwd by a path that means another
/// directory in the broker's: the program runs in the caller's directory, and the audit
/// says the name is the caller's (`cwd_verified: false`) with the directory's `dev:ino`.
#[test]
fn a_cwd_named_in_the_callers_private_mounts_is_audited_as_unverified() {
    use std::os::unix::fs::MetadataExt;

    let b = Broker::start(&config());
    let tmp = TempDir::new();
    let real = tmp.subdir("real", 0o755);
    let over = tmp.subdir("over", 0o755);
    tmp.file("real/marker", b"", 0o644);
    let script = format!(
        "mount --bind {} {} && cd {} && exec \"$0\" --socket \"$1\" exec --context alice -- ls",
        real.display(),
        over.display(),
        over.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script])
        .arg(bin("ctx"))
        .arg(b.socket());
    assert_eq!(run(&mut cmd).ok(), "marker\n");
    let lines = b.wait_audit(1, |l| l["event"] == "exec" && l["context"] == "alice");
    let line = &lines[0];
    assert_eq!(line["cwd_verified"], false, "{line}");
    let meta = std::fs::metadata(&real).unwrap();
    assert_eq!(
        line["cwd_id"],
        format!("{}:{}", meta.dev(), meta.ino()),
        "{line}"
    );
    // A caller in the broker's namespace is not marked.
    let mut cmd = b.exec_cmd("alice", &["true"]);
    cmd.current_dir(&real);
    run(&mut cmd).ok();
    let lines = b.wait_audit(2, |l| l["event"] == "exec" && l["context"] == "alice");
    assert!(lines[1].get("cwd_verified").is_none(), "{}", lines[1]);
}

/// `ctx run` replaces itself with the program, like a shell's `exec`: the program keeps
/// the caller's signal mask and ignored SIGPIPE (which std's own exec would reset).
#[test]
fn ctx_run_keeps_the_callers_signal_state() {
    use std::ffi::OsString;
    let b = Broker::start(&config());
    // grep itself: dash, as sh, empties its signal mask when it starts.
    let probe = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"].map(OsString::from);
    let script = r#"
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
signal.signal(signal.SIGPIPE, signal.SIG_IGN)
os.execvp(sys.argv[1], sys.argv[1:])
"#;
    let python = |argv: &[OsString]| {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args(["-c", script]).args(argv);
        run(&mut cmd).ok()
    };
    let local = python(&probe);
    let mut argv = vec![bin("ctx").into_os_string(), "--socket".into()];
    argv.extend([
        b.socket().into_os_string(),
        "run".into(),
        "--route-to".into(),
    ]);
    argv.extend(["alice".into(), "--".into()]);
    argv.extend(probe);
    let via_run = python(&argv);
    assert!(local.starts_with("SigBlk:\t0000000000000200\n"), "{local}");
    assert_ne!(
        sig_ign(local.lines().nth(1).unwrap()) & bit(libc::SIGPIPE),
        0
    );
    assert_eq!(via_run, local);
}

/// Connects to the broker (argv[1]) from the broker's mount namespace, waits until the
/// broker has surely taken the connection in, then leaves for a mount namespace of its
/// own where argv[3] is bound over argv[4], enters argv[4] and only then sends the launch
/// (argv[2], hex) with its cwd there. Prints the program's output.
const LEAVE_AFTER_CONNECT: &str = r#"
import ctypes, os, socket, subprocess, sys, time
path, opening, real, over = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
time.sleep(0.5)
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
    sys.exit("unshare: errno %d" % ctypes.get_errno())
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
subprocess.run(["mount", "--bind", real, over], check=True)
cwd = os.open(over, os.O_PATH | os.O_DIRECTORY)
null = os.open("/dev/null", os.O_RDWR)
sys.stdout.flush()
socket.send_fds(s, [opening], [null, 1, 1, cwd])
while s.recv(65536):
    pass
"#;

/// Runs `script` (a raw client: argv[1] the socket, argv[2] the request, argv[3] the real
/// directory, argv[4] `name`) with a launch of `ls` into alice whose cwd is `name`, the
/// request saying a cwd descriptor rides with it.
fn launch_ls_with_cwd_name(
    b: &Broker,
    script: &str,
    real: &std::path::Path,
    name: &std::path::Path,
) -> Output {
    let mut req = ctx_tests::raw::exec_request("alice", &[b"ls"]);
    req.cwd = name.to_str().unwrap().as_bytes().to_vec().into();
    let mut inherited = ctx_protocol::inherit::Captured::empty().to_inherited();
    inherited.cwd_fd = true;
    req.inherited = Some(inherited);
    let hex = ctx_tests::raw::hex(&ctx_tests::raw::opening(&ctx_protocol::Request::Exec(req)));
    run(Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(b.socket())
        .arg(&hex)
        .arg(real)
        .arg(name))
}

/// Runs `script` (a raw client: argv[1] the socket, argv[2] the request, argv[3] the real
/// directory, argv[4] the name it is bound over in the mount namespace the request is sent
/// from) with a launch of `ls` into alice whose cwd is that name, and checks the audit
/// marks the name unverified with the real directory's `dev:ino`.
fn assert_cwd_from_another_namespace_is_unverified(script: &str) {
    use std::os::unix::fs::MetadataExt;

    let b = Broker::start(&config());
    let tmp = TempDir::new();
    let real = tmp.subdir("real", 0o755);
    let over = tmp.subdir("over", 0o755);
    tmp.file("real/marker", b"", 0o644);
    let out = launch_ls_with_cwd_name(&b, script, &real, &over);
    assert_eq!(
        out.ok(),
        "marker\n",
        "the program ran in the sender's directory"
    );
    let lines = b.wait_audit(1, |l| l["event"] == "exec" && l["context"] == "alice");
    let line = &lines[0];
    let meta = std::fs::metadata(&real).unwrap();
    assert_eq!(line["cwd_verified"], false, "{line}");
    assert_eq!(
        line["cwd_id"],
        format!("{}:{}", meta.dev(), meta.ino()),
        "{line}"
    );
}

/// The same as [`a_cwd_named_in_the_callers_private_mounts_is_audited_as_unverified`],
/// with the caller still in the broker's mount namespace when it connects: it leaves for
/// its own (`unshare(CLONE_NEWNS)`, a bind mount over the name it then gives as its cwd)
/// between connecting and sending the launch. The name means another directory in the
/// broker's namespace: the audit must not pass it off as fact.
#[test]
fn a_caller_that_leaves_the_brokers_mount_namespace_after_connecting_is_audited_as_unverified() {
    assert_cwd_from_another_namespace_is_unverified(LEAVE_AFTER_CONNECT);
}

/// Connects to the broker (argv[1]) and stays, alive and holding the connection, in the
/// broker's mount namespace, while a child it forked (holding the same connection) leaves
/// for a namespace of its own where argv[3] is bound over argv[4] and sends the launch
/// (argv[2], hex) with its cwd there. Prints the program's output. (The connecting process
/// lets go of the connection only at the end: before 6.5 a connection whose connector let
/// go before the broker identified it is refused, see `control_plane`.)
const PASS_THE_CONNECTION: &str = r#"
import ctypes, os, socket, subprocess, sys
path, opening, real, over = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        os._exit(3)
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["mount", "--bind", real, over], check=True)
    cwd = os.open(over, os.O_PATH | os.O_DIRECTORY)
    null = os.open("/dev/null", os.O_RDWR)
    socket.send_fds(s, [opening], [null, 1, 1, cwd])
    while s.recv(65536):
        pass
    os._exit(0)
os.waitpid(pid, 0)
s.close()
"#;

/// The connecting process stays in the broker's mount namespace; the process it passed
/// the connection to (here a forked child; `SCM_RIGHTS` does the same) sits in another and
/// names its cwd there. The broker judged by the connecting process's namespace, so the
/// name, which means another directory in the broker's namespace, was audited as fact.
#[test]
fn a_cwd_sent_over_a_connection_passed_into_another_mount_namespace_is_audited_as_unverified() {
    assert_cwd_from_another_namespace_is_unverified(PASS_THE_CONNECTION);
}

/// Plants a symlink at argv[4] to argv[3] (where a context's user may write, its home
/// say) and sends the launch with that name as its cwd and argv[3] as the descriptor.
const SYMLINKED_NAME: &str = r#"
import os, socket, sys
path, opening, real, over = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3], sys.argv[4]
os.symlink(real, over)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
cwd = os.open(real, os.O_PATH | os.O_DIRECTORY)
null = os.open("/dev/null", os.O_RDWR)
sys.stdout.flush()
socket.send_fds(s, [opening], [null, 1, 1, cwd])
while s.recv(65536):
    pass
"#;

/// A caller names its cwd through a symlink it planted: the program runs in the directory
/// passed, and the audit names that directory by the kernel's own path for the descriptor
/// (never the planted name), which the broker looks up again without following links.
#[test]
fn a_cwd_named_through_a_planted_symlink_is_audited_by_its_real_path() {
    let b = Broker::start(&config());
    let tmp = TempDir::new();
    let real = tmp.subdir("real", 0o755);
    let over = tmp.path().join("over");
    tmp.file("real/marker", b"", 0o644);
    let out = launch_ls_with_cwd_name(&b, SYMLINKED_NAME, &real, &over);
    assert_eq!(out.ok(), "marker\n");
    let lines = b.wait_audit(1, |l| l["event"] == "exec" && l["context"] == "alice");
    let line = &lines[0];
    assert_eq!(line["cwd"], real.to_str().unwrap(), "{line}");
    assert!(line.get("cwd_verified").is_none(), "{line}");
}

/// helper-89: an environment holding a name twice reaches the program with both, in their
/// order (`getenv` reads the first, a shell keeps the last; routed, only the last came);
/// an empty argv runs with `[""]`, as the kernel gives it (routed, it was refused with
/// EINVAL).
#[test]
fn a_doubled_name_and_an_empty_argv_cross_as_the_kernel_passes_them() {
    let dir = TempDir::new();
    let src = dir.file(
        "odd_exec.c",
        br#"#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char *env[] = {"DUP=first", "DUP=second", "PATH=/usr/bin:/bin", 0};
    char *none[] = {0};
    if (argc > 1 && strcmp(argv[1], "dup") == 0) {
        char *a[] = {"env", 0};
        execve("/usr/bin/env", a, env);
    } else {
        execve("/bin/sh", none, env);
    }
    return 127;
}
"#,
        0o644,
    );
    let exe = dir.path().join("odd_exec");
    let cc = Command::new("cc")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap();
    assert!(cc.success());
    let b = inheriting_everything("inherit");
    let exe = exe.to_str().unwrap();
    let run_it = |routed: bool, arg: &str| {
        let mut cmd = if routed {
            let mut c = b.ctx(["run", "--route-to", "all", "--", exe, arg]);
            c.current_dir(dir.path());
            c
        } else {
            let mut c = Command::new(exe);
            c.arg(arg);
            c
        };
        let out = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                // `env` reads no stdin and may be gone before the write: only the shell's
                // script matters, so a closed pipe is no failure.
                let script = child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(b"echo ran $# \"[$0]\"\n");
                match script {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e),
                    _ => {}
                }
                child.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dups = |out: String| -> String {
        out.lines()
            .filter(|l| l.starts_with("DUP="))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    assert_eq!(dups(run_it(false, "dup")), "DUP=first\nDUP=second\n");
    assert_eq!(dups(run_it(true, "dup")), "DUP=first\nDUP=second\n");
    assert_eq!(run_it(false, "empty"), "ran 0 []\n");
    assert_eq!(run_it(true, "empty"), "ran 0 []\n");
}

/// A broker whose context `all` (ALICE, `cwd`) inherits the caller's whole environment.
fn inheriting_everything(cwd: &str) -> Broker {
    Broker::start(&format!(
        r#"[broker]
socket_mode = "0666"

[contexts.all]
user = "{ALICE}"
cwd = "{cwd}"
inherit_env = ["*"]
allow = {{ uids = [0] }}
"#
    ))
}

/// A launch carrying thousands of variables (past the size whose plan is built off the
/// broker's runtime workers, so that it holds up no other connection: helper-91 measured
/// other uids' launches waiting up to 2.2 s behind ten of 300,000) gets every one of them.
#[test]
fn a_launch_with_thousands_of_variables_gets_them_all() {
    let b = inheriting_everything("/");
    let mut cmd = b.ctx([
        "exec",
        "--context",
        "all",
        "--",
        "sh",
        "-c",
        "env | grep -c '^MANY_'",
    ]);
    for i in 0..5000 {
        cmd.env(format!("MANY_{i}"), i.to_string());
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "5000\n");
}
