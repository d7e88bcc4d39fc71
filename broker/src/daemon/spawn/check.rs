//! The parent's guess, before the clone, whether the child's exec will succeed: which
//! candidates `execvp` would try, and whether the first one that exists may be run by the
//! identity the child takes.
//!
//! The caller chose the path, so the guess must tell it nothing the child's own exec
//! would not: the lookup is the kernel's, made by this thread with the child's file
//! system identity and no effective capability (see [`ActingAs`]), and it follows no
//! magic link (`/proc/self/fd/N`, `/proc/PID/root` would name the broker's own
//! descriptors and views, not the child's). A wrong "no" only costs the early `Accepted`.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::caps::{capget, capset, CapSets};
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

/// Whether the child's exec will most likely succeed: the first candidate that exists (as
/// the child's identity finds it) is a regular file that identity may execute, as
/// `execvp` would find it, and it starts like something the kernel runs. Mount options
/// and Landlock rules are not considered; a wrong guess only means the failure reaches
/// the caller late (see `Reply::Accepted`), so this errs on the side of "no" when unsure.
pub fn exec_likely(plan: &SpawnPlan) -> bool {
    if !args_fit(plan) {
        return false;
    }
    let Ok(_acting) = ActingAs::take(plan.identity.as_ref()) else {
        return false;
    };
    let Some(file) = first_found(plan) else {
        return false;
    };
    // A search goes on past a file it may not run (execvp remembers EACCES), but the
    // guess stays "no" then: the answer depends on what comes later on PATH.
    if !is_regular(&file) || !may_execute(&file) {
        return false;
    }
    match format_of(&file) {
        // A loader that is not there fails the exec itself (ENOENT), as locally.
        Format::Elf { loader } => loader.is_none_or(|l| loader_likely(plan, &l)),
        // A missing or unrunnable interpreter fails the exec itself (`ENOENT`, say),
        // which the caller must see as its errno, not as a command exiting 127.
        Format::Script(interpreter) => interpreter_likely(plan, &interpreter),
        // Neither ELF nor `#!`: the kernel says ENOEXEC, which only a `/bin/sh`
        // fallback turns into a run (the caller's own shell may want the ENOEXEC).
        Format::Other => matches!(plan.program, Program::Search(_)) || plan.sh_fallback,
        Format::Unsure => false,
    }
}

/// What `enforce`'s rules allow of a launch, found as the child's identity finds it: the
/// candidate the child's exec will run (the first regular file on the way that it may
/// execute, as `execvp` goes past the others) and, for a script, its `#!` interpreter
/// (a relative one from the child's working directory, as the kernel resolves it). Held
/// open, so that the rules and the exec guard's file ids are taken from these very files
/// and no name the caller chose is looked up again as root.
pub struct ForRules {
    pub program: OwnedFd,
    pub interpreter: Option<OwnedFd>,
}

/// See [`ForRules`]; `None` when no candidate will run.
pub fn program_for_rules(plan: &SpawnPlan) -> Option<ForRules> {
    let _acting = ActingAs::take(plan.identity.as_ref()).ok()?;
    let runnable = |f: &OwnedFd| is_regular(f) && may_execute(f);
    let interpreter_of = |program: &OwnedFd| match format_of(program) {
        Format::Script(name) => Some(
            CString::new(name)
                .ok()
                .and_then(|name| open_from_cwd(plan, &name).ok())
                .filter(runnable),
        ),
        _ => None,
    };
    // `execvp` also goes past a script whose interpreter fails (ENOENT, EACCES); where
    // none runs, the first the user may execute, so that its exec fails as it would
    // locally (ENOENT for a missing interpreter, not Landlock's EACCES).
    let mut first = None;
    for program in candidates(plan)
        .iter()
        .filter_map(|cand| open_from_cwd(plan, cand).ok())
        .filter(runnable)
    {
        match interpreter_of(&program) {
            Some(None) => {
                first.get_or_insert(program);
            }
            Some(Some(interpreter)) => {
                return Some(ForRules {
                    program,
                    interpreter: Some(interpreter),
                })
            }
            None => {
                return Some(ForRules {
                    program,
                    interpreter: None,
                })
            }
        }
    }
    first.map(|program| ForRules {
        program,
        interpreter: None,
    })
}

