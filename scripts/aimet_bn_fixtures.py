"""Builds the two small BN-fold models of AIMET's own BN-fold tests that ../shared/models lacks,
and what aimet_onnx 2.42.0 makes of them (`fold_all_batch_norms_to_weight`):

- bn_linear: BatchNorm1d(10) -> Linear(10, 20, bias=False), input 32x10, exported without
  constant folding, so the weight reaches the MatMul through Transpose(initializer);
- bn_flatten_gemm: Conv(4->8, 3x3, pad 1, stride 2) -> Relu -> BatchNorm2d(8) -> Flatten ->
  Linear(128, 6), input 2x4x8x8 (AIMET's BNBeforeFlattenLinear, smaller).

Exported like ../shared/models (legacy TorchScript exporter, opset 13, training=PRESERVE so the
BatchNorms stay, random BN statistics, seed 1). Writes NAME.onnx and NAME.aimet_bnfold.onnx to
the folder given (default tests/fixtures/aimet).

Run in a throwaway venv with aimet-onnx==2.42.0 (PyPI; it brings torch):
    python3 -m venv ~/.cache/onnx-cle-venvs/aimet
    ~/.cache/onnx-cle-venvs/aimet/bin/pip install aimet-onnx==2.42.0
    ~/.cache/onnx-cle-venvs/aimet/bin/python scripts/aimet_bn_fixtures.py
"""

import copy
import io
import sys
from pathlib import Path

import onnx
import torch
from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight


def randomize_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) * 1.8 + 0.2)
                m.bias.copy_(torch.rand(c, generator=g) * 2 - 1)
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)


class BnLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(10)
        self.fc = torch.nn.Linear(10, 20, bias=False)

    def forward(self, x):
        return self.fc(self.bn(x))


class BnFlattenGemm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1, stride=2)
        self.relu = torch.nn.ReLU()
        self.bn = torch.nn.BatchNorm2d(8)
        self.flatten = torch.nn.Flatten()
        self.fc = torch.nn.Linear(8 * 4 * 4, 6)

    def forward(self, x):
        return self.fc(self.flatten(self.bn(self.relu(self.conv(x)))))


def export(make, shape):
    torch.manual_seed(1)
    model = make()
    for p in model.parameters():
        if p.dim() > 1:
            torch.nn.init.uniform_(p, -0.5, 0.5)
    randomize_bn(model)
    model.eval()
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        torch.randn(*shape),
        buf,
        opset_version=13,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
        input_names=["input"],
        output_names=["output"],
        dynamo=False,
    )
    return onnx.load_from_string(buf.getvalue())


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/aimet")
    out.mkdir(parents=True, exist_ok=True)
    for name, make, shape in [
        ("bn_linear", BnLinear, (32, 10)),
        ("bn_flatten_gemm", BnFlattenGemm, (2, 4, 8, 8)),
    ]:
        m = export(make, shape)
        onnx.save(m, out / f"{name}.onnx")
        folded = copy.deepcopy(m)
        conv_bns, bn_convs = fold_all_batch_norms_to_weight(folded)
        print(name, "backward folds", len(conv_bns), "forward folds", len(bn_convs))
        print("  ops", [n.op_type for n in m.graph.node], "->", [n.op_type for n in folded.graph.node])
        onnx.save(folded, out / f"{name}.aimet_bnfold.onnx")


if __name__ == "__main__":
    main()
