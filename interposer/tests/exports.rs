//! `nm -D` on the built library lists every hooked
//! symbol as a defined function. And what keeps the preloaded library cheap for the
//! processes that never route: nothing from libc at link time, nothing to relocate, the
//! Rust half kept out of sight.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{bin_dir, cc};

pub const HOOKED: &[&str] = &[
    "execve",
    "execv",
    "execvp",
    "execvpe",
    "execl",
    "execlp",
    "execle",
    "fexecve",
    "execveat",
    "posix_spawn",
    "posix_spawnp",
    "pidfd_spawn",
    "pidfd_spawnp",
    "system",
    "popen",
    "pclose",
];

fn library() -> PathBuf {
    bin_dir().join("libctx_interposer.so")
}

fn tool(argv: &[&str], file: &std::path::Path) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .arg(file)
        .output()
        .expect("run binutils");
    assert!(out.status.success(), "{argv:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn nm_lists_every_hook() {
    let lib = library();
    assert!(lib.exists(), "{} not built", lib.display());
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("run nm (binutils)");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let defined: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _addr = f.next()?;
            let kind = f.next()?;
            let name = f.next()?;
            (kind == "T").then_some(name)
        })
        .collect();
    for sym in HOOKED {
        assert!(defined.contains(sym), "{sym} is not exported: {defined:?}");
    }
}

#[test]
fn shim_beside_library() {
    assert!(library().with_file_name("ctx-shim").exists());
}

#[test]
fn the_preloaded_library_needs_nothing_from_libc_at_link_time() {
    let lib = library();
    let dynamic = tool(&["readelf", "-dW"], &lib);
    assert!(!dynamic.contains("(NEEDED)"), "{dynamic}");
    let imports: Vec<String> = tool(&["nm", "-D", "--undefined-only"], &lib)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    assert_eq!(imports, ["_r_debug"]);
    // Each segment is one more mapping for every exec (build.rs says why two).
    let segments = tool(&["readelf", "-lW"], &lib);
    let loads = segments
        .lines()
        .filter(|l| l.trim_start().starts_with("LOAD"))
        .count();
    assert_eq!(loads, 2, "{segments}");
    // The constructor's entry in .init_array, and the one import.
    let relocs = tool(&["readelf", "-rW"], &lib);
    let entries: Vec<&str> = relocs.lines().filter(|l| l.starts_with("0000")).collect();
    assert_eq!(entries.len(), 2, "{relocs}");
    assert!(
        entries
            .iter()
            .all(|l| l.contains("_RELATIVE") || l.contains("_r_debug")),
        "{relocs}"
    );
}

#[test]
fn the_routing_library_exports_only_its_entry_point() {
    let route = library().with_file_name("libctx_route.so");
    let exported: Vec<String> = tool(&["nm", "-D", "--defined-only"], &route)
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("T"))
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    assert_eq!(exported, ["ctx_route_init"]);
}

#[test]
fn the_preloaded_library_finds_what_dlsym_next_finds() {
    let dir = std::env::temp_dir().join(format!("ctx-lookup-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("lookup_check");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/lookup_check.c");
    cc(&["-O2", "-Wall"], &exe, &src);
    let out = Command::new(&exe)
        .env_remove("CTX_ROUTE")
        .env_remove("LD_PRELOAD")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // Every launcher resolved (pidfd_spawn* only exist from glibc 2.39 on).
    for name in [
        "execve",
        "posix_spawn",
        "system",
        "popen",
        "pclose",
        "realpath",
    ] {
        assert!(text.contains(&format!("{name} same\n")), "{text}");
    }
}
