"""``memplan estimate MODEL --method METHOD [OpenRLHF flags | --framework verl key=value ...]``: per-GPU and
per-node memory of one run."""

from __future__ import annotations

import argparse

from memplan.jobs.options import Method

EPILOG = """\
Any OpenRLHF flag of the method's script may follow, in either spelling (--zero_stage 3 or
--ds.zero_stage 3), e.g.:
  memplan estimate llama-3-8b --method sft --gpus 8 --gpu a100-80g --zero_stage 3 --gradient_checkpointing
Defaults and semantics are OpenRLHF's for the script and version: the latest release (0.11) unless
--openrlhf-version says otherwise, or the script or a flag exists only in an older release (then the
newest release that has them, with a note). kto, prm and kd exist only up to OpenRLHF 0.9.

verl (--framework verl, methods ppo, grpo, reinforce, rloo): Hydra overrides of verl.trainer.main_ppo follow,
over verl's defaults for --framework-version (default 0.9.1; 0.9.0 and 0.8.0 too), e.g.:
  memplan estimate qwen2.5-7b --framework verl --method grpo --gpu h100-80g trainer.n_gpus_per_node=8 \\
      actor_rollout_ref.actor.use_kl_loss=true actor_rollout_ref.rollout.gpu_memory_utilization=0.6
"""

#: Frameworks ``--framework`` accepts.
FRAMEWORKS = ("openrlhf", "verl")


def add_framework_args(parser: argparse.ArgumentParser, *, default: str | None = "openrlhf") -> None:
    """--framework and --framework-version (shared with check and plan)."""
    parser.add_argument("--framework", choices=FRAMEWORKS, default=default,
                        help="the framework that runs the command: openrlhf (default) or verl"
                             + ("" if default else " (default: read from the command)"))
    parser.add_argument("--framework-version", metavar="V",
                        help="verl version whose defaults apply: 0.8, 0.9.0 or 0.9.1 (default 0.9.1); for "
                             "OpenRLHF the same as --openrlhf-version")


def framework_version(args: argparse.Namespace, framework: str) -> str | None:
    """The version option that applies to ``framework`` (``--openrlhf-version`` keeps working for OpenRLHF)."""
    from memplan.errors import ConfigError

    given = getattr(args, "framework_version", None)
    if framework == "openrlhf":
        if given is not None and args.openrlhf_version is not None and given != args.openrlhf_version:
            raise ConfigError("--framework-version", "differs from --openrlhf-version; give one")
        return args.openrlhf_version if args.openrlhf_version is not None else given
    if args.openrlhf_version is not None:
        raise ConfigError("--openrlhf-version", f"applies to OpenRLHF; for {framework} use --framework-version")
    return given



