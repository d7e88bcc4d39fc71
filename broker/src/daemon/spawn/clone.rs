//! Starting the spawn child: a `CLONE_VM | CLONE_VFORK` clone on a stack of its own (kept
//! per broker thread), born straight into its v2 cgroup with `clone3` where the kernel can.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use super::child::{child_entry, ChildArgs};

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// The child's stack, kept per thread from one launch to the next: CLONE_VFORK returns
/// only once the child has exec'd or exited, so the mapping is free again by then. A fresh
/// mmap and munmap per launch cost page faults and, the broker being multi-threaded, a TLB
/// shoot-down IPI to the other CPUs, which is slow on a virtual machine.
struct ChildStack {
    base: std::cell::Cell<*mut libc::c_void>,
    size: std::cell::Cell<usize>,
}

/// `struct clone_args` of `clone3(2)` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// Bytes of the child's own stack; the child path uses a few KiB.
const CHILD_STACK: usize = 256 * 1024;

thread_local! {
    static CHILD_STACKS: ChildStack = const {
        ChildStack {
            base: std::cell::Cell::new(std::ptr::null_mut()),
            size: std::cell::Cell::new(0),
        }
    };
}

/// Set once `clone3` with `CLONE_INTO_CGROUP` proved missing (kernel before 5.7).
static CLONE3_MISSING: AtomicBool = AtomicBool::new(false);

/// `CLONE_INTO_CGROUP` (Linux 5.7), a 64-bit flag only `clone3` takes.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl ChildStack {
    /// The base of this thread's stack mapping, at least `size` bytes long.
    fn take(size: usize) -> io::Result<*mut libc::c_void> {
        CHILD_STACKS.with(|s| {
            if s.size.get() >= size {
                return Ok(s.base.get());
            }
            s.release();
            let base = map_stack(size)?;
            s.base.set(base);
            s.size.set(size);
            Ok(base)
        })
    }

    fn release(&self) {
        if self.size.get() > 0 {
            // SAFETY: our own mapping, which no child uses any more (see `take`).
            unsafe { libc::munmap(self.base.get(), self.size.get()) };
            self.size.set(0);
        }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        self.release();
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// A fresh private mapping of `size` bytes for a cloned child's stack; the caller unmaps it.
pub(crate) fn map_stack(size: usize) -> io::Result<*mut libc::c_void> {
    // SAFETY: a new anonymous mapping, touching no existing memory.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(base)
    }
}

