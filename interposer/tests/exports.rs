//! The CI check SPEC section 4 asks for: `nm -D` on the built library lists every hooked
//! symbol as a defined function.

use std::path::PathBuf;
use std::process::Command;

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
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_ctx-shim"));
    shim.with_file_name("libctx_interposer.so")
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
