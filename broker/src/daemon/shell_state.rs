//! Persistent shell sessions (`ctx sh`) without parsing any output: every command runs in a
//! fresh `bash` that first loads the session's saved state (cwd, variables, unset
//! variables, functions, aliases, `set -o`/`shopt` options), evaluates the script with the
//! caller's own stdio, and on exit writes the new state into the other of two slots. A
//! command killed before it exits (or during the save) leaves the previous state intact.
//!
//! State lives in `STATE_DIR/shells/CONTEXT/SESSION.bash`, in a directory owned by the
//! context's uid with mode 0700 (the broker's state dir itself is 0711, so no one else can
//! list or read it). Commands of one session run one at a time (the broker serialises them).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};
use serde_bytes::ByteBuf;

use crate::config::Context;

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// Runs `$2` in the session whose state file is `$1`. The variables it needs are named
/// `__ctx_*` and never saved. Exported variables are saved as the difference from the
/// context's environment, so a context whose credentials change still passes the new
/// ones to sessions that did not set them. No command substitution or external command
/// runs except one `mv` per save (each would cost a fork): variable names come from
/// `"${!A@}"`-style expansions (`@NAMES@`), options from `$SHELLOPTS`/`$BASHOPTS`.
/// The functions are defined after the state is loaded, so a newer broker's wrapper wins
/// over the copies a session saved.
const WRAPPER_TEMPLATE: &str = r#"__ctx_state=$1; __ctx_script=$2; __ctx_shared=$3; set --; umask 077
shopt -s expand_aliases
declare -A __ctx_base=()
for __ctx_n in @NAMES@; do [[ ${!__ctx_n@a} == *x* ]] && __ctx_base[$__ctx_n]=${!__ctx_n}; done
__ctx_o= __ctx_s= __ctx_gen=0 __ctx_from=
# Two slots, $__ctx_state and $__ctx_state.1, each ending with `: ctx-sh-end GEN` once
# complete: load the newest complete one, save into the other. A save cut short (the
# command was killed) leaves an incomplete slot that the next load skips, and no rename
# (an external `mv`, a fork and exec per command) is needed.
for __ctx_f in "$__ctx_state" "$__ctx_state.1"; do
  [[ -f $__ctx_f && ! -h $__ctx_f && -O $__ctx_f && -r $__ctx_f ]] || continue
  mapfile -t __ctx_l <"$__ctx_f"
  (( ${#__ctx_l[@]} )) || continue
  [[ ${__ctx_l[-1]} =~ ^:\ ctx-sh-end\ ([0-9]+)$ ]] || continue
  if (( BASH_REMATCH[1] >= __ctx_gen )); then __ctx_gen=${BASH_REMATCH[1]} __ctx_from=$__ctx_f; fi
done
unset __ctx_l __ctx_f
if [[ $__ctx_from == "$__ctx_state" ]]; then __ctx_to=$__ctx_state.1; else __ctx_to=$__ctx_state; fi
{ if [[ -n $__ctx_from ]]; then builtin source "$__ctx_from"; fi; } 2>/dev/null
__ctx_keep() {
  case $1 in
    monitor|history|login_shell|restricted_shell|progcomp|expand_aliases|interactive-comments|emacs|vi) return 0 ;;
  esac
  return 1
}
__ctx_save() {
  local __ctx_tmp=$__ctx_state.$$.tmp __ctx_n
  # Never written through a link (the broker removes what a previous owner left).
  [[ -h $__ctx_to || -h $__ctx_tmp ]] && return 0
  {
    for __ctx_n in @NAMES@; do
      case $__ctx_n in @SKIP@) continue ;; esac
      [[ -v __ctx_base[$__ctx_n] && ${__ctx_base[$__ctx_n]} == "${!__ctx_n}" && ${!__ctx_n@a} == *x* ]] && continue
      declare -p "$__ctx_n"
    done
    for __ctx_n in "${!__ctx_base[@]}"; do
      [[ -v $__ctx_n ]] || printf 'unset -v %s\n' "$__ctx_n"
    done
    declare -f
    alias -p
    printf 'builtin cd -- %q 2>/dev/null || :\n' "$PWD"
    printf '__ctx_o=%q; __ctx_s=%q\n' "$__ctx_o" "$__ctx_s"
    printf ': ctx-sh-end %d\n' $((__ctx_gen + 1))
  } >"$__ctx_to" 2>/dev/null
  if [[ $__ctx_shared == shared ]]; then
    # For the broker (shell_env = "shared"): changed exports as NAME=VALUE, unset ones
    # as NAME, each NUL-terminated.
    {
      for __ctx_n in @NAMES@; do
        case $__ctx_n in @SKIP@) continue ;; esac
        [[ ${!__ctx_n@a} == *x* ]] || continue
        [[ -v __ctx_base[$__ctx_n] && ${__ctx_base[$__ctx_n]} == "${!__ctx_n}" ]] && continue
        printf '%s=%s\0' "$__ctx_n" "${!__ctx_n}"
      done
      for __ctx_n in "${!__ctx_base[@]}"; do
        [[ -v $__ctx_n ]] || printf '%s\0' "$__ctx_n"
      done
    } >"$__ctx_tmp" 2>/dev/null && builtin command mv -f -- "$__ctx_tmp" "$__ctx_state.env" 2>/dev/null
  fi
}
__ctx_exit() {
  __ctx_o=$SHELLOPTS __ctx_s=$BASHOPTS
  set +euxo pipefail
  __ctx_save
}
# Options are applied last and xtrace only inside the eval, so that neither the restore
# nor the save shows up in a session that has `set -x` on.
__ctx_apply() {
  local IFS=: __ctx_p
  __ctx_x=
  [[ -n $__ctx_o ]] || return 0
  for __ctx_p in $SHELLOPTS; do
    [[ :$__ctx_o: == *:$__ctx_p:* ]] || __ctx_keep "$__ctx_p" || set +o "$__ctx_p"
  done
  for __ctx_p in $__ctx_o; do
    if [[ $__ctx_p == xtrace ]]; then __ctx_x="set -x;"; continue; fi
    __ctx_keep "$__ctx_p" || set -o "$__ctx_p"
  done
  for __ctx_p in $BASHOPTS; do
    [[ :$__ctx_s: == *:$__ctx_p:* ]] || __ctx_keep "$__ctx_p" || shopt -u "$__ctx_p"
  done
  for __ctx_p in $__ctx_s; do
    __ctx_keep "$__ctx_p" || shopt -s "$__ctx_p"
  done
}
{
  __ctx_apply
  trap '{ __ctx_rc=$?; __ctx_exit; exit $__ctx_rc; } 2>/dev/null' EXIT
} 2>/dev/null
eval "$__ctx_x$__ctx_script"
"#;

