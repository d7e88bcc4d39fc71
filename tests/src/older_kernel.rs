//! `CTX_TEST_KERNEL=6.1` (any `MAJOR.MINOR`): the test process, from its first broker on,
//! and so that broker and every program the test starts after it, runs under a seccomp
//! filter that makes the pidfd and socket features newer than that kernel fail as they
//! fail there. The broker then takes the paths it takes on Debian 12's kernel (6.1) or
//! Ubuntu 24.04's (6.8) on this machine's newer one; `scripts/test.sh` runs the suites
//! that exercise them again so.
//!
//! What a filter can do is refuse a call; what it cannot is change what a call returns.
//! So these are emulated, each refused with the errno the older kernel gives:
//! - `SO_PEERPIDFD`, `SO_PASSPIDFD` (6.5): `ENOPROTOOPT`;
//! - `pidfd_open(PIDFD_THREAD)`, `pidfd_send_signal` with any flag (6.9): `EINVAL`;
//! - the `PIDFD_GET_*_NAMESPACE` ioctls (6.11) and `PIDFD_GET_INFO` (6.13): `ENOTTY`.
//!
//! And these are not: pidfds as pidfs files (6.9: the broker still finds a process's
//! birth in its pidfd's inode), `PIDFD_INFO_EXIT` within a `PIDFD_GET_INFO` the older
//! kernel would answer (6.15, so only below 6.13 is it gone), and everything outside
//! pidfds and sockets.

use std::sync::Once;

/// The kernel `CTX_TEST_KERNEL` names, as `(major, minor)`; `None` when unset or empty.
pub fn emulated() -> Option<(u32, u32)> {
    std::env::var("CTX_TEST_KERNEL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| parse(&v))
}

fn parse(v: &str) -> (u32, u32) {
    let (major, minor) = v.trim().split_once('.').unwrap_or((v.trim(), "0"));
    match (major.parse(), minor.parse()) {
        (Ok(major), Ok(minor)) => (major, minor),
        _ => panic!("CTX_TEST_KERNEL={v:?}: expected MAJOR.MINOR, such as 6.1"),
    }
}

/// Whether the kernel the tests see has what came with `major.minor`.
pub fn has(major: u32, minor: u32) -> bool {
    emulated().is_none_or(|v| v >= (major, minor))
}

/// Whether the kernel this test sees (emulated or not) signals a process group through a
/// pidfd (`PIDFD_SIGNAL_PROCESS_GROUP`, 6.9), asked as the broker asks it.
pub fn groups_by_pidfd() -> bool {
    emulate_from_env();
    // SAFETY: plain syscalls on this process's own pidfd; signal 0 only asks.
    unsafe {
        let own = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) as i32;
        assert!(own >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        let r = libc::syscall(
            libc::SYS_pidfd_send_signal,
            own,
            0,
            std::ptr::null::<libc::siginfo_t>(),
            1u32 << 2,
        );
        let refused = r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL);
        libc::close(own);
        !refused
    }
}

/// Whether it keeps a reaped process's status for its pidfd (`PIDFD_INFO_EXIT`, 6.15).
pub fn keeps_exit_status() -> bool {
    use std::os::fd::{FromRawFd, OwnedFd};
    emulate_from_env();
    let mut child = std::process::Command::new("/bin/true")
        .spawn()
        .expect("spawn /bin/true");
    // SAFETY: plain syscall; the descriptor is owned at once.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as i32, 0) } as i32;
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: just opened.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = child.wait();
    ctx_protocol::pidfs::exit_status(std::os::fd::AsRawFd::as_raw_fd(&fd)).is_some()
}

/// How many seccomp filters this process is under: the emulating one, once installed (a
/// program a test starts has these and those its broker adds).
pub fn filters_here() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Seccomp_filters:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Puts the filter on every thread of this process, once, when `CTX_TEST_KERNEL` is set.
pub fn emulate_from_env() {
    static ONCE: Once = Once::new();
    let Some(version) = emulated() else {
        return;
    };
    ONCE.call_once(|| install(version));
}

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const SO_PASSPIDFD: u32 = 76;
const SO_PEERPIDFD: u32 = 77;
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;
const PIDFD_GET_INFO: u32 = 0xC040_FF0B;
/// `_IO(0xFF, n)`: the pidfd ioctls of 6.11, `PIDFD_GET_CGROUP_NAMESPACE` (1) to
/// `PIDFD_GET_UTS_NAMESPACE` (10).
const PIDFD_IOCTL_BASE: u32 = 0xFF00;

