#!/usr/bin/env bash
# What one routed launch costs the broker itself: CPU time (user + system, from
# /proc/PID/stat) and context switches of all its threads (from /proc/PID/task/*/status),
# per launch, over N launches of /bin/true routed by the interposer from a C caller. Run
# with several broker binaries, it alternates them round by round, so that a neighbour's
# load falls on each alike: these two counts move far less with the machine's load than
# the launch latency does, which makes them the figures to compare builds by.
#
#   bash scripts/bench-broker-cost.sh [-n N] [-r ROUNDS] [BROKER ...]
#
# Default: 2000 launches, 3 rounds, the broker of target/release. Prints one line per
# broker and round: CPU µs per launch, switches per launch (and by thread name), p50/p90.
set -euo pipefail
cd "$(dirname "$0")/.."
N=2000
ROUNDS=3
while [ $# -gt 0 ]; do
    case $1 in
        -n) N=$2; shift 2 ;;
        -r) ROUNDS=$2; shift 2 ;;
        *) break ;;
    esac
done
if [ "$(id -u)" -ne 0 ]; then
    echo "bench-broker-cost.sh: run as root (the broker switches to the context's user)" >&2
    exit 1
fi
cargo build --release --quiet
BIN=$PWD/target/release
BROKERS=("$@")
[ ${#BROKERS[@]} -eq 0 ] && BROKERS=("$BIN/ctx-broker")
# shellcheck source=scripts/lib/users.sh
. scripts/lib/users.sh
ensure_user ctx-user

TMP=$(mktemp -d)
chmod 755 "$TMP"
BROKER_PID=
cleanup() {
    [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
gcc -O2 -o "$TMP/launch_loop" scripts/bench/launch_loop.c
cat >"$TMP/contexts.toml" <<TOML
[contexts.bench]
user = "ctx-user"
cwd = "inherit"
allow = { uids = [0] }
TOML
SOCK=$TMP/broker.sock

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$BROKER_PID/stat"; }
switches() { # "comm count" per thread name
    local t
    for t in /proc/"$BROKER_PID"/task/*; do
        printf '%s %s\n' "$(tr ' ' _ <"$t/comm")" \
            "$(awk '/ctxt_switches/ { s += $2 } END { print s }' "$t/status")"
    done | awk '{ a[$1] += $2 } END { for (k in a) print k, a[k] }' | sort
}
routed() {
    (cd /tmp && env LD_PRELOAD="$BIN/libctx_interposer.so" CTX_ROUTE=bench CTX_SOCKET="$SOCK" \
        CTX_PASSTHROUGH="$TMP/launch_loop" "$TMP/launch_loop" "$@")
}

HZ=$(getconf CLK_TCK)
for ((round = 1; round <= ROUNDS; round++)); do
    for broker in "${BROKERS[@]}"; do
        rm -f "$SOCK"
        "$broker" --config "$TMP/contexts.toml" --socket "$SOCK" --state-dir "$TMP/state" \
            --audit-log "$TMP/audit.jsonl" 2>"$TMP/broker.log" &
        BROKER_PID=$!
        for _ in $(seq 100); do "$BIN/ctx" --socket "$SOCK" status >/dev/null 2>&1 && break; sleep 0.05; done
        routed 200 /bin/true >/dev/null # warm-up: threads started, caches filled
        a=$(cpu_ticks)
        switches >"$TMP/s1"
        lat=$(routed "$N" /bin/true)
        b=$(cpu_ticks)
        switches >"$TMP/s2"
        by=$(join "$TMP/s1" "$TMP/s2" | awk -v n="$N" '{ d = ($3 - $2) / n; if (d >= 0.05) printf "%s %.1f, ", $1, d }')
        total=$(join "$TMP/s1" "$TMP/s2" | awk -v n="$N" '{ s += $3 - $2 } END { printf "%.1f", s / n }')
        cpu=$(((b - a) * 1000000 / HZ / N))
        echo "round $round $(basename "$broker"): broker CPU ${cpu} µs/launch, ${total} switches/launch (${by%, }), p50/p90 ${lat// / / } µs, load $(cut -d' ' -f1 /proc/loadavg)"
        kill "$BROKER_PID"
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=
    done
done
