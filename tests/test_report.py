"health_report, NonFiniteGuard, HealthCheck: rules that fire and ones that must not, clean ends, bad input."
import math, re, warnings, pytest, torch, numpy as np, pandas as pd
from torch import nn
from hypothesis import given, settings, strategies as st
from fastai.learner import Learner, CancelFitException
from fastai.callback.core import Callback
from fastai.callback.training import GradientClip
from fastai.test_utils import synth_learner
from initcb.core import digits_dls
from initcb.report import HealthCheck, NonFiniteGuard, Thresholds, find_nonfinite, RULES, NO_GRADIENT_SOME
from initcb.activations import ActivationHealth
from initcb.reinit import unit_chains
from initcb.gradients import GradientHealth
from helpers import quiet, n_hooks, bad_argument_named


class Fail(Callback):
    def __init__(self, exc): self.exc = exc
    def after_pred(self):
        if self.training and self.train_iter == 2: raise self.exc

@pytest.mark.parametrize('exc', [None, RuntimeError('boom'), KeyboardInterrupt(), CancelFitException()])
def test_no_hook_left_however_the_fit_ends(exc):
    learn = quiet(synth_learner(n_trn=5, cbs=[HealthCheck(report=False)] + ([Fail(exc)] if exc is not None else [])))
    if exc is None or isinstance(exc, CancelFitException): learn.fit(1)
    else:
        with pytest.raises(type(exc)): learn.fit(1)
    assert n_hooks(learn.model) == 0

def test_exploding_gradients_reported_and_clipped():
    "Plain SGD with a step far past the stable range on a linear regression: the gradient norm grows geometrically"
    from fastai.optimizer import SGD
    learn = quiet(synth_learner(n_trn=12, cbs=HealthCheck(remedy={'exploding'}, report=False, guard=False)))
    learn.opt_func = SGD
    with warnings.catch_warnings(): warnings.simplefilter('ignore'); learn.fit(2, 3.)
    rep = learn.health_check.report
    assert rep.problem.str.contains('exploding|nonfinite').any(), rep
    assert any(isinstance(c, GradientClip) for c in learn.cbs) and 'GradientClip' in set(learn.health_check.actions.action)
    # (clipped at the scale the fit trained at, the largest running median of its norms: 1.0 had clipped healthy steps)
    g = learn.gradient_health.global_norm()
    clip = next(c for c in learn.cbs if isinstance(c, GradientClip)).max_norm
    assert clip != 1. and np.nanmin(g) <= clip <= np.nanmax(g[np.isfinite(g)])

def test_dead_units_reported_and_revived():
    "ReLU layers with biases shifted far down: dead units reported; remedy re-initializes them"
    def net():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        with torch.no_grad(): m[1].bias.sub_(3.); m[3].bias.sub_(3.)
        return m
    learn = quiet(Learner(digits_dls(), net(), loss_func=nn.CrossEntropyLoss(), cbs=HealthCheck(report=False)))
    learn.fit(1, 1e-3)
    assert (learn.health_check.report.problem == 'dead units').sum() == 2
    learn = quiet(Learner(digits_dls(), net(), loss_func=nn.CrossEntropyLoss(), cbs=HealthCheck(remedy={'dead'}, report=False)))
    learn.fit(2, 1e-3)
    assert (learn.health_check.actions.action == 'ReinitDormant').sum() >= 1
    d = learn.health_check.actions.query("action == 'ReinitDormant'").detail
    assert d.str.contains(r'layer 1: .* \(dead in activation 2\)').any(), d.tolist()  # (the report names the activation, ReDo acts on the layer before)
    assert (learn.health_check.report.problem == 'dead units').sum() == 0

def test_find_nonfinite_backward_origin():
    "A forward that is finite but whose gradient is not (sqrt at 0): found in the backward pass"
    class Sqrt(nn.Module):
        def forward(self, x): return (x * 0).sqrt()
    m = nn.Sequential(nn.Linear(3, 3), Sqrt(), nn.Linear(3, 1))
    where, mod = find_nonfinite(m, torch.randn(4, 3), torch.randn(4, 1), nn.MSELoss())
    assert where == 'backward' and mod in ('0', '1')

def test_guard_skip_keeps_weights_clean():
    class Poison(Callback):
        order = NonFiniteGuard.order - 1
        def after_backward(self):
            if self.train_iter == 1: self.model.a.grad.fill_(float('nan'))
    g = NonFiniteGuard(verbose=False)
    learn = quiet(synth_learner(n_trn=4, cbs=[g, Poison()]))
    learn.fit(1)
    assert g.skips == [1] and all(torch.isfinite(p).all() for p in learn.model.parameters())

def test_guard_tells_overflowing_gradients_from_non_finite_ones():
    "Finite gradient entries whose squares overflow float32 (~1e24): skipped, said so, no replay; a NaN one is still non-finite"
    class Huge(Callback):
        order = NonFiniteGuard.order - 1
        def after_backward(self):
            if self.train_iter == 1: self.model[0].weight.grad.fill_(3e24)
            if self.train_iter == 2: self.model[1].bias.grad.fill_(float('nan'))
    g = NonFiniteGuard(verbose=False)
    learn = quiet(synth_learner(n_trn=4, cbs=[g, Huge()])); learn.model = nn.Sequential(nn.Linear(1, 8), nn.Linear(8, 1))
    learn.fit(1)
    ev = g.events
    assert g.skips == [1, 2] and ev['where'][0] == 'overflow' and ev['where'][1] != 'overflow'
    assert 'too large for float32' in ev['message'][0] and '3e+24' in ev['message'][0] and 'non-finite' not in ev['message'][0].split(';')[0]
    assert 'non-finite' in ev['message'][1].split(';')[0]
    assert all(torch.isfinite(p).all() and p.abs().max() < 1e3 for p in learn.model.parameters())

def test_guard_skip_keeps_the_accumulated_gradients():
    "Under GradientAccumulation a skipped batch drops its own gradients, not the ones its window gathered before it"
    from fastai.callback.training import GradientAccumulation
    class Poison(Callback):
        order = NonFiniteGuard.order - 1
        def after_backward(self):
            if self.train_iter == 1: self.model.a.grad.fill_(float('nan'))
    class Probe(Callback):
        def after_backward(self):
            if self.train_iter == 0: self.first = [p.grad.clone() for p in self.model.parameters()]
        def before_backward(self):
            if self.train_iter == 2: self.third = [None if p.grad is None else p.grad.clone() for p in self.model.parameters()]
    g = NonFiniteGuard(verbose=False)
    learn = quiet(synth_learner(n_trn=8, cbs=[g, Poison(), Probe(), GradientAccumulation(n_acc=48)]))
    learn.fit(1)
    assert g.skips == [1]
    assert all(b is not None and torch.equal(a, b) for a, b in zip(learn.probe.first, learn.probe.third))  # batch 0's, kept
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())

def test_guard_skip_leaves_no_trace_in_batchnorm():
    "A NaN input poisons BatchNorm's running statistics in the forward pass, before any check: a skipped batch puts them back"
    from fastai.layers import ConvLayer
    from fastai.metrics import accuracy
    class PoisonInput(Callback):
        order = -1
        def before_batch(self):
            if self.training and self.train_iter == 3: x = self.learn.xb[0].clone(); x[0, 0, 0, 0] = float('nan'); self.learn.xb = (x,)
    class BufSnap(Callback):  # (not `Bufs`: `learn.bufs` would make fastai warn that the guard's own `bufs` shadows it)
        def before_batch(self):
            if self.training and self.train_iter == 3: self.before = [b.clone() for b in self.model.buffers()]
        def after_cancel_batch(self):
            self.after = [b.clone() for b in self.model.buffers()]
    torch.manual_seed(0)
    m = nn.Sequential(ConvLayer(1, 16), ConvLayer(16, 32, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    g = NonFiniteGuard(verbose=False)
    learn = quiet(Learner(digits_dls(), m, loss_func=nn.CrossEntropyLoss(), metrics=accuracy, cbs=[g, PoisonInput(), BufSnap()]))
    learn.fit(1, 1e-2)
    assert g.skips == [3] and g.reports[0]['where'] == 'input'  # (the NaN came with the batch)
    assert all(torch.equal(a, b) for a, b in zip(learn.buf_snap.before, learn.buf_snap.after))  # as before the batch
    assert all(torch.isfinite(b).all() for b in m.buffers())
    loss, acc = learn.validate()
    assert np.isfinite(loss) and acc > 0.2  # (poisoned statistics: NaN loss, accuracy at chance, for the rest of the fit)

def test_guard_skip_leaves_no_trace_in_the_recorded_loss():
    "fastai's Recorder runs after a cancelled batch too: a skipped batch's NaN loss must not reach train_loss or the smoothed loss"
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randn(64, 2)
    x[20] = float('nan')  # in training batch 1
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=16), DataLoader(list(zip(x[32:], y[32:])), bs=16))
    g = NonFiniteGuard(verbose=False)
    learn = quiet(Learner(dls, nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), loss_func=nn.MSELoss(), cbs=g))
    learn.fit(2)
    assert g.skips == [1, 5]
    assert len(learn.recorder.losses) == 6 and np.isfinite([float(l) for l in learn.recorder.losses]).all()
    assert np.isfinite(np.array(learn.recorder.values)).all()

def test_guard_leaves_overflow_to_the_grad_scaler():
    "Under fp16 MixedPrecision, overflowing gradients are the GradScaler's to skip (it then lowers its scale), not the guard's"
    import fastai.callback.fp16 as fp16
    from fastai.torch_core import L
    class MixedPrecision(fp16.MixedPrecision):  # fastai's, with CPU autocast and a CPU GradScaler (it asks for CUDA)
        def before_fit(self):
            self.autocast, self.learn.scaler, self.scales = torch.autocast('cpu', dtype=torch.float16), torch.amp.GradScaler('cpu'), L()
        def after_fit(self): self.final_scale = self.scaler.get_scale(); super().after_fit()
    torch.manual_seed(0)
    mp, g = MixedPrecision(), NonFiniteGuard(verbose=False)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    loss = lambda o, y: 1e3 * nn.functional.cross_entropy(o.float(), y)  # gradients x 2**16 overflow fp16 at first
    learn = quiet(Learner(digits_dls(), m, loss_func=loss, cbs=[mp, g]))
    learn.fit(1, 1e-3)
    assert g.scaled and g.skips == [] and mp.final_scale < 2. ** 16  # the scaler skipped those steps and backed off

def test_health_check_learner_exported_and_loaded():
    "A learner trained with HealthCheck attached exports without its data and predicts once loaded"
    import pickle
    from fastai.learner import load_learner
    from fastai.losses import CrossEntropyLossFlat
    learn = quiet(Learner(digits_dls(), nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
                          loss_func=CrossEntropyLossFlat(), cbs=HealthCheck(report=False)))
    learn.fit(1, 1e-3)
    assert 0 <= learn.recorder.values[-1][-2] <= 100  # 'dead %' in the fit
    assert len(learn.validate()) == 1  # (after it: the loss alone, no column and no forward pass per `validate`/`predict`)
    f = learn.path / 'hc_export.pkl'
    try:
        learn.export(f)
        with warnings.catch_warnings(): warnings.simplefilter('ignore'); l2 = load_learner(f)
    finally: f.unlink(missing_ok=True)
    assert l2.health_check._xb is None
    assert l2.health_report(verbose=False).problem.tolist() == []  # (the init rules alone: the histories were left out)
    hc = HealthCheck(); hc._xb = torch.zeros(3)  # (as a fit that ended by an exception leaves it)
    assert pickle.loads(pickle.dumps(hc))._xb is None
    item = learn.dls.valid_ds[0][0]
    assert int(l2.predict(item)[0]) in range(10)
    assert l2.get_preds(dl=learn.dls.valid)[0].shape == (len(learn.dls.valid_ds), 10)
    l2.dls = learn.dls  # data again: a fit of the loaded learner records and reports afresh
    l2.fit(1, 1e-3)
    assert 0 <= l2.recorder.values[-1][-2] <= 100 and len(l2.gradient_health.to_df()) > 0

@pytest.mark.parametrize('kw', [dict(policy='x'), dict(max_skips=-1)])
def test_guard_bad_arguments(kw): bad_argument_named(NonFiniteGuard, kw)

@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(['dead_frac', 'dead_tau', 'sat_pct', 'drift_orders', 'growth', 'last']),
                       st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 200), st.none(), st.text(max_size=2)), max_size=3))
def test_thresholds_fuzz(kw):
    "Any thresholds either build or raise a ValueError that names one of them"
    try: Thresholds(**kw)
    except ValueError as e: assert any(f'`{k}`' in str(e) for k in kw), str(e)

@settings(max_examples=20, deadline=None)
@given(st.one_of(st.booleans(), st.none(), st.sets(st.sampled_from(list(RULES) + ['x', 'clip']), max_size=3)))
def test_remedy_argument_fuzz(remedy):
    try: HealthCheck(remedy=remedy)
    except ValueError as e: assert '`remedy`' in str(e) and not set(remedy) <= set(RULES)

def test_resumed_run_gives_the_same_report(tmp_path):
    "fit 1 epoch twice, against: fit 1, learn.save + the callbacks' .npz, a new Learner, learn.load + the loaded callbacks, fit 1 (each report reads its fit)"
    from initcb.core import digits_dls
    def net():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        with torch.no_grad(): m[1].bias.sub_(3.)
        return m
    def learner(cbs): return quiet(Learner(digits_dls(), net(), loss_func=nn.CrossEntropyLoss(), path=tmp_path, cbs=cbs))
    full = learner([ActivationHealth(), GradientHealth(warn=False)]); full.fit(1, 1e-3); full.fit(1, 1e-3)
    r_full = full.health_report(verbose=False)
    first = learner([ActivationHealth(), GradientHealth(warn=False)]); first.fit(1, 1e-3)
    first.save('half')
    fa, fg = first.activation_health.save(tmp_path/'ah.npz'), first.gradient_health.save(tmp_path/'gh.npz')
    second = learner([ActivationHealth.load(fa), GradientHealth.load(fg)]); second.load('half')
    second.fit(1, 1e-3)
    r_res = second.health_report(verbose=False)
    assert set(zip(r_full.layer, r_full.problem)) == set(zip(r_res.layer, r_res.problem)) and len(r_full)
    for a, b in [(full.activation_health, second.activation_health), (full.gradient_health, second.gradient_health)]:
        assert a.n_seen == b.n_seen
    assert len(full.activation_health.to_df()) == len(second.activation_health.to_df())
    assert len(full.gradient_health.to_df()) == len(second.gradient_health.to_df())

