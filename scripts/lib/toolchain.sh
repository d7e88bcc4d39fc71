# Sourced by scripts/test.sh and scripts/demo.sh: what a build needs on a fresh Debian 12.
#
#   ensure_packages CMD:PACKAGE...   apt-get installs each PACKAGE whose CMD is missing
#                                    (as root; otherwise says what is missing)
#   ensure_rust                      puts cargo on PATH: ~/.cargo/bin, else rustup

ensure_packages() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing: ${missing[*]} (install them, or run as root)" >&2
        return 0
    fi
    echo "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" ca-certificates >/dev/null
}

ensure_rust() {
    command -v cargo >/dev/null 2>&1 && return 0
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
        return 0
    fi
    echo "installing a Rust toolchain with rustup"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
    export PATH="$HOME/.cargo/bin:$PATH"
}
