"""One iteration of one ``train_ppo_ray`` role, with the tensors OpenRLHF creates.

Mirrors OpenRLHF/OpenRLHF@3c3be62 (v0.11.0):

- experience tensors: ``openrlhf/trainer/ppo_utils/samples_generator.py::_process_response_into_experience``
  (``sequences`` and ``attention_mask`` long [B, T]; ``action_mask`` long [B, T-1], ones on the response:
  the full-length mask shifted by one) and ``ppo_utils/experience.py::Experience`` (log-probs, values,
  returns, advantages fp32 [B, T-1]);
- make-experience forwards under ``torch.no_grad``: ``trainer/ray/ppo_actor.py::PolicyModelActor.forward``
  (``actor.eval()``, action log-probs, ``actor.train()``), ``trainer/ray/ppo_critic.py::CriticModelActor.forward``,
  ``trainer/ray/launcher.py::ReferenceModelActor.forward`` and ``RewardModelActor.forward``; results go to
  the CPU (``.to("cpu")``), nothing stays on the GPU;
- training: ``trainer/ray/ppo_actor.py::ActorPPOTrainer.training_step`` (``Actor.forward`` with
  ``return_output=True``, fp32 logits, entropy when ``entropy_coef`` is set; ``PolicyLoss``; the KL loss
  of ``compute_approx_kl`` with ``--use_kl_loss``; ``aggregate_loss``; ``strategy.backward``;
  ``strategy.optimizer_step``) and ``trainer/ray/ppo_critic.py::CriticPPOTrainer.training_step``
  (``ValueLoss`` with ``value_clip``). Python scoping is mirrored: ``training_step``'s locals (``output``
  with its fp32 logits, the action log-probs) stay alive through the optimizer step and are released when
  it returns;
- losses and helpers: ``openrlhf/models/loss.py`` (``PolicyLoss``, ``ValueLoss``, ``aggregate_loss``),
  ``openrlhf/models/utils.py`` (``log_probs_from_logits``, ``compute_approx_kl``, ``compute_entropy``,
  ``masked_mean``), ``openrlhf/utils/loss_utils.py::get_loss_batch_info`` (token count, no all-reduce).

Differences from a GPU run are listed in :data:`RL_NOTES` (recorded in every record's notes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from memplan.tracing.rl_config import RlRole, RlTraceRequest
from memplan.tracing.steps import log_probs_from_logits, masked_mean

#: ``--eps_clip`` default 0.2 (low and high), ``--value_clip`` default 0.5 (train_ppo_ray.py v0.11.0);
#: ``PolicyLoss`` clamps the log-ratio to ±20 before ``exp``. No memory effect.
EPS_CLIP = (0.2, 0.2)
VALUE_CLIP = 0.5
LOG_RATIO_CLAMP = 20.0
#: ``compute_approx_kl`` clamps its result to ±10 (``--kl_estimator k1`` default).
KL_CLAMP = 10.0

#: How an RL trace differs from OpenRLHF on GPUs (besides the fake engine's own notes).
RL_NOTES = (
    "every rollout sequence is prompt_max_len + generate_max_len tokens (the worst case); the action mask "
    "covers the generate_max_len response tokens of the shifted T-1 positions, as samples_generator builds it",
    "make_experience: one no-grad forward of micro_rollout_batch_size sequences (each micro-rollout batch is "
    "the same; its outputs go to the CPU); the rollout (vLLM), the replay buffer (host RAM) and the weight "
    "sync are not traced",
    "compute_entropy is torch.compile'd in OpenRLHF and runs eagerly here: softmax output kept for backward, "
    "the pd * logits product a transient vocabulary-wide tensor (Inductor may fuse it)",
    "dist.all_reduce of the loss token counts skipped (world size 1, scalars)",
)


@dataclass(kw_only=True)
class RlContext:
    """Everything an RL role's iteration needs; the engine supplies the callbacks."""

    request: RlTraceRequest
    """The configuration."""
    model: nn.Module
    """The role's model."""
    vocab_size: int
    """Token ids are drawn below this."""
    set_phase: Callable[[int, str], None]
    """Marks the start of a phase of an iteration."""
    backward: Callable[[torch.Tensor], None]
    """``strategy.backward(loss, ...)``."""
    optimizer_step: Callable[[], None]
    """``strategy.optimizer_step(...)`` (emulated)."""


def rollout_batch(ctx: RlContext, rows: int) -> dict[str, torch.Tensor]:
    """``sequences``, ``attention_mask`` and ``action_mask`` of ``rows`` full-length samples on the device
    (``openrlhf/trainer/ppo_utils/samples_generator.py::_process_response_into_experience``@3c3be62)."""
    total = ctx.request.max_len
    sequences = torch.randint(0, ctx.vocab_size, (rows, total))
    attention_mask = torch.ones((rows, total), dtype=torch.long)
    action_mask = torch.zeros((rows, total - 1), dtype=torch.long)
    action_mask[:, ctx.request.prompt_max_len - 1:] = 1  # response tokens [prompt, T) shifted by one
    return {"sequences": sequences, "attention_mask": attention_mask, "action_mask": action_mask}


