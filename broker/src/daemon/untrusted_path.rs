//! Opening, as root, a path that a context chose (the program it asked to run): never a
//! device's or a FIFO's `open()` (which may block the broker or act on hardware), only a
//! regular file. The path is resolved once without opening anything (`O_PATH`), checked,
//! then the very inode found is opened for reading through `/proc/self/fd`. And telling
//! what a caller-chosen directory name stands for without waiting on any filesystem.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The regular file at `path` (symlinks followed, as exec would), opened for reading.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a NUL-terminated path; O_PATH opens no file for I/O.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open just returned this descriptor and nothing else owns it.
    let pathfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let meta = File::from(pathfd.try_clone()?).metadata()?;
    if !meta.is_file() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", pathfd.as_raw_fd()))
}

/// A directory as this broker sees it: `(dev, ino, mount id)`.
pub type DirIdentity = (u64, u64, u64);

/// What the caller-chosen `name` leads to here, if the kernel can say from what it has
/// cached alone: the lookup fails rather than wait (`RESOLVE_CACHED`, Linux 5.12), and the
/// attributes are the cached ones, so a FUSE or network mount the caller picked cannot
/// hold the thread. No symlink is followed: the names given are the kernel's own paths,
/// which hold none, and one found on the way was put there by someone who can write that
/// directory (a context's user in its home, say). `None` also for a name that does not
/// resolve.
pub fn cached_identity_of_name(name: &[u8]) -> Option<DirIdentity> {
    let c = std::ffi::CString::new(name).ok()?;
    let resolve = libc::RESOLVE_CACHED | libc::RESOLVE_NO_SYMLINKS;
    let fd = openat2(&c, libc::O_PATH | libc::O_CLOEXEC, resolve).ok()?;
    cached_identity_of_fd(fd.as_raw_fd())
}

/// `openat2(2)` from the cwd: `flags` as for open, `resolve` its `RESOLVE_*` bits.
/// ENOSYS before Linux 5.6.
pub fn openat2(path: &std::ffi::CStr, flags: libc::c_int, resolve: u64) -> io::Result<OwnedFd> {
    openat2_at(libc::AT_FDCWD, path, flags, resolve)
}

/// `openat2(2)` of `path` relative to the directory `dir`.
pub fn openat2_in(
    dir: std::os::fd::BorrowedFd<'_>,
    path: &std::ffi::CStr,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    openat2_at(dir.as_raw_fd(), path, flags, resolve)
}

fn openat2_at(
    dir: libc::c_int,
    path: &std::ffi::CStr,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = resolve;
    // SAFETY: a NUL-terminated path and an open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// What the open descriptor `fd` (a caller's, say) names, from cached attributes only.
pub fn cached_identity_of_fd(fd: std::os::fd::RawFd) -> Option<DirIdentity> {
    // SAFETY: statx is plain data filled by the call.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an empty path with AT_EMPTY_PATH names `fd` itself; `st` is ours to fill.
    let r = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
            libc::STATX_INO | libc::STATX_MNT_ID,
            &mut st,
        )
    };
    (r == 0 && st.stx_mask & libc::STATX_MNT_ID != 0).then(|| {
        (
            libc::makedev(st.stx_dev_major, st.stx_dev_minor),
            st.stx_ino,
            st.stx_mnt_id,
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_name_and_a_descriptor_of_one_directory_are_the_same_one() {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir();
        let f = std::fs::File::open(&dir).unwrap();
        let by_fd = super::cached_identity_of_fd(f.as_raw_fd()).unwrap();
        // Looked up once, so in the cache.
        let by_name = super::cached_identity_of_name(dir.as_os_str().as_encoded_bytes());
        assert_eq!(by_name, Some(by_fd));
        assert_ne!(super::cached_identity_of_name(b"/"), Some(by_fd));
        assert_eq!(super::cached_identity_of_name(b"/no/such/dir/here"), None);
    }

    #[test]
    fn a_name_through_a_symlink_leads_nowhere() {
        let base = std::env::temp_dir().join(format!("ctx-untrusted-{}", std::process::id()));
        let real = base.join("real");
        std::fs::create_dir_all(&real).unwrap();
        let link = base.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        // Both looked up once, so in the cache.
        assert!(std::fs::metadata(&link).is_ok());
        let by_real = super::cached_identity_of_name(real.as_os_str().as_encoded_bytes());
        let by_link = super::cached_identity_of_name(link.as_os_str().as_encoded_bytes());
        let via_link =
            super::cached_identity_of_name(link.join(".").as_os_str().as_encoded_bytes());
        std::fs::remove_dir_all(&base).unwrap();
        assert!(by_real.is_some());
        assert_eq!((by_link, via_link), (None, None));
    }

    #[test]
    fn only_regular_files_open() {
        assert!(super::open_regular(std::path::Path::new("/bin/sh")).is_ok());
        for not_regular in ["/dev/null", "/", "/proc/self/fd/0/../.."] {
            assert!(
                super::open_regular(std::path::Path::new(not_regular)).is_err(),
                "{not_regular}"
            );
        }
        let dir = std::env::temp_dir().join(format!("ctx-fifo-{}", std::process::id()));
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A FIFO without a writer: refused at once instead of blocking.
        assert!(super::open_regular(&dir).is_err());
        let _ = std::fs::remove_file(&dir);
    }
}
