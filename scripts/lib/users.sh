# Shared by scripts/test.sh and scripts/demo.sh: idempotent creation of the local accounts
# ctx's tests and demo run processes as. Source it; needs root.

# ensure_group NAME: creates a system group unless it exists.
ensure_group() {
    getent group "$1" >/dev/null || groupadd --system "$1"
}

# ensure_user NAME [SUPPLEMENTARY_GROUP...]: creates a login user with a home directory
# and its own primary group unless it exists, then adds it to the given groups.
ensure_user() {
    local name=$1
    shift
    if ! getent passwd "$name" >/dev/null; then
        useradd --create-home --user-group --shell /bin/bash "$name"
    fi
    local home
    home=$(getent passwd "$name" | cut -d: -f6)
    [ -d "$home" ] || install -d -o "$name" -g "$(id -g "$name")" -m 0755 "$home"
    local g
    for g in "$@"; do
        ensure_group "$g"
        id -nG "$name" | tr ' ' '\n' | grep -qx "$g" || usermod -a -G "$g" "$name"
    done
}
