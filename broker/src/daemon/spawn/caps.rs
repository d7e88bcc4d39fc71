//! The capability bounding set: emptied once for the whole broker when it can be, so that
//! a spawn child need not drop each capability itself; and `capget`/`capset`, for the
//! threads and peers whose sets the broker reads or changes.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// One half (capabilities 0-31, then 32-63) of a thread's sets, as `capget` fills them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u32,
    pub permitted: u32,
    pub inheritable: u32,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// `_LINUX_CAPABILITY_VERSION_3`: two [`CapSets`] halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

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

/// The capability sets of `pid` (0: the calling thread). Async-signal-safe.
pub fn capget(pid: i32) -> Result<[CapSets; 2], i32> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid,
    };
    let mut sets = [CapSets::default(); 2];
    // SAFETY: a version-3 header and the two halves that version fills.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, sets.as_mut_ptr()) };
    if r != 0 {
        return Err(errno_now());
    }
    Ok(sets)
}

/// Sets the calling thread's capability sets. Async-signal-safe.
pub fn capset(sets: &[CapSets; 2]) -> Result<(), i32> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: a version-3 header and the two halves it reads.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, sets.as_ptr()) };
    if r != 0 {
        return Err(errno_now());
    }
    Ok(())
}

fn errno_now() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
