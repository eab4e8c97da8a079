"""What to change when a run does not fit: flag changes, re-estimated, and the smallest set that fits.

Each candidate is an OpenRLHF flag (or GPU count) a user can change; its effect is the drop of the
largest per-GPU reserved peak, computed by a full re-estimate (not a rule of thumb). When the run
does not fit, single changes are tried first, then pairs, triples and quadruples of the most effective ones,
until a set makes every GPU and node fit; each set lists the per-GPU effect of each of its changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any

from memplan.api import RL_SCRIPT, ResolvedRun, estimate_run
from memplan.errors import ConfigError
from memplan.frameworks.openrlhf.rl_job import rl_roles
from memplan.hardware.gpu import Gpu
from memplan.jobs.job import GpuGroup
from memplan.jobs.result import Estimate, Verdict

#: GPUs per node assumed when doubling a group (OpenRLHF's ``--*_num_gpus_per_node`` default).
NODE_GPUS = 8
#: Change-set sizes tried after single changes, each with how many of the most effective single
#: changes it combines (pairs of the best 6, triples and quadruples of the best 5: at most 30 estimates).
SET_POOLS = ((2, 6), (3, 5), (4, 5))
#: vLLM memory share the OpenRLHF README advises with colocate_all (the hybrid-engine template).
HYBRID_GMU = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One change to a run: flag values and/or the single-model GPU group."""

    text: str
    """As typed on the command line (or described, for GPU counts)."""
    updates: tuple[tuple[str, Any], ...] = ()
    """Canonical OpenRLHF keys and their new values."""
    group: GpuGroup | None = None
    """New GPU group of a single-model run."""
    added_gpus: int = 0
    """GPUs the change adds."""

    def apply(self, run: ResolvedRun) -> ResolvedRun:
        """``run`` with the change."""
        return replace(run, values={**run.values, **dict(self.updates)}, group=self.group or run.group)


@dataclass(frozen=True, slots=True, kw_only=True)
class Suggestion:
    """One change (or a set of changes) and its effect."""

    change: str
    """The flag(s) to add or change, as typed on the command line (sets joined with `` + ``)."""
    estimate: Estimate
    """The estimate with the change applied."""
    saving_bytes: int
    """Drop of the largest per-GPU reserved peak (negative when the change costs GPU memory)."""
    effects: tuple[tuple[str, int], ...] = field(default=())
    """Each change of the set with the drop of the largest per-GPU reserved peak it gives alone."""
    added_gpus: int = 0
    """GPUs the set adds."""

    @property
    def max_reserved_bytes(self) -> int:
        """Largest per-GPU reserved peak after the change."""
        return max(d.reserved_bytes for d in self.estimate.devices)

    @property
    def fits(self) -> bool:
        """Every GPU and node fits after the change (verdict fits or tight)."""
        return self.estimate.verdict in (Verdict.FITS, Verdict.TIGHT)


def _max_reserved(est: Estimate) -> int:
    return max(d.reserved_bytes for d in est.devices)


def deficit_bytes(est: Estimate) -> int:
    """How far a run is from fitting: bytes over capacity per GPU, summed over the kinds of GPU (role
    sets) and the nodes (a group on more GPUs does not count as further from fitting)."""
    gpus = sum(max(d.reserved_bytes - d.capacity_bytes, 0) for d in est.devices if d.capacity_bytes)
    hosts = sum(max(h.peak_bytes - h.judged_bytes, 0) * h.count for h in est.hosts if h.judged_bytes)
    return gpus + hosts


def _doubled(nodes: int, per_node: int) -> tuple[int, int]:
    return (nodes, per_node * 2) if per_node * 2 <= NODE_GPUS else (nodes * 2, per_node)


def _single_changes(run: ResolvedRun) -> list[Change]:
    v = run.values
    out: list[Change] = []
    if not v.get("gradient_checkpointing"):
        out.append(Change(text="--gradient_checkpointing", updates=(("gradient_checkpointing", True),)))
    if int(v.get("zero_stage", 2)) < 3:
        out.append(Change(text="--zero_stage 3", updates=(("zero_stage", 3),)))
    if not v.get("adam_offload") and int(v.get("zero_stage", 2)) > 0:
        out.append(Change(text="--adam_offload", updates=(("adam_offload", True),)))
    out += _smaller_micro(v, "micro_train_batch_size")
    if v.get("attn_implementation") == "eager" or (v.get("attn_implementation") is None and not v.get("flash_attn")):
        out.append(Change(text="--attn_implementation flash_attention_2",
                          updates=(("attn_implementation", "flash_attention_2"), ("flash_attn", True))))
    if int(v.get("zero_stage", 2)) == 3 and run.script in ("train_dpo", "train_kto") and not v.get("ref_offload"):
        out.append(Change(text="--ref_offload", updates=(("ref_offload", True),)))
    if int(v.get("zero_stage", 2)) >= 1:
        nodes, per_node = _doubled(run.group.num_nodes, run.group.gpus_per_node)
        group = replace(run.group, num_nodes=nodes, gpus_per_node=per_node)
        text = f"{group.num_gpus} GPUs ({group.num_nodes} node{'s' if group.num_nodes > 1 else ''})"
        out.append(Change(text=text, group=group, added_gpus=group.num_gpus - run.group.num_gpus))
    return out


