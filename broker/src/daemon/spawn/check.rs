//! The parent's guess, before the clone, whether the child's exec will succeed: which
//! candidates `execvp` would try, and whether the first one that exists may be run by the
//! identity the child takes.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;

use super::{Identity, Program, SpawnPlan};

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// The candidates `execvp` would try for `file` along `path` (empty entries mean the cwd).
pub fn search_candidates(file: &[u8], path: &[u8]) -> Vec<CString> {
    if file.contains(&b'/') {
        return CString::new(file).into_iter().collect();
    }
    path.split(|&b| b == b':')
        .filter_map(|dir| {
            let mut full = Vec::with_capacity(dir.len() + 1 + file.len());
            if dir.is_empty() {
                full.extend_from_slice(b"./");
            } else {
                full.extend_from_slice(dir);
                if !dir.ends_with(b"/") {
                    full.push(b'/');
                }
            }
            full.extend_from_slice(file);
            CString::new(full).ok()
        })
        .collect()
}

/// Whether the child's exec will most likely succeed: the first candidate that exists is a
/// regular file with an execute bit for the identity the child takes, as `execvp` would
/// find it. Directory search rights, ACLs, mount options and Landlock rules are not
/// considered; a wrong guess only means the failure reaches the caller late (see
/// `Reply::Accepted`), so this errs on the side of "no" when unsure.
pub fn exec_likely(plan: &SpawnPlan) -> bool {
    let searching = matches!(plan.program, Program::Search(_));
    let candidates: &[CString] = match &plan.program {
        Program::Exact(p) => std::slice::from_ref(p),
        Program::Search(list) => list,
    };
    let base = plan.relative_base();
    for cand in candidates {
        let bytes = cand.as_bytes();
        let relative = bytes.first().is_some_and(|&c| c != b'/');
        let path = match &base {
            Some(base) if relative => base.join(OsStr::from_bytes(bytes)),
            _ => std::path::PathBuf::from(OsStr::from_bytes(bytes)),
        };
        // Through a descriptor the kernel checks no directory above it, so neither does
        // this guess.
        let above = match (&plan.cwd_fd, &base) {
            (Some(_), Some(base)) if relative => base.ancestors().count() - 1,
            _ => 0,
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e)
                if searching && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) =>
            {
                continue
            }
            Err(_) => return false,
        };
        if !meta.is_file() {
            return false;
        }
        let runnable = match &plan.identity {
            // The directories on the way must be searchable by that uid too.
            Some(id) => {
                let dirs = path.ancestors().count() - 1 - above;
                may_execute(&meta, id)
                    && path.ancestors().skip(1).take(dirs).all(|dir| {
                        dir.as_os_str().is_empty()
                            || std::fs::metadata(dir).is_ok_and(|m| may_execute(&m, id))
                    })
            }
            None => {
                let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
                    return false;
                };
                // SAFETY: a NUL-terminated path; faccessat only reads it.
                unsafe {
                    libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::X_OK, libc::AT_EACCESS) == 0
                }
            }
        };
        // A search goes on past a file it may not run (execvp remembers EACCES), but the
        // guess stays "no" then: the answer depends on what comes later on PATH.
        if !runnable {
            return false;
        }
        // Neither ELF nor `#!`: the kernel says ENOEXEC, which only a `/bin/sh` fallback
        // turns into a run (the caller's own shell may want to see the ENOEXEC).
        return known_format(&path) || searching || plan.sh_fallback;
    }
    false
}

/// Execute (search, for a directory) permission by the mode bits, for `id`.
fn may_execute(meta: &std::fs::Metadata, id: &Identity) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode();
    if id.uid == 0 {
        // Root needs one x bit on a file; directories it may always search.
        return meta.is_dir() || mode & 0o111 != 0;
    }
    if meta.uid() == id.uid {
        mode & 0o100 != 0
    } else if meta.gid() == id.gid || id.groups.contains(&meta.gid()) {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// Whether the file starts like something the kernel executes: an ELF image or a script.
fn known_format(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    // The context chose the path: never a FIFO's or a device's open() as root.
    let Ok(mut f) = crate::daemon::untrusted_path::open_regular(path) else {
        // Unreadable by the broker (root squash, FUSE), or not a regular file any more:
        // no basis for a guess.
        return false;
    };
    let n = f.read(&mut head).unwrap_or(0);
    (n == 4 && head.starts_with(b"\x7fELF")) || head[..n].starts_with(b"#!")
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_path() {
        let c = search_candidates(b"ls", b"/usr/bin::/bin/");
        let c: Vec<&[u8]> = c.iter().map(|c| c.as_bytes()).collect();
        assert_eq!(c, vec![&b"/usr/bin/ls"[..], b"./ls", b"/bin/ls"]);
        let c = search_candidates(b"./x", b"/usr/bin");
        assert_eq!(c[0].as_bytes(), b"./x");
    }
}
