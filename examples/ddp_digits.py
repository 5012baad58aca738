"""initcb under DistributedDataParallel on CPUs: two processes, each with its own shard of scikit-learn's digits.

    torchrun --nproc_per_node 2 examples/ddp_digits.py

fastai's `learn.distrib_ctx()` needs CUDA (and Hugging Face Accelerate); on CPUs (gloo) wrap the model in DDP
yourself and shard the data, as here. Every rank must run the same number of batches of the same size (drop_last). On GPUs use
`with learn.distrib_ctx(): learn.fit(...)` and the same callbacks: they combine their statistics across ranks at
each chunk, make the same decisions on every rank, and only rank 0 prints.
"""
import os, warnings
import torch, torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from fastai.learner import Learner
from fastai.metrics import accuracy
from fastai.torch_core import set_seed
from fastai.callback.progress import *
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from initcb.core import digits_dls, is_main
from initcb.report import HealthCheck

def main():
    warnings.filterwarnings('ignore')
    dist.init_process_group('gloo')  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    set_seed(0)  # (torch's, Python's and NumPy's: fastai's DataLoader shuffles with Python's)
    dls = digits_dls(bs=32)
    shard = list(dls.train.dataset)[rank::world]  # each rank its own shard; the same number of full batches on every rank
    dls = DataLoaders(DataLoader(shard, bs=32, shuffle=True, drop_last=True), dls.valid)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    learn = Learner(dls, DDP(model), loss_func=nn.CrossEntropyLoss(), metrics=accuracy, cbs=HealthCheck())
    with learn.no_bar(), learn.no_logging(): learn.fit(3, 1e-2)
    if is_main():
        print(f"{world} processes; validation accuracy {learn.recorder.values[-1][2]:.3f}; history of "
              f"{learn.activation_health.n_seen} batches per rank, combined across ranks")
    dist.destroy_process_group()

if __name__ == '__main__': main()