def _role_gpus(v: dict[str, Any], role: str) -> int:
    return int(v.get(f"{role}_num_nodes") or 1) * int(v.get(f"{role}_num_gpus_per_node") or 1)


def _rl_roles(v: dict[str, Any]) -> list[str]:
    return [str(r) for r in rl_roles(v)]


def _grow_role(v: dict[str, Any], roles: list[str]) -> Change:
    """Twice the GPUs for ``roles`` (a colocated pair grows together)."""
    updates: list[tuple[str, Any]] = []
    added = 0
    for role in roles:
        nodes, per_node = _doubled(int(v.get(f"{role}_num_nodes") or 1), int(v.get(f"{role}_num_gpus_per_node") or 1))
        updates += [(f"{role}_num_nodes", nodes), (f"{role}_num_gpus_per_node", per_node)]
        added = max(added, nodes * per_node - _role_gpus(v, role))
    text = " and ".join(f"{r} on {dict(updates)[f'{r}_num_nodes'] * dict(updates)[f'{r}_num_gpus_per_node']} GPUs"
                        for r in roles)
    return Change(text=f"{text} (--{roles[0]}_num_nodes/--{roles[0]}_num_gpus_per_node)", updates=tuple(updates),
                  added_gpus=added)


def _more_gpus(run: ResolvedRun, base: Estimate | None) -> list[Change]:
    """More GPUs for each role whose GPUs run out of memory."""
    if base is None:
        return []
    v = run.values
    engines, tp = int(v.get("vllm_num_engines") or 0), int(v.get("vllm_tensor_parallel_size") or 1)
    out: list[Change] = []
    for device in base.devices:
        if device.verdict != Verdict.OOM:
            continue
        roles = [r for r in device.roles if r != "rollout"]
        if "rollout" in device.roles and roles:  # hybrid engine: every model and the engines grow together
            grown = _grow_role(v, [r for r in _rl_roles(v) if r in roles])
            n = _role_gpus(dict(grown.updates), "actor")
            out.append(replace(grown, text=f"all models and vLLM on {n} GPUs (--vllm_num_engines {n // tp})",
                               updates=(*grown.updates, ("vllm_num_engines", n // tp))))
        elif "rollout" in device.roles and tp * 2 <= NODE_GPUS:
            out.append(Change(text=f"--vllm_tensor_parallel_size {tp * 2}",
                              updates=(("vllm_tensor_parallel_size", tp * 2),), added_gpus=engines * tp))
        elif roles:
            out.append(_grow_role(v, roles))
    return out


def _rl_changes(run: ResolvedRun, base: Estimate | None) -> list[Change]:
    v = run.values
    roles = _rl_roles(v)
    out: list[Change] = []
    colocate_all = bool(v.get("colocate_all_models")) and not v.get("async_train")
    engines, tp = int(v.get("vllm_num_engines") or 0), int(v.get("vllm_tensor_parallel_size") or 1)
    if colocate_all:
        if not v.get("deepspeed_enable_sleep") and not v.get("adam_offload"):
            out.append(Change(text="--deepspeed_enable_sleep", updates=(("deepspeed_enable_sleep", True),)))
        if engines and not v.get("vllm_enable_sleep"):
            out.append(Change(text="--vllm_enable_sleep", updates=(("vllm_enable_sleep", True),)))
        added = engines * tp + sum(_role_gpus(v, r) for r in roles if r != "actor")
        out.append(Change(text=f"drop --colocate_all_models (+{added} GPUs)",
                          updates=(("colocate_all_models", False), ("vllm_enable_sleep", False)), added_gpus=added))
    for flag, pair in (("colocate_actor_ref", "ref"), ("colocate_critic_reward", "reward")):
        if v.get(flag) and pair in roles and not colocate_all:
            out.append(Change(text=f"drop --{flag} (+{_role_gpus(v, pair)} GPUs)", updates=((flag, False),),
                              added_gpus=_role_gpus(v, pair)))
    gmu = float(v.get("vllm_gpu_memory_utilization") or 0.95)
    if engines:
        for lower in sorted({round(gmu - 0.1, 2), HYBRID_GMU if colocate_all else round(gmu - 0.05, 2)}, reverse=True):
            if 0.1 <= lower < gmu:
                out.append(Change(text=f"--vllm_gpu_memory_utilization {lower}",
                                  updates=(("vllm_gpu_memory_utilization", lower),)))
    if not v.get("adam_offload"):
        out.append(Change(text="--adam_offload", updates=(("adam_offload", True),)))
    if not v.get("gradient_checkpointing"):
        out.append(Change(text="--gradient_checkpointing", updates=(("gradient_checkpointing", True),)))
    if int(v.get("zero_stage", 2)) < 3:
        out.append(Change(text="--zero_stage 3", updates=(("zero_stage", 3),)))
    if ("ref" in roles or "reward" in roles) and not (v.get("ref_offload") and v.get("reward_offload")):
        out.append(Change(text="--ref_reward_offload (with --zero_stage 3)",
                          updates=(("ref_offload", True), ("reward_offload", True))))
    for key in ("micro_train_batch_size", "micro_rollout_batch_size"):
        out += _smaller_micro(v, key)
    return out + _more_gpus(run, base)


def _smaller_micro(v: dict[str, Any], key: str) -> list[Change]:
    """Half the micro batch, and 1 (one change either way)."""
    micro = int(v.get(key) or 1)
    return [Change(text=f"--{key} {m}", updates=((key, m),)) for m in sorted({micro // 2, 1}, reverse=True)
            if 1 <= m < micro]


def changes(run: ResolvedRun, base: Estimate | None = None) -> list[Change]:
    """Single changes worth trying (RL runs: placement, vLLM and per-role GPU changes too)."""
    return _rl_changes(run, base) if run.script == RL_SCRIPT else _single_changes(run)


def candidates(run: ResolvedRun) -> Iterator[tuple[str, ResolvedRun]]:
    """Single changes worth trying, each as (flag text, modified run)."""
    for change in changes(run):
        yield change.text, change.apply(run)


def _combine(parts: tuple[Change, ...]) -> Change | None:
    """The changes applied together; None when two of them set the same thing."""
    keys = [k for c in parts for k, _ in c.updates]
    if len(keys) != len(set(keys)) or sum(c.group is not None for c in parts) > 1:
        return None
    return Change(text=" + ".join(c.text for c in parts), updates=tuple(u for c in parts for u in c.updates),
                  group=next((c.group for c in parts if c.group is not None), None),
                  added_gpus=sum(c.added_gpus for c in parts))


def _estimate(run: ResolvedRun, gpu: Gpu | None, host_ram_bytes: int | None) -> Estimate | None:
    try:
        return estimate_run(run, gpu=gpu, host_ram_bytes=host_ram_bytes)
    except ConfigError:
        return None  # a combination DeepSpeed or OpenRLHF rejects is no suggestion


def change_sets(run: ResolvedRun, base: Estimate, singles: list[tuple[Change, Suggestion]], *, gpu: Gpu | None,
                host_ram_bytes: int | None) -> list[Suggestion]:
    """The smallest sets of changes that make the run fit: pairs, then triples, then quadruples of the single
    changes that bring the run closest to fitting (least memory over capacity, summed over GPUs and nodes)."""
    before, over = _max_reserved(base), deficit_bytes(base)
    ranked = [c for c, s in sorted(singles, key=lambda cs: deficit_bytes(cs[1].estimate))
              if deficit_bytes(s.estimate) < over]
    effect = {c.text: s.saving_bytes for c, s in singles}
    for size, pool in SET_POOLS:
        found = []
        for parts in combinations(ranked[:pool], size):
            change = _combine(parts)
            est = None if change is None else _estimate(change.apply(run), gpu, host_ram_bytes)
            if change is None or est is None:
                continue
            suggestion = Suggestion(change=change.text, estimate=est, saving_bytes=before - _max_reserved(est),
                                    effects=tuple((p.text, effect[p.text]) for p in parts),
                                    added_gpus=change.added_gpus)
            if suggestion.fits:
                found.append(suggestion)
        if found:
            return sorted(found, key=lambda s: (s.added_gpus, -s.saving_bytes))
    return []


def suggest(run: ResolvedRun, base: Estimate, *, gpu: Gpu | None, host_ram_bytes: int | None,
            limit: int = 3) -> list[Suggestion]:
    """The ``limit`` most useful changes: when the run does not fit, the smallest change sets that make it
    fit come first (single changes, then pairs, triples, quadruples; fewest GPUs added first), then the
    changes that lower the per-GPU peak the most. A change whose result is still out of memory (on a GPU
    or a node) is never suggested; when none fits, the list is empty."""
    before = _max_reserved(base)
    singles: list[tuple[Change, Suggestion]] = []
    for change in changes(run, base):
        est = _estimate(change.apply(run), gpu, host_ram_bytes)
        if est is None:
            continue
        saving = before - _max_reserved(est)
        singles.append((change, Suggestion(change=change.text, estimate=est, saving_bytes=saving,
                                           effects=((change.text, saving),), added_gpus=change.added_gpus)))
    useful = [s for _, s in singles if s.saving_bytes > 0 and s.estimate.verdict != Verdict.OOM]
    useful.sort(key=lambda s: -s.saving_bytes)
    if gpu is None or base.verdict != Verdict.OOM:
        return useful[:limit]
    fitting = sorted((s for _, s in singles if s.fits), key=lambda s: (s.added_gpus, -s.saving_bytes))
    if not fitting:
        fitting = change_sets(run, base, singles, gpu=gpu, host_ram_bytes=host_ram_bytes)
    rest = [s for s in useful if s not in fitting and s.estimate.verdict != Verdict.OOM]  # no change that still OOMs
    return (fitting + rest)[:limit]
