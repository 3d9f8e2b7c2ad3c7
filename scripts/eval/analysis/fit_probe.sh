#!/usr/bin/env bash
# Builds the CLI with fit_probe.patch (probe_build.sh) and runs fit_probe.py on the tuning split
# (README: Int8 outputs, ranges fitted to the model). Do not run it beside an evaluation that
# uses the release CLI.
#
# Usage: scripts/eval/analysis/fit_probe.sh [N]   (tuning crops per model, default 300)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/probe_build.sh"
probe_build fit_probe.patch src/quant/deploy/stats.rs
FIT_PROBE_BIN="$PROBE_BIN" "$EVAL_PY" "$here/fit_probe.py" "$@"
