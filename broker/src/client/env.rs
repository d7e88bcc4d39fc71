//! `ctx env`: the variables `ctx run` would set, as shell `export` lines, for
//! `eval "$(ctx env --route-to user)"`.

use std::path::Path;

use std::os::unix::ffi::OsStrExt;

use clap::Args;

use super::error::Error;
use super::run::{routing_vars, RouteArgs};

#[derive(Debug, Args)]
pub struct EnvArgs {
    #[command(flatten)]
    pub route: RouteArgs,
}

pub fn run(socket: &Path, args: EnvArgs) -> Result<i32, Error> {
    let mut out = Vec::new();
    for (key, value) in routing_vars(socket, &args.route)? {
        match value {
            Some(v) => {
                out.extend_from_slice(b"export ");
                out.extend_from_slice(key.as_bytes());
                out.push(b'=');
                out.extend_from_slice(&shell_quote(v.as_bytes()));
            }
            // A value left from an earlier eval would otherwise stay in force.
            None => {
                out.extend_from_slice(b"unset ");
                out.extend_from_slice(key.as_bytes());
            }
        }
        out.push(b'\n');
    }
    super::print(&out);
    Ok(0)
}

/// Single-quotes `value` for POSIX shells: everything inside '...' is literal except `'`,
/// which ends the quote, is escaped, and reopens it.
pub fn shell_quote(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 2);
    out.push(b'\'');
    for &b in value {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::process::Command;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote(b"plain"), b"'plain'");
        assert_eq!(shell_quote(b""), b"''");
        assert_eq!(shell_quote(b"it's"), b"'it'\\''s'");
        assert_eq!(shell_quote(b"$HOME `x` \\n"), b"'$HOME `x` \\n'");
    }

    #[test]
    fn quoted_values_survive_a_real_shell() {
        let nasty = "a'b\"c $HOME `id` \\ \n; rm -rf / ''";
        let mut script = b"printf %s ".to_vec();
        script.extend_from_slice(&shell_quote(nasty.as_bytes()));
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(OsStr::from_bytes(&script))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), nasty);
    }
}
