//! The decision for one exec: the path as the process gave it, resolved in its view of the
//! file system as the launch's user, against the launch's policy.

use std::io;
use std::os::fd::RawFd;
use std::path::Path;

use super::{file_id, FileId, Policy, Verdict, EXEC_SYSCALLS};
use crate::daemon::kernel::seccomp::{AUDIT_ARCH_X86_64, X32_SYSCALL_BIT};
use crate::daemon::process_view;

pub(super) const REASON_BYPASS: &str = "enforce: exec bypassing the interposer";

const REASON_LOADER: &str =
    "enforce: explicit exec of the ELF loader (it would run any program unrouted)";

const REASON_UNREADABLE: &str = "enforce: exec whose path the broker cannot read";

/// The decision for one exec, with the path as given and its resolved target.
///
/// Why CONTINUE is good enough: the kernel re-reads the path after our answer, so a
/// multithreaded process (or one sharing memory with another) can swap the string between
/// our read and the exec. What it can gain is bounded by Landlock, which still checks the
/// exec in the kernel: the allowed files and the ELF loaders. So the one residual hole is
/// the loader reached through such a race (README, Known limits).
pub(super) fn decide(
    listener: RawFd,
    req: &libc::seccomp_notif,
    policy: &Policy,
) -> (Verdict, Vec<u8>, Option<String>) {
    let pid = req.pid as libc::pid_t;
    let data = &req.data;
    let Some(execveat) = exec_kind(data.arch, data.nr as u32) else {
        // The filter only sends exec syscalls; anything else is refused.
        return (Verdict::Fail(libc::ENOSYS), Vec::new(), None);
    };
    let (dirfd, ptr, flags) = if execveat {
        (data.args[0] as i32, data.args[1], data.args[4] as i32)
    } else {
        (libc::AT_FDCWD, data.args[0], 0)
    };
    let raw = match read_string(pid, ptr) {
        Ok(raw) => raw,
        Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {
            return (Verdict::Fail(libc::EFAULT), Vec::new(), None);
        }
        Err(e) => {
            let path = format!("? ({e})").into_bytes();
            let deny = Verdict::Deny {
                errno: libc::EACCES,
                reason: REASON_UNREADABLE,
            };
            return (deny, path, None);
        }
    };
    let identity = policy
        .looks_as
        .as_ref()
        .map(|(gid, groups)| process_view::Identity {
            uid: policy.uid,
            gid: *gid,
            groups,
        });
    let view = match process_view::enter(req.pid, dirfd, identity.as_ref()) {
        Ok(v) => v,
        Err(libc::ESRCH | libc::ENOENT) => return (Verdict::Fail(libc::ESRCH), raw, None),
        Err(e) => {
            tracing::warn!(
                "exec guard: cannot take the view of pid {}: errno {e}",
                req.pid
            );
            let deny = Verdict::Deny {
                errno: libc::EACCES,
                reason: REASON_UNREADABLE,
            };
            return (deny, raw, None);
        }
    };
    let found = match (raw.is_empty(), raw.first()) {
        (true, _) if flags & libc::AT_EMPTY_PATH != 0 && dirfd >= 0 => Ok(process_view::Found {
            file: view.base,
            path: format!("(descriptor {dirfd})").into_bytes(),
        }),
        (true, _) => Err(libc::ENOENT),
        (false, Some(&b'/')) => process_view::walk(&raw, view.ids),
        (false, _) if !view.base_is_dir => Err(libc::ENOTDIR),
        (false, _) => process_view::walk(&raw, view.ids),
    };
    let path = raw;
    let id = found
        .as_ref()
        .map_err(|e| *e)
        .and_then(|f| process_view::file_id(&f.file).map(|(dev, ino)| FileId { dev, ino }));
    // The path and the files are read: only now is it certain they were the process's
    // (its pid could have been reused had it died meanwhile).
    if !id_valid(listener, req.id) {
        return (Verdict::Fail(libc::ESRCH), path, None);
    }
    let id = match id {
        Ok(id) => id,
        // Nothing to run there: the exec would fail the same way.
        Err(e) => return (Verdict::Fail(e), path, None),
    };
    let reason = if policy.loaders.contains(&id) {
        REASON_LOADER
    } else if policy.allowed.contains(&id) {
        return (Verdict::Continue, path, None);
    } else {
        REASON_BYPASS
    };
    // For the audit line: what it resolved to, as the process names it.
    let target = found.ok().map(|f| process_view::display(&f.path));
    let deny = Verdict::Deny {
        errno: libc::EACCES,
        reason,
    };
    (deny, path, target)
}

/// `Some(is_execveat)` for an exec syscall of a known ABI.
fn exec_kind(arch: u32, nr: u32) -> Option<bool> {
    // x86_64 and x32 share the arch; the filter compares without the x32 bit.
    let nr = if arch == AUDIT_ARCH_X86_64 {
        nr & !X32_SYSCALL_BIT
    } else {
        nr
    };
    EXEC_SYSCALLS
        .iter()
        .filter(|(a, ..)| *a == arch)
        .find_map(|&(_, execve, execveat)| {
            if nr == execve & !X32_SYSCALL_BIT {
                Some(false)
            } else if nr == execveat & !X32_SYSCALL_BIT {
                Some(true)
            } else {
                None
            }
        })
}

