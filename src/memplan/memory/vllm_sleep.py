"""One vLLM engine GPU in each sleep state, and the host memory its sleep holds (framework-neutral).

A trainer that shares its GPUs with an engine puts it to sleep after generating and, before the next
generation, wakes the weights alone (to receive new weights), then the KV cache. Three states:

    state          on the GPU (one TP rank)
    GENERATING     weights + KV pool + activations + non-torch + CUDA graphs + context + NCCL
    WEIGHTS_ONLY   weights                         + non-torch + CUDA graphs + context + NCCL
    ASLEEP                                           non-torch + CUDA graphs + context + NCCL

``sleep`` unmaps every CuMem handle (the pools tagged "weights" and "kv_cache"), backing up the "weights"
ones to host at level 1 and discarding them at level 2, then runs ``gc.collect(); torch.cuda.empty_cache()``,
which also returns the activation blocks torch kept cached from the last forward. CUDA graphs live in
torch's private graph pool (not a CuMem pool, not freed by ``empty_cache``); the CUDA context, NCCL and
non-torch workspaces are outside both. ``wake_up(tags=["weights"])`` maps the weights pool back (level 1:
copies the host backup in); ``wake_up(tags=["kv_cache"])`` maps the KV pool (its contents are not restored).

Source: vllm/device_allocator/cumem.py@v0.24.0 ``sleep`` L167-216 (L195-203 pinned backup of offloaded tags,
L204 unmap every handle, L215-216 gc + empty_cache), ``wake_up`` L218-241; vllm/v1/worker/gpu_worker.py@v0.24.0
``sleep`` L165-185 (level 1 offloads "weights", level 2 none; level 2 first copies ``named_buffers`` to host),
``wake_up`` L187-200, ``load_model`` L377-391 (weights in the "weights" pool), ``initialize_from_config``
L605-606 (KV in the "kv_cache" pool); same code at v0.27.1 (cumem.py ``sleep`` L229-281).
"""

from __future__ import annotations

from dataclasses import replace
from enum import StrEnum

from memplan.dtypes import bytes_for
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.vllm import VllmConfig, rotary_cache_numel, vllm_source
from memplan.memory.vllm_budget import (
    cuda_graph_bytes, cuda_graph_in_budget, engine_gpu_terms, engine_host_terms,
)
from memplan.model.spec import ModelSpec
from memplan.sources import measurement

_CUMEM = "vllm/device_allocator/cumem.py"
_WORKER = "vllm/v1/worker/gpu_worker.py"


class EngineState(StrEnum):
    """What of one sleep-mode engine is mapped on its GPUs."""

    GENERATING = "generating"
    """Fully awake and generating: weights, KV pool and the forward's activations."""
    WEIGHTS_ONLY = "weights_only"
    """Only the "weights" pool woken (while new weights are loaded); the KV pool still unmapped."""
    ASLEEP = "asleep"
    """Both pools unmapped; torch's cache emptied."""


#: Term names (the last part of the term path) each state does not hold on the GPU.
_RELEASED: dict[EngineState, frozenset[str]] = {
    EngineState.GENERATING: frozenset(),
    EngineState.WEIGHTS_ONLY: frozenset({"kv_cache", "activations"}),
    EngineState.ASLEEP: frozenset({"weights", "kv_cache", "activations"}),
}


