//! Resolving a path exactly as another process would, from a thread of the broker: the
//! exec guard's view of what a process asked to run.
//!
//! The thread takes the process's mount namespace, root and working directory (its own
//! `fs` struct first, so nothing else of the broker moves), then the launch user's file
//! system identity, and gives up every effective capability. From there the kernel walks
//! the path as it walks it for the process: the same mounts, the same `..` at the root,
//! the same absolute symlinks, the same search permissions (no `CAP_DAC_*`, no
//! `CAP_SYS_PTRACE` into other users' `/proc/PID/cwd`). One thing still differs: procfs's
//! `self` and `thread-self` name the *reader*, so the walk goes one component at a time
//! and puts the process's own ids in their place wherever they come up, also through a
//! symlink (`/dev/fd` → `/proc/self/fd`). Everything here changes the calling thread only:
//! call it on a thread that ends with the decision.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// `PROC_SUPER_MAGIC`, and the inode of a procfs root.
const PROC_MAGIC: i64 = 0x9fa0;
const PROC_ROOT_INO: u64 = 1;
/// As the kernel's `MAXSYMLINKS`.
const MAX_LINKS: usize = 40;

/// A process's ids in its own PID namespace, for its `self` and `thread-self`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnIds {
    pub tgid: u32,
    pub tid: u32,
}

/// The identity the walk takes: the launch user's, or `None` for the broker's own.
pub struct Identity<'a> {
    pub uid: u32,
    pub gid: u32,
    pub groups: &'a [libc::gid_t],
}

/// What the walk found: the file, and its path as the process would name it (for the
/// audit).
pub struct Found {
    pub file: OwnedFd,
    pub path: Vec<u8>,
}

/// Where [`enter`] left this thread.
pub struct View {
    pub ids: OwnIds,
    /// `dirfd` of the exec as the process holds it (its cwd for `AT_FDCWD`).
    pub base: OwnedFd,
    /// `base` is a directory, and this thread's working directory now.
    pub base_is_dir: bool,
}

/// Moves this thread into the view of process `pid` (host pid): its mount namespace, root,
/// and `dirfd` (`AT_FDCWD`: its cwd; else its descriptor) as the working directory; then
/// `id` and no effective capabilities. `Err(errno)`: the view could not be taken (the
/// caller refuses the exec).
pub fn enter(pid: u32, dirfd: i32, id: Option<&Identity<'_>>) -> Result<View, i32> {
    let ids = own_ids(pid).ok_or(libc::ESRCH)?;
    // Opened as root, before anything changes: these are the process's, by the kernel's
    // per-process links.
    let root = open_path(&format!("/proc/{pid}/root"))?;
    let base = if dirfd == libc::AT_FDCWD {
        open_path(&format!("/proc/{pid}/cwd"))?
    } else if dirfd >= 0 {
        open_path(&format!("/proc/{pid}/fd/{dirfd}"))?
    } else {
        return Err(libc::EBADF);
    };
    let theirs = open_path(&format!("/proc/{pid}/ns/mnt"))?;
    let ours = open_path("/proc/self/ns/mnt")?;
    let same_ns = same_file(&theirs, &ours)?;
    // SAFETY: plain syscalls on this thread's own fs struct, namespaces and credentials;
    // every pointer is to a live local.
    unsafe {
        if libc::unshare(libc::CLONE_FS) != 0 {
            return Err(errno());
        }
        if !same_ns {
            // Opened without O_PATH for setns.
            let ns = open_ns(pid)?;
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
                return Err(errno());
            }
        }
        if libc::fchdir(root.as_raw_fd()) != 0 {
            return Err(errno());
        }
        // An unprivileged broker cannot chroot; its launches share its root and namespace.
        if libc::chroot(c".".as_ptr()) != 0 && !(same_ns && errno() == libc::EPERM) {
            return Err(errno());
        }
        // A descriptor of a file (execveat with AT_EMPTY_PATH) is no directory to enter.
        let base_is_dir = libc::fchdir(base.as_raw_fd()) == 0;
        if let Some(id) = id {
            take_fs_identity(id.uid, id.gid, id.groups)?;
        }
        drop_effective_capabilities()?;
        Ok(View {
            ids,
            base,
            base_is_dir,
        })
    }
}

