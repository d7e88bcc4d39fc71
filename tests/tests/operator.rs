//! Operating a running broker: `ctx reload` (and SIGHUP), `ps`, `kill`, `log`, `--json`,
//! the audit log's rotation and full disk, completions, the manual and `--version`.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use ctx_tests::*;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A `sleep` argument no other process has, so its argv is a marker.
fn marked_sleep() -> String {
    let n = unique("").replace('x', "");
    format!("900.{}", &n[n.len().saturating_sub(15)..])
}

/// Starts `ctx exec --context CONTEXT -- sleep MARK` in the background and waits until the
/// routed sleep runs; returns the client and the routed pid.
fn start_sleep(b: &Broker, context: &str, mark: &str) -> (Child, i32) {
    let client = b
        .exec_cmd(context, &["sleep", mark])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ctx exec");
    let pid = poll(Duration::from_secs(10), || {
        pids_with_arg(mark).into_iter().find(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
    })
    .unwrap_or_else(|| panic!("routed `sleep {mark}` never appeared\n{}", b.stderr()));
    (client, pid)
}

fn json_out(out: &Output) -> Value {
    let text = out.ok();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn ps_json(b: &Broker) -> Vec<Value> {
    match json_out(&run(&mut b.ctx(["ps", "--json"]))) {
        Value::Array(a) => a,
        other => panic!("ctx ps --json is not a list: {other}"),
    }
}

fn id_of(b: &Broker, mark: &str) -> u64 {
    ps_json(b)
        .iter()
        .find(|p| json_has_str(&p["argv"], mark))
        .and_then(|p| p["id"].as_u64())
        .unwrap_or_else(|| panic!("`sleep {mark}` not in ctx ps --json"))
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn stop(mut client: Child) {
    let _ = client.kill();
    let _ = client.wait();
}

/// The standard config plus a third context, `carol`, that runs as ctx-bob.
fn config_with_carol() -> String {
    format!(
        "{}\n[contexts.carol]\nuser = \"{BOB}\"\nallow = {{ uids = [0] }}\n",
        standard_config()
    )
}

// ---------------------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------------------

#[test]
fn reload_adds_a_context_that_then_works() {
    let bob = user(BOB);
    let b = Broker::start(&standard_config());
    let before = b.exec("carol", &["true"]);
    assert_eq!(before.code(), 125, "{}", before.show());

    std::fs::write(b.config_path(), config_with_carol()).unwrap();
    let out = run(&mut b.ctx(["reload"]));
    let text = out.ok();
    assert!(text.contains("reloaded: 3 context(s)"), "{text}");
    assert!(text.contains("carol"), "{text}");

    let after = b.exec("carol", &["id", "-u"]);
    assert_eq!(after.ok().trim(), bob.uid.to_string());
    let status = json_out(&run(&mut b.ctx(["status", "--json"])));
    assert!(json_has_str(&status["contexts"], "carol"), "{status}");
    b.wait_audit(1, |e| e["event"] == "reload" && e["ok"] == true);
}

#[test]
fn reload_of_a_bad_file_keeps_the_old_config_and_names_file_and_line() {
    let b = Broker::start(&standard_config());
    let bad = format!(
        "{}\n[contexts.broken]\nuser = \"{ALICE}\"\ncolour = \"blue\"\n",
        standard_config()
    );
    std::fs::write(b.config_path(), &bad).unwrap();
    let line = bad.lines().position(|l| l.starts_with("colour")).unwrap() + 1;

    let out = run(&mut b.ctx(["reload"]));
    assert_eq!(out.code(), 1, "{}", out.show());
    let err = out.stderr_str();
    let place = format!("{}:{line}:", b.config_path().display());
    assert!(err.contains(&place), "expected {place:?} in {err:?}");
    assert!(err.contains("colour"), "{err}");
    assert!(err.contains("running configuration stays"), "{err}");

    // The old contexts still serve; the new one does not exist.
    assert_eq!(b.exec("alice", &["true"]).code(), 0);
    assert_eq!(b.exec("broken", &["true"]).code(), 125);
    let status = run(&mut b.ctx(["status"])).ok();
    assert!(status.contains("last reload was refused"), "{status}");
    b.wait_audit(1, |e| e["event"] == "reload" && e["ok"] == false);

    // Fixing the file and reloading clears the warning.
    std::fs::write(b.config_path(), standard_config()).unwrap();
    run(&mut b.ctx(["reload"])).ok();
    let status = run(&mut b.ctx(["status"])).ok();
    assert!(!status.contains("last reload was refused"), "{status}");
}

#[test]
fn sighup_reloads_too() {
    let b = Broker::start(&standard_config());
    std::fs::write(b.config_path(), config_with_carol()).unwrap();
    signal(b.pid(), Signal::SIGHUP);
    let ok = poll(Duration::from_secs(10), || {
        (b.exec("carol", &["true"]).status.code() == Some(0)).then_some(())
    });
    assert!(
        ok.is_some(),
        "carol never became usable after SIGHUP\n{}",
        b.stderr()
    );
    b.wait_audit(1, |e| e["event"] == "reload" && e["caller"] == "SIGHUP");
}

#[test]
fn a_running_process_survives_reloads() {
    let b = Broker::start(&standard_config());
    let mark = marked_sleep();
    let (client, pid) = start_sleep(&b, "alice", &mark);

    std::fs::write(b.config_path(), config_with_carol()).unwrap();
    run(&mut b.ctx(["reload"])).ok();
    std::fs::write(b.config_path(), "this is not toml [").unwrap();
    assert_eq!(run(&mut b.ctx(["reload"])).code(), 1);
    // Even a reload that removes its context leaves it running.
    std::fs::write(
        b.config_path(),
        format!("[broker]\nsocket_mode = \"0666\"\n[contexts.bob]\nuser = \"{BOB}\"\n"),
    )
    .unwrap();
    run(&mut b.ctx(["reload"])).ok();

    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(pid), "routed sleep {pid} died across reloads");
    assert!(ps_json(&b).iter().any(|p| p["pid"] == pid), "not in ctx ps");
    stop(client);
}

#[test]
fn reload_is_for_root_only() {
    let bob = user(BOB);
    let b = Broker::start(&standard_config());
    let out = run(b.ctx(["reload"]).uid(bob.uid).gid(bob.gid));
    assert_eq!(out.code(), 125, "{}", out.show());
    assert!(
        out.stderr_str().contains("may not reload"),
        "{}",
        out.show()
    );
}

// ---------------------------------------------------------------------------------------
// ps and kill
// ---------------------------------------------------------------------------------------

#[test]
fn ps_lists_running_processes_as_table_and_json() {
    let b = Broker::start(&standard_config());
    let mark = marked_sleep();
    let (client, pid) = start_sleep(&b, "alice", &mark);

    let table = run(&mut b.ctx(["ps"])).ok();
    let head = table.lines().next().unwrap();
    for col in [
        "ID",
        "CONTEXT",
        "PID",
        "CALLER_PID",
        "CALLER_UID",
        "AGE",
        "COMMAND",
    ] {
        assert!(head.contains(col), "{col} missing from {head:?}");
    }
    let row = table.lines().find(|l| l.contains(&mark)).expect("row");
    assert!(
        row.contains("alice") && row.contains(&pid.to_string()),
        "{row}"
    );

    let list = ps_json(&b);
    let me = list.iter().find(|p| p["pid"] == pid).expect("in json");
    assert_eq!(me["context"], "alice");
    assert_eq!(me["caller_uid"], 0);
    assert_eq!(me["caller_pid"], client.id());
    assert_eq!(me["argv"][0], "sleep");
    assert!(me["age_ms"].as_u64().is_some());
    assert!(me["id"].as_u64().is_some());

    // --context filters.
    let other = run(&mut b.ctx(["ps", "--context", "bob"])).ok();
    assert!(!other.contains(&mark), "{other}");
    stop(client);
    let gone = poll(Duration::from_secs(5), || {
        ps_json(&b).is_empty().then_some(())
    });
    assert!(gone.is_some(), "ps still lists the process after it ended");
}

#[test]
fn kill_by_id_signals_the_process_group() {
    let b = Broker::start(&standard_config());
    let mark = marked_sleep();
    let (mut client, pid) = start_sleep(&b, "alice", &mark);
    let id = id_of(&b, &mark);

    let out = run(&mut b.ctx(["kill", &id.to_string()]));
    assert!(out.ok().contains("SIGTERM"), "{}", out.show());
    let st = wait_deadline(&mut client, Duration::from_secs(10)).expect("client ends");
    // The client re-raises the routed command's death.
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGTERM),
        "{st}"
    );
    assert!(!alive(pid));
    b.wait_audit(1, |e| {
        e["event"] == "kill" && json_has_num(&e["ids"], id as i64)
    });

    let again = run(&mut b.ctx(["kill", &id.to_string()]));
    assert_eq!(again.code(), 1, "{}", again.show());
    assert!(
        again.stderr_str().contains("no running routed process"),
        "{}",
        again.show()
    );
}

