import torch
from torch import nn
from fastai.learner import Learner
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader

class Payload(nn.Module):
    "Returns `self.out` (set by the test) plus 0 * the input, so a fit's watched output is exactly what the test chose"
    def __init__(self): super().__init__(); self.w = nn.Parameter(torch.zeros(1)); self.out = torch.zeros(1)
    def forward(self, x): return self.out + 0 * self.w * x.sum()

class Head(nn.Module):
    def __init__(self): super().__init__(); self.p = Payload(); self.b = nn.Parameter(torch.zeros(1))
    def forward(self, x): return self.p(x).float().mean().view(1).expand(x.shape[0]) + self.b

def n_hooks(model):
    "Forward and forward-pre hooks left on `model`'s modules"
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

def quiet(learn):
    from fastai.callback.progress import ProgressCallback
    from fastcore.basics import noop
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, ProgressCallback)])
    learn.logger = noop  # (a function pickle finds by name: the learner still pickles)
    return learn

def one_batch_learner(cbs, n=1, bs=4):
    x = torch.randn(n * bs, 2); y = torch.randn(n * bs)
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=bs), DataLoader(list(zip(x[:bs], y[:bs])), bs=bs))
    return quiet(Learner(dls, Head(), loss_func=nn.MSELoss(), cbs=cbs))

def bad_argument_named(make, kw):
    "`make(**kw)` raises a ValueError that names the (first) argument of `kw`"
    import pytest
    with pytest.raises(ValueError) as e: make(**kw)
    assert f'`{next(iter(kw))}`' in str(e.value), str(e.value)

def works_or_names_argument(make, kw, n_trn=2):
    "Any arguments either build a callback that records a short fit, or raise a ValueError naming one of them"
    from fastai.test_utils import synth_learner
    try: cb = make(**kw)
    except ValueError as e:
        assert any(f'`{k}`' in str(e) for k in kw), str(e)
        return None
    learn = quiet(synth_learner(n_trn=n_trn, cbs=cb)); learn.fit(1)
    assert n_hooks(learn.model) == 0 and len(cb.to_df()) > 0
    return cb

from fastai.callback.core import Callback
class BatchOrder(Callback):
    "The targets of every training batch a fit sees, in order: whether something changed the data's shuffle"
    def before_fit(self): self.ys = []
    def before_batch(self):
        if self.training: self.ys.append(self.yb[0].tolist())
