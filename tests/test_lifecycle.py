"Hooks, exceptions, export, bounded memory, bad input."
import math, pickle, warnings, numpy as np, pandas as pd, pytest, torch
from torch import nn
from hypothesis import given, settings, strategies as st
from fastai.learner import Learner, CancelFitException
from fastai.callback.core import Callback
from fastai.test_utils import synth_learner
from initcb.activations import ActivationHealth
from initcb.core import digits_dls
from helpers import quiet, n_hooks, bad_argument_named, works_or_names_argument


class Fail(Callback):
    def __init__(self, exc, at=2): self.exc, self.at = exc, at
    def after_pred(self):
        if self.training and self.train_iter == self.at: raise self.exc

@pytest.mark.parametrize('exc', [RuntimeError('boom'), KeyboardInterrupt(), CancelFitException()])
def test_no_hook_left_however_a_fit_ends(exc):
    cb = ActivationHealth()
    learn = quiet(synth_learner(n_trn=5, cbs=[cb, Fail(exc)]))
    if isinstance(exc, CancelFitException): learn.fit(1)
    else:
        with pytest.raises(type(exc)): learn.fit(1)
    assert n_hooks(learn.model) == 0 and cb.hooks is None
    assert '_with_events' not in learn.__dict__
    assert len(cb.fast) == 3
    learn.remove_cb(Fail); learn.fit(1)  # the learner is still usable
    assert len(cb.fast) == 3 + len(learn.dls.train) and n_hooks(learn.model) == 0

def test_no_shadowing_warning_on_fastai_models():
    "fastai warns when a callback attribute shadows a Learner's or its model's (TabularModel has `layers`, as GradientHealth;"
    "Learner has `_metrics`): none of initcb's callbacks may trigger it"
    from fastai.tabular.all import TabularDataLoaders, tabular_learner
    from sklearn.datasets import load_digits
    from initcb.gradients import GradientHealth
    from initcb.wd import AdaptiveWD
    X, y = load_digits(return_X_y=True)
    df = pd.DataFrame(X[:200, :16], columns=[f'p{i}' for i in range(16)]); df['y'] = y[:200]
    dls = TabularDataLoaders.from_df(df, cont_names=[f'p{i}' for i in range(16)], y_names='y', y_block=None, bs=64)
    from initcb.report import HealthCheck
    from initcb.reinit import ReinitDormant
    from initcb.init import LSUVInit, BreakSymmetry
    learn = tabular_learner(dls, layers=[16], cbs=[HealthCheck(report=False), AdaptiveWD(), ReinitDormant(verbose=False), LSUVInit(verbose=False), BreakSymmetry()])
    assert hasattr(learn, 'layers')  # (through the model: what fastai's check looks at)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert not [x for x in w if 'shadowing' in str(x.message)], [str(x.message) for x in w]
    assert learn.gradient_health.layers != learn.model.layers

def test_learner_export(tmp_path):
    "learn.export with the callback attached (a DataBlock learner, which can export), then load_learner and predict"
    from fastai.tabular.all import TabularDataLoaders, tabular_learner, load_learner
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    df = pd.DataFrame(X[:400, :16], columns=[f'p{i}' for i in range(16)]); df['y'] = y[:400]
    dls = TabularDataLoaders.from_df(df, path=tmp_path, cont_names=[f'p{i}' for i in range(16)], y_names='y', y_block=None, bs=64)
    from initcb.gradients import GradientHealth
    learn = tabular_learner(dls, layers=[16], cbs=[ActivationHealth(), GradientHealth(warn=False)])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert len(learn.activation_health.fast) > 0
    learn.export('export.pkl')
    back = load_learner(tmp_path/'export.pkl')
    assert back.activation_health.fast is None and n_hooks(back.model) == 0
    with back.no_bar(): back.predict(df.iloc[0])
    back.dls = dls  # train the exported learner further: the callbacks start a fresh history
    with back.no_bar(), back.no_logging(): back.fit(1)
    assert len(back.activation_health.to_df()) > 0 and len(back.gradient_health.to_df()) > 0 and n_hooks(back.model) == 0

def test_export_mid_fit_leaves_no_hook(tmp_path):
    "learn.export during a fit (a callback exporting each epoch) pickles the model with initcb's hooks: they come back inert, holding"
    "no callback, and go at the loaded model's first call; the loaded learner predicts and fits with no hook left"
    import gc, io, weakref
    from fastai.learner import load_learner
    from initcb.gradients import GradientHealth
    class ExportEachEpoch(Callback):
        order = 100
        def after_epoch(self):  # (the first of two: the last epoch's end takes the hooks off)
            if self.epoch: return
            self.hooks = n_hooks(self.learn.model); self.learn.export('ep.pkl')
            buf = io.BytesIO(); torch.save(self.learn.model, buf); self.plain = buf.getvalue()  # (the standard pickler too)
    dls = digits_dls(n_train=128)
    net = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    learn = quiet(Learner(dls, net(), loss_func=nn.CrossEntropyLoss(), path=tmp_path,
                          cbs=[ActivationHealth(), GradientHealth(warn=False, act_grads=True), ExportEachEpoch()]))
    learn.fit(2)
    assert learn.export_each_epoch.hooks == 6 and n_hooks(learn.model) == 0  # (3 watched modules, twice)
    back = load_learner(tmp_path/'ep.pkl')
    cbs = [weakref.ref(c) for c in back.cbs if isinstance(c, (ActivationHealth, GradientHealth))]
    model = back.model; del back; gc.collect()
    assert len(cbs) == 2 and not any(r() for r in cbs)  # the model keeps no unpickled callback alive
    x = torch.randn(2, 1, 8, 8)
    assert n_hooks(model) == 6  # (inert until called)
    model(x); assert n_hooks(model) == 0
    m2 = torch.load(io.BytesIO(learn.export_each_epoch.plain), weights_only=False)
    m2(x); assert n_hooks(m2) == 0
    back = load_learner(tmp_path/'ep.pkl'); back.dls = dls
    back.remove_cbs([c for c in back.cbs if isinstance(c, (ActivationHealth, GradientHealth, ExportEachEpoch))])
    quiet(back).fit(1)  # without the callbacks
    assert n_hooks(back.model) == 0
    back = load_learner(tmp_path/'ep.pkl'); back.dls = dls; back.remove_cb(ExportEachEpoch)
    quiet(back).fit(1)  # with them: a fresh history, its own hooks only, gone at the end
    assert len(back.activation_health.fast) == len(dls.train) and n_hooks(back.model) == 0

def test_bounded_memory():
    "1M recorded batches x 100 layers stay under 64 MB of history"
    import sys, os
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'bench'))
    from overhead import history_bytes
    b, rows, srows, _ = history_bytes(1_000_000, 100)
    assert b <= 64 * 2**20, b
    assert rows <= 2048 and srows <= 2048

