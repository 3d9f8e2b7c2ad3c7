"""The exact model (`-o`) under a quantizer of the user's own, on the tuning split (README: Scaling rule).

    source scripts/eval/env.sh
    $EVAL_PY scripts/eval/analysis/o_probe.py [N]      # N tuning crops per model, default 300

For EfficientNet-Lite0, EfficientNet-Lite2 and MobileNetV2: onnxruntime's quantize_static (QDQ,
int8 weights per-tensor and per-channel, uint8 activations, MinMax on the 32 calibration crops,
as scripts/eval_int8.sh runs it) of the original model and of `onnx-cle equalize -o` with
`--scaling noise` (the int8 outputs' rule) and `--scaling equal-ranges` (the exact model's rule
under the default `split`), in this CPU's onnxruntime kernels against the original FP32 model:
aggregate SQNR dB / per-image median / 10th percentile / top-1. Tuning split only.
"""
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
sys.path.insert(0, os.path.dirname(here))
from probe import BIN, D, M, WORK, sq  # noqa: E402
from int8 import quantize_static  # noqa: E402

MODELS = [("efficientnet_lite0", "efficientnet"), ("efficientnet_lite2", "efficientnet"),
          ("mobilenet_v2", "imagenet")]
ROWS = [("original", None), ("-o, --scaling noise", ["--scaling", "noise"]),
        ("-o, --scaling equal-ranges", ["--scaling", "equal-ranges"])]


def run(m, x, b=20):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    s = ort.InferenceSession(m, so, providers=["CPUExecutionProvider"])
    n = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {n: x[i:i + b]})[0] for i in range(0, len(x), b)])


n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
print("| model | model quantized | quantize_static per-tensor | quantize_static per-channel |")
print("|---|---|---|---|")
for stem, prep in MODELS:
    x = np.load(f"{D}/tune_{prep}.npy", mmap_mode="r")
    x = np.ascontiguousarray(x[np.linspace(0, len(x) - 1, n).astype(int)])
    calib = np.load(f"{D}/calib_{prep}.npy")
    ref = run(f"{M}/{stem}.onnx", x)
    for label, extra in ROWS:
        src = f"{M}/{stem}.onnx"
        if extra is not None:
            src = os.path.join(WORK, "eq.onnx")
            subprocess.run([BIN, "equalize", f"{M}/{stem}.onnx", "-o", src, "--no-verify", "--quiet"]
                           + extra, check=True)
        cells = []
        for per_channel in (False, True):
            q = os.path.join(WORK, "qs.onnx")
            quantize_static(src, q, calib, per_channel, False)
            out = run(q, x)
            per = np.array([sq(a, b) for a, b in zip(ref, out)])
            cells.append(f"{sq(ref, out):.2f} / {np.median(per):.2f} / {np.percentile(per, 10):.2f} / "
                         f"{(ref.argmax(1) == out.argmax(1)).mean():.3f}")
        print(f"| {stem} | {label} | {cells[0]} | {cells[1]} |", flush=True)