#[test]
fn kill_context_with_a_named_or_numbered_signal() {
    let b = Broker::start(&standard_config());
    let (m1, m2) = (marked_sleep(), marked_sleep());
    let (mut c1, _) = start_sleep(&b, "alice", &m1);
    let (mut c2, _) = start_sleep(&b, "alice", &m2);
    let mark3 = marked_sleep();
    let (c3, p3) = start_sleep(&b, "bob", &mark3);

    let out = run(&mut b.ctx(["kill", "--context", "alice", "--signal", "KILL"]));
    assert!(
        out.ok().contains("2 routed process group(s)"),
        "{}",
        out.show()
    );
    for c in [&mut c1, &mut c2] {
        let st = wait_deadline(c, Duration::from_secs(10)).expect("client ends");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL)
        );
    }
    assert!(alive(p3), "bob's process was hit by a kill of alice");
    run(&mut b.ctx(["kill", "--context", "bob", "-s", "9"])).ok();
    assert!(poll(Duration::from_secs(5), || (!alive(p3)).then_some(())).is_some());
    stop(c3);

    let bad = run(&mut b.ctx(["kill", "1", "--signal", "NOPE"]));
    assert_eq!(bad.code(), 125);
    assert!(bad.stderr_str().contains("not a signal"), "{}", bad.show());
    assert_eq!(
        run(&mut b.ctx(["kill"])).code(),
        125,
        "an id or --context is required"
    );
}