/// Variables a session never saves: bash's own and the wrapper's (`case` patterns; a
/// pattern rather than a function call per variable, which costs bash ~10 us each).
const SKIP: &str = "__ctx_*|BASH|BASH_*|BASHOPTS|BASHPID|EUID|UID|PPID|SHELLOPTS|RANDOM|SRANDOM|\
SECONDS|LINENO|HISTCMD|FUNCNAME|GROUPS|PIPESTATUS|DIRSTACK|_|EPOCHREALTIME|EPOCHSECONDS|COMP_*|\
COPROC*|PWD|OLDPWD|SHLVL|OPTIND|OPTARG|OPTERR|HOSTNAME|HOSTTYPE|MACHTYPE|OSTYPE";

/// The wrapper with `@NAMES@` expanded to one quoted `"${!X@}"` per possible first
/// character of a variable name: every variable, without a subshell.
fn wrapper() -> &'static str {
    static WRAPPER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    WRAPPER.get_or_init(|| {
        let names: Vec<String> = ('A'..='Z')
            .chain('a'..='z')
            .chain(std::iter::once('_'))
            .map(|c| format!("\"${{!{c}@}}\""))
            .collect();
        WRAPPER_TEMPLATE
            .replace("@NAMES@", &names.join(" "))
            .replace("@SKIP@", SKIP)
    })
}

