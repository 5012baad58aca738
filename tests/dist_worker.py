"The body of each process of tests/test_distributed.py (a module, so that torch.multiprocessing's spawn can import it)."
import gc, os, warnings
from datetime import timedelta
import numpy as np, torch, torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

N, BS = 256, 16  # items used; per-rank batch size (the union batch is BS * world)

def digits():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X[:N], dtype=torch.float32); X = (X - X.mean()) / X.std()
    return X, torch.tensor(y[:N])

def mlp():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad(): m[0].bias[:12] -= 4.  # dead units, for ReinitDormant to find
    return m

def loaders(items, bs):
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    return DataLoaders(DataLoader(items, bs=bs, shuffle=False, drop_last=True), DataLoader(items[:64], bs=64))

def union_items():
    X, y = digits(); return list(zip(X, y))

def rank_items(rank, world):
    "Rank r's batch b is items [b*BS*world + r*BS, +BS): together the ranks' batch b is the single process's batch b"
    X, y = digits(); idx = [i for i in range(N) if (i // BS) % world == rank]
    return [(X[i], y[i]) for i in idx]

def session(rank, world, port, timeout, body):
    """`body()` in a gloo process group, torn down so that nothing of it is left for the interpreter's exit: the learners (a cycle
    with their callbacks) and their DDP models, which hold the group, are freed first, while both ranks are still in it; then the
    ranks leave together. (A rank died at its exit once in four CI runs, SIGABRT 'terminate called without an active exception',
    when the group lived on in DDP models past `destroy_process_group`: gloo's threads torn down with the interpreter, the likely cause)"""
    warnings.filterwarnings('ignore')
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world, timeout=timedelta(seconds=timeout))
    try:
        body()
        gc.collect()
        dist.barrier()  # (a rank that leaves while the other still talks to it aborts the other)
    finally: dist.destroy_process_group()

def run(rank, world, port, out, mode):
    session(rank, world, port, 60, lambda: _run(rank, world, out, mode))

def _run(rank, world, out, mode):
    from fastai.learner import Learner
    from fastai.callback.core import Callback
    from fastai.callback.progress import ProgressCallback
    from initcb.activations import ActivationHealth
    from initcb.reinit import ReinitDormant
    from initcb.wd import AdaptiveWD
    from initcb.report import NonFiniteGuard
    if mode.startswith('scale'): return _scale(rank, world, out, mode)
    if mode == 'shrink': return _shrink(rank, world, out)
    model = DDP(mlp())
    ah = ActivationHealth(sample_every=1, sample=1024, full_max=1 << 20)
    cbs = [ah]
    if mode != 'stats': cbs += [ReinitDormant(every=3, verbose=False), AdaptiveWD('awd'), NonFiniteGuard(verbose=False)]
    class Poison(Callback):
        def before_batch(self):
            if self.training and self.train_iter == 2 and rank == 1: self.learn.xb = (self.xb[0] * float('nan'),)
    if mode == 'nan': cbs.append(Poison())
    learn = Learner(loaders(rank_items(rank, world), BS), model, loss_func=nn.CrossEntropyLoss(), cbs=cbs)
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, ProgressCallback)]); learn.logger = lambda *a: None
    learn.fit(1, 0. if mode == 'stats' else 1e-2)
    res = dict(params=torch.cat([p.detach().flatten() for p in model.parameters()]).numpy())
    if mode != 'stats':
        res['reinit_events'] = np.array(len(learn.reinit_dormant.events)); res['skips'] = np.array(learn.non_finite_guard.skips, dtype=np.int64)
    ah.flush()
    for k in ('abs_mean', 'rms', 'max', 'abs_max'): res[f'fast_{k}'] = ah.fast[k]
    for k in ('mean', 'std', 'min', 'near_zero', 'hist'): res[f'sampled_{k}'] = ah.sampled[k]
    np.savez(os.path.join(out, f'{mode}_rank{rank}.npz'), **res)

