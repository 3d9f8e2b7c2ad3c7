#!/usr/bin/env bash
# Service load check (issue 3), loopback only, about a minute:
#
#   1. `GET /jobs/{id}` at 500 requests/s for 10 s (wrk, 10 connections each paced to one
#      request per 20 ms) while two ResNet-50-sized jobs run (2 workers, verification and the
#      end-to-end int8 simulation on, two more queued); prints wrk's latency distribution, checks
#      p99 <= 5 ms and that both jobs were still running at the end.
#   2. 16 concurrent 100 MB raw-body uploads to `POST /equalize` while the server's RSS is
#      sampled every 50 ms from /proc; prints the RSS before, the peak while uploading and the
#      growth. One worker, kept busy by a blocker job submitted first (per-layer quantization
#      sensitivity of mobilenet_v2: long, with a steady footprint), so the uploads queue and the
#      figure is the intake's, not the jobs'.
#
# Needs curl and python3; installs wrk (Debian package) on first use. Uses the release build in
# $CARGO_TARGET_DIR (default ~/.cache/onnx-cle-target-release).
# Exit status: non-zero when a target is missed.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-cle-target-release}"
CONNECTIONS=10
PACE_MS=20
DURATION=10s
P99_MS=5
UPLOADS=16
QUEUED_JOBS=4

fail() { printf 'load_status: FAILED: %s\n' "$*" >&2; exit 1; }
command -v curl >/dev/null || fail "curl is not installed"

if ! command -v wrk >/dev/null; then
    echo "== installing wrk (first use only)"
    apt-get install -y -qq wrk >/dev/null
fi

cargo build --locked --quiet --release --bin onnx-cle --example bench_model
BIN="$CARGO_TARGET_DIR/release/onnx-cle"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/onnx-cle-load.XXXXXX")"
SERVER_PID=""
stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT

"$CARGO_TARGET_DIR/release/examples/bench_model" "$WORK/resnet50.onnx" 1.0
MODEL_MB=$(( $(stat -c %s "$WORK/resnet50.onnx") / 1000000 ))

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_server WORKERS: starts `onnx-cle serve` on a free loopback port, sets BASE.
start_server() {
    local port
    port="$(free_port)"
    BASE="http://127.0.0.1:$port"
    rm -rf "$WORK/data"
    ONNX_CLE_ADDR="127.0.0.1:$port" ONNX_CLE_DATA_DIR="$WORK/data" ONNX_CLE_WORKERS="$1" \
        RUST_LOG=warn "$BIN" serve > "$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        curl -sf -o /dev/null "$BASE/healthz" && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log"; fail "server exited"; }
        sleep 0.1
    done
    fail "server did not become healthy"
}

# submit [QUERY]: raw-body upload of the model; prints the job path.
submit() {
    curl -sS --fail-with-body -o /dev/null -w '%header{location}' \
        -H 'Content-Type: application/octet-stream' --data-binary "@$WORK/resnet50.onnx" \
        "$BASE/equalize?${1:-}"
}

state() { curl -sS "$BASE$1" | sed -n 's/.*"state":"\([a-z]*\)".*/\1/p'; }

running_count() {
    local n=0 j
    for j in "$@"; do [[ "$(state "$j")" == running ]] && n=$((n + 1)); done
    echo "$n"
}

status=0

echo "== 1. GET /jobs/{id} at $((CONNECTIONS * 1000 / PACE_MS)) req/s for $DURATION while two jobs run (model: $MODEL_MB MB)"
start_server 2
JOBS=()
# Jobs with the end-to-end int8 simulation (~14 s each on 2 cores, verification included), so
# both workers stay busy for the whole run.
for _ in $(seq "$QUEUED_JOBS"); do JOBS+=("$(submit quant_e2e=true)"); done
for _ in $(seq 100); do
    [[ "$(running_count "${JOBS[@]:0:2}")" == 2 ]] && break
    sleep 0.1