/// `--rcfile` of an interactive session: the same load, and a save when the shell exits.
const INTERACTIVE_RC: &str = r#"__ctx_state=$CTX_SH_STATE; __ctx_shared=$CTX_SH_SHARED; unset CTX_SH_STATE CTX_SH_SHARED
[[ -r ~/.bashrc ]] && builtin source ~/.bashrc
"#;

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("bad session name {0:?}: use 1-64 characters from A-Z a-z 0-9 _ . -")]
    BadName(String),
    #[error("cannot prepare session state in {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("cannot prepare session state: no thread could take it (see the broker's log)")]
    Unrun,
}

/// Held for the whole run of a command of one session.
type SessionLock = Arc<tokio::sync::Mutex<()>>;

/// One lock per (context, session): commands of a session run one after the other.
#[derive(Default)]
pub struct SessionLocks {
    locks: Mutex<HashMap<(String, String), SessionLock>>,
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

impl SessionLocks {
    /// The session's lock. Locks nobody holds any more are let go of first: a caller
    /// naming a new session at every command would otherwise grow the map for as long as
    /// the broker runs (found by the eleventh review); what is left is the sessions with a
    /// command running or waiting, which connections bound.
    pub fn get(&self, context: &str, session: &str) -> SessionLock {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, lock| Arc::strong_count(lock) > 1);
        map.entry((context.to_string(), session.to_string()))
            .or_default()
            .clone()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

pub fn valid_session(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A prepared session: its directory (owned by the context's uid, which may plant
/// anything in it) opened once and checked, so that the broker's own accesses go relative
/// to that descriptor and never follow a link the context made.
pub struct Session {
    dir: File,
    name: String,
    state: PathBuf,
}

/// Creates the context's session directory (owned by its uid, 0700) and returns the
/// session; `reset` removes the saved state first.
pub fn prepare(
    state_dir: &Path,
    ctx: &Context,
    session: &str,
    reset: bool,
) -> Result<Session, SessionError> {
    if !valid_session(session) {
        return Err(SessionError::BadName(session.to_string()));
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |err| SessionError::Io { path, err }
    };
    let shells = state_dir.join("shells");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&shells)
        .map_err(io_err(&shells))?;
    // `shells` belongs to the broker, so no context can swap the entry made here; the
    // descriptor pins the directory itself from now on.
    let shells_dir = open_dir(&shells).map_err(io_err(&shells))?;
    let path = shells.join(&ctx.name);
    let owner = session_owner(ctx);
    // One hand-over at a time: it moves the entry that the others open. Nothing done under
    // it enters a filesystem a context mounted (see `open_here`), so none can hold it.
    let _handing_over = HAND_OVER.lock().unwrap_or_else(|e| e.into_inner());
    let (mut dir, mut made) = open_or_create_dir(&shells_dir, &ctx.name).map_err(io_err(&path))?;
    // The context's uid may have changed in the config. What the old uid left is its own,
    // never the new uid's state: its directory is taken from it (root's now, so it can add
    // nothing more, even through a descriptor it kept) and moved out of every context's
    // reach, whatever it holds, in constant time; the new uid starts afresh. A directory
    // left root's by a hand-over cut short is moved the same way.
    if !made && dir.metadata().map_err(io_err(&path))?.uid() != owner.0 {
        std::os::unix::fs::fchown(&dir, Some(0), Some(0)).map_err(io_err(&path))?;
        let aside = move_aside(&shells, &ctx.name).map_err(io_err(&path))?;
        tracing::warn!(
            context = %ctx.name,
            "the context's user changed: its ctx sh sessions start afresh; what the previous \
             user left is in {} (root's; remove it when you like)",
            aside.display()
        );
        (dir, made) = open_or_create_dir(&shells_dir, &ctx.name).map_err(io_err(&path))?;
    }
    if made {
        std::os::unix::fs::fchown(&dir, Some(owner.0), Some(owner.1)).map_err(io_err(&path))?;
    }
    dir.set_permissions(std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(&path))?;
    drop(_handing_over);
    if reset {
        for ext in ["bash", "bash.1", "bash.env"] {
            let name = format!("{session}.{ext}");
            match unlinkat(
                Some(dir.as_raw_fd()),
                name.as_str(),
                UnlinkatFlags::NoRemoveDir,
            ) {
                Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(io_err(&path.join(&name))(e.into())),
            }
        }
    }
    Ok(Session {
        dir,
        name: session.to_string(),
        state: path.join(format!("{session}.bash")),
    })
}

/// Serialises the hand-over of a context's session directory to a new owner.
static HAND_OVER: Mutex<()> = Mutex::new(());

/// Opens the session directory `name` in `shells`, made first (0700, root's) when missing;
/// whether it was made here.
fn open_or_create_dir(shells: &File, name: &str) -> io::Result<(File, bool)> {
    let made = match nix::sys::stat::mkdirat(
        Some(shells.as_raw_fd()),
        name,
        Mode::from_bits_truncate(0o700),
    ) {
        Ok(()) => true,
        Err(nix::errno::Errno::EEXIST) => false,
        Err(e) => return Err(e.into()),
    };
    Ok((
        open_here(shells, name, libc::O_RDONLY | libc::O_DIRECTORY)?,
        made,
    ))
}

/// Opens `name` in `dir` (a session directory, or `shells` for one): never through a
/// symlink, and never into a filesystem mounted there. The context's uid owns its session
/// directory and what is in it, and with FUSE's `user_allow_other` it can mount a
/// filesystem of its own over them that root enters too; one whose server never answers
/// held root's thread for good, and with it every context's `ctx sh` waiting on the
/// hand-over lock (helper-108).
fn open_here(dir: &File, name: &str, flags: libc::c_int) -> io::Result<File> {
    use std::os::fd::AsFd;
    let c = std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_XDEV | libc::RESOLVE_NO_SYMLINKS;
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    match super::untrusted_path::openat2_in(dir.as_fd(), &c, flags, resolve) {
        Ok(fd) => Ok(File::from(fd)),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Err(io::Error::other(
            "a filesystem is mounted there (over it or the session directory): ctx never \
             enters one as root; unmount it",
        )),
        Err(e) => Err(e),
    }
}

/// Moves `shells/NAME` to `shells/@previous-owners/NAME.<random>` (root's, 0700), never
/// over an existing entry; where it went. No context's name has an `@`.
fn move_aside(shells: &Path, name: &str) -> io::Result<PathBuf> {
    let quarantine = shells.join("@previous-owners");
    match std::fs::DirBuilder::new().mode(0o700).create(&quarantine) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // Made by the broker in its own `shells`: no context can have planted it.
    let held = open_dir(&quarantine)?;
    // SAFETY: plain getter.
    if held.metadata()?.uid() != unsafe { libc::geteuid() } {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not root's own directory",
        ));
    }
    let from =
        std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let shells_dir = open_dir(shells)?;
    for _ in 0..8 {
        let mut random = [0u8; 8];
        // SAFETY: getrandom fills at most the buffer's length.
        let got = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
        if got != random.len() as isize {
            return Err(io::Error::last_os_error());
        }
        let aside = format!("{name}.{:016x}", u64::from_ne_bytes(random));
        let to = std::ffi::CString::new(aside.as_str())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: NUL-terminated names relative to our own directory descriptors.
        let moved = unsafe {
            libc::renameat2(
                shells_dir.as_raw_fd(),
                from.as_ptr(),
                held.as_raw_fd(),
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if moved == 0 {
            return Ok(quarantine.join(aside));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EEXIST))
}

/// Who owns a context's session files: its uid, or the broker's own when the broker is
/// not root (it then cannot switch uids, and the sessions run as itself).
fn session_owner(ctx: &Context) -> (u32, u32) {
    // SAFETY: plain getters.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid == 0 {
        (ctx.user.uid, ctx.user.gid)
    } else {
        (euid, egid)
    }
}

/// Opens one of the broker's own directories (`shells`, the quarantine) without following
/// a symlink in its last component; a session directory is opened by [`open_here`].
fn open_dir(path: &Path) -> io::Result<File> {
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)?;
    if !dir.metadata()?.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    Ok(dir)
}

/// Opens `name` in `dir` for reading: never through a symlink, never blocking on a FIFO,
/// and only a regular file that `owner` owns (a hard link to someone else's file keeps
/// that file's owner, so this refuses it too).
fn open_owned_file(dir: &File, name: &str, owner: u32) -> io::Result<File> {
    let file = open_here(
        dir,
        name,
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
    )?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != owner {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("not a regular file owned by uid {owner}"),
        ));
    }
    Ok(file)
}

