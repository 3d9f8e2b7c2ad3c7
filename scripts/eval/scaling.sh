#!/usr/bin/env bash
# The per-tensor targets' scaling rule (README: Scaling rule), on the tuning split: the per-tensor
# QDQ rows of scripts/eval_int8.sh, data-free and with --samples minmax, with the default rule
# (`noise` for per-tensor weights) and with `--scaling equal-ranges`; and the per-channel data-free
# row with its default (`equal-ranges`) and with `--scaling noise`.
#
# Usage: scripts/eval/scaling.sh [--model NAME]...   (default: all five models)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
exec "$root/scripts/eval_int8.sh" --split tune --verify-budget 600 \
    --only "QDQ per-tensor, data-free" \
    --only "QDQ per-tensor, data-free, --scaling equal-ranges" \
    --only "QDQ per-tensor, --samples minmax" \
    --only "QDQ per-tensor, --samples minmax, --scaling equal-ranges" \
    --only "QDQ per-channel, data-free" \
    --only "QDQ per-channel, data-free, --scaling noise" "$@"
