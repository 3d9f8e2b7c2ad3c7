"""See probe.py's docstring: the first depthwise conv's alone-SQNR under +-1 % channel rescaling."""
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe import D, PREP, M, WORK, cli, layer_weights, qdq, run, sq  # noqa: E402

stem = 'efficientnet_lite0'
x = np.load(f'{D}/tune_{PREP[stem]}.npy', mmap_mode='r')
x = np.ascontiguousarray(x[np.linspace(0, len(x) - 1, 40).astype(int)])
ref = run(f'{M}/{stem}.onnx', x)
L = '/_blocks.0/_depthwise_conv/Conv'
m = cli(stem, [], os.path.join(WORK, 'default.onnx'))
init = {t.name: t for t in m.graph.initializer}
wname = dict(layer_weights(m))[L]
w = numpy_helper.to_array(init[wname]).copy()
rng = np.random.default_rng(0)
out = []
for trial in range(8):
    e = 1 + (rng.uniform(-1, 1, w.shape[0]) * 0.01 if trial else np.zeros(w.shape[0]))
    wq = qdq(w * e[:, None, None, None]) / e[:, None, None, None]
    init[wname].CopyFrom(numpy_helper.from_array(wq.astype(np.float32), wname))
    out.append(sq(ref, run(m, x)))
print(f'{L} alone, converged CLS, 40 tuning images: unjittered {out[0]:.2f} dB; '
      f'+-1 % channel rescalings: {np.round(out[1:], 2).tolist()}')
