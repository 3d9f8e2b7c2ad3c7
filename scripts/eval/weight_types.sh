#!/usr/bin/env bash
# uint8 asymmetric against int8 symmetric per-tensor weights (README: Weight types), on the
# tuning split: the per-tensor QDQ rows of scripts/eval_int8.sh, data-free and with --samples
# minmax, with the `ort` target's default (uint8) weights and with `--weight-type int8`.
#
# Usage: scripts/eval/weight_types.sh [--model NAME]...   (default: all five models)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
exec "$root/scripts/eval_int8.sh" --split tune --verify-budget 600 \
    --only "QDQ per-tensor, data-free" \
    --only "QDQ per-tensor, data-free, --weight-type int8" \
    --only "QDQ per-tensor, --samples minmax" \
    --only "QDQ per-tensor, --samples minmax, --weight-type int8" "$@"
