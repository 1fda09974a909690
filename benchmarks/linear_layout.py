"""Matrix products of one decode step at 1-32 rows: F.linear(x, W) against x @ W.T with the transposed weight stored,
and MKL packed weights (60 products of 1536x576 float32, fastest of 9, interleaved).  python benchmarks/linear_layout.py"""
import torch, time
import torch.nn.functional as F
torch.set_num_threads(2)
H, I = 576, 1536
Ws = [torch.randn(I, H) for _ in range(60)]
WT = [W.t().contiguous() for W in Ws]
def once(fn):
    t=time.perf_counter(); fn(); return (time.perf_counter()-t)*1000
for m in (1,2,4,8,16,32):
    x = torch.randn(m, H)
    packed = [torch.ops.mkl._mkl_reorder_linear_weight(W, m) for W in Ws]
    fns = {'linear': lambda: [F.linear(x, W) for W in Ws], 'x@WT': lambda: [x @ W for W in WT],
           'mklpack': lambda: [torch.ops.mkl._mkl_linear(x, P, W, None, m) for P, W in zip(packed, Ws)]}
    r = {k: [] for k in fns}
    for rep in range(9):
        for k, f in fns.items(): r[k].append(once(f))
    print(m, {k: round(min(v),1) for k,v in r.items()}, flush=True)
