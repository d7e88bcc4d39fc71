#!/usr/bin/env bash
# What each isolation option of contexts.toml costs a launch: `ctx exec -- /bin/true` into a
# context with that one option, against the same into a plain context, in one run
# (hyperfine medians, no shell). Prints a Markdown table (the README's isolation costs).
#
#   sudo bash scripts/bench-isolation.sh [RUNS]      (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-300}
if [ "$(id -u)" -ne 0 ]; then
    echo "bench-isolation.sh: run as root (contexts switch uid)" >&2
    exit 1
fi
command -v hyperfine >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends hyperfine >/dev/null
}
# shellcheck source=scripts/lib/users.sh
. scripts/lib/users.sh
ensure_user ctx-user
cargo build --release --quiet
BIN=$PWD/target/release
TMP=$(mktemp -d)
chmod 755 "$TMP"
BROKER_PID=
cleanup() {
    [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

ctx_table() { # name, isolation/extra TOML lines
    printf '[contexts.%s]\nuser = "ctx-user"\ncwd = "/"\nallow = { uids = [0] }\n%s\n\n' "$1" "$2"
}
{
    ctx_table plain ""
    ctx_table pid 'isolation = { pid = true }'
    ctx_table netnone 'isolation = { network = "none" }'
    ctx_table fsrules 'isolation = { read_only = ["/"], read_write = ["/tmp"], no_access = ["/root"] }'
    ctx_table scoped 'isolation = { signals = "scoped" }'
    ctx_table tcp 'isolation = { tcp_bind = [], tcp_connect = [443] }'
    ctx_table cgroup "pids_max = 512\nmemory_max = \"1G\""
    ctx_table enforce "route_children_to = \"plain\"\nisolation = { enforce = true }"
    ctx_table all "route_children_to = \"plain\"\npids_max = 512\nmemory_max = \"1G\"\nisolation = { pid = true, network = \"none\", read_only = [\"/\"], read_write = [\"/tmp\"], signals = \"scoped\", tcp_bind = [], tcp_connect = [443], enforce = true }"
} | sed 's/\\n/\n/g' >"$TMP/contexts.toml"
SOCK=$TMP/broker.sock
"$BIN/ctx-broker" --config "$TMP/contexts.toml" --socket "$SOCK" --state-dir "$TMP/state" \
    --audit-log "$TMP/audit.jsonl" 2>"$TMP/broker.log" &
BROKER_PID=$!
for _ in $(seq 100); do "$BIN/ctx" --socket "$SOCK" status >/dev/null 2>&1 && break; sleep 0.05; done

declare -A LABEL=(
    [plain]="none (plain context)" [pid]='`pid = true`' [netnone]='`network = "none"`'
    [fsrules]='`read_only`/`read_write`/`no_access`' [scoped]='`signals = "scoped"`'
    [tcp]='`tcp_bind`/`tcp_connect`' [cgroup]='`pids_max` + `memory_max` (cgroup)'
    [enforce]='`enforce = true` (Landlock + exec guard)' [all]='all of the above together'
)
echo "\`sudo bash scripts/bench-isolation.sh $RUNS\` on $(nproc) vCPUs, $(uname -r), $(date +%F):"
echo "\`ctx exec -- /bin/true\` into each context, hyperfine median of $RUNS runs."
echo
median() { # context -> median ms, or empty
    hyperfine -N --warmup 30 --runs "$RUNS" --export-json "$TMP/$1.json" \
        "$BIN/ctx --socket $SOCK exec --context $1 -- /bin/true" >/dev/null 2>"$TMP/$1.err" || return 0
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["median"]*1000)' "$TMP/$1.json"
}
# A first pass warms every context up (namespaces, rulesets, cgroups are made at the first
# launch); the plain context is then measured before and after the others, and the
# comparison uses the lower of the two.
for c in plain pid netnone fsrules scoped tcp cgroup enforce all; do
    "$BIN/ctx" --socket "$SOCK" exec --context "$c" -- /bin/true
done
declare -A MS
for c in plain pid netnone fsrules scoped tcp cgroup enforce all; do MS[$c]=$(median "$c"); done
PLAIN=$(python3 -c "print(min($(median plain), ${MS[plain]}))")
echo "| isolation | launch | against plain |"
echo "|---|---|---|"
for c in plain pid netnone fsrules scoped tcp cgroup enforce all; do
    if [ -z "${MS[$c]}" ]; then
        echo "| ${LABEL[$c]} | failed: $(tail -1 "$TMP/$c.err") | |"
        continue
    fi
    [ "$c" = plain ] && MS[$c]=$PLAIN
    delta=$(python3 -c "print(f'{${MS[$c]}-$PLAIN:+.2f} ms')")
    printf '| %s | %.2f ms | %s |\n' "${LABEL[$c]}" "${MS[$c]}" "$delta"
done
