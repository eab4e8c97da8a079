"""What each OpenRLHF value may be: one table of bounds per canonical key, and the one check that reads it.

Every INT and FLOAT flag that changes memory (``flags.MEMORY_KEYS``) has a ``Bound`` here, and a few
string flags memplan reads have their allowed spellings. ``check_flag_value`` is the only place a single
value is judged: the command reader (``command._convert``), ``plan --keep`` and ``resolve_values`` all
call it, so a value is refused the same way whichever door it came in by, with the flag named as the
user typed it. Checks between flags (batch divisibility, vLLM's heads) are in ``checks``.

The upper bounds are limits no real run exceeds, so that a typo (``--max_len 1e12``,
``--actor_num_nodes 10000000``) ends in one line instead of hours of work:

* ``MAX_GPUS`` = 2**18 = 262,144 GPUs in one run. The largest training cluster reported is xAI's
  Colossus: 100,000 H100 at its start (September 2024), 200,000 GPUs after its 2025 expansion; Meta
  trained Llama 3.1 405B on 16,384 H100 (Llama 3 paper, arXiv:2407.21783, §3.3).
* ``MAX_GPUS_PER_NODE`` = 72: the largest single NVLink system sold as one unit (NVIDIA GB200 NVL72,
  72 GPUs); hosts usually hold 8, at most 16 (DGX-2, HGX-2). Ray and the launchers count GPUs per node.
* ``MAX_TOKENS`` = 2**24 = 16,777,216 tokens per sequence (or per GPU token budget): above the longest
  context of any released model, Llama 4 Scout's ``max_position_embeddings`` 10,485,760 (10M tokens,
  meta-llama/Llama-4-Scout-17B-16E config.json).
* ``MAX_SEQUENCES`` = 2**20 = 1,048,576 sequences per batch: Llama 3's largest batch was 16M tokens
  (arXiv:2407.21783 §3.4.1), 2,048 sequences of 8,192 tokens; a million sequences leaves room for short
  ones.
* ``MAX_LORA_RANK`` = 2**16 = 65,536: above the widest layers of released models (Llama 3.1 405B
  ``intermediate_size`` 53,248; Falcon-180B 4 × 14,848 = 59,392); a rank above a layer's width gives
  the adapter more parameters than the layer itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from memplan.errors import ConfigError

#: Most GPUs of one run (module docstring: xAI Colossus, 200,000 GPUs).
MAX_GPUS = 2**18
#: Most GPUs of one node (module docstring: NVIDIA GB200 NVL72).
MAX_GPUS_PER_NODE = 72
#: Longest sequence or per-GPU token budget (module docstring: Llama 4 Scout, 10M tokens).
MAX_TOKENS = 2**24
#: Most sequences in one batch (module docstring: Llama 3's 16M-token batches).
MAX_SEQUENCES = 2**20
#: Largest LoRA rank (module docstring: above the widest released layers, ~60k).
MAX_LORA_RANK = 2**16
#: Most optimizer steps of one run: Llama 3 405B's pre-training, 15.6T tokens in batches of up to 16M tokens
#: (Llama 3 paper, §3.4.1), took about a million steps; 2**24 is 16 times that.
MAX_STEPS = 2**24


@dataclass(frozen=True, slots=True, kw_only=True)
class Bound:
    """The values one canonical key may take."""

    low: float
    """Smallest allowed value (``-inf`` for none)."""
    high: float
    """Largest allowed value (``inf`` for none)."""
    low_open: bool = False
    """The smallest value itself is excluded (``(0, 1]``)."""
    choices: tuple[str, ...] = ()
    """Allowed spellings of a string value (empty: any string)."""
    meaning: str = ""
    """What the range stands for, shown with the error (``0 means no LoRA``)."""
    source: str = ""
    """Where the bound comes from (OpenRLHF, DeepSpeed or vLLM code, or a constant above)."""

    def allowed(self) -> str:
        """The allowed values in words (``between 1 and 72``, ``in (0, 1]``)."""
        if self.choices:
            text = f"one of {', '.join(self.choices)}"
            return f"{text} ({self.meaning})" if self.meaning else text
        if self.low_open:
            text = f"in ({_number(self.low)}, {_number(self.high)}]"
        elif math.isinf(self.low) and math.isinf(self.high):
            text = "a finite number"
        else:
            text = f"between {_number(self.low)} and {_number(self.high)}"
        return f"{text} ({self.meaning})" if self.meaning else text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _count(low: int, high: int, source: str, meaning: str = "") -> Bound:
    return Bound(low=low, high=high, source=source, meaning=meaning)


_NODES = "MAX_GPUS: one node per GPU at most"
_PER_NODE = "MAX_GPUS_PER_NODE"
_SEQUENCES = "MAX_SEQUENCES"
_TOKENS = "MAX_TOKENS"
_COEF = Bound(low=-math.inf, high=math.inf, source="OpenRLHF reads it with type=float and no range; NaN and "
              "infinity compare false with 0, so `init_kl_coef > 0` (train_ppo_ray.py) would silently drop a model")

_BOUNDS: dict[str, Bound] = {
    **{f"{role}_num_nodes": _count(1, MAX_GPUS, _NODES) for role in ("actor", "critic", "ref", "reward")},
    **{f"{role}_num_gpus_per_node": _count(1, MAX_GPUS_PER_NODE, _PER_NODE)
       for role in ("actor", "critic", "ref", "reward")},
    "vllm_num_engines": _count(0, MAX_GPUS, "MAX_GPUS; train_ppo_ray.py creates engines only when "
                               "`vllm_num_engines is not None and > 0`", "0 means no vLLM"),
    "vllm_tensor_parallel_size": _count(1, MAX_GPUS, "MAX_GPUS; vLLM ParallelConfig needs >= 1 rank per engine"),
    "vllm_gpu_memory_utilization": Bound(
        low=0.0, high=1.0, low_open=True, meaning="the share of each GPU's memory vLLM may use",
        source="vLLM CacheConfig.gpu_memory_utilization: Field(gt=0, le=1) (vllm/config/cache.py@v0.27.1)"),
    "ds_tensor_parallel_size": _count(1, MAX_GPUS, "MAX_GPUS; DeepSpeed AutoTP needs >= 1 rank"),
    "ring_attn_size": _count(1, MAX_GPUS, "MAX_GPUS; OpenRLHF's device mesh divides the world by it"),
    "ring_head_stride": _count(1, MAX_GPUS, "MAX_GPUS; ring_flash_attn splits heads by it"),
    "zero_stage": _count(0, 3, "DeepSpeed ZeroStageEnum 0-3 (deepspeed/runtime/zero/config.py@0.19.8)"),
    "zpg": _count(0, MAX_GPUS, "DeepSpeed zero_hpz_partition_size: Field(1, ge=0) "
                  "(deepspeed/runtime/zero/config.py@0.19.8 L324); at most MAX_GPUS", "0 and 1 mean no hpZ"),
    "lora_rank": _count(0, MAX_LORA_RANK, "MAX_LORA_RANK; OpenRLHF applies LoRA when `lora_rank > 0` "
                        "(openrlhf/models/actor.py)", "0 means no LoRA"),
    "micro_train_batch_size": _count(1, MAX_SEQUENCES, _SEQUENCES + "; DeepSpeed asserts micro batch > 0 "
                                     "(deepspeed/runtime/config.py@0.19.8 L598)"),
    "train_batch_size": _count(1, MAX_SEQUENCES, _SEQUENCES + "; DeepSpeed asserts train batch > 0 "
                               "(deepspeed/runtime/config.py@0.19.8 L596)"),
    "micro_rollout_batch_size": _count(1, MAX_SEQUENCES, _SEQUENCES),
    "rollout_batch_size": _count(1, MAX_SEQUENCES, _SEQUENCES),
    "vllm_generate_batch_size": _count(1, MAX_SEQUENCES, _SEQUENCES),
    "n_samples_per_prompt": _count(1, MAX_SEQUENCES, _SEQUENCES),
    "async_queue_size": _count(1, MAX_SEQUENCES, _SEQUENCES + "; batches held by the async queue"),
    "max_images_per_prompt": _count(0, MAX_SEQUENCES, _SEQUENCES, "0 means text only"),
    "max_len": _count(1, MAX_TOKENS, _TOKENS),
    "prompt_max_len": _count(1, MAX_TOKENS, _TOKENS),
    "generate_max_len": _count(1, MAX_TOKENS, _TOKENS),
    "train_max_tokens_per_gpu": _count(1, MAX_TOKENS, _TOKENS),
    "rollout_max_tokens_per_gpu": _count(1, MAX_TOKENS, _TOKENS),
    "save_steps": _count(-1, MAX_STEPS, "MAX_STEPS; OpenRLHF saves when `global_step % save_steps == 0` "
                         "(trainer/ppo_trainer.py@v0.11.0 L393) after turning -1 into infinity (L466-467)",
                         "-1 means no save during training"),
    "init_kl_coef": _COEF,
    "entropy_loss_coef": _COEF,
    "ptx_coef": _COEF,
    "grad_accum_dtype": Bound(
        low=-math.inf, high=math.inf,
        choices=("fp32", "fp16", "bf16", "float32", "float", "float16", "half", "bfloat16",
                 "torch.float32", "torch.float16", "torch.bfloat16"),
        source="DeepSpeed DtypeEnum spellings (deepspeed/runtime/config.py@0.19.8 L144-149) less int8, which "
               "engine.py L2323 refuses (`unsupported mix of model_dtype and grad_accum_dtype`)"),
    "attn_implementation": Bound(
        low=-math.inf, high=math.inf, choices=("flash_attention_2", "sdpa", "eager"),
        meaning="the implementations memplan models; OpenRLHF also passes flash_attention_3 or a hub kernel "
                "to transformers, not modelled",
        source="jobs.options.AttnImpl; OpenRLHF passes the string to from_pretrained (train_sft.py@v0.11.0 L189-193)"),
}
BOUNDS = MappingProxyType(_BOUNDS)
"""Canonical key -> its Bound. Covers every INT/FLOAT key of ``flags.MEMORY_KEYS`` in every script and
version (tests/frameworks/test_validation.py checks this), plus ``train_batch_size`` and the spellings of
``grad_accum_dtype`` and ``attn_implementation``."""


def check_flag_value(key: str, value: Any, location: str) -> Any:
    """``value`` of canonical ``key`` if its Bound allows it, else ConfigError at ``location``.

    ``location`` is the flag as the user typed it (``--ds.zero_stage``, ``--keep zero_stage=7``).
    None (an unset flag) and values of keys without a Bound pass unchanged. The type itself is checked
    by ``flags.check_value`` and the command reader; this adds finiteness, range and choices.
    """
    bound = BOUNDS.get(key)
    if bound is None or value is None or isinstance(value, bool):
        return value
    if bound.choices:
        if value not in bound.choices:
            raise ConfigError(location, f"must be {bound.allowed()}, got {value!r}")
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(check_flag_value(key, item, location) for item in value)
    if not isinstance(value, (int, float)):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(location, f"must be {bound.allowed()}, got {value}")
    below = value <= bound.low if bound.low_open else value < bound.low
    if below or value > bound.high:
        raise ConfigError(location, f"must be {bound.allowed()}, got {_shown(value)}")
    return value


def _shown(value: int | float) -> str:
    """A value as the error shows it (huge integers in scientific form, not a hundred digits)."""
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"{value:.3e}"
    return repr(value)


def check_count(location: str, value: int | None, low: int, high: int, meaning: str = "") -> None:
    """A count given to memplan itself or to a launcher (``--gpus``, ``torchrun --nnodes``) within [low, high]."""
    if value is None:
        return
    bound = Bound(low=low, high=high, meaning=meaning)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(location, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(location, f"must be {bound.allowed()}, got {_shown(value)}")
