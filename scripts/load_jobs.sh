#!/usr/bin/env bash
# Load check of `onnx-cle serve` on loopback: CLIENTS concurrent clients (default 32) each
# submit JOBS jobs (default 10) one after the other — alternately ../shared/models/tiny.onnx
# and a builder-made model (examples/load_fixture.rs), as the raw body and as multipart, with
# verification on — long-poll each job until it is done and download its model. Passes when
# every job succeeds and no response is a 5xx; prints a summary either way.
#
#   scripts/load_jobs.sh                    # 32 × 10 on a fresh server with default settings
#   CLIENTS=8 JOBS=5 scripts/load_jobs.sh   # smaller
#   ONNX_CLE_BIN=path/to/onnx-cle scripts/load_jobs.sh
#   LOAD_MODEL=../shared/models/mobilenet_v2.onnx ONNX_CLE_BIN=… scripts/load_jobs.sh
#                                           # every job on that model (the throughput figure of
#                                           # BENCHMARKS.md: MobileNetV2, verification on)
#
# At the end it prints where the jobs' time went: the mean of each stage of `timings_ms` over
# the succeeded jobs' reports.
#
# Bounded: the whole run is killed after LOAD_TIMEOUT seconds (default 900).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-cle-target}"
CLIENTS="${CLIENTS:-32}"
JOBS="${JOBS:-10}"
LOAD_TIMEOUT="${LOAD_TIMEOUT:-900}"
TINY="$ROOT/../shared/models/tiny.onnx"

say() { printf '== load_jobs: %s\n' "$*"; }
fail() { printf 'load_jobs: FAILED: %s\n' "$*" >&2; exit 1; }

command -v curl >/dev/null || fail "curl is required"
command -v jq >/dev/null || fail "jq is required"
[[ -f "$TINY" ]] || { echo "SKIPPED: ../shared/models/tiny.onnx not found"; exit 0; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/onnx-cle-load.XXXXXX")"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ -z "${ONNX_CLE_BIN:-}" ]]; then
    say "building onnx-cle and the fixture"
    (cd "$ROOT" && cargo build --locked --quiet --bin onnx-cle --example load_fixture)
    BIN="$CARGO_TARGET_DIR/debug/onnx-cle"
    FIXTURE_BIN="$CARGO_TARGET_DIR/debug/examples/load_fixture"
else
    BIN="$ONNX_CLE_BIN"
    if [[ -z "${LOAD_MODEL:-}" ]]; then
        (cd "$ROOT" && cargo build --locked --quiet --example load_fixture)
    fi
    FIXTURE_BIN="$CARGO_TARGET_DIR/debug/examples/load_fixture"
fi
BUILT="$WORK/built.onnx"
if [[ -n "${LOAD_MODEL:-}" ]]; then
    [[ -f "$LOAD_MODEL" ]] || fail "LOAD_MODEL $LOAD_MODEL not found"
else
    "$FIXTURE_BIN" "$BUILT"
fi

say "starting the server (default settings, loopback)"
"$BIN" serve --addr 127.0.0.1:0 --data-dir "$WORK/data" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
URL=""
for _ in $(seq 1 300); do
    URL="$(sed -n 's/.*listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$WORK/server.log" | head -n1)"
    [[ -n "$URL" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; fail "server exited"; }
    sleep 0.1
done
[[ -n "$URL" ]] || fail "server did not start"
say "server at $URL; $CLIENTS clients x $JOBS jobs"

now_ms() { date +%s%3N; }

# One client: JOBS jobs in sequence. Writes `status <route> <code>` and
# `job <state> <latency ms> <model>` lines to its log.
client() {
    local c="$1" log="$WORK/client-$1.log" j model form code id state t0 body
    body="$WORK/client-$1.body"
    for j in $(seq 1 "$JOBS"); do
        if [[ -n "${LOAD_MODEL:-}" ]]; then model="$LOAD_MODEL";
        elif (( (c + j) % 2 )); then model="$TINY"; else model="$BUILT"; fi
        t0=$(now_ms)
        while :; do
            if (( j % 2 )); then
                code=$(curl -sS -o "$body" -w '%{http_code}' --max-time 120 \
                    --data-binary @"$model" -H 'Content-Type: application/octet-stream' \
                    "$URL/equalize?name=load-$c-$j" || echo 000)
            else
                form="model=@$model;type=application/octet-stream"
                code=$(curl -sS -o "$body" -w '%{http_code}' --max-time 120 \
                    -F "$form" -F 'options={"relu6":"exact"};type=application/json' \
                    -F "name=load-$c-$j" "$URL/equalize" || echo 000)
            fi
            echo "status submit $code" >> "$log"
            [[ "$code" == 429 ]] || break
            echo "retry $(jq -r .code "$body" 2>/dev/null || echo unknown)" >> "$log"
            sleep 1
        done
        if [[ "$code" != 202 ]]; then
            echo "job rejected $(( $(now_ms) - t0 )) $(basename "$model")" >> "$log"
            continue
        fi
        id=$(jq -r .id "$body")
        state=""
        for _ in $(seq 1 60); do
            code=$(curl -sS -o "$body" -w '%{http_code}' --max-time 60 \
                "$URL/jobs/$id?wait=20s" || echo 000)
            echo "status get_job $code" >> "$log"
            [[ "$code" == 200 ]] || { sleep 1; continue; }
            if [[ "$(jq -r .done "$body")" == true ]]; then
                state=$(jq -r .state "$body")
                break
            fi
        done
        echo "job ${state:-timeout} $(( $(now_ms) - t0 )) $(basename "$model")" >> "$log"
        if [[ "$state" == succeeded ]]; then
            code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 60 \
                "$URL/jobs/$id/model" || echo 000)
            echo "status model $code" >> "$log"
            if (( j == 1 )); then
                curl -sS --max-time 60 "$URL/jobs/$id/report" 2>/dev/null \
                    | jq -c '.timings_ms' > "$WORK/timings-$c.json" 2>/dev/null || true
            fi
        fi
    done
}

