#!/usr/bin/env bash
# Builds ctx and shows what it does, on the contexts.toml shipped at the repository root:
# a broker on a temporary socket, `ctx exec` into the `platform` and `user` contexts
# (different uids, different credentials, the caller's secret in neither), and the exit
# codes ctx passes back. Everything it starts it stops; its temp dir is removed.
#
#   bash scripts/demo.sh
#
# As root it creates the users the shipped contexts name (ctx-agent, ctx-user) if missing.
# Not as root it runs itself again through sudo when it may; without sudo (or with
# CTX_DEMO_DEGRADED=1) it runs degraded: both contexts run as you (no uid switch
# possible), which it says plainly.
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
repo=$(pwd)

if [ "$(id -u)" -ne 0 ] && [ -z "${CTX_DEMO_DEGRADED:-}" ]; then
    # shellcheck source=scripts/lib/root.sh
    . scripts/lib/root.sh
    reexec_as_root "$self" "$@" || echo "demo.sh: going on without root, degraded" >&2
fi

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
show() {
    # Prints a command, runs it, prints its exit status; never stops the demo.
    printf '$'
    printf ' %q' "$@"
    printf '\n'
    set +e
    "$@"
    local rc=$?
    set -e
    printf '  -> exit status %s\n' "$rc"
}

# What the build and the demo run need (installed as root, only when missing).
# shellcheck source=scripts/lib/toolchain.sh
. scripts/lib/toolchain.sh
ensure_packages cc:build-essential curl:curl /usr/bin/python3:python3 setpriv:util-linux musl-gcc:musl-tools
ensure_rust
cargo build --release --quiet
bin="$repo/target/release"

tmp=$(mktemp -d /tmp/ctx-demo.XXXXXX)
chmod 0755 "$tmp"
broker_pid=
cleanup() {
    if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
        kill -TERM "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

config="$repo/contexts.toml"
if [ "$(id -u)" -eq 0 ]; then
    # shellcheck source=scripts/lib/users.sh
    . scripts/lib/users.sh
    ensure_group ctx
    ensure_user ctx-agent ctx
    ensure_user ctx-user
    degraded=
else
    me=$(id -un)
    degraded=1
    bold "Degraded demo: you are not root."
    cat <<EOF
The broker cannot switch uid without root, so every context below runs as you ($me)
instead of ctx-agent and ctx-user: the demo cannot show different uids or groups. It still
shows that each context gets its own credentials, that your own environment's secret does
not cross, and the exit codes. Run it as root, or as a user who may use sudo, for the full demo.
EOF
    config="$tmp/contexts.toml"
    sed -e "s/^user = .*/user = \"$me\"/" -e "/^socket_group/d" \
        -e "s/uids = \[0\]/uids = [0, $(id -u)]/" \
        "$repo/contexts.toml" >"$config"
fi

sock="$tmp/broker.sock"
"$bin/ctx-broker" --config "$config" --socket "$sock" \
    --state-dir "$tmp/state" --audit-log "$tmp/audit.jsonl" 2>"$tmp/broker.log" &
broker_pid=$!
for _ in $(seq 1 200); do
    "$bin/ctx" --socket "$sock" status >/dev/null 2>&1 && break
    if ! kill -0 "$broker_pid" 2>/dev/null; then
        echo "demo: the broker exited during start-up:" >&2
        cat "$tmp/broker.log" >&2
        exit 1
    fi
    sleep 0.05
done
"$bin/ctx" --socket "$sock" status >/dev/null || {
    echo "demo: the broker did not answer on $sock within 10 s" >&2
    cat "$tmp/broker.log" >&2
    exit 1
}

ctx() { "$bin/ctx" --socket "$sock" "$@"; }
# Run from a directory every context user can enter (cwd = "inherit").
cd "$tmp"
export DEMO_CALLER_SECRET="the-callers-own-secret"

bold "The broker (pid $broker_pid) serves $config on $sock"
ctx status || true

bold "Who am I, and which credentials do I see? The caller has DEMO_CALLER_SECRET set."
# Shell builtins only: platform routes every program it starts on to user, so `id` run
# there would report user's uid, not platform's.
probe='echo "uid=$UID user=$USER HOME=$HOME cwd=$PWD"
for v in ANTHROPIC_API_KEY AWS_ACCESS_KEY_ID DEMO_CALLER_SECRET; do
  eval "x=\${$v-}"; echo "  $v=${x:-<not set>}"
done'
echo "-- locally:"
bash -c "$probe"
echo "-- ctx exec --context platform:"
ctx exec --context platform -- bash -c "$probe"
echo "-- ctx exec --context user:"
ctx exec --context user -- bash -c "$probe"

bold "Exit codes come back as the command's own"
show ctx exec --context user -- sh -c 'exit 3'
show ctx exec --context user -- false
show ctx exec --context user -- no-such-program
printf 'just text\n' >"$tmp/notes.txt"
chmod 0644 "$tmp/notes.txt"
show ctx exec --context user -- "$tmp/notes.txt"
show ctx exec --context user --cwd /nonexistent -- true
printf '$ ctx exec --context user -- sh -c '\''kill -TERM $$'\''\n'
set +e
(ctx exec --context user -- sh -c 'kill -TERM $$')
rc=$?
set -e
printf '  -> exit status %s (128 + %s: the routed process died by SIGTERM and ctx re-raised it)\n' \
    "$rc" "$((rc - 128))"

bold "An agent whose children are routed (examples/agent.py)"
cp "$repo/examples/agent.py" "$tmp/agent.py"
chmod 0644 "$tmp/agent.py"
echo "The agent runs in the platform context (route_children_to = \"user\"): it holds the"
echo "model key; every process it launches runs in the user context, without that key."
echo '$ ctx exec --context platform -- python3 agent.py'
ctx exec --context platform -- /usr/bin/python3 -u "$tmp/agent.py" || true
echo
echo "The same agent started by the caller with routing switched on (ctx run):"
echo '$ ANTHROPIC_API_KEY=sk-callers-key ctx run --route-to user -- python3 agent.py'
ANTHROPIC_API_KEY=sk-callers-key "$bin/ctx" --socket "$sock" run --route-to user \
    --passthrough /usr/bin/python3 -- /usr/bin/python3 -u "$tmp/agent.py" || true

bold "A persistent shell session in the user context (ctx sh)"
show ctx sh --context user 'cd /tmp && export AWS_PROFILE=prod'
show ctx sh --context user 'pwd; echo "AWS_PROFILE=$AWS_PROFILE"'

bold "Audit log ($tmp/audit.jsonl), one JSON line per launch:"
tail -n 3 "$tmp/audit.jsonl" 2>/dev/null || echo "(empty)"

bold "Stopping the broker"
kill -TERM "$broker_pid"
wait "$broker_pid" && echo "broker exited 0" || echo "broker exited $?"
[ -e "$sock" ] && echo "socket left behind: $sock" || echo "socket removed"
broker_pid=
if [ -n "$degraded" ]; then
    bold "Degraded run: both contexts ran as $me; run as root to see the uid switch."
fi
