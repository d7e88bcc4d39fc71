//! `ctx contexts`: the contexts the broker serves, with env values masked by the broker
//! (the client never sees a secret it could print).

use std::path::Path;

use clap::Args;
use ctx_protocol::{ContextInfo, Reply, Request};
use serde_json::{json, Value};

use super::connection::unexpected;
use super::duration::format_duration;
use super::error::Error;

#[derive(Debug, Args)]
pub struct ContextsArgs {
    /// Print the contexts as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(socket: &Path, args: ContextsArgs) -> Result<i32, Error> {
    let contexts = match super::one_shot(socket, &Request::Contexts)? {
        (_, Reply::Contexts(list)) => list,
        (socket, other) => return Err(unexpected(&socket, other)),
    };
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&to_json(&contexts)).expect("plain JSON values");
        s.push('\n');
        crate::escape::json(&s).into_owned()
    } else {
        render(&contexts)
    };
    super::print(text.as_bytes());
    Ok(0)
}

/// Objects keyed by field name (env and rlimits as name -> value), easier for `jq` than the
/// wire's lists of pairs.
pub fn to_json(contexts: &[ContextInfo]) -> Value {
    Value::Array(
        contexts
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "user": c.user,
                    "uid": c.uid,
                    "gid": c.gid,
                    "cwd": c.cwd,
                    "env": c.env.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect::<serde_json::Map<_, _>>(),
                    "inherit_env": c.inherit_env,
                    "allow": c.allow,
                    "timeout_ms": c.timeout_ms,
                    "rlimits": c.rlimits.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect::<serde_json::Map<_, _>>(),
                })
            })
            .collect(),
    )
}

pub fn render(contexts: &[ContextInfo]) -> String {
    if contexts.is_empty() {
        return "no contexts\n".into();
    }
    let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    let header = [
        "NAME",
        "USER",
        "CWD",
        "ENV",
        "INHERIT_ENV",
        "ALLOW",
        "TIMEOUT",
        "RLIMITS",
    ];
    let rows: Vec<Vec<String>> = contexts
        .iter()
        .map(|c| {
            [
                c.name.clone(),
                format!("{} ({}:{})", c.user, c.uid, c.gid),
                dash(c.cwd.clone()),
                dash(
                    c.env
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                dash(c.inherit_env.join(" ")),
                dash(c.allow.clone()),
                c.timeout_ms.map_or("-".into(), format_duration),
                dash(
                    c.rlimits
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
            ]
        })
        // Names of contexts, users, variables and paths, as a terminal may show them.
        .map(|row| {
            row.iter()
                .map(|cell| crate::escape::text(cell).into_owned())
                .collect()
        })
        .collect();
    super::table::render(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> ContextInfo {
        ContextInfo {
            name: "user".into(),
            user: "dev".into(),
            uid: 1000,
            gid: 1000,
            cwd: "inherit".into(),
            env: vec![("AWS_ACCESS_KEY_ID".into(), "AKIA****".into())],
            inherit_env: vec!["TERM".into(), "LC_*".into()],
            allow: "uids 0; contexts platform".into(),
            timeout_ms: Some(600_000),
            rlimits: vec![("nofile".into(), 4096)],
        }
    }

    #[test]
    fn table_has_a_column_per_field() {
        let text = render(&[user()]);
        let mut lines = text.lines();
        let head = lines.next().unwrap();
        assert!(head.starts_with("NAME"), "{text}");
        assert!(head.contains("RLIMITS"));
        let row = lines.next().unwrap();
        for needle in [
            "user",
            "dev (1000:1000)",
            "inherit",
            "AWS_ACCESS_KEY_ID=AKIA****",
            "TERM LC_*",
            "uids 0; contexts platform",
            "10m",
            "nofile=4096",
        ] {
            assert!(row.contains(needle), "{needle:?} missing from {row:?}");
        }
        // Columns line up: USER starts at the same offset in header and row.
        assert_eq!(head.find("USER"), row.find("dev"));
    }

    #[test]
    fn json_keys_env_by_name() {
        let v = to_json(&[user()]);
        assert_eq!(v[0]["env"]["AWS_ACCESS_KEY_ID"], "AKIA****");
        assert_eq!(v[0]["rlimits"]["nofile"], 4096);
        assert_eq!(v[0]["timeout_ms"], 600_000);
    }
}
