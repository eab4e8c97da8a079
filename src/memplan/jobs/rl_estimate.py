"""RL iteration → per-GPU and per-node peaks, phase by phase, as the job's schedule (``jobs.schedule``,
built by the framework) orders it: what each role does in each phase, which of its states are on the GPU,
with its activity only, or in host RAM, and whether roles sharing a GPU run at the same time.

The activities: a no-grad forward (one micro-batch of sequences at a time), a training micro-step, a
weight send to the rollout engines; the engines' own terms come from ``jobs/rollout.py``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from memplan.hardware.gpu import Gpu
from memplan.jobs.estimate import host_resident, rank0_terms, reserved_for, save_phases
from memplan.jobs.ids import GpuBlock, NodeRange, RanksPerNode, node_groups, run_blocks
from memplan.jobs.job import NodePlacement, Role, RoleName, RlJob
from memplan.jobs.result import DeviceEstimate, Estimate, HostEstimate, ModelInfo, PhaseUsage, PlacementRisk
from memplan.jobs.saving import save_notes
from memplan.jobs.roles import RoleMemory, activation_config, role_memory, role_tree
from memplan.jobs import rollout as rollout_terms
from memplan.memory import host_process, overhead
from memplan.memory.host_limit import HostLimit, ray_limit
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.jobs.schedule import Activity, Residence, State, WeightTransport
from memplan.memory.sharding import ZeroSharding, ZeroStage
from memplan.memory.transient import HeadConfig, forward_only_terms
from memplan.model.params import largest_tensor_numel
from memplan.dtypes import bytes_for
from memplan.sources import code

#: The sub-phases of one training micro-step that the TRAINING phase takes the worst of.
TRAIN_SUBPHASES = (Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER_STEP)
#: The term categories each schedule state covers (the optimizer state includes the fp32 master copy).
STATE_CATEGORIES = {State.WEIGHTS: Category.PARAM, State.GRADS: Category.GRAD, State.OPTIMIZER: Category.OPTIMIZER,
                    State.KV_CACHE: Category.KV_CACHE}

_OPENRLHF = "OpenRLHF/OpenRLHF"
#: Ranks of each role on one node, in the order the roles first appear there.
NodeRanks = RanksPerNode[RoleName]


def _where(rl: RlJob, role: RoleName, phase: Phase, term: Term) -> Residence:
    """Where the schedule puts a persistent term of ``role`` in ``phase`` (categories no state covers stay)."""
    state = next((s for s, c in STATE_CATEGORIES.items() if c == term.category), None)
    return Residence.GPU if state is None else rl.schedule.residence(role, phase, state)


def _retag(terms: list[Term] | tuple[Term, ...], phase: Phase) -> list[Term]:
    return [replace(t, phase=phase) for t in terms]


def training_activity(mem: RoleMemory, rl: RlJob, phase: Phase = Phase.TRAINING) -> list[Term]:
    """The worst instant of a trained role's micro-step (forward, backward or optimizer step). States the
    schedule moves onto the GPU for the role's own update only (``Residence.WHILE_ACTIVE``: DeepSpeed sleep's
    ``reload_states`` → fit → ``offload_states``) belong to its activity."""
    candidates = [[t for t in mem.gpu_terms if t.phase == sub] + list(mem.activity.get(sub, ()))
                  for sub in TRAIN_SUBPHASES]
    worst = _retag(max(candidates, key=lambda ts: sum(t.bytes for t in ts)), phase)
    worst += [t for t in mem.gpu_terms
              if t.phase is None and _where(rl, mem.role.name, phase, t) == Residence.WHILE_ACTIVE]
    return worst


def experience_activity(mem: RoleMemory, rl: RlJob, phase: Phase = Phase.MAKE_EXPERIENCE) -> list[Term]:
    """A role's no-grad forward in ``phase``, at the rollout's forward micro-batch over prompt + generation."""
    role = mem.role
    tagged = [t for t in mem.gpu_terms if t.phase == phase]
    if not role.trained:
        return tagged + list(mem.activity.get(phase, ()))
    frozen = replace(role, trained=False, micro_batch_size=rl.rollout.micro_rollout_batch_size,
                     gradient_checkpointing=False)
    cfg = activation_config(frozen, role_tree(frozen))
    head = HeadConfig(head=role.head, logprob_impl=rl.job.logprob_impl)
    return tagged + list(forward_only_terms(role.spec, cfg, head, str(role.name), phase=phase))


def weight_sync_activity(mem: RoleMemory, rl: RlJob) -> list[Term]:
    """Actor → rollout engines: ZeRO-3 gathers one parameter at a time; CUDA IPC (same-GPU engines) clones
    each gathered parameter (OpenRLHF ``broadcast_to_vllm``, openrlhf/trainer/ray/ppo_actor.py)."""
    role = mem.role
    largest = bytes_for(largest_tensor_numel(role.spec), role.param_dtype)
    src = code(f"{_OPENRLHF}:openrlhf/trainer/ray/ppo_actor.py@v0.11.0", "broadcast_to_vllm: GatheredParameters([param])")
    terms = []
    if isinstance(role.sharding, ZeroSharding) and role.sharding.stage == ZeroStage.ZERO_3:
        terms.append(Term(path="actor.weight_sync.gathered_param", bytes=largest, category=Category.PARAM,
                          device=Device.GPU, source=src, phase=Phase.WEIGHT_SYNC))
    if rl.schedule.weight_transport == WeightTransport.CUDA_IPC:
        terms.append(Term(path="actor.weight_sync.ipc_clone", bytes=largest, category=Category.TEMP,
                          device=Device.GPU, source=src, phase=Phase.WEIGHT_SYNC))
    return terms


def _resident(mem: RoleMemory, phase: Phase, rl: RlJob) -> list[Term]:
    """The role's persistent GPU terms the schedule keeps on the GPU throughout ``phase``."""
    return [t for t in mem.gpu_terms if t.phase is None and _where(rl, mem.role.name, phase, t) == Residence.GPU]