def test_state_dict_round_trip():
    learn = quiet(synth_learner(n_trn=4, cbs=[ActivationHealth(sample_every=1), GradientHealth(warn=False)]))
    learn.fit(1)
    ah2 = ActivationHealth(sample_every=1).load_state_dict(learn.activation_health.state_dict())
    gh2 = GradientHealth(warn=False).load_state_dict(learn.gradient_health.state_dict())
    import pandas as pd
    pd.testing.assert_frame_equal(ah2.to_df(), learn.activation_health.to_df())
    pd.testing.assert_frame_equal(gh2.to_df(), learn.gradient_health.to_df())

_fuzz_learner = {}
def recorded():
    "One short fit with both recorders, shared by the fuzz examples"
    if not _fuzz_learner:
        learn = quiet(synth_learner(n_trn=3, cbs=[ActivationHealth(sample_every=1), GradientHealth(warn=False)]))
        learn.fit(1); _fuzz_learner['l'] = learn
    return _fuzz_learner['l']

@settings(max_examples=60, deadline=None)
@given(reader=st.sampled_from(['layer_stats', 'hist', 'color_dim', 'plot_layer_stats', 'summary', 'to_df', 'plot_layer']),
       arg=st.one_of(st.integers(-5, 5), st.text(max_size=4), st.floats(allow_nan=True), st.none(), st.sampled_from(['0', 'layer', 'param', 'a'])))
def test_readers_fuzz(reader, arg):
    "A reader given any argument returns, or raises a ValueError that says what is allowed; nothing else escapes"
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    learn = recorded()
    cb = learn.gradient_health if reader in ('to_df', 'plot_layer') else learn.activation_health
    try: getattr(cb, reader)(arg)
    except ValueError as e: assert '`' in str(e), str(e)  # names the argument or the allowed values
    finally: plt.close('all')

def test_healthcheck_learner_pickles_and_fits_again():
    "HealthCheck's learner (with the columns it added) pickles, and the copy trains on"
    import pickle
    from fastcore.basics import noop
    from fastai.losses import CrossEntropyLossFlat
    learn = quiet(Learner(digits_dls(), nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
                          loss_func=CrossEntropyLossFlat(), cbs=HealthCheck(report=False)))
    learn.fit(1); learn.logger = noop
    back = pickle.loads(pickle.dumps(learn))
    back.fit(1)
    assert len(back.activation_health.to_df()) > 0 and n_hooks(back.model) == 0


def _report(model, lr=1e-3):
    learn = quiet(Learner(digits_dls(n_train=256), model, loss_func=nn.CrossEntropyLoss(), cbs=[ActivationHealth(), GradientHealth(warn=False)]))
    learn.fit(1, lr)
    return learn.health_report(verbose=False)

def _mlp(std, act=nn.ReLU, depth=6):
    torch.manual_seed(0)
    ls = [nn.Flatten()]
    for i in range(depth): ls += [nn.Linear(64, 64), act()]
    m = nn.Sequential(*ls, nn.Linear(64, 10))
    for l in m:
        if isinstance(l, nn.Linear): nn.init.normal_(l.weight, std=std); nn.init.zeros_(l.bias)
    return m

def test_scale_drift_reported():
    "Weights of std 0.05 (a fifth of Kaiming's for 64 inputs): the rms shrinks ~4x a layer, 3+ orders over six layers"
    rep = _report(_mlp(0.05))
    assert (rep.problem == 'activation scale drifts through depth').sum() == 1, rep
    rep = _report(_mlp((2 / 64) ** 0.5))  # Kaiming: no drift
    assert not (rep.problem == 'activation scale drifts through depth').any(), rep
    m = _mlp((2 / 64) ** 0.5, depth=2)  # a tiny layer a BatchNorm follows (torchvision's depthwise convs): rescaled right after, no drift
    m = nn.Sequential(m[0], nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), *m[1:])
    nn.init.normal_(m[1].weight, std=1e-6); nn.init.zeros_(m[1].bias)
    rep = _report(m)
    assert not (rep.problem == 'activation scale drifts through depth').any(), rep
    m = _mlp((2 / 64) ** 0.5, depth=2)  # the BatchNorm after its ReLU (fastai's TabularModel): rescaled there too, as `check_init` reads it; the rule said drift
    m = nn.Sequential(m[0], nn.Linear(64, 64), nn.ReLU(), nn.BatchNorm1d(64), *m[1:])
    nn.init.normal_(m[1].weight, std=1e-6); nn.init.zeros_(m[1].bias)
    rep = _report(m)
    assert not (rep.problem == 'activation scale drifts through depth').any(), rep

class Tabular(nn.Module):
    "fastai's TabularModel (its embeddings initialized at std 0.01, on purpose) on the digits: one categorical column, 64 continuous"
    def __init__(self):
        super().__init__()
        from fastai.tabular.model import TabularModel
        torch.manual_seed(0); self.t = TabularModel([(3, 4)], 64, 10, [64, 32])
    def forward(self, x): return self.t(torch.zeros(len(x), 1, dtype=torch.long, device=x.device), x.flatten(1))

def test_embedding_scale_is_not_drift():
    "The embedding's rms is 2+ orders below the BatchNorm'd layers' (everything else within half an order): not a drift"
    learn = quiet(Learner(digits_dls(n_train=256), Tabular(), loss_func=nn.CrossEntropyLoss(), cbs=ActivationHealth()))
    learn.fit(1, 1e-3)
    rep = learn.health_report(Thresholds(drift_orders=1.5), verbose=False)
    assert not (rep.problem == 'activation scale drifts through depth').any(), rep

def test_saturation_reported():
    "Sigmoids behind weights ten times too large: most outputs sit on an asymptote"
    rep = _report(_mlp(1.0, nn.Sigmoid, depth=3))
    assert (rep.problem == 'saturated activation').sum() >= 2, rep


class Col(nn.Module):
    "Runs `m` on synth_learner's inputs as one column"
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, x): return self.m(x.view(-1, 1)).view(x.shape)

def test_stalled_remedy_fits_the_layer():
    "Weights far too large for Adam's steps (the same function: BatchNorm undoes the Linear's scale, the last Linear the BatchNorm's): both stall; LSUVInit is the remedy for the Linear only"
    from fastai.optimizer import Adam
    from initcb.report import STALLED_OTHER
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad(): m[0].weight.mul_(1e4); m[1].weight.fill_(1e4); m[3].weight.mul_(1e-4)
    learn = quiet(synth_learner(n_trn=20, lr=1e-3)); learn.model, learn.opt_func = Col(m), Adam
    learn.add_cb(GradientHealth(update_every=1, warn=False))
    learn.fit(2)  # (fastai's Adam decays the weights by lr * wd = 1e-5 a step, the band's edge: the stall is the gradient's step)
    from initcb.report import _gradient_rules  # (the rules themselves: this fit's loss also rose 12x from its first batch, and the report calls the stalls its likely symptoms)
    rep = pd.DataFrame(_gradient_rules(learn.gradient_health, Thresholds(), learn.model)).query("problem == 'stalled updates'").set_index('layer')
    assert rep.loc['m.0', 'callback'] == 'LSUVInit', rep
    assert rep.loc['m.1', 'callback'] == '' and rep.loc['m.1', 'remedy'] == STALLED_OTHER, rep

def test_healthcheck_for_one_fit_leaves_with_it():
    "fit(cbs=HealthCheck()): fastai takes it off at the fit's end; what it attached (callbacks, progress columns) goes too,"
    "and the next plain fit runs as if it had never been there. Given to another fit, its histories go on"
    learn = quiet(Learner(digits_dls(n_train=128), nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), loss_func=nn.CrossEntropyLoss()))
    before = [type(c) for c in learn.cbs]
    hc = HealthCheck(report=False)
    learn.fit(1, cbs=hc)
    assert [type(c) for c in learn.cbs] == before and not len(learn.metrics) and n_hooks(learn.model) == 0
    assert hc.report is not None and len(hc.ah.fast) == 2
    learn.fit(1)  # (failed in the progress columns' reading: their HealthCheck was gone)
    learn.fit(1, cbs=hc)
    assert len(hc.ah.fast) == 4 and len(hc.gh.hist) == 4  # the same recorders, history continued
    assert [type(c) for c in learn.cbs] == before

def test_validate_is_not_a_fit(capsys):
    "fastai's validate() calls before_fit/after_fit too: HealthCheck printed its report and could apply remedies at each call"
    from fastai.losses import CrossEntropyLossFlat
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    learn = quiet(Learner(digits_dls(), m, loss_func=CrossEntropyLossFlat(), cbs=HealthCheck(remedy={'symmetric'})))
    learn.fit(1, 1e-3)
    assert 'health report' in capsys.readouterr().out
    with torch.no_grad(): m[1].weight.zero_(); m[1].bias.zero_()  # something for BreakSymmetry to act on, were validate a fit (a zero layer before a ReLU)
    loss = learn.validate()[0]
    assert np.isfinite(loss) and 'health report' not in capsys.readouterr().out
    assert (m[1].weight == 0).all() and len(learn.health_check.actions) == 0

def test_grad_norm_column_reads_the_epoch():
    "The live 'grad norm' column is the median over the epoch's recorded batches, whatever GradientHealth's cadence"
    from fastai.losses import CrossEntropyLossFlat
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    gh = GradientHealth(every=2, warn=False)
    learn = quiet(Learner(digits_dls(), m, loss_func=CrossEntropyLossFlat(), cbs=[gh, HealthCheck(report=False)]))
    learn.fit(3, 1e-2)
    n, it = len(learn.dls.train), gh.hist.iters[:len(gh.hist)]
    for e in range(3):  # (len(dls.train) rows back reached two epochs of a every-2 history)
        want = np.median(gh.global_norm()[(it >= e * n) & (it < (e + 1) * n)])
        assert np.isclose(learn.recorder.values[e][-1], want, rtol=1e-6), (e, learn.recorder.values[e][-1], want)
    assert len(learn.validate()) == 1  # (outside a fit: no column)

@pytest.mark.parametrize('unused', [False, True])
def test_gradient_norms_shared_with_the_guard(unused):
    """With NonFiniteGuard on the same gradients, GradientHealth reads the guard's norms (one multi-tensor norm a batch, not two): the same history;
    with a parameter that gets no gradient (an unused head) the guard's norms leave it out, and GradientHealth takes its own"""
    from fastai.losses import CrossEntropyLossFlat
    from fastai.callback.training import GradientAccumulation
    class M(nn.Module):
        def __init__(s): super().__init__(); s.body, s.spare = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), nn.Linear(2, 2)
        def forward(s, x): return s.body(x)
    hist = {}
    for name, extra in [('alone', []), ('guarded', [NonFiniteGuard()]), ('accumulated', [NonFiniteGuard(), GradientAccumulation(64)]),
                        ('with HealthCheck', [NonFiniteGuard(), HealthCheck(report=False)])]:  # (HealthCheck's before_fit ran GradientHealth's before the guard's: it raised)
        torch.manual_seed(0)
        m = M() if unused else M().body
        own = [] if name == 'with HealthCheck' else [GradientHealth(warn=False, update_every=3)]  # (HealthCheck's own: it ran its before_fit before the guard's)
        learn = quiet(Learner(digits_dls(n_train=256, bs=32), m, loss_func=CrossEntropyLossFlat(), cbs=[*own, *extra]))
        learn.fit(2, 1e-3)
        gh = learn.gradient_health
        assert (gh._guard is not None) == bool(extra)  # (with an unused parameter the guard offers no norms: each batch, its own)
        hist[name] = gh.to_df(per='param')
    a, b = hist['alone'], hist['guarded']
    assert len(a) == len(b) and np.array_equal(a.grad_norm.values, b.grad_norm.values, equal_nan=True)
    assert np.array_equal(a.update_ratio.values, b.update_ratio.values, equal_nan=True)
    c = hist['accumulated']  # (steps every 2nd batch: the guard's norms of the batch that steps are the accumulated gradients')
    assert len(c) == len(a) // 2 and np.isfinite(c.grad_norm.dropna()).all()
    assert np.array_equal(a.grad_norm.values, hist['with HealthCheck'].grad_norm.values, equal_nan=True)

@pytest.mark.parametrize('order', [0, 7])
def test_gradient_norms_not_shared_past_a_callback_that_changes_them(order):
    "A callback between the guard's after_backward and GradientHealth's before_step that halves the gradients: the norms recorded are the halved ones"
    from fastai.optimizer import SGD
    class Halve(Callback):
        def before_step(self):
            for p in self.model.parameters(): p.grad.mul_(0.5)
    class Lookalike(Callback):  # (a user's own logger with the same attribute names: it was taken for the guard)
        def before_fit(self): self.params, self.grad_norms = list(self.model.parameters()), []
    def run(guard):
        from fastai.data.core import DataLoaders
        from fastai.data.load import DataLoader
        torch.manual_seed(0)
        ds = [(torch.randn(4), torch.tensor(i % 2)) for i in range(32)]
        h = Halve(); h.order = order
        learn = quiet(Learner(DataLoaders(DataLoader(ds, bs=8), DataLoader(ds, bs=8)), nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
                              loss_func=nn.CrossEntropyLoss(), opt_func=SGD, cbs=[GradientHealth(warn=False), h, Lookalike(), *([NonFiniteGuard()] if guard else [])]))
        learn.fit(1, 0.1)
        return learn.gradient_health.to_df()['grad_norm'].values
    assert np.array_equal(run(False), run(True))

