"ActivationHealth on the models users run: LSTMs, half precision, in-place activations, deep nets (op count)."
import math, warnings, torch, numpy as np, pandas as pd, pytest
from torch import nn
from fastai.learner import Learner
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from initcb.activations import ActivationHealth
from initcb.core import watch
from helpers import quiet

def seq_learner(model, cbs, n=32, bs=8, t=5, c=3):
    x = torch.randn(n, t, c); y = torch.randn(n)
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=bs), DataLoader(list(zip(x[:bs], y[:bs])), bs=bs))
    return quiet(Learner(dls, model, loss_func=nn.MSELoss(), cbs=cbs))

class LSTMNet(nn.Module):
    def __init__(self): super().__init__(); self.rnn = nn.LSTM(3, 6, batch_first=True); self.out = nn.Linear(6, 1)
    def forward(self, x): return self.out(self.rnn(x)[0][:, -1]).squeeze(-1)

def test_lstm_output():
    seen = []
    cb = ActivationHealth(sample_every=1)
    learn = seq_learner(LSTMNet(), cb)
    h = learn.model.rnn.register_forward_hook(lambda m, i, o: seen.append(o[0].detach().clone()) if m.training else None)
    learn.fit(1)
    h.remove()
    df = cb.to_df().query("layer == 'rnn'")
    assert len(df) == len(seen) == 4
    np.testing.assert_allclose(df['abs_mean'], [o.abs().mean() for o in seen], rtol=1e-5)
    np.testing.assert_allclose(df['std'], [o.std() for o in seen], rtol=1e-4)
    assert cb.dormancy()['rnn'].shape == (6,)

class Half(nn.Module):
    "Runs its layers in half precision, as under mixed precision"
    def __init__(self, dtype): super().__init__(); self.lin = nn.Linear(3, 8).to(dtype); self.act = nn.ReLU(); self.dtype = dtype
    def forward(self, x): return self.act(self.lin(x[:, -1].to(self.dtype))).float().sum(-1)

@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_outputs(dtype):
    seen = []
    cb = ActivationHealth(sample_every=1)
    learn = seq_learner(Half(dtype), cb)
    h = learn.model.lin.register_forward_hook(lambda m, i, o: seen.append(o.detach().float().clone()) if m.training else None)
    learn.fit(1)
    h.remove()
    df = cb.to_df().query("layer == 'lin'")
    np.testing.assert_allclose(df['rms'], [o.square().mean().sqrt() for o in seen], rtol=1e-3)
    np.testing.assert_allclose(df['mean'], [o.mean() for o in seen], rtol=1e-3, atol=1e-4)
    assert np.isfinite(df[['abs_mean', 'rms', 'max', 'std']].to_numpy()).all()

def test_large_half_output_no_overflow():
    "Sums of squares of a large fp16 output overflow fp16: the reductions accumulate in fp32"
    class Big(nn.Module):
        def __init__(self): super().__init__(); self.p = nn.Parameter(torch.zeros(1)); self.id = watch(nn.Identity())
        def forward(self, x): return self.id(torch.full((300, 300), 30., dtype=torch.float16) + 0 * self.p.half()).float().mean().expand(x.shape[0])
    cb = ActivationHealth(modules=['id'], sample_every=1)
    learn = seq_learner(Big(), cb)
    learn.fit(1)
    np.testing.assert_allclose(cb.to_df()['rms'], 30., rtol=1e-3)

@pytest.mark.parametrize('full_max', [None, 1 << 20])
def test_torchvision_inplace_relu(full_max):
    "torchvision's ResNet applies ReLU in place after BatchNorm: BatchNorm's statistics are still its own output's (held whole: detected and sampled in the hook from then on; sampled: taken in the hook anyway)"
    tv = pytest.importorskip('torchvision')
    model = tv.models.resnet18(num_classes=3)
    x = torch.randn(8, 3, 32, 32); y = torch.randint(0, 3, (8,))
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=4), DataLoader(list(zip(x[:4], y[:4])), bs=4))
    cb = ActivationHealth(modules=['bn1', 'layer1.0.bn1'], sample_every=1, sample=1 << 16, full_max=full_max)
    learn = quiet(Learner(dls, model, loss_func=nn.CrossEntropyLoss(), cbs=cb))
    seen = {n: [] for n in cb.mod_sel}
    hs = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen[n].append(o.detach().clone()) if m.training else None) for n in seen]
    learn.fit(1)
    for h in hs: h.remove()
    assert all(cb._inplace) == (full_max is not None)
    df = cb.to_df()
    for j, n in enumerate(cb.names):
        d = df.query('idx == @j')
        np.testing.assert_allclose(d['min'], [o.min() for o in seen[n]], rtol=1e-5)
        assert (d['min'] < 0).all()  # BatchNorm's output, not the ReLU's that overwrote it
        np.testing.assert_allclose(d['abs_mean'], [o.abs().mean() for o in seen[n]], rtol=1e-3)

