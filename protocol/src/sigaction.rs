//! `rt_sigaction(2)` itself, for the broker, its spawn child, the hook and the shim alike.
//! The C libraries' wrappers refuse the signals they keep for themselves (glibc 32 and 33,
//! musl 32 to 34), which a process may still have inherited ignored, and which are
//! signals like any other to a routed program (34 is glibc's `SIGRTMIN`).

/// The kernel's `struct sigaction` (x86_64, aarch64).
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// The size of the kernel's signal mask on these architectures.
pub const KERNEL_SIGSET: usize = 8;

/// Signal `sig`'s handler, or `None` where the kernel refuses (a bad number). With `set`,
/// installs that handler first (no flags, empty mask, so only `SIG_DFL` and `SIG_IGN`
/// make sense: no restorer) and returns the one before. Async-signal-safe.
pub fn raw_sigaction(sig: i32, set: Option<libc::sighandler_t>) -> Option<libc::sighandler_t> {
    let act = set.map(|handler| KernelSigaction {
        handler,
        flags: 0,
        restorer: 0,
        mask: 0,
    });
    let act_ptr = act
        .as_ref()
        .map_or(std::ptr::null(), |a| a as *const KernelSigaction);
    let mut old = KernelSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: valid pointers to kernel-layout structs (or null), the kernel's sigset size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            act_ptr,
            &mut old as *mut KernelSigaction,
            KERNEL_SIGSET,
        )
    };
    (r == 0).then_some(old.handler)
}
