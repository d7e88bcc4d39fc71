//! `ctx status` lists the isolation in force per context.

use ctx_tests::isolation::*;
use ctx_tests::*;

// ---------------------------------------------------------------------------------------
// ctx status
// ---------------------------------------------------------------------------------------

#[test]
fn status_lists_the_isolation_in_force_per_context() {
    let b = Broker::start(&isolation_config());
    let out = run(&mut b.ctx(["status"])).ok();
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with("isolation:") && l.contains(&format!(" {name}: ")))
            .unwrap_or_else(|| panic!("no isolation line for {name}:\n{out}"))
            .to_string()
    };
    assert!(line("pidctx").contains("pid namespace"), "{out}");
    assert!(!line("pidctx").contains("network none"), "{out}");
    assert!(line("netctx").contains("network none"), "{out}");
    assert!(!line("plain").contains("pid namespace"), "{out}");
    assert!(!out.contains("NOT in force"), "{out}");

    let dir = TempDir::new();
    let b = Broker::start(&landlock_config(dir.path()));
    let out = run(&mut b.ctx(["status"])).ok();
    let fs = out
        .lines()
        .find(|l| l.contains(" fs: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        fs.contains("filesystem rules") && fs.contains("signals scoped"),
        "{out}"
    );
}
