//! Chained contexts: `route_children_to` makes every launch of a context's processes run in
//! another context, through the interposer the broker preloads into them.

use ctx_tests::*;

fn chained_config() -> String {
    format!(
        r#"[broker]
socket_mode = "0666"

[contexts.platform]
user = "{BOB}"
env = {{ PLATFORM_SECRET = "sk-platform-only" }}
cwd = "/tmp"
route_children_to = "alice"
allow = {{ uids = [0] }}

[contexts.alice]
user = "{ALICE}"
env = {{ USER_KEY = "alice-cloud-key" }}
cwd = "inherit"
allow = {{ uids = [0], contexts = ["platform"] }}
"#
    )
}

#[test]
fn an_agent_in_platform_has_its_children_run_in_user_without_the_platform_secret() {
    let b = Broker::start(&chained_config());
    let bob = user(BOB);
    let alice = user(ALICE);
    // The "agent": runs in platform (bob, holding the platform secret) and spawns env and
    // id the way agents do, through Python's subprocess (vfork + execve).
    let agent = r#"
import os, subprocess
print("agent", os.getuid(), os.environ.get("PLATFORM_SECRET"))
print("child-id", subprocess.run(["id", "-u"], capture_output=True, text=True, check=True).stdout.strip())
env = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
print("child-has-user-key", "USER_KEY=alice-cloud-key" in env)
print("child-has-platform-secret", "sk-platform-only" in env)
print("child-has-routing-vars", "CTX_ROUTE" in env or "LD_PRELOAD" in env)
# A grandchild: the user context does not route on, it runs in alice like its parent.
print("grandchild", subprocess.run(["sh", "-c", "sh -c 'id -u'"], capture_output=True, text=True).stdout.strip())
"#;
    let out = b.exec("platform", &["/usr/bin/python3", "-c", agent]);
    assert_eq!(
        out.ok(),
        format!(
            "agent {} sk-platform-only\nchild-id {}\nchild-has-user-key True\n\
             child-has-platform-secret False\nchild-has-routing-vars False\ngrandchild {}\n",
            bob.uid, alice.uid, alice.uid
        )
    );
    // The broker saw the agent's launches as coming from the platform context.
    let lines = b.wait_audit(1, |l| {
        l["event"] == "exec" && l["context"] == "alice" && l["caller"]["context"] == "platform"
    });
    assert!(!lines.is_empty());
}

#[test]
fn a_process_outside_platform_with_the_same_uid_is_not_let_into_user() {
    let b = Broker::start(&chained_config());
    // bob himself (not running in platform) may not enter alice: the allow rule names the
    // platform context, not bob's uid.
    let out = run(std::process::Command::new("setpriv")
        .args(["--reuid", BOB, "--regid", BOB, "--init-groups", "--"])
        .arg(bin("ctx"))
        .arg("--socket")
        .arg(b.socket())
        .args(["exec", "--context", "alice", "--", "true"]));
    assert_eq!(out.code(), 125, "{}", out.show());
    assert!(out.stderr_str().contains("may not enter"), "{}", out.show());
}

