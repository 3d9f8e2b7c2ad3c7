"""The default output with its exact ReLU6 written the old way, `Relu → Min(x, B)`, against the
current `Clip(x, 0, max B) → Min(x, B)`, both through onnxruntime's `quantize_static` (W8A8).

    source scripts/eval/env.sh   # sets EVAL_DATA and EVAL_PY
    $EVAL_PY scripts/eval/analysis/relu_form.py mobilenet_v2 heldout

Needs the `onnx-cle default` row of scripts/eval_heldout.sh for that split (its model and its
cached onnxruntime logits in $CARGO_TARGET_DIR/eval-runs). Turns every Clip whose only consumer
is a Min back into a Relu (the same function), quantizes it with the evaluation's own
`quantize_static` settings and calibration crops, and prints both forms' SQNR and top-1 against
the original FP32 model, with the images where only one of them agrees.
"""
import glob, os, sys, tempfile
import numpy as np
import onnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import evaluate as E  # noqa: E402

stem, split = sys.argv[1:3]
prep = {"efficientnet_lite0": "efficientnet", "mobilenet_v2": "imagenet"}[stem]
data = os.environ["EVAL_DATA"]
work = os.environ.get("ONNX_CLE_EVAL_WORK", os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/onnx-cle-target")), "eval-runs"))
row = os.path.join(work, stem, "onnx_cle_default")
m = onnx.load(os.path.join(row, "model.onnx"))
consumers = {}
for n in m.graph.node:
    for i in n.input:
        consumers.setdefault(i, []).append(n)
changed = 0
for n in m.graph.node:
    c = consumers.get(n.output[0], [])
    if n.op_type == "Clip" and len(c) == 1 and c[0].op_type == "Min":
        n.op_type = "Relu"
        del n.input[1:]
        changed += 1
tmp = tempfile.mkdtemp(prefix="onnx-cle-relu-form-")
old = os.path.join(tmp, "relu_form.onnx")
onnx.save(m, old)
x = np.load(os.path.join(data, f"{split}_{prep}.npy"))
calib = np.load(os.path.join(data, f"calib_{prep}.npy"))
(ref_path,) = glob.glob(os.path.join(work, stem, f"reference.*.{split}.npy"))
ref = np.load(ref_path)
E.ort_int8(old, old + ".q.onnx", calib, False)
q_old = E.ort_logits(old + ".q.onnx", x, 2)
paths = sorted(glob.glob(os.path.join(row, f"*.{split}.ort_pt.npy")), key=os.path.getmtime)
q_new = np.load(paths[-1])
a, b = ref.argmax(1) == q_old.argmax(1), ref.argmax(1) == q_new.argmax(1)
print(f"{stem} {split}, {len(x)} images, {changed} clips: Relu → Min {E.sqnr(ref, q_old):.2f} dB top-1 "
      f"{a.mean():.3f}; Clip → Min {E.sqnr(ref, q_new):.2f} dB top-1 {b.mean():.3f}; agrees only with "
      f"Relu → Min: {int((a & ~b).sum())}, only with Clip → Min: {int((b & ~a).sum())}")
