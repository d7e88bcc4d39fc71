//! `ctx-broker --check`: a good file passes, a bad one fails naming file and line, and the
//! `contexts.toml` shipped at the repository root passes.

use std::process::Command;

use ctx_tests::*;

fn check(path: &std::path::Path) -> Output {
    run(Command::new(bin("ctx-broker"))
        .arg("--check")
        .arg("--config")
        .arg(path))
}

#[test]
fn check_accepts_a_good_file() {
    require_root();
    let td = TempDir::new();
    let f = td.file("good.toml", standard_config().as_bytes(), 0o644);
    let out = check(&f);
    assert_eq!(out.code(), 0, "{}", out.show());
}

/// Asserts `--check` refuses `text`, naming `file:line` and `word`.
fn assert_refused(text: &str, line: usize, word: &str) {
    let td = TempDir::new();
    let f = td.file("bad.toml", text.as_bytes(), 0o644);
    let out = check(&f);
    assert_eq!(out.code(), 1, "{}", out.show());
    let msg = format!("{}{}", out.stderr_str(), out.stdout_str());
    let at = format!("{}:{line}", f.display());
    assert!(msg.contains(&at), "message must name {at}: {msg:?}");
    assert!(msg.contains(word), "message must name {word:?}: {msg:?}");
}

#[test]
fn check_refuses_an_unknown_key_with_file_and_line() {
    user(ALICE);
    assert_refused(
        &format!(
            "[contexts.alice]\nuser = \"{ALICE}\"\ncwd = \"inherit\"\n\n# a typo\nenvv = {{ A = \"b\" }}\n"
        ),
        6,
        "envv",
    );
}

#[test]
fn check_refuses_an_unknown_user_with_file_and_line() {
    assert_refused(
        "[contexts.ghost]\n\nuser = \"ctx-no-such-user-anywhere\"\n",
        3,
        "ctx-no-such-user-anywhere",
    );
}

#[test]
fn check_refuses_a_toml_syntax_error_with_file_and_line() {
    user(ALICE);
    assert_refused(
        &format!("[contexts.alice]\nuser = \"{ALICE}\"\nenv = {{ A = }}\n"),
        3,
        "",
    );
}

#[test]
fn shipped_contexts_toml_passes_check() {
    require_root();
    let shipped = repo_root().join("contexts.toml");
    assert!(shipped.is_file(), "{} is missing", shipped.display());
    let out = check(&shipped);
    assert_eq!(
        out.code(),
        0,
        "the shipped contexts.toml fails --check (scripts/test.sh creates its users \
         ctx-agent and ctx-user)\n{}",
        out.show()
    );
}

/// A `.` or `..` in a filesystem rule's path is refused at load (found by the fifteenth
/// review: kept as written, `/tmp/nx/../zz` made every launch of its context fail once
/// someone created `/tmp/nx`).
#[test]
fn check_refuses_dot_components_in_isolation_paths() {
    require_root();
    assert_refused(
        "[contexts.a]\nuser = \"root\"\nisolation = { no_access = [\"/tmp/nx/../zz\"] }\n",
        3,
        "`..` component",
    );
}

/// A `no_access` path in a directory a user can change is one that user can rename away,
/// and so expose to the context (found by the sixteenth review): the load says so.
#[test]
fn check_warns_of_a_no_access_path_others_can_rename() {
    let alice = user(ALICE);
    let td = TempDir::new();
    let project = td.subdir("project", 0o755);
    nix::unistd::chown(
        &project,
        Some(nix::unistd::Uid::from_raw(alice.uid)),
        Some(nix::unistd::Gid::from_raw(alice.gid)),
    )
    .unwrap();
    td.subdir("project/keys", 0o700);
    let text = format!(
        "[contexts.a]\nuser = \"root\"\nisolation = {{ read_only = [\"/\"], no_access = [\"{}\"] }}\n",
        project.join("keys").display()
    );
    let f = td.file("c.toml", text.as_bytes(), 0o644);
    let out = check(&f);
    assert_eq!(out.code(), 0, "{}", out.show());
    let msg = format!("{}{}", out.stderr_str(), out.stdout_str());
    assert!(
        msg.contains(&format!(
            "where uid {} (or others) can rename it",
            alice.uid
        )),
        "{msg}"
    );
}
