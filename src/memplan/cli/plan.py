"""``memplan plan MODEL --method METHOD --gpu GPU``: the fewest GPUs that fit and a recommended layout."""

from __future__ import annotations

import argparse

from memplan.jobs.options import Method

EPILOG = """\
OpenRLHF flags after the options are part of the run and kept as given (--max_len 4096,
--reward_pretrain ..., --remote_rm_url ...; --prompt_max_len selects OpenRLHF 0.9);
--keep FLAG=VALUE pins a flag the planner would otherwise choose. Examples:
  memplan plan llama-2-70b --method ppo --gpu a800-80g --host-ram 1600GB
  memplan plan llama-3-8b --method dpo --gpu a100-80g --max-gpus 8 --keep zero_stage=2
  memplan plan llama-2-70b --method ppo --gpu a100-80g,h100-80g,h20-96g,rtx4090-24g

verl (--framework verl, methods ppo, grpo, reinforce, rloo): Hydra key=value overrides of
verl.trainer.main_ppo follow and are kept; --keep KEY=VALUE pins a key the planner would choose
(GPU count, rollout TP and gpu_memory_utilization, param/optimizer offload, checkpointing, chunked
entropy, use_dynamic_bsz token budget). Every role shares the GPUs (the hybrid engine). E.g.:
  memplan plan qwen2.5-7b --framework verl --method grpo --gpu h100-80g
  memplan plan qwen2.5-32b --framework verl --method ppo --gpu a100-80g data.max_response_length=4096 \\
      --keep actor_rollout_ref.rollout.tensor_model_parallel_size=4
"""


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``plan`` command."""
    parser = subparsers.add_parser(
        "plan", help="the cheapest layout that fits, and a recommended one, with launch commands", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search GPUs per role, placement, ZeRO stage, offload, checkpointing, micro batches, vLLM "
                    "engines and memory share (verl: GPU count, rollout TP and gpu_memory_utilization, offload, "
                    "checkpointing, chunked entropy, token budget); print the minimum and a recommended layout "
                    "with their commands.")
    parser.add_argument("model", metavar="MODEL", help="preset, hub id, config.json or its directory")
    parser.add_argument("--method", required=True, choices=[m.value for m in Method], metavar="METHOD",
                        help="sft, rm, dpo, kto, prm, kd, ppo, grpo, reinforce, rloo (kto, prm, kd: OpenRLHF <= 0.9, "
                             "--openrlhf-version 0.9; verl: ppo, grpo, reinforce, rloo)")
    parser.add_argument("--gpu", required=True, metavar="GPU[,GPU...]",
                        help="GPU type(s) (memplan gpus) or sizes; several, comma-separated, are compared")
    parser.add_argument("--host-ram", metavar="SIZE", help="host RAM per node, e.g. 1600GB or 1.5TiB")
    parser.add_argument("--gpus-per-node", type=int, default=8, metavar="N", help="GPUs per node (default 8)")
    parser.add_argument("--max-gpus", type=int, metavar="N", help="most GPUs a plan may use (default 512)")
    parser.add_argument("--keep", action="append", default=[], metavar="FLAG=VALUE",
                        help="pin an OpenRLHF flag, e.g. zero_stage=2 or adam_offload=false, or a verl key, e.g. "
                             "actor_rollout_ref.actor.fsdp_config.param_offload=false (repeatable)")
    parser.add_argument("--allow-lora", action="store_true", help="LoRA may be proposed to save memory")
    parser.add_argument("--openrlhf-version", metavar="V",
                        help="OpenRLHF version of the commands: 0.8, 0.9 or 0.11 (default: the latest, 0.11, unless the "
                             "method or a flag exists only in an older one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    from memplan.cli.estimate import add_framework_args
    from memplan.cli.figures import add_output_args

    add_framework_args(parser)
    add_output_args(parser)
    parser.set_defaults(func=run, accepts_extra=True)


def plan_results(model: str, method: str, gpu: str, *, host_ram: str | None = None, gpus_per_node: int = 8,
                 max_gpus: int | None = None, flags: list[str] | tuple[str, ...] = (),
                 keep: list[str] | tuple[str, ...] = (), allow_lora: bool = False, version: str | None = None,
                 framework: str = "openrlhf") -> list:
    """The plan for each GPU type of the comma-separated ``gpu`` (shared with the web API)."""
    from memplan.errors import ConfigError
    from memplan.planner import plan_gpus

    if framework != "openrlhf" and allow_lora:
        raise ConfigError("--allow-lora", f"applies to OpenRLHF plans, not {framework}")
    gpus = [g.strip() for g in gpu.split(",") if g.strip()]
    if not gpus:
        raise ConfigError("--gpu", "give at least one GPU type")
    return plan_gpus(model, method, gpus=gpus, host_ram=host_ram, gpus_per_node=gpus_per_node, max_gpus=max_gpus,
                     flags=list(flags), keep=list(keep), allow_lora=allow_lora, version=version, framework=framework)


def json_report(results: list) -> dict:
    """The ``--json`` object: one plan result, or the comparison of several GPU types."""
    from memplan.cli import render

    return render.plan_result_json(results[0]) if len(results) == 1 else render.plan_comparison_json(results)


def run(args: argparse.Namespace) -> int:
    """Plan, then print the plans (exit 0 also when nothing fits: the answer says why)."""
    from memplan.cli import render
    from memplan.cli.figures import check_output_args

    check_output_args(args)
    from memplan.cli.estimate import framework_version

    results = plan_results(args.model, args.method, args.gpu, host_ram=args.host_ram,
                           gpus_per_node=args.gpus_per_node, max_gpus=args.max_gpus, flags=args.extra,
                           keep=args.keep, allow_lora=args.allow_lora, version=framework_version(args, args.framework),
                           framework=args.framework)
    if args.json:
        render.print_json(json_report(results))
    elif len(results) == 1:
        print(render.plan_result_text(results[0]))
    else:
        print(render.plan_comparison_text(results))
    if args.plot or args.report:
        _write_figures(results, args)
    return 0


def _write_figures(results: list, args: argparse.Namespace) -> None:
    from memplan.charts import plan_chart
    from memplan.cli import render
    from memplan.cli.figures import write_outputs

    text = render.plan_result_text(results[0]) if len(results) == 1 else render.plan_comparison_text(results)
    commands = [p.command for r in results for p in (r.minimum, r.recommended) if p is not None]
    write_outputs(args, plan_chart(results), title=f"memplan plan: {results[0].model} {results[0].method}",
                  text=text, commands=commands)
