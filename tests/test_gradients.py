"GradientHealth: bad input, exceptions, depth-independent op count, argument fuzzing."
import math, numpy as np, pytest, torch
from torch import nn
from hypothesis import given, settings, strategies as st
from fastai.callback.core import Callback
from fastai.test_utils import synth_learner
from fastai.learner import Learner
from initcb.core import digits_dls
from initcb.gradients import GradientHealth
from helpers import quiet, bad_argument_named, works_or_names_argument

def mlp(depth):
    layers = [nn.Linear(1, 8)] + sum([[nn.ReLU(), nn.Linear(8, 8)] for _ in range(depth)], []) + [nn.ReLU(), nn.Linear(8, 1)]
    return nn.Sequential(*layers)

class Fail(Callback):
    order = GradientHealth.order + 1
    def before_step(self):
        if self.train_iter == 2: raise RuntimeError('boom')

def test_exception_mid_step_leaves_nothing_behind():
    cb = GradientHealth(update_every=1, warn=False)
    learn = quiet(synth_learner(n_trn=5, cbs=[cb, Fail()])); learn.model = mlp(2)
    with pytest.raises(RuntimeError): learn.fit(1)
    assert cb._prev is None and '_with_events' not in learn.__dict__
    assert len(cb.hist) == 3  # batches 0, 1, 2 were recorded and reached the history
    learn.remove_cb(Fail); learn.fit(1)
    assert len(cb.hist) == 3 + len(learn.dls.train)

def test_op_count_does_not_grow_with_depth():
    import sys, os
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'bench'))
    from overhead import OpCount
    def ops(depth, cb, n):
        torch.manual_seed(0); learn = quiet(synth_learner(n_trn=n, cbs=cb)); learn.model = mlp(depth)
        with OpCount() as oc: learn.fit(1)
        return oc.n
    def marginal(depth):
        a = ops(depth, [GradientHealth(warn=False)], 24) - ops(depth, [GradientHealth(warn=False)], 8)
        b = ops(depth, [], 24) - ops(depth, [], 8)
        return (a - b) / 16
    o2, o20 = marginal(2), marginal(20)
    assert o20 <= 1.2 * o2, (o2, o20)

def test_update_ratio_exact_for_sgd():
    "Plain SGD: the update is lr * grad, so ‖Δw‖/‖w‖ = lr ‖g‖ / ‖w‖ for every parameter"
    from fastai.optimizer import SGD
    from fastai.learner import Learner
    from fastai.losses import MSELossFlat
    from fastai.test_utils import synth_dbunch
    cb = GradientHealth(update_every=1, warn=False)
    learn = quiet(Learner(synth_dbunch(n_train=3), mlp(1), loss_func=MSELossFlat(), opt_func=SGD, cbs=cb))
    learn.fit(1, 0.1)
    df = cb.to_df(per='param')
    np.testing.assert_allclose(df['update_ratio'], 0.1 * df['grad_norm'] / df['weight_norm'], rtol=1e-4)

class Before(Callback):
    "Each parameter before and after every step"
    order = GradientHealth.order + 0.1
    def before_fit(self): self.w = []
    def before_step(self): self.w0 = [p.detach().clone() for p in self.model.parameters()]
    def after_step(self): self.w.append(list(zip(self.w0, [p.detach().clone() for p in self.model.parameters()])))

def _optimizers():
    from functools import partial
    from fastai.optimizer import Adam, OptimWrapper
    return {'fastai Adam (decoupled)': (Adam, 'weights'), 'fastai Adam (L2)': (partial(Adam, decouple_wd=False), 'none'),
            'torch AdamW': (partial(OptimWrapper, opt=torch.optim.AdamW), 'all'), 'torch SGD (L2)': (partial(OptimWrapper, opt=torch.optim.SGD), 'none')}

@pytest.mark.parametrize('name', list(_optimizers()))
def test_gradient_step_leaves_decoupled_decay_aside(name):
    "grad_update_ratio = ‖Δw + lr·wd·w‖/‖w‖ where the optimizer shrinks the weights apart from the gradient (fastai's `weight_decay` step: not\n    BatchNorm or biases unless `wd_bn_bias`; AdamW: every parameter), the whole update where the decay is in the gradient (L2)"
    opt_func, decayed = _optimizers()[name]
    from fastai.learner import Learner
    from fastai.losses import MSELossFlat
    from fastai.test_utils import synth_dbunch
    torch.manual_seed(0)
    cb, rec = GradientHealth(update_every=1, warn=False), Before()
    learn = quiet(Learner(synth_dbunch(n_train=3), mlp(1), loss_func=MSELossFlat(), opt_func=opt_func, cbs=[cb, rec]))
    lr, wd = 1e-2, 0.1
    learn.fit(1, lr, wd=wd)
    df = cb.to_df(per='param')
    names = [n for n, _ in learn.model.named_parameters()]
    want = []
    for step in rec.w:
        for n, (w0, w1) in zip(names, step):
            c = lr * wd if decayed == 'all' or decayed == 'weights' and n.endswith('weight') else 0.
            want.append(((w0 - w1 - c * w0).norm() / w0.norm()).item())
    np.testing.assert_allclose(df['grad_update_ratio'], want, rtol=1e-4)
    same = np.isclose(df['grad_update_ratio'], df['update_ratio'], rtol=1e-6)
    assert same.all() if decayed == 'none' else not same.all()

def test_decay_of_half_the_weight_has_no_gradient_step():
    "lr·wd >= 0.5 (a step that decays half of each weight or more): the gradient's part is not separated, NaN; the biases (not decayed) still have theirs"
    from fastai.optimizer import SGD
    cb = GradientHealth(update_every=1, warn=False)
    learn = quiet(synth_learner(n_trn=2, cbs=cb)); learn.model, learn.opt_func = mlp(1), SGD
    learn.fit(1, 1., wd=0.6)
    df = cb.to_df(per='param')
    w, b = df[df.param.str.endswith('weight')], df[df.param.str.endswith('bias')]
    assert w.grad_update_ratio.isna().all() and np.isfinite(w.update_ratio).all()
    np.testing.assert_allclose(b.grad_update_ratio, b.update_ratio, rtol=1e-6)

