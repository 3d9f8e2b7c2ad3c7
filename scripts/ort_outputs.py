#!/usr/bin/env python3
"""Runs MODEL.onnx in onnxruntime (CPU) on every sample of SAMPLES.npy and saves the first
output of each to OUT.npy (stacked). --float-ops disables graph optimizations, so QuantizeLinear
and DequantizeLinear run as float ops: the exact semantics of a QDQ model, whatever the CPU's
int8 kernels do. Prints the CPU's onnxruntime version and the int8 kernels the session used.

Usage: ort_outputs.py MODEL.onnx SAMPLES.npy OUT.npy [--float-ops]
Run under an emulator (scripts/checks_common.sh non_vnni_python) to see another CPU's kernels.
"""
import sys

import numpy as np
import onnxruntime as ort

ort.set_default_logger_severity(3)


def main():
    model, samples, out = sys.argv[1:4]
    so = ort.SessionOptions()
    if "--float-ops" in sys.argv[4:]:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    first = sess.get_outputs()[0].name
    x = np.load(samples).astype(np.float32)
    np.save(out, np.stack([sess.run([first], {name: s[None]})[0] for s in x]))


if __name__ == "__main__":
    main()
