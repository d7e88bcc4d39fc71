//! `ctx log`: the broker's audit log (`audit.jsonl`, and `audit.jsonl.1` before it once it
//! has rotated), filtered by context and time, as a table or as the JSON lines themselves;
//! `--follow` keeps reading across rotations.
//!
//! The file is read directly (the broker is not in the way of a post-mortem); its path is
//! `--audit-log`, else the one `ctx status` reports.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Args;
use ctx_protocol::{Reply, Request};
use serde_json::Value;

use super::connection::unexpected;
use super::duration::{format_duration, parse_duration};
use super::error::Error;
use crate::daemon::audit::{rfc3339, rotated_path};
use crate::escape;

/// How often `--follow` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The log the packaged broker writes, for when the broker is not there to ask.
const DEFAULT_AUDIT_LOG: &str = "/var/log/ctx/audit.jsonl";

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Keep printing events as they are written
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only events about this context
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Only events since TIME: a duration ago (10m, 2h) or a UTC time (2026-05-01, 2026-05-01T12:00:00)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only this launch (its `exec` line and its egress attempts)
    #[arg(long, value_name = "ID")]
    pub launch: Option<u64>,
    /// Print the log's JSON lines as they are
    #[arg(long)]
    pub json: bool,
    /// Read this file instead of the audit log the broker reports
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
}

/// Which events to print.
#[derive(Debug, Default)]
pub struct Filter {
    pub context: Option<String>,
    /// A UTC time in the log's own format (or a prefix of one); they compare as strings.
    pub since: Option<String>,
    pub launch: Option<u64>,
}

pub fn run(socket: &Path, args: LogArgs) -> Result<i32, Error> {
    let filter = Filter {
        context: args.context.clone(),
        launch: args.launch,
        since: args
            .since
            .as_deref()
            .map(|s| parse_since(s, SystemTime::now()))
            .transpose()
            .map_err(Error::Usage)?,
    };
    let path = match args.audit_log.clone() {
        Some(p) => p,
        None => audit_path(socket)?,
    };
    let mut printer = Printer {
        json: args.json,
        filter,
        header_done: false,
    };
    let rotated = rotated_path(&path);
    if rotated.exists() {
        let mut old = open(&rotated)?;
        let mut rest = Vec::new();
        drain(&mut old, &mut rest, &rotated, &mut printer)?;
    }
    let mut file = match File::open(&path) {
        Ok(f) => f,
        // Nothing logged yet: following waits for the first line.
        Err(e) if e.kind() == io::ErrorKind::NotFound && args.follow => wait_for(&path)?,
        Err(e) => return Err(read_error(&path, e)),
    };
    let mut partial = Vec::new();
    drain(&mut file, &mut partial, &path, &mut printer)?;
    if !args.follow {
        printer.finish();
        return Ok(0);
    }
    loop {
        std::thread::sleep(FOLLOW_POLL);
        drain(&mut file, &mut partial, &path, &mut printer)?;
        let (Ok(now), Ok(ours)) = (std::fs::metadata(&path), file.metadata()) else {
            continue;
        };
        if (now.dev(), now.ino()) != (ours.dev(), ours.ino()) {
            // Rotated: lines written before the rename are still in the file we hold.
            drain(&mut file, &mut partial, &path, &mut printer)?;
            partial.clear();
            file = open(&path)?;
        } else if now.len() < file.stream_position().unwrap_or(0) {
            file.seek(SeekFrom::Start(0))
                .map_err(|e| read_error(&path, e))?;
            partial.clear();
        }
    }
}