class ZeroRes(nn.Module):
    "A residual block whose last BatchNorm starts at zero (as in fastai's xresnet): the block starts as the identity"
    def __init__(self):
        super().__init__()
        self.inp, self.lin, self.bn, self.out = nn.Linear(1, 8), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)
        nn.init.zeros_(self.bn.weight)
    def forward(self, x):
        h = torch.relu(self.inp(x.view(-1, 1)))
        return self.out(torch.relu(h + self.bn(self.lin(h)))).view(x.shape)

@pytest.mark.parametrize('lr', [3e-3, 1.])
def test_weights_growing_from_zero_are_not_too_hot(lr):
    "A zero-initialized layer's first steps are large against its weights (ratio inf, then falling into the band): not too hot; a learning rate far too high still is"
    from fastai.optimizer import Adam
    torch.manual_seed(0)
    cb = GradientHealth(update_every=1, warn=False)
    learn = quiet(synth_learner(n_trn=20, cbs=cb)); learn.model, learn.opt_func = ZeroRes(), Adam
    learn.fit(1, lr)
    bn = cb.to_df().query("layer == 'bn'").dropna(subset=['update_ratio'])
    hot = set(cb.events.query("kind == 'too hot'").layer)
    if lr < 1:
        assert np.isinf(bn.update_ratio.iloc[0]) and (bn.update_ratio.iloc[1:3] > 0.1).all()  # what the rule would have flagged
        assert hot == set(), cb.events
    else: assert {'inp', 'lin', 'out'} <= hot, cb.events

bad = [dict(every=0), dict(update_every=0), dict(explode_window=4), dict(vanish_frac=-1), dict(vanish_frac=2.), dict(vanish_batches=0), dict(explode_factor=0.5),
       dict(explode_ceiling=float('nan')), dict(growth=0.), dict(growth_batches=0), dict(band=(0, 1)), dict(band=(1, 1e-3)),
       dict(band='x'), dict(band=(True, 2)), dict(band_batches=0), dict(stall_lr=1.5), dict(stall_lr=-0.1), dict(chunk=0), dict(max_rows=1),
       dict(warn='no'), dict(warn=None), dict(act_grads=1), dict(act_grads='yes')]

@pytest.mark.parametrize('kw', bad)
def test_bad_arguments_name_the_argument(kw): bad_argument_named(GradientHealth, kw)

def test_numpy_numbers_and_bools_are_taken():
    "NumPy numbers and bools are taken as Python's, stored as Python's"
    cb = GradientHealth(band=(np.float32(1e-5), np.int64(1)), every=np.int64(1), vanish_frac=np.float32(1e-4), warn=np.bool_(False), act_grads=np.False_)
    assert cb.band == (np.float32(1e-5), 1.) and all(type(b) is float for b in cb.band) and cb.warn is False and cb.act_grads is False and type(cb.every) is int

@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(['every', 'update_every', 'vanish_frac', 'vanish_batches', 'explode_factor', 'growth', 'stall_lr', 'chunk', 'max_rows']),
                       st.one_of(st.integers(-3, 100), st.floats(allow_nan=True, allow_infinity=True), st.none()), max_size=3))
def test_constructor_fuzz(kw): works_or_names_argument(lambda **k: GradientHealth(warn=False, **k), kw)

def readers(cb, tmp):
    "Every reader of the history"
    return dict(to_df=cb.to_df, to_df_param=lambda: cb.to_df(per='param'), events=lambda: cb.events, global_norm=cb.global_norm,
                plot_grad_norms=cb.plot_grad_norms, plot_update_ratios=cb.plot_update_ratios, plot_layer=lambda: cb.plot_layer(0),
                act_grads_df=cb.act_grads_df, state_dict=cb.state_dict, save=lambda: cb.save(tmp/'g.npz'))

def test_readers_before_fit(tmp_path):
    "Before any fit (attached or not), every reader says so with a ValueError (`events` too: not an AttributeError, which fastcore would mask)"
    cb = GradientHealth(act_grads=True)
    for n, f in readers(cb, tmp_path).items():
        with pytest.raises(ValueError, match='nothing recorded yet: fit with the callback first$'): f()
    learn = quiet(synth_learner(n_trn=2, cbs=cb))
    for n, f in readers(cb, tmp_path).items():
        with pytest.raises(ValueError, match='nothing recorded yet'): f()

class NaNFirst(Callback):
    "NaN inputs at the first training batch"
    def before_batch(self):
        if self.training and self.train_iter == 0: self.learn.xb = (self.xb[0] * float('nan'),)

@pytest.mark.parametrize('how', ['fit(0)', 'stopped'])
def test_plots_after_a_fit_that_recorded_nothing(tmp_path, how):
    "A fit that recorded no step (`fit(0)`; stopped at its first batch by `NonFiniteGuard`): every plot says that nothing is recorded (a ValueError, not matplotlib's TypeError)"
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    from initcb.report import NonFiniteGuard
    cb = GradientHealth(warn=False)
    learn = quiet(synth_learner(n_trn=2, cbs=[cb] + ([NonFiniteGuard(policy='stop', verbose=False), NaNFirst()] if how == 'stopped' else [])))
    learn.model = mlp(1); learn.fit(0 if how == 'fit(0)' else 1)
    assert len(cb.hist) == 0
    try:
        for n in ('plot_grad_norms', 'plot_update_ratios', 'plot_layer'):
            with pytest.raises(ValueError, match='nothing recorded yet: the history holds no'): readers(cb, tmp_path)[n]()
    finally: plt.close('all')
    assert len(cb.to_df()) == 0

