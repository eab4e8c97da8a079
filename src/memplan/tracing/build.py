"""Build the Hugging Face models of a trace: on ``meta`` then swapped to fake cpu tensors (fake engine),
or with real tensors (deepspeed-cpu worker).

What is built mirrors OpenRLHF v0.9.5 (OpenRLHF/OpenRLHF@c0e2ee2):

- ``Actor`` (``openrlhf/models/actor.py``): ``AutoModelForCausalLM`` in ``param_dtype``, ``use_cache=False``,
  ``output_router_logits=True`` for MoE configs that have the key, LoRA via ``get_peft_model`` after
  ``enable_input_require_grads()``.
- reward model (``openrlhf/models/model.py::_get_reward_model``): the base transformer (``AutoModel``, no LM
  head) plus ``score = Linear(hidden_size, 1, bias=False)``; :class:`RewardModel` below has the same
  tensors and forward.
- DeepSpeed's bf16 engine casts every parameter (LoRA adapters included, which peft creates in fp32) to the
  training dtype and keeps buffers as they are (deepspeed/runtime/engine.py@v0.19.8,
  ``_configure_distributed_model``); the fake engine applies the same cast when it swaps tensors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from memplan.errors import ConfigError
from memplan.tracing.config import Method, TraceRequest, load_config_dict

#: ``--param_dtype`` -> torch dtype.
PARAM_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: OpenRLHF's reward/critic head name (``--value_head_prefix`` default, openrlhf.md §1.1).
VALUE_HEAD_PREFIX = "score"


def hf_config(config: dict[str, Any], attn: str) -> Any:
    """A transformers config object for ``config`` (never remote code) with OpenRLHF's settings applied."""
    import transformers

    model_type = config.get("model_type")
    kwargs = {k: v for k, v in config.items() if k not in ("model_type", "auto_map", "transformers_version")}
    try:
        cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
    except (ValueError, KeyError) as exc:
        raise ConfigError("config.json: model_type", f"transformers {transformers.__version__} cannot build "
                                                      f"{model_type!r}: {exc}") from None
    cfg.use_cache = False
    cfg._attn_implementation = attn
    if "output_router_logits" in cfg.to_dict():
        cfg.output_router_logits = True  # Actor.__init__: MoE balancing loss logits
    return cfg


