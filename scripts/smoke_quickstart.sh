#!/usr/bin/env bash
# Runs the README's "Quickstart (HTTP)" verbatim, as a new user would: the text between
# <!-- quickstart:begin --> and <!-- quickstart:end --> is cut into its ```sh blocks; the first
# (the serve command) runs in the background, the others run in order in a bash shell with
# `set -e`, in a scratch folder holding `model.onnx` (../shared/models/tiny.onnx), with the
# freshly built `onnx-cle` first on PATH. Then the downloaded model must equal the CLI's output
# for the same options. Needs port 8080 free (the README's address). Exits non-zero on failure.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-cle-target}"
MODELS="$ROOT/../shared/models"

fail() { printf 'smoke_quickstart: FAILED: %s\n' "$*" >&2; exit 1; }

if [[ ! -f "$MODELS/tiny.onnx" ]]; then
    echo "SKIPPED: ../shared/models not found"
    exit 0
fi
command -v curl >/dev/null || fail "curl is not installed"

cargo build --locked --quiet --bin onnx-cle
BIN_DIR="$CARGO_TARGET_DIR/debug"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/onnx-cle-quickstart.XXXXXX")"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

awk '/<!-- quickstart:begin -->/{on=1; next} /<!-- quickstart:end -->/{on=0} on' "$ROOT/README.md" \
    > "$WORK/quickstart.md"
[[ -s "$WORK/quickstart.md" ]] || fail "no quickstart section between the markers in README.md"
awk -v dir="$WORK" '
    /^```sh[[:space:]]*$/ { n++; file = sprintf("%s/block%d.sh", dir, n); inblock = 1; next }
    /^```[[:space:]]*$/ && inblock { inblock = 0; close(file); next }
    inblock { print > file }
' "$WORK/quickstart.md"
BLOCKS=("$WORK"/block*.sh)
(( ${#BLOCKS[@]} >= 2 )) || fail "expected a serve block and at least one curl block"

if curl -s -o /dev/null --max-time 2 http://127.0.0.1:8080/; then
    fail "something already listens on 127.0.0.1:8080 (the README's address); stop it first"
fi

cp "$MODELS/tiny.onnx" "$WORK/model.onnx"
export PATH="$BIN_DIR:$PATH"
cd "$WORK"

echo "== quickstart: serve block"
cat "$WORK/block1.sh"
SERVE_CMD="$(grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$WORK/block1.sh")"
[[ "$(wc -l <<< "$SERVE_CMD")" == 1 ]] || fail "the serve block must be one command"
bash -c "exec $SERVE_CMD" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
    curl -s -o /dev/null --max-time 2 http://127.0.0.1:8080/healthz && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; fail "the serve command exited"; }
    sleep 0.2
done
curl -sS --fail -o /dev/null http://127.0.0.1:8080/readyz || { cat "$WORK/server.log" >&2; fail "not ready"; }

for block in "${BLOCKS[@]:1}"; do
    echo "== quickstart: $(basename "$block")"
    cat "$block"
    timeout 600 bash -e "$block" || { tail -n 30 "$WORK/server.log" >&2; fail "$(basename "$block") failed"; }
done

echo "== checking the downloads"
[[ -s model.cle.onnx ]] || fail "model.cle.onnx was not downloaded"
python3 -c 'import json,sys; r=json.load(open("report.json")); assert r["schema_version"]>=1 and r["model"]["nodes_before"]>0' \
    || fail "report.json is not a report"
onnx-cle equalize model.onnx -o cli.onnx --relu6 exact --quiet
cmp model.cle.onnx cli.onnx || fail "the service's model differs from the CLI's"
[[ -d onnx-cle-data/jobs ]] || fail "the default data dir ./onnx-cle-data was not used"

kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || fail "the server did not exit cleanly on SIGTERM"
SERVER_PID=""
echo "== quickstart OK"
echo "smoke_quickstart: 1 passed, 0 failed"