def test_inplace_relu_with_small_hold_max():
    "Past `hold_max` held outputs are reduced in a hook: on the first batch a BatchNorm's output may be reduced before the in-place ReLU changes it, on the next only after (fewer held). Every batch still has the BatchNorm's statistics"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.BatchNorm1d(64), nn.ReLU(inplace=True), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(inplace=True),
                          nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(inplace=True), nn.Linear(64, 1))
    x = torch.randn(64, 4); y = torch.randn(64, 1)
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=16), DataLoader(list(zip(x[:16], y[:16])), bs=16))
    cb = ActivationHealth(hold_max=10240, sample_every=4)
    learn = quiet(Learner(dls, model, loss_func=nn.MSELoss(), cbs=cb))
    seen = {n: [] for n in ('1', '4', '7')}
    hs = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen[n].append(o.detach().clone()) if m.training else None) for n in seen]
    learn.fit(1)
    for h in hs: h.remove()
    df = cb.to_df()
    assert df[['abs_mean', 'rms', 'max']].notna().all().all()
    for n, os in seen.items():
        d = df[df['layer'] == n]
        np.testing.assert_allclose(d['abs_mean'], [o.abs().mean() for o in os], rtol=1e-4)
        np.testing.assert_allclose(d['max'], [o.max() for o in os], rtol=1e-4)

def test_op_count_does_not_grow_with_depth():
    "xresnet50 watches about 2.5x the modules of xresnet18; per recorded batch it may dispatch at most 1.5x the ops"
    import sys, os
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'bench'))
    from overhead import ops_per_batch
    from fastai.vision.models.xresnet import xresnet18, xresnet50
    torch.set_num_threads(1)
    o18 = ops_per_batch(lambda: xresnet18(c_in=3, n_out=10), (2, 3, 16, 0), 'ActivationHealth()', 'cpu')
    o50 = ops_per_batch(lambda: xresnet50(c_in=3, n_out=10), (2, 3, 16, 0), 'ActivationHealth()', 'cpu')
    assert o50 <= 1.5 * o18, (o18, o50)
    assert o18 < 20, o18

@pytest.mark.parametrize('how', ['torch.compile', 'Module.compile'])
def test_compiled_model_records_what_eager_does(how):
    "Under torch.compile the hooks run eagerly (dynamo does not trace them): the same statistics as the eager model, no hook left"
    from initcb.gradients import GradientHealth
    from initcb.core import is_compiled
    import torch._dynamo
    torch._dynamo.reset()
    res = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1), nn.Flatten(0))
        inner = model
        if compiled:
            if how == 'torch.compile': model = torch.compile(model)
            else: model.compile()
        assert is_compiled(model) == compiled
        ah, gh = ActivationHealth(sample_every=1), GradientHealth(warn=False, act_grads=True)
        learn = seq_learner(nn.Sequential(nn.Flatten(1, 2), nn.Linear(15, 3), model), [ah, gh])
        torch.manual_seed(1); learn.fit(1, 1e-2)
        assert sum(len(m._forward_hooks) for m in inner.modules()) == 0
        res.append((ah.to_df(), gh.to_df(), gh.act_grads_df()))
    (a0, g0, x0), (a1, g1, x1) = res
    assert len(a0) == len(a1) == 4 * 6  # (4 batches, 6 layers)
    for c in ('abs_mean', 'rms', 'max', 'mean', 'std', 'near_zero'): np.testing.assert_allclose(a1[c], a0[c], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g1['grad_norm'], g0['grad_norm'], rtol=1e-4, atol=1e-7)
    assert len(x0) == len(x1) > 0
    for c in ('abs_mean', 'rms'): np.testing.assert_allclose(x1[c], x0[c], rtol=1e-4, atol=1e-9)

