//! What this kernel's Landlock can enforce: its ABI version, and the load warnings for
//! the options an ABI leaves out.
//!
//! The config loader is handed the ABI rather than asking the kernel itself, so a config
//! can be checked against any kernel (its tests pass each ABI).

use crate::config::{Isolation, Signals};

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// The NOT-in-force item of filesystem rules on Landlock ABI 1 and 2.
pub const NO_TRUNCATE_ITEM: &str = "truncate protection of read_only/no_access";

/// Why Landlock options are not in force on a kernel without it, and what to do.
pub const NO_LANDLOCK: &str = "this kernel has no Landlock (it needs Linux 5.13+ with \
    landlock in the lsm= boot parameter, or a container profile that allows its syscalls)";

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// The Landlock ABI version this kernel offers (0: none, or disabled at boot).
pub fn abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the documented version query: no attribute, size 0.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    v.max(0) as i32
}

/// The warnings about a context's Landlock options (`key`: `contexts.NAME.isolation`) on a
/// kernel with Landlock ABI `abi` (0: none); `routes`: it has `route_children_to`.
pub fn load_warnings(key: &str, iso: &Isolation, routes: bool, abi: i32) -> Vec<String> {
    let mut warnings = Vec::new();
    if iso.has_fs_rules() && abi < 1 {
        warnings.push(format!(
            "{key}: read_only/read_write/no_access NOT in force: {} (filesystem access is \
             only limited by the context's uid)",
            NO_LANDLOCK
        ));
    } else if iso.has_fs_rules() && abi < 3 {
        warnings.push(format!(
            "{key}: {} NOT in force: {}",
            NO_TRUNCATE_ITEM,
            no_truncate(abi)
        ));
    }
    if iso.has_tcp_rules() && abi < 4 {
        warnings.push(format!(
            "{key}: tcp_bind/tcp_connect NOT in force: they need Landlock ABI 4 (Linux 6.7), \
             this kernel has {abi}; the context may bind and connect to any TCP port its uid \
             may"
        ));
    }
    if iso.signals == Signals::Scoped && abi < 6 {
        warnings.push(format!(
            "{key}: signals = \"scoped\" NOT in force: it needs Landlock ABI 6 (Linux 6.12), \
             this kernel has {abi}; only uid separation limits what the context may signal"
        ));
    }
    if iso.enforce && !routes {
        warnings.push(format!(
            "{key}: enforce = true has no effect: the context does not route its launches \
             (set route_children_to)"
        ));
    } else if iso.enforce && abi < 1 {
        warnings.push(format!(
            "{key}: enforce = true NOT in force: {}; launches that bypass the interposer \
             (static binaries, raw execve) run unrouted",
            NO_LANDLOCK
        ));
    } else if iso.enforce && !crate::daemon::kernel::supervisor::available() {
        warnings.push(format!(
            "{key}: enforce = true: exec auditing and the ELF loader check NOT in force: \
             this kernel has no seccomp user notification (Linux 5.0+); execs that bypass \
             the interposer still fail (Landlock) but are not audited, and the ELF loader \
             can still run a program unrouted"
        ));
    }
    warnings
}

/// Why Landlock ABI 1 and 2 leave files open to `truncate(2)`.
pub fn no_truncate(abi: i32) -> String {
    format!(
        "Landlock ABI {abi} cannot stop truncate(2), so a file beneath read_only or no_access \
         that the context's uid may write can still be emptied; it needs ABI 3 (Linux 6.2)"
    )
}
