"""A hybrid-engine RL iteration → per-GPU and per-node peaks, phase by phase, as the job's schedule orders it.

Every trainer role (FSDP-sharded) and a rollout engine shard share each GPU of the run; one trainer process
and one engine process per GPU. The schedule (``jobs.schedule``, built by the framework) says what each role
does in each phase and where its states are (``GPU``; ``WHILE_ACTIVE``: loaded for its own activity only;
``HOST``); the engine's weight/KV residences give its state (both on the GPU: generating; weights only:
receiving weights; neither: asleep). Framework-neutral: reads typed jobs only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from memplan.dtypes import DType, bytes_for
from memplan.hardware.gpu import Gpu
from memplan.jobs.estimate import reserved_for
from memplan.jobs.ids import NodeRange, run_blocks
from memplan.jobs.job import Job, RoleName
from memplan.jobs.result import DeviceEstimate, Estimate, HostEstimate, ModelInfo, PhaseUsage
from memplan.jobs.roles import RoleMemory, role_memory
from memplan.jobs.schedule import Activity, Residence, Schedule, State
from memplan.memory import host_process, overhead
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.host_limit import ray_limit
from memplan.memory.sglang import SglangConfig, sglang_host_terms, sglang_state_terms
from memplan.memory.sglang import startup_check as sglang_startup
from memplan.memory.vllm import VllmConfig
from memplan.memory.vllm_budget import StartupStatus
from memplan.memory.vllm_budget import startup_check as vllm_startup
from memplan.memory.vllm_sleep import EngineState, vllm_sleep_host_terms, vllm_state_terms
from memplan.model.params import largest_tensor_numel
from memplan.model.spec import ModelSpec
from memplan.sources import Source

#: The sub-phases of a training micro-step a TRAIN_STEP activity takes the worst of.
TRAIN_SUBPHASES = (Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER_STEP)
#: Term categories each schedule state covers (the optimizer state includes a master copy, if any).
STATE_CATEGORIES = {State.WEIGHTS: Category.PARAM, State.GRADS: Category.GRAD, State.OPTIMIZER: Category.OPTIMIZER}


class EngineKind(StrEnum):
    """The rollout engine's implementation."""

    VLLM = "vllm"
    SGLANG = "sglang"


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineJob:
    """The rollout engine sharing the trainers' GPUs (one TP shard per GPU)."""

    spec: ModelSpec
    """The model it serves."""
    vllm: VllmConfig | None = None
    """A vLLM engine (sleep level inside)."""
    sglang: SglangConfig | None = None
    """An SGLang engine (released outside generation when ``sglang_sleeps``)."""
    sglang_sleeps: bool = True
    """SGLang's memory saver releases weights and KV between rollouts."""

    @property
    def kind(self) -> EngineKind:
        """Which engine."""
        return EngineKind.VLLM if self.vllm is not None else EngineKind.SGLANG


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightSync:
    """What the trained role gathers on each GPU while it sends its weights to the engine."""

    bucket_bytes: int
    """The transfer bucket allocated on the GPU."""
    gathered_dtype: DType
    """Dtype each gathered full tensor is in (the stored dtype)."""
    source: Source
    """Where the framework does it."""
    largest_numel: int | None = None
    """Elements of the largest tensor sent; None: the model's largest (LoRA adapters alone send less)."""
    summoned_bytes: int = 0
    """Bytes of the whole model gathered unsharded on each GPU for the sync's duration (0: one tensor at a time)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HybridJob:
    """A resolved hybrid-engine RL run: every role and the engine on every GPU of ``nodes × gpus_per_node``."""

    job: Job
    """The roles (FSDP-sharded) and their single group."""
    schedule: Schedule
    """The iteration."""
    engine: EngineJob | None
    """The rollout engine."""
    nodes: int
    """Nodes of the run."""
    gpus_per_node: int
    """GPUs per node."""
    weight_sync: WeightSync | None = None
    """The sync's buffers (None: no engine)."""
    checkpoint_roles: tuple[RoleName, ...] = ()
    """Trained roles that save their sharded states every save interval (they save one after another)."""
    hf_model_roles: tuple[RoleName, ...] = ()
    """Checkpointing roles that also save the full HF model: gathered on rank 0's host."""
    loading_ranks: dict[RoleName, int] | None = None
    """Ranks per node that load each role's full model on the host (1: rank 0 only; more with tied embeddings)."""


