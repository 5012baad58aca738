"""What initcb's telemetry costs inside a fastai fit, against no callback and against fastai's ActivationStats.

Interleaved fits of the same model and data in one process, after a warm-up; medians and min-max of the ratio of
each run to the mean of the no-callback runs just before and after it. Also: the tensor ops each callback dispatches
per recorded batch (a TorchDispatchMode count, the figure that predicts the cost on a launch-bound GPU fit), and the
bytes of history after long simulated runs.

    python bench/overhead.py                 # CPU fits: compute-bound and overhead-bound (the GPU stand-in)
    python bench/overhead.py --device cuda   # the GPU fits (launch-bound and GPU-bound), with peak memory
    python bench/overhead.py --quick         # a smoke run (CI)
    python bench/overhead.py --json out.json --md out.md
    python bench/overhead.py --models cnn5 --reps 30 --configs "ActivationHealth(),no-op hooks,spin 200us in hooks"

`--configs` also takes the rows of EXTRA_CFGS, which the default table leaves out: calibration (hooks that do nothing,
or spin a known time) and variants of the minimal sampler. `bench/inside.py` times the callbacks' own code.
"""
import argparse, ctypes, json, math, os, platform, random, statistics, sys, time, warnings
warnings.filterwarnings('ignore')
import numpy as np, torch, torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from fastai.basics import Learner, DataLoaders
from fastai.callback.hook import ActivationStats
from fastai.vision.models.xresnet import xresnet18, xresnet50
from initcb.core import HealthCallback, ForwardHooks, ELEMENTWISE_TYPES, sample_index, select_modules, _set_grad
from initcb.activations import ActivationHealth, default_full_max, _abs_stats
from initcb.gradients import GradientHealth
from initcb.report import HealthCheck, NonFiniteGuard

class ReplayDL:
    "A few batches made once on the device and replayed: times the step, not data loading"
    def __init__(self, x, y, n): self.x, self.y, self.n, self.device = x, y, n, x.device
    def __iter__(self):
        for i in range(self.n): yield self.x[i % len(self.x)], self.y[i % len(self.y)]
    def __len__(self): return self.n
    def to(self, device): self.x, self.y, self.device = self.x.to(device), self.y.to(device), device; return self

def dls_for(dev, bs, c, size, n_train, k=4):
    x = torch.randn(k, bs, c, size, size, device=dev); y = torch.randint(0, 10, (k, bs), device=dev)
    return DataLoaders(ReplayDL(x, y, n_train), ReplayDL(x[:1], y[:1], 1))

def conv(ni, nf, s=2, bn=False):
    return nn.Sequential(nn.Conv2d(ni, nf, 3, s, 1), *([nn.BatchNorm2d(nf)] if bn else []), nn.ReLU())
def cnn5(): return nn.Sequential(conv(1, 8), conv(8, 16), conv(16, 32), conv(32, 64), conv(64, 10), nn.Flatten())
def cnn_bn():
    return nn.Sequential(conv(3, 32, 1, True), conv(32, 32, 2, True), conv(32, 64, 1, True), conv(64, 64, 2, True),
                         conv(64, 128, 1, True), conv(128, 128, 2, True), conv(128, 256, 2, True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10))

