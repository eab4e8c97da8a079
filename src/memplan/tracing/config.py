"""The trace request: one OpenRLHF training configuration, fully resolved, plus the engine to run it on.

Defaults per method follow OpenRLHF's legacy CLI (``openrlhf/cli/train_{sft,rm,dpo,kto,kd,prm}.py`` at
OpenRLHF/OpenRLHF@v0.9.5, c0e2ee2; see /work/shared/reference/openrlhf.md §1.2). The request never holds
"auto": :func:`resolve_request` fills every default once and validates, so the tracer only ever reads
resolved values.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from memplan.errors import ConfigError


class Method(StrEnum):
    """OpenRLHF training scripts the tracer mirrors (the single-model-group family)."""

    SFT = "sft"
    """``train_sft``: causal LM, fp32 logits, token log-probs, masked mean."""
    RM = "rm"
    """``train_rm``: base model + ``Linear(hidden, 1)`` value head; chosen+rejected concatenated."""
    DPO = "dpo"
    """``train_dpo``: policy + frozen reference, chosen+rejected concatenated for both."""
    KTO = "kto"
    """``train_kto``: policy + frozen reference; matched half and unmatched (KL) half, two forwards each."""
    KD = "kd"
    """``train_kd``: student + frozen teacher, both fp32 logits, fp32 softmax / log-softmax."""
    PRM = "prm"
    """``train_prm``: causal LM (``Actor``), cross-entropy over the vocabulary at placeholder tokens."""


class Engine(StrEnum):
    """How the step is executed and measured."""

    FAKE = "fake"
    """Full-size model under FakeTensorMode + MemTracker; DeepSpeed's optimizer emulated in torch."""
    DEEPSPEED_CPU = "deepspeed-cpu"
    """Real ``deepspeed.initialize`` on the CPU accelerator (gloo), real tensors, one process per rank."""


class AttnImplementation(StrEnum):
    """``--attn_implementation`` values OpenRLHF accepts."""

    FLASH_ATTENTION_2 = "flash_attention_2"
    """OpenRLHF's default; GPU only. Traced as ``sdpa`` (the CPU flash kernel also keeps O(s) state)."""
    SDPA = "sdpa"
    """PyTorch scaled_dot_product_attention."""
    EAGER = "eager"
    """Materialises the b x heads x s x s scores."""

    @property
    def traced(self) -> "AttnImplementation":
        """What a CPU trace runs: flash_attention_2 does not exist on a CPU and becomes sdpa."""
        return AttnImplementation.SDPA if self is AttnImplementation.FLASH_ATTENTION_2 else self


#: Per-method (max_len, micro_train_batch_size) defaults of OpenRLHF's legacy CLI at v0.9.5
#: (openrlhf/cli/train_*.py; /work/shared/reference/openrlhf.md §1.2).
METHOD_DEFAULTS: dict[Method, tuple[int, int]] = {
    Method.SFT: (2048, 8), Method.RM: (512, 1), Method.DPO: (512, 8),
    Method.KTO: (2048, 8), Method.KD: (2048, 8), Method.PRM: (2048, 1),
}

#: Training iterations traced. The optimizer state exists only from the first step on, so the second
#: iteration is the steady state (reference/tracing.md §1).
NUM_ITERATIONS = 2

#: OpenRLHF's defaults for ``--lora_alpha`` and ``--target_modules`` (openrlhf.md §1.1).
DEFAULT_LORA_ALPHA = 16
DEFAULT_TARGET_MODULES = ("all-linear",)