#[test]
fn a_chained_target_with_on_broker_down_local_runs_launches_locally_when_the_broker_is_gone() {
    // Two platforms: one routes to a target that says on_broker_down = "local", the other
    // to one that keeps the default (fail).
    let config = format!(
        r#"[broker]
socket_mode = "0666"

[contexts.platform]
user = "{BOB}"
cwd = "/tmp"
route_children_to = "alice"
allow = {{ uids = [0] }}

[contexts.strict]
user = "{BOB}"
cwd = "/tmp"
route_children_to = "alice-strict"
allow = {{ uids = [0] }}

[contexts.alice]
user = "{ALICE}"
cwd = "inherit"
on_broker_down = "local"
allow = {{ uids = [0], contexts = ["platform"] }}

[contexts.alice-strict]
user = "{ALICE}"
cwd = "inherit"
allow = {{ uids = [0], contexts = ["strict"] }}
"#
    );
    let b = Broker::start(&config);
    let bob = user(BOB);
    let alice = user(ALICE);
    // The broker carries the target's policy in the environment of the chained context.
    let out = b.exec("platform", &["printenv", "CTX_ON_BROKER_DOWN"]);
    assert_eq!(out.ok(), "local\n");
    let out = b.exec("strict", &["printenv", "CTX_ON_BROKER_DOWN"]);
    assert_eq!(out.code(), 1, "{}", out.show());
    // Reachable: launches are routed to alice either way.
    let out = b.exec("platform", &["sh", "-c", "id -u"]);
    assert_eq!(out.ok(), format!("{}\n", alice.uid));
    // Unreachable (the platform process's CTX_SOCKET points nowhere): `local` runs the
    // launch in platform itself, as bob, with one line on stderr; the default fails closed.
    let gone = "CTX_SOCKET=/nonexistent/ctx.sock";
    let out = run(b
        .ctx(["exec", "-e", gone, "--context", "platform", "--"])
        .args(["sh", "-c", "id -u; echo rc=$?"]));
    assert_eq!(
        out.stdout_str(),
        format!("{}\nrc=0\n", bob.uid),
        "{}",
        out.show()
    );
    assert!(
        out.stderr_str()
            .contains("running \"id\" locally, not in context alice"),
        "{}",
        out.show()
    );
    let out = run(b
        .ctx(["exec", "-e", gone, "--context", "strict", "--"])
        .args(["sh", "-c", "id -u; echo rc=$?"]));
    assert_eq!(out.stdout_str(), "rc=126\n", "{}", out.show());
    assert!(
        out.stderr_str()
            .contains("cannot route \"id\" to context alice-strict: broker at /nonexistent/ctx.sock unreachable"),
        "{}",
        out.show()
    );
}

/// A routed program that launches a child the moment it starts must already be known to
/// the broker as a process of its context, or the child is refused as "outside platform".
/// The broker registers it right after the fork (before reading its exec report); the race
/// this closes needs a preempted broker thread, so this run of 60 is a sanity check that
/// showed ~0.5% refusals under load before the fix, not a deterministic reproduction.
#[test]
fn children_launched_at_once_are_placed_in_their_parents_context() {
    let b = Broker::start(&chained_config());
    for i in 0..60 {
        let out = b.exec("platform", &["/bin/sh", "-c", "exec /bin/true"]);
        assert_eq!(out.code(), 0, "launch {i}: {}", out.show());
    }
}

/// Forks argv[1] children at once, each exec'ing `/bin/true`, then reaps them all; prints
/// how many did not exit 0.
const BURST: &str = r#"
import os, sys
pids = []
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/bin/true", ["true"])
        finally:
            os._exit(126)
    pids.append(pid)
print(sum(1 for p in pids if os.waitpid(p, 0)[1] != 0))
"#;

/// A burst of launches, as `xargs -P` or a parallel build makes: each child connects before
/// the broker has read the others' requests, more than a uid's handshake turns at once.
/// Locally every one runs; routed, the ones past the turns were refused (EACCES) until they
/// waited for a turn instead.
#[test]
fn a_burst_of_launches_from_one_uid_all_run() {
    let b = Broker::start(&chained_config());
    let out = b.exec("platform", &["/usr/bin/python3", "-c", BURST, "800"]);
    assert_eq!(out.ok(), "0\n", "{}", out.show());
}

