"""The schedule of one ``train_ppo_ray`` iteration (``jobs.schedule``): rollout → make-experience →
training → weight sync, and where the trained models' states are in each.

Source: OpenRLHF/OpenRLHF openrlhf/trainer/ppo_trainer.py and ppo_utils/experience_maker.py at v0.11.0
(3c3be623); ../shared/reference/openrlhf.md §4–§6.

* ``--deepspeed_enable_sleep`` (without ``--adam_offload``) moves the optimizer state, fp32 master and
  gradients of the actor and critic to host RAM outside their own fit: ``reload_states`` → fit →
  ``offload_states`` (openrlhf/utils/deepspeed/deepspeed_utils.py ``offload_deepspeed_states``); the two
  fits then run one after the other, otherwise concurrently.
* The hybrid engine (``--colocate_all_models``, not ``--async_train``) syncs weights through CUDA IPC
  handles of cloned parameters; otherwise by NCCL broadcast (openrlhf/trainer/ray/ppo_actor.py
  ``broadcast_to_vllm``).
* ``--vllm_enable_sleep``: the engines sleep at level 1 outside generation (weights to host, KV freed).
"""

from __future__ import annotations

from collections.abc import Sequence

from memplan.jobs.job import RoleName
from memplan.jobs.schedule import Activity, Residence, RoleStep, Schedule, SchedulePhase, State, WeightTransport
from memplan.memory.breakdown import Phase

#: Where DeepSpeed sleep keeps a trained model's optimizer state and gradients outside its fit.
_ASLEEP = ((State.OPTIMIZER, Residence.HOST), (State.GRADS, Residence.HOST))
#: ... and during its own fit: reloaded for it and offloaded right after.
_FITTING = ((State.OPTIMIZER, Residence.WHILE_ACTIVE), (State.GRADS, Residence.WHILE_ACTIVE))
#: A vLLM engine asleep at level 1.
_ENGINE_ASLEEP = ((State.WEIGHTS, Residence.HOST), (State.KV_CACHE, Residence.FREED))


def rl_schedule(roles: Sequence[RoleName], *, engines: bool, deepspeed_sleep: bool, engine_sleep: bool,
                hybrid: bool) -> Schedule:
    """The iteration of a ``train_ppo_ray`` run with model ``roles`` (and vLLM engines when ``engines``)."""
    trained = [r for r in roles if r in (RoleName.ACTOR, RoleName.CRITIC)]
    asleep = _ASLEEP if deepspeed_sleep else ()
    engine = _ENGINE_ASLEEP if engine_sleep else ()

    def idle(role: RoleName) -> RoleStep:
        return RoleStep(role=role, activity=Activity.IDLE, states=asleep if role in trained else ())

    def engine_step(activity: Activity, states: tuple[tuple[State, Residence], ...]) -> tuple[RoleStep, ...]:
        return (RoleStep(role=RoleName.ROLLOUT, activity=activity, states=states),) if engines else ()

    rollout = SchedulePhase(phase=Phase.ROLLOUT, steps=(*engine_step(Activity.GENERATE, ()),
                                                        *(idle(r) for r in roles)))
    experience = SchedulePhase(phase=Phase.MAKE_EXPERIENCE, steps=(
        *engine_step(Activity.IDLE, engine),
        *(RoleStep(role=r, activity=Activity.FORWARD, states=asleep if r in trained else ()) for r in roles)))
    training = SchedulePhase(phase=Phase.TRAINING, concurrent=not deepspeed_sleep, steps=(
        *engine_step(Activity.IDLE, engine),
        *(RoleStep(role=r, activity=Activity.TRAIN_STEP, states=_FITTING if deepspeed_sleep else ())
          if r in trained else idle(r) for r in roles)))
    sync = SchedulePhase(phase=Phase.WEIGHT_SYNC, steps=(
        *engine_step(Activity.SYNC_RECEIVE, ()),
        *(RoleStep(role=r, activity=Activity.SYNC_SEND if engines else Activity.IDLE, states=asleep)
          if r == RoleName.ACTOR else idle(r) for r in roles)))
    transport = WeightTransport.NONE if not engines else \
        WeightTransport.CUDA_IPC if hybrid else WeightTransport.BROADCAST
    return Schedule(phases=(rollout, experience, training, sync), weight_transport=transport,
                    saving=tuple(RoleStep(role=r, activity=Activity.SAVE, states=asleep) for r in trained))