#[test]
fn only_root_or_the_launching_uid_may_kill() {
    let bob = user(BOB);
    let b = Broker::start(&standard_config());
    let mark = marked_sleep();
    let (client, pid) = start_sleep(&b, "alice", &mark);
    let id = id_of(&b, &mark);

    // bob sees none of root's launches and may not signal them.
    let ps = run(b.ctx(["ps", "--json"]).uid(bob.uid).gid(bob.gid));
    assert_eq!(json_out(&ps), Value::Array(vec![]));
    let out = run(b.ctx(["kill", &id.to_string()]).uid(bob.uid).gid(bob.gid));
    assert_eq!(out.code(), 125, "{}", out.show());
    assert!(
        out.stderr_str().contains("may not signal"),
        "{}",
        out.show()
    );
    assert!(alive(pid));
    stop(client);
}

/// helper-103: a caller that does not read the end of its terminal launch keeps the
/// launch's entry (its `ctx ps` line) after the program is reaped: here the program
/// signals its parent (the caller's frames wait behind output nobody reads) and ends,
/// leaving a writer in its group. The caller's `ctx kill` ends that writer; a root
/// process then gets the program's pid (reused on purpose through `ns_last_pid`; the
/// helper cycled the pids as bob) and leads a group of that number: the next `ctx kill`
/// of the launch, sent by number, killed it.
#[test]
fn a_kill_of_a_launch_whose_program_was_reaped_never_reaches_the_process_that_got_its_pid() {
    let bob = user(BOB);
    let config = format!(
        "[broker]\nsocket_mode = \"0666\"\n\n[contexts.agent]\nuser = \"{ALICE}\"\n\
         allow = {{ uids = [{}] }}\n",
        bob.uid
    );
    let b = Broker::start(&config);
    let kill_as_bob = |id: u64| {
        let mut c = b.ctx(["kill", &id.to_string(), "-s", "KILL"]);
        c.uid(bob.uid).gid(bob.gid);
        run(&mut c)
    };
    let mut reused = false;
    for _ in 0..5 {
        let mark = marked_sleep();
        // The client's stdout is a pipe nobody reads: the output fills it and the socket.
        let client = b
            .ctx(["exec", "-t", "--context", "agent", "--", "sh", "-c"])
            .arg(format!(
                "head -c 8000000 /dev/zero & sleep 0.5; kill -WINCH $PPID; : {mark}"
            ))
            .uid(bob.uid)
            .gid(bob.gid)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ctx exec");
        let (id, pid) = poll(Duration::from_secs(10), || {
            ps_json(&b)
                .iter()
                .find(|p| json_has_str(&p["argv"], &mark))
                .and_then(|p| Some((p["id"].as_u64()?, p["pid"].as_i64()? as i32)))
        })
        .expect("the launch in ctx ps");
        poll(Duration::from_secs(10), || {
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        })
        .expect("the program never ended");
        assert!(
            ps_json(&b).iter().any(|p| p["id"].as_u64() == Some(id)),
            "the launch's entry went with the program: nothing is tried"
        );
        // Its writer, still in its group, ends; then the group's number is free.
        if older_kernel::groups_by_pidfd() {
            assert!(kill_as_bob(id).ok().contains("SIGKILL"));
        } else {
            // Before 6.9 the broker names a group by number only while the program is
            // unreaped: it says so, and where to turn (the context's cgroup).
            let out = kill_as_bob(id);
            assert_eq!(out.code(), 1, "{}", out.show());
            assert!(
                out.stderr_str().contains("ctx kill --context"),
                "{}",
                out.show()
            );
            // SAFETY: plain kill of the test's own writer's group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        poll(Duration::from_secs(20), || {
            // SAFETY: signal 0 only asks whether the group exists.
            (unsafe { libc::kill(-pid, 0) } != 0).then_some(())
        })
        .expect("the writer's group never ended");
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut stranger = Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        if stranger.id() as i32 == pid {
            reused = true;
            let out = kill_as_bob(id);
            std::thread::sleep(Duration::from_millis(200));
            assert!(
                alive(pid),
                "root's process that got the pid was killed: {}",
                out.show()
            );
            assert_eq!(out.code(), 1, "{}", out.show());
            assert!(out.stderr_str().contains("have ended"), "{}", out.show());
        }
        let _ = stranger.kill();
        let _ = stranger.wait();
        stop(client);
        if reused {
            break;
        }
    }
    assert!(
        reused,
        "never got the program's pid again: nothing was tried"
    );
}