/// Whether `pid` still shares the broker's address space: the spawn child (or its
/// grandchild in a PID namespace) before its exec.
pub(super) fn shares_our_memory(pid: libc::pid_t) -> bool {
    const KCMP_VM: libc::c_int = 1;
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, libc::getpid(), pid, KCMP_VM, 0, 0) };
    if r >= 0 {
        return r == 0;
    }
    // Without kcmp (CONFIG_KCMP off): still running the broker's executable. A routed
    // process cannot exec the broker (Landlock grants it no EXECUTE).
    match (
        file_id(Path::new(&format!("/proc/{pid}/exe"))),
        file_id(Path::new("/proc/self/exe")),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Reads the NUL-terminated string at `ptr` in `pid` (at most `PATH_MAX` bytes), a page
/// at a time so that a string near the end of a mapping is still read.
fn read_string(pid: libc::pid_t, ptr: u64) -> io::Result<Vec<u8>> {
    const PAGE: u64 = 4096;
    let max = libc::PATH_MAX as usize;
    let mut out: Vec<u8> = Vec::with_capacity(256);
    let mut at = ptr;
    let mut chunk = [0u8; PAGE as usize];
    while out.len() < max {
        let len = (PAGE - at % PAGE) as usize;
        let local = libc::iovec {
            iov_base: chunk.as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: at as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: `local` points into `chunk`, `len` <= its size; `remote` is only read by
        // the kernel, in the other process.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        let got = &chunk[..n as usize];
        if let Some(end) = got.iter().position(|&b| b == 0) {
            out.extend_from_slice(&got[..end]);
            return Ok(out);
        }
        out.extend_from_slice(got);
        at += n as u64;
    }
    Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG))
}

fn id_valid(listener: RawFd, id: u64) -> bool {
    // SAFETY: the ioctl reads the u64 id.
    unsafe {
        libc::ioctl(
            listener,
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _,
            &id as *const u64,
        ) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::supervised_sh;
    use super::super::*;
    use super::*;
    use std::time::Duration;

    /// Runs `sh -c SCRIPT` under the guard, allowing only `sh`; returns its output and the
    /// denials the guard reported (waiting for at least one).
    fn guarded_sh(script: &str) -> (String, Vec<Denied>) {
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let (out, denied) = supervised_sh(script, Policy::new("test", 0, sh.clone(), &[sh]));
        // A denial is audited after the answer, so its report may trail the program's end.
        let mut all: Vec<Denied> = denied
            .recv_timeout(Duration::from_secs(10))
            .into_iter()
            .collect();
        all.extend(std::iter::from_fn(|| {
            denied.recv_timeout(Duration::from_millis(200)).ok()
        }));
        (out, all)
    }

    #[test]
    fn the_guard_lets_the_program_start_and_denies_other_execs() {
        let (out, denied) = guarded_sh("/usr/bin/id -u; echo rc=$?; exec /bin/sh -c 'echo again'");
        if !available() {
            return;
        }
        assert!(out.contains("rc=126"), "{out}");
        assert!(out.contains("again"), "sh itself may run again: {out}");
        assert_eq!(denied.len(), 1, "{denied:?}");
        assert_eq!(denied[0].path, b"/usr/bin/id");
        assert_eq!(denied[0].reason, REASON_BYPASS);
        assert_eq!(denied[0].errno, libc::EACCES);
    }

    #[test]
    fn the_guard_denies_the_elf_loader() {
        let Some(loader) = crate::daemon::kernel::landlock::LOADERS
            .iter()
            .find(|l| Path::new(l).exists())
        else {
            return;
        };
        let (out, denied) = guarded_sh(&format!("{loader} /usr/bin/id; echo rc=$?"));
        if !available() {
            return;
        }
        assert!(!out.contains("uid="), "{out}");
        assert!(out.contains("rc=126"), "{out}");
        assert_eq!(denied.len(), 1, "{denied:?}");
        assert_eq!(denied[0].reason, REASON_LOADER);
    }

    #[test]
    fn exec_syscalls_are_recognised_per_abi() {
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(exec_kind(AUDIT_ARCH_X86_64, 59), Some(false));
            assert_eq!(exec_kind(AUDIT_ARCH_X86_64, 322), Some(true));
            assert_eq!(
                exec_kind(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 520),
                Some(false)
            );
            assert_eq!(
                exec_kind(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 545),
                Some(true)
            );
            assert_eq!(
                exec_kind(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 59),
                Some(false)
            );
            assert_eq!(exec_kind(AUDIT_ARCH_I386, 11), Some(false));
            assert_eq!(exec_kind(AUDIT_ARCH_I386, 358), Some(true));
            assert_eq!(exec_kind(AUDIT_ARCH_I386, 59), None);
            assert_eq!(exec_kind(AUDIT_ARCH_X86_64, 0), None);
        }
        assert_eq!(exec_kind(0x1234, 59), None);
    }
}
