//! Classic BPF for seccomp, shared by the exec guard's filter and the signal filter below.
//!
//! The signal filter closes the last way a process of the broker's own euid could stop or
//! kill it: the kernel lets any euid-0 process aim SIGIO at any process through `F_SETOWN`
//! (no capability, no uid match: `sigio_perm`), and `F_SETSIG` picks which signal that is,
//! SIGKILL and SIGSTOP included. The owner can be set four ways (`F_SETOWN`,
//! `F_SETOWN_EX`, `FIOSETOWN`, `SIOCSPGRP`, the last three through pointers a filter cannot
//! read without a race), but the signal number only one, by value: so the filter refuses
//! `F_SETSIG` with a signal the broker cannot shrug off. Every other signal arriving that
//! way is ignored by the broker (`signals::protect_process`) or, for the operator's three,
//! recognised as SIGIO and dropped (`signals::OperatorSignals`). A program keeps SIGIO with
//! any other signal (real-time ones included) for itself.

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

/// The signals the filter refuses to `F_SETSIG`: the two no process can catch, the
/// operator's three (stop, reload), and the fault signals, whose handler in the broker
/// cannot tell a SIGIO from a fault (both carry a positive `si_code`).
const REFUSED: [u32; 11] = [
    libc::SIGKILL as u32,
    libc::SIGSTOP as u32,
    libc::SIGTERM as u32,
    libc::SIGINT as u32,
    libc::SIGHUP as u32,
    libc::SIGSEGV as u32,
    libc::SIGBUS as u32,
    libc::SIGFPE as u32,
    libc::SIGILL as u32,
    libc::SIGTRAP as u32,
    libc::SIGSYS as u32,
];

const DENY: libc::sock_filter = stmt(RET, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32);
const ALLOW: libc::sock_filter = stmt(RET, libc::SECCOMP_RET_ALLOW);

/// The tail shared by every ABI: `fcntl(_, F_SETSIG, sig)` with a refused `sig` → EPERM.
/// Entered with any `fcntl` of any ABI; the two returns are its last two instructions.
const fn check_setsig() -> [libc::sock_filter; 3 + REFUSED.len() + 2] {
    let mut f = [ALLOW; 3 + REFUSED.len() + 2];
    f[0] = ld_arg_low(1);
    // Not F_SETSIG: over the comparisons, to ALLOW.
    f[1] = jump(JEQ, F_SETSIG as u32, 0, REFUSED.len() as u8 + 1);
    f[2] = ld_arg_low(2);
    let mut i = 0;
    while i < REFUSED.len() {
        // Equal: to DENY, right after ALLOW, which follows the last comparison.
        f[3 + i] = jump(JEQ, REFUSED[i], (REFUSED.len() - i) as u8, 0);
        i += 1;
    }
    f[3 + REFUSED.len()] = ALLOW;
    f[4 + REFUSED.len()] = DENY;
    f
}

/// Every ABI a process on this kernel can call with, to its `fcntl` numbers: "yes" jumps to
/// the tail (one past the ALLOW that follows the head), "no" to that ALLOW.
#[cfg(target_arch = "x86_64")]
const HEAD: [libc::sock_filter; 9] = [
    LD_ARCH,
    jump(JEQ, AUDIT_ARCH_X86_64, 0, 3),
    LD_NR,
    // x86_64 and x32 share the arch and fcntl's number (72), x32 with its bit set.
    stmt(
        libc::BPF_ALU | libc::BPF_AND | libc::BPF_K,
        !X32_SYSCALL_BIT,
    ),
    jump(JEQ, 72, 5, 4),
    jump(JEQ, AUDIT_ARCH_I386, 0, 3),
    LD_NR,
    // i386: fcntl (55) and fcntl64 (221).
    jump(JEQ, 55, 2, 0),
    jump(JEQ, 221, 1, 0),
];
#[cfg(target_arch = "aarch64")]
const HEAD: [libc::sock_filter; 9] = [
    LD_ARCH,
    jump(JEQ, AUDIT_ARCH_AARCH64, 0, 3),
    LD_NR,
    // aarch64: fcntl (25); the no-op keeps both heads one length.
    stmt(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, u32::MAX),
    jump(JEQ, 25, 5, 4),
    jump(JEQ, AUDIT_ARCH_ARM, 0, 3),
    LD_NR,
    // arm: fcntl (55) and fcntl64 (221).
    jump(JEQ, 55, 2, 0),
    jump(JEQ, 221, 1, 0),
];

const TAIL: [libc::sock_filter; 3 + REFUSED.len() + 2] = check_setsig();

const fn signal_filter() -> [libc::sock_filter; HEAD.len() + 1 + TAIL.len()] {
    let mut f = [ALLOW; HEAD.len() + 1 + TAIL.len()];
    let mut i = 0;
    while i < HEAD.len() {
        f[i] = HEAD[i];
        i += 1;
    }
    // HEAD's jumps count from the instruction after each jump: every "no" lands on this
    // ALLOW (index HEAD.len()), every "fcntl" one past it, on the tail.
    f[HEAD.len()] = ALLOW;
    let mut j = 0;
    while j < TAIL.len() {
        f[HEAD.len() + 1 + j] = TAIL[j];
        j += 1;
    }
    f
}

/// The filter the spawn child installs for a context of the broker's own euid.
pub static SIGNAL_FILTER: [libc::sock_filter; HEAD.len() + 1 + TAIL.len()] = signal_filter();

/// Installs [`SIGNAL_FILTER`] on the calling thread. Needs `no_new_privs` (or
/// CAP_SYS_ADMIN). Async-signal-safe; returns the errno on failure.
///
/// # Safety
/// Only a syscall on static data; safe to call between fork and exec.
pub unsafe fn install_signal_filter() -> Result<(), i32> {
    let prog = libc::sock_fprog {
        len: SIGNAL_FILTER.len() as libc::c_ushort,
        filter: SIGNAL_FILTER.as_ptr() as *mut libc::sock_filter,
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

    /// In a forked child: the filter in force, then `F_SETSIG` with each signal; the exit
    /// code has a bit per case that went the wrong way.
    #[test]
    fn the_signal_filter_refuses_only_the_signals_the_broker_cannot_shrug_off() {
        let cases: [(i32, bool); 8] = [
            (libc::SIGKILL, false),
            (libc::SIGSTOP, false),
            (libc::SIGTERM, false),
            (libc::SIGSEGV, false),
            (0, true),
            (libc::SIGIO, true),
            (libc::SIGUSR1, true),
            (libc::SIGRTMIN() + 2, true),
        ];
        // SAFETY: the child only makes syscalls on its own stack and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: plain syscalls; the child never returns into the test harness.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if install_signal_filter().is_err() {
                    libc::_exit(255);
                }
                let mut wrong = 0;
                for (i, &(sig, allowed)) in cases.iter().enumerate() {
                    let r = libc::fcntl(0, F_SETSIG, sig);
                    let refused = r < 0 && *libc::__errno_location() == libc::EPERM;
                    if refused == allowed {
                        wrong |= 1 << i;
                    }
                }
                // Other commands pass untouched.
                if libc::fcntl(0, libc::F_GETFD) < 0 {
                    wrong |= 1 << 7;
                }
                libc::_exit(wrong);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "wrong cases (bit per case)");
    }
}
