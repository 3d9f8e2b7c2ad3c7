"""The per-channel noise step's candidates on the tuning split (README: Scaling rule).

    source scripts/eval/env.sh
    scripts/eval/analysis/step_probe.sh [N]      # builds the probe CLI, then runs this

Runs a CLI built with step_probe.patch (environment knobs STEP_PROBE_SPAN=range|reach and
STEP_PROBE_FRACTION, read by `best_step` only) on N evenly spaced tuning crops (default 300) of
EfficientNet-Lite2, EfficientNet-Lite0 and MobileNetV2: with per-channel weights (the `ort`
default) the quarter step towards equal ranges (the default before 778e7ea) and the step towards
equal reaches at 0.25 / 0.35 / 0.45, each without and with --mixed-precision 0.05; with per-tensor
weights the noise line towards equal ranges (the default) and towards equal reaches. QDQ models
of the `ort` target (squant + analytic bias correction, data-free ranges) in this CPU's
onnxruntime kernels against the original FP32 model: aggregate SQNR dB / per-image median / 10th
percentile / top-1. Tuning split only.
"""
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe import D, M, WORK, run, sq  # noqa: E402

BIN = os.environ["STEP_PROBE_BIN"]
MODELS = [("efficientnet_lite2", "efficientnet", "-1,1"), ("efficientnet_lite0", "efficientnet", "-1,1"),
          ("mobilenet_v2", "imagenet", "-2.1179,2.64")]
PER_CHANNEL = [("range", "0.25"), ("reach", "0.25"), ("reach", "0.35"), ("reach", "0.45")]
PT = ["--weight-granularity", "per-tensor"]
CANDIDATES = [(s, f, mp) for mp in ([], ["--mixed-precision", "0.05"]) for s, f in PER_CHANNEL]
CANDIDATES += [("range", "-", PT), ("reach", "-", PT)]
n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
for stem, prep, rng in MODELS:
    x = np.load(f"{D}/tune_{prep}.npy", mmap_mode="r")
    x = np.ascontiguousarray(x[np.linspace(0, len(x) - 1, n).astype(int)])
    ref = run(f"{M}/{stem}.onnx", x)
    for span, fraction, extra in CANDIDATES:
        q = os.path.join(WORK, "qdq.onnx")
        env = dict(os.environ, STEP_PROBE_SPAN=span, STEP_PROBE_FRACTION=fraction)
        subprocess.run([BIN, "equalize", f"{M}/{stem}.onnx", "-o", os.path.join(WORK, "eq.onnx"), "--no-verify",
                        "--quiet", "--rounding", "squant", "--bias-correction", "analytic",
                        f"--input-range={rng}", "--qdq-output", q] + extra, env=env, check=True)
        out = run(q, x)
        per = np.array([sq(a, b) for a, b in zip(ref, out)])
        top1 = (ref.argmax(1) == out.argmax(1)).mean()
        label = f"{span} {fraction}{' ' + ' '.join(extra) if extra else ''}"
        print(f"{stem:20s} {label:45s} {sq(ref, out):6.2f} / {np.median(per):6.2f} / "
              f"{np.percentile(per, 10):6.2f} / {top1:.3f}", flush=True)
