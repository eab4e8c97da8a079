"""What real FSDP2 allocates on a CPU (gloo) around a unit's reduce-scatter, by the allocator's own count.

A 2-rank gloo run of ``Embedding(32000, 512) → Linear(512, 512) → Linear(512, 32000)`` (untied), each module its
own FSDP2 unit as verl wraps untied embeddings, ``MixedPrecisionPolicy(bf16, fp32)``; one training step is
profiled with ``torch.profiler(profile_memory=True)`` (every CPU-allocator event, the internals of fused ops and
of gloo included). Printed: each allocation or free of at least 4 MB and the running total on rank 0.

What it shows (torch 2.13 CPU): at each unit's reduce-scatter, besides FSDP's reduce-scatter input (N·S·fp32)
and output (S·fp32), the CPU allocates a bf16 copy of each gradient (``_chunk_cat``'s composite CPU path; CUDA
runs ``_chunk_cat_out_cuda``'s fused bf16→fp32 kernel with no temporary, aten/src/ATen/native/cuda/
TensorShape.cu) and gloo a full copy of the reduce-scatter input (N·S·fp32). These CPU-only bytes are why the
validation/fsdp_cpu backward peaks read above memplan's GPU prediction (validation/known_misses.toml).

Run: ``python scripts/probe_fsdp_reduce_cpu.py`` (about 20 s).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

V, H, MIB4 = 32000, 512, 4 << 20


def _run(rank: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29537")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.profiler import ProfilerActivity, profile

    model = torch.nn.Sequential(torch.nn.Embedding(V, H), torch.nn.Linear(H, H), torch.nn.Linear(H, V, bias=False))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for module in model:
        fully_shard(module, mp_policy=policy, reshard_after_forward=True)
    fully_shard(model, mp_policy=policy, reshard_after_forward=True)
    tokens = torch.randint(0, V, (2, 64))
    model(tokens).float().sum().backward()  # warm-up: lazy init
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(tokens).float().sum().backward()
    if rank == 0:
        events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                        key=lambda e: e.start_ns())
        total = peak = 0
        for event in events:
            total += event.nbytes()
            peak = max(peak, total)
            if abs(event.nbytes()) >= MIB4:
                print(f"{event.nbytes():>+14,} B   live {total:>14,} B")
        print(f"peak {peak:,} B; one bf16 [V, H] gradient = {V * H * 2:,} B")
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_run, nprocs=2)