#: ``--zero_stage`` default of OpenRLHF (openrlhf.md §1.1).
DEFAULT_ZERO_STAGE = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceRequest:
    """One fully resolved configuration to trace."""

    model: str
    """MODEL as the user wrote it: preset name, hub id, config.json path or directory."""
    method: Method
    """Which OpenRLHF training step to mirror."""
    engine: Engine
    """Fake-tensor trace or real DeepSpeed on the CPU."""
    max_len: int
    """Tokens per sequence (every sequence is full length: the worst case)."""
    micro_train_batch_size: int
    """Sequences per rank per forward/backward (DPO/RM: pairs, so 2x sequences in the forward)."""
    gradient_checkpointing: bool
    """HF gradient checkpointing, non-reentrant (``use_reentrant=False``) as OpenRLHF sets it."""
    attn_implementation: AttnImplementation
    """As requested; :attr:`AttnImplementation.traced` is what runs."""
    lora_rank: int
    """LoRA rank; 0 trains the full model."""
    lora_alpha: int
    """LoRA alpha (no memory effect; recorded for completeness)."""
    target_modules: tuple[str, ...]
    """LoRA target module names, or ``("all-linear",)``."""
    zero_stage: int
    """DeepSpeed ZeRO stage 0-3."""
    adam_offload: bool
    """DeepSpeed ``offload_optimizer: cpu`` (deepspeed-cpu engine only)."""
    param_dtype: str
    """``bf16`` or ``fp16``: weights and gradients; master weights and Adam states are fp32."""
    gpus: int
    """World size (ranks). The fake engine traces one rank of world size 1."""
    ref_pretrain: str | None
    """Reference model (dpo, kto) or teacher (kd); ``None`` for methods with one model."""
    packing_samples: bool
    """Pack the micro-batch into one row of micro_train_batch_size x max_len tokens."""

    @property
    def second_model_role(self) -> str | None:
        """``ref``, ``teacher`` or ``None``."""
        if self.method in (Method.DPO, Method.KTO):
            return "ref"
        if self.method is Method.KD:
            return "teacher"
        return None

    def as_dict(self) -> dict[str, object]:
        """Plain JSON values (enums as strings); :func:`request_from_dict` reads it back."""
        return {"model": self.model, "method": str(self.method), "engine": str(self.engine),
                "max_len": self.max_len, "micro_train_batch_size": self.micro_train_batch_size,
                "gradient_checkpointing": self.gradient_checkpointing,
                "attn_implementation": str(self.attn_implementation),
                "traced_attn_implementation": str(self.attn_implementation.traced),
                "lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha,
                "target_modules": list(self.target_modules), "zero_stage": self.zero_stage,
                "adam_offload": self.adam_offload, "param_dtype": self.param_dtype, "gpus": self.gpus,
                "ref_pretrain": self.ref_pretrain, "packing_samples": self.packing_samples}

    def to_command(self) -> str:
        """The ``memplan trace`` command line that reproduces this request, every value explicit."""
        parts = ["memplan", "trace", self.model, "--method", str(self.method), "--engine", str(self.engine),
                 "--max_len", str(self.max_len), "--micro_train_batch_size", str(self.micro_train_batch_size),
                 "--attn_implementation", str(self.attn_implementation), "--zero_stage", str(self.zero_stage),
                 "--param_dtype", self.param_dtype, "--gpus", str(self.gpus)]
        if self.gradient_checkpointing:
            parts.append("--gradient_checkpointing")
        if self.lora_rank:
            parts += ["--lora_rank", str(self.lora_rank), "--lora_alpha", str(self.lora_alpha),
                      "--target_modules", *self.target_modules]
        if self.adam_offload:
            parts.append("--adam_offload")
        if self.ref_pretrain is not None:
            flag = "--teacher_model" if self.method is Method.KD else "--ref_pretrain"
            parts += [flag, self.ref_pretrain]
        if self.packing_samples:
            parts.append("--packing_samples")
        return shlex.join(parts)


def _positive(value: int, flag: str, minimum: int = 1) -> int:
    if value < minimum:
        raise ConfigError(flag, f"must be >= {minimum}, got {value}")
    return value