def test_readers_after_pickling(tmp_path):
    "Pickling (`learn.export`) leaves the history out by design: the readers of the copy say so, and point to `save`; the copy records afresh"
    import pickle
    cb = GradientHealth(act_grads=True, update_every=1, warn=False)
    learn = quiet(synth_learner(n_trn=2, cbs=cb)); learn.model = mlp(1); learn.fit(1)
    learn.remove_cb(cb); back = pickle.loads(pickle.dumps(cb))  # (the learner itself: its logger is a lambda)
    for n, f in readers(back, tmp_path).items():
        with pytest.raises(ValueError, match=r'not kept through pickling or `learn.export`: keep it with `save`'): f()
    assert len(cb.to_df()) == 2 * len(cb.layers) and len(cb.act_grads_df())
    learn = quiet(synth_learner(n_trn=3, cbs=back)); learn.model = mlp(1); learn.fit(1)
    assert len(back.to_df()) == 3 * len(back.layers) and len(back.events) == 0 and len(back.global_norm()) == 3

def flags_one_row_at_a_time(gh, chunks):
    "The exploding and vanishing rules as written in the docs, applied one batch at a time (the oracle for `_check`)"
    ev, past, grow, vanish, nograd = [], [], 0, {}, {}
    live = set(gh._cols.tolist())  # (the other columns are frozen: NaN, left out of every rule)
    for iters, g in chunks:
        for it, row in zip(iters, g):
            if it in gh.skipped: continue
            gn = math.sqrt(sum(float(x) ** 2 for k, x in enumerate(row) if k in live))
            if not math.isfinite(gn): ev.append((it, 'nonfinite')); gn = None
            else:
                med = np.median(past[-gh.explode_window:]) if len(past) >= 5 else 0.  # (0: no scale to jump from)
                if gn > gh.explode_ceiling or (med > 0 and gn > gh.explode_factor * med): ev.append((it, 'exploding'))
                grow = grow + 1 if past and past[-1] > 0 and gn >= gh.growth * past[-1] else 0
                if grow >= gh.growth_batches: ev.append((it, 'exploding'))
                past.append(gn)
            ln = {l: math.sqrt(sum(float(x) ** 2 for k, (x, lj) in enumerate(zip(np.nan_to_num(row, nan=0., posinf=0.), gh._layer_of))
                                   if lj == j and k in live))
                  for j, l in enumerate(gh.layers) if any(gh._layer_of[k] == j for k in live)}
            top = max(ln.values())
            for l, v in ln.items():
                vanish[l] = vanish.get(l, 0) + 1 if 0 < v < gh.vanish_frac * top else 0
                if vanish[l] == gh.vanish_batches: ev.append((it, 'vanishing'))
                raw = [float(x) for k, (x, lj) in enumerate(zip(row, gh._layer_of)) if gh.layers[lj] == l and k in live]
                nograd[l] = nograd.get(l, 0) + 1 if top > 0 and all(x == 0 for x in raw) else 0  # (exactly none: not used, or cut off)
                if nograd[l] == gh.vanish_batches: ev.append((it, 'no gradient'))
    return sorted(ev)

@settings(max_examples=60, deadline=None)
@given(st.data())
def test_flags_match_one_row_at_a_time(data):
    "`_check` works on whole chunks with array ops; its flags must be the ones a batch-by-batch reading gives"
    gh = GradientHealth(warn=False, vanish_batches=3, growth_batches=3, vanish_frac=1e-3)
    gh._reset(['a.weight', 'a.bias', 'b.weight', 'c.weight'], [4, 2, 8, 3]); gh._clip = None
    frozen = data.draw(st.sets(st.integers(0, 3), max_size=3))  # parameters frozen in this fit: NaN columns, never flagged
    gh._cols = np.array([k for k in range(4) if k not in frozen])
    vals = st.sampled_from([0., 1e-6, 0.5, 1., 2., 3., 1e3, 1e7, math.nan, math.inf])
    n = data.draw(st.integers(1, 90))
    g = np.array(data.draw(st.lists(st.lists(vals, min_size=4, max_size=4), min_size=n, max_size=n)))
    g[:, sorted(frozen)] = math.nan
    cuts = sorted(set(data.draw(st.lists(st.integers(1, n - 1), max_size=4)))) if n > 1 else []
    gh.skipped = data.draw(st.lists(st.integers(0, n - 1), max_size=5, unique=True))
    iters = np.arange(n)
    chunks = [(iters[a:b], g[a:b]) for a, b in zip([0] + cuts, cuts + [n])]
    for it, rows in chunks: gh._check(it, rows)
    got = sorted((e['batch'], e['kind']) for e in gh._events)
    assert got == flags_one_row_at_a_time(gh, chunks)

@pytest.mark.parametrize('every', [None, 2, 3])
def test_gradient_accumulation_records_the_steps(every):
    "Under GradientAccumulation only every other batch steps: each recorded row is a step, and `every` counts batches"
    "(a batch on the cadence that takes no step arms the next); the norms are those of the accumulated gradients"
    from fastai.callback.training import GradientAccumulation
    from fastai.test_utils import synth_dbunch
    from fastai.learner import Learner
    from fastai.losses import MSELossFlat
    from fastai.optimizer import SGD
    seen = {}
    class Peek(Callback):
        order = GradientHealth.order - 1
        def before_step(self): seen[self.train_iter] = torch.stack([p.grad.norm() for p in self.model.parameters()]).norm().item()
    cb = GradientHealth(every=every, update_every=1, warn=False)
    learn = quiet(Learner(synth_dbunch(n_train=12, bs=16), mlp(1), loss_func=MSELossFlat(), opt_func=SGD,
                          cbs=[cb, Peek(), GradientAccumulation(n_acc=32)]))
    learn.fit(1, 0.1)
    steps = sorted(seen)
    assert steps == list(range(1, 12, 2))  # (16 samples a batch, a step every 32)
    it = cb.hist.iters[:len(cb.hist)].tolist()
    assert it == (steps if every in (None, 2) else [1, 3, 7, 9]), it  # every=3: batches 0, 3, 6, 9 arm the steps at 1, 3, 7, 9
    np.testing.assert_allclose(cb.global_norm(), [seen[i] for i in it], rtol=1e-5)
    assert len(cb.upd) == len(it)


