"""RL iteration (OpenRLHF ``train_ppo_ray``) → per-GPU and per-node peaks, phase by phase.

Phases of one synchronous iteration: rollout (vLLM generates) → make-experience (reward, actor,
critic, reference forward passes, one micro-rollout-batch at a time) → training (critic and actor,
concurrently unless DeepSpeed sleep serialises them) → weight sync to vLLM.
Source: OpenRLHF/OpenRLHF openrlhf/trainer/ppo_trainer.py and ppo_utils/experience_maker.py at
v0.11.0 (3c3be623); ../shared/reference/openrlhf.md §4–§6.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from memplan.hardware.gpu import Gpu
from memplan.jobs.estimate import host_resident, reserved_for
from memplan.jobs.job import Role, RoleName, RlJob, Slot
from memplan.jobs.result import DeviceEstimate, Estimate, HostEstimate, ModelInfo, PhaseUsage, PlacementRisk
from memplan.jobs.roles import RoleMemory, activation_config, role_memory, role_tree
from memplan.jobs import rollout as rollout_terms
from memplan.memory import host_process, overhead
from memplan.memory.host_limit import HostLimit, ray_limit
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.transient import HeadConfig, forward_only_terms
from memplan.model.params import largest_tensor_numel
from memplan.dtypes import bytes_for
from memplan.sources import code

#: Phases of one RL iteration, in order.
RL_PHASES = (Phase.ROLLOUT, Phase.MAKE_EXPERIENCE, Phase.TRAINING, Phase.WEIGHT_SYNC)
#: The sub-phases of one training micro-step that the TRAINING phase takes the worst of.
TRAIN_SUBPHASES = (Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER_STEP)
#: What DeepSpeed sleep moves to host RAM between training phases: optimizer states, fp32 master
#: params, the contiguous gradient buffer and lp grads; the lp (bf16) params stay
#: (OpenRLHF openrlhf/utils/deepspeed/deepspeed_utils.py ``offload_deepspeed_states``).
SLEEP_CATEGORIES = frozenset({Category.OPTIMIZER, Category.GRAD})

_OPENRLHF = "OpenRLHF/OpenRLHF"


def _retag(terms: list[Term] | tuple[Term, ...], phase: Phase) -> list[Term]:
    return [replace(t, phase=phase) for t in terms]


def training_activity(mem: RoleMemory, rl: RlJob) -> list[Term]:
    """The worst instant of a trained role's micro-step (forward, backward or optimizer step). With
    DeepSpeed sleep the role reloads its optimizer state and gradients for its own fit only
    (``reload_states`` → fit → ``offload_states``), so they belong to its activity."""
    candidates = [[t for t in mem.gpu_terms if t.phase == sub] + list(mem.activity.get(sub, ()))
                  for sub in TRAIN_SUBPHASES]
    worst = _retag(max(candidates, key=lambda ts: sum(t.bytes for t in ts)), Phase.TRAINING)
    if rl.deepspeed_sleep:
        worst += [t for t in mem.gpu_terms if t.phase is None and t.category in SLEEP_CATEGORIES]
    return worst


def experience_activity(mem: RoleMemory, rl: RlJob) -> list[Term]:
    """A role's no-grad forward in make-experience, at ``micro_rollout_batch_size`` over prompt + generation."""
    role = mem.role
    tagged = [t for t in mem.gpu_terms if t.phase == Phase.MAKE_EXPERIENCE]
    if not role.trained:
        return tagged + list(mem.activity.get(Phase.MAKE_EXPERIENCE, ()))
    frozen = replace(role, trained=False, micro_batch_size=rl.rollout.micro_rollout_batch_size,
                     gradient_checkpointing=False)
    cfg = activation_config(frozen, role_tree(frozen))
    head = HeadConfig(head=role.head, logprob_impl=rl.job.logprob_impl)
    return tagged + list(forward_only_terms(role.spec, cfg, head, str(role.name), phase=Phase.MAKE_EXPERIENCE))


