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
const F_SETFL: u32 = 4;
const F_SETLEASE: u32 = 1024;
const F_UNLCK: u32 = 2;
/// `FASYNC` in the generic and the x86 numbering alike.
const O_ASYNC: u32 = 0o20000;
const FIOASYNC: u32 = 0x5452;
const JSET: u32 = libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K;

/// `(native fcntl, native ioctl, compat arch, compat fcntl, compat fcntl64, compat ioctl)`.
#[cfg(target_arch = "x86_64")]
const NRS: (u32, u32, u32, u32, u32, u32) = (72, 16, AUDIT_ARCH_I386, 55, 221, 54);
#[cfg(target_arch = "aarch64")]
const NRS: (u32, u32, u32, u32, u32, u32) = (25, 29, AUDIT_ARCH_ARM, 55, 221, 54);
#[cfg(target_arch = "x86_64")]
const NATIVE: u32 = AUDIT_ARCH_X86_64;
#[cfg(target_arch = "aarch64")]
const NATIVE: u32 = AUDIT_ARCH_AARCH64;

/// The filter the spawn child installs for a context of the broker's own euid outside a
/// Landlock signal scope. Jumps count from the next instruction; the labels are the
/// indices in the comments.
///
/// Besides naming an owner outright, it refuses turning on `O_ASYNC` (`F_SETFL`,
/// `FIOASYNC`): on a terminal that makes the kernel name the terminal's foreground process
/// group the owner, with the caller's euid (`__tty_fasync`), which no pid namespace bounds
/// (a root terminal's foreground job, or a broker started as one, would get the SIGIO).
/// And, as [`LEASE_FILTER`], taking a lease.
pub static OWNER_FILTER: [libc::sock_filter; 28] = [
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
    /* 5 */ jump(JEQ, NRS.1, 16, 20),
    /* 6 */ jump(JEQ, NRS.2, 0, 19),
    /* 7 */ LD_NR,
    /* 8 */ jump(JEQ, NRS.3, 2, 0),
    /* 9 */ jump(JEQ, NRS.4, 1, 0),
    /* 10 */ jump(JEQ, NRS.5, 11, 15),
    // 11: fcntl
    /* 11 */ ld_arg_low(1),
    /* 12 */ jump(JEQ, F_SETOWN, 0, 2),
    /* 13 */ ld_arg_low(2),
    /* 14 */ jump(JEQ, 0, 11, 12),
    /* 15 */ jump(JEQ, F_SETOWN_EX, 11, 0),
    /* 16 */ jump(JEQ, F_SETFL, 0, 2),
    /* 17 */ ld_arg_low(2),
    /* 18 */ jump(JSET, O_ASYNC, 8, 7),
    /* 19 */ jump(JEQ, F_SETLEASE, 0, 6),
    /* 20 */ ld_arg_low(2),
    /* 21 */ jump(JEQ, F_UNLCK, 4, 5),
    // 22: ioctl
    /* 22 */ ld_arg_low(1),
    /* 23 */ jump(JEQ, FIOSETOWN, 3, 0),
    /* 24 */ jump(JEQ, SIOCSPGRP, 2, 0),
    /* 25 */ jump(JEQ, FIOASYNC, 1, 0),
    /* 26 */ ALLOW,
    /* 27 */ DENY,
];