def _activities(mems: dict[RoleName, RoleMemory], roles: tuple[RoleName, ...], phase: Phase,
                rl: RlJob) -> list[list[Term]]:
    acts: list[list[Term]] = []
    for name in roles:
        mem = mems.get(name)
        if mem is None:
            continue
        entry = rl.schedule.at(phase)
        activity = entry.step(name).activity if entry is not None else Activity.IDLE
        if activity == Activity.FORWARD:
            acts.append(experience_activity(mem, rl, phase))
        elif activity == Activity.TRAIN_STEP and mem.role.trained:
            acts.append(training_activity(mem, rl, phase))
        elif activity == Activity.SYNC_SEND:
            acts.append(weight_sync_activity(mem, rl))
    return acts


def slot_phases(roles: tuple[RoleName, ...], mems: dict[RoleName, RoleMemory], rl: RlJob,
                gpu: Gpu) -> tuple[PhaseUsage, ...]:
    """What one GPU holding ``roles`` holds in each phase of the iteration."""
    fixed: list[Term] = []
    for name in roles:
        if name == RoleName.ROLLOUT:
            continue  # the engine's own terms carry its CUDA context and NCCL buffers
        fixed.append(overhead.cuda_context(f"{name}.cuda_context"))
        fixed += overhead.nccl_buffers(f"{name}.nccl", mems[name].world_size)
    usages = []
    for entry in rl.schedule.phases:
        phase = entry.phase
        base = [t for name in roles if name in mems for t in _resident(mems[name], phase, rl)]
        if RoleName.ROLLOUT in roles:
            base += rollout_terms.gpu_terms(rl, gpu, phase)
        acts = _activities(mems, roles, phase, rl)
        concurrent = entry.concurrent
        chosen = [t for a in acts for t in a] if concurrent else max(acts, key=lambda a: sum(t.bytes for t in a),
                                                                     default=[])
        usages.append(PhaseUsage(phase=phase, terms=tuple(base + fixed + chosen)))
    return tuple(usages)


