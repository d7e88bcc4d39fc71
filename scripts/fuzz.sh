#!/usr/bin/env bash
# Fuzzes the wire frames and contexts.toml parsing (fuzz/, cargo-fuzz + libFuzzer) for
# FUZZ_SECONDS per target (default 60), starting from the committed corpus in
# fuzz/corpus/. New inputs go to a temp copy, so the committed corpus stays as it is.
# A crash fails the run; libFuzzer leaves the input in fuzz/artifacts/TARGET/ and prints
# how to reproduce it (`cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...`).
#
# cargo-fuzz needs nightly features: this runs them on the stable toolchain with
# RUSTC_BOOTSTRAP=1. When cargo-fuzz cannot be installed (`cargo install cargo-fuzz`),
# it says so and exits 0: the corpus is still replayed on every test run by
# tests/tests/hostile.rs (fuzz_corpus_replays_cleanly).
#
#   bash scripts/fuzz.sh            (called by scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${FUZZ_SECONDS:-60}
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    if ! cargo install cargo-fuzz --locked --quiet; then
        echo "fuzz.sh: cannot install cargo-fuzz: skipping the fuzz run (the corpus replay test still runs)" >&2
        exit 0
    fi
fi
export RUSTC_BOOTSTRAP=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cargo fuzz build -O
for target in frame_decode config_parse; do
    cp -r "corpus/$target" "$WORK/$target"
    echo "fuzz.sh: $target for ${SECS}s"
    cargo fuzz run -O "$target" "$WORK/$target" -- \
        -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 2>"$WORK/$target.log" \
        || { tail -60 "$WORK/$target.log" >&2; echo "fuzz.sh: $target found a crash" >&2; exit 1; }
    grep -E "^(Done|stat::number_of_executed_units)" "$WORK/$target.log" || true
done
echo "fuzz.sh: no crash"
