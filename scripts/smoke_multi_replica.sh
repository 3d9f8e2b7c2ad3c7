#!/usr/bin/env bash
# Runs the README's "Several replicas" section verbatim, as a new user would: the ```sh blocks
# between <!-- multi-replica:begin --> and <!-- multi-replica:end --> run in order in one bash
# shell with `set -e`, in a scratch folder holding `model.onnx` (../shared/models/tiny.onnx) and
# a link to the repository's scripts/, with the freshly built `onnx-cle` first on PATH. Then the
# downloaded model must equal the CLI's for the same options. Exits non-zero on failure.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-cle-target}"
MODELS="$ROOT/../shared/models"

fail() { printf 'smoke_multi_replica: FAILED: %s\n' "$*" >&2; exit 1; }
[[ -f "$MODELS/tiny.onnx" ]] || { echo "SKIPPED: ../shared/models not found"; exit 0; }

cargo build --locked --quiet --bin onnx-cle
export PATH="$CARGO_TARGET_DIR/debug:$PATH"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/onnx-cle-multi.XXXXXX")"
cleanup() {
    (cd "$WORK" && [[ -d onnx-cle-cluster ]] && bash scripts/local_cluster.sh stop) || true
    rm -rf "$WORK"
}
trap cleanup EXIT

awk '/<!-- multi-replica:begin -->/{on=1; next} /<!-- multi-replica:end -->/{on=0} on' "$ROOT/README.md" \
    | awk '/^```sh[[:space:]]*$/{inb=1; next} /^```[[:space:]]*$/ && inb {inb=0; next} inb' > "$WORK/readme.sh"
[[ -s "$WORK/readme.sh" ]] || fail "no sh blocks between the multi-replica markers in README.md"
grep -q 'local_cluster.sh stop' "$WORK/readme.sh" || fail "the section does not stop the cluster"
cp "$MODELS/tiny.onnx" "$WORK/model.onnx"
ln -s "$ROOT/scripts" "$WORK/scripts"
cd "$WORK"
echo "== multi-replica section:"
cat readme.sh
timeout 600 bash -e readme.sh || fail "the README's commands failed"
[[ -s model.cle.onnx ]] || fail "model.cle.onnx was not downloaded"
onnx-cle equalize model.onnx -o cli.onnx --relu6 exact --quiet
cmp model.cle.onnx cli.onnx || fail "the model from the third replica differs from the CLI's"
[[ ! -d onnx-cle-cluster ]] || fail "stop left ./onnx-cle-cluster behind"
echo "smoke_multi_replica: 1 passed, 0 failed"
