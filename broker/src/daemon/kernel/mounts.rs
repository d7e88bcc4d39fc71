//! Whether every file system mounted in the broker's mount namespace answers from this
//! machine: then a path lookup or a small read there cannot wait on a server (NFS, CIFS,
//! a FUSE daemon, an automounter), and a worker may do it without handing its other tasks
//! to another thread first. Known-local types only; anything else counts as remote.
//! The mount table is re-read when the kernel says it changed (`POLLPRI` on mountinfo).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, OnceLock};

/// File system types whose operations never leave this machine (not `autofs`: a lookup
/// there may mount a network file system first).
const LOCAL: &[&str] = &[
    "binfmt_misc",
    "bpf",
    "btrfs",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "exfat",
    "ext2",
    "ext3",
    "ext4",
    "f2fs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "ntfs3",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "securityfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
    "vfat",
    "xfs",
    "zfs",
];

struct Table {
    /// Open for the broker's lifetime: its poll state says whether the table changed.
    file: File,
    all_local: bool,
}

/// Whether every mount in the broker's namespace is of a local type; `false` when that
/// cannot be told.
pub fn all_local() -> bool {
    static TABLE: OnceLock<Option<Mutex<Table>>> = OnceLock::new();
    let Some(table) = TABLE.get_or_init(|| {
        let file = File::open("/proc/self/mountinfo").ok()?;
        let mut t = Table {
            file,
            all_local: false,
        };
        t.all_local = t.read().unwrap_or(false);
        Some(Mutex::new(t))
    }) else {
        return false;
    };
    let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
    let mut pfd = libc::pollfd {
        fd: t.file.as_raw_fd(),
        events: libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let polled = unsafe { libc::poll(&mut pfd, 1, 0) };
    if polled != 0 {
        // Changed (or poll failed): read again; the read re-arms the change notice.
        t.all_local = polled > 0 && t.read().unwrap_or(false);
    }
    t.all_local
}

impl Table {
    fn read(&mut self) -> std::io::Result<bool> {
        let mut text = String::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_string(&mut text)?;
        Ok(every_type_local(&text))
    }
}

/// Whether every line of a mountinfo text names a local file system type (the field after
/// the ` - ` separator).
fn every_type_local(mountinfo: &str) -> bool {
    mountinfo.lines().all(|line| {
        line.split_once(" - ")
            .and_then(|(_, rest)| rest.split_ascii_whitespace().next())
            .is_some_and(|fstype| LOCAL.contains(&fstype))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL_ONLY: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid shared:2 - proc proc rw
24 22 0:5 / /dev rw,nosuid shared:3 - devtmpfs udev rw,size=1k
";

    #[test]
    fn local_types_only_are_local() {
        assert!(every_type_local(LOCAL_ONLY));
    }

    #[test]
    fn a_network_fuse_or_automount_makes_the_table_remote() {
        for line in [
            "40 22 0:50 / /mnt/n rw - nfs4 srv:/x rw,vers=4.2",
            "41 22 0:51 / /home/u/m rw,nosuid - fuse.sshfs u@h:/ rw,user_id=1000",
            "42 22 0:52 / /net rw - autofs systemd-1 rw,fd=40",
            "43 22 0:53 / /mnt/c rw - cifs //h/s rw",
            "44 22 0:54 / /mnt/v rw - virtiofs tag rw",
        ] {
            assert!(
                !every_type_local(&format!("{LOCAL_ONLY}{line}\n")),
                "{line}"
            );
        }
    }

    #[test]
    fn a_line_without_a_type_is_not_taken_for_local() {
        assert!(!every_type_local("garbage without separator\n"));
    }

    #[test]
    fn the_broker_reads_its_own_table() {
        let here = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(all_local(), every_type_local(&here));
        // Asked again with nothing changed: the same answer, from the poll.
        assert_eq!(all_local(), every_type_local(&here));
    }
}
