"""How far a mixed-precision budget can lift a data-free QDQ model, chosen with hindsight.

    source scripts/eval/env.sh   # sets EVAL_DATA and EVAL_PY
    $EVAL_PY scripts/eval/analysis/mp_oracle.py efficientnet_lite0 20 [CLI ARGS...]

Makes the data-free per-tensor QDQ model with the release CLI (`--rounding squant
--bias-correction analytic --input-range=-1,1` plus CLI ARGS), then on N evenly spaced
tuning-split images (onnxruntime, float QDQ ops): the SQNR gain of keeping each activation
quantizer in float alone (float bounds what uint16 can give), and the SQNR with the best 1, 2,
3, ⌊5 %⌋ and ⌊10 %⌋ of them in float together, and with every activation in float (weights only).
The choice uses the very images it is scored on, so it is an upper bound for any data-free
selector at that budget. Tuning split only.
"""
import os
import sys

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe import D, M, WORK, cli, run, sq  # noqa: E402

stem, n, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
prep = 'efficientnet' if stem.startswith('efficientnet') else 'imagenet'
x = np.load(f'{D}/tune_{prep}.npy', mmap_mode='r')
x = np.ascontiguousarray(x[np.linspace(0, len(x) - 1, n).astype(int)])
ref = run(f'{M}/{stem}.onnx', x)
qdq_path = os.path.join(WORK, f'{stem}.qdq.onnx')
cli(stem, ['--rounding', 'squant', '--bias-correction', 'analytic', '--input-range=-1,1',
           '--qdq-output', qdq_path] + extra, os.path.join(WORK, f'{stem}.eq.onnx'))
m = onnx.load(qdq_path)
inits = {t.name for t in m.graph.initializer}
dq_out = {nd.input[0]: nd.output[0] for nd in m.graph.node if nd.op_type == 'DequantizeLinear'}
acts = [nd for nd in m.graph.node if nd.op_type == 'QuantizeLinear' and nd.input[0] not in inits]
outputs = {o.name for o in m.graph.output}


def floated(tensors):
    """The model with the activation quantizers of `tensors` bypassed (their consumers read
    the float tensor; chains of bypassed quantizers resolve to the first float tensor)."""
    ren = {dq_out[q.output[0]]: q.input[0] for q in acts if q.input[0] in tensors}

    def resolve(v):
        while v in ren:
            v = ren[v]
        return v
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    for nd in m2.graph.node:
        if nd.op_type == 'QuantizeLinear' and nd.input[0] in tensors:
            continue
        for i, v in enumerate(nd.input):
            nd.input[i] = resolve(v)
    for o in m2.graph.output:
        if o.name in ren:
            return None
    return m2


base = sq(ref, run(m, x))
gains = []
for q in acts:
    m2 = floated({q.input[0]})
    if m2 is not None:
        gains.append((sq(ref, run(m2, x)) - base, q.input[0]))
gains.sort(reverse=True)
print(f'{stem}: data-free QDQ {base:.2f} dB on {n} tuning images, {len(acts)} activation quantizers')
for g, t in gains[:8]:
    print(f'  alone in float {g:+.2f} dB  {t}')
k5, k10 = len(acts) * 5 // 100, len(acts) * 10 // 100
for k in sorted({1, 2, 3, k5, k10}):
    print(f'best {k} ({100 * k / len(acts):.1f} %) in float together: '
          f'{sq(ref, run(floated({t for _, t in gains[:k]}), x)):.2f} dB')
print(f'every activation in float (weights only): {sq(ref, run(floated({t for _, t in gains}), x)):.2f} dB')
