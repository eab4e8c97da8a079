"""The schedule of one verl PPO-family step (``jobs.schedule``): generate → old log-prob → ref log-prob →
values → critic update → actor update → weight sync, and where each role's states are in each phase.

Source: verl 0.9.1 (w: the wheel) ``verl/trainer/ppo/v1/trainer_base.py`` :562-612 and ``trainer_sync.py``
:35-42 (the step), ``verl/workers/engine/base.py`` :300-336 and ``fsdp/transformer_impl.py`` :844-869
(entering eval mode loads the params if ``param_offload``; train mode loads params and optimizer; both go
back to the host on exit), ``verl/workers/engine_workers.py`` :728-827 (weight sync: the engine's weights
woken first, FSDP1 loads the params to the GPU for its sharded state dict, FSDP2 streams from where they
are; then the KV cache); reference/verl.md §3.

* The engine sleeps outside generation and the sync: level 2 discards weights and KV; level 1 (LoRA as
  adapter) backs the weights up to host RAM; ``free_cache_engine=False`` never sleeps.
"""

from __future__ import annotations

from memplan.jobs.job import RoleName
from memplan.jobs.schedule import Activity, Residence, RoleStep, Schedule, SchedulePhase, State, WeightTransport
from memplan.memory.breakdown import Phase

#: Micro-batch of one pass on one GPU: (sequences, tokens per sequence).
Micro = tuple[int, int]


def _states(param_offload: bool, optimizer_offload: bool, active: bool, trained: bool
            ) -> tuple[tuple[State, Residence], ...]:
    """Where an FSDP role's params and optimizer are: offloaded ones on the host, loaded for its own activity."""
    moved = Residence.WHILE_ACTIVE if active else Residence.HOST
    states = []
    if param_offload:
        states.append((State.WEIGHTS, moved))
    if optimizer_offload and trained:
        states.append((State.OPTIMIZER, moved if active else Residence.HOST))
    return tuple(states)


def verl_schedule(*, actor_offload: tuple[bool, bool], critic_offload: tuple[bool, bool] | None, ref: bool,
                  sleep_level: int, staged_sync: bool, micro: dict[tuple[RoleName, Phase], Micro]) -> Schedule:
    """The step of a hybrid-engine run. ``*_offload`` = (param_offload, optimizer_offload); ``critic_offload``
    None: no critic; ``sleep_level`` 0/1/2 of the engine; ``staged_sync``: the actor's offloaded params come
    back to the GPU for the weight sync (FSDP1, and LoRA under either FSDP: w:verl/workers/engine/fsdp/
    transformer_impl.py:986-991), else FSDP2 streams each tensor from the host; ``micro``: each pass's micro-batch."""
    asleep = {0: (), 1: ((State.WEIGHTS, Residence.HOST), (State.KV_CACHE, Residence.FREED)),
              2: ((State.WEIGHTS, Residence.FREED), (State.KV_CACHE, Residence.FREED))}[sleep_level]
    receiving = () if sleep_level == 0 else ((State.KV_CACHE, Residence.FREED),)
    trained = {RoleName.ACTOR: actor_offload, **({RoleName.CRITIC: critic_offload} if critic_offload else {})}

    def idle(role: RoleName) -> RoleStep:
        p, o = trained[role]
        return RoleStep(role=role, activity=Activity.IDLE, states=_states(p, o, False, True))

    def acting(role: RoleName, activity: Activity, phase: Phase) -> RoleStep:
        p, o = trained.get(role, (False, False))
        train = activity == Activity.TRAIN_STEP
        states = _states(p, False, True, False) + _states(False, o, train, True) if role in trained else ()
        return RoleStep(role=role, activity=activity, states=states, micro_batch=micro.get((role, phase)))

    def phase(which: Phase, engine: tuple[tuple[State, Residence], ...], engine_activity: Activity,
              active: RoleName | None, activity: Activity = Activity.FORWARD) -> SchedulePhase:
        steps = [RoleStep(role=RoleName.ROLLOUT, activity=engine_activity, states=engine)]
        steps += [acting(r, activity, which) if r == active else idle(r) for r in trained]
        if ref and active == RoleName.REF:
            steps.append(acting(RoleName.REF, activity, which))
        return SchedulePhase(phase=which, steps=tuple(steps))

    phases = [phase(Phase.ROLLOUT, (), Activity.GENERATE, None),
              phase(Phase.OLD_LOG_PROB, asleep, Activity.IDLE, RoleName.ACTOR)]
    if ref:
        phases.append(phase(Phase.REF_LOG_PROB, asleep, Activity.IDLE, RoleName.REF))
    if critic_offload is not None:
        phases.append(phase(Phase.VALUES, asleep, Activity.IDLE, RoleName.CRITIC))
        phases.append(phase(Phase.UPDATE_CRITIC, asleep, Activity.IDLE, RoleName.CRITIC, Activity.TRAIN_STEP))
    phases.append(phase(Phase.UPDATE_ACTOR, asleep, Activity.IDLE, RoleName.ACTOR, Activity.TRAIN_STEP))
    sync = phase(Phase.WEIGHT_SYNC, receiving, Activity.SYNC_RECEIVE, RoleName.ACTOR, Activity.SYNC_SEND)
    if actor_offload[0] and not staged_sync:  # FSDP2 streams each tensor from the host shards
        steps = tuple(RoleStep(role=s.role, activity=s.activity, states=((State.WEIGHTS, Residence.HOST),)
                               + tuple(x for x in s.states if x[0] != State.WEIGHTS))
                      if s.role == RoleName.ACTOR else s for s in sync.steps)
        sync = SchedulePhase(phase=Phase.WEIGHT_SYNC, steps=steps)
    phases.append(sync)
    saving = tuple(idle(r) for r in trained)
    return Schedule(phases=tuple(phases), saving=saving, weight_transport=WeightTransport.CUDA_IPC)