def _host_terms(counts: NodeRanks, mems: dict[RoleName, RoleMemory], rl: RlJob, phase: Phase,
                rank0: frozenset[RoleName] | None = None) -> list[Term]:
    """Host terms of one node's ranks in ``phase``; rank 0's own terms for the roles in ``rank0`` (every role on
    the node when None: a placement Ray may choose can put a group's first bundle on any of its nodes)."""
    terms: list[Term] = []
    for name, ranks in counts:
        per_rank: list[Term] = []
        if name == RoleName.ROLLOUT:
            per_rank += rollout_terms.host_terms(rl, phase) + host_process.gpu_process(role="rollout", under_ray=True)
        else:
            mem = mems[name]
            per_rank += [t for t in mem.cpu_terms if host_resident(t, phase)]
            per_rank += [replace(t, device=Device.CPU) for t in mem.gpu_terms
                         if t.phase is None and _where(rl, name, phase, t) == Residence.HOST]
            if name in (RoleName.ACTOR, RoleName.CRITIC):
                per_rank += [t for t in rollout_terms.replay_buffer_terms(rl, str(name), mem.world_size)
                             if host_resident(t, phase)]
        for t in per_rank:
            if t.bytes:
                terms.append(replace(t, path=f"{t.path} (×{ranks} ranks)" if ranks > 1 else t.path,
                                     bytes=t.bytes * ranks))
        if name in mems and (rank0 is None or name in rank0):
            terms += rank0_terms(mems[name], ranks, phase)
    return terms


class _NodePhases:
    """Host RAM of a node per phase, from its ranks per role (and whether it is Ray's head), each distinct
    node computed once: the estimated placement and every placement Ray may choose share most node kinds."""

    def __init__(self, mems: dict[RoleName, RoleMemory], rl: RlJob) -> None:
        self._mems, self._rl = mems, rl
        self._seen: dict[tuple[NodeRanks, bool, frozenset[RoleName] | None], tuple[PhaseUsage, ...]] = {}

    def __call__(self, counts: NodeRanks, head: bool,
                 rank0: frozenset[RoleName] | None = None) -> tuple[PhaseUsage, ...]:
        key = (counts, head, rank0)
        if key not in self._seen:
            self._seen[key] = tuple(
                PhaseUsage(phase=p, terms=tuple(_host_terms(counts, self._mems, self._rl, p, rank0)
                                                + host_process.ray_node(head=head)))
                for p in (Phase.LOAD, *self._rl.schedule.order, *save_phases(self._rl.job)))
        return self._seen[key]


def _head_apart(groups: list[tuple[NodeRanks, tuple[NodeRange, ...]]]
                ) -> list[tuple[NodeRanks, tuple[NodeRange, ...], bool]]:
    """The node groups with node 0, Ray's head (its daemons and the driver, ``host_process.ray_node``), as
    an entry of its own: ``[(ranks per role, node ranges, is the head)]`` ordered by first node."""
    out: list[tuple[NodeRanks, tuple[NodeRange, ...], bool]] = []
    for counts, ranges in groups:
        if ranges[0].first == 0:
            out.append((counts, (NodeRange(first=0, last=0),), True))
            ranges = ((NodeRange(first=1, last=ranges[0].last),) if ranges[0].last else ()) + ranges[1:]
        if ranges:
            out.append((counts, ranges, False))
    return sorted(out, key=lambda g: g[1][0].first)


def _placement_hosts(placement: NodePlacement, node_phases: _NodePhases, limit: HostLimit | None,
                     capacity_bytes: int | None) -> tuple[list[HostEstimate], list[NodeRanks]]:
    """The nodes of one placement Ray may choose, identical ones grouped, numbered in the order given. The head
    (node 0) is put on the kind of node that needs the most: Ray's ties among empty nodes include the head."""
    fullest = max(range(len(placement)), key=lambda i: max(u.bytes for u in node_phases(placement[i][0], False)))
    parts = [(placement[fullest][0], 1, True)] + [(counts, n - (i == fullest), False)
                                                  for i, (counts, n) in enumerate(placement)]
    hosts: list[HostEstimate] = []
    roles: list[NodeRanks] = []
    first = 0
    for counts, n, head in parts:
        if n:
            hosts.append(HostEstimate(nodes=(NodeRange(first=first, last=first + n - 1),), limit=limit,
                                      capacity_bytes=capacity_bytes, phases=node_phases(counts, head)))
            roles.append(counts)
            first += n
    return hosts, roles


def first_ranks(placed: list[tuple[NodeRanks, tuple[NodeRange, ...], bool]]) -> list[frozenset[RoleName]]:
    """For each node entry as placed (ordered by first node), the roles whose rank 0 it holds: the first entry
    holding a role. Groups are filled in creation order, so a group's first bundle, its rank 0 (OpenRLHF gives
    rank i bundle i: openrlhf/trainer/ray/launcher.py@v0.11.0 :259, :281), lands on the first node it occupies."""
    seen: set[RoleName] = set()
    out = []
    for counts, _nodes, _head in placed:
        mine = frozenset(role for role, _ in counts if role not in seen)
        seen |= mine
        out.append(mine)
    return out


