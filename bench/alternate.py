"""What a callback adds to each batch it records, measured inside one fit: recorded and skipped batches alternate.

`overhead.py` compares whole fits, with and without a callback. On a shared machine a fit's speed drifts by a few
percent within seconds, so those ratios spread by +-2-3% even as medians of 9 paired rounds. Here the callback records
every other batch (`every=2`): each recorded batch is timed against the skipped batches around it in the same fit,
milliseconds apart, and drift cancels. The ratio (mean time of a recorded batch / mean time of a skipped one, median
over rounds) is the cost of the recording itself; what a callback costs on every batch whether it records or not
(fastai's event calls, the hooks' calls) is left out, and is in `overhead.py`'s figures.

`none` is the control (even / odd batches of a fit without a callback): it shows how far from 1 noise alone goes.
`minimal sampler` is a reference, not a feature: the least per-batch work of recording each watched output's
statistics every batch from a sample (see `overhead.MinimalSampler`).

    python bench/alternate.py                        # cnn5 and cnn_bn, 8 rounds
    python bench/alternate.py --fits cnn5 --rounds 12 --json out.json
"""
import argparse, json, random, statistics, sys, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore')
import numpy as np, torch, torch.nn as nn
from fastai.basics import Callback
sys.path.insert(0, str(Path(__file__).parent))
import overhead as ob
from initcb.activations import ActivationHealth
from initcb.gradients import GradientHealth

CFGS = {
    'none': lambda: [],
    'ActivationHealth(every=2)': lambda: [ActivationHealth(every=2)],
    'GradientHealth(every=2)': lambda: [GradientHealth(every=2, warn=False)],
    'AH + GH (every=2)': lambda: [ActivationHealth(every=2), GradientHealth(every=2, warn=False)],
    'minimal sampler': lambda: [ob.MinimalSampler(every=2)],
}

class Clock(Callback):
    "Stamps the start of every batch (after every other callback's before_batch) and the end of the fit"
    order = 99
    def before_fit(self): self.ts = []
    def before_batch(self): self.ts.append(time.perf_counter())
    def after_fit(self): self.ts.append(time.perf_counter())

def recorded_ratio(model, dls, cfg, skip=20):
    "Mean time of an even (recorded) batch over that of an odd one, and the same with medians; the first `skip` batches left out"
    clk = Clock()
    learn = ob.make_learner(model, dls, 'none', None)
    learn.add_cbs(CFGS[cfg]() + [clk])
    learn.fit(1, 1e-3)
    d = np.diff(clk.ts)[skip:]; it = np.arange(skip, skip + len(d))
    on, off = d[it % 2 == 0], d[it % 2 == 1]
    return on.mean() / off.mean(), np.median(on) / np.median(off), off.mean()

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--fits', default='cnn5,cnn_bn', help='the fits of overhead.py whose names contain one of these')
    p.add_argument('--rounds', type=int, default=8)
    p.add_argument('--batches', type=int, help="batches per fit (default: five times overhead.py's)")
    p.add_argument('--configs', default=','.join(CFGS)); p.add_argument('--json')
    a = p.parse_args()
    print(f'glibc heap thresholds pinned: {ob.steady_malloc()}; torch {torch.__version__}; {torch.get_num_threads()} threads', flush=True)
    out, cfgs = {}, a.configs.split(',')
    for mname, (mk, shape, amp) in ob.models('cpu', False).items():
        if not any(f in mname for f in a.fits.split(',')): continue
        bs, c, size, n = shape
        n = a.batches or 5 * n
        model, dls = mk(), ob.dls_for('cpu', bs, c, size, n)
        dls.train.n = 30
        for cfg in cfgs: recorded_ratio(model, dls, cfg, skip=0)  # warm-up
        dls.train.n = n
        res = {cfg: [] for cfg in cfgs}
        for r in range(a.rounds):
            for cfg in random.Random(r).sample(cfgs, len(cfgs)): res[cfg].append(recorded_ratio(model, dls, cfg))
        print(f'\n{mname}: {n} batches/fit, {a.rounds} rounds; recorded / skipped batch time, median over rounds (min-max)')
        out[mname] = {}
        for cfg, v in res.items():
            m, md = [x[0] for x in v], [x[1] for x in v]
            out[mname][cfg] = dict(mean_ratio=statistics.median(m), lo=min(m), hi=max(m), median_ratio=statistics.median(md),
                                   ms_per_skipped_batch=1e3 * statistics.median(x[2] for x in v))
            print(f'  {cfg:28s} {statistics.median(m):.3f}x ({min(m):.3f}-{max(m):.3f}); of batch medians {statistics.median(md):.3f}x', flush=True)
    if a.json: json.dump(out, open(a.json, 'w'), indent=1)

if __name__ == '__main__': main()