def test_history_keeps_totals():
    "Merging keeps the number of batches and the extremes of the whole run"
    cb = ActivationHealth(max_rows=8, sample_every=1, chunk=1)
    learn = quiet(synth_learner(n_trn=40, cbs=cb))
    learn.fit(1)
    n = len(learn.dls.train)
    assert len(cb.fast) <= 8 and cb.fast.n[:len(cb.fast)].sum() == n
    assert cb.sampled.n[:len(cb.sampled)].sum() == n
    assert cb.hist(0).sum() == n * 16  # 16 outputs per batch

bad = [dict(sample=0), dict(sample=-1), dict(bins=0), dict(bins=2.5), dict(every=0), dict(every='2'), dict(sample_every=0),
       dict(chunk=0), dict(max_rows=2), dict(hold_max=-1), dict(hold_max=1.5), dict(dead_thresh=-1), dict(dead_thresh=float('nan')), dict(sat_eps=float('inf')),
       dict(hist_range=(1, 1)), dict(hist_range=(0, float('inf'))), dict(hist_range=[0]), dict(hist_range=(False, True)), dict(modules=[]), dict(modules=3)]

@pytest.mark.parametrize('kw', bad)
def test_bad_arguments_name_the_argument(kw): bad_argument_named(ActivationHealth, kw)

def test_numpy_numbers_are_numbers(tmp_path):
    "NumPy ints and floats are taken as Python's, stored as Python's (the saved arguments are JSON)"
    cb = ActivationHealth(hist_range=(np.float32(-1), np.int64(1)), bins=np.int64(10), dead_thresh=np.float32(0.1), max_rows=np.int32(64))
    assert cb.hist_range == (-1., 1.) and type(cb.hist_range[0]) is float and type(cb.bins) is int and type(cb.dead_thresh) is float
    learn = quiet(synth_learner(n_trn=2, cbs=cb)); learn.fit(1)
    assert ActivationHealth.load(cb.save(tmp_path/'a.npz')).hist_range == (-1., 1.)

@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(['sample', 'bins', 'every', 'sample_every', 'chunk', 'max_rows', 'dead_thresh', 'sat_eps', 'hold_max', 'full_max']),
                       st.one_of(st.integers(-5, 5000), st.floats(allow_nan=True, allow_infinity=True), st.none(), st.text(max_size=2)), max_size=3))
def test_constructor_fuzz(kw):
    "Any argument either works or raises a ValueError that names it; nothing else escapes"
    works_or_names_argument(ActivationHealth, kw)

def readers(cb, tmp):
    return dict(to_df=cb.to_df, summary=cb.summary, layer_stats=lambda: cb.layer_stats(0), hist=lambda: cb.hist(0),
                color_dim=lambda: cb.color_dim(0), plot_layer_stats=lambda: cb.plot_layer_stats(0), plot_stats=cb.plot_stats,
                dead_chart=cb.dead_chart, saturation_chart=cb.saturation_chart, state_dict=cb.state_dict,
                save_npz=lambda: cb.save(tmp/'a.npz'), save_parquet=lambda: cb.save(tmp/'a.parquet'))

def test_readers_before_fit(tmp_path):
    "Every reader, before any fit (attached to a learner or not), says that nothing is recorded: no TypeError from inside"
    cb = ActivationHealth()
    for n, f in readers(cb, tmp_path).items():
        with pytest.raises(ValueError, match='nothing recorded yet'): f()
    with pytest.raises(ValueError, match='attach the callback to a learner'): cb.dormancy()
    learn = quiet(synth_learner(n_trn=2, cbs=cb))
    for n, f in readers(cb, tmp_path).items():
        with pytest.raises(ValueError, match='nothing recorded yet'): f()

def test_readers_after_pickling(tmp_path):
    "Pickling (`learn.export`) leaves the history out by design: the readers of the copy say so, and point to `save`"
    cb = ActivationHealth(sample_every=1)
    learn = quiet(synth_learner(n_trn=2, cbs=cb)); learn.fit(1)
    learn.remove_cb(cb); back = pickle.loads(pickle.dumps(cb))  # (the learner itself: its logger is a lambda)
    for n, f in readers(back, tmp_path).items():
        with pytest.raises(ValueError, match='not kept through pickling'): f()
    assert len(cb.to_df()) == 2 * len(cb.names)

def test_plots_after_a_fit_that_recorded_nothing(tmp_path):
    "`fit(0)` leaves an empty history: every plot says that nothing is recorded (a ValueError, not matplotlib's TypeError); the tables are empty"
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    cb = ActivationHealth()
    learn = quiet(synth_learner(n_trn=2, cbs=cb)); learn.model = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)); learn.fit(0)
    plots = ['color_dim', 'plot_layer_stats', 'plot_stats', 'dead_chart', 'saturation_chart']
    try:
        for n, f in readers(cb, tmp_path).items():
            if n in plots:
                with pytest.raises(ValueError, match='nothing recorded yet: the history holds no'): f()
    finally: plt.close('all')
    assert len(cb.to_df()) == 0 and cb.summary().shape[0] == 3

def test_modules_changed_between_fits():
    cb = ActivationHealth()
    learn = quiet(synth_learner(n_trn=2, cbs=cb)); learn.fit(1)
    learn.model = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 1))
    with pytest.warns(UserWarning, match='history starts afresh'): learn.fit(1)
    assert cb.names == ['0', '1', '2'] and len(cb.fast) == len(learn.dls.train)

@pytest.mark.parametrize('act', [nn.Tanh, nn.GELU])
def test_new_model_with_the_same_names(act):
    "A new model whose watched modules have the names of the last one's but other types (a Tanh: other bounds too) starts a new history; one of the same types carries on"
    from initcb.core import output_bounds
    mlp = lambda a: nn.Sequential(nn.Linear(1, 3), a(), nn.Linear(3, 1))
    cb = ActivationHealth(sample_every=1)
    learn = quiet(synth_learner(n_trn=2, cbs=cb)); learn.model = mlp(nn.ReLU); learn.fit(1)
    learn.model = mlp(act); learn.create_opt()
    with pytest.warns(UserWarning, match='history starts afresh'): learn.fit(1)
    assert len(cb.fast) == len(cb.sampled) == len(learn.dls.train) and cb.bounds == [None, output_bounds(learn.model[1]), None]
    assert cb.summary()['% saturated'].notna().tolist() == [False, act is nn.Tanh, False]
    learn.model = mlp(act); learn.create_opt()
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='.*history starts afresh'); learn.fit(1)
    assert len(cb.fast) == 2 * len(learn.dls.train)

