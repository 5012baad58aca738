"""On a CPU, what `norms_row` (ActivationHealth's reduction of the whole outputs held) costs over xresnet50's outputs,
against the same statistics computed per shape (the outputs of one shape stacked): see bench/README.md.

    python bench/cpu_norms.py            # xresnet50, 16 px, batch size 2, one thread: the overhead-bound fit's outputs
"""
import time, warnings, collections, torch
warnings.filterwarnings('ignore')
from fastai.vision.models.xresnet import xresnet50
from initcb.core import norms_row

def leaf_outputs(model, x):
    "The output of every leaf module of `model` on `x`"
    outs = []
    hs = [m.register_forward_hook(lambda m, i, o: outs.append(o.detach())) for m in model.modules() if not list(m.children())]
    try: model(x)
    finally:
        for h in hs: h.remove()
    return outs

def by_shape(ts):
    "The four statistics of `norms_row`, the outputs of one shape stacked and reduced together; and the column order"
    groups = collections.defaultdict(list)
    for j, t in enumerate(ts): groups[t.shape].append(j)
    cols, order = [], []
    for js in groups.values():
        x = torch.stack([ts[j] for j in js]).flatten(1); a = x.abs()
        cols.append(torch.stack([a.sum(1), torch.linalg.vector_norm(x, dim=1), a.amax(1), x.amax(1)])); order += js
    return torch.cat(cols, 1), order

def per_call(f, n=200):
    f(); t = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t) / n * 1e6

def main():
    torch.set_num_threads(1); torch.manual_seed(0)
    ts = leaf_outputs(xresnet50(c_in=3, n_out=10), torch.randn(2, 3, 16, 16))
    (r1, o1), (r2, o2) = norms_row(ts), by_shape(ts)
    assert torch.allclose(r1[:, torch.tensor(o1).argsort()], r2[:, torch.tensor(o2).argsort()], rtol=1e-4, atol=1e-5)
    a = torch._foreach_abs(ts)
    print(f'{len(ts)} outputs, {sum(t.numel() for t in ts):,} elements, {len({t.shape for t in ts})} shapes; µs a call:')
    for name, f in [('norms_row', lambda: norms_row(ts)), ('by shape', lambda: by_shape(ts)),
                    ('_foreach_abs', lambda: torch._foreach_abs(ts)), ('_foreach_norm(|x|, 1)', lambda: torch._foreach_norm(a, 1)),
                    ('_foreach_norm(x, 2)', lambda: torch._foreach_norm(ts, 2)), ('_foreach_max(x)', lambda: torch._foreach_max(ts))]:
        print(f'  {name:24s} {per_call(f):7.0f}')

if __name__ == '__main__': main()
