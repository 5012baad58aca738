"StatHistory: a row pools exactly the batches it covers, however often it was merged and whatever NaN rows (no value that batch) went into it; saved and loaded, it carries on the same"
import random, numpy as np, pandas as pd, pytest, torch
from torch import nn
from hypothesis import given, settings, strategies as st, HealthCheck
from fastai.callback.core import Callback
from initcb.core import StatHistory
from helpers import quiet

COLS = dict(mean='mean', std='std', mn='min', mx='max', s='sum', r='rms', h=('sum', (3,)))

def pooled(b, c):
    "Column `c` of the one-batch rows `b` (a list of dicts) pooled by hand: each batch with a value weighs one"
    rule = COLS[c] if isinstance(COLS[c], str) else COLS[c][0]
    x = np.array([r[c] for r in b], np.float64); nan = np.isnan(x)
    with np.errstate(all='ignore'):
        if rule in ('min', 'max'): return np.where(nan.all(0), np.nan, (np.nanmin if rule == 'min' else np.nanmax)(np.where(nan.all(0), 0, x), 0))
        if rule == 'sum': return np.where(nan.all(0), np.nan, np.nansum(x, 0))
        m = np.array([r['mean'] for r in b], np.float64) if rule == 'std' else 0 * x
        w = ~np.isnan(x + m); avg = lambda v: np.where(w, v, 0).sum(0) / w.sum(0)
        return avg(x) if rule == 'mean' else np.sqrt(avg(x**2)) if rule == 'rms' else np.sqrt(np.maximum(avg(x**2 + m**2) - avg(m)**2, 0))

def check(h, rows):
    "Every row of `h` holds its batches of `rows` pooled, and its count of batches with a value of each weighed column"
    its, n = h.iters[:len(h)], h.n[:len(h)]
    assert n.sum() == len(rows) and its[0] == 0 and (np.r_[its[1:], len(rows)] - its == n).all()
    for k in range(len(h)):
        b = rows[its[k]:its[k] + n[k]]
        for c in COLS:
            np.testing.assert_allclose(h[c][k], pooled(b, c), rtol=3e-5, atol=1e-6, equal_nan=True, err_msg=f'{c} row {k}')
            if COLS[c] in ('mean', 'rms', 'std'):
                x = np.array([r[c] + r['mean'] if c == 'std' else r[c] for r in b])
                np.testing.assert_array_equal(h.count(c)[k], (~np.isnan(x)).sum(0), err_msg=f'count of {c} row {k}')

def rows_of(rng, k, L, nanp):
    "`k` one-batch rows of `L` layers, each statistic NaN with chance `nanp` on its own (std with mean: pooled around it)"
    d = {c: rng.normal(size=(k, L) + ((3,) if c == 'h' else ())).astype(np.float32) for c in COLS}
    d['std'], d['r'] = np.abs(d['std']), np.abs(d['r'])
    for c in COLS:
        if c not in ('h', 'std'): d[c][rng.random((k, L)) < nanp] = np.nan
    d['std'][np.isnan(d['mean'])] = np.nan
    return d

@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(max_rows=st.integers(4, 12), blocks=st.lists(st.integers(1, 15), min_size=1, max_size=12), seed=st.integers(0, 1000), nanp=st.floats(0, 0.6))
def test_rows_pool_their_batches_whatever_was_merged(max_rows, blocks, seed, nanp):
    "Against the batches pooled by hand: a row merged from a NaN row and one with a value stood for both when merged again"
    "(0, NaN, 10, 10 into 4 rows: mean 5.0, not 6.67); saved and loaded (`arrays`, `from_arrays`), it merges on the same"
    rng, L = np.random.default_rng(seed), 2
    h, rows, it = StatHistory(COLS, L, max_rows), [], 0
    for k in blocks:
        d = rows_of(rng, k, L, nanp)
        h.append(np.arange(it, it + k), d); it += k
        rows += [{c: d[c][j] for c in COLS} for j in range(k)]
        assert len(h) <= max_rows
        check(h, rows)
    back = StatHistory.from_arrays(COLS, h.arrays('x_'), max_rows, 'x_')
    d = rows_of(rng, 9, L, nanp); rows += [{c: d[c][j] for c in COLS} for j in range(9)]
    for g in (h, back): g.append(np.arange(it, it + 9), d); check(g, rows)

def test_old_arrays_weigh_rows_by_n():
    "Arrays saved before the counts were kept load as they did: a row's count is its `n` where it has a value"
    h = StatHistory(dict(m='mean'), 1, 4)
    for i, v in enumerate([0., np.nan, 10., 10., 10., 10., 10.]): h.append([i], dict(m=np.array([[v]], np.float32)))
    a = h.arrays()
    assert a['n_m'].tolist() == [[3], [2], [1]]
    old = StatHistory.from_arrays(dict(m='mean'), {k: v for k, v in a.items() if k != 'n_m'}, 4)
    np.testing.assert_array_equal(old.count('m'), old.n[:len(old), None])
    np.testing.assert_array_equal(old['m'], h['m'])

class Net(nn.Module):
    "A block skipped on odd batches early in the fit (stochastic depth, a branch not taken), its output drifting up"
    def __init__(self): super().__init__(); self.inp, self.block, self.k = nn.Linear(4, 8), nn.Linear(8, 8), 0
    def forward(self, x):
        h = self.inp(x); self.k += self.training
        if self.k % 2 == 0 or self.k > 40: h = h + self.block(h + 0.1 * self.k)
        return h.sum(1)

