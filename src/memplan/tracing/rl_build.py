"""Build the model of one ``train_ppo_ray`` role on the current default device (``meta`` for the fake engine).

Mirrors OpenRLHF/OpenRLHF@3c3be62 (v0.11.0):

- actor and reference: ``openrlhf/models/actor.py::Actor`` — ``AutoModelForCausalLM`` in ``param_dtype``,
  ``use_cache=False``; the reference is frozen (``ReferenceModelActor``, eval DeepSpeed config);
- critic and reward: ``openrlhf/models/model.py::get_llm_for_sequence_regression`` — the base transformer
  (``AutoModel._model_mapping[type(config)]``, no LM head) as ``base_model_prefix`` ("model"), a
  ``score = nn.Linear(hidden_size, 1, bias=False)`` value head, and two fp32 buffers ``mean`` and ``std``
  of one element (``register_buffer(..., persistent=False)``). :class:`CriticModel` and
  :class:`RewardModel` have the same tensors and forward (``_get_critic_model`` / ``_get_reward_model``).

The critic follows the actor's ``--gradient_checkpointing`` (``CriticModelActor.init_model_from_pretrained``
reads ``args.actor.gradient_checkpointing_enable``), non-reentrant by default.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from memplan.tracing.build import PARAM_DTYPES, _from_config, hf_config, load_config_dict
from memplan.tracing.rl_config import RlRole, RlTraceRequest
from memplan.tracing.rl_steps import position_ids_of


class _ValueModel(nn.Module):
    """``openrlhf/models/model.py::get_llm_for_sequence_regression``@3c3be62, common part: base transformer,
    ``score`` head, mean/std buffers."""

    def __init__(self, base: nn.Module, hidden_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = base
        self.score = nn.Linear(hidden_size, 1, bias=False, dtype=dtype)
        self.register_buffer("mean", torch.zeros(1), persistent=False)
        self.register_buffer("std", torch.ones(1), persistent=False)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Checkpoint the base transformer's layers, as HF does for the wrapped model."""
        self.model.gradient_checkpointing_enable(**kwargs)


class CriticModel(_ValueModel):
    """``openrlhf/models/model.py::_get_critic_model``'s ``CriticModel``@3c3be62: a value per action token."""

    def forward(self, input_ids: torch.Tensor, action_mask: torch.Tensor | None, attention_mask: torch.Tensor,
                model_attention_mask: torch.Tensor | None, return_output: bool = False) -> Any:
        """``(action_values, outputs)`` or ``action_values``; ``model_attention_mask`` is what the base gets."""
        position_ids = position_ids_of(attention_mask)
        outputs = self.model(input_ids, attention_mask=model_attention_mask, position_ids=position_ids)
        if action_mask is None:
            return outputs
        values = self.score(outputs["last_hidden_state"]).squeeze(-1)
        values = values[:, :-1]
        action_values = values[:, -action_mask.shape[1]:] * action_mask.float()
        return (action_values, outputs) if return_output else action_values


class RewardModel(_ValueModel):
    """``openrlhf/models/model.py::_get_reward_model``'s ``RewardModel``@3c3be62: the value at the last real
    token of each sequence."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                model_attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Rewards ``[batch]`` (``normalize_reward`` off: OpenRLHF's default)."""
        eos_indices = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(dim=1, keepdim=True)
        position_ids = position_ids_of(attention_mask)
        outputs = self.model(input_ids, attention_mask=model_attention_mask, position_ids=position_ids)
        values = self.score(outputs["last_hidden_state"]).squeeze(-1)
        return values.gather(dim=1, index=eos_indices).squeeze(1)


def build_role_model(request: RlTraceRequest) -> tuple[nn.Module, Any]:
    """(the role's model, its transformers config), trained roles in train mode, frozen ones in eval mode:
    ``Actor`` (``openrlhf/models/actor.py``) or ``get_llm_for_sequence_regression``@3c3be62."""
    from transformers import AutoModel, AutoModelForCausalLM

    config = hf_config(load_config_dict(request.role_model), str(request.attn_implementation.traced))
    dtype = PARAM_DTYPES[request.param_dtype]
    model: nn.Module
    if request.role in (RlRole.ACTOR, RlRole.REF):
        model = _from_config(AutoModelForCausalLM, config, dtype, request)  # type: ignore[arg-type]
    else:
        base = _from_config(AutoModel, config, dtype, request)  # type: ignore[arg-type]
        value_class = CriticModel if request.role is RlRole.CRITIC else RewardModel
        model = value_class(base, config.hidden_size, dtype)
    if not request.role.trained:
        model.requires_grad_(False)
        model.eval()
        return model, config
    if request.gradient_checkpointing:
        with warnings.catch_warnings():  # transformers 5 renamed it activation_checkpointing_enable
            warnings.simplefilter("ignore", FutureWarning)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        guard_input_require_grads(model.model if isinstance(model, _ValueModel) else model)
    model.train()
    return model, config


def guard_input_require_grads(hf_model: nn.Module) -> None:
    """Make transformers' ``enable_input_require_grads`` hook act only when grad mode is on.

    transformers v5.24.0 ``_activation_checkpointing_enable`` calls ``enable_input_require_grads()``: a
    forward hook on the input embeddings runs ``output.requires_grad_(True)``, also in the no-grad
    make-experience forward. On a GPU that flag has no memory effect there (no graph is recorded), but
    the tracer's ModTracker registers backward hooks on every module input that requires grad, and those
    hooks keep the embedding output alive for the rest of the trace (one [B, T, hidden] tensor per
    make-experience forward). Under grad mode the hook does exactly what transformers' does.
    """
    handles = getattr(hf_model, "_require_grads_hooks", None)
    if not handles:
        return
    for handle in handles:
        handle.remove()

    def make_inputs_require_grads(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if torch.is_grad_enabled():
            output.requires_grad_(True)

    embeddings = hf_model.get_input_embeddings()
    hf_model._require_grads_hooks = [embeddings.register_forward_hook(make_inputs_require_grads)]
