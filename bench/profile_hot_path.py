"""Where a callback's time goes inside a fit: host time of each of its methods and hooks per batch, and the CUDA
calls that wait for the device (synchronizations, pageable copies), counted with torch.profiler.

On a launch-bound GPU fit the host time of the callback's methods *is* its cost; a method whose host time is far
above its op count's launch cost is waiting for the device somewhere.

    python bench/profile_hot_path.py --device cuda
    python bench/profile_hot_path.py --quick          # CPU smoke run
"""
import argparse, collections, statistics, sys, time, warnings, os
warnings.filterwarnings('ignore')
sys.path.insert(0, os.path.dirname(__file__))
import torch
from overhead import dls_for, make_learner, models, CFGS
from initcb.activations import ActivationHealth
from initcb.gradients import GradientHealth

TIMES = collections.defaultdict(float)
CALLS = collections.Counter()

def instrument(cls, names):
    for n in names:
        f = cls.__dict__.get(n) or getattr(cls, n, None)
        if f is None: continue
        def w(*a, _f=f, _k=f'{cls.__name__}.{n}', **k):
            t = time.perf_counter()
            try: return _f(*a, **k)
            finally: TIMES[_k] += time.perf_counter() - t; CALLS[_k] += 1
        setattr(cls, n, w)

EVENTS = ['before_fit', 'before_train', 'before_batch', 'after_pred', 'after_loss', 'before_backward', 'after_backward',
          'before_step', 'after_step', 'after_cancel_step', 'after_batch', 'after_train', 'after_epoch', 'after_fit']
instrument(ActivationHealth, EVENTS + ['_hook', '_part', '_reduce_held', '_collate', '_sampled_rows', '_fast_sink', '_samp_sink', 'setup'])
instrument(GradientHealth, EVENTS)

SYNCS = ('cudaStreamSynchronize', 'cudaDeviceSynchronize', 'cudaEventSynchronize', 'cudaMemcpy', 'cudaMemcpyAsync',
         'cudaHostAlloc', 'cudaFreeHost', 'cudaMalloc', 'cudaFree', 'cudaLaunchKernel', 'cuLaunchKernel', 'cudaLaunchKernelExC')

def main():
    p = argparse.ArgumentParser(); p.add_argument('--device', default='cpu'); p.add_argument('--quick', action='store_true')
    p.add_argument('--models', default='launch-bound,overhead-bound')
    a = p.parse_args(); dev = a.device
    if dev == 'cuda': torch.backends.cudnn.benchmark = True
    for mname, (mk, shape, amp) in models(dev, a.quick).items():
        if not any(m in mname for m in a.models.split(',')): continue
        if '1 thread' in mname: torch.set_num_threads(1)
        bs, c, size, n = shape
        model, dls = mk().to(dev), dls_for(dev, bs, c, size, n)
        print(f'\n== {mname}, {n} batches', flush=True)
        for cfg in ['none', 'ActivationHealth()', 'GradientHealth()', 'ActivationHealth() + GradientHealth()']:
            for rep in range(3):  # rep 0 warms up; rep 1 timed with host timers; rep 2 under the profiler
                TIMES.clear(); CALLS.clear()
                learn = make_learner(model, dls, cfg, amp)
                if rep < 2:
                    if dev == 'cuda': torch.cuda.synchronize()
                    t = time.perf_counter(); learn.fit(1, 1e-3)
                    if dev == 'cuda': torch.cuda.synchronize()
                    total, times, calls = time.perf_counter() - t, dict(TIMES), dict(CALLS)
                    continue
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU] +
                                            ([torch.profiler.ProfilerActivity.CUDA] if dev == 'cuda' else [])) as prof:
                    learn.fit(1, 1e-3)
                    if dev == 'cuda': torch.cuda.synchronize()
                cnt = collections.Counter()
                for e in prof.events():
                    if e.name in SYNCS: cnt[e.name] += 1
            print(f'-- {cfg}: fit {1e3 * total / n:.2f} ms/batch (host timers on); CUDA runtime calls per batch: '
                  + ', '.join(f'{k} {v / n:.1f}' for k, v in sorted(cnt.items())), flush=True)
            for k in sorted(times, key=times.get, reverse=True)[:12]:
                print(f'   {k:36s} {1e3 * times[k] / n:7.3f} ms/batch  ({calls[k] / n:.1f} calls/batch)', flush=True)
        torch.set_num_threads(os.cpu_count() or 1)

if __name__ == '__main__': main()
