//! Loader tests: every refusal names the file, the line and the key; secrets never show.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;

const FILE: &str = "/etc/ctx/contexts.toml";

/// A kernel that enforces every Landlock option: the tests' warnings do not depend on the
/// kernel they run on.
const LANDLOCK_ABI: i32 = 6;

// ---------- Helpers ----------

fn ok(text: &str) -> Config {
    match load_str(text, Path::new(FILE), LANDLOCK_ABI) {
        Ok(config) => config,
        Err(e) => panic!("expected the config to load, got: {e}"),
    }
}

fn fails(text: &str) -> ConfigError {
    match load_str(text, Path::new(FILE), LANDLOCK_ABI) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

/// Asserts the error's Display starts with `FILE:line:` and names `key` and `reason`.
fn assert_refused(text: &str, line: usize, key: &str, reason: &str) -> String {
    let shown = fails(text).to_string();
    let prefix = format!("{FILE}:{line}:");
    assert!(
        shown.starts_with(&prefix),
        "expected {prefix:?} in {shown:?}"
    );
    assert!(
        shown.contains(&format!(" {key}: ")),
        "expected key {key:?} in {shown:?}"
    );
    assert!(shown.contains(reason), "expected {reason:?} in {shown:?}");
    shown
}

fn ctx<'a>(config: &'a Config, name: &str) -> &'a Context {
    match config.contexts.get(name) {
        Some(c) => c,
        None => panic!("no context {name}"),
    }
}

fn env_of<'a>(context: &'a Context, key: &str) -> Option<&'a str> {
    context
        .env
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A private directory for env files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ctx-config-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn file(&self, name: &str, text: &str, mode: u32) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------- The README's example ----------