/// The same burst under the soft `RLIMIT_NOFILE` a login session has (1024), from a
/// caller holding a few inheritable descriptors (a build's jobserver pipes, a log). Each
/// request carries them, and they stay in flight, charged to the caller's uid, while the
/// request waits unread for a handshake turn; past the limit's worth of them the kernel
/// refuses the next send (`ETOOMANYREFS`), and the launch failed with EACCES ("sending the
/// launch: errno 109") although it would have run locally. The hook now waits for room
/// (the broker reading frees it), and a turn goes only to a connection whose request is
/// there: one taken by a caller still waiting to send held it from the requests that were.
/// The spawn child also lowered its descriptor limit to the caller's before opening its
/// seccomp listeners, in a table still holding the busy broker's descriptors (EMFILE).
#[test]
fn a_burst_of_launches_under_a_login_s_file_limit_all_run() {
    login_limited_burst(8);
}

/// The same burst from a caller holding more inheritable descriptors than one message
/// carries (a server's sockets, 300 here). A request whose descriptors would take its
/// uid's unfinished launches past their share of the broker's (a quarter of what is not
/// kept for root: 16 such requests under this host's 20000 files) was refused at once,
/// and those launches failed ("sending the launch: EPIPE", or the budget's refusal),
/// although every one runs locally; and with the first 253 descriptors sent with each
/// request, the requests waiting unread kept the uid's whole allowance of descriptors in
/// flight (`ETOOMANYREFS`) while the ones read waited for the rest. Now such a request
/// goes without them, the broker waits for room for all of them, then asks for them
/// (`SendDescriptors`).
#[test]
fn a_burst_of_launches_each_passing_more_descriptors_than_one_message_all_run() {
    login_limited_burst(300);
}

/// [`BURST`] of 800 from `platform`, under a soft `RLIMIT_NOFILE` of 1024 and holding
/// `inherited` more inheritable descriptors: none may fail.
fn login_limited_burst(inherited: usize) {
    let b = Broker::start(&chained_config());
    let script = format!(
        "import resource\n\
         resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n\
         import os\n\
         for _ in range({inherited}): os.set_inheritable(os.open('/dev/null', os.O_RDONLY), True)\n\
         {BURST}"
    );
    let out = b.exec("platform", &["/usr/bin/python3", "-c", &script, "800"]);
    assert_eq!(out.ok(), "0\n", "{}", out.show());
}

/// `platform` (ctx-bob) routes to `alice` over a socket of the given `[broker]` lines.
fn chained_with_socket(broker: &str, platform_user: &str) -> String {
    format!(
        r#"[broker]
{broker}

[contexts.platform]
user = "{platform_user}"
cwd = "/tmp"
route_children_to = "target"
allow = {{ uids = [0] }}

[contexts.target]
user = "{ALICE}"
cwd = "inherit"
allow = {{ uids = [0], contexts = ["platform"] }}
"#
    )
}

fn check_with_socket(config: &std::path::Path, socket: &std::path::Path) -> Output {
    run(std::process::Command::new(bin("ctx-broker"))
        .arg("--check")
        .arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(socket))
}

const CANNOT_REACH: &str =
    "contexts.platform: route_children_to = \"target\" cannot work: its user ctx-bob";

#[test]
fn a_routing_context_that_cannot_reach_the_socket_is_named_by_check_start_up_and_status() {
    // The default mode, 0660 root:root: ctx-bob may not connect.
    let config = chained_with_socket("socket_mode = \"0660\"", BOB);
    let td = TempDir::new();
    let file = td.file("contexts.toml", config.as_bytes(), 0o644);
    let socket = td.path().join("broker.sock");
    let out = check_with_socket(&file, &socket);
    assert_eq!(
        out.code(),
        1,
        "a config that cannot work fails: {}",
        out.show()
    );
    assert!(!out.stdout_str().contains("ok"), "{}", out.show());
    let said = out.stderr_str();
    // The file, the context, its user and uid, the socket as it would be, the fix.
    assert!(
        said.contains(&format!(
            "{}: {CANNOT_REACH} (uid {}) cannot connect to the socket {} (owner root, group \
             root, mode 0660)",
            file.display(),
            user(BOB).uid,
            socket.display()
        )),
        "{said}"
    );
    assert!(
        said.contains("set [broker] socket_group to a group ctx-bob belongs to")
            && said.contains("then restart the broker"),
        "the fix: {said}"
    );
    assert!(said.contains("refused: 1 routing context(s)"), "{said}");

    let b = Broker::start(&config);
    let stderr = b.stderr();
    assert!(stderr.contains(CANNOT_REACH), "start-up: {stderr}");
    assert!(
        stderr.contains(&format!(
            "{} (owner root, group root, mode 0660)",
            b.socket().display()
        )),
        "{stderr}"
    );
    let status = b.ctx(["status"]).output().expect("ctx status");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.contains(&format!("warning:    {CANNOT_REACH}")),
        "{status}"
    );
    // What it warns of is what happens: the platform's launches fail closed.
    let out = b.exec("platform", &["sh", "-c", "id -u"]);
    assert_ne!(out.code(), 0, "{}", out.show());
    assert!(
        out.stderr_str().contains("unreachable: EACCES"),
        "{}",
        out.show()
    );
    // Not the only context: one that does not route is not named.
    assert!(!status.contains("contexts.target: route"), "{status}");
}

