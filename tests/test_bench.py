"The benchmark's own pieces: the timers of bench/inside.py change nothing they time; the sampler variants agree; --configs."
import os, sys, collections, pytest, torch, numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'bench'))
import overhead as ob, inside

def fit(cbs, wrap=False, n=6, bs=16):
    "A short cnn5 fit with callbacks `cbs` (with `wrap`, timed as bench/inside.py times them); the timers' sums"
    torch.manual_seed(0)
    learn, acc = ob.make_learner(ob.cnn5(), ob.dls_for('cpu', bs, 1, 28, n), 'none', None), collections.defaultdict(float)
    learn.add_cbs([inside.timed(c, acc) for c in cbs] if wrap else cbs)
    torch.manual_seed(1); learn.fit(1, 1e-3)
    return acc

def test_timed_changes_nothing_and_counts_hooks():
    plain, timed = ob.ActivationHealth(chunk=4, sample_every=2), ob.ActivationHealth(chunk=4, sample_every=2)
    fit([plain]); acc = fit([timed], wrap=True)
    pd = plain.to_df(); td = timed.to_df()
    assert len(pd) == len(td) > 0
    np.testing.assert_array_equal(pd.select_dtypes('number').to_numpy(), td.select_dtypes('number').to_numpy())
    for k in ('_hook', 'after_pred', 'before_batch', 'before_fit', 'after_fit'):
        assert acc[f'ActivationHealth.{k}'] > 0, k
    assert timed.hooks is None or not timed.hooks.handles  # the wrapped callback cleans up as the plain one does

def test_samplers_agree():
    "The held variant's strided samples are the same elements as the minimal sampler's takes of its indices"
    class Takes(ob.MinimalSampler): index = ob.HeldSampler.index
    a, b = Takes(every=1, chunk=3), ob.HeldSampler(every=1, chunk=3)
    fit([a]); fit([b])
    assert a.stats.shape == b.stats.shape and a.stats.shape[0] == 3
    torch.testing.assert_close(a.stats, b.stats)

def test_configs():
    assert ob.cfgs_for('cpu', 'cnn5', 'no-op hooks,ActivationHealth()') == ['none', 'ActivationHealth()', 'no-op hooks']
    assert 'no-op hooks' not in ob.cfgs_for('cpu', 'cnn5')  # calibration rows only when asked for
    with pytest.raises(SystemExit): sys.argv = ['overhead.py', '--configs', 'nonsense']; ob.main()
