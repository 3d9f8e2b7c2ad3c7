#!/usr/bin/env bash
# Default choices of the int8 outputs, compared on the tuning split: rows of scripts/eval_int8.sh
# (AVX2 kernels, float ops and this CPU's kernels, against the original FP32 model).
#
#   granularity   the `ort` target's weights: per-tensor (uint8) against per-channel (int8, the
#                 default), data-free, with --samples minmax and with --mixed-precision 0.05
#                 (README: Weight types)
#   weight-types  per-tensor QDQ, data-free and with --samples minmax, with uint8 weights (the
#                 per-tensor default) and with `--weight-type int8` (README: Weight types)
#   scaling       per-tensor and per-channel QDQ, data-free and with --samples minmax, with the
#                 default rule (`noise`) and with `--scaling equal-ranges` (README: Scaling rule)
#   mixed-precision  per-tensor and per-channel QDQ, data-free, without and with
#                 `--mixed-precision 0.05` (README: Mixed precision)
#
# Usage: scripts/eval/tune_split.sh granularity|weight-types|scaling|mixed-precision [--model NAME]...   (default: all five)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
case "${1:-}" in
    granularity)
        rows=("QDQ per-tensor, data-free" "QDQ per-channel, data-free"
              "QDQ per-tensor, --samples minmax" "QDQ per-channel, --samples minmax"
              "QDQ per-tensor, data-free, --mixed-precision 0.05" "QDQ per-channel, data-free, --mixed-precision 0.05") ;;
    weight-types)
        rows=("QDQ per-tensor, data-free" "QDQ per-tensor, data-free, --weight-type int8"
              "QDQ per-tensor, --samples minmax" "QDQ per-tensor, --samples minmax, --weight-type int8") ;;
    scaling)
        rows=("QDQ per-tensor, data-free" "QDQ per-tensor, data-free, --scaling equal-ranges"
              "QDQ per-tensor, --samples minmax" "QDQ per-tensor, --samples minmax, --scaling equal-ranges"
              "QDQ per-channel, data-free" "QDQ per-channel, data-free, --scaling equal-ranges"
              "QDQ per-channel, --samples minmax" "QDQ per-channel, --samples minmax, --scaling equal-ranges") ;;
    mixed-precision)
        rows=("QDQ per-tensor, data-free" "QDQ per-tensor, data-free, --mixed-precision 0.05"
              "QDQ per-channel, data-free" "QDQ per-channel, data-free, --mixed-precision 0.05") ;;
    *) echo "usage: $0 granularity|weight-types|scaling|mixed-precision [--model NAME]..." >&2; exit 2 ;;
esac
shift
only=()
for r in "${rows[@]}"; do only+=(--only "$r"); done
exec "$root/scripts/eval_int8.sh" --split tune --verify-budget 600 "${only[@]}" "$@"