def test_annealed_learning_rate_is_not_a_stall():
    "fit_one_cycle anneals the lr 1e5-fold: the last measurements' update ratios fall below the band with it. Without"
    "the learning-rate gate (stall_lr=0) every layer is flagged stalled there; with it (default) none is"
    from fastai.learner import Learner
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401 (patches Learner)
    from initcb.core import digits_dls
    def run(**kw):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        learn = quiet(Learner(digits_dls(n_train=256), m, loss_func=nn.CrossEntropyLoss(), cbs=GradientHealth(warn=False, update_every=1, **kw)))
        learn.fit_one_cycle(30, 1e-2)
        return learn
    ungated = run(stall_lr=0.).gradient_health.events
    assert set(ungated.query("kind == 'stalled'")['layer']) == {'1', '3', '5'}, ungated
    learn = run()
    gh = learn.gradient_health
    assert not len(gh.events.query("kind == 'stalled'")), gh.events
    lr = gh.to_df()['lr'].to_numpy().reshape(-1, 3)  # (the lr each measurement was taken at, per layer)
    np.testing.assert_allclose(lr, np.array(learn.recorder.lrs)[:, None].repeat(3, 1), rtol=1e-6)


def test_unfreezing_is_not_an_explosion():
    "The second layer's weights are 1000x larger and its output 1000x smaller: the first layer's gradients are ~1000x the"
    "second's, and unfreezing it multiplies the global norm by as much, a change of what is summed, not an explosion (the"
    "rules' running values restart when the trainable set changes)"
    from fastai.torch_core import params
    class Big(nn.Module):
        def __init__(self):
            super().__init__(); self.a, self.b = nn.Linear(1, 8), nn.Linear(8, 1)
            with torch.no_grad(): self.b.weight.mul_(1000.)
        def forward(self, x): return self.b(torch.relu(self.a(x[:, None]))).squeeze(-1) * 1e-3
    torch.manual_seed(0)
    learn = quiet(synth_learner(n_trn=10, cbs=GradientHealth(warn=False)))
    learn.model, learn.splitter = Big(), lambda m: [params(m.a), params(m.b)]
    learn.freeze(); learn.fit(1, 1e-6)
    before = learn.gradient_health.global_norm()
    learn.unfreeze(); learn.fit(1, 1e-6)
    gh = learn.gradient_health
    assert np.median(gh.global_norm()[10:]) > 100 * np.median(before)  # (the jump the rule must not call an explosion)
    assert not len(gh.events.query("kind == 'exploding'")), gh.events


def test_unused_layer_has_no_gradient_not_vanishing():
    "A head the forward pass never uses gets no gradient: flagged 'no gradient' (with its remedy), never vanishing or stalled"
    from fastai.learner import Learner
    from initcb.core import digits_dls
    from initcb.report import REMEDIES
    import initcb.report  # noqa: F401 (learn.health_report)
    class TwoHeads(nn.Module):
        def __init__(self): super().__init__(); self.body, self.h1, self.h2 = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU()), nn.Linear(32, 10), nn.Linear(32, 10)
        def forward(self, x): return self.h1(self.body(x))
    torch.manual_seed(0)
    learn = quiet(Learner(digits_dls(n_train=512), TwoHeads(), loss_func=nn.CrossEntropyLoss(), cbs=GradientHealth(warn=False, vanish_batches=5)))
    learn.fit(1)
    ev = learn.gradient_health.events
    assert set(ev['kind']) == {'no gradient'} and set(ev['layer']) == {'h2'}, ev
    rep = learn.health_report(verbose=False)
    assert list(rep['problem']) == ['no gradient reaches it'] and rep['remedy'][0] == REMEDIES['no gradient'][0], rep


def test_discriminative_learning_rate_is_not_a_stall():
    "fine_tune's pattern at a constant lr: the first layer's group at 1e-7, the rest at 1e-2. Its tiny updates are chosen,"
    "not stalled (flagged with stall_lr=0); one learning rate of 1e-7 for every layer is stalled everywhere"
    from fastai.learner import Learner
    from fastai.torch_core import params
    from initcb.core import digits_dls
    def run(lr, **kw):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        learn = quiet(Learner(digits_dls(n_train=512), m, loss_func=nn.CrossEntropyLoss(), splitter=lambda m: [params(m[1]), params(m[3])],
                              cbs=GradientHealth(warn=False, update_every=1, **kw)))
        learn.fit(1, lr)
        return set(learn.gradient_health.events.query("kind == 'stalled'")['layer'])
    assert run(slice(1e-7, 1e-2), stall_lr=0.) == {'1'}
    assert run(slice(1e-7, 1e-2)) == set()
    assert run(1e-7) == {'1', '3'}

def test_update_rows_survive_thinning():
    "The gradient and update histories thin apart: every update measurement still reaches `to_df`, pooled into the gradient row it falls in"
    torch.manual_seed(0)
    gh = GradientHealth(update_every=2, max_rows=8, chunk=4, warn=False)
    learn = quiet(synth_learner(n_trn=40, cbs=gh)); learn.model = mlp(1); learn.fit(1)
    h, u, k, ku = gh.hist, gh.upd, len(gh.hist), len(gh.upd)
    assert not np.isin(u.iters[:ku], h.iters[:k]).all()  # (the rows no longer line up)
    rows = np.searchsorted(h.iters[:k], u.iters[:ku], 'right') - 1
    w = gh.to_df(per='param')['weight_norm'].to_numpy().reshape(k, -1)
    for r in range(k):
        sel = rows == r
        if not sel.any(): assert np.isnan(w[r]).all(); continue
        want = (u['weight_norm'][sel] * u.n[:ku][sel, None]).sum(0) / u.n[:ku][sel].sum()
        np.testing.assert_allclose(w[r], want, rtol=1e-5)
    d = gh.to_df()
    assert d.dropna(subset=['update_ratio']).groupby('layer').size().eq(len(set(rows))).all()

class Lookup(nn.Module):
    "A custom embedding: its own weight, looked up with `F.embedding(sparse=True)` (no module type says its gradient is sparse)"
    def __init__(self, n, d): super().__init__(); self.weight = nn.Parameter(torch.randn(n, d))
    def forward(self, x): return torch.nn.functional.embedding(x, self.weight, sparse=True)

