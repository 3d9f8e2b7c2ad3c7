#!/usr/bin/env python3
"""Builds the text-line-shaped inputs of the int8 evaluation's ppocr_v4_rec rows from the same
source photos and split as build_set.py (scripts/eval/photos.tsv).

Usage: build_strips.py --photos DIR --out DIR [--strips N] [--calib N]

For every source photo `--strips` horizontal bands (width 50-100 % of the photo's,
aspect 320/48 times a factor in [3/4, 4/3], at a random position; shortened to the photo's height
when taller), resized to 320 x 48 with PIL's antialiased bilinear filter, seeded by the photo's
name, so the set is identical on every machine. `--calib` bands of the tune photos form the
calibration set, spread over them as build_set.py spreads its crops. Channels in BGR order and
pixels scaled to [-1, 1] (`x / 127.5 - 1`), as RapidOCR feeds PP-OCRv4's recognizer.

Writes tune_ppocr.npy, heldout_ppocr.npy and calib_ppocr.npy (float32 [N, 3, 48, 320]) and manifest.tsv (index,
set, source photo, file, band box).
"""
import argparse
import os
import sys
import zlib

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_set import load, read_sources, to_rgb  # noqa: E402

W, H = 320, 48
HERE = os.path.dirname(os.path.abspath(__file__))


def band(rng, w, h):
    bw = int(round(w * rng.uniform(0.5, 1.0)))
    ratio = (W / H) * np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    bh = max(1, min(h, int(round(bw / ratio))))
    x = int(rng.integers(0, w - bw + 1))
    y = int(rng.integers(0, h - bh + 1))
    return x, y, bw, bh


def strips(src, images, kind, count):
    out = []
    for k in range(count):
        rng = np.random.default_rng(zlib.crc32(f"{src['source']}/strip-{kind}/{k}".encode()))
        name, img = images[int(rng.integers(0, len(images)))]
        x, y, bw, bh = band(rng, *img.size)
        s = img.resize((W, H), Image.BILINEAR, box=(x, y, x + bw, y + bh))
        out.append((np.asarray(s, np.uint8), (src["source"], name, f"{x},{y},{bw},{bh}")))
    return out


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--strips", type=int, default=20)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--sources", default=os.path.join(HERE, "photos.tsv"))
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    sources = read_sources(a.sources)
    n_tune = sum(1 for s in sources if s["split"] == "tune")
    sets = {"tune": [], "heldout": [], "calib": []}
    tune_seen = 0
    for src in sources:
        images = [(os.path.basename(rel), to_rgb(load(a.photos, rel)[0], src["mode"]))
                  for rel in src["files"]]
        sets[src["split"]] += strips(src, images, "eval", a.strips)
        if src["split"] == "tune":
            count = a.calib // n_tune + (1 if tune_seen < a.calib % n_tune else 0)
            sets["calib"] += strips(src, images, "calib", count)
            tune_seen += 1
    lines = ["index\tset\tsource\tfile\tbox_x_y_w_h"]
    for name, items in sets.items():
        u8 = np.stack([s for s, _ in items])[..., ::-1]  # RGB -> BGR
        x = u8.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - np.float32(1)
        np.save(os.path.join(a.out, f"{name}_ppocr.npy"), np.ascontiguousarray(x))
        lines += [f"{k}\t{name}\t{s}\t{f}\t{b}" for k, (_, (s, f, b)) in enumerate(items)]
    with open(os.path.join(a.out, "manifest.tsv"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    counts = ", ".join(f"{k} {len(v)}" for k, v in sets.items())
    print(f"build_strips: {counts} strips in {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
