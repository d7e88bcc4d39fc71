//! Whether the processes of each context with `route_children_to` can connect to the
//! broker's socket. They must: their interposer sends every launch there, and a uid the
//! socket's mode shuts out makes every one of those launches fail closed with `EACCES`.
//! The broker does not widen the socket by itself (that would let a config's mistake open
//! the control plane to more uids than the operator chose). `ctx-broker --check` refuses
//! such a config; the start-up, a reload and `ctx status` name each such context and what
//! to change (the broker still serves the contexts that work).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, Context};

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// The socket's path, mode and group are applied when the broker starts (binding it or
/// adopting systemd's), never at a reload.
const RESTART: &str =
    "then restart the broker (it applies the socket's path, mode and group when it starts; \
     a reload does not change them)";

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// Who a path belongs to and its permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// The socket and the directories above it, as a connecting process meets them.
#[derive(Debug, Clone)]
pub struct SocketAccess {
    pub path: PathBuf,
    pub socket: Owner,
    /// Each existing directory on the way, from `/` down.
    pub dirs: Vec<(PathBuf, Owner)>,
}

/// A context with `route_children_to` whose user cannot connect to the socket, so that
/// every launch of its processes would fail closed.
#[derive(Debug, Clone)]
pub struct Unreachable {
    pub context: String,
    /// Its `route_children_to`.
    pub target: String,
    pub user: String,
    pub uid: u32,
    pub socket: PathBuf,
    pub socket_owner: Owner,
    pub blocked: Blocked,
    pub fix: Fix,
}

/// Where the connect is refused.
#[derive(Debug, Clone)]
pub enum Blocked {
    /// A directory on the way the user may not search.
    Directory(PathBuf, Owner),
    /// The socket itself: no write permission for the user's class.
    Socket,
}

