#!/usr/bin/env python3
"""Independent check of onnx-cle's int8 outputs with onnxruntime.

Usage: check_int8.py ORIGINAL.onnx REPORT.json SAMPLES.npy --fp32 FP32.onnx [--qdq QDQ.onnx]
                     [--overrides ORT_OVERRIDES.json] [--encodings ENCODINGS.json]
                     [--check-model MODEL.onnx ...] [--tolerance-db 0.5]

FP32.onnx is the model the int8 outputs were written for (the deploy model, or the equalized
model). REPORT.json is onnx-cle's report of the same run (its `exports.figures` hold onnx-cle's
own simulation on SAMPLES.npy).

- onnx.checker.check_model(full_check=True) on every model given (--check-model, --fp32, --qdq);
- the QDQ model runs in onnxruntime (CPU, default graph optimizations); the optimized graph must
  use onnxruntime's int8 kernels (QLinearConv / QLinearAdd / … or ConvInteger / MatMulInteger),
  and its logits SQNR against the original model must agree with onnx-cle's simulated figure
  within the tolerance;
- the overrides go through onnxruntime's own quantize_static (QDQ, one calibration sample,
  every range pinned by TensorQuantOverrides, the graph outputs' producers excluded from output
  quantization); the result runs in onnxruntime and must agree within the tolerance too;
- every tensor named in the encodings exists in FP32.onnx.
Prints one line per figure; exits non-zero on any failure.
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

ort.set_default_logger_severity(3)

INT8_KERNELS = {"QLinearConv", "QLinearAdd", "QLinearMatMul", "QLinearGlobalAveragePool",
                "QLinearConcat", "QLinearMul", "QGemm", "ConvInteger", "MatMulInteger",
                "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax"}


def load_overrides(path):
    """The README's loader: JSON -> what quantize_static expects."""
    raw = json.load(open(path))
    for d in (d for entries in raw.values() for d in entries):
        if "quant_type" in d:
            d["quant_type"] = QuantType.from_string(d["quant_type"])
        d["scale"], d["zero_point"] = np.array(d["scale"], np.float32), np.array(d["zero_point"])
    return raw


def sqnr(ref, out):
    r = np.concatenate([np.asarray(x, np.float64).ravel() for x in ref])
    o = np.concatenate([np.asarray(x, np.float64).ravel() for x in out])
    return 10 * np.log10(np.sum(r * r) / np.sum((r - o) ** 2))