// ---------------------------------------------------------------------------------------
// log
// ---------------------------------------------------------------------------------------

#[test]
fn log_shows_launches_as_table_and_json_filtered() {
    let b = Broker::start(&standard_config());
    let mark = unique("logmark");
    assert_eq!(b.exec("alice", &["echo", &mark]).code(), 0);
    assert_eq!(b.exec("bob", &["sh", "-c", "exit 3", &mark]).code(), 3);
    b.wait_audit(2, |e| json_has_str(e, &mark));

    let table = run(&mut b.ctx(["log"])).ok();
    assert!(table.starts_with("TIME"), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains("echo") && l.contains(&mark))
        .expect("row");
    assert!(
        row.contains("exec") && row.contains("alice") && row.contains("exit 0"),
        "{row}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("bob") && l.contains("exit 3")),
        "{table}"
    );

    let json = run(&mut b.ctx(["log", "--json", "--context", "bob"])).ok();
    let events: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e["context"] == "bob"), "{json}");

    // --since in the future excludes everything; a duration includes the recent launches.
    let none = run(&mut b.ctx(["log", "--since", "2999-01-01"])).ok();
    assert_eq!(none, "no matching audit events\n");
    let recent = run(&mut b.ctx(["log", "--since", "10m", "--json"])).ok();
    assert!(recent.contains(&mark));
    // The file can be named directly (e.g. with no broker running).
    let direct = run(b.ctx(["log", "--json", "--audit-log"]).arg(b.audit_path())).ok();
    assert!(direct.contains(&mark));
}