/// What the operator changes.
#[derive(Debug, Clone)]
pub enum Fix {
    /// Move the socket, or let the user through the directory.
    MoveOrOpen { dir: PathBuf },
    /// The user is in the socket's group, whose bits lack write: this mode has it.
    GroupWrite { mode: u32 },
    /// The socket's group may write: the user joins it.
    JoinGroup { group: String },
    /// Neither the group nor other may write: name a group the user is in.
    SetGroup,
}

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl SocketAccess {
    /// The socket as a broker of this process's uid would make it from `config` at `path`
    /// (for `--check`, before it exists): this uid's, `socket_group` or this gid, with
    /// `socket_mode`. A missing directory is created 0755.
    pub fn planned(config: &Config, path: &Path) -> SocketAccess {
        // SAFETY: plain getters.
        let (uid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let gid = config
            .broker
            .socket_group
            .as_ref()
            .map_or(egid, |(_, g)| *g);
        SocketAccess {
            path: path.to_path_buf(),
            socket: Owner {
                uid,
                gid,
                mode: config.broker.socket_mode,
            },
            dirs: dirs_above(path),
        }
    }

    /// The socket as it is on disk now; `None` when it cannot be read (an abstract or
    /// vanished socket: nothing to say then).
    pub fn on_disk(path: &Path) -> Option<SocketAccess> {
        let meta = std::fs::metadata(path).ok()?;
        Some(SocketAccess {
            path: path.to_path_buf(),
            socket: owner(&meta),
            dirs: dirs_above(path),
        })
    }
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Unreachable {
            context,
            target,
            user,
            uid,
            socket,
            socket_owner,
            ..
        } = self;
        write!(
            f,
            "contexts.{context}: route_children_to = \"{target}\" cannot work: its user {user} \
             (uid {uid}) "
        )?;
        let socket = format!(
            "the socket {} ({})",
            socket.display(),
            describe(socket_owner)
        );
        match &self.blocked {
            Blocked::Directory(dir, o) => write!(
                f,
                "cannot pass through {} ({}) to {socket}",
                dir.display(),
                describe(o)
            )?,
            Blocked::Socket => write!(f, "cannot connect to {socket}")?,
        }
        f.write_str(", so every launch of its processes fails closed (unreachable: EACCES); ")?;
        match &self.fix {
            Fix::MoveOrOpen { dir } => write!(
                f,
                "let it through (chmod o+x {}), or move the socket ([broker] socket or \
                 --socket) to a directory it can enter, {RESTART}",
                dir.display()
            ),
            Fix::GroupWrite { mode } => write!(
                f,
                "give the socket's group write access with socket_mode = \"{mode:04o}\", \
                 {RESTART}"
            ),
            Fix::JoinGroup { group } => write!(
                f,
                "add {user} to the socket's group: usermod -aG {group} {user}, then ctx reload \
                 (a load reads each user's groups)"
            ),
            Fix::SetGroup => write!(
                f,
                "set [broker] socket_group to a group {user} belongs to, with socket_mode = \
                 \"0660\" (e.g. socket_group = \"ctx\" and usermod -aG ctx {user}), {RESTART}; \
                 socket_mode = \"0666\" works too but lets every local user connect (the allow \
                 rules still decide who enters which context)"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// Each context with `route_children_to` whose user cannot connect to the socket.
pub fn unreachable(config: &Config, access: &SocketAccess) -> Vec<Unreachable> {
    config
        .contexts
        .values()
        .filter(|ctx| ctx.route_children_to.is_some())
        .filter_map(|ctx| check(ctx, access))
        .collect()
}

/// [`unreachable`], rendered: one line per context, what fails and what to change.
pub fn warnings(config: &Config, access: &SocketAccess) -> Vec<String> {
    unreachable(config, access)
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn check(ctx: &Context, access: &SocketAccess) -> Option<Unreachable> {
    let user = &ctx.user;
    let target = ctx.route_children_to.clone()?;
    let found = |blocked, fix| Unreachable {
        context: ctx.name.clone(),
        target: target.clone(),
        user: user.name.clone(),
        uid: user.uid,
        socket: access.path.clone(),
        socket_owner: access.socket,
        blocked,
        fix,
    };
    for (dir, o) in &access.dirs {
        if !permits(user.uid, &user.groups, o, 0o1) {
            let fix = Fix::MoveOrOpen { dir: dir.clone() };
            return Some(found(Blocked::Directory(dir.clone(), *o), fix));
        }
    }
    if permits(user.uid, &user.groups, &access.socket, 0o2) {
        return None;
    }
    let s = &access.socket;
    let fix = if s.uid != user.uid && user.groups.contains(&s.gid) {
        // In the group already: the group bits lack write.
        Fix::GroupWrite {
            mode: s.mode | 0o060,
        }
    } else if s.mode & 0o020 != 0 && s.gid != 0 {
        Fix::JoinGroup {
            group: group_name(s.gid),
        }
    } else {
        Fix::SetGroup
    };
    Some(found(Blocked::Socket, fix))
}

/// Whether `uid` with `groups` has the `want` bits (`0o2` write, `0o1` search) on `o`, the
/// way the kernel picks the owner, group or other class (root passes).
fn permits(uid: u32, groups: &[u32], o: &Owner, want: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let bits = if uid == o.uid {
        o.mode >> 6
    } else if groups.contains(&o.gid) {
        o.mode >> 3
    } else {
        o.mode
    };
    bits & want == want
}

fn owner(meta: &std::fs::Metadata) -> Owner {
    Owner {
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
    }
}

/// The existing directories a connect walks through, `/` first.
fn dirs_above(path: &Path) -> Vec<(PathBuf, Owner)> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // A client walks the path as written (up to any symlink) and then where the links
    // lead: both sets of directories must let it through.
    let mut paths: Vec<PathBuf> = absolute
        .ancestors()
        .skip(1)
        .map(Path::to_path_buf)
        .collect();
    if let Some(real) = absolute
        .parent()
        .and_then(|p| std::fs::canonicalize(p).ok())
    {
        for d in real.ancestors() {
            if !paths.iter().any(|p| p == d) {
                paths.push(d.to_path_buf());
            }
        }
    }
    let mut dirs: Vec<(PathBuf, Owner)> = paths
        .into_iter()
        .filter_map(|d| {
            // Its own mode, not its target's, for a symlink on the way.
            let meta = std::fs::symlink_metadata(&d).ok()?;
            (!meta.file_type().is_symlink()).then(|| (d, owner(&meta)))
        })
        .collect();
    dirs.sort_by(|a, b| a.0.cmp(&b.0));
    dirs
}

fn describe(o: &Owner) -> String {
    format!(
        "owner {}, group {}, mode {:04o}",
        user_name(o.uid),
        group_name(o.gid),
        o.mode
    )
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(gid.into())
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_0660: Owner = Owner {
        uid: 0,
        gid: 0,
        mode: 0o660,
    };

    #[test]
    fn the_kernel_picks_one_class_and_root_passes() {
        assert!(permits(0, &[], &ROOT_0660, 0o2));
        assert!(!permits(1000, &[1000], &ROOT_0660, 0o2));
        assert!(permits(1000, &[1000, 0], &ROOT_0660, 0o2));
        let owner_only = Owner {
            uid: 1000,
            gid: 50,
            mode: 0o606,
        };
        // The owner's own bits decide for the owner, even when "other" would allow.
        let no_owner_write = Owner {
            mode: 0o466,
            ..owner_only
        };
        assert!(permits(1000, &[], &owner_only, 0o2));
        assert!(!permits(1000, &[50], &no_owner_write, 0o2));
        assert!(!permits(1001, &[50], &owner_only, 0o2));
        assert!(permits(1001, &[], &owner_only, 0o2));
    }
}