class SparseEmb(nn.Module):
    "A sparse embedding (`sparse=True`: its weight's gradient is a sparse tensor) and a dense head"
    def __init__(self, bag=False):
        super().__init__()
        self.emb = nn.EmbeddingBag(50, 4, mode='sum', sparse=True) if bag == True else Lookup(50, 4) if bag == 'custom' else nn.Embedding(50, 4, sparse=True)
        self.head, self.bag = nn.Linear(4, 1), bag == True
    def forward(self, x): return self.head(self.emb(x) if self.bag else self.emb(x).mean(1))

class DenseGrads(Callback):
    "Each parameter's gradient before every step, made dense"
    order = GradientHealth.order + 0.1
    def before_fit(self): self.g = []
    def before_step(self): self.g.append([p.grad.to_dense().clone() for p in self.model.parameters()])

@pytest.mark.parametrize('bag', [False, True, 'custom'])
@pytest.mark.parametrize('opt', ['fastai SGD', 'torch SGD'])
def test_sparse_gradients(opt, bag):
    "nn.Embedding / nn.EmbeddingBag with sparse=True, a custom module's F.embedding(sparse=True): the fit runs, and the norms, zero fractions and update ratios are the dense gradient's"
    from functools import partial
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.losses import MSELossFlat
    from fastai.optimizer import SGD, OptimWrapper
    torch.manual_seed(0)
    x = torch.randint(0, 50, (48, 3)); x[:, 1] = x[:, 0]  # (a row looked up twice in every sample: the sparse gradient repeats it)
    ds = list(zip(x, torch.randn(48, 1)))
    dls = DataLoaders(DataLoader(ds, bs=16), DataLoader(ds, bs=16))
    cb, rec = GradientHealth(update_every=1, warn=False), DenseGrads()
    opt_func = partial(SGD, mom=0.) if opt == 'fastai SGD' else partial(OptimWrapper, opt=torch.optim.SGD)
    learn = quiet(Learner(dls, SparseEmb(bag), loss_func=MSELossFlat(), opt_func=opt_func, wd=0., cbs=[cb, rec]))
    learn.fit(1, 0.1)
    df = cb.to_df(per='param')
    gs = [g for step in rec.g for g in step]
    assert len(gs) == len(df) == 3 * 3 and df.param.iloc[0] == 'emb.weight'
    np.testing.assert_allclose(df.grad_norm, [g.norm().item() for g in gs], rtol=1e-5)
    np.testing.assert_allclose(df.zero_frac, [(g == 0).float().mean().item() for g in gs], rtol=1e-6)
    assert (df.zero_frac[df.param == 'emb.weight'] > 0.3).all()  # (most rows are not looked up in a batch)
    np.testing.assert_allclose(df.update_ratio, 0.1 * df.grad_norm / df.weight_norm, rtol=1e-4)  # (plain SGD: Δw = lr·g)
    assert (df.nonfinite == 0).all() and not len(cb.events.query("kind == 'no gradient'"))

@pytest.mark.parametrize('wd', ['awd', 'swd'])
def test_sparse_gradients_through_the_kit(wd):
    "HealthCheck (its NonFiniteGuard sums the gradients' norms) and AdaptiveWD (gradient norms too) on sparse gradients: they raised"
    from functools import partial
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.losses import MSELossFlat
    from fastai.optimizer import SGD
    from initcb.report import HealthCheck
    from initcb.wd import AdaptiveWD
    torch.manual_seed(0)
    x = torch.randint(0, 50, (48, 3)); ds = list(zip(x, torch.randn(48, 1)))
    dls = DataLoaders(DataLoader(ds, bs=16), DataLoader(ds, bs=16))
    m = SparseEmb('custom')
    learn = quiet(Learner(dls, m, loss_func=MSELossFlat(), opt_func=partial(SGD, mom=0.), cbs=[HealthCheck(report=False), AdaptiveWD(wd)]))
    learn.fit(2, 0.1)
    assert len(learn.gradient_health.to_df()) == 2 * 3 * 2 and learn.non_finite_guard.skips == []

def test_pre_step_copy_kept_for_the_fit_and_freed():
    "The weights' pre-step copy (`_pbuf`): one buffer the size of the trainable weights, allocated at the first update batch, reused by\n    every later one, kept between them (and through validation), freed when the fit ends (however it ends)"
    cb = GradientHealth(update_every=4, warn=False)
    class Watch(Callback):
        order = GradientHealth.order + 1
        def before_fit(self): self.bufs = []
        def after_batch(self): self.bufs.append(None if cb._pbuf is None else tuple(map(id, cb._pbuf)))
    w = Watch()
    learn = quiet(synth_learner(n_trn=6, cbs=[cb, w])); learn.model = mlp(1); learn.model[0].weight.requires_grad_(False)
    learn.fit(1); assert cb.frozen == ['0.weight']  # (listed; said as a warning only with `warn`)
    assert len(w.bufs) >= 6 and len(set(w.bufs)) == 1 and w.bufs[0] is not None and cb._pbuf is None and cb._prev is None
    learn.fit(1)  # (a buffer per fit)
    assert len(set(w.bufs)) == 1 and w.bufs[0] is not None and cb._pbuf is None
    class Peek(Callback):
        order = GradientHealth.order + 1
        def after_step(self): self.n = sum(t.numel() for t in cb._pbuf)
    peek = Peek(); learn.add_cb(peek); learn.fit(1); learn.remove_cb(peek)
    assert peek.n == sum(p.numel() for p in learn.model.parameters() if p.requires_grad)
    learn.add_cb(Fail())
    with pytest.raises(RuntimeError): learn.fit(1)
    assert cb._pbuf is None and cb._prev is None

