//! What the broker's tests of the spawn path share.

use super::*;

/// A plan that runs `argv` (an absolute program path first) as the broker itself, with
/// these descriptors and nothing else set.
pub fn test_plan(argv: &[&str], fds: Vec<(RawFd, i32)>) -> SpawnPlan {
    SpawnPlan {
        program: Program::Exact(CString::new(argv[0]).unwrap()),
        sh_fallback: false,
        argv: argv.iter().map(|a| CString::new(*a).unwrap()).collect(),
        envp: vec![CString::new("PATH=/usr/bin:/bin").unwrap()],
        cwd: None,
        cwd_fd: None,
        identity: None,
        rlimits: Vec::new(),
        inherited: None,
        fds,
        controlling_tty: None,
        new_session: false,
        drop_caps: false,
        namespaces: None,
        cgroup_join: Vec::new(),
        cgroup_dir: None,
        landlock: [None, None],
        listen_pid: false,
        exec_guard: None,
        supervisor_filter: Vec::new(),
        owner_filter: None,
        pid_slots: None,
        passed: Vec::new(),
    }
}

/// Waits for the started child to end: `(si_code, si_status)` of its `waitid`.
pub fn wait_end(forked: &Forked) -> (i32, i32) {
    // SAFETY: waitid on our child's pidfd, into a zeroed siginfo.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_PIDFD,
            forked.pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED,
        );
        (info.si_code, info.si_status())
    }
}

/// The v2 hierarchy's mount point (hybrid or unified).
pub fn v2_mount() -> std::path::PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| std::path::PathBuf::from(f[1]))
        })
        .expect("a cgroup2 mount (hybrid or unified): these tests need one")
}

/// This process's own v2 cgroup, as a path below `v2_mount()`.
pub fn own_v2_cgroup() -> String {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    own.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_string()
}