/// The first of the plan's candidates that this thread's lookup finds (`execvp` skips
/// the ones that do not exist), opened `O_PATH`; `None` when none is, or when a lookup
/// fails otherwise (`EACCES`: the answer depends on the rest of the search).
fn first_found(plan: &SpawnPlan) -> Option<OwnedFd> {
    let searching = matches!(plan.program, Program::Search(_));
    let candidates = candidates(plan);
    for cand in candidates {
        match open_from_cwd(plan, cand) {
            Ok(f) => return Some(f),
            Err(libc::ENOENT | libc::ENOTDIR) if searching => continue,
            Err(_) => return None,
        }
    }
    None
}

/// What the child's exec tries, in order.
fn candidates(plan: &SpawnPlan) -> &[CString] {
    match &plan.program {
        Program::Exact(p) => std::slice::from_ref(p),
        Program::Search(list) => list,
    }
}

/// `name` looked up as the child's exec looks it up: a relative name from the directory
/// the child will be in (the caller's by its descriptor whenever one came, see
/// `cwd::enter`, else the context's).
fn open_from_cwd(plan: &SpawnPlan, name: &CStr) -> Result<OwnedFd, i32> {
    let relative = name.to_bytes().first().is_some_and(|&c| c != b'/');
    match (plan.cwd_fd, &plan.cwd) {
        (Some(fd), _) if relative => open_path_at(fd, name),
        (None, Some(cwd)) if relative => {
            let mut bytes = cwd.as_bytes().to_vec();
            bytes.push(b'/');
            bytes.extend_from_slice(name.to_bytes());
            let joined = CString::new(bytes).map_err(|_| libc::EINVAL)?;
            open_path_at(libc::AT_FDCWD, &joined)
        }
        _ => open_path_at(libc::AT_FDCWD, name),
    }
}

/// `path` from `dirfd`, symlinks followed as exec follows them but no magic link, opened
/// `O_PATH` (nothing of the file is opened for I/O).
fn open_path_at(dirfd: RawFd, path: &CStr) -> Result<OwnedFd, i32> {
    // SAFETY: open_how is plain data.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a NUL-terminated path and an open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: openat2 just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn is_regular(file: &OwnedFd) -> bool {
    // SAFETY: stat is plain data filled by the call on a descriptor we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::fstat(file.as_raw_fd(), &mut st) };
    r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG
}

/// Execute permission as the kernel decides it for this thread's identity (ACLs
/// included; root needs one x bit).
fn may_execute(file: &OwnedFd) -> bool {
    // SAFETY: an empty path with AT_EMPTY_PATH names the descriptor itself.
    let r = unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::X_OK,
            libc::AT_EACCESS | libc::AT_EMPTY_PATH,
        )
    };
    r == 0
}

/// What the kernel would make of a file by its first bytes.
enum Format {
    /// An image for this machine, with the loader its `PT_INTERP` names, if any.
    Elf { loader: Option<Vec<u8>> },
    /// A `#!` line naming this interpreter (as the kernel parses it).
    Script(Vec<u8>),
    /// Anything else.
    Other,
    /// Nothing to judge by: a file this thread may not read (execute-only), a `#!` line
    /// longer than the kernel reads, program headers past the first page.
    Unsure,
}

/// What is read of a file to tell its format: the first page (an ELF image's program
/// headers and loader name lie there, a `#!` line in its first 256 bytes).
const HEAD: usize = 4096;