def engine_state(schedule: Schedule, phase: Phase) -> EngineState:
    """The engine's state in ``phase`` from its residences: weights and KV on the GPU → generating; weights
    only → receiving weights; else asleep."""
    weights = schedule.residence(RoleName.ROLLOUT, phase, State.WEIGHTS)
    kv = schedule.residence(RoleName.ROLLOUT, phase, State.KV_CACHE)
    if weights == Residence.GPU and kv == Residence.GPU:
        return EngineState.GENERATING
    return EngineState.WEIGHTS_ONLY if weights == Residence.GPU else EngineState.ASLEEP


def engine_gpu_terms(engine: EngineJob, total: int, state: EngineState, phase: Phase | None,
                     other_process_bytes: int) -> list[Term]:
    """One GPU's engine shard in ``state`` (memory/vllm_sleep.py, memory/sglang.py)."""
    if engine.vllm is not None:
        return vllm_state_terms(engine.spec, engine.vllm, total, state, phase=phase)
    assert engine.sglang is not None
    if not engine.sglang_sleeps:
        state = EngineState.GENERATING
    return sglang_state_terms(engine.spec, engine.sglang, total, state, other_process_bytes=other_process_bytes,
                              phase=phase)


def engine_host_terms(engine: EngineJob) -> list[Term]:
    """Host RAM one engine rank's sleep holds (level-1 weight backup; level-2 buffers)."""
    if engine.vllm is not None:
        return vllm_sleep_host_terms(engine.spec, engine.vllm)
    assert engine.sglang is not None
    return sglang_host_terms(engine.spec, engine.sglang)


def startup_problem(engine: EngineJob, total: int, other_process_bytes: int) -> str | None:
    """The engine's own start-up error with the trainers' ``other_process_bytes`` on the GPU, else None."""
    if engine.vllm is not None:
        check = vllm_startup(engine.spec, engine.vllm, total, other_process_bytes=other_process_bytes)
        return None if check.status == StartupStatus.OK else check.message
    assert engine.sglang is not None
    result = sglang_startup(engine.spec, engine.sglang, total, other_process_bytes=other_process_bytes)
    return result.message or None


def _where(schedule: Schedule, role: RoleName, phase: Phase, term: Term) -> Residence:
    state = next((s for s, c in STATE_CATEGORIES.items() if c == term.category), None)
    return Residence.GPU if state is None else schedule.residence(role, phase, state)


def _on_gpu(mem: RoleMemory, schedule: Schedule, phase: Phase, where: Residence) -> list[Term]:
    """The role's persistent terms the schedule puts at ``where`` in ``phase`` (kept untagged: resident)."""
    return [t for t in mem.gpu_terms if t.phase is None and _where(schedule, mem.role.name, phase, t) == where]


def weight_sync_terms(mem: RoleMemory, sync: WeightSync, phase: Phase) -> list[Term]:
    """The sender's buffers: the bucket, plus the largest full tensor gathered in the stored dtype (a tensor
    larger than the bucket is sent alone), plus a whole-model gather when the framework makes one."""
    numel = sync.largest_numel if sync.largest_numel is not None else largest_tensor_numel(mem.role.spec)
    largest = bytes_for(numel, sync.gathered_dtype)
    name = mem.role.name
    terms = [Term(path=f"{name}.weight_sync.bucket", bytes=sync.bucket_bytes, category=Category.TEMP,
                  device=Device.GPU, source=sync.source, phase=phase),
             Term(path=f"{name}.weight_sync.gathered_tensor", bytes=largest, category=Category.PARAM,
                  device=Device.GPU, source=sync.source, phase=phase)]
    if sync.summoned_bytes:
        terms.append(Term(path=f"{name}.weight_sync.summoned_model", bytes=sync.summoned_bytes,
                          category=Category.PARAM, device=Device.GPU, source=sync.source, phase=phase))
    return terms