fn install(version: (u32, u32)) {
    let below = |major: u32, minor: u32| version < (major, minor);
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let jset = libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    let and = libc::BPF_ALU | libc::BPF_AND | libc::BPF_K;
    // offsetof(struct seccomp_data, ...): nr 0, arch 4, args[i] 16 + 8 i (low half first).
    let arg = |i: u32| 16 + 8 * i;
    let fail = |errno: i32| stmt(ret, libc::SECCOMP_RET_ERRNO | errno as u32);
    let allow = stmt(ret, libc::SECCOMP_RET_ALLOW);

    // Each check is a block that starts at the syscall number in the accumulator, ends in
    // a return, and is skipped whole for any other number.
    let mut blocks: Vec<Vec<libc::sock_filter>> = Vec::new();
    let mut block = |nr: i64, body: Vec<libc::sock_filter>| {
        let mut b = vec![jump(jeq, nr as u32, 0, body.len() as u8)];
        b.extend(body);
        blocks.push(b);
    };
    if below(6, 5) {
        for (nr, opt) in [
            (libc::SYS_getsockopt, SO_PEERPIDFD),
            (libc::SYS_setsockopt, SO_PASSPIDFD),
        ] {
            block(
                nr,
                vec![
                    stmt(ld, arg(1)),
                    jump(jeq, libc::SOL_SOCKET as u32, 0, 3),
                    stmt(ld, arg(2)),
                    jump(jeq, opt, 0, 1),
                    fail(libc::ENOPROTOOPT),
                    allow,
                ],
            );
        }
    }
    if below(6, 9) {
        block(
            libc::SYS_pidfd_open,
            vec![
                stmt(ld, arg(1)),
                jump(jset, PIDFD_THREAD, 0, 1),
                fail(libc::EINVAL),
                allow,
            ],
        );
        block(
            libc::SYS_pidfd_send_signal,
            vec![
                stmt(ld, arg(3)),
                jump(jeq, 0, 1, 0),
                fail(libc::EINVAL),
                allow,
            ],
        );
    }
    if below(6, 11) {
        let info = if below(6, 13) {
            PIDFD_GET_INFO
        } else {
            // A number no call uses: only the namespaces are refused.
            PIDFD_IOCTL_BASE
        };
        block(
            libc::SYS_ioctl,
            vec![
                stmt(ld, arg(1)),
                jump(jeq, info, 3, 0),
                stmt(and, 0xFFFF_FF00),
                jump(jeq, PIDFD_IOCTL_BASE, 1, 0),
                allow,
                fail(libc::ENOTTY),
            ],
        );
    } else if below(6, 13) {
        block(
            libc::SYS_ioctl,
            vec![
                stmt(ld, arg(1)),
                jump(jeq, PIDFD_GET_INFO, 0, 1),
                fail(libc::ENOTTY),
                allow,
            ],
        );
    }
    // Another ABI (i386, x32) goes unfiltered: the broker and the tests use the native
    // one.
    let mut program = vec![
        stmt(ld, 4),
        jump(jeq, AUDIT_ARCH_X86_64, 1, 0),
        allow,
        stmt(ld, 0),
        jump(jset, 0x4000_0000, 0, 1),
        allow,
    ];
    // Every block's body ends in a return: a skipped one leaves the number in place.
    for b in blocks {
        program.extend(b);
    }
    program.push(allow);
    if !cfg!(target_arch = "x86_64") {
        panic!("CTX_TEST_KERNEL is emulated on x86_64 only");
    }
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: a valid program that outlives the call; TSYNC puts it on every thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &prog as *const libc::sock_fprog,
        )
    };
    assert_eq!(
        rc,
        0,
        "CTX_TEST_KERNEL: cannot install the emulating filter: {}",
        std::io::Error::last_os_error()
    );
    eprintln!(
        "CTX_TEST_KERNEL={}.{}: this test and what it starts see that kernel's pidfds and \
         sockets",
        version.0, version.1
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_as_major_and_minor() {
        assert_eq!(parse("6.1"), (6, 1));
        assert_eq!(parse(" 6.12\n"), (6, 12));
        assert_eq!(parse("7"), (7, 0));
        assert!((6, 1) < (6, 5) && (6, 12) < (6, 13) && (6, 13) >= (6, 11));
    }
}
