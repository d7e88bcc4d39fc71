//! Launches under a guard of their own, for the tests.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{mpsc, Mutex};

use super::{available, lock, Denied, ExecGuard, Policy};
use crate::daemon::spawn::fork_exec;
use crate::daemon::spawn::testing::{test_plan, wait_end};

/// Runs `sh -c SCRIPT` supervised by `policy`: its output and where denials arrive.
pub(super) fn supervised_sh(script: &str, policy: Policy) -> (String, mpsc::Receiver<Denied>) {
    let (tx, rx) = mpsc::channel();
    if !available() {
        eprintln!("skipped: no seccomp user notification on this kernel");
        return (String::new(), rx);
    }
    let guard = ExecGuard::default();
    let tx = Mutex::new(tx);
    let filter = policy.filter();
    let armed = guard
        .arm(policy, move || {
            Box::new(move |d| {
                let _ = lock(&tx).send(d);
            })
        })
        .unwrap();
    let mut pipe = [0; 2];
    // SAFETY: pipe2 fills the array.
    assert_eq!(
        unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) },
        0
    );
    // SAFETY: just created, owned here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    let mut plan = test_plan(
        &["/bin/sh", "-c", script],
        vec![(w.as_raw_fd(), 1), (w.as_raw_fd(), 2)],
    );
    plan.exec_guard = Some(armed.handover());
    plan.supervisor_filter = filter;
    let forked = fork_exec(&plan).unwrap();
    armed.started();
    drop(w);
    let mut out = String::new();
    std::fs::File::from(r).read_to_string(&mut out).unwrap();
    wait_end(&forked);
    (out, rx)
}
