//! Opening, as root, a path that a context chose (the program it asked to run): never a
//! device's or a FIFO's `open()` (which may block the broker or act on hardware), only a
//! regular file. The path is resolved once without opening anything (`O_PATH`), checked,
//! then the very inode found is opened for reading through `/proc/self/fd`.

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

#[cfg(test)]
mod tests {
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