#[test]
fn spec_example_parses() {
    let dir = TempDir::new();
    let env_file = dir.file(
        "platform.env",
        "# platform secrets\nDB_URL=postgres://x\n",
        0o600,
    );
    let text = format!(
        r#"
[broker]
socket = "/run/ctx/broker.sock"
socket_mode = "0660"
socket_group = "root"                 # optional
state_dir = "/var/lib/ctx"
audit_log = "/var/log/ctx/audit.jsonl"
reserved_ports = [8080, 8888]

[contexts.platform]                   # where the agent itself runs
user = "root"                         # name, uid, or "uid:gid"
env = {{ ANTHROPIC_API_KEY = "sk-example" }}
env_files = ["{env_file}"] # KEY=VALUE lines
inherit_env = ["TERM", "LANG", "LC_*"]
cwd = "/workspace"
route_children_to = "user"
allow = {{ uids = [0] }}

[contexts.user]                       # where the agent's children run
user = "65534:65534"
env = {{ AWS_ACCESS_KEY_ID = "AKIAEXAMPLE" }}
inherit_env = ["TERM", "LANG", "LC_*", "COLUMNS", "LINES"]
cwd = "inherit"
allow = {{ uids = [0], contexts = ["platform"] }}
timeout = "10m"
rlimits = {{ nofile = 4096, nproc = 512 }}
isolation = {{ pid = true, network = "host", enforce = false }}
"#
    );
    let config = ok(&text);
    assert_eq!(config.path, PathBuf::from(FILE));
    assert_eq!(
        config.broker,
        BrokerSettings {
            socket: "/run/ctx/broker.sock".into(),
            socket_mode: 0o660,
            socket_group: Some(("root".into(), 0)),
            state_dir: "/var/lib/ctx".into(),
            audit_log: "/var/log/ctx/audit.jsonl".into(),
            reserved_ports: vec![8080, 8888],
            port_owners: Default::default(),
            audit_log_max: None,
            log_level: None,
        }
    );
    assert_eq!(config.contexts.len(), 2);

    let platform = ctx(&config, "platform");
    assert_eq!(platform.name, "platform");
    assert_eq!(platform.user.name, "root");
    assert_eq!((platform.user.uid, platform.user.gid), (0, 0));
    assert_eq!(platform.user.home, PathBuf::from("/root"));
    assert!(platform.user.groups.contains(&0));
    assert_eq!(
        platform.env,
        vec![
            ("DB_URL".to_string(), "postgres://x".to_string()),
            ("ANTHROPIC_API_KEY".to_string(), "sk-example".to_string()),
        ]
    );
    assert_eq!(platform.inherit_env, vec!["TERM", "LANG", "LC_*"]);
    assert!(platform.inherits("LC_ALL") && !platform.inherits("HOME"));
    assert_eq!(platform.cwd, CwdRule::Path("/workspace".into()));
    assert_eq!(platform.route_children_to.as_deref(), Some("user"));
    assert_eq!(platform.allow.uids, vec![0]);
    assert!(!platform.allow.is_default);
    assert_eq!(platform.timeout, None);
    assert_eq!(platform.on_broker_down, BrokerDown::Fail);
    assert_eq!(platform.isolation, Isolation::default());

    let user = ctx(&config, "user");
    assert_eq!(user.user.spec, "65534:65534");
    assert_eq!((user.user.uid, user.user.gid), (65534, 65534));
    assert_eq!(user.user.name, "nobody");
    assert_eq!(user.cwd, CwdRule::Inherit);
    assert_eq!(user.allow.contexts, vec!["platform"]);
    assert!(user.allows(1234, 1234, Some("platform"), true));
    assert!(!user.allows(1234, 1234, Some("user"), false));
    assert_eq!(user.timeout, Some(Duration::from_secs(600)));
    assert_eq!(
        user.rlimits,
        vec![
            Rlimit {
                name: "nofile",
                resource: libc::RLIMIT_NOFILE as i32,
                value: 4096
            },
            Rlimit {
                name: "nproc",
                resource: libc::RLIMIT_NPROC as i32,
                value: 512
            },
        ]
    );
    assert!(user.isolation.pid && !user.isolation.enforce);
    assert_eq!(user.isolation.network, Network::Host);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn shipped_example_parses_when_present() {
    // The repo-root example is written by another issue; check it once it exists.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contexts.toml");
    if let Ok(text) = std::fs::read_to_string(&root) {
        if let Err(e) = load_str(&text, &root, LANDLOCK_ABI) {
            // Accounts in the demo may not exist on this machine; anything else is a bug.
            assert!(
                e.reason.contains("no such user") || e.reason.contains("no such group"),
                "{e}"
            );
        }
    }
}

// ---------- Defaults ----------

#[test]
fn defaults() {
    let config = ok("[contexts.a]\nuser = \"root\"\n");
    assert_eq!(config.broker.socket, PathBuf::from("/run/ctx/broker.sock"));
    assert_eq!(config.broker.socket_mode, 0o660);
    assert_eq!(config.broker.socket_group, None);
    assert_eq!(config.broker.state_dir, PathBuf::from("/var/lib/ctx"));
    assert_eq!(
        config.broker.audit_log,
        PathBuf::from("/var/log/ctx/audit.jsonl")
    );
    assert!(config.broker.reserved_ports.is_empty());
    assert!(config.warnings.is_empty());

    let a = ctx(&config, "a");
    // No PATH here: the default is added at launch, after the caller's (if inherited).
    assert!(a.env.is_empty(), "{:?}", a.env);
    assert_eq!(a.cwd, CwdRule::Home);
    assert!(a.allow.is_default);
    assert!(a.allows(0, 0, None, false) && !a.allows(1000, 1000, None, false));
    assert!(a.rlimits.is_empty());
    assert_eq!(a.timeout, None);
    assert_eq!(a.on_broker_down, BrokerDown::Fail);
    assert!(a.inherit_env.is_empty());

    // An empty [broker] table means the same defaults.
    let empty = ok("[broker]\n[contexts.a]\nuser = \"root\"\n");
    assert_eq!(empty.broker, config.broker);
}

#[test]
fn path_in_env_is_kept() {
    let config = ok("[contexts.a]\nuser = \"root\"\nenv = { PATH = \"/opt/bin\" }\n");
    assert_eq!(
        ctx(&config, "a").env,
        vec![("PATH".to_string(), "/opt/bin".to_string())]
    );
}

// ---------- Users ----------

#[test]
fn user_forms() {
    let config = ok(concat!(
        "[contexts.name]\nuser = \"nobody\"\n",
        "[contexts.uid]\nuser = \"65534\"\n",
        "[contexts.int]\nuser = 0\n",
        "[contexts.pair]\nuser = \"0:0\"\n",
        "[contexts.override]\nuser = \"0:65534\"\n",
        "[contexts.bare]\nuser = \"4242\"\n",
        "[contexts.barepair]\nuser = \"4242:77\"\n",
    ));
    let u = |n: &str| ctx(&config, n).user.clone();

    assert_eq!((u("name").uid, u("name").name.as_str()), (65534, "nobody"));
    assert_eq!(u("uid").name, "nobody");
    assert_eq!(u("uid").spec, "65534");
    assert_eq!((u("int").uid, u("int").name.as_str()), (0, "root"));
    assert_eq!(u("pair").shell, nix_shell_of_root());
    // "uid:gid" overrides the primary group but keeps the account's name and home.
    let over = u("override");
    assert_eq!((over.uid, over.gid, over.name.as_str()), (0, 65534, "root"));
    assert_eq!(over.home, PathBuf::from("/root"));
    assert!(over.groups.contains(&65534));

    let bare = u("bare");
    assert_eq!(
        bare,
        User {
            spec: "4242".into(),
            name: "4242".into(),
            uid: 4242,
            gid: 4242,
            home: "/".into(),
            shell: "/bin/sh".into(),
            groups: vec![4242],
        }
    );
    let pair = u("barepair");
    assert_eq!(
        (pair.uid, pair.gid, pair.groups.clone()),
        (4242, 77, vec![77])
    );
}

fn nix_shell_of_root() -> PathBuf {
    match nix::unistd::User::from_uid(Uid::from_raw(0)) {
        Ok(Some(root)) => root.shell,
        _ => panic!("no passwd entry for root"),
    }
}

#[test]
fn unknown_user_names_file_line_key() {
    let text = "# ctx\n\n[contexts.user]\nuser = \"bob-does-not-exist\"\n";
    assert_eq!(
        fails(text).to_string(),
        "/etc/ctx/contexts.toml:4:8: contexts.user.user: no such user \"bob-does-not-exist\" \
         (create the account or use a numeric uid)"
    );
}

#[test]
fn bad_user_specs() {
    for (spec, reason) in [
        ("\"\"", "empty"),
        ("\"root:0\"", "give the uid as a number"),
        ("\"4294967295\"", "no change"),
        ("\"0:x\"", "the gid"),
        ("\"0:\"", "the gid"),
        ("\"99999999999\"", "not a number"),
        ("-1", "not a uid"),
        ("true", "expected a string or an integer"),
    ] {
        let text = format!("[contexts.a]\n\nuser = {spec}\n");
        assert_refused(&text, 3, "contexts.a.user", reason);
    }
}

#[test]
fn missing_user_points_at_the_table() {
    let text = "[contexts.a]\nuser = \"root\"\n\n[contexts.b]\ncwd = \"/\"\n";
    assert_refused(text, 4, "contexts.b", "missing required key `user`");
}

// ---------- Unknown keys and wrong types ----------

#[test]
fn unknown_keys_everywhere() {
    let base = "[contexts.a]\nuser = \"root\"\n";
    assert_refused(
        &format!("{base}[brokr]\n"),
        3,
        "brokr",
        "unknown key `brokr`",
    );
    assert_refused(
        &format!("{base}colour = 1\n"),
        3,
        "contexts.a.colour",
        "unknown key `colour`",
    );
    assert_refused(
        &format!("[broker]\nsocket = \"/s\"\nsock_mode = \"0600\"\n{base}"),
        3,
        "broker.sock_mode",
        "unknown key `sock_mode`",
    );
    assert_refused(
        &format!("{base}isolation = {{ pid = true, landlock = true }}\n"),
        3,
        "contexts.a.isolation.landlock",
        "unknown key `landlock`",
    );
    assert_refused(
        &format!("{base}[contexts.a.isolation]\npid = true\nseccomp = true\n"),
        5,
        "contexts.a.isolation.seccomp",
        "unknown key",
    );
    assert_refused(
        &format!("{base}allow = {{ users = [0] }}\n"),
        3,
        "contexts.a.allow.users",
        "unknown key",
    );
    assert_refused(
        &format!("{base}rlimits = {{ nofiles = 10 }}\n"),
        3,
        "contexts.a.rlimits.nofiles",
        "unknown limit; known: nofile",
    );
}

#[test]
fn wrong_types() {
    let base = "[contexts.a]\nuser = \"root\"\n";
    assert_refused(
        &format!("{base}isolation = {{ pid = 3 }}\n"),
        3,
        "contexts.a.isolation.pid",
        "expected a boolean",
    );
    assert_refused(
        &format!("{base}inherit_env = \"TERM\"\n"),
        3,
        "contexts.a.inherit_env",
        "expected a list",
    );
    assert_refused(
        &format!("{base}allow = {{ uids = [-1] }}\n"),
        3,
        "contexts.a.allow.uids",
        "u32",
    );
    assert_refused(
        &format!("[broker]\nreserved_ports = \"80\"\n{base}"),
        2,
        "broker.reserved_ports",
        "expected a list",
    );
}

#[test]
fn syntax_error_has_line() {
    let text = "[contexts.a]\nuser = \"root\"\ncwd = \"/x\n";
    let e = fails(text);
    assert_eq!(e.at.map(|(line, _)| line), Some(3), "{e}");
    assert!(
        e.to_string().starts_with("/etc/ctx/contexts.toml:3:"),
        "{e}"
    );
    assert!(e.reason.starts_with("TOML syntax: "), "{e}");
    assert_eq!(e.key, None);
}

// ---------- [broker] ----------

#[test]
fn broker_errors() {
    let base = "\n[contexts.a]\nuser = \"root\"\n";
    let b = |body: &str| format!("[broker]\n{body}{base}");
    assert_refused(
        &b("socket_mode = \"0668\"\n"),
        2,
        "broker.socket_mode",
        "not an octal mode",
    );
    assert_refused(
        &b("socket_mode = \"rw\"\n"),
        2,
        "broker.socket_mode",
        "not an octal mode",
    );
    assert_refused(
        &b("socket_mode = 660\n"),
        2,
        "broker.socket_mode",
        "string of octal digits",
    );
    assert_refused(
        &b("socket_group = \"no-such-group-x\"\n"),
        2,
        "broker.socket_group",
        "no such group \"no-such-group-x\"",
    );
    assert_refused(
        &b("socket = \"run/ctx.sock\"\n"),
        2,
        "broker.socket",
        "not an absolute path",
    );
    let long = format!("socket = \"/{}\"\n", "s".repeat(120));
    assert_refused(&b(&long), 2, "broker.socket", "longer than 107 bytes");
    assert_refused(
        &b("state_dir = \"var/lib\"\n"),
        2,
        "broker.state_dir",
        "not an absolute path",
    );
    assert_refused(
        &b("audit_log = \"a.jsonl\"\n"),
        2,
        "broker.audit_log",
        "not an absolute path",
    );
    assert_refused(
        &b("reserved_ports = [80, 0]\n"),
        2,
        "broker.reserved_ports[1]",
        "0 is not a port",
    );
    assert_refused(
        &b("reserved_ports = [70000]\n"),
        2,
        "broker.reserved_ports[0]",
        "70000 is not a port",
    );

    let config = ok(&b(
        "socket_mode = \"600\"\nreserved_ports = [80, 80, 443]\n",
    ));
    assert_eq!(config.broker.socket_mode, 0o600);
    assert_eq!(config.broker.reserved_ports, vec![80, 443]);
}

#[test]
fn port_owners_name_reserved_ports_and_contexts() {
    let base = "[contexts.platform]\nuser = \"root\"\n";
    let b = |broker: &str| format!("[broker]\n{broker}{base}");
    let config = ok(&b(
        "reserved_ports = [8080, 8888]\nport_owners = { 8080 = \"platform\" }\n",
    ));
    assert_eq!(
        config.broker.port_owners.into_iter().collect::<Vec<_>>(),
        vec![(8080, "platform".to_string())]
    );
    assert_refused(
        &b("reserved_ports = [8080]\nport_owners = { 9090 = \"platform\" }\n"),
        3,
        "broker.port_owners.9090",
        "not in reserved_ports",
    );
    assert_refused(
        &b("reserved_ports = [8080]\nport_owners = { 8080 = \"nobody\" }\n"),
        3,
        "broker.port_owners.8080",
        "no context named \"nobody\"",
    );
    assert_refused(
        &b("reserved_ports = [8080]\nport_owners = { http = \"platform\" }\n"),
        3,
        "broker.port_owners.http",
        "is not a port",
    );
}

// ---------- Context names ----------

#[test]
fn context_names() {
    let config = ok("[contexts.\"a.b-c_1\"]\nuser = \"root\"\n");
    assert!(config.contexts.contains_key("a.b-c_1"));

    assert_refused(
        "[contexts.\"a b\"]\nuser = \"root\"\n",
        1,
        "contexts.\"a b\"",
        "not a valid context name",
    );
    assert_refused(
        "[contexts.\"..\"]\nuser = \"root\"\n",
        1,
        "contexts.\"..\"",
        "not a valid context name",
    );
    assert_refused(
        "[contexts.\"x/y\"]\nuser = \"root\"\n",
        1,
        "contexts.\"x/y\"",
        "not a valid context name",
    );
    let long = "n".repeat(65);
    assert_refused(
        &format!("[contexts.{long}]\nuser = \"root\"\n"),
        1,
        &format!("contexts.{long}"),
        "1 to 64",
    );
    ok(&format!("[contexts.{}]\nuser = \"root\"\n", "n".repeat(64)));
}

#[test]
fn zero_contexts_refused() {
    for text in ["", "[broker]\nsocket = \"/s\"\n", "[contexts]\n"] {
        let shown = fails(text).to_string();
        assert!(shown.starts_with(FILE), "{shown}");
        assert!(shown.contains("no contexts defined"), "{shown}");
    }
}

// ---------- cwd, routes, allow ----------

#[test]
fn cwd_rules() {
    assert_refused(
        "[contexts.a]\nuser = \"root\"\ncwd = \"work\"\n",
        3,
        "contexts.a.cwd",
        "neither \"inherit\" nor an absolute path",
    );
    assert_refused(
        "[contexts.a]\nuser = \"root\"\ncwd = \"\"\n",
        3,
        "contexts.a.cwd",
        "absolute path",
    );
}

#[test]
fn routes() {
    let chain = ok(concat!(
        "[contexts.a]\nuser = \"root\"\nroute_children_to = \"b\"\n",
        "[contexts.b]\nuser = \"root\"\nroute_children_to = \"c\"\n",
        "[contexts.c]\nuser = \"root\"\n",
    ));
    assert_eq!(ctx(&chain, "b").route_children_to.as_deref(), Some("c"));

    assert_refused(
        "[contexts.a]\nuser = \"root\"\nroute_children_to = \"nope\"\n",
        3,
        "contexts.a.route_children_to",
        "no context named \"nope\" (defined: a)",
    );
    assert_refused(
        "[contexts.a]\nuser = \"root\"\nroute_children_to = \"a\"\n",
        3,
        "contexts.a.route_children_to",
        "to itself",
    );
}

#[test]
fn route_cycles() {
    let two = concat!(
        "[contexts.a]\nuser = \"root\"\nroute_children_to = \"b\"\n",
        "[contexts.b]\nuser = \"root\"\nroute_children_to = \"a\"\n",
    );
    assert_refused(two, 3, "contexts.a.route_children_to", "cycle: a -> b -> a");

    // The entry point `z` is not in the cycle; the cycle itself is reported.
    let three = concat!(
        "[contexts.z]\nuser = \"root\"\nroute_children_to = \"x\"\n",
        "[contexts.x]\nuser = \"root\"\nroute_children_to = \"y\"\n",
        "[contexts.y]\nuser = \"root\"\nroute_children_to = \"w\"\n",
        "[contexts.w]\nuser = \"root\"\nroute_children_to = \"x\"\n",
    );
    assert_refused(
        three,
        6,
        "contexts.x.route_children_to",
        "cycle: x -> y -> w -> x",
    );
}

/// Root's uid lets in root outside every context, or a process of the context itself,
/// never a uid-0 context's process into another context: that takes `allow.contexts`.
#[test]
fn a_uid0_contexts_process_is_not_root_to_other_contexts() {
    let config = ok(concat!(
        "[contexts.open]\nuser = \"root\"\n",
        "[contexts.listed]\nuser = \"root\"\nallow = { uids = [0], gids = [0] }\n",
        "[contexts.named]\nuser = \"root\"\nallow = { contexts = [\"fenced\"] }\n",
        "[contexts.fenced]\nuser = \"root\"\n",
    ));
    for name in ["open", "listed"] {
        let c = ctx(&config, name);
        assert!(
            c.allows(0, 0, None, false),
            "{name}: the operator, or its own process"
        );
        assert!(!c.allows(0, 0, Some("fenced"), true), "{name}: another's");
        assert!(
            !c.allows(0, 0, None, true),
            "{name}: another's, or one of no known context"
        );
    }
    let named = ctx(&config, "named");
    assert!(named.allows(0, 0, Some("fenced"), true));
    assert!(
        !named.allows(0, 0, None, true),
        "a name is granted by ancestry only"
    );
}

/// A route whose target refuses the routing context's processes fails every launch: the
/// load says so, with the fix.
#[test]
fn a_route_its_target_refuses_is_named() {
    let refused = ok(concat!(
        "[contexts.a]\nuser = \"root\"\nroute_children_to = \"b\"\n",
        "[contexts.b]\nuser = \"nobody\"\n",
    ));
    assert!(
        refused.warnings.iter().any(|w| w.starts_with(
            "contexts.a: route_children_to = \"b\" cannot work: contexts.b refuses the processes of \"a\" (uid 0 enters another context only where its allow names it)"
        ) && w.ends_with("add \"a\" to contexts.b.allow.contexts")),
        "{:?}",
        refused.warnings
    );
    let named = ok(concat!(
        "[contexts.a]\nuser = \"root\"\nroute_children_to = \"b\"\n",
        "[contexts.b]\nuser = \"nobody\"\nallow = { contexts = [\"a\"] }\n",
    ));
    assert!(
        !named.warnings.iter().any(|w| w.contains("cannot work")),
        "{:?}",
        named.warnings
    );
    let by_uid = ok(concat!(
        "[contexts.a]\nuser = \"nobody\"\nroute_children_to = \"b\"\n",
        "[contexts.b]\nuser = \"root\"\nallow = { uids = [65534] }\n",
    ));
    assert!(
        !by_uid.warnings.iter().any(|w| w.contains("cannot work")),
        "{:?}",
        by_uid.warnings
    );
}

#[test]
fn allow_rules() {
    let config = ok(concat!(
        "[contexts.a]\nuser = \"root\"\nallow = { gids = [100], uids = [5] }\n",
        "[contexts.b]\nuser = \"root\"\nallow = {}\n",
    ));
    let a = ctx(&config, "a");
    assert!(
        a.allows(7, 100, None, false)
            && a.allows(5, 5, None, false)
            && !a.allows(0, 0, None, false)
    );
    assert!(!ctx(&config, "b").allows(0, 0, None, false));
    assert_eq!(config.warnings.len(), 2);
    // Both run as root, but neither allow rule lets uid 0 in.
    assert!(
        config.warnings[1]
            .starts_with("contexts.a, contexts.b all run as uid 0 (root): they are NOT separated")
            && !config.warnings[1].contains("enter"),
        "{:?}",
        config.warnings
    );
    assert!(
        config.warnings[0].starts_with("contexts.b.allow: empty"),
        "{:?}",
        config.warnings
    );

    assert_refused(
        "[contexts.a]\nuser = \"root\"\nallow = { contexts = [\"a\", \"ghost\"] }\n",
        3,
        "contexts.a.allow.contexts[1]",
        "no context named \"ghost\"",
    );
}

#[test]
fn inherit_env_patterns() {
    assert_refused(
        "[contexts.a]\nuser = \"root\"\ninherit_env = [\"TERM\", \"LC-*\"]\n",
        3,
        "contexts.a.inherit_env[1]",
        "not a variable name or glob",
    );
}

// ---------- rlimits, timeout, on_broker_down, isolation ----------

#[test]
fn rlimits() {
    let config = ok(
        "[contexts.a]\nuser = \"root\"\n[contexts.a.rlimits]\ncore = \"unlimited\"\nas = 0\nrtprio = 5\n",
    );
    let limits = &ctx(&config, "a").rlimits;
    let find = |n: &str| limits.iter().find(|l| l.name == n).copied();
    assert_eq!(
        find("core"),
        Some(Rlimit {
            name: "core",
            resource: libc::RLIMIT_CORE as i32,
            value: u64::MAX
        })
    );
    assert_eq!(
        find("as").map(|l| (l.resource, l.value)),
        Some((libc::RLIMIT_AS as i32, 0))
    );
    assert_eq!(find("rtprio").map(|l| l.value), Some(5));
    assert_eq!(libc::RLIM_INFINITY, u64::MAX);

    let base = "[contexts.a]\nuser = \"root\"\n";
    assert_refused(
        &format!("{base}rlimits = {{ nofile = -1 }}\n"),
        3,
        "contexts.a.rlimits.nofile",
        "non-negative integer or \"unlimited\"",
    );
    assert_refused(
        &format!("{base}rlimits = {{ nofile = \"lots\" }}\n"),
        3,
        "contexts.a.rlimits.nofile",
        "\"unlimited\"",
    );
    assert_refused(
        &format!("{base}rlimits = {{ nofile = 1.5 }}\n"),
        3,
        "contexts.a.rlimits.nofile",
        "expected a string or an integer",
    );
}

#[test]
fn timeouts() {
    let t = |v: &str| {
        let config = ok(&format!("[contexts.a]\nuser = \"root\"\ntimeout = {v}\n"));
        ctx(&config, "a").timeout
    };
    assert_eq!(t("\"500ms\""), Some(Duration::from_millis(500)));
    assert_eq!(t("\"1m30s\""), Some(Duration::from_secs(90)));
    assert_eq!(t("\"2h\""), Some(Duration::from_secs(7200)));
    assert_eq!(t("30"), Some(Duration::from_secs(30)));
    assert_eq!(t("\"45\""), Some(Duration::from_secs(45)));

    let base = "[contexts.a]\nuser = \"root\"\n";
    assert_refused(
        &format!("{base}timeout = \"0s\"\n"),
        3,
        "contexts.a.timeout",
        "zero",
    );
    assert_refused(
        &format!("{base}timeout = 0\n"),
        3,
        "contexts.a.timeout",
        "more than zero",
    );
    assert_refused(
        &format!("{base}timeout = \"soon\"\n"),
        3,
        "contexts.a.timeout",
        "\"soon\" is not a duration",
    );
    assert_refused(
        &format!("{base}timeout = \"1.5h\"\n"),
        3,
        "contexts.a.timeout",
        "not a duration",
    );
}

#[test]
fn on_broker_down() {
    let config = ok("[contexts.a]\nuser = \"root\"\non_broker_down = \"local\"\n");
    assert_eq!(ctx(&config, "a").on_broker_down, BrokerDown::Local);
    assert_refused(
        "[contexts.a]\nuser = \"root\"\non_broker_down = \"retry\"\n",
        3,
        "contexts.a.on_broker_down",
        "expected \"fail\" or \"local\"",
    );
}

#[test]
fn isolation_and_warnings() {
    let config = ok(concat!(
        "[contexts.a]\nuser = \"root\"\nisolation = { network = \"none\", enforce = true }\n",
        "[contexts.b]\nuser = \"root\"\nisolation = { pid = false, network = \"host\", enforce = false }\n",
    ));
    assert_eq!(
        ctx(&config, "a").isolation,
        Isolation {
            pid: false,
            network: Network::None,
            enforce: true,
            ..Isolation::default()
        }
    );
    assert_eq!(
        config.warnings,
        vec![
            "contexts.a.isolation: enforce = true has no effect: the context does not route its launches (set route_children_to)".to_string(),
            "contexts.a, contexts.b all run as uid 0 (root): they are NOT separated from each other; each can read the others' secrets from /proc/PID/environ and signal or trace their processes; give each context a user of its own".to_string(),
        ]
    );
    assert_refused(
        "[contexts.a]\nuser = \"root\"\nisolation = { network = \"bridge\" }\n",
        3,
        "contexts.a.isolation.network",
        "expected \"host\", \"none\" or { allow = [",
    );
}

#[test]
fn egress_rules_parse_with_precise_errors() {
    let config = ok(concat!(
        "[contexts.a]\nuser = \"root\"\n",
        "isolation = { network = { allow = [\"github.com\", \"*.pythonhosted.org\", \"pypi.org:443\"] } }\n",
        "[contexts.b]\nuser = \"root\"\n",
        "[contexts.b.isolation.network]\nallow = [\"10.0.0.5:8080\"]\ndeny = [\"evil.example\"]\n",
    ));
    let rule = ctx(&config, "a")
        .isolation
        .network
        .egress()
        .unwrap()
        .clone();
    assert_eq!(
        rule.describe(),
        (
            vec![
                "github.com".to_string(),
                "*.pythonhosted.org".to_string(),
                "pypi.org:443".to_string()
            ],
            vec![]
        )
    );
    let b = ctx(&config, "b")
        .isolation
        .network
        .egress()
        .unwrap()
        .describe();
    assert_eq!(
        b,
        (vec!["10.0.0.5:8080".into()], vec!["evil.example".into()])
    );
    assert!(ctx(&config, "b").isolation.network.own_namespace());

    let shown = assert_refused(
        concat!(
            "[contexts.a]\nuser = \"root\"\n",
            "isolation = { network = { allow = [\"github.com\",\n  \"bad name.com\"] } }\n",
        ),
        4,
        "contexts.a.isolation.network.allow[1]",
        "\"bad name.com\": expected a host name, *.name or an IP address",
    );
    assert!(shown.starts_with(&format!("{FILE}:4:3:")), "{shown}");
    assert_refused(
        "[contexts.a]\nuser = \"root\"\nisolation = { network = { allow = [], deny = [\"x.com:99999\"] } }\n",
        3,
        "contexts.a.isolation.network.deny[0]",
        "\"99999\" is not a port (1 to 65535)",
    );
    assert_refused(
        "[contexts.a]\nuser = \"root\"\nisolation = { network = { deny = [\"x.com\"] } }\n",
        3,
        "contexts.a.isolation.network",
        "missing required key `allow`",
    );
    assert_refused(
        "[contexts.a]\nuser = \"root\"\nisolation = { network = { allow = [], alow = [] } }\n",
        3,
        "contexts.a.isolation.network",
        "unknown key `alow`",
    );
    assert_refused(
        "[contexts.a]\nuser = \"root\"\nisolation = { network = { allow = [\"*\"] } }\n",
        3,
        "contexts.a.isolation.network.allow[0]",
        "expected a host name",
    );
}

#[test]
fn landlock_warnings_follow_the_kernels_abi() {
    let config = ok(concat!(
        "[contexts.a]\nuser = \"root\"\nroute_children_to = \"b\"\n",
        "isolation = { read_only = [\"/\"], signals = \"scoped\", enforce = true }\n",
        "[contexts.b]\nuser = \"root\"\n",
    ));
    let iso = &ctx(&config, "a").isolation;
    let at = |abi| landlock::load_warnings("contexts.a.isolation", iso, true, abi);
    let none = at(0);
    assert_eq!(none.len(), 3, "{none:?}");
    assert!(none[0].starts_with("contexts.a.isolation: read_only/read_write/no_access NOT in force: this kernel has no Landlock"));
    assert!(none[1].contains("signals = \"scoped\" NOT in force: it needs Landlock ABI 6"));
    assert!(none[2].starts_with("contexts.a.isolation: enforce = true NOT in force"));
    // ABI 1 and 2: the rules hold, truncate(2) is not covered.
    let two = at(2);
    assert_eq!(two.len(), 2, "{two:?}");
    assert!(two[0].starts_with("contexts.a.isolation: truncate protection of read_only/no_access NOT in force: Landlock ABI 2 cannot stop truncate(2)"));
    assert!(at(5).len() == 1 && at(5)[0].contains("signals = \"scoped\""));
    assert!(at(6).is_empty(), "{:?}", at(6));
    // Without routing, enforce does nothing on any kernel.
    let w = landlock::load_warnings("k", iso, false, 7);
    assert_eq!(w, vec!["k: enforce = true has no effect: the context does not route its launches (set route_children_to)".to_string()]);
}

#[test]
fn the_loader_warns_on_the_abi_it_is_given() {
    let text = "[contexts.a]\nuser = \"root\"\nisolation = { read_only = [\"/\"] }\n";
    let on = |abi| {
        load_str(text, Path::new(FILE), abi)
            .expect("loads")
            .warnings
    };
    assert!(on(LANDLOCK_ABI).is_empty(), "{:?}", on(LANDLOCK_ABI));
    let two = on(2);
    assert_eq!(two.len(), 1, "{two:?}");
    assert!(two[0].starts_with("contexts.a.isolation: truncate protection"));
}

#[test]
fn a_no_access_path_that_does_not_exist_is_warned_about() {
    let dir = TempDir::new();
    let there = dir.file("there", "x", 0o600);
    let missing = dir.0.join("not-yet");
    let config = ok(&format!(
        "[contexts.a]\nuser = \"root\"\nisolation = {{ no_access = [\"{there}\", \"{}\"] }}\n",
        missing.display()
    ));
    assert_eq!(
        config.warnings,
        vec![format!(
            "contexts.a.isolation.no_access[1]: {} does not exist: nothing to hide now; \
             launches that start after it appears are kept out of it, launches already \
             running then are not",
            missing.display()
        )]
    );
}

// ---------- env, env_files and secrets ----------

#[test]
fn env_files_merge_in_order_inline_wins() {
    let dir = TempDir::new();
    let one = dir.file("one.env", "# first\nA=1\nB=1\nexport C='one'\n", 0o600);
    let two = dir.file("two.env", "\nB = \"2\"\nC=2\nD=\n", 0o600);
    let text = format!(
        "[contexts.a]\nuser = \"root\"\nenv_files = [\"{one}\", \"{two}\"]\nenv = {{ C = \"3\", E = \"5\" }}\n"
    );
    let config = ok(&text);
    let a = ctx(&config, "a");
    let pairs: Vec<(&str, &str)> = a
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        pairs,
        vec![("A", "1"), ("B", "2"), ("C", "3"), ("D", ""), ("E", "5"),]
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);

    let with_path = dir.file("path.env", "PATH=/only\n", 0o600);
    let config = ok(&format!(
        "[contexts.a]\nuser = \"root\"\nenv_files = [\"{with_path}\"]\n"
    ));
    assert_eq!(env_of(ctx(&config, "a"), "PATH"), Some("/only"));
}

