#!/usr/bin/env bash
# Browser check of the visual report: equalizes ../shared/models/mobilenet_v2.onnx with
# `--html`, opens the page in Debian's headless Chromium through playwright-core and fails on any
# console error, page error or request other than the page itself, or when the charts are
# missing. Saves a screenshot (default docs/report-screenshot.png).
#
# Installs what it needs when missing: Debian's chromium (apt, as root) and playwright-core from
# npm into ${ONNX_CLE_NODE_DIR:-$HOME/.cache/onnx-cle-node}. Playwright never downloads a browser.
#
# Environment: ONNX_CLE_BIN (binary; default $CARGO_TARGET_DIR/debug/onnx-cle, built with cargo),
# ONNX_CLE_MODEL (model), HTML_REPORT_SCREENSHOT (screenshot path), HTML_REPORT_KEEP (folder
# that receives report.html and report.json).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
model="${ONNX_CLE_MODEL:-$root/../shared/models/mobilenet_v2.onnx}"
shot="${HTML_REPORT_SCREENSHOT:-$root/docs/report-screenshot.png}"
node_dir="${ONNX_CLE_NODE_DIR:-$HOME/.cache/onnx-cle-node}"
playwright_version="1.65.1"

say() { echo "html_report_check: $*" >&2; }

if [ ! -f "$model" ]; then
    say "model not found: $model"
    exit 1
fi

if [ ! -x /usr/bin/chromium ]; then
    say "installing Debian's chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [ ! -f "$node_dir/node_modules/playwright-core/package.json" ] ||
    ! grep -q "\"version\": \"$playwright_version\"" "$node_dir/node_modules/playwright-core/package.json"; then
    say "installing playwright-core $playwright_version into $node_dir"
    mkdir -p "$node_dir"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$node_dir" --no-audit --no-fund \
        --no-save --loglevel=error "playwright-core@$playwright_version" >&2
fi

if [ -n "${ONNX_CLE_BIN:-}" ]; then
    bin="$ONNX_CLE_BIN"
else
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-cle-target}"
    (cd "$root" && cargo build --quiet --bin onnx-cle)
    bin="$CARGO_TARGET_DIR/debug/onnx-cle"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$bin" equalize "$model" -o "$tmp/m.onnx" --report "$tmp/report.json" --html "$tmp/report.html" --quiet
mkdir -p "$(dirname "$shot")"
NODE_PATH="$node_dir/node_modules" node "$root/scripts/html_report_check.mjs" \
    "$tmp/report.html" "$shot" "$tmp/report.json"

if [ -n "${HTML_REPORT_KEEP:-}" ]; then
    mkdir -p "$HTML_REPORT_KEEP"
    cp "$tmp/report.html" "$tmp/report.json" "$HTML_REPORT_KEEP/"
fi