def test_compiled_model_named_as_the_eager_one():
    "A model compiled whole: every recorder named its layers '_orig_mod.1', ReinitDormant's events and the model the user wrote '1'"
    from initcb.gradients import GradientHealth
    from initcb.init import check_init
    import torch._dynamo
    torch._dynamo.reset()
    names = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(1, 2), nn.Linear(15, 8), nn.ReLU(), nn.Linear(8, 1), nn.Flatten(0))
        ah, gh = ActivationHealth(), GradientHealth(warn=False, act_grads=True)
        learn = seq_learner(torch.compile(model) if compiled else model, [ah, gh])
        learn.fit(1, 1e-2)
        names.append((ah.names, gh.names, gh.layers, gh.amod_names, list(ah.to_df().layer.unique()), list(check_init(learn.model).layer)))
    assert names[0] == names[1] and names[0][0] == ['1', '2', '3'], names

class TwoExperts(nn.Module):
    "A tiny mixture of experts: rows routed by the sign of their first feature, so a batch may route no row to an expert"
    def __init__(s): super().__init__(); s.e0, s.e1 = nn.Linear(4, 1), nn.Linear(4, 1)
    def forward(s, x):
        out = torch.zeros(len(x), 1); m = x[:, 0] > 0
        out[m] = s.e0(x[m]); out[~m] = s.e1(x[~m]); return out.squeeze(-1)

@pytest.mark.parametrize('full_max', [None, 0])  # outputs reduced whole after the forward pass, or sampled in their hooks
def test_empty_output_gives_a_nan_row(full_max):
    "An expert that a batch routes no row to (a (0, 1) output): that batch's row is NaN for it, the fit and the other rows go on"
    torch.manual_seed(0)
    x = torch.randn(32, 4); x[16:24, 0] = -x[16:24, 0].abs()  # batch 2: every row to e1, e0's output is empty
    ds = list(zip(x, torch.randn(32)))
    cb = ActivationHealth(sample_every=1, full_max=full_max)
    learn = quiet(Learner(DataLoaders(DataLoader(ds, bs=8), DataLoader(ds, bs=8)), TwoExperts(), loss_func=nn.MSELoss(), cbs=cb))
    learn.fit(2)
    df = cb.to_df(); e0 = df[df.layer == 'e0'].set_index('iter')
    empty = [2, 6]  # batch 2 of each epoch
    assert e0.loc[empty, ['abs_mean', 'rms', 'max', 'mean', 'std']].isna().all().all()
    assert (e0.loc[empty, ['nonfinite_batches', 'nonfinite']] == 0).all().all()
    assert e0.drop(empty)[['abs_mean', 'rms', 'mean']].notna().all().all() and df[df.layer == 'e1'][['rms', 'mean']].notna().all().all()
    assert cb.summary().loc[['e0', 'e1'], ['rms', 'max |x|', 'mean']].notna().all().all()  # the empty batches left out, not NaN for the run

def test_dormancy_layers_argument():
    "A bad `layers` named `idx` in its error (the reader's argument, not dormancy's); one name was iterated as its characters"
    from fastai.test_utils import synth_learner
    from helpers import quiet
    ah = ActivationHealth()
    learn = quiet(synth_learner(n_trn=2, cbs=ah)); learn.model = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))
    learn.fit(1)
    with pytest.raises(ValueError, match='`layers`: no watched layer'): ah.dormancy(layers=['nope'])
    with pytest.raises(ValueError, match='`layers` must be a layer index'): ah.dormancy(layers=[99])
    assert list(ah.dormancy(layers='1')) == ['1'] and list(ah.dormancy(layers=0)) == ['0'] and list(ah.dormancy(layers=np.int64(2))) == ['2']

def test_compiled_before_the_hooks_recompiles_once():
    "A model compiled without the hooks (lr_find, a fit without the callbacks) ran on without calling them (dynamo does not guard on hooks):"
    "the first recorded batch finds no hook called, warns and resets torch.compile's caches; the next batches record; a later fit needs no reset"
    from initcb.gradients import GradientHealth
    import torch._dynamo, warnings
    torch._dynamo.reset(); torch.manual_seed(0)
    model = torch.compile(nn.Sequential(nn.Flatten(1, 2), nn.Linear(15, 8), nn.ReLU(), nn.Linear(8, 1), nn.Flatten(0)))
    learn = seq_learner(model, [])
    learn.fit(1, 1e-3)  # compiled here, without hooks
    ah, gh = ActivationHealth(sample_every=1), GradientHealth(warn=False, act_grads=True)
    learn.add_cbs([ah, gh])
    for fit in range(2):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always'); learn.fit(1, 1e-3)
        said = [str(x.message) for x in w if 'compiled before' in str(x.message)]
        iters = sorted(set(ah.to_df().query('iter >= @fit * 4')['iter']))
        agrad = sorted(set(gh.act_grads_df().query('iter >= @fit * 4')['iter']))
        if fit == 0:
            assert len(said) == 2 and said[0].startswith('ActivationHealth') and said[1].startswith('GradientHealth'), said
            assert iters == agrad == [1, 2, 3], (iters, agrad)  # (4 batches: the first ran without the hooks)
        else: assert not said and iters == agrad == [4, 5, 6, 7], (said, iters, agrad)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0