def weight_sync_activity(mem: RoleMemory, rl: RlJob) -> list[Term]:
    """Actor → vLLM broadcast: ZeRO-3 gathers one parameter at a time; CUDA IPC (hybrid engine, nccl)
    clones each gathered parameter (``broadcast_to_vllm``, openrlhf/trainer/ray/ppo_actor.py)."""
    role = mem.role
    largest = bytes_for(largest_tensor_numel(role.spec), role.param_dtype)
    src = code(f"{_OPENRLHF}:openrlhf/trainer/ray/ppo_actor.py@v0.11.0", "broadcast_to_vllm: GatheredParameters([param])")
    terms = []
    if int(role.zero_stage) == 3:
        terms.append(Term(path="actor.weight_sync.gathered_param", bytes=largest, category=Category.PARAM,
                          device=Device.GPU, source=src, phase=Phase.WEIGHT_SYNC))
    if rl.colocate_all:
        terms.append(Term(path="actor.weight_sync.ipc_clone", bytes=largest, category=Category.TEMP,
                          device=Device.GPU, source=src, phase=Phase.WEIGHT_SYNC))
    return terms


def _resident(mem: RoleMemory, phase: Phase, rl: RlJob) -> list[Term]:
    persistent = [t for t in mem.gpu_terms if t.phase is None]
    if rl.deepspeed_sleep and mem.role.trained:
        return [t for t in persistent if t.category not in SLEEP_CATEGORIES]
    return persistent


def _activities(mems: dict[RoleName, RoleMemory], roles: tuple[RoleName, ...], phase: Phase,
                rl: RlJob) -> list[list[Term]]:
    acts: list[list[Term]] = []
    for name in roles:
        mem = mems.get(name)
        if mem is None:
            continue
        if phase == Phase.MAKE_EXPERIENCE:
            acts.append(experience_activity(mem, rl))
        elif phase == Phase.TRAINING and mem.role.trained:
            acts.append(training_activity(mem, rl))
        elif phase == Phase.WEIGHT_SYNC and name == RoleName.ACTOR and rl.rollout.num_engines:
            acts.append(weight_sync_activity(mem, rl))
    return acts


def slot_phases(slot: Slot, mems: dict[RoleName, RoleMemory], rl: RlJob, gpu: Gpu) -> tuple[PhaseUsage, ...]:
    """What one GPU holds in each phase of the iteration."""
    fixed: list[Term] = []
    for name in slot.roles:
        if name == RoleName.ROLLOUT:
            continue  # the engine's own terms carry its CUDA context and NCCL buffers
        fixed.append(overhead.cuda_context(f"{name}.cuda_context"))
        fixed += overhead.nccl_buffers(f"{name}.nccl", mems[name].world_size)
    usages = []
    for phase in RL_PHASES:
        base = [t for name in slot.roles if name in mems for t in _resident(mems[name], phase, rl)]
        if RoleName.ROLLOUT in slot.roles:
            base += rollout_terms.gpu_terms(rl, gpu, phase)
        acts = _activities(mems, slot.roles, phase, rl)
        concurrent = phase == Phase.TRAINING and not rl.deepspeed_sleep
        chosen = [t for a in acts for t in a] if concurrent else max(acts, key=lambda a: sum(t.bytes for t in a),
                                                                     default=[])
        usages.append(PhaseUsage(phase=phase, terms=tuple(base + fixed + chosen)))
    return tuple(usages)


def _host_terms(slot_roles: list[tuple[RoleName, ...]], mems: dict[RoleName, RoleMemory], rl: RlJob,
                phase: Phase) -> list[Term]:
    counts: dict[RoleName, int] = defaultdict(int)
    for roles in slot_roles:
        for name in roles:
            counts[name] += 1
    terms: list[Term] = []
    for name, ranks in counts.items():
        per_rank: list[Term] = []
        if name == RoleName.ROLLOUT:
            per_rank += rollout_terms.host_terms(rl, phase) + host_process.gpu_process(role="rollout", under_ray=True)
        else:
            mem = mems[name]
            per_rank += [t for t in mem.cpu_terms if host_resident(t, phase)]
            if rl.deepspeed_sleep and mem.role.trained and phase not in (Phase.TRAINING, Phase.LOAD):
                per_rank += [replace(t, device=Device.CPU) for t in mem.gpu_terms
                             if t.phase is None and t.category in SLEEP_CATEGORIES]
            if name == RoleName.ACTOR:
                per_rank += rollout_terms.replay_buffer_terms(rl, mem.world_size)
        for t in per_rank:
            if t.bytes:
                terms.append(replace(t, path=f"{t.path} (×{ranks} ranks)" if ranks > 1 else t.path,
                                     bytes=t.bytes * ranks))
    return terms


