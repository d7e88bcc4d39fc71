//! Links the `ctx` CLI (whose start-up is part of every `ctx exec`) and the broker against
//! the static unwinder; see interposer/build.rs for why.

#[path = "../interposer/static_pie.rs"]
mod static_pie;

fn main() {
    static_pie::link_bin_statically("ctx");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(format!("{out}/libgcc_s.so"), "INPUT(-lgcc_eh)\n").expect("write linker script");
    println!("cargo:rustc-link-search=native={out}");
    println!("cargo:rerun-if-changed=build.rs");
}
