"""Two CPU processes (gloo) training a DistributedDataParallel model with initcb's callbacks.

fastai's `distrib_ctx` needs CUDA (it calls torch.cuda.set_device), so the model is wrapped in DDP directly, as a
user on CPUs would. Each process has its own shard of scikit-learn's digits; rank r's batch b and the other rank's
make up the single process's batch b."""
import socket, time, numpy as np, pytest, torch
import torch.multiprocessing as mp
from torch import nn
import dist_worker as W
from helpers import quiet

def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def launch(tmp_path, mode, world=2, timeout=120):
    ctx = mp.start_processes(W.run, args=(world, free_port(), str(tmp_path), mode), nprocs=world, join=False, start_method='spawn')
    t = time.time()
    while not ctx.join(timeout=5):
        if time.time() - t > timeout:
            for p in ctx.processes: p.kill()
            pytest.fail(f'{mode}: the processes did not finish in {timeout} s (a hang)')
    return [dict(np.load(tmp_path/f'{mode}_rank{r}.npz')) for r in range(world)]

def test_combined_statistics_equal_one_process(tmp_path):
    "Statistics combined across the ranks at each chunk equal one process's over the union of the batches"
    from initcb.activations import ActivationHealth
    from fastai.learner import Learner
    r0, r1 = launch(tmp_path, 'stats')
    torch.set_num_threads(1)
    ah = ActivationHealth(sample_every=1, sample=1024, full_max=1 << 20)
    learn = quiet(Learner(W.loaders(W.union_items(), W.BS * 2), W.mlp(), loss_func=nn.CrossEntropyLoss(), cbs=ah))
    learn.fit(1, 0.)
    ah.flush()
    for k in ('abs_mean', 'rms', 'max', 'abs_max'): np.testing.assert_allclose(r0[f'fast_{k}'], ah.fast[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for k in ('mean', 'std', 'min', 'near_zero', 'hist'): np.testing.assert_allclose(r0[f'sampled_{k}'], ah.sampled[k], rtol=1e-5, atol=1e-5, err_msg=k)
    for k in r0: np.testing.assert_array_equal(r0[k], r1[k])  # every rank holds the same history

def test_decisions_identical_on_every_rank(tmp_path):
    "After ReinitDormant events and AdaptiveWD steps the weights are the same on both ranks"
    r0, r1 = launch(tmp_path, 'train')
    assert r0['reinit_events'] > 0 and r0['reinit_events'] == r1['reinit_events']
    np.testing.assert_array_equal(r0['params'], r1['params'])

@pytest.mark.parametrize('mode', ['scale', 'scale_split'])
def test_scale_remedy_on_every_rank_or_none(tmp_path, mode):
    "HealthCheck's LSUV ('scale') decided from each rank's own losses: the ranks decide together (one rank at chance alone: before, it"
    "rescaled and waited in `sync_from_main` for the other, forever)"
    r0, r1 = launch(tmp_path, mode, timeout=90)
    assert list(r0['actions']) == list(r1['actions']) == (['LSUVInit'] if mode == 'scale' else [])
    np.testing.assert_array_equal(r0['params'], r1['params'])

def test_shrink_perturb_the_same_on_every_rank(tmp_path):
    "ReinitDormant('shrink_perturb') under DDP: each rank draws its own perturbation and estimates its BatchNorm statistics on its own"
    "batch; right after each shrink every rank holds rank 0's weights and statistics"
    r0, r1 = launch(tmp_path, 'shrink')
    assert r0['events'] > 0 and len(r0['snaps']) == len(r1['snaps']) >= 2
    np.testing.assert_array_equal(r0['snaps'], r1['snaps'])

def test_nan_on_one_rank_skipped_by_both(tmp_path):
    "A NaN batch on rank 1 only: both ranks skip it together, no hang"
    r0, r1 = launch(tmp_path, 'nan')
    assert list(r0['skips']) == list(r1['skips']) == [2]
    np.testing.assert_array_equal(r0['params'], r1['params'])
    assert np.isfinite(r0['params']).all()

def test_read_on_rank0_alone_mid_fit(tmp_path):
    "Readers called on rank 0 alone mid-fit start no collective (before the fix: a hang); at each epoch end they see every row, combined"
    ctx = mp.start_processes(W.run_read, args=(2, free_port(), str(tmp_path), 'read'), nprocs=2, join=False, start_method='spawn')
    t = time.time()
    while not ctx.join(timeout=5):
        if time.time() - t > 90:
            for p in ctx.processes: p.kill()
            pytest.fail('read: the processes did not finish in 90 s (a hang)')
    r0, r1 = [dict(np.load(tmp_path/f'read_rank{r}.npz')) for r in range(2)]
    steps = W.N // (W.BS * 2)  # batches a rank runs an epoch
    assert r0['seen'].tolist() == [[steps, steps], [2 * steps, 2 * steps]]  # (sample_every=1: a sampled row a batch)
    for k in ('fast_rms', 'fast_abs_max', 'sampled_mean'): np.testing.assert_array_equal(r0[k], r1[k])  # every rank the same history
    assert len(r0['fast_rms']) == 2 * steps
    # a fit that every rank ends with an exception: no collective in the cleanup; the rows combined (the first chunk of 3) kept,
    # the 2 rows after it dropped, on every rank alike
    assert r0['raised'] and r1['raised'] and r0['rows_after_raise'] == r1['rows_after_raise'] == 3