/// Starts the child the way posix_spawn does: sharing our memory (no page tables to copy,
/// which a fork of a threaded tokio process pays on every launch) on a stack of its own,
/// with this thread suspended until the child has exec'd or exited. All signals are
/// blocked around it so that none of the broker's handlers can run in the child before it
/// has reset them. Returns the pid and a pidfd obtained atomically with CLONE_PIDFD.
pub(super) fn clone_vfork(args: &ChildArgs<'_>) -> io::Result<(libc::pid_t, RawFd)> {
    let twice = super::twice_cloned(args.plan);
    let stand_in = args.session_leader >= 0;
    // One region per process the clones go through, from the top down: the first child,
    // the grandchild in a PID namespace, the program beside a session leader stand-in.
    let regions = 1 + usize::from(twice) + usize::from(stand_in);
    let size = regions * CHILD_STACK;
    let stack = ChildStack::take(size)?;
    // SAFETY: inside the mapping, at a region boundary.
    let region_top = |below_top: usize| unsafe {
        (stack as *mut u8).add(size - below_top * CHILD_STACK) as *mut libc::c_void
    };
    if twice {
        args.grand_stack.store(region_top(1), Ordering::Release);
    }
    if stand_in {
        args.program_stack
            .store(region_top(regions - 1), Ordering::Release);
    }
    // SAFETY: sigset_t is plain data, filled by sigfillset/pthread_sigmask.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut pidfd: libc::c_int = -1;
    let arg = args as *const ChildArgs as *mut libc::c_void;
    // The child's pid where the registry looks while the fork has not returned.
    let (settid, first_slot) = match &args.plan.pid_slots {
        Some(s) => (libc::CLONE_CHILD_SETTID, s.first.as_ptr()),
        None => (0, std::ptr::null_mut()),
    };
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | settid;
    // SAFETY: the stack top is inside the mapping (stacks grow down on x86_64/aarch64); the
    // child runs `child_entry`, which only makes async-signal-safe calls on memory prepared
    // before this point and ends in execve or _exit; CLONE_VFORK keeps this thread (and so
    // `args` and the stack mapping) in place until then.
    let pid = unsafe {
        libc::sigfillset(&mut all);
        // SIGCHLD has no handler to run in the child, and blocked here it would not be
        // dropped: the vfork wait often outlasts a short program (this thread is woken on
        // the program's CPU and waits behind it), whose exit would then queue SIGCHLD on
        // the broker and wake another of its threads for nothing.
        libc::sigdelset(&mut all, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let top = (stack as *mut u8).add(size) as *mut libc::c_void;
        let mut pid = -1;
        if let Some(dir) = args.plan.cgroup_dir {
            args.born_in_cgroup.store(true, Ordering::Relaxed);
            // Any refusal (pids_max reached, say) is retried the old way below, whose write
            // reports it at the cgroup step as on every other host.
            if let Ok(p) = clone3_into_cgroup(flags, stack, size, dir, arg, &mut pidfd, first_slot)
            {
                pid = p;
            }
        }
        if pid < 0 {
            args.born_in_cgroup.store(false, Ordering::Relaxed);
            pid = libc::clone(
                child_entry,
                top,
                flags | libc::SIGCHLD,
                arg,
                &mut pidfd as *mut libc::c_int,
                std::ptr::null_mut::<libc::c_void>(),
                first_slot,
            );
        }
        let err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(err);
        }
        pid
    };
    Ok((pid, pidfd))
}