#[test]
fn env_file_errors_name_both_files() {
    let dir = TempDir::new();
    let good = dir.file("good.env", "A=1\n", 0o600);
    let missing = dir.0.join("missing.env").display().to_string();
    let text = format!(
        "[contexts.a]\nuser = \"root\"\nenv_files = [\n  \"{good}\",\n  \"{missing}\",\n]\n"
    );
    let shown = assert_refused(&text, 5, "contexts.a.env_files[1]", "cannot read");
    assert!(shown.contains(&missing), "{shown}");

    let bad = dir.file(
        "bad.env",
        "OK=fine\n# note\nAPI_TOKEN=\"sk-live-TOPSECRET\n",
        0o600,
    );
    let text = format!("[contexts.a]\nuser = \"root\"\nenv_files = [\"{bad}\"]\n");
    let shown = assert_refused(&text, 3, "contexts.a.env_files[0]", &format!("{bad}:3: "));
    assert!(shown.contains("API_TOKEN"), "{shown}");
    assert!(!shown.contains("TOPSECRET"), "secret leaked: {shown}");

    let pasted = dir.file("pasted.env", "A=1\nsk-live-TOPSECRET\n", 0o600);
    let text = format!("[contexts.a]\nuser = \"root\"\nenv_files = [\"{pasted}\"]\n");
    let shown = assert_refused(
        &text,
        3,
        "contexts.a.env_files[0]",
        &format!("{pasted}:2: "),
    );
    assert!(!shown.contains("TOPSECRET"), "secret leaked: {shown}");

    assert_refused(
        "[contexts.a]\nuser = \"root\"\nenv_files = [\"secrets.env\"]\n",
        3,
        "contexts.a.env_files[0]",
        "not an absolute path",
    );
}