class MinimalSampler(HealthCallback):
    """A bare recorder of every watched output's statistics each batch, the reference for what such recording costs at
    the least: each output larger than `default_full_max` gives one `sample`-element gather in its hook (an elementwise activation none: it is
    applied to its input's sample later), the small outputs are copied into one tensor, and every `chunk` recorded
    batches all of it is reduced at once (sum |x|, L2 norm, max |x|, max). Nothing else: no histograms or sampled
    statistics, no check that an output was changed in place, no error handling. ActivationHealth does all of that."""
    def __init__(self, every=2, sample=2048, chunk=64): self.every, self.sample, self.chunk = every, sample, chunk
    def setup(self):
        self.mods = [m for _, m in select_modules(self.model, None)]
        self.elem = [isinstance(m, tuple(ELEMENTWISE_TYPES)) for m in self.mods]
        self.full_max = default_full_max(next(self.model.parameters()).device)
        self.hooks, self.idx, self.rows, self.on = ForwardHooks(self.mods, self._hook, with_input=True), {}, [], False
        self.samps, self.small = [], []
    def before_batch(self): self.on = self.learn.train_iter % self.every == 0
    def _hook(self, i, inp, o):
        if not self.on: return
        if o.numel() <= self.full_max: self.small.append(o); return
        if self.elem[i]: return
        ix = self.idx.get(i)
        if ix is None: ix = self.idx[i] = self.index(o)
        g = torch.is_grad_enabled(); _set_grad(False)
        try: self.samps.append(torch.take(o, ix))
        finally: _set_grad(g)
    def index(self, o): return sample_index(o.shape, self.sample, o.device)[0]
    def after_pred(self):
        if not self.on: return
        self.on = False
        g = torch.is_grad_enabled(); _set_grad(False)
        try: small = torch.cat([t.flatten() for t in self.small]) if self.small else None
        finally: _set_grad(g)
        self.rows.append((small, self.samps)); self.samps, self.small = [], []
        if len(self.rows) >= self.chunk: self.reduce()
    def reduce(self):
        with torch.no_grad():
            k, out = len(self.rows), []
            if self.rows[0][1]:
                x = torch.stack([s for r in self.rows for s in r[1]]).view(k, -1, self.sample)
                out += [_abs_stats(x), _abs_stats(torch.relu(x))]  # (cnn5 and cnn_bn: each sampled layer feeds a ReLU)
            if self.rows[0][0] is not None: out.append(_abs_stats(torch.stack([r[0] for r in self.rows])[:, None]))
            self.stats = torch.cat(out, 2).cpu()
        self.rows = []
    def remove(self):
        if getattr(self, 'hooks', None) is not None: self.hooks.remove()

class NumpySampler(MinimalSampler):
    """The minimal sampler with its takes done by NumPy on a CPU output's memory: no torch op in the hook (a view through
    `.numpy()` and a NumPy fancy index; `detach` and `from_numpy` the only torch calls). A variant to measure whether
    torch's dispatch is what the takes cost (it is not)."""
    def _hook(self, i, inp, o):
        if not self.on: return
        if o.numel() <= self.full_max: self.small.append(o); return
        if self.elem[i]: return
        ix = self.idx.get(i)
        if ix is None: ix = self.idx[i] = sample_index(o.shape, self.sample, o.device)[0].numpy()
        self.samps.append(torch.from_numpy(o.detach().numpy().reshape(-1)[ix]))  # (contiguous outputs, as here)

