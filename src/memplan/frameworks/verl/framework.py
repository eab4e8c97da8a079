"""verl on the framework seam (``frameworks.base.Framework``): the adapter ``frameworks.get("verl")`` returns.

A run's ``values`` are the Hydra overrides of its ``main_ppo`` call, by dotted key (interpolations resolved);
``options`` keep each key as typed (with its ``+``/``++``/``~`` prefix). Every estimate re-applies them to
verl's defaults for the run's release (``frameworks/verl/defaults.py``), so a change is an override.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from memplan.errors import ConfigError
from memplan.frameworks.base import Change, PlanRun, ResolvedRun
from memplan.frameworks.verl import ESTIMATE_FILL, run_for
from memplan.frameworks.verl.command import MODULE, read_config, single_invocation
from memplan.frameworks.verl.defaults import LATEST, VERSIONS, Engine, load_table, normalize_version
from memplan.frameworks.verl.hydra import HydraConfig, Override, OverrideKind, apply_overrides, parse_override
from memplan.frameworks.verl.run import VerlRun, build_run
from memplan.frameworks.verl.unmodelled import unmodelled_notes
from memplan.hardware import resolve_gpu
from memplan.hardware.gpu import Gpu
from memplan.jobs.job import GpuGroup, RoleName
from memplan.jobs.knobs import Knob, KnobKey, KnobValue
from memplan.jobs.result import Estimate
from memplan.memory.logits import LogProbImpl

#: The GPU vLLM's KV cache is sized on when no ``--gpu`` is given (as for OpenRLHF RL runs).
DEFAULT_GPU = "h100-80g"
ACTOR = "actor_rollout_ref.actor"
ROLLOUT = "actor_rollout_ref.rollout"
#: Knobs and the key that holds each.
KNOBS: dict[KnobKey, str] = {
    KnobKey(knob=Knob.PARAM_OFFLOAD, role=RoleName.ACTOR): f"{ACTOR}.fsdp_config.param_offload",
    KnobKey(knob=Knob.OPTIMIZER_OFFLOAD, role=RoleName.ACTOR): f"{ACTOR}.fsdp_config.optimizer_offload",
    KnobKey(knob=Knob.PARAM_OFFLOAD, role=RoleName.CRITIC): "critic.fsdp.param_offload",
    KnobKey(knob=Knob.OPTIMIZER_OFFLOAD, role=RoleName.CRITIC): "critic.fsdp.optimizer_offload",
    KnobKey(knob=Knob.CHECKPOINTING, role=RoleName.ACTOR): "actor_rollout_ref.model.enable_gradient_checkpointing",
    KnobKey(knob=Knob.MICRO_BATCH, role=RoleName.ACTOR): f"{ACTOR}.ppo_micro_batch_size_per_gpu",
    KnobKey(knob=Knob.FORWARD_MICRO_BATCH, role=RoleName.ACTOR): f"{ROLLOUT}.log_prob_micro_batch_size_per_gpu",
    KnobKey(knob=Knob.FORWARD_MICRO_BATCH, role=RoleName.REF): "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu",
    KnobKey(knob=Knob.TOKEN_BUDGET, role=RoleName.ACTOR): f"{ACTOR}.ppo_max_token_len_per_gpu",
    KnobKey(knob=Knob.PACKING): "actor_rollout_ref.model.use_remove_padding",
    KnobKey(knob=Knob.SEQUENCE_PARALLEL, role=RoleName.ACTOR): f"{ACTOR}.ulysses_sequence_parallel_size",
    KnobKey(knob=Knob.ENGINE_TP): f"{ROLLOUT}.tensor_model_parallel_size",
    KnobKey(knob=Knob.ENGINE_MEMORY_SHARE): f"{ROLLOUT}.gpu_memory_utilization",
    KnobKey(knob=Knob.ENGINE_SLEEP): f"{ROLLOUT}.free_cache_engine",
    KnobKey(knob=Knob.EAGER_ENGINE): f"{ROLLOUT}.enforce_eager",
    KnobKey(knob=Knob.ENGINE_MAX_LENGTH): f"{ROLLOUT}.max_model_len",
    KnobKey(knob=Knob.PROMPT_LENGTH): "data.max_prompt_length",
    KnobKey(knob=Knob.RESPONSE_LENGTH): "data.max_response_length",
    KnobKey(knob=Knob.SAMPLES_PER_PROMPT): f"{ROLLOUT}.n",
    KnobKey(knob=Knob.GROUP_GPUS_PER_NODE): "trainer.n_gpus_per_node",
    KnobKey(knob=Knob.GROUP_NODES): "trainer.nnodes",
    KnobKey(knob=Knob.PARAM_OFFLOAD, role=RoleName.REF): "actor_rollout_ref.ref.fsdp_config.param_offload",
    KnobKey(knob=Knob.CHECKPOINTING, role=RoleName.CRITIC): "critic.model.enable_gradient_checkpointing",
    KnobKey(knob=Knob.TOKEN_BUDGET, role=RoleName.CRITIC): "critic.ppo_max_token_len_per_gpu",
    # the critic's and the log-prob passes' switches default to the actor's (``${oc.select:...}``)
    KnobKey(knob=Knob.DYNAMIC_BATCH): f"{ACTOR}.use_dynamic_bsz",
    KnobKey(knob=Knob.ENTROPY_CHUNKING, role=RoleName.ACTOR): f"{ACTOR}.fsdp_config.entropy_from_logits_with_chunking",
    KnobKey(knob=Knob.GLOBAL_BATCH): "data.train_batch_size",
}
#: A knob whose value needs a companion switch (a token budget is read only with dynamic batch size).
_COMPANION = {f"{ACTOR}.ppo_max_token_len_per_gpu": (f"{ACTOR}.use_dynamic_bsz", True)}
_PLAIN = re.compile(r"^[A-Za-z_/][\w./-]*$")


def hydra_value(value: Any) -> str:
    """``value`` as a Hydra override value that reads back to it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in ("true", "false", "null", "nan", "inf"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _prefix(typed: str) -> str:
    return typed[: len(typed) - len(typed.lstrip("+~"))]


def _overrides(run: ResolvedRun) -> list[Override]:
    out = []
    for key, value in run.values.items():
        typed = run.options.get(key, key)
        prefix = _prefix(typed)
        kind = {"++": OverrideKind.FORCE_ADD, "+": OverrideKind.ADD, "~": OverrideKind.DELETE}.get(prefix,
                                                                                               OverrideKind.SET)
        has_value = not (kind == OverrideKind.DELETE and value is None)
        out.append(Override(kind=kind, key=key, value=value, has_value=has_value, typed=typed))
    return out


def config_of(run: ResolvedRun) -> HydraConfig:
    """verl's config of ``run`` (its overrides over the release's defaults)."""
    return apply_overrides(load_table(run.version, Engine.DP), _overrides(run))


#: verl_run by (release, overrides): the planner rebuilds the same runs many times; both results are immutable.
_RUNS: dict[tuple[str, str], tuple[VerlRun, HydraConfig]] = {}
_RUNS_SIZE = 256


def verl_run(run: ResolvedRun) -> tuple[VerlRun, HydraConfig]:
    """The typed run and its config."""
    overrides = _overrides(run)
    key = (run.version, repr(overrides))
    hit = _RUNS.get(key)
    if hit is None:
        config = apply_overrides(load_table(run.version, Engine.DP), overrides)
        hit = (build_run(config), config)
        if len(_RUNS) >= _RUNS_SIZE:
            _RUNS.clear()
        _RUNS[key] = hit
    return hit


def _resolved(config: HydraConfig, overrides: Sequence[Override], version: str, command: str,
              notes: tuple[str, ...] = ()) -> ResolvedRun:
    verl = build_run(config)
    values: dict[str, Any] = {}
    options: dict[str, str] = {}
    for o in overrides:
        values.pop(o.key, None)
        value = config.get(o.key) if o.has_value and o.key in config.values else o.value
        values[o.key] = value
        options[o.key] = o.typed
    group = GpuGroup(name="all", num_nodes=verl.nnodes, gpus_per_node=verl.n_gpus_per_node)
    return ResolvedRun(script=MODULE, values=values, group=group, version=version, command=command,
                       notes=notes + tuple(unmodelled_notes(config)), options=options, framework="verl")


def _sizes_note(run: VerlRun) -> str | None:
    """The worst-case note of a packed run without a token budget."""
    a = run.actor
    if not a.model.use_remove_padding or a.update.use_dynamic_bsz:
        return None
    return ("with use_remove_padding and no token budget, memory follows the data's real lengths: this verdict "
            f"is for the worst case, every sequence at data.max_prompt_length + data.max_response_length = "
            f"{run.max_prompt_length + run.max_response_length} tokens; actor_rollout_ref.actor.use_dynamic_bsz=true "
            "with actor_rollout_ref.actor.ppo_max_token_len_per_gpu=N (and the log_prob_/ref token budgets) bounds "
            "it. verl's own example scripts often fit only because their data (e.g. GSM8K) is much shorter")


class Verl:
    """verl 0.8 and 0.9: FSDP workers, vLLM/SGLang rollout, the hybrid engine."""

    name = "verl"
    versions = VERSIONS

    def resolve_command(self, command: str | Sequence[str], *, version: str | None = None,
                        whole_run: bool = True) -> ResolvedRun:
        """A ``python3 -m verl.trainer.main_ppo ...`` command or script → the run."""
        text = command if isinstance(command, str) else shlex.join(command)
        release = normalize_version(version) if version else LATEST
        invocation = single_invocation(text)
        config = read_config(invocation, release)
        one_line = text if isinstance(command, str) and "\n" not in text else \
            f"python3 -m {MODULE} " + " ".join(shlex.quote(f"{o.typed}={hydra_value(o.value)}" if o.has_value
                                                           else o.typed) for o in invocation.overrides)
        return _resolved(config, invocation.overrides, release, one_line, invocation.notes)

    def command_for(self, model: str, method: str, options: Sequence[str] = (), *, gpus: int | None = None,
                    nodes: int | None = None, gpus_per_node: int | None = None) -> list[str]:
        """``python3 -m verl.trainer.main_ppo`` with the model, the method's estimator, verl's quickstart fills
        and ``options`` (Hydra words); ``--gpus``/``--nodes``/``--gpus-per-node`` as trainer keys."""
        run_for(model, method, options)  # the method's own error first
        from memplan.frameworks.verl.run import METHOD_ESTIMATORS, Method

        words = [f"actor_rollout_ref.model.path={model}", f"critic.model.path={model}",
                 f"algorithm.adv_estimator={METHOD_ESTIMATORS[Method(method)]}"]
        given = {parse_override(w).key for w in options}
        words += [w for w in ESTIMATE_FILL if parse_override(w).key not in given]
        per_node = gpus_per_node or (min(gpus, 8) if gpus else None)
        if gpus is not None and per_node:
            words.append(f"trainer.nnodes={max(gpus // per_node, 1)}")
        elif nodes is not None:
            words.append(f"trainer.nnodes={nodes}")
        if per_node:
            words.append(f"trainer.n_gpus_per_node={per_node}")
        return ["python3", "-m", MODULE, *words, *options]

    def gpus_note(self, gpus: int | None, gpus_per_node: int | None) -> str | None:
        """How ``--gpus`` was laid out."""
        if gpus and gpus > (gpus_per_node or 8):
            per = gpus_per_node or 8
            return f"--gpus {gpus}: trainer.nnodes={gpus // per} × trainer.n_gpus_per_node={per}"
        return None

    def estimate_run(self, run: ResolvedRun, *, gpu: Gpu | None, host_ram_bytes: int | None,
                     logprob_impl: LogProbImpl = LogProbImpl.FLASH_ATTN_TRITON) -> Estimate:
        """The hybrid-engine job of ``run``, estimated, with the start-up/wake-up and worst-case notes."""
        from memplan.frameworks.verl.job import hybrid_job
        from memplan.jobs.hybrid_estimate import estimate_hybrid

        try:
            verl, _config = verl_run(run)
            extra: tuple[str, ...] = ()
            if gpu is None:
                gpu = resolve_gpu(DEFAULT_GPU, location="--gpu")
                extra = (f"the rollout engine sizes its KV cache from the GPU's memory: no --gpu given, assumed "
                         f"{DEFAULT_GPU}",)
                judged = False
            else:
                judged = True
            hj = hybrid_job(verl, run.command, gpu_memory_mib=gpu.capacity_bytes >> 20, logprob_impl=logprob_impl)
            est, figures = estimate_hybrid(hj, gpu=gpu, host_ram_bytes=host_ram_bytes)
        except ConfigError as exc:
            raise self.as_typed(exc, run) from None
        notes = list(run.notes) + list(extra) + _notes(verl, est, figures)
        if not judged:
            est = replace(est, devices=tuple(replace(d, capacity_bytes=None) for d in est.devices))
        return replace(est, notes=tuple(notes))

    def emit(self, run: ResolvedRun) -> str:
        """``python3 -m verl.trainer.main_ppo key=value ...`` that reads back to ``run``."""
        words = []
        for o in _overrides(run):
            words.append(o.typed if not o.has_value else f"{o.typed}={hydra_value(o.value)}")
        return f"python3 -m {MODULE} " + " ".join(shlex.quote(w) for w in words)

    def knob_keys(self) -> Mapping[KnobKey, str]:
        """The knobs verl has, each with its key."""
        return KNOBS

    def apply(self, run: ResolvedRun, settings: Mapping[KnobKey, KnobValue]) -> ResolvedRun:
        """``run`` with knob ``settings`` (a token budget also turns dynamic batch size on)."""
        values: dict[str, Any] = {}
        for knob, value in settings.items():
            key = KNOBS.get(knob)
            if key is None:
                raise ConfigError("--framework", f"verl has no knob {knob.knob.value}")
            values[key] = value
            if key in _COMPANION and value is not None:
                values[_COMPANION[key][0]] = _COMPANION[key][1]
        return self.with_values(run, values)

    def with_values(self, run: ResolvedRun, values: Mapping[str, Any]) -> ResolvedRun:
        """``run`` with ``values`` as overrides (a key verl's table lacks is added with ``++``).

        The critic's token budget (``critic.ppo_max_token_len_per_gpu``, the knob) is read by the legacy
        trainer; the V1 trainer (``trainer.use_v1``, 0.9's default) reads ``ppo_infer_max_token_len_per_gpu``
        instead (see ``CriticRun.update``), so a changed budget is written to both unless the user set that one."""
        values = _mirror_critic_budget(run, values)
        table = load_table(run.version, Engine.DP)
        options = dict(run.options)
        for key in values:
            if key not in options:
                options[key] = key if key in table.keys else f"++{key}"
        new = replace(run, values={**run.values, **values}, options=options)
        verl, _ = verl_run(new)
        return replace(new, group=GpuGroup(name="all", num_nodes=verl.nnodes, gpus_per_node=verl.n_gpus_per_node),
                       command=self.emit(new))

    def plan_run(self, model: str, method: str, *, options: Sequence[str], keep: Sequence[str],
                 version: str | None, searched: Callable[[bool], Collection[KnobKey]]) -> PlanRun:
        """frameworks/verl/plan.py ``plan_run``."""
        from memplan.frameworks.verl.plan import plan_run
        return plan_run(model, method, options=options, keep=keep, version=version, searched=searched)

    def changes(self, run: ResolvedRun, base: Estimate | None) -> list[Change]:
        """Single changes worth trying, in order: offload, smaller micro batch or a token budget, a lower engine
        share, engine TP, checkpointing, chunked entropy."""
        verl, _ = verl_run(run)
        a = verl.actor
        out: list[Change] = []

        def add(key: str, value: Any) -> None:
            if run.values.get(key, None) == value:
                return
            updates = [(key, value)] + ([_COMPANION[key]] if key in _COMPANION else [])
            text = " ".join(f"{k}={hydra_value(v)}" for k, v in updates)
            out.append(Change(text=text, updates=tuple(updates)))

        if not a.fsdp.optimizer_offload:
            add(f"{ACTOR}.fsdp_config.optimizer_offload", True)
        if not a.fsdp.param_offload:
            add(f"{ACTOR}.fsdp_config.param_offload", True)
        if verl.critic is not None and not verl.critic.fsdp.optimizer_offload:
            add("critic.fsdp.optimizer_offload", True)
        if not a.update.use_dynamic_bsz and (a.update.micro_batch_size_per_gpu or 1) > 1:
            add(f"{ACTOR}.ppo_micro_batch_size_per_gpu", max((a.update.micro_batch_size_per_gpu or 1) // 2, 1))
        if a.update.use_dynamic_bsz:
            longest = verl.max_prompt_length + verl.max_response_length
            half = max(a.update.max_token_len_per_gpu // 2, longest)
            if half < a.update.max_token_len_per_gpu:
                add(f"{ACTOR}.ppo_max_token_len_per_gpu", half)
        lp = verl.actor.log_prob
        if not lp.use_dynamic_bsz and (lp.micro_batch_size_per_gpu or 1) > 1:
            add(f"{ROLLOUT}.log_prob_micro_batch_size_per_gpu", max((lp.micro_batch_size_per_gpu or 1) // 2, 1))
        gmu = verl.rollout.gpu_memory_utilization
        if gmu > 0.3:
            add(f"{ROLLOUT}.gpu_memory_utilization", round(gmu - 0.1, 2))
        tp = verl.rollout.tensor_parallel_size
        if tp * 2 <= verl.n_gpus_per_node:
            add(f"{ROLLOUT}.tensor_model_parallel_size", tp * 2)
        if not a.model.enable_gradient_checkpointing:
            add("actor_rollout_ref.model.enable_gradient_checkpointing", True)
        if not a.entropy.from_logits_with_chunking and not a.model.use_fused_kernels:
            add(f"{ACTOR}.fsdp_config.entropy_from_logits_with_chunking", True)
        return out

    def as_typed(self, exc: ConfigError, run: ResolvedRun) -> ConfigError:
        """``exc`` naming the key as the user typed it."""
        typed = run.options.get(exc.location)
        return ConfigError(typed, exc.message) if typed and typed != exc.location else exc

    def flag_names(self) -> tuple[frozenset[str], frozenset[str]]:
        """Every dotted key of verl's tables (all are multi-word)."""
        from memplan.frameworks.verl import flag_names

        keys = flag_names()
        return keys, keys


_CRITIC_BUDGET, _CRITIC_INFER = "critic.ppo_max_token_len_per_gpu", "critic.ppo_infer_max_token_len_per_gpu"


def _mirror_critic_budget(run: ResolvedRun, values: Mapping[str, Any]) -> Mapping[str, Any]:
    """``values`` with a changed critic budget also as the V1 trainer's key (when that one was not set apart)."""
    budget, old = values.get(_CRITIC_BUDGET), run.values.get(_CRITIC_BUDGET)
    infer = values.get(_CRITIC_INFER, run.values.get(_CRITIC_INFER))
    if budget is None or budget == old or (infer is not None and infer != old):
        return values
    config = config_of(replace(run, values={**run.values, **values}))
    if not (config.has("trainer.use_v1") and config.get("trainer.use_v1") is True):
        return values
    return {**values, _CRITIC_INFER: budget}


def _lora_notes(verl: VerlRun) -> list[str]:
    """What of the actor's LoRA is not modelled (the adapters' states and activations are)."""
    m = verl.actor.model
    notes = []
    if m.lora_rank and not m.fsdp_lora_rank:
        notes.append("actor_rollout_ref.model.lora.rank is the Megatron key: the FSDP actor reads "
                     "actor_rollout_ref.model.lora_rank, so it is estimated as full fine-tuning (verl still drops the "
                     "reference model)")
    if m.lora_rank and not m.lora_merge:
        notes.append("the rollout engine's LoRA slots (enable_lora, max_loras 1) are not counted: they come out of "
                     "its gpu_memory_utilization budget (KV cache)")
    if verl.critic is not None and verl.critic.model.lora_rank:
        # verl wraps the value model with a CAUSAL_LM peft config (transformer_impl.py:359-368), which peft 0.21
        # refuses on a token-classification model (no prepare_inputs_for_generation): not modelled
        notes.append("critic LoRA (critic.model.lora_rank) is not modelled: the critic is estimated as full "
                     "fine-tuning")
    if m.fsdp_lora_rank and m.lora_merge:
        notes.append("actor_rollout_ref.model.lora.merge=True: the merge before each weight sync (base weights backed "
                     "up to host RAM, adapters merged in place) is not modelled")
    return notes


def _notes(verl: VerlRun, est: Estimate, figures: dict[str, int]) -> list[str]:
    """The start-up/wake-up, worst-case and not-modelled notes of an estimate."""
    gib = 1 << 30
    notes = []
    device = est.devices[0]
    generate = next((u for u in device.phases if u.phase.value == "rollout"), None)
    startup = (f"the rollout engine starts next to {figures['startup_bytes'] / gib:.1f} GiB of trainer memory per GPU "
               "(no optimizer state yet) and sizes its KV cache then")
    if device.startup_error:
        startup += f": it cannot start ({device.startup_error}); the start-up is the worse of the two"
    elif figures["adam_bytes"] and generate is not None:
        startup += (f"; from step 2 it wakes with {figures['adam_bytes'] / gib:.1f} GiB of optimizer state resident "
                    f"(generate phase: {generate.bytes / gib:.1f} GiB), the worse of the two")
    notes.append(startup)
    note = _sizes_note(verl)
    if note:
        notes.append(note)
    notes += _lora_notes(verl)
    if verl.reward_model is not None:
        notes.append("reward.reward_model is not modelled yet: its engine's memory is not counted")
    if verl.actor.model.enable_activation_offload:
        notes.append("actor_rollout_ref.model.enable_activation_offload is not modelled yet: activations counted "
                     "on the GPU")
    return notes


FRAMEWORK = Verl()
