"""Host RAM of the processes themselves, before any model: per process kind, each part sourced.

    trainer rank (DeepSpeed; one per GPU of a role):  imports + CUDA context host side (+ ray under Ray)
    vLLM worker (one per engine GPU):                 the same parts (vLLM's own import not measured)
    Ray driver (train_ppo_ray's main process, node 0): imports, no CUDA context
    Ray daemons per node:  raylet, dashboard agent, runtime-env agent, log monitor on every node;
                           GCS, dashboard and its modules, autoscaler monitor, client server on the head

Measured on an H200 (``python3 validation/gpu/host_probe.py``, torch 2.11.0+cu130, CUDA 13.0):
validation/measured_host/host-probe-20261204T155455Z.json, the RSS of a trainer process after each
import step, the CUDA context (first tensor) and cuBLAS (first bf16 matmul) included. peft and Ray were
not on that machine; their import sizes and Ray's daemons were measured on the development machine
(CPU build, ``python scripts/measure_process_rss.py --ray-python /tmp/rayvenv/bin/python
--ray-daemons``): validation/published/host_process/measured-cpu-build.toml.

An older published figure, pytorch/pytorch issue 113326 (torch 2.2 + CUDA 11.8, maximum RSS, +1.73 GB
at the first CUDA use; validation/published/host_process/pytorch-issue113326-cuda-init-rss.toml), is
6.4 times the 0.27 GB measured on the H200 with torch 2.11 + CUDA 13.0: CUDA's lazy module loading and
the current libraries map far less. memplan uses the measurement of the newer stack; runs on old CUDA
may hold about 1.5 GB more per GPU process.
"""

from __future__ import annotations

from memplan.memory.breakdown import Category, Device, Term
from memplan.sources import measurement
from memplan.units import KiB

_MEASURED = "validation/published/host_process/measured-cpu-build.toml"
_GPU_PROBE = "validation/measured_host/host-probe-20261204T155455Z.json"

#: H200 probe: VmRSS after ``import torch`` (CUDA build), ``transformers`` and ``deepspeed``, without the
#: CUDA steps: 516,108,288 (import torch) + (813,432,832 − 785,063,936) (transformers) + (847,536,128 −
#: 813,432,832) (deepspeed) bytes.
CUDA_BUILD_IMPORTS_BYTES = 516_108_288 + (813_432_832 - 785_063_936) + (847_536_128 - 813_432_832)
#: ``import peft`` on top of torch + deepspeed + transformers (CPU build): 383,856 − 275,996 kB.
PEFT_IMPORT_BYTES = (383_856 - 275_996) * KiB
#: What a trainer rank imports: OpenRLHF's models import peft at module level.
TRAINER_IMPORTS_BYTES = CUDA_BUILD_IMPORTS_BYTES + PEFT_IMPORT_BYTES
#: ``import ray`` (2.55.0) above the bare interpreter: 64,444 − 9,956 kB.
RAY_IMPORT_BYTES = (64_444 - 9_956) * KiB
#: H200 probe: host RSS the CUDA context (first tensor) and cuBLAS (first bf16 matmul) add:
#: 785,063,936 − 516,108,288 bytes (torch 2.11.0+cu130, CUDA 13.0, lazy module loading by default).
CUDA_CONTEXT_HOST_BYTES = 785_063_936 - 516_108_288
#: PSS of the daemons ``ray start`` runs on every node (raylet 26,779, dashboard agent 77,148,
#: runtime-env agent 50,222, log monitor 47,029 kB; Ray 2.55.0).
RAY_NODE_DAEMONS_BYTES = (26_779 + 77_148 + 50_222 + 47_029) * KiB
#: PSS of the head-only daemons (GCS 46,124, dashboard 74,990, its 10 module processes 577,412,
#: autoscaler monitor 48,415, client server 46,528 kB; Ray 2.55.0).
RAY_HEAD_DAEMONS_BYTES = (46_124 + 74_990 + 577_412 + 48_415 + 46_528) * KiB


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
    what = "torch+transformers+deepspeed (H200, CUDA build) + peft" + (" + ray" if under_ray else "")
    return [_term(f"{role}.runtime.imports", imports, _GPU_PROBE, f"VmRSS after import {what}"),
            _term(f"{role}.runtime.cuda_context", CUDA_CONTEXT_HOST_BYTES, _GPU_PROBE,
                  "host RSS added by the first CUDA tensor and cuBLAS (torch 2.11, CUDA 13.0, H200)")]


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
                  _term("ray.driver", TRAINER_IMPORTS_BYTES + RAY_IMPORT_BYTES, _GPU_PROBE,
                        "train_ppo_ray's main process: VmRSS after its imports, no CUDA context")]
    return terms
