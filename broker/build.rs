//! Links the `ctx` CLI (whose start-up is part of every `ctx exec`) and the broker against
//! the static unwinder; see the ctx-static-link crate for why.

fn main() {
    ctx_static_link::link_bin_statically("ctx");
    ctx_static_link::link_unwinder_statically();
    println!("cargo:rerun-if-changed=build.rs");
}
