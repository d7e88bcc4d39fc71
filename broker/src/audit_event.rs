//! One line of the audit log, as a type: the broker writes an [`AuditEvent`] (see
//! `daemon::audit` for how it bounds and appends it) and `ctx log` reads it back as a
//! [`Line`]. Both ends use these types, so a field cannot be renamed on one side only.
//!
//! The JSON is the contract that scripts and tests grep (`"event":"exec"`, `argv`,
//! `argv_escaped`, `status`, egress `name`/`port`/`allowed`/`bytes_up`...): field names are
//! the serde names below and stay as they are; new fields are added, never renamed. Text a
//! caller chose keeps its exact bytes beside the lossy text (`KEY_escaped`, see
//! [`crate::escape`]) and its whole size when it was cut (`KEY_bytes`).

use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// What happened, one variant per value of the line's `event` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A routed launch ended (or its caller went away and it was ended).
    Exec {
        /// The launch's id: `ctx ps`, `ctx kill`, the egress lines' `launch`.
        id: u64,
        pid: i32,
        caller: Caller,
        context: String,
        tty: bool,
        isolation: IsolationInForce,
        status: Status,
        timed_out: bool,
        caller_disconnected: bool,
        duration_ms: u64,
        #[serde(flatten)]
        cwd: Cwd,
        /// `false` when the caller's cwd name does not lead, here, to the directory the
        /// launch got (it was named in another mount namespace, or could not be looked up
        /// without waiting on its filesystem); `cwd_id` names that directory then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd_verified: Option<bool>,
        /// `dev:ino` of the directory the launch ran in, when its name is unverified.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd_id: Option<String>,
        #[serde(flatten)]
        argv: Argv,
    },
    /// A launch that never ran its program: the classified failure of its spawn.
    ExecFailed {
        caller: Caller,
        context: String,
        /// The failure's kind as the protocol names it (`NotFound`, `BadCwd`...).
        kind: String,
        stage: String,
        errno: String,
        duration_ms: u64,
        #[serde(flatten)]
        message: Message,
        #[serde(flatten)]
        argv: Argv,
    },
    /// A request the broker refused: a launch into an unknown or forbidden context, a
    /// reload by a non-operator, a kill of another uid's processes.
    Refused {
        reason: String,
        caller: Caller,
        /// The context named (as the caller sent it, when no such context exists).
        #[serde(flatten)]
        context: Option<ContextName>,
        #[serde(flatten)]
        argv: Option<Argv>,
        /// The launches a refused kill named.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ids: Option<Vec<u64>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    /// Refusals of one uid left out of the log (over its share), counted.
    RefusalsSuppressed {
        uid: u32,
        /// Lines left out.
        count: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// Allowed egress attempts of one context left out of the log (its uid over its share),
    /// summed.
    EgressSuppressed {
        context: String,
        uid: u32,
        /// Attempts left out.
        count: u64,
        /// What they carried, to and from their destinations.
        bytes_up: u64,
        bytes_down: u64,
        /// The bytes of log their lines would have taken.
        bytes: u64,
    },
    /// A reload of the configuration, taken (`ok`) or refused (`error`).
    Reload {
        ok: bool,
        config: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contexts: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        caller: Requester,
    },
    /// A signal sent by `ctx kill`.
    Kill {
        caller: Caller,
        ids: Vec<u64>,
        /// The context of each launch signalled (or the one whose cgroup was).
        contexts: Vec<String>,
        /// Processes of the context's cgroup signalled outside the launches' groups.
        cgroup_processes: u64,
        signal: i32,
    },
    /// One connection (or attempt) through a context's egress proxy.
    Egress {
        context: String,
        /// The launch whose credentials the client gave (null: none of this context's).
        launch: Option<u64>,
        /// `connect`, `http` or `socks5`.
        via: String,
        #[serde(flatten)]
        name: HostName,
        port: u16,
        allowed: bool,
        /// Why it was denied.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Why an allowed attempt did not connect.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The address it connected to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
        bytes_up: u64,
        bytes_down: u64,
        duration_ms: u64,
    },
    /// An exec inside an `enforce` context that bypassed the interposer, denied.
    ExecDenied {
        context: String,
        uid: u32,
        /// The process that tried, in the broker's PID namespace.
        pid: u32,
        #[serde(flatten)]
        path: ExecPath,
        /// What `path` resolved to, when it could be resolved.
        target: Option<String>,
        program: String,
        reason: String,
        errno: String,
        /// Denials of the same launch left out before this one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        suppressed: Option<u64>,
    },
}

/// A line as `ctx log` reads it: the event and what the writer stamps on every line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// UTC, fixed width (`2026-11-22T07:51:59.123Z`): these strings sort as times.
    #[serde(default)]
    pub time: Option<String>,
    /// The broker run that wrote it (absent in lines of brokers before runs were named).
    #[serde(default)]
    pub run: Option<String>,
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// Who asked: the peer as pinned at connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// The context the caller runs in (null: none).
    #[serde(default)]
    pub context: Option<String>,
    /// The context whose cgroup holds a caller whose ancestry names none.
    #[serde(default)]
    pub cgroup_context: Option<String>,
    /// A uid-0 caller with an empty capability bounding set or in another user namespace:
    /// a process the broker started, in some context even when neither of the above says
    /// which.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confined_root: bool,
}

