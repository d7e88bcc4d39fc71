//! `--spawn` mode: started by glibc's real `posix_spawn` after the caller's file actions
//! and attributes were applied, so this process's descriptors, cwd and signal state are
//! exactly what the routed program must get. Sends the launch, reports the verdict to the
//! hook over the inherited pipe, then relays like `--attach`.
//!
//! argv: `--spawn <report-fd> <context> <socket> <flags> <program> <PATH> <argc> argv... envp...`
//! where flags is `p` (search PATH) or `-`, followed by `l` for CTX_ON_BROKER_DOWN=local.

use crate::{relay, usage, EXIT_CTX};
use ctx_hookpath::conn::{self, Verdict};
use ctx_hookpath::fds::{self, InlineFds};
use ctx_hookpath::sys;
use ctx_hookpath::wire::{self, ExecRef, StrList};

fn report(fd: i32, errno: Option<i32>) -> bool {
    let mut rec = [0u8; 8];
    match errno {
        None => rec[0] = b'S',
        Some(e) => {
            rec[0] = b'F';
            rec[4..].copy_from_slice(&e.to_le_bytes());
        }
    }
    // SAFETY: writes 8 bytes from a stack buffer; a pipe write this small is atomic.
    let n = unsafe { libc::write(fd, rec.as_ptr() as *const _, rec.len()) };
    // SAFETY: the report channel is used once.
    unsafe { libc::close(fd) };
    n == rec.len() as isize
}

// Without a report channel (closed by the file actions), a failure can only show in the
// exit status, as a local shell would report it.
use ctx_hookpath::ending::{self, failed_exit_code};

