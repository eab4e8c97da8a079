"""OpenRLHF's suggestions (``Framework.changes``): the flag changes worth trying when a run does not fit,
in the order they are tried; ``memplan.advice`` re-estimates each and keeps what helps.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from memplan.frameworks.base import Change, ResolvedRun
from memplan.frameworks.openrlhf.rl_job import rl_roles
from memplan.frameworks.openrlhf.run import RL_SCRIPT
from memplan.jobs.result import Estimate, Verdict

#: GPUs per node assumed when doubling a group (OpenRLHF's ``--*_num_gpus_per_node`` default).
NODE_GPUS = 8
#: vLLM memory share the OpenRLHF README advises with colocate_all (the hybrid-engine template).
HYBRID_GMU = 0.5


def _doubled(nodes: int, per_node: int) -> tuple[int, int]:
    return (nodes, per_node * 2) if per_node * 2 <= NODE_GPUS else (nodes * 2, per_node)


def _single_changes(run: ResolvedRun) -> list[Change]:
    """Checkpointing, ZeRO, offload, micro-batch, attention and GPU-count changes of a single-model run."""
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
    """Placement, vLLM, offload, checkpointing, micro-batch and per-role GPU changes of a ``train_ppo_ray`` run."""
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