/// The file's format, read with this thread's identity.
fn format_of(file: &OwnedFd) -> Format {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut head = [0u8; HEAD];
    // The very inode found (a regular file: no FIFO's or device's open()).
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
    else {
        return Format::Unsure;
    };
    let Ok(n) = f.read(&mut head) else {
        return Format::Unsure;
    };
    let head = &head[..n];
    if head.starts_with(b"\x7fELF") {
        // Another machine's or a broken image: ENOEXEC, or a 32-bit one this kernel may
        // not run.
        if !native_elf(head) {
            return Format::Unsure;
        }
        return match elf_loader(head) {
            Some(loader) => Format::Elf { loader },
            None => Format::Unsure,
        };
    }
    if !head.starts_with(b"#!") {
        return Format::Other;
    }
    // The kernel's own reading of the line; none where it would refuse it.
    match crate::daemon::kernel::landlock::shebang_interpreter(head) {
        Some(name) => Format::Script(name.to_vec()),
        None => Format::Unsure,
    }
}

/// This machine's `e_machine` for 64-bit ELF images.
#[cfg(target_arch = "x86_64")]
const NATIVE_MACHINE: u16 = 62;
#[cfg(target_arch = "aarch64")]
const NATIVE_MACHINE: u16 = 183;

/// Whether an ELF header is one the kernel runs here: 64-bit, little-endian, an
/// executable or shared object, for this machine.
fn native_elf(head: &[u8]) -> bool {
    const CLASS_64: u8 = 2;
    const LITTLE_ENDIAN: u8 = 1;
    const EXEC: u16 = 2;
    const DYN: u16 = 3;
    let Some(header) = head.get(..20) else {
        return false;
    };
    let e_type = u16::from_le_bytes([header[16], header[17]]);
    let e_machine = u16::from_le_bytes([header[18], header[19]]);
    header[4] == CLASS_64
        && header[5] == LITTLE_ENDIAN
        && matches!(e_type, EXEC | DYN)
        && e_machine == NATIVE_MACHINE
}

/// The loader an ELF image's `PT_INTERP` header names (`Some(None)`: none, a static
/// image); `None` when its program headers or the name lie past `head` or are malformed.
fn elf_loader(head: &[u8]) -> Option<Option<Vec<u8>>> {
    const PT_INTERP: u32 = 3;
    const PHDR_SIZE: usize = 56;
    let bytes = |at: usize, n: usize| head.get(at..at.checked_add(n)?);
    let u16_at = |at| bytes(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at| bytes(at, 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let u64_at = |at| bytes(at, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    let phoff = usize::try_from(u64_at(32)?).ok()?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    if phentsize < PHDR_SIZE {
        return None;
    }
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(at)? != PT_INTERP {
            continue;
        }
        let offset = usize::try_from(u64_at(at + 8)?).ok()?;
        let size = usize::try_from(u64_at(at + 32)?).ok()?;
        // NUL-terminated, as the kernel requires.
        let name = bytes(offset, size)?.strip_suffix(&[0])?;
        if name.is_empty() || name.contains(&0) {
            return None;
        }
        return Some(Some(name.to_vec()));
    }
    Some(None)
}

/// Whether the child's argv and environment fit what the kernel copies for an exec
/// (else E2BIG): no string over `MAX_ARG_STRLEN`, and all of them with their pointers
/// within a quarter of the child's stack limit (at least 128 KiB, at most 6 MiB:
/// `bprm_stack_limits`), with room for what the kernel adds and a page to spare.
fn args_fit(plan: &SpawnPlan) -> bool {
    const PAGE: usize = 4096;
    const MAX_ARG_STRLEN: usize = 32 * PAGE;
    let strings = plan
        .argv
        .iter()
        .chain(&plan.envp)
        .map(|s| s.as_bytes_with_nul().len());
    let mut total = 0usize;
    for len in strings {
        if len > MAX_ARG_STRLEN {
            return false;
        }
        total += len;
    }
    let pointers = (plan.argv.len().max(1) + plan.envp.len()) * std::mem::size_of::<usize>();
    let stack = plan
        .rlimits
        .iter()
        .find(|&&(resource, ..)| resource == libc::RLIMIT_STACK as i32)
        .map(|&(_, soft, _)| soft)
        .unwrap_or_else(|| {
            // SAFETY: rlimit is plain data filled by the call.
            let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut r) };
            r.rlim_cur
        });
    let limit = (stack / 4).min(6 << 20).max(MAX_ARG_STRLEN as u64) as usize;
    // What the kernel adds: the program's path, and for a script its interpreter's `#!`
    // line and the path again.
    const PATH_MAX: usize = 4096;
    const SCRIPT_LINE: usize = 256;
    total + pointers + PAGE + 2 * PATH_MAX + SCRIPT_LINE <= limit
}