#[test]
fn world_readable_env_file_warns() {
    let dir = TempDir::new();
    let open = dir.file("open.env", "A=1\n", 0o644);
    let config = ok(&format!(
        "[contexts.a]\nuser = \"root\"\nenv_files = [\"{open}\"]\n"
    ));
    assert_eq!(config.warnings.len(), 1);
    assert!(
        config.warnings[0].contains("readable by every user"),
        "{:?}",
        config.warnings
    );
}

#[test]
fn inline_env_errors_never_show_values() {
    let base = "[contexts.a]\nuser = \"root\"\n";
    let shown = assert_refused(
        &format!("{base}env = {{ \"1BAD\" = \"TOPSECRET\" }}\n"),
        3,
        "contexts.a.env.1BAD",
        "not a variable name",
    );
    assert!(!shown.contains("TOPSECRET"), "{shown}");

    let shown = assert_refused(
        &format!("{base}env = {{ PIN = 987654321 }}\n"),
        3,
        "contexts.a.env.PIN",
        "must be strings",
    );
    assert!(!shown.contains("987654321"), "{shown}");

    let shown = assert_refused(
        &format!("{base}env = {{ T = [\"TOPSECRET\"] }}\n"),
        3,
        "contexts.a.env.T",
        "must be strings",
    );
    assert!(!shown.contains("TOPSECRET"), "{shown}");

    let shown = assert_refused(
        &format!("{base}env = \"TOKEN=TOPSECRET\"\n"),
        3,
        "contexts.a.env",
        "table",
    );
    assert!(!shown.contains("TOPSECRET"), "{shown}");

    let shown = assert_refused(
        &format!("{base}env = {{ T = \"TOP\\u0000SECRET\" }}\n"),
        3,
        "contexts.a.env.T",
        "NUL",
    );
    assert!(!shown.contains("SECRET"), "{shown}");

    // A syntax error on a secret's line: toml's own Display would print the line.
    let e = fails(&format!("{base}env = {{ TOKEN = \"TOPSECRET }}\n"));
    assert!(!e.to_string().contains("TOPSECRET"), "{e}");
    assert_eq!(e.at.map(|(line, _)| line), Some(3), "{e}");
    let e = fails(&format!("{base}env = {{ TOKEN = TOPSECRET }}\n"));
    assert!(!e.to_string().contains("TOPSECRET"), "{e}");
}

