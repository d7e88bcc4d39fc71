//! The spawn child's working directory: the configured path, or the caller's directory by
//! its descriptor where that path no longer leads to it.

use std::os::fd::RawFd;

use super::report::errno;

// ---------------------------------------------------------------------------------------
// Functions: in the spawn child
// ---------------------------------------------------------------------------------------

/// Enters the working directory: `path` as the context's uid sees it, or the caller's
/// directory by its descriptor `fd` (-1: none) where the path names no directory any more
/// or another one. A path the uid may not search fails here (a clear bad-cwd error) rather
/// than falling back. Async-signal-safe; the errno of the failing call.
pub(super) unsafe fn enter(path: Option<&std::ffi::CStr>, fd: RawFd) -> Result<(), i32> {
    let by_fd = |fd: RawFd| {
        if libc::fchdir(fd) < 0 {
            Err(errno())
        } else {
            Ok(())
        }
    };
    match (path, fd) {
        (None, -1) => Ok(()),
        (None, fd) => by_fd(fd),
        (Some(p), fd) => {
            if libc::chdir(p.as_ptr()) == 0 {
                if fd < 0 || same_dir(fd) {
                    return Ok(());
                }
                return by_fd(fd);
            }
            match errno() {
                libc::ENOENT | libc::ENOTDIR if fd >= 0 => by_fd(fd),
                e => Err(e),
            }
        }
    }
}

/// Whether the working directory is the directory `fd` refers to.
unsafe fn same_dir(fd: RawFd) -> bool {
    let mut here: libc::stat = std::mem::zeroed();
    let mut there: libc::stat = std::mem::zeroed();
    libc::stat(c".".as_ptr(), &mut here) == 0
        && libc::fstat(fd, &mut there) == 0
        && (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
}
