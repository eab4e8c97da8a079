"""RL rollout-side terms: the vLLM engines (through memory/vllm) and the replay buffer."""

from __future__ import annotations

from memplan.dtypes import DType, bytes_for
from memplan.hardware.gpu import Gpu
from memplan.jobs.job import RlJob
from memplan.memory.vllm import VllmConfig, openrlhf_vllm_config
from memplan.memory.vllm_budget import StartupStatus, engine_gpu_terms, engine_host_terms, startup_check
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.sources import code

#: Bytes per (prompt + response) token of one Experience kept in the replay buffer: ``sequences`` and
#: ``attention_mask`` as int64 (OpenRLHF/OpenRLHF openrlhf/trainer/ppo_utils/experience.py@v0.11.0,
#: ``Experience``: step fields of shape (B, T)).
REPLAY_BYTES_PER_TOKEN = 2 * 8
#: Bytes per action position: ``action_mask`` (bool, 1 B) and seven fp32 (B, A) fields:
#: action_log_probs, base_action_log_probs, rollout_log_probs, values, returns, advantages, kl.
REPLAY_BYTES_PER_ACTION = 1 + 7 * 4


def replay_sample_bytes(seq_len: int) -> int:
    """Bytes of one replay-buffer item whose sequence is ``seq_len`` (T) tokens: ``16·T + 29·(T − 1)``.

    The action fields span T − 1 positions, not only the response: the sample generator builds
    ``action_mask = action_mask[1:truncate_length]`` over the whole prompt + response (zeros on the prompt;
    OpenRLHF/OpenRLHF trainer/ppo_utils/samples_generator.py@3c3be62 line 267, experience_maker.py@c0e2ee2
    line 424), the log-probs, values and advantages follow its shape (models/actor.py@3c3be62 line 294:
    ``log_probs[:, -action_mask.shape[1]:]``), and ``remove_padding_in_sequences`` trims only the right
    padding from every step field (experience.py@3c3be62 lines 236-247).
    """
    return REPLAY_BYTES_PER_TOKEN * seq_len + REPLAY_BYTES_PER_ACTION * max(seq_len - 1, 0)


def replay_buffer_terms(rl: RlJob, role: str, ranks: int) -> list[Term]:
    """One rank's share of the replay buffer of ``role`` (actor or critic), in host RAM, resident in the
    training phase only.

        bytes = ceil(rollout_batch_size × n_samples / ranks) × replay_sample_bytes(T)

    with T the longest sequence of the run's OpenRLHF version (``RolloutSettings.seq_len``: every sample at
    its longest, the worst case).
    The driver makes the whole batch of experiences first, then pushes them to the actor group and the
    critic group (``append``, split over each group's ranks), then trains; each group's ``fit`` clears its
    buffer before the weights are broadcast to vLLM. So the buffer exists during training and in no other
    phase (not while loading, generating or scoring), once per role.
    Source: OpenRLHF/OpenRLHF@v0.11.0 openrlhf/trainer/ppo_trainer.py L216 (make_experience_batch),
    L234-237 (``append`` to actor and critic groups), L241 (ppo_train), L247 (broadcast_to_vllm);
    openrlhf/trainer/ray/ppo_actor.py L602 and ppo_critic.py L289 (``replay_buffer.clear()`` after
    ``ppo_train``); replay_buffer.py and experience.py (``append``: ``experience.to_device("cpu")``).
    Checked by: tests/golden/test_host_ram.py::test_replay_buffer_training_only
    """
    r = rl.rollout
    samples = -(-r.rollout_batch_size * r.n_samples_per_prompt // max(ranks, 1))
    per_sample = replay_sample_bytes(r.seq_len)
    src = code("OpenRLHF/OpenRLHF:openrlhf/trainer/ppo_trainer.py@v0.11.0",
               "append to actor/critic before ppo_train L234-237; clear() after fit")
    return [Term(path=f"{role}.replay_buffer", bytes=samples * per_sample, category=Category.ACTIVATION,
                 device=Device.CPU, source=src, phase=Phase.TRAINING)]


#: vLLM release each OpenRLHF version pins (setup.py extras): 0.11 → vllm==0.27.1, 0.9.5 → vllm==0.17.0,
#: 0.8.5 → vllm==0.9.1.
OPENRLHF_VLLM = {"0.11": "0.27.1", "0.9": "0.17.0", "0.8": "0.9.1"}


def _actor_spec(rl: RlJob):  # type: ignore[no-untyped-def]
    return next(r.spec for r in rl.job.roles if str(r.name) == "actor")


def vllm_config(rl: RlJob) -> VllmConfig:
    """The engine OpenRLHF builds for this run (``create_vllm_engines``)."""
    r = rl.rollout
    return openrlhf_vllm_config(max_len=r.max_model_len, tensor_parallel_size=r.tensor_parallel_size,
                                gpu_memory_utilization=r.gpu_memory_utilization, enforce_eager=r.enforce_eager,
                                enable_prefix_caching=r.enable_prefix_caching, enable_sleep=r.enable_sleep,
                                vllm_version=OPENRLHF_VLLM.get(rl.job.framework_version, OPENRLHF_VLLM["0.11"]))


def gpu_terms(rl: RlJob, gpu: Gpu, phase: Phase) -> list[Term]:
    """One GPU of a vLLM engine (one TP shard) resident in ``phase``; vLLM sizes its KV cache from the
    total memory the driver reports (``cudaMemGetInfo``), the catalogue's capacity."""
    terms = engine_gpu_terms(_actor_spec(rl), vllm_config(rl), gpu.capacity_bytes)
    return [t for t in terms if t.phase is None or t.phase == phase]


def host_terms(rl: RlJob, phase: Phase) -> list[Term]:
    """Host RAM of one vLLM rank in ``phase`` (the sleeping weight shard, pinned)."""
    return engine_host_terms(_actor_spec(rl), vllm_config(rl))


def startup_error(rl: RlJob, gpu: Gpu) -> str | None:
    """vLLM's own error when an engine shard cannot start on ``gpu`` or cannot hold one ``max_model_len``
    request (``memory/vllm_budget.startup_check``, no other process on the GPU at start-up), else None."""
    check = startup_check(_actor_spec(rl), vllm_config(rl), gpu.capacity_bytes)
    return None if check.status == StartupStatus.OK else check.message


def preallocated_bytes(terms: tuple[Term, ...] | list[Term]) -> int:
    """The engine's own bytes among ``terms``: what vLLM sizes as its share of the GPU and preallocates."""
    return sum(t.bytes for t in terms if t.path.startswith("rollout."))