def activity_terms(mem: RoleMemory, hj: HybridJob, phase: Phase) -> list[Term]:
    """What ``mem``'s role adds to the GPU for its own activity in ``phase`` (its states loaded for it included)."""
    entry = hj.schedule.at(phase)
    activity = entry.step(mem.role.name).activity if entry is not None else Activity.IDLE
    loaded = [replace(t, phase=phase) for t in _on_gpu(mem, hj.schedule, phase, Residence.WHILE_ACTIVE)]
    if activity == Activity.FORWARD:
        return list(mem.activity.get(phase, ())) + loaded
    if activity == Activity.TRAIN_STEP and mem.role.trained:
        worst = max((list(mem.activity.get(sub, ())) for sub in TRAIN_SUBPHASES), key=lambda ts: sum(t.bytes for t in ts))
        return [replace(t, phase=phase) for t in worst] + loaded
    if activity == Activity.SYNC_SEND and hj.weight_sync is not None:
        return weight_sync_terms(mem, hj.weight_sync, phase) + loaded
    return []


def _fixed(hj: HybridJob) -> list[Term]:
    """The trainer process's CUDA context and NCCL buffers on each GPU (one process holds every role)."""
    return [overhead.cuda_context("trainer.cuda_context"),
            *overhead.nccl_buffers("trainer.nccl", hj.gpus_per_node * hj.nodes)]


def startup_resident_bytes(mems: dict[RoleName, RoleMemory], hj: HybridJob) -> int:
    """What the trainer holds on a GPU when the engine starts: its context, NCCL and the parameters resting
    on the GPU after initialisation (no optimizer state yet: it is created at the first step)."""
    load = hj.schedule.phases[0].phase if hj.schedule.phases else Phase.ROLLOUT
    params = sum(t.bytes for m in mems.values() for t in _on_gpu(m, hj.schedule, load, Residence.GPU)
                 if t.category == Category.PARAM)
    return params + sum(t.bytes for t in _fixed(hj))


def gpu_phases(mems: dict[RoleName, RoleMemory], hj: HybridJob, gpu: Gpu, startup_bytes: int) -> tuple[PhaseUsage, ...]:
    """What one GPU holds in each phase of the iteration."""
    fixed = _fixed(hj)
    usages = []
    for entry in hj.schedule.phases:
        phase = entry.phase
        base = [t for m in mems.values() for t in _on_gpu(m, hj.schedule, phase, Residence.GPU)]
        if hj.engine is not None:
            base += engine_gpu_terms(hj.engine, gpu.capacity_bytes, engine_state(hj.schedule, phase), None,
                                     startup_bytes)
        acts = [activity_terms(m, hj, phase) for m in mems.values()]
        chosen = [t for a in acts for t in a] if entry.concurrent else max(
            acts, key=lambda a: sum(t.bytes for t in a), default=[])
        usages.append(PhaseUsage(phase=phase, terms=tuple(base + fixed + chosen)))
    return tuple(usages)


