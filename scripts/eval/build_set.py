#!/usr/bin/env python3
"""Builds the evaluation images from the natural photos that pinned PyPI packages ship.

Usage: build_set.py --photos DIR --out DIR [--crops N] [--calib N]

  --photos DIR   where the photo packages are installed (pip --target; see scripts/eval/env.sh)
  --out DIR      output folder (the caller picks a cache folder named after the inputs' hash)

Reads scripts/eval/photos.tsv (source photo -> split, package, file). For every source photo it
draws `--crops` random-resized crops (area 20-100 % of the photo, aspect 3/4-4/3, resized to
224 x 224 with PIL's antialiased bilinear filter, horizontally flipped with probability 1/2),
seeded by the photo's name, so the set is identical on every machine. Grayscale photos become
3-channel gray. `--calib` extra crops of the `tune` photos form the calibration set (never
evaluated, never from a held-out photo): spread over the tune photos in photos.tsv order, each
gets `N // photos` crops and the first `N % photos` one more (32 over 15 photos: 2 each, 3 for
the first two).

Writes, per set S in {tune, heldout, calib}:
  S_u8.npy            uint8   [N, 224, 224, 3]
  S_efficientnet.npy  float32 [N, 3, 224, 224]  x / 127.5 - 1 (EfficientNet-Lite, as ../shared/data)
  S_imagenet.npy      float32 [N, 3, 224, 224]  (x / 255 - mean) / std, torchvision's ImageNet
                                                 mean/std (as ../shared/data)
and manifest.tsv (index, set, source photo, file, crop box, flip, file sha256).

What counts as a natural photo: a camera photograph of a real scene or object, short side
>= 224 px. Left out (found in the same packages):
  - microscopy / medical: skimage cell, ihc, retina, microaneurysms; mahotas nuclear.png
  - synthetic or drawn: skimage chessboard, color, horse, logo, phantom; matplotlib logo2,
    Minduka_Present_Blue_Pack (a rendering); mahotas DepartmentStore (a drawing); kivy Bubbles,
    Ill1 (artwork), rose.png, tex3.jpg (a shader texture); gradio groot.jpeg (CGI film still),
    cheetah2.jpg (a cut-out on a checkerboard), logos; pygame arraydemo, fist, docs screenshots
  - too small (short side < 224): skimage page (191), text (172), lfw_subset (25 x 25);
    insightface Tom_Hanks_54745 (112), mask_green (107); gradio bus.png
  - product cut-outs on white, near-duplicates of each other: insightface mask_*.jpg
  - duplicates of a kept photo: pywt camera (= skimage camera), scipy ascent (= pywt ascent),
    yolov5 bus/zidane (= ultralytics'), kivy showcase faust_github, gradio cheetah1-copy
  - mahotas lena.jpg: withdrawn by its own community (consent), not used
"""
import argparse
import bz2
import hashlib
import os
import sys
import zlib

import numpy as np
from PIL import Image

SIZE = 224
AREA = (0.20, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
HERE = os.path.dirname(os.path.abspath(__file__))


def read_sources(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            source, split, category, mode, package, files = line.split("\t")
            assert split in ("tune", "heldout"), line
            assert mode in ("rgb", "gray"), line
            rows.append(dict(source=source, split=split, category=category, mode=mode,
                             package=package, files=files.split(",")))
    return rows


def load(photos, rel):
    path = os.path.join(photos, rel)
    raw = open(path, "rb").read()
    digest = hashlib.sha256(raw).hexdigest()
    if rel.endswith("scipy/misc/face.dat"):
        a = np.frombuffer(bz2.decompress(raw), np.uint8).reshape(768, 1024, 3)
        return Image.fromarray(a), digest
    if rel.endswith(".npz"):
        with np.load(path) as d:
            a = d[d.files[0]]
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)), digest
    return Image.open(path), digest


def to_rgb(img, mode):
    if mode == "gray":
        g = img.convert("L")
        return Image.merge("RGB", (g, g, g))
    return img.convert("RGB")


def crop_box(rng, w, h):
    """torchvision RandomResizedCrop's box rule (10 tries, then the largest centred box)."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*AREA)
        ratio = np.exp(rng.uniform(np.log(RATIO[0]), np.log(RATIO[1])))
        cw = int(round(np.sqrt(target * ratio)))
        ch = int(round(np.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x = int(rng.integers(0, w - cw + 1))
            y = int(rng.integers(0, h - ch + 1))
            return x, y, cw, ch
    s = min(w, h)
    return (w - s) // 2, (h - s) // 2, s, s


def crops(src, images, kind, count):
    out = []
    for k in range(count):
        rng = np.random.default_rng(zlib.crc32(f"{src['source']}/{kind}/{k}".encode()))
        f = int(rng.integers(0, len(images)))
        name, img, digest = images[f]
        x, y, cw, ch = crop_box(rng, *img.size)
        flip = bool(rng.integers(0, 2))
        c = img.resize((SIZE, SIZE), Image.BILINEAR, box=(x, y, x + cw, y + ch))
        if flip:
            c = c.transpose(Image.FLIP_LEFT_RIGHT)
        out.append((np.asarray(c, np.uint8), dict(source=src["source"], file=name,
                                                   box=f"{x},{y},{cw},{ch}", flip=int(flip),
                                                   sha256=digest)))
    return out


def save(out, name, items):
    u8 = np.stack([a for a, _ in items])
    x = u8.transpose(0, 3, 1, 2).astype(np.float32)
    np.save(os.path.join(out, f"{name}_u8.npy"), u8)
    np.save(os.path.join(out, f"{name}_efficientnet.npy"), x / np.float32(127.5) - np.float32(1))
    np.save(os.path.join(out, f"{name}_imagenet.npy"), (x / np.float32(255) - MEAN) / STD)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--crops", type=int, default=20)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--sources", default=os.path.join(HERE, "photos.tsv"))
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    sets = {"tune": [], "heldout": [], "calib": []}
    sources = read_sources(a.sources)
    n_tune = sum(1 for src in sources if src["split"] == "tune")
    tune_seen = 0
    for src in sources:
        images = []
        for rel in src["files"]:
            img, digest = load(a.photos, rel)
            img = to_rgb(img, src["mode"])
            if min(img.size) < SIZE:
                sys.exit(f"build_set: {rel} is {img.size}, smaller than {SIZE}")
            images.append((os.path.basename(rel), img, digest))
        sets[src["split"]] += crops(src, images, "eval", a.crops)
        if src["split"] == "tune":
            count = a.calib // n_tune + (1 if tune_seen < a.calib % n_tune else 0)
            sets["calib"] += crops(src, images, "calib", count)
            tune_seen += 1
    lines = ["index\tset\tsource\tfile\tbox_x_y_w_h\tflip\tsha256"]
    for name, items in sets.items():
        save(a.out, name, items)
        for k, (_, m) in enumerate(items):
            lines.append(f"{k}\t{name}\t{m['source']}\t{m['file']}\t{m['box']}\t{m['flip']}\t{m['sha256']}")
    with open(os.path.join(a.out, "manifest.tsv"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    counts = ", ".join(f"{k} {len(v)}" for k, v in sets.items())
    print(f"build_set: {counts} images in {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
