"""Per-role memory: a Role's resolved options → model-state terms, host terms and per-phase activity.

This module only routes a role's options into the formula modules (memory/*); it holds no formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from memplan.dtypes import DType
from memplan.jobs.job import GpuGroup, LoraOptions, Role, RoleName
from memplan.jobs.result import ModelInfo
from memplan.memory import grad_timeline, host, host_process, lora, save
from memplan.memory.activations import ActivationConfig
from memplan.memory.breakdown import Device, Phase, Term
from memplan.memory.logits import Head, LogProbImpl
from memplan.memory.model_states import frozen_model_states, nf4_base_weights, trained_model_states
from memplan.memory.transient import (
    BackwardStage, HeadConfig, backward_moment_bytes, backward_moments, forward_only_terms, held_output_terms,
    micro_step_transients, training_transients,
)
from memplan.memory.fsdp import FsdpSharding
from memplan.memory.sharding import ZeroSharding
from memplan.memory.zero import ParamLayout, ZeroConfig, eval_zero_config, layout_from_tree, train_zero_config
from memplan.model.params import ModuleKind, ParamModule, ParamTensor, param_tree
from memplan.model.spec import ModelSpec

#: OpenRLHF's value head name (``--value_head_prefix`` default, openrlhf/models/model.py).
VALUE_HEAD_PREFIX = "score"


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleMemory:
    """Everything one rank of a role holds, as terms."""

    role: Role
    """The role."""
    gpu_terms: tuple[Term, ...]
    """GPU terms of the model's engine (persistent ones have ``phase=None``)."""
    cpu_terms: tuple[Term, ...]
    """Host terms of one rank (persistent and LOAD-phase)."""
    activity: dict[Phase, tuple[Term, ...]]
    """Terms of the role's worst moment in each phase it is active: its own transient tensors and, in
    backward, DeepSpeed's gradient buffers alive at that moment (memory/grad_timeline.py)."""
    transient: dict[Phase, tuple[Term, ...]]
    """The role's own computation alone at its largest in each phase (``activity`` before the gradient
    buffers are placed)."""
    info: ModelInfo
    """Parameter counts."""
    world_size: int
    """Ranks of the role's group."""
    rank0_cpu_terms: tuple[Term, ...] = ()
    """Host terms only the group's rank 0 holds (the ZeRO-3 HF state dict of ``save_model``), phase-tagged."""


def role_tree(role: Role) -> ParamModule:
    """The role's parameter tree: the causal LM, or the backbone plus a ``Linear(hidden, 1)`` value head
    (OpenRLHF ``get_llm_for_sequence_regression``: ``AutoModel`` base, ``score`` head, no bias)."""
    return _tree(role.spec, role.head)


@lru_cache(maxsize=64)
def _tree(spec: ModelSpec, head: Head) -> ParamModule:
    tree = param_tree(spec)
    if head == Head.LM:
        return tree
    body = tree.children[0]
    score = ParamModule(path=VALUE_HEAD_PREFIX, kind=ModuleKind.LINEAR,
                        tensors=(ParamTensor(name="weight", shape=(1, spec.hidden_size)),))
    return ParamModule(path="", kind=ModuleKind.CONTAINER, children=(body, score))


@lru_cache(maxsize=256)
def _layout(spec: ModelSpec, head: Head, lora_options: LoraOptions | None) -> tuple[ParamLayout, int]:
    """The role's ParamLayout and total parameter count (cached: the planner re-estimates often)."""
    tree = _tree(spec, head)
    adapters = () if lora_options is None else lora.adapter_tensor_numels(tree, lora_options.target_modules,
                                                                          lora_options.rank)
    return layout_from_tree(tree, adapter_tensors=adapters), tree.num_params


@lru_cache(maxsize=256)
def _grad_order(spec: ModelSpec, head: Head, lora_options: LoraOptions | None) -> grad_timeline.GradOrder:
    tree = _tree(spec, head)
    adapters = None
    if lora_options is not None:
        adapters = {}
        for module in lora.targeted_linears(tree, lora_options.target_modules):
            out_features, in_features = module.tensors[0].shape
            adapters[module.path] = lora_options.rank * (in_features + out_features)
    return grad_timeline.grad_order(tree, spec.num_hidden_layers, adapters)


