#!/usr/bin/env bash
# Builds the CLI with fit_probe.patch (a throwaway worktree of HEAD) and runs fit_probe.py on the
# tuning split (README: Int8 outputs, "Ranges that fit"). The probe build goes through
# $CARGO_TARGET_DIR like any other (its binary is copied out; the worktree's crate has the same
# metadata hash as the tree's, so the tree's stats.rs is touched afterwards to make its next build
# relink its own binary): do not run it beside an evaluation that uses the release CLI.
#
# Usage: scripts/eval/analysis/fit_probe.sh [N]   (tuning crops per model, default 300)
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-cle-target}"
work="$(mktemp -d "${TMPDIR:-/tmp}/onnx-cle-fit-probe.XXXXXX")"
trap 'git -C "$root" worktree remove --force "$work/tree" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add --detach "$work/tree" HEAD >/dev/null
git -C "$work/tree" apply "$root/scripts/eval/analysis/fit_probe.patch"
(cd "$work/tree" && cargo build --locked --quiet --release --bin onnx-cle)
cp "$CARGO_TARGET_DIR/release/onnx-cle" "$work/onnx-cle"
touch "$root/src/quant/deploy/stats.rs"
source "$root/scripts/eval/env.sh"
FIT_PROBE_BIN="$work/onnx-cle" "$EVAL_PY" "$root/scripts/eval/analysis/fit_probe.py" "$@"
