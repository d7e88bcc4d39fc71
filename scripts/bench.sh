#!/usr/bin/env bash
# Launch-cost benchmark: one run measures, side by side, the direct launch of /bin/true,
# ctx (CLI and, once built, the interposer from C, Python and Node callers) and the tools
# people use instead (env, setpriv, runuser, sudo, unshare, bwrap). Prints a Markdown table
# of medians and ratios to the direct launch. Installs the peers it needs itself.
#
#   sudo bash scripts/bench.sh [RUNS]        (default 300 runs per command)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-300}

if [ "$(id -u)" -ne 0 ]; then
    echo "bench.sh: run as root (it compares uid-switching tools and starts a broker)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
missing=()
for pair in hyperfine:hyperfine sudo:sudo bwrap:bubblewrap setpriv:util-linux gcc:gcc node:nodejs; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
. scripts/lib/users.sh
ensure_user ctx-user
BENCH_UID=$(id -u ctx-user)

cargo build --release --quiet
BIN=$PWD/target/release
TMP=$(mktemp -d)
cleanup() {
    [ -n "${BROKER_PID:-}" ] && kill "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

cat >"$TMP/contexts.toml" <<TOML
[contexts.bench]
user = "ctx-user"
cwd = "inherit"
allow = { uids = [0] }
TOML
SOCK=$TMP/broker.sock
"$BIN/ctx-broker" --config "$TMP/contexts.toml" --socket "$SOCK" --state-dir "$TMP/state" \
    --audit-log "$TMP/audit.jsonl" 2>"$TMP/broker.log" &
BROKER_PID=$!
for _ in $(seq 100); do "$BIN/ctx" --socket "$SOCK" status >/dev/null 2>&1 && break; sleep 0.05; done

declare -a NAMES CMDS
add() { NAMES+=("$1"); CMDS+=("$2"); }
add "direct fork/exec/wait" "/bin/true"
add "env /bin/true" "/usr/bin/env /bin/true"
add "setpriv --reuid" "/usr/bin/setpriv --reuid=$BENCH_UID --regid=$BENCH_UID --clear-groups /bin/true"
add "unshare --pid --fork --mount-proc" "/usr/bin/unshare --pid --fork --mount-proc /bin/true"
add "runuser -u" "/usr/sbin/runuser -u ctx-user -- /bin/true"
add "bwrap --unshare-pid --unshare-net" "/usr/bin/bwrap --dev-bind / / --unshare-pid --unshare-net /bin/true"
add "sudo -u" "/usr/bin/sudo -u ctx-user /bin/true"
add "ctx exec -- /bin/true" "$BIN/ctx --socket $SOCK exec --context bench -- /bin/true"
add "bash -c 'cd /tmp; X=1'" "/bin/bash -c 'cd /tmp; X=1'"
add "ctx sh 'cd /tmp; X=1' (persistent session)" "$BIN/ctx --socket $SOCK sh --context bench 'cd /tmp; X=1'"

declare -A MED
for i in "${!NAMES[@]}"; do
    json=$TMP/h$i.json
    if hyperfine -N --warmup 30 --runs "$RUNS" --export-json "$json" "${CMDS[$i]}" >/dev/null 2>"$TMP/h$i.err"; then
        MED[$i]=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["median"]*1000)' "$json")
    else
        MED[$i]=""
        echo "bench.sh: ${NAMES[$i]} failed: $(tail -1 "$TMP/h$i.err")" >&2
    fi
done

# Launches from a C caller (fork+execve and posix_spawn), Python and Node, each in-process
# so the caller's own start-up is not counted; with the interposer when it is built.
gcc -O2 -o "$TMP/launch_loop" scripts/bench/launch_loop.c
N=$RUNS
py_loop='import subprocess,time,sys
n=int(sys.argv[1]); t=[]
for _ in range(n):
    a=time.perf_counter(); subprocess.run(["/bin/true"],check=True); t.append(time.perf_counter()-a)
t.sort(); print(t[n//2]*1e6)'
node_loop='const {spawnSync}=require("child_process"); const n=+process.argv[1]; const t=[];
for(let i=0;i<n;i++){const a=process.hrtime.bigint(); const r=spawnSync("/bin/true"); if(r.status!==0) throw new Error("failed"); t.push(Number(process.hrtime.bigint()-a)/1e3);}
t.sort((x,y)=>x-y); console.log(t[n>>1]);'
declare -a LNAMES LDIRECT LROUTED
SO=$BIN/libctx_interposer.so
PY=$(python3 -c 'import sys; print(sys.executable)')
NODE=$(command -v node)
# The callers themselves run locally (passthrough); only their launches of /bin/true are
# routed. pyenv-style shims are skipped by calling the real interpreter.
routed() {
    env LD_PRELOAD="$SO" CTX_ROUTE=bench CTX_SOCKET="$SOCK" \
        CTX_PASSTHROUGH="$TMP/launch_loop:$PY:$NODE" "$@"
}
measure() { # name, command... (prints the p50 in microseconds first on its last line)
    local name=$1 out; shift
    LNAMES+=("$name")
    out=$("$@" | tail -1); LDIRECT+=("${out%% *}")
    if [ -f "$SO" ]; then
        out=$(routed "$@" | tail -1); LROUTED+=("${out%% *}")
    else
        LROUTED+=("")
    fi
}
measure "C fork+execve" "$TMP/launch_loop" "$N" /bin/true
measure "C posix_spawn" "$TMP/launch_loop" -s "$N" /bin/true
measure "Python subprocess.run" "$PY" -c "$py_loop" "$N"
measure "Node spawnSync" "$NODE" -e "$node_loop" "$N"

direct=${MED[0]}
echo
echo "Launch of /bin/true, median of $RUNS runs (hyperfine -N), $(nproc) CPUs, $(uname -r):"
echo
echo "| launch of /bin/true | ms | x direct |"
echo "|---|---|---|"
for i in "${!NAMES[@]}"; do
    m=${MED[$i]}
    if [ -n "$m" ]; then
        printf '| %s | %.2f | %.1f |\n' "${NAMES[$i]}" "$m" "$(python3 -c "print($m/$direct)")"
    else
        printf '| %s | failed | |\n' "${NAMES[$i]}"
    fi
done
echo
echo "In-process callers (median of $N launches; routed = LD_PRELOAD interposer, CTX_ROUTE=bench):"
echo
echo "| caller | direct ms | routed ms | routed x direct |"
echo "|---|---|---|---|"
for i in "${!LNAMES[@]}"; do
    d=${LDIRECT[$i]}; r=${LROUTED[$i]}
    if [ -n "$r" ]; then
        printf '| %s | %.2f | %.2f | %.1f |\n' "${LNAMES[$i]}" "$(python3 -c "print($d/1000)")" \
            "$(python3 -c "print($r/1000)")" "$(python3 -c "print($r/$d)")"
    else
        printf '| %s | %.2f | n/a | |\n' "${LNAMES[$i]}" "$(python3 -c "print($d/1000)")"
    fi
done