def skipping_fit(max_rows):
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from initcb.activations import ActivationHealth
    torch.manual_seed(0); x, y = torch.randn(640, 4), torch.randn(640)
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=8), DataLoader(list(zip(x[:8], y[:8])), bs=8))
    ah = ActivationHealth(modules=['inp', 'block'], sample_every=1, max_rows=max_rows)
    quiet(Learner(dls, Net(), loss_func=nn.MSELoss(), cbs=ah, lr=0.)).fit(1)
    return ah

def test_activation_summary_with_skipped_batches_does_not_depend_on_thinning(tmp_path):
    "80 batches, the block skipped in 20: thinned to 8 rows its summary read mean 0.4095 for 0.4624, rms 2.375 for 2.643;"
    "saved and loaded (.npz, .parquet), the thinned history's summary stays"
    from initcb.activations import ActivationHealth
    full, thin = skipping_fit(2048), skipping_fit(8)
    assert len(thin.fast) == 8
    pd.testing.assert_frame_equal(full.summary(), thin.summary(), rtol=1e-4)
    assert (thin.sampled.count('mean')[:, 1] < thin.sampled.n[:len(thin.sampled)]).any()  # (a row that holds batches with output and some without)
    for ext in ('npz', 'parquet'):
        back = ActivationHealth.load(thin.save(tmp_path/f'a.{ext}'))
        pd.testing.assert_frame_equal(back.summary(), thin.summary(), rtol=1e-5)
        np.testing.assert_array_equal(back.fast.count('rms'), thin.fast.count('rms'))

def test_gradient_rows_of_a_parameter_frozen_part_of_the_fit(tmp_path):
    "The first layer frozen for the first epoch (NaN rows), thinned to 4 rows: each row's gradient and update norms pool only"
    "the batches it trained in; a saved and loaded history keeps the counts"
    from fastai.test_utils import synth_learner
    from fastai.torch_core import params
    from initcb.gradients import GradientHealth
    class Sched(Callback):
        order = -50
        def before_fit(self): self.learn.freeze_to(-1)
        def before_epoch(self):
            if self.epoch == 1: self.learn.unfreeze()
    def fit(max_rows):
        torch.manual_seed(0); random.seed(0); gh = GradientHealth(warn=False, max_rows=max_rows, update_every=2)
        learn = quiet(synth_learner(n_trn=12, cbs=[Sched(), gh]))
        learn.model = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))
        learn.splitter = lambda m: [params(m[0]), params(m[2])]
        learn.fit(3, 1e-2); return gh
    full, thin = fit(2048), fit(4)
    for F, T in ((full.hist, thin.hist), (full.upd, thin.upd)):
        assert (F.n[:len(F)] == 1).all() and len(T) <= 4
        fi, ti = F.iters[:len(F)], T.iters[:len(T)]
        for k in range(len(T)):
            sel = (fi >= ti[k]) & (fi < (ti[k + 1] if k + 1 < len(T) else fi[-1] + 1))
            for c, (rule, _) in T.cols.items():
                if rule != 'mean': continue
                x = F[c][sel].astype(np.float64); w = ~np.isnan(x)
                with np.errstate(all='ignore'): want = np.where(w, x, 0).sum(0) / w.sum(0)
                np.testing.assert_allclose(T[c][k], want, rtol=1e-5, equal_nan=True, err_msg=f'{c} row {k}')
    h = thin.hist
    assert (h.count('grad_norm')[:, 0] < h.n[:len(h)]).any()  # (a row that holds frozen batches and trained ones)
    back = GradientHealth.load(thin.save(tmp_path/'g.npz'))
    for a, b in ((back.hist, thin.hist), (back.upd, thin.upd)):
        for c in a.cols: np.testing.assert_array_equal(a[c], b[c]); np.testing.assert_array_equal(a.count(c), b.count(c))


def test_a_state_whose_meta_and_arrays_disagree_is_refused(tmp_path):
    "A saved state with its meta's names cut short (edited, or put together from two files) loaded without a word, then failed in `to_df`"
    "or `summary` with a shape error of numpy's: refused at load now, with what disagrees"
    import json
    from fastai.test_utils import synth_learner
    from initcb.activations import ActivationHealth
    from initcb.gradients import GradientHealth
    ah, gh = ActivationHealth(), GradientHealth(warn=False)
    learn = quiet(synth_learner(n_trn=4, cbs=[gh]))
    learn.model = torch.nn.Sequential(torch.nn.Linear(1, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1)); learn.add_cb(ah)
    learn.fit(1)
    for cb, key, cls in ((ah, 'names', ActivationHealth), (gh, 'sizes', GradientHealth)):
        z = dict(np.load(cb.save(tmp_path/'s.npz'))); m = json.loads(str(z['meta'])); m[key] = m[key][:1]
        z['meta'] = np.array(json.dumps(m)); np.savez(tmp_path/'bad.npz', **z)
        with pytest.raises(ValueError, match='disagree'): cls.load(tmp_path/'bad.npz')
        assert len(cls.load(cb.save(tmp_path/'s.npz')).to_df())  # (the whole one loads)