def checkpoint_terms(mem: RoleMemory, phase: Phase) -> list[Term]:
    """Host copies one rank makes while it saves its sharded states: every state term's bytes, on the host.

    Source: verl 0.9.1 ``verl/utils/checkpoint/fsdp_checkpoint_manager.py`` :202-211, :311-361 (each rank
    copies its model and optimizer state dicts to CPU and ``torch.save``s them); reference/verl.md §6.
    Assumes: a state the framework offloaded is copied too (counted once: its resting term, not its host copy);
    the adam ``step`` scalars (a few KB) are left out.
    """
    from memplan.sources import code

    src = code("verl-project/verl:verl/utils/checkpoint/fsdp_checkpoint_manager.py@v0.9.1",
               "save_checkpoint: per-rank model/optimizer state dicts to CPU :202-211, :311-361")
    states = [*mem.gpu_terms, *(t for t in mem.cpu_terms if not t.path.endswith((".offloaded", ".pinned_rounding")))]
    return [Term(path=f"{t.path}.checkpoint_copy", bytes=t.bytes, category=t.category, device=Device.CPU,
                 source=src, phase=phase)
            for t in states if t.phase is None and t.category in (Category.PARAM, Category.OPTIMIZER) and t.bytes > 4096]


def hf_model_terms(mem: RoleMemory, phase: Phase) -> list[Term]:
    """Rank 0's full state dict while it saves the HF model: every parameter in the stored dtype, on the host.

    Source: verl 0.9.1 ``verl/utils/checkpoint/fsdp_checkpoint_manager.py`` :422-446 (``hf_model`` in
    ``save_contents``: the full state dict gathered to rank 0's CPU); reference/verl.md §6.
    Assumes: the stored dtype is the role's sharded parameter dtype.
    """
    from memplan.memory.fsdp import FsdpSharding
    from memplan.sources import code

    sharding = mem.role.sharding
    dtype = sharding.param_dtype if isinstance(sharding, FsdpSharding) else mem.role.param_dtype
    src = code("verl-project/verl:verl/utils/checkpoint/fsdp_checkpoint_manager.py@v0.9.1",
               "hf_model: full state dict on rank 0's CPU :422-446")
    return [Term(path=f"{mem.role.name}.hf_model_state_dict (rank 0)", bytes=bytes_for(mem.info.num_params, dtype),
                 category=Category.PARAM, device=Device.CPU, source=src, phase=phase)]


def host_phases(mems: dict[RoleName, RoleMemory], hj: HybridJob, *, head: bool, node: int) -> tuple[PhaseUsage, ...]:
    """Host RAM of one node per phase: per GPU one trainer process and one engine process, the roles' host
    terms (offloaded states included: the schedule's ``HOST`` residences say what leaves the GPU; the host
    copies are the roles' own terms), the engine's sleep backup; Ray's daemons (and on
    the head its driver); model loading and checkpoint copies in their phases."""
    ranks = hj.gpus_per_node
    phases = (Phase.LOAD, *hj.schedule.order, *((Phase.CHECKPOINT,) if hj.checkpoint_roles else ()))
    usages = []
    for phase in phases:
        per_rank = list(host_process.gpu_process(role="trainer", under_ray=True))
        if hj.engine is not None:
            per_rank += host_process.gpu_process(role="rollout", under_ray=True)
            if phase != Phase.LOAD:
                per_rank += engine_host_terms(hj.engine)
        for mem in mems.values():  # offloaded states: the role's own host terms (pinned blocks stay cached)
            per_rank += [t for t in mem.cpu_terms if (t.phase is None and phase != Phase.LOAD)]
        terms = [replace(t, path=f"{t.path} (×{ranks} ranks)" if ranks > 1 else t.path, bytes=t.bytes * ranks)
                 for t in per_rank if t.bytes]
        if phase == Phase.CHECKPOINT:  # the roles save one after another: the largest counts
            saves = []
            for r in hj.checkpoint_roles:
                save = [replace(t, path=f"{t.path} (×{ranks} ranks)" if ranks > 1 else t.path, bytes=t.bytes * ranks)
                        for t in checkpoint_terms(mems[r], phase)]
                if r in hj.hf_model_roles and node == 0:
                    save += hf_model_terms(mems[r], phase)
                saves.append(save)
            terms += max(saves, key=lambda ts: sum(t.bytes for t in ts), default=[])
        if phase == Phase.LOAD:  # the roles' models load one after another: the largest counts
            loads = []
            for name, mem in mems.items():
                loading = (hj.loading_ranks or {}).get(name, 1)
                count = loading if loading > 1 else (1 if node == 0 else 0)
                loads.append([replace(t, bytes=t.bytes * count) for t in mem.rank0_cpu_terms
                              if t.phase == Phase.LOAD and count])
            terms += max(loads, key=lambda ts: sum(t.bytes for t in ts), default=[])
        terms += host_process.ray_node(head=head)
        usages.append(PhaseUsage(phase=phase, terms=tuple(terms)))
    return tuple(usages)


