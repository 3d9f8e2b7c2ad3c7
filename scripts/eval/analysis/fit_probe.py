"""Data-free ranges fitted to the modelled distribution, against the n-sigma hull (README: Int8
outputs, "Ranges that fit"; tried and not kept).

    scripts/eval/analysis/fit_probe.sh [N]      # builds the probe CLI, then runs this

Runs a CLI built with fit_probe.patch (environment knob FIT_PROBE: when set, every data-free
activation range is the per-tensor [lo, hi] inside the hull of the channels' mu ± 4 sigma whose
expected squared error — rounding on 255 steps plus the clipping of every channel's
clamp(N(mu, sigma²), a, b) — is least) on N evenly spaced tuning crops (default 300) of
EfficientNet-Lite2, EfficientNet-Lite0 and MobileNetV2: the default QDQ model of the `ort` target
(per-channel weights, squant + analytic bias correction, data-free ranges, no self-check) with
the hull (today's ranges) and with the fitted ranges, in this CPU's onnxruntime kernels against
the original FP32 model: aggregate SQNR dB / per-image median / 10th percentile / top-1. Tuning
split only.
"""
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe import D, M, WORK, run, sq  # noqa: E402

BIN = os.environ["FIT_PROBE_BIN"]
MODELS = [("efficientnet_lite2", "efficientnet", "-1,1"), ("efficientnet_lite0", "efficientnet", "-1,1"),
          ("mobilenet_v2", "imagenet", "-2.1179,2.64")]
n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
for stem, prep, rng in MODELS:
    x = np.load(f"{D}/tune_{prep}.npy", mmap_mode="r")
    x = np.ascontiguousarray(x[np.linspace(0, len(x) - 1, n).astype(int)])
    ref = run(f"{M}/{stem}.onnx", x)
    for label, fit in (("hull (today)", False), ("fitted", True)):
        q = os.path.join(WORK, "qdq.onnx")
        env = dict(os.environ)
        env.pop("FIT_PROBE", None)
        if fit:
            env["FIT_PROBE"] = "1"
        subprocess.run([BIN, "equalize", f"{M}/{stem}.onnx", "-o", os.path.join(WORK, "eq.onnx"), "--no-verify",
                        "--quiet", "--rounding", "squant", "--bias-correction", "analytic",
                        f"--input-range={rng}", "--qdq-output", q], env=env, check=True)
        out = run(q, x)
        per = np.array([sq(a, b) for a, b in zip(ref, out)])
        top1 = (ref.argmax(1) == out.argmax(1)).mean()
        print(f"{stem:20s} {label:14s} {sq(ref, out):6.2f} / {np.median(per):6.2f} / "
              f"{np.percentile(per, 10):6.2f} / {top1:.3f}", flush=True)