def test_channels_last_records_what_contiguous_does():
    "A channels_last model on channels_last inputs: samples are taken by logical index, so the statistics are the contiguous model's"
    from fastai.callback.core import Callback
    from initcb.core import digits_dls
    res = []
    for cl in (False, True):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
        cbs = [ActivationHealth(sample_every=1, full_max=0)]  # (every output sampled in its hook, every batch)
        if cl:
            m = m.to(memory_format=torch.channels_last)
            class CL(Callback):
                def before_batch(self): self.learn.xb = (self.xb[0].contiguous(memory_format=torch.channels_last),)
            cbs.append(CL())
        learn = quiet(Learner(digits_dls(bs=64), m, loss_func=nn.CrossEntropyLoss(), cbs=cbs))
        torch.manual_seed(1); learn.fit(1, 1e-2)
        res.append(cbs[0].to_df())
    a, b = res
    assert len(a) == len(b) > 0
    for c in ('abs_mean', 'std', 'max'): np.testing.assert_allclose(b[c], a[c], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(b['near_zero'], a['near_zero'], atol=6 / 2048)  # (the convs round differently in the other layout: a few
    # of the 2,048 sampled values sit at the threshold; another sample's share would differ by ~0.01)

def test_mixup_with_health_check():
    "fastai's MixUp (its own loss, soft targets): the recorders record every batch and the report has no loss-rule finding on a healthy fit"
    from fastai.callback.mixup import MixUp
    from initcb.core import digits_dls
    from initcb.report import HealthCheck
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    from fastai.losses import CrossEntropyLossFlat  # (MixUp reads its `y_int`)
    learn = quiet(Learner(digits_dls(bs=64), m, loss_func=CrossEntropyLossFlat(), cbs=[MixUp(), HealthCheck(report=False)]))
    learn.fit(3, 1e-2)
    hc = learn.health_check
    assert len(hc.ah.to_df().iter.unique()) == len(hc.gh.to_df().iter.unique()) == 3 * len(learn.dls.train)
    assert not hc.report.problem.str.startswith('loss').any(), hc.report

@pytest.mark.parametrize('mix', ['MixUp', 'CutMix'])
def test_mixed_targets_read_the_validation_loss(mix):
    "A slow fit on mixed targets ends with its training loss near chance (CutMix: 2.25 vs ln 10, valid accuracy 0.26): no chance or"
    "plateau finding from it; a model that learns nothing (lr 1e-7) is at chance by its validation loss, which the finding quotes"
    from fastai.callback import mixup
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy
    from initcb.core import digits_dls
    from initcb.report import HealthCheck
    def fit(epochs, lr):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
        learn = quiet(Learner(digits_dls(bs=64), m, loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                              cbs=[getattr(mixup, mix)(1.), HealthCheck(report=False)]))
        learn.fit(epochs, lr)
        return learn, learn.health_check.report
    learn, rep = fit(8, 1e-3)
    assert learn.recorder.values[-1][2] > 0.2 and not rep.problem.str.startswith('loss').any(), rep
    learn, rep = fit(3, 1e-7)
    ch = rep[rep.problem == 'loss at chance level']
    assert len(ch) == 1 and ch.evidence.iloc[0].startswith('validation loss') and 'mixed targets' in ch.evidence.iloc[0]
    pd.testing.assert_frame_equal(learn.health_report(verbose=False)[['layer', 'problem']], rep[['layer', 'problem']])  # (after the fit, MixUp gone from the callbacks: the recorders kept it)

def test_lazy_modules():
    "nn.LazyLinear has no parameters before its first forward pass: GradientHealth, BreakSymmetry, HealthCheck and health_report crashed at"
    "before_fit ('Attempted to use an uninitialized parameter'); now the model is given its parameters by one forward pass on a training batch"
    import warnings
    from initcb.core import digits_dls
    from initcb.gradients import GradientHealth
    from initcb.init import BreakSymmetry, LSUVInit, check_init
    from initcb.reinit import ReinitDormant
    from initcb.report import HealthCheck
    lazy = lambda: nn.Sequential(nn.LazyLinear(32), nn.ReLU(), nn.LazyLinear(10))
    for cb in (ActivationHealth, GradientHealth, BreakSymmetry, LSUVInit, ReinitDormant, lambda: HealthCheck(remedy=True, report=False)):
        torch.manual_seed(0)
        learn = quiet(Learner(digits_dls(bs=64, flat=True), lazy(), loss_func=nn.CrossEntropyLoss(), cbs=cb()))
        with warnings.catch_warnings(): warnings.simplefilter('ignore'); learn.fit(1, 1e-3)
        assert learn.model[0].weight.shape == (32, 64)
    gh = [c for c in learn.cbs if isinstance(c, GradientHealth)][0]
    assert gh.names == ['0.weight', '0.bias', '2.weight', '2.bias'] and len(gh.to_df())
    with pytest.raises(ValueError, match='lazy modules'): check_init(lazy())
    learn = quiet(Learner(digits_dls(bs=64, flat=True), lazy(), loss_func=nn.CrossEntropyLoss()))
    assert learn.health_report(verbose=False) is not None  # (before any fit: materialized on the learner's batch)


def test_a_watched_module_never_called_is_said():
    "fastai's AWD_LSTM reads its encoder's weight through EmbeddingDropout, never calling the module: a row of NaN, silently"
    import torch.nn.functional as F
    class Net(nn.Module):
        def __init__(s): super().__init__(); s.enc = nn.Embedding(10, 4); s.out = nn.Linear(4 * 5, 1)
        def forward(s, x): return s.out(F.embedding(x, s.enc.weight).flatten(1)).squeeze(-1)  # (the weight, not the module)
    x, y = torch.randint(0, 10, (32, 5)), torch.randn(32)
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=8), DataLoader(list(zip(x[:8], y[:8])), bs=8))
    learn = quiet(Learner(dls, Net(), loss_func=nn.MSELoss(), cbs=ActivationHealth()))
    with pytest.warns(UserWarning, match=r"enc gave no output in this fit's 4 recorded batches"): learn.fit(1)
    with warnings.catch_warnings():  # (the modules that run: no warning)
        warnings.simplefilter('error')
        learn = quiet(Learner(dls, Net(), loss_func=nn.MSELoss(), cbs=ActivationHealth(modules=['out']))); learn.fit(1)
    learn = quiet(Learner(dls, Net(), loss_func=nn.MSELoss(), cbs=ActivationHealth(modules='enc')))  # (the only one watched: no row at all, said too)
    with pytest.warns(UserWarning, match=r"enc gave no output in any of this fit's training batches"): learn.fit(1)