/// Walks `path` from this thread's root or working directory (see [`enter`]), following
/// symlinks as exec does; `self`/`thread-self` under a procfs root become `ids`.
pub fn walk(path: &[u8], ids: OwnIds) -> Result<Found, i32> {
    if path.is_empty() {
        return Err(libc::ENOENT);
    }
    let mut todo: Vec<Vec<u8>> = Vec::new();
    push_components(&mut todo, path);
    let must_be_dir = path.ends_with(b"/");
    let mut named: Vec<Vec<u8>> = Vec::new();
    let mut cur = if path[0] == b'/' {
        open_path("/")?
    } else {
        named = current_name();
        open_path(".")?
    };
    let mut links = 0;
    while let Some(comp) = todo.pop() {
        if comp == b".." {
            cur = open_at(&cur, b"..", 0)?;
            named.pop();
            continue;
        }
        if (comp == b"self" || comp == b"thread-self") && is_proc_root(&cur) {
            let mut own = vec![ids.tgid.to_string().into_bytes()];
            if comp == b"thread-self" {
                own.push(b"task".to_vec());
                own.push(ids.tid.to_string().into_bytes());
            }
            todo.extend(own.into_iter().rev());
            continue;
        }
        let next = open_at(&cur, &comp, libc::O_NOFOLLOW)?;
        let st = fstat(&next)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            if is_proc(&cur) {
                // A procfs link (`exe`, `cwd`, `fd/N`) answers per process, not per
                // reader: the kernel's own jump is the right one.
                let target = read_link_at(&cur, &comp).unwrap_or_default();
                cur = open_at(&cur, &comp, 0)?;
                named = if target.starts_with(b"/") {
                    split(&target)
                } else {
                    vec![target]
                };
                continue;
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(libc::ELOOP);
            }
            let target = read_link_at(&cur, &comp)?;
            if target.starts_with(b"/") {
                cur = open_path("/")?;
                named.clear();
            }
            push_components(&mut todo, &target);
            continue;
        }
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if (!todo.is_empty() || must_be_dir) && !is_dir {
            return Err(libc::ENOTDIR);
        }
        named.push(comp);
        cur = next;
    }
    let mut path = Vec::new();
    for part in &named {
        path.push(b'/');
        path.extend_from_slice(part);
    }
    if path.is_empty() {
        path.push(b'/');
    }
    Ok(Found { file: cur, path })
}

/// `(dev, ino)` of an open file.
pub fn file_id(fd: &OwnedFd) -> Result<(u64, u64), i32> {
    let st = fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// The process's thread group and thread ids in its own PID namespace: the last fields
/// of `NStgid:` and `NSpid:` in its status.
fn own_ids(pid: u32) -> Option<OwnIds> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let last = |key: &str| -> Option<u32> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().last()?.parse().ok()
    };
    Some(OwnIds {
        tgid: last("NStgid:")?,
        tid: last("NSpid:")?,
    })
}

/// Components of `path` pushed so that the first is popped first (`.` and empty ones
/// skipped).
fn push_components(todo: &mut Vec<Vec<u8>>, path: &[u8]) {
    let parts: Vec<Vec<u8>> = split(path);
    todo.extend(parts.into_iter().rev());
}

fn split(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect()
}

