//! `ctx ps`: the routed processes running now. Root sees all of them; anyone else sees the
//! ones their uid launched.

use std::path::Path;

use clap::Args;
use ctx_protocol::{ProcessInfo, Reply, Request};
use serde_json::{json, Value};

use super::connection::unexpected;
use super::duration::format_duration;
use super::error::Error;
use crate::escape;

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only the processes of this context
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Print the processes as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(socket: &Path, args: PsArgs) -> Result<i32, Error> {
    let mut list = match super::one_shot(socket, &Request::Ps)? {
        (_, Reply::Processes(list)) => list,
        (socket, other) => return Err(unexpected(&socket, other)),
    };
    if let Some(name) = &args.context {
        list.retain(|p| &p.context == name);
    }
    let text = if args.json {
        crate::escape::json(&format!("{:#}\n", to_json(&list))).into_owned()
    } else {
        render(&list)
    };
    super::print(text.as_bytes());
    Ok(0)
}

pub fn to_json(list: &[ProcessInfo]) -> Value {
    list.iter()
        .map(|p| {
            json!({
                "id": p.id,
                "context": p.context,
                "pid": p.pid,
                "caller_pid": p.caller_pid,
                "caller_uid": p.caller_uid,
                "argv": p.argv,
                "age_ms": p.age_ms,
            })
        })
        .collect()
}

pub fn render(list: &[ProcessInfo]) -> String {
    if list.is_empty() {
        return "no routed processes running\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            vec![
                p.id.to_string(),
                escape::text(&p.context).into_owned(),
                p.pid.to_string(),
                p.caller_pid.to_string(),
                p.caller_uid.to_string(),
                format_age(p.age_ms),
                p.argv
                    .iter()
                    .map(|a| escape::word(&escape::text(a)).into_owned())
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    super::table::render(
        &[
            "ID",
            "CONTEXT",
            "PID",
            "CALLER_PID",
            "CALLER_UID",
            "AGE",
            "COMMAND",
        ],
        &rows,
    )
}

/// Whole seconds: milliseconds of age are noise in a listing.
fn format_age(ms: u64) -> String {
    format_duration(ms / 1000 * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> ProcessInfo {
        ProcessInfo {
            id: 12,
            context: "user".into(),
            pid: 4242,
            caller_pid: 77,
            caller_uid: 1000,
            argv: vec!["sleep".into(), "100".into()],
            age_ms: 3_723_456,
        }
    }

    #[test]
    fn table_shows_every_field() {
        let text = render(&[sleeper()]);
        let row = text.lines().nth(1).unwrap();
        for cell in ["12", "user", "4242", "77", "1000", "1h2m3s", "sleep 100"] {
            assert!(row.contains(cell), "{cell:?} missing from {row:?}");
        }
        assert!(text.starts_with("ID"));
        assert_eq!(render(&[]), "no routed processes running\n");
    }

    #[test]
    fn table_escapes_argv_and_names() {
        let mut p = sleeper();
        p.argv = vec![
            "sh".into(),
            "x\n99  evil  1  1  0  0s  rm -rf /\u{1b}[8m".into(),
        ];
        let text = render(&[p]);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("x\\n99  evil"), "{text}");
        assert!(text.contains("\\x1b[8m"), "{text}");
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn json_has_named_fields() {
        let v = to_json(&[sleeper()]);
        assert_eq!(v[0]["id"], 12);
        assert_eq!(v[0]["argv"][1], "100");
        assert_eq!(v[0]["caller_uid"], 1000);
    }
}