def run(path, name, samples, optimized=None):
    so = ort.SessionOptions()
    if optimized:
        so.optimized_model_filepath = optimized
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    out = sess.get_outputs()[0].name
    return [sess.run([out], {name: s[None]})[0] for s in samples]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("original")
    ap.add_argument("report")
    ap.add_argument("samples")
    ap.add_argument("--fp32", required=True)
    ap.add_argument("--qdq")
    ap.add_argument("--overrides")
    ap.add_argument("--encodings")
    ap.add_argument("--check-model", nargs="*", default=[])
    ap.add_argument("--tolerance-db", type=float, default=0.5)
    a = ap.parse_args()
    failures = []
    for p in a.check_model + [a.fp32] + ([a.qdq] if a.qdq else []):
        try:
            onnx.checker.check_model(onnx.load(p), full_check=True)
            print(f"check_model(full_check=True): ok  {os.path.basename(p)}")
        except Exception as e:  # noqa: BLE001 - report every failure
            failures.append(f"check_model failed for {p}: {e}")
    report = json.load(open(a.report))
    ex = report.get("exports") or {}
    sim = {f["output"]: f["sqnr_db"] for f in ex.get("figures", []) if f["method"] == "simulated"}
    tract = {f["output"]: f["sqnr_db"] for f in ex.get("figures", []) if f["method"] == "tract"}
    target = ex.get("target", "")
    samples = np.load(a.samples).astype(np.float32)
    orig = onnx.load(a.original)
    name = orig.graph.input[0].name
    ref = run(a.original, name, samples)

    def compare(label, got, key):
        want = sim.get(key)
        if want is None:
            failures.append(f"{label}: the report has no simulated figure for {key}")
            return
        d = got - want
        print(f"{label}: onnxruntime {got:.2f} dB, onnx-cle simulation {want:.2f} dB "
              f"(difference {d:+.2f} dB, tolerance {a.tolerance_db} dB)")
        if not abs(d) <= a.tolerance_db:
            failures.append(f"{label}: {got:.2f} dB vs simulated {want:.2f} dB")

    with tempfile.TemporaryDirectory() as tmp:
        if a.qdq:
            opt = os.path.join(tmp, "qdq.optimized.onnx")
            got = sqnr(ref, run(a.qdq, name, samples, optimized=opt))
            ops = [n.op_type for n in onnx.load(opt).graph.node]
            kernels = sorted({o for o in ops if o in INT8_KERNELS})
            print(f"qdq.onnx in onnxruntime: {sum(o in INT8_KERNELS for o in ops)} int8 kernel nodes "
                  f"({', '.join(kernels)}); tract ran it at {tract.get('qdq.onnx', float('nan')):.2f} dB")
            if not kernels:
                failures.append("onnxruntime did not fuse the QDQ model into int8 kernels")
            compare("qdq.onnx", got, "qdq.onnx")
        if a.overrides:
            overrides = load_overrides(a.overrides)
            fp32 = onnx.load(a.fp32)
            producers = {o: n.op_type for n in fp32.graph.node for o in n.output}
            out_ops = sorted({producers[o.name] for o in fp32.graph.output if o.name in producers})
            per_channel = "per_channel" in target
            symmetric_act = "activations int8 symmetric" in target
            act_type = QuantType.QUInt8
            if "activations int8" in target:
                act_type = QuantType.QInt8
            elif "activations uint16" in target:
                act_type = QuantType.QUInt16

            class One(CalibrationDataReader):
                def __init__(self):
                    self.done = False

                def get_next(self):
                    if self.done:
                        return None
                    self.done = True
                    return {name: samples[:1]}

            out = os.path.join(tmp, "ort_qdq.onnx")
            quantize_static(
                a.fp32, out, One(), quant_format=QuantFormat.QDQ,
                activation_type=act_type, weight_type=QuantType.QInt8, per_channel=per_channel,
                extra_options={
                    "TensorQuantOverrides": overrides,
                    "OpTypesToExcludeOutputQuantization": out_ops,
                    "ActivationSymmetric": symmetric_act,
                    "WeightSymmetric": True,
                    "UseQDQContribOps": act_type == QuantType.QUInt16,
                },
            )
            q = onnx.load(out)
            quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
            missing = sorted(t for t in quantized if t not in overrides)
            print(f"quantize_static + TensorQuantOverrides: {len(quantized)} quantized activations, "
                  f"{len(missing)} without an override{': ' + ', '.join(missing[:5]) if missing else ''}")
            compare("quantize_static + ort_overrides.json", sqnr(ref, run(out, name, samples)),
                    "ort_overrides.json")
        if a.encodings:
            enc = json.load(open(a.encodings))
            fp32 = onnx.load(a.fp32)
            names = {i.name for i in fp32.graph.initializer} | {i.name for i in fp32.graph.input}
            names |= {o for n in fp32.graph.node for o in n.output}
            listed = []
            for key in ("activation_encodings", "param_encodings"):
                v = enc[key]
                listed += [e["name"] for e in v] if isinstance(v, list) else list(v)
            unknown = [t for t in listed if t not in names]
            print(f"encodings {enc['version']}: {len(listed)} tensors, {len(unknown)} not in the FP32 model")
            if unknown:
                failures.append(f"encodings name tensors the FP32 model lacks: {unknown[:5]}")
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