@pytest.mark.parametrize('modules', [['0', '1'], lambda n, m: n in ('0', '1'), None])
def test_loaded_callback_carries_on(tmp_path, modules):
    "`load` keeps every argument and the module selection (a predicate's: the names it chose); attached to the learner it was saved from, the next fit carries the history on"
    kw = dict(sample_every=2, bins=10, hist_range=(-2., 2.), full_max=50, chunk=3, hold_max=1000, max_rows=64)
    cb = ActivationHealth(modules=modules, **kw)
    learn = quiet(synth_learner(n_trn=5, cbs=cb))
    if modules is not None: learn.model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))  # (None: fastai's one-module RegModel)
    learn.fit(1); n = len(learn.dls.train)
    for ext in ('npz', 'parquet'):
        back = ActivationHealth.load(cb.save(tmp_path/f'h.{ext}'))
        assert {k: getattr(back, k) for k in kw} == kw and back.mod_sel == (None if modules is None else ['0', '1'])
    learn.remove_cb(cb); learn.add_cb(back)
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='.*history starts afresh'); learn.fit(1)
    assert back.names == cb.names and back.n_seen == 2 * n and len(back.sampled) == 2 * len(cb.sampled)
    np.testing.assert_array_equal(back.fast.iters[:len(back.fast)], np.arange(2 * n))
    np.testing.assert_array_equal(back.fast['rms'][:n], cb.fast['rms'])  # (the first fit's rows, as they were)

def test_get_preds_and_validate_record_nothing():
    cb = ActivationHealth()
    learn = quiet(synth_learner(n_trn=3, cbs=cb)); learn.fit(1)
    n = len(cb.to_df())
    learn.get_preds(); learn.validate()
    assert len(cb.to_df()) == n and n_hooks(learn.model) == 0

@pytest.mark.parametrize('what', ['ActivationHealth', 'HealthCheck', 'AdaptiveWD'])
def test_removed_mid_fit_cleans_up(what):
    "A callback taken off mid-fit (`remove_cb` from another callback): no `after_fit` comes, its hooks were left on the model"
    "(pickling the model then failed) and AdaptiveWD's λ stayed in the optimizer"
    from initcb.report import HealthCheck
    from initcb.wd import AdaptiveWD
    cb = dict(ActivationHealth=ActivationHealth, HealthCheck=lambda: HealthCheck(report=False), AdaptiveWD=AdaptiveWD)[what]()
    class Remover(Callback):
        def after_epoch(self):
            if self.epoch == 0: self.learn.remove_cb(cb)
    learn = quiet(synth_learner(n_trn=5, cbs=[cb, Remover()], wd=0.1))
    learn.fit(2)
    assert n_hooks(learn.model) == 0 and '_with_events' not in learn.__dict__
    assert [type(c).__name__ for c in learn.cbs] == ['TrainEvalCallback', 'Recorder', 'CastToTensor', 'Remover']
    pickle.dumps(learn.model)
    assert learn.opt.hypers[0]['wd'] == 0.1

def test_health_check_with_subclassed_recorders():
    "A user's subclass of GradientHealth on the learner is named after its class (`learn.my_gh`): HealthCheck raised AttributeError"
    from initcb.gradients import GradientHealth
    from initcb.report import HealthCheck
    class MyGH(GradientHealth): pass
    class MyAH(ActivationHealth): pass
    gh, ah = MyGH(warn=False), MyAH()
    hc = HealthCheck(report=False)
    learn = quiet(synth_learner(n_trn=5, cbs=[gh, ah, hc]))
    learn.fit(1)
    assert hc.gh is gh and hc.ah is ah and len(gh.hist) == 5


@pytest.mark.parametrize('event', ['before_epoch', 'after_epoch', 'report', 'before_fit', 'after_fit'])
@pytest.mark.parametrize('exc', [RuntimeError('disk full'), KeyboardInterrupt()])
def test_no_hook_left_by_an_exception_outside_the_batches(event, exc):
    "An exception in another callback's before_epoch/after_epoch, or Ctrl-C in HealthCheck's report, escaped the guard (it wrapped only `_do_epoch`): hooks stayed on the model. "
    "One in the after_fit of a callback ordered before the recorders left GradientHealth's `act_grads` hooks (fastai skips every later after_fit); "
    "one in a before_fit after theirs left the guard, a closure, on the learner: `learn.export` failed ('Can't pickle local object')"
    from fastai.callback.core import Callback
    from initcb.report import HealthCheck
    from initcb.gradients import GradientHealth
    class Raise(Callback):
        order = -20 if event == 'after_fit' else 0
        def before_epoch(self):
            if event == 'before_epoch' and self.epoch == 1: raise exc
        def after_epoch(self):
            if event == 'after_epoch': raise exc
        def before_fit(self):
            if event == 'before_fit': raise exc
        def after_fit(self):
            if event == 'after_fit': raise exc
    learn = quiet(synth_learner(n_trn=5, cbs=[HealthCheck(report=False), GradientHealth(warn=False, act_grads=True), r := Raise()]))
    learn.model = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))
    if event == 'report':
        def stop(*a, **k): raise exc
        learn.health_report = stop
    with pytest.raises(type(exc)): learn.fit(2)
    assert n_hooks(learn.model) == 0 and learn.gradient_health._prev is None
    assert ('_with_events' in learn.__dict__) == (event in ('before_fit', 'after_fit'))  # (outside any epoch: the guard is not reached)
    learn.__dict__.pop('health_report', None); learn.remove_cb(r)
    pickle.loads(pickle.dumps(learn))
    learn.fit(1)  # (and the next fit records)
    assert len(learn.activation_health.to_df()) > 0 and n_hooks(learn.model) == 0 and '_with_events' not in learn.__dict__


def _fn(mod, name): return getattr(__import__(f'initcb.{mod}').__dict__[mod], name)
def _M(): torch.manual_seed(0); return nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1))
def _sigmoid_fit(cb):
    learn = quiet(synth_learner(cbs=cb, n_trn=2)); learn.model = nn.Sequential(nn.Linear(1, 2), nn.Sigmoid(), nn.Linear(2, 1)); learn.fit(1)

