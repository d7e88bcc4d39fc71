//! `ctx status`: what the broker is, what it is doing, and which of its promises it cannot
//! keep here (its warnings). Exits 0 as soon as the broker answers, which is what scripts
//! poll to wait for readiness.

use std::path::Path;

use clap::Args;
use ctx_protocol::{IsolationLine, Reply, Request, StatusReport};

use super::connection::unexpected;
use super::duration::format_duration;
use super::error::Error;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(socket: &Path, args: StatusArgs) -> Result<i32, Error> {
    let report = match super::one_shot(socket, &Request::Status)? {
        (_, Reply::Status(report)) => report,
        (socket, other) => return Err(unexpected(&socket, other)),
    };
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&json(&report))
            .map_err(|e| Error::io("rendering the status as JSON", std::io::Error::other(e)))?;
        s.push('\n');
        crate::escape::json(&s).into_owned()
    } else {
        render(&report)
    };
    super::print(text.as_bytes());
    Ok(0)
}

/// The report as JSON, with each context's isolation also as an object:
/// `"isolation_by_context": [{"context", "in_force": [..], "not_in_force": [..]}]`.
pub fn json(r: &StatusReport) -> serde_json::Value {
    let mut value = serde_json::to_value(r).unwrap_or_default();
    let by_context: Vec<IsolationLine> = r
        .isolation
        .iter()
        .filter_map(|l| IsolationLine::parse(l))
        .collect();
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "isolation_by_context".into(),
            serde_json::to_value(by_context).unwrap_or_default(),
        );
    }
    value
}

pub fn render(r: &StatusReport) -> String {
    let mut lines = vec![
        (
            "broker:",
            format!("{} (pid {}, uid {})", r.software, r.pid, r.uid),
        ),
        ("socket:", r.socket_path.clone()),
        ("config:", r.config_path.clone()),
        ("audit log:", r.audit_log.clone()),
        (
            "uptime:",
            format_duration((r.uptime_ms / 1000).max(1) * 1000),
        ),
        ("running:", r.running.to_string()),
        ("launches:", r.launches.to_string()),
        (
            "contexts:",
            if r.contexts.is_empty() {
                "(none)".to_string()
            } else {
                r.contexts.join(", ")
            },
        ),
    ];
    lines.extend(r.isolation.iter().map(|i| ("isolation:", i.clone())));
    lines.extend(r.warnings.iter().map(|w| ("warning:", w.clone())));
    // Warnings quote names and paths from the config and the system.
    let rows: Vec<Vec<String>> = lines
        .into_iter()
        .map(|(label, value)| vec![label.into(), crate::escape::text(&value).into_owned()])
        .collect();
    super::table::aligned(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_field_and_warning() {
        let r = StatusReport {
            software: "ctx-broker 0.1.0".into(),
            pid: 42,
            uid: 1000,
            config_path: "/etc/ctx/contexts.toml".into(),
            socket_path: "/run/ctx/broker.sock".into(),
            audit_log: "/var/log/ctx/audit.jsonl".into(),
            uptime_ms: 3_723_456,
            running: 2,
            launches: 17,
            contexts: vec!["platform".into(), "user".into()],
            warnings: vec!["not root: contexts must use uid 1000".into()],
            isolation: vec!["user: pid namespace, network none".into()],
        };
        let text = render(&r);
        let v = json(&r);
        assert_eq!(
            v["isolation_by_context"][0]["in_force"][1],
            serde_json::json!("network none")
        );
        for needle in [
            "ctx-broker 0.1.0 (pid 42, uid 1000)",
            "/run/ctx/broker.sock",
            "/etc/ctx/contexts.toml",
            "/var/log/ctx/audit.jsonl",
            "uptime:     1h2m3s",
            "running:    2",
            "launches:   17",
            "platform, user",
            "warning:    not root: contexts must use uid 1000",
            "isolation:  user: pid namespace, network none",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
    }
}
