#!/usr/bin/env bash
# What the egress proxy costs: a 200 MB download by curl from a context with
# `isolation.network = { allow = [..] }` (through the broker's proxy, as an absolute-URI
# request and as a CONNECT tunnel) against the same download from a plain context
# (direct), and the time to first byte of a small file both ways (the connect latency
# the proxy adds: one loopback hop, the name resolution, the upstream connect). Prints
# ratios (goal: proxied throughput >= 80% of direct), not pass/fail.
#
#   sudo bash scripts/bench-egress.sh [RUNS]      (default 5 downloads, 10x RUNS small requests)
#
# The server is a local sendfile loop on a TEST-NET-1 address added to lo, under a name
# added to /etc/hosts; both are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
if [ "$(id -u)" -ne 0 ]; then
    echo "bench-egress.sh: run as root (contexts switch uid, the test address goes on lo)" >&2
    exit 1
fi
# shellcheck source=scripts/lib/users.sh
. scripts/lib/users.sh
ensure_user ctx-user
cargo build --release --quiet
BIN=$PWD/target/release
TMP=$(mktemp -d)
chmod 755 "$TMP"
NAME="bench-$$.egress.test"
MARK="# ctx-bench-egress-$$"
IP=
BROKER_PID=
SERVER_PID=
cleanup() {
    set +e
    [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null
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
python3 "$TMP/server.py" "$TMP" "$IP" >"$TMP/port" &
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
SOCK=$TMP/broker.sock
"$BIN/ctx-broker" --config "$TMP/contexts.toml" --socket "$SOCK" --state-dir "$TMP/state" \
    --audit-log "$TMP/audit.jsonl" 2>"$TMP/broker.log" &
BROKER_PID=$!
for _ in $(seq 100); do "$BIN/ctx" --socket "$SOCK" status >/dev/null 2>&1 && break; sleep 0.05; done

# curl in the context, N times: one number per line (curl's -w field).
measure() { # context, extra curl flag or "", file, -w field, count[, host]
    local flag=$2 host=${6:-$NAME}
    "$BIN/ctx" --socket "$SOCK" exec --context "$1" -- sh -c "
        for i in \$(seq $5); do
            curl -sS $flag -o /dev/null -w '%{$4}\n' http://$host:$PORT/$3 || exit 1
        done"
}
median() { python3 -c 'import statistics,sys; print(statistics.median(float(l) for l in sys.stdin if l.strip()))'; }

measure direct "" big speed_download 1 >/dev/null # warm the page cache
# The broker's CPU time (user + system, clock ticks) over the proxied downloads: what the
# relay costs per byte whatever else the machine is doing, which the ratios are not.
cpu() { awk '{print $14 + $15}' "/proc/$BROKER_PID/stat"; }
DIRECT=$(measure direct "" big speed_download "$RUNS" | median)
CPU0=$(cpu)
PROXIED=$(measure egress "" big speed_download "$RUNS" | median)
TUNNEL=$(measure egress "-p" big speed_download "$RUNS" | median)
CPU1=$(cpu)
SMALL=$((RUNS * 10))
# Direct by address: the proxy's added time then includes its own name resolution.
T_DIRECT=$(measure direct "" small time_starttransfer "$SMALL" "$IP" | median)
T_PROXIED=$(measure egress "" small time_starttransfer "$SMALL" | median)
T_TUNNEL=$(measure egress "-p" small time_starttransfer "$SMALL" | median)

echo "\`sudo bash scripts/bench-egress.sh $RUNS\` on $(nproc) vCPUs, $(uname -r), $(date +%F):"
echo "curl from a context, 200 MB (median of $RUNS) and 1 KB time to first byte (median of $SMALL)."
echo
python3 - "$DIRECT" "$PROXIED" "$TUNNEL" "$T_DIRECT" "$T_PROXIED" "$T_TUNNEL" <<'EOF'
import sys
d, p, t, td, tp, tt = map(float, sys.argv[1:])
mb = lambda b: b / 1e6
print('| path | 200 MB throughput | against direct | time to first byte | added |')
print('|---|---|---|---|---|')
print(f'| direct (plain context; first byte: by address) | {mb(d):.0f} MB/s | 100% | {td*1000:.2f} ms | |')
print(f'| proxy, absolute-URI (`HTTP_PROXY`) | {mb(p):.0f} MB/s | {p/d:.0%} | {tp*1000:.2f} ms | {(tp-td)*1000:+.2f} ms ({tp/td:.2f}x) |')
print(f'| proxy, CONNECT tunnel (`curl -p`) | {mb(t):.0f} MB/s | {t/d:.0%} | {tt*1000:.2f} ms | {(tt-td)*1000:+.2f} ms ({tt/td:.2f}x) |')
EOF
echo
echo "broker CPU time per proxied 200 MB download: \
$(((CPU1 - CPU0) * 1000 / $(getconf CLK_TCK) / (RUNS * 2))) ms (user + system)"
