#!/usr/bin/env python3
"""The held-out evaluation: int8 fidelity of every variant row, against the original FP32 model.

Run through scripts/eval_heldout.sh (it makes the venv, the image set and the binaries); see its
header for the interface. This file does the measuring:

- reference: the original FP32 model's logits (onnxruntime, CPU) on the split's images;
- per variant (scripts/eval/variants.tsv): the model (made by the onnx-cle release CLI, or a file),
  its FP32 logits (onnxruntime), onnx-cle's own simulation (examples/eval_sim.rs on
  onnx_cle::quant::sim, tract: weights-only int8, and W8A8 with uint8 activations min/max
  calibrated on the calibration images), and onnxruntime's real int8 kernels
  (onnxruntime.quantization.quantize_static: QDQ, int8 weights, uint8 activations, MinMax on the
  calibration images; default session options);
- figures per column: aggregate logits SQNR over all images, per-image SQNR median and 10th
  percentile, top-1 agreement; and the worst source photo's per-image median.
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

MODELS = {
    "efficientnet_lite0": ("EfficientNet-Lite0", "efficientnet"),
    "mobilenet_v2": ("MobileNetV2", "imagenet"),
}


def log(msg):
    print(f"eval: {msg}", file=sys.stderr, flush=True)


def read_variants(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) < 4:
                sys.exit(f"{path}:{n}: expected label, source, args, kind[, file]")
            label, source, args, kind = cols[:4]
            file = cols[4] if len(cols) > 4 and cols[4] else None
            if source not in ("cli", "file") or kind not in ("fp32", "per_channel", "qdq"):
                sys.exit(f"{path}:{n}: source must be cli|file, kind fp32|per_channel|qdq")
            rows.append(dict(label=label, source=source, args=args, kind=kind, file=file))
    labels = [r["label"] for r in rows]
    if len(set(labels)) != len(labels):
        sys.exit(f"{path}: duplicate labels")
    return rows


def sqnr(ref, x):
    ref = ref.astype(np.float64)
    noise = np.sum((ref - x.astype(np.float64)) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(ref**2) / noise))


def figures(ref, out, sources):
    """Aggregate SQNR, per-image median and p10, top-1 agreement, worst photo (name, median)."""
    per = np.array([sqnr(r, o) for r, o in zip(ref, out)])
    per = np.minimum(per, 300.0)
    photos = {}
    for s, v in zip(sources, per):
        photos.setdefault(s, []).append(v)
    medians = {s: float(np.median(v)) for s, v in photos.items()}
    worst = min(medians, key=medians.get)
    return dict(
        aggregate=sqnr(ref, out),
        median=float(np.median(per)),
        p10=float(np.percentile(per, 10)),
        top1=float(np.mean(ref.argmax(1) == out.argmax(1))),
        worst_photo=worst,
        worst_photo_median=medians[worst],
        photo_medians=medians,
    )


def ort_session(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_logits(path, x, threads, batch=16):
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def ort_int8(src, dst, calib, per_channel):
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's "consider pre-processing"
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            import onnx

            m = onnx.load(src, load_external_data=False)
            init = {t.name for t in m.graph.initializer}
            self.name = [i.name for i in m.graph.input if i.name not in init][0]
            self.it = iter(calib[i:i + 1] for i in range(len(calib)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {self.name: x}

    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=per_channel, calibrate_method=CalibrationMethod.MinMax)


def fill(template, ctx):
    out = template
    for k, v in ctx.items():
        out = out.replace("{" + k + "}", v)
    return out


def file_hash(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def cached(path, make):
    if os.path.exists(path):
        return np.load(path)
    a = make()
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    np.save(tmp, a)
    os.replace(tmp, path)
    return a


def evaluate_variant(v, stem, ctx, x, calib_path, ref, sources, a, work):
    vdir = os.path.join(work, stem, "".join(c if c.isalnum() else "_" for c in v["label"]))
    os.makedirs(vdir, exist_ok=True)
    ctx = dict(ctx, dir=vdir)
    t0 = time.time()
    if v["source"] == "cli":
        model = os.path.join(vdir, "model.onnx")
        cmd = [a.bin, "equalize", os.path.join(a.models, f"{stem}.onnx"), "-o", model,
               "--no-verify", "--quiet"] + shlex.split(fill(v["args"], ctx))
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            return dict(error=f"`{shlex.join(cmd)}` exited {r.returncode}: {r.stderr.strip()}")
        if v["file"]:
            model = fill(v["file"], ctx)
    else:
        model = fill(v["args"], ctx)
        if not os.path.exists(model):
            return dict(error=f"{model} not found")
    key = os.path.join(vdir, f"{file_hash(model)}.{a.split}")
    res = dict(model=model, seconds_cli=round(time.time() - t0, 3))
    if v["kind"] == "qdq":
        out = cached(key + ".qdq.npy", lambda: ort_logits(model, x, a.threads))
        res["w8a8_ort"] = figures(ref, out, sources)
        return res
    fp32 = cached(key + ".fp32.npy", lambda: ort_logits(model, x, a.threads))
    res["fp32"] = sqnr(ref, fp32)
    per_channel = v["kind"] == "per_channel"
    prefix = key + (".pc" if per_channel else ".pt")
    if not (os.path.exists(prefix + ".weights.npy") and os.path.exists(prefix + ".w8a8.npy")):
        cmd = [a.sim, model, ctx["inputs"], calib_path, prefix] + (["--per-channel"] if per_channel else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            return dict(res, error=f"eval_sim exited {r.returncode}: {r.stderr.strip()}")
    res["weights_sim"] = figures(ref, np.load(prefix + ".weights.npy"), sources)
    res["w8a8_sim"] = figures(ref, np.load(prefix + ".w8a8.npy"), sources)

    def int8():
        q = key + (".ort_pc.onnx" if per_channel else ".ort_pt.onnx")
        ort_int8(model, q, np.load(calib_path), per_channel)
        return ort_logits(q, x, a.threads)

    res["w8a8_ort"] = figures(ref, cached(key + (".ort_pc.npy" if per_channel else ".ort_pt.npy"), int8),
                              sources)
    return res


def cell(f):
    if not f:
        return "—"
    return f"{f['aggregate']:.1f} / {f['median']:.1f} / {f['p10']:.1f} / {f['top1']:.2f}"


def fp32_cell(v):
    if v is None:
        return "—"
    return "exact" if v == float("inf") else f"{v:.1f}"


def worst_cell(r):
    parts = []
    for k in ("weights_sim", "w8a8_ort"):
        f = r.get(k)
        parts.append(f"{f['worst_photo_median']:.1f} ({f['worst_photo']})" if f else "—")
    return " / ".join(parts)


def table(title, n_images, n_photos, split, rows):
    lines = [f"#### {title} — {split} split, {n_images} images of {n_photos} photos, against the original FP32 model",
             "",
             "Each int8 cell: aggregate logits SQNR dB / per-image median / per-image 10th percentile / top-1 agreement.",
             "",
             "| variant | FP32 SQNR dB | int8 weights (per-tensor, sim) | W8A8 sim | W8A8 onnxruntime int8 | worst photo median dB (weights / W8A8 ORT) |",
             "|---|---|---|---|---|---|"]
    for label, r in rows:
        if "error" in r:
            lines.append(f"| {label} | error: {r['error'][:200]} | | | | |")
            continue
        lines.append(f"| {label} | {fp32_cell(r.get('fp32'))} | {cell(r.get('weights_sim'))} | "
                     f"{cell(r.get('w8a8_sim'))} | {cell(r.get('w8a8_ort'))} | {worst_cell(r)} |")
    return "\n".join(lines)


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", choices=["heldout", "tune"], default="heldout")
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--sim", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--variants", required=True)
    ap.add_argument("--model", action="append", choices=list(MODELS))
    ap.add_argument("--only", action="append")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    variants = read_variants(a.variants)
    if a.only:
        missing = set(a.only) - {v["label"] for v in variants}
        if missing:
            sys.exit(f"unknown --only label(s): {sorted(missing)}")
        variants = [v for v in variants if v["label"] in a.only]
    manifest = [l.rstrip("\n").split("\t") for l in open(os.path.join(a.data, "manifest.tsv"))][1:]
    sources = [m[2] for m in manifest if m[1] == a.split]
    n_photos = len(set(sources))
    results = {}
    for stem in a.model or list(MODELS):
        title, prep = MODELS[stem]
        inputs = os.path.join(a.data, f"{a.split}_{prep}.npy")
        calib = os.path.join(a.data, f"calib_{prep}.npy")
        x = np.load(inputs)
        os.makedirs(os.path.join(a.work, stem), exist_ok=True)
        original = os.path.join(a.models, f"{stem}.onnx")
        ref = cached(os.path.join(a.work, stem, f"reference.{file_hash(original)}.{a.split}.npy"),
                     lambda: ort_logits(original, x, a.threads))
        ctx = dict(models=a.models, stem=stem, calib=calib, inputs=inputs)
        rows = []
        for v in variants:
            t = time.time()
            r = evaluate_variant(v, stem, ctx, x, calib, ref, sources, a, a.work)
            log(f"{stem} / {v['label']}: {time.time() - t:.0f} s" + (f" ({r['error']})" if "error" in r else ""))
            rows.append((v["label"], r))
        results[stem] = {label: r for label, r in rows}
        print(table(title, len(x), n_photos, a.split, rows), flush=True)
        print()
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(dict(split=a.split, data=a.data, results=results), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
