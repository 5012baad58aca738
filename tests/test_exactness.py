"When the sample covers a module's output, every statistic equals the same statistic of the whole output."
import math, random, pytest, numpy as np, pandas as pd, torch
from functools import partial
from hypothesis import given, settings, strategies as st, HealthCheck
from initcb.activations import ActivationHealth
from helpers import one_batch_learner, quiet
from torch import nn

shapes = st.lists(st.integers(1, 7), min_size=1, max_size=4).filter(lambda s: math.prod(s) <= 512)

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, scale=st.floats(1e-3, 1e3), shift=st.floats(-5, 5), seed=st.integers(0, 2**16), relu=st.booleans(), whole=st.booleans())
def test_stats_exact_when_sample_covers(shape, scale, shift, seed, relu, whole):
    "Whether the output is reduced whole or sampled in its hook (full_max=0), a sample that covers it gives exact statistics"
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(shape, generator=g) * scale + shift
    if relu: out = out.clamp_min(0)
    cb = ActivationHealth(modules=['p'], sample_every=1, sample=512, dead_thresh=0.1, full_max=None if whole else 0)
    learn = one_batch_learner(cb)
    learn.model.p.out = out
    learn.fit(1)
    df = cb.to_df().iloc[0]
    x = out.double()
    np.testing.assert_allclose(df['abs_mean'], x.abs().mean(), rtol=1e-5)
    np.testing.assert_allclose(df['rms'], x.square().mean().sqrt(), rtol=1e-5)
    np.testing.assert_allclose(df['max'], x.max(), rtol=1e-6)
    np.testing.assert_allclose(df['abs_max'], x.abs().max(), rtol=1e-6)
    np.testing.assert_allclose(df['mean'], x.mean(), rtol=1e-4, atol=1e-5 * scale)
    if x.numel() > 1: np.testing.assert_allclose(df['std'], x.std(), rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(df['min'], x.min(), rtol=1e-6)
    np.testing.assert_allclose(df['near_zero'], (x.abs() <= 0.1).double().mean(), rtol=1e-6)
    assert df['nonfinite'] == 0 and df['nonfinite_batches'] == 0
    h = cb.hist(0)[0]
    assert h.sum() == x.numel()
    lo, hi = cb.hist_ranges[0]
    edges = np.linspace(lo, hi, cb.bins + 1)
    edges[np.abs(edges) < 1e-6 * (hi - lo)] = 0.  # (0 on a bin edge, by design: ReLU zeros in the bin from 0, not one a rounding puts below)
    expect = np.histogram(np.clip(x.numpy(), lo, np.nextafter(hi, lo)), bins=edges)[0]
    assert np.abs(h - expect).sum() <= 2  # bin edges: float32 rounding may move a value to its neighbour

def test_nonfinite_counted():
    out = torch.tensor([1., float('nan'), float('inf'), -2.])
    cb = ActivationHealth(modules=['p'], sample_every=1)
    learn = one_batch_learner(cb); learn.model.p.out = out
    learn.fit(1)
    df = cb.to_df().iloc[0]
    assert df['nonfinite'] == 2 and df['nonfinite_batches'] == 1
    np.testing.assert_allclose(df['mean'], -0.5)
    sm = cb.summary().iloc[0]  # one batch with two non-finite elements: counts in two units, not added up
    assert sm['non-finite batches'] == 1 and sm['non-finite (sampled elements)'] == 2 and 'non-finite' not in sm

def test_sample_estimates_large_tensor():
    "A strided sample of a large BatchNorm-like map: estimates within sampling error, no stride bias"
    g = torch.Generator().manual_seed(0)
    out = torch.randn(64, 16, 8, 8, generator=g) * torch.linspace(0.5, 2, 8)[None, None, None]  # std depends on the column
    cb = ActivationHealth(modules=['p'], sample_every=1, sample=2048)
    learn = one_batch_learner(cb); learn.model.p.out = out
    learn.fit(1)
    df = cb.to_df().iloc[0]
    assert abs(df['std'] / out.std().item() - 1) < 0.04

@pytest.mark.parametrize('T', [96, 288])
def test_sample_spreads_over_the_whole_output(T):
    "A (1, T, 64) output whose value is its position: the multiples of a stride under n/2048 co-prime with the row sampled"
    "positions 0-31 of 96 (mean 15.5 for 47.5) and 0-223 of 288, sampled in the hook past `full_max` (max 223, rms 128.9 for 165.8)"
    out = torch.arange(T, dtype=torch.float32)[None, :, None].expand(1, T, 64).contiguous(); t = out.double()
    cb = ActivationHealth(modules=['p'], sample_every=1, full_max=1 << 14)
    learn = one_batch_learner(cb); learn.model.p.out = out
    learn.fit(1)
    r = cb.to_df().iloc[0]
    assert cb._insample[0] == (T * 64 > 1 << 14)
    for c, v in (('mean', t.mean()), ('std', t.std(correction=0)), ('rms', t.square().mean().sqrt())): assert abs(r[c] / v.item() - 1) < 0.01, (c, r[c], v)
    assert r['max'] == T - 1

def mlp_learner(cb, seed=0):
    from fastai.test_utils import synth_learner
    from helpers import quiet
    torch.manual_seed(seed)
    learn = quiet(synth_learner(n_trn=6, cbs=cb))
    learn.model = torch.nn.Sequential(torch.nn.Linear(1, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    learn.dls.train.rng = random.Random(seed)
    return learn

@settings(max_examples=8, deadline=None)
@given(hold_max=st.sampled_from([0, 1, 3000, 10**6]), sample_every=st.integers(1, 3))
def test_reducing_held_outputs_in_groups_changes_nothing(hold_max, sample_every):
    "Whole outputs reduced in their hooks once `hold_max` bytes are held give the statistics of one reduction after the forward pass"
    dfs = []
    for h in (hold_max, 1 << 40):
        cb = ActivationHealth(hold_max=h, sample_every=sample_every)
        mlp_learner(cb).fit(1)
        dfs.append(cb.to_df().drop(columns=['n']))
    pd.testing.assert_frame_equal(*dfs, rtol=1e-6)

def test_hold_max_zero_holds_nothing():
    "With hold_max=0 no output is referenced when the forward pass ends (each was reduced in its own hook)"
    from fastai.callback.core import Callback
    held = []
    class Peek(Callback):
        order = ActivationHealth.order - 1
        def after_pred(self):
            if self.training: held.append(sum(o is not None for o in self.learn.activation_health._outs))
    cb = ActivationHealth(hold_max=0)
    mlp_learner([cb, Peek()]).fit(1)
    assert held and max(held) == 0
    assert len(cb.fast) == 6 and np.isfinite(cb.to_df()['rms']).all()

def test_module_called_twice_reports_first_call():
    "A module used twice in one forward pass (a shared ReLU) reports its first call's output"
    class Shared(torch.nn.Module):
        def __init__(self): super().__init__(); self.l1, self.l2, self.act = torch.nn.Linear(1, 8), torch.nn.Linear(8, 1), torch.nn.ReLU()
        def forward(self, x): return self.l2(self.act(self.act(self.l1(x)) * 3 - 1))
    from fastai.test_utils import synth_learner
    from helpers import quiet
    cb = ActivationHealth(modules=['act'], sample_every=1)
    learn = quiet(synth_learner(n_trn=3, cbs=cb)); learn.model = Shared()
    calls = []
    learn.model.register_forward_pre_hook(lambda m, i: calls.append([]))
    learn.model.act.register_forward_hook(lambda m, i, o: calls[-1].append(o.detach().clone()) if m.training else None)
    learn.fit(1)
    first = [c[0] for c in calls if c]
    assert len(first) == 3 and all(len(c) == 2 for c in calls if c)
    df = cb.to_df()
    np.testing.assert_allclose(df['abs_mean'], [o.abs().mean() for o in first], rtol=1e-5)
    np.testing.assert_allclose(df['max'], [o.max() for o in first], rtol=1e-6)

def test_gathered_samples_match_hook_samples():
    "From a fit's second sampling batch on, whole outputs are sampled after the forward pass (one copy into a buffer, one"
    "gather); sampling every output in its hook (full_max=0) picks the same elements, so every sampled statistic agrees"
    from torch import nn
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from helpers import quiet
    torch.manual_seed(0)
    x = torch.randn(96, 1, 8, 8); y = torch.randn(96, 1)
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=16), DataLoader(list(zip(x[:16], y[:16])), bs=16))
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 16), nn.Tanh(), nn.Linear(16, 1))
    gathered, in_hooks = ActivationHealth(sample_every=1), ActivationHealth(sample_every=1, full_max=0)
    learn = quiet(Learner(dls, model, loss_func=nn.MSELoss(), cbs=[gathered, in_hooks]))
    learn.fit(2, 1e-2)
    assert len(gathered.sampled) == len(in_hooks.sampled) == 12
    for c in gathered.sampled.data: np.testing.assert_allclose(gathered.sampled.data[c], in_hooks.sampled.data[c], rtol=1e-5, atol=1e-6)
    small = [i for i, n in enumerate([4096, 4096, 256, 256, 16]) if n <= gathered.sample]  # outputs the sample covers
    for c in gathered.fast.data:
        np.testing.assert_allclose(gathered.fast.data[c][:, small], in_hooks.fast.data[c][:, small], rtol=1e-5)