def test_tabular_model_with_no_continuous_column():
    "fastai's TabularModel with no continuous column holds a BatchNorm1d(0) it never calls: HealthCheck's report crashed in `check_init`"
    "(index 0 is out of bounds), ActivationHealth said it gave no output, GradientHealth 'no gradient' and a 0/0 zero_frac"
    from fastai.tabular.all import TabularPandas, Categorify, CategoryBlock, RandomSplitter, range_of, tabular_learner, accuracy
    from initcb.report import HealthCheck
    from initcb.init import check_init
    rng = np.random.default_rng(0); n = 400
    df = pd.DataFrame({'a': rng.choice(list('abcde'), n), 'b': rng.choice(list('xyz'), n)})
    df['y'] = (df.a.isin(['a', 'b']) ^ (df.b == 'x')).astype(int)
    to = TabularPandas(df, [Categorify], ['a', 'b'], [], y_names='y', y_block=CategoryBlock(), splits=RandomSplitter(seed=0)(range_of(df)))
    torch.manual_seed(0)
    learn = quiet(tabular_learner(to.dataloaders(bs=64), layers=[16], metrics=accuracy, cbs=HealthCheck(report=False)))
    with warnings.catch_warnings(): warnings.simplefilter('error'); learn.fit(3, 1e-2)
    assert len(learn.health_check.report) == 0
    assert 'bn_cont' not in learn.activation_health.names and 'bn_cont' not in check_init(learn.model).layer.tolist()
    gh = learn.gradient_health
    assert {'bn_cont.weight', 'bn_cont.bias'} <= set(gh.names) and not len(gh.events)
    d = gh.to_df(per='param')
    assert d[d.param.str.startswith('bn_cont')].frozen.all() and d.zero_frac.dropna().between(0, 1).all()

