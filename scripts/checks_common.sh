# Sourced by the checking scripts (check_onnxruntime.sh, check_int8.sh).
#
# ensure_ort_venv PATH: creates (or repairs) a throwaway venv with onnx==1.23.2, onnxruntime and
# numpy at PATH, only when it is missing or broken.
# onnx_cle_bin ROOT [BIN]: prints BIN, else $ONNX_CLE_BIN, else builds the debug binary of the
# repository at ROOT (`cargo build`, $CARGO_TARGET_DIR or ~/.cache/onnx-cle-target) and prints
# its path.
ensure_ort_venv() {
    local venv="$1"
    if ! "$venv/bin/python" -c 'import onnx, onnxruntime, numpy' >/dev/null 2>&1; then
        echo "creating venv $venv (onnx==1.23.2, onnxruntime, numpy)" >&2
        rm -rf "$venv"
        mkdir -p "$(dirname "$venv")"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            onnx==1.23.2 onnxruntime numpy
    fi
}

onnx_cle_bin() {
    local root="$1" bin="${2:-${ONNX_CLE_BIN:-}}"
    if [ -z "$bin" ]; then
        export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-cle-target}"
        (cd "$root" && cargo build --locked --quiet) >&2 || return 1
        bin="$CARGO_TARGET_DIR/debug/onnx-cle"
    fi
    printf '%s\n' "$bin"
}
