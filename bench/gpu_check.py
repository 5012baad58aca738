"""Correctness of initcb's callbacks on a CUDA device: the checks the CPU test suite cannot make here.

    python bench/gpu_check.py            # on a machine with a GPU (falls back to the CPU, as a smoke run)

Each check prints PASS or FAIL with what it compared; the exit status is the number of failures.
- ActivationHealth on the device equals the same statistics of the whole outputs, captured by hand (fp32, every batch);
- a bf16 xresnet18 fit (fastai's MixedPrecision) with ActivationHealth + GradientHealth: finite history, gradient
  norms equal to torch's of the last step, no hook left, the callbacks pickle (learn.export);
- an exception mid-fit leaves no hook; history stays on the host, nothing pinned keeps growing.
"""
import io, math, os, pickle, sys, traceback, warnings
warnings.filterwarnings('ignore')
import numpy as np, torch, torch.nn as nn
from fastai.basics import Learner, DataLoaders, Callback, noop
from fastai.vision.models.xresnet import xresnet18
from initcb.activations import ActivationHealth
from initcb.gradients import GradientHealth
sys.path.insert(0, os.path.dirname(__file__))
from overhead import ReplayDL  # a few batches made once on the device, replayed

dev = 'cuda' if torch.cuda.is_available() else 'cpu'
fails = []

def dls_for(bs, c, size, n, k=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(k, bs, c, size, size, generator=g).to(dev); y = torch.randint(0, 10, (k, bs), generator=g).to(dev)
    return DataLoaders(ReplayDL(x, y, n), ReplayDL(x[:1], y[:1], 1))

def learner(model, dls, cbs, bf16=False):
    learn = Learner(dls, model.to(dev), loss_func=nn.CrossEntropyLoss(), cbs=cbs)
    if bf16: learn.to_bf16()
    learn.remove_cbs([c for c in learn.cbs if type(c).__name__ == 'ProgressCallback'])
    learn.logger = noop
    return learn

def n_hooks(model): return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

def check(name):
    def deco(f):
        try: msg = f(); print(f'PASS {name}: {msg}', flush=True)
        except Exception:
            fails.append(name); print(f'FAIL {name}\n{traceback.format_exc()}', flush=True)
        return f
    return deco

class Capture(Callback):
    "Keeps the last training batch's output of each module in `mods`, by plain forward hooks"
    order = 100
    def __init__(self, mods): self.mods, self.outs = mods, {}
    def before_fit(self): self.hs = [m.register_forward_hook(self._h(i)) for i, m in enumerate(self.mods)]
    def _h(self, i):
        def f(m, inp, o):
            if m.training: self.outs[i] = o.detach().double().cpu()
        return f
    def after_fit(self): [h.remove() for h in self.hs]

@check('ActivationHealth exact on the device')
def _():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.Tanh(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    names = ['0', '1', '2', '3', '6']
    cb = ActivationHealth(modules=names, sample_every=1, sample=4096, full_max=1 << 20)
    mods = dict(model.named_modules())
    cap = Capture([mods[n] for n in names])
    learn = learner(model, dls_for(8, 3, 16, 5), [cb, cap])
    learn.fit(1, 1e-2)
    df = cb.to_df()
    last = df[df.iter == df.iter.max()].set_index('name')
    worst = 0.
    for i, n in enumerate(names):
        x, r = cap.outs[i], last.loc[n]
        for col, v in [('abs_mean', x.abs().mean()), ('rms', x.square().mean().sqrt()), ('max', x.max()),
                       ('mean', x.mean()), ('std', x.std()), ('min', x.min())]:
            err = abs(r[col] - v.item()) / max(abs(v.item()), 1e-3)
            worst = max(worst, err)
            assert err < 1e-4, f'{n} {col}: {r[col]} vs {v.item()}'
    assert n_hooks(learn.model) == 0
    return f'{len(names)} layers, 6 statistics each, worst relative error {worst:.1e}'

@check('bf16 xresnet18: ActivationHealth + GradientHealth')
def _():
    torch.manual_seed(0)
    ah, gh = ActivationHealth(), GradientHealth(warn=False)
    class LastGrads(Callback):
        order = GradientHealth.order + 0.1
        def after_backward(self): self.norms = [p.grad.float().norm().item() for p in self.learn.model.parameters() if p.grad is not None]
    lg = LastGrads()
    learn = learner(xresnet18(c_in=3, n_out=10), dls_for(32, 3, 32, 40), [ah, gh, lg], bf16=True)
    learn.fit(1, 1e-3)
    df, g = ah.to_df(), gh.to_df(per='param')
    assert len(df) and np.isfinite(df[['abs_mean', 'rms', 'max']].to_numpy()).all(), 'non-finite activation stats'
    assert np.isfinite(df.dropna(subset=['std'])[['mean', 'std']].to_numpy()).all()
    glast = g[g.iter == g.iter.max()]
    mine = np.sort(glast['grad_norm'].to_numpy()); theirs = np.sort(np.array(lg.norms))
    assert len(mine) == len(theirs), (len(mine), len(theirs))
    np.testing.assert_allclose(mine, theirs, rtol=2e-3, atol=1e-6)
    assert n_hooks(learn.model) == 0
    learn.remove_cb(lg); buf = pickle.dumps(learn)  # what learn.export does, less swapping the loaders for empty ones
    assert all(not hasattr(c, 'hooks') or c.hooks is None for c in (ah, gh))
    return (f'{df.layer.nunique()} layers x {df.iter.nunique()} batches recorded, {len(theirs)} gradient norms match torch, '
            f'learner pickled ({len(buf) / 2**20:.1f} MiB)')

@check('exception mid-fit leaves no hook')
def _():
    class Boom(Callback):
        def after_batch(self):
            if self.iter == 3: raise RuntimeError('boom')
    ah, gh = ActivationHealth(), GradientHealth(warn=False)
    learn = learner(xresnet18(c_in=3, n_out=10), dls_for(8, 3, 32, 10), [ah, gh, Boom()], bf16=True)
    try: learn.fit(1)
    except RuntimeError: pass
    else: raise AssertionError('no exception')
    assert n_hooks(learn.model) == 0, n_hooks(learn.model)
    learn.remove_cb(Boom); learn.fit(1)
    assert n_hooks(learn.model) == 0
    return f'hooks gone after the exception and after a second fit; {len(ah.to_df())} rows'

print(f'device: {torch.cuda.get_device_name() if dev == "cuda" else "cpu"}; {len(fails)} failed', flush=True)
sys.exit(len(fails))
