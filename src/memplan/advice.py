"""What to change when a run does not fit: single flag changes, re-estimated and ranked by what they save.

Each candidate is an OpenRLHF flag a user can add or change; the saving is the drop of the largest
per-GPU reserved peak, computed by a full re-estimate (not a rule of thumb).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from memplan.api import ResolvedRun, estimate_run
from memplan.errors import ConfigError
from memplan.hardware.gpu import Gpu
from memplan.jobs.result import Estimate, Verdict


@dataclass(frozen=True, slots=True, kw_only=True)
class Suggestion:
    """One change and its effect."""

    change: str
    """The flag(s) to add or change, as typed on the command line."""
    estimate: Estimate
    """The estimate with the change applied."""
    saving_bytes: int
    """Drop of the largest per-GPU reserved peak (negative when the change costs GPU memory)."""

    @property
    def max_reserved_bytes(self) -> int:
        """Largest per-GPU reserved peak after the change."""
        return max(d.reserved_bytes for d in self.estimate.devices)


def _max_reserved(est: Estimate) -> int:
    return max(d.reserved_bytes for d in est.devices)


def candidates(run: ResolvedRun) -> Iterator[tuple[str, ResolvedRun]]:
    """Single changes worth trying, each as (flag text, modified run)."""
    v = run.values

    def change(text: str, **updates: Any) -> tuple[str, ResolvedRun]:
        return text, replace(run, values={**v, **updates})

    if not v.get("gradient_checkpointing"):
        yield change("--gradient_checkpointing", gradient_checkpointing=True)
    if int(v.get("zero_stage", 2)) < 3:
        yield change("--zero_stage 3", zero_stage=3)
    if not v.get("adam_offload") and int(v.get("zero_stage", 2)) > 0:
        yield change("--adam_offload", adam_offload=True)
    micro = int(v.get("micro_train_batch_size") or 1)
    if micro > 1:
        yield change(f"--micro_train_batch_size {micro // 2}", micro_train_batch_size=micro // 2)
    if v.get("attn_implementation") == "eager" or (v.get("attn_implementation") is None and not v.get("flash_attn")):
        yield change("--attn_implementation flash_attention_2", attn_implementation="flash_attention_2",
                     flash_attn=True)
    if int(v.get("zero_stage", 2)) == 3 and run.script in ("train_dpo", "train_kto") and not v.get("ref_offload"):
        yield change("--ref_offload", ref_offload=True)
    if int(v.get("zero_stage", 2)) >= 1:
        group = replace(run.group, gpus_per_node=run.group.gpus_per_node * 2) if run.group.gpus_per_node < 8 else \
            replace(run.group, num_nodes=run.group.num_nodes * 2)
        text = f"{group.num_gpus} GPUs ({group.num_nodes} node{'s' if group.num_nodes > 1 else ''})"
        yield text, replace(run, group=group)


def suggest(run: ResolvedRun, base: Estimate, *, gpu: Gpu | None, host_ram_bytes: int | None,
            limit: int = 3) -> list[Suggestion]:
    """The ``limit`` changes that lower the per-GPU peak the most (fitting ones first when a GPU is given)."""
    before = _max_reserved(base)
    found = []
    for text, changed in candidates(run):
        try:
            est = estimate_run(changed, gpu=gpu, host_ram_bytes=host_ram_bytes)
        except ConfigError:
            continue  # a combination DeepSpeed or OpenRLHF rejects is no suggestion
        found.append(Suggestion(change=text, estimate=est, saving_bytes=before - _max_reserved(est)))
    useful = [s for s in found if s.saving_bytes > 0]
    useful.sort(key=lambda s: (s.estimate.verdict == Verdict.OOM, -s.saving_bytes))
    return useful[:limit]