def _scale(rank, world, out, mode):
    "HealthCheck's 'scale' remedy on a deep MLP at std 0.05 (at chance): each rank reads its own losses, the ranks rescale together;"
    "'scale_split': rank 1's labels all one class, so its loss leaves chance (the prior) while rank 0's stays: neither rescales"
    from fastai.learner import Learner
    from fastai.callback.progress import ProgressCallback
    from initcb.report import HealthCheck
    torch.manual_seed(0)
    layers = []
    for _ in range(8): layers += [nn.Linear(64, 64), nn.ReLU()]
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), *layers, nn.Linear(64, 10))
    for l in m:
        if isinstance(l, nn.Linear): nn.init.normal_(l.weight, 0, 0.05)
    hc = HealthCheck(remedy={'scale'}, report=False)
    items = rank_items(rank, world)
    if mode == 'scale_split' and rank == 1: items = [(x, torch.tensor(3)) for x, _ in items]
    learn = Learner(loaders(items, BS), DDP(m), loss_func=nn.CrossEntropyLoss(), cbs=hc)
    learn.dls.c = 10  # (the classes: the chance rule's ln 10; a DataLoaders of plain items has no `c`)
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, ProgressCallback)]); learn.logger = lambda *a: None
    learn.fit(3, 1e-2 if mode == 'scale_split' else 1e-3)  # (split: rank 1 learns its one class well before the check)
    np.savez(os.path.join(out, f'{mode}_rank{rank}.npz'), params=torch.cat([p.detach().flatten() for p in m.parameters()]).numpy(),
             actions=np.array(list(hc.actions.action)), losses=np.array([float(x) for x in learn.recorder.losses]))

def _shrink(rank, world, out):
    "ReinitDormant('shrink_perturb') on a BatchNorm MLP: each rank draws its perturbation from its own random state (seeded apart, as"
    "ranks with their own dropout seeds are) and re-estimates the BatchNorm statistics on its own batch; rank 0's go to all"
    from fastai.learner import Learner
    from fastai.callback.progress import ProgressCallback
    from initcb.reinit import ReinitDormant
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    model = DDP(m, broadcast_buffers=False)  # (the BatchNorm statistics each rank's own: only `sync_from_main` makes them one)
    rd = ReinitDormant(scheme='shrink_perturb', every=3, verbose=False)
    learn = Learner(loaders(rank_items(rank, world), BS), model, loss_func=nn.CrossEntropyLoss(), cbs=rd)
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, ProgressCallback)]); learn.logger = lambda *a: None
    torch.manual_seed(100 + rank)
    class Snap:  # the weights and statistics right after each shrink, before the next step moves them
        rows = []
    orig = rd._shrink_perturb
    def shrink(it):
        orig(it); Snap.rows.append(torch.cat([t.detach().flatten().float() for t in (*m.parameters(), *m.buffers())]).numpy())
    rd._shrink_perturb = shrink
    learn.fit(1, 1e-2)
    np.savez(os.path.join(out, f'shrink_rank{rank}.npz'), snaps=np.stack(Snap.rows), events=np.array(len(rd.events)))

def run_read(rank, world, port, out, mode):
    "Readers called on rank 0 alone mid-fit (as under `is_main()`), then a fit that both ranks end with an exception; a short timeout: a hang fails fast"
    session(rank, world, port, 10, lambda: _read(rank, world, out, mode))

def _read(rank, world, out, mode):
    import matplotlib; matplotlib.use('Agg')
    from fastai.learner import Learner
    from fastai.callback.core import Callback
    from fastai.callback.progress import ProgressCallback
    from initcb.activations import ActivationHealth
    from initcb.gradients import GradientHealth
    from initcb.core import is_main
    ah, gh, seen = ActivationHealth(sample_every=1, chunk=3), GradientHealth(warn=False), []
    class Peek(Callback):
        def after_batch(self):
            if is_main() and self.training: ah.summary(); ah.to_df(); ah.layer_stats(0); gh.to_df()
        def after_train(self):
            if is_main(): ah.summary(); ah.plot_stats(); seen.append((len(ah.fast), len(ah.sampled)))
    class Fail(Callback):
        def before_batch(self):
            if self.training and self.train_iter == 5: raise RuntimeError('stop')
    def learner(cbs):
        learn = Learner(loaders(rank_items(rank, world), BS), DDP(mlp()), loss_func=nn.CrossEntropyLoss(), cbs=cbs)
        learn.remove_cbs([c for c in learn.cbs if isinstance(c, ProgressCallback)]); learn.logger = lambda *a: None
        return learn
    learner([ah, gh, Peek()]).fit(2, 1e-2)
    res = {f'fast_{k}': ah.fast[k] for k in ('rms', 'abs_max')}
    res.update(sampled_mean=ah.sampled['mean'], seen=np.array(seen if is_main() else [], np.int64))
    ah2 = ActivationHealth(sample_every=1, chunk=3)
    try: learner([ah2, Fail()]).fit(1, 1e-2)
    except RuntimeError as e: res['raised'] = np.array(str(e).endswith('stop'))
    res['rows_after_raise'] = np.array(len(ah2.fast))
    np.savez(os.path.join(out, f'{mode}_rank{rank}.npz'), **res)
