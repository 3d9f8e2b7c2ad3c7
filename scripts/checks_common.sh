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

# cpu_int8_flags: the x86 flags that decide onnxruntime's int8 kernels (avx2, avx512f,
# avx512bw, avx512_vnni, avx_vnni), or the architecture elsewhere.
cpu_int8_flags() {
    if [ "$(uname -m)" != x86_64 ]; then
        uname -m
        return
    fi
    local f
    f="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|avx512f|avx512bw|avx512_vnni|avx_vnni' | sort -u | tr '\n' ' ')"
    printf 'x86_64 %s\n' "${f:-(none of avx2 avx512f avx512bw avx512_vnni avx_vnni)}"
}

# non_vnni_python VENV: prints a command that runs VENV's Python as on an x86-64 CPU without
# VNNI (AVX2 only: onnxruntime's u8×s8 kernels then add neighbouring products in a saturating
# int16), or nothing when this CPU has no VNNI itself (its own kernels are the ones to check)
# or no emulator can be had. On a CPU with VNNI it uses QEMU's user-mode emulation of an AVX2
# CPU (Debian's qemu-user, installed on first use as root; QEMU has no AVX-512 and no VNNI).
non_vnni_python() {
    local venv="$1"
    [ "$(uname -m)" = x86_64 ] || return 0
    grep -qwE 'avx512_vnni|avx_vnni' /proc/cpuinfo || return 0
    if ! command -v qemu-x86_64 >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "installing qemu-user (Debian) to run onnxruntime as on a CPU without VNNI" >&2
            apt-get update -qq >&2 || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                qemu-user >&2 || return 0
        else
            return 0
        fi
    fi
    command -v qemu-x86_64 >/dev/null 2>&1 || return 0
    # The feature list only silences QEMU's warnings about features TCG cannot emulate.
    printf '%s\n' "qemu-x86_64 -cpu Haswell-noTSX,-pcid,-x2apic,-tsc-deadline,-invpcid $venv/bin/python"
}