def _roles_dict(counts: NodeRanks) -> dict[str, int]:
    return {str(role): n for role, n in counts}


def placement_risk(rl: RlJob, node_phases: _NodePhases, hosts: list[HostEstimate], assumed: list[NodeRanks],
                   limit: HostLimit | None) -> PlacementRisk | None:
    """The placement Ray may choose (``rl.ray_placements``) whose fullest node needs the most host RAM, next to
    the estimated one (``hosts``, with the ranks per role ``assumed`` on each).

    Source: frameworks/openrlhf/ray_placement.py (OpenRLHF's group order, Ray's PACK policy).
    Checked by: tests/frameworks/test_ray_placement.py::test_seed_worst_placement_puts_actor_and_critic_together
    """
    if not rl.ray_placements:
        return None
    capacity = hosts[0].capacity_bytes if hosts else None
    options = [_placement_hosts(p, node_phases, limit, capacity) for p in rl.ray_placements]
    worst_hosts, worst_roles = max(options, key=lambda o: max(h.peak_bytes for h in o[0]))
    return PlacementRisk(assumed=tuple(hosts), assumed_roles=tuple(_roles_dict(c) for c in assumed),
                         worst=tuple(worst_hosts), worst_roles=tuple(_roles_dict(c) for c in worst_roles),
                         num_placements=len(options))


def estimate_rl(rl: RlJob, *, gpu: Gpu, host_ram_bytes: int | None) -> Estimate:
    """Estimate every GPU (grouped by role set) and every node of an RL job."""
    groups = {g.name: g for g in rl.job.groups}
    mems: dict[RoleName, RoleMemory] = {}
    for role in rl.job.roles:
        forward = tuple(p.phase for p in rl.schedule.phases if p.step(role.name).activity == Activity.FORWARD)
        phases = (Phase.FORWARD, *forward) if role.trained else forward
        mems[role.name] = role_memory(role, groups[role.group], rl.job.logprob_impl, forward_phases=phases,
                                      under_ray=True)
    by_roles: dict[tuple[RoleName, ...], list[GpuBlock]] = defaultdict(list)
    for run in rl.runs:
        by_roles[run.roles] += run_blocks(run.first, run.count, rl.node_gpus)
    devices = []
    engine_error = rollout_terms.startup_error(rl, gpu) if rl.rollout.num_engines else None
    for roles, blocks in by_roles.items():
        usage = slot_phases(roles, mems, rl, gpu)
        peak = max(usage, key=lambda u: u.bytes)
        devices.append(DeviceEstimate(blocks=tuple(blocks), roles=tuple(str(r) for r in roles), phases=usage,
                                      capacity_bytes=gpu.capacity_bytes, reserved_bytes=reserved_for(peak),
                                      preallocated_bytes=rollout_terms.preallocated_bytes(peak.terms),
                                      startup_error=engine_error if RoleName.ROLLOUT in roles else None))
    limit = ray_limit(host_ram_bytes) if host_ram_bytes is not None else None
    node_phases = _NodePhases(mems, rl)
    placed = _head_apart(node_groups(rl.runs, rl.node_gpus))
    hosts = [HostEstimate(nodes=nodes, capacity_bytes=host_ram_bytes, limit=limit,
                          phases=node_phases(counts, head, rank0))
             for (counts, nodes, head), rank0 in zip(placed, first_ranks(placed))]
    risk = placement_risk(rl, node_phases, hosts, [counts for counts, _, _ in placed], limit)
    models = {str(n): m.info for n, m in mems.items()}
    if rl.rollout.num_engines:
        actor = mems[RoleName.ACTOR].info
        models["rollout"] = ModelInfo(name=actor.name, num_params=actor.num_params, trainable_params=0)
    notes = (f"the vLLM engine cannot start on {gpu.name}: {engine_error}",) if engine_error else ()
    notes += save_notes(rl.job, hosts)
    return Estimate(models=models, devices=tuple(devices), hosts=tuple(hosts), command=rl.job.command, notes=notes,
                    placement_risk=risk)