def estimate_hybrid(hj: HybridJob, *, gpu: Gpu, host_ram_bytes: int | None) -> tuple[Estimate, dict[str, int]]:
    """Estimate every GPU and node of a hybrid-engine job, and the start-up/wake-up figures
    (``startup_bytes``: the trainer's at engine start; ``adam_bytes``: optimizer state resident at wake-up)."""
    group = hj.job.groups[0]
    mems: dict[RoleName, RoleMemory] = {}
    for role in hj.job.roles:
        steps = [(p.phase, p.step(role.name)) for p in hj.schedule.phases]
        forward = tuple(ph for ph, s in steps if s.activity == Activity.FORWARD)
        micro = {ph: s.micro_batch for ph, s in steps if s.micro_batch is not None}
        train = next((s.micro_batch for _, s in steps if s.activity == Activity.TRAIN_STEP and s.micro_batch), None)
        if train is not None:
            micro[Phase.FORWARD] = train
        mems[role.name] = role_memory(role, group, hj.job.logprob_impl,
                                      forward_phases=(Phase.FORWARD, *forward) if role.trained else forward,
                                      under_ray=True, micro_batches=micro)
    startup = startup_resident_bytes(mems, hj)
    error = startup_problem(hj.engine, gpu.capacity_bytes, startup) if hj.engine is not None else None
    usage = gpu_phases(mems, hj, gpu, startup)
    peak = max(usage, key=lambda u: u.bytes)
    prealloc = sum(t.bytes for t in peak.terms if t.path.startswith("rollout."))
    total = hj.nodes * hj.gpus_per_node
    roles = tuple(str(r.name) for r in hj.job.roles) + (("rollout",) if hj.engine is not None else ())
    device = DeviceEstimate(blocks=run_blocks(0, total, hj.gpus_per_node), roles=roles, phases=usage,
                            capacity_bytes=gpu.capacity_bytes, reserved_bytes=reserved_for(peak),
                            preallocated_bytes=prealloc, startup_error=error)
    limit = ray_limit(host_ram_bytes) if host_ram_bytes is not None else None
    hosts = [HostEstimate(nodes=(NodeRange(first=0, last=0),), capacity_bytes=host_ram_bytes, limit=limit,
                          phases=host_phases(mems, hj, head=True, node=0))]
    if hj.nodes > 1:
        hosts.append(HostEstimate(nodes=(NodeRange(first=1, last=hj.nodes - 1),), capacity_bytes=host_ram_bytes,
                                  limit=limit, phases=host_phases(mems, hj, head=False, node=1)))
    models = {str(n): m.info for n, m in mems.items()}
    if hj.engine is not None:
        actor = mems[RoleName.ACTOR].info
        models["rollout"] = ModelInfo(name=actor.name, num_params=actor.num_params, trainable_params=0)
    adam = sum(t.bytes for m in mems.values() for t in m.gpu_terms
               if t.category == Category.OPTIMIZER and t.phase is None
               and _where(hj.schedule, m.role.name, Phase.ROLLOUT, t) == Residence.GPU)
    estimate = Estimate(models=models, devices=(device,), hosts=tuple(hosts), command=hj.job.command)
    return estimate, {"startup_bytes": startup, "adam_bytes": adam}