@pytest.mark.parametrize('call, arg', [
    (lambda: __import__('initcb.core').core.digits_dls(valid_pct=0.), 'valid_pct'),  # (passed, then fastai: 'NoneType' object is not iterable)
    (lambda: __import__('initcb.core').core.digits_dls(bs=2000), 'bs'),  # (0 training batches, silently)
    (lambda: __import__('initcb.core').core.digits_dls(n_train=10), 'bs'),
    (lambda: __import__('initcb.core').core.digits_dls(seed=None), 'seed'),
    (lambda: __import__('initcb.core').core.digits_dls(flat='no'), 'flat'),
    (lambda: __import__('initcb.core').core.watch(nn.Tanh(), (1.,)), 'bounds'),  # (a crash in the fit)
    (lambda: __import__('initcb.core').core.watch(nn.Tanh(), (1., -1.)), 'bounds'),  # (every output 'saturated')
    (lambda: __import__('initcb.core').core.watch(nn.Tanh(), (float('nan'), 1.)), 'bounds'),
    (lambda: __import__('initcb.gradients').gradients.GradientHealth(act_grads=True, modules=3), 'modules'),  # (a TypeError at the fit)
    (lambda: __import__('initcb.core').core.select_modules(nn.Sequential(nn.ReLU()), 3), 'modules'),
    (lambda: ActivationHealth(modules=['1', '1']), 'modules'),  # (two hooks on one module, two rows a batch)
    (lambda: __import__('initcb.core').core.select_modules(nn.DataParallel(nn.Sequential(nn.ReLU())), ['0', 'module.0']), 'modules'),  # (one module by two names)
    (lambda: __import__('initcb.core').core.sample_index((3, 4), 0), 'size'),  # (ZeroDivisionError)
    (lambda: __import__('initcb.init').init.activation_gain('relu'), 'act'),  # (1.0, the gain of no activation)
    (lambda: __import__('initcb.init').init.check_init(None), 'model'),  # (AttributeError: 'NoneType' object has no attribute ...)
    (lambda: __import__('initcb.reinit').reinit.unit_chains(None), 'model'),
    (lambda: __import__('initcb.report').report.find_nonfinite(None, torch.ones(2)), 'model'),
    (lambda: __import__('initcb.init').init.following_activation(None), 'model'),
    (lambda: ActivationHealth(modules=nn.ReLU), 'modules'),  # (a class is callable: taken for a predicate, a TypeError at the fit)
    (lambda: ActivationHealth(modules=lambda m: isinstance(m, nn.ReLU)), 'modules'),  # (one argument: a TypeError at the fit)
    (lambda: ActivationHealth(modules=['0', 5]), 'modules'),
    (lambda: __import__('initcb.gradients').gradients.GradientHealth(modules=['0']), 'modules'),  # (without act_grads: unread, silently)
    (lambda: __import__('initcb.gradients').gradients.GradientHealth(explode_ceiling=0.), 'explode_ceiling'),  # (every batch 'exploding')
    (lambda: __import__('initcb.reinit').reinit.ReinitDormant(tau=2.5), 'tau'),  # (scores average 1: half a layer or all of it re-initialized at each check)
    (lambda: __import__('initcb.reinit').reinit.reinit_dormant(nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1)), torch.ones(2, 1), tau=1.), 'tau'),
    (lambda: __import__('initcb.report').report.Thresholds(dead_tau=5), 'dead_tau'),
    (lambda: __import__('initcb.init').init.lsuv_init(nn.Sequential(nn.Linear(4, 4)), torch.ones(0, 4)), 'xb'),  # (every layer 'non-finite output: skipped')
    (lambda: quiet(synth_learner()).health_report(thresholds={}), 'thresholds'),  # (the defaults, silently)
    (lambda: _fn('report', 'find_nonfinite')(_M(), torch.ones(16, 1), torch.ones(16, 1)), 'yb'),  # (no loss_func: the loss went unchecked, silently)
    (lambda: _fn('report', 'find_nonfinite')(_M(), torch.ones(16, 1), torch.ones(16, 1), 'mse'), 'loss_func'),  # ('str' object is not callable)
    (lambda: _fn('report', 'find_nonfinite')(_M(), torch.ones(16, 1), torch.ones(16, 1), nn.MSELoss), 'loss_func'),  # (Boolean value of Tensor is ambiguous)
    (lambda: _fn('report', 'find_nonfinite')(_M(), torch.ones(16, 1), torch.ones(3, 5), nn.MSELoss()), 'yb'),  # (torch's size mismatch)
    (lambda: _fn('report', 'find_nonfinite')(_M(), torch.ones(16, 1), take_first='yes'), 'take_first'),
    (lambda: _fn('reinit', 'dormancy_scores')(m := _M(), torch.ones(4, 1), _fn('reinit', 'unit_chains')(m)['0']), 'chains'),  # (AttributeError)
    (lambda: _fn('reinit', 'dormancy_scores')(_M(), torch.ones(4, 1), _fn('reinit', 'unit_chains')(nn.Sequential(nn.Sequential(nn.Linear(1, 2), nn.ReLU()), nn.Linear(2, 1)))), 'chains'),  # (KeyError: '0.0')
    (lambda: _fn('reinit', 'unfollowed')(_M(), None), 'names'),  # ('NoneType' object is not iterable)
    (lambda: _fn('init', 'duplicate_units')(nn.Linear(2, 3)), 'w'),  # ('Linear' object has no attribute 'detach')
    (lambda: _fn('init', 'duplicate_units')(torch.zeros(0, 2)), 'w'),
    (lambda: _fn('init', 'duplicate_units')(torch.zeros(3, 2), torch.zeros(5)), 'b'),
    (lambda: _fn('reinit', 'reinit_dormant')(_M(), torch.ones(4, 1), opt='adam'), 'opt'),  # (no state zeroed, silently)
    (lambda: _fn('reinit', 'reinit_units')(m := _M(), '0', [1], _fn('reinit', 'unit_chains')(m)['0'][0], torch.optim.SGD), 'opt'),
    (lambda: _fn('init', 'LSUVInit')(dl=[]), 'dl'),  # (found at the fit)
    (lambda: _fn('wd', 'AdaptiveWD')().load_state_dict(None), 'sd'),  # (TypeError)
    (lambda: _fn('wd', 'AdaptiveWD')().load_state_dict({'meta': '{}'}), 'sd'),  # (another's state, taken silently)
    (lambda: _sigmoid_fit(ActivationHealth(sat_eps=0.6)), 'sat_eps'),  # (every sigmoid output 'saturated'; the bounds known at the fit)
])
def test_bad_input_found_at_once(call, arg):
    "Arguments accepted and failing later, cryptically or silently (an audit): a ValueError naming the argument now"
    with pytest.raises(ValueError, match=f'`{arg}`'): call()


