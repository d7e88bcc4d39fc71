# Shared by the scripts the README's first commands run: `bash scripts/X.sh` works as root
# (a fresh Debian image: root, no sudo) and as a user with sudo. Source it.

# reexec_as_root SCRIPT [ARG...]: returns at once as root; otherwise runs SCRIPT again
# through sudo and exits with its status. Returns 1 (having said why on stderr) when sudo
# is missing or refuses, so the caller can stop or degrade.
#
# sudo resets PATH (secure_path) and HOME, which would hide the caller's Rust toolchain
# (~/.cargo/bin, ~/.rustup) and make root install a second one: the toolchain's variables,
# ctx's own and the test knobs are passed on explicitly.
reexec_as_root() {
    local script=$1
    shift
    [ "$(id -u)" -eq 0 ] && return 0
    if ! command -v sudo >/dev/null 2>&1; then
        echo "$(basename "$script"): not root, and sudo is not installed" >&2
        return 1
    fi
    local keep=("PATH=$PATH")
    [ -n "${CARGO_HOME:-}" ] || { [ -d "$HOME/.cargo" ] && keep+=("CARGO_HOME=$HOME/.cargo"); }
    [ -n "${RUSTUP_HOME:-}" ] || { [ -d "$HOME/.rustup" ] && keep+=("RUSTUP_HOME=$HOME/.rustup"); }
    local name
    while IFS= read -r name; do
        case $name in
            CARGO_* | RUSTUP_* | CTX_* | FUZZ_* | NEXTEST_* | RUST_LOG | TERM | LANG | LC_*)
                keep+=("$name=${!name}") ;;
        esac
    done < <(compgen -e)
    # -v first: a user sudo refuses (not in sudoers, no password) is told so here, and the
    # caller still decides what to do instead.
    if ! sudo -v; then
        echo "$(basename "$script"): sudo refused; run it as root" >&2
        return 1
    fi
    echo "$(basename "$script"): not root: running it again through sudo" >&2
    exec sudo -- env "${keep[@]}" bash "$script" "$@"
}