#[test]
fn check_names_the_group_to_join_or_the_directory_that_shuts_the_routing_user_out() {
    let td = TempDir::new();
    // A socket group ctx-bob is not in: join it.
    let config = chained_with_socket(
        &format!("socket_mode = \"0660\"\nsocket_group = \"{TESTERS_GROUP}\""),
        BOB,
    );
    let file = td.file("group.toml", config.as_bytes(), 0o644);
    let out = check_with_socket(&file, &td.path().join("broker.sock"));
    assert_eq!(out.code(), 1, "{}", out.show());
    // Joining the group takes a reload: a load reads each user's groups.
    assert!(
        out.stderr_str().contains(&format!(
            "usermod -aG {TESTERS_GROUP} {BOB}, then ctx reload"
        )),
        "{}",
        out.show()
    );
    // A world-connectable socket in a directory ctx-bob cannot enter.
    let config = chained_with_socket("socket_mode = \"0666\"", BOB);
    let file = td.file("dir.toml", config.as_bytes(), 0o644);
    let private = td.subdir("private", 0o700);
    let out = check_with_socket(&file, &private.join("broker.sock"));
    assert_eq!(out.code(), 1, "{}", out.show());
    let said = out.stderr_str();
    assert!(said.contains(CANNOT_REACH), "{said}");
    assert!(
        said.contains(&format!("chmod o+x {}", private.display())),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "cannot pass through {} (owner root, group root, mode 0700)",
            private.display()
        )),
        "{said}"
    );
    // The same directory on the way through a symlink: still named.
    let inner = td.subdir("private/open", 0o755);
    let link = td.path().join("link");
    std::os::unix::fs::symlink(&inner, &link).unwrap();
    let out = check_with_socket(&file, &link.join("broker.sock"));
    let said = out.stderr_str();
    assert!(said.contains(CANNOT_REACH), "{said}");
    assert!(
        said.contains(&format!("cannot pass through {}", private.display())),
        "{said}"
    );
}

#[test]
fn a_routing_user_in_the_socket_group_is_not_warned_about_and_routes() {
    // ctx-alice is in ctx-testers; the socket is 0660 root:ctx-testers.
    let config = format!(
        r#"[broker]
socket_mode = "0660"
socket_group = "{TESTERS_GROUP}"

[contexts.platform]
user = "{ALICE}"
cwd = "/tmp"
route_children_to = "target"
allow = {{ uids = [0] }}

[contexts.target]
user = "{BOB}"
cwd = "inherit"
allow = {{ uids = [0], contexts = ["platform"] }}
"#
    );
    let td = TempDir::new();
    let file = td.file("contexts.toml", config.as_bytes(), 0o644);
    let out = check_with_socket(&file, &td.path().join("broker.sock"));
    assert_eq!(out.code(), 0, "{}", out.show());
    assert!(!out.stderr_str().contains("cannot work"), "{}", out.show());
    let b = Broker::start(&config);
    assert!(!b.stderr().contains("cannot work"), "{}", b.stderr());
    let status = b.ctx(["status"]).output().expect("ctx status");
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("cannot work"),
        "{status:?}"
    );
    let out = b.exec("platform", &["sh", "-c", "id -u"]);
    assert_eq!(out.ok(), format!("{}\n", user(BOB).uid));
}