class RewardModel(nn.Module):
    """OpenRLHF's reward model: base transformer + ``score`` head, reward = value at the last real token."""

    def __init__(self, base: nn.Module, hidden_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = base
        self.score = nn.Linear(hidden_size, 1, bias=False, dtype=dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                model_attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Rewards ``[batch]``; ``model_attention_mask`` is what the base model is given (see steps)."""
        eos_indices = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(dim=1, keepdim=True)
        position_ids = attention_mask.long().cumsum(-1) - 1
        position_ids.masked_fill_(attention_mask == 0, 1)
        outputs = self.model(input_ids, attention_mask=model_attention_mask, position_ids=position_ids)
        values = self.score(outputs["last_hidden_state"]).squeeze(-1)
        return values.gather(dim=1, index=eos_indices).squeeze(1)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Checkpoint the base transformer's layers, as HF does for the wrapped model."""
        self.model.gradient_checkpointing_enable(**kwargs)

    def enable_input_require_grads(self) -> None:
        """peft's requirement for LoRA with checkpointing."""
        self.model.enable_input_require_grads()


@dataclass(frozen=True, slots=True, kw_only=True)
class BuiltModels:
    """The models of one trace."""

    policy: nn.Module
    """The trained model (causal LM, peft-wrapped with LoRA, or :class:`RewardModel`)."""
    frozen: nn.Module | None
    """The reference (dpo, kto) or teacher (kd) model, eval mode, no grads; ``None`` otherwise."""
    policy_config: Any
    """transformers config of the policy."""
    frozen_config: Any
    """transformers config of the frozen model, or ``None``."""


def _lora(model: nn.Module, request: TraceRequest, causal: bool) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    model.enable_input_require_grads()
    all_linear = request.target_modules == ("all-linear",)
    targets: Any = "all-linear" if all_linear else list(request.target_modules)
    kwargs: dict[str, Any] = {"task_type": TaskType.CAUSAL_LM} if causal else {}
    config = LoraConfig(r=request.lora_rank, lora_alpha=request.lora_alpha, target_modules=targets,
                        lora_dropout=0.0, bias="none", **kwargs)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError("--target_modules", str(exc).splitlines()[0]) from None


def _from_config(auto_class: Any, config: Any, dtype: torch.dtype, request: TraceRequest) -> nn.Module:
    attn = str(request.attn_implementation.traced)
    try:
        model: nn.Module = auto_class.from_config(config, dtype=dtype, attn_implementation=attn)
    except ValueError as exc:
        if "attention implementation" not in str(exc) and "attn_implementation" not in str(exc):
            raise
        hint = " (flash_attention_2 does not exist on a CPU and is traced as sdpa)" \
            if request.attn_implementation.value == "flash_attention_2" else ""
        raise ConfigError("--attn_implementation", f"transformers has no {attn} attention for "
                                                   f"{config.model_type}{hint}; trace it with --attn_implementation "
                                                   "eager") from None
    return model


def build_trained(config: Any, request: TraceRequest) -> nn.Module:
    """The trained model on the current default device, in ``param_dtype``, train mode."""
    from transformers import AutoModel, AutoModelForCausalLM

    dtype = PARAM_DTYPES[request.param_dtype]
    attn = str(request.attn_implementation.traced)
    causal = request.method is not Method.RM
    if causal:
        model: nn.Module = _from_config(AutoModelForCausalLM, config, dtype, request)
    else:
        model = RewardModel(_from_config(AutoModel, config, dtype, request), config.hidden_size, dtype)
    if request.lora_rank > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = _lora(model, request, causal)
    if request.gradient_checkpointing:
        target = model.get_base_model() if hasattr(model, "get_base_model") else model
        with warnings.catch_warnings():  # transformers 5 renamed it activation_checkpointing_enable
            warnings.simplefilter("ignore", FutureWarning)
            target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def build_frozen(config: Any, request: TraceRequest) -> nn.Module:
    """The reference or teacher causal LM: ``param_dtype`` weights, eval mode, nothing trainable."""
    from transformers import AutoModelForCausalLM

    model = _from_config(AutoModelForCausalLM, config, PARAM_DTYPES[request.param_dtype], request)
    model.requires_grad_(False)
    model.eval()
    return model


def build_models(request: TraceRequest) -> BuiltModels:
    """Build every model of ``request`` on the current default device (``meta`` for the fake engine)."""
    attn = str(request.attn_implementation.traced)
    policy_config = hf_config(load_config_dict(request.model), attn)
    policy = build_trained(policy_config, request)
    frozen = frozen_config = None
    if request.ref_pretrain is not None:
        frozen_config = hf_config(load_config_dict(request.ref_pretrain), attn)
        frozen = build_frozen(frozen_config, request)
    return BuiltModels(policy=policy, frozen=frozen, policy_config=policy_config, frozen_config=frozen_config)


def swap_to_fake(module: nn.Module, fake_mode: Any, param_dtype: torch.dtype, memo: dict[int, nn.Parameter]) -> None:
    """Replace every meta parameter and buffer of ``module`` with a fake cpu tensor of the same shape.

    Floating parameters take ``param_dtype`` (DeepSpeed's bf16 cast); buffers keep their dtype. ``memo``
    maps ``id(meta_param)`` to its fake replacement so tied weights stay one tensor.
    """
    converter = fake_mode.fake_tensor_converter
    cpu = torch.device("cpu")
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None:
                continue
            if id(param) not in memo:
                meta = param.detach()
                if meta.is_floating_point():
                    meta = meta.to(param_dtype)
                fake = converter.from_meta_and_device(fake_mode, meta, cpu)
                memo[id(param)] = nn.Parameter(fake, requires_grad=param.requires_grad)
            sub._parameters[name] = memo[id(param)]
        for name, buf in list(sub._buffers.items()):
            if buf is not None:
                sub._buffers[name] = converter.from_meta_and_device(fake_mode, buf, cpu)


def unique_params(module: nn.Module) -> list[nn.Parameter]:
    """Distinct parameters (tied weights once)."""
    return list({id(p): p for p in module.parameters()}.values())


def param_bytes(module: nn.Module) -> int:
    """Bytes of the module's distinct parameters, measured from the tensors."""
    return sum(p.numel() * p.element_size() for p in unique_params(module))