/// The filter of a context of the broker's own euid inside a Landlock signal scope (which
/// keeps SIGIO in): it owns the broker's files (a root broker's: every root file, the shim
/// and the programs root runs among them), and a write lease on one holds every `open`
/// and `exec` of it, root's and every routed launch's, for the lease-break time (45 s by
/// default), again and again. Refuses `F_SETLEASE` but `F_UNLCK` (EPERM).
pub static LEASE_FILTER: [libc::sock_filter; 15] = [
    /* 0 */ LD_ARCH,
    /* 1 */ jump(JEQ, NATIVE, 0, 3),
    /* 2 */ LD_NR,
    /* 3 */
    stmt(
        libc::BPF_ALU | libc::BPF_AND | libc::BPF_K,
        !X32_SYSCALL_BIT,
    ),
    /* 4 */ jump(JEQ, NRS.0, 4, 8),
    /* 5 */ jump(JEQ, NRS.2, 0, 7),
    /* 6 */ LD_NR,
    /* 7 */ jump(JEQ, NRS.3, 1, 0),
    /* 8 */ jump(JEQ, NRS.4, 0, 4),
    // 9: fcntl
    /* 9 */ ld_arg_low(1),
    /* 10 */ jump(JEQ, F_SETLEASE, 0, 2),
    /* 11 */ ld_arg_low(2),
    /* 12 */ jump(JEQ, F_UNLCK, 0, 1),
    /* 13 */ ALLOW,
    /* 14 */ DENY,
];