def test_a_y_range_too_narrow_for_the_targets_is_said():
    "fastai's `y_range` (a final SigmoidRange) was not watched: outputs pinned at its ends said nothing; watched by hand, its remedy was LSUV's"
    from fastai.tabular.all import TabularPandas, Categorify, Normalize, RegressionBlock, RandomSplitter, range_of, tabular_learner
    from fastai.layers import SigmoidRange
    from initcb.report import HealthCheck, Y_RANGE
    rng = np.random.default_rng(0); n = 1000
    df = pd.DataFrame({'a': rng.choice(list('abcde'), n), 'x1': rng.standard_normal(n), 'x2': rng.standard_normal(n)})
    df['y'] = (2 * df.x1 - df.x2 + (df.a == 'a') * 1.0).astype('float32')  # (std about 2.3)
    to = TabularPandas(df, [Categorify, Normalize], ['a'], ['x1', 'x2'], y_names='y', y_block=RegressionBlock(), splits=RandomSplitter(seed=0)(range_of(df)))
    torch.manual_seed(0)
    learn = quiet(tabular_learner(to.dataloaders(bs=64), layers=[32], y_range=(-0.5, 0.5), cbs=HealthCheck(report=False)))
    learn.fit_one_cycle(3, 3e-2)
    r = learn.health_check.report
    sat = r[r.problem == 'saturated activation']
    assert sat.layer.tolist() == ['layers.2'] and isinstance(learn.model.layers[2], SigmoidRange)
    assert sat.remedy.iloc[0].startswith(Y_RANGE) and '(-0.5, 0.5)' in sat.remedy.iloc[0] and sat.callback.iloc[0] == ''

def test_a_healthy_tabular_fits_embedding_is_not_too_hot():
    "A healthy tabular regression at lr 3e-2 (validation MSE 0.014 on targets of variance 5.8) read 'embeds.0 too hot updates', a warning:"
    "an embedding starts at fastai's std 0.01 and a row steps only when its index comes, so its steps are large against its weights"
    from fastai.tabular.all import TabularPandas, Categorify, Normalize, RegressionBlock, RandomSplitter, range_of, tabular_learner
    from initcb.report import HealthCheck
    rng = np.random.default_rng(0); n = 2000
    df = pd.DataFrame({'a': rng.choice(list('abcde'), n), 'x1': rng.standard_normal(n), 'x2': rng.standard_normal(n)})
    df['y'] = (2 * df.x1 - df.x2 + (df.a == 'a') * 1.0).astype('float32')
    to = TabularPandas(df, [Categorify, Normalize], ['a'], ['x1', 'x2'], y_names='y', y_block=RegressionBlock(), splits=RandomSplitter(seed=0)(range_of(df)))
    torch.manual_seed(0)
    learn = quiet(tabular_learner(to.dataloaders(bs=64), layers=[32], cbs=HealthCheck(report=False)))
    learn.fit_one_cycle(3, 3e-2)
    assert learn.recorder.values[-1][1] < 0.1
    r = learn.health_check.report
    hot = r[r.problem == 'too hot updates']
    assert hot.layer.tolist() == ['embeds.0'] and (hot.severity == 'info').all(), r[['layer', 'problem', 'severity']]

def test_awd_lstm_embedding_watched_through_its_dropout():
    "AWD-LSTM looks its `encoder` up through `encoder_dp` (fastai's EmbeddingDropout: `F.embedding` on its weight), never calling it: the"
    "embedding's output was not recorded, and every fit warned 'encoder gave no output'"
    from fastai.text.models.core import get_language_model
    from fastai.text.models.awdlstm import AWD_LSTM, awd_lstm_lm_config
    from fastai.callback.rnn import RNNCallback
    from fastai.losses import CrossEntropyLossFlat
    torch.manual_seed(0)
    x = torch.randint(0, 50, (64, 12)); y = torch.roll(x, -1, 1)
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=16), DataLoader(list(zip(x, y)), bs=16))
    cfg = {**awd_lstm_lm_config, 'emb_sz': 8, 'n_hid': 16, 'n_layers': 1}
    learn = quiet(Learner(dls, get_language_model(AWD_LSTM, 50, config=cfg), loss_func=CrossEntropyLossFlat(), cbs=[RNNCallback(), ActivationHealth()]))
    with warnings.catch_warnings(): warnings.simplefilter('error', UserWarning); learn.fit(1, 1e-2)
    ah = learn.activation_health
    assert '0.encoder_dp' in ah.names and '0.encoder' not in ah.names
    assert np.isfinite(ah.summary().loc['0.encoder_dp', 'rms'])