def resolve_request(*, model: str, method: str, engine: str = "fake", max_len: int | None = None,
                    micro_train_batch_size: int | None = None, gradient_checkpointing: bool = False,
                    attn_implementation: str = "flash_attention_2", lora_rank: int = 0,
                    lora_alpha: int = DEFAULT_LORA_ALPHA, target_modules: tuple[str, ...] | None = None,
                    zero_stage: int = DEFAULT_ZERO_STAGE, adam_offload: bool = False, param_dtype: str = "bf16",
                    gpus: int = 1, ref_pretrain: str | None = None, packing_samples: bool = False) -> TraceRequest:
    """Fill OpenRLHF's per-method defaults, validate, and return the frozen request."""
    try:
        method_enum = Method(method)
    except ValueError:
        raise ConfigError("--method", f"must be one of {', '.join(m.value for m in Method)}, got {method!r}") from None
    try:
        engine_enum = Engine(engine)
    except ValueError:
        raise ConfigError("--engine", f"must be one of {', '.join(e.value for e in Engine)}, got {engine!r}") from None
    try:
        attn = AttnImplementation(attn_implementation)
    except ValueError:
        raise ConfigError("--attn_implementation", f"must be one of {', '.join(a.value for a in AttnImplementation)}, "
                          f"got {attn_implementation!r}") from None
    default_len, default_batch = METHOD_DEFAULTS[method_enum]
    request = TraceRequest(
        model=model, method=method_enum, engine=engine_enum,
        max_len=_positive(default_len if max_len is None else max_len, "--max_len", 2),
        micro_train_batch_size=_positive(default_batch if micro_train_batch_size is None else micro_train_batch_size,
                                         "--micro_train_batch_size"),
        gradient_checkpointing=gradient_checkpointing, attn_implementation=attn,
        lora_rank=_positive(lora_rank, "--lora_rank", 0), lora_alpha=lora_alpha,
        target_modules=tuple(target_modules) if target_modules else DEFAULT_TARGET_MODULES,
        zero_stage=zero_stage, adam_offload=adam_offload, param_dtype=param_dtype,
        gpus=_positive(gpus, "--gpus"), ref_pretrain=_second_model(method_enum, model, ref_pretrain),
        packing_samples=packing_samples)
    _validate(request)
    return request


def _second_model(method: Method, model: str, given: str | None) -> str | None:
    needs = method in (Method.DPO, Method.KTO, Method.KD)
    if given is not None and not needs:
        flag = "--ref_pretrain/--teacher_model"
        raise ConfigError(flag, f"method {method} has no reference or teacher model")
    return (given or model) if needs else None


def _validate(request: TraceRequest) -> None:
    if request.zero_stage not in (0, 1, 2, 3):
        raise ConfigError("--zero_stage", f"must be 0, 1, 2 or 3, got {request.zero_stage}")
    if request.param_dtype not in ("bf16", "fp16"):
        raise ConfigError("--param_dtype", f"must be bf16 or fp16, got {request.param_dtype!r}")
    if request.packing_samples and request.attn_implementation is AttnImplementation.EAGER:
        raise ConfigError("--packing_samples", "OpenRLHF packs samples with flash_attention_2 only; not with eager")
    if request.method is Method.KTO and request.micro_train_batch_size < 2:
        raise ConfigError("--micro_train_batch_size", "KTO needs at least 2 (one desirable and one undesirable "
                                                      "example per micro-batch)")
    if request.engine is Engine.FAKE:
        if request.gpus != 1:
            raise ConfigError("--gpus", "the fake engine traces one rank at world size 1; ZeRO partitioning over "
                                        "several ranks is measured with --engine deepspeed-cpu")
        if request.adam_offload:
            raise ConfigError("--adam_offload", "the fake engine has one device; optimizer offload is measured "
                                                "with --engine deepspeed-cpu")
    if request.engine is Engine.DEEPSPEED_CPU and request.param_dtype != "bf16":
        raise ConfigError("--param_dtype", "the deepspeed-cpu engine runs bf16 only (DeepSpeed's CPU accelerator "
                                           "does not support fp16 mixed precision)")


def request_from_dict(data: dict[str, object]) -> TraceRequest:
    """Inverse of :meth:`TraceRequest.as_dict`."""
    fields = dict(data)
    fields.pop("traced_attn_implementation", None)
    fields["target_modules"] = tuple(fields["target_modules"])  # type: ignore[arg-type]
    return resolve_request(**fields)  # type: ignore[arg-type]


def load_config_dict(model: str) -> dict[str, Any]:
    """The raw config.json dict of MODEL (path, preset or hub id), as memplan's loader resolves it."""
    from memplan.model.hub import read_hub_config
    from memplan.model.loader import _local_config_path, _looks_like_hub_id, read_config_file
    from memplan.model.presets import find_preset

    local = _local_config_path(model)
    if local is not None:
        return read_config_file(local)
    preset = find_preset(model)
    if preset is not None:
        return preset.config()
    if _looks_like_hub_id(model):
        return read_hub_config(model)
    from memplan.model import load_model_spec

    load_model_spec(model)  # raises the loader's own "unknown model" error with suggestions
    raise ConfigError(model, "unknown model")
