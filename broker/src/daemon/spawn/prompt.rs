//! The forking thread's priority from just before the clone to the launch's next wait.
//!
//! The clone's parent waits (CLONE_VFORK) until the child execs, and the exec wakes it on
//! the CPU the program is starting on, where it waited behind the program: on a machine
//! with few CPUs, for a short program's whole run. The work after the fork (the registry,
//! the program's pidfd to the shim, the relay's set-up) then ran only after the program
//! had ended, on the launch's critical path. Raised to the lowest realtime priority, the
//! thread runs as soon as the exec wakes it, for the few tens of microseconds up to the
//! launch's next wait, and goes back to its own policy there. `SCHED_RESET_ON_FORK` keeps
//! the clone (and so the program) out of it. Raised only for the bounded work a launch of
//! ordinary size does: what a context's code asks for never runs long at this priority.

use std::cell::Cell;
use std::future::Future;

thread_local! {
    /// Whether [`raise`] raised this thread (from `SCHED_OTHER`, where [`lower`] puts it).
    static RAISED: Cell<bool> = const { Cell::new(false) };
}

/// Raises this thread to `SCHED_FIFO` 1, reset on fork, until [`lower`]. Only from
/// `SCHED_OTHER` at nice 0: a reset child (or thread) gets exactly that, so what the fork
/// starts has the scheduling it would have had unraised. A broker the operator runs at
/// another nice value or policy is left alone (its children keep inheriting it; helper-95
/// found a nice-10 broker's programs at nice 0), as is one where the broker may not (no
/// `CAP_SYS_NICE`, a cgroup without realtime time).
pub fn raise() {
    // SAFETY: a query of this thread's own policy.
    if RAISED.get() || unsafe { libc::sched_getscheduler(0) } != libc::SCHED_OTHER {
        return;
    }
    // getpriority may return -1 as a value: errno tells.
    // SAFETY: plain calls on this thread (PRIO_PROCESS with 0 is the calling thread).
    let nice = unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, 0);
        (*libc::__errno_location() == 0).then_some(n)
    };
    if nice != Some(0) {
        return;
    }
    let raised = libc::sched_param { sched_priority: 1 };
    let fifo = libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK;
    // SAFETY: sets this thread's own policy from a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, fifo, &raised) } == 0 {
        RAISED.set(true);
    }
}

/// Whether [`raise`] raised this thread (a job it hands to another thread raises that one).
pub fn raised() -> bool {
    RAISED.get()
}

/// Puts this thread back to `SCHED_OTHER`, if [`raise`] raised it.
pub fn lower() {
    if RAISED.replace(false) {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sets this thread's own policy back from a valid sched_param.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
    }
}

/// Runs `launch`, lowering the polling thread (see [`raise`]) at the end of every poll of
/// it, a panic's unwinding included: the raised priority covers what runs between a fork
/// and the launch's next wait, on that thread, and never another task.
pub async fn lowered_at_each_wait<F: Future>(launch: F) -> F::Output {
    let mut launch = std::pin::pin!(launch);
    std::future::poll_fn(|cx| {
        let _lowered = LowerOnDrop;
        launch.as_mut().poll(cx)
    })
    .await
}

struct LowerOnDrop;

impl Drop for LowerOnDrop {
    fn drop(&mut self) {
        lower();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> i32 {
        // SAFETY: query of this thread's own policy.
        unsafe { libc::sched_getscheduler(0) }
    }

    fn nice() -> i32 {
        // SAFETY: query of this thread's own nice value.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    /// A thread at another nice value is not raised: its children would lose it.
    #[test]
    fn a_thread_at_another_nice_value_is_not_raised() {
        std::thread::spawn(|| {
            // SAFETY: lowers this new thread's own priority.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
            raise();
            assert_eq!(policy(), libc::SCHED_OTHER);
            assert_eq!(nice(), 10);
            lower();
        })
        .join()
        .unwrap();
    }

    /// Raised, the thread is realtime and its clones are not; lowered, it is as before.
    #[test]
    fn a_raised_thread_goes_back_and_its_children_never_were_raised() {
        let before = policy();
        raise();
        // SAFETY: getuid is a plain getter.
        if unsafe { libc::geteuid() } == 0 && before == libc::SCHED_OTHER && nice() == 0 {
            assert_eq!(
                policy(),
                libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK,
                "raised as root"
            );
            let child = std::process::Command::new("sh")
                .args(["-c", "cat /proc/self/sched | grep '^policy'"])
                .output()
                .unwrap();
            let line = String::from_utf8_lossy(&child.stdout);
            assert!(
                line.split_whitespace().last() == Some("0"),
                "a child of a raised thread runs under SCHED_OTHER: {line}"
            );
        }
        lower();
        assert_eq!(policy(), before);
        // Lowering twice, or without a raise, changes nothing.
        lower();
        assert_eq!(policy(), before);
    }

    /// A panic in the launch lowers the thread too: the runtime goes on running other
    /// tasks on it.
    #[test]
    fn a_panicking_launch_gives_its_thread_back_lowered() {
        let before = policy();
        let caught = std::panic::catch_unwind(|| {
            block_on(lowered_at_each_wait(async {
                raise();
                panic!("in the launch");
            }))
        });
        assert!(caught.is_err());
        assert_eq!(policy(), before);
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A wait lowers the thread before the task gives it up.
    #[test]
    fn a_waiting_launch_gives_its_thread_back_lowered() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let before = policy();
        rt.block_on(lowered_at_each_wait(async {
            raise();
            tokio::task::yield_now().await;
            assert_eq!(policy(), before, "lowered at the wait");
            raise();
        }));
        assert_eq!(policy(), before, "lowered at the end");
    }
}
