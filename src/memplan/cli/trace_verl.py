"""``memplan trace MODEL --framework verl ...``: measure verl's FSDP workers on real code.

``--engine fsdp-cpu``: real FSDP2 on the CPU with gloo, ``--gpus`` ranks, verl 0.9.1's wrapping, small models
(:mod:`memplan.tracing.fsdp_cpu`). ``--engine fake``: verl's log-prob and loss functions at full size under
FakeTensorMode (:mod:`memplan.tracing.verl_fake`; needs ``verl`` installed). ``--engine fake-engine``: verl's
``FSDPEngineWithLMHead`` step and ``ppo_loss`` at full size (:mod:`memplan.tracing.verl_engine`). Prints the
reference record (``--json``) or a per-rank table. Torch is imported only inside :func:`run_verl`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: Engines of the verl traces.
VERL_ENGINES = ("fsdp-cpu", "fake", "fake-engine")


def register_verl(parser: argparse.ArgumentParser) -> None:
    """The options of ``--framework verl`` (verl's own key in each help)."""
    group = parser.add_argument_group("verl (--framework verl)")
    group.add_argument("--micro_batch_size", dest="verl_micro_batch_size", type=int, default=None,
                       help="sequences per rank per forward (actor.ppo_micro_batch_size_per_gpu; default 2)")
    group.add_argument("--prompt_length", dest="verl_prompt_length", type=int, default=None,
                       help="prompt tokens per sequence (data.max_prompt_length; default 128)")
    group.add_argument("--response_length", dest="verl_response_length", type=int, default=None,
                       help="response tokens per sequence (data.max_response_length; default 128)")
    group.add_argument("--no_reshard_after_forward", dest="verl_reshard_after_forward", action="store_false",
                       help="actor.fsdp_config.reshard_after_forward=False")
    group.add_argument("--no_gradient_checkpointing", dest="verl_gradient_checkpointing", action="store_false",
                       help="actor_rollout_ref.model.enable_gradient_checkpointing=False")
    group.add_argument("--entropy", dest="verl_entropy", action="store_true",
                       help="the log-prob forward also computes the entropy (calculate_entropy); with --engine "
                            "fake-engine: the update does (calculate_entropy or entropy_coeff != 0), the log-prob "
                            "pass always does (verl's trainer sets it)")


def verl_request(args: argparse.Namespace) -> Any:
    """The typed request of a ``--framework verl`` trace."""
    from memplan.errors import ConfigError
    from memplan.tracing.fsdp_request import FsdpRole, FsdpTraceRequest, check_fsdp_request

    if args.engine not in VERL_ENGINES:
        raise ConfigError("--engine", f"--framework verl traces with {' or '.join(VERL_ENGINES)}, not {args.engine}")
    role = args.role or "actor"
    if role not in ("actor", "ref"):
        raise ConfigError("--role", f"--framework verl traces the actor or the ref worker, not {role}")
    request = FsdpTraceRequest(
        model=args.model, role=FsdpRole(role), world_size=args.gpus,
        micro_batch_size=args.verl_micro_batch_size or 2, prompt_length=args.verl_prompt_length or 128,
        response_length=args.verl_response_length or 128, reshard_after_forward=args.verl_reshard_after_forward,
        gradient_checkpointing=args.verl_gradient_checkpointing, entropy=args.verl_entropy)
    check_fsdp_request(request)
    return request


def run_verl(args: argparse.Namespace, progress: Any) -> int:
    """Run a verl trace and print its record (``--json``) or a table per rank."""
    from memplan.tracing.config import load_config_dict

    request = verl_request(args)
    load_config_dict(request.model)  # a misspelt model fails before torch is imported
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        from memplan.cli.trace import MISSING_EXTRA

        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    from memplan.cli import render

    if args.engine == "fsdp-cpu":
        from memplan.tracing.fsdp_cpu import run_fsdp_cpu

        record = run_fsdp_cpu(request, progress)
    elif args.engine == "fake-engine":
        import importlib.util

        missing = [m for m in ("verl", "tensordict", "datasets") if importlib.util.find_spec(m) is None]
        if missing:
            print(f"--engine fake-engine needs {', '.join(missing)} importable (validation/verl_fake/README.md "
                  "gives the install)", file=sys.stderr)
            return 2
        from memplan.tracing.verl_engine import run_verl_engine

        record = run_verl_engine(request, progress)
    else:
        from memplan.tracing.verl_fake import run_verl_fake

        record = run_verl_fake(request, progress)
    if args.json:
        render.print_json(record)
    else:
        print(record_text(record, render))
    return 0


def record_text(record: dict[str, Any], render: Any) -> str:
    """Per rank: the steady iteration's phases by category."""
    lines = [f"traced {record['command']}", ""]
    for rank in record["measured"]["ranks"]:
        steady = rank["iterations"][max(rank["iterations"], key=int)]
        categories = [c for c in next(iter(steady.values())) if c != "total"
                      and any(snap.get(c) for snap in steady.values())]
        rows = [[phase, *(render.human_bytes(snap[c]) for c in categories), render.human_bytes(snap["total"])]
                for phase, snap in steady.items()]
        lines.append(f"rank {rank['rank']}: peak {render.gib(rank['peak_bytes'])} ({rank['peak_bytes']:,} B) in "
                     f"{rank['peak_phase']}")
        lines.append(render.table(["phase", *categories, "total"], rows, "l" + "r" * (len(categories) + 1)))
        lines.append("")
    lines += ["emulated:"] + [f"  - {e}" for e in record["emulated"]]
    lines += ["notes:"] + [f"  - {n}" for n in record["notes"]]
    return "\n".join(lines)
