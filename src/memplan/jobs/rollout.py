"""RL rollout-side terms: the vLLM engines (through memory/vllm) and the replay buffer."""

from __future__ import annotations

from memplan.dtypes import DType, bytes_for
from memplan.hardware.gpu import Gpu
from memplan.jobs.job import RlJob
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.sources import code

#: Bytes per (prompt + response) token of one Experience kept in the replay buffer: ``sequences`` and
#: ``attention_mask`` as int64 (OpenRLHF/OpenRLHF openrlhf/trainer/ppo_utils/experience.py@v0.11.0,
#: ``Experience``: step fields of shape (B, T)).
REPLAY_BYTES_PER_TOKEN = 2 * 8
#: Bytes per response (action) token: ``action_mask`` (bool, 1 B) and seven fp32 (B, A) fields:
#: action_log_probs, base_action_log_probs, rollout_log_probs, values, returns, advantages, kl.
REPLAY_BYTES_PER_ACTION = 1 + 7 * 4


def replay_buffer_terms(rl: RlJob, actor_ranks: int) -> list[Term]:
    """One actor rank's share of the replay buffer, held in host RAM (``NaiveReplayBuffer(cpu_offload=True)``).

        bytes = ceil(rollout_batch_size × n_samples / actor ranks) × (16·T + 29·A)

    with T = prompt + generation and A = generation (every sample at its longest: the worst case).
    Source: experience.py and replay_buffer.py@v0.11.0 (``append``: ``experience.to_device("cpu")``).
    """
    r = rl.rollout
    samples = -(-r.rollout_batch_size * r.n_samples_per_prompt // max(actor_ranks, 1))
    per_sample = REPLAY_BYTES_PER_TOKEN * (r.prompt_len + r.generate_len) + REPLAY_BYTES_PER_ACTION * r.generate_len
    src = code("OpenRLHF/OpenRLHF:openrlhf/trainer/ppo_utils/experience.py@v0.11.0", "Experience fields, cpu_offload")
    return [Term(path="actor.replay_buffer", bytes=samples * per_sample, category=Category.ACTIVATION,
                 device=Device.CPU, source=src, phase=phase) for phase in (Phase.MAKE_EXPERIENCE, Phase.TRAINING)]


def _actor_spec(rl: RlJob):  # type: ignore[no-untyped-def]
    return next(r.spec for r in rl.job.roles if str(r.name) == "actor")


def gpu_terms(rl: RlJob, gpu: Gpu, phase: Phase) -> list[Term]:
    """One GPU of a vLLM engine (one TP shard) in ``phase`` (provisional: weights + the KV budget)."""
    from memplan.model import num_params

    r = rl.rollout
    weights = bytes_for(num_params(_actor_spec(rl)), DType.BF16) // r.tensor_parallel_size
    kv = max(int(gpu.memory_bytes * r.gpu_memory_utilization) - weights, 0)
    src = code("vllm-project/vllm:vllm/v1/worker/gpu_worker.py", "determine_available_memory (provisional)")
    awake_weights = phase in (Phase.ROLLOUT, Phase.WEIGHT_SYNC) or not r.enable_sleep
    awake_kv = phase == Phase.ROLLOUT or not r.enable_sleep
    terms = []
    if awake_weights:
        terms.append(Term(path="rollout.weights", bytes=weights, category=Category.PARAM, device=Device.GPU, source=src))
    if awake_kv:
        terms.append(Term(path="rollout.kv_cache", bytes=kv, category=Category.KV_CACHE, device=Device.GPU, source=src))
    return terms


def host_terms(rl: RlJob, phase: Phase) -> list[Term]:
    """Host RAM of one vLLM rank in ``phase``: with sleep level 1, its bf16 weight shard while asleep."""
    from memplan.model import num_params

    r = rl.rollout
    if not r.enable_sleep or phase in (Phase.ROLLOUT, Phase.WEIGHT_SYNC, Phase.LOAD):
        return []
    weights = bytes_for(num_params(_actor_spec(rl)), DType.BF16) // r.tensor_parallel_size
    src = code("vllm-project/vllm:vllm/device_allocator/cumem.py", "sleep(level=1): weights offloaded to CPU")
    return [Term(path="rollout.sleeping_weights", bytes=weights, category=Category.PARAM, device=Device.CPU, source=src)]
