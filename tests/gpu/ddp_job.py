#!/usr/bin/env python3
"""One rank of a flexmig training job, started as a user would: `srun --flexmig python ddp_job.py`.

  ddp_job.py [--steps N] [--single K] [--dry-run]

Each rank prints `RANK {json}`: what flexmig bound it to (FLEXMIG_*, CUDA_VISIBLE_DEVICES,
NCCL_MIG_ID, CUDA_MPS_ACTIVE_THREAD_PERCENTAGE, the torch.distributed variables). Then it trains a
small transformer with DistributedDataParallel over NCCL (torch.distributed.init_process_group
reads the plugin's RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; no torchrun) for --steps steps
on a learnable task (a fixed random teacher network, seeded data per rank), and rank 0 prints
`RESULT {json}`: samples/s over the timed steps, the loss at the start and the end, and whether
every rank ends with bit-identical parameters (all-gathered checksums) and gradients.

--single K: one process, K times the batch, no DDP: the same job on one bigger instance.
--dry-run: no torch and no GPU: only the RANK line (for CI, where the Slurm path is checked).
"""
import argparse
import json
import os
import sys
import time

BOUND = ["FLEXMIG_LEAF", "FLEXMIG_GPU", "FLEXMIG_PROFILE", "CUDA_VISIBLE_DEVICES", "NCCL_MIG_ID", "NCCL_MULTI_RANK_GPU_ENABLE",
         "NCCL_NVLS_ENABLE", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
         "MASTER_ADDR", "MASTER_PORT", "LD_PRELOAD", "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_PROCID", "SLURM_STEP_GPUS"]
BATCH, SEQ, DIM, LAYERS = 16, 64, 256, 4


def model(torch):
    layer = torch.nn.TransformerEncoderLayer(d_model=DIM, nhead=8, dim_feedforward=4 * DIM, batch_first=True, dropout=0.0)
    return torch.nn.Sequential(torch.nn.TransformerEncoder(layer, num_layers=LAYERS), torch.nn.Linear(DIM, DIM))


def checksum(tensors):
    return float(sum(t.detach().double().abs().sum().item() for t in tensors))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--single", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    if not a.single:
        print("RANK " + json.dumps({k: os.environ.get(k) for k in BOUND}), flush=True)
    if a.dry_run:
        return 0
    import torch
    import torch.distributed as dist

    dev = torch.device("cuda", 0)  # the task sees exactly its leaf (its GPU, on emulated leaves)
    ddp = not a.single
    if ddp:
        dist.init_process_group("nccl", device_id=dev)
    world = dist.get_world_size() if ddp else 1
    torch.manual_seed(1234)  # the same initial weights and teacher on every rank
    net = model(torch).to(dev)
    teacher = torch.nn.Linear(DIM, DIM).to(dev)
    for p in teacher.parameters():
        p.requires_grad_(False)
    if ddp:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[0])
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    batch = BATCH * (a.single or 1)
    g = torch.Generator(device=dev)
    g.manual_seed(100 + rank)  # each rank its own data
    losses, t0, timed = [], None, 0
    warm = min(20, a.steps // 4)
    for step in range(a.steps):
        x = torch.randn(batch, SEQ, DIM, device=dev, generator=g)
        loss = torch.nn.functional.mse_loss(net(x), teacher(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == a.steps - 1:
            grads = checksum([p.grad for p in net.parameters()])
        opt.step()
        if step == warm:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        if step > warm:
            timed += 1
        losses.append(loss.item() if step in (0, a.steps - 1) or step % 50 == 0 else None)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    params = checksum(net.parameters())
    if ddp:
        both = torch.tensor([params, grads], dtype=torch.float64, device=dev)
        every = [torch.zeros_like(both) for _ in range(world)]
        dist.all_gather(every, both)
        sums = [e.tolist() for e in every]
    else:
        sums = [[params, grads]]
    first, last = losses[0], losses[-1]
    if rank == 0:
        print("RESULT " + json.dumps({
            "world": world, "single": a.single, "steps": a.steps, "batch_per_rank": batch,
            "samples_per_s": timed * batch * world / elapsed, "loss_first": first, "loss_last": last,
            "params_equal": all(s == sums[0] for s in sums), "checksums": sums,
        }), flush=True)
    if ddp:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