def test_growing_weights_without_weight_decay_remedied():
    "HealthCheck's remedy for weights growing without bound, in a fit with no weight decay (fastai's SGD): AdaptiveWD('awd') scaled"
    "the fit's λ, 0, and did nothing; now 'equilibrium' from 0.01, which brings the growth to its equilibrium (the finding clears)"
    from functools import partial
    from fastai.optimizer import SGD
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from initcb.wd import AdaptiveWD
    torch.manual_seed(0)
    x = torch.randn(256, 4); y = x.sum(1, keepdim=True) + 0.1 * torch.randn(256, 1)
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=16), DataLoader(list(zip(x[:16], y[:16])), bs=16))
    m = nn.Sequential(nn.Linear(4, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 1))
    with torch.no_grad():
        for l in (m[0], m[3]): l.weight.mul_(0.01)  # small weights under BatchNorm: scale-invariant, their norm grows every step
    hc = HealthCheck(remedy={'growing'}, report=False, columns=False)
    learn = quiet(Learner(dls, m, loss_func=nn.MSELoss(), opt_func=partial(SGD, mom=0.9), cbs=hc))
    learn.fit(6, 0.05)
    acts = hc.actions
    assert list(acts.action) == ['AdaptiveWD'] and "'equilibrium'" in acts.detail[0]
    assert not any(p.startswith('weights growing') for p in hc.report.problem) and learn.opt.hypers[0]['wd'] == 0

class _Res(nn.Module):
    "Dead units (biases -5) behind `act`, which feeds a residual add (no chain ReDo follows ends in it), and `act2`, which ReDo follows"
    def __init__(s):
        super().__init__(); s.inp, s.a, s.act, s.b, s.act2, s.out = nn.Linear(64, 32), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
        with torch.no_grad(): s.a.bias.sub_(5.); s.b.bias.sub_(5.)
    def forward(s, x):
        h = s.inp(x.flatten(1))
        return s.out(s.act2(s.b(h + s.act(s.a(h)))))

class _Branchy(_Res):
    "Data-dependent control flow: torch.fx cannot trace it"
    def forward(s, x): return super().forward(x) if x.sum() > -1e9 else x

def test_dead_units_ReDo_cannot_reach_say_so():
    "Dead units behind an activation no followable layer ends in (a residual add): the remedy was ReinitDormant, which then did nothing"
    torch.manual_seed(0)
    learn = quiet(Learner(digits_dls(), _Res(), loss_func=nn.CrossEntropyLoss(), cbs=HealthCheck(report=False)))
    learn.fit(1, 1e-3)
    rep = learn.health_check.report.set_index('layer')
    assert rep.loc['act', 'problem'] == 'dead units' and rep.loc['act', 'callback'] == '' and 'cannot follow' in rep.loc['act', 'remedy']
    assert rep.loc['act2', 'problem'] == 'dead units' and rep.loc['act2', 'callback'] == 'ReinitDormant'
    torch.manual_seed(0)
    learn = quiet(Learner(digits_dls(), _Branchy(), loss_func=nn.CrossEntropyLoss(), cbs=HealthCheck(report=False)))
    learn.fit(1, 1e-3)
    assert 'cannot be traced by torch.fx' in learn.health_check.report.set_index('layer').loc['act', 'remedy']

def test_healthcheck_says_which_dead_units_it_cannot_revive():
    "HealthCheck(remedy='dead') revives what ReDo reaches and says, once a fit, which dead activations it cannot and why (it said nothing)"
    for model, stuck, why in ((_Res(), ['act'], 'it feeds add, which ReDo cannot follow'), (_Branchy(), ['act', 'act2'], 'cannot be traced by torch.fx')):
        torch.manual_seed(0)
        learn = quiet(Learner(digits_dls(), model, loss_func=nn.CrossEntropyLoss(), cbs=HealthCheck(remedy='dead', report=False)))
        for _ in range(2): learn.fit(2, 1e-3)
        acts = learn.health_check.actions
        said = acts[acts.action == 'not revived']
        assert said.detail.str.split(':').str[0].tolist() == stuck * 2, acts  # (once a fit each)
        assert said.detail.str.contains(why, regex=False).all() and said.detail.str.contains('% of its units dead').all(), said.detail.tolist()
        assert (acts.action == 'ReinitDormant').any() == (len(stuck) == 1), acts  # (act2's units, behind b: revived where traced)
        n = len(learn.dls.train)  # (each action at an epoch's end, in the recorders' count of batches: the second fit's after the first's)
        assert (acts.batch % n == 0).all() and acts.batch.is_monotonic_increasing and said.batch.tolist() == [n] * len(stuck) + [3 * n] * len(stuck), acts
        hc = learn.health_check; assert hc._chains is None  # (the traced model is dropped at the fit's end, and from a pickle however the fit ended)
        hc._chains = unit_chains(model); assert hc.__getstate__()['_chains'] is None; hc._chains = None

def _awd_lm(poison_at=None):
    "fastai's AWD_LSTM language model on random tokens (LMDataLoader), a TextLearner, and a NonFiniteGuard"
    import random
    from fastai.text.all import get_language_model, AWD_LSTM, LMDataLoader, TensorText, TextLearner, CrossEntropyLossFlat
    from fastai.data.core import DataLoaders
    torch.manual_seed(0); random.seed(0)
    toks = [TensorText(torch.randint(2, 60, (random.randint(20, 80),))) for _ in range(40)]
    dls = DataLoaders(LMDataLoader(toks[:32], bs=8, seq_len=16, shuffle=True), LMDataLoader(toks[32:], bs=8, seq_len=16))
    model = get_language_model(AWD_LSTM, 60, config=dict(emb_sz=32, n_hid=48, n_layers=2, pad_token=1, tie_weights=True, out_bias=True, output_p=0.1))
    guard = NonFiniteGuard(max_skips=3, verbose=False)
    learn = quiet(TextLearner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=[guard]))
    return learn, model, guard

def test_guard_restores_a_carried_hidden_state():
    "AWD_LSTM carries `hidden` from batch to batch: a skipped batch left NaN there and every later batch was skipped too"
    learn, model, guard = _awd_lm()
    lstm = model[0].rnns[1].module
    def poison(m, i, o):
        if learn.training and learn.train_iter == 3: out, (h, c) = o; return out * math.nan, (h * math.nan, c * math.nan)
    lstm.register_forward_hook(poison)
    learn.fit(1, 1e-3)
    assert guard.skips == [3] and all(torch.isfinite(h).all() for hc in model[0].hidden for h in hc)

def test_guard_locates_in_a_text_models_backward():
    "A text model's output is a (logits, raw, dropped) tuple that fastai's RNNCallback reduces to its first element: the"
    "replay called the loss on the tuple, failed, and the report said 'non-finite loss' where the loss was finite"
    learn, model, guard = _awd_lm()
    lstm = model[0].rnns[0].module
    def poison(m, i, o):
        if learn.training and learn.train_iter == 2 and o[0].requires_grad: o[0].register_hook(lambda g: g * math.nan)
    lstm.register_forward_hook(poison)
    learn.fit(1, 1e-3)
    ev = guard.events
    assert list(ev['batch']) == [2] and ev['where'][0] == 'backward' and 'rnns.0' in ev['layer'][0] and 'loss' not in ev['message'][0].split(' at ')[0]

def test_relu6_floor_is_no_saturation():
    "MobileNetV2's ReLU6 after BatchNorm: half its outputs are 0, a ReLU's zeros; they were counted saturated (every ReLU6 reported"
    "'saturated activation' on a healthy model). Its cap, 6, still counts"
    def net(scale):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(), nn.Flatten(), nn.Linear(8 * 64, 10))
        with torch.no_grad(): m[1].weight.fill_(scale)
        return m
    learn = quiet(Learner(digits_dls(), net(1.), loss_func=nn.CrossEntropyLoss(), cbs=HealthCheck(report=False)))
    learn.fit(1, 1e-3)
    assert 'saturated activation' not in set(learn.health_check.report.problem)
    assert learn.health_check.ah.summary().loc['2', '% saturated'] < 5 and learn.health_check.ah.summary().loc['2', '% near zero'] > 30
    learn = quiet(Learner(digits_dls(), net(50.), loss_func=nn.CrossEntropyLoss(), cbs=ActivationHealth(sample_every=1)))
    learn.fit(1, 1e-3)
    assert learn.activation_health.summary().loc['2', '% saturated'] > 20  # (BatchNorm scaled x50: most positives at the cap)

@pytest.mark.parametrize('spike,sev', [(5., 'warning'), (1000., 'error')])
def test_exploding_spike_within_the_fits_range_is_a_warning(spike, sev):
    "A converged fit's running median falls to ~0.05 and an ordinary spike (5, below the 10 of its first batches) was an"
    "'error'; one above anything the fit had before stays one"
    from fastai.optimizer import SGD
    class Grads(Callback):  # (the global gradient norm chosen batch by batch: 10 early on, then 0.05, one spike at batch 30)
        order = GradientHealth.order - 1
        def before_step(self):
            i = self.learn.train_iter; v = 10. if i < 10 else spike if i == 30 else 0.05
            ps = [p for p in self.learn.model.parameters()]
            n = sum(p.numel() for p in ps)
            for p in ps: p.grad = torch.full_like(p, v / n ** 0.5)
    gh = GradientHealth(warn=False)
    learn = quiet(synth_learner(n_trn=40, cbs=[Grads(), gh], lr=0.)); learn.opt_func = SGD
    learn.fit(1, 0.)
    f = learn.health_report(verbose=False).set_index('problem').loc['exploding gradients']
    assert f['severity'] == sev and ('none above' in f['evidence']) == (sev == 'warning')


# --- the loss rules, and findings weighed against the loss (an audit of healthy and failing fits, 2026-11-27) ---

def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))

def test_learning_rate_far_too_high_is_named_and_not_made_worse():
    "SGD at lr=5: the report said 'raise the learning rate' (stalled) and remedy=True re-initialized 200/200 units an epoch and added weight decay"
    from fastai.optimizer import SGD
    for remedy in (False, True):
        learn = quiet(Learner(digits_dls(flat=True), mlp(), loss_func=nn.CrossEntropyLoss(), opt_func=SGD, cbs=HealthCheck(remedy=remedy, report=False)))
        with warnings.catch_warnings(): warnings.simplefilter('ignore'); learn.fit(2, 5.)
        rep = learn.health_check.report
        assert rep.problem.iloc[0] == 'loss diverging' and rep.severity.iloc[0] == 'error', rep
        assert 'lower the learning rate' in rep.remedy.iloc[0]
        sym = rep[rep.problem.isin(['stalled updates', 'no gradient reaches it', 'dead units', 'weights growing without bound'])]
        assert len(sym) and sym.remedy.str.startswith('likely a symptom of the diverging loss').all() and (sym.callback == '').all(), sym
        if remedy:
            acts = learn.health_check.actions
            assert 'held back' in set(acts.action) and not acts.action.isin(['ReinitDormant', 'AdaptiveWD']).any(), acts
            # (clipped at the scale before the first flag, not at the exploded one)
            clip = next(c for c in learn.cbs if isinstance(c, GradientClip)).max_norm
            gh = learn.gradient_health
            first = gh.events.batch[gh.events.kind.isin(['exploding', 'nonfinite'])].min()
            assert clip < gh.global_norm()[gh.hist.iters[:len(gh.hist)] == first][0]

def test_chance_level_loss_is_a_finding():
    "A deep sigmoid MLP after LSUVInit ends at ln(10): 'no findings' before"
    import fastai.callback.schedule  # (Learner.fit_one_cycle)
    from initcb.init import LSUVInit
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 100), nn.Sigmoid(), *[l for _ in range(8) for l in (nn.Linear(100, 100), nn.Sigmoid())], nn.Linear(100, 10))
    learn = quiet(Learner(digits_dls(flat=True), m, loss_func=nn.CrossEntropyLoss(), cbs=[HealthCheck(report=False), LSUVInit(verbose=False)]))
    learn.fit_one_cycle(3, 3e-3)
    rep = learn.health_check.report
    assert rep.problem.iloc[0] == 'loss at chance level', rep
    # a healthy fit of the same data: none of the loss rules
    learn = quiet(Learner(digits_dls(flat=True), mlp(), loss_func=nn.CrossEntropyLoss(), cbs=HealthCheck(report=False)))
    learn.fit_one_cycle(2, 3e-3)
    assert not learn.health_check.report.problem.str.startswith('loss').any(), learn.health_check.report

def test_loss_rules_on_given_curves():
    from initcb.report import _loss_rules
    th, up, flat, down = Thresholds(), np.linspace(1, 5, 60), np.full(60, 2.), np.geomspace(2.3, 0.1, 60)
    assert _loss_rules(up, th)[0]['problem'] == 'loss diverging'
    assert _loss_rules(flat, th)[0]['problem'] == 'loss not decreasing'
    assert _loss_rules(flat, th, chance=math.log(7))[0]['problem'] == 'loss at chance level'
    assert _loss_rules(down, th, chance=math.log(10)) == [] and _loss_rules(None, th) == [] and _loss_rules(up[:5], th) == []
    assert _loss_rules(flat[:30], th) == []  # (shorter than `min_batches`: too short to call it a plateau)
    f = _loss_rules(flat, th, before=120)[0]  # (the recorders saw 120 batches before this fit: a model trained before)
    assert (f['problem'], f['severity']) == ('loss not decreasing', 'info') and '120 batches recorded before it' in f['evidence'], f
    assert _loss_rules(up, th, before=120)[0]['severity'] == 'error' and _loss_rules(flat, th, math.log(7), before=120)[0]['severity'] == 'error'

def test_a_fit_resumed_at_the_optimum_is_no_plateau_warning():
    "A second fit of a model the first brought to its optimum: 'loss not decreasing' was a warning, its remedy 'check the learning rate'"
    from fastai.test_utils import synth_learner
    learn = quiet(synth_learner(n_trn=40, cbs=HealthCheck(report=False)))
    learn.fit(6, 1e-1)
    assert not learn.health_check.report.problem.str.startswith('loss').any(), learn.health_check.report
    learn.fit(2, 1e-1)  # (at its optimum: the loss only wanders)
    rep = learn.health_check.report
    row = rep[rep.problem == 'loss not decreasing']
    assert list(row.severity) == ['info'] and row.remedy.iloc[0].startswith('nothing'), rep