/// Who asked for a reload: a peer, or a signal (`"SIGHUP"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Requester {
    Peer(Caller),
    Signal(String),
}

/// How a launch ended: `{"code": 3}` or `{"signal": 9, "core": false}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Status {
    Exited { code: i32 },
    Signaled { signal: i32, core: bool },
}

/// The isolation a launch actually ran under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationInForce {
    pub pid_namespace: bool,
    pub network_none: bool,
    pub egress: bool,
    pub landlock: bool,
    pub signals_scoped: bool,
    pub enforce: bool,
    pub exec_guard: bool,
}

/// A caller's argv as logged: the (possibly cut) text, the exact bytes where an argument
/// is not UTF-8, and, when it was cut, what identifies the whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Argv {
    pub argv: Vec<String>,
    /// Each kept argument in [`crate::escape`] form, present when one is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv_escaped: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub argv_truncated: bool,
    /// The whole argv's count, size (without NULs) and SHA-256, when it was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argc: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv_sha256: Option<String>,
}

/// Bytes a caller chose, bounded and lossless: what every [`lossless_field`] holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lossless {
    /// The kept bytes as text (U+FFFD where they are not UTF-8).
    pub text: String,
    /// The kept bytes in [`crate::escape`] form, when they are not UTF-8.
    pub escaped: Option<String>,
    /// The whole size, when the text was cut.
    pub bytes: Option<u64>,
}

/// A [`Lossless`] under its own field names (`KEY`, `KEY_escaped`, `KEY_bytes`), flattened
/// into the event that carries it.
macro_rules! lossless_field {
    ($(#[$doc:meta])* $name:ident, $key:literal, $escaped:literal, $bytes:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            #[serde(rename = $key)]
            pub text: String,
            #[serde(rename = $escaped, default, skip_serializing_if = "Option::is_none")]
            pub escaped: Option<String>,
            #[serde(rename = $bytes, default, skip_serializing_if = "Option::is_none")]
            pub bytes: Option<u64>,
        }

        impl From<Lossless> for $name {
            fn from(l: Lossless) -> Self {
                $name {
                    text: l.text,
                    escaped: l.escaped,
                    bytes: l.bytes,
                }
            }
        }

        impl From<String> for $name {
            /// Text that is the broker's own (a configured name): whole and UTF-8.
            fn from(text: String) -> Self {
                $name {
                    text,
                    escaped: None,
                    bytes: None,
                }
            }
        }

        impl $name {
            /// The text for a terminal, from its exact bytes where the log kept them.
            pub fn shown(&self) -> String {
                shown(&self.text, self.escaped.as_deref())
            }
        }
    };
}

lossless_field!(
    /// The cwd a launch ran in.
    Cwd, "cwd", "cwd_escaped", "cwd_bytes"
);
lossless_field!(
    /// A failure's message (it may quote the caller's cwd or program).
    Message, "message", "message_escaped", "message_bytes"
);
lossless_field!(
    /// The host an egress client asked for, as it sent it.
    HostName, "name", "name_escaped", "name_bytes"
);
lossless_field!(
    /// The path a denied exec gave.
    ExecPath, "path", "path_escaped", "path_bytes"
);
lossless_field!(
    /// A context name, as a caller sent it.
    ContextName, "context", "context_escaped", "context_bytes"
);

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl AuditEvent {
    /// The value of the line's `event` field.
    pub fn name(&self) -> &'static str {
        match self {
            AuditEvent::Exec { .. } => "exec",
            AuditEvent::ExecFailed { .. } => "exec_failed",
            AuditEvent::Refused { .. } => "refused",
            AuditEvent::RefusalsSuppressed { .. } => "refusals_suppressed",
            AuditEvent::Reload { .. } => "reload",
            AuditEvent::Kill { .. } => "kill",
            AuditEvent::Egress { .. } => "egress",
            AuditEvent::EgressSuppressed { .. } => "egress_suppressed",
            AuditEvent::ExecDenied { .. } => "exec_denied",
        }
    }

    /// The launch the event belongs to: an `exec` line's id, an egress line's `launch`.
    pub fn launch(&self) -> Option<u64> {
        match self {
            AuditEvent::Exec { id, .. } => Some(*id),
            AuditEvent::Egress { launch, .. } => *launch,
            _ => None,
        }
    }

    /// The contexts the event is about, as logged (a kill may list one several times).
    pub fn contexts(&self) -> Vec<&str> {
        match self {
            AuditEvent::Exec { context, .. }
            | AuditEvent::ExecFailed { context, .. }
            | AuditEvent::Egress { context, .. }
            | AuditEvent::EgressSuppressed { context, .. }
            | AuditEvent::ExecDenied { context, .. } => vec![context.as_str()],
            AuditEvent::Refused { context, .. } => {
                context.iter().map(|c| c.text.as_str()).collect()
            }
            AuditEvent::Kill { contexts, .. } => contexts.iter().map(String::as_str).collect(),
            AuditEvent::Reload { contexts, .. } => {
                contexts.iter().flatten().map(String::as_str).collect()
            }
            AuditEvent::RefusalsSuppressed { .. } => Vec::new(),
        }
    }
}

