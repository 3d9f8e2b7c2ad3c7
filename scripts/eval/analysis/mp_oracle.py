"""How far a mixed-precision budget can lift a data-free QDQ model, chosen with hindsight.

    source scripts/eval/env.sh   # sets EVAL_DATA and EVAL_PY
    $EVAL_PY scripts/eval/analysis/mp_oracle.py efficientnet_lite0 20 [CLI ARGS...]

Makes the data-free per-tensor QDQ model with the release CLI (`--rounding squant
--bias-correction analytic --input-range=-1,1` plus CLI ARGS), then on N evenly spaced
tuning-split images (onnxruntime, float QDQ ops): the SQNR gain of keeping each activation
quantizer in float alone (clamped to its range: what a uint16 grid over the same range tends
to), and the SQNR with the best of them in float together within 5 % and 10 % of the
quantizers, and with every activation in float (weights only). Quantizers on one value chain
(a ReLU's output, its `Min`, the `Pad` after it) are chosen together; each chain is ranked by its
gain per quantizer.
The choice uses the very images it is scored on, so it is an upper bound for any data-free
selector at that budget. Tuning split only.
"""
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

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
acts = [nd for nd in m.graph.node if nd.op_type == 'QuantizeLinear' and nd.input[0] not in inits]


def floated(tensors):
    """The model with the activation quantizers of `tensors` in float within their range: each
    Q → DQ pair becomes `Clip(x, lo, hi)` with the grid's ends (the QDQ export folds a ReLU or
    ReLU6 into its producer's quantizer, so the clamp is part of the function; a finer grid
    over the same range, uint16, tends to this)."""
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    q_of = {nd.output[0]: nd for nd in m.graph.node if nd.op_type == 'QuantizeLinear'}
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    nodes, gone = [], set()
    for nd in m.graph.node:
        q = q_of.get(nd.input[0]) if nd.op_type == 'DequantizeLinear' else None
        if q is None or q.input[0] not in tensors:
            nodes.append(nd)
            continue
        s, z = float(init[q.input[1]]), init[q.input[2]]
        info = np.iinfo(z.dtype)
        names = [f'{nd.output[0]}_lo', f'{nd.output[0]}_hi']
        for n_, v in zip(names, ((info.min - int(z)) * s, (info.max - int(z)) * s)):
            m2.graph.initializer.append(numpy_helper.from_array(np.array(v, np.float32), n_))
        nodes.append(onnx.helper.make_node('Clip', [q.input[0]] + names, [nd.output[0]]))
        gone.add(q.output[0])
    del m2.graph.node[:]
    m2.graph.node.extend(nd for nd in nodes if not (nd.op_type == 'QuantizeLinear' and nd.output[0] in gone))
    return m2


# Quantizers on one value chain (a ReLU's output, its `Min`, the `Pad` after it…) re-apply nearly
# the same grid: keeping one of them wider gains nothing while the others stay. They are chosen
# together, as one group.
VALUE_OPS = {'Pad', 'Min', 'Max', 'Clip', 'Relu', 'Reshape', 'Flatten', 'Transpose', 'Squeeze',
             'Unsqueeze', 'MaxPool', 'Identity'}
producer = {o: nd for nd in m.graph.node for o in nd.output}
q_by_dq = {}
for nd in m.graph.node:
    if nd.op_type == 'DequantizeLinear':
        q_by_dq[nd.output[0]] = nd.input[0]
q_in = {q.output[0]: q.input[0] for q in acts}
parent = {q.input[0]: q.input[0] for q in acts}


def root(t):
    while parent[t] != t:
        t = parent[t]
    return t


for q in acts:
    p_ = producer.get(q.input[0])
    if p_ is not None and p_.op_type in VALUE_OPS and p_.input[0] in q_by_dq:
        up = q_in.get(q_by_dq[p_.input[0]])
        if up in parent:
            parent[root(q.input[0])] = root(up)
groups = {}
for q in acts:
    groups.setdefault(root(q.input[0]), []).append(q.input[0])
groups = list(groups.values())

base = sq(ref, run(m, x))
print(f'{stem}: data-free QDQ {base:.2f} dB on {n} tuning images, {len(acts)} activation quantizers '
      f'in {len(groups)} value chains')
gains = sorted(((sq(ref, run(floated(set(g)), x)) - base, g) for g in groups),
               key=lambda a: -a[0] / len(a[1]))
for g, ts in gains[:8]:
    print(f'  chain of {len(ts)} in float {g:+.2f} dB  {ts[0]}')
for pct in (5, 10):
    budget, chosen = len(acts) * pct // 100, []
    for g, ts in gains:
        if g > 0 and len(chosen) + len(ts) <= budget:
            chosen += ts
    print(f'best chains within {pct} % ({len(chosen)} of {len(acts)} quantizers) in float together: '
          f'{sq(ref, run(floated(set(chosen)), x)):.2f} dB')
# A rule that needs no data: the first chains in graph order (the stem), as the rule of thumb of
# keeping a network's first layers wider.
for pct in (5, 10):
    budget, chosen = len(acts) * pct // 100, []
    for ts in groups:
        if len(chosen) + len(ts) <= budget:
            chosen += ts
    print(f'first chains in graph order within {pct} % ({len(chosen)} quantizers) in float together: '
          f'{sq(ref, run(floated(set(chosen)), x)):.2f} dB')
print(f'every activation in float (weights only): {sq(ref, run(floated({q.input[0] for q in acts}), x)):.2f} dB')