/// The socket's mode and group are set when the broker starts: `--check` says to restart
/// for them, a reload leaves the socket as it was (and says a restart is needed), and the
/// restart is what lets the routing context in.
#[test]
fn a_socket_mode_the_routing_user_needs_takes_a_restart_not_a_reload() {
    // ctx-alice is in the socket's group, whose bits lack write.
    let closed = format!(
        r#"[broker]
socket_mode = "0640"
socket_group = "{TESTERS_GROUP}"

[contexts.platform]
user = "{ALICE}"
cwd = "/tmp"
route_children_to = "target"
allow = {{ uids = [0] }}

[contexts.target]
user = "{BOB}"
cwd = "inherit"
allow = {{ uids = [0], contexts = ["platform"] }}
"#
    );
    let open = closed.replace("socket_mode = \"0640\"", "socket_mode = \"0660\"");
    let td = TempDir::new();
    let file = td.file("contexts.toml", closed.as_bytes(), 0o644);
    let out = check_with_socket(&file, &td.path().join("broker.sock"));
    assert_eq!(out.code(), 1, "{}", out.show());
    let said = out.stderr_str();
    assert!(
        said.contains("give the socket's group write access with socket_mode = \"0660\", then restart the broker"),
        "{said}"
    );
    assert!(!said.contains("ctx reload"), "{said}");

    let mut b = Broker::start(&closed);
    let mode = |b: &Broker| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(b.socket()).unwrap().permissions().mode() & 0o7777
    };
    assert_eq!(mode(&b), 0o640);
    std::fs::write(b.config_path(), &open).unwrap();
    let reload = run(&mut b.ctx(["reload"]));
    assert_eq!(reload.code(), 0, "{}", reload.show());
    assert!(
        reload
            .show()
            .contains("[broker] socket changed: it takes effect when the broker restarts"),
        "{}",
        reload.show()
    );
    assert_eq!(mode(&b), 0o640, "a reload does not change the socket");
    let out = b.exec("platform", &["sh", "-c", "id -u"]);
    assert!(
        out.stderr_str().contains("unreachable: EACCES"),
        "{}",
        out.show()
    );

    b.restart();
    assert_eq!(mode(&b), 0o660);
    let out = b.exec("platform", &["sh", "-c", "id -u"]);
    assert_eq!(out.ok(), format!("{}\n", user(BOB).uid));
}

/// A burst of 200 launches under a broker an old unit left at 1024 files (a uid's share
/// is then 192 descriptors), from a caller holding a few inheritable descriptors (a
/// build's jobserver pipes), a handful per request. The launches past their handshake
/// wait for one of their uid's fork turns holding those, and since they count against the
/// uid's share until the fork (`launches_waiting_to_fork_hold_at_most_their_uid_s_share_of_descriptors`),
/// the next requests were refused ("unfinished launches would pass the broker more than
/// 192 descriptors"), and so were connections past the 48 that share leaves room for
/// ("its connections in or waiting for a handshake hold its share"). Now a request waits
/// for room, and a connection refused that way is told `Busy`, and its hook connects again.
#[test]
fn a_burst_of_launches_under_a_broker_of_1024_files_all_run() {
    let b = Broker::start_with_files(&chained_config(), 1024);
    let (inherited, n) = (3, 200);
    let script = format!(
        "import os\n\
         for _ in range({inherited}): os.set_inheritable(os.open('/dev/null', os.O_RDONLY), True)\n\
         {BURST}"
    );
    let out = b.exec(
        "platform",
        &["/usr/bin/python3", "-c", &script, &n.to_string()],
    );
    assert_eq!(out.ok(), "0\n", "{}", out.show());
}

