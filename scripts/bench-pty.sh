#!/usr/bin/env bash
# PTY relay throughput of `ctx exec -t` as a share of the bare PTY written by the same
# program leading its session on it (scripts/bench/pty_rate.c -s running `head`, as in
# bench.sh), for one or more
# builds, round by round: each round measures the bare PTY first and then every build, so
# that a neighbour's load falls on all of them alike; each build's figure is a ratio to
# the bare PTY of its own round.
# Also prints the CPU time the broker and the client spent per run (from /proc and
# time(1)), which moves less with the machine's load than the rates do.
#
#   bash scripts/bench-pty.sh [-r ROUNDS] [-b BYTES] [BINDIR ...]
#
# BINDIR holds ctx-broker and ctx of one build (default: target/release, built first).
# Prints one line per round, then each build's median share of the bare PTY.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=8
BYTES=200000000
while [ $# -gt 0 ]; do
    case $1 in
        -r) ROUNDS=$2; shift 2 ;;
        -b) BYTES=$2; shift 2 ;;
        *) break ;;
    esac
done
if [ "$(id -u)" -ne 0 ]; then
    echo "bench-pty.sh: run as root (the broker switches to the context's user)" >&2
    exit 1
fi
if ! [ -x /usr/bin/time ] || ! command -v gcc >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends time gcc libc6-dev >/dev/null
fi
BINS=("$@")
if [ ${#BINS[@]} -eq 0 ]; then
    cargo build --release --quiet
    BINS=("$PWD/target/release")
fi
# shellcheck source=scripts/lib/users.sh
. scripts/lib/users.sh
ensure_user ctx-user

TMP=$(mktemp -d)
chmod 755 "$TMP"
PIDS=()
cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT
gcc -O2 -o "$TMP/pty_rate" scripts/bench/pty_rate.c -lutil
cat >"$TMP/contexts.toml" <<TOML
[contexts.bench]
user = "ctx-user"
cwd = "inherit"
allow = { uids = [0] }
TOML
for i in "${!BINS[@]}"; do
    mkdir -m 755 "$TMP/b$i"
    "${BINS[$i]}/ctx-broker" --config "$TMP/contexts.toml" --socket "$TMP/b$i/broker.sock" \
        --state-dir "$TMP/b$i/state" --audit-log "$TMP/b$i/audit.jsonl" 2>"$TMP/b$i/broker.log" &
    PIDS+=($!)
    for _ in $(seq 100); do
        "${BINS[$i]}/ctx" --socket "$TMP/b$i/broker.sock" status >/dev/null 2>&1 && break
        sleep 0.05
    done
done
# The routed program starts in the caller's directory: one its user can enter.
cd "$TMP"

cpu_ms() { awk '{ print ($14 + $15) * 10 }' "/proc/$1/stat"; }
now() { date +%s%N; }
for r in $(seq "$ROUNDS"); do
    # The bare PTY with the same writer as the relayed runs, leading its session on it as
    # the routed program does (see pty_rate.c), and without that session, for reference.
    bare=$("$TMP/pty_rate" -s "$BYTES" head -c "$BYTES" /dev/zero)
    nosession=$("$TMP/pty_rate" "$BYTES" head -c "$BYTES" /dev/zero)
    line="round $r: bare PTY $bare MB/s (written by head leading its session; $nosession MB/s without)"
    for i in "${!BINS[@]}"; do
        b0=$(cpu_ms "${PIDS[$i]}")
        a=$(now)
        /usr/bin/time -o "$TMP/client.time" -f '%U %S' "${BINS[$i]}/ctx" --socket "$TMP/b$i/broker.sock" \
            exec -t --context bench -- head -c "$BYTES" /dev/zero </dev/null | cat >/dev/null
        z=$(now)
        b1=$(cpu_ms "${PIDS[$i]}")
        rate=$((BYTES * 1000 / (z - a)))
        client=$(awk '{ print ($1 + $2) * 1000 }' "$TMP/client.time")
        line="$line | #$i $rate MB/s $((100 * rate / bare))% (broker $((b1 - b0)) ms, client $client ms CPU)"
        echo "$((100 * rate / bare))" >>"$TMP/share.$i"
    done
    echo "$line"
done
for i in "${!BINS[@]}"; do
    echo "#$i ${BINS[$i]}: median $(sort -n "$TMP/share.$i" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')% of the bare PTY"
done