@pytest.mark.parametrize('modules, names', [(['0', '2'], ['0', '2']), (lambda n, m: isinstance(m, nn.ReLU), ['1', '3'])])
def test_loaded_callback_carries_on(tmp_path, modules, names):
    "`save`/`load` keep every argument, the module selection (a predicate's: the names it chose) and every history, `act_grads`' too; attached to the learner it was saved from, the next fit carries each history on"
    import pandas as pd, warnings
    kw = dict(every=1, update_every=2, vanish_frac=1e-3, vanish_batches=7, explode_factor=5., explode_window=6, explode_ceiling=1e5, growth=3.,
              growth_batches=4, band=(1e-6, 1e-2), band_batches=2, stall_lr=0.2, chunk=3, max_rows=64, warn=False, act_grads=True, sample=100)
    cb = GradientHealth(modules=modules, **kw)
    learn = quiet(synth_learner(n_trn=5, cbs=cb)); learn.model = mlp(1); learn.fit(1); n = len(learn.dls.train)
    back = GradientHealth.load(cb.save(tmp_path/'g.npz'))
    assert {k: getattr(back, k) for k in kw} == kw
    assert back.mod_sel == names and back.amod_names == cb.amod_names == names
    for f in (lambda g: g.to_df(), lambda g: g.to_df(per='param'), lambda g: g.events, lambda g: g.act_grads_df()):
        pd.testing.assert_frame_equal(f(back), f(cb))
    np.testing.assert_array_equal(back.global_norm(), cb.global_norm())
    assert (back.n_seen, back.skipped, back.clipped, back._told, back._streak) == (cb.n_seen, cb.skipped, cb.clipped, cb._told, cb._streak)
    learn.remove_cb(cb); learn.add_cb(back)
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='.*history starts afresh'); learn.fit(1)
    assert back.n_seen == 2 * n and len(back.upd) == 2 * len(cb.upd)
    for h, first in ((back.hist, cb.hist), (back.agrad, cb.agrad)):  # every batch recorded: rows 0..2n-1, the first fit's as they were
        np.testing.assert_array_equal(h.iters[:len(h)], np.arange(2 * n))
        for c in first.data: np.testing.assert_array_equal(h[c][:n], first[c])
    ag = back.act_grads_df()
    assert len(ag) == 2 * n * len(names) and list(ag['layer'][:len(names)]) == names
    pd.testing.assert_frame_equal(ag.iloc[:n * len(names)], cb.act_grads_df())

def test_file_saved_before_selection_kept_still_loads(tmp_path):
    "A file saved before the module selection and the `act_grads` history were kept loads: the default selection, no `act_grads` history"
    import json, pandas as pd
    cb = GradientHealth(act_grads=True, modules=['0'], update_every=1, warn=False)
    learn = quiet(synth_learner(n_trn=3, cbs=cb)); learn.model = mlp(1); learn.fit(1)
    sd = {k: v for k, v in cb.state_dict().items() if not k.startswith('agrad_')}
    meta = json.loads(sd['meta']); meta['args'].pop('modules', None); meta.pop('amod_names', None); sd['meta'] = json.dumps(meta)
    np.savez_compressed(tmp_path/'old.npz', **{k: np.array(v) for k, v in sd.items()})
    back = GradientHealth.load(tmp_path/'old.npz')
    assert back.mod_sel is None and back.act_grads and back.agrad is None
    pd.testing.assert_frame_equal(back.to_df(), cb.to_df())
    with pytest.raises(ValueError, match='no activation gradients recorded'): back.act_grads_df()

def test_warnings_on_the_main_rank_only(monkeypatch):
    "Under DDP every rank raises the same flags: only rank 0 warns (the events are kept on every rank)"
    import warnings, initcb.gradients as g
    gh = GradientHealth(); gh._events, gh._told = [], set()
    monkeypatch.setattr(g, 'is_main', lambda: False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); gh._event('exploding', 3, None, 2.0, 'global gradient norm 2 at batch 3')
    assert not w and len(gh._events) == 1
    monkeypatch.setattr(g, 'is_main', lambda: True)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); gh._event('nonfinite', 4, 'a', float('nan'), 'non-finite gradient at batch 4')
    assert len(w) == 1

@pytest.mark.parametrize('whole', [True, False])
def test_float64_parameters_and_outputs(whole):
    "A float64 model (or one float64 submodule): every norm was taken with dtype=float32, which refuses to narrow float64"
    "(GradientHealth, NonFiniteGuard, HealthCheck, and ActivationHealth's whole-output reductions raised RuntimeError)"
    from initcb.activations import ActivationHealth
    from initcb.report import HealthCheck
    class Rec(Callback):
        order = 60
        def before_step(self): self.g2 = float(sum(p.grad.double().pow(2).sum() for p in self.learn.model.parameters()).sqrt())
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    class M(nn.Module):
        def __init__(s): super().__init__(); s.body = body.double() if whole else body; s.mid = nn.Linear(1, 1).double()
        def forward(s, x): return s.mid(s.body(x.double() if whole else x).double()).float()
    rec, gh, ah = Rec(), GradientHealth(warn=False), ActivationHealth(full_max=1 << 20)
    learn = quiet(synth_learner(n_trn=4, cbs=[rec, gh, ah, HealthCheck(report=False)]))
    learn.model = M(); learn.fit(1, 1e-3)
    assert len(gh.hist) == 4 and len(ah.fast) == 4 and np.isfinite(ah.to_df()['rms']).all()
    assert math.isclose(gh.global_norm()[-1], rec.g2, rel_tol=1e-4)

def test_act_grads_no_gradient_is_nan_in_every_column():
    "act_grads: a module that got no gradient this batch (not called, cut off from the loss) read zero_frac 0.0 ('no zeros')"
    class M(nn.Module):
        def __init__(s): super().__init__(); s.a, s.unused, s.cut, s.out = nn.Linear(1, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 1)
        def forward(s, x): h = s.a(x); return s.out(h + 0 * s.cut(h).detach())
    gh = GradientHealth(act_grads=True, warn=False)
    learn = quiet(synth_learner(n_trn=2, cbs=gh)); learn.model = M(); learn.fit(1)
    d = gh.act_grads_df().set_index('layer')
    assert d.loc[['unused', 'cut']].isna().drop(columns=['iter', 'n']).all().all()
    assert d.loc[['a', 'out'], ['abs_mean', 'zero_frac']].notna().all().all()