impl Session {
    /// The state file the session's bash loads and saves (bash runs as the context's uid,
    /// so the path is only ever opened with that uid's rights).
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// Writes `NAME.rc` in the session directory as a new file (`O_EXCL`: never through
    /// whatever the context planted) renamed over the old entry.
    fn write_rc(&self, body: &[u8]) -> io::Result<()> {
        use std::io::Write;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dirfd = self.dir.as_raw_fd();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = format!(".{}.rc.{}.{n}", self.name, std::process::id());
        let _ = unlinkat(Some(dirfd), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        let fd = nix::fcntl::openat(
            Some(dirfd),
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )?;
        // SAFETY: openat just returned this descriptor and nothing else owns it.
        let mut file = unsafe { File::from_raw_fd(fd) };
        let written = file.write_all(body).and_then(|()| {
            nix::fcntl::renameat(
                Some(dirfd),
                tmp.as_str(),
                Some(dirfd),
                format!("{}.rc", self.name).as_str(),
            )
            .map_err(io::Error::from)
        });
        if written.is_err() {
            let _ = unlinkat(Some(dirfd), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        written
    }
}

/// The argv that runs `script` in the session stored at `state`; `shared` also keeps the
/// session's exports where the broker reads them for other launches.
pub fn script_argv(state: &Path, script: &[u8], shared: bool) -> Vec<ByteBuf> {
    use std::os::unix::ffi::OsStrExt;
    [
        b"bash".as_slice(),
        b"--noprofile",
        b"--norc",
        b"-c",
        wrapper().as_bytes(),
        b"ctx-sh",
        state.as_os_str().as_bytes(),
        script,
        if shared {
            b"shared".as_slice()
        } else {
            b"private"
        },
    ]
    .iter()
    .map(|a| ByteBuf::from(a.to_vec()))
    .collect()
}

/// The argv of an interactive shell in the session: bash with an rcfile that loads the
/// state and saves it when the shell exits. The rcfile is written next to the state.
pub fn interactive_argv(
    session: &Session,
    shared: bool,
) -> Result<(Vec<ByteBuf>, Vec<Vec<u8>>), SessionError> {
    use std::os::unix::ffi::OsStrExt;
    let rc = session.state.with_extension("rc");
    session
        .write_rc(interactive_rc().as_bytes())
        .map_err(|err| SessionError::Io {
            path: rc.clone(),
            err,
        })?;
    let argv = [
        b"bash".as_slice(),
        b"--noprofile",
        b"--rcfile",
        rc.as_os_str().as_bytes(),
        b"-i",
    ]
    .iter()
    .map(|a| ByteBuf::from(a.to_vec()))
    .collect();
    let mut env = b"CTX_SH_STATE=".to_vec();
    env.extend_from_slice(session.state.as_os_str().as_bytes());
    let shared = if shared {
        b"CTX_SH_SHARED=shared".to_vec()
    } else {
        b"CTX_SH_SHARED=private".to_vec()
    };
    Ok((argv, vec![env, shared]))
}

/// The interactive rcfile: the wrapper's load and save, without a script to evaluate.
fn interactive_rc() -> String {
    format!(
        "{INTERACTIVE_RC}{}",
        // The interactive variant reuses the wrapper's functions but neither evals a
        // script nor exits from the rcfile.
        wrapper()
            .replace(
                "__ctx_state=$1; __ctx_script=$2; __ctx_shared=$3; set --; umask 077\n",
                "umask 077\n"
            )
            .replace(
                "eval \"$__ctx_x$__ctx_script\"\n",
                "[[ -n $__ctx_x ]] && set -x\n"
            )
    )
}

/// Whether to log that a planted exports file was ignored (one line a second), with the
/// count of the ones left out.
fn planted_warnings() -> Option<String> {
    static QUIET: Mutex<super::quiet_log::Quiet> = Mutex::new(super::quiet_log::Quiet::new());
    QUIET.lock().unwrap_or_else(|e| e.into_inner()).should_log()
}

/// Largest exports file the broker applies; a session exporting more is ignored (and
/// says so in the log) rather than read without bound.
const MAX_SHARED_ENV: u64 = 1024 * 1024;

/// The default session's exported changes for a `shell_env = "shared"` context, as
/// `(name, Some(value))` to set and `(name, None)` to unset. Missing file: no changes.
pub fn shared_exports(state_dir: &Path, ctx: &Context) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    use std::io::Read;
    let shells = state_dir.join("shells");
    let path = shells.join(&ctx.name).join("default.bash.env");
    let owner = session_owner(ctx).0;
    let opened = open_dir(&shells).and_then(|shells| {
        let dir = open_here(&shells, &ctx.name, libc::O_RDONLY | libc::O_DIRECTORY)?;
        if dir.metadata()?.uid() != owner {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "session directory not owned by the context's uid",
            ));
        }
        open_owned_file(&dir, "default.bash.env", owner)
    });
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            // A symlink (ELOOP), a FIFO, another uid's file: something the context planted
            // to make root read it. Never applied.
            // Each launch would log it again: once a second at most (a context can plant it).
            if let Some(more) = planted_warnings() {
                tracing::warn!(context = %ctx.name, "ignoring {}: {e}{more}", path.display());
            }
            return Vec::new();
        }
    };
    let mut data = Vec::new();
    if file
        .take(MAX_SHARED_ENV + 1)
        .read_to_end(&mut data)
        .is_err()
        || data.len() as u64 > MAX_SHARED_ENV
    {
        if let Some(more) = planted_warnings() {
            tracing::warn!(context = %ctx.name, "ignoring {}: unreadable or over 1 MiB{more}", path.display());
        }
        return Vec::new();
    }
    data.split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .filter_map(|entry| {
            let (name, value) = match entry.iter().position(|&b| b == b'=') {
                Some(eq) => (&entry[..eq], Some(entry[eq + 1..].to_vec())),
                None => (entry, None),
            };
            let valid = !name.is_empty()
                && !name[0].is_ascii_digit()
                && name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_');
            valid.then(|| (name.to_vec(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::valid_session;

    #[test]
    fn interactive_rc_has_no_script_arguments() {
        let rc = super::interactive_rc();
        assert!(!rc.contains("=$1") && !rc.contains("__ctx_script"), "{rc}");
        assert!(rc.contains("trap ") && rc.contains("__ctx_state=$CTX_SH_STATE"));
    }

    #[test]
    fn locks_of_sessions_nobody_runs_in_are_let_go_of() {
        let locks = super::SessionLocks::default();
        let held = locks.get("c", "busy");
        for n in 0..1000 {
            let lock = locks.get("c", &format!("s{n}"));
            drop(lock);
        }
        // The held one stays, and the same lock comes back for it; the rest are gone.
        assert!(locks.len() <= 2, "{} locks kept", locks.len());
        assert!(std::sync::Arc::ptr_eq(&held, &locks.get("c", "busy")));
    }

    #[test]
    fn session_names() {
        assert!(valid_session("default"));
        assert!(valid_session("prod-1.x_y"));
        for bad in ["", ".", "..", "a/b", "a b", "x\0", &"n".repeat(65)] {
            assert!(!valid_session(bad), "{bad:?}");
        }
    }
}