def vllm_state_terms(spec: ModelSpec, cfg: VllmConfig, total_gpu_bytes: int, state: EngineState, *,
                     path: str = "rollout", phase: Phase | None = None) -> list[Term]:
    """One GPU (one TP rank) of one engine in ``state``, every term placed in ``phase`` (None: persistent).

    The awake engine is :func:`memplan.memory.vllm_budget.engine_gpu_terms` (weights, KV pool sized at
    start-up, activation peak, non-torch, and what lies outside ``requested``), plus, when the version
    subtracts its CUDA-graph estimate from the KV budget (0.24.0/0.27.1 on the V1 runner), the graphs that
    later fill that reserved gap (``cuda_graphs_in_budget``). A state drops what it has released (module
    docstring); an engine without sleep mode (``sleep_level`` 0) holds everything in every state.

        GENERATING   = weights + kv_pool + activation_peak + non_torch + graphs + context + nccl
        WEIGHTS_ONLY = GENERATING − kv_pool − activation_peak
        ASLEEP       = GENERATING − kv_pool − activation_peak − weights

    Source: the module docstring; vllm/v1/worker/gpu_worker.py@v0.24.0 L447-453, L467-493 (estimate
    subtracted), compile_or_warm_up_model L620-680 (graphs captured after the KV cache, actual vs estimate logged).
    Assumes: the graph pool equals the estimate (vLLM logs both; they differ by a few percent); the activation
    blocks are all returned by ``empty_cache`` (none stays allocated between requests); the level-2 buffer copy
    and the weight loader's temporaries while WEIGHTS_ONLY are not on the GPU.
    Checked by: tests/memory/test_vllm_sleep.py::test_qwen25_7b_tp2_h100_states_by_hand
    """
    awake = engine_gpu_terms(spec, replace(cfg, sleep_level=0), total_gpu_bytes, path=path)
    if cuda_graph_in_budget(spec, cfg):
        awake.append(Term(path=f"{path}.cuda_graphs_in_budget", bytes=cuda_graph_bytes(spec, cfg),
                          category=Category.OVERHEAD, device=Device.GPU, source=measurement(
                              "validation/published/vllm/gpustack-runner-pr251-v0.27.1-cudagraph-estimate.toml",
                              "graph estimate subtracted from the KV budget, captured after it")))
    released = _RELEASED[state] if cfg.sleep_level else frozenset()
    return [replace(t, phase=phase) for t in awake if t.path.rsplit(".", 1)[-1] not in released]


def vllm_state_gpu_bytes(spec: ModelSpec, cfg: VllmConfig, total_gpu_bytes: int, state: EngineState) -> int:
    """Sum of :func:`vllm_state_terms`. Checked by: tests/memory/test_vllm_sleep.py"""
    return sum(t.bytes for t in vllm_state_terms(spec, cfg, total_gpu_bytes, state))


def vllm_sleep_host_terms(spec: ModelSpec, cfg: VllmConfig, *, path: str = "rollout",
                          phase: Phase | None = None) -> list[Term]:
    """Host RAM one engine rank's sleep holds beyond its process.

        level 1: the weights shard in pinned host tensors, one per CuMem handle, plus the caching host
                 allocator's power-of-two rounding (:func:`memplan.memory.vllm_budget.engine_host_terms`);
                 after wake-up the blocks stay in torch's pinned cache, so ``phase`` None (every phase) is right
                 for an engine that sleeps every iteration.
        level 2: nothing of the weights (discarded); the model's registered buffers (the rotary cos/sin
                 cache) copied to pageable host memory while asleep: rotary_cache_numel × dtype bytes.

    Source: vllm/device_allocator/cumem.py@v0.24.0 L195-203 (``torch.empty(size, dtype=uint8, device="cpu",
    pin_memory=PIN_MEMORY)``; PIN_MEMORY = is_pin_memory_available(), vllm/utils/torch_utils.py L71),
    vllm/v1/worker/gpu_worker.py@v0.24.0 L168-173 (level 2: ``buffer.cpu().clone()`` for ``named_buffers``),
    L190-197 (copied back and dropped on wake-up).
    Assumes: the only registered buffer is the rotary cache (Llama/Qwen-style models).
    Checked by: tests/memory/test_vllm_sleep.py::test_sleep_host_terms
    """
    if cfg.sleep_level == 1:
        src = vllm_source(cfg.vllm_version, _CUMEM, "sleep: pinned cpu_backup_tensor per 'weights' handle")
        terms = engine_host_terms(spec, cfg, path=path)
        terms[0] = replace(terms[0], source=src)
        return [replace(t, phase=phase) for t in terms]
    if cfg.sleep_level == 2:
        nbytes = bytes_for(rotary_cache_numel(spec), cfg.weight_dtype)
        src = vllm_source(cfg.vllm_version, _WORKER, "sleep(level=2): named_buffers copied to host")
        return [Term(path=f"{path}.sleeping_buffers", bytes=nbytes, category=Category.PARAM, device=Device.CPU,
                     source=src, phase=phase)]
    return []