def _node_hosts(slots: tuple[Slot, ...], mems: dict[RoleName, RoleMemory], rl: RlJob,
                limit: HostLimit | None, capacity_bytes: int | None) -> list[HostEstimate]:
    nodes: dict[int, list[tuple[RoleName, ...]]] = defaultdict(list)
    for slot in slots:
        nodes[slot.node].append(slot.roles)
    return [HostEstimate(id=f"node{n}", capacity_bytes=capacity_bytes, limit=limit,
                         phases=tuple(PhaseUsage(phase=p, terms=tuple(_host_terms(nodes[n], mems, rl, p)
                                                                      + host_process.ray_node(head=n == min(nodes))))
                                      for p in (Phase.LOAD, *RL_PHASES)))
            for n in sorted(nodes)]


def _roles_per_node(slots: tuple[Slot, ...]) -> tuple[dict[str, int], ...]:
    per_node: dict[int, dict[str, int]] = defaultdict(dict)
    for slot in slots:
        for role in slot.roles:
            per_node[slot.node][str(role)] = per_node[slot.node].get(str(role), 0) + 1
    return tuple(per_node[n] for n in sorted(per_node))


def placement_risk(rl: RlJob, mems: dict[RoleName, RoleMemory], hosts: list[HostEstimate],
                   limit: HostLimit | None) -> PlacementRisk | None:
    """The placement Ray may choose (``rl.ray_placements``) whose fullest node needs the most host RAM.

    Source: frameworks/openrlhf/ray_placement.py (OpenRLHF's group order, Ray's PACK policy).
    Checked by: tests/frameworks/test_ray_placement.py::test_seed_worst_placement_puts_actor_and_critic_together
    """
    if not rl.ray_placements:
        return None
    capacity = hosts[0].capacity_bytes if hosts else None
    options = [(_node_hosts(slots, mems, rl, limit, capacity), slots) for slots in rl.ray_placements]
    worst_hosts, worst_slots = max(options, key=lambda o: max(h.peak_bytes for h in o[0]))
    return PlacementRisk(assumed=_roles_per_node(rl.slots), worst=tuple(worst_hosts),
                         worst_roles=_roles_per_node(worst_slots), num_placements=len(options))


def estimate_rl(rl: RlJob, *, gpu: Gpu, host_ram_bytes: int | None) -> Estimate:
    """Estimate every GPU (grouped by role set) and every node of an RL job."""
    groups = {g.name: g for g in rl.job.groups}
    mems: dict[RoleName, RoleMemory] = {}
    for role in rl.job.roles:
        phases = (Phase.FORWARD, Phase.MAKE_EXPERIENCE) if role.trained else (Phase.MAKE_EXPERIENCE,)
        mems[role.name] = role_memory(role, groups[role.group], rl.job.logprob_impl, forward_phases=phases,
                                      under_ray=True)
    by_roles: dict[tuple[RoleName, ...], list[Slot]] = defaultdict(list)
    for slot in rl.slots:
        by_roles[slot.roles].append(slot)
    devices = []
    for roles, slots in by_roles.items():
        usage = slot_phases(slots[0], mems, rl, gpu)
        peak = max(usage, key=lambda u: u.bytes)
        devices.append(DeviceEstimate(id=f"node{slots[0].node}/gpu{slots[0].gpu}",
                                      ids=tuple(f"node{s.node}/gpu{s.gpu}" for s in slots),
                                      roles=tuple(str(r) for r in roles), phases=usage,
                                      capacity_bytes=gpu.capacity_bytes, reserved_bytes=reserved_for(peak)))
    limit = ray_limit(host_ram_bytes) if host_ram_bytes is not None else None
    hosts = _node_hosts(rl.slots, mems, rl, limit, host_ram_bytes)
    risk = placement_risk(rl, mems, hosts, limit)
    models = {str(n): m.info for n, m in mems.items()}
    if rl.rollout.num_engines:
        actor = mems[RoleName.ACTOR].info
        models["rollout"] = ModelInfo(name=actor.name, num_params=actor.num_params, trainable_params=0)
    return Estimate(models=models, devices=tuple(devices), hosts=tuple(hosts), command=rl.job.command,
                    placement_risk=risk)
