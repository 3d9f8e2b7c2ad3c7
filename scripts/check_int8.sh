#!/usr/bin/env bash
# Checks onnx-cle's int8 outputs with onnxruntime, as a user deploying them would:
#   onnx-cle equalize efficientnet_lite0.onnx -o eq.onnx --deploy-output deploy.onnx \
#       --qdq-output qdq.onnx --encodings enc.json --ort-overrides ort.json --report r.json ...
# for four targets/range sources (ort data-free with rounding and bias correction, trt data-free,
# ort min/max-calibrated, ort data-free with mixed precision), then scripts/check_int8.py: onnx.checker.check_model(full_check=True)
# on every model written (exact, deploy, QDQ), the QDQ model in onnxruntime's int8 kernels and the
# overrides through onnxruntime's own quantize_static, each within 0.5 dB of onnx-cle's simulation
# in the report (on the 16 shared images); the encodings (1.0.0 and 0.6.1) name only tensors of
# the deploy model. It prints the CPU's flags: onnxruntime's u8×s8 kernels on x86-64 without VNNI
# add neighbouring products in a saturating int16, and the `ort` target is written so that none
# saturates. On a CPU with VNNI the ort-target QDQ models also run under QEMU's emulation of an
# AVX2 CPU (Debian's qemu-user, installed on first use as root), so both kinds of kernels are
# checked on any x86-64 machine.
#
# Usage: scripts/check_int8.sh [ONNX_CLE_BINARY]
#   The binary defaults to $ONNX_CLE_BIN, else it is built with `cargo build`.
# Environment:
#   ONNX_CLE_VENV_DIR  where throwaway venvs live (default ~/.cache/onnx-cle-venvs); this script
#                      uses ONNX_CLE_VENV_DIR/ort (onnx==1.23.2, onnxruntime, numpy), created only
#                      when missing or broken.
#   ONNX_CLE_MODELS    fixture folder (default <repo>/../shared/models).
#   ONNX_CLE_DATA      sample inputs folder (default <repo>/../shared/data).
# Exit status: 0 all checks passed; non-zero otherwise.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
models="${ONNX_CLE_MODELS:-$root/../shared/models}"
data="${ONNX_CLE_DATA:-$root/../shared/data}"
venv="${ONNX_CLE_VENV_DIR:-$HOME/.cache/onnx-cle-venvs}/ort"
bin="${1:-${ONNX_CLE_BIN:-}}"
model="$models/efficientnet_lite0.onnx"
samples="$data/efficientnet_inputs_f32_nchw.npy"

for f in "$model" "$samples"; do
    if [ ! -f "$f" ]; then
        echo "check_int8: $f not found" >&2
        exit 2
    fi
done

. "$root/scripts/checks_common.sh"
bin="$(onnx_cle_bin "$root" "$bin")"
ensure_ort_venv "$venv"
echo "cpu: $(cpu_int8_flags)"
emulated="$(non_vnni_python "$venv")"
if [ -n "$emulated" ]; then
    echo "this CPU has VNNI: the ort-target QDQ models also run under QEMU as on a CPU without it"
    elsewhere=(--non-vnni-python "$emulated")
else
    elsewhere=()
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

common=(--no-verify --no-quant-e2e -q --samples "$samples" --input-range=-1,1)

echo "== target ort, data-free ranges, deploy model (squant rounding + analytic bias correction):"
echo "   QDQ, encodings 1.0.0, onnxruntime overrides"
"$bin" equalize "$model" -o "$work/eq.onnx" "${common[@]}" \
    --rounding squant --bias-correction analytic --deploy-output "$work/deploy.onnx" \
    --qdq-output "$work/qdq.onnx" --encodings "$work/enc.json" --ort-overrides "$work/ort.json" \
    --report "$work/r.json"
"$venv/bin/python" "$root/scripts/check_int8.py" "$model" "$work/r.json" "$samples" \
    --fp32 "$work/deploy.onnx" --check-model "$work/eq.onnx" --qdq "$work/qdq.onnx" \
    --overrides "$work/ort.json" --encodings "$work/enc.json" "${elsewhere[@]}"

echo "== target trt (per-channel weights, symmetric int8 activations), data-free: QDQ, overrides"
"$bin" equalize "$model" -o "$work/eq.onnx" "${common[@]}" --target trt \
    --deploy-output "$work/deploy_trt.onnx" --qdq-output "$work/qdq_trt.onnx" \
    --ort-overrides "$work/ort_trt.json" --report "$work/r_trt.json"
"$venv/bin/python" "$root/scripts/check_int8.py" "$model" "$work/r_trt.json" "$samples" \
    --fp32 "$work/deploy_trt.onnx" --qdq "$work/qdq_trt.onnx" --overrides "$work/ort_trt.json"

echo "== target ort, min/max calibration on the samples: QDQ, overrides, encodings 0.6.1"
"$bin" equalize "$model" -o "$work/eq.onnx" "${common[@]}" --calibration minmax \
    --deploy-output "$work/deploy_mm.onnx" --qdq-output "$work/qdq_mm.onnx" \
    --ort-overrides "$work/ort_mm.json" --encodings "$work/enc061.json" --encodings-version 0.6.1 \
    --report "$work/r_mm.json"
"$venv/bin/python" "$root/scripts/check_int8.py" "$model" "$work/r_mm.json" "$samples" \
    --fp32 "$work/deploy_mm.onnx" --qdq "$work/qdq_mm.onnx" --overrides "$work/ort_mm.json" \
    --encodings "$work/enc061.json" "${elsewhere[@]}"
echo "== target ort, data-free, mixed precision (5 % of the activation quantizers on uint16):"
echo "   QDQ, encodings 1.0.0, onnxruntime overrides"
"$bin" equalize "$model" -o "$work/eq.onnx" "${common[@]}" --mixed-precision 0.05 \
    --rounding squant --bias-correction analytic --deploy-output "$work/deploy_mp.onnx" \
    --qdq-output "$work/qdq_mp.onnx" --encodings "$work/enc_mp.json" \
    --ort-overrides "$work/ort_mp.json" --report "$work/r_mp.json"
"$venv/bin/python" "$root/scripts/check_int8.py" "$model" "$work/r_mp.json" "$samples" \
    --fp32 "$work/deploy_mp.onnx" --qdq "$work/qdq_mp.onnx" --overrides "$work/ort_mp.json" \
    --encodings "$work/enc_mp.json" --mixed-precision "${elsewhere[@]}"
echo "check_int8: all checks passed"