class HeldSampler(MinimalSampler):
    """The minimal sampler with its sampling moved out of the forward pass: the hooks keep references to the large
    outputs, and `after_pred` copies strided samples of them all into a chunk buffer in one multi-tensor copy (the
    outputs stay alive until then: more memory in flight). A variant to measure, not a design: on cnn5 it cost the fit
    the same as `MinimalSampler`. Assumes contiguous outputs (`as_strided` from the start of the storage), as here. Its
    sample is an arithmetic progression (a view can take no other), `sample` multiples of n//sample: not `sample_index`'s,
    which spreads over the whole tensor."""
    def setup(self): super().setup(); self.held, self.buf, self.r = [], None, 0
    def index(self, o): return torch.arange(self.sample, device=o.device) * max(1, o.numel() // self.sample)
    def _hook(self, i, inp, o):
        if not self.on: return
        if o.numel() <= self.full_max: self.small.append(o); return
        if not self.elem[i]: self.held.append((i, o))
    def after_pred(self):
        if not self.on: return
        g = torch.is_grad_enabled(); _set_grad(False)
        try:
            src = []
            for i, o in self.held:
                st = self.idx.get(i)
                if st is None: ix = self.index(o); st = self.idx[i] = int(ix[1] - ix[0])
                src.append(o.as_strided((self.sample,), (st,), 0))  # (`index`: an arithmetic progression)
            if self.buf is None:
                self.buf = torch.empty(self.chunk, len(src), self.sample, device=src[0].device)
                self.views = [list(self.buf[r].unbind(0)) for r in range(self.chunk)]
            torch._foreach_copy_(self.views[self.r], src)
        finally: _set_grad(g)
        self.held, self.samps, self.r = [], [], self.r + 1
        super().after_pred()
    def reduce(self):
        with torch.no_grad():
            x = self.buf[:self.r]
            out = [_abs_stats(x), _abs_stats(torch.relu(x))]
            if self.rows[0][0] is not None: out.append(_abs_stats(torch.stack([r[0] for r in self.rows])[:, None]))
            self.stats = torch.cat(out, 2).cpu()
        self.rows, self.r = [], 0

class Calibration(HealthCallback):
    """Hooks on the same modules as the other callbacks that do nothing but spin: `us` microseconds a batch of pure Python,
    spread over the hooks (`where='hooks'`, inside the forward pass) or in `after_pred` (`where='after'`), or none at
    all (`us=0`: the cost of the hook calls themselves). What a known amount of host work costs fit to fit, to tell a
    callback's own time from what it does to the fit around it (caches, allocator, threads)."""
    def __init__(self, us=0, where='hooks'): self.us, self.where = us, where
    def setup(self):
        self.mods = [m for _, m in select_modules(self.model, None)]
        self.hooks, self.per = ForwardHooks(self.mods, self._hook), self.us * 1e-6 / len(self.mods)
    def _hook(self, i, o):
        if self.us and self.where == 'hooks': _spin(self.per)
    def after_pred(self):
        if self.us and self.where == 'after': _spin(self.us * 1e-6)
    def remove(self):
        if getattr(self, 'hooks', None) is not None: self.hooks.remove()

class UnsharedGuard(NonFiniteGuard):
    "NonFiniteGuard that keeps its gradient norms to itself: GradientHealth takes its own, as before they were shared (a calibration row)"
    def after_backward(self):
        try: super().after_backward()
        finally: self._grad_norms = None

def _spin(s):
    t = time.perf_counter() + s
    while time.perf_counter() < t: pass

CFGS = {
    'none': lambda: [],
    'fastai ActivationStats': lambda: [ActivationStats()],
    'fastai ActivationStats(with_hist)': lambda: [ActivationStats(with_hist=True)],
    'ActivationHealth()': lambda: [ActivationHealth()],
    'ActivationHealth(sample_every=1)': lambda: [ActivationHealth(sample_every=1)],
    'ActivationHealth(full_max=0)': lambda: [ActivationHealth(full_max=0)],
    'GradientHealth()': lambda: [GradientHealth(warn=False)],
    'ActivationHealth() + GradientHealth()': lambda: [ActivationHealth(), GradientHealth(warn=False)],
    'minimal sampler (reference)': lambda: [MinimalSampler(every=1)],
}
# Calibration and reference rows, run only when named in --configs, e.g.
#   python bench/overhead.py --models cnn5 --reps 30 --configs "ActivationHealth(),no-op hooks,spin 200us in hooks"
EXTRA_CFGS = {
    'no-op hooks': lambda: [Calibration()],
    'spin 200us in hooks': lambda: [Calibration(200, 'hooks')],
    'spin 200us after the forward pass': lambda: [Calibration(200, 'after')],
    'minimal sampler (128 elements)': lambda: [MinimalSampler(every=1, sample=128)],
    'minimal sampler (sampled after the forward pass)': lambda: [HeldSampler(every=1)],
    'minimal sampler (NumPy takes)': lambda: [NumpySampler(every=1)],
    'NonFiniteGuard()': lambda: [NonFiniteGuard(verbose=False)],
    'HealthCheck(report=False)': lambda: [HealthCheck(report=False)],
    'HealthCheck(report=False) unshared norms': lambda: [UnsharedGuard(verbose=False), HealthCheck(report=False)],
}
ALL_CFGS = {**CFGS, **EXTRA_CFGS}

# On a GPU, fastai's ActivationStats costs 32-62x (DESIGN.md): it runs fewer repetitions there, without histograms, and
# not at all on the GPU-bound fit, so that the whole table fits a 15-minute device session.
CUDA_SKIP = {'fastai ActivationStats(with_hist)', 'ActivationHealth(full_max=0)'}

def config_names(s, p=None):
    "The configuration names in the comma-separated `s`; with an argparse parser `p`, an error names any that are unknown"
    names = [c.strip() for c in s.split(',') if c.strip()]
    bad = [c for c in names if c not in ALL_CFGS]
    if bad and p is not None: p.error(f'--configs: unknown {bad}; known: {list(ALL_CFGS)}')
    return names

def cfgs_for(dev, mname, only=''):
    cs = list(CFGS) if dev != 'cuda' else [c for c in CFGS if c not in CUDA_SKIP and not ('GPU-bound' in mname and c.startswith('fastai'))]
    if not only: return cs
    want = config_names(only)
    return ['none'] + [c for c in cs + list(EXTRA_CFGS) if c != 'none' and c in want]

def models(dev, quick):
    q = quick
    if dev == 'cuda': return {
        'xresnet18 64px bs256 bf16 (launch-bound)': (lambda: xresnet18(c_in=3, n_out=10), (256, 3, 64, 4 if q else 40), 'bf16'),
        'xresnet50 128px bs64 bf16 (launch-bound)': (lambda: xresnet50(c_in=3, n_out=10), (64, 3, 128, 4 if q else 20), 'bf16'),
        'xresnet50 224px bs256 bf16 (GPU-bound)': (lambda: xresnet50(c_in=3, n_out=10), (256, 3, 224, 3 if q else 12), 'bf16'),
    }
    return {
        'cnn5 28px bs256': (cnn5, (64 if q else 256, 1, 28, 8 if q else 120), None),
        'cnn_bn 64px bs64 (deeper, wider, BatchNorm)': (cnn_bn, (8 if q else 64, 3, 64, 4 if q else 24), None),
        'xresnet18 16px bs2, 1 thread (overhead-bound)': (lambda: xresnet18(c_in=3, n_out=10), (2, 3, 16, 8 if q else 60), None),
        'xresnet50 16px bs2, 1 thread (overhead-bound)': (lambda: xresnet50(c_in=3, n_out=10), (2, 3, 16, 4 if q else 30), None),
    }

def steady_malloc():
    """Pin glibc's heap trim and mmap thresholds (1 GiB, 32 MiB); whether it could.

    With glibc's adaptive defaults, a CPU fit of these small models settles in one of two states, depending on the
    history of the process's allocations: either the heap's top is handed back to the OS in the backward pass and
    faulted in again in the next forward pass (~1,500 page faults a batch for cnn5, ~20% of its step time), or it is
    not. Either fit, with or without a callback, can land in either state and stay there for a while, so paired ratios
    swung by +-20% whatever the callback did. Pinned, no fit trims its heap. (PyTorch's CPU tuning guide recommends
    jemalloc or tcmalloc for the same reason.) `--glibc-default` leaves glibc as it is."""
    try: libc = ctypes.CDLL('libc.so.6')
    except OSError: return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) and libc.mallopt(M_MMAP_THRESHOLD, 1 << 25))

