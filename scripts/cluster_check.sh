#!/usr/bin/env bash
# Scale-out acceptance: a throwaway PostgreSQL cluster and an S3 server (SeaweedFS) on loopback
# (scripts/backends.sh, installed on first use) and three `onnx-cle serve` replicas sharing them.
# The replicas reach PostgreSQL over TLS (`sslmode=verify-full` against a throwaway CA,
# backends.sh's PG_TLS=1); the run stops if any of their connections is plaintext.
#
#  1. 30 jobs submitted round-robin; each is long-polled on the next replica and downloaded from
#     the one after: every model byte-identical to `onnx-cle equalize` with the same options.
#  2. kill -9 of a replica while it runs jobs: every job succeeds on the others within
#     lease + run time, and no job is recorded as finished twice (fencing).
#  3. PostgreSQL restarted mid-run, then the S3 server stopped for 10 s, while clients keep
#     submitting and polling: no acknowledged job lost, no 5xx but 503s with Retry-After and a
#     documented code, readiness recovers on every replica without a restart.
#
# Environment: ONNX_CLE_BIN (binary; default: built with cargo, dev profile), CLUSTER_PORT_BASE
# (replicas on BASE..BASE+2; default free ports), PG_PORT / S3_PORT_BASE (see backends.sh),
# CLUSTER_TIMEOUT (whole run, default 900 s). Prints `cluster_check: N passed, M failed`.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODELS="$ROOT/../shared/models"
LEASE=3s
TIMEOUT="${CLUSTER_TIMEOUT:-900}"
PASSED=0
FAILED=0

say() { printf '== cluster_check: %s\n' "$*"; }
ok() { PASSED=$((PASSED + 1)); printf 'ok: %s\n' "$*"; }
bad() { FAILED=$((FAILED + 1)); printf 'FAILED: %s\n' "$*" >&2; }
die() { printf 'cluster_check: FAILED: %s\n' "$*" >&2; echo "cluster_check: $PASSED passed, $((FAILED + 1)) failed"; exit 1; }

[[ -f "$MODELS/tiny.onnx" ]] || { echo "SKIPPED: ../shared/models not found"; exit 0; }
command -v curl >/dev/null || die "curl is required"
command -v jq >/dev/null || die "jq is required"

if [[ -z "${ONNX_CLE_BIN:-}" ]]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-cle-target}"
    (cd "$ROOT" && cargo build --locked --quiet --bin onnx-cle)
    BIN="$CARGO_TARGET_DIR/debug/onnx-cle"
else
    BIN="$ONNX_CLE_BIN"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/onnx-cle-cluster.XXXXXX")"
PIDS=(0 0 0)
cleanup() {
    local i
    for i in 0 1 2; do
        if [[ "${PIDS[$i]}" != 0 ]] && kill -0 "${PIDS[$i]}" 2>/dev/null; then
            kill -TERM "${PIDS[$i]}" 2>/dev/null || true
        fi
    done
    for i in 0 1 2; do
        [[ "${PIDS[$i]}" != 0 ]] && wait "${PIDS[$i]}" 2>/dev/null || true
    done
    bash "$ROOT/scripts/backends.sh" stop "$WORK/backends" || true
    if [[ "$FAILED" == 0 && -z "${CLUSTER_KEEP:-}" ]]; then rm -rf "$WORK"; else echo "logs kept in $WORK" >&2; fi
}
trap cleanup EXIT
( sleep "$TIMEOUT"; echo "cluster_check: timed out after ${TIMEOUT}s" >&2; kill -TERM $$ ) &
WATCHDOG=$!
trap 'kill $WATCHDOG 2>/dev/null || true; cleanup' EXIT

say "starting PostgreSQL and SeaweedFS"
PG_TLS=1 PG_FSYNC=off bash "$ROOT/scripts/backends.sh" start "$WORK/backends"
# shellcheck disable=SC1091
source "$WORK/backends/env"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORTS=()
for i in 0 1 2; do
    if [[ -n "${CLUSTER_PORT_BASE:-}" ]]; then PORTS+=($((CLUSTER_PORT_BASE + i))); else PORTS+=("$(free_port)"); fi
done
url() { echo "http://127.0.0.1:${PORTS[$1]}"; }

start_replica() {
    local i="$1"
    "$BIN" serve --addr "127.0.0.1:${PORTS[$i]}" --data-dir "$WORK/replica$i" \
        --workers 2 --job-lease "$LEASE" --queue-size 500 --shutdown-grace 5s \
        >> "$WORK/replica$i.log" 2>&1 &
    PIDS[$i]=$!
}