def test_sigmoid_range_saturation_in_sigmoid_units():
    "`sat_eps` applied in output units: a y_range of (0, 0.05) read most outputs saturated on sigmoid inputs of std 1, and tensor bounds crashed"
    from fastai.layers import SigmoidRange
    torch.manual_seed(0)
    x = torch.randn(256, 4); y = torch.rand(256, 2) * 0.05
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=32), DataLoader(list(zip(x, y)), bs=32))
    for lo, hi in ((0., 0.05), (0., 100.)):
        m = nn.Sequential(nn.Linear(4, 2), SigmoidRange(lo, hi))
        with torch.no_grad(): m[0].weight.copy_(torch.eye(2, 4)); m[0].bias.zero_()  # (its inputs: std 1, |z| > 3.9 for 0.02 of a sigmoid: 0.01%)
        learn = quiet(Learner(dls, m, loss_func=nn.MSELoss(), cbs=ActivationHealth(sample_every=1)))
        learn.fit(1, 0.)
        assert learn.activation_health.summary().loc['1', '% saturated'] < 1, (lo, hi)
    m = nn.Sequential(nn.Linear(4, 2), SigmoidRange(torch.tensor([0., 0.]), torch.tensor([1., 10.])))  # (per-output bounds: no one pair)
    learn = quiet(Learner(dls, m, loss_func=nn.MSELoss(), cbs=ActivationHealth()))
    learn.fit(1, 1e-3)
    assert np.isnan(learn.activation_health.summary().loc['1', '% saturated'])

def _tabular_digits(layers, bs=64):
    from fastai.tabular.all import TabularDataLoaders, tabular_learner, CategoryBlock, Normalize
    from sklearn.datasets import load_digits
    d = load_digits(); df = pd.DataFrame(d.data[:512], columns=[f'p{i}' for i in range(64)]); df['y'] = d.target[:512]
    dls = TabularDataLoaders.from_df(df, y_names='y', cont_names=[f'p{i}' for i in range(64)], procs=[Normalize], y_block=CategoryBlock(), bs=bs)
    return quiet(tabular_learner(dls, layers=layers))

def test_tabular_shared_relu_every_block():
    "fastai's TabularModel puts one ReLU object in every block: the second block's dead units went unseen (watched at its first call only), and the remedy named the first block's"
    from initcb.gradients import GradientHealth
    from initcb.report import HealthCheck
    torch.manual_seed(0)
    learn = _tabular_digits([32, 16])
    assert learn.model.layers[0][1] is learn.model.layers[1][1]
    with torch.no_grad(): learn.model.layers[1][0].weight[:12] = 0.  # 12 of the second block's 16 units output 0: dead after the ReLU
    outs, ah, gh = [], ActivationHealth(sample_every=1), GradientHealth(act_grads=True)
    learn.add_cbs([ah, gh])
    h = learn.model.layers[1][0].register_forward_hook(lambda m, i, o: outs.append(torch.relu(o).detach().clone()) if m.training else None)
    learn.fit(1, 1e-3)
    h.remove()
    assert 'layers.1.1' in ah.names and 'layers.0.1' in ah.names
    df = ah.to_df().query("layer == 'layers.1.1'")
    assert len(df) == len(outs) > 0
    np.testing.assert_allclose(df['abs_mean'], [o.abs().mean() for o in outs], rtol=1e-5)  # (its second call's statistics, under its second name)
    assert (ah.dormancy()['layers.1.1'] <= 0).sum() == 12 and (ah.dormancy()['layers.0.1'] <= 0).sum() < 4
    ag = gh.act_grads_df().groupby('layer').rms.mean()
    assert not np.isclose(ag['layers.1.1'], ag['layers.0.1'])  # (each call's own gradient)
    rep = learn.health_report(verbose=False)
    assert ((rep.layer == 'layers.1.1') & (rep.problem == 'dead units')).any()
    assert not ((rep.layer == 'layers.0.1') & (rep.problem == 'dead units')).any()

def test_tabular_shared_relu_remedy_names_its_block():
    from initcb.report import HealthCheck
    torch.manual_seed(0)
    learn = _tabular_digits([32, 16]); m = learn.model
    with torch.no_grad():  # (distinct dead units: zero rows would be BreakSymmetry's, before any dormancy)
        m.layers[0][2].weight.fill_(0.1); m.layers[0][2].bias.fill_(10.)  # the second block's inputs all about +10
        m.layers[1][0].weight[:12] = -torch.rand(12, 32) - 0.1  # 12 of its 16 units negative on every input: dead after the ReLU
    hc = HealthCheck(remedy=True, report=False)
    learn.add_cb(hc)
    with warnings.catch_warnings(): warnings.simplefilter('ignore'); learn.fit(1, 1e-3)
    acts = [a for a in hc.actions.detail if 'dormant units re-initialized' in a]
    assert acts and all('dead in activation layers.1.1' in a for a in acts), acts

