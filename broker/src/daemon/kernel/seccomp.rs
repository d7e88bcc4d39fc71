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

/// The syscalls that send a signal to a process named by pid: `(arch, nr, pid_arg,
/// signal_arg, tid_arg)` where `tid_arg` is set for the thread-directed calls.
pub type SignalCall = (u32, u32, usize, usize, Option<usize>);

#[cfg(target_arch = "x86_64")]
pub const SIGNAL_CALLS: [SignalCall; 12] = [
    (AUDIT_ARCH_X86_64, 62, 0, 1, None),     // kill
    (AUDIT_ARCH_X86_64, 200, 0, 1, Some(0)), // tkill
    (AUDIT_ARCH_X86_64, 234, 0, 2, Some(1)), // tgkill
    (AUDIT_ARCH_X86_64, 129, 0, 1, None),    // rt_sigqueueinfo
    (AUDIT_ARCH_X86_64, 297, 0, 2, Some(1)), // rt_tgsigqueueinfo
    // x32's own entries (the filter compares without the x32 bit).
    (AUDIT_ARCH_X86_64, 524, 0, 1, None),
    (AUDIT_ARCH_X86_64, 536, 0, 2, Some(1)),
    (AUDIT_ARCH_I386, 37, 0, 1, None),
    (AUDIT_ARCH_I386, 238, 0, 1, Some(0)),
    (AUDIT_ARCH_I386, 270, 0, 2, Some(1)),
    (AUDIT_ARCH_I386, 178, 0, 1, None),
    (AUDIT_ARCH_I386, 335, 0, 2, Some(1)),
];
#[cfg(target_arch = "aarch64")]
pub const SIGNAL_CALLS: [SignalCall; 10] = [
    (AUDIT_ARCH_AARCH64, 129, 0, 1, None),
    (AUDIT_ARCH_AARCH64, 130, 0, 1, Some(0)),
    (AUDIT_ARCH_AARCH64, 131, 0, 2, Some(1)),
    (AUDIT_ARCH_AARCH64, 138, 0, 1, None),
    (AUDIT_ARCH_AARCH64, 240, 0, 2, Some(1)),
    (AUDIT_ARCH_ARM, 37, 0, 1, None),
    (AUDIT_ARCH_ARM, 238, 0, 1, Some(0)),
    (AUDIT_ARCH_ARM, 268, 0, 2, Some(1)),
    (AUDIT_ARCH_ARM, 178, 0, 1, None),
    (AUDIT_ARCH_ARM, 363, 0, 2, Some(1)),
];

/// The compat ABI's arch, next to the native one.
#[cfg(target_arch = "x86_64")]
const COMPAT: u32 = AUDIT_ARCH_I386;
#[cfg(target_arch = "aarch64")]
const COMPAT: u32 = AUDIT_ARCH_ARM;

/// The signal call `(arch, nr)` is, if any (`nr` as the kernel reports it, x32 bit
/// included).
pub fn signal_call(arch: u32, nr: u32) -> Option<SignalCall> {
    let nr = if arch == NATIVE {
        nr & !X32_SYSCALL_BIT
    } else {
        nr
    };
    SIGNAL_CALLS
        .iter()
        .copied()
        .find(|&(a, n, ..)| a == arch && n == nr)
}