class _Flags(GradientHealth):
    "A GradientHealth whose flags are set by hand, after a real short fit"
    def inject(self, *evs): self._events = [dict(batch=b, kind=k, layer=l, value=v, message='m') for b, k, l, v in evs]

def _flagged(model, evs, losses, chance=None):
    from initcb.report import _gradient_rules
    gh = _Flags(warn=False)
    learn = quiet(Learner(digits_dls(flat=True, n_train=256), model, loss_func=nn.CrossEntropyLoss(), cbs=gh))
    learn.fit(1, 1e-3)
    gh.inject(*evs)
    return pd_rows(_gradient_rules(gh, Thresholds(), learn.model, np.asarray(losses, float) if losses is not None else None, chance))

def pd_rows(rows): return {(r['layer'], r['problem']): r for r in rows}

def test_severity_follows_the_loss():
    "A spike the loss fell after (healthy LSTM, Transformer) and small updates of a converged model: 'info'; vanishing in a norm layer: none"
    m = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    n = 4  # batches in that fit
    falling, rising = np.array([2., 1.9, 1.8, 0.01]), np.linspace(2., 3., n)  # (the start: the least of the first three)
    evs = [(2, 'exploding', None, 5.), (1, 'vanishing', '1', 1e-6), (1, 'vanishing', '0', 1e-6), (3, 'stalled', '3', 1e-7)]
    r = _flagged(m, evs, falling)
    assert r[('(all)', 'exploding gradients')]['severity'] == 'info' and r[('(all)', 'exploding gradients')]['callback'] == ''
    assert ('1', 'vanishing gradients') not in r and ('0', 'vanishing gradients') in r  # (the BatchNorm1d: left out; the Linear: kept)
    assert r[('3', 'stalled updates')]['severity'] == 'info'
    r = _flagged(m, evs, rising)
    assert r[('(all)', 'exploding gradients')]['severity'] == 'error' and r[('3', 'stalled updates')]['severity'] == 'warning'
    r = _flagged(m, evs, None)
    assert r[('(all)', 'exploding gradients')]['severity'] == 'error'

def test_healthcheck_diagnosing_a_nan_run_still_reports():
    "lr=100: the guard's max_skips ended the fit with a RuntimeError and the report was lost"
    from fastai.optimizer import SGD
    hc = HealthCheck(report=False)
    learn = quiet(Learner(digits_dls(flat=True), mlp(), loss_func=nn.CrossEntropyLoss(), opt_func=SGD, cbs=hc))
    with pytest.warns(UserWarning, match='the fit stops here'): learn.fit(2, 100.)
    assert hc.report is not None and hc.report.problem.str.contains('non-finite').any(), hc.report
    assert n_hooks(learn.model) == 0
    g = NonFiniteGuard(max_skips=1, verbose=False)  # (the guard alone: an error, as before)
    learn = quiet(Learner(digits_dls(flat=True), mlp(), loss_func=nn.CrossEntropyLoss(), opt_func=SGD, cbs=g))
    with pytest.raises(RuntimeError, match='max_skips'): learn.fit(1, 100.)

@pytest.mark.parametrize('kw', [dict(remedy='Dead'), dict(remedy='explode'), dict(remedy=1), dict(remedy=[1]), dict(thresholds=dict(dead_frac=0.5)),
                                dict(guard='yes'), dict(report=None), dict(columns=1)])
def test_healthcheck_bad_arguments(kw):
    bad_argument_named(HealthCheck, kw)

@pytest.mark.parametrize('kw', [dict(at_max='skip'), dict(policy='ignore'), dict(verbose='no')])
def test_guard_bad_arguments(kw): bad_argument_named(NonFiniteGuard, kw)

def test_thresholds_bad_arguments():
    for kw in (dict(diverge=0.5), dict(plateau=1.5), dict(min_batches=0)): bad_argument_named(Thresholds, kw)
    with pytest.raises(ValueError, match='`thresholds`'): quiet(synth_learner(n_trn=2)).health_report(thresholds=dict(dead_frac=0.5))

class WrapInFit(Callback):
    "Wraps the model for the length of a fit, as fastai's DistributedTrainer does with DDP (here DataParallel: a CPU has no NCCL)"
    def __init__(self, order): self.order = order  # (-20: before the recorders set up; 11: DistributedTrainer's, after)
    def before_fit(self): self.learn.model = nn.DataParallel(self.learn.model)
    def after_fit(self): self.learn.model = self.learn.model.module

@pytest.mark.parametrize('wrap', ['DataParallel', -20, 11])
def test_one_name_per_layer_in_a_wrapped_model(wrap):
    """Under DDP (here DataParallel) every dead-units row said ReinitDormant could not follow the layer; and the recorders named layers
    'module.2' where ReinitDormant and the model the report read after the fit said '2': a model wrapped for the fit only (fastai's
    DistributedTrainer) got no remedy. Every recorder, event and report now names a layer as the model inside its wrappers does"""
    from initcb.init import check_init
    def net():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        with torch.no_grad(): m[1].bias.sub_(3.)
        return m
    cbs = [HealthCheck(report=False), GradientHealth(warn=False)] + ([WrapInFit(wrap)] if wrap != 'DataParallel' else [])
    learn = quiet(Learner(digits_dls(), nn.DataParallel(net()) if wrap == 'DataParallel' else net(), loss_func=nn.CrossEntropyLoss(), cbs=cbs))
    learn.fit(1, 1e-3)
    rep = learn.health_check.report
    dead = rep[rep.problem == 'dead units']
    assert list(dead.layer) == ['2'] and (dead.callback == 'ReinitDormant').all(), rep
    names = {n for n, _ in (learn.model.module if wrap == 'DataParallel' else learn.model).named_modules()}
    assert set(learn.activation_health.names) <= names and set(learn.gradient_health.layers) <= names, learn.activation_health.names
    assert set(rep.layer) - {'(all)'} <= names and set(check_init(learn.model).layer) <= names, rep

@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 100.), min_size=10, max_size=80))
def test_loss_rules_property(curve):
    "At most one loss finding; never 'diverging' for a curve that ends at or below all of its first three, always for one that ends above `diverge` x all of them"
    from initcb.report import _loss_rules
    th, v = Thresholds(), np.array(curve)
    f = _loss_rules(v, th, chance=math.log(10))
    assert len(f) <= 1
    div = len(f) == 1 and f[0]['problem'] == 'loss diverging'
    if v[-1] <= v[:3].min(): assert not div
    if v[-1] > th.diverge * v[:3].max(): assert div
    if len(v) < th.min_batches: assert not f or div  # (the other two need min_batches)


# --- a review of this change (2026-11-28): the loss mapping, the memo, wrapped names ---

def _cls_dls(n=2048, d=10, c=4, bs=32, dtype=torch.float32):
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=dtype); y = (x @ torch.randn(d, c, generator=g, dtype=dtype)).argmax(1)
    ds = list(zip(x, y)); dls = DataLoaders(DataLoader(ds, bs=bs, shuffle=True), DataLoader(ds[:256], bs=bs)); dls.c = c
    return dls

def test_guard_memo_with_a_gradient_list_that_changes_length():
    "A float64 model with a layer unused every other batch (grads set to None): the guard's memo positions ran past the shorter list (IndexError)"
    from functools import partial
    from fastai.optimizer import OptimWrapper
    class M(nn.Module):
        def __init__(s): super().__init__(); s.a, s.b, s.k = nn.Linear(10, 4), nn.Linear(10, 4), 0
        def forward(s, x): s.k += 1; return s.a(x) + (s.b(x) if s.k % 2 else 0)
    learn = quiet(Learner(_cls_dls(dtype=torch.float64), M().double(), loss_func=lambda p, y: nn.functional.cross_entropy(p.float(), y),
                          opt_func=partial(OptimWrapper, opt=torch.optim.SGD), lr=1e-2, cbs=[NonFiniteGuard()]))
    learn.fit(1)
    assert learn.non_finite_guard.skips == []

def test_a_flag_before_the_loss_went_nan_is_an_error():
    "The loss cut at its first NaN shifted the flag's batch onto the fit's first loss: 'info: the loss fell after it' for a fit that blew up"
    from fastai.optimizer import SGD
    class Blow(Callback):
        order = 1
        def after_backward(self):
            if self.training and self.train_iter == 100:
                for p in self.model.parameters(): p.grad.mul_(100.)
            if self.training and self.train_iter == 150:
                for p in self.model.parameters(): p.grad.fill_(float('nan'))
    torch.manual_seed(0)
    learn = quiet(Learner(_cls_dls(n=8192), nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4)), loss_func=nn.CrossEntropyLoss(),
                          opt_func=SGD, lr=0.1, cbs=[Blow(), GradientHealth(warn=False)]))
    learn.fit(1)
    rep = learn.health_report(verbose=False)
    assert (rep.loc[rep.problem == 'exploding gradients', 'severity'] == 'error').all() and (rep.problem == 'exploding gradients').any(), rep

def test_chance_level_only_for_a_mean_cross_entropy():
    from initcb.report import _chance_loss
    learn = quiet(Learner(_cls_dls(), nn.Linear(10, 4), loss_func=nn.CrossEntropyLoss()))
    assert math.isclose(_chance_loss(learn), math.log(4))
    learn.dls.c = np.int64(4); assert math.isclose(_chance_loss(learn), math.log(4))  # (a NumPy int: the rule was off)
    for lf in (nn.CrossEntropyLoss(reduction='sum'), nn.CrossEntropyLoss(label_smoothing=0.1), nn.CrossEntropyLoss(weight=torch.ones(4)), nn.MSELoss()):
        learn.loss_func = lf; assert _chance_loss(learn) is None, lf

@pytest.mark.parametrize('rec', [GradientHealth, ActivationHealth])
def test_lr_find_after_a_fit_leaves_the_report_alone(rec):
    "The Recorder's losses became lr_find's, whose loss rises by design: 'loss diverging' (error) on a healthy model (with ActivationHealth alone too)"
    import fastai.callback.schedule
    learn = quiet(Learner(_cls_dls(), nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4)), loss_func=nn.CrossEntropyLoss(),
                          cbs=rec(warn=False) if rec is GradientHealth else rec()))
    learn.fit(1, 1e-2)
    before = learn.health_report(verbose=False)
    n = len(learn.recorder.losses)
    with warnings.catch_warnings(): warnings.simplefilter('ignore'); learn.lr_find(show_plot=False)
    after = learn.health_report(verbose=False)
    assert not after.problem.str.startswith('loss').any() and len(after) == len(before), after
    learn.validate()  # (the Recorder starts an empty list: the rules still read the fit's)
    from initcb.report import _losses
    assert len(_losses(learn, getattr(learn, 'gradient_health', None), getattr(learn, 'activation_health', None))) == n

def test_norm_layer_vanishing_skipped_in_a_wrapped_model():
    "The norm-layer exception looked names up without DataParallel's 'module.' prefix: the BatchNorm came back as vanishing (the recorders now name layers as the model inside does)"
    m = nn.DataParallel(nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)))
    r = _flagged(m, [(1, 'vanishing', '1', 1e-6), (1, 'vanishing', '0', 1e-6)], None)
    assert ('1', 'vanishing gradients') not in r and ('0', 'vanishing gradients') in r, list(r)


# --- an audit of 2026-11-28 (task types and callbacks): loss rules on a fit that blows up at once ---

def test_a_fit_blown_up_at_its_second_batch_is_diverging():
    "The start was the median of the first three smoothed losses, already blown up: no 'loss diverging', and a loss 42x ln(10) was 'at chance level'"
    from initcb.report import _loss_rules
    th = Thresholds()
    v = np.concatenate([[2.3, 3329., 5481.], np.geomspace(4956., 96.4, 60)])
    f = _loss_rules(v, th, chance=math.log(10))
    assert [x['problem'] for x in f] == ['loss diverging'] and 'loss 2.3 at the start' in f[0]['evidence'], f
    back = np.concatenate([[0.70, 71., 80.], np.geomspace(65., 0.85, 60)])  # blew up, fell back part way: above its start at the end
    assert _loss_rules(back, th)[0]['problem'] == 'loss not decreasing'
    spike = np.concatenate([[0.70, 0.69, 0.68], np.full(5, 3.), np.geomspace(1., 0.1, 60)])  # an early spike it learned on through
    assert _loss_rules(spike, th) == []
    rng = np.random.default_rng(0)  # (a review: the least of the first three took a lucky first batch of a noisy fit for its start)
    noisy = np.concatenate([[2.07, 1.04, 0.82], 0.85 + 0.05 * rng.standard_normal(60)])
    tiny = np.concatenate([[0.001, 0.025, 0.02], 0.02 + 0.002 * rng.standard_normal(60)])  # a trained model fine-tuned: batch losses vary 25x
    assert not [f for c in (noisy, tiny) for f in _loss_rules(c, th) if f['problem'] == 'loss diverging']
    above = np.linspace(2.5, 3.5, 60)  # a cross-entropy that learned nothing, ending above ln(10) (not 42x it): at chance level
    assert _loss_rules(above, th, chance=math.log(10))[0]['problem'] == 'loss at chance level'
    assert _loss_rules(np.linspace(2.5, 10., 60), th, chance=math.log(10))[0]['problem'] == 'loss diverging'