def test_activation_samples_derived_from_their_inputs():
    "An elementwise activation of a sampled output takes no gather of its own: its sample is the activation applied to"
    "its input's sample (in place or not). Its statistics equal those of a callback that watches it alone and gathers"
    from torch import nn
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from helpers import quiet
    torch.manual_seed(0)
    x = torch.randn(72, 8); y = torch.randn(72, 1)  # the last batch of 8: outputs of 16,384 elements, reduced whole
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=16), DataLoader(list(zip(x[:16], y[:16])), bs=16))
    # PReLU has a weight per channel: not derived. The two ReLUs go through one call, between the other two (a column order to restore)
    acts = [nn.ReLU(), nn.GELU(), nn.ReLU(inplace=True), nn.ReLU(), nn.PReLU()]
    model = nn.Sequential(nn.Linear(8, 2048), acts[0], nn.Linear(2048, 2048), acts[1], nn.Linear(2048, 2048), acts[2],
                          nn.Linear(2048, 2048), acts[3], nn.Linear(2048, 2048), acts[4], nn.Linear(2048, 1))
    lins = [m for m in model if isinstance(m, nn.Linear)]
    both, alone, sources = [ActivationHealth(modules=m, sample_every=1000) for m in (None, acts, lins)]
    derived = []
    def count(i, x, o, f=both._derived):
        r = f(i, x, o); derived.append((i, r)); return r
    both._derived = count
    learn = quiet(Learner(dls, model, loss_func=nn.MSELoss(), cbs=[both, alone, sources]))
    learn.fit(2, 1e-3)
    assert {i for i, r in derived if r} == {1, 3, 5, 7}, derived  # ReLU, GELU, in-place ReLU, ReLU; not PReLU (not elementwise)
    assert not np.isnan(both.fast.data['rms']).any()
    for c in both.fast.data:
        np.testing.assert_allclose(both.fast.data[c][:, [1, 3, 5, 7, 9]], alone.fast.data[c], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(both.fast.data[c][:, [0, 2, 4, 6, 8, 10]], sources.fast.data[c], rtol=1e-5, atol=1e-7)  # inputs' samples untouched

def _reference_stats(s, w, lo, hi, h_lo, h_scale, bins, dead, eps):
    "`sample_stats` for one row, the plain way: float64 over the distinct finite elements"
    x = s[w > 0].double(); f = x[torch.isfinite(x)]; n = max(len(f), 1)
    hist = torch.zeros(bins, dtype=torch.float64)
    b = ((f.float() - h_lo) * h_scale).floor().clamp(0, bins - 1).long()  # (in float32, as the callback bins)
    hist.index_add_(0, b, torch.ones(len(f), dtype=torch.float64))
    if not len(f): return torch.cat([torch.tensor([math.nan] * 5 + [len(x)], dtype=torch.float64), hist])  # (no finite value: NaN statistics, as documented)
    return torch.cat([torch.tensor([f.mean(), f.std() if len(f) > 1 else 0., f.min(),
                                    (f.abs() <= dead).sum() / n, ((f <= lo + eps) | (f >= hi - eps)).sum() / n,
                                    len(x) - len(f)], dtype=torch.float64), hist])

@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 6), n=st.integers(1, 64), nan=st.sampled_from([0., 0.1, 1.]),
       inf=st.sampled_from([0., 0.1]), pad=st.booleans(), bounded=st.booleans())
