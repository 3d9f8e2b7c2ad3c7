#!/usr/bin/env bash
# Checks opset upgrades in onnxruntime (tests/opset_upgrade.rs runs it).
#
# check_opset_upgrade.sh DIR NAME…: for each NAME, DIR/NAME.onnx (the original),
# DIR/NAME.upgraded.onnx (raised to opset 13) and DIR/NAME.qdq.onnx (its per-channel QDQ model);
# the last two pass onnx.checker (full check), and all three load in onnxruntime; on the same
# random input the upgraded model must give the original's outputs (max relative difference
# ≤ 1e-6) and the QDQ model finite outputs (its SQNR against the original is printed). Uses the throwaway venv of checks_common.sh under
# $ONNX_CLE_VENV_DIR (default ~/.cache/onnx-cle-venvs).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/checks_common.sh
. "$here/checks_common.sh"
venv="${ONNX_CLE_VENV_DIR:-$HOME/.cache/onnx-cle-venvs}/ort"
ensure_ort_venv "$venv"
"$venv/bin/python" - "$@" <<'PY'
import sys

import numpy as np
import onnx
import onnxruntime as ort

folder, names = sys.argv[1], sys.argv[2:]
opts = ort.SessionOptions()
opts.log_severity_level = 3


def run(path, feeds):
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


for name in names:
    base = f"{folder}/{name}"
    for suffix in ("upgraded", "qdq"):
        onnx.checker.check_model(f"{base}.{suffix}.onnx", full_check=True)
    s = ort.InferenceSession(f"{base}.onnx", opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in s.get_inputs():
        shape = [d if isinstance(d, int) else 2 for d in i.shape]
        feeds[i.name] = rng.uniform(-1, 1, shape).astype(np.float32)
    ref = s.run(None, feeds)
    up = run(f"{base}.upgraded.onnx", feeds)
    worst = max(
        float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)) for a, b in zip(ref, up)
    )
    q = run(f"{base}.qdq.onnx", feeds)
    finite = all(np.isfinite(x).all() for x in q)
    sqnr = min(
        10 * np.log10((a.astype(np.float64) ** 2).sum() / max(((a - b).astype(np.float64) ** 2).sum(), 1e-30))
        for a, b in zip(ref, q)
    )
    print(f"{name}: upgraded vs original max rel diff {worst:.1e}; per-channel QDQ runs, worst output SQNR {sqnr:.1f} dB")
    if worst > 1e-6 or not finite:
        sys.exit(f"{name}: upgraded model differs ({worst:e}) or QDQ output not finite")
PY