fn audit_path(socket: &Path) -> Result<PathBuf, Error> {
    match super::one_shot(socket, &Request::Status) {
        Ok((_, Reply::Status(report))) => Ok(PathBuf::from(report.audit_log)),
        Ok((socket, other)) => Err(unexpected(&socket, other)),
        Err(e @ Error::Connect { .. }) => {
            if Path::new(DEFAULT_AUDIT_LOG).exists() {
                eprintln!("ctx: {e}; reading {DEFAULT_AUDIT_LOG}");
                Ok(PathBuf::from(DEFAULT_AUDIT_LOG))
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

fn open(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(|e| read_error(path, e))
}

fn wait_for(path: &Path) -> Result<File, Error> {
    loop {
        match File::open(path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::thread::sleep(FOLLOW_POLL),
            Err(e) => return Err(read_error(path, e)),
        }
    }
}

fn read_error(path: &Path, e: io::Error) -> Error {
    let hint = if e.kind() == io::ErrorKind::PermissionDenied {
        " (the audit log is readable by root only: run ctx log as root)"
    } else {
        ""
    };
    Error::io(
        format!("cannot read the audit log {}{hint}", path.display()),
        e,
    )
}

/// Prints every complete line from `file`'s position on; an unfinished last line stays in
/// `partial` until the rest of it is written.
fn drain(
    file: &mut File,
    partial: &mut Vec<u8>,
    path: &Path,
    printer: &mut Printer,
) -> Result<(), Error> {
    let mut chunk = Vec::new();
    file.read_to_end(&mut chunk)
        .map_err(|e| read_error(path, e))?;
    partial.extend_from_slice(&chunk);
    let complete = match partial.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => return Ok(()),
    };
    let text = String::from_utf8_lossy(&partial[..complete]).into_owned();
    partial.drain(..complete);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        printer.line(line);
    }
    Ok(())
}

struct Printer {
    json: bool,
    filter: Filter,
    header_done: bool,
}

impl Printer {
    fn line(&mut self, line: &str) {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            eprintln!("ctx: skipping a line of the audit log that is not JSON");
            return;
        };
        if !self.filter.matches(&event) {
            return;
        }
        let mut out = if self.json {
            escape::json(line).into_owned()
        } else {
            let mut s = String::new();
            if !self.header_done {
                s.push_str(&render_row(&HEADER.map(str::to_string)));
                s.push('\n');
                self.header_done = true;
            }
            s.push_str(&render_row(&row(&event)));
            s
        };
        out.push('\n');
        super::print(out.as_bytes());
    }

    fn finish(&mut self) {
        if !self.json && !self.header_done {
            super::print(b"no matching audit events\n");
        }
    }
}

impl Filter {
    pub fn matches(&self, event: &Value) -> bool {
        if let Some(since) = &self.since {
            match event["time"].as_str() {
                Some(t) if t >= since.as_str() => {}
                _ => return false,
            }
        }
        if let Some(id) = self.launch {
            let launch = match event["event"].as_str() {
                Some("egress") => event["launch"].as_u64(),
                _ => event["id"].as_u64(),
            };
            if launch != Some(id) {
                return false;
            }
        }
        if let Some(name) = &self.context {
            let single = event["context"].as_str() == Some(name.as_str());
            let listed = event["contexts"]
                .as_array()
                .is_some_and(|a| a.iter().any(|c| c.as_str() == Some(name.as_str())));
            if !single && !listed {
                return false;
            }
        }
        true
    }
}

/// `--since`: a duration ago, or a UTC time the log's format starts with.
pub fn parse_since(text: &str, now: SystemTime) -> Result<String, String> {
    let looks_like_date = text.len() >= 4
        && text.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && text.as_bytes().get(4) == Some(&b'-');
    if looks_like_date {
        let normal = text.trim().replacen(' ', "T", 1);
        let valid = normal
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b'T' | b'.' | b'Z'));
        return if valid {
            Ok(normal.trim_end_matches('Z').to_string())
        } else {
            Err(format!(
                "--since {text:?}: expected a UTC time such as 2026-05-01 or 2026-05-01T12:30:00"
            ))
        };
    }
    let ms = parse_duration(text)
        .map_err(|e| format!("--since: {e}, or a UTC time such as 2026-05-01T12:30:00"))?;
    let then = now
        .checked_sub(Duration::from_millis(ms))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(rfc3339(then))
}

const HEADER: [&str; 7] = [
    "TIME", "EVENT", "CONTEXT", "CALLER", "RESULT", "DURATION", "COMMAND",
];
/// Column widths, fixed so `--follow` lines up without knowing what comes later.
const WIDTHS: [usize; 6] = [19, 11, 12, 16, 18, 8];

