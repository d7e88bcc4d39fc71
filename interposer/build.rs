//! Compiles the C half of the interposer: the variadic `execl*` bodies, which stable Rust
//! cannot define.

#[path = "static_pie.rs"]
mod static_pie;

fn main() {
    println!("cargo:rerun-if-changed=src/variadic.c");
    link_unwinder_statically();
    static_pie::link_bin_statically("ctx-shim");
    cc::Build::new()
        .file("src/variadic.c")
        .flag_if_supported("-fvisibility=hidden")
        .flag_if_supported("-Wall")
        .flag_if_supported("-Wextra")
        .compile("ctx_variadic");
}

/// Rust's std links the unwinder from the shared `libgcc_s`. Loading one more library costs
/// every process the interposer is preloaded into (and every start of the shim, which sits
/// in the routed launch's critical path) about 0.1-0.3 ms on this kind of machine. A linker
/// script named `libgcc_s.so` in our own search path, found before the system one, makes
/// both link the static unwinder (`libgcc_eh.a`) instead: same code, no extra load.
fn link_unwinder_statically() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(format!("{out}/libgcc_s.so"), "INPUT(-lgcc_eh)\n").expect("write linker script");
    println!("cargo:rustc-link-search=native={out}");
}
