#!/usr/bin/env bash
# Default choices of the int8 outputs, compared on the tuning split: rows of scripts/eval_int8.sh
# (AVX2 kernels, float ops and this CPU's kernels, against the original FP32 model).
#
#   weight-types  per-tensor QDQ, data-free and with --samples minmax, with the `ort` target's
#                 default (uint8) weights and with `--weight-type int8` (README: Weight types)
#   scaling       per-tensor QDQ, data-free and with --samples minmax, with the default rule
#                 (`noise` for per-tensor weights) and with `--scaling equal-ranges`; the
#                 per-channel data-free row with its default (`equal-ranges`) and with
#                 `--scaling noise` (README: Scaling rule)
#   mixed-precision  per-tensor QDQ, data-free, without and with `--mixed-precision 0.05`
#                 (README: Mixed precision)
#
# Usage: scripts/eval/tune_split.sh weight-types|scaling|mixed-precision [--model NAME]...   (default: all five)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
case "${1:-}" in
    weight-types)
        rows=("QDQ per-tensor, data-free" "QDQ per-tensor, data-free, --weight-type int8"
              "QDQ per-tensor, --samples minmax" "QDQ per-tensor, --samples minmax, --weight-type int8") ;;
    scaling)
        rows=("QDQ per-tensor, data-free" "QDQ per-tensor, data-free, --scaling equal-ranges"
              "QDQ per-tensor, --samples minmax" "QDQ per-tensor, --samples minmax, --scaling equal-ranges"
              "QDQ per-channel, data-free" "QDQ per-channel, data-free, --scaling noise") ;;
    mixed-precision)
        rows=("QDQ per-tensor, data-free" "QDQ per-tensor, data-free, --mixed-precision 0.05") ;;
    *) echo "usage: $0 weight-types|scaling|mixed-precision [--model NAME]..." >&2; exit 2 ;;
esac
shift
only=()
for r in "${rows[@]}"; do only+=(--only "$r"); done
exec "$root/scripts/eval_int8.sh" --split tune --verify-budget 600 "${only[@]}" "$@"
