# Sourced by the probe scripts: builds the CLI with one patch in a throwaway worktree of HEAD.
#   probe_build PATCH TOUCH   sets PROBE_BIN (the patched CLI, deleted on exit) and sources
#                             scripts/eval/env.sh; PATCH is relative to this folder, TOUCH a file
#                             of the tree the patch changes.
# The probe build goes through $CARGO_TARGET_DIR like any other (its binary is copied out; the
# worktree's crate has the same metadata hash as the tree's, so TOUCH is touched afterwards to make
# the tree's next build relink its own binary): do not run a probe beside an evaluation that uses
# the release CLI.
probe_build() {
    local root work
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-cle-target}"
    work="$(mktemp -d "${TMPDIR:-/tmp}/onnx-cle-probe.XXXXXX")"
    # shellcheck disable=SC2064
    trap "git -C '$root' worktree remove --force '$work/tree' >/dev/null 2>&1 || true; rm -rf '$work'" EXIT
    git -C "$root" worktree add --detach "$work/tree" HEAD >/dev/null
    git -C "$work/tree" apply "$root/scripts/eval/analysis/$1"
    (cd "$work/tree" && cargo build --locked --quiet --release --bin onnx-cle)
    cp "$CARGO_TARGET_DIR/release/onnx-cle" "$work/onnx-cle"
    touch "$root/$2"
    source "$root/scripts/eval/env.sh"
    PROBE_BIN="$work/onnx-cle"
}
