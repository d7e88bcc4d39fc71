//! `ctx exec` into a real context: who the routed process runs as, what environment and
//! working directory it gets, and how its exit status and launch failures come back.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::process::Command;

use ctx_tests::*;

/// `ctx` with core dumps off, so that a re-raised SIGSEGV leaves no core file behind.
fn no_core(cmd: &mut Command) -> &mut Command {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------

#[test]
fn routed_process_runs_as_the_context_user() {
    let alice = user(ALICE);
    let b = Broker::start(&standard_config());

    assert_eq!(
        b.exec("alice", &["id", "-u"]).ok(),
        format!("{}\n", alice.uid)
    );
    assert_eq!(
        b.exec("alice", &["id", "-g"]).ok(),
        format!("{}\n", alice.gid)
    );
    assert_eq!(b.exec("alice", &["id", "-un"]).ok(), format!("{ALICE}\n"));
    // Real and effective ids both switched (no setuid-style leftovers).
    assert_eq!(
        b.exec("alice", &["id", "-ru"]).ok(),
        format!("{}\n", alice.uid)
    );
    assert_eq!(
        b.exec("alice", &["id", "-rg"]).ok(),
        format!("{}\n", alice.gid)
    );
}

#[test]
fn routed_process_has_the_users_supplementary_groups_and_no_others() {
    let alice = user(ALICE);
    let testers = group_gid(TESTERS_GROUP);
    let b = Broker::start(&standard_config());

    let got: BTreeSet<u32> = b
        .exec("alice", &["id", "-G"])
        .ok()
        .split_whitespace()
        .map(|g| g.parse().expect("gid"))
        .collect();
    // What initgroups gives ctx-alice, asked of the system directly.
    let want: BTreeSet<u32> = run(Command::new("id").args(["-G", ALICE]))
        .ok()
        .split_whitespace()
        .map(|g| g.parse().expect("gid"))
        .collect();
    assert_eq!(got, want, "supplementary groups of the routed process");
    assert!(
        got.contains(&testers),
        "{TESTERS_GROUP} ({testers}) missing from {got:?}"
    );
    assert!(got.contains(&alice.gid));
    assert!(
        !got.contains(&0),
        "root's group leaked into the routed process: {got:?}"
    );
}

#[test]
fn routed_process_gets_home_user_logname_shell_of_the_context_user() {
    let alice = user(ALICE);
    let b = Broker::start(&standard_config());
    let out = b
        .exec(
            "alice",
            &[
                "sh",
                "-c",
                r#"printf '%s|%s|%s|%s' "$HOME" "$USER" "$LOGNAME" "$SHELL""#,
            ],
        )
        .ok();
    let shell = nix::unistd::User::from_name(ALICE)
        .unwrap()
        .unwrap()
        .shell
        .display()
        .to_string();
    assert_eq!(
        out,
        format!("{}|{ALICE}|{ALICE}|{shell}", alice.home.display())
    );
}

// ---------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------

/// Runs `env` in `alice` from a client whose environment holds a canary secret, inherited
/// (`LC_*`, `TERM`) and non-inherited variables; returns the routed env as (name, value).
fn routed_env(b: &Broker, canary: &str, extra_args: &[&str]) -> Vec<(String, String)> {
    let mut cmd = b.ctx(["exec", "--context", "alice"]);
    cmd.args(extra_args)
        .args(["--", "env"])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("CANARY_SECRET", canary)
        .env("LC_CTX_TEST", "lc-passes")
        .env("LC_MESSAGES", "C")
        .env("TERM", "xterm-ctx-test")
        .env("LANG", "C.UTF-8")
        .env("NOT_INHERITED", "must-not-cross")
        .env("CTX_ROUTE", "must-not-cross")
        .env("HOME", "/root")
        .env("USER", "root");
    let out = run(&mut cmd).ok();
    assert!(
        !out.contains(canary),
        "the caller's canary secret reached the routed process:\n{out}"
    );
    out.lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

#[test]
fn routed_env_is_context_env_plus_inherit_env_only() {
    let alice = user(ALICE);
    let b = Broker::start(&standard_config());
    let canary = unique("canary-");
    let env = routed_env(&b, &canary, &[]);

    assert_eq!(get(&env, "CONTEXT_SECRET"), Some("alice-key"), "{env:?}");
    assert_eq!(get(&env, "CANARY_SECRET"), None, "{env:?}");
    assert_eq!(get(&env, "LC_CTX_TEST"), Some("lc-passes"), "{env:?}");
    assert_eq!(get(&env, "LC_MESSAGES"), Some("C"), "{env:?}");
    assert_eq!(get(&env, "TERM"), Some("xterm-ctx-test"), "{env:?}");
    assert_eq!(
        get(&env, "LANG"),
        None,
        "LANG is not in inherit_env: {env:?}"
    );
    assert_eq!(get(&env, "NOT_INHERITED"), None, "{env:?}");
    assert_eq!(get(&env, "CTX_ROUTE"), None, "{env:?}");
    assert_eq!(
        get(&env, "HOME"),
        Some(alice.home.to_str().unwrap()),
        "{env:?}"
    );
    assert_eq!(get(&env, "USER"), Some(ALICE), "{env:?}");
    assert_eq!(
        get(&env, "PATH"),
        Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "default PATH: {env:?}"
    );
    // Nothing else crosses: only the context's, the user's and inherit_env names (PWD and
    // SHLVL are harmless values a launcher may set).
    let allowed = [
        "CONTEXT_SECRET",
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LC_CTX_TEST",
        "LC_MESSAGES",
        "TERM",
        "PWD",
        "SHLVL",
    ];
    let unexpected: Vec<_> = env
        .iter()
        .filter(|(k, _)| !allowed.contains(&k.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected variables: {unexpected:?}"
    );
}

#[test]
fn exec_e_sets_variables_over_the_context_env() {
    let b = Broker::start(&standard_config());
    let canary = unique("canary-");
    let env = routed_env(
        &b,
        &canary,
        &[
            "-e",
            "EXTRA_SETTING=one two",
            "-e",
            "CONTEXT_SECRET=overridden",
        ],
    );
    assert_eq!(get(&env, "EXTRA_SETTING"), Some("one two"), "{env:?}");
    assert_eq!(get(&env, "CONTEXT_SECRET"), Some("overridden"), "{env:?}");
    assert_eq!(get(&env, "CANARY_SECRET"), None, "{env:?}");
}

/// Issue 15: with `inherit_env = ["*"]` a routed child gets what a local one would: the
/// caller's PATH (not the default), the caller's own preloads (only ctx's interposer is
/// taken out of LD_PRELOAD), and a variable whose name is not UTF-8.
#[test]
fn inherit_all_carries_path_preloads_and_odd_names() {
    use std::os::unix::ffi::OsStrExt;
    let config = format!(
        "[contexts.all]\nuser = \"{ALICE}\"\ncwd = \"/\"\ninherit_env = [\"*\"]\n\n\
         [contexts.some]\nuser = \"{ALICE}\"\ncwd = \"/\"\ninherit_env = [\"PATH\"]\n"
    );
    let b = Broker::start(&config);
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libm");
    let path = "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin";
    // Python execs env(1) with its whole environment: that exec is the routed one.
    let py = "import os; os.execv('/usr/bin/env', ['env', '-0'])";
    for context in ["all", "some"] {
        let out = run(b
            .ctx(["run", "--route-to", context, "--", "python3", "-c", py])
            .env("PATH", path)
            .env("LD_PRELOAD", libm)
            .env(std::ffi::OsStr::from_bytes(b"ODD\xffNAME"), "odd-value"));
        assert_eq!(out.code(), 0, "{}", out.show());
        let vars: Vec<&[u8]> = out.stdout.split(|&b| b == 0).collect();
        let has = |want: &[u8]| vars.contains(&want);
        assert!(
            has(format!("PATH={path}").as_bytes()),
            "{context}: {}",
            out.show()
        );
        assert_eq!(
            has(format!("LD_PRELOAD={libm}").as_bytes()),
            context == "all",
            "{context}: {}",
            out.show()
        );
        assert_eq!(
            has(b"ODD\xffNAME=odd-value"),
            context == "all",
            "{}",
            out.show()
        );
        assert!(
            !vars.iter().any(|v| v.windows(9).any(|w| w == b"libctx_in")),
            "ctx's interposer crossed: {}",
            out.show()
        );
    }
}

#[test]
fn context_path_overrides_the_default() {
    let b = Broker::start(&standard_config());
    let out = b.exec("bob", &["sh", "-c", "printf %s \"$PATH\""]).ok();
    assert_eq!(out, "/usr/bin:/bin");
}

// ---------------------------------------------------------------------------------------
// Working directory
// ---------------------------------------------------------------------------------------

#[test]
fn cwd_inherit_uses_the_callers_directory() {
    let b = Broker::start(&standard_config());
    let here = b.dir().subdir(&unique("here-"), 0o755);
    let out = run(b.exec_cmd("alice", &["pwd"]).current_dir(&here)).ok();
    assert_eq!(out, format!("{}\n", here.display()));
}

#[test]
fn cwd_fixed_path_is_used_whatever_the_callers_directory() {
    let td = TempDir::new();
    let fixed = td.subdir("fixed", 0o755);
    let config = format!(
        "{}\n[contexts.fixed]\nuser = \"{ALICE}\"\ncwd = \"{}\"\nallow = {{ uids = [0] }}\n",
        standard_config(),
        fixed.display()
    );
    let b = Broker::start(&config);
    let elsewhere = td.subdir("elsewhere", 0o755);
    let out = run(b.exec_cmd("fixed", &["pwd"]).current_dir(&elsewhere)).ok();
    assert_eq!(out, format!("{}\n", fixed.display()));
}

#[test]
fn cwd_defaults_to_the_users_home() {
    let bob = user(BOB);
    let b = Broker::start(&standard_config());
    let out = run(b.exec_cmd("bob", &["pwd"]).current_dir("/")).ok();
    assert_eq!(out, format!("{}\n", bob.home.display()));
}

#[test]
fn cwd_flag_overrides_the_context() {
    let b = Broker::start(&standard_config());
    let there = b.dir().subdir("there", 0o755);
    let mut cmd = b.ctx(["exec", "--context", "bob", "--cwd"]);
    cmd.arg(&there).args(["--", "pwd"]).current_dir("/");
    assert_eq!(run(&mut cmd).ok(), format!("{}\n", there.display()));
}

// ---------------------------------------------------------------------------------------
// Exit status
// ---------------------------------------------------------------------------------------

#[test]
fn exit_codes_come_back_exactly() {
    let b = Broker::start(&standard_config());
    for code in [0, 1, 3, 255] {
        let out = b.exec("alice", &["sh", "-c", &format!("exit {code}")]);
        assert_eq!(out.code(), code, "exit {code}\n{}", out.show());
    }
    assert_eq!(b.exec("alice", &["true"]).code(), 0);
    assert_eq!(b.exec("alice", &["false"]).code(), 1);
}

#[test]
fn death_by_sigkill_is_re_raised() {
    let b = Broker::start(&standard_config());
    let here = b.dir().subdir("sig", 0o755);
    let out =
        run(no_core(&mut b.exec_cmd("alice", &["sh", "-c", "kill -KILL $$"])).current_dir(&here));
    assert_eq!(out.signal(), Some(libc::SIGKILL), "{}", out.show());
}

#[test]
fn death_by_sigsegv_is_re_raised() {
    let b = Broker::start(&standard_config());
    let here = b.dir().subdir("sig", 0o755);
    let out =
        run(no_core(&mut b.exec_cmd("alice", &["sh", "-c", "kill -SEGV $$"])).current_dir(&here));
    assert_eq!(out.signal(), Some(libc::SIGSEGV), "{}", out.show());
}

// ---------------------------------------------------------------------------------------
// Classified launch failures
// ---------------------------------------------------------------------------------------

#[test]
fn command_not_found_is_127_and_names_the_command() {
    let b = Broker::start(&standard_config());
    let name = unique("no-such-command-");
    let out = b.exec("alice", &[&name]);
    assert_eq!(out.code(), 127, "{}", out.show());
    assert!(out.stderr_str().contains(&name), "{}", out.show());
    assert!(out.stdout.is_empty(), "{}", out.show());

    let path = format!("/nonexistent/{name}");
    let out = b.exec("alice", &[&path]);
    assert_eq!(out.code(), 127, "{}", out.show());
    assert!(out.stderr_str().contains(&path), "{}", out.show());
}

/// One table for every failed exec: `ctx exec` ends as `env(1)` does for the
/// same program, which is also what the shim and the fork relay use.
#[test]
fn a_failed_exec_ends_with_the_code_env_gives() {
    let b = Broker::start(&standard_config());
    let dir = b.dir();
    let lp = dir.path().join("loop");
    std::os::unix::fs::symlink(&lp, &lp).unwrap();
    let long = format!("/tmp/{}", "x".repeat(5000));
    let cases = [
        lp.to_str().unwrap().to_string(),
        long,
        "/etc/passwd/not-a-dir".to_string(),
        "/tmp".to_string(),
        format!("/nonexistent/{}", unique("none-")),
    ];
    for prog in &cases {
        let local = run(Command::new("env").arg(prog));
        let routed = b.exec("alice", &[prog]);
        assert_eq!(
            routed.code(),
            local.code(),
            "{}: routed {} / local {}",
            &prog[..prog.len().min(40)],
            routed.show(),
            local.show()
        );
    }
}

#[test]
fn permission_denied_is_126() {
    let b = Broker::start(&standard_config());
    // Readable but not executable.
    let script = b
        .dir()
        .file("not-executable.sh", b"#!/bin/sh\necho ran\n", 0o644);
    let out = b.exec("alice", &[script.to_str().unwrap()]);
    assert_eq!(out.code(), 126, "{}", out.show());
    assert!(
        out.stderr_str().contains(script.to_str().unwrap()),
        "{}",
        out.show()
    );
    assert!(out.stdout.is_empty(), "{}", out.show());

    // Executable by root only: alice may not run it.
    let rootonly = b
        .dir()
        .file("root-only.sh", b"#!/bin/sh\necho ran\n", 0o700);
    let out = b.exec("alice", &[rootonly.to_str().unwrap()]);
    assert_eq!(out.code(), 126, "{}", out.show());
}

#[test]
fn missing_cwd_is_125_and_names_the_directory() {
    let b = Broker::start(&standard_config());
    let missing = format!("/nonexistent/{}", unique("cwd-"));
    let mut cmd = b.ctx([
        "exec",
        "--context",
        "alice",
        "--cwd",
        &missing,
        "--",
        "true",
    ]);
    let out = run(&mut cmd);
    assert_eq!(out.code(), 125, "{}", out.show());
    assert!(out.stderr_str().contains(&missing), "{}", out.show());
}

#[test]
fn cwd_the_user_cannot_enter_is_125_and_names_the_directory() {
    let b = Broker::start(&standard_config());
    let closed = b.dir().subdir("root-only-dir", 0o700);
    let mut cmd = b.ctx(["exec", "--context", "alice", "--cwd"]);
    cmd.arg(&closed).args(["--", "true"]);
    let out = run(&mut cmd);
    assert_eq!(out.code(), 125, "{}", out.show());
    assert!(
        out.stderr_str().contains(closed.to_str().unwrap()),
        "{}",
        out.show()
    );
}

#[test]
fn unknown_context_is_125_and_names_it() {
    let b = Broker::start(&standard_config());
    let out = b.exec("no-such-context", &["true"]);
    assert_eq!(out.code(), 125, "{}", out.show());
    assert!(
        out.stderr_str().contains("no-such-context"),
        "{}",
        out.show()
    );
}

/// The interposer's routing variables (and its own LD_PRELOAD entry) never cross into a
/// routed environment, even where the context's `inherit_env` matches them; other names
/// it matches do.
#[test]
fn routing_variables_never_cross_even_when_inherit_env_matches_them() {
    let config = format!(
        "{}\n[contexts.ctxvars]\nuser = \"{ALICE}\"\ninherit_env = [\"CTX_*\", \"LD_*\"]\nallow = {{ uids = [0] }}\n",
        standard_config()
    );
    let b = Broker::start(&config);
    let mut cmd = b.ctx(["exec", "--context", "ctxvars", "--", "env"]);
    for var in [
        "CTX_ROUTE",
        "CTX_SOCKET",
        "CTX_PASSTHROUGH",
        "CTX_SHIM",
        "CTX_ON_BROKER_DOWN",
        "CTX_RELAY_MS",
    ] {
        cmd.env(var, "must-not-cross");
    }
    // ctx's own preload never crosses; the caller's others do.
    cmd.env(
        "LD_PRELOAD",
        "/must-not-cross/libctx_interposer.so:/usr/lib/crosses.so",
    );
    cmd.env("CTX_MINE", "crosses");
    let out = run(&mut cmd).ok();
    assert!(out.lines().any(|l| l == "CTX_MINE=crosses"), "{out}");
    assert!(
        out.lines().any(|l| l == "LD_PRELOAD=/usr/lib/crosses.so"),
        "{out}"
    );
    assert!(!out.contains("must-not-cross"), "{out}");
}

/// Nothing of the broker's signal state reaches a routed process: no signal ignored
/// (the broker ignores SIGPIPE), none caught (it handles TERM, INT, HUP), none blocked.
/// (The caller's own ignored and blocked signals do, as across a local exec: see
/// `inheritance.rs`. This caller, `ctx`, starts with none, whatever the test runner
/// ignores.)
#[test]
fn a_routed_process_starts_with_default_signal_dispositions() {
    let b = Broker::start(&standard_config());
    let mut cmd = b.exec_cmd("alice", &["cat", "/proc/self/status"]);
    // SAFETY: rt_sigaction and rt_sigprocmask are async-signal-safe syscalls on plain
    // data; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // The kernel's struct sigaction: SIG_DFL (0), no flags, no restorer, no mask.
            let dfl = [0u64; 4];
            for sig in 1..=64 {
                libc::syscall(libc::SYS_rt_sigaction, sig, dfl.as_ptr(), 0usize, 8usize);
            }
            let none = 0u64;
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &none,
                0usize,
                8usize,
            );
            Ok(())
        })
    };
    // cat installs no handler of its own (grep does), so its status shows what it got.
    let out = run(&mut cmd).ok();
    let sig: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.starts_with("SigBlk:") || l.starts_with("SigIgn:") || l.starts_with("SigCgt:")
        })
        .collect();
    assert_eq!(
        sig,
        [
            "SigBlk:\t0000000000000000",
            "SigIgn:\t0000000000000000",
            "SigCgt:\t0000000000000000"
        ]
    );
}