def test_blown_up_multilabel_fit_holds_the_remedies_back():
    "BCE multi-label at lr 1: the loss blew up at batch 1; HealthCheck(remedy=True) re-initialized dead units at once, added AdaptiveWD, and called the explosion 'info: the fit went on learning'"
    from fastai.losses import BCEWithLogitsLossFlat
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    import random
    torch.manual_seed(0)
    x = torch.randn(1088, 16); y = (x @ torch.randn(16, 4) > 0).float()
    dls = DataLoaders(DataLoader(list(zip(x[64:], y[64:])), bs=16, shuffle=True, drop_last=True), DataLoader(list(zip(x[:64], y[:64])), bs=32))
    dls.train.rng, dls.c = random.Random(0), 4
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    hc = HealthCheck(remedy=True, report=False)
    learn = quiet(Learner(dls, m, loss_func=BCEWithLogitsLossFlat(), cbs=hc))
    learn.fit(3, 1.0)
    rep, acts = hc.report, hc.actions
    assert rep.problem.isin(['loss not decreasing']).any(), rep  # (it ended above its start, 0.70: the first batch's, before the blow-up)
    assert list(acts.action[acts.epoch == 0]) == ['held back'], acts  # (while it diverged: no ReinitDormant, no AdaptiveWD)
    assert not ((rep.problem == 'exploding gradients') & (rep.severity == 'info')).any(), rep

class _Spike(Callback):
    "Gradients times `f` at training batch `at` of each epoch"
    order = 1
    def __init__(self, at, f): self.at, self.f = at, f
    def after_backward(self):
        if self.training and self.iter == self.at:
            for p in self.model.parameters(): p.grad.mul_(self.f)

def test_report_reads_the_last_fit():
    "HealthCheck on the learner (histories run on): the second fit's report repeated the first fit's scale drift and explosion, long gone"
    from initcb.init import init_weights
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad(): m[2].weight.mul_(1e-3); m[2].bias.mul_(1e-3)  # three orders of magnitude lost at layer 2
    learn = quiet(Learner(digits_dls(flat=True, n_train=256), m, loss_func=nn.CrossEntropyLoss(), cbs=HealthCheck(report=False)))
    learn.fit(1, 1e-3, cbs=_Spike(3, 1e8))
    old = {'activation scale drifts through depth', 'exploding gradients'}
    assert old <= set(learn.health_check.report.problem), learn.health_check.report
    init_weights(m)  # the init fixed, no spike: nothing of the first fit's is this one's
    learn.fit(1, 1e-3)
    rep = learn.health_check.report
    assert not rep.problem.isin(old).any(), rep

def test_report_batch_of_the_wrong_shape_names_xb():
    "learn.health_report(xb=...) of the wrong shape raised torch's bare shape error"
    learn = quiet(Learner(digits_dls(flat=True, n_train=128), mlp(), loss_func=nn.CrossEntropyLoss(), cbs=HealthCheck(report=False)))
    learn.fit(1, 1e-3)
    with pytest.raises(ValueError, match='`xb`: the model cannot run'): learn.health_report(xb=torch.randn(4, 3, 8, 8), verbose=False)
    assert len(learn.health_report(xb=torch.randn(4, 64), verbose=False).columns)

def test_explosion_info_only_below_the_start():
    "A flag the loss fell after, but only part way back: an error ('info: the fit went on learning' before)"
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    r = _flagged(m, [(2, 'exploding', None, 5.)], [1., 1.1, 40., 5.])
    assert r[('(all)', 'exploding gradients')]['severity'] == 'error'
    r = _flagged(m, [(2, 'exploding', None, 5.)], [1., 1.1, 40., 0.5])
    assert r[('(all)', 'exploding gradients')]['severity'] == 'info'

def test_explosion_graded_against_this_fits_norms():
    "A review: fit 1's spike (lr 0) made fit 2's explosion a 'warning' ('none above the ... the fit had before') and HealthCheck added no clip"
    from fastai.optimizer import SGD
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    hc = HealthCheck(remedy={'exploding'}, report=False)
    learn = quiet(Learner(digits_dls(flat=True, n_train=512), m, loss_func=nn.CrossEntropyLoss(), opt_func=SGD, cbs=hc))
    learn.fit(1, 0., cbs=_Spike(3, 1e5))  # (lr 0: the spike leaves the weights alone)
    learn.fit(2, 1e-2, cbs=_Spike(3, 1e3))
    r = hc.report.query("problem == 'exploding gradients'")
    assert list(r.severity) == ['error'] and 'GradientClip' in set(hc.actions.action), (r, hc.actions)

def test_nonfinite_in_a_row_straddling_the_fit_start():
    "A thinned history (max_rows=4): fit 2's first batches merged into a row that began in fit 1, and its Inf went unreported"
    from initcb.report import _fit_row
    class InfAt(Callback):
        def before_batch(self):
            if self.training and self.train_iter == 1: self.learn.xb = (self.xb[0].clone().fill_(float('inf')),)
    torch.manual_seed(0)
    ah = ActivationHealth(max_rows=4)
    learn = quiet(Learner(digits_dls(flat=True, n_train=256), nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)),
                          loss_func=nn.CrossEntropyLoss(), cbs=[ah, GradientHealth(warn=False), NonFiniteGuard(verbose=False)]))
    learn.fit(1, 1e-3); learn.fit(3, 1e-3, cbs=InfAt())
    assert 'non-finite activations' in set(learn.health_report(verbose=False).problem)
    assert _fit_row(ah.fast, ah.n_seen + 1) is None  # (a fit that recorded nothing reads nothing: not the whole history)

def test_a_second_fit_does_not_take_the_first_fits_flags_as_new():
    "HealthCheck's first epoch of a second fit read every flag from the first fit on as new: a NaN gradient there added GradientClip here"
    class NaNGrad(Callback):  # a NaN gradient GradientHealth reads, then zeroed before the step: the weights stay finite
        order = GradientHealth.order + 1
        def after_backward(self):
            if self.training and self.iter == 3:
                for p in self.model.parameters(): p.grad.fill_(float('nan'))
        def before_step(self):  # (after GradientHealth's: it read the NaN)
            if self.training and self.iter == 3:
                for p in self.model.parameters(): p.grad.zero_()
    torch.manual_seed(0)
    hc = HealthCheck(report=False, guard=False)  # (no guard: the NaN step is taken, GradientHealth flags it)
    learn = quiet(Learner(digits_dls(flat=True, n_train=256), mlp(), loss_func=nn.CrossEntropyLoss(), cbs=hc))
    learn.fit(1, 1e-3, cbs=NaNGrad())
    assert 'nonfinite' in set(hc.gh.events.kind)
    hc.remedy = {'exploding'}  # (the remedies switched on for the next fit, a healthy one)
    learn.fit(1, 1e-3)
    assert 'GradientClip' not in set(hc.actions.action), hc.actions

class _Gated(nn.Module):
    "A branch used on every 30th training batch only (a gated path, a routed expert)"
    def __init__(s): super().__init__(); s.n, s.l1, s.act, s.br, s.head = 0, nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 10)
    def forward(s, x):
        h = s.act(s.l1(x.flatten(1)))
        if s.training:
            s.n += 1
            if s.n % 30 == 0: h = h + s.br(h)
        return s.head(h)

def test_a_layer_used_on_some_batches_is_not_called_unused():
    "'no gradient' for 20 batches, but gradients on others: the report said 'not used in the forward pass' and advised freezing it"
    torch.manual_seed(0)
    learn = quiet(Learner(digits_dls(), _Gated(), loss_func=nn.CrossEntropyLoss(), cbs=HealthCheck(report=False)))
    learn.fit(3, 3e-3)
    r = learn.health_check.report.set_index('layer').loc['br']
    assert r.problem == 'no gradient reaches it' and r.severity == 'info' and 'used on some batches only' in r.evidence, r.to_dict()
    assert 'freeze' not in r.remedy and r.remedy == NO_GRADIENT_SOME


@pytest.mark.parametrize('act', [None, nn.ReLU()])
def test_no_activation_module_said_not_a_nan_column(act, capsys):
    "A Transformer calls F.relu: no activation module to score, and HealthCheck's 'dead %' column was NaN every epoch, unexplained"
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from initcb.report import NO_ACTIVATION
    class Net(nn.Module):
        def __init__(s):
            super().__init__(); s.emb = nn.Linear(3, 16); s.out = nn.Linear(16, 1)
            s.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, **({} if act is None else dict(activation=act))), 1, enable_nested_tensor=False)
        def forward(s, x): return s.out(s.enc(s.emb(x))[:, -1]).squeeze(-1)
    torch.manual_seed(0); x, y = torch.randn(32, 5, 3), torch.randn(32)
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=16), DataLoader(list(zip(x[:16], y[:16])), bs=16))
    learn = Learner(dls, Net(), loss_func=nn.MSELoss(), cbs=HealthCheck())
    with learn.no_bar(): learn.fit(1, 1e-3)
    out = capsys.readouterr().out
    cols = learn.recorder.metric_names
    if act is None: assert 'dead %' not in cols and 'grad norm' in cols and f'note: {NO_ACTIVATION}' in out, (cols, out)
    else: assert 'dead %' in cols and np.isfinite(learn.recorder.values[-1][cols.index('dead %') - 1]) and 'note:' not in out, (cols, out)


def test_no_drift_finding_for_a_norm_layer():
    "xresnet's zero-initialized BatchNorm ending a residual branch: 0 at the first fit, small but not 0 from the second on, 'activation scale drifts through depth'"
    from initcb.report import _activation_rules
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
    with torch.no_grad(): m[1].weight.fill_(1e-3); m[3].weight.mul_(1e5)  # (a tiny scale: its output rms 1e-3, orders under the last layer's)
    x = torch.randn(64, 8); y = torch.randn(64, 1)
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=16), DataLoader(list(zip(x[:16], y[:16])), bs=16))
    ah = ActivationHealth(modules=lambda n, mod: isinstance(mod, (nn.Linear, nn.BatchNorm1d)))
    learn = quiet(Learner(dls, m, loss_func=nn.MSELoss(), cbs=ah)); learn.fit(1, 0.)
    assert ah.fast['rms'][0][2] > 1e3 * ah.fast['rms'][0][1]  # (the case: the norm layer's output orders below the last layer's)
    assert not [f for f in _activation_rules(learn, ah, Thresholds(), None) if f['problem'].startswith('activation scale')]


def test_nan_in_the_data_is_no_learning_rate_problem(capsys):
    "A missing value in two inputs: the guard said the NaN began in module '0', the report said to lower the learning rate and clip gradients"
    from initcb.report import NAN_INPUT
    dls = digits_dls(flat=True)
    torch.manual_seed(0)
    learn = quiet(Learner(dls, nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), loss_func=nn.CrossEntropyLoss(), cbs=HealthCheck(report=False)))
    class Missing(Callback):
        def before_batch(self):
            if self.training and self.train_iter in (3, 7): x = self.xb[0].clone(); x[0, 5] = float('nan'); self.learn.xb = (x,)
    learn.fit(1, 1e-2, cbs=Missing())
    assert [r['where'] for r in learn.non_finite_guard.reports] == ['input', 'input']
    rep = learn.health_check.report
    nf = rep[rep.problem.str.startswith('non-finite')]
    assert len(nf) and (nf.remedy == NAN_INPUT).all() and nf.evidence.str.contains('inputs at training batches 3, 7').all(), rep
    learn.health_report()  # (the printed table holds the evidence whole)
    assert 'inputs at training batches 3, 7' in capsys.readouterr().out


def test_output_that_ignores_the_input_is_found():
    "A classifier that learned only the class frequencies (ReLUs dead from the init): on imbalanced data its loss ends at their entropy,"
    "well below ln(classes), so the chance rule missed it; with no recorder (or GradientHealth alone) the report said nothing, or 'no gradient' only"
    from sklearn.datasets import load_digits
    from fastai.data.core import DataLoaders
    from fastai.torch_core import set_seed
    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16., dtype=torch.float32), torch.tensor(y)
    keep = (y < 2) | (torch.rand(len(y), generator=torch.Generator().manual_seed(0)) < 0.1)  # (classes 0 and 1: 70% of the data)
    ds = list(zip(X[keep], y[keep]))
    def fit(dead, n=5):
        set_seed(0)
        m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        if dead: nn.init.constant_(m[0].bias, -10.)
        learn = quiet(Learner(DataLoaders.from_dsets(ds[100:], ds[:100], bs=32), m, loss_func=nn.CrossEntropyLoss()))
        learn.dls.c = 10
        before = learn.health_report(verbose=False)
        learn.fit(n, 1e-2)
        return before, learn.health_report(verbose=False), float(learn.recorder.losses[-1])
    before, r, loss = fit(True)
    assert loss < 0.97 * math.log(10) and list(r.problem) == ['output ignores the input'] and r.severity[0] == 'error'
    assert re.search('class [01] first', r.evidence[0]) and 'weight the loss' in r.remedy[0]
    assert 'output ignores the input' not in set(before.problem)  # (before a fit: nothing to read)
    assert 'output ignores the input' not in set(fit(True, 1)[1].problem)  # (a fit shorter than `min_batches`)
    assert 'output ignores the input' not in set(fit(False)[1].problem)  # (a healthy fit)
    with pytest.raises(ValueError, match='`const_out`'): Thresholds(const_out=-1)


def test_replays_leave_the_model_as_it_was():
    "find_nonfinite replayed in train mode: NaN in BatchNorm's running statistics, and `model.zero_grad()` wiped the caller's gradients;"
    "a NaN in the batch check_init and break_symmetry read: NaN gradients never compare equal, a stuck layer read as 'a deliberate init' and left"
    from initcb.init import check_init, break_symmetry
    m = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1)).train()
    m(torch.randn(8, 1)).pow(2).sum().backward(); g = m[0].weight.grad.clone()
    bufs = {k: v.clone() for k, v in m[1].state_dict().items() if 'running' in k or 'num_batches' in k}
    same = lambda: all(torch.equal(m[1].state_dict()[k], v) for k, v in bufs.items()) and torch.equal(m[0].weight.grad, g)
    with torch.no_grad(): m[0].weight[0, 0] = float('inf')
    assert find_nonfinite(m, torch.randn(8, 1), torch.randn(8, 1), nn.MSELoss()) == ('forward', '0') and same()
    with torch.no_grad(): m[0].weight[0, 0] = 1.
    assert find_nonfinite(m, torch.randn(8, 1), torch.randn(8, 1), nn.MSELoss()) == (None, None) and same()
    torch.manual_seed(0)
    z = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 1))
    nn.init.constant_(z[2].weight, .1); nn.init.zeros_(z[2].bias)
    xb = torch.randn(8, 1); xb[3] = float('nan')
    assert check_init(z, xb).set_index('layer').finding['2'].startswith('constant')
    assert '2' in set(break_symmetry(z, xb).layer) and z[2].weight.std() > 0