/// Executes the program here, as the real `posix_spawn`/`posix_spawnp` would have (a PATH
/// search without the `/bin/sh` fallback). Returns only on failure, with the errno the
/// local spawn would have reported.
fn exec_locally(program: &[u8], search_path: Option<&[u8]>, argv: &[&[u8]], envp: &[&[u8]]) -> i32 {
    use std::ffi::CString;
    let cs =
        |v: &[&[u8]]| -> Option<Vec<CString>> { v.iter().map(|s| CString::new(*s).ok()).collect() };
    let (Some(argv_c), Some(envp_c)) = (cs(argv), cs(envp)) else {
        return libc::EINVAL;
    };
    let mut argv_p: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp_c.iter().map(|c| c.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    let try_exec = |path: &[u8]| -> i32 {
        let Ok(p) = CString::new(path) else {
            return libc::ENOENT;
        };
        // SAFETY: NUL-terminated path and NULL-terminated arrays that outlive the call.
        unsafe { libc::execve(p.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
        sys::errno()
    };
    let Some(path) = search_path else {
        return try_exec(program);
    };
    let mut got_eacces = false;
    for dir in path.split(|&b| b == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let mut full = dir.to_vec();
        full.push(b'/');
        full.extend_from_slice(program);
        match try_exec(&full) {
            libc::EACCES => got_eacces = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            e => return e,
        }
    }
    if got_eacces {
        libc::EACCES
    } else {
        libc::ENOENT
    }
}

/// `dir/file` for the first entry of `path` holding a regular file with an execute bit.
fn first_on_path(file: &[u8], path: &[u8]) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    path.split(|&b| b == b':').find_map(|dir| {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let mut p = dir.to_vec();
        p.push(b'/');
        p.extend_from_slice(file);
        let m = std::fs::metadata(std::ffi::OsStr::from_bytes(&p)).ok()?;
        (m.is_file() && m.permissions().mode() & 0o111 != 0).then_some(p)
    })
}

pub fn run(a: &[&[u8]]) -> ! {
    // First, before this process changes anything: glibc applied the caller's attributes
    // (signal mask, default signals), so what this process holds is what the program
    // would have inherited.
    let mut inherited = ctx_protocol::Captured::read();
    // Then the relay's signals wait for its signalfd, from here rather than from the
    // verdict: file actions that close the report pipe (Python 3.13's `subprocess` closes
    // every descriptor above stderr) let posix_spawn return at this process's start, and
    // a `kill` of that pid while the broker already runs the program would otherwise kill
    // this process and, with it, the routed group.
    let program_mask = ending::block_forwarded();
    // Spawned by the caller, which launched the program.
    // SAFETY: plain getter.
    let launcher = unsafe { libc::getppid() };
    let (
        Some(report_fd),
        Some(context),
        Some(socket),
        Some(flag),
        Some(program),
        Some(path),
        Some(argc),
    ) = (
        a.get(2).and_then(|s| sys::parse_u64(s)),
        a.get(3),
        a.get(4),
        a.get(5),
        a.get(6),
        a.get(7),
        a.get(8).and_then(|s| sys::parse_u64(s)),
    )
    else {
        usage()
    };
    let report_fd = report_fd as i32;
    let argc = argc as usize;
    let rest = &a[9.min(a.len())..];
    if argc > rest.len() {
        usage();
    }
    let (argv, envp) = rest.split_at(argc);
    // SAFETY: the report pipe is ours; it must not reach the routed program.
    let report_open = unsafe { libc::fcntl(report_fd, libc::F_SETFD, libc::FD_CLOEXEC) } == 0;
    let report_fd = if report_open { report_fd } else { -1 };
    let context = std::str::from_utf8(context).unwrap_or("?");
    let name: &[u8] = match argv.first() {
        Some(a0) if !a0.is_empty() => a0,
        _ => program,
    };
    // The pid the caller holds is named like the program, as an attached shim is (its
    // command line stays this mode's parameters: see the README's known limits).
    sys::set_comm(sys::basename(program));

    let fail = |errno: i32, exit: i32| -> ! {
        if report_fd < 0 || !report(report_fd, Some(errno)) {
            std::process::exit(failed_exit_code(errno).max(exit.min(EXIT_CTX)))
        }
        std::process::exit(exit)
    };

    let mut inline = Box::new(InlineFds::new());
    let mut big = None;
    let mut set = match fds::scan_any(&mut inline, &mut big, report_fd) {
        Ok(set) => set,
        Err(e) => {
            conn::refusal(context, name)
                .str(fds::scan_failure(e))
                .write_to(2);
            fail(libc::EMFILE, EXIT_CTX)
        }
    };
    let mut cwd = [0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: getcwd writes at most cwd.len() bytes.
    let cwd_bytes: &[u8] =
        if unsafe { libc::getcwd(cwd.as_mut_ptr() as *mut libc::c_char, cwd.len()) }.is_null() {
            b""
        } else {
            // SAFETY: NUL-terminated by getcwd.
            unsafe { sys::cstr(cwd.as_ptr() as *const libc::c_char) }
        };
    // posix_spawnp searches PATH like execvp but, unlike it, has no `/bin/sh` fallback for
    // a file without a shebang (glibc 2.15+: ENOEXEC). The broker's PATH search always
    // falls back, so the candidate is picked here, the first regular file with an execute
    // bit along PATH, and sent as an exact path; the broker then reports ENOEXEC as
    // posix_spawnp would. (The broker still checks that the context's uid may run it.)
    let search = flag.first() == Some(&b'p');
    let local_when_down = flag.get(1) == Some(&b'l');
    let picked = if search && !program.contains(&b'/') {
        first_on_path(program, path)
    } else {
        None
    };
    let (program, search_path): (&[u8], Option<&[u8]>) = match &picked {
        Some(p) => (p, None),
        None if search && !program.contains(&b'/') => (program, Some(path)),
        None => (program, None),
    };
    // The cwd as a descriptor too, after the inheritable ones (see exec::send).
    let cwd_fd = fds::open_cwd();
    if cwd_fd >= 0 && set.push_unslotted(cwd_fd) {
        inherited.cwd_fd = true;
    }
    let req = ExecRef {
        context,
        argv: StrList::Slice(argv),
        program: Some(program),
        search_path,
        env: StrList::Slice(envp),
        cwd: cwd_bytes,
        fds: set.slots(),
        tty: set.tty.as_ref(),
        // glibc applied the caller's attributes (POSIX_SPAWN_SETSID, SETPGROUP) to us.
        grouping: wire::own_grouping(),
        inherited: Some(&inherited),
    };
    let bound = req.encoded_bound();
    let mut out = vec![0u8; bound];
    let Ok(n) = wire::encode_launch(&req, &mut out) else {
        fail(libc::E2BIG, EXIT_CTX)
    };
    let mut socket_c = socket.to_vec();
    socket_c.push(0);
    let sock = match conn::connect(&socket_c) {
        Ok(s) => s,
        Err(e) if local_when_down => {
            conn::running_locally(context, name, socket, e);
            // This process already has what the program would have had (file actions,
            // attributes applied by glibc), so it becomes the program. On success the
            // close-on-exec report pipe closes unreported, which the hook takes as started.
            // Its mask is the program's again: a signal that arrived meanwhile acts as on
            // the program at its start (this process installed no handler).
            ending::restore_mask(&program_mask);
            let errno = exec_locally(program, search_path, argv, envp);
            fail(errno, failed_exit_code(errno))
        }
        Err(e) => {
            conn::refusal(context, name)
                .str("broker at ")
                .push(socket)
                .str(" unreachable: ")
                .errno_name(e)
                .write_to(2);
            fail(libc::EACCES, EXIT_CTX)
        }
    };
    let mut reply = vec![0u8; 64 * 1024];
    let verdict = conn::exchange(sock, &socket_c, &out[..n], set.passed(), &mut reply);
    if cwd_fd >= 0 {
        // SAFETY: our descriptor; the broker has its own copy.
        unsafe { libc::close(cwd_fd) };
    }
    match verdict {
        Verdict::Started { .. } | Verdict::Accepted => {}
        Verdict::Failed { errno, .. } => fail(errno, failed_exit_code(errno)),
        ref v => {
            let mut l = conn::refusal(context, name);
            conn::explain(&mut l, socket, v);
            l.write_to(2);
            fail(libc::EACCES, EXIT_CTX)
        }
    }
    conn::clear_timeout(sock);
    if report_fd >= 0 {
        report(report_fd, None);
    }
    let mask = set.pty_mask;
    drop(out);
    drop(reply);
    fds::keep_only(sock, mask);
    relay::run(sock, mask, launcher, name)
}