/// A launch passing more descriptors than its uid's share of the broker's can never be
/// taken, however long it waits: refused at once, saying which bound and what to raise.
#[test]
fn a_launch_passing_more_than_its_uid_s_share_of_descriptors_is_refused_at_once() {
    let b = Broker::start_with_files(&chained_config(), 1024);
    let script = "import os, time\n\
         for _ in range(300): os.set_inheritable(os.open('/dev/null', os.O_RDONLY), True)\n\
         start = time.monotonic()\n\
         pid = os.fork()\n\
         if pid == 0:\n\
         \x20   try: os.execv('/bin/true', ['true'])\n\
         \x20   finally: os._exit(126)\n\
         print(os.waitpid(pid, 0)[1] >> 8, round(time.monotonic() - start, 1))";
    let out = b.exec("platform", &["/usr/bin/python3", "-c", script]);
    let printed = out.ok();
    let (code, took) = printed.trim().split_once(' ').expect("code and time");
    assert_eq!(code, "126", "{}", out.show());
    assert!(took.parse::<f64>().unwrap() < 2.0, "{}", out.show());
    assert!(
        out.stderr_str()
            .contains("unfinished launches would pass the broker more than 192 descriptors"),
        "{}",
        out.show()
    );
}

/// A burst of launches each passing most of its uid's share of the broker's descriptors
/// (under a broker of 2048 files the share is 448; each launch passes 241, one message's
/// worth): one fits at a time, and the others must wait for it to fork. Two connections
/// that read the room before either had counted its descriptors both saw it free (the
/// message's descriptors were counted before they were read only when the room was under
/// one message's worth), both took theirs, and the second was refused: 29 of 200 launches
/// failed with EACCES ("would pass the broker more than 448 descriptors ... raise the
/// broker's RLIMIT_NOFILE", which would not have helped them). Now every handshake counts
/// a message's descriptors before it reads them, and the loser waits.
#[test]
fn a_burst_of_launches_each_passing_most_of_their_uid_s_share_all_run() {
    let b = Broker::start_with_files(&chained_config(), 2048);
    let script = format!(
        "import os\n\
         for _ in range(237): os.set_inheritable(os.open('/dev/null', os.O_RDONLY), True)\n\
         {BURST}"
    );
    let out = b.exec("platform", &["/usr/bin/python3", "-c", &script, "200"]);
    assert_eq!(out.ok(), "0\n", "{}", out.show());
}

/// 200 `ctx exec` at once from one user (a script's `&` jobs, `xargs -P`), under a broker
/// of 1024 files, where the user's connections waiting for a handshake may hold 48: past
/// them the broker answers `Busy`, and the CLI connects again as the hook does, instead of
/// failing the launch ("refused before the handshake: ... hold its share").
#[test]
fn a_burst_of_ctx_exec_from_one_user_under_a_broker_of_1024_files_all_run() {
    let bob = user(BOB);
    let b = Broker::start_with_files(
        &format!(
            r#"[broker]
socket_mode = "0666"

[contexts.alice]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [{uid}] }}
"#,
            uid = bob.uid
        ),
        1024,
    );
    let script =
        "for i in $(seq 200); do \"$0\" --socket \"$1\" exec --context alice -- /bin/true \
                  2>>\"$2\" || echo failed & done; wait";
    let td = TempDir::new();
    let errors = td.subdir("errors", 0o1777).join("stderr");
    let out = run(std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={BOB}"),
            &format!("--regid={BOB}"),
            "--init-groups",
            "--",
            "bash",
            "-c",
            script,
        ])
        .arg(bin("ctx"))
        .arg(b.socket())
        .arg(&errors));
    let stderr = std::fs::read_to_string(&errors).unwrap_or_default();
    assert_eq!(out.ok(), "", "{stderr}");
}
