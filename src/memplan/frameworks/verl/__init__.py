"""verl launch commands in: Hydra overrides over verl's defaults per release, read into a typed run.

* ``defaults``: every key of verl's composed PPO config at 0.8.0 and 0.9.1 (tables generated from the wheels).
* ``hydra``: Hydra's override grammar and semantics (``k=v``, ``+k``, ``++k``, ``~k``) and interpolations.
* ``command``: a command or pasted script -> the ``main_ppo`` invocation and its config.
* ``run``: the config -> ``VerlRun`` (frozen), with bounds; ``checks``: verl's own start-up asserts.
* ``unmodelled``: memory keys memplan does not model (notes) and memory-looking keys without effect.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from memplan.errors import ConfigError
from memplan.frameworks.verl.command import read_config, single_invocation
from memplan.frameworks.verl.defaults import LATEST, VERSIONS, Engine, load_table, normalize_version
from memplan.frameworks.verl.hydra import HydraConfig, Override, OverrideKind, apply_overrides, parse_override
from memplan.frameworks.verl.run import METHOD_ESTIMATORS, Method, VerlRun, build_run
from memplan.frameworks.verl.unmodelled import unmodelled_notes

#: What ``estimate MODEL --framework verl`` sets that verl's config leaves unset (``rollout.name`` is ``???``,
#: the micro batches are null and verl refuses null without use_dynamic_bsz): the values of verl's quickstart
#: (t:docs/start/quickstart.rst:94-102 at v0.9.0). Given overrides replace them.
ESTIMATE_FILL: tuple[str, ...] = (
    "actor_rollout_ref.rollout.name=vllm",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
    "critic.ppo_micro_batch_size_per_gpu=4",
)


def read_command(text: str, version: str = LATEST) -> HydraConfig:
    """The config verl runs the ``main_ppo`` call of ``text`` with (a command line or a pasted script)."""
    return read_config(single_invocation(text), normalize_version(version))


def parse_command(text: str, version: str = LATEST) -> VerlRun:
    """The typed run of the ``main_ppo`` call in ``text`` (ConfigError naming the key as typed if verl refuses it)."""
    return build_run(read_command(text, version))


def run_for(model: str, method: Method | str, overrides: Iterable[str] = (), version: str = LATEST) -> VerlRun:
    """The run ``estimate MODEL --framework verl --method METHOD key=value ...`` stands for.

    ``model`` goes to ``actor_rollout_ref.model.path`` and ``critic.model.path`` as typed; ``method`` sets
    ``algorithm.adv_estimator`` (ppo -> gae, grpo, reinforce -> reinforce_plus_plus, rloo, remax);
    ``ESTIMATE_FILL`` supplies what verl leaves unset; ``overrides`` (Hydra words) are applied last.
    """
    chosen = Method(method) if method in set(Method) else None
    if chosen is None or chosen not in METHOD_ESTIMATORS:
        raise ConfigError("--method", f"must be one of {', '.join(m.value for m in METHOD_ESTIMATORS)}, got "
                                      f"{method!r}")
    given = [parse_override(word) for word in overrides]
    set_keys = {o.key for o in given}
    fill = [parse_override(word) for word in ESTIMATE_FILL]
    base = [
        Override(kind=OverrideKind.SET, key=key, value=value, has_value=True, typed=key)
        for key, value in (("actor_rollout_ref.model.path", model), ("critic.model.path", model),
                           ("algorithm.adv_estimator", METHOD_ESTIMATORS[chosen]))
    ]
    table = load_table(normalize_version(version), Engine.DP)
    return build_run(apply_overrides(table, [*base, *(f for f in fill if f.key not in set_keys), *given]))


@cache
def flag_names() -> frozenset[str]:
    """Every dotted key of every table (all releases and engines), for the no-flag-names scan."""
    return frozenset(key for version in VERSIONS for engine in Engine for key in load_table(version, engine).keys)


__all__ = [
    "ESTIMATE_FILL", "LATEST", "VERSIONS", "Engine", "HydraConfig", "Method", "VerlRun", "flag_names",
    "parse_command", "read_command", "run_for", "unmodelled_notes",
]
