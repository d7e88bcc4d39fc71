//! Used by the interposer's and the broker's build scripts: links one binary of the
//! package as a static-pie, and the package's other Rust artifacts against the static
//! unwinder.
//!
//! `ctx-shim` starts in every routed launch and `ctx` in every `ctx exec`: as a static-pie
//! a binary runs without the dynamic loader (no library search, no symbol binding), and
//! under `enforce = true` the shim needs no loader to be executable. Per-binary
//! `crt-static` is not expressible in Cargo (as a rustflag it breaks proc-macros), so that
//! binary's link alone gets a search directory whose `libc.so`/`libm.so` are linker
//! scripts naming the static archives, plus `-static-pie`. Without the archives (no static
//! glibc installed) the binary stays dynamic, with a build warning.

/// Where Debian's `musl-dev` puts musl's static libc and start files.
const MUSL: &str = "/usr/lib/x86_64-linux-musl";

/// `bin`, a binary that starts from its own C `main` (no Rust runtime start-up, no
/// `std::env::args`), as a static-pie against musl where musl is installed, else against
/// glibc as [`link_bin_statically`]. glibc's start-up asks the CPU for its cache sizes
/// through about a hundred `cpuid` instructions, each a trap to the hypervisor on a
/// virtual machine: 100-150 µs of every start there, which musl's start-up does not
/// spend. Sets `cfg(ctx_musl)` when linked against musl.
pub fn link_bin_statically_prefer_musl(bin: &str) {
    println!("cargo::rustc-check-cfg=cfg(ctx_musl)");
    // The target's, not this build script's own (`cfg!` here would be the host's).
    let target = |key: &str| std::env::var(format!("CARGO_CFG_TARGET_{key}")).unwrap_or_default();
    let x86_64_glibc =
        target("ARCH") == "x86_64" && target("OS") == "linux" && target("ENV") == "gnu";
    if x86_64_glibc && link_bin_with_musl(bin) {
        println!("cargo:rustc-cfg=ctx_musl");
    } else {
        link_bin_statically(bin);
    }
}

/// The std of the `-gnu` target links `-lc`, `-lm`, `-lpthread`, `-lrt`, `-ldl`, `-lutil`:
/// each is a linker script in our search directory naming musl's `libc.a` (which holds them
/// all), and musl's own start files replace the C compiler's glibc ones. The libc crate's
/// declarations are glibc's; on x86_64 every structure the shim passes (`stat`, `msghdr`,
/// `cmsghdr`, `sigaction`, `sigset_t`, `termios`, `pollfd`, `rlimit`) has the kernel's layout
/// in both.
fn link_bin_with_musl(bin: &str) -> bool {
    let libc_a = format!("{MUSL}/libc.a");
    if !std::path::Path::new(&libc_a).exists() {
        // No rerun-if-changed on a file that is not there: Cargo would take it as changed
        // at every build. Installing musl-dev later takes `cargo clean -p ctx-interposer`.
        println!("cargo:warning=no musl (Debian's musl-dev): {bin} is linked against glibc, whose start-up costs more");
        return false;
    }
    println!("cargo:rerun-if-changed={libc_a}");
    let (Some(libgcc), Some(libgcc_eh), Some(begin), Some(end)) = (
        find("libgcc.a"),
        find("libgcc_eh.a"),
        find("crtbeginS.o"),
        find("crtendS.o"),
    ) else {
        println!("cargo:warning=musl is installed but the C compiler has no libgcc_eh.a or crtbeginS.o: {bin} is linked against glibc");
        return false;
    };
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let dir = format!("{out}/static-musl");
    std::fs::create_dir_all(&dir).expect("create the static link directory");
    for lib in ["c", "m", "pthread", "rt", "dl", "util"] {
        std::fs::write(
            format!("{dir}/lib{lib}.so"),
            format!("GROUP ( {MUSL}/libc.a {libgcc} {libgcc_eh} )\n"),
        )
        .expect("write a libc linker script");
    }
    for arg in [
        format!("-L{dir}"),
        "-static-pie".into(),
        "-nostartfiles".into(),
        format!("{MUSL}/rcrt1.o"),
        begin,
        end,
    ] {
        println!("cargo:rustc-link-arg-bin={bin}={arg}");
    }
    true
}

/// The path of a file the C compiler links with (`-print-file-name`), if it has one.
fn find(name: &str) -> Option<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let o = std::process::Command::new(&cc)
        .arg(format!("-print-file-name={name}"))
        .output()
        .ok()?;
    let p = String::from_utf8(o.stdout).ok()?.trim().to_string();
    // An unknown name is echoed back bare.
    (p.starts_with('/') && std::path::Path::new(&p).exists()).then_some(p)
}

/// One binary of the package, as a static-pie.
pub fn link_bin_statically(bin: &str) {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let dir = format!("{out}/static-pie");
    let (Some(libc_a), Some(libm_a), Some(libgcc), Some(libgcc_eh)) = (
        find("libc.a"),
        find("libm.a"),
        find("libgcc.a"),
        find("libgcc_eh.a"),
    ) else {
        println!("cargo:warning=no static glibc (libc.a): {bin} is linked dynamically");
        return;
    };
    std::fs::create_dir_all(&dir).expect("create the static link directory");
    std::fs::write(
        format!("{dir}/libc.so"),
        format!("GROUP ( {libc_a} {libgcc} {libgcc_eh} )\n"),
    )
    .expect("write libc.so script");
    std::fs::write(format!("{dir}/libm.so"), format!("GROUP ( {libm_a} )\n"))
        .expect("write libm.so script");
    println!("cargo:rustc-link-arg-bin={bin}=-L{dir}");
    println!("cargo:rustc-link-arg-bin={bin}=-static-pie");
}

/// Rust's std links the unwinder from the shared `libgcc_s`. Loading one more library costs
/// every process the interposer is preloaded into (and every start of the shim, which sits
/// in the routed launch's critical path) a loader pass over one more object. A linker
/// script named `libgcc_s.so` in our own search path, found before the system one, makes
/// the package's artifacts link the static unwinder (`libgcc_eh.a`) instead: same code, no
/// extra load.
pub fn link_unwinder_statically() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(format!("{out}/libgcc_s.so"), "INPUT(-lgcc_eh)\n").expect("write linker script");
    println!("cargo:rustc-link-search=native={out}");
}
