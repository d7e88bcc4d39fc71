//! Compiles the C half of the interposer: the variadic `execl*` bodies, which stable Rust
//! cannot define.

fn main() {
    println!("cargo:rerun-if-changed=src/variadic.c");
    cc::Build::new()
        .file("src/variadic.c")
        .flag_if_supported("-fvisibility=hidden")
        .flag_if_supported("-Wall")
        .flag_if_supported("-Wextra")
        .compile("ctx_variadic");
}