/// Installs `filter` (one of the static filters above) on the calling thread. Needs
/// `no_new_privs` (or CAP_SYS_ADMIN). Async-signal-safe; returns the errno on failure.
///
/// # Safety
/// Only a syscall on static data; safe to call between fork and exec.
pub unsafe fn install_static(filter: &'static [libc::sock_filter]) -> Result<(), i32> {
    let prog = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_ptr() as *mut libc::sock_filter,
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
/// Everything else is allowed. The signal calls are found by a search tree rather than
/// one comparison each: when a filter is installed the kernel runs it once for every
/// syscall number of both ABIs to cache which ones it always allows (about 900 runs, with
/// interrupts off), so each instruction on the common path costs every launch about 2 µs
/// on the machines measured (`the_common_path_is_short`).
pub fn supervised_filter(
    exec: &[(u32, u32, u32)],
    parent: Option<libc::pid_t>,
) -> Vec<libc::sock_filter> {
    // A tiny assembler with symbolic targets, two passes: jumps in classic BPF are
    // forward offsets from the next instruction, fixed once the layout is known.
    const ALLOWED: usize = 0;
    const NOTIFY: usize = 1;
    const CHECK_PID: usize = 2;
    const UNKNOWN: usize = 3;
    const COMPAT_ARCH: usize = 4;
    #[derive(Clone, Copy)]
    enum To {
        Next,
        Label(usize),
    }
    enum Op {
        Stmt(libc::sock_filter),
        Jump(u32, u32, To, To),
        Label(usize),
    }
    const JGT: u32 = libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K;
    /// Ends in `CHECK_PID` for a number of `sorted`, in `ALLOW` for any other.
    fn search(sorted: &[u32], ops: &mut Vec<Op>, labels: &mut usize) {
        if sorted.len() <= 3 {
            for &nr in sorted {
                ops.push(Op::Jump(JEQ, nr, To::Label(CHECK_PID), To::Next));
            }
            ops.push(Op::Stmt(ALLOW));
            return;
        }
        let (low, high) = sorted.split_at(sorted.len() / 2);
        let upper = *labels;
        *labels += 1;
        ops.push(Op::Jump(
            JGT,
            low[low.len() - 1],
            To::Label(upper),
            To::Next,
        ));
        search(low, ops, labels);
        ops.push(Op::Label(upper));
        search(high, ops, labels);
    }
    let mut labels = COMPAT_ARCH + 1;
    let mut ops = vec![Op::Stmt(LD_ARCH)];
    for arch in [NATIVE, COMPAT] {
        if arch == NATIVE {
            ops.push(Op::Jump(JEQ, NATIVE, To::Next, To::Label(COMPAT_ARCH)));
        } else {
            // The accumulator still holds the arch.
            ops.push(Op::Label(COMPAT_ARCH));
            ops.push(Op::Jump(JEQ, COMPAT, To::Next, To::Label(UNKNOWN)));
        }
        ops.push(Op::Stmt(LD_NR));
        if arch == NATIVE {
            // x86_64 and x32 share the arch and the numbers, x32 with its bit set (a no-op
            // on aarch64, whose numbers never have it).
            ops.push(Op::Stmt(stmt(
                libc::BPF_ALU | libc::BPF_AND | libc::BPF_K,
                !X32_SYSCALL_BIT,
            )));
        }
        for &(a, execve, execveat) in exec {
            if a == arch {
                for nr in [execve & !X32_SYSCALL_BIT, execveat & !X32_SYSCALL_BIT] {
                    ops.push(Op::Jump(JEQ, nr, To::Label(NOTIFY), To::Next));
                }
            }
        }
        let mut signals: Vec<u32> = match parent {
            Some(_) => SIGNAL_CALLS
                .iter()
                .filter(|c| c.0 == arch)
                .map(|c| c.1)
                .collect(),
            None => Vec::new(),
        };
        signals.sort_unstable();
        signals.dedup();
        search(&signals, &mut ops, &mut labels);
    }
    ops.push(Op::Label(CHECK_PID));
    if let Some(pid) = parent {
        // Every signal call names the process in its first argument (`pid_t`, an int: the
        // kernel ignores the high half, so only the low one is compared).
        ops.push(Op::Stmt(ld_arg_low(0)));
        ops.push(Op::Jump(
            JEQ,
            pid as u32,
            To::Label(NOTIFY),
            To::Label(ALLOWED),
        ));
    }
    ops.push(Op::Label(UNKNOWN));
    ops.push(Op::Stmt(stmt(
        RET,
        if exec.is_empty() {
            libc::SECCOMP_RET_ALLOW
        } else {
            libc::SECCOMP_RET_KILL_PROCESS
        },
    )));
    ops.push(Op::Label(ALLOWED));
    ops.push(Op::Stmt(ALLOW));
    ops.push(Op::Label(NOTIFY));
    ops.push(Op::Stmt(stmt(RET, libc::SECCOMP_RET_USER_NOTIF)));

    // Pass 1: where each label lands.
    let mut places = vec![usize::MAX; labels];
    let mut i = 0;
    for op in &ops {
        match op {
            Op::Label(l) => places[*l] = i,
            _ => i += 1,
        }
    }
    // Pass 2: the code.
    let mut code = Vec::with_capacity(i);
    for op in &ops {
        match *op {
            Op::Stmt(s) => code.push(s),
            Op::Label(_) => {}
            Op::Jump(op, k, t, f) => {
                let here = code.len() + 1;
                let off = |to: To| -> u8 {
                    match to {
                        To::Next => 0,
                        To::Label(l) => u8::try_from(places[l] - here)
                            .expect("every target is placed after its jump, within 255"),
                    }
                };
                code.push(jump(op, k, off(t), off(f)));
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

    /// Runs `filter` as the kernel would on `(arch, nr, arg0)`: its verdict, and how many
    /// instructions it took.
    fn run(filter: &[libc::sock_filter], arch: u32, nr: u32, arg0: u32) -> (u32, usize) {
        run_args(filter, arch, nr, [arg0, 0, 0])
    }

    /// As [`run`], with the low halves of the first three arguments.
    fn run_args(filter: &[libc::sock_filter], arch: u32, nr: u32, args: [u32; 3]) -> (u32, usize) {
        let (mut a, mut pc, mut steps) = (0u32, 0usize, 0);
        loop {
            let i = filter[pc];
            steps += 1;
            pc += 1;
            let code = u32::from(i.code);
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    a = match i.k {
                        0 => nr,
                        4 => arch,
                        16 => args[0],
                        24 => args[1],
                        32 => args[2],
                        k => panic!("load of offset {k}"),
                    }
                }
                c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => a &= i.k,
                c if c == RET => return (i.k, steps),
                c if c == JEQ || c == JSET || c == libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K => {
                    let taken = match c {
                        c if c == JEQ => a == i.k,
                        c if c == JSET => a & i.k != 0,
                        _ => a > i.k,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                c => panic!("instruction {c:#x}"),
            }
        }
    }

    /// Every ABI's fcntl and ioctl numbers, as the kernel would run the owner filter on
    /// them: naming an owner and turning on `O_ASYNC` are refused, the rest allowed.
    #[test]
    fn the_owner_filter_decides_alike_on_every_abi() {
        let deny = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let allow = libc::SECCOMP_RET_ALLOW;
        let (fcntl, ioctl, compat, cfcntl, cfcntl64, cioctl) = NRS;
        let mut abis = vec![(NATIVE, fcntl, ioctl), (compat, cfcntl, cioctl)];
        abis.push((compat, cfcntl64, cioctl));
        if cfg!(target_arch = "x86_64") {
            abis.push((NATIVE, fcntl | X32_SYSCALL_BIT, ioctl | X32_SYSCALL_BIT));
        }
        let nonblock = libc::O_NONBLOCK as u32;
        for (arch, f, i) in abis {
            let cases = [
                (f, [3, F_SETOWN, 1234], deny),
                (f, [3, F_SETOWN, 0], allow),
                (f, [3, F_SETOWN_EX, 0], deny),
                (f, [3, F_SETFL, O_ASYNC], deny),
                (f, [3, F_SETFL, O_ASYNC | nonblock], deny),
                (f, [3, F_SETFL, nonblock], allow),
                (f, [3, F_SETSIG as u32, 9], allow),
                (f, [3, libc::F_GETFL as u32, 0], allow),
                (i, [3, FIOSETOWN, 0], deny),
                (i, [3, SIOCSPGRP, 0], deny),
                (i, [3, FIOASYNC, 0], deny),
                (i, [3, libc::FIONREAD as u32, 0], allow),
                (0, [0, 0, 0], allow),
                (f, [3, F_SETLEASE, libc::F_WRLCK as u32], deny),
                (f, [3, F_SETLEASE, libc::F_RDLCK as u32], deny),
                (f, [3, F_SETLEASE, F_UNLCK], allow),
                (f, [3, libc::F_GETLEASE as u32, 0], allow),
            ];
            for (nr, args, want) in cases {
                let (got, _) = run_args(&OWNER_FILTER, arch, nr, args);
                assert_eq!(got, want, "arch {arch:#x} nr {nr} args {args:?}");
                // Inside a signal scope only leases are refused.
                let lease = nr == f && args[1] == F_SETLEASE && args[2] != F_UNLCK;
                let (got, _) = run_args(&LEASE_FILTER, arch, nr, args);
                assert_eq!(
                    got,
                    if lease { deny } else { allow },
                    "lease filter {args:?}"
                );
            }
        }
        // An ABI the filter does not know is let through (kill(2) of the broker is
        // refused by the kernel there too; only the owner calls are filtered).
        assert_eq!(run_args(&OWNER_FILTER, 0x1234, 72, [3, 8, 1]).0, allow);
    }

    #[test]
    fn the_supervised_filter_decides_as_its_rules_say() {
        let pid = 4321u32;
        let exec: &[(u32, u32, u32)] = if cfg!(target_arch = "x86_64") {
            &[(NATIVE, 59, 322), (COMPAT, 11, 358)]
        } else {
            &[(NATIVE, 221, 281), (COMPAT, 11, 387)]
        };
        for (exec, parent) in [
            (exec, Some(pid)),
            (exec, None),
            (&[][..], Some(pid)),
            (&[][..], None),
        ] {
            decides_as_its_rules_say(exec, parent, &[NATIVE, COMPAT, 0x1234], &[pid, pid + 1, 0]);
        }
    }

    /// The filter the broker really builds (`Policy::filter`: x32's execs among them, with
    /// the x32 bit) decides as the rules say for every number of every ABI, the x32 forms
    /// (bit set) of each, and pids that differ from the parent's in one bit or its sign.
    #[test]
    fn the_filter_of_the_real_exec_table_decides_as_its_rules_say() {
        use crate::daemon::kernel::supervisor::EXEC_SYSCALLS;
        let pid = 0x12345u32;
        let mut args = vec![pid, 0, u32::MAX, pid.wrapping_neg()];
        args.extend((0..32).map(|b| pid ^ (1 << b)));
        for exec in [&EXEC_SYSCALLS[..], &[][..]] {
            decides_as_its_rules_say(exec, Some(pid), &[NATIVE, COMPAT], &args);
        }
    }

    /// Runs the filter for `(exec, parent)` on every number below 1100, with and without
    /// the x32 bit, for each of `archs` and `args` (the first argument), against what
    /// [`supervised_filter`] says it does.
    fn decides_as_its_rules_say(
        exec: &[(u32, u32, u32)],
        parent: Option<u32>,
        archs: &[u32],
        args: &[u32],
    ) {
        let filter = supervised_filter(exec, parent.map(|p| p as i32));
        for &arch in archs {
            for nr in (0..1100).chain((0..1100).map(|n| n | X32_SYSCALL_BIT)) {
                for &arg0 in args {
                    let plain = if arch == NATIVE {
                        nr & !X32_SYSCALL_BIT
                    } else {
                        nr
                    };
                    let known = arch == NATIVE || arch == COMPAT;
                    let execs = exec.iter().any(|&(a, e, ea)| {
                        a == arch
                            && (plain == e & !X32_SYSCALL_BIT || plain == ea & !X32_SYSCALL_BIT)
                    });
                    let signal = Some(arg0) == parent && signal_call(arch, nr).is_some();
                    let want = if !known {
                        if exec.is_empty() {
                            libc::SECCOMP_RET_ALLOW
                        } else {
                            libc::SECCOMP_RET_KILL_PROCESS
                        }
                    } else if execs || signal {
                        libc::SECCOMP_RET_USER_NOTIF
                    } else {
                        libc::SECCOMP_RET_ALLOW
                    };
                    let (got, _) = run(&filter, arch, nr, arg0);
                    assert_eq!(got, want, "arch {arch:#x} nr {nr:#x} arg0 {arg0:#x}");
                }
            }
        }
    }

    /// The kernel runs a new filter for every syscall number of both ABIs to fill its
    /// cache: what an ordinary syscall walks is paid ~900 times per launch.
    #[test]
    fn the_common_path_is_short() {
        let filter = supervised_filter(&[], Some(4321));
        let longest = [NATIVE, COMPAT]
            .iter()
            .flat_map(|&arch| (0..600).map(move |nr| (arch, nr)))
            .filter(|&(arch, nr)| !SIGNAL_CALLS.iter().any(|c| c.0 == arch && c.1 == nr))
            .map(|(arch, nr)| run(&filter, arch, nr, 0).1)
            .max()
            .unwrap();
        // Arch check, number load (and x32 mask), a search of the signal calls, verdict.
        assert!(longest <= 9, "{longest} instructions on the common path");
    }

    /// In a forked child with the filter in force: each call, and whether it must be
    /// refused with EPERM; the exit code has a bit per call that went the wrong way.
    #[test]
    fn the_owner_filter_refuses_naming_an_owner_or_o_async_and_nothing_else() {
        // SAFETY: the child only makes syscalls on its own stack and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: plain syscalls; the child never returns into the test harness.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if install_static(&OWNER_FILTER).is_err() {
                    libc::_exit(255);
                }
                let mut sv = [0; 2];
                libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr());
                let me = libc::getpid();
                let owner_ex = [0i32, me]; // struct f_owner_ex { F_OWNER_TID, pid }
                let refused = |r: libc::c_int| r < 0 && *libc::__errno_location() == libc::EPERM;
                let async_on = libc::fcntl(sv[0], libc::F_GETFL) | libc::O_ASYNC;
                let cases: [(bool, bool); 12] = [
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
                    (refused(libc::fcntl(sv[0], libc::F_SETFL, async_on)), true),
                    (refused(libc::ioctl(sv[0], FIOASYNC as _, &1i32)), true),
                    (
                        refused(libc::fcntl(sv[0], libc::F_SETFL, libc::O_NONBLOCK)),
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