/// Like the `libc::clone` in `clone_vfork`, but the child starts as a member of the cgroup
/// `dir`. Moving it in afterwards through `cgroup.procs` takes the kernel's threadgroup
/// lock for writing, which waits for an RCU grace period on a quiet host (5-30 ms).
/// glibc has no `clone3` wrapper that runs a function on a new stack, so the child's first
/// instructions are ours: a few lines of assembly, x86_64 only (elsewhere: ENOSYS, and the
/// caller writes `cgroup.procs`).
///
/// # Safety
/// As for `libc::clone` with CLONE_VM: `stack` must be a mapping of `size` bytes nobody
/// else uses until the child execs or exits, and `entry` must never return.
unsafe fn clone3_into_cgroup(
    flags: i32,
    stack: *mut libc::c_void,
    size: usize,
    dir: RawFd,
    arg: *mut libc::c_void,
    pidfd: &mut libc::c_int,
    child_tid: *mut libc::c_int,
) -> io::Result<libc::pid_t> {
    if CLONE3_MISSING.load(Ordering::Relaxed) {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    let cl = CloneArgs {
        flags: flags as u32 as u64 | CLONE_INTO_CGROUP,
        pidfd: pidfd as *mut libc::c_int as u64,
        child_tid: child_tid as u64,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack as u64,
        stack_size: size as u64,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: dir as u64,
    };
    #[cfg(target_arch = "x86_64")]
    {
        let ret: i64;
        let entry: extern "C" fn(*mut libc::c_void) -> libc::c_int = child_entry;
        // The kernel starts the child at the instruction after `syscall` with rax = 0, the
        // stack pointer at `stack + size` (16-byte aligned: the top of a mapping) and every
        // other register as the parent had it. So it finds the entry and its argument in
        // r12 and r13, calls it on its own stack, and never comes back into this frame,
        // which belongs to the suspended parent. `exit` is the end should `entry` return.
        // SAFETY: see the function's contract; the parent path is a plain syscall.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r13",
                "call r12",
                "mov edi, eax",
                "mov eax, {exit}",
                "syscall",
                "ud2",
                "2:",
                exit = const libc::SYS_exit,
                inlateout("rax") libc::SYS_clone3 => ret,
                in("rdi") &cl as *const CloneArgs,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") entry,
                in("r13") arg,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        if ret < 0 {
            let err = -ret as i32;
            // No clone3 (before 5.3), or one without CLONE_INTO_CGROUP (5.3-5.6).
            if matches!(err, libc::ENOSYS | libc::EINVAL | libc::E2BIG) {
                CLONE3_MISSING.store(true, Ordering::Relaxed);
            }
            return Err(io::Error::from_raw_os_error(err));
        }
        Ok(ret as libc::pid_t)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (cl, arg);
        CLONE3_MISSING.store(true, Ordering::Relaxed);
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::super::fork_exec;
    use super::super::testing::*;
    use super::*;

    /// Runs `cat /proc/self/cgroup` with the given cgroup fields; returns its v2 line.
    fn v2_line_of_child(dir: Option<RawFd>, join: Vec<RawFd>) -> String {
        let mut pipe = [0; 2];
        // SAFETY: pipe2 fills the array.
        assert_eq!(
            unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) },
            0
        );
        // SAFETY: just created, owned here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
        let mut plan = test_plan(&["/bin/cat", "/proc/self/cgroup"], vec![(w.as_raw_fd(), 1)]);
        plan.cgroup_join = join;
        plan.cgroup_dir = dir;
        let slots = std::sync::Arc::new(super::super::PidSlots::default());
        plan.pid_slots = Some(slots.clone());
        let forked = fork_exec(&plan).unwrap();
        drop(w);
        assert_eq!(slots.first.load(Ordering::Acquire), forked.pid);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut out).unwrap();
        assert_eq!(wait_end(&forked).1, 0, "cat: {out}");
        out.lines()
            .find(|l| l.starts_with("0::"))
            .unwrap_or_default()
            .to_string()
    }

    /// A v2 cgroup made for one test, removed (empty by then) at the end: its path below
    /// the mount, as `/proc/PID/cgroup` names it, and its directory.
    struct TestCgroup(String, std::path::PathBuf);

    impl TestCgroup {
        fn new(tag: &str) -> TestCgroup {
            let own = own_v2_cgroup();
            let rel = format!(
                "{}/ctx-spawn-{tag}-{}",
                own.trim_end_matches('/'),
                std::process::id()
            );
            let dir = v2_mount().join(rel.trim_start_matches('/'));
            std::fs::create_dir(&dir).expect("creating a v2 cgroup (the tests run as root)");
            TestCgroup(rel, dir)
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.1);
        }
    }

    #[test]
    fn a_v2_launch_is_born_in_its_cgroup() {
        let cg = TestCgroup::new("born");
        let dir = std::fs::File::open(&cg.1).unwrap();
        let line = v2_line_of_child(Some(dir.as_raw_fd()), Vec::new());
        assert_eq!(line, format!("0::{}", cg.0));
        #[cfg(target_arch = "x86_64")]
        assert!(
            !CLONE3_MISSING.load(Ordering::Relaxed),
            "clone3(CLONE_INTO_CGROUP) was refused on this kernel"
        );
    }

    /// When clone3 refuses the directory, the child joins through `cgroup.procs` instead.
    #[test]
    fn a_refused_clone3_falls_back_to_joining_by_write() {
        let cg = TestCgroup::new("fallback");
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(cg.1.join("cgroup.procs"))
            .unwrap();
        // Not a cgroup: clone3 fails with EBADF, which must not disable it for later.
        let not_a_cgroup = std::fs::File::open("/").unwrap();
        let line = v2_line_of_child(Some(not_a_cgroup.as_raw_fd()), vec![procs.as_raw_fd()]);
        assert_eq!(line, format!("0::{}", cg.0));
        assert!(!CLONE3_MISSING.load(Ordering::Relaxed));
    }
}
