#!/usr/bin/env bash
# What the egress proxy costs: a 200 MB download by curl from a context with
# `isolation.network = { allow = [..] }` (through the broker's proxy, as an absolute-URI
# request and as a CONNECT tunnel) against the same download from a plain context
# (direct), and the time to first byte of a small file both ways (the connect latency
# the proxy adds: one loopback hop, the name resolution, the upstream connect). Prints
# ratios (goal: proxied throughput >= 80% of direct), not pass/fail.
#
#   sudo bash scripts/bench-egress.sh [RUNS [OLD_DIR]]
#
# RUNS rounds (default 5), each one download of each kind (their order rotating), so a
# ratio compares downloads made seconds apart: on a shared machine the load moves more
# than the proxy does. A round's ratios are its own; the table gives their medians. The time
# to first byte is the median of 10x RUNS small requests each way.
#
# OLD_DIR (a directory holding another build's ctx-broker, ctx and ctx-shim) runs that
# broker beside this one, on the same server, its rounds alternating with this one's,
# and prints both: an A/B of two builds under the same load.
#
# Besides the throughput, the CPU time (user + system) each kind of download costs: curl's,
# the server's and the broker's. Where the machine is busy the download gets a share of
# the CPU, and the ratio tends to the ratio of these costs.
#
# The server is a local sendfile loop on a TEST-NET-1 address added to lo, under a name
# added to /etc/hosts; both are removed on exit. It sends with the host's default
# congestion control, or SERVER_CC's (e.g. SERVER_CC=cubic): where the default paces
# (BBR), its pacing on a loopback connection, which no remote server has, is what holds
# a proxied download back on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
OLD=${2:-}
if [ "$(id -u)" -ne 0 ]; then
    echo "bench-egress.sh: run as root (contexts switch uid, the test address goes on lo)" >&2
    exit 1
fi
# shellcheck source=scripts/lib/users.sh
. scripts/lib/users.sh
ensure_user ctx-user
cargo build --release --quiet
BIN=$PWD/target/release
if [ -n "$OLD" ]; then
    OLD=$(cd "$OLD" && pwd)
    for f in ctx-broker ctx ctx-shim; do
        [ -x "$OLD/$f" ] || { echo "bench-egress.sh: no $f in $OLD" >&2; exit 1; }
    done
fi
TMP=$(mktemp -d)
chmod 755 "$TMP"
NAME="bench-$$.egress.test"
MARK="# ctx-bench-egress-$$"
IP=
BROKER_PIDS=()
SERVER_PID=
cleanup() {
    set +e
    for pid in "${BROKER_PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    [ -n "$IP" ] && ip addr del "$IP/32" dev lo 2>/dev/null
    # In place, under the lock the tests take: /etc/hosts may be a bind mount.
    python3 - "$MARK" <<'EOF' || true
import fcntl, sys
with open('/etc/hosts', 'r+') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    kept = ''.join(l for l in f.readlines() if sys.argv[1] not in l)
    f.seek(0); f.write(kept); f.truncate()
EOF
    rm -rf "$TMP"
}
trap cleanup EXIT

for n in $(seq 200 250); do
    if ip addr add "192.0.2.$n/32" dev lo 2>/dev/null; then IP=192.0.2.$n; break; fi
done
[ -n "$IP" ] || { echo "bench-egress.sh: no free address in 192.0.2.200-250" >&2; exit 1; }
python3 - "$IP $NAME $MARK" <<'EOF'
import fcntl, sys
with open('/etc/hosts', 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.write(sys.argv[1] + '\n')
EOF

head -c 200M /dev/zero >"$TMP/big"
head -c 1K /dev/zero >"$TMP/small"
chmod 644 "$TMP/big" "$TMP/small"
# A server that is not the bottleneck: one thread per connection, the body by sendfile.
cat >"$TMP/server.py" <<'EOF'
import os, socket, sys, threading
root, ip = sys.argv[1], sys.argv[2]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, 0)); s.listen(128)
if len(sys.argv) > 3:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, sys.argv[3].encode())
print(s.getsockname()[1], flush=True)
def serve(c):
    with c:
        head = b''
        while b'\r\n\r\n' not in head:
            d = c.recv(4096)
            if not d: return
            head += d
        path = os.path.join(root, head.split(b' ')[1].decode().lstrip('/'))
        with open(path, 'rb') as f:
            size = os.fstat(f.fileno()).st_size
            c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n' % size)
            off = 0
            while off < size:
                off += os.sendfile(c.fileno(), f.fileno(), off, size - off)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
