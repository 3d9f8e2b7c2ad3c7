"""Paired top-1 comparison of two rows of the held-out evaluation, from its cached logits.

    source scripts/eval/env.sh   # sets EVAL_PY
    $EVAL_PY scripts/eval/analysis/paired_top1.py mobilenet_v2 heldout ort_pt \
        "onnx-cle default" "+ rounding + bias correction"

Reads what scripts/eval_heldout.sh cached in $CARGO_TARGET_DIR/eval-runs (run it first for both
rows): the original FP32 model's logits and each row's logits of one column (`fp32`, `pt.weights`,
`pt.w8a8`, `ort_pt`, `qdq`). Prints each row's top-1 agreement with the original, the images where
exactly one of the two agrees (the discordant pairs) and the exact two-sided McNemar p-value: the
chance of a split at least this uneven if both rows agreed equally often.
"""
import glob, math, os, sys
import numpy as np

stem, split, column, a, b = sys.argv[1:6]
work = os.environ.get("ONNX_CLE_EVAL_WORK", os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/onnx-cle-target")), "eval-runs"))
folder = lambda label: os.path.join(work, stem, "".join(c if c.isalnum() else "_" for c in label))
(ref_path,) = glob.glob(os.path.join(work, stem, f"reference.*.{split}.npy"))
ref = np.load(ref_path).argmax(1)


def hits(label):
    paths = sorted(glob.glob(os.path.join(folder(label), f"*.{split}.{column}.npy")), key=os.path.getmtime)
    if not paths:
        sys.exit(f"no cached `{column}` logits for `{label}` ({split}): run scripts/eval_heldout.sh first")
    return np.load(paths[-1]).argmax(1) == ref


ha, hb = hits(a), hits(b)
only_a, only_b = int((ha & ~hb).sum()), int((hb & ~ha).sum())
n, k = only_a + only_b, min(only_a, only_b)
p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
print(f"{stem} {split} {column}, {len(ref)} images: `{a}` top-1 {ha.mean():.3f}, `{b}` top-1 {hb.mean():.3f}; "
      f"agrees only in `{a}`: {only_a}, only in `{b}`: {only_b}; exact McNemar p = {p:.3f}")
