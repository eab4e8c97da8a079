"""One training iteration per OpenRLHF method, with the tensors OpenRLHF creates.

Mirrors OpenRLHF v0.9.5 (OpenRLHF/OpenRLHF@c0e2ee2): ``openrlhf/models/actor.py::Actor.forward``,
``openrlhf/models/utils.py::log_probs_from_logits``, ``openrlhf/models/loss.py`` and the trainers
``openrlhf/trainer/{sft,rm,dpo,kto,kd,prm}_trainer.py``. Python scoping is mirrored too: what a trainer
loop binds to a variable (SFT's ``output`` with its fp32 logits, KD's ``teacher_logits``) stays alive
through the backward, the optimizer step and the next iteration's forward, until it is rebound. That is
the ``carry`` dict here.

Differences from the GPU path (recorded in every record's notes):

- Log-probs use OpenRLHF's torch fallback (gather + logsumexp in chunks of 1024 rows), which runs when
  flash-attn is not installed, as on a CPU. GPU installs use flash-attn's Triton ``cross_entropy_loss``.
- ``flash_attention_2`` is traced as ``sdpa`` (the CPU flash kernel: output + logsumexp saved, no s x s).
- Under fake tensors the all-ones attention mask is not handed to the HF model (HF would test
  ``mask.all()``, a data-dependent branch fake tensors cannot take); HF then runs the same causal
  ``is_causal`` path it picks for an all-ones mask. Boolean-mask indexing (KTO's chosen/rejected split,
  PRM's placeholder rows, KTO's ``labels[~mask] = 0``) is done with the equivalent index_select /
  masked_fill on the statically known positions.
- KTO's ``dist.all_reduce`` of the scalar KL estimate is skipped (world size 1, scalar).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from memplan.tracing.config import Method, TraceRequest

#: Rows per chunk of OpenRLHF's ``_logsumexp_by_chunk`` (openrlhf/models/utils.py@v0.9.5).
LOGSUMEXP_CHUNK_ROWS = 1024

#: CrossEntropyLoss ignore index used by GPTLMLoss, KDLoss and PRMLoss.
IGNORE_INDEX = -100

#: DPO/KTO beta (``--beta`` default 0.1); no memory effect.
BETA = 0.1

#: KD ``--kd_coef`` default (0.4); no memory effect.
KD_COEF = 0.4

#: Assumed prompt share of each sequence (prompt tokens are masked out of the loss; no memory effect).
PROMPT_FRACTION = 4

#: PRM: one placeholder (step-end) token every this many tokens (assumption; only the [n, vocab]
#: selected-logits tensors depend on it).
PRM_STEP_TOKENS = 128


@dataclass(kw_only=True)
class StepContext:
    """Everything a method step needs; engines supply the callbacks."""

    request: TraceRequest
    """The configuration."""
    policy: nn.Module
    """The trained model (or DeepSpeed engine wrapping it)."""
    frozen: nn.Module | None
    """Reference / teacher model, or None."""
    vocab_size: int
    """Token ids are drawn below this."""
    set_phase: Callable[[int, str], None]
    """Marks the start of a phase of an iteration."""
    backward: Callable[[torch.Tensor], None]
    """``loss.backward()`` or DeepSpeed's ``engine.backward(loss)``."""
    optimizer_step: Callable[[], None]
    """The optimizer step (emulated, or ``engine.step()``)."""
    pass_attention_mask: bool
    """False under fake tensors (see the module docstring)."""
    generator: torch.Generator | None = None
    """Seeded generator for real token ids; None under fake tensors."""


