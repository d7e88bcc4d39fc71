//! Builds the preloaded half of the interposer, `libctx_interposer.so` (C, `src/preload.c`),
//! beside what Cargo builds, and links the static unwinder and the static-pie shim
//! (against musl where Debian's musl-dev is installed: see `static-link`).

use std::path::{Path, PathBuf};

const PRELOAD_SRC: &str = "src/preload.c";

fn main() {
    println!("cargo:rerun-if-changed={PRELOAD_SRC}");
    ctx_static_link::link_unwinder_statically();
    ctx_static_link::link_bin_statically_prefer_musl("ctx-shim");
    build_preloaded_library();
}

/// Cargo builds Rust shared libraries only, and a Rust one always carries std; the
/// preloaded library must not (see `preload.c`). So the C compiler `cc` finds links it as
/// a shared object without libc, and it is placed where Cargo puts its own artifacts
/// (`target/<profile>/`), beside `libctx_route.so` and `ctx-shim`, where the broker
/// and `ctx run` look for it.
fn build_preloaded_library() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let built = out.join("libctx_interposer.so");
    let build = cc::Build::new();
    let mut cc = build.get_compiler().to_command();
    cc.args([
        "-O2",
        "-fPIC",
        "-shared",
        // No libc at link time, and nothing the compiler would call into it for (the
        // exports test checks that `_r_debug` stays the only import).
        "-nostdlib",
        "-ffreestanding",
        "-fno-stack-protector",
        "-fvisibility=hidden",
        "-Wall",
        "-Wextra",
        "-Wl,-soname,libctx_interposer.so",
        "-Wl,-z,now",
        "-Wl,-z,noexecstack",
        "-Wl,--hash-style=gnu",
        // Two segments to map instead of four, and no RELRO mprotect: 15 us off every
        // exec (posix_spawn of /bin/true, p50 556 -> 541 us). What they would protect is
        // next to nothing here: a few strings and symbol tables made executable, and an
        // .init_array and one GOT entry left writable, beside function pointers that
        // live in .bss anyway.
        "-Wl,-z,noseparate-code",
        "-Wl,-z,norelro",
    ]);
    // GCC turns byte loops into memset/memcpy calls unless told not to.
    if build
        .is_flag_supported("-fno-tree-loop-distribute-patterns")
        .unwrap_or(false)
    {
        cc.arg("-fno-tree-loop-distribute-patterns");
    }
    cc.arg("-o").arg(&built).arg(PRELOAD_SRC);
    let result = cc.output().expect("run the C compiler");
    let diagnostics = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "compiling {PRELOAD_SRC} failed: {cc:?}\n{diagnostics}"
    );
    for line in diagnostics.lines() {
        println!("cargo:warning={line}");
    }
    // OUT_DIR is <target>/<profile>/build/<package>-<hash>/out.
    let dest = out
        .ancestors()
        .nth(3)
        .expect("OUT_DIR inside the target directory")
        .join("libctx_interposer.so");
    // A fresh file, not a write through whatever the old name was linked to.
    let _ = std::fs::remove_file(&dest);
    std::fs::copy(&built, &dest).expect("place libctx_interposer.so");
    // Rebuilt when deleted; dated like its source, so that Cargo (which reruns this script
    // for a file newer than its last run) does not take the copy for a change.
    println!("cargo:rerun-if-changed={}", dest.display());
    set_mtime_like(&dest, Path::new(PRELOAD_SRC));
}

fn set_mtime_like(file: &Path, like: &Path) {
    let when = std::fs::metadata(like)
        .and_then(|m| m.modified())
        .expect("stat the source");
    std::fs::File::options()
        .write(true)
        .open(file)
        .and_then(|f| f.set_modified(when))
        .expect("date libctx_interposer.so");
}
