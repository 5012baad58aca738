"""Where a callback's time goes: the time spent inside each of its event methods and hooks, per training batch.

`overhead.py` measures what a callback costs a whole fit, against fits without it. On a shared machine those ratios
spread by +-10% fit to fit, and even medians of 30 paired runs move by a percent or two between runs. The time a
callback spends in its own code is a much steadier figure: here every event method a callback defines and every hook
method (a name containing 'hook') is wrapped in a timer (which adds ~1 us a call), and the time inside them is summed
over a fit. It is a lower bound of the cost: what the callback does to the fit around it (caches, allocator, threads)
is not in it. `overhead.py`'s calibration rows ('spin 200us in hooks', 'spin 200us after the forward pass') measure
that effect for plain host work: on the 2-core CI machine it was nil (both ~1.015x at an 11 ms step, 2026-11-27).

    python bench/inside.py                                   # cnn5: ActivationHealth, GradientHealth, both, the minimal sampler
    python bench/inside.py --configs "ActivationHealth()" --rounds 8 --top 12
"""
import argparse, collections, statistics, sys, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore')
from fastai.callback.core import _events
sys.path.insert(0, str(Path(__file__).parent))
import overhead as ob

def timed(cb, acc):
    "Wrap `cb`'s event methods and hook methods (on the instance) so that the time inside each adds to `acc[name]`"
    names = [e for e in _events if getattr(type(cb), e, None) is not None]
    names += [n for n in dir(type(cb)) if 'hook' in n and n not in names and callable(getattr(type(cb), n))]
    for n in names:
        f, key = getattr(cb, n), f'{type(cb).__name__}.{n}'
        def w(*a, _f=f, _k=key, **k):
            t = time.perf_counter()
            try: return _f(*a, **k)
            finally: acc[_k] += time.perf_counter() - t
        object.__setattr__(cb, n, w)  # (bypasses fastai's check of callback attributes against the Learner's)
    return cb

def measure(model, dls, cfg):
    "(fit seconds, {method: seconds inside it}) for one fit with configuration `cfg` of overhead.py"
    learn, acc = ob.make_learner(model, dls, 'none', None), collections.defaultdict(float)
    learn.add_cbs([timed(cb, acc) for cb in ob.ALL_CFGS[cfg]()])
    t = time.perf_counter(); learn.fit(1, 1e-3)
    return time.perf_counter() - t, dict(acc)

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--fit', default='cnn5', help="the fit of overhead.py whose name contains this")
    p.add_argument('--configs', default='ActivationHealth(),GradientHealth(),ActivationHealth() + GradientHealth(),minimal sampler (reference)')
    p.add_argument('--rounds', type=int, default=6); p.add_argument('--top', type=int, default=6)
    a = p.parse_args()
    cfgs = ['none'] + ob.config_names(a.configs, p)
    ob.steady_malloc()
    mname, (mk, shape, amp) = next((k, v) for k, v in ob.models('cpu', False).items() if a.fit in k)
    bs, c, size, n = shape
    model, dls = mk(), ob.dls_for('cpu', bs, c, size, n)
    res = collections.defaultdict(list)
    for r in range(a.rounds + 1):  # the first round warms up
        for cfg in cfgs:
            t, acc = measure(model, dls, cfg)
            if r: res[cfg].append((t, acc))
    step = statistics.median(t for t, _ in res['none']) / n
    print(f'{mname}: {n} batches/fit, {a.rounds} rounds; no-callback step {1e3 * step:.2f} ms (median). Time inside the '
          f'callbacks per batch, median over rounds, and as a share of the no-callback step:')
    for cfg in cfgs[1:]:
        v = res[cfg]
        inside = statistics.median(sum(acc.values()) for _, acc in v) / n
        print(f'  {cfg:38s} {1e6 * inside:7.1f} us  ({100 * inside / step:.2f}%)')
        per = {k: statistics.median(acc.get(k, 0.) for _, acc in v) / n for k in v[0][1]}
        for k, s in sorted(per.items(), key=lambda kv: -kv[1])[:a.top]: print(f'      {k:44s} {1e6 * s:7.1f} us')

if __name__ == '__main__': main()