def experience_batch(ctx: RlContext) -> dict[str, torch.Tensor]:
    """One training micro-batch after ``Experience.to_device`` (``openrlhf/trainer/ppo_utils/experience.py``
    @3c3be62): masks plus the fp32 per-action fields the role's trainer reads."""
    batch = rollout_batch(ctx, ctx.request.micro_train_batch_size)
    shape = batch["action_mask"].shape
    batch["action_log_probs"] = torch.randn(shape)
    batch["advantages"] = torch.randn(shape)
    if ctx.request.role is RlRole.CRITIC:
        batch["values"], batch["returns"] = torch.randn(shape), torch.randn(shape)
    if ctx.request.use_kl_loss:
        batch["base_action_log_probs"] = torch.randn(shape)  # kept in the experience only with use_kl_loss
    return batch


def position_ids_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """``attention_mask.long().cumsum(-1) - 1`` with padding positions set to 1 (OpenRLHF issue #217), as
    ``openrlhf/models/actor.py::Actor.forward`` and ``openrlhf/models/model.py`` value models compute them
    (@3c3be62)."""
    position_ids = attention_mask.long().cumsum(-1) - 1
    position_ids.masked_fill_(attention_mask == 0, 1)
    return position_ids


def compute_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``openrlhf/models/utils.py::compute_entropy``@3c3be62 (run eagerly, not torch.compile'd): logsumexp
    minus the expectation of the logits under softmax."""
    pd = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(pd * logits, dim=-1)


def actor_forward(ctx: RlContext, batch: dict[str, torch.Tensor], *, return_output: bool,
                  return_entropy: bool = False) -> Any:
    """``openrlhf/models/actor.py::Actor.forward``@3c3be62 (not packed): fp32 logits, entropy if asked,
    action log-probs ``[B, T-1]`` (``log_probs_from_logits``, torch fallback)."""
    sequences, attention_mask, action_mask = batch["sequences"], batch["attention_mask"], batch["action_mask"]
    rolled_sequences = torch.roll(sequences, shifts=-1, dims=1)
    position_ids = position_ids_of(attention_mask)
    output = ctx.model(sequences, attention_mask=None, position_ids=position_ids)
    output["logits"] = output["logits"].to(torch.float32)  # OpenRLHF PR #634
    if return_entropy:
        entropy = compute_entropy(output["logits"])
        setattr(output, "entropy", entropy[:, :-1])
    log_probs = log_probs_from_logits(output["logits"], rolled_sequences)
    log_probs = log_probs[:, :-1]
    action_log_probs = log_probs[:, -action_mask.shape[1]:] * action_mask.float()
    return (action_log_probs, output) if return_output else action_log_probs


def aggregate_loss(loss: torch.Tensor, loss_mask: torch.Tensor, batch_num_tokens: torch.Tensor) -> torch.Tensor:
    """``openrlhf/models/loss.py::aggregate_loss``@3c3be62, token-level with the step's token count
    (``dp_size`` 1)."""
    return (loss * loss_mask).sum() / batch_num_tokens * 1


def policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                action_mask: torch.Tensor, batch_num_tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``openrlhf/models/loss.py::PolicyLoss.forward``@3c3be62 (``policy_loss_type`` ppo, no dual clip, no
    vLLM IS correction)."""
    raw_policy_log_ratio = log_probs - old_log_probs
    ratio = raw_policy_log_ratio.clamp(min=-LOG_RATIO_CLAMP, max=LOG_RATIO_CLAMP).exp()
    surr1 = ratio * advantages
    surr2 = ratio.clamp(1 - EPS_CLIP[0], 1 + EPS_CLIP[1]) * advantages
    loss = aggregate_loss(-torch.min(surr1, surr2), action_mask, batch_num_tokens)
    clip_ratio = masked_mean(torch.lt(surr2, surr1).float(), action_mask)
    ppo_kl = masked_mean(-raw_policy_log_ratio.detach(), action_mask)
    return loss, clip_ratio, ppo_kl


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, action_mask: torch.Tensor,
               batch_num_tokens: torch.Tensor) -> torch.Tensor:
    """``openrlhf/models/loss.py::ValueLoss.forward``@3c3be62 with ``clip_eps = value_clip``."""
    values_clipped = old_values + (values - old_values).clamp(-VALUE_CLIP, VALUE_CLIP)
    surr1 = (values_clipped - returns) ** 2
    surr2 = (values - returns) ** 2
    return 0.5 * aggregate_loss(torch.max(surr1, surr2), action_mask, batch_num_tokens)