@pytest.mark.parametrize('how', ['unfreeze', 'freeze'])
def test_frozen_or_unfrozen_mid_fit(how):
    "Gradual unfreezing by a callback, in one fit: the parameters were fixed at before_fit, so layers unfrozen mid-fit went unrecorded"
    "(NaN, 'frozen') while they trained, and layers frozen mid-fit were flagged 'no gradient' (a false flag, reported by HealthCheck)"
    import warnings
    from fastai.torch_core import params
    from initcb.report import NonFiniteGuard
    class Sched(Callback):
        order = -50
        def before_fit(self):
            if how == 'unfreeze': self.learn.freeze_to(-1)
        def before_epoch(self):
            if self.epoch == 1: self.learn.unfreeze() if how == 'unfreeze' else self.learn.freeze_to(-1)
    torch.manual_seed(0)
    gh, gd = GradientHealth(vanish_batches=3), NonFiniteGuard()
    learn = quiet(synth_learner(n_trn=6, cbs=[Sched(), gh, gd]))
    learn.model = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    learn.splitter = lambda m: [params(m[0]), params(m[2]), params(m[4])]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); learn.fit(2, 1e-2)
    n = gh.to_df().pivot(index='iter', columns='layer', values='grad_norm')
    first, second = n.loc[:5, '0'], n.loc[6:, '0']
    if how == 'unfreeze': assert first.isna().all() and second.notna().all() and len(gd.params) == 6
    else: assert first.notna().all() and second.isna().all() and len(gd.params) == 2
    assert not any('no gradient' in str(x.message) for x in w) and not (gh.events['kind'] == 'no gradient').any()

def test_warn_false_says_nothing_of_frozen_parameters():
    "`warn=False` (HealthCheck's GradientHealth): every fine_tune printed 'GradientHealth skips N frozen parameters' anyway"
    import warnings
    cb = GradientHealth(warn=False)
    learn = quiet(synth_learner(n_trn=2, cbs=cb)); learn.model = mlp(1); learn.model[0].weight.requires_grad_(False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); learn.fit(1)
    assert not [x for x in w if 'GradientHealth' in str(x.message)] and cb.frozen == ['0.weight']

def test_act_grads_df_says_how_many_batches_a_row_holds():
    "Past `max_rows` the history merges rows pairwise: act_grads_df's `n` column says how many batches each row holds, as to_df's does"
    cb = GradientHealth(act_grads=True, max_rows=4, chunk=1, warn=False)
    learn = quiet(synth_learner(n_trn=12, cbs=cb)); learn.model = mlp(1)
    learn.fit(1)
    adf, nb = cb.act_grads_df(), len(learn.dls.train)
    assert adf['n'].max() > 1  # (rows were merged)
    assert (adf.groupby('layer')['n'].sum() == nb).all()
    assert cb.to_df().groupby('layer')['n'].sum().eq(nb).all()

def test_every_table_names_the_module_layer():
    "The recorders' tables and the guard's events name a module in one column, `layer`: they join on it without renaming"
    from initcb.activations import ActivationHealth
    from initcb.report import NonFiniteGuard
    ah, gh, g = ActivationHealth(), GradientHealth(act_grads=True, warn=False), NonFiniteGuard()
    learn = quiet(synth_learner(n_trn=4, cbs=[ah, gh, g])); learn.model = mlp(1); learn.fit(1)
    a, ag = ah.to_df(), gh.act_grads_df()
    both = a.merge(ag, on=['iter', 'layer'], suffixes=('', '_grad'))
    assert len(both) == len(ag) == len(a) and both['rms'].notna().all()
    for df in (a, ag, gh.to_df(), gh.events, g.events): assert 'layer' in df.columns and 'module' not in df.columns

def test_parameter_in_no_optimizer_group_is_not_stalled():
    "A parameter the splitter leaves out of every group (never updated, lr NaN) was flagged 'stalled' (remedy: raise the learning rate)"
    from fastai.torch_core import params
    torch.manual_seed(0)
    gh = GradientHealth(update_every=1, warn=False)
    learn = quiet(synth_learner(n_trn=12, cbs=gh)); learn.model = mlp(1)
    learn.splitter = lambda m: [params(m[0]), params(m[4])]  # ('2', the middle Linear, in no group)
    learn.fit(2)
    df = gh.to_df()
    assert df[df.layer == '2'].lr.isna().all() and df[df.layer == '2'].update_ratio.eq(0).all()
    assert not ((gh.events.kind == 'stalled') & (gh.events.layer == '2')).any(), gh.events

def test_a_wider_model_with_the_same_names_starts_afresh():
    "Parameters of the same names and other sizes (a layer widened): the history kept the old sizes and `zero_frac` read -11"
    def m(w): torch.manual_seed(0); return nn.Sequential(nn.Linear(64, w), nn.ReLU(), nn.Linear(w, 10))
    gh = GradientHealth(update_every=1, warn=False)
    learn = quiet(Learner(digits_dls(bs=64, flat=True, n_train=128), m(16), loss_func=nn.CrossEntropyLoss(), cbs=gh))
    learn.fit(1)
    learn.model = m(200); learn.create_opt()
    with pytest.warns(UserWarning, match='history starts afresh'): learn.fit(1)
    assert gh.sizes.tolist() == [12800, 200, 2000, 10] and gh.n_seen == 2
    zf = gh.to_df(per='param').zero_frac
    assert zf.between(0, 1).all()

def test_legacy_fp16_master_weights_are_no_missing_optimizer():
    "fastai's legacy fp16 (NonNativeMixedPrecision) points the optimizer at fp32 master copies: every layer read 'not in optimizer' (error)"
    import fastai.callback.fp16 as f
    class CPUNonNative(f.NonNativeMixedPrecision):  # (its CUDA assert aside, to run on a CPU)
        def before_fit(self):
            if self.learn.opt is None: self.learn.create_opt()
            self.model_pgs, self.master_pgs = f.get_master(self.opt, self.flat_master)
            self.old_pgs = self.opt.param_lists
            f._copy_state(self.learn.opt, self.model_pgs, self.master_pgs)
            if self.dynamic: self.count = 0
    learn = quiet(synth_learner(n_trn=8)); learn.model = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1)).half()
    gh = GradientHealth(warn=False)
    learn.add_cbs([CPUNonNative(dynamic=False), gh]); learn.fit(1, 1e-3)
    assert not (gh.events.kind == 'not in optimizer').any()

