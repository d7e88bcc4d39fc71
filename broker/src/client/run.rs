//! `ctx run`: start a program (usually an agent) with routing switched on, so every
//! launch it makes runs in the named context. `ctx run` replaces itself with the program.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;
use ctx_protocol::vars;

use super::error::Error;

pub const INTERPOSER_FILE: &str = "libctx_interposer.so";
/// The routing half `libctx_interposer.so` loads from its own directory.
pub const ROUTE_FILE: &str = "libctx_route.so";

#[derive(Debug, Args)]
pub struct RouteArgs {
    /// The context the program's launches are routed to
    #[arg(long, value_name = "NAME")]
    pub route_to: String,

    /// A program (basename or path) that keeps running locally; its own children are
    /// still routed (repeatable)
    #[arg(long, value_name = "PROG")]
    pub passthrough: Vec<OsString>,

    /// What a launch does when the broker cannot be reached: fail (closed, with a one-line
    /// message) or run locally with the program's own credentials
    #[arg(long, value_name = "POLICY", value_enum, default_value_t = OnBrokerDown::Fail)]
    pub on_broker_down: OnBrokerDown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnBrokerDown {
    Fail,
    Local,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub route: RouteArgs,

    /// The program to start with routing on, and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

/// What routing needs in a program's environment. `None` values are to be removed, so a
/// stale setting inherited from our own environment does not leak through.
pub type Vars = Vec<(&'static str, Option<OsString>)>;

pub fn run(socket: &Path, args: RunArgs) -> Result<i32, Error> {
    let vars = routing_vars(socket, &args.route)?;
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    for (key, value) in vars {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    keep_signal_state(&mut cmd);
    // Only returns on failure.
    let err = cmd.exec();
    let (reason, code) = match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => ("command not found".to_string(), 127),
        Some(libc::EACCES) | Some(libc::EPERM) => ("permission denied".to_string(), 126),
        Some(libc::ENOEXEC) | Some(libc::EISDIR) | Some(libc::ETXTBSY) => {
            (format!("not executable: {err}"), 126)
        }
        _ => (err.to_string(), 125),
    };
    Err(Error::Run {
        program: args.command[0].to_string_lossy().into_owned(),
        reason,
        code,
    })
}

/// std's exec empties the signal mask and sets SIGPIPE back to its default first, as a
/// child of a Rust program (which ignores SIGPIPE) should start. `ctx run` is no such
/// parent: it replaces itself, like a shell's `exec`, and ctx changes neither (it defines
/// its own `main`), so the program gets the caller's, as everything it launches does.
fn keep_signal_state(cmd: &mut Command) {
    // SAFETY: sigset_t and sigaction are plain data; both calls only read our own state.
    let (mask, pipe_ignored) = unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
        let mut pipe: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut pipe);
        (mask, pipe.sa_sigaction == libc::SIG_IGN)
    };
    // SAFETY: signal and pthread_sigmask are async-signal-safe and allocate nothing; std
    // runs this after its own reset, just before the exec.
    unsafe {
        cmd.pre_exec(move || {
            if pipe_ignored {
                libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// `LD_PRELOAD`, `CTX_ROUTE`, `CTX_SOCKET`, `CTX_PASSTHROUGH` and `CTX_ON_BROKER_DOWN`
/// for routing to
/// `args.route_to` through the broker at `socket`.
pub fn routing_vars(socket: &Path, args: &RouteArgs) -> Result<Vars, Error> {
    if args.route_to.is_empty() {
        return Err(Error::Usage("--route-to needs a context name".into()));
    }
    for p in &args.passthrough {
        if p.is_empty() || p.as_bytes().contains(&b':') {
            return Err(Error::Usage(format!(
                "--passthrough {:?}: must be a program name or path without ':'",
                p.to_string_lossy()
            )));
        }
    }
    let lib = interposer_path()?;
    // The preloaded library loads the routing one from beside itself: without it every
    // launch of the command would be refused, so say so now.
    let route = lib.with_file_name(ROUTE_FILE);
    std::fs::metadata(&route).map_err(|source| Error::Interposer {
        path: route,
        source,
    })?;
    let preload = prepend_preload(lib.as_os_str(), std::env::var_os("LD_PRELOAD").as_deref());
    // The program may chdir; a relative socket path would then point nowhere.
    let socket = std::path::absolute(socket)
        .map_err(|e| Error::io(format!("resolving the socket path {}", socket.display()), e))?;
    let passthrough = (!args.passthrough.is_empty()).then(|| {
        OsString::from_vec(
            args.passthrough
                .iter()
                .map(|p| p.as_bytes())
                .collect::<Vec<_>>()
                .join(&b':'),
        )
    });
    Ok(vec![
        ("LD_PRELOAD", Some(preload)),
        (vars::ROUTE, Some(OsString::from(&args.route_to))),
        (vars::SOCKET, Some(socket.into_os_string())),
        (vars::PASSTHROUGH, passthrough),
        (
            vars::ON_BROKER_DOWN,
            (args.on_broker_down == OnBrokerDown::Local).then(|| OsString::from("local")),
        ),
    ])
}

/// `CTX_INTERPOSER`, else the library beside the running `ctx` (a build tree), else in
/// `../lib/ctx/` from it (where `scripts/install.sh` puts it: `PREFIX/bin/ctx`,
/// `PREFIX/lib/ctx/libctx_interposer.so`).
fn interposer_path() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os(vars::INTERPOSER).filter(|p| !p.is_empty()) {
        let path = std::path::absolute(PathBuf::from(p))
            .map_err(|e| Error::io("resolving CTX_INTERPOSER", e))?;
        std::fs::metadata(&path).map_err(|source| Error::Interposer {
            path: path.clone(),
            source,
        })?;
        return Ok(path);
    }
    let exe =
        std::env::current_exe().map_err(|e| Error::io("finding the running ctx binary", e))?;
    let beside = exe.with_file_name(INTERPOSER_FILE);
    let installed = exe
        .parent()
        .and_then(Path::parent)
        .map(|prefix| prefix.join("lib/ctx").join(INTERPOSER_FILE));
    match std::fs::metadata(&beside) {
        Ok(_) => Ok(beside),
        Err(source) => match installed.filter(|p| p.exists()) {
            Some(p) => Ok(p),
            None => Err(Error::Interposer {
                path: beside,
                source,
            }),
        },
    }
}

/// Puts `lib` first in `LD_PRELOAD`, keeping what was there; no duplicate if present.
pub fn prepend_preload(lib: &OsStr, existing: Option<&OsStr>) -> OsString {
    let existing = existing.map(OsStr::as_bytes).unwrap_or_default();
    let already = existing
        .split(|&b| b == b':' || b == b' ')
        .any(|entry| entry == lib.as_bytes());
    if already {
        return OsString::from_vec(existing.to_vec());
    }
    let mut out = lib.as_bytes().to_vec();
    if !existing.is_empty() {
        out.push(b':');
        out.extend_from_slice(existing);
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_is_prepended_once() {
        let lib = OsStr::new("/opt/ctx/libctx_interposer.so");
        assert_eq!(prepend_preload(lib, None), lib);
        assert_eq!(prepend_preload(lib, Some(OsStr::new(""))), lib);
        assert_eq!(
            prepend_preload(lib, Some(OsStr::new("/usr/lib/libfoo.so"))),
            "/opt/ctx/libctx_interposer.so:/usr/lib/libfoo.so"
        );
        let both = OsStr::new("/usr/lib/libfoo.so:/opt/ctx/libctx_interposer.so");
        assert_eq!(prepend_preload(lib, Some(both)), both);
    }
}