START=$(now_ms)
pids=()
for c in $(seq 1 "$CLIENTS"); do
    client "$c" &
    pids+=($!)
done
( sleep "$LOAD_TIMEOUT"; echo "load_jobs: timeout after ${LOAD_TIMEOUT}s" >&2; kill "${pids[@]}" 2>/dev/null ) &
WATCHDOG=$!
for p in "${pids[@]}"; do wait "$p" || true; done
kill "$WATCHDOG" 2>/dev/null || true
ELAPSED=$(( $(now_ms) - START ))

cat "$WORK"/client-*.log > "$WORK/all.log"
TOTAL=$(grep -c '^job ' "$WORK/all.log" || true)
OK=$(grep -c '^job succeeded ' "$WORK/all.log" || true)
FIVEXX=$(awk '$1=="status" && $3 ~ /^5/' "$WORK/all.log" | wc -l)
NOANSWER=$(awk '$1=="status" && $3=="000"' "$WORK/all.log" | wc -l)
echo
echo "onnx-cle load test: $CLIENTS clients x $JOBS jobs, $(( ELAPSED / 1000 )).$(( ELAPSED % 1000 / 100 ))s"
echo "  jobs: $TOTAL finished, $OK succeeded, $(( TOTAL - OK )) not"
awk '$1=="job" { n[$2]++ } END { for (s in n) printf "    %-10s %d\n", s, n[s] }' "$WORK/all.log"
echo "  responses by route and status:"
awk '$1=="status" { n[$2" "$3]++ } END { for (k in n) printf "    %-16s %d\n", k, n[k] }' "$WORK/all.log" | sort
if grep -q '^retry ' "$WORK/all.log"; then
    echo "  429 back-pressure, retried after a second:"
    awk '$1=="retry" { n[$2]++ } END { for (k in n) printf "    %-16s %d\n", k, n[k] }' "$WORK/all.log"
fi
echo "  job latency (submit to done), ms:"
awk '$1=="job" && $2=="succeeded" { print $3 }' "$WORK/all.log" | sort -n | awk '
    function at(q,   i) { i = int(NR * q) + 1; if (i > NR) i = NR; return v[i] }
    { v[NR] = $1; s += $1 }
    END { if (NR) printf "    min %d  p50 %d  p95 %d  max %d  mean %d\n", v[1], at(0.5), at(0.95), v[NR], s / NR }'
echo "  throughput: $(awk -v n="$OK" -v ms="$ELAPSED" 'BEGIN { printf "%.1f", n / (ms / 1000) }') jobs/s"
curl -sS "$URL/metrics" | grep -E '^cle_jobs_(submitted|finished)_total' | sed 's/^/  /' || true
if compgen -G "$WORK/timings-*.json" >/dev/null; then
    echo "  where a job's run went (mean ms over the first job of each client, from its report):"
    cat "$WORK"/timings-*.json | jq -s -r '
        (length) as $n | (.[0] | keys_unsorted) as $k
        | [$k[] as $s | "\($s) \(map(.[$s] // 0) | add / $n | . * 10 | round / 10)"] | join(", ")' \
        | sed 's/^/    /'
fi

if grep -E " ERROR |panicked" "$WORK/server.log" >/dev/null; then
    grep -E " ERROR |panicked" "$WORK/server.log" | head -n 20 >&2
    fail "the server logged errors"
fi
(( FIVEXX == 0 )) || fail "$FIVEXX responses were 5xx"
(( NOANSWER == 0 )) || fail "$NOANSWER requests got no answer"
(( TOTAL == CLIENTS * JOBS )) || fail "only $TOTAL of $(( CLIENTS * JOBS )) jobs finished"
(( OK == TOTAL )) || fail "$(( TOTAL - OK )) jobs did not succeed"
echo "load_jobs: OK"