# shellcheck disable=SC2086 # no congestion control named: the host's default
python3 "$TMP/server.py" "$TMP" "$IP" ${SERVER_CC:-} >"$TMP/port" &
SERVER_PID=$!
for _ in $(seq 100); do [ -s "$TMP/port" ] && break; sleep 0.05; done
PORT=$(cat "$TMP/port")

cat >"$TMP/contexts.toml" <<EOF
[contexts.direct]
user = "ctx-user"
cwd = "/"
allow = { uids = [0] }

[contexts.egress]
user = "ctx-user"
cwd = "/"
allow = { uids = [0] }
# The server is on an address added to lo, one of the host's own: a name reaches it
# only where the address is listed too.
isolation = { network = { allow = ["$NAME", "$IP"] } }
EOF
# One broker per build, each with its own socket, state and log; the same contexts.
declare -A DIR SOCK PID
BUILDS=(new)
[ -n "$OLD" ] && BUILDS+=(old)
DIR[new]=$BIN
DIR[old]=$OLD
for b in "${BUILDS[@]}"; do
    SOCK[$b]=$TMP/$b.sock
    "${DIR[$b]}/ctx-broker" --config "$TMP/contexts.toml" --socket "${SOCK[$b]}" \
        --state-dir "$TMP/state-$b" --audit-log "$TMP/audit-$b.jsonl" 2>"$TMP/broker-$b.log" &
    PID[$b]=$!
    BROKER_PIDS+=("${PID[$b]}")
    for _ in $(seq 100); do
        "${DIR[$b]}/ctx" --socket "${SOCK[$b]}" status >/dev/null 2>&1 && break
        sleep 0.05
    done
done

