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
  within the tolerance; the same model with QuantizeLinear/DequantizeLinear run as float ops
  (the exact QDQ semantics) is printed beside it;
- which kernels ran: the CPU's flags are printed. On x86-64 without VNNI, onnxruntime's u8×s8
  kernels add neighbouring products in a saturating int16; a target that accumulates in int32
  (TensorRT, QNN: the report's target has no "int16 pairs") is then checked as float ops, its
  runtime's arithmetic, and says so. With --non-vnni-python (a command that runs Python as on an
  AVX2 CPU without VNNI, e.g. under QEMU) the QDQ model of an int16-pairs target also runs there
  and must agree within the tolerance: the kernels of both kinds of CPU are checked on any
  machine;
- the overrides go through onnxruntime's own quantize_static (QDQ, one calibration sample,
  every range pinned by TensorQuantOverrides, the graph outputs' producers excluded from output
  quantization); the result runs in onnxruntime and must agree within the tolerance too;
- every tensor named in the encodings exists in FP32.onnx.
Prints one line per figure; exits non-zero on any failure.
"""
import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

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


def run(path, name, samples, optimized=None, float_ops=False):
    so = ort.SessionOptions()
    if optimized:
        so.optimized_model_filepath = optimized
    if float_ops:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    out = sess.get_outputs()[0].name
    return [sess.run([out], {name: s[None]})[0] for s in samples]


def latency_ms(path, name, sample, runs=30):
    """Median wall time (ms) of one inference in onnxruntime, one thread, after 3 warm-ups:
    informational (what the int8 kernels cost here), never a check."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {name: sample[None]}
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[len(times) // 2]


def cpu():
    """(description of the int8-relevant CPU flags, whether the u8×s8 kernels accumulate in
    int32). x86-64 without VNNI adds neighbouring products in a saturating int16."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return platform.machine(), True
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni") if f in flags]
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    return "x86_64 " + (" ".join(shown) or "(no avx2)"), vnni


def run_elsewhere(python, path, samples_path, tmp):
    """The model's outputs from onnxruntime run by the command `python` (e.g. under an
    emulator of a CPU without VNNI)."""
    out = os.path.join(tmp, "elsewhere.npy")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ort_outputs.py")
    subprocess.run(shlex.split(python) + [script, path, samples_path, out], check=True,
                   stderr=subprocess.DEVNULL)
    return list(np.load(out))


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
    ap.add_argument("--non-vnni-python")
    ap.add_argument("--mixed-precision", action="store_true",
                    help="the report lists activations kept on uint16: the QDQ model must carry "
                         "exactly those, and the overrides name them QUInt16")
    a = ap.parse_args()
    failures = []
    cpu_flags, int32_kernels = cpu()
    kernels_kind = ("accumulate in int32" if int32_kernels else
                    "add neighbouring u8×s8 products in a saturating int16 (no VNNI)")
    print(f"cpu: {cpu_flags}; onnxruntime {ort.__version__}: its int8 kernels here {kernels_kind}")
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
    target_pairs = "int16 pairs" in target
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
        def kernels_and_float_ops(label, path, key, optimized=None):
            got = sqnr(ref, run(path, name, samples, optimized=optimized))
            floats = sqnr(ref, run(path, name, samples, float_ops=True))
            print(f"{label}: as float QDQ ops (exact semantics) {floats:.2f} dB")
            if int32_kernels or target_pairs:
                compare(f"{label} (int8 kernels, {cpu_flags})", got, key)
            else:
                print(f"{label}: int8 kernels of this CPU {got:.2f} dB; the target ({target}) "
                      f"accumulates in int32, which the float ops compute")
                compare(f"{label} (float ops: the target's int32 arithmetic)", floats, key)
            if a.non_vnni_python:
                elsewhere = sqnr(ref, run_elsewhere(a.non_vnni_python, path, a.samples, tmp))
                label_e = f"{label} (int8 kernels of x86_64 avx2 without VNNI, emulated)"
                if target_pairs:
                    compare(label_e, elsewhere, key)
                else:
                    print(f"{label_e}: {elsewhere:.2f} dB (not the target's kernels: it "
                          f"accumulates in int32)")

        if a.qdq:
            opt = os.path.join(tmp, "qdq.optimized.onnx")
            run(a.qdq, name, samples[:1], optimized=opt)
            ops = [n.op_type for n in onnx.load(opt).graph.node]
            kernels = sorted({o for o in ops if o in INT8_KERNELS})
            why = [k.get("detail", "") for k in report.get("skipped", []) if "tract could not run" in k.get("detail", "")]
            by_tract = (f"tract ran it at {tract['qdq.onnx']:.2f} dB" if "qdq.onnx" in tract else
                        f"not run by tract ({why[0][:160] if why else 'no tract figure in the report'})")
            print(f"qdq.onnx in onnxruntime: {sum(o in INT8_KERNELS for o in ops)} int8 kernel nodes "
                  f"({', '.join(kernels)}); {by_tract}")
            if not kernels:
                failures.append("onnxruntime did not fuse the QDQ model into int8 kernels")
            print(f"qdq.onnx in onnxruntime: {latency_ms(a.qdq, name, samples[0]):.1f} ms per "
                  f"inference (one thread, median of 30; the FP32 model "
                  f"{latency_ms(a.fp32, name, samples[0]):.1f} ms)")
            kernels_and_float_ops("qdq.onnx", a.qdq, "qdq.onnx")
            if a.mixed_precision:
                qm = onnx.load(a.qdq)
                inits = {t.name: t for t in qm.graph.initializer}
                wide = sorted(n.input[0] for n in qm.graph.node if n.op_type == "QuantizeLinear"
                              and len(n.input) > 2 and n.input[2] in inits
                              and inits[n.input[2]].data_type == onnx.TensorProto.UINT16)
                listed = sorted(w["tensor"] for w in (ex.get("mixed_precision") or {}).get("wide", []))
                print(f"mixed precision: {len(wide)} uint16 quantizers in qdq.onnx, {len(listed)} listed "
                      f"in the report")
                if not wide or wide != listed:
                    failures.append(f"uint16 quantizers {wide[:5]} are not those the report lists {listed[:5]}")
                # The layers the report says run as float ops in onnxruntime are those its
                # optimizer left unfused (Conv / Gemm / MatMul outside the int8 kernels).
                layer_ops = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
                ops_by_name = {(n.name or n.output[0]): n.op_type for n in qm.graph.node}
                said = sorted(t for t in (ex.get("mixed_precision") or {}).get("outside_int8", [])
                              if ops_by_name.get(t) in layer_ops)
                left = sorted((n.name or n.output[0]) for n in onnx.load(opt).graph.node
                              if n.op_type in layer_ops)
                print(f"mixed precision: {len(left)} layers run as float ops in onnxruntime, "
                      f"{len(said)} listed in the report as outside the int8 kernels")
                if said != left:
                    failures.append(f"float layers in onnxruntime {left[:5]} are not those the report "
                                    f"lists {said[:5]}")
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
                    "UseQDQContribOps": act_type == QuantType.QUInt16 or a.mixed_precision,
                },
            )
            q = onnx.load(out)
            quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
            missing = sorted(t for t in quantized if t not in overrides)
            if a.mixed_precision:
                inits = {t.name: t for t in q.graph.initializer}
                wide16 = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"
                          and len(n.input) > 2 and n.input[2] in inits
                          and inits[n.input[2]].data_type == onnx.TensorProto.UINT16}
                listed = {w["tensor"] for w in (ex.get("mixed_precision") or {}).get("wide", [])}
                print(f"quantize_static + TensorQuantOverrides: {len(wide16)} activations on uint16")
                if not wide16 or not wide16 <= listed:
                    failures.append(f"overrides put {sorted(wide16)[:5]} on uint16, the report lists {sorted(listed)[:5]}")
            print(f"quantize_static + TensorQuantOverrides: {len(quantized)} quantized activations, "
                  f"{len(missing)} without an override{': ' + ', '.join(missing[:5]) if missing else ''}")
            kernels_and_float_ops("quantize_static + ort_overrides.json", out,
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
