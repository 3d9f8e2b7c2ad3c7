"""Exports torchvision models with both PyTorch exporters and prints what onnx-cle covers.

For each model (random weights; torchvision builds them without downloading anything) two
files are written: the legacy TorchScript exporter without constant folding
(`torch.onnx.export(..., dynamo=False, do_constant_folding=False)`, BatchNorm kept with
`TrainingMode.PRESERVE`) and the default exporter. Each file goes through
`onnx-cle equalize --no-verify` (and, with --before BIN, through an older binary too), and one
line per file reports: BN folded, CLS sets, layers in CLS sets of all weight-bearing layers,
weight chains folded, shared tensors copied, and the coverage summary.

Usage: python torchvision_coverage.py --bin ONNX_CLE [--before OLD_BIN] [--out DIR] [MODEL...]
(run through scripts/torchvision_coverage.sh, which makes the venv). Files already in --out are
reused.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_MODELS = [
    "vgg11_bn",
    "resnet18",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "squeezenet1_1",
    "efficientnet_b0",
    "shufflenet_v2_x0_5",
    "regnet_y_400mf",
    "convnext_tiny",
    "deeplabv3_mobilenet_v3_large",
]


def build(name):
    import torch
    import torchvision

    torch.manual_seed(0)
    extra = {"weights_backbone": None} if name.startswith(("deeplab", "fcn", "lraspp")) else {}
    m = torchvision.models.get_model(name, weights=None, **extra)
    m.eval()
    # Non-trivial BN statistics, so that folds are visible in the numbers.
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            c = mod.num_features
            mod.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
            mod.running_var.copy_(torch.rand(c, generator=g) * 1.8 + 0.2)
    return m


def export(name, out_dir):
    import torch

    legacy = out_dir / f"{name}.legacy.onnx"
    default = out_dir / f"{name}.default.onnx"
    if legacy.is_file() and default.is_file():
        return [("legacy", legacy), ("default", default)]
    m = build(name)
    x = torch.randn(1, 3, 224, 224)
    files = []
    try:
        torch.onnx.export(
            m,
            (x,),
            str(legacy),
            dynamo=False,
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.PRESERVE,
            opset_version=13,
            input_names=["x"],
        )
        files.append(("legacy", legacy))
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"{name:<30} legacy   export failed: {type(e).__name__}: {e}".splitlines()[0])
    try:
        torch.onnx.export(m, (x,), str(default), input_names=["x"])
        files.append(("default", default))
    except Exception as e:  # noqa: BLE001
        print(f"{name:<30} default  export failed: {type(e).__name__}: {e}".splitlines()[0])
    return files


def run(binary, path):
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.json"
        p = subprocess.run(
            [binary, "equalize", str(path), "-o", str(Path(tmp) / "m.onnx"),
             "--report", str(report), "--no-verify", "--quiet"],
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            return None, p.stderr.strip().splitlines()[-1] if p.stderr else f"exit {p.returncode}"
        return json.loads(report.read_text()), None


def figures(r):
    scaled = {l for s in r["cls_sets"] for l in s["layers"]}
    cov = r.get("coverage")
    total = cov["total"]["layers"] if cov else None
    return {
        "bn": len(r["bn_folds"]),
        "sets": len(r["cls_sets"]),
        "scaled": len(scaled),
        "total": total,
        "folds": len(r.get("const_folds", [])),
        "copies": len(r.get("tensor_copies", [])),
        "summary": cov["summary"] if cov else "",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--before")
    ap.add_argument("--out")
    ap.add_argument("models", nargs="*")
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="tv-onnx-"))
    out.mkdir(parents=True, exist_ok=True)
    for name in a.models or DEFAULT_MODELS:
        for exporter, path in export(name, out):
            after, err = run(a.bin, path)
            if after is None:
                print(f"{name:<30} {exporter:<8} onnx-cle failed: {err}")
                continue
            f = figures(after)
            line = (
                f"{name:<30} {exporter:<8} BN folded {f['bn']:>3}, CLS sets {f['sets']:>3}, "
                f"layers scaled {f['scaled']:>3} of {f['total']:>3}, chains folded {f['folds']:>3}, "
                f"copies {f['copies']:>2}"
            )
            if a.before:
                before, err = run(a.before, path)
                if before is None:
                    line += f" | before: failed ({err})"
                else:
                    b = figures(before)
                    line += (
                        f" | before: BN folded {b['bn']:>3}, CLS sets {b['sets']:>3}, "
                        f"layers scaled {b['scaled']:>3}"
                    )
            print(line)
            print(f"{'':<39} coverage: {f['summary']}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