def make_experience(ctx: RlContext, it: int) -> None:
    """The role's forward of one micro-rollout batch under ``torch.no_grad``; outputs leave the GPU
    (``openrlhf/trainer/ray/ppo_actor.py::PolicyModelActor.forward``, ``ppo_critic.py::CriticModelActor.forward``,
    ``launcher.py::ReferenceModelActor.forward`` / ``RewardModelActor.forward``@3c3be62)."""
    ctx.set_phase(it, "make_experience")
    batch = rollout_batch(ctx, ctx.request.micro_rollout_batch_size)
    role = ctx.request.role
    if role.trained:
        ctx.model.eval()
    with torch.no_grad():
        if role in (RlRole.ACTOR, RlRole.REF):
            result = actor_forward(ctx, batch, return_output=False)
        elif role is RlRole.CRITIC:
            result = ctx.model(batch["sequences"], batch["action_mask"], batch["attention_mask"], None)
        else:
            result = ctx.model(batch["sequences"], batch["attention_mask"], None)
    if role.trained:
        ctx.model.train()
    del result, batch  # .to("cpu"): the device copies are released when forward returns


def actor_training_step(ctx: RlContext, it: int) -> None:
    """``openrlhf/trainer/ray/ppo_actor.py::ActorPPOTrainer.training_step``@3c3be62: forward, PolicyLoss
    (+ KL loss, - entropy), backward, step; the locals live until the function returns."""
    request = ctx.request
    ctx.set_phase(it, "forward")
    experience = experience_batch(ctx)
    action_mask = experience["action_mask"]
    batch_num_tokens = action_mask.sum().to(torch.float32)  # get_loss_batch_info
    action_log_probs, output = actor_forward(ctx, experience, return_output=True,
                                             return_entropy=request.entropy_loss_coef is not None)
    actor_loss, clip_ratio, ppo_kl = policy_loss(action_log_probs, experience["action_log_probs"],
                                                 experience["advantages"], action_mask, batch_num_tokens)
    info = {"ppo_clip_ratio": clip_ratio.detach(), "ppo_kl": ppo_kl.detach()}
    kl_loss: Any = 0
    if request.use_kl_loss:
        if request.init_kl_coef > 0:
            kl = compute_approx_kl(action_log_probs, experience["base_action_log_probs"])
            logprobs_diff = action_log_probs.float() - experience["base_action_log_probs"].float()
        else:
            kl, logprobs_diff = torch.zeros_like(action_log_probs), torch.zeros_like(action_log_probs)
        kl_loss = aggregate_loss(kl, action_mask, batch_num_tokens)
        info["kl"], info["logprobs_diff"] = kl_loss.detach(), masked_mean(logprobs_diff, action_mask).detach()
    loss = actor_loss + kl_loss * request.init_kl_coef  # kl_ctl: FixedKLController(init_kl_coef)
    if request.entropy_loss_coef is not None:
        entropy_loss = aggregate_loss(output.entropy[:, -action_mask.shape[1]:], action_mask, batch_num_tokens)
        if request.entropy_loss_coef != 0:
            loss -= entropy_loss * request.entropy_loss_coef
    ctx.set_phase(it, "backward")
    ctx.backward(loss)
    ctx.set_phase(it, "optimizer_step")
    ctx.optimizer_step()


def compute_approx_kl(log_probs: torch.Tensor, log_probs_base: torch.Tensor) -> torch.Tensor:
    """``openrlhf/models/utils.py::compute_approx_kl``@3c3be62 with the default ``k1`` estimator."""
    log_ratio = log_probs.float() - log_probs_base.float()
    return log_ratio.clamp(min=-KL_CLAMP, max=KL_CLAMP)


def critic_training_step(ctx: RlContext, it: int) -> None:
    """``openrlhf/trainer/ray/ppo_critic.py::CriticPPOTrainer.training_step``@3c3be62: values, ValueLoss,
    backward, step; ``output`` held until return."""
    ctx.set_phase(it, "forward")
    experience = experience_batch(ctx)
    action_mask = experience["action_mask"]
    batch_num_tokens = action_mask.sum().to(torch.float32)
    values, output = ctx.model(experience["sequences"], action_mask, experience["attention_mask"], None,
                               return_output=True)
    critic_loss = value_loss(values, experience["values"], experience["returns"], action_mask, batch_num_tokens)
    loss = critic_loss + 0  # aux_loss is 0 without --aux_loss_coef
    ctx.set_phase(it, "backward")
    ctx.backward(loss)
    ctx.set_phase(it, "optimizer_step")
    ctx.optimizer_step()
    status = {"critic_loss": critic_loss.detach(), "values": masked_mean(values, action_mask).detach()}
    del status, output  # .item() of each; locals released on return


#: Role -> its training step (frozen roles have none).
TRAINING_STEPS: dict[RlRole, Callable[[RlContext, int], None]] = {
    RlRole.ACTOR: actor_training_step, RlRole.CRITIC: critic_training_step,
}
