# Sourced by the checking scripts: ensure_ort_venv PATH creates (or repairs) a throwaway venv with
# onnx==1.23.2, onnxruntime and numpy at PATH, only when it is missing or broken.
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
