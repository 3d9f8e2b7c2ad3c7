"""Tuning-split probes behind the README's analysis of CLS (throwaway-grade, onnxruntime only).

    source scripts/eval/env.sh   # sets EVAL_DATA and EVAL_PY
    $EVAL_PY scripts/eval/analysis/probe.py efficientnet_lite0 100 "--steps bn_fold" "" "--iterations 5"
    $EVAL_PY scripts/eval/analysis/rounding_luck.py

probe.py: per-tensor int8 weights (numpy round-half-even, so within ~0.1 dB of the simulation) on
N evenly spaced tuning-split images, one line per CLI argument string. rounding_luck.py: the first
depthwise conv of EfficientNet-Lite0 quantized alone, with its channels rescaled by a
function-preserving +-1 % (seeded), converged CLS. Tuning split only.
"""
import sys, os, subprocess, tempfile, numpy as np, onnx, onnxruntime as ort
WORK=tempfile.mkdtemp(prefix='onnx-cle-probe-')
from onnx import numpy_helper
D=os.environ['EVAL_DATA']  # scripts/eval/env.sh sets it
BIN=os.environ.get('ONNX_CLE_BIN', os.path.join(os.environ.get('CARGO_TARGET_DIR', os.path.expanduser('~/.cache/onnx-cle-target')), 'release/onnx-cle'))
M=os.environ.get('ONNX_CLE_MODELS', os.path.join(os.path.dirname(os.path.abspath(__file__)), '../../../../shared/models'))
PREP={'efficientnet_lite0':'efficientnet','mobilenet_v2':'imagenet'}
def sess(m):
    so=ort.SessionOptions(); so.intra_op_num_threads=1; so.log_severity_level=3
    return ort.InferenceSession(m.SerializeToString() if not isinstance(m,str) else m, so, providers=['CPUExecutionProvider'])
def run(m,x,b=20):
    s=sess(m); n=s.get_inputs()[0].name
    return np.concatenate([s.run(None,{n:x[i:i+b]})[0] for i in range(0,len(x),b)])
def sq(r,o):
    r=r.astype(np.float64); return 10*np.log10((r**2).sum()/((r-o)**2).sum())
def figs(r,o):
    per=np.array([sq(a,b) for a,b in zip(r,o)])
    return sq(r,o), np.median(per), np.percentile(per,10), (r.argmax(1)==o.argmax(1)).mean()
def qdq(w):
    s=np.abs(w).max()/127
    return (np.clip(np.round(w/s),-127,127)*s).astype(np.float32) if s>0 else w
def layer_weights(m):
    init={t.name:t for t in m.graph.initializer}
    out=[]
    for n in m.graph.node:
        if n.op_type in ('Conv','Gemm','MatMul','ConvTranspose') and len(n.input)>1 and n.input[1] in init:
            out.append((n.name or n.output[0], n.input[1]))
    return out
def quantized(m, only=None):
    m2=onnx.ModelProto(); m2.CopyFrom(m)
    init={t.name:t for t in m2.graph.initializer}
    for name,w in layer_weights(m2):
        if only is not None and name not in only: continue
        t=init[w]; a=numpy_helper.to_array(t); t.CopyFrom(numpy_helper.from_array(qdq(a),w))
    return m2
def cli(stem,args,out):
    subprocess.run([BIN,'equalize',f'{M}/{stem}.onnx','-o',out,'--no-verify','--quiet']+args,check=True)
    return onnx.load(out)
if __name__=='__main__':
    stem=sys.argv[1]; n=int(sys.argv[2]); variants=sys.argv[3:]
    x=np.load(f'{D}/tune_{PREP[stem]}.npy', mmap_mode='r'); idx=np.linspace(0,len(x)-1,n).astype(int); x=np.ascontiguousarray(x[idx])
    ref=run(f'{M}/{stem}.onnx',x)
    for k,v in enumerate(variants):
        m=cli(stem,v.split(),os.path.join(WORK, f'{stem}_{k}.onnx'))
        f=figs(ref,run(quantized(m),x))
        print(f"{v or 'default':40s} W8 {f[0]:6.2f} med {f[1]:6.2f} p10 {f[2]:6.2f} top1 {f[3]:.2f}",flush=True)
