"""Host RAM of the processes themselves, before any model: per process kind, each part sourced.

    trainer rank (DeepSpeed; one per GPU of a role):  imports + CUDA context host side (+ ray under Ray)
    vLLM worker (one per engine GPU):                 the same parts (vLLM's own import not measured)
    Ray driver (train_ppo_ray's main process, node 0): imports, no CUDA context
    Ray daemons per node:  raylet, dashboard agent, runtime-env agent, log monitor on every node;
                           GCS, dashboard and its modules, autoscaler monitor, client server on the head

Measured here (CPU build, no GPU; ``python scripts/measure_process_rss.py --ray-python
/tmp/rayvenv/bin/python --ray-daemons``): validation/published/host_process/measured-cpu-build.toml.
The CUDA side (driver, CUDA runtime, cuBLAS/cuDNN/NCCL modules the first CUDA call maps) cannot be
measured without a GPU; it is taken from pytorch/pytorch issue 113326:
validation/published/host_process/pytorch-issue113326-cuda-init-rss.toml.
"""

from __future__ import annotations

from memplan.memory.breakdown import Category, Device, Term
from memplan.sources import measurement

_KB = 1024
_MEASURED = "validation/published/host_process/measured-cpu-build.toml"
_CUDA = "validation/published/host_process/pytorch-issue113326-cuda-init-rss.toml"

#: VmRSS of a fresh interpreter after ``import torch, deepspeed, transformers, peft`` (torch 2.13.0+cpu,
#: deepspeed 0.19.8, transformers 5.25.0, peft 0.21.2): 383,856 kB.
TRAINER_IMPORTS_BYTES = 383_856 * _KB
#: ``import ray`` (2.55.0) above the bare interpreter: 64,444 − 9,956 kB.
RAY_IMPORT_BYTES = (64_444 - 9_956) * _KB
#: Host RSS the first CUDA use adds to a torch process: 2,056,600 − 322,040 kB (``/usr/bin/time -v``
#: maximum RSS, torch 2.2 + CUDA 11.8, ``CUDA_MODULE_LOADING=LAZY``, pytorch/pytorch issue 113326);
#: issue 106511 saw +1,203.5 MiB on its first CUDA call.
CUDA_CONTEXT_HOST_BYTES = (2_056_600 - 322_040) * _KB
#: PSS of the daemons ``ray start`` runs on every node (raylet 26,779, dashboard agent 77,148,
#: runtime-env agent 50,222, log monitor 47,029 kB; Ray 2.55.0).
RAY_NODE_DAEMONS_BYTES = (26_779 + 77_148 + 50_222 + 47_029) * _KB
#: PSS of the head-only daemons (GCS 46,124, dashboard 74,990, its 10 module processes 577,412,
#: autoscaler monitor 48,415, client server 46,528 kB; Ray 2.55.0).
RAY_HEAD_DAEMONS_BYTES = (46_124 + 74_990 + 577_412 + 48_415 + 46_528) * _KB


def _term(path: str, nbytes: int, record: str, detail: str) -> Term:
    return Term(path=path, bytes=nbytes, category=Category.OVERHEAD, device=Device.CPU,
                source=measurement(record, detail))


def gpu_process(*, role: str, under_ray: bool) -> list[Term]:
    """One GPU process (a trainer rank or a vLLM worker): its imports and its CUDA context's host side.

    Source: TRAINER_IMPORTS_BYTES (+ RAY_IMPORT_BYTES under Ray), CUDA_CONTEXT_HOST_BYTES.
    Assumes: a vLLM worker's imports weigh what a trainer's do (vLLM itself is not installed here; its
    own modules, triton and flashinfer would add to it: a lower bound).
    Checked by: tests/memory/test_host_process.py::test_process_terms_match_the_records
    """
    imports = TRAINER_IMPORTS_BYTES + (RAY_IMPORT_BYTES if under_ray else 0)
    what = "torch+deepspeed+transformers+peft" + (" + ray" if under_ray else "")
    return [_term(f"{role}.runtime.imports", imports, _MEASURED, f"VmRSS after import {what}, CPU build"),
            _term(f"{role}.runtime.cuda_context", CUDA_CONTEXT_HOST_BYTES, _CUDA,
                  "host RSS added by the first CUDA use (torch 2.2, CUDA 11.8, lazy loading)")]


def ray_node(*, head: bool) -> list[Term]:
    """Ray's own processes on one node (the head also runs the driver, train_ppo_ray's main process).

    Source: RAY_NODE_DAEMONS_BYTES, RAY_HEAD_DAEMONS_BYTES (PSS: shared library pages counted once
    across the daemons); the driver as TRAINER_IMPORTS_BYTES + RAY_IMPORT_BYTES.
    Assumes: ``ray start`` with the dashboard (OpenRLHF requires ``ray[default]``); the object store
    (/dev/shm) holds no pages beyond what the replay buffer and weight sync put there.
    Checked by: tests/memory/test_host_process.py::test_process_terms_match_the_records
    """
    terms = [_term("ray.daemons", RAY_NODE_DAEMONS_BYTES, _MEASURED,
                   "PSS of raylet, dashboard agent, runtime-env agent, log monitor (Ray 2.55.0)")]
    if head:
        terms += [_term("ray.head_daemons", RAY_HEAD_DAEMONS_BYTES, _MEASURED,
                        "PSS of GCS, dashboard + modules, autoscaler monitor, client server (Ray 2.55.0)"),
                  _term("ray.driver", TRAINER_IMPORTS_BYTES + RAY_IMPORT_BYTES, _MEASURED,
                        "train_ppo_ray's main process: VmRSS after its imports, no CUDA context")]
    return terms