#[test]
fn masked_env() {
    let config = ok("[contexts.a]\nuser = \"root\"\nenv = { KEY = \"sk-123\", EMPTY = \"\" }\n");
    assert_eq!(
        ctx(&config, "a").masked_env(),
        vec![
            ("KEY".to_string(), "****".to_string()),
            ("EMPTY".to_string(), String::new()),
        ]
    );
}

// ---------- load() from disk ----------

#[test]
fn load_reads_the_file() {
    let dir = TempDir::new();
    let path = dir.file("contexts.toml", "[contexts.a]\nuser = \"root\"\n", 0o600);
    let config = load(Path::new(&path), LANDLOCK_ABI).expect("loads");
    assert_eq!(config.path, PathBuf::from(&path));

    let bad = dir.file(
        "bad.toml",
        "[contexts.a]\nuser = \"root\"\nshell = 1\n",
        0o600,
    );
    let shown = load(Path::new(&bad), LANDLOCK_ABI)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        shown.starts_with(&format!("{bad}:3:1: contexts.a.shell: unknown key `shell`")),
        "{shown}"
    );

    let missing = dir.0.join("nope.toml");
    let e = load(&missing, LANDLOCK_ABI).expect_err("missing file is an error");
    assert_eq!(e.at, None);
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read the config: ", missing.display())),
        "{e}"
    );
}