def make_learner(model, dls, cfg, amp):
    learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), cbs=ALL_CFGS[cfg]())
    if amp == 'bf16': learn.to_bf16()
    learn.remove_cbs([c for c in learn.cbs if type(c).__name__ == 'ProgressCallback'])
    learn.logger = lambda *a: None
    return learn

def fit_time(model, dls, cfg, amp, dev):
    learn = make_learner(model, dls, cfg, amp)
    if dev == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter(); learn.fit(1, 1e-3)
    if dev == 'cuda': torch.cuda.synchronize()
    return time.perf_counter() - t, (torch.cuda.max_memory_allocated() if dev == 'cuda' else None)

class OpCount(TorchDispatchMode):
    "Counts the aten ops dispatched (foreach ops count once)"
    def __init__(self): super().__init__(); self.n = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))

def ops_per_batch(mk, shape, cfg, dev, n1=8, n2=24):
    "Ops a callback adds per recorded batch in steady state: (count at n2 - count at n1 batches) / (n2 - n1), less the same without it"
    bs, c, size, _ = shape
    def count(name, n):
        torch.manual_seed(0); learn = make_learner(mk(), dls_for(dev, bs, c, size, n), name, None)
        with OpCount() as oc: learn.fit(1, 1e-3)
        return oc.n
    return ((count(cfg, n2) - count(cfg, n1)) - (count('none', n2) - count('none', n1))) / (n2 - n1)