def test_a_batch_the_model_cannot_take_is_named():
    "dormancy, output_stds, health_report(xb=...) gave torch's words from deep inside the model (a TypeError escaped the report's check)"
    from initcb.init import output_stds
    from initcb.reinit import unfollowed
    import initcb.report
    m = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    learn = quiet(Learner(digits_dls(flat=True, n_train=128), m, loss_func=nn.CrossEntropyLoss(), cbs=ActivationHealth())); learn.fit(1)
    for f in (lambda: learn.activation_health.dormancy(torch.randn(4, 7)), lambda: output_stds(m, torch.randn(4, 7)),
              lambda: learn.health_report(xb='abc', verbose=False), lambda: learn.health_report(xb=(torch.randn(4, 64),) * 2, verbose=False)):
        with pytest.raises(ValueError, match='`xb`: the model cannot run on the batch given'): f()
    with pytest.raises(ValueError, match='`verbose`'): learn.health_report(verbose='yes')
    with pytest.raises(ValueError, match="`names`: no module named 'nope'"): unfollowed(m, ['nope'])
    assert unfollowed(m, '1') == {}  # (one name, not its characters: ReDo follows the ReLU)
    from initcb.init import lsuv_init, break_symmetry, check_init
    from initcb.report import find_nonfinite
    z = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)); nn.init.zeros_(z[2].weight)  # (a symmetric layer: its gradients replayed on `xb`)
    for f in (lambda: lsuv_init(z, torch.randn(4, 7)), lambda: break_symmetry(z, torch.randn(4, 7)), lambda: check_init(z, torch.randn(4, 7)),
              lambda: find_nonfinite(z, torch.randn(4, 7)), lambda: lsuv_init(nn.Sequential(nn.LazyLinear(3)), 'abc')):  # (torch's words, or AttributeError)
        with pytest.raises(ValueError, match='`xb`: the model cannot run on the batch given'): f()
    def bad_hook(i, o): raise KeyError('ours')  # (an error of the reader's own, not the batch's: as it is)
    from initcb.core import eval_forward
    with pytest.raises(KeyError): eval_forward(m, [m[1]], bad_hook, torch.randn(4, 64))


def test_loading_another_file_is_named(tmp_path):
    "ActivationHealth.load of GradientHealth's file (and back), a parquet file it did not write, `load_state_dict({})`: KeyError"
    "('bounds', 'args', 'initcb', 'meta'); `save(None)`: TypeError from pathlib"
    from initcb.gradients import GradientHealth
    learn = quiet(synth_learner(n_trn=3, cbs=[ActivationHealth(), GradientHealth(warn=False)])); learn.fit(1)
    ah, gh = learn.activation_health, learn.gradient_health
    fa, fg = ah.save(tmp_path/'ah.npz'), gh.save(tmp_path/'gh.npz')
    pd.DataFrame(dict(x=[1.])).to_parquet(tmp_path/'other.parquet')
    for call, msg in ((lambda: ActivationHealth.load(fg), '`fname` is not a state ActivationHealth saved: GradientHealth saved it'),
                      (lambda: GradientHealth.load(fa), '`fname` is not a state GradientHealth saved: ActivationHealth saved it'),
                      (lambda: ActivationHealth.load(tmp_path/'other.parquet'), '`fname` is not a state ActivationHealth saved'),
                      (lambda: ActivationHealth().load_state_dict({}), '`sd` is not a state ActivationHealth saved'),
                      (lambda: GradientHealth().load_state_dict(ah.state_dict()), '`sd` is not a state GradientHealth saved: ActivationHealth'),
                      (lambda: ah.save(None), '`fname` must be a path ending in .npz or .parquet, got None'),
                      (lambda: gh.save(tmp_path/'gh.parquet'), '`fname` must be a path ending in .npz'),
                      (lambda: GradientHealth.load(3), '`fname` must be a path')):
        with pytest.raises(ValueError, match=msg.replace('(', r'\(').replace('.', r'\.')): call()
    assert len(ActivationHealth.load(fa).to_df()) == len(ah.to_df()) and len(GradientHealth.load(fg).to_df()) == len(gh.to_df())


def test_plot_axes_of_the_wrong_shape_are_named():
    "One Axes where three are drawn (`axs`), a list where one is: a TypeError or IndexError from inside the plot, or an AttributeError"
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    from initcb.gradients import GradientHealth
    learn = quiet(synth_learner(n_trn=3, cbs=[ActivationHealth(), GradientHealth(warn=False)])); learn.fit(1)
    ah, gh = learn.activation_health, learn.gradient_health
    fig, axs = plt.subplots(1, 3); ax = axs[0]
    for call, arg in ((lambda: ah.plot_layer_stats(0, axs=ax), 'axs'), (lambda: ah.plot_stats(axs=[ax]), 'axs'), (lambda: gh.plot_layer(0, axs=ax), 'axs'),
                      (lambda: ah.dead_chart(ax=[ax]), 'ax'), (lambda: gh.plot_grad_norms(ax=[ax]), 'ax'), (lambda: ah.color_dim(0, ax=axs), 'ax')):
        with pytest.raises(ValueError, match=f'`{arg}` must be'): call()
    assert ah.plot_stats(axs=axs) is axs and gh.plot_grad_norms(ax=ax) is ax
    plt.close('all')


def test_dormancy_of_chosen_layers_before_a_fit():
    "`dormancy()` runs before any fit; `dormancy(layers=...)` said 'nothing recorded yet: fit with the callback first'"
    ah = ActivationHealth(); learn = quiet(synth_learner(cbs=ah)); learn.model = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1))
    assert list(ah.dormancy(layers='1')) == list(ah.dormancy(layers=learn.model[1])) == ['1'] and list(ah.dormancy(layers=[0, -1])) == ['0', '2']
    with pytest.raises(ValueError, match='`layers`: no watched layer named'): ah.dormancy(layers='9')


def test_tta_is_no_fit():
    "fastai's `tta` calls before_fit itself (not through `__enter__`): LSUVInit re-initialized a loaded, trained model there, HealthCheck reported"
    from fastai.callback.core import Callback
    from initcb.init import LSUVInit
    from initcb.report import HealthCheck
    net = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    learn = quiet(Learner(digits_dls(n_train=256), net(), loss_func=nn.CrossEntropyLoss())); learn.fit(2, 1e-2)
    w = learn.model[1].weight.detach().clone()
    l2 = quiet(Learner(learn.dls, net(), loss_func=nn.CrossEntropyLoss(), cbs=[LSUVInit(verbose=False), hc := HealthCheck(report=False)]))
    l2.model.load_state_dict(learn.model.state_dict())
    l2.tta(n=1)
    assert torch.equal(l2.model[1].weight, w) and not l2.lsuv_init.done and hc.report is None and n_hooks(l2.model) == 0


def test_an_exception_in_lr_find_leaves_the_next_fit_recorded():
    "fastai sets `run` back to True at after_fit only: Ctrl-C in lr_find left every initcb callback sitting out the next fit, silently"
    from fastai.callback.schedule import lr_find  # (patches Learner.lr_find)
    from initcb.report import HealthCheck
    class Stop(Callback):
        def after_batch(self):
            if hasattr(self.learn, 'lr_finder') and self.iter == 3: raise KeyboardInterrupt()
    learn = quiet(synth_learner(n_trn=5, cbs=[hc := HealthCheck(report=False), s := Stop()]))
    learn.fit(1)  # (HealthCheck's recorders attached, on the learner)
    with pytest.raises(KeyboardInterrupt): learn.lr_find(show_plot=False)
    learn.remove_cb(s); n = len(learn.activation_health.fast)
    learn.fit(1)
    assert len(learn.activation_health.fast) == n + 5 and len(learn.gradient_health.hist) == 10 and hc.report is not None