// ---------- Operations keys: audit_log_max, log_level ----------

#[test]
fn audit_log_max_and_log_level() {
    let base = "\n[contexts.a]\nuser = \"root\"\n";
    let b = |body: &str| format!("[broker]\n{body}{base}");

    let config = ok(&b("audit_log_max = \"10M\"\nlog_level = \"DEBUG\"\n"));
    assert_eq!(config.broker.audit_log_max, Some(10 << 20));
    assert_eq!(config.broker.log_level.as_deref(), Some("debug"));
    for (written, bytes) in [
        ("\"512K\"", 512 << 10),
        ("\"1GiB\"", 1 << 30),
        ("\"65536\"", 65536),
        ("8192", 8192),
    ] {
        let config = ok(&b(&format!("audit_log_max = {written}\n")));
        assert_eq!(config.broker.audit_log_max, Some(bytes), "{written}");
    }
    assert_eq!(ok(&b("")).broker.audit_log_max, None);

    assert_refused(
        &b("audit_log_max = \"10 parsecs\"\n"),
        2,
        "broker.audit_log_max",
        "is not a size",
    );
    assert_refused(
        &b("socket_mode = \"0660\"\naudit_log_max = 100\n"),
        3,
        "broker.audit_log_max",
        "too small",
    );
    assert_refused(
        &b("audit_log_max = -5\n"),
        2,
        "broker.audit_log_max",
        "is not a size",
    );
    assert_refused(
        &b("log_level = \"loud\"\n"),
        2,
        "broker.log_level",
        "not a log level",
    );
}