/// The filter of a supervised launch, built by the broker before the clone (the child
/// only installs it). Sends to the supervisor's listener:
///
/// - with `exec`, every exec syscall (`enforce`'s exec guard); a syscall of an ABI this
///   filter does not know then kills the process, as the guard could not see its execs;
/// - with `parent`, every signal call whose pid argument is `parent` (the broker, the
///   routed program's parent), so that the signal goes where the program meant it: the
///   process that launched it.
///
/// Everything else is allowed in a few instructions.
pub fn supervised_filter(
    exec: &[(u32, u32, u32)],
    parent: Option<libc::pid_t>,
) -> Vec<libc::sock_filter> {
    // Two passes over a tiny assembler with symbolic targets: jumps in classic BPF are
    // forward offsets from the next instruction, fixed once the layout is known.
    #[derive(Clone, Copy)]
    enum To {
        Allow,
        Notify,
        CheckPid,
        Unknown,
        Next,
        Compat,
    }
    enum Op {
        Stmt(libc::sock_filter),
        Jeq(u32, To, To),
        Label(To),
    }
    let mut ops = Vec::new();
    for (arch, label) in [(NATIVE, None), (COMPAT, Some(To::Compat))] {
        if let Some(l) = label {
            ops.push(Op::Label(l));
        }
        ops.push(Op::Stmt(LD_ARCH));
        let other = if arch == NATIVE {
            To::Compat
        } else {
            To::Unknown
        };
        ops.push(Op::Jeq(arch, To::Next, other));
        ops.push(Op::Stmt(LD_NR));
        if arch == NATIVE {
            ops.push(Op::Stmt(stmt(
                libc::BPF_ALU | libc::BPF_AND | libc::BPF_K,
                !X32_SYSCALL_BIT,
            )));
        }
        for &(a, execve, execveat) in exec {
            if a == arch {
                for nr in [execve & !X32_SYSCALL_BIT, execveat & !X32_SYSCALL_BIT] {
                    ops.push(Op::Jeq(nr, To::Notify, To::Next));
                }
            }
        }
        if parent.is_some() {
            for &(a, nr, ..) in SIGNAL_CALLS.iter() {
                if a == arch {
                    ops.push(Op::Jeq(nr, To::CheckPid, To::Next));
                }
            }
        }
        ops.push(Op::Jeq(0, To::Allow, To::Allow)); // an unconditional jump
    }
    ops.push(Op::Label(To::CheckPid));
    if let Some(pid) = parent {
        // Every signal call names the process in its first argument (`pid_t`, an int: the
        // kernel ignores the high half, so only the low one is compared).
        ops.push(Op::Stmt(ld_arg_low(0)));
        ops.push(Op::Jeq(pid as u32, To::Notify, To::Allow));
    }
    ops.push(Op::Label(To::Unknown));
    ops.push(Op::Stmt(stmt(
        RET,
        if exec.is_empty() {
            libc::SECCOMP_RET_ALLOW
        } else {
            libc::SECCOMP_RET_KILL_PROCESS
        },
    )));
    ops.push(Op::Label(To::Allow));
    ops.push(Op::Stmt(ALLOW));
    ops.push(Op::Label(To::Notify));
    ops.push(Op::Stmt(stmt(RET, libc::SECCOMP_RET_USER_NOTIF)));

    // Pass 1: where each label lands.
    let mut places = [usize::MAX; 6];
    let mut i = 0;
    for op in &ops {
        match op {
            Op::Label(l) => places[*l as usize] = i,
            _ => i += 1,
        }
    }
    // Pass 2: the code.
    let mut code = Vec::with_capacity(ops.len());
    for op in &ops {
        match *op {
            Op::Stmt(s) => code.push(s),
            Op::Label(_) => {}
            Op::Jeq(k, t, f) => {
                let here = code.len() + 1;
                let off = |to: To| -> u8 {
                    match to {
                        To::Next => 0,
                        l => u8::try_from(places[l as usize] - here)
                            .expect("every target is placed after its jump, within 255"),
                    }
                };
                code.push(jump(JEQ, k, off(t), off(f)));
            }
        }
    }
    code
}

/// Installs `filter` with a new listener, which it returns. Async-signal-safe (the filter
/// was built before the fork); the errno on failure.
///
/// # Safety
/// `filter` must be a valid program; safe to call between fork and exec.
pub unsafe fn install_supervised(filter: &[libc::sock_filter]) -> Result<i32, i32> {
    let prog = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    let listener = libc::syscall(
        libc::SYS_seccomp,
        libc::SECCOMP_SET_MODE_FILTER,
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
        &prog as *const libc::sock_fprog,
    );
    if listener < 0 {
        return Err(*libc::__errno_location());
    }
    Ok(listener as i32)
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