def test_chance_level_not_called_on_a_fit_still_learning():
    "An init's large logits: the loss starts at 7.5 and comes down through 2 x ln(10) while accuracy climbs to 65%: 'loss at chance level', the model 'has learned nothing'"
    from fastai.losses import CrossEntropyLossFlat
    from fastai.torch_core import set_seed
    set_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10))
    with torch.no_grad(): m[-1].weight.mul_(12)
    learn = quiet(Learner(digits_dls(bs=64), m, loss_func=CrossEntropyLossFlat())); learn.fit(3, 5e-4)
    assert 0.97 * math.log(10) < float(learn.recorder.losses[-1]) < 2 * math.log(10)  # (the case: it ends in the rule's window)
    assert 'loss at chance level' not in set(learn.health_report(verbose=False).problem)


def test_a_fit_with_no_batch_reports_no_loss_of_another():
    "A fit that trains no batch (fit(0), a resumed fit past its end) reported the fit before's loss as its own: 'loss diverging'"
    learn = quiet(synth_learner(n_trn=20, cbs=HealthCheck(report=False)))
    learn.fit(1, 1e-2); learn.fit(1, 3.)  # (the second diverges)
    assert 'loss diverging' in set(learn.health_check.report.problem)
    learn.fit(0)
    assert not learn.health_check.report.problem.str.startswith('loss').any()

@pytest.mark.parametrize('given', [True, False])
def test_report_runs_the_model_once_for_the_output_rule(given):
    "`xb` given: one forward checked it, the output rule ran another on it (HealthCheck passes one at every fit's end)"
    from fastai.vision.all import CrossEntropyLossFlat
    from initcb.core import first_inputs
    torch.manual_seed(0)
    dls = digits_dls(bs=64, flat=True, n_train=256)
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    learn = quiet(Learner(dls, m, loss_func=CrossEntropyLossFlat(), cbs=ActivationHealth()))
    learn.fit(2, 1e-2)
    calls = []
    h = m.register_forward_hook(lambda *a: calls.append(1))
    try: learn.health_report(Thresholds(min_batches=4), verbose=False, xb=first_inputs(dls.valid) if given else None)
    finally: h.remove()
    assert len(calls) == 2  # (the output rule's forward, `dormancy`'s)

def test_a_layer_replaced_after_the_optimizer_was_made_is_reported():
    "A head replaced between fits is in no optimizer group: it never trained, its gradients grew batch after batch, and the report said nothing of it"
    from fastai.vision.all import CrossEntropyLossFlat
    torch.manual_seed(0)
    dls = digits_dls(bs=64, flat=True, n_train=512)
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    gh = GradientHealth()
    learn = quiet(Learner(dls, m, loss_func=CrossEntropyLossFlat(), cbs=gh))
    learn.fit(1, 1e-2)
    assert not len(gh.events)
    learn.model[2] = nn.Linear(32, 10)
    w0 = learn.model[2].weight.detach().clone()
    with pytest.warns(UserWarning, match="layer '2': 2 trainable parameters in no optimizer group"): learn.fit(1, 1e-2)
    assert torch.equal(learn.model[2].weight, w0)  # (the premise: it did not train)
    ev = gh.events
    assert ev[ev.kind == 'not in optimizer'][['layer', 'value']].values.tolist() == [['2', 2.0]]
    r = learn.health_report(verbose=False)
    assert r[r.problem.str.startswith('not trained')][['layer', 'severity']].values.tolist() == [['2', 'error']]
    learn.create_opt(); learn.fit(1, 1e-2)  # (the remedy: nothing flagged in the next fit)
    assert not (learn.health_report(verbose=False).problem.str.startswith('not trained')).any()

def test_report_with_a_loaded_recorder_not_fitted_yet(tmp_path):
    "`ActivationHealth.load` attached to a learner with the same model: the report crashed ('NoneType' object is not subscriptable: no modules before a fit)"
    from fastai.vision.all import CrossEntropyLossFlat
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad(): m[0].bias.fill_(-100.)  # (every unit of the ReLU dead)
    dls = digits_dls(bs=64, flat=True, n_train=128)
    ah = ActivationHealth()
    learn = quiet(Learner(dls, m, loss_func=CrossEntropyLossFlat(), cbs=ah))
    learn.fit(1)
    want = learn.health_report(verbose=False)
    assert 'dead units' in want.problem.tolist()
    a = ActivationHealth.load(ah.save(tmp_path/'ah.npz'))
    l2 = quiet(Learner(dls, m, loss_func=CrossEntropyLossFlat(), cbs=a))
    got = l2.health_report(verbose=False)
    assert got[['layer', 'problem']].values.tolist() == want[['layer', 'problem']].values.tolist()
    other = quiet(Learner(dls, nn.Sequential(nn.Linear(64, 10)), loss_func=CrossEntropyLossFlat(), cbs=ActivationHealth.load(tmp_path/'ah.npz')))
    other.health_report(verbose=False)  # (another model: the rules that read the modules skip the history, no error)

def test_guard_describes_the_input_that_holds_the_nan():
    "Two inputs (`n_inp=2`), a NaN in the second: the message described the first ('input shape (32, 6), 0 non-finite'), contradicting 'non-finite input values'"
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    torch.manual_seed(0)
    a, b = torch.randn(128, 6), torch.randn(128, 4); y = (a[:, 0] > 0).long()
    b[40, 2] = float('nan')
    dls = DataLoaders(DataLoader(list(zip(a, b, y)), bs=32), DataLoader(list(zip(a, b, y)), bs=32)); dls.n_inp = 2
    class Two(nn.Module):
        def __init__(s): super().__init__(); s.fa, s.fb, s.head = nn.Linear(6, 8), nn.Linear(4, 8), nn.Linear(16, 2)
        def forward(s, a, b): return s.head(torch.cat([s.fa(a), s.fb(b)], 1))
    g = NonFiniteGuard(verbose=False)
    learn = quiet(Learner(dls, Two(), loss_func=nn.CrossEntropyLoss(), cbs=g))
    learn.fit(1, 1e-2)
    r = g.reports
    assert [x['where'] for x in r] == ['input'] and 'input 1 shape (32, 4), 1 non-finite' in r[0]['message'], r

def test_a_nan_made_by_a_function_between_modules():
    "A NaN made by `torch.log` between two modules was said to begin in the second ('beginning in module head'), whose input held it already"
    class M(nn.Module):
        def __init__(s): super().__init__(); s.mid, s.head = nn.Linear(4, 8), nn.Linear(8, 2)
        def forward(s, x): return s.head(torch.log(s.mid(x)))  # (a negative entry: NaN)
    class N(nn.Module):
        def __init__(s): super().__init__(); s.mid, s.head = nn.Linear(4, 8), nn.Linear(8, 2)
        def forward(s, x): return s.head(s.mid(x))
    torch.manual_seed(0)
    assert find_nonfinite(M(), torch.randn(16, 4)) == ('function', 'head')
    n = N()
    with torch.no_grad(): n.mid.weight[0, 0] = float('nan')
    assert find_nonfinite(n, torch.randn(16, 4)) == ('forward', 'mid')  # (a module's own NaN: 'forward', as before)

def test_guard_replays_under_the_fits_autocast():
    "Under fp16 autocast (fastai's MixedPrecision, here on a CPU) the replay ran in float32 after fastai left autocast: the overflow did"
    "not happen again and the guard named no module ('non-finite loss'), where ActivationHealth saw it begin in layer '0'"
    from fastai.callback.fp16 import MixedPrecision
    from fastai.optimizer import SGD
    from fastcore.foundation import L
    class CPUMixedPrecision(MixedPrecision):  # (fastai's says 'cuda': a no-op on a CPU; the same callback on 'cpu')
        def before_fit(self): self.autocast, self.learn.scaler, self.scales = torch.autocast('cpu', dtype=torch.float16), torch.amp.GradScaler('cpu'), L()
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    g = NonFiniteGuard(policy='stop', verbose=False)
    learn = quiet(Learner(digits_dls(bs=32, flat=True, n_train=640), m, loss_func=nn.CrossEntropyLoss(), opt_func=SGD, cbs=[g, CPUMixedPrecision()]))
    learn.fit(1, 100)
    assert [(r['where'], r['layer']) for r in g.reports] == [('forward', '0')], g.reports

def test_batches_the_guard_skipped_are_in_the_report():
    "Batches NonFiniteGuard skipped (a NaN loss, gradients that overflow) appeared nowhere in the report unless an activation was non-finite;"
    "and its 'input' evidence read every fit's reports, not the last fit's"
    class NanLoss:
        def __init__(self): self.k = 0
        def __call__(self, o, y):
            self.k += 1; l = nn.functional.cross_entropy(o, y)
            return l * math.nan if self.k in (3, 7) else l  # (the guard's replay calls it again: 8, finite)
    torch.manual_seed(0)
    learn = quiet(Learner(digits_dls(bs=64, flat=True, n_train=512), nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), loss_func=NanLoss(), cbs=HealthCheck(report=False)))
    learn.fit(1, 1e-2)
    r = learn.health_check.report
    row = r[r.problem == 'non-finite values (batches skipped)']
    assert len(row) == 1 and 'NonFiniteGuard skipped or stopped at 2 training batches' in row.evidence.iloc[0], r
    learn.validate()  # (no fit: its `before_fit` took the fit's skips out of the report)
    assert (learn.health_report(verbose=False).problem == 'non-finite values (batches skipped)').sum() == 1
    learn.loss_func = nn.CrossEntropyLoss(); learn.fit(1, 1e-2)
    assert not learn.health_check.report.problem.str.startswith('non-finite').any()  # (the last fit's skips only)

def test_nan_inputs_the_guard_alone_saw_get_the_datas_remedy():
    "NonFiniteGuard alone, NaN in the inputs: its own finding kept the learning-rate remedy, made after the inputs' remedy was given out"
    from initcb.report import NAN_INPUT
    torch.manual_seed(0)
    x, y = torch.randn(128, 4), torch.randn(128, 1); x[40, 1] = math.nan
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=32), DataLoader(list(zip(x, y)), bs=32))
    learn = quiet(Learner(dls, nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)), loss_func=nn.MSELoss(), cbs=NonFiniteGuard(verbose=False)))
    learn.fit(1, 1e-2)
    r = learn.health_report(verbose=False)
    assert r.problem.tolist() == ['non-finite values (batches skipped)'] and r.remedy.iloc[0] == NAN_INPUT and 'input x1' in r.evidence.iloc[0]

def test_an_additive_mask_of_minus_inf_is_no_function_nan():
    "A -inf additive attention mask passed positionally made the attention's own NaN read as a function's before it ('function', 'attn')"
    class Attn(nn.Module):
        def __init__(self, d): super().__init__(); self.qkv = nn.Parameter(torch.randn(3, d, d) / d ** .5)
        def forward(self, x, mask):
            q, k, v = (x @ w for w in self.qkv)
            return (q @ k.transpose(1, 2) / x.shape[-1] ** .5 + mask).softmax(-1) @ v
    class Model(nn.Module):
        def __init__(self, d=8): super().__init__(); self.emb = nn.Linear(4, d); self.attn = Attn(d); self.head = nn.Linear(d, 1)
        def forward(self, x):
            mask = torch.full((x.shape[1],) * 2, -math.inf).triu(1); mask[0, 0] = -math.inf  # (a row all masked: the softmax's NaN)
            return self.head(self.attn(self.emb(x), mask))
    torch.manual_seed(0)
    assert find_nonfinite(Model(), torch.randn(2, 5, 4)) == ('forward', 'attn')


@pytest.mark.parametrize('where', ['forward', 'before_fit'])
def test_columns_go_however_the_fit_ends(where):
    "A fit ended by an exception left 'dead %' and 'grad norm' in `learn.metrics`: `loss, m = learn.validate()` failed (4 values)"
    from fastai.metrics import mae
    class Boom(Callback):
        order = 50  # (after HealthCheck's `before_fit`: its columns are on)
        def before_fit(self):
            if where == 'before_fit': raise RuntimeError('boom')
        def after_pred(self):
            if where == 'forward' and self.training and self.train_iter == 2: raise RuntimeError('boom')
    learn = quiet(synth_learner(n_trn=5, metrics=mae, cbs=HealthCheck(report=False)))
    with pytest.raises(RuntimeError): learn.fit(1, cbs=Boom())
    if where == 'forward': assert [getattr(m, 'name', '') for m in learn.metrics] == ['mae']  # (at once, with the hooks)
    loss, m = learn.validate()  # (a `before_fit` that raised stopped every callback after it: the columns go at the next validate or fit)
    assert [getattr(m, 'name', '') for m in learn.metrics] == ['mae']
    learn.fit(1)
    assert learn.recorder.metric_names[1:-1] == ['train_loss', 'valid_loss', 'mae', 'grad norm']  # (no activation in it: no 'dead %')


def test_a_validate_mid_fit_keeps_the_columns():
    "A callback's `validate` in the middle of a fit: the columns stay, the progress table's rows keep their names"
    from fastai.metrics import mae
    vals = []
    class Check(Callback):
        order = 90
        def after_train(self): vals.append(self.learn.validate())  # (not in `after_epoch`: `validate` calls it)
    learn = quiet(synth_learner(n_trn=5, metrics=mae, cbs=HealthCheck(report=False)))
    learn.fit(2, cbs=Check())
    assert len(vals) == 2 and all(len(v) == 3 for v in vals)  # (loss, mae, grad norm: the column was on)
    assert [getattr(m, 'name', '') for m in learn.metrics] == ['mae']  # (fastai's Recorder rows are muddled by a nested validate: not read)
    assert len(learn.gradient_health.hist) == 10  # (the second epoch recorded too)