def make_batch(ctx: StepContext, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and an all-ones attention mask: ``rows`` full-length sequences (the worst case)."""
    shape = (rows, ctx.request.max_len)
    ids = torch.randint(0, ctx.vocab_size, shape, generator=ctx.generator)
    return ids, torch.ones(shape, dtype=torch.long)


def log_probs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """OpenRLHF's torch fallback for fp32 logits: gather the label logit, subtract a chunked logsumexp."""
    batch_dim, last_dim = logits.shape[:-1], logits.shape[-1]
    label_logits = torch.gather(logits, dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)
    flat = logits.reshape(-1, last_dim)
    lse = torch.zeros(flat.shape[0], device=logits.device, dtype=logits.dtype)
    for start in range(0, flat.shape[0], LOGSUMEXP_CHUNK_ROWS):
        end = min(start + LOGSUMEXP_CHUNK_ROWS, flat.shape[0])
        lse[start:end] = torch.logsumexp(flat[start:end], dim=-1)
    return label_logits - lse.view(*batch_dim)


def masked_mean(tensor: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``openrlhf.models.utils.masked_mean``."""
    return (tensor * mask).sum(dim=dim) / mask.sum(dim=dim)


def _positions(ctx: StepContext, mask: torch.Tensor) -> torch.Tensor:
    if ctx.request.packing_samples:
        one = torch.arange(ctx.request.max_len, dtype=torch.long)  # positions restart in every packed sample
        return one.repeat(mask.shape[1] // ctx.request.max_len).unsqueeze(0)
    position_ids = mask.long().cumsum(-1) - 1
    position_ids.masked_fill_(mask == 0, 1)
    return position_ids


def actor_forward(ctx: StepContext, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, *,
                  logprobs: bool) -> Any:
    """``Actor.forward``: fp32 logits, optionally per-token log-probs ``[b, s-1]`` with the output."""
    rolled = torch.roll(ids, shifts=-1, dims=1)
    position_ids = _positions(ctx, mask)
    model_mask = mask if ctx.pass_attention_mask and not ctx.request.packing_samples else None
    output = model(ids, attention_mask=model_mask, position_ids=position_ids)
    output["logits"] = output["logits"].to(torch.float32)  # OpenRLHF PR #634
    if not logprobs:
        return output
    log_probs = log_probs_from_logits(output["logits"], rolled)
    return log_probs[:, :-1], output


def _rows(ctx: StepContext, per_example: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A micro-batch of ``per_example`` x micro_train_batch_size sequences (packed into one row if asked)."""
    rows = ctx.request.micro_train_batch_size * per_example
    if ctx.request.packing_samples:
        ids, mask = make_batch(ctx, rows)
        return ids.reshape(1, -1), mask.reshape(1, -1)
    return make_batch(ctx, rows)


def _prompt_len(ctx: StepContext) -> int:
    return ctx.request.max_len // PROMPT_FRACTION


def sft_step(ctx: StepContext, it: int, carry: dict[str, Any]) -> None:
    """``SFTTrainer.fit`` body: log-probs with output, SFTLoss (masked mean), backward, step."""
    ctx.set_phase(it, "forward")
    carry["inputs"], carry["attention_mask"] = _rows(ctx, 1)
    loss_mask = carry["attention_mask"].clone()
    loss_mask[:, : _prompt_len(ctx)] = 0
    carry["per_token_log_probs"], carry["output"] = actor_forward(
        ctx, ctx.policy, carry["inputs"], carry["attention_mask"], logprobs=True)
    carry["loss"] = masked_mean(-carry["per_token_log_probs"], loss_mask[:, :-1])
    _backward_and_step(ctx, it, carry["loss"])


def _backward_and_step(ctx: StepContext, it: int, loss: torch.Tensor) -> None:
    ctx.set_phase(it, "backward")
    ctx.backward(loss)
    ctx.set_phase(it, "optimizer_step")
    ctx.optimizer_step()


def _batch_logps(ctx: StepContext, log_probs: torch.Tensor, mask: torch.Tensor,
                 prompt_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``DPOTrainer._get_batch_logps``: sum and mean of log-probs over response tokens."""
    loss_masks = mask.clone().bool()
    for row, source_len in zip(loss_masks, prompt_lens, strict=True):
        row[:source_len] = False
    loss_masks = loss_masks[:, 1:]
    sums = (log_probs * loss_masks).sum(-1)
    means = (log_probs * loss_masks).sum(-1) / loss_masks.sum(-1)
    return sums, means


def _dpo_concatenated(ctx: StepContext, model: nn.Module, ids: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch = ctx.request.micro_train_batch_size
    log_probs, output = actor_forward(ctx, model, ids, mask, logprobs=True)
    del output  # local to concatenated_forward: released on return
    sums, _ = _batch_logps(ctx, log_probs, mask, [_prompt_len(ctx)] * ids.shape[0])
    return sums[:batch], sums[batch:]


def dpo_step(ctx: StepContext, it: int, carry: dict[str, Any]) -> None:
    """``DPOTrainer.fit``: policy then reference concatenated forward (chosen+rejected), DPOLoss."""
    ctx.set_phase(it, "forward")
    carry["ids"], carry["mask"] = make_batch(ctx, 2 * ctx.request.micro_train_batch_size)
    chosen, rejected = _dpo_concatenated(ctx, ctx.policy, carry["ids"], carry["mask"])
    assert ctx.frozen is not None
    with torch.no_grad():
        ref_chosen, ref_rejected = _dpo_concatenated(ctx, ctx.frozen, carry["ids"], carry["mask"])
    logits = (chosen - rejected) - (ref_chosen - ref_rejected)
    carry["loss"] = (-F.logsigmoid(BETA * logits)).mean()
    carry["chosen_logps"], carry["rejected_logps"] = chosen, rejected
    _backward_and_step(ctx, it, carry["loss"])


def _kto_batch_logps(ctx: StepContext, logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``KTOTrainer._get_batch_logps``: shifted labels, masked prompt, log-probs of the shifted logits."""
    labels = ids[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_masks = mask.clone().bool()
    for row in loss_masks:
        row[: _prompt_len(ctx)] = False
    loss_masks = loss_masks[:, 1:]
    labels.masked_fill_(~loss_masks, 0)  # labels[~loss_masks] = 0
    per_token = log_probs_from_logits(logits, labels)
    return (per_token * loss_masks).sum(-1)


def _kto_logps_with_kl(ctx: StepContext, model: nn.Module, ids: torch.Tensor,
                       mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``compute_model_logps_with_KL``: matched front half, then the unmatched half, two forwards."""
    half = ids.shape[0] // 2
    output = actor_forward(ctx, model, ids[:half], mask[:half], logprobs=False)
    all_logps = _kto_batch_logps(ctx, output["logits"], ids[:half], mask[:half])
    del output
    chosen_idx = torch.arange(0, half, 2)  # labels == 1 (statically known: alternate desirable/undesirable)
    rejected_idx = torch.arange(1, half, 2)
    chosen, rejected = all_logps.index_select(0, chosen_idx), all_logps.index_select(0, rejected_idx)
    output = actor_forward(ctx, model, ids[half:], mask[half:], logprobs=False)
    kl_logps = _kto_batch_logps(ctx, output["logits"], ids[half:], mask[half:])
    return chosen, rejected, kl_logps


def kto_step(ctx: StepContext, it: int, carry: dict[str, Any]) -> None:
    """``KTOTrainer.fit``: policy then reference, each over matched + unmatched halves; KTOLoss."""
    ctx.set_phase(it, "forward")
    carry["ids"], carry["mask"] = make_batch(ctx, 2 * ctx.request.micro_train_batch_size)
    carry["policy_returns"] = _kto_logps_with_kl(ctx, ctx.policy, carry["ids"], carry["mask"])
    assert ctx.frozen is not None
    with torch.no_grad():
        carry["ref_returns"] = _kto_logps_with_kl(ctx, ctx.frozen, carry["ids"], carry["mask"])
    (p_chosen, p_rejected, p_kl), (r_chosen, r_rejected, r_kl) = carry["policy_returns"], carry["ref_returns"]
    kl = (p_kl - r_kl).mean().detach().clamp(min=0)
    chosen_losses = 1 - F.sigmoid(BETA * ((p_chosen - r_chosen) - kl))
    rejected_losses = 1 - F.sigmoid(BETA * (kl - (p_rejected - r_rejected)))
    carry["loss"] = torch.cat((chosen_losses, rejected_losses), 0).mean()
    _backward_and_step(ctx, it, carry["loss"])


def _gpt_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``GPTLMLoss`` without ring attention: shifted contiguous copy, CrossEntropyLoss."""
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    return F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1),
                           ignore_index=IGNORE_INDEX)


def _kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``KDLoss``: fp32 teacher softmax, fp32 student log-softmax, masked product."""
    teacher_probs = F.softmax(teacher_logits, dim=-1, dtype=torch.float32)
    inf_mask = torch.isinf(logits)
    logprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
    prod_probs = torch.masked_fill(teacher_probs * logprobs, inf_mask, 0)
    x = torch.sum(prod_probs, dim=-1).view(-1)
    mask = (label != IGNORE_INDEX).int()
    return -torch.sum(x * mask.view(-1), dim=0) / torch.sum(mask.view(-1), dim=0)


def kd_step(ctx: StepContext, it: int, carry: dict[str, Any]) -> None:
    """``KDTrainer.fit``: student output (fp32 logits), GPT loss, teacher logits under no_grad, KDLoss."""
    ctx.set_phase(it, "forward")
    carry["inputs"], carry["attention_mask"] = make_batch(ctx, ctx.request.micro_train_batch_size)
    inputs, mask = carry["inputs"], carry["attention_mask"]
    carry["output"] = actor_forward(ctx, ctx.policy, inputs, mask, logprobs=False)
    labels = torch.where(mask.bool(), inputs, IGNORE_INDEX)
    for label in labels:
        label[: _prompt_len(ctx)] = IGNORE_INDEX
    carry["labels"] = labels
    carry["gpt_loss"] = _gpt_lm_loss(carry["output"]["logits"], labels)
    assert ctx.frozen is not None
    with torch.no_grad():
        carry["teacher_logits"] = actor_forward(ctx, ctx.frozen, inputs, mask, logprobs=False)["logits"]
    carry["distil_loss"] = _kd_loss(carry["output"]["logits"], carry["teacher_logits"], labels)
    carry["loss"] = carry["gpt_loss"] * (1 - KD_COEF) + carry["distil_loss"] * KD_COEF
    _backward_and_step(ctx, it, carry["loss"])


def rm_step(ctx: StepContext, it: int, carry: dict[str, Any]) -> None:
    """``RewardModelTrainer.fit``: chosen+rejected concatenated through the reward model, PairWiseLoss."""
    ctx.set_phase(it, "forward")
    batch = ctx.request.micro_train_batch_size
    ids, mask = make_batch(ctx, 2 * batch)
    model_mask = mask if ctx.pass_attention_mask else None
    rewards = ctx.policy(ids, mask, model_mask)
    carry["chosen_reward"], carry["reject_reward"] = rewards[:batch], rewards[batch:]
    carry["loss"] = (-F.logsigmoid(carry["chosen_reward"] - carry["reject_reward"])).mean()
    _backward_and_step(ctx, it, carry["loss"])


def prm_step(ctx: StepContext, it: int, carry: dict[str, Any]) -> None:
    """``ProcessRewardModelTrainer.fit``: causal-LM output (fp32 logits), CE at placeholder tokens."""
    ctx.set_phase(it, "forward")
    carry["inputs"], mask = _rows(ctx, 1)
    carry["output"] = actor_forward(ctx, ctx.policy, carry["inputs"], mask, logprobs=False)
    logits = carry["output"]["logits"]
    flat_positions = torch.arange(PRM_STEP_TOKENS - 1, logits.shape[0] * logits.shape[1], PRM_STEP_TOKENS)
    selected = logits.reshape(-1, logits.shape[-1]).index_select(0, flat_positions)  # logits[placeholder_mask]
    labels = carry["inputs"].reshape(-1).index_select(0, flat_positions)
    carry["loss"] = F.cross_entropy(selected, labels, ignore_index=IGNORE_INDEX)
    carry["acc"] = (selected.argmax(dim=-1) == labels).float().mean()
    _backward_and_step(ctx, it, carry["loss"])


#: Method -> its iteration function.
STEPS: dict[Method, Callable[[StepContext, int, dict[str, Any]], None]] = {
    Method.SFT: sft_step, Method.RM: rm_step, Method.DPO: dpo_step,
    Method.KTO: kto_step, Method.KD: kd_step, Method.PRM: prm_step,
}
