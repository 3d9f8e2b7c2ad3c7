"""Peer and fixture helpers for scripts/bench.sh (run in its throwaway venv).

  bench_peer.py export OUT.onnx          torchvision ResNet-50 (random init, BN statistics
                                         randomized), BN kept in the
                                         graph (TrainingMode.PRESERVE, legacy exporter,
                                         opset 13, dynamic batch), as ../shared/models were
  bench_peer.py aimet IN.onnx OUT.onnx   aimet_onnx: onnx.load + equalize_model + onnx.save,
                                         timed in this process (imports excluded); prints
                                         `aimet_s <seconds>`
"""
import sys
import time


def export(out):
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    # BN statistics randomized as in ../shared/models (with torchvision's init every BN holds
    # the same buffers, which the exporter deduplicates into Identity nodes).
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.2, 2.0)
                m.bias.uniform_(-1.0, 1.0)
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(
        model,
        (x,),
        out,
        opset_version=13,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        dynamo=False,
    )


def aimet(src, dst):
    import onnx
    from aimet_onnx.cross_layer_equalization import equalize_model

    t = time.perf_counter()
    model = onnx.load(src)
    equalize_model(model)
    onnx.save(model, dst)
    print(f"aimet_s {time.perf_counter() - t:.3f}")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"export": export, "aimet": aimet}[cmd](*args)