class _RNN(nn.Module):
    "A vanilla RNN over the 64 pixels of a digit"
    def __init__(self): super().__init__(); self.rnn, self.head = nn.RNN(1, 8, batch_first=True), nn.Linear(8, 10)
    def forward(self, x): return self.head(self.rnn(x.view(len(x), -1, 1))[0][:, -1])

def test_exploding_severity_order():
    "A converged fit's small spike (17x a median near 0, below its first batches' norms) read 'warning' in 9 of 15 healthy fits:"
    "the loss falling after it now makes it 'info' first. A norm high on most batches is no spike (a vanilla RNN: 66 flags of 66"
    "batches, 'info' as 'the fit went on learning'), nor is a fit whose loss stays above a uniform guess's; an RNN's remedy names its init"
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    falling = np.array([2., 1.9, 1.8, 0.01])
    small = [(2, 'exploding', None, 1e-6)]  # (below every norm the fit had before it)
    f = _flagged(m, small, falling)[('(all)', 'exploding gradients')]
    assert f['severity'] == 'info' and 'went on learning' in f['evidence'], f
    f = _flagged(m, small, falling, chance=0.001)[('(all)', 'exploding gradients')]  # (ended above a uniform guess's loss)
    assert f['severity'] == 'warning', f
    every = [(b, 'exploding', None, 1e3) for b in range(4)]
    f = _flagged(m, every, falling)[('(all)', 'exploding gradients')]
    assert f['severity'] == 'error' and 'not a spike' in f['evidence'] and 'recurrent' not in f['remedy'], f
    f = _flagged(_RNN(), every, falling)[('(all)', 'exploding gradients')]
    assert f['severity'] == 'error' and 'recurrent weights' in f['remedy'], f

def test_loss_above_chance_is_an_error():
    "A vanilla RNN whose gradients exploded ended at loss 144 over 10 classes (ln 10 = 2.3), falling: no loss finding at all"
    from initcb.report import _loss_rules
    th = Thresholds()
    v = np.geomspace(1.4e4, 144, 60)
    f = _loss_rules(v, th, math.log(10))
    assert [(x['problem'], x['severity']) for x in f] == [('loss above chance level', 'error')] and 'still falling' in f[0]['evidence'], f
    assert _loss_rules(v, th) == [] or _loss_rules(v, th)[0]['problem'] != 'loss above chance level'  # (no chance known: no such rule)
    assert _loss_rules(np.geomspace(2.3, 0.05, 60), th, math.log(10)) == []  # (a healthy fit)


class _EmbNet(nn.Module):
    "Digits with an embedding of one pixel's level, started as fastai's tabular models start theirs (std 0.01)"
    def __init__(self):
        super().__init__(); self.emb = nn.Embedding(16, 8); nn.init.normal_(self.emb.weight, std=0.01)
        self.head = nn.Sequential(nn.Linear(72, 32), nn.ReLU(), nn.Linear(32, 10))
    def forward(self, x): return self.head(torch.cat([x, self.emb((x[:, 36] * 4).long().clamp(0, 15))], 1))

def test_an_embedding_growing_from_fastais_small_init_is_info():
    "fastai's tabular embeddings start at std 0.01: 10x growth is them learning (6 of 6 healthy tabular fits read 'weights growing', a warning, and"
    "HealthCheck(remedy='growing') added AdaptiveWD)"
    from initcb.report import _gradient_rules
    from initcb.wd import AdaptiveWD
    torch.manual_seed(0)
    hc = HealthCheck(remedy={'growing'}, report=False)
    learn = quiet(Learner(digits_dls(flat=True), _EmbNet(), loss_func=nn.CrossEntropyLoss(), cbs=[hc, GradientHealth(warn=False, update_every=2)]))
    learn.fit(3, 1e-2)
    f = pd_rows(_gradient_rules(learn.gradient_health, Thresholds(), learn.model))[('emb', 'weights growing without bound')]
    assert f['severity'] == 'info' and 'embedding' in f['evidence'] and f['callback'] == '', f
    assert not any(isinstance(c, AdaptiveWD) for c in learn.cbs) and not len(hc.actions)


def _relu_mlp(): return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

@pytest.mark.parametrize('lr', [1e-2, 0.1])
def test_dead_units_weighed_against_the_fit(lr):
    "A healthy ReLU MLP (lr 1e-2: 0.93-0.97 accuracy) read 'dead units' warnings for its 11-28% (reviving them changed nothing); one whose"
    "units Adam at lr 0.1 killed (zeros 52% -> 96% of outputs) was told to revive them, never to lower the learning rate (0.95 at a tenth of it)"
    torch.manual_seed(0)
    learn = quiet(Learner(digits_dls(flat=True), _relu_mlp(), loss_func=nn.CrossEntropyLoss(), cbs=HealthCheck(report=False)))
    learn.fit(5, lr)
    rep = learn.health_check.report
    dead = rep[rep.problem == 'dead units']
    assert len(dead), rep
    if lr == 0.1: assert (dead.severity == 'error').all() and dead.remedy.str.contains('lower it first').all() and dead.evidence.str.contains('died during').all(), dead
    else: assert (dead.severity == 'info').all() and dead.evidence.str.contains('does without them').all() and (dead.callback == '').all(), dead


@pytest.mark.parametrize('wd', [0.01, 30., 100.])
def test_weight_decay_too_strong(wd):
    "Adam at lr 1e-2 with wd 30 (30% of each weight gone a step): 0.37 accuracy and no finding; at wd 100 the report said to decay the weights"
    "more ('too hot updates') and to look at the learning rate and the init"
    from fastai.callback.schedule import fit_one_cycle
    from initcb.wd import AdaptiveWD
    torch.manual_seed(0)
    learn = quiet(Learner(digits_dls(flat=True), nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)),
                          loss_func=nn.CrossEntropyLoss(), wd=wd, cbs=HealthCheck(report=False)))
    if wd == 30.: learn.model[0].bias.requires_grad_(False)  # (a frozen parameter: the rule compared the trainable ones with all, and said nothing)
    learn.fit_one_cycle(4, 1e-2)
    rep = learn.health_check.report
    f = rep[rep.problem == 'weight decay too strong']
    if wd == 0.01: assert not len(f), rep; return
    assert len(f) == 1 and f.callback.iloc[0] == 'AdaptiveWD' and f'wd {wd:g}' in f.evidence.iloc[0], rep
    others = rep[rep.problem.isin(['loss at chance level', 'too hot updates', 'dead units'])]
    if wd == 100.: assert len(others) and others.remedy.str.startswith("likely the weight decay's doing").all(), rep
    if wd == 100.:  # (a fit at chance for it: the cause an 'error' too, and its row first, the symptoms' after it; it was a 'warning', last)
        assert (rep.problem == 'loss at chance level').any() and f.severity.iloc[0] == 'error' and rep.problem.iloc[0] == 'weight decay too strong', rep
    learn = quiet(Learner(digits_dls(flat=True), nn.Sequential(nn.Linear(64, 10)), loss_func=nn.CrossEntropyLoss(), wd=wd, cbs=[HealthCheck(report=False), AdaptiveWD()]))
    learn.fit(1, 1e-2)
    assert 'weight decay too strong' not in set(learn.health_check.report.problem)  # (AdaptiveWD sets its own)


def test_saturation_that_grew_in_a_fit_that_learned_is_info():
    "A default-init tanh MLP (0.98 accuracy): its last tanh 0% saturated at the start, 34-38% at the end, read 'saturated' with 'rescale the init'"
    "(LSUVInit): the init was not the cause. A saturated init is still a warning with that remedy"
    from fastai.callback.schedule import fit_one_cycle
    def fit(scale):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 10))
        if scale:
            with torch.no_grad(): m[0].weight.normal_(0, scale); m[2].weight.normal_(0, scale)
        learn = quiet(Learner(digits_dls(flat=True), m, loss_func=nn.CrossEntropyLoss(), cbs=HealthCheck(report=False)))
        learn.fit_one_cycle(15 if not scale else 2, 1e-2)
        rep = learn.health_check.report
        return rep[rep.problem == 'saturated activation']
    grew = fit(None)
    assert len(grew) and (grew.severity == 'info').all() and grew.evidence.str.contains('grew during the fit').all() and (grew.callback == '').all(), grew
    sat = fit(1.)
    assert len(sat) and (sat.severity == 'warning').all() and (sat.callback == 'LSUVInit').all(), sat


def _deep(std):
    layers, c = [], 64
    for _ in range(12): layers += [nn.Linear(c, 64), nn.ReLU()]; c = 64
    m = nn.Sequential(*layers, nn.Linear(c, 10))
    if std is not None:
        for l in m:
            if isinstance(l, nn.Linear): nn.init.normal_(l.weight, 0, std)
    return m

@pytest.mark.parametrize('std', [0.05, None])
def test_scale_remedy_lsuv_where_the_loss_sits_at_chance(std):
    "A 12-layer ReLU MLP at std 0.05 sits at chance (0.089): `remedy=True` re-initialized dormant units 30 times and it stayed there, though"
    "its findings named LSUVInit (0.93). 'scale' LSUV-initializes a model whose loss is at chance and whose init scale is off; a healthy fit: nothing"
    from fastai.callback.schedule import fit_one_cycle
    from fastai.metrics import accuracy
    torch.manual_seed(0)
    hc = HealthCheck(remedy={'scale'}, report=False)
    learn = quiet(Learner(digits_dls(flat=True), _deep(std) if std else _relu_mlp(), loss_func=nn.CrossEntropyLoss(), metrics=accuracy, cbs=hc))  # (PyTorch's init
    # scales each layer's output by ~0.4 for a ReLU: 12 of them sat at chance too, and got LSUV, rightly; 3 of them learn)
    learn.fit_one_cycle(4, 1e-3 if std else 1e-2)
    acts = hc.actions
    if std is None: assert not len(acts), acts; return
    assert acts.action.tolist() == ['LSUVInit'] and acts.epoch.iloc[0] == 0 and 'loss at chance level' in acts.detail.iloc[0], acts
    assert learn.recorder.values[-1][2] > 0.6, learn.recorder.values  # (0.089 without)
    rep = hc.report  # (read from the LSUV on: the dead model's vanishing and stalled flags before it asked for LSUVInit again)
    assert not rep.problem.isin(['vanishing gradients', 'stalled updates', 'activation scale drifts through depth']).any(), rep


def test_saturation_beside_symmetric_units_points_at_them():
    "The all-zero MLP ahead of sigmoids (the demo's): its last sigmoid saturated only as its identical units moved together (0% at the start,"
    "64% at the end); the saturation finding said 'the init was not the cause', beside the findings that it was"
    from initcb.demo import broken_mlp
    from initcb.report import SYM_FIRST
    torch.manual_seed(0)
    learn = quiet(Learner(digits_dls(flat=True), broken_mlp(), loss_func=nn.CrossEntropyLoss(), cbs=HealthCheck(report=False)))
    learn.fit(3, 1e-2)
    rep = learn.health_check.report
    sat = rep[rep.problem == 'saturated activation']
    assert rep.problem.str.endswith('symmetry is never broken').any() and len(sat), rep
    assert (sat.remedy == SYM_FIRST).all() and (sat.callback == 'BreakSymmetry').all() and sat.evidence.str.contains('grew during the fit').all(), sat


def _mlp2(w): return nn.Sequential(nn.Linear(64, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 10))

@pytest.mark.parametrize('case', ['fine-tune', 'slow start'])
def test_scale_remedy_leaves_a_trained_model_and_a_slow_start(case):
    "'scale' LSUV-initialized a trained MLP at a fine-tune's plateau (0.94 -> 0.23 accuracy), and a healthy slow start whose smoothed"
    "training loss still sat at chance after an epoch (validation accuracy 0.54-0.65 by then): a trained model's output is no constant"
    from fastai.callback.schedule import fit_one_cycle
    from fastai.metrics import accuracy
    torch.manual_seed(0)
    hc = HealthCheck(remedy={'scale'}, report=False)
    learn = quiet(Learner(digits_dls(flat=True, seed=0), _mlp2(256 if case == 'fine-tune' else 64), loss_func=nn.CrossEntropyLoss(), metrics=accuracy, cbs=hc))
    if case == 'fine-tune': learn.fit_one_cycle(4, 1e-3); learn.fit(3, 1e-5)
    else: learn.fit_one_cycle(5, 1e-2, pct_start=0.8)  # (a long warm-up: slow to leave chance)
    assert not len(hc.actions) and learn.recorder.values[-1][2] > 0.9, (hc.actions, learn.recorder.values)

def test_died_and_decay_rules_spare_healthy_fits():
    "A healthy ReLU regression at its best lr read 'the units died during the fit: lower the learning rate' (zeros 52% -> 73%, a quarter"
    "of the units dead: sparsity); 'weight decay too strong' named a conv a BatchNorm follows (its decay shrinks no output)"
    from initcb.report import _decay_rules
    from functools import partial
    from fastai.optimizer import SGD
    from fastai.callback.schedule import fit_one_cycle
    torch.manual_seed(0)
    X, y = digits_dls(flat=True, n_train=512).train.one_batch()  # (any inputs: a regression on their mean)
    learn = quiet(Learner(digits_dls(flat=True), _relu_mlp()[:-1] + nn.Sequential(nn.Linear(64, 1)), loss_func=lambda o, t: ((o[:, 0] - t.float() / 9) ** 2).mean(),
                          opt_func=partial(SGD, mom=0.9), cbs=HealthCheck(report=False)))
    learn.fit_one_cycle(5, 0.1, wd=5e-4)
    rep = learn.health_check.report
    assert not rep.evidence.str.contains('died during').any(), rep
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    learn = quiet(Learner(digits_dls(), m, loss_func=nn.CrossEntropyLoss(), opt_func=partial(SGD, mom=0.9), cbs=GradientHealth(warn=False)))
    learn.fit(1, 0.1, wd=0.6)
    f = _decay_rules(learn, learn.gradient_health, Thresholds())
    assert [r['evidence'].split('x wd 0.6, ')[1].split(')')[0] for r in f] == ['5.weight'], f  # (the head, no norm after it; not the conv '0')


