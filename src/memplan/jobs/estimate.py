"""Job → Estimate: per-device and per-node peaks, phase by phase.

    peak(device) = max over phases p of [ persistent state of every role on the device
                                          + non-PyTorch overhead
                                          + the largest activity running on it in p ]

(DESIGN.md, "The memory model"). Roles on one device run their computations one after another
within a phase (e.g. DPO's reference forward, then the policy's), so a phase holds the largest
role activity, not their sum.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from memplan.hardware.gpu import Gpu
from memplan.jobs.ids import NodeRange, whole_nodes
from memplan.jobs.job import Job
from memplan.memory.host import HostKind, host_kind
from memplan.memory.host_limit import physical_limit
from memplan.jobs.result import DeviceEstimate, Estimate, HostEstimate, PhaseUsage
from memplan.jobs.roles import RoleMemory, role_memory
from memplan.jobs.saving import save_notes
from memplan.memory import overhead
from memplan.memory.breakdown import Category, Phase, Term

#: Phases of one SFT/RM/DPO/KTO/PRM/KD training step on the GPU.
SINGLE_MODEL_PHASES = (Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER_STEP)
#: Categories of a computation's own tensors (PhaseUsage.transient_bytes).
TRANSIENT_CATEGORIES = (Category.ACTIVATION, Category.TEMP)


def _sum(terms: list[Term] | tuple[Term, ...]) -> int:
    return sum(t.bytes for t in terms)


def device_phases(memories: list[RoleMemory], phases: tuple[Phase, ...]) -> tuple[PhaseUsage, ...]:
    """What one GPU holds in each phase: persistent terms, overhead, and the largest role activity."""
    persistent = [t for m in memories for t in m.gpu_terms if t.phase is None]
    world = max(m.world_size for m in memories)
    fixed = [overhead.cuda_context("runtime.cuda_context"), *overhead.nccl_buffers("runtime.nccl", world)]
    usages = []
    for phase in phases:
        activities = [[t for t in m.gpu_terms if t.phase == phase] + list(m.activity.get(phase, ()))
                      for m in memories]
        busiest = max(range(len(memories)), key=lambda i: _sum(activities[i]), default=None)
        terms = activities[busiest] if busiest is not None else []
        transient = None if busiest is None else sum(
            t.bytes for t in memories[busiest].transient.get(phase, ()) if t.category in TRANSIENT_CATEGORIES)
        usages.append(PhaseUsage(phase=phase, terms=tuple(persistent + fixed + terms), transient_bytes=transient))
    return tuple(usages)


def reserved_for(usage: PhaseUsage) -> int:
    """Device memory held at a phase's peak: allocated tensors plus the allocator reserve, plus overhead.

    vLLM's memory (``rollout.*`` terms) is sized by vLLM itself as a share of the GPU and preallocated,
    so the caching allocator's reserve is not added to it.
    """
    fixed = sum(t.bytes for t in usage.terms if t.category == Category.OVERHEAD or t.path.startswith("rollout."))
    return overhead.reserved_bytes(usage.bytes - fixed, fixed)


def host_resident(term: Term, phase: Phase) -> bool:
    """Whether a host term is held in ``phase``: persistent state exists from engine initialisation on,
    after loading (the loaded copies are freed when the model moves to the GPU), so the LOAD phase
    holds only the load terms and the processes' runtime."""
    if term.phase is not None:
        return term.phase == phase
    return phase != Phase.LOAD or host_kind(term) == HostKind.PROCESSES


def rank0_terms(mem: RoleMemory, ranks: int, phase: Phase) -> list[Term]:
    """The terms only the role's rank 0 holds, charged once on a node with ranks of the role: rank 0's node.
    Single-model runs report rank 0's node apart from the others (``estimate_job``); in RL runs the caller
    charges them on the node holding the role's first bundle."""
    return [t for t in mem.rank0_cpu_terms if ranks and t.phase == phase]


def save_phases(job: Job) -> tuple[Phase, ...]:
    """The host timeline's save phases of the job (none when saving is not modelled)."""
    return job.saves.phases if job.saves is not None else ()


def host_phases(memories: list[RoleMemory], ranks_per_node: dict[str, int],
                phases: tuple[Phase, ...], *, holds_rank0: bool = True) -> tuple[PhaseUsage, ...]:
    """Host RAM of one node per phase: every rank's host terms times the ranks of that role on the node,
    and, on the node of the roles' rank 0 (``holds_rank0``), what only rank 0 holds."""
    usages = []
    for phase in (Phase.LOAD, *phases):
        terms: list[Term] = []
        for m in memories:
            ranks = ranks_per_node.get(str(m.role.name), 0)
            for t in m.cpu_terms:
                if host_resident(t, phase):
                    label = f"{t.path} (×{ranks} ranks)" if ranks > 1 else t.path
                    terms.append(replace(t, path=label, bytes=t.bytes * ranks))
            if holds_rank0:
                terms += rank0_terms(m, ranks, phase)
        usages.append(PhaseUsage(phase=phase, terms=tuple(t for t in terms if t.bytes)))
    return tuple(usages)


def estimate_job(job: Job, *, gpu: Gpu | None = None, host_ram_bytes: int | None = None,
                 phases: tuple[Phase, ...] = SINGLE_MODEL_PHASES) -> Estimate:
    """Estimate every GPU and node of a job whose roles share one GPU group (SFT, RM, DPO, KTO, PRM, KD).
    Every GPU of the group holds the same ranks, and every node too: one entry each, with their ranges."""
    groups = {g.name: g for g in job.groups}
    frozen = next((r for r in job.roles if not r.trained), None)
    memories = [role_memory(r, groups[r.group], job.logprob_impl, forward_phases=(Phase.FORWARD,),
                            partner=frozen if r.trained else None) for r in job.roles]
    by_group: dict[str, list[RoleMemory]] = defaultdict(list)
    for m in memories:
        by_group[m.role.group].append(m)
    devices = []
    hosts = []
    for name, mems in by_group.items():
        group = groups[name]
        usage = device_phases(mems, phases)
        block = whole_nodes(group.num_nodes, group.gpus_per_node)
        peak = max(usage, key=lambda u: u.bytes)
        devices.append(DeviceEstimate(blocks=(block,), roles=tuple(str(m.role.name) for m in mems),
                                      phases=usage, capacity_bytes=gpu.capacity_bytes if gpu else None,
                                      reserved_bytes=reserved_for(peak)))
        ranks = {str(m.role.name): group.gpus_per_node for m in mems}
        limit = physical_limit(host_ram_bytes) if host_ram_bytes is not None else None
        # rank 0's node holds what only rank 0 holds (the gathered state dict at a save): it is reported apart
        rank0_only = any(m.rank0_cpu_terms for m in mems) and block.nodes.last > block.nodes.first
        first = NodeRange(first=block.nodes.first, last=block.nodes.first) if rank0_only else block.nodes
        hosts.append(HostEstimate(nodes=(first,), phases=host_phases(mems, ranks, phases + save_phases(job)),
                                  capacity_bytes=host_ram_bytes, limit=limit))
        if rank0_only:
            rest = NodeRange(first=block.nodes.first + 1, last=block.nodes.last)
            hosts.append(HostEstimate(nodes=(rest,), phases=host_phases(mems, ranks, phases + save_phases(job),
                                                                        holds_rank0=False),
                                      capacity_bytes=host_ram_bytes, limit=limit))
    models = {str(m.role.name): m.info for m in memories}
    return Estimate(models=models, devices=tuple(devices), hosts=tuple(hosts), command=job.command,
                    notes=save_notes(job, hosts))