done
echo "running before: $(running_count "${JOBS[@]}") of ${#JOBS[@]} submitted"
printf 'function delay() return %d end\n' "$PACE_MS" > "$WORK/pace.lua"
wrk -t 2 -c "$CONNECTIONS" -d "$DURATION" --latency -s "$WORK/pace.lua" "$BASE${JOBS[0]}" \
    | tee "$WORK/wrk.txt"
AFTER=$(running_count "${JOBS[@]}")
echo "running after:  $AFTER of ${#JOBS[@]} submitted"
P99=$(awk '$1 == "99%" {v = $2; u = v; sub(/[a-z]+$/, "", v); sub(/^[0-9.]+/, "", u);
      print (u == "us" ? v / 1000 : (u == "s" ? v * 1000 : v)); exit}' "$WORK/wrk.txt")
ERRORS=$(awk '/Non-2xx|Socket errors/' "$WORK/wrk.txt")
echo "p99 = $P99 ms (target <= $P99_MS ms)${ERRORS:+; $ERRORS}"
if [[ -n "$ERRORS" ]] || ! awk -v p="$P99" -v t="$P99_MS" 'BEGIN {exit !(p <= t)}'; then
    echo "MISSED: p99 above $P99_MS ms"
    status=1
fi
if [[ "$AFTER" != 2 ]]; then
    echo "MISSED: two jobs were not running until the end (raise QUEUED_JOBS)"
    status=1
fi
stop_server

echo
echo "== 2. $UPLOADS concurrent ${MODEL_MB} MB uploads: server RSS"
start_server 1
BLOCKER_MODEL="$ROOT/../shared/models/mobilenet_v2.onnx"
[[ -f "$BLOCKER_MODEL" ]] || { "$CARGO_TARGET_DIR/release/examples/bench_model" "$WORK/blocker.onnx" 0.25; BLOCKER_MODEL="$WORK/blocker.onnx"; }
BLOCKER="$(curl -sS --fail-with-body -o /dev/null -w '%header{location}' -F "model=@$BLOCKER_MODEL" \
    -F 'options={"verify":{"enabled":false},"quant":{"end_to_end":true,"sensitivity":true}};type=application/json' \
    "$BASE/equalize")"
for _ in $(seq 100); do [[ "$(state "$BLOCKER")" == running ]] && break; sleep 0.1; done
sleep 1
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status"; }
BEFORE=$(rss)
PEAK=$BEFORE
PIDS=()
for k in $(seq "$UPLOADS"); do
    curl -sS -o "$WORK/upload$k.out" -w '%{http_code}\n' -H 'Content-Type: application/octet-stream' \
        --data-binary "@$WORK/resnet50.onnx" "$BASE/equalize?verify=false" > "$WORK/upload$k.code" &
    PIDS+=($!)
done
T0=$(date +%s.%N)
while :; do
    r=$(rss)
    (( r > PEAK )) && PEAK=$r
    alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 0.05
done
T1=$(date +%s.%N)
wait "${PIDS[@]}" || true
ACCEPTED=$(cat "$WORK"/upload*.code | grep -c '^202$' || true)
echo "blocker job: $(state "$BLOCKER") (the uploads queue behind it)"
echo "uploads accepted (202): $ACCEPTED of $UPLOADS in $(awk -v a="$T0" -v b="$T1" 'BEGIN {printf "%.1f", b - a}') s"
echo "server RSS before: $((BEFORE / 1024)) MiB, peak during uploads: $((PEAK / 1024)) MiB, growth: $(((PEAK - BEFORE) / 1024)) MiB (the bodies total $((UPLOADS * MODEL_MB)) MB)"
[[ "$ACCEPTED" == "$UPLOADS" ]] || { echo "MISSED: not every upload was accepted"; status=1; }
# "Flat": growth below one upload's size (buffering a body whole would add at least that).
if (( (PEAK - BEFORE) / 1024 > MODEL_MB )); then
    echo "MISSED: RSS grew by more than one upload"
    status=1
fi
stop_server
exit "$status"