def test_clip_level_after_an_lsuv_reads_its_norms():
    "After 'scale''s LSUV the gradient norm jumped ~60x over the dead model's running median: flagged exploding, and GradientClip was set at"
    "0.144, the dead model's norm, where the new one trained at 1.2-1.7. The baseline starts afresh at the LSUV (`GradientHealth.rebase`),"
    "and the clip level reads only the norms after it"
    hc = HealthCheck(report=False, remedy={'exploding'})
    learn = quiet(synth_learner(n_trn=8, cbs=hc)); learn.fit(2, 1e-2)
    gh, before = hc.gh, hc.gh.global_norm()
    with torch.no_grad():
        for p in learn.model.parameters(): p.mul_(1e3)  # (the weights set anew, at another scale: as `_rescale` leaves things)
    b = gh.n_seen; gh.rebase()
    assert gh._streak == {}
    learn.fit(1, 0.)  # (lr 0: the new weights' norms every batch)
    hc._rescaled = b  # (set by `_rescale` mid-fit; this fit's `before_fit` cleared it)
    gh._events.append(dict(batch=gh.n_seen - 1, kind='exploding', layer=None, value=1e9, message='m'))  # (a flag at its last batch)
    after = gh.global_norm()[gh.hist.iters[:len(gh.hist)] >= hc._rescaled][:-1]
    assert np.isclose(hc._clip_level(), np.median(after), rtol=0.5) and hc._clip_level() > 10 * np.median(before), (hc._clip_level(), np.median(before))


def test_dead_remedy_spares_a_fit_that_learns_and_an_lsuv():
    "remedy={'dead'} re-initialized the 11-28% dormant units of a healthy ReLU MLP 4-6 times in 5 epochs (same accuracy without); and after"
    "'scale''s LSUV, the units a 12-layer MLP at SGD lr 0.1 lost to its learning rate 16-28 times (0.70 accuracy against 0.77 without). A layer"
    "more than half dead is revived still, and every dormant layer where the loss is stuck (the bias-shifted net of the test above)"
    from functools import partial
    from fastai.optimizer import SGD
    from fastai.callback.schedule import fit_one_cycle
    from fastai.metrics import accuracy
    from fastai.torch_core import set_seed
    set_seed(0)  # (the shuffle too: a fit at SGD lr 0.1 goes where its batches take it)
    hc = HealthCheck(remedy={'dead'}, report=False)
    learn = quiet(Learner(digits_dls(flat=True), _relu_mlp(), loss_func=nn.CrossEntropyLoss(), metrics=accuracy, cbs=hc))
    learn.fit_one_cycle(5, 1e-2)
    assert not len(hc.actions) and learn.recorder.values[-1][2] > 0.93, (hc.actions, learn.recorder.values)
    set_seed(0)  # (the shuffle too: a fit at SGD lr 0.1 goes where its batches take it)
    hc = HealthCheck(remedy={'scale', 'dead'}, report=False)
    learn = quiet(Learner(digits_dls(flat=True), _deep(0.05), loss_func=nn.CrossEntropyLoss(), metrics=accuracy, cbs=hc, opt_func=partial(SGD, mom=0.9)))
    learn.fit_one_cycle(6, 0.1)
    assert hc.actions.action.tolist() == ['LSUVInit'], hc.actions


def test_dead_remedy_reads_a_fine_tunes_plateau_as_no_stuck_loss():
    "A second fit at a tiny lr (a fine-tune of a trained MLP) sits on a plateau, which the report reads as 'info' (the model trained before):"
    "the 'dead' remedy read it as a stuck loss and re-initialized its 11-28% dormant units, the progress of the first fit lost in them"
    from fastai.callback.schedule import fit_one_cycle
    from fastai.metrics import accuracy
    from fastai.torch_core import set_seed
    set_seed(0)
    hc = HealthCheck(remedy={'dead'}, report=False, thresholds=Thresholds(plateau=0.9))  # (a flat loss's noise, under a tenth: on the plateau)
    learn = quiet(Learner(digits_dls(flat=True), _relu_mlp(), loss_func=nn.CrossEntropyLoss(), metrics=accuracy, cbs=hc))
    learn.fit_one_cycle(5, 1e-2); learn.fit(3, 1e-6)  # (before: layers 3 and 5, 12% dormant, re-initialized at the second fit's first epoch)
    assert not len(hc.actions) and learn.recorder.values[-1][2] > 0.93, (hc.actions, learn.recorder.values)


# ---- the probe of 28 fastai setups (2026-11-29): diagnoses that named the wrong cause or remedy ----

def _plain_mlp(ni, nh, no, depth, act=nn.ReLU, std=None):
    ls = []
    for k in range(depth): ls += [nn.Linear(ni if k == 0 else nh, nh), act()]
    m = nn.Sequential(*ls, nn.Linear(nh, no))
    if std is not None:
        with torch.no_grad():
            for l in m:
                if isinstance(l, nn.Linear): l.weight.normal_(0, std)
    return m

def _digits_fit(make, epochs, lr, cb, opt=None, seed=0):
    from fastai.metrics import accuracy
    torch.manual_seed(seed); np.random.seed(seed)
    dls = digits_dls(flat=True); model = make()
    learn = quiet(Learner(dls, model, loss_func=nn.CrossEntropyLoss(), metrics=accuracy, cbs=cb, **({} if opt is None else dict(opt_func=opt))))
    with warnings.catch_warnings(): warnings.simplefilter('ignore'); learn.fit(epochs, lr)
    return learn

def test_a_blowup_in_fewer_than_10_batches_is_diverging():
    "SGD at lr 5: smoothed losses 2.47, 88.6, 1.2e4, 1.8e10, 2.1e20, then overflow, the guard stopping the fit in its first epoch: the report"
    "called the dead units and the explosion the problems (ReinitDormant, GradientClip), never the diverging loss (10 batches needed)"
    from fastai.optimizer import SGD
    from initcb.init import init_weights
    from initcb.report import SYMPTOM
    make = lambda: init_weights(_plain_mlp(64, 128, 10, 3))
    learn = _digits_fit(make, 2, 5., HealthCheck(report=False), SGD)
    rep = learn.health_check.report
    assert rep.problem.iloc[0] == 'loss diverging' and rep.severity.iloc[0] == 'error', rep
    rest = rep.iloc[1:]; rest = rest[rest.severity != 'info']
    assert len(rest) and rest.remedy.str.startswith(SYMPTOM).all() and (rest.callback == '').all(), rest
    assert rep.evidence.str.contains('stopped the fit early, at training batch .* of epoch 0 \\(no epoch completed', regex=True).any(), rep.evidence.tolist()
    learn = _digits_fit(make, 2, 5., HealthCheck(report=False, remedy=True), SGD)
    a = learn.health_check.actions
    assert a.action.tolist() == ['held back'], a

def test_exploding_from_a_too_large_init_names_the_init():
    "A 6-layer MLP at std 1 (~10x Kaiming): 'exploding gradients' (GradientClip) was the error and the init only a warning; remedy=True clipped at"
    "1.0 'the scale the fit trained at before its first flag', a flag at batch 0 (1.0 was the fallback): 0.21 accuracy, where LSUV gives 0.97"
    make = lambda: _plain_mlp(64, 100, 10, 6, std=1.)
    learn = _digits_fit(make, 3, 1e-3, HealthCheck(report=False))
    rep = learn.health_check.report
    i, j = rep.index[rep.problem == 'init scale off'], rep.index[rep.problem == 'exploding gradients']
    assert len(i) == 1 and len(j) == 1 and j[0] == i[0] + 1, rep  # (the cause first, its symptom right after it)
    assert rep.loc[i[0], 'severity'] == 'error' and rep.loc[i[0], 'callback'] == 'LSUVInit' and rep.loc[j[0], 'callback'] == '', rep
    learn = _digits_fit(make, 3, 1e-3, HealthCheck(report=False, remedy=True))
    a = learn.health_check.actions
    assert 'LSUVInit' in set(a.action) and 'GradientClip' not in set(a.action), a
    assert learn.recorder.values[-1][2] > 0.85, learn.recorder.values  # (0.21 with the clip at 1.0)
    assert not (learn.health_check.report.severity == 'error').any(), learn.health_check.report  # (the losses after the LSUV, smoothed afresh)
    learn = _digits_fit(make, 1, 1e-3, HealthCheck(report=False, remedy={'exploding'}))
    d = learn.health_check.actions.query("action == 'GradientClip'").detail
    assert len(d) == 1 and 'a default' in d.iloc[0] and 'the scale the fit trained at' not in d.iloc[0], d.tolist()

def test_no_lsuv_for_a_sigmoid_net():
    "A 10-layer sigmoid MLP at std 0.8, saturated: the report named LSUVInit, which took it from 0.71 to 0.09 accuracy (the sigmoid's positive"
    "outputs give each unit a fixed offset that takes most of the std LSUV sets: the signal shrinks layer by layer)"
    from initcb.report import NO_LSUV, _sigmoid_net, HealthCheck as HC
    learn = _digits_fit(lambda: _plain_mlp(64, 100, 10, 10, nn.Sigmoid, std=0.8), 1, 1e-3, HealthCheck(report=False))
    rep = learn.health_check.report
    sat = rep[rep.problem == 'saturated activation']
    assert len(sat) and (sat.remedy == NO_LSUV).all() and not (rep.callback == 'LSUVInit').any(), rep
    assert _sigmoid_net(learn.model) and not _sigmoid_net(_plain_mlp(64, 100, 10, 3, nn.Tanh))  # (LSUV takes a tanh one from 0.11 to 0.96)
    learn = _digits_fit(lambda: _plain_mlp(64, 100, 10, 10, nn.Sigmoid, std=0.001), 2, 1e-3, HealthCheck(report=False, remedy={'scale'}))
    assert 'LSUVInit' not in set(learn.health_check.actions.action), learn.health_check.actions  # (at chance, init scale off: the remedy's LSUV was no cure here)

def test_an_rnn_killed_by_one_exploding_step_is_an_error():
    "A tanh RNN (recurrent weights 3x orthogonal): one exploding step at batch 0, the loss at 2.2957 after, ln(10) = 2.3026: 'info' ('the fit"
    "went on learning'), as the rule read `v[-1] < chance` strictly; and its zero gradient since, 'used on some batches only'"
    from initcb.report import RNN_INIT, NO_GRADIENT_BLOWN
    from fastai.optimizer import SGD
    class SeqRNN(nn.Module):
        def __init__(self):
            super().__init__(); self.rnn = nn.RNN(1, 64, batch_first=True); self.head = nn.Linear(64, 10)
            with torch.no_grad(): nn.init.orthogonal_(self.rnn.weight_hh_l0); self.rnn.weight_hh_l0.mul_(3.)
        def forward(self, x): return self.head(self.rnn(x.view(x.shape[0], 64, 1))[0][:, -1])
    learn = _digits_fit(SeqRNN, 3, 0.05, HealthCheck(report=False), SGD)
    r = learn.health_check.report.set_index('problem')
    assert r.loc['exploding gradients', 'severity'] == 'error' and RNN_INIT in r.loc['exploding gradients', 'remedy'], r
    assert r.loc['no gradient reaches it', 'severity'] == 'warning' and r.loc['no gradient reaches it', 'remedy'] == NO_GRADIENT_BLOWN, r
    assert 'its gradient zero (or none) on each' in r.loc['no gradient reaches it', 'evidence'], r  # (what is known; 'not used' alone was false: it plainly is)

def test_stalled_updates_name_the_callback_their_remedy_names():
    "lr 1e-7: 'stalled updates', remedy 'raise the learning rate', callback LSUVInit (0.02 accuracy with it; lr 1e-3 gives 0.96)"
    from initcb.init import init_weights
    learn = _digits_fit(lambda: init_weights(_plain_mlp(64, 128, 10, 3)), 1, 1e-7, HealthCheck(report=False))
    st_ = learn.health_check.report.query("problem == 'stalled updates'")
    assert len(st_) and (st_.callback == '').all() and st_.remedy.str.startswith('raise the learning rate').all(), st_

def test_a_healthy_mlps_few_dead_units_are_info():
    "A healthy ReLU MLP (Kaiming, Adam 1e-3, 0.96 accuracy): 10-15% of one layer dormant read 'warning' (ReinitDormant, which changed accuracy by"
    "<= 0.003) on 2 of 4 seeds, as the loss fell 7.4-fold, under the rule's tenfold; the loss learns: 'info', as the remedy's gate reads it"
    from initcb.init import init_weights
    learn = _digits_fit(lambda: init_weights(_plain_mlp(64, 128, 10, 3)), 4, 1e-3, HealthCheck(report=False), seed=0)
    rep = learn.health_check.report
    assert (rep.severity == 'info').all(), rep
    assert learn.recorder.values[-1][2] > 0.9

def test_first_x_gathers_32_examples_and_keeps_the_random_state():
    "Dormancy scored on one batch of 1: a third of a healthy MLP's units 'dead' (none fires on that one example)"
    from initcb.report import _first_x
    learn = Learner(digits_dls(bs=1, flat=True), nn.Linear(64, 10), loss_func=nn.CrossEntropyLoss())
    torch.manual_seed(3); x = _first_x(learn); a = torch.rand(3)
    torch.manual_seed(3); b = torch.rand(3)
    assert x.shape == (32, 64) and torch.equal(a, b)
    assert torch.equal(x[:4], torch.cat([b[0] for b in list(learn.dls.valid)[:2]]))  # (the validation batches, in their order)
    class Odd:  # (batches of different shapes: the first batch's)
        def __iter__(self): yield (torch.zeros(2, 3), torch.zeros(2)); yield (torch.zeros(2, 4), torch.zeros(2))
    learn.dls = type('D', (), dict(valid=[], train=Odd(), n_inp=1))()
    assert _first_x(learn).shape == (2, 3)
