//! Whether the processes of each context with `route_children_to` can connect to the
//! broker's socket. They must: their interposer sends every launch there, and a uid the
//! socket's mode shuts out makes every one of those launches fail closed with `EACCES`.
//! The broker does not widen the socket by itself (that would let a config's mistake open
//! the control plane to more uids than the operator chose); `ctx-broker --check`, the
//! start-up, a reload and `ctx status` name each such context and what to change.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, Context};

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

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// One warning per context with `route_children_to` whose user cannot connect to the
/// socket: what fails, and what to change.
pub fn warnings(config: &Config, access: &SocketAccess) -> Vec<String> {
    config
        .contexts
        .values()
        .filter(|ctx| ctx.route_children_to.is_some())
        .filter_map(|ctx| warning(ctx, access))
        .collect()
}

fn warning(ctx: &Context, access: &SocketAccess) -> Option<String> {
    let user = &ctx.user;
    let target = ctx.route_children_to.as_deref()?;
    let who = format!("its user {} (uid {})", user.name, user.uid);
    let fails = format!(
        "contexts.{}: route_children_to = \"{target}\" cannot work: {who}",
        ctx.name
    );
    let outcome = "so every launch of its processes fails closed (unreachable: EACCES)";
    for (dir, o) in &access.dirs {
        if !permits(user.uid, &user.groups, o, 0o1) {
            return Some(format!(
                "{fails} cannot pass through {} ({}) to the socket {}, {outcome}; move the \
                 socket ([broker] socket or --socket) to a directory it can enter, or let it \
                 through (chmod o+x {})",
                dir.display(),
                describe(o),
                access.path.display(),
                dir.display()
            ));
        }
    }
    if permits(user.uid, &user.groups, &access.socket, 0o2) {
        return None;
    }
    let s = &access.socket;
    let fix = if s.uid != user.uid && user.groups.contains(&s.gid) {
        // In the group already: the group bits lack write.
        format!(
            "give the socket's group write access (socket_mode = \"{:04o}\")",
            s.mode | 0o060
        )
    } else if s.mode & 0o020 != 0 && s.gid != 0 {
        format!(
            "add {} to the socket's group (usermod -aG {} {}, then ctx reload)",
            user.name,
            group_name(s.gid),
            user.name
        )
    } else {
        format!(
            "set [broker] socket_group to a group {} belongs to, with socket_mode = \"0660\" \
             (e.g. socket_group = \"ctx\" and usermod -aG ctx {}); socket_mode = \"0666\" \
             works too but lets every local user connect (the allow rules still decide who \
             enters which context)",
            user.name, user.name
        )
    };
    Some(format!(
        "{fails} cannot connect to the socket {} ({}), {outcome}; {fix}",
        access.path.display(),
        describe(s)
    ))
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
