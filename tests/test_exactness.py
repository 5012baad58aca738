"When the sample covers a module's output, every statistic equals the same statistic of the whole output."
import math, numpy as np, torch
from hypothesis import given, settings, strategies as st, HealthCheck
from initcb.activations import ActivationHealth
from helpers import one_batch_learner

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

def test_sample_estimates_large_tensor():
    "A strided sample of a large BatchNorm-like map: estimates within sampling error, no stride bias"
    g = torch.Generator().manual_seed(0)
    out = torch.randn(64, 16, 8, 8, generator=g) * torch.linspace(0.5, 2, 8)[None, None, None]  # std depends on the column
    cb = ActivationHealth(modules=['p'], sample_every=1, sample=2048)
    learn = one_batch_learner(cb); learn.model.p.out = out
    learn.fit(1)
    df = cb.to_df().iloc[0]
    assert abs(df['std'] / out.std().item() - 1) < 0.04
