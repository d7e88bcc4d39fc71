//! Classic BPF for seccomp, shared by the exec guard's filter and the file-owner filter below.
//!
//! The owner filter closes the last way a process of the broker's own euid could stop or
//! kill it: the kernel lets any euid-0 process aim SIGIO at any process through a file's
//! owner (no capability, no uid match: `sigio_perm`, checked against the euid recorded
//! when the owner was set), and `F_SETSIG` picks the signal, SIGKILL and SIGSTOP included.
//! Refusing only those signal numbers is not enough: `F_SETSIG` acts on the open file,
//! which a process of any other context (or none) can share and set. So the filter refuses
//! naming an owner at all: `F_SETOWN` with anything but 0, `F_SETOWN_EX`, and the socket
//! ioctls `FIOSETOWN` and `SIOCSPGRP` (EPERM). `F_SETLEASE` and `F_NOTIFY` make the caller
//! itself the owner and stay allowed. Contexts whose processes cannot name the broker
//! (`pid = true`, or a Landlock signal scope, which the kernel checks against the domain of
//! whoever set the owner) do not need it.

pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
#[cfg(target_arch = "x86_64")]
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

pub const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

pub const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

pub const LD_ARCH: libc::sock_filter = stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4);
pub const LD_NR: libc::sock_filter = stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0);
/// The low 32 bits of syscall argument `n` (`struct seccomp_data` on a little-endian
/// machine; the kernel reads `fcntl`'s command and `F_SETSIG`'s argument as `int`).
const fn ld_arg_low(n: u32) -> libc::sock_filter {
    stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 16 + 8 * n)
}
/// `fcntl`'s command that picks the signal a file's owner gets (the same on every Linux
/// ABI this builds for; not in the libc crate).
pub const F_SETSIG: libc::c_int = 10;
pub const JEQ: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
pub const RET: u32 = libc::BPF_RET | libc::BPF_K;

const DENY: libc::sock_filter = stmt(RET, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32);
const ALLOW: libc::sock_filter = stmt(RET, libc::SECCOMP_RET_ALLOW);

/// `fcntl` commands and socket ioctls that name a file's owner (not in the libc crate for
/// every target; the same numbers on every Linux ABI this builds for).
const F_SETOWN: u32 = 8;
const F_SETOWN_EX: u32 = 15;
const FIOSETOWN: u32 = 0x8901;
const SIOCSPGRP: u32 = 0x8902;

/// `(native fcntl, native ioctl, compat arch, compat fcntl, compat fcntl64, compat ioctl)`.
#[cfg(target_arch = "x86_64")]
const NRS: (u32, u32, u32, u32, u32, u32) = (72, 16, AUDIT_ARCH_I386, 55, 221, 54);
#[cfg(target_arch = "aarch64")]
const NRS: (u32, u32, u32, u32, u32, u32) = (25, 29, AUDIT_ARCH_ARM, 55, 221, 54);
#[cfg(target_arch = "x86_64")]
const NATIVE: u32 = AUDIT_ARCH_X86_64;
#[cfg(target_arch = "aarch64")]
const NATIVE: u32 = AUDIT_ARCH_AARCH64;

/// The filter the spawn child installs for a context of the broker's own euid. Jumps count
/// from the next instruction; the labels are the indices in the comments.
pub static OWNER_FILTER: [libc::sock_filter; 21] = [
    /* 0 */ LD_ARCH,
    /* 1 */ jump(JEQ, NATIVE, 0, 4),
    /* 2 */ LD_NR,
    // x86_64 and x32 share the arch and the numbers, x32 with its bit set (a no-op on
    // aarch64, whose numbers never have it).
    /* 3 */
    stmt(
        libc::BPF_ALU | libc::BPF_AND | libc::BPF_K,
        !X32_SYSCALL_BIT,
    ),
    /* 4 */ jump(JEQ, NRS.0, 6, 0),
    /* 5 */ jump(JEQ, NRS.1, 10, 13),
    /* 6 */ jump(JEQ, NRS.2, 0, 12),
    /* 7 */ LD_NR,
    /* 8 */ jump(JEQ, NRS.3, 2, 0),
    /* 9 */ jump(JEQ, NRS.4, 1, 0),
    /* 10 */ jump(JEQ, NRS.5, 5, 8),
    // 11: fcntl
    /* 11 */ ld_arg_low(1),
    /* 12 */ jump(JEQ, F_SETOWN, 0, 2),
    /* 13 */ ld_arg_low(2),
    /* 14 */ jump(JEQ, 0, 4, 5),
    /* 15 */ jump(JEQ, F_SETOWN_EX, 4, 3),
    // 16: ioctl
    /* 16 */ ld_arg_low(1),
    /* 17 */ jump(JEQ, FIOSETOWN, 2, 0),
    /* 18 */ jump(JEQ, SIOCSPGRP, 1, 0),
    /* 19 */ ALLOW,
    /* 20 */ DENY,
];

/// Installs [`OWNER_FILTER`] on the calling thread. Needs `no_new_privs` (or
/// CAP_SYS_ADMIN). Async-signal-safe; returns the errno on failure.
///
/// # Safety
/// Only a syscall on static data; safe to call between fork and exec.
pub unsafe fn install_owner_filter() -> Result<(), i32> {
    let prog = libc::sock_fprog {
        len: OWNER_FILTER.len() as libc::c_ushort,
        filter: OWNER_FILTER.as_ptr() as *mut libc::sock_filter,
    };
    if libc::syscall(
        libc::SYS_seccomp,
        libc::SECCOMP_SET_MODE_FILTER,
        0,
        &prog as *const libc::sock_fprog,
    ) < 0
    {
        return Err(*libc::__errno_location());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a forked child with the filter in force: each call, and whether it must be
    /// refused with EPERM; the exit code has a bit per call that went the wrong way.
    #[test]
    fn the_owner_filter_refuses_naming_an_owner_and_nothing_else() {
        // SAFETY: the child only makes syscalls on its own stack and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: plain syscalls; the child never returns into the test harness.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if install_owner_filter().is_err() {
                    libc::_exit(255);
                }
                let mut sv = [0; 2];
                libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr());
                let me = libc::getpid();
                let owner_ex = [0i32, me]; // struct f_owner_ex { F_OWNER_TID, pid }
                let refused = |r: libc::c_int| r < 0 && *libc::__errno_location() == libc::EPERM;
                let cases: [(bool, bool); 9] = [
                    (refused(libc::fcntl(sv[0], F_SETOWN as i32, me)), true),
                    (refused(libc::fcntl(sv[0], F_SETOWN as i32, -me)), true),
                    (refused(libc::fcntl(sv[0], F_SETOWN as i32, 0)), false),
                    (
                        refused(libc::fcntl(sv[0], F_SETOWN_EX as i32, owner_ex.as_ptr())),
                        true,
                    ),
                    (refused(libc::ioctl(sv[0], FIOSETOWN as _, &me)), true),
                    (refused(libc::ioctl(sv[0], SIOCSPGRP as _, &me)), true),
                    (refused(libc::fcntl(sv[0], F_SETSIG, libc::SIGKILL)), false),
                    (refused(libc::fcntl(sv[0], libc::F_GETOWN)), false),
                    (
                        refused(libc::ioctl(sv[0], libc::FIONREAD as _, &mut 0i32)),
                        false,
                    ),
                ];
                let mut wrong = 0;
                for (i, (got, want)) in cases.iter().enumerate() {
                    if got != want {
                        wrong |= 1 << i;
                    }
                }
                libc::_exit(wrong & 0xff | (wrong >> 8));
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "wrong cases (bit per case)");
    }
}
