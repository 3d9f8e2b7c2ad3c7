#!/usr/bin/env bash
# Checks onnx-cle's output with the official tools, as a new user would:
#   onnx-cle equalize ../shared/models/mobilenet_v2.onnx -o out.onnx --report r.json
# (default options, then --compat aimet), onnx.checker.check_model(full_check=True) on the
# results, and onnxruntime on the original and the outputs (default mode: rel L2 <= 1e-5).
#
# Usage: scripts/check_onnxruntime.sh [ONNX_CLE_BINARY]
#   The binary defaults to $ONNX_CLE_BIN, else it is built with `cargo build`.
# Environment:
#   ONNX_CLE_VENV_DIR  where throwaway venvs live (default ~/.cache/onnx-cle-venvs); this script
#                      uses ONNX_CLE_VENV_DIR/ort, created (pip install onnx==1.23.2 onnxruntime
#                      numpy) only when missing or broken.
#   ONNX_CLE_MODELS    fixture folder (default <repo>/../shared/models).
# Exit status: 0 all checks passed; non-zero otherwise.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
models="${ONNX_CLE_MODELS:-$root/../shared/models}"
venv="${ONNX_CLE_VENV_DIR:-$HOME/.cache/onnx-cle-venvs}/ort"
bin="${1:-${ONNX_CLE_BIN:-}}"

if [ ! -f "$models/mobilenet_v2.onnx" ]; then
    echo "check_onnxruntime: $models/mobilenet_v2.onnx not found" >&2
    exit 2
fi

. "$root/scripts/checks_common.sh"
bin="$(onnx_cle_bin "$root" "$bin")"
ensure_ort_venv "$venv"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== onnx-cle equalize mobilenet_v2.onnx (default options)"
"$bin" equalize "$models/mobilenet_v2.onnx" -o "$work/out.onnx" --report "$work/r.json"
echo "== onnx-cle equalize mobilenet_v2.onnx --compat aimet"
if ! "$bin" equalize "$models/mobilenet_v2.onnx" -o "$work/out_aimet.onnx" \
    --report "$work/r_aimet.json" --compat aimet 2>"$work/aimet.err"; then
    cat "$work/aimet.err" >&2
    exit 1
fi
# The summary line only (the note lists every replaced ReLU6).
grep -v '^onnx-cle: note:' "$work/aimet.err" >&2 || true
test -s "$work/r.json" -a -s "$work/r_aimet.json"

fixture=()
if [ -f "$models/mobilenet_v2.aimet_cle.onnx" ]; then
    fixture=("$models/mobilenet_v2.aimet_cle.onnx")
fi
echo "== onnx checker + onnxruntime"
"$venv/bin/python" "$root/scripts/check_onnxruntime.py" \
    "$models/mobilenet_v2.onnx" "$work/out.onnx" "$work/out_aimet.onnx" "${fixture[@]}"
echo "check_onnxruntime: all checks passed"