class _Block(nn.Module):
    def __init__(self, act, n_in, n_out): super().__init__(); self.lin, self.act = nn.Linear(n_in, n_out), act
    def forward(self, x): return self.act(self.lin(x))

class _KeptAct(nn.Module):
    "The activation kept on the model as well as handed to each block: three names, two calls a forward pass (the model never calls its own)"
    def __init__(self):
        super().__init__(); self.act = nn.ReLU()
        self.blocks = nn.Sequential(_Block(self.act, 64, 32), _Block(self.act, 32, 16)); self.head = nn.Linear(16, 10)
    def forward(self, x): return self.head(self.blocks(x))

def test_a_shared_activation_is_named_by_the_block_that_calls_it():
    "Names were given calls in registration order: with `self.act` on the model too, block 1's dead units were reported as `blocks.0.act`'s, and `blocks.1.act` as never called"
    from initcb.core import digits_dls
    from initcb.reinit import unit_chains
    torch.manual_seed(0)
    m = _KeptAct()
    with torch.no_grad(): m.blocks[1].lin.bias[:12] = -100.  # 12 of block 1's 16 units dead
    ah = ActivationHealth(sample_every=1, modules=lambda n, x: isinstance(x, nn.ReLU))
    learn = quiet(Learner(digits_dls(bs=64, flat=True), m, loss_func=nn.CrossEntropyLoss(), cbs=ah))
    with pytest.warns(UserWarning, match=r"ActivationHealth: act gave no output"): learn.fit(1, 1e-3)
    test = {n: int((s <= 0).sum()) for n, s in ah.dormancy().items()}
    assert ah.names == ['act', 'blocks.0.act', 'blocks.1.act'] and test['blocks.1.act'] == 12 and test['blocks.0.act'] < 4, test
    assert ah.summary().loc['blocks.1.act', '% near zero'] > 70 and np.isnan(ah.summary().loc['act', 'rms'])
    ch = unit_chains(m)
    assert ch['blocks.0.lin'][0]['act'] == 'blocks.0.act' and ch['blocks.1.lin'][0]['act'] == 'blocks.1.act'

def test_export_mid_fit_with_a_shared_activation(tmp_path):
    "`learn.export` pickles the model with its hooks (cloudpickle: a bound method as its function and its object): the hook of a module in several blocks came back"
    "bound to an `_Orphan` without its slots, and the exported learner could not predict"
    import pickle
    from fastai.callback.core import Callback
    from fastai.learner import load_learner
    from initcb.gradients import GradientHealth
    learn = _tabular_digits([32, 16])
    class MidExport(Callback):
        order = 70
        def after_epoch(self):
            if self.epoch == 0: self.learn.export(tmp_path/'mid.pkl')
    learn.add_cbs([ActivationHealth(), GradientHealth(act_grads=True), MidExport()])
    with warnings.catch_warnings(): warnings.simplefilter('ignore'); learn.fit(2)
    back = load_learner(tmp_path/'mid.pkl')
    m = pickle.loads(pickle.dumps(back.model))  # (plain pickle brings a bound method back by name: `getattr(orphan, name)`)
    m.eval()(torch.zeros(2, 0, dtype=torch.long), torch.randn(2, 64))
    assert sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules()) == 0
    back.predict(learn.dls.valid_ds.items.iloc[0])  # (the orphaned hooks remove themselves at the first call)
    assert sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in back.model.modules()) == 0

def test_a_history_saved_with_fewer_names_reads(tmp_path):
    "A TabularModel history saved before each place of its ReLU had a name (its names without `layers.1.1`): the report's dormancy read the modules afresh, named `layers.1.1`, and failed"
    import initcb.report  # (`learn.health_report`)
    learn = _tabular_digits([32, 16])
    names = [n for n in ['bn_cont', 'layers.0.0', 'layers.0.1', 'layers.0.2', 'layers.1.0', 'layers.1.2', 'layers.2.0']]
    ah = ActivationHealth(modules=names); learn.add_cb(ah); learn.fit(1)
    ah.save(tmp_path/'h.npz'); learn.remove_cb(ah)
    back = ActivationHealth.load(tmp_path/'h.npz'); learn.add_cb(back)
    back.mod_sel = None  # (saved with the default selection, as those histories were: today's default names `layers.1.1` too)
    assert 'layers.1.1' not in back.dormancy() and set(back.dormancy()) <= set(names)
    assert learn.health_report(verbose=False) is not None
