#!/usr/bin/env bash
# Builds the CLI with step_probe.patch (probe_build.sh) and runs step_probe.py on the tuning split
# (README: Scaling rule). Do not run it beside an evaluation that uses the release CLI.
#
# Usage: scripts/eval/analysis/step_probe.sh [N]   (tuning crops per model, default 300)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/probe_build.sh"
probe_build step_probe.patch src/passes/noise.rs
STEP_PROBE_BIN="$PROBE_BIN" "$EVAL_PY" "$here/step_probe.py" "$@"