def test_sample_stats_matches_a_row_by_row_reference(seed, rows, n, nan, inf, pad, bounded):
    "Padding, NaN and ±inf are left out of every statistic and counted (but padding) as non-finite; each row on its own"
    from initcb.activations import sample_stats
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(rows, n, generator=g) * 2
    s[torch.rand(rows, n, generator=g) < nan] = math.nan
    s[torch.rand(rows, n, generator=g) < inf] = math.inf; s[torch.rand(rows, n, generator=g) < inf] = -math.inf
    nval = torch.randint(0, n + 1, (rows,), generator=g).clamp_min(1) if pad else torch.full((rows,), n)
    w = (torch.arange(n)[None] < nval[:, None]).float()
    lo = torch.where(torch.rand(rows, 1, generator=g) < 0.5, -1., -math.inf) if bounded else torch.full((rows, 1), -math.inf)
    hi = torch.where(lo > -math.inf, 1., math.inf)
    if bounded: s = torch.where(lo > -math.inf, torch.tanh(s), s)
    h_lo, h_scale, B = torch.full((rows, 1), -3.), torch.full((rows, 1), 8 / 6.), 8
    r = sample_stats(s, w if pad else None, lo, hi, h_lo, h_scale, torch.arange(rows)[:, None] * B, B, 0.3, 0.05)
    for i in range(rows):
        ref = _reference_stats(s[i], w[i], lo[i, 0].item(), hi[i, 0].item(), h_lo[i], h_scale[i], B, 0.3, 0.05)
        np.testing.assert_allclose(r[i, :6].double(), ref[:6], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(r[i, 6:].double(), ref[6:])

@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 5000), size=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_histogram_counts_same_on_the_gpu_path(n, size, seed):
    "`_counts` takes `index_add_` on a GPU and `bincount` on a CPU: both paths, run here, count alike"
    from initcb.activations import _counts
    b = torch.randint(0, size, (n,), generator=torch.Generator().manual_seed(seed)).float()
    a, g = _counts(b, size, index_add=False), _counts(b, size, index_add=True)
    assert a.dtype == g.dtype == torch.float32 and a.shape == g.shape == (size,)
    assert torch.equal(a, g) and a.sum() == n

