#!/usr/bin/env bash
# The held-out int8 evaluation: prints, for EfficientNet-Lite0 and MobileNetV2 (../shared/models),
# one Markdown table per model with a row per variant of scripts/eval/variants.tsv, against the
# original FP32 model's logits: FP32 SQNR; per-tensor int8 weights (onnx-cle's simulation); W8A8
# in onnx-cle's simulation; W8A8 in onnxruntime's real int8 kernels (quantize_static, QDQ);
# aggregate SQNR / per-image median / per-image 10th percentile / top-1 agreement each; and the
# worst source photo's per-image median. Its sibling scripts/eval_int8.sh evaluates the int8
# outputs on all five real models (kernels with and without VNNI, float QDQ ops, quantize_static).
#
# Usage: scripts/eval_heldout.sh [--split heldout|tune] [--model efficientnet_lite0|mobilenet_v2]
#                                [--only LABEL]... [--variants FILE] [--json OUT.json]
#   --split    heldout (default, for reporting) or tune (the only split to look at while choosing
#              defaults). The split is by source photo, fixed in scripts/eval/photos.tsv.
#   --model    one model (repeatable; default both).
#   --only     rows whose label matches exactly (repeatable; default all).
#   --variants the rows (default scripts/eval/variants.tsv; its header documents the format:
#              label, source cli|file, CLI args or path, kind fp32|per_channel|qdq, [file]).
#   --json     also write every figure (per-photo medians included) to this file.
#
# First use: creates ~/.cache/onnx-cle-venvs/eval (pinned: scripts/eval/requirements.txt, and the
# photo packages of scripts/eval/photos.txt, installed --no-deps only for their image files) and
# the image set in ~/.cache/onnx-cle-eval/<hash>/ (scripts/eval/build_set.py); builds the release
# CLI and examples/eval_sim.rs. Model runs are cached per model file hash in
# $CARGO_TARGET_DIR/eval-runs (ONNX_CLE_EVAL_WORK; one per checkout, as the CLI outputs live
# there), so re-running after adding a row only measures the new row. Environment: ONNX_CLE_MODELS (default <repo>/../shared/models),
# ONNX_CLE_VENV_DIR, ONNX_CLE_EVAL_CACHE, CARGO_TARGET_DIR, ONNX_CLE_EVAL_THREADS (onnxruntime
# threads, default 1). Takes about 1-2 minutes per row and model on 2 cores.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
models="${ONNX_CLE_MODELS:-$root/../shared/models}"
source "$root/scripts/eval/env.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-cle-target}"
(cd "$root" && cargo build --locked --release --quiet --bin onnx-cle --example eval_sim)
work="${ONNX_CLE_EVAL_WORK:-$CARGO_TARGET_DIR/eval-runs}"
mkdir -p "$work"
exec "$EVAL_PY" "$root/scripts/eval/evaluate.py" --data "$EVAL_DATA" --models "$models" \
    --bin "$CARGO_TARGET_DIR/release/onnx-cle" --sim "$CARGO_TARGET_DIR/release/examples/eval_sim" \
    --work "$work" --variants "$root/scripts/eval/variants.tsv" \
    --threads "${ONNX_CLE_EVAL_THREADS:-1}" "$@"