def test_a_cancelled_training_phase_records_no_validation_batch():
    "A later callback's CancelTrainException in before_batch left ActivationHealth on: the validation pass filled its buffers and became a training row"
    class Stop(Callback):
        def before_batch(self):
            if self.training and self.iter == 2: raise __import__('fastai.callback.core').callback.core.CancelTrainException()
    class Big(Callback):
        order = -50
        def before_batch(self):
            if not self.training: self.learn.xb = (self.xb[0] * 1000,)
    learn = quiet(synth_learner(n_trn=5, cbs=[ah := ActivationHealth(), Stop(), Big()])); learn.model = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1))
    learn.fit(2)
    assert len(ah.fast) == 4 and np.nanmax(ah.fast['rms']) < 100  # (two batches an epoch, none of validation's x1000)


def test_a_fit_inside_a_fit_loses_no_gradient_row():
    "GradientHealth's setup replaced its device queues: the outer fit's rows of the epoch so far were dropped"
    from initcb.gradients import GradientHealth
    class Nest(Callback):
        order, done = 100, False
        def after_batch(self):
            if not self.done and self.training and self.iter == 2: self.done = True; self.learn.fit(1)
    learn = quiet(synth_learner(n_trn=5, cbs=[gh := GradientHealth(warn=False), Nest()])); learn.fit(1)
    assert list(gh.hist.iters[:len(gh.hist)]) == list(range(8))  # (the outer fit's first three, the inner fit's five; its end ends the recording)


def test_health_check_removed_mid_fit_keeps_the_table_aligned():
    "fastai's Recorder fixes its column names at before_fit: HealthCheck removed mid-fit took its two columns away, and 'time' printed under 'dead %'"
    from initcb.report import HealthCheck
    class Remover(Callback):
        def after_epoch(self):
            if self.epoch == 0: self.learn.remove_cb(self.learn.health_check)
    learn = synth_learner(n_trn=5, cbs=[HealthCheck(report=False), Remover()]); learn.logger = lambda *a: None
    learn.model = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1))
    learn.fit(2)
    names = list(learn.recorder.metric_names)
    assert 'dead %' in names and len(learn.recorder.values[-1]) == len(names) - 2  # (all but 'epoch' and 'time')
    assert math.isnan(learn.recorder.values[-1][names.index('grad norm') - 1]) and len(learn.metrics) == 0
    assert [type(c).__name__ for c in learn.cbs] == ['TrainEvalCallback', 'Recorder', 'CastToTensor', 'ProgressCallback', 'Remover']
    learn.remove_cb(Remover); learn.fit(1)  # (the next fit: no column of the HealthCheck gone)
    assert 'dead %' not in list(learn.recorder.metric_names)

def _shared_cbs():
    from initcb.gradients import GradientHealth
    from initcb.report import NonFiniteGuard, HealthCheck
    from initcb.reinit import ReinitDormant
    from initcb.wd import AdaptiveWD
    from initcb.init import BreakSymmetry, LSUVInit
    return [ActivationHealth, GradientHealth, NonFiniteGuard, HealthCheck, ReinitDormant, AdaptiveWD, BreakSymmetry, LSUVInit]

@pytest.mark.parametrize('make', _shared_cbs(), ids=lambda c: c.__name__)
def test_one_instance_on_two_learners_is_refused(make):
    "One callback in two learners' `cbs` (fastai points it at the last): the other's fit is refused at once, nothing left on either"
    mlp = lambda: nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))
    cb = make(verbose=False) if make.__name__ in ('BreakSymmetry', 'LSUVInit') else make()
    l1 = quiet(synth_learner(n_trn=4, cbs=[cb])); l1.model = mlp()
    l2 = quiet(synth_learner(n_trn=4, cbs=[cb])); l2.model = mlp()
    w = [p.detach().clone() for p in l1.model.parameters()] + [p.detach().clone() for p in l2.model.parameters()]
    with pytest.raises(ValueError, match=f'`cbs`: this {make.__name__} was added to another Learner'): l1.fit(1)
    assert all(torch.equal(a, b) for a, b in zip(w, list(l1.model.parameters()) + list(l2.model.parameters())))
    for l in (l1, l2): assert n_hooks(l.model) == 0 and '_with_events' not in l.__dict__ and len(l.cbs) == 4
    l2.fit(1)  # the learner it was added to last fits with it

def test_callback_moved_without_remove_is_refused_on_the_first_learner():
    "Added to a second learner without `remove_cb` from the first: the first's next fit says so, instead of recording nothing"
    cb = ActivationHealth()
    lc = quiet(synth_learner(n_trn=4, cbs=[cb])); lc.fit(1)
    ld = quiet(synth_learner(n_trn=4)); ld.add_cb(cb); ld.fit(1)
    n = cb.n_seen
    with pytest.raises(ValueError, match='added to another Learner'): lc.fit(1)
    assert cb.n_seen == n and n_hooks(lc.model) == n_hooks(ld.model) == 0
    ld.remove_cb(cb)  # (fastai's `remove_cb` leaves it in `lc.cbs`, attached to no learner: on `lc`'s list alone, it is `lc`'s again)
    lc.fit(1)
    assert cb.learn is lc and cb.n_seen == n + len(lc.dls.train) and n_hooks(lc.model) == n_hooks(ld.model) == 0

def test_health_check_columns_are_the_fits():
    "HealthCheck's live columns come off `learn.metrics` at the fit's end: `loss, acc = learn.validate()` works after it; each fit"
    "gets them again, once, also after a fit ended by an exception"
    from fastai.metrics import accuracy
    from initcb.core import digits_dls
    from initcb.report import HealthCheck
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    learn = quiet(Learner(digits_dls(bs=256), m, loss_func=nn.CrossEntropyLoss(), metrics=accuracy, cbs=HealthCheck(report=False)))
    learn.fit(1, 1e-2)
    names = list(learn.recorder.metric_names)
    assert names[-3:-1] == ['dead %', 'grad norm'] and len(learn.recorder.values[-1]) == len(names) - 2 and math.isfinite(learn.recorder.values[-1][-1])
    assert learn.metrics.attrgot('name') == ['accuracy']
    loss, acc = learn.validate()
    assert 0 < acc <= 1
    class Boom(Callback):
        def after_batch(self):
            if self.train_iter == 2: raise RuntimeError('boom')
    with pytest.raises(RuntimeError): learn.fit(1, cbs=Boom())
    learn.fit(1, 1e-2)
    assert list(learn.recorder.metric_names).count('dead %') == 1 and learn.metrics.attrgot('name') == ['accuracy']