def history_bytes(n_batches, n_layers, bins=40):
    "Bytes of history after `n_batches` recorded batches of `n_layers` layers, fed through the callback's sinks"
    cb = ActivationHealth(bins=bins)
    cb._reset([str(i) for i in range(n_layers)], [None] * n_layers)
    k, chunk = cb.sample_every, cb.chunk
    fast = np.abs(np.random.randn(chunk, 4 * n_layers)).astype(np.float32)
    samp = np.abs(np.random.randn(chunk, n_layers, 6 + bins + 2 + 2)).astype(np.float32)  # (statistics, histogram with a slot below and above its range, the range (lo, hi))
    ns, order = [1000] * n_layers, list(range(n_layers))
    t0, it, sit = time.perf_counter(), 0, 0
    while it < n_batches:
        cb._fast_sink(fast, [(it + j, order, ns) for j in range(chunk)]); it += chunk
        if it // k >= sit + chunk: cb._samp_sink(samp, [k * (sit + j) for j in range(chunk)]); sit += chunk
    return cb.fast.nbytes + cb.sampled.nbytes, len(cb.fast), len(cb.sampled), time.perf_counter() - t0

def bench_fit(mname, mk, shape, amp, dev, reps, fastai_reps, cfgs):
    threads = torch.get_num_threads()
    if '1 thread' in mname: torch.set_num_threads(1)
    try:
        bs, c, size, n = shape
        model, dls = mk().to(dev), dls_for(dev, bs, c, size, n)
        assert cfgs[0] == 'none'
        for cfg in cfgs:  # warm-up: allocator, cudnn autotune, first-call costs
            dls.train.n = 2; fit_time(model, dls, cfg, amp, dev)
        dls.train.n = n
        times, mems, ratios = {c: [] for c in cfgs}, {c: None for c in cfgs}, {c: [] for c in cfgs}
        for r in range(reps):
            # Each callback fit sits between two no-callback fits, and its ratio is to their mean: a shared machine's
            # speed drifts within seconds, and a reference run a whole round away let that drift into the ratio.
            # A new order each round: a fit right after another pays for what that one left (fastai's with_hist run
            # frees a lot of host memory); in a fixed order that cost would always land on the same configuration
            prev, _ = fit_time(model, dls, 'none', amp, dev); times['none'].append(prev); ratios['none'].append(1.)
            for cfg in random.Random(r).sample(cfgs[1:], len(cfgs) - 1):
                if cfg.startswith('fastai') and r >= fastai_reps: continue
                t, m = fit_time(model, dls, cfg, amp, dev); times[cfg].append(t); mems[cfg] = m
                nxt, mems['none'] = fit_time(model, dls, 'none', amp, dev); times['none'].append(nxt)
                ratios[cfg].append(2 * t / (prev + nxt)); prev = nxt
        res = {}
        for cfg, v in times.items():
            ops = None if cfg == 'none' or dev == 'cuda' else ops_per_batch(mk, shape, cfg, dev)
            r = ratios[cfg]
            res[cfg] = dict(ratio=statistics.median(r), lo=min(r), hi=max(r), ms_per_batch=1e3 * statistics.median(v) / n,
                            runs=len(r), ops_per_batch=ops, seconds=[round(t, 4) for t in v], peak_mem_ratio=None if mems[cfg] is None else mems[cfg] / mems['none'])
        print(f'\n{mname}: {n} batches/fit, {reps} interleaved runs, medians (min-max) of the ratio to the no-callback runs on either side', flush=True)
        for cfg, v in res.items():
            extra = '' if v['ops_per_batch'] is None else f"  {v['ops_per_batch']:7.1f} ops/batch"
            if v['peak_mem_ratio'] is not None: extra += f"  peak mem {v['peak_mem_ratio']:.3f}x"
            if v['runs'] != reps: extra += f"  ({v['runs']} runs)"
            print(f"  {cfg:36s} {v['ratio']:6.3f}x ({v['lo']:.3f}-{v['hi']:.3f})  {v['ms_per_batch']:.2f} ms/batch{extra}", flush=True)
        return res
    finally:
        torch.set_num_threads(threads)
        if dev == 'cuda': torch.cuda.empty_cache()

