//! `ctx log`: the broker's audit log (`audit.jsonl`, and `audit.jsonl.1` before it once it
//! has rotated), filtered by context and time, as a table or as the JSON lines themselves;
//! `--follow` keeps reading across rotations.
//!
//! The file is read directly (the broker is not in the way of a post-mortem); its path is
//! `--audit-log`, else the one `ctx status` reports.
//!
//! Launch ids start at 1 with every broker run, so `--launch N` shows the newest run that
//! had a launch N (and names the others on stderr); `--run ID` picks another.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Args;
use ctx_protocol::{Reply, Request};
use serde::Deserialize;
use serde_json::Value;

use super::connection::unexpected;
use super::duration::{format_duration, parse_duration};
use super::error::Error;
use crate::audit_event::{AuditEvent, Line, Requester, Status};
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
    /// Only this launch (its `exec` line and its egress attempts), of the newest broker run
    /// that had one with this id unless --run names another
    #[arg(long, value_name = "ID")]
    pub launch: Option<u64>,
    /// Only events of this broker run (its id as in the lines' `run`, or the start of it)
    #[arg(long, value_name = "RUN")]
    pub run: Option<String>,
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
    /// A broker run's id, or the start of one.
    pub run: Option<String>,
}

pub fn run(socket: &Path, args: LogArgs) -> Result<i32, Error> {
    let filter = Filter {
        context: args.context.clone(),
        launch: args.launch,
        run: args.run.clone(),
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
    let rotated = rotated_path(&path);
    let mut runs_seen = None;
    let mut filter = filter;
    if let (Some(id), None) = (args.launch, &args.run) {
        let (runs, seen) = runs_with_launch(&[rotated.clone(), path.clone()], id)?;
        note_other_runs(id, &runs);
        // Lines from before runs were named have none to choose by: all of them show.
        filter.run = runs.last().map(|(run, _)| run.clone());
        runs_seen = Some(seen);
    }
    let mut printer = Printer {
        json: args.json,
        filter,
        header_done: false,
        runs_seen,
    };
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
    /// Every broker run seen so far, when `--launch` picks the newest run with the launch:
    /// a run not seen before that has it (a broker started while following) takes over.
    runs_seen: Option<HashSet<String>>,
}

impl Printer {
    fn line(&mut self, line: &str) {
        let Some(entry) = Entry::parse(line) else {
            eprintln!("ctx: skipping a line of the audit log that is not JSON");
            return;
        };
        if let (Some(seen), Some(run)) = (self.runs_seen.as_mut(), entry.run()) {
            if seen.insert(run.to_string()) && entry.launch() == self.filter.launch {
                self.filter.run = Some(run.to_string());
            }
        }
        if !self.filter.matches(&entry) {
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
            s.push_str(&render_row(&row(&entry)));
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

/// One line of the log: typed, or, for an event this `ctx` does not know (a newer
/// broker's) or a line cut for size, what is read of it by name.
#[derive(Debug)]
pub enum Entry {
    Known(Box<Line>),
    /// A newer broker's event, or a known one cut by the log's size bound (a field replaced
    /// by `{"omitted_bytes": N}`): read by field name, as far as the names go.
    Other {
        time: Option<String>,
        run: Option<String>,
        event: String,
        contexts: Vec<String>,
        launch: Option<u64>,
        caller: Option<String>,
        result: Option<String>,
        duration_ms: Option<u64>,
    },
}

impl Entry {
    /// `None` when the line is not JSON.
    pub fn parse(line: &str) -> Option<Entry> {
        let value: Value = serde_json::from_str(line).ok()?;
        Some(match Line::deserialize(&value) {
            Ok(known) => Entry::Known(Box::new(known)),
            Err(_) => Self::by_name(&value),
        })
    }

    fn by_name(value: &Value) -> Entry {
        let text = |key: &str| value[key].as_str().map(str::to_string);
        let event = text("event").unwrap_or_else(|| "?".into());
        let mut contexts: Vec<String> = text("context").into_iter().collect();
        if let Some(list) = value["contexts"].as_array() {
            contexts.extend(list.iter().filter_map(|c| c.as_str().map(str::to_string)));
        }
        // An exec line names its launch `id`; an egress line, the launch it belongs to.
        let launch = if event == "exec" {
            value["id"].as_u64()
        } else {
            value["launch"].as_u64()
        };
        let caller = &value["caller"];
        let caller = match (caller["uid"].as_u64(), caller["pid"].as_u64()) {
            (Some(uid), Some(pid)) => Some(format!("uid {uid} pid {pid}")),
            _ => caller.as_str().map(str::to_string),
        };
        let status = &value["status"];
        let result = match (status["code"].as_i64(), status["signal"].as_i64()) {
            (Some(code), _) => Some(format!("exit {code}")),
            (_, Some(signal)) => Some(format!("signal {signal}")),
            _ => text("reason"),
        };
        Entry::Other {
            time: text("time"),
            run: text("run"),
            event,
            contexts,
            launch,
            caller,
            result,
            duration_ms: value["duration_ms"].as_u64(),
        }
    }

    fn time(&self) -> Option<&str> {
        match self {
            Entry::Known(l) => l.time.as_deref(),
            Entry::Other { time, .. } => time.as_deref(),
        }
    }

    fn run(&self) -> Option<&str> {
        match self {
            Entry::Known(l) => l.run.as_deref(),
            Entry::Other { run, .. } => run.as_deref(),
        }
    }

    fn launch(&self) -> Option<u64> {
        match self {
            Entry::Known(l) => l.event.launch(),
            Entry::Other { launch, .. } => *launch,
        }
    }

    fn contexts(&self) -> Vec<&str> {
        match self {
            Entry::Known(l) => l.event.contexts(),
            Entry::Other { contexts, .. } => contexts.iter().map(String::as_str).collect(),
        }
    }
}

impl Filter {
    pub fn matches(&self, entry: &Entry) -> bool {
        if let Some(since) = &self.since {
            match entry.time() {
                Some(t) if t >= since.as_str() => {}
                _ => return false,
            }
        }
        if let Some(id) = self.launch {
            if entry.launch() != Some(id) {
                return false;
            }
        }
        if let Some(run) = &self.run {
            if !entry.run().is_some_and(|r| r.starts_with(run.as_str())) {
                return false;
            }
        }
        if let Some(name) = &self.context {
            if !entry.contexts().contains(&name.as_str()) {
                return false;
            }
        }
        true
    }
}

/// A broker run's id and the time of its first line in the log.
type RunSeen = (String, String);

/// The broker runs whose lines in `paths` (oldest file first) hold launch `id`, oldest
/// first, each with the time of its first line; and every run seen.
fn runs_with_launch(paths: &[PathBuf], id: u64) -> Result<(Vec<RunSeen>, HashSet<String>), Error> {
    let mut with: Vec<RunSeen> = Vec::new();
    let mut first_seen: Vec<RunSeen> = Vec::new();
    let mut seen = HashSet::new();
    for path in paths {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_error(path, e)),
        };
        for line in String::from_utf8_lossy(&text).lines() {
            let Some(entry) = Entry::parse(line) else {
                continue;
            };
            let Some(run) = entry.run() else { continue };
            if seen.insert(run.to_string()) {
                first_seen.push((run.to_string(), entry.time().unwrap_or("?").to_string()));
            }
            if entry.launch() == Some(id) {
                with.retain(|(r, _)| r != run);
                let started = first_seen
                    .iter()
                    .find(|(r, _)| r == run)
                    .map_or("?", |(_, t)| t.as_str());
                with.push((run.to_string(), started.to_string()));
            }
        }
    }
    Ok((with, seen))
}

/// Says which run `--launch` shows when other runs had a launch of that id too.
fn note_other_runs(id: u64, runs: &[RunSeen]) {
    let Some(((newest, started), older)) = runs.split_last() else {
        return;
    };
    if older.is_empty() {
        return;
    }
    let older = older
        .iter()
        .rev()
        .map(|(r, t)| format!("{} (from {t})", escape::text(r)))
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!(
        "ctx: launch {id} of broker run {} (from {started}); earlier runs with a launch {id}: \
         {older}; see one with --run ID",
        escape::text(newest)
    );
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
    super::table::line(cells, &WIDTHS)
}

/// One event as table cells; fields an event lacks show as `-`. Every cell is escaped
/// ([`escape`]): argv, context names, paths and messages come from callers and routed
/// processes, and a raw newline or `ESC[` would forge rows or drive root's terminal.
pub fn row(entry: &Entry) -> [String; 7] {
    let time = entry
        .time()
        .map(|t| {
            escape::text(t)
                .replacen('T', " ", 1)
                .chars()
                .take(19)
                .collect()
        })
        .unwrap_or_else(|| "-".into());
    let mut contexts = entry.contexts();
    contexts.dedup();
    let context = Some(escape::text(&contexts.join(",")).into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into());
    let line = match entry {
        Entry::Known(line) => line,
        // A newer broker's event, or a cut one: what its fields' names tell.
        Entry::Other {
            event,
            caller,
            result,
            duration_ms,
            ..
        } => {
            let shown = |t: &Option<String>| {
                t.as_deref()
                    .map_or_else(|| "-".to_string(), |t| escape::text(t).into_owned())
            };
            let event = escape::text(event).into_owned();
            let duration = duration_ms.map_or_else(|| "-".into(), format_duration);
            return [
                time,
                event,
                context,
                shown(caller),
                shown(result),
                duration,
                "-".into(),
            ];
        }
    };
    let event = line.event.name().to_string();
    let e = &line.event;
    if let AuditEvent::Egress { .. } = e {
        return egress_row(e, time, event, context);
    }
    let caller = match e {
        AuditEvent::Exec { caller, .. }
        | AuditEvent::ExecFailed { caller, .. }
        | AuditEvent::Refused { caller, .. }
        | AuditEvent::Kill { caller, .. }
        | AuditEvent::Reload {
            caller: Requester::Peer(caller),
            ..
        } => format!("uid {} pid {}", caller.uid, caller.pid),
        AuditEvent::Reload {
            caller: Requester::Signal(name),
            ..
        } => escape::text(name).into_owned(),
        // The routed process that tried.
        AuditEvent::ExecDenied { uid, pid, .. } => format!("uid {uid} pid {pid}"),
        // Whose refusals were left out.
        AuditEvent::RefusalsSuppressed { uid, .. } | AuditEvent::EgressSuppressed { uid, .. } => {
            format!("uid {uid}")
        }
        AuditEvent::Egress { .. } => "-".into(),
    };
    let result = escape::text(&result(e)).into_owned();
    let duration = match e {
        AuditEvent::Exec { duration_ms, .. } | AuditEvent::ExecFailed { duration_ms, .. } => {
            format_duration(*duration_ms)
        }
        _ => "-".into(),
    };
    let command = match e {
        AuditEvent::Exec { argv, .. }
        | AuditEvent::ExecFailed { argv, .. }
        | AuditEvent::Refused {
            argv: Some(argv), ..
        } => command(argv),
        // What it tried to run.
        AuditEvent::ExecDenied { path, .. } => path.shown(),
        _ => "-".into(),
    };
    [time, event, context, caller, result, duration, command]
}

/// An egress attempt: the launch it belongs to in the CALLER column (`launch ?` when the
/// client did not name one of its context's launches), the destination and the bytes
/// each way in the last.
fn egress_row(e: &AuditEvent, time: String, event: String, context: String) -> [String; 7] {
    let AuditEvent::Egress {
        launch,
        via,
        name,
        port,
        allowed,
        reason,
        error,
        bytes_up,
        bytes_down,
        duration_ms,
        ..
    } = e
    else {
        return [
            time,
            event,
            context,
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ];
    };
    let caller = match launch {
        Some(id) => format!("launch {id}"),
        None => "launch ?".into(),
    };
    let result = match (allowed, error, reason) {
        (true, None, _) => "allowed".to_string(),
        (true, Some(err), _) => format!("allowed, failed: {err}"),
        (false, _, Some(reason)) => format!("denied: {reason}"),
        (false, _, None) => "denied".into(),
    };
    let mut target = format!("{}:{port} via {}", name.shown(), escape::text(via));
    if *allowed {
        target.push_str(&format!(" ({bytes_up} B up, {bytes_down} B down)"));
    }
    [
        time,
        event,
        context,
        caller,
        escape::text(&result).into_owned(),
        format_duration(*duration_ms),
        target,
    ]
}

/// The argv cell: each argument escaped, from its exact bytes where the log kept them
/// (`argv_escaped`, when one was not UTF-8), then what the broker cut.
fn command(argv: &crate::audit_event::Argv) -> String {
    let mut out = argv
        .shown()
        .iter()
        .map(|shown| escape::word(shown).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    if argv.argv_truncated {
        let digest = argv
            .argv_sha256
            .as_deref()
            .map(|d| format!(", sha256 {}", escape::text(d)))
            .unwrap_or_default();
        let count = |n: Option<u64>| n.map_or_else(|| "?".into(), |n| n.to_string());
        out.push_str(&format!(
            " ... [argv cut: {} arguments, {} bytes{digest}]",
            count(argv.argc),
            count(argv.argv_bytes)
        ));
    }
    out
}

fn result(e: &AuditEvent) -> String {
    match e {
        AuditEvent::Exec {
            status, timed_out, ..
        } => {
            let mut out = match status {
                Status::Exited { code } => format!("exit {code}"),
                Status::Signaled { signal, .. } => format!("signal {signal}"),
            };
            if *timed_out {
                out.push_str(" (timeout)");
            }
            out
        }
        AuditEvent::ExecFailed { kind, errno, .. } => format!("{kind} {errno}"),
        AuditEvent::Refused { reason, .. } | AuditEvent::ExecDenied { reason, .. } => {
            reason.clone()
        }
        AuditEvent::Reload { ok, .. } => if *ok { "ok" } else { "refused" }.to_string(),
        AuditEvent::Kill { signal, .. } => format!("sent signal {signal}"),
        AuditEvent::RefusalsSuppressed { count, bytes, .. } => {
            format!("{count} refusal(s) not logged ({bytes} bytes)")
        }
        AuditEvent::EgressSuppressed {
            count,
            bytes_up,
            bytes_down,
            ..
        } => format!(
            "{count} allowed egress attempt(s) not logged one by one ({bytes_up} bytes up, \
             {bytes_down} down)"
        ),
        AuditEvent::Egress { .. } => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CALLER: &str = r#"{ "pid": 42, "uid": 1000, "gid": 1000, "context": null }"#;

    fn entry(v: Value) -> Entry {
        Entry::parse(&v.to_string()).unwrap()
    }

    fn caller() -> Value {
        serde_json::from_str(CALLER).unwrap()
    }

    fn isolation() -> Value {
        json!({ "pid_namespace": false, "network_none": false, "egress": false,
                "landlock": false, "signals_scoped": false, "enforce": false,
                "exec_guard": false })
    }

    fn exec_event(id: u64, run: &str) -> Value {
        json!({
            "event": "exec", "time": "2026-05-01T12:30:00.123Z", "run": run, "context": "user",
            "id": id, "pid": 7, "caller": caller(), "tty": false, "isolation": isolation(),
            "cwd": "/", "caller_disconnected": false,
            "argv": ["sleep", "1"], "status": { "code": 3 }, "timed_out": false,
            "duration_ms": 1500,
        })
    }

    #[test]
    fn rows_name_every_field() {
        let r = row(&entry(exec_event(1, "r1")));
        assert!(matches!(entry(exec_event(1, "r1")), Entry::Known(_)));
        assert_eq!(r[0], "2026-05-01 12:30:00");
        assert_eq!(r[1], "exec");
        assert_eq!(r[2], "user");
        assert_eq!(r[3], "uid 1000 pid 42");
        assert_eq!(r[4], "exit 3");
        assert_eq!(r[5], "1s500ms");
        assert_eq!(r[6], "sleep 1");
        let refused = json!({ "event": "refused", "reason": "not allowed", "context": "x",
                              "caller": caller() });
        assert_eq!(row(&entry(refused))[4], "not allowed");
        let kill = json!({ "event": "kill", "contexts": ["a", "a"], "signal": 15, "ids": [1, 2],
                           "cgroup_processes": 0, "caller": caller() });
        assert_eq!(row(&entry(kill.clone()))[2], "a");
        assert_eq!(row(&entry(kill))[4], "sent signal 15");
        let denied = json!({
            "event": "exec_denied", "context": "agent", "uid": 1002, "pid": 77,
            "path": "/bin/true", "reason": "enforce: exec bypassing the interposer",
            "errno": "EACCES", "target": null, "program": "/usr/bin/sh",
        });
        let r = row(&entry(denied));
        assert_eq!(r[3], "uid 1002 pid 77");
        assert_eq!(r[4], "enforce: exec bypassing the interposer");
        assert_eq!(r[6], "/bin/true");
        let sighup = json!({ "event": "reload", "ok": false, "config": "/etc/ctx/contexts.toml",
                             "error": "bad", "caller": "SIGHUP" });
        let r = row(&entry(sighup));
        assert_eq!((r[3].as_str(), r[4].as_str()), ("SIGHUP", "refused"));
        // A reload that took names the contexts it put in force, and is found by them.
        let reloaded = json!({ "event": "reload", "ok": true, "config": "/etc/ctx/contexts.toml",
                               "contexts": ["a", "b"], "caller": "SIGHUP" });
        let e = entry(reloaded);
        assert_eq!(row(&e)[2], "a,b");
        let by_b = Filter {
            context: Some("b".into()),
            ..Filter::default()
        };
        assert!(by_b.matches(&e));
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
        let r = row(&entry(forged));
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
        let denied = json!({
            "event": "exec_denied", "path": "\u{fffd}", "path_escaped": "/tmp/\\xff",
            "context": "a", "uid": 1, "pid": 2, "target": null, "program": "p", "reason": "r",
            "errno": "EACCES",
        });
        assert_eq!(row(&entry(denied))[6], "/tmp/\\xff");
        let summary =
            json!({ "event": "refusals_suppressed", "uid": 1001, "count": 7, "bytes": 700 });
        let r = row(&entry(summary));
        assert_eq!(r[3], "uid 1001");
        assert_eq!(r[4], "7 refusal(s) not logged (700 bytes)");
    }

    /// A newer broker's event, or a known one whose fields this `ctx` cannot read, still
    /// shows (and filters) by what every line has.
    #[test]
    fn unknown_events_do_not_break_the_log() {
        let future = json!({ "event": "snapshot\u{1b}[2J", "time": "2026-05-01T12:30:00.000Z",
                             "context": "user", "run": "r9", "whatever": [1, 2] });
        let e = entry(future);
        assert!(matches!(e, Entry::Other { .. }), "{e:?}");
        let r = row(&e);
        assert_eq!(r[1], "snapshot\\x1b[2J");
        assert_eq!(r[2], "user");
        assert_eq!(r[6], "-");
        let by = Filter {
            context: Some("user".into()),
            run: Some("r9".into()),
            ..Filter::default()
        };
        assert!(by.matches(&e));
        let by_launch = Filter {
            launch: Some(1),
            ..Filter::default()
        };
        assert!(!by_launch.matches(&e));
        // A cut (oversized) exec line is read by name: its launch, context, caller, result.
        let mut cut = exec_event(1, "r1");
        cut["argv"] = json!({ "omitted_bytes": 70000 });
        let cut = entry(cut);
        assert!(matches!(cut, Entry::Other { .. }));
        assert!(by_launch.matches(&cut));
        let r = row(&cut);
        assert_eq!(r[2], "user");
        assert!(r[3].starts_with("uid "), "{r:?}");
        assert_ne!(r[4], "-", "{r:?}");
        assert!(Entry::parse("not json").is_none());
    }

    #[test]
    fn filters_by_context_time_and_run() {
        let e = entry(exec_event(1, "00aa11bb22cc33dd"));
        assert!(Filter::default().matches(&e));
        let by = |context: Option<&str>, since: Option<&str>| Filter {
            context: context.map(str::to_string),
            since: since.map(str::to_string),
            ..Filter::default()
        };
        assert!(by(Some("user"), None).matches(&e));
        assert!(!by(Some("other"), None).matches(&e));
        assert!(by(None, Some("2026-05-01")).matches(&e));
        assert!(by(None, Some("2026-05-01T12:30:00")).matches(&e));
        assert!(!by(None, Some("2026-05-01T12:31")).matches(&e));
        assert!(!by(None, Some("2026-05-02")).matches(&e));
        let run = |id: &str| Filter {
            run: Some(id.into()),
            ..Filter::default()
        };
        assert!(run("00aa11bb22cc33dd").matches(&e));
        assert!(run("00aa").matches(&e), "the start of an id names it");
        assert!(!run("11bb").matches(&e));
    }

    #[test]
    fn launch_picks_the_newest_run_that_had_it() {
        let dir = std::env::temp_dir().join(format!("ctx-log-runs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let lines = [
            exec_event(1, "aaaa"),
            exec_event(2, "aaaa"),
            exec_event(1, "bbbb"),
            exec_event(3, "cccc"),
        ];
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let (runs, seen) = runs_with_launch(&[dir.join("absent"), path.clone()], 1).unwrap();
        let ids: Vec<&str> = runs.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(ids, ["aaaa", "bbbb"]);
        assert_eq!(seen.len(), 3);
        let (runs, _) = runs_with_launch(&[path], 2).unwrap();
        assert_eq!(runs.last().unwrap().0, "aaaa");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn egress_rows_name_their_launch() {
        let allowed = json!({
            "event": "egress", "time": "2026-05-01T12:30:00.123Z", "context": "build",
            "launch": 42, "via": "connect", "name": "pypi.org", "port": 443, "allowed": true,
            "bytes_up": 517, "bytes_down": 6100, "duration_ms": 1200,
        });
        let r = row(&entry(allowed.clone()));
        assert_eq!(r[1], "egress");
        assert_eq!(r[2], "build");
        assert_eq!(r[3], "launch 42");
        assert_eq!(r[4], "allowed");
        assert_eq!(r[5], "1s200ms");
        assert_eq!(r[6], "pypi.org:443 via connect (517 B up, 6100 B down)");
        let denied = json!({
            "event": "egress", "context": "build", "launch": null, "name": "evil\u{1b}[2J",
            "port": 80, "allowed": false, "reason": "not in the allow list", "via": "http",
            "bytes_up": 0, "bytes_down": 0, "duration_ms": 0,
        });
        let r = row(&entry(denied.clone()));
        assert_eq!(r[3], "launch ?");
        assert_eq!(r[4], "denied: not in the allow list");
        assert!(!r[6].contains('\u{1b}'), "{}", r[6]);
        let by_launch = Filter {
            launch: Some(42),
            ..Filter::default()
        };
        assert!(by_launch.matches(&entry(allowed)));
        assert!(!by_launch.matches(&entry(denied)));
        assert!(by_launch.matches(&entry(exec_event(42, "r"))));
        assert!(!by_launch.matches(&entry(exec_event(4, "r"))));
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