def test_damaged_files_and_states_are_named_and_change_nothing(tmp_path):
    "A file that is no .npz (numpy: 'contains pickled data ... allow_pickle'), no parquet (ArrowInvalid), arrays missing or of another shape"
    "(KeyError 'iters', a broadcast error), a state of other `bins` (a broadcast error, the callback left half loaded): ValueErrors naming the argument, nothing changed"
    from initcb.gradients import GradientHealth
    learn = quiet(synth_learner(n_trn=3, cbs=[ActivationHealth(), GradientHealth(warn=False)])); learn.fit(1)
    ah, gh = learn.activation_health, learn.gradient_health
    for f in ('bad.npz', 'bad.parquet'): (tmp_path/f).write_bytes(b'not a file of its kind')
    sd, gsd = ah.state_dict(), gh.state_dict()
    np.savez(tmp_path/'noiters.npz', **{k: v for k, v in sd.items() if k != 'fast_iters'})
    np.savez(tmp_path/'shape.npz', **{**sd, 'fast_rms': np.concatenate([sd['fast_rms']] * 2)})  # (twice the rows of its iters)
    np.savez(tmp_path/'gnoiters.npz', **{k: v for k, v in gsd.items() if k != 'hist_iters'})
    for call, msg in ((lambda: ActivationHealth.load(tmp_path/'bad.npz'), r'`fname` \(.*bad.npz\) is not a .npz file a recorder saved'),
                      (lambda: GradientHealth.load(tmp_path/'bad.npz'), r'`fname` \(.*bad.npz\) is not a .npz file a recorder saved'),
                      (lambda: ActivationHealth.load(tmp_path/'bad.parquet'), r'`fname` \(.*bad.parquet\) is not a .parquet file a recorder saved'),
                      (lambda: ActivationHealth.load(tmp_path/'noiters.npz'), '`fname` is not a whole state ActivationHealth saved'),
                      (lambda: ActivationHealth.load(tmp_path/'shape.npz'), '`fname` is not a whole state ActivationHealth saved'),
                      (lambda: GradientHealth.load(tmp_path/'gnoiters.npz'), '`fname` is not a whole state GradientHealth saved')):
        with pytest.raises(ValueError, match=msg): call()
    with pytest.raises(FileNotFoundError): ActivationHealth.load(tmp_path/'missing.npz')  # (as it is: clear already)
    before = ah.to_df()
    with pytest.raises(ValueError, match='`sd` was saved with bins=40 and this ActivationHealth has bins=10'): ActivationHealth(bins=10).load_state_dict(sd)
    with pytest.raises(ValueError, match='`sd` is not a whole state ActivationHealth saved'): ah.load_state_dict({**sd, 'sampled_hist': sd['sampled_hist'][..., :3]})
    pd.testing.assert_frame_equal(ah.to_df(), before)  # (all or nothing: the failed load left the history as it was)
    g0 = gh.to_df()
    with pytest.raises(ValueError, match='`sd` is not a whole state GradientHealth saved'): gh.load_state_dict({k: v for k, v in gsd.items() if k != 'upd_iters'})
    pd.testing.assert_frame_equal(gh.to_df(), g0)

def test_parquet_of_nothing_recorded(tmp_path):
    "`fit(0)`: the .npz saved, the .parquet failed (cannot reshape array of size 0 into shape (0,newaxis))"
    learn = quiet(synth_learner(n_trn=3, cbs=ActivationHealth())); learn.fit(0)
    ah = learn.activation_health
    for f in ('e.npz', 'e.parquet'): assert len(ActivationHealth.load(ah.save(tmp_path/f)).to_df()) == 0

def test_a_module_given_to_a_loaded_callback(tmp_path):
    "A loaded callback holds no modules: 'ReLU is not a watched module', of a layer that is watched"
    learn = quiet(synth_learner(n_trn=3, cbs=ActivationHealth())); learn.model = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1)); learn.fit(1)
    a = ActivationHealth.load(learn.activation_health.save(tmp_path/'a.npz'))
    with pytest.raises(ValueError, match="`idx`: a module, and this ActivationHealth holds none .* pass the layer's name or position"): a.layer_stats(learn.model[1])
    assert len(a.layer_stats('1')) == 3

def test_a_one_row_history_is_drawn():
    "A short fit (8 batches: one sampled row, one update row with the defaults) drew one-point lines: axes and no data"
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    from initcb.gradients import GradientHealth
    learn = quiet(synth_learner(n_trn=8, cbs=[ActivationHealth(), GradientHealth(warn=False)])); learn.model = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1)); learn.fit(1)
    ah, gh = learn.activation_health, learn.gradient_health
    assert len(ah.sampled) == 1 and len(gh.upd) == 1
    def marked(axs):  # (each panel: it has one-point lines, and each is drawn with a marker)
        one = lambda ax: [l for l in ax.get_lines() if len(l.get_xdata()) == 1 and not isinstance(l.get_xdata()[0], (list, tuple))]
        return [bool(one(ax)) and all(l.get_marker() not in (None, 'None', '') for l in one(ax)) for ax in np.atleast_1d(axs)]
    assert marked(ah.plot_layer_stats(1)) == [True] * 3 and marked(gh.plot_update_ratios()) == [True]
    assert marked(gh.plot_layer(0))[1:] == [True, True]
    assert marked(ah.plot_stats())[1] and not marked(ah.plot_stats())[0]  # (the rms per batch: 8 points, a line)
    plt.close('all')

def test_depth_plot_names_the_layers():
    "'rms through depth' numbered its x axis by position (0, 1, 2) where the layers are '0', '1', '3': the heatmaps show names"
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    learn = quiet(synth_learner(n_trn=4, cbs=ActivationHealth())); learn.model = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Dropout(0.1), nn.Linear(4, 1)); learn.fit(1)
    ah = learn.activation_health
    assert ah.names == ['0', '1', '3'] and [t.get_text() for t in ah.plot_stats()[2].get_xticklabels()] == ah.names
    plt.close('all')


@pytest.mark.parametrize('skip', ['odd', 'last'])
def test_a_batch_cancelled_before_after_pred_is_no_row(skip):
    "A callback before ActivationHealth cancelling batches in `after_pred`: the cancelled batch's outputs were reduced into the next"
    "recorded batch's row (row 2 held batch 1's values), across an epoch's end too"
    from fastai.callback.core import CancelBatchException
    class Skip(Callback):
        order = ActivationHealth.order - 10
        def after_pred(self):
            if self.training and (self.train_iter % 2 if skip == 'odd' else self.train_iter == self.n_iter - 1): raise CancelBatchException()  # (`train_iter`: the fit's count)
    ah = ActivationHealth(modules=['0'])
    vals = []
    learn = quiet(Learner(digits_dls(bs=128, flat=True), nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), loss_func=nn.CrossEntropyLoss(), cbs=[ah, Skip()]))
    h = learn.model[0].register_forward_hook(lambda m, i, o: vals.append(o.detach().abs().mean().item()) if m.training else None)
    try: learn.fit(2, 1e-2)
    finally: h.remove()
    n = len(learn.dls.train)
    kept = [i for i in range(2 * n) if not (i % 2 if skip == 'odd' else i == n - 1)]  # ('last': the first epoch's)
    assert ah.fast.iters[:len(ah.fast)].tolist() == kept
    np.testing.assert_allclose(ah.fast['abs_mean'][:, 0], np.array(vals)[kept], rtol=1e-5)


