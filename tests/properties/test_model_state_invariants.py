"""Invariants of the model-state formulas (memory/model_states.py) under random configurations.

Layouts here are counts-only with sizes divisible by ``2·N`` for every N compared, because two real
DeepSpeed effects legitimately break monotonicity at tiny scale: the stage 1/2 flat buffer padding
(up to ``2N − 1`` elements, stage_1_and_2.py:441-446) and a rank's gradient buffer holding every tensor
its partition boundaries cut (stage_1_and_2.py:2184-2194; e.g. two 10-element tensors: 10 per rank at
N = 2, 20 on one rank at N = 3).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from memplan.dtypes import DType
from memplan.memory import host, host_process
from memplan.memory.breakdown import Device, Phase, Term
from memplan.memory.model_states import frozen_model_states, trained_model_states
from memplan.memory.zero import (
    eval_zero_config, layout_from_counts, stage3_partition_numel, train_zero_config,
)
from memplan.sources import SourceKind

STATE_PREFIXES = ("actor.params", "actor.grads", "actor.optimizer.master_params", "actor.optimizer.exp_avg")


def gpu_peak(terms: list[Term]) -> int:
    """Persistent GPU bytes plus the largest phase's transient GPU bytes."""
    gpu = [t for t in terms if t.device == Device.GPU]
    persistent = sum(t.bytes for t in gpu if t.phase is None)
    phases = {t.phase for t in gpu if t.phase is not None}
    return persistent + max((sum(t.bytes for t in gpu if t.phase == p) for p in phases), default=0)


def model_states(terms: list[Term], device: Device | None = Device.GPU) -> int:
    """Persistent weights, gradients, master weights and moments (the paper's model states)."""
    return sum(t.bytes for t in terms if t.phase is None and (device is None or t.device == device)
               and t.path.startswith(STATE_PREFIXES))


dp_pairs = st.tuples(st.integers(1, 256), st.integers(1, 256)).map(sorted)


@settings(max_examples=200, deadline=None)
@given(pair=dp_pairs, k=st.integers(1, 10**5), stage=st.sampled_from([1, 2, 3]), offload=st.booleans(),
       fp32_accum=st.booleans(), lora_fraction=st.sampled_from([0, 1, 10, 100]))
def test_more_gpus_never_raise_per_gpu_peak(pair: list[int], k: int, stage: int, offload: bool, fp32_accum: bool,
                                            lora_fraction: int) -> None:
    small, large = pair
    if stage == 3 and small == 1:
        # ZeRO-3 gathers parameters only once there is a partition to gather: at one rank DeepSpeed points each
        # parameter at its own full copy (partition_parameters.py:1559, _no_gather_coalesced), so 1 -> 2 GPUs
        # adds the gather buffers, which can outweigh what sharding saves on a small model.
        small = 2
        large = max(large, 2)
    unit = 2 * small * large                 # no flat padding at either degree
    num_params = k * unit * 10
    trainable = num_params if lora_fraction == 0 else max(unit, num_params // lora_fraction // unit * unit)
    layout = layout_from_counts(num_params=num_params, trainable_params=trainable, largest_layer_params=unit)
    accum = DType.FP32 if fp32_accum else None
    peaks = [gpu_peak(trained_model_states(layout, train_zero_config(
        zero_stage=stage, dp_degree=n, ranks_per_node=min(n, 8), adam_offload=offload, grad_accum_dtype=accum),
        role="actor")) for n in (small, large)]
    assert peaks[1] <= peaks[0]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 512), k=st.integers(1, 10**6), fp32_accum=st.booleans())
def test_higher_stage_never_raises_model_states(n: int, k: int, fp32_accum: bool) -> None:
    layout = layout_from_counts(num_params=2 * n * k, trainable_params=2 * n * k)
    accum = DType.FP32 if fp32_accum else None
    states = []
    for stage in range(4):
        if stage == 0 and fp32_accum:
            continue  # DeepSpeed rejects fp32 accumulation of bf16 grads at stage 0 (engine.py:2323)
        zero = train_zero_config(zero_stage=stage, dp_degree=n, ranks_per_node=min(n, 8), grad_accum_dtype=accum)
        states.append(model_states(trained_model_states(layout, zero, role="actor")))
    assert states == sorted(states, reverse=True)


@settings(max_examples=200, deadline=None)
@given(num_params=st.integers(10**6, 10**11), fraction=st.floats(1e-4, 0.5), n=st.integers(1, 1024),
       stage=st.sampled_from([0, 1, 2, 3]), offload=st.booleans())
def test_lora_state_below_full_state(num_params: int, fraction: float, n: int, stage: int, offload: bool) -> None:
    offload = offload and stage > 0
    zero = train_zero_config(zero_stage=stage, dp_degree=n, ranks_per_node=min(n, 8), adam_offload=offload)
    lora = layout_from_counts(num_params=num_params, trainable_params=max(1, int(num_params * fraction)))
    full = layout_from_counts(num_params=num_params, trainable_params=num_params)
    lora_states = model_states(trained_model_states(lora, zero, role="actor"), device=None)
    full_states = model_states(trained_model_states(full, zero, role="actor"), device=None)
    assert lora_states < full_states


@settings(max_examples=100, deadline=None)
@given(num_params=st.integers(1, 10**11), n=st.integers(1, 1024), stage=st.sampled_from([0, 1, 2, 3]),
       offload=st.booleans(), trainable=st.booleans(), ga=st.integers(1, 64))
def test_breakdown_sums_and_sources(num_params: int, n: int, stage: int, offload: bool, trainable: bool,
                                    ga: int) -> None:
    layout = layout_from_counts(num_params=num_params, trainable_params=num_params if trainable else 0,
                                largest_layer_params=min(num_params, 10**8))
    if trainable:
        zero = train_zero_config(zero_stage=stage, dp_degree=n, ranks_per_node=min(n, 8),
                                 adam_offload=offload and stage > 0, gradient_accumulation_steps=ga)
        terms = trained_model_states(layout, zero, role="actor")
    else:
        zero = eval_zero_config(zero_stage=stage, dp_degree=n, ranks_per_node=min(n, 8), offload=offload)
        terms = frozen_model_states(layout, zero, role="actor")
    terms += host.model_loading(layout, zero, role="actor") + host_process.gpu_process(role="actor", under_ray=False)
    gpu = [t for t in terms if t.device == Device.GPU]
    cpu = host.host_terms(terms)
    assert sum(t.bytes for t in gpu) + sum(t.bytes for t in cpu) == sum(t.bytes for t in terms)
    assert sum(t.bytes for t in host.per_node(terms, zero)) == zero.ranks_per_node * sum(t.bytes for t in cpu)
    for term in terms:
        assert isinstance(term.bytes, int) and term.bytes >= 0
        assert term.path.startswith("actor.")
        assert term.source.ref and term.source.kind in (SourceKind.CODE, SourceKind.MEASUREMENT)
        if "DeepSpeed" in term.source.ref:
            assert term.source.ref.endswith("@v0.19.8")
        assert term.phase in (None, Phase.LOAD, Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER_STEP)


@settings(max_examples=200, deadline=None)
@given(numel=st.integers(1, 10**12), n=st.integers(1, 4096))
def test_zero3_shards_cover_the_tensor(numel: int, n: int) -> None:
    part = stage3_partition_numel(numel, n)
    assert part * n >= numel > (part - 1) * n