# CPU time (user + system) of a process and its exited threads, in ms.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%d\n", ($14 + $15) * 1000 / hz}' "/proc/$1/stat"; }
# One download by curl in a context of build $1: prints its speed (bytes/s) and the CPU
# time (ms) of curl, the server and the broker over it.
download() { # build, context, extra curl flag or ""
    local b=$1 s0 p0 out
    s0=$(cpu "$SERVER_PID")
    p0=$(cpu "${PID[$b]}")
    out=$("${DIR[$b]}/ctx" --socket "${SOCK[$b]}" exec --context "$2" -- sh -c "
        curl -sS $3 -o /dev/null -w '%{speed_download}\n' http://$NAME:$PORT/big || exit 1
        times")
    # `times`: the shell's own line, then its children's (curl's): user, then system.
    echo "$out" | awk -v s=$(($(cpu "$SERVER_PID") - s0)) -v p=$(($(cpu "${PID[$b]}") - p0)) '
        NR == 1 { speed = $1 }
        NR == 3 { gsub(/[ms]/, " "); split($0, t, " "); c = (t[1] * 60 + t[2] + t[3] * 60 + t[4]) * 1000 }
        END { printf "%s %.0f %d %d\n", speed, c, s, p }'
}
# curl in a context, N times: one number per line (curl's -w field).
measure() { # build, context, extra curl flag or "", file, -w field, count[, host]
    local flag=$3 host=${7:-$NAME}
    "${DIR[$1]}/ctx" --socket "${SOCK[$1]}" exec --context "$2" -- sh -c "
        for i in \$(seq $6); do
            curl -sS $flag -o /dev/null -w '%{$5}\n' http://$host:$PORT/$4 || exit 1
        done"
}
median() { python3 -c 'import statistics,sys; print(statistics.median(float(l) for l in sys.stdin if l.strip()))'; }

download new direct "" >/dev/null # warm the page cache
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
# Rounds: each build in turn (which goes first alternates), each a direct, an absolute-URI
# and a CONNECT download, in an order that rotates from round to round, so that no kind
# always follows the same one. Lines: build round path speed curl server broker.
KINDS=("direct direct" "http egress" "connect egress -p")
for r in $(seq "$RUNS"); do
    order=("${BUILDS[@]}")
    if [ $((r % 2)) -eq 0 ] && [ ${#BUILDS[@]} -eq 2 ]; then order=(old new); fi
    for b in "${order[@]}"; do
        for k in 0 1 2; do
            # shellcheck disable=SC2086 # path, context and curl flag
            set -- ${KINDS[$(((k + r) % 3))]}
            echo "$b $r $1 $(download "$b" "$2" "${3:-}")"
        done
    done
done >"$TMP/rounds"
SMALL=$((RUNS * 10))
for b in "${BUILDS[@]}"; do
    # Direct by address: the proxy's added time then includes its own name resolution.
    echo "$b direct $(measure "$b" direct "" small time_starttransfer "$SMALL" "$IP" | median)"
    echo "$b http $(measure "$b" egress "" small time_starttransfer "$SMALL" | median)"
    echo "$b connect $(measure "$b" egress "-p" small time_starttransfer "$SMALL" | median)"
done >"$TMP/first"

echo "\`sudo bash scripts/bench-egress.sh $RUNS${OLD:+ OLD_DIR}\` on $(nproc) vCPUs, $(uname -r), $(date +%F),"
echo "load average $LOAD before the rounds, $(cut -d' ' -f1-3 /proc/loadavg) after; the server"
echo "sends with ${SERVER_CC:-$(cat /proc/sys/net/ipv4/tcp_congestion_control)}:"
echo "curl from a context, 200 MB in $RUNS rounds (the ratios are each round's own, their"
echo "median and range) and the 1 KB time to first byte (median of $SMALL)."
python3 - "$TMP/rounds" "$TMP/first" "${BUILDS[@]}" <<'EOF'
import statistics, sys
from collections import defaultdict
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
first = {(b, p): float(t) for b, p, t in (l.split() for l in open(sys.argv[2]) if l.strip())}
builds = sys.argv[3:]
speed, cost = defaultdict(dict), defaultdict(list)
for b, r, path, s, c, srv, brk in rows:
    speed[b, int(r)][path] = float(s)
    cost[b, path].append((float(c), float(srv), float(brk)))
med = statistics.median
for b in builds:
    rounds = sorted(r for (bb, r) in speed if bb == b)
    ratio = lambda p: [speed[b, r][p] / speed[b, r]['direct'] for r in rounds]
    if len(builds) > 1:
        print(f'\n{"this tree" if b == "new" else "OLD_DIR"}, round by round: direct, then % of it')
        for r in rounds:
            d = speed[b, r]
            print(f'  round {r}: direct {d["direct"]/1e6:.0f} MB/s, absolute-URI '
                  f'{d["http"]/d["direct"]:.0%}, CONNECT {d["connect"]/d["direct"]:.0%}')
    print()
    td = first[b, 'direct']
    print('| path | 200 MB throughput | against direct | time to first byte | added |')
    print('|---|---|---|---|---|')
    print(f'| direct (plain context; first byte: by address) | '
          f'{med(speed[b, r]["direct"] for r in rounds)/1e6:.0f} MB/s | 100% | {td*1000:.2f} ms | |')
    for p, label in (('http', 'proxy, absolute-URI (`HTTP_PROXY`)'),
                     ('connect', 'proxy, CONNECT tunnel (`curl -p`)')):
        t = first[b, p]
        print(f'| {label} | {med(speed[b, r][p] for r in rounds)/1e6:.0f} MB/s | '
              f'{med(ratio(p)):.0%} ({min(ratio(p)):.0%}-{max(ratio(p)):.0%}) | {t*1000:.2f} ms | '
              f'{(t-td)*1000:+.2f} ms ({t/td:.2f}x) |')
    print()
    print('CPU time (user + system) of a 200 MB download, mean of the rounds: curl + server + broker')
    for p, label in (('direct', 'direct'), ('http', 'absolute-URI'), ('connect', 'CONNECT')):
        c = [statistics.mean(x[i] for x in cost[b, p]) for i in range(3)]
        print(f'  {label:13} {sum(c):4.0f} ms = {c[0]:.0f} + {c[1]:.0f} + {c[2]:.0f}')
EOF