fn render_row(cells: &[String; 7]) -> String {
    let mut out = String::new();
    for (cell, width) in cells.iter().zip(WIDTHS) {
        out.push_str(cell);
        let pad = width.saturating_sub(cell.chars().count());
        out.extend(std::iter::repeat_n(' ', pad + 2));
    }
    out.push_str(&cells[6]);
    out.trim_end().to_string()
}

/// One event as table cells; fields an event lacks show as `-`. Every cell is escaped
/// ([`escape`]): argv, context names, paths and messages come from callers and routed
/// processes, and a raw newline or `ESC[` would forge rows or drive root's terminal.
pub fn row(e: &Value) -> [String; 7] {
    let text = |v: &Value| v.as_str().map(|s| escape::text(s).into_owned());
    let time = text(&e["time"])
        .map(|t| t.replacen('T', " ", 1).chars().take(19).collect())
        .unwrap_or_else(|| "-".into());
    let event = text(&e["event"]).unwrap_or_else(|| "-".into());
    let context = text(&e["context"])
        .or_else(|| {
            e["contexts"].as_array().map(|a| {
                let mut names: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
                names.dedup();
                escape::text(&names.join(",")).into_owned()
            })
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into());
    if e["event"] == "egress" {
        return egress_row(e, time, event, context);
    }
    let caller = match &e["caller"] {
        Value::Object(c) => escape::text(&format!(
            "uid {} pid {}",
            c.get("uid")
                .map(Value::to_string)
                .unwrap_or_else(|| "?".into()),
            c.get("pid")
                .map(Value::to_string)
                .unwrap_or_else(|| "?".into())
        ))
        .into_owned(),
        Value::String(s) => escape::text(s).into_owned(),
        // `exec_denied`: the routed process that tried; `refusals_suppressed`: whose.
        _ => match (e["uid"].as_u64(), e["pid"].as_u64()) {
            (Some(uid), Some(pid)) => format!("uid {uid} pid {pid}"),
            (Some(uid), None) => format!("uid {uid}"),
            _ => "-".into(),
        },
    };
    let result = escape::text(&result(e)).into_owned();
    let duration = e["duration_ms"]
        .as_u64()
        .map(format_duration)
        .unwrap_or_else(|| "-".into());
    let command = match e["argv"].as_array() {
        Some(a) => command(e, a),
        // `exec_denied`: what it tried to run.
        None => exact(e, "path").unwrap_or_else(|| "-".into()),
    };
    [time, event, context, caller, result, duration, command]
}

/// An egress attempt: the launch it belongs to in the CALLER column (`launch ?` when the
/// client did not name one of its context's launches), the destination and the bytes
/// each way in the last.
fn egress_row(e: &Value, time: String, event: String, context: String) -> [String; 7] {
    let caller = match e["launch"].as_u64() {
        Some(id) => format!("launch {id}"),
        None => "launch ?".into(),
    };
    let allowed = e["allowed"].as_bool() == Some(true);
    let result = match (allowed, e["error"].as_str(), e["reason"].as_str()) {
        (true, None, _) => "allowed".to_string(),
        (true, Some(err), _) => format!("allowed, failed: {err}"),
        (false, _, Some(reason)) => format!("denied: {reason}"),
        (false, _, None) => "denied".into(),
    };
    let name = exact(e, "name").unwrap_or_else(|| "?".into());
    let mut target = format!("{name}:{}", e["port"]);
    if let Some(via) = e["via"].as_str() {
        target.push_str(&format!(" via {}", escape::text(via)));
    }
    if allowed {
        target.push_str(&format!(
            " ({} B up, {} B down)",
            e["bytes_up"].as_u64().unwrap_or(0),
            e["bytes_down"].as_u64().unwrap_or(0)
        ));
    }
    let duration = e["duration_ms"]
        .as_u64()
        .map(format_duration)
        .unwrap_or_else(|| "-".into());
    [
        time,
        event,
        context,
        caller,
        escape::text(&result).into_owned(),
        duration,
        target,
    ]
}

/// The argv cell: each argument escaped, from its exact bytes where the log kept them
/// (`argv_escaped`, when one was not UTF-8), then what the broker cut.
fn command(e: &Value, argv: &[Value]) -> String {
    let exact = e["argv_escaped"].as_array();
    let mut out = argv
        .iter()
        .enumerate()
        .map(|(i, arg)| {
            let bytes = exact
                .and_then(|a| a.get(i))
                .and_then(Value::as_str)
                .and_then(escape::unescape);
            let shown = match (bytes, arg.as_str()) {
                (Some(b), _) => escape::bytes(&b),
                (None, Some(s)) => escape::text(s).into_owned(),
                (None, None) => escape::text(&arg.to_string()).into_owned(),
            };
            escape::word(&shown).into_owned()
        })
        .collect::<Vec<_>>()
        .join(" ");
    if e["argv_truncated"].as_bool() == Some(true) {
        let digest = e["argv_sha256"]
            .as_str()
            .map(|d| format!(", sha256 {}", escape::text(d)))
            .unwrap_or_default();
        out.push_str(&format!(
            " ... [argv cut: {} arguments, {} bytes{digest}]",
            e["argc"], e["argv_bytes"]
        ));
    }
    out
}

/// Field `key` escaped, from its exact bytes (`KEY_escaped`) when the log kept them.
fn exact(e: &Value, key: &str) -> Option<String> {
    let bytes = e[format!("{key}_escaped").as_str()]
        .as_str()
        .and_then(escape::unescape);
    match bytes {
        Some(b) => Some(escape::bytes(&b)),
        None => e[key].as_str().map(|s| escape::text(s).into_owned()),
    }
}

fn result(e: &Value) -> String {
    let status = &e["status"];
    if e["event"] == "refusals_suppressed" {
        return format!(
            "{} refusal(s) not logged ({} bytes)",
            e["count"], e["bytes"]
        );
    }
    let mut out = if let Some(code) = status["code"].as_i64() {
        format!("exit {code}")
    } else if let Some(sig) = status["signal"].as_i64() {
        format!("signal {sig}")
    } else if let Some(kind) = e["kind"].as_str() {
        match e["errno"].as_str() {
            Some(errno) => format!("{kind} {errno}"),
            None => kind.to_string(),
        }
    } else if let Some(reason) = e["reason"].as_str() {
        reason.to_string()
    } else if let Some(ok) = e["ok"].as_bool() {
        if ok { "ok" } else { "refused" }.to_string()
    } else if let Some(sig) = e["signal"].as_i64() {
        format!("sent signal {sig}")
    } else {
        "-".into()
    };
    if e["timed_out"].as_bool() == Some(true) {
        out.push_str(" (timeout)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exec_event() -> Value {
        json!({
            "event": "exec", "time": "2026-05-01T12:30:00.123Z", "context": "user",
            "caller": { "pid": 42, "uid": 1000, "gid": 1000, "context": null },
            "argv": ["sleep", "1"], "status": { "code": 3 }, "timed_out": false,
            "duration_ms": 1500,
        })
    }

    #[test]
    fn rows_name_every_field() {
        let r = row(&exec_event());
        assert_eq!(r[0], "2026-05-01 12:30:00");
        assert_eq!(r[1], "exec");
        assert_eq!(r[2], "user");
        assert_eq!(r[3], "uid 1000 pid 42");
        assert_eq!(r[4], "exit 3");
        assert_eq!(r[5], "1s500ms");
        assert_eq!(r[6], "sleep 1");
        let refused = json!({ "event": "refused", "reason": "not allowed", "context": "x" });
        assert_eq!(row(&refused)[4], "not allowed");
        let kill = json!({ "event": "kill", "contexts": ["a", "a"], "signal": 15 });
        assert_eq!(row(&kill)[2], "a");
        assert_eq!(row(&kill)[4], "sent signal 15");
        let denied = json!({
            "event": "exec_denied", "context": "agent", "uid": 1002, "pid": 77,
            "path": "/bin/true", "reason": "enforce: exec bypassing the interposer",
            "errno": "EACCES",
        });
        let r = row(&denied);
        assert_eq!(r[3], "uid 1002 pid 77");
        assert_eq!(r[4], "enforce: exec bypassing the interposer");
        assert_eq!(r[6], "/bin/true");
    }

    #[test]
    fn rows_escape_what_callers_wrote() {
        let forged = json!({
            "event": "refused", "reason": "unknown context",
            "context": "x\n2026-01-01 00:00:00  exec  root\u{1b}[2J",
            "caller": { "pid": 9, "uid": 1001, "gid": 1001, "context": null },
            "argv": ["echo", "a\rb\u{9b}31m", "\u{fffd}", "\u{fffd}"],
            "argv_escaped": ["echo", "a\\rb\\u{009b}31m", "\\xff", "\\xfe"],
            "argv_truncated": true, "argc": 9, "argv_bytes": 5000,
        });
        let r = row(&forged);
        for cell in &r {
            assert!(!cell.chars().any(|c| c.is_control()), "{cell:?}");
        }
        assert_eq!(r[2], "x\\n2026-01-01 00:00:00  exec  root\\x1b[2J");
        assert_eq!(
            r[6],
            "echo a\\rb\\u{009b}31m \\xff \\xfe ... [argv cut: 9 arguments, 5000 bytes]"
        );
        let rendered = render_row(&r);
        assert_eq!(rendered.lines().count(), 1, "{rendered}");
        let denied =
            json!({ "event": "exec_denied", "path": "\u{fffd}", "path_escaped": "/tmp/\\xff" });
        assert_eq!(row(&denied)[6], "/tmp/\\xff");
        let summary =
            json!({ "event": "refusals_suppressed", "uid": 1001, "count": 7, "bytes": 700 });
        let r = row(&summary);
        assert_eq!(r[3], "uid 1001");
        assert_eq!(r[4], "7 refusal(s) not logged (700 bytes)");
    }

    #[test]
    fn filters_by_context_and_time() {
        let e = exec_event();
        assert!(Filter::default().matches(&e));
        let by = |context: Option<&str>, since: Option<&str>| Filter {
            context: context.map(str::to_string),
            since: since.map(str::to_string),
            launch: None,
        };
        assert!(by(Some("user"), None).matches(&e));
        assert!(!by(Some("other"), None).matches(&e));
        assert!(by(None, Some("2026-05-01")).matches(&e));
        assert!(by(None, Some("2026-05-01T12:30:00")).matches(&e));
        assert!(!by(None, Some("2026-05-01T12:31")).matches(&e));
        assert!(!by(None, Some("2026-05-02")).matches(&e));
    }

    #[test]
    fn egress_rows_name_their_launch() {
        let allowed = json!({
            "event": "egress", "time": "2026-05-01T12:30:00.123Z", "context": "build",
            "launch": 42, "via": "connect", "name": "pypi.org", "port": 443, "allowed": true,
            "bytes_up": 517, "bytes_down": 6100, "duration_ms": 1200,
        });
        let r = row(&allowed);
        assert_eq!(r[1], "egress");
        assert_eq!(r[2], "build");
        assert_eq!(r[3], "launch 42");
        assert_eq!(r[4], "allowed");
        assert_eq!(r[5], "1s200ms");
        assert_eq!(r[6], "pypi.org:443 via connect (517 B up, 6100 B down)");
        let denied = json!({
            "event": "egress", "context": "build", "launch": null, "name": "evil\u{1b}[2J",
            "port": 80, "allowed": false, "reason": "not in the allow list", "via": "http",
        });
        let r = row(&denied);
        assert_eq!(r[3], "launch ?");
        assert_eq!(r[4], "denied: not in the allow list");
        assert!(!r[6].contains('\u{1b}'), "{}", r[6]);
        let by_launch = Filter {
            launch: Some(42),
            ..Filter::default()
        };
        assert!(by_launch.matches(&allowed));
        assert!(!by_launch.matches(&denied));
        assert!(by_launch.matches(&json!({ "event": "exec", "id": 42 })));
        assert!(!by_launch.matches(&json!({ "event": "exec", "id": 4 })));
    }

    #[test]
    fn since_takes_durations_and_times() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(20_000 * 86_400 + 3600);
        assert_eq!(parse_since("10m", now).unwrap(), "2024-10-04T00:50:00.000Z");
        assert_eq!(
            parse_since("2026-05-01 12:00", now).unwrap(),
            "2026-05-01T12:00"
        );
        assert_eq!(parse_since("2026-05-01Z", now).unwrap(), "2026-05-01");
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("2026-05-01 noon", now).is_err());
    }
}
