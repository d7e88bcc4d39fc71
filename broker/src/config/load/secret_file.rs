//! Reading an `env_files` entry as root: the path the operator wrote, not one a context
//! redirected. The path is resolved by hand first, and a symlink met on the way counts
//! only when it lies in a directory that no one but root can change (else a context's
//! user could point it at another context's secrets: the load fails, naming it). The file
//! is then opened at the resolved path with no symlink allowed anywhere (`openat2`
//! `RESOLVE_NO_SYMLINKS`), so a component swapped for a link after the check fails the
//! load too; a FIFO or device is refused. What could still let someone else choose the
//! context's environment (an owner other than root or the context's user, a writable
//! file or directory on the way) comes back as notes for the warnings.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::daemon::untrusted_path;

/// Largest env file read: a secrets file is small; a huge one is a mistake.
const MAX_BYTES: u64 = 1024 * 1024;

/// The bytes of the env file at `path` for a context of `uid`, with notes on who else
/// could change them.
pub fn read(path: &Path, uid: u32) -> Result<(Vec<u8>, Vec<String>), String> {
    let canonical = resolve_trusted_links(path)?;
    let file = open_no_symlinks(&canonical).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => "changed into a symlink while it was read: refusing it".to_string(),
        _ => format!("cannot read it: {e}"),
    })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    // A second name for the file in a directory someone else can write may be a hard link
    // they made to a file they cannot read (possible where fs.protected_hardlinks is 0).
    if meta.nlink() > 1 {
        let parent = canonical.parent().unwrap_or(Path::new("/"));
        let dir = std::fs::metadata(parent).map_err(|e| format!("cannot read it: {e}"))?;
        if !dir_trusted(&dir, meta.uid()) {
            return Err(format!(
                "has {} hard links and lies in {}, which others can write: it may be a link \
                 to another context's secrets; keep env files in a root-owned directory such \
                 as /etc/ctx",
                meta.nlink(),
                parent.display()
            ));
        }
    }
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err("is over 1 MiB".into());
    }

    let mut notes = Vec::new();
    if meta.mode() & 0o004 != 0 {
        notes.push("is readable by every user; it holds secrets, so chmod o-r it".to_string());
    }
    if !trusted(meta.uid()) && meta.uid() != uid {
        notes.push(format!(
            "belongs to uid {}, who can therefore set this context's environment (LD_PRELOAD \
             included); chown it to root",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        notes.push(
            "is writable by its group or by everyone, who can therefore set this context's \
             environment; chmod go-w it"
                .to_string(),
        );
    }
    // A directory someone else may write lets them replace the file (or a directory on the
    // way) with their own; a sticky one only for entries they own.
    let mut child_owner = meta.uid();
    for dir in canonical.ancestors().skip(1) {
        let Ok(d) = std::fs::metadata(dir) else { break };
        if !dir_trusted(&d, child_owner) {
            notes.push(format!(
                "lies in {}, which {} can write, so they can swap the file for their own; \
                 keep env files in a root-owned directory such as /etc/ctx",
                dir.display(),
                if trusted(d.uid()) {
                    "other users".to_string()
                } else {
                    format!("uid {}", d.uid())
                }
            ));
            break;
        }
        child_owner = d.uid();
    }
    Ok((bytes, notes))
}

/// The first directory on the way to `path` (which may not exist yet) that someone other
/// than root can change an entry of, and who: they can rename what is there.
pub(super) fn changeable_on_the_way(path: &Path) -> Option<(PathBuf, u32)> {
    let mut child_owner = std::fs::symlink_metadata(path).map_or(0, |m| m.uid());
    for dir in path.ancestors().skip(1) {
        let Ok(d) = std::fs::metadata(dir) else {
            continue;
        };
        if !dir_trusted(&d, child_owner) {
            return Some((dir.to_path_buf(), d.uid()));
        }
        child_owner = d.uid();
    }
    None
}

/// Whether root or the broker's own uid owns it.
fn trusted(owner: u32) -> bool {
    // SAFETY: plain getter.
    owner == 0 || owner == unsafe { libc::geteuid() }
}

/// Whether no one but a trusted owner can replace an entry of `dir` owned by `entry_owner`.
fn dir_trusted(dir: &std::fs::Metadata, entry_owner: u32) -> bool {
    trusted(dir.uid())
        && (dir.mode() & 0o022 == 0 || (dir.mode() & 0o1000 != 0 && trusted(entry_owner)))
}

/// `path` with every symlink followed, refusing a symlink that an untrusted user could
/// have placed or changed.
pub(super) fn resolve_trusted_links(path: &Path) -> Result<PathBuf, String> {
    use std::path::Component;
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter(|c| !matches!(c, Component::RootDir))
        .map(|c| c.as_os_str().to_owned())
        .collect();
    let mut cur = PathBuf::from("/");
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == "." {
            continue;
        }
        if part == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&part);
        let meta = std::fs::symlink_metadata(&next)
            .map_err(|e| format!("cannot read it: {}: {e}", next.display()))?;
        if !meta.file_type().is_symlink() {
            cur = next;
            continue;
        }
        hops += 1;
        if hops > 40 {
            return Err("has too many levels of symbolic links".into());
        }
        let dir = std::fs::metadata(&cur).map_err(|e| format!("cannot read it: {e}"))?;
        if !dir_trusted(&dir, meta.uid()) {
            return Err(format!(
                "is reached through the symlink {}, which lies in {}, a directory uid {} or \
                 others can write: they could point it at another context's secrets; use a \
                 path with no such link (e.g. under /etc/ctx)",
                next.display(),
                cur.display(),
                dir.uid()
            ));
        }
        let target = std::fs::read_link(&next).map_err(|e| format!("cannot read it: {e}"))?;
        if target.is_absolute() {
            cur = PathBuf::from("/");
        }
        pending.extend(
            target
                .components()
                .rev()
                .filter(|c| !matches!(c, Component::RootDir))
                .map(|c| c.as_os_str().to_owned()),
        );
    }
    Ok(cur)
}

/// `openat2(RESOLVE_NO_SYMLINKS)`, or `O_NOFOLLOW` on a kernel before 5.6.
fn open_no_symlinks(path: &Path) -> std::io::Result<File> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    match untrusted_path::openat2(&c, flags, libc::RESOLVE_NO_SYMLINKS) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
        opened => return opened.map(File::from),
    }
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_NOFOLLOW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this descriptor for us.
    Ok(unsafe { File::from_raw_fd(fd) })
}