def history(out, quick):
    nb, L = (2000 if quick else 100_000), 100
    b, rows, srows, dt = history_bytes(nb, L)
    out['history'] = {f'{nb} batches x {L} layers': dict(bytes=b, fast_rows=rows, sampled_rows=srows, seconds=dt)}
    print(f'\nhistory after {nb:,} batches x {L} layers: {b/2**20:.1f} MiB ({rows} + {srows} rows, fed in {dt:.1f} s)')
    if not quick:
        b, rows, srows, dt = history_bytes(1_000_000, L)
        out['history'][f'1000000 batches x {L} layers'] = dict(bytes=b, fast_rows=rows, sampled_rows=srows, seconds=dt)
        print(f'history after 1,000,000 batches x {L} layers: {b/2**20:.1f} MiB ({rows} + {srows} rows, fed in {dt:.1f} s)')

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--device', default='cpu'); p.add_argument('--quick', action='store_true')
    p.add_argument('--reps', type=int, default=5); p.add_argument('--json'); p.add_argument('--md')
    p.add_argument('--fastai-reps', type=int, default=None, help="runs of fastai's ActivationStats (default: --reps on a CPU, 2 on a GPU)")
    p.add_argument('--configs', default='', help='run only these comma-separated configurations (and the no-callback fit)')
    p.add_argument('--models', default='', help='run only the fits whose name contains one of these comma-separated strings')
    p.add_argument('--glibc-default', action='store_true', help="leave glibc's adaptive heap thresholds as they are (see steady_malloc)")
    a = p.parse_args()
    config_names(a.configs, p)
    pinned = False if a.glibc_default else steady_malloc()
    dev, reps = a.device, (2 if a.quick else a.reps)
    a.fastai_reps = a.fastai_reps or (min(2, reps) if dev == 'cuda' else reps)
    if dev == 'cuda': torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if dev == 'cuda' else f'CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)'
    import fastai
    heap = 'glibc heap thresholds pinned' if pinned else "glibc's adaptive heap thresholds"
    print(f'device: {name}; torch {torch.__version__}; fastai {fastai.__version__}; {heap}', flush=True)
    out, lines = {'device': name, 'heap': heap, 'fits': {}}, []
    for mname, (mk, shape, amp) in models(dev, a.quick).items():
        if a.models and not any(m in mname for m in a.models.split(',')): continue
        try: out['fits'][mname] = bench_fit(mname, mk, shape, amp, dev, reps, a.fastai_reps, cfgs_for(dev, mname, a.configs))
        except Exception as e:  # one failing fit must not cost the rest of the table (a GPU session is short)
            import traceback; traceback.print_exc(); out['fits'][mname] = {'error': repr(e)}
        if a.json: json.dump(out, open(a.json, 'w'), indent=1)
    out['history'] = {}
    if dev != 'cuda': history(out, a.quick)  # host memory: the same on any device
    if a.json: json.dump(out, open(a.json, 'w'), indent=1)
    if a.md: open(a.md, 'w').write(to_md(out))

def to_md(out):
    rows = [f"Device: {out['device']}; {out.get('heap', '')}.\n", '| fit | callback | ratio to no callback (min-max) | ops per recorded batch |', '|---|---|---|---|']
    for f, res in out['fits'].items():
        if 'error' in res: rows.append(f"| {f} | failed: {res['error']} | | |"); continue
        for cfg, v in res.items():
            if cfg == 'none': continue
            ops = '' if v['ops_per_batch'] is None else f"{v['ops_per_batch']:.1f}"
            mem = '' if v['peak_mem_ratio'] is None else f"; peak memory {v['peak_mem_ratio']:.3f}x"
            rows.append(f"| {f} | {cfg} | {v['ratio']:.3f}x ({v['lo']:.3f}-{v['hi']:.3f}){mem} | {ops} |")
    for k, v in out['history'].items(): rows.append(f"\nHistory after {k}: {v['bytes']/2**20:.1f} MiB.")
    return '\n'.join(rows) + '\n'

if __name__ == '__main__': main()