/// This thread's working directory, by name, for the audit (empty when it has none).
fn current_name() -> Vec<Vec<u8>> {
    std::env::current_dir()
        .map(|p| split(p.as_os_str().as_bytes()))
        .unwrap_or_default()
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn open_path(path: &str) -> Result<OwnedFd, i32> {
    let c = CString::new(path).map_err(|_| libc::EINVAL)?;
    // SAFETY: a NUL-terminated path; the descriptor is owned at once.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: just opened, ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_ns(pid: u32) -> Result<OwnedFd, i32> {
    let c = CString::new(format!("/proc/{pid}/ns/mnt")).map_err(|_| libc::EINVAL)?;
    // SAFETY: as in open_path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: just opened, ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_at(dir: &OwnedFd, name: &[u8], flags: i32) -> Result<OwnedFd, i32> {
    let c = CString::new(name).map_err(|_| libc::ENOENT)?;
    // SAFETY: a NUL-terminated name relative to a directory we hold.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC | flags,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: just opened, ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn read_link_at(dir: &OwnedFd, name: &[u8]) -> Result<Vec<u8>, i32> {
    let c = CString::new(name).map_err(|_| libc::ENOENT)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: readlinkat writes at most buf.len() bytes into buf.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(errno());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn fstat(fd: &OwnedFd) -> Result<libc::stat, i32> {
    // SAFETY: stat is plain data that fstat fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; an O_PATH descriptor may be fstat'ed.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(errno());
    }
    Ok(st)
}

fn same_file(a: &OwnedFd, b: &OwnedFd) -> Result<bool, i32> {
    Ok(file_id(a)? == file_id(b)?)
}

fn fs_type(fd: RawFd) -> Option<i64> {
    // SAFETY: statfs is plain data that fstatfs fills.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::fstatfs(fd, &mut s) } == 0).then_some(s.f_type)
}

fn is_proc(fd: &OwnedFd) -> bool {
    fs_type(fd.as_raw_fd()) == Some(PROC_MAGIC)
}

fn is_proc_root(fd: &OwnedFd) -> bool {
    is_proc(fd) && fstat(fd).is_ok_and(|st| st.st_ino == PROC_ROOT_INO)
}

/// Gives this thread `uid`, `gid` and `groups` for its file system access. The raw
/// syscalls: Linux keeps credentials per thread, and glibc's wrappers would change every
/// thread of the broker. `EPERM` when an id did not take.
pub fn take_fs_identity(uid: u32, gid: u32, groups: &[libc::gid_t]) -> Result<(), i32> {
    // SAFETY: per-thread credential syscalls; `groups` is live for the call.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
            return Err(errno());
        }
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        // An invalid id changes nothing and returns the current one.
        if libc::syscall(libc::SYS_setfsgid, u32::MAX) != gid as libc::c_long
            || libc::syscall(libc::SYS_setfsuid, u32::MAX) != uid as libc::c_long
        {
            return Err(libc::EPERM);
        }
    }
    Ok(())
}

/// Clears this thread's effective capabilities (its permitted ones stay, unused: the
/// thread ends with its decision).
fn drop_effective_capabilities() -> Result<(), i32> {
    let mut sets = crate::daemon::spawn::capget(0)?;
    for half in &mut sets {
        half.effective = 0;
    }
    crate::daemon::spawn::capset(&sets)
}

/// For the audit: bytes as text.
pub fn display(path: &[u8]) -> String {
    OsStr::from_bytes(path).to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a thread of its own, as the guard uses it.
    fn walk_as_self(path: &[u8]) -> Result<Vec<u8>, i32> {
        let path = path.to_vec();
        std::thread::spawn(move || {
            let view = enter(std::process::id(), libc::AT_FDCWD, None)?;
            walk(&path, view.ids).map(|f| f.path)
        })
        .join()
        .unwrap()
    }

    #[test]
    fn self_is_the_process_not_the_reader_also_through_a_symlink() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.as_os_str().as_bytes().to_vec();
        assert_eq!(walk_as_self(b"/proc/self/exe"), Ok(exe.clone()));
        assert_eq!(
            walk_as_self(b"/proc/thread-self/../../exe"),
            Ok(exe.clone())
        );
        // A planted symlink whose target names procfs's self: still this process, not the
        // thread that walks.
        let dir = std::env::temp_dir().join(format!("ctx-view-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("me");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/proc/self/../self/exe", &link).unwrap();
        let walked = walk_as_self(link.as_os_str().as_bytes());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(walked, Ok(exe));
        assert_eq!(walk_as_self(b"/proc/selfish"), Err(libc::ENOENT));
        assert_eq!(walk_as_self(b"/etc/passwd/"), Err(libc::ENOTDIR));
        assert_eq!(walk_as_self(b""), Err(libc::ENOENT));
    }
}
