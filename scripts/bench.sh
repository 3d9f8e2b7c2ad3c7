#!/usr/bin/env bash
# Benchmarks (issues 3, 15 and 20), release build, on 2 cores (warm build):
#
#   scripts/bench.sh              1. whole processes, side by side in the same run, on the
#                                    ResNet-50-shaped model (examples/bench_model.rs) and a real
#                                    torchvision ResNet-50 export:
#                                    `onnx-cle equalize --no-verify` (median and spread of
#                                    BENCH_RUNS, default 7) beside `cp` of the same file (the I/O
#                                    floor), the same binary doing decode + encode only
#                                    (`--steps none --no-verify --no-quant-table`), all runs
#                                    interleaved, and aimet-onnx 2.42.0's onnx.load +
#                                    equalize_model + onnx.save (median of AIMET_RUNS, default 3,
#                                    each in a fresh Python process); where the time goes
#                                    (`--timings`); peak RSS (`/usr/bin/time`, the kernel's
#                                    ru_maxrss: it counts the pages of the memory-mapped input the
#                                    process has mapped in, as well as its heap) of
#                                    `--no-verify`, `--fast` and the default run; the
#                                    100 000-node Identity chain with default options
#                                 2. criterion benches (benches/pipeline.rs): in-process stages
#                                    at 100/50/25 % width and mobilenet_v2, with the table
#   scripts/bench.sh resnet50_100 criterion filter for part 2 (part 1 runs whole)
#
#   BENCH_PEER=0      no aimet-onnx and no torchvision export (where PyPI is not reachable):
#                     part 1 runs on the ResNet-50-shaped model alone, without the peer column
#   BENCH_CRITERION=0 skip part 2
#   BENCH_RUNS, AIMET_RUNS  repetitions (medians; the spread is printed too)
#
# The peer and the torchvision export run in a throwaway venv created on first use:
# ~/.cache/onnx-cle-venvs/aimet-bench (aimet-onnx==2.42.0, torch==2.15.0, torchvision==0.29.2
# from PyPI; PyPI has only the CUDA build of torch for Linux, so this is ~6.4 GB, ~2 minutes on a
# fast link; nothing runs on a GPU). Uses $CARGO_TARGET_DIR (default
# ~/.cache/onnx-cle-target-release). Installs GNU time (Debian package `time`) when missing.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-cle-target-release}"
RUNS="${BENCH_RUNS:-7}"
AIMET_RUNS="${AIMET_RUNS:-3}"
PEER="${BENCH_PEER:-1}"
VENV="$HOME/.cache/onnx-cle-venvs/aimet-bench"
LOG="$CARGO_TARGET_DIR/bench-pipeline.log"
mkdir -p "$CARGO_TARGET_DIR"

echo "== machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)," \
    "load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
if [[ ! -x /usr/bin/time ]]; then
    apt-get install -y -qq time >/dev/null
fi
command -v jq >/dev/null || apt-get install -y -qq jq >/dev/null
cargo build --locked --quiet --release --bin onnx-cle --example bench_model --example chain_model
BIN="$CARGO_TARGET_DIR/release/onnx-cle"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/onnx-cle-bench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

"$CARGO_TARGET_DIR/release/examples/bench_model" "$WORK/resnet50_shaped.onnx" 1.0 2>/dev/null
MODELS=(resnet50_shaped)
if [[ "$PEER" != 0 ]]; then
    if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c "import aimet_onnx, torchvision" 2>/dev/null; then
        echo "== creating $VENV (aimet-onnx 2.42.0, torch, torchvision from PyPI)"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --upgrade pip
        "$VENV/bin/pip" install -q aimet-onnx==2.42.0 torch==2.15.0 torchvision==0.29.2
    fi
    PY="$VENV/bin/python"
    "$PY" scripts/bench_peer.py export "$WORK/torchvision_resnet50.onnx" 2>/dev/null
    MODELS+=(torchvision_resnet50)
else
    echo "== BENCH_PEER=0: no aimet-onnx, no torchvision export"
fi

# Wall seconds of one command (GNU time), its peak RSS in KB in $WORK/kb.
timed() {
    /usr/bin/time -f "%e %M" -o "$WORK/time.txt" "$@" >/dev/null 2>"$WORK/stderr.txt" || {
        cat "$WORK/stderr.txt" >&2; return 1; }
    read -r wall kb < "$WORK/time.txt"
    echo "$kb" > "$WORK/kb"
    echo "$wall"
}
# "median (min–max)" of a list of seconds.
spread() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {m = NR % 2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2; printf "%.3f (%.3f–%.3f)", m, v[1], v[NR]}'; }
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print NR % 2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
# Wall seconds of one command, at millisecond resolution. Every command starts with nothing
# dirty in the page cache (`sync`, untimed): a plain `cp` leaves its copy for the kernel to
# write back, and that writeback must not land inside the next command's time.
wall() {
    local t0 t1
    sync
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>"$WORK/stderr.txt" || { cat "$WORK/stderr.txt" >&2; return 1; }
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f", b - a}'
}