/// Launch ids start again with every broker run, so a log kept across a restart holds two
/// launches with the same id: `ctx log --launch N` shows the newest run's, names the older
/// run on stderr, and `--run` reaches that one.
#[test]
fn log_launch_shows_the_newest_run_and_reaches_older_ones_by_run_id() {
    let mut b = Broker::start(&standard_config());
    let first = unique("firstrun");
    assert_eq!(b.exec("alice", &["echo", &first]).code(), 0);
    let old = b.wait_audit(1, |e| e["event"] == "exec" && json_has_str(e, &first));
    let old_run = old[0]["run"].as_str().expect("a run id").to_string();
    let id = old[0]["id"].as_u64().expect("a launch id");

    b.restart();
    let second = unique("secondrun");
    assert_eq!(b.exec("alice", &["echo", &second]).code(), 0);
    let new = b.wait_audit(1, |e| e["event"] == "exec" && json_has_str(e, &second));
    let new_run = new[0]["run"].as_str().expect("a run id").to_string();
    assert_eq!(new[0]["id"], id, "ids start again: {new:?}");
    assert_ne!(new_run, old_run);
    // Every line of a run names it, the refusals and reloads too.
    let lines = b.audit_lines();
    assert!(lines
        .iter()
        .all(|l| l["run"] == old_run.as_str() || l["run"] == new_run.as_str()));

    let id = id.to_string();
    let out = run(&mut b.ctx(["log", "--launch", &id]));
    let table = out.ok();
    assert!(table.contains(&second), "{table}");
    assert!(
        !table.contains(&first),
        "the older run's launch shows too:\n{table}"
    );
    assert_eq!(table.lines().count(), 2, "{table}");
    let note = out.stderr_str();
    assert!(note.contains(&old_run) && note.contains(&new_run), "{note}");

    let json = run(&mut b.ctx(["log", "--json", "--launch", &id])).ok();
    let events: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{json}");
    assert_eq!(events[0]["run"], new_run.as_str());

    // The older run by its id, or the start of it.
    for named in [old_run.as_str(), &old_run[..6]] {
        let older = run(&mut b.ctx(["log", "--launch", &id, "--run", named])).ok();
        assert!(older.contains(&first), "{older}");
        assert!(!older.contains(&second), "{older}");
    }
}

