//! `scripts/install.sh` and `scripts/uninstall.sh` into a DESTDIR: the tree, the modes and
//! owners, a config that is never overwritten, and an uninstall that keeps the operator's
//! files unless asked to purge.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use ctx_tests::*;

fn script(name: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg(repo_root().join("scripts").join(name));
    c
}

fn install(dest: &Path, extra: &[&str]) -> Output {
    run(script("install.sh")
        .arg("--destdir")
        .arg(dest)
        .arg("--from")
        .arg(bin_dir())
        .args(extra))
}

/// (mode bits, uid, gid) of a path under `dest`; panics naming it when it is missing.
fn meta(dest: &Path, path: &str) -> (u32, u32, u32) {
    let full = dest.join(path.trim_start_matches('/'));
    let m = fs::symlink_metadata(&full)
        .unwrap_or_else(|e| panic!("{} not installed: {e}", full.display()));
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

fn adm_or_root() -> u32 {
    nix::unistd::Group::from_name("adm")
        .ok()
        .flatten()
        .map_or(0, |g| g.gid.as_raw())
}

#[test]
fn install_into_a_destdir_makes_the_tree_with_modes_and_owners() {
    require_root();
    let td = TempDir::new();
    let dest = td.path().join("root");
    let out = install(&dest, &[]);
    let text = out.ok();
    assert!(text.contains("installed /etc/ctx/contexts.toml"), "{text}");

    for (path, mode) in [
        ("/usr/local/bin/ctx", 0o755),
        ("/usr/local/bin/ctx-broker", 0o755),
        ("/etc/ctx", 0o755),
        ("/etc/ctx/contexts.toml", 0o600),
        ("/etc/ctx/contexts.toml.example", 0o644),
        ("/etc/systemd/system/ctx-broker.service", 0o644),
        ("/etc/systemd/system/ctx-broker.socket", 0o644),
        ("/var/lib/ctx", 0o711),
        ("/usr/local/share/man/man1/ctx.1", 0o644),
        ("/usr/local/share/man/man1/ctx-exec.1", 0o644),
        ("/usr/local/share/man/man1/ctx-broker.1", 0o644),
        ("/usr/local/share/bash-completion/completions/ctx", 0o644),
        ("/usr/local/share/zsh/site-functions/_ctx", 0o644),
        ("/usr/local/share/fish/vendor_completions.d/ctx.fish", 0o644),
    ] {
        assert_eq!(meta(&dest, path), (mode, 0, 0), "{path}: (mode, uid, gid)");
    }
    assert_eq!(meta(&dest, "/var/log/ctx"), (0o750, 0, adm_or_root()));

    // The interposer and shim: installed when built, and said so when not.
    for (file, mode) in [
        ("libctx_interposer.so", 0o644),
        ("libctx_route.so", 0o644),
        ("ctx-shim", 0o755),
    ] {
        if bin_dir().join(file).exists() {
            assert_eq!(meta(&dest, &format!("/usr/local/lib/ctx/{file}")).0, mode);
        } else {
            assert!(text.contains(&format!("{file} is not built")), "{text}");
        }
    }

    // The installed files are the built ones, and the config is the repo's.
    let built = fs::read(bin_dir().join("ctx-broker")).unwrap();
    assert!(fs::read(dest.join("usr/local/bin/ctx-broker")).unwrap() == built);
    assert_eq!(
        fs::read_to_string(dest.join("etc/ctx/contexts.toml")).unwrap(),
        fs::read_to_string(repo_root().join("contexts.toml")).unwrap()
    );
    let unit = fs::read_to_string(dest.join("etc/systemd/system/ctx-broker.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/ctx-broker --config /etc/ctx/contexts.toml"));
    // Nothing the service manager creates at run time is staged.
    assert!(!dest.join("run").exists());
}

#[test]
fn install_never_overwrites_an_existing_config() {
    require_root();
    let td = TempDir::new();
    let dest = td.path().join("root");
    let mine = b"# the operator's own\n[contexts.x]\nuser = \"root\"\n";
    fs::create_dir_all(dest.join("etc/ctx")).unwrap();
    fs::write(dest.join("etc/ctx/contexts.toml"), mine).unwrap();
    fs::set_permissions(
        dest.join("etc/ctx/contexts.toml"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();

    for _ in 0..2 {
        let text = install(&dest, &[]).ok();
        assert!(
            text.contains("kept the existing /etc/ctx/contexts.toml"),
            "{text}"
        );
    }
    assert_eq!(fs::read(dest.join("etc/ctx/contexts.toml")).unwrap(), mine);
    assert_eq!(
        meta(&dest, "/etc/ctx/contexts.toml").0,
        0o640,
        "mode kept too"
    );
    assert!(dest.join("etc/ctx/contexts.toml.example").exists());
}

#[test]
fn prefix_moves_binaries_and_the_units_exec_start() {
    require_root();
    let td = TempDir::new();
    let dest = td.path().join("root");
    install(&dest, &["--prefix", "/opt/ctx"]).ok();
    assert_eq!(meta(&dest, "/opt/ctx/bin/ctx-broker").0, 0o755);
    assert!(!dest.join("usr/local/bin/ctx").exists());
    let unit = fs::read_to_string(dest.join("etc/systemd/system/ctx-broker.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/opt/ctx/bin/ctx-broker --config"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local"), "{unit}");

    let bad = run(script("install.sh")
        .args(["--prefix", "relative/path", "--destdir"])
        .arg(&dest));
    assert_ne!(bad.code(), 0);
    assert!(
        bad.stderr_str().contains("must be absolute"),
        "{}",
        bad.show()
    );
}

#[test]
fn uninstall_keeps_the_operators_files_unless_purged() {
    require_root();
    let td = TempDir::new();
    let dest = td.path().join("root");
    install(&dest, &[]).ok();
    fs::write(dest.join("var/log/ctx/audit.jsonl"), b"{}\n").unwrap();

    let out = run(script("uninstall.sh").arg("--destdir").arg(&dest));
    assert!(out.ok().contains("kept /etc/ctx/contexts.toml"));
    for gone in [
        "usr/local/bin/ctx",
        "usr/local/bin/ctx-broker",
        "etc/systemd/system/ctx-broker.service",
        "etc/ctx/contexts.toml.example",
        "usr/local/share/man/man1/ctx.1",
        "usr/local/share/man/man1/ctx-broker.1",
        "usr/local/share/ctx",
    ] {
        assert!(!dest.join(gone).exists(), "{gone} left behind");
    }
    for kept in [
        "etc/ctx/contexts.toml",
        "var/lib/ctx",
        "var/log/ctx/audit.jsonl",
    ] {
        assert!(dest.join(kept).exists(), "{kept} removed without --purge");
    }

    install(&dest, &[]).ok();
    run(script("uninstall.sh")
        .arg("--destdir")
        .arg(&dest)
        .arg("--purge"))
    .ok();
    let left: Vec<PathBuf> = walk(&dest).into_iter().filter(|p| p.is_file()).collect();
    assert!(left.is_empty(), "files left after --purge: {left:?}");

    let again = run(script("uninstall.sh").arg("--destdir").arg(&dest));
    assert_ne!(again.code(), 0, "nothing installed: says so");
    assert!(
        again.stderr_str().contains("nothing installed"),
        "{}",
        again.show()
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