class Poison(Callback):
    "NaN and inf in 8 entries of the gradients of layer 2's `ps` at batches `at` (before GradientHealth reads them); with `clean`, zeroed after it did, so the weights stay finite"
    order = GradientHealth.order + 0.1
    def __init__(self, at, clean, ps): self.at, self.clean, self.ps = at, clean, ps
    def after_backward(self):
        if self.train_iter in self.at:
            for n in self.ps: g = getattr(self.model[2], n).grad.view(-1); g[:5] = math.nan; g[5:8] = math.inf
    def before_step(self):
        if self.clean:
            for p in self.model.parameters(): p.grad.nan_to_num_(0., 0., 0.)

def poisoned(clean, ps, **kw):
    torch.manual_seed(0)
    gh = GradientHealth(update_every=1, warn=False, **kw)
    learn = quiet(synth_learner(n_trn=10, cbs=[gh, Poison({1, 2, 3, 5, 6}, clean, ps)])); learn.model = mlp(1); learn.fit(1, 1e-2)
    return gh

def test_layer_counts_non_finite_batches_once():
    "A layer's `nonfinite_batches` was a 0/1 flag: 1 for a merged row where 5 of its 8 batches were non-finite (per parameter: 5); a batch"
    "where its weight and bias both went non-finite is one batch, not two"
    gh = poisoned(True, ('weight', 'bias'), max_rows=4)
    h, k = gh.hist, len(gh.hist)
    assert (h.n[:k] > 1).any()  # (thinned: merged rows)
    want = [sum(it in {1, 2, 3, 5, 6} for it in range(a, a + n)) for a, n in zip(h.iters[:k], h.n[:k])]
    L, p = gh.to_df(), gh.to_df(per='param')
    assert L.query("layer == '2'")['nonfinite_batches'].tolist() == want
    assert p.query("param == '2.weight'")['nonfinite_batches'].tolist() == want == p.query("param == '2.bias'")['nonfinite_batches'].tolist()
    assert (L.query("layer != '2'")['nonfinite_batches'] == 0).all() and not L['frozen'].any()

def test_non_finite_weights_are_not_frozen():
    "Once a NaN step made a layer's weights NaN, the layer view read its NaN weight norm as 'frozen': its `nonfinite` count left out (the bias's"
    "alone, then NaN), `zero_frac` NaN, its update ratio the bias's; per parameter the counts were there"
    gh = poisoned(False, ('weight',))  # (the bias stays finite for the step of batch 1: at batch 2 only the weights are NaN)
    L, p = gh.to_df(), gh.to_df(per='param')
    assert not L['frozen'].any() and not p['frozen'].any()
    for col in ('nonfinite', 'zero_frac'): assert L[col].notna().all(), col
    per = p.assign(layer=p['param'].str.rpartition('.')[0]).groupby(['iter', 'layer'], sort=False)['nonfinite'].sum()
    np.testing.assert_array_equal(L.set_index(['iter', 'layer'])['nonfinite'].loc[per.index].to_numpy(), per.to_numpy())
    two, w = L.query("layer == '2'").set_index('iter'), p.query("param == '2.weight'").set_index('iter')
    assert np.isnan(w.loc[2:, 'weight_norm']).all() and (two.loc[2:, 'nonfinite'] >= w.loc[2:, 'nonfinite']).all() and (w.loc[2:, 'nonfinite'] > 8).all()
    assert np.isnan(two.loc[2:, ['weight_norm', 'update_ratio']].to_numpy()).all()  # (NaN weights: no bias-only norm or ratio in their place)

class PreClip(Callback):
    "The total gradient norm of order `p` that `GradientClip` takes (`clip_grad_norm_` with no limit clips nothing), before it clips"
    def __init__(self, p): self.p, self.n = p, []
    def after_backward(self): self.n.append(nn.utils.clip_grad_norm_(self.model.parameters(), math.inf, self.p).item())

@pytest.mark.parametrize('p', [2., math.inf, 1., 3., 0.5, 'inf'])
def test_clipping_by_any_norm_type_is_recorded(p):
    "GradientClip's clipping was recorded only for norm_type 2: by inf or 1, `clipped` stayed empty though it clipped most steps"
    from fastai.callback.training import GradientClip
    torch.manual_seed(0)
    gh, pc = GradientHealth(warn=False), PreClip(p)
    learn = quiet(synth_learner(n_trn=16, cbs=[gh, pc])); learn.model = mlp(2); learn.fit(1, 0.)  # (lr 0: the same gradients whatever clipping does)
    mx = float(np.median(pc.n))
    learn.add_cb(GradientClip(max_norm=mx, norm_type=p)); pc.n = []; learn.fit(1, 0.)
    want = [16 + i for i, n in enumerate(pc.n) if n > mx]
    assert 0 < len(want) < 16 and gh.clipped == want
    assert gh.to_df().groupby('iter')['clipped'].first().loc[16:].sum() == len(want)


@pytest.mark.parametrize('name', ['Adafactor', 'Muon', 'AdamW', 'Adam'])
def test_decoupled_decay_knows_torchs_decoupled_optimizers(name):
    "torch's Adafactor and Muon decay decoupled (w *= 1 - lr wd) and say so by no flag: `decoupled_decay` read them as L2 (AdamW only), so"
    "GradientHealth left their decay in the gradient-driven update"
    from fastai.optimizer import OptimWrapper
    from initcb.gradients import decoupled_decay
    if not hasattr(torch.optim, name): pytest.skip(f'torch.optim.{name}: not in this torch')
    m = nn.Linear(4, 4, bias=False)  # (Muon: 2-d parameters only)
    opt = OptimWrapper(list(m.parameters()), getattr(torch.optim, name), weight_decay=0.1)
    d = decoupled_decay(opt, list(m.parameters()), np.array([0]))
    if name == 'Adam': assert d is None, d
    else: assert d is not None and d.tolist() == [True], d
