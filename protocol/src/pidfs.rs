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
/// reaped by itself). `None` before that, and on kernels before 6.15.
pub fn exit_status(pidfd: i32) -> Option<ExitStatus> {
    let info = info(pidfd, PIDFD_INFO_EXIT)?;
    if info.mask & PIDFD_INFO_EXIT == 0 {
        return None;
    }
    ExitStatus::from_wait_status(info.exit_code)
}
