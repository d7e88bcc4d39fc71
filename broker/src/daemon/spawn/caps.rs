//! The capability bounding set: emptied once for the whole broker when it can be, so that
//! a spawn child need not drop each capability itself.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// Set once the whole broker runs with an empty capability bounding set: every thread, and
/// so every spawn child, inherits it, and the child need not drop 41 capabilities one
/// `prctl` (and one credential commit) at a time.
pub(super) static BOUNDING_DROPPED: AtomicBool = AtomicBool::new(false);

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// Highest capability number this kernel knows (read once).
pub(super) fn last_capability() -> i32 {
    static LAST: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40)
    })
}

/// Empties the capability bounding set of the calling thread, which must be the only one:
/// threads created afterwards inherit it. The broker keeps its own effective capabilities
/// (the bounding set only limits what an exec can grant), and it never execs anything but
/// routed programs, which must get none. Without CAP_SETPCAP (unprivileged broker) this
/// does nothing and the spawn child tries itself.
pub fn drop_bounding_set_process_wide() {
    let last = last_capability();
    let mut all = true;
    for cap in 0..=last {
        // SAFETY: plain prctl on our own credentials.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if r < 0 && errno_now() != libc::EINVAL {
            all = false;
        }
    }
    BOUNDING_DROPPED.store(all, Ordering::Relaxed);
}

fn errno_now() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
