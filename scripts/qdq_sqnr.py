"""Logits SQNR of QDQ models against the original FP32 model, in onnxruntime (the tuning loop of
issue 19's noise-optimal scaling).

    N=40 python scripts/qdq_sqnr.py INPUTS.npy ORIGINAL.onnx Q1.onnx [Q2.onnx ...]

INPUTS.npy: NCHW float32 images; N of them are taken evenly spaced (`x[::len // N][:N]`), batch 1.
Every model runs with onnxruntime's default optimizations (its int8 kernels); a model whose file
name starts with `q` also runs with graph optimizations disabled (exact float QDQ semantics).
Prints the aggregate SQNR `10·log10(Σ ref² / Σ err²)`, the per-image median and 10th percentile,
and the top-1 agreement. Needs numpy and onnxruntime (a throwaway venv).
"""
import os
import sys

import numpy as np
import onnxruntime as ort

ort.set_default_logger_severity(3)
x = np.load(sys.argv[1])
n = int(os.environ.get("N", "40"))
x = x[:: max(1, len(x) // n)][:n]


def run(path, optimized=True):
    so = ort.SessionOptions()
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


ref = run(sys.argv[2])
for p in sys.argv[3:]:
    for optimized in (True, False) if os.path.basename(p).startswith("q") else (True,):
        y = run(p, optimized)
        e = y - ref
        per = [10 * np.log10((ref[i] ** 2).sum() / max((e[i] ** 2).sum(), 1e-30)) for i in range(len(x))]
        print(
            "%-40s %s %.2f dB  med %.2f p10 %.2f top1 %.3f"
            % (
                p,
                "opt  " if optimized else "float",
                10 * np.log10((ref**2).sum() / (e**2).sum()),
                np.median(per),
                np.percentile(per, 10),
                (y.argmax(-1) == ref.argmax(-1)).mean(),
            )
        )
