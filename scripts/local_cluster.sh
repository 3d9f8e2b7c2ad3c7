#!/usr/bin/env bash
# A local multi-replica onnx-cle: a throwaway PostgreSQL cluster and an S3 server (SeaweedFS)
# on loopback (scripts/backends.sh installs them on first use) and REPLICAS `onnx-cle serve`
# replicas sharing them, all in the background. State and logs in ./onnx-cle-cluster. The
# replicas reach PostgreSQL over TLS (sslmode=verify-full, a throwaway CA; PG_TLS= turns it off).
#
#   scripts/local_cluster.sh start     # prints the replicas' URLs
#   scripts/local_cluster.sh url N     # URL of replica N (1-based)
#   scripts/local_cluster.sh stop      # stops the replicas (SIGTERM), the S3 server and PostgreSQL
#
# The binary: ONNX_CLE_BIN, else `onnx-cle` on PATH, else `cargo build --release`. Environment:
# REPLICAS (default 3), CLUSTER_PORT_BASE (replica i on BASE+i; default free ports),
# PG_PORT / S3_PORT_BASE (see scripts/backends.sh), ONNX_CLE_WORKERS (per replica, default 2).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${CLUSTER_DIR:-$PWD/onnx-cle-cluster}"
REPLICAS="${REPLICAS:-3}"

die() { echo "local_cluster: $*" >&2; exit 1; }

binary() {
    if [[ -n "${ONNX_CLE_BIN:-}" ]]; then echo "$ONNX_CLE_BIN"; return; fi
    if command -v onnx-cle >/dev/null; then command -v onnx-cle; return; fi
    (cd "$ROOT" && cargo build --release --locked --quiet --bin onnx-cle)
    echo "${CARGO_TARGET_DIR:-$ROOT/target}/release/onnx-cle"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() {
    [[ -f "$STATE/urls" ]] && die "already running (scripts/local_cluster.sh stop first)"
    mkdir -p "$STATE"
    local bin i port
    bin="$(binary)"
    PG_TLS="${PG_TLS-1}" bash "$ROOT/scripts/backends.sh" start "$STATE/backends"
    # shellcheck disable=SC1091
    source "$STATE/backends/env"
    : > "$STATE/pids"
    : > "$STATE/urls.tmp"
    for i in $(seq 1 "$REPLICAS"); do
        if [[ -n "${CLUSTER_PORT_BASE:-}" ]]; then port=$((CLUSTER_PORT_BASE + i)); else port="$(free_port)"; fi
        nohup "$bin" serve --addr "127.0.0.1:$port" --data-dir "$STATE/replica$i" \
            --workers "${ONNX_CLE_WORKERS:-2}" > "$STATE/replica$i.log" 2>&1 < /dev/null &
        echo $! >> "$STATE/pids"
        echo "http://127.0.0.1:$port" >> "$STATE/urls.tmp"
    done
    for i in $(seq 1 "$REPLICAS"); do
        local url ok=""
        url="$(sed -n "${i}p" "$STATE/urls.tmp")"
        for _ in $(seq 1 150); do
            if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/readyz")" == 200 ]]; then ok=1; break; fi
            sleep 0.2
        done
        [[ -n "$ok" ]] || { tail -n 20 "$STATE/replica$i.log" >&2; stop; die "replica $i did not become ready"; }
    done
    mv "$STATE/urls.tmp" "$STATE/urls"
    echo "$REPLICAS replicas sharing $ONNX_CLE_DATABASE_URL and $ONNX_CLE_BLOB_STORE:"
    cat "$STATE/urls"
}

stop() {
    local pid
    if [[ -f "$STATE/pids" ]]; then
        while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done < "$STATE/pids"
        while read -r pid; do
            for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        done < "$STATE/pids"
    fi
    bash "$ROOT/scripts/backends.sh" stop "$STATE/backends"
    rm -rf "$STATE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url)
        [[ -f "$STATE/urls" ]] || die "not running (scripts/local_cluster.sh start)"
        sed -n "${2:-1}p" "$STATE/urls"
        ;;
    *) die "usage: $0 start | url N | stop" ;;
esac