impl Argv {
    /// The arguments for a terminal, each from its exact bytes where the log kept them.
    pub fn shown(&self) -> Vec<String> {
        self.argv
            .iter()
            .enumerate()
            .map(|(i, arg)| {
                let exact = self
                    .argv_escaped
                    .as_ref()
                    .and_then(|a| a.get(i))
                    .map(String::as_str);
                shown(arg, exact)
            })
            .collect()
    }
}

impl From<ctx_protocol::ExitStatus> for Status {
    fn from(status: ctx_protocol::ExitStatus) -> Self {
        match status {
            ctx_protocol::ExitStatus::Code(code) => Status::Exited { code },
            ctx_protocol::ExitStatus::Signaled { signal, core } => {
                Status::Signaled { signal, core }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

fn is_false(b: &bool) -> bool {
    !*b
}

/// `text` escaped for a terminal, from `escaped` (its exact bytes) when that parses.
fn shown(text: &str, escaped: Option<&str>) -> String {
    match escaped.and_then(crate::escape::unescape) {
        Some(bytes) => crate::escape::bytes(&bytes),
        None => crate::escape::text(text).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn caller() -> Caller {
        Caller {
            pid: 42,
            uid: 1000,
            gid: 1000,
            context: None,
            cgroup_context: None,
            confined_root: false,
        }
    }

    /// The field names are what scripts grep: pinned here against the JSON the broker
    /// wrote before the events were typed.
    #[test]
    fn events_keep_their_field_names() {
        let refused = AuditEvent::Refused {
            reason: "unknown context".into(),
            caller: caller(),
            context: Some(ContextName {
                text: "\u{fffd}".into(),
                escaped: Some("\\xff".into()),
                bytes: None,
            }),
            argv: Some(Argv {
                argv: vec!["ls".into()],
                ..Argv::default()
            }),
            ids: None,
            signal: None,
        };
        assert_eq!(
            serde_json::to_value(&refused).unwrap(),
            json!({
                "event": "refused", "reason": "unknown context",
                "caller": { "pid": 42, "uid": 1000, "gid": 1000, "context": null,
                            "cgroup_context": null },
                "context": "\u{fffd}", "context_escaped": "\\xff", "argv": ["ls"],
            })
        );
        let egress = AuditEvent::Egress {
            context: "eg".into(),
            launch: None,
            via: "connect".into(),
            name: "pypi.org".to_string().into(),
            port: 443,
            allowed: true,
            reason: None,
            error: None,
            address: Some("192.0.2.1:443".into()),
            bytes_up: 1,
            bytes_down: 2,
            duration_ms: 3,
        };
        assert_eq!(
            serde_json::to_value(&egress).unwrap(),
            json!({
                "event": "egress", "context": "eg", "launch": null, "via": "connect",
                "name": "pypi.org", "port": 443, "allowed": true, "address": "192.0.2.1:443",
                "bytes_up": 1, "bytes_down": 2, "duration_ms": 3,
            })
        );
        let status: Value =
            serde_json::to_value(Status::from(ctx_protocol::ExitStatus::Signaled {
                signal: 9,
                core: false,
            }))
            .unwrap();
        assert_eq!(status, json!({ "signal": 9, "core": false }));
    }

    #[test]
    fn lines_read_back_with_their_stamp() {
        let text = r#"{"event":"reload","ok":true,"config":"/etc/ctx/contexts.toml","contexts":["a"],"caller":"SIGHUP","time":"2026-05-01T12:00:00.000Z","run":"00ff00ff00ff00ff"}"#;
        let line: Line = serde_json::from_str(text).unwrap();
        assert_eq!(line.run.as_deref(), Some("00ff00ff00ff00ff"));
        assert!(matches!(
            line.event,
            AuditEvent::Reload { caller: Requester::Signal(ref s), .. } if s == "SIGHUP"
        ));
        // A refusal without argv or context (an operator request) reads as such.
        let text = r#"{"event":"refused","reason":"reload needs root","caller":{"pid":1,"uid":2,"gid":2}}"#;
        let line: Line = serde_json::from_str(text).unwrap();
        assert!(line.run.is_none());
        assert!(matches!(
            line.event,
            AuditEvent::Refused {
                context: None,
                argv: None,
                ..
            }
        ));
        // An event this version does not know is an error the reader can step around.
        assert!(serde_json::from_str::<Line>(r#"{"event":"future","x":1}"#).is_err());
    }
}
