//! contexts.toml parsing and resolution (`ctx_broker::config::load_str`) on arbitrary text:
//! a bad file must come back as an error naming the file, never as a panic or a hang.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A fixed Landlock ABI (the newest the loader knows): the kernel's is no input here.
    if let Err(e) = ctx_broker::config::load_str(text, Path::new("fuzz.toml"), 6) {
        let shown = e.to_string();
        assert!(
            shown.contains("fuzz.toml"),
            "error does not name the file: {shown}"
        );
    }
});
