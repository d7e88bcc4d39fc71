//! What a pidfd tells of its process (`PIDFD_GET_INFO`, Linux 6.13): the broker asks it
//! who a peer is, the shim how the routed program ended. Raw syscalls only: the shim's
//! relay follows the hook path's rules.

use crate::ExitStatus;

/// `_IOWR(PIDFS_IOCTL_MAGIC, 11, struct pidfd_info)`, not yet in libc.
pub const PIDFD_GET_INFO: libc::c_ulong = 0xC040_FF0B;
pub const PIDFD_INFO_PID: u64 = 1 << 0;
pub const PIDFD_INFO_CREDS: u64 = 1 << 1;
/// The process's wait status, kept once it has been reaped (Linux 6.15).
pub const PIDFD_INFO_EXIT: u64 = 1 << 3;

/// `struct pidfd_info` as of its first version (64 bytes; later kernels only append).
#[repr(C)]
#[derive(Default)]
pub struct PidfdInfo {
    pub mask: u64,
    pub cgroupid: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub ruid: u32,
    pub rgid: u32,
    pub euid: u32,
    pub egid: u32,
    pub suid: u32,
    pub sgid: u32,
    pub fsuid: u32,
    pub fsgid: u32,
    pub exit_code: i32,
}
const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 64);

/// What `mask` asks of the process behind `pidfd`, as far as the kernel answers (its
/// `mask` says which parts it filled in). `None` when it answers nothing: a kernel
/// without `PIDFD_GET_INFO`, a process outside the caller's PID namespaces, or one
/// reaped when `mask` asks for no exit status.
pub fn info(pidfd: i32, mask: u64) -> Option<PidfdInfo> {
    let mut info = PidfdInfo {
        mask,
        ..PidfdInfo::default()
    };
    // SAFETY: a buffer of the size the request number encodes; a bad descriptor fails.
    let rc = unsafe { libc::ioctl(pidfd, PIDFD_GET_INFO, &mut info) };
    (rc == 0).then_some(info)
}

/// How the process behind `pidfd` ended, once its parent has reaped it (or it was
/// reaped by itself). `None` before that, and on kernels before 6.15. `None` too for a
/// death by a signal that dumps core, told without a core: the kernel keeps the status
/// of the process's first thread, which lacks the core flag when another thread dumped
/// it (where `waitid` has it; helper-93).
pub fn exit_status(pidfd: i32) -> Option<ExitStatus> {
    let info = info(pidfd, PIDFD_INFO_EXIT)?;
    if info.mask & PIDFD_INFO_EXIT == 0 {
        return None;
    }
    trusted(info.exit_code)
}

/// The status a pidfd kept, where it says all `waitid` would.
fn trusted(kept: i32) -> Option<ExitStatus> {
    match ExitStatus::from_wait_status(kept)? {
        ExitStatus::Signaled {
            signal,
            core: false,
        } if dumps_core(signal) => None,
        status => Some(status),
    }
}

/// Whether a signal's default action dumps core (signal(7)).
fn dumps_core(signal: i32) -> bool {
    matches!(
        signal,
        libc::SIGQUIT
            | libc::SIGILL
            | libc::SIGTRAP
            | libc::SIGABRT
            | libc::SIGBUS
            | libc::SIGFPE
            | libc::SIGSEGV
            | libc::SIGXCPU
            | libc::SIGXFSZ
            | libc::SIGSYS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_status_is_trusted_unless_it_may_have_lost_its_core_flag() {
        assert_eq!(trusted(3 << 8), Some(ExitStatus::Code(3)));
        assert_eq!(trusted(0), Some(ExitStatus::Code(0)));
        assert_eq!(
            trusted(libc::SIGTERM),
            Some(ExitStatus::Signaled {
                signal: libc::SIGTERM,
                core: false
            })
        );
        assert_eq!(
            trusted(libc::SIGSEGV | 0x80),
            Some(ExitStatus::Signaled {
                signal: libc::SIGSEGV,
                core: true
            })
        );
        // Another thread may have dumped the core: `Exited` says.
        assert_eq!(trusted(libc::SIGSEGV), None);
        assert_eq!(trusted(libc::SIGABRT), None);
        // A stop is no end.
        assert_eq!(trusted(0x7f | (libc::SIGSTOP << 8)), None);
    }

    #[test]
    fn the_status_of_a_reaped_child_is_kept_in_its_pidfd() {
        // SAFETY: the child only exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(7) };
        }
        // SAFETY: plain syscalls on our own child.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        assert!(fd >= 0);
        assert_eq!(exit_status(fd), None, "not reaped yet");
        let mut status = 0;
        // SAFETY: our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let kept = exit_status(fd);
        // SAFETY: ours.
        unsafe { libc::close(fd) };
        if kept.is_none() && kernel_before(6, 15) {
            // No status kept there: the shim waits for `Exited`.
            return;
        }
        assert_eq!(kept, Some(ExitStatus::Code(7)));
    }

    fn kernel_before(major: u32, minor: u32) -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) < (major, minor)
    }
}