def add_capacity_args(parser: argparse.ArgumentParser) -> None:
    """--gpu, --host-ram, --json, --explain, --openrlhf-version (shared with check)."""
    parser.add_argument("--gpu", metavar="GPU", help="GPU type (memplan gpus) or a size such as 80GiB")
    parser.add_argument("--host-ram", metavar="SIZE", help="host RAM per node, e.g. 1600GB or 1.5TiB")
    parser.add_argument("--openrlhf-version", metavar="V",
                        help="OpenRLHF version to apply: 0.8, 0.9 or 0.11 (default: the latest, 0.11, unless the "
                             "method (script) or a flag exists only in an older one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--explain", action="store_true", help="list every term with its source")
    from memplan.cli.figures import add_output_args

    add_output_args(parser)


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``estimate`` command."""
    parser = subparsers.add_parser(
        "estimate", help="GPU and host memory of one training run", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Predict peak GPU memory per device and host RAM per node, phase by phase.")
    parser.add_argument("model", metavar="MODEL", help="preset, hub id, config.json or its directory")
    parser.add_argument("--method", required=True, choices=[m.value for m in Method], metavar="METHOD",
                        help="sft, rm, dpo, kto, prm, kd (kto, prm, kd: OpenRLHF <= 0.9, --openrlhf-version 0.9); "
                             "ppo, grpo, reinforce, rloo: RL estimator (OpenRLHF or verl)")
    parser.add_argument("--gpus", type=int, metavar="N",
                        help="GPUs in total (nodes = N / --gpus-per-node, default 8 per node; "
                             "default one node of 8)")
    parser.add_argument("--nodes", type=int, metavar="N", help="nodes (instead of --gpus)")
    parser.add_argument("--gpus-per-node", type=int, metavar="N", help="GPUs per node (default 8)")
    add_capacity_args(parser)
    add_framework_args(parser)
    parser.set_defaults(func=run, accepts_extra=True)


def json_report(run_: object, est: object, gpu: object, host_bytes: int | None,
                suggestions: list | None = None) -> dict:
    """The ``--json`` object of an estimate: the JSON contract plus the suggestions when it does not fit
    comfortably (shared with ``check`` and the web API, so all three answer alike). ``suggestions``:
    already computed ones (each costs many estimates), else computed here."""
    from memplan.jobs.report import estimate_json

    if suggestions is None:
        suggestions = _suggestions(run_, est, gpu, host_bytes)
    data = estimate_json(est)  # type: ignore[arg-type]
    data["suggestions"] = [{"change": s.change, "saving_bytes": s.saving_bytes,
                            "effects": [{"change": c, "saving_bytes": b} for c, b in getattr(s, "effects", ())],
                            "max_reserved_bytes": s.max_reserved_bytes,
                            "verdict": str(s.estimate.verdict) if s.estimate.verdict else None}
                           for s in suggestions]
    return data


def _suggestions(run_: object, est: object, gpu: object, host_bytes: int | None) -> list:
    from memplan.advice import suggest
    from memplan.jobs.result import Verdict

    if gpu is None or est.verdict not in (Verdict.OOM, Verdict.TIGHT):  # type: ignore[attr-defined]
        return []
    return suggest(run_, est, gpu=gpu, host_ram_bytes=host_bytes)  # type: ignore[arg-type]


def report(run_: object, est: object, args: argparse.Namespace) -> int:
    """Print an estimate (and suggestions when it does not fit); shared with ``check``."""
    from memplan.cli import render

    gpu, host_bytes = args._capacity
    suggestions = _suggestions(run_, est, gpu, host_bytes)  # once: each costs many estimates
    if args.json:
        render.print_json(json_report(run_, est, gpu, host_bytes, suggestions))
    else:
        print(render.estimate_text(est, suggestions, explain=args.explain))
    if getattr(args, "plot", None) or getattr(args, "report", None):
        _write_figures(run_, est, args, suggestions)
    return 0


def _write_figures(run_: object, est: object, args: argparse.Namespace, suggestions: list) -> None:
    from memplan.charts import estimate_chart
    from memplan.cli import render
    from memplan.cli.figures import estimate_sections, write_outputs

    gpu, host_bytes = args._capacity
    data = json_report(run_, est, gpu, host_bytes, suggestions)
    text = render.estimate_text(est, suggestions)
    write_outputs(args, estimate_chart(est), title=f"memplan: {text.splitlines()[0][:120]}", text=text,
                  commands=[data["command"]], details=estimate_sections(data))


def run(args: argparse.Namespace) -> int:
    """Estimate MODEL with METHOD and the extra flags (OpenRLHF flags, or verl's Hydra overrides)."""
    from memplan.api import estimate_run, resolve_capacity, resolve_model_run
    from memplan.cli.figures import check_output_args
    from memplan.model import load_model_spec

    check_output_args(args)
    load_model_spec(args.model)
    run_ = resolve_model_run(args.model, args.method, args.extra, gpus=args.gpus, nodes=args.nodes,
                             gpus_per_node=args.gpus_per_node, version=framework_version(args, args.framework),
                             framework=args.framework)
    args._capacity = resolve_capacity(args.gpu, args.host_ram)
    est = estimate_run(run_, gpu=args._capacity[0], host_ram_bytes=args._capacity[1])
    return report(run_, est, args)
