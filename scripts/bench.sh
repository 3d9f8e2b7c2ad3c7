#!/usr/bin/env bash
# Pipeline benchmarks (issue 3), release build, about 5 minutes on 2 cores (warm build):
#
#   scripts/bench.sh              criterion benches (benches/pipeline.rs) on the ResNet-50-shaped
#                                 model at 100/50/25 % width and mobilenet_v2, then the table
#                                 (median, floor, ratio to floor, slope), then peak RSS of
#                                 `onnx-cle equalize --no-verify` on the 100 % model
#   scripts/bench.sh resnet50_100 only the benches whose id matches (criterion filter)
#
# Uses $CARGO_TARGET_DIR (default ~/.cache/onnx-cle-target-release, apart from the dev build).
# Installs GNU time (Debian package `time`) when /usr/bin/time is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-cle-target-release}"
LOG="$CARGO_TARGET_DIR/bench-pipeline.log"
mkdir -p "$CARGO_TARGET_DIR"

echo "== machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
cargo bench --locked --bench pipeline -- "$@" > "$LOG" 2>&1 || { tail -40 "$LOG"; exit 1; }
sed -n '/^## onnx-cle pipeline benchmarks/,$p' "$LOG"
echo "(criterion's full output: $LOG)"

echo
echo "== peak RSS of onnx-cle equalize --no-verify"
if [[ ! -x /usr/bin/time ]]; then
    apt-get install -y -qq time >/dev/null
fi
cargo build --locked --quiet --release --bin onnx-cle --example bench_model
WORK="$(mktemp -d "${TMPDIR:-/tmp}/onnx-cle-bench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
"$CARGO_TARGET_DIR/release/examples/bench_model" "$WORK/resnet50.onnx" 1.0 2>/dev/null
SIZE=$(stat -c %s "$WORK/resnet50.onnx")
echo "| model | size MB | command | wall s | peak RSS MB | × size |"
echo "|---|---:|---|---:|---:|---:|"
rss_row() {
    local label="$1"; shift
    /usr/bin/time -v "$@" 2> "$WORK/time.txt" >/dev/null
    local kb wall
    kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.txt")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$WORK/time.txt")
    awk -v s="$SIZE" -v kb="$kb" -v l="$label" -v w="$wall" \
        'BEGIN {printf "| resnet50_100 | %.1f | %s | %s | %.1f | %.2f |\n", s / 1e6, l, w, kb * 1024 / 1e6, kb * 1024 / s}'
}
BIN="$CARGO_TARGET_DIR/release/onnx-cle"
rss_row "equalize --no-verify" "$BIN" equalize -q --no-verify "$WORK/resnet50.onnx" -o "$WORK/out.onnx"
rss_row "equalize (verified)" "$BIN" equalize -q "$WORK/resnet50.onnx" -o "$WORK/out.onnx"
