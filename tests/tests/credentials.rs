//! Credential isolation between contexts of different users, tried from real routed
//! processes: one context must not read, signal or trace another's processes.

use std::process::Stdio;
use std::time::Duration;

use ctx_tests::*;

#[test]
fn a_context_cannot_read_signal_or_trace_another_contexts_process() {
    let b = Broker::start(&standard_config());
    let marker = unique("victim");
    // bob's long-lived process holds bob's secret in its environment.
    let mut victim = b
        .exec_cmd("bob", &["sh", "-c", &format!("exec sleep 300 # {marker}")])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = poll(Duration::from_secs(5), || {
        pids_with_arg(&marker).first().copied()
    })
    .expect("bob's process started");

    let probe = format!(
        "cat /proc/{pid}/environ >/dev/null 2>&1 && echo environ-readable || echo environ-denied; \
         kill -0 {pid} 2>/dev/null && echo signal-allowed || echo signal-denied; \
         ps e -p {pid} -o args= 2>/dev/null | grep -q bob-key && echo ps-shows-secret || echo ps-hides-secret; \
         grep -l bob-key /proc/[0-9]*/environ 2>/dev/null | head -1 | grep -q . && echo found-by-scan || echo scan-finds-nothing"
    );
    let out = b.exec("alice", &["sh", "-c", &probe]);
    assert_eq!(
        out.ok(),
        "environ-denied\nsignal-denied\nps-hides-secret\nscan-finds-nothing\n"
    );
    // The victim is untouched.
    assert!(proc_uid(pid).is_some());
    signal(victim.id(), nix::sys::signal::Signal::SIGTERM);
    let _ = wait_deadline(&mut victim, Duration::from_secs(5));
}

#[test]
fn a_context_cannot_read_the_brokers_config_audit_log_or_state() {
    let b = Broker::start(&standard_config());
    b.exec("alice", &["true"]).ok();
    let config = b.config_path().display().to_string();
    let audit = b.audit_path().display().to_string();
    let probe = format!(
        "cat {config} >/dev/null 2>&1 && echo config-readable || echo config-denied; \
         cat {audit} >/dev/null 2>&1 && echo audit-readable || echo audit-denied"
    );
    // The harness writes its config 0644 (install.sh installs it 0600); the audit log is the
    // broker's own, 0600.
    let out = b.exec("bob", &["sh", "-c", &probe]);
    assert!(out.ok().ends_with("audit-denied\n"), "{}", out.show());
}

/// The spawn path drops every capability, bounding and ambient sets included, and sets
/// no_new_privs, also for a context that runs as root: a setuid-root binary gains nothing
/// and root in the context cannot override file permissions.
#[test]
fn routed_processes_hold_no_capabilities_and_cannot_gain_privileges() {
    let config = format!(
        "{}\n[contexts.rootctx]\nuser = \"root\"\nallow = {{ uids = [0] }}\n",
        standard_config()
    );
    let b = Broker::start(&config);
    let caps = "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status";
    let zero = "CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
                CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
    for ctx in ["alice", "rootctx"] {
        let out = b.exec(ctx, &["sh", "-c", caps]);
        assert_eq!(out.ok(), zero, "context {ctx}");
    }

    // A setuid-root copy of id(1), runnable by alice: no_new_privs keeps euid alice's.
    let dir = b.dir().path().join(unique("suid"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let suid = dir.join("id");
    std::fs::copy("/usr/bin/id", &suid).unwrap();
    std::fs::set_permissions(&suid, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    let out = b.exec("alice", &[suid.to_str().unwrap()]);
    let text = out.ok();
    assert!(
        !text.contains("euid=0") && text.starts_with("uid="),
        "setuid bit honoured: {text}"
    );

    // A file only bob may read: root in a context without CAP_DAC_OVERRIDE cannot.
    let secret = dir.join("bob-only");
    std::fs::write(&secret, "bob's").unwrap();
    let bob = nix::unistd::User::from_name(BOB).unwrap().unwrap();
    nix::unistd::chown(&secret, Some(bob.uid), Some(bob.gid)).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = b.exec("rootctx", &["cat", secret.to_str().unwrap()]);
    assert_ne!(
        out.code(),
        0,
        "root without capabilities read it: {}",
        out.show()
    );
    assert!(!out.show().contains("bob's"));
}