def role_zero(role: Role, group: GpuGroup) -> ZeroConfig:
    """The DeepSpeed config of a ZeRO role: the train config for trained roles, the eval one otherwise
    (the configs OpenRLHF builds, memory/zero.py)."""
    sharding = role.sharding
    if not isinstance(sharding, ZeroSharding):
        raise TypeError(f"{role.name} is not sharded by DeepSpeed ZeRO")
    dp = max(group.num_gpus // role.ds_tp_size, 1)
    if role.trained:
        return train_zero_config(zero_stage=int(sharding.stage), dp_degree=dp, ranks_per_node=group.gpus_per_node,
                                 param_dtype=role.param_dtype, adam_offload=sharding.offload_optimizer,
                                 zpg=sharding.zpg, grad_accum_dtype=sharding.grad_accum_dtype,
                                 overlap_comm=sharding.overlap_comm,
                                 gradient_accumulation_steps=role.grad_accum_steps)
    return eval_zero_config(zero_stage=int(sharding.stage), dp_degree=dp, ranks_per_node=group.gpus_per_node,
                            param_dtype=role.param_dtype, offload=sharding.offload_params)


@lru_cache(maxsize=64)
def _activation_targets(spec: ModelSpec, head: Head, target_modules: tuple[str, ...]) -> frozenset:  # type: ignore[type-arg]
    return lora.activation_targets(_tree(spec, head), target_modules)


def activation_config(role: Role, tree: ParamModule) -> ActivationConfig:
    """The activation formulas' inputs for one micro-step of the role."""
    targets = _activation_targets(role.spec, role.head, role.lora.target_modules) if role.lora and role.trained \
        else None
    kwargs = {"lora_targets": targets} if targets is not None else {}
    return ActivationConfig(
        micro_batch_size=role.micro_batch_size * role.sequences_per_sample, seq_len=role.seq_len,
        attn_impl=role.attn_impl, gradient_checkpointing=role.gradient_checkpointing and role.trained,
        packing=role.packing, ring_size=role.ring_size, ds_tp_size=role.ds_tp_size,
        compute_dtype=role.param_dtype if role.param_dtype != DType.FP32 else DType.FP32,
        lora_rank=role.lora.rank if role.lora and role.trained else 0, trainable=role.trained, **kwargs)


def _state_layout(role: Role, layout: ParamLayout) -> ParamLayout:
    """The layout DeepSpeed manages: with 4-bit base weights only the adapters (the NF4 base is outside it)."""
    if not role.load_in_4bit:
        return layout
    return ParamLayout(trainable_groups=layout.trainable_groups, frozen_tensors=(),
                       largest_layer_params=layout.largest_layer_params, per_tensor=layout.per_tensor)


def _state_terms(role: Role, tree: ParamModule, layout: ParamLayout, zero: ZeroConfig,
                 forward_phases: tuple[Phase, ...], timeline: bool) -> list[Term]:
    name = str(role.name)
    if not role.trained:
        return frozen_model_states(layout, zero, role=name, forward_phases=forward_phases)
    placed = grad_timeline.outside_backward(layout, zero, role=name) if timeline else None
    terms = trained_model_states(layout, zero, role=name, forward_phases=forward_phases, placed_gradients=placed)
    if role.load_in_4bit:
        value_head = role.spec.hidden_size if role.head == Head.VALUE else 0
        terms += nf4_base_weights(tree, role=name, value_head_params=value_head)
    return terms


def _backward_with_grads(role: Role, cfg: ActivationConfig, head: HeadConfig, layout: ParamLayout,
                         zero: ZeroConfig, transient_peak: tuple[Term, ...]) -> tuple[Term, ...]:
    """The backward's worst moment with DeepSpeed's gradient buffers of that moment (grad_timeline).
    ``transient_peak`` (the method's own backward peak: with a KD teacher's loss tensors it can exceed the
    model's moments) counts as a moment before the first hook."""
    name = str(role.name)
    moments = [*backward_moments(role.spec, cfg, head, name), (transient_peak, (BackwardStage.LOSS, 0))]
    sizes = [*backward_moment_bytes(role.spec, cfg, head, name), sum(t.bytes for t in transient_peak)]
    order = _grad_order(role.spec, role.head, role.lora if role.trained else None)
    return grad_timeline.backward_peak(moments, order, layout, zero, role=name, moment_bytes=sizes,
                                       end_transient=held_output_terms(role.spec, cfg, head, name, Phase.BACKWARD))


def save_terms(role: Role, layout: ParamLayout, zero: ZeroConfig) -> list[Term]:
    """Host terms every rank of the role holds while it saves (Phase.SAVE, Phase.CHECKPOINT)."""
    name = str(role.name)
    tied = role.spec.vocab_size * role.spec.hidden_size if role.spec.tie_word_embeddings and role.head == Head.LM else 0
    terms = save.hf_state_dict_per_rank(layout, zero, role=name, tied_numel=tied) if role.saves_hf_model else []
    return terms + (save.ds_checkpoint_copy(layout, zero, role=name) if role.saves_ds_checkpoint else [])


def role_memory(role: Role, group: GpuGroup, logprob_impl: LogProbImpl,
                forward_phases: tuple[Phase, ...] = (Phase.FORWARD,), partner: Role | None = None,
                under_ray: bool = False, micro_batches: dict[Phase, tuple[int, int]] | None = None) -> RoleMemory:
    """Model states, host terms and per-phase transient activity of one rank of ``role``.

    ``partner`` is the frozen model a trained role's trainer runs between its forward and backward
    (DPO/KTO reference, KD teacher): its forward rides on the policy's forward-end tensors.
    ``under_ray``: the rank is a Ray actor (``train_ppo_ray``), so its process also imports ray.
    ``micro_batches``: (sequences, tokens) of a phase whose pass has its own batching (FSDP roles).

    The one dispatch on the sharding engine: ZeRO roles are computed here; FSDP roles by
    jobs/fsdp_role.py (memory/fsdp.py, fsdp_transient.py).
    """
    if isinstance(role.sharding, FsdpSharding):
        from memplan.jobs.fsdp_role import fsdp_role_memory

        return fsdp_role_memory(role, group, logprob_impl, forward_phases, under_ray, micro_batches)
    return _zero_role_memory(role, group, logprob_impl, forward_phases, partner, under_ray)


def _zero_role_memory(role: Role, group: GpuGroup, logprob_impl: LogProbImpl, forward_phases: tuple[Phase, ...],
                      partner: Role | None, under_ray: bool) -> RoleMemory:
    """:func:`role_memory` of a role sharded by DeepSpeed ZeRO."""
    tree = role_tree(role)
    layout, total = _layout(role.spec, role.head, role.lora if role.trained else None)
    zero = role_zero(role, group)
    states = _state_layout(role, layout)
    timeline = role.trained and grad_timeline.applies(zero, states)
    terms = _state_terms(role, tree, states, zero, forward_phases, timeline)
    cpu = [t for t in terms if t.device == Device.CPU]
    cpu += host.model_loading(layout, zero, role=str(role.name)) + host_process.gpu_process(role=str(role.name),
                                                                                       under_ray=under_ray)
    cpu += save_terms(role, layout, zero)
    cfg = activation_config(role, tree)
    head = HeadConfig(head=role.head, logprob_impl=logprob_impl, holds_output=role.holds_output,
                      kd=role.kd_student, output_until_step=role.keeps_output_to_step, entropy=role.entropy,
                      entropy_in_loss=role.entropy_in_loss)
    if role.trained and partner is not None:
        is_teacher = partner.name == RoleName.TEACHER
        activity = dict(micro_step_transients(role.spec, cfg, head, role=str(role.name),
                                              reference_role=None if is_teacher else str(partner.name),
                                              teacher=partner.spec if is_teacher else None))
    elif role.trained:
        activity = dict(training_transients(role.spec, cfg, head, str(role.name)))
    else:
        activity = {p: forward_only_terms(role.spec, cfg, head, str(role.name), phase=p) for p in forward_phases}
    transient = dict(activity)
    if timeline:
        activity[Phase.BACKWARD] = _backward_with_grads(role, cfg, head, states, zero, activity[Phase.BACKWARD])
    info = ModelInfo(name=role.spec.name, num_params=total,
                     trainable_params=layout.trainable_params if role.trained else 0)
    return RoleMemory(role=role, gpu_terms=tuple(t for t in terms if t.device == Device.GPU), cpu_terms=tuple(cpu),
                      activity=activity, transient=transient, info=info, world_size=group.num_gpus,
                      rank0_cpu_terms=tuple(save.hf_state_dict_rank0(layout, zero, role=str(role.name))
                                            if role.saves_hf_model else ()))
