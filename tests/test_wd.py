"AdaptiveWD: λ stays finite and within bounds whatever the gradients do; bad arguments are named."
import math, numpy as np, pytest, torch
from torch import nn
from fastai.test_utils import synth_learner
from fastai.callback.core import Callback
from initcb.wd import AdaptiveWD, MODES
from helpers import quiet, bad_argument_named

class Poison(Callback):
    "Makes the gradients non-finite (or zero) at some batches, before AdaptiveWD reads them"
    order = AdaptiveWD.order - 0.1
    def __init__(self, how): self.how = how
    def before_step(self):
        if self.train_iter % 2 == 0:
            for p in self.model.parameters():
                if p.grad is not None: p.grad.fill_(float('nan') if self.how == 'nan' else 0.)

@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('how', ['nan', 'zero'])
def test_lambda_finite_and_bounded(mode, how):
    cb = AdaptiveWD(mode, wd_max=0.2)
    learn = quiet(synth_learner(n_trn=4, cbs=[cb, Poison(how)]))
    learn.fit(1, lr=1e-2, wd=0.1)
    lam = cb.wd_df().drop(columns='batch').to_numpy()
    assert np.isfinite(lam).all() and (lam >= 0).all() and (lam <= 0.2).all()
    assert learn.opt.hypers[0]['wd'] == 0.1  # the fit's value is back
    if mode == 'awd': assert len(cb.events) > 0  # the bad batches were recorded

@pytest.mark.parametrize('kw', [dict(mode='l2'), dict(wd_max=-1.), dict(beta=2.), dict(every=0), dict(bound=0.5), dict(gain=-1.)])
def test_bad_arguments(kw): bad_argument_named(AdaptiveWD, kw)

def test_exception_mid_step_restores_wd():
    class Boom(Callback):
        order = AdaptiveWD.order + 0.1
        def before_step(self):
            if self.train_iter == 2: raise RuntimeError('boom')
    cb = AdaptiveWD('cautious')
    learn = quiet(synth_learner(n_trn=4, cbs=[cb, Boom()]))
    with pytest.raises(RuntimeError): learn.fit(1, lr=1e-2, wd=0.1)
    assert learn.opt.hypers[0]['wd'] == 0.1

def test_swd_without_second_moment_uses_gradient_ema():
    "With SGD (no sqr_avg), 'swd' divides by the root of a debiased EMA of the mean squared gradient"
    from fastai.optimizer import SGD
    cb = AdaptiveWD('swd', wd_max=1e6)
    learn = quiet(synth_learner(n_trn=3, cbs=cb)); learn.opt_func = SGD
    learn.fit(1, lr=1e-3, wd=1e-3)
    assert cb.state['swd_k'] == 3 and cb.state['swd_ema'] > 0
    v = cb.state['swd_ema'] / (1 - 0.99 ** 3)
    assert math.isclose(cb.wd_df()['wd_0'].iloc[-1], 1e-3 / (math.sqrt(v) + 1e-8), rel_tol=1e-6)