def test_small_arguments_checked():
    "Accepted before: `decay='no'` (truthy: the whole step drawn), `dormancy(layers=[])` ({}), `flush(collective='no')`, `first_inputs(n_inp=5)`"
    "on a batch of 2 (the target taken for an input), `fresh_opt_state('adam', ...)`, `fresh_opt_state(opt, 5)` (a TypeError), `reinitialized(model, None)`;"
    "a wrong module name on a model with no submodules said 'names are like []'"
    from initcb.gradients import GradientHealth
    from initcb.core import first_inputs, select_modules
    from initcb.init import fresh_opt_state, reinitialized
    ah, gh = ActivationHealth(), GradientHealth(warn=False)
    learn = quiet(synth_learner(n_trn=4, cbs=[ah, gh])); learn.fit(1)
    with pytest.raises(ValueError, match='`decay`'): gh.plot_update_ratios(decay='no')
    with pytest.raises(ValueError, match='`layers` is empty'): ah.dormancy(layers=[])
    with pytest.raises(ValueError, match='`collective`'): ah.flush(collective='no')
    for n in (5, 0, -1, True, 1.5):
        with pytest.raises(ValueError, match='`n_inp`'): first_inputs(learn.dls.train, n_inp=n)
    assert first_inputs(learn.dls.train, n_inp=1).shape == first_inputs(learn.dls.train).shape
    ps = list(learn.model.parameters())
    for opt, params in (('adam', ps), (learn.opt, 5), (learn.opt, [1, 2]), (learn.opt, ps[0])):
        with pytest.raises(ValueError, match='`opt`' if opt == 'adam' else '`params`'): fresh_opt_state(opt, params)
    fresh_opt_state(None, ps); fresh_opt_state(learn.opt, iter(ps))  # (no optimizer: nothing to do; any iterable of parameters)
    with pytest.raises(ValueError, match='`report`'): reinitialized(learn.model, None)
    with pytest.raises(ValueError, match='no submodules'): select_modules(nn.Linear(2, 2), ['a'])


@pytest.mark.parametrize('how', ['end', 'exception'])
def test_device_constants_freed_at_the_end_of_a_fit(how):
    "ActivationHealth kept its device constants after the fit, the gather buffer of whole outputs among them (50 MB at the GPU's `full_max`),"
    "after `remove_cb` too; they go with the fit's end, however it ends, and the next fit makes them again and records as the first did"
    from fastai.callback.core import Callback
    class Boom(Callback):
        def after_batch(self):
            if self.train_iter == 3: raise RuntimeError('boom')
    ah = ActivationHealth(full_max=1 << 22, sample_every=1)
    learn = quiet(synth_learner(n_trn=8, cbs=ah))
    if how == 'end': learn.fit(1)
    else:
        with pytest.raises(RuntimeError): learn.fit(1, cbs=Boom())
    assert ah._cache == {} and ah._cbytes == 0, list(ah._cache)
    n = len(ah.fast); learn.fit(1)
    assert len(ah.fast) == n + 8 and np.isfinite(ah.fast['rms'][n:]).all() and ah._cache == {}


def _later(C):
    class TurnOnLater(Callback):
        order = 70
        def after_epoch(self):
            if self.epoch == 0: self.learn.add_cb(self.cb)
    t = TurnOnLater(); t.cb = C(); return t

@pytest.mark.parametrize('C', ['GradientHealth', 'ActivationHealth', 'AdaptiveWD', 'NonFiniteGuard'])
def test_added_mid_fit_begins_there(C):
    "A recorder or remedy added with `add_cb` in another callback's `after_epoch` (to turn it on from epoch 1) failed at its next event with"
    "\"'Sequential' object has no attribute '_rec'\" (its `before_fit` had not run): it begins at its first event now, as HealthCheck begins its own"
    import initcb.all as I
    t = _later(getattr(I, C))
    learn = quiet(synth_learner(n_trn=4, cbs=t))
    learn.fit(2, 1e-2)
    cb = t.cb
    if C == 'GradientHealth': assert len(cb.hist) == 4, len(cb.hist)  # (epoch 1's batches)
    if C == 'ActivationHealth': cb.flush(); assert len(cb.fast) == 4 and n_hooks(learn.model) == 0, len(cb.fast)
    learn.remove_cb(cb); learn.remove_cb(t); learn.fit(1, 1e-2)  # (and the learner goes on without it)

def test_same_instance_twice_is_an_error_then_works():
    "A callback given to the Learner and again to `fit(cbs=...)` ran every event twice (two GradientHealth rows a batch), and the end of the fit"
    "took one off, leaving the other unattached: the next fit said 'added to another Learner'. Now an error naming both, and the next fit runs"
    from initcb.gradients import GradientHealth
    gh = GradientHealth(warn=False)
    learn = quiet(synth_learner(n_trn=4, cbs=gh))
    with pytest.raises(ValueError, match='twice'): learn.fit(1, 1e-2, cbs=[ActivationHealth(), gh])
    assert n_hooks(learn.model) == 0 and '_with_events' not in learn.__dict__  # (the guard the callbacks before it set up: off)
    learn.fit(1, 1e-2)
    assert len(gh.hist) == 4 and sum(c is gh for c in learn.cbs) == 1 and learn.gradient_health is gh

def test_added_mid_fit_after_a_fit_ended_by_an_exception():
    "A fit ended by an exception skips `after_fit`: the instance still counted itself in a fit, and added mid-fit to another learner later it"
    "did not begin there (no `before_fit`: the first learner's model and state)"
    from initcb.gradients import GradientHealth
    class Boom(Callback):
        def after_batch(self):
            if self.train_iter == 2: raise RuntimeError('boom')
    t = _later(lambda: GradientHealth(warn=False)); gh = t.cb
    la = quiet(synth_learner(n_trn=4, cbs=gh))
    with pytest.raises(RuntimeError): la.fit(1, cbs=Boom())
    la.remove_cb(gh)
    lb = quiet(synth_learner(n_trn=4, cbs=t)); lb.model = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 1))
    with warnings.catch_warnings(): warnings.simplefilter('ignore'); lb.fit(2, 1e-2)  # ('the model's parameters changed; history starts afresh')
    assert gh.learn is lb and gh.names == ['0.weight', '0.bias', '2.weight', '2.bias'] and len(gh.hist) == 4, (gh.names, len(gh.hist))
