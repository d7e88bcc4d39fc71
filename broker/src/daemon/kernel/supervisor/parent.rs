//! Signals a launch's processes send to the broker, their parent: relayed to the launch's
//! client instead of delivered.

use super::Verdict;
use crate::daemon::kernel::seccomp;

/// Where a launch's signals to its parent go: the broker's pid as its processes name it,
/// and the launch's relay loop.
#[derive(Debug, Clone)]
pub struct ParentSignals {
    pub pid: libc::pid_t,
    pub relay: tokio::sync::mpsc::Sender<i32>,
}

/// A signal a launch's process sends to the broker, its parent: passed to the launch's
/// client, which raises it at the process that launched the program, so `kill -USR1
/// $PPID` reaches whom it would locally. The broker itself never receives it. Signal 0
/// (does the parent exist?) is answered yes while the launch runs; a signal sent after
/// the launch ended (by an orphan it left) finds no parent (`ESRCH`). A queued value
/// (`sigqueue`) is not carried: the client raises the plain signal.
pub(super) fn relay_to_parent(
    req: &libc::seccomp_notif,
    (_, _, _, sig_arg, tid_arg): seccomp::SignalCall,
    parent: Option<&ParentSignals>,
) -> Verdict {
    let Some(parent) = parent else {
        return Verdict::Fail(libc::EPERM);
    };
    let signal = req.data.args[sig_arg] as i32;
    if !(0..=64).contains(&signal) {
        return Verdict::Fail(libc::EINVAL);
    }
    // A thread of the broker other than its first is no thread of the parent process the
    // program knows: refused as the kernel would refuse it.
    if tid_arg.is_some_and(|t| req.data.args[t] as i32 != parent.pid) {
        return Verdict::Fail(libc::EPERM);
    }
    // Any process of the launch may be meant: a subshell's `kill $PPID`, a make
    // recipe's `/bin/kill`, all name the routed program's parent, which is the broker.
    if parent.relay.is_closed() {
        return Verdict::Fail(libc::ESRCH);
    }
    if signal != 0 {
        // Full: the client has not read the last ones yet; a signal already pending there
        // would merge with this one anyway.
        let _ = parent.relay.try_send(signal);
    }
    Verdict::Done
}

#[cfg(test)]
mod tests {
    use super::super::exec::REASON_BYPASS;
    use super::super::testing::supervised_sh;
    use super::super::*;
    use super::*;
    use std::time::Duration;

    /// Signals this test process (the spawned shell's parent, standing for the broker)
    /// received: any would mean one escaped the filter.
    static ESCAPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    extern "C" fn count_escaped(_: libc::c_int) {
        ESCAPED.fetch_add(1, Ordering::SeqCst);
    }

    /// This process's pid, with handlers counting the signals the tests relay.
    fn standing_for_the_broker() -> libc::pid_t {
        for sig in [libc::SIGUSR1, libc::SIGHUP, libc::SIGTERM] {
            // SAFETY: the handler only touches an atomic.
            unsafe { libc::signal(sig, count_escaped as *const () as libc::sighandler_t) };
        }
        // SAFETY: plain getter.
        unsafe { libc::getpid() }
    }

    #[test]
    fn signals_to_the_parent_are_relayed_not_delivered() {
        let ppid = standing_for_the_broker();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let policy = Policy::execs_unchecked("test", 0, "/bin/sh".into()).relaying_parent_signals(
            ParentSignals {
                pid: ppid,
                relay: tx,
            },
        );
        let (out, _) = supervised_sh(
            &format!(
                "kill -USR1 $PPID; echo usr1=$?; kill -0 {ppid}; echo probe=$?; \
                 kill -TERM {ppid}; echo term=$?; kill -KILL $PPID; echo kill=$?; \
                 /bin/kill -HUP {ppid}; echo grandchild=$?; /bin/echo exec-unchecked"
            ),
            policy,
        );
        if !available() {
            return;
        }
        assert!(out.contains("usr1=0"), "{out}");
        assert!(out.contains("probe=0"), "{out}");
        assert!(out.contains("term=0"), "{out}");
        assert!(out.contains("kill=0"), "{out}");
        // A process of the launch that is not the program names its parent too.
        assert!(out.contains("grandchild=0"), "{out}");
        assert!(out.contains("exec-unchecked"), "execs run unchecked: {out}");
        let got: Vec<i32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            got,
            [libc::SIGUSR1, libc::SIGTERM, libc::SIGKILL, libc::SIGHUP]
        );
        assert_eq!(ESCAPED.load(Ordering::SeqCst), 0, "a signal was delivered");
    }

    #[test]
    fn signals_to_others_and_after_the_launch_are_the_kernels() {
        let ppid = standing_for_the_broker();
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        drop(rx); // the launch has ended: its relay is closed
        let policy = Policy::execs_unchecked("test", 0, "/bin/sh".into()).relaying_parent_signals(
            ParentSignals {
                pid: ppid,
                relay: tx,
            },
        );
        let (out, _) = supervised_sh(
            &format!(
                "kill -USR1 $PPID; echo after=$?; kill -TERM {}; echo other=$?",
                other.id()
            ),
            policy,
        );
        if !available() {
            let _ = other.kill();
        }
        let status = other.wait().unwrap();
        if !available() {
            return;
        }
        assert!(out.contains("after=1"), "no parent any more: {out}");
        assert!(out.contains("other=0"), "{out}");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
        assert_eq!(ESCAPED.load(Ordering::SeqCst), 0, "a signal was delivered");
    }

    #[test]
    fn an_enforced_launch_has_its_execs_checked_and_its_parent_signals_relayed() {
        let ppid = standing_for_the_broker();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let policy =
            Policy::new("test", 0, sh.clone(), &[sh]).relaying_parent_signals(ParentSignals {
                pid: ppid,
                relay: tx,
            });
        let (out, denied) = supervised_sh(
            "kill -HUP $PPID; echo hup=$?; /usr/bin/id -u; echo rc=$?",
            policy,
        );
        if !available() {
            return;
        }
        assert!(out.contains("hup=0"), "{out}");
        assert!(out.contains("rc=126"), "{out}");
        assert_eq!(rx.try_recv().ok(), Some(libc::SIGHUP));
        let d = denied.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(d.reason, REASON_BYPASS);
        assert_eq!(ESCAPED.load(Ordering::SeqCst), 0, "a signal was delivered");
    }
}