#[test]
fn log_follow_prints_new_events() {
    let b = Broker::start(&standard_config());
    let mut follower = b
        .ctx(["log", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    let mark = unique("follow");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.exec("alice", &["echo", &mark]).code(), 0);
    let seen = poll(Duration::from_secs(5), || {
        lines.lock().unwrap().contains(&mark).then_some(())
    });
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        seen.is_some(),
        "follower never printed the launch: {}",
        lines.lock().unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// Audit log rotation and a full disk
// ---------------------------------------------------------------------------------------

#[test]
fn audit_log_rotates_at_its_cap_and_ctx_log_reads_both_files() {
    let config = standard_config().replace("[broker]\n", "[broker]\naudit_log_max = \"4K\"\n");
    let b = Broker::start(&config);
    let marks: Vec<String> = (0..30).map(|i| unique(&format!("rot{i}-"))).collect();
    for m in &marks {
        assert_eq!(b.exec("alice", &["echo", m]).code(), 0);
    }
    let rotated = {
        let mut p = b.audit_path().into_os_string();
        p.push(".1");
        std::path::PathBuf::from(p)
    };
    assert!(
        rotated.exists(),
        "no {} after 30 launches",
        rotated.display()
    );
    // The broker writes a launch's line after its reply, and a rotation renames the file
    // before it opens the new one: wait for the current file to be there.
    let size = poll(Duration::from_secs(5), || {
        std::fs::metadata(b.audit_path()).ok()
    })
    .expect("current audit log reappears after rotation")
    .len();
    assert!(size < 4096 + 1024, "current log is {size} bytes");
    // The newest events are all there, across the two files, in order.
    let newest = marks.last().unwrap().clone();
    let json = poll(Duration::from_secs(5), || {
        let out = run(&mut b.ctx(["log", "--json"])).ok();
        out.contains(&newest).then_some(out)
    })
    .expect("the last launch reaches the audit log");
    let last = &marks[marks.len() - 5..];
    let positions: Vec<usize> = last
        .iter()
        .map(|m| json.find(m.as_str()).unwrap_or_else(|| panic!("{m} lost")))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "out of order");
}

#[test]
fn a_full_disk_never_blocks_launches_and_status_says_so() {
    require_root();
    let td = TempDir::new();
    let config = td.file("contexts.toml", standard_config().as_bytes(), 0o644);
    let sock = td.path().join("broker.sock");
    let mut broker = Command::new(bin("ctx-broker"))
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&sock)
        .arg("--state-dir")
        .arg(td.path().join("state"))
        .args(["--audit-log", "/dev/full"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ctx = |args: &[&str]| {
        let mut c = Command::new(bin("ctx"));
        c.arg("--socket").arg(&sock).args(args);
        c
    };
    let up = poll(Duration::from_secs(10), || {
        ctx(&["status"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?
            .success()
            .then_some(())
    });
    let result = std::panic::catch_unwind(|| {
        assert!(up.is_some(), "broker did not start");
        for _ in 0..3 {
            let out = run(&mut ctx(&[
                "exec",
                "--context",
                "alice",
                "--",
                "echo",
                "hi",
            ]));
            assert_eq!(out.ok(), "hi\n");
        }
        let status = run(&mut ctx(&["status", "--json"]));
        let report = json_out(&status);
        let warnings = report["warnings"].to_string();
        assert!(warnings.contains("could not be written"), "{warnings}");
        assert!(warnings.contains("No space left"), "{warnings}");
    });
    signal(broker.id(), Signal::SIGTERM);
    if wait_deadline(&mut broker, Duration::from_secs(10)).is_none() {
        let _ = broker.kill();
        let _ = broker.wait();
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

// ---------------------------------------------------------------------------------------
// Completions, manual, versions
// ---------------------------------------------------------------------------------------

#[test]
fn completions_and_man_pages_come_from_the_cli_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(Command::new(bin("ctx")).args(["completions", shell])).ok();
        for verb in ["exec", "reload", "kill", "log", "ps"] {
            assert!(out.contains(verb), "{shell} completion lacks {verb}");
        }
    }
    assert_eq!(
        run(Command::new(bin("ctx")).args(["completions", "tcsh"])).code(),
        125
    );
    let man = run(Command::new(bin("ctx")).arg("man")).ok();
    assert!(
        man.starts_with(".ie") || man.contains(".TH ctx 1"),
        "{}",
        &man[..200.min(man.len())]
    );
    let kill = run(Command::new(bin("ctx")).args(["man", "kill"])).ok();
    assert!(
        kill.contains(".TH ctx-kill 1") && kill.contains("signal"),
        "{kill}"
    );
}

#[test]
fn both_binaries_say_their_version() {
    let version = env!("CARGO_PKG_VERSION");
    let ctx = run(Command::new(bin("ctx")).arg("--version")).ok();
    assert_eq!(ctx.trim(), format!("ctx {version}"));
    let broker = run(Command::new(bin("ctx-broker")).arg("--version")).ok();
    assert_eq!(broker.trim(), format!("ctx-broker {version}"));
    let sub = run(Command::new(bin("ctx")).args(["ps", "--version"])).ok();
    assert!(sub.contains(version), "{sub}");
}