/// Whether a script's interpreter will run for this thread's identity: a regular ELF
/// file it may execute (a relative name from the child's directory, as the kernel
/// resolves it). One that is itself a script is left to the exec to judge.
fn interpreter_likely(plan: &SpawnPlan, name: &[u8]) -> bool {
    let Ok(name) = CString::new(name) else {
        return false;
    };
    let Ok(file) = open_from_cwd(plan, &name) else {
        return false;
    };
    is_regular(&file) && may_execute(&file) && matches!(format_of(&file), Format::Elf { .. })
}

/// Whether an image's loader will open for this thread's identity (the kernel opens it as
/// it opens a program, a relative name from the child's directory).
fn loader_likely(plan: &SpawnPlan, name: &[u8]) -> bool {
    let Ok(name) = CString::new(name) else {
        return false;
    };
    open_from_cwd(plan, &name).is_ok_and(|f| is_regular(&f) && may_execute(&f))
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// This thread, for its file system lookups, as the child's identity: its file system
/// uid and gid, its groups, and no effective capability (no `CAP_DAC_*`, no
/// `CAP_SYS_PTRACE`). Linux keeps credentials per thread and these calls are the raw
/// syscalls (glibc would change every thread), so nothing else of the broker changes.
/// Dropped: the thread is as it was, or the broker aborts (a root thread left with
/// another identity, or without its capabilities, must not run on).
struct ActingAs {
    caps: [CapSets; 2],
    fsuid: u32,
    fsgid: u32,
    groups: Vec<libc::gid_t>,
}

impl ActingAs {
    /// `None` for the broker's own identity (nothing to change). A uid-0 identity keeps
    /// its ids and gives up its capabilities only, as the child does before its exec.
    fn take(id: Option<&Identity>) -> Result<Option<ActingAs>, i32> {
        let Some(id) = id else {
            return Ok(None);
        };
        let caps = capget(0)?;
        // SAFETY: plain getters of this thread's credentials (-1: change nothing).
        let (fsuid, fsgid) = unsafe {
            (
                libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32,
                libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32,
            )
        };
        let groups = thread_groups()?;
        // First, and alone: refused (no CAP_SETGID, a user namespace that denies it), it
        // has changed nothing, and there is nothing to undo that could fail too.
        // SAFETY: a per-thread credential syscall; `id.groups` is live for the call.
        if unsafe { libc::syscall(libc::SYS_setgroups, id.groups.len(), id.groups.as_ptr()) } != 0 {
            return Err(errno());
        }
        let acting = ActingAs {
            caps,
            fsuid,
            fsgid,
            groups,
        };
        // Undone by `acting`'s drop, also when a step fails half-way.
        crate::daemon::process_view::take_fs_identity(id.uid, id.gid, &id.groups)?;
        let mut none = caps;
        for half in &mut none {
            half.effective = 0;
        }
        capset(&none)?;
        Ok(Some(acting))
    }
}

impl Drop for ActingAs {
    fn drop(&mut self) {
        // The capabilities first (setting ids back needs CAP_SETUID/CAP_SETGID), and again
        // last: a file system uid back at 0 raises the file capabilities the broker had
        // permitted, which it may not have had effective.
        let restored = capset(&self.caps).is_ok()
            && crate::daemon::process_view::take_fs_identity(self.fsuid, self.fsgid, &self.groups)
                .is_ok()
            && capset(&self.caps).is_ok();
        if !restored {
            eprintln!("ctx-broker: a thread could not take back its own identity after an exec check; aborting");
            std::process::abort();
        }
    }
}

/// This thread's supplementary groups.
fn thread_groups() -> Result<Vec<libc::gid_t>, i32> {
    // SAFETY: size 0 only asks for the count.
    let n = unsafe { libc::syscall(libc::SYS_getgroups, 0, std::ptr::null_mut::<libc::gid_t>()) };
    if n < 0 {
        return Err(errno());
    }
    let mut groups = vec![0; n as usize];
    // SAFETY: room for the `n` groups asked for.
    let got = unsafe { libc::syscall(libc::SYS_getgroups, n, groups.as_mut_ptr()) };
    if got < 0 {
        return Err(errno());
    }
    groups.truncate(got as usize);
    Ok(groups)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn candidates_follow_path() {
        let c = search_candidates(b"ls", b"/usr/bin::/bin/");
        let c: Vec<&[u8]> = c.iter().map(|c| c.as_bytes()).collect();
        assert_eq!(c, vec![&b"/usr/bin/ls"[..], b"./ls", b"/bin/ls"]);
        let c = search_candidates(b"./x", b"/usr/bin");
        assert_eq!(c[0].as_bytes(), b"./x");
    }

    #[test]
    fn argument_lists_the_kernel_refuses_are_no() {
        let mut plan = crate::daemon::spawn::testing::test_plan(&["/bin/true"], vec![]);
        assert!(args_fit(&plan));
        plan.argv.push(CString::new("x".repeat(200_000)).unwrap());
        assert!(!args_fit(&plan), "one string over MAX_ARG_STRLEN");
        plan.argv.truncate(1);
        plan.argv
            .extend((0..1000).map(|_| CString::new("x".repeat(1000)).unwrap()));
        assert!(args_fit(&plan), "1 MB under an 8 MiB stack");
        plan.rlimits
            .push((libc::RLIMIT_STACK as i32, 1 << 20, 1 << 20));
        assert!(!args_fit(&plan), "1 MB over a quarter of a 1 MiB stack");
    }

    #[test]
    fn only_this_machines_elf_images_are_elf() {
        let native = std::fs::read("/bin/true").unwrap();
        assert!(native_elf(&native[..64]));
        let mut other = native[..64].to_vec();
        other[18] ^= 0xff;
        assert!(!native_elf(&other), "another machine");
        assert!(!native_elf(b"\x7fELF\x02\x01\x01"), "cut short");
        let mut core = native[..64].to_vec();
        core[16] = 4;
        assert!(!native_elf(&core), "a core file");
        let loader = elf_loader(&native[..HEAD]).expect("headers in the first page");
        let loader = loader.expect("a dynamic /bin/true");
        assert!(loader.starts_with(b"/") && loader.windows(3).any(|w| w == b"ld-"));
        assert!(elf_loader(&native[..60]).is_none(), "headers cut off");
    }

    /// An image whose loader is not there fails the exec (ENOENT): no early yes.
    #[test]
    fn an_image_whose_loader_is_missing_is_no() {
        let mut image = std::fs::read("/bin/true").unwrap();
        let at = image.windows(3).position(|w| w == b"ld-").unwrap();
        image[at] = b'X';
        let path = std::env::temp_dir().join(format!("ctx-noloader-{}", std::process::id()));
        std::fs::write(&path, image).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plan = crate::daemon::spawn::testing::test_plan(&[path.to_str().unwrap()], vec![]);
        let likely = exec_likely(&plan);
        let ok = crate::daemon::spawn::testing::test_plan(&["/bin/true"], vec![]);
        let true_likely = exec_likely(&ok);
        std::fs::remove_file(&path).unwrap();
        assert!(!likely);
        assert!(true_likely);
    }

    fn thread_credentials() -> (u32, u32, Vec<libc::gid_t>, [CapSets; 2]) {
        // SAFETY: -1 changes nothing and returns the current ids.
        let ids = unsafe {
            (
                libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32,
                libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32,
            )
        };
        (ids.0, ids.1, thread_groups().unwrap(), capget(0).unwrap())
    }

    /// A broker thread that may not set groups (a hardened service, a user namespace)
    /// gets "no", and is left as it was: no half-done switch to undo, no abort.
    #[test]
    fn without_cap_setgid_the_guess_is_no_and_the_thread_unchanged() {
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        std::thread::spawn(|| {
            const CAP_SETGID: u32 = 6;
            let mut sets = capget(0).unwrap();
            sets[0].effective &= !(1 << CAP_SETGID);
            capset(&sets).unwrap();
            let before = thread_credentials();
            let mut plan = crate::daemon::spawn::testing::test_plan(&["/bin/true"], vec![]);
            plan.identity = Some(Identity {
                uid: 65534,
                gid: 65534,
                groups: vec![65534],
            });
            assert!(!exec_likely(&plan));
            assert_eq!(thread_credentials(), before);
        })
        .join()
        .unwrap();
    }

    fn same_file(fd: &OwnedFd, path: &std::path::Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let a = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        let b = std::fs::metadata(path).unwrap();
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    }

    /// `enforce`'s rules get what the child's exec will run, found as its identity finds
    /// it: past PATH entries it may not search or files it may not run (as `execvp` goes
    /// on), and a relative `#!` interpreter from the child's directory, not the broker's.
    #[test]
    fn the_rules_get_what_the_childs_exec_will_run() {
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        std::thread::spawn(|| {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &std::path::Path, m| {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
            };
            let dir = std::env::temp_dir().join(format!("ctx-rules-{}", std::process::id()));
            let private = dir.join("private");
            let open = dir.join("open");
            std::fs::create_dir_all(private.join("bin")).unwrap();
            std::fs::create_dir_all(open.join("dir/tool")).unwrap();
            std::fs::create_dir_all(open.join("rel")).unwrap();
            std::fs::copy("/bin/true", private.join("bin/tool")).unwrap();
            std::fs::write(open.join("plain"), "").unwrap();
            std::fs::copy("/bin/true", open.join("tool")).unwrap();
            std::fs::copy("/bin/true", open.join("rel/interp")).unwrap();
            std::fs::write(open.join("script"), "#!rel/interp\n").unwrap();
            std::fs::write(
                open.join("hidden_interp"),
                format!("#!{}/bin/tool\n", private.display()),
            )
            .unwrap();
            for f in ["plain", "tool", "rel/interp", "script", "hidden_interp"] {
                mode(&open.join(f), if f == "plain" { 0o644 } else { 0o755 });
            }
            mode(&dir, 0o755);
            mode(&open, 0o755);
            mode(&private, 0o700);
            let c = |p: std::path::PathBuf| CString::new(p.as_os_str().as_bytes()).unwrap();
            let mut plan = crate::daemon::spawn::testing::test_plan(&["tool"], vec![]);
            plan.identity = Some(Identity {
                uid: 65534,
                gid: 65534,
                groups: vec![65534],
            });
            plan.program = Program::Search(vec![
                c(private.join("bin/tool")),
                c(open.join("dir/tool")),
                c(open.join("plain")),
                c(open.join("tool")),
            ]);
            let found = program_for_rules(&plan).expect("a candidate runs");
            assert!(same_file(&found.program, &open.join("tool")));
            assert!(found.interpreter.is_none());
            // This test's process runs in another directory than the script's.
            plan.cwd = Some(c(open.clone()));
            plan.program = Program::Exact(CString::new("script").unwrap());
            let found = program_for_rules(&plan).expect("the script runs");
            assert!(same_file(&found.program, &open.join("script")));
            let interp = found.interpreter.expect("its interpreter");
            assert!(same_file(&interp, &open.join("rel/interp")));
            // An interpreter the identity cannot reach is none of the rules' business.
            plan.program = Program::Exact(CString::new("hidden_interp").unwrap());
            let found = program_for_rules(&plan).expect("the script is there");
            assert!(found.interpreter.is_none());
            // A search goes past a script whose interpreter fails, as `execvp` does.
            plan.program =
                Program::Search(vec![c(open.join("hidden_interp")), c(open.join("script"))]);
            let found = program_for_rules(&plan).expect("the second runs");
            assert!(same_file(&found.program, &open.join("script")));
            std::fs::remove_dir_all(&dir).unwrap();
        })
        .join()
        .unwrap();
    }

    /// As root, on a thread of its own (the test harness's threads run other tests).
    #[test]
    fn the_guess_is_the_identitys_and_the_thread_is_itself_again_after() {
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        std::thread::spawn(|| {
            let dir = std::env::temp_dir().join(format!("ctx-check-{}", std::process::id()));
            let inner = dir.join("inner");
            std::fs::create_dir_all(&inner).unwrap();
            std::fs::copy("/bin/true", inner.join("prog")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &std::path::Path, m| {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
            };
            mode(&dir, 0o700);
            mode(&inner, 0o755);
            let prog = inner.join("prog");
            let mut plan =
                crate::daemon::spawn::testing::test_plan(&[prog.to_str().unwrap()], vec![]);
            let before = thread_credentials();
            assert!(exec_likely(&plan), "root may run it");
            plan.identity = Some(Identity {
                uid: 65534,
                gid: 65534,
                groups: vec![65534],
            });
            assert!(
                !exec_likely(&plan),
                "nobody may not enter {}",
                dir.display()
            );
            assert_eq!(thread_credentials(), before);
            mode(&dir, 0o755);
            assert!(exec_likely(&plan), "nobody may run it now");
            assert_eq!(thread_credentials(), before);
            // Through a magic link the broker would see its own descriptors: never followed.
            let held = std::fs::File::open(&inner).unwrap();
            plan.program = Program::Exact(
                CString::new(format!("/proc/self/fd/{}/prog", held.as_raw_fd())).unwrap(),
            );
            assert!(!exec_likely(&plan));
            // The caller's cwd by its descriptor, for a relative program.
            plan.program = Program::Exact(CString::new("prog").unwrap());
            plan.cwd_fd = Some(held.as_raw_fd());
            assert!(exec_likely(&plan));
            assert_eq!(thread_credentials(), before);
            // Scripts: their interpreter is looked for too, as that identity.
            let script = |name: &str, text: &str| {
                let p = inner.join(name);
                std::fs::write(&p, text).unwrap();
                mode(&p, 0o755);
                CString::new(p.as_os_str().as_bytes()).unwrap()
            };
            for (text, likely) in [
                ("#!/bin/sh\nexit 0\n", true),
                ("#! \t/bin/sh -e\n", true),
                ("#!/bin/sh", true),
                ("#!/no/such/interpreter\n", false),
                ("#!sh\n", false),
                ("#!\n", false),
                (&format!("#!{}/prog\n", inner.display()), true),
                // The kernel cuts long arguments, never the interpreter's name.
                (&format!("#!/bin/sh {}\n", "x".repeat(300)), true),
                (&format!("#!/{}\n", "x".repeat(300)), false),
            ] {
                plan.program = Program::Exact(script("s", text));
                assert_eq!(exec_likely(&plan), likely, "{text:?}");
            }
            // An interpreter that is itself a script is the exec's to judge.
            script("interp", "#!/bin/sh\n");
            plan.program = Program::Exact(script("s", &format!("#!{}/interp\n", inner.display())));
            assert!(!exec_likely(&plan));
            // Behind a directory that identity may not enter: no, as its exec would say.
            let hidden = dir.join("hidden");
            std::fs::create_dir(&hidden).unwrap();
            std::fs::copy("/bin/true", hidden.join("tool")).unwrap();
            mode(&hidden, 0o700);
            let text = format!("#!{}/tool\n", hidden.display());
            plan.program = Program::Exact(script("s", &text));
            assert!(!exec_likely(&plan), "as nobody");
            plan.identity = None;
            assert!(exec_likely(&plan), "as root");
            assert_eq!(thread_credentials(), before);
            std::fs::remove_dir_all(&dir).unwrap();
        })
        .join()
        .unwrap();
    }
}