def growing_learner(cb, n=480, bs=16, d=4, grow=40):
    "A linear layer fit at lr 0 on inputs scaled up 1 to `grow` times over the run: its outputs outgrow any first histogram range"
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.optimizer import SGD
    from helpers import quiet
    torch.manual_seed(0)
    x = torch.randn(n, d) * torch.linspace(1, grow, n)[:, None]; y = torch.randn(n, d)
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=bs), DataLoader(list(zip(x[:bs], y[:bs])), bs=bs))
    return quiet(Learner(dls, torch.nn.Sequential(torch.nn.Linear(d, d)), loss_func=torch.nn.MSELoss(), opt_func=partial(SGD, mom=0.), cbs=cb))

@pytest.mark.parametrize('sample_every', [1, 4])
def test_histograms_binned_on_the_final_range_after_expansions(sample_every):
    "The range doubles while chunks binned on the old one wait on the device: each stored histogram is still its batch's, over `hist_ranges`"
    cb = ActivationHealth(sample_every=sample_every, bins=20, chunk=16)
    learn = growing_learner(cb)
    outs = []
    h = learn.model[0].register_forward_hook(lambda m, i, o: outs.append(o.detach().clone()) if m.training else None)
    try: learn.fit(1, 0.)
    finally: h.remove()
    lo, hi = cb.hist_ranges[0]; H = cb.hist(0)
    assert hi > 8 * outs[0].abs().max()  # the range doubled several times
    its = cb.sampled.iters[:len(cb.sampled)]
    assert len(its) == len(H) == -(-len(outs) // sample_every)
    for r, b in enumerate(its): np.testing.assert_array_equal(H[r], torch.histc(outs[b].clamp(lo, hi), 20, lo, hi).numpy(), err_msg=f'batch {b}')

def test_summary_last_reads_the_same_batches():
    "summary(last=n): the sampled columns come from the sampling batches among the last n recorded ones, NaN when there is none"
    from fastai.test_utils import synth_learner
    from helpers import quiet
    cb = ActivationHealth(sample_every=16)
    learn = quiet(synth_learner(n_trn=40, cbs=cb)); learn.fit(1)  # 40 batches: sampled at 0, 16, 32
    assert list(cb.sampled.iters[:len(cb.sampled)]) == [0, 16, 32] and cb.fast.iters[len(cb.fast) - 1] == 39
    s4, s8 = cb.summary(last=4), cb.summary(last=8)  # batches 36-39: none sampled; 32-39: batch 32
    assert s4[['mean', 'std', '% near zero']].isna().all().all() and s4['rms'].notna().all()
    np.testing.assert_allclose(s8['mean'], cb.sampled['mean'][2], rtol=1e-6)
    assert (s4['non-finite (sampled elements)'] == 0).all()

def _digits_fit(max_rows, sample_every):
    from torch import nn
    from fastai.learner import Learner
    from initcb.core import digits_dls
    from helpers import quiet
    torch.manual_seed(0); cb = ActivationHealth(max_rows=max_rows, sample_every=sample_every)
    learn = quiet(Learner(digits_dls(bs=16, n_train=512), nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
                          loss_func=nn.CrossEntropyLoss(), cbs=cb))
    learn.fit(2, 1e-2); return cb  # (64 batches)

@pytest.mark.parametrize('sample_every', [1, 3])
def test_summary_does_not_depend_on_thinning(sample_every):
    "The same seeded fit, its history thinned (`max_rows=8`) or not, has the same summary: std pooled from each row's mean and std, as rows merge;"
    "`last=n` reads the fewest last rows covering n batches (a merged row across the start whole: the unthinned history's last m batches)"
    full, thin = _digits_fit(2048, sample_every), _digits_fit(8, sample_every)
    f = thin.fast
    assert len(full.fast) == 64 and len(f) == 8 and f.n[0] > 1
    pd.testing.assert_frame_equal(full.summary(), thin.summary(), rtol=1e-4)
    c = np.cumsum(f.n[:len(f)][::-1])  # the batches the last 1, 2... rows cover
    for n in (1, 10, 33, 60, 64, 100):
        m = int(c[min(np.searchsorted(c, n), len(c) - 1)])
        assert m >= min(n, 64)
        pd.testing.assert_frame_equal(full.summary(last=m), thin.summary(last=n), rtol=1e-4)

def test_sampled_rows_survive_thinning(tmp_path):
    "The every-batch and sampled histories thin apart: each `to_df` row keeps its every-batch columns, and every sampled row lands, pooled, in the row that holds its first batch"
    from fastai.test_utils import synth_learner
    from helpers import quiet
    from initcb.activations import FAST
    torch.manual_seed(0)
    cb = ActivationHealth(sample_every=3, max_rows=8, chunk=4)
    learn = quiet(synth_learner(n_trn=40, cbs=cb)); learn.model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)); learn.fit(1)
    f, s, k, ks, L = cb.fast, cb.sampled, len(cb.fast), len(cb.sampled), len(cb.names)
    assert not np.isin(s.iters[:ks], f.iters[:k]).all()  # (the rows no longer line up)
    df = cb.to_df()
    assert len(df) == k * L and df[list(FAST)].notna().all().all()
    np.testing.assert_array_equal(df['iter'].to_numpy()[::L], f.iters[:k]); np.testing.assert_array_equal(df['n'].to_numpy()[::L], f.n[:k])
    rows, ns, mean = np.searchsorted(f.iters[:k], s.iters[:ks], 'right') - 1, df['n_sampled'].to_numpy()[::L], df['mean'].to_numpy().reshape(k, L)
    assert np.nansum(ns) == s.n[:ks].sum() == -(-40 // 3)  # every sampling batch
    for r in range(k):
        sel = rows == r
        if not sel.any(): assert np.isnan(ns[r]) and np.isnan(mean[r]).all(); continue
        w = s.n[:ks][sel]
        assert ns[r] == w.sum()
        np.testing.assert_allclose(mean[r], (s['mean'][sel] * w[:, None]).sum(0) / w.sum(), rtol=1e-5)
    back = ActivationHealth.load(cb.save(tmp_path/'h.parquet'))  # (the table of `to_df`, histograms pooled alike)
    pd.testing.assert_frame_equal(back.to_df(), df, check_dtype=False)
    np.testing.assert_array_equal(back.sampled['hist'].sum(0), s['hist'].sum(0))

def test_parquet_round_trip_layer_names_and_old_files(tmp_path):
    "`to_df`'s `layer` is the name and `idx` the position: the .parquet loads back in the model's order with 12 layers ('10' sorts"
    "before '2' by name), and a file saved by 0.0.1 (`layer` the position, `name` the name) loads the same"
    from fastai.test_utils import synth_learner
    from helpers import quiet
    torch.manual_seed(0)
    cb = ActivationHealth(sample_every=2)
    learn = quiet(synth_learner(n_trn=6, cbs=cb))
    learn.model = torch.nn.Sequential(*[m for _ in range(6) for m in (torch.nn.Linear(1 if _ == 0 else 4, 4), torch.nn.ReLU())], torch.nn.Linear(4, 1))
    learn.fit(1)
    df = cb.to_df(); L = len(cb.names)
    assert L == 13 and df['layer'].tolist()[:L] == cb.names and df['idx'].tolist()[:L] == list(range(L))
    back = ActivationHealth.load(cb.save(tmp_path/'h.parquet'))
    pd.testing.assert_frame_equal(back.to_df(), df, check_dtype=False)
    old = pd.read_parquet(tmp_path/'h.parquet'); attrs = dict(old.attrs)
    old = old.assign(name=old['layer'], layer=old['idx']).drop(columns='idx')  # (0.0.1's columns)
    old = old.sample(frac=1, random_state=0)  # (rows in any order: the loader sorts them)
    old.attrs = attrs
    old.to_parquet(tmp_path/'old.parquet')
    pd.testing.assert_frame_equal(ActivationHealth.load(tmp_path/'old.parquet').to_df(), df, check_dtype=False)

@pytest.mark.parametrize('whole', [True, False])
def test_huge_finite_outputs_are_not_counted_non_finite(whole):
    "Finite outputs whose squares overflow float32 (a diverging fit's, ~1e19 and up): not non-finite; a real inf or NaN is"
    out = torch.tensor([3e19, -2e19, 1e19, 5.] * 16)
    for val, nonf in ((None, 0), (math.inf, 1), (math.nan, 1)):
        cb = ActivationHealth(modules=['p'], sample_every=1, sample=512, full_max=None if whole else 0)
        learn = one_batch_learner(cb)
        learn.model.p.out = out.clone()
        if val is not None: learn.model.p.out[7] = val
        with np.errstate(over='ignore'): learn.fit(1)
        df = cb.to_df().iloc[0]
        assert df['nonfinite_batches'] == nonf and df['nonfinite'] == nonf, (val, df)
        if val is None: np.testing.assert_allclose([df['abs_max'], df['max']], [3e19, 3e19], rtol=1e-6)
        assert cb.summary().loc['p', 'non-finite batches'] == nonf

def test_a_batch_whose_output_is_all_nan_has_nan_statistics():
    "A layer whose whole output is NaN on a batch: its sampled mean, std, near-zero and saturated shares read 0 (min inf), and `summary`"
    "averaged those zeros in (mean 0.0182 where its finite batches give 0.0261)"
    from fastai.learner import Learner
    from initcb.core import digits_dls
    class NanToNum(nn.Module):
        def forward(self, x): return torch.nan_to_num(x, 0., 0., 0.)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), NanToNum(), nn.Linear(32, 10))
    cnt = [0]
    def inj(mod, i, o):  # (every third training batch, the Tanh's output is all NaN)
        if mod.training:
            cnt[0] += 1
            if cnt[0] % 3 == 0: return torch.full_like(o, math.nan)
    m[1].register_forward_hook(inj)
    learn = quiet(Learner(digits_dls(bs=32, flat=True, n_train=320), m, loss_func=nn.CrossEntropyLoss(), cbs=ActivationHealth(sample_every=1, modules=['0', '1', '3'])))
    learn.fit(1, 1e-2)
    ah = learn.activation_health; s = ah.sampled
    bad = s['nonfinite'][:len(s), 1] > 0
    assert bad.sum() == 3 and all(np.isnan(s[c][:len(s), 1][bad]).all() for c in ('mean', 'std', 'min', 'near_zero', 'saturated'))
    assert np.isfinite(s['mean'][:len(s), 1][~bad]).all()
    np.testing.assert_allclose(ah.summary().loc['1', 'mean'], s['mean'][:len(s), 1][~bad].mean(), rtol=1e-5)

