#!/usr/bin/env python3
"""Independent check of onnx-cle's output with the official ONNX tooling.

Usage: check_onnxruntime.py ORIGINAL.onnx DEFAULT_OUT.onnx AIMET_OUT.onnx [AIMET_FIXTURE.onnx]

- every given model passes onnx.checker.check_model(full_check=True);
- onnxruntime runs the original and both outputs on the same seeded random input;
- the default-mode output must match the original within 1e-5 relative L2 (it is meant to be the
  same function);
- the --compat aimet output changes the function on purpose (ReLU6 -> ReLU, 3-sigma bias fold):
  its deviation is printed, and when AIMET's own result (AIMET_FIXTURE) is given, ours must match
  it within 1e-4 relative L2.
Exits non-zero on any failure.
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort

ort.set_default_logger_severity(3)  # no warnings about AIMET's orphaned Constant outputs

DEFAULT_MAX_REL_L2 = 1e-5
AIMET_MAX_REL_L2 = 1e-4


def check(path):
    onnx.checker.check_model(onnx.load(path), full_check=True)
    print(f"check_model(full_check=True): ok  {path}")


def run(path, feed):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def rel_l2(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def main(argv):
    if len(argv) not in (4, 5):
        print(__doc__)
        return 2
    original, default_out, aimet_out = argv[1:4]
    fixture = argv[4] if len(argv) == 5 else None
    failures = []
    for p in [original, default_out, aimet_out] + ([fixture] if fixture else []):
        try:
            check(p)
        except Exception as e:  # noqa: BLE001 - report every failure
            failures.append(f"check_model failed for {p}: {e}")
    sess = ort.InferenceSession(original, providers=["CPUExecutionProvider"])
    feed = {}
    rng = np.random.default_rng(0x5EED)
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 2 for d in i.shape]
        feed[i.name] = rng.standard_normal(shape).astype(np.float32)
    ref = run(original, feed)
    dev_default = max(rel_l2(a, b) for a, b in zip(ref, run(default_out, feed)))
    ours_aimet = run(aimet_out, feed)
    dev_aimet = max(rel_l2(a, b) for a, b in zip(ref, ours_aimet))
    print(f"onnxruntime rel L2 vs original: default {dev_default:.3e} (limit {DEFAULT_MAX_REL_L2:.0e}), "
          f"compat aimet {dev_aimet:.3e} (function changed on purpose)")
    if not dev_default <= DEFAULT_MAX_REL_L2:
        failures.append(f"default mode changed the function: rel L2 {dev_default:.3e}")
    if fixture:
        dev_fix = max(rel_l2(a, b) for a, b in zip(run(fixture, feed), ours_aimet))
        print(f"onnxruntime rel L2 compat aimet vs AIMET's own output: {dev_fix:.3e} (limit {AIMET_MAX_REL_L2:.0e})")
        if not dev_fix <= AIMET_MAX_REL_L2:
            failures.append(f"compat aimet differs from AIMET's output: rel L2 {dev_fix:.3e}")
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