echo
echo "== 1. whole processes, median (min–max) of $RUNS interleaved runs (aimet: $AIMET_RUNS fresh processes), same run"
echo
echo "| model | MB | cp s | cp + fsync s | floor: decode + encode s | onnx-cle --no-verify s | ÷ cp | ÷ (cp + fsync) | aimet-onnx load + equalize_model + save s | aimet ÷ onnx-cle |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
declare -A BEST
for m in "${MODELS[@]}"; do
    f="$WORK/$m.onnx"
    size=$(stat -c %s "$f")
    ours=(); floor=(); cps=(); syncs=()
    for _ in $(seq 1 "$RUNS"); do
        cps+=("$(wall cp "$f" "$WORK/cp.onnx")")
        # What onnx-cle's atomic write also does: the copy made durable (fsync) before it counts.
        syncs+=("$(wall sh -c 'cp "$1" "$2" && sync "$2"' sh "$f" "$WORK/cps.onnx")")
        floor+=("$(wall "$BIN" equalize -q --steps none --no-verify --no-quant-table "$f" -o "$WORK/floor.onnx")")
        ours+=("$(wall "$BIN" equalize -q --no-verify "$f" -o "$WORK/out.onnx")")
    done
    peer="n/a"; ratio="n/a"; aimet=()
    if [[ "$PEER" != 0 ]]; then
        for _ in $(seq 1 "$AIMET_RUNS"); do
            aimet+=("$("$PY" scripts/bench_peer.py aimet "$f" "$WORK/aimet.onnx" 2>/dev/null | awk '/^aimet_s/ {print $2}')")
        done
        peer="$(spread "${aimet[@]}")"
        ratio="$(awk -v a="$(median "${aimet[@]}")" -v o="$(median "${ours[@]}")" 'BEGIN {printf "%.1f×", a / o}')"
    fi
    BEST[$m]="$(median "${ours[@]}")"
    echo "| $m | $(awk -v s="$size" 'BEGIN {printf "%.1f", s / 1e6}') | $(spread "${cps[@]}") | $(spread "${syncs[@]}") | $(spread "${floor[@]}") | $(spread "${ours[@]}") | $(awk -v o="$(median "${ours[@]}")" -v c="$(median "${cps[@]}")" 'BEGIN {printf "%.2f×", o / c}') | $(awk -v o="$(median "${ours[@]}")" -v c="$(median "${syncs[@]}")" 'BEGIN {printf "%.2f×", o / c}') | $peer | $ratio |"
done

echo
echo "where the time goes (one more run each, \`--timings\`; ms):"
for m in "${MODELS[@]}"; do
    f="$WORK/$m.onnx"
    for args in "--steps none --no-verify --no-quant-table" "--no-verify" ""; do
        # shellcheck disable=SC2086
        "$BIN" equalize -q --timings $args "$f" -o "$WORK/out.onnx" 2>&1 \
            | sed -n "s/^onnx-cle: timings ms: /  $m ${args:-(default)}: /p"
    done
done

echo
echo "== peak RSS (/usr/bin/time), same run"
echo
echo "| model | size MB | command | wall s | peak RSS MB | × size | verification |"
echo "|---|---:|---|---:|---:|---:|---|"
for m in "${MODELS[@]}"; do
    f="$WORK/$m.onnx"
    size=$(stat -c %s "$f")
    for args in "--no-verify" "--fast" ""; do
        # shellcheck disable=SC2086
        wall="$(timed "$BIN" equalize -q $args "$f" -o "$WORK/out.onnx" --report "$WORK/r.json")"
        kb="$(cat "$WORK/kb")"
        status="$(jq -r '.verification.status' "$WORK/r.json")"
        awk -v s="$size" -v kb="$kb" -v m="$m" -v a="equalize ${args:-(default)}" -v w="$wall" -v st="$status" \
            'BEGIN {printf "| %s | %.1f | %s | %.2f | %.1f | %.2f | %s |\n", m, s / 1e6, a, w, kb * 1024 / 1e6, kb * 1024 / s, st}'
    done
done

echo
echo "== 100 000-node chain (one Conv + 99 999 Identity), default options"
"$CARGO_TARGET_DIR/release/examples/chain_model" "$WORK/chain.onnx" 100000 2>/dev/null
wall="$(timed "$BIN" equalize -q "$WORK/chain.onnx" -o "$WORK/out.onnx" --report "$WORK/r.json")"
echo "wall ${wall} s, peak RSS $(( $(cat "$WORK/kb") / 1024 )) MB, verification:" \
    "$(jq -r '.verification | "\(.status) \(.reason // "")"' "$WORK/r.json")," \
    "verify $(jq -r '.timings_ms.verify | floor' "$WORK/r.json") ms"

if [[ "${BENCH_CRITERION:-1}" != 0 ]]; then
    echo
    echo "== 2. criterion (in-process stages)"
    cargo bench --locked --bench pipeline -- "$@" > "$LOG" 2>&1 || { tail -40 "$LOG"; exit 1; }
    sed -n '/^## onnx-cle pipeline benchmarks/,$p' "$LOG"
    echo "(criterion's full output: $LOG)"
fi
echo
echo "== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
