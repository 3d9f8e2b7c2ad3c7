#!/usr/bin/env bash
# The queue benchmark (benches/queue.rs: claim → renew → finish through the real PostgreSQL
# statements, no CLE work) against a throwaway PostgreSQL cluster on loopback (fsync on, as in
# production), started by scripts/backends.sh and stopped afterwards.
#
#   scripts/bench_queue.sh                          # release build, 20000 jobs, 8 claimers
#   QUEUE_BENCH_JOBS=2000 BENCH_PROFILE=dev scripts/bench_queue.sh   # quick (CI)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-cle-target}"
PROFILE="${BENCH_PROFILE:-bench}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/onnx-cle-bench-queue.XXXXXX")"
trap 'bash "$ROOT/scripts/backends.sh" stop "$WORK"' EXIT

(cd "$ROOT" && cargo bench --locked --profile "$PROFILE" --bench queue --no-run --quiet)
BACKENDS=pg bash "$ROOT/scripts/backends.sh" start "$WORK"
# shellcheck disable=SC1091
source "$WORK/env"
echo "== bench_queue: PostgreSQL $(psql "$DATABASE_URL" -Atc 'SHOW server_version'), fsync $(psql "$DATABASE_URL" -Atc 'SHOW fsync'), $(nproc) cores, profile $PROFILE"
(cd "$ROOT" && cargo bench --locked --profile "$PROFILE" --bench queue --quiet)
