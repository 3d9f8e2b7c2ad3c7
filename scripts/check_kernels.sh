#!/usr/bin/env bash
# Runs every DIR/NAME.onnx on DIR/NAME.npy in onnxruntime's int8 kernels as an x86-64 CPU
# without VNNI runs them (AVX2: u8×s8 products added pairwise in a saturating int16) and writes
# DIR/NAME.out.npy: natively when this CPU has no VNNI, else under QEMU's user-mode emulation of
# an AVX2 CPU (Debian's qemu-user, installed on first use as root). Prints the CPU's flags and
# how the models ran. Exit status 3 (and a SKIPPED line) when neither is possible.
#
# Usage: scripts/check_kernels.sh DIR
# Environment: ONNX_CLE_VENV_DIR (default ~/.cache/onnx-cle-venvs): the `ort` venv lives there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$1"
venv="${ONNX_CLE_VENV_DIR:-$HOME/.cache/onnx-cle-venvs}/ort"
. "$root/scripts/checks_common.sh"
ensure_ort_venv "$venv"
echo "cpu: $(cpu_int8_flags)"
if [ "$(uname -m)" != x86_64 ]; then
    echo "SKIPPED: not an x86-64 CPU: onnxruntime's int8 kernels accumulate in int32 here"
    exit 3
fi
if grep -qwE 'avx512_vnni|avx_vnni' /proc/cpuinfo; then
    python="$(non_vnni_python "$venv")"
    if [ -z "$python" ]; then
        echo "SKIPPED: this CPU has VNNI and no emulator of a CPU without it is available"
        exit 3
    fi
    echo "kernels: x86_64 avx2 without VNNI, emulated ($python)"
else
    python="$venv/bin/python"
    echo "kernels: this CPU's own (no VNNI)"
fi
for m in "$dir"/*.onnx; do
    n="${m%.onnx}"
    $python "$root/scripts/ort_outputs.py" "$m" "$n.npy" "$n.out.npy" 2>/dev/null
done
