//! The broker's signal state as the spawn child must not inherit it: which signals the
//! broker handles or ignores (taken once, when its handlers are in place), and how the
//! child puts them back to the default before anything of the broker's can run in it.

use std::sync::atomic::{AtomicU64, Ordering};

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// Signals (bit n-1 for signal n) whose disposition is not the default in the broker: its
/// handlers (tokio's TERM/INT/HUP) and ignores (std's SIGPIPE). The spawn child resets
/// exactly these instead of all 64. Zero means "not taken": the child resets everything.
static NON_DEFAULT_SIGNALS: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------------------------
// Functions: in the broker
// ---------------------------------------------------------------------------------------

/// Records which signals the broker handles or ignores. Call it after the last signal
/// handler is installed (the server does, once its handlers are in place); a handler
/// installed later would otherwise survive into a child until its exec.
pub fn snapshot_signal_dispositions() {
    let mut mask = 0u64;
    for sig in 1..=libc::SIGRTMAX().min(64) {
        if raw_sigaction(sig, None).is_some_and(|handler| handler != libc::SIG_DFL) {
            mask |= 1 << (sig - 1);
        }
    }
    // A set bit that is never used is harmless; bit 63 marks the snapshot as taken.
    NON_DEFAULT_SIGNALS.store(mask | 1 << 63, Ordering::Relaxed);
}

/// `rt_sigaction` itself (`ctx_protocol::sigaction`): glibc's wrapper refuses its own
/// signals 32 and 33, yet a broker can inherit them ignored, and an ignored signal stays
/// ignored across exec.
pub(in crate::daemon) use ctx_protocol::sigaction::raw_sigaction;

// ---------------------------------------------------------------------------------------
// Functions: in the spawn child
// ---------------------------------------------------------------------------------------

/// Nothing of the broker's signal state may leak (std ignores SIGPIPE, tokio handles
/// TERM/INT/HUP). Handlers are reset while every signal is still blocked: in a child
/// sharing the broker's memory, a broker handler must never run.
pub(super) unsafe fn reset_signal_handlers() {
    let taken = NON_DEFAULT_SIGNALS.load(Ordering::Relaxed);
    for sig in 1..=libc::SIGRTMAX() {
        let listed = sig > 63 || taken & (1 << 63) == 0 || taken & (1 << (sig - 1)) != 0;
        if listed && sig != libc::SIGKILL && sig != libc::SIGSTOP {
            raw_sigaction(sig, Some(libc::SIG_DFL));
        }
    }
}

/// Handlers were reset by the entry point; now unblock what the broker blocked.
pub(super) unsafe fn unblock_signals() {
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
}
