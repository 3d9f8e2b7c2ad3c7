#!/usr/bin/env bash
# Coverage of onnx-cle on real PyTorch exports: exports torchvision models (random weights,
# nothing downloaded but the packages) with the legacy exporter (no constant folding) and the
# default one, and prints per file what onnx-cle folds and scales (scripts/torchvision_coverage.py).
# Not part of `cargo test`: torch from PyPI is several GB.
#
# Creates its venv on first use: ${ONNX_CLE_TORCH_VENV:-$HOME/.cache/onnx-cle-venvs/torch-export}
# (torch, torchvision, onnx, onnxscript from PyPI).
#
# Usage: scripts/torchvision_coverage.sh [--before OLD_ONNX_CLE] [--out DIR] [MODEL...]
# Environment: ONNX_CLE_BIN (default: a release build, made with cargo).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${ONNX_CLE_TORCH_VENV:-$HOME/.cache/onnx-cle-venvs/torch-export}"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, torchvision, onnx, onnxscript" 2>/dev/null; then
    echo "torchvision_coverage: creating $venv (torch, torchvision, onnx, onnxscript)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q torch torchvision onnx onnxscript
fi

if [ -n "${ONNX_CLE_BIN:-}" ]; then
    bin="$ONNX_CLE_BIN"
else
    (cd "$root" && cargo build --quiet --release --bin onnx-cle)
    bin="${CARGO_TARGET_DIR:-$root/target}/release/onnx-cle"
fi

exec "$venv/bin/python" "$root/scripts/torchvision_coverage.py" --bin "$bin" "$@"