wait_ready() {
    local i="$1" n
    for n in $(seq 1 150); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$(url "$i")/readyz")" == 200 ]] && return 0
        sleep 0.2
    done
    return 1
}

# Every replica connection to PostgreSQL is encrypted (at least the three LISTEN ones).
tls_only() {
    local counts
    counts=$(psql "$DATABASE_URL" -Atc "SELECT count(*) FILTER (WHERE s.ssl) || ' ' ||
        count(*) FILTER (WHERE NOT s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
        WHERE a.application_name = 'onnx-cle'") || die "psql over TLS failed"
    read -r tls plain <<< "$counts"
    (( plain == 0 && tls >= 3 )) || die "replica connections $1: $tls over TLS, $plain plaintext"
    say "replica connections $1: $tls over TLS (sslmode=verify-full), none plaintext"
}

for i in 0 1 2; do start_replica "$i"; done
for i in 0 1 2; do wait_ready "$i" || { tail -n 30 "$WORK/replica$i.log" >&2; die "replica $i not ready"; }; done
tls_only "at start"
say "three replicas on ports ${PORTS[*]} sharing $ONNX_CLE_DATABASE_URL and $ONNX_CLE_BLOB_STORE"

# Reference models from the CLI, one per option set.
OPTS=("relu6=exact&verify=false" "relu6=replace&verify=false" "relu6=exact&iterations=3&verify=false")
CLI_ARGS=("--relu6 exact --no-verify" "--relu6 replace --no-verify" "--relu6 exact --iterations 3 --no-verify")
for k in 0 1 2; do
    # shellcheck disable=SC2086
    "$BIN" equalize "$MODELS/tiny.onnx" -o "$WORK/cli$k.onnx" ${CLI_ARGS[$k]} --quiet
done

STATUS_LOG="$WORK/statuses.log"
: > "$STATUS_LOG"
# request METHOD URL OUT [curl args…]: prints the status; logs "status retry-after code url".
request() {
    local method="$1" u="$2" out="$3"
    shift 3
    local hdr="$WORK/hdr.$$.$RANDOM" body="$WORK/body.$$.$RANDOM" code ra pcode
    code=$(curl -sS -X "$method" -o "$body" -D "$hdr" -w '%{http_code}' --max-time 90 "$@" "$u" 2>/dev/null || echo 000)
    ra=$(grep -i '^retry-after:' "$hdr" 2>/dev/null | tr -d '\r' | awk '{print $2}' || true)
    pcode=""
    if [[ "$code" =~ ^[45] ]]; then pcode=$(jq -r '.code // ""' "$body" 2>/dev/null || true); fi
    if [[ "$out" != /dev/null ]]; then mv -f "$body" "$out" 2>/dev/null || : > "$out"; fi
    rm -f "$hdr" "$body"
    echo "$code ${ra:--} ${pcode:--} $method $u" >> "$STATUS_LOG"
    echo "$code"
}

# submit REPLICA OPTS MODEL: prints the job id; retries 503/429 (the documented answers).
submit() {
    local r="$1" q="$2" model="$3" body="$WORK/submit.$$.$RANDOM" code n
    for n in $(seq 1 120); do
        code=$(request POST "$(url "$r")/equalize?$q" "$body" --data-binary @"$model" \
            -H 'Content-Type: application/octet-stream')
        if [[ "$code" == 202 ]]; then jq -r .id "$body"; rm -f "$body"; return 0; fi
        if [[ "$code" == 503 || "$code" == 429 || "$code" == 000 ]]; then sleep 1; r=$(( (r + 1) % 3 )); continue; fi
        cat "$body" >&2; rm -f "$body"; return 1
    done
    return 1
}

# wait_done REPLICA ID DEADLINE_S: long-polls until done; prints the final state.
wait_done() {
    local r="$1" id="$2" until=$(( $(date +%s) + $3 )) body="$WORK/poll.$$.$RANDOM" code
    while (( $(date +%s) < until )); do
        code=$(request GET "$(url "$r")/jobs/$id?wait=10s" "$body")
        if [[ "$code" == 200 && "$(jq -r .done "$body")" == true ]]; then
            jq -r .state "$body"; rm -f "$body"; return 0
        fi
        [[ "$code" == 200 ]] || { sleep 1; r=$(( (r + 1) % 3 )); }
    done
    rm -f "$body"
    echo timeout
}

alive() { kill -0 "${PIDS[$1]}" 2>/dev/null; }

# Jobs whose run was recorded as finished (succeeded, failed, canceled) more than once across
# all replicas' logs; a requeue is not a finish.
finished_twice() {
    cat "$WORK"/replica*.log | sed 's/\x1b\[[0-9;]*m//g' | grep 'run recorded' | grep -v 'state="requeued"' \
        | grep -o 'job=job_[0-9a-f]*' | sort | uniq -d | wc -l
}

# ---------------------------------------------------------------------------------------------
say "phase 1: 30 jobs round-robin, polled and downloaded on other replicas"
declare -a IDS KINDS
for j in $(seq 0 29); do
    k=$(( j % 3 ))
    IDS[$j]=$(submit $(( j % 3 )) "${OPTS[$k]}&name=rr-$j" "$MODELS/tiny.onnx") || die "submit $j failed"
    KINDS[$j]=$k
done
mismatch=0; notdone=0
for j in $(seq 0 29); do
    state=$(wait_done $(( (j + 1) % 3 )) "${IDS[$j]}" 120)
    [[ "$state" == succeeded ]] || { notdone=$((notdone + 1)); echo "job ${IDS[$j]}: $state" >&2; continue; }
    code=$(request GET "$(url $(( (j + 2) % 3 )))/jobs/${IDS[$j]}/model" "$WORK/dl.onnx")
    if [[ "$code" != 200 ]] || ! cmp -s "$WORK/dl.onnx" "$WORK/cli${KINDS[$j]}.onnx"; then
        mismatch=$((mismatch + 1)); echo "job ${IDS[$j]}: download $code differs from the CLI" >&2
    fi
done
(( notdone == 0 )) && ok "30/30 jobs succeeded, polled on another replica" || bad "$notdone of 30 jobs did not succeed"
(( mismatch == 0 )) && ok "30/30 models downloaded from a third replica equal the CLI's" || bad "$mismatch models differ from the CLI's"
spread=$(for i in 0 1 2; do grep -c 'run recorded' "$WORK/replica$i.log" || true; done | tr '\n' ' ')
echo "runs recorded per replica: $spread"

# ---------------------------------------------------------------------------------------------
say "phase 2: kill -9 of a replica while it runs jobs"
"$BIN" equalize "$MODELS/mobilenet_v2.onnx" -o "$WORK/cli_mnv2.onnx" --relu6 exact --quiet
declare -a KIDS
for j in $(seq 0 11); do
    KIDS[$j]=$(submit $(( j % 3 )) "relu6=exact&name=kill-$j" "$MODELS/mobilenet_v2.onnx") || die "submit failed"
done
t0=$(date +%s)
running=0
for n in $(seq 1 600); do
    running=$(curl -s --max-time 2 "$(url 0)/metrics" | awk '/^cle_replica_jobs_running /{print $2}')
    [[ "${running:-0}" -ge 1 ]] && break
    sleep 0.1
done
[[ "${running:-0}" -ge 1 ]] || die "replica 0 never ran a job"
kill -9 "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true; PIDS[0]=0
killed_at=$(date +%s)
say "killed replica 0 with $running jobs running"
lost=0
for j in $(seq 0 11); do
    state=$(wait_done $(( 1 + j % 2 )) "${KIDS[$j]}" 600)
    [[ "$state" == succeeded ]] || { lost=$((lost + 1)); echo "job ${KIDS[$j]}: $state" >&2; }
done
elapsed=$(( $(date +%s) - killed_at ))
(( lost == 0 )) && ok "12/12 jobs succeeded on the two remaining replicas (${elapsed}s after the kill)" \
    || bad "$lost of 12 jobs did not succeed after the kill"
taken=0
for j in $(seq 0 11); do
    job=$(curl -s --max-time 5 "$(url 1)/jobs/${KIDS[$j]}")
    (( $(jq -r .attempts <<< "$job") >= 2 )) && taken=$((taken + 1))
    code=$(request GET "$(url 2)/jobs/${KIDS[$j]}/model" "$WORK/dl.onnx")
    [[ "$code" == 200 ]] && cmp -s "$WORK/dl.onnx" "$WORK/cli_mnv2.onnx" || bad "job ${KIDS[$j]}: model differs from the CLI's"
done
(( taken >= 1 )) && ok "$taken jobs of the killed replica were taken over (attempts >= 2)" \
    || bad "no job shows a second attempt"
dups=$(finished_twice)
(( dups == 0 )) && ok "no job was recorded as finished twice" || bad "$dups jobs recorded twice"
start_replica 0
wait_ready 0 || die "replica 0 did not come back"

# ---------------------------------------------------------------------------------------------
say "phase 3: PostgreSQL restarted and the S3 server stopped for 10 s under load"
: > "$STATUS_LOG"
declare -a OIDS
for j in $(seq 0 8); do
    OIDS[$j]=$(submit $(( j % 3 )) "relu6=exact&name=outage-$j" "$MODELS/mobilenet_v2.onnx") || die "submit failed"
done
# Clients during the outages: keep submitting small jobs and polling everything.
(
    for j in $(seq 0 17); do
        id=$(submit $(( j % 3 )) "${OPTS[0]}&name=during-$j" "$MODELS/tiny.onnx") && echo "$id" >> "$WORK/during.ids"
        for id in "${OIDS[@]}"; do request GET "$(url $(( j % 3 )))/jobs/$id" /dev/null > /dev/null; done
        request GET "$(url $(( (j + 1) % 3 )))/jobs?page_size=5" /dev/null > /dev/null
        sleep 0.5
    done
) &
CLIENTS=$!
sleep 2
say "restarting PostgreSQL"
bash "$ROOT/scripts/backends.sh" pg-stop "$WORK/backends"
sleep 3
notready=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$(url 1)/readyz")
bash "$ROOT/scripts/backends.sh" pg-start "$WORK/backends"
[[ "$notready" == 503 ]] && ok "readiness is 503 while PostgreSQL is down" || bad "readiness answered $notready with PostgreSQL down"
sleep 4
say "stopping the S3 server for 10 s"
bash "$ROOT/scripts/backends.sh" s3-stop "$WORK/backends"
sleep 2
notready=$(curl -s -o /dev/null -w '%{http_code}' --max-time 8 "$(url 2)/readyz")
sleep 8
bash "$ROOT/scripts/backends.sh" s3-start "$WORK/backends"
[[ "$notready" == 503 ]] && ok "readiness is 503 while the S3 server is down" || bad "readiness answered $notready with S3 down"
wait "$CLIENTS" || true
recovered=0
for i in 0 1 2; do wait_ready "$i" && recovered=$((recovered + 1)); done
(( recovered == 3 )) && ok "readiness recovered on 3/3 replicas without a restart" || bad "only $recovered replicas ready again"
sleep 5  # the LISTEN connections reconnect with a back-off of up to 5 s
tls_only "after the outages"
alive_n=0; for i in 0 1 2; do alive "$i" && alive_n=$((alive_n + 1)); done
(( alive_n == 3 )) && ok "no replica exited" || bad "$((3 - alive_n)) replicas exited"
mapfile -t DIDS < "$WORK/during.ids"
lost=0
for id in "${OIDS[@]}" "${DIDS[@]}"; do
    state=$(wait_done 0 "$id" 600)
    [[ "$state" == succeeded ]] || { lost=$((lost + 1)); echo "job $id: $state" >&2; }
done
total=$(( ${#OIDS[@]} + ${#DIDS[@]} ))
(( lost == 0 )) && ok "$total/$total acknowledged jobs succeeded (none lost)" || bad "$lost of $total acknowledged jobs lost or failed"
(( ${#DIDS[@]} >= 1 )) && ok "${#DIDS[@]} jobs were accepted during the outages (after retries)" || bad "no job accepted during the outages"
others=$(awk '$1 ~ /^5/ && !($1 == 503 && $2 != "-" && ($3 == "storage_unavailable" || $3 == "not_ready"))' "$STATUS_LOG" | wc -l)
n503=$(awk '$1 == 503' "$STATUS_LOG" | wc -l)
(( others == 0 )) && ok "no 5xx but documented 503s ($n503 × 503 with Retry-After; $(wc -l < "$STATUS_LOG") requests)" \
    || { bad "$others undocumented 5xx answers"; awk '$1 ~ /^5/' "$STATUS_LOG" | sort | uniq -c | head >&2; }
dups=$(finished_twice)
(( dups == 0 )) && ok "still no job recorded as finished twice" || bad "$dups jobs recorded twice"

for i in 0 1 2; do
    kill -TERM "${PIDS[$i]}" 2>/dev/null || true
    if wait "${PIDS[$i]}"; then ok "replica $i stopped cleanly on SIGTERM"; else bad "replica $i exit status $?"; fi
    PIDS[$i]=0
done
echo "cluster_check: $PASSED passed, $FAILED failed"
(( FAILED == 0 ))
