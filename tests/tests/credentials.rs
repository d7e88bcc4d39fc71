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