#[test]
fn shell_env_private_by_default_shared_on_request() {
    let c = ok("[contexts.a]\nuser = \"root\"\n");
    assert_eq!(ctx(&c, "a").shell_env, crate::config::ShellEnv::Private);
    let c = ok("[contexts.a]\nuser = \"root\"\nshell_env = \"shared\"\n");
    assert_eq!(ctx(&c, "a").shell_env, crate::config::ShellEnv::Shared);
    assert_refused(
        "[contexts.a]\nuser = \"root\"\nshell_env = \"global\"\n",
        3,
        "contexts.a.shell_env",
        "expected \"private\" or \"shared\"",
    );
}

#[test]
fn landlock_keys() {
    let config = ok(concat!(
        "[contexts.a]\nuser = \"root\"\n",
        "isolation = { read_only = [\"/usr\"], read_write = [\"/tmp\"], no_access = [\"/etc/ctx\"], signals = \"scoped\" }\n",
    ));
    let iso = &ctx(&config, "a").isolation;
    assert_eq!(iso.read_only, vec![PathBuf::from("/usr")]);
    assert_eq!(iso.read_write, vec![PathBuf::from("/tmp")]);
    assert_eq!(iso.no_access, vec![PathBuf::from("/etc/ctx")]);
    assert_eq!(iso.signals, crate::config::Signals::Scoped);
    assert!(iso.has_fs_rules());
    assert_refused(
        "[contexts.a]\nuser = \"root\"\nisolation = { read_only = [\"usr\"] }\n",
        3,
        "contexts.a.isolation.read_only[0]",
        "not an absolute path",
    );
    assert_refused(
        "[contexts.a]\nuser = \"root\"\nisolation = { signals = \"some\" }\n",
        3,
        "contexts.a.isolation.signals",
        "expected \"any\" or \"scoped\"",
    );
}