def test_ranks_combined_with_no_finite_value_give_nan():
    "A distributed run's combine of a layer with no finite value on any rank: std 0 where one process gives NaN (and a warning a chunk)"
    import warnings
    from initcb.activations import SAMPLED
    ah = ActivationHealth(bins=4); ah._idx = [(None, None, 8)]  # (one layer, 8 samples a rank)
    row = np.array([math.nan, math.nan, math.inf, math.nan, math.nan, 8., 0, 0, 0, 0, 0., 1.], np.float32)
    fin = np.array([0.5, 1., -1., 0.25, 0., 0., 2, 2, 2, 2, 0., 1.], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        none = dict(zip(SAMPLED, ah._combine_ranks(np.stack([row, row])[:, None, None, :])[0, 0, :6]))
        one = dict(zip(SAMPLED, ah._combine_ranks(np.stack([row, fin])[:, None, None, :])[0, 0, :6]))
    assert all(np.isnan(none[c]) for c in ('mean', 'std', 'near_zero', 'saturated')) and none['nonfinite'] == 16
    assert (one['mean'], one['std'], one['near_zero']) == (0.5, 1., 0.25)  # (the rank with values alone)


class _Outs(nn.Module):
    "Returns `f(k)` at its k-th training call (its input ignored; one parameter, for the optimizer)"
    def __init__(self, f): super().__init__(); self.f, self.k, self.w = f, 0, nn.Parameter(torch.zeros(1))
    def forward(self, x):
        if self.training: self.k += 1
        return self.f(self.k) + self.w * 0

def _outs_fit(f, n):
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    x = torch.randn(n * 4, 2); y = torch.randn(n * 4, 1)
    m = nn.Sequential(); m.p = _Outs(f)
    cb = ActivationHealth(modules=['p'], sample_every=1, chunk=4)
    learn = quiet(Learner(DataLoaders(DataLoader(list(zip(x, y)), bs=4), DataLoader(list(zip(x[:4], y[:4])), bs=4)), m, loss_func=lambda o, t: (o.mean() - t.mean()) ** 2, cbs=cb))
    learn.fit(1, 0.)
    return cb

def test_histogram_range_grows_on_values_past_it_only():
    "GELU-like outputs (a tail to 10, negatives to -0.17) got one bin below 0, [-w, 0): an outer bin holding 30-50% of each batch, in range, and the"
    "range doubled at every landed chunk, to 1e8 and on (to a crash in bincount past float32's range); it doubles on values past it now"
    g = torch.Generator().manual_seed(0)
    cb = _outs_fit(lambda k: torch.nn.functional.gelu(torch.randn(64, 16, generator=g) * 3), 120)
    lo, hi = cb.hist_ranges[0]
    assert -1 < lo < 0 and hi < 100, (lo, hi)  # (the first chunk's: (-0.34, 13.3))
    H = cb.hist(0)
    assert (H.max(1) / H.sum(1)).max() < 0.6 and (H[:, 0] / H.sum(1)).min() > 0.2, H[-1]  # (the negatives, in their bin; the rest spread)

def test_negatives_after_a_first_chunk_of_none_get_a_bin():
    "A Linear's outputs all positive in the first chunk, centred on 0 later: the range had no bin below 0, and the negatives (45% of a batch) sat in"
    "[0, w), 62% of it; an output not known to stay >= 0 keeps a bin below 0 (a ReLU's starts at 0)"
    g = torch.Generator().manual_seed(0)
    outs = [torch.randn(64, 16, generator=g) for _ in range(40)]
    cb = _outs_fit(lambda k: outs[k - 1] - outs[k - 1].min() + 0.1 if k <= 4 else outs[k - 1], 40)
    lo, hi = cb.hist_ranges[0]; H = cb.hist(0)
    assert lo < 0, (lo, hi)
    below = H[:, :np.searchsorted(np.linspace(lo, hi, cb.bins + 1), 0.)].sum(1) / H.sum(1)
    true = np.array([(o < 0).float().mean().item() for o in outs[4:]])
    np.testing.assert_allclose(below[4:], true, atol=0.02)