#[test]
fn cgroup_limits() {
    let config = ok(
        "[contexts.a]\nuser = \"root\"\nmemory_max = \"512M\"\npids_max = 64\ncpu_max = \"50%\"\n\
         [contexts.b]\nuser = \"root\"\ncpu_max = \"1.5\"\n[contexts.c]\nuser = \"root\"\ncpu_max = 2\n",
    );
    let a = ctx(&config, "a").cgroup;
    assert_eq!(a.memory_max, Some(512 << 20));
    assert_eq!(a.pids_max, Some(64));
    assert_eq!(a.cpu_max, Some(50));
    assert_eq!(ctx(&config, "b").cgroup.cpu_max, Some(150));
    assert_eq!(ctx(&config, "c").cgroup.cpu_max, Some(200));
    assert!(ctx(&config, "c").cgroup.memory_max.is_none());
    assert_refused(
        "[contexts.a]\nuser = \"root\"\nmemory_max = \"10K\"\n",
        3,
        "contexts.a.memory_max",
        "at least \"1M\"",
    );
    assert_refused(
        "[contexts.a]\nuser = \"root\"\npids_max = 0\n",
        3,
        "contexts.a.pids_max",
        "at least 1",
    );
    assert_refused(
        "[contexts.a]\nuser = \"root\"\ncpu_max = \"lots\"\n",
        3,
        "contexts.a.cpu_max",
        "not a CPU share",
    );
}
