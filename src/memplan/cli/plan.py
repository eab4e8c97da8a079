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
"""


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``plan`` command."""
    parser = subparsers.add_parser(
        "plan", help="the cheapest layout that fits, and a recommended one, with launch commands", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search GPUs per role, placement, ZeRO stage, offload, checkpointing, micro batches, vLLM "
                    "engines and memory share; print the minimum and a recommended layout with their commands.")
    parser.add_argument("model", metavar="MODEL", help="preset, hub id, config.json or its directory")
    parser.add_argument("--method", required=True, choices=[m.value for m in Method], metavar="METHOD",
                        help="sft, rm, dpo, kto, prm, kd, ppo, grpo, reinforce, rloo (kto, prm, kd: OpenRLHF <= 0.9, "
                             "--openrlhf-version 0.9)")
    parser.add_argument("--gpu", required=True, metavar="GPU[,GPU...]",
                        help="GPU type(s) (memplan gpus) or sizes; several, comma-separated, are compared")
    parser.add_argument("--host-ram", metavar="SIZE", help="host RAM per node, e.g. 1600GB or 1.5TiB")
    parser.add_argument("--gpus-per-node", type=int, default=8, metavar="N", help="GPUs per node (default 8)")
    parser.add_argument("--max-gpus", type=int, metavar="N", help="most GPUs a plan may use (default 512)")
    parser.add_argument("--keep", action="append", default=[], metavar="FLAG=VALUE",
                        help="pin an OpenRLHF flag, e.g. zero_stage=2 or adam_offload=false (repeatable)")
    parser.add_argument("--allow-lora", action="store_true", help="LoRA may be proposed to save memory")
    parser.add_argument("--openrlhf-version", metavar="V",
                        help="OpenRLHF version of the commands: 0.8, 0.9 or 0.11 (default: the latest, 0.11, unless the "
                             "method or a flag exists only in an older one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run, accepts_extra=True)


def run(args: argparse.Namespace) -> int:
    """Plan, then print the plans (exit 0 also when nothing fits: the answer says why)."""
    from memplan.cli import render
    from memplan.errors import ConfigError
    from memplan.planner import plan_gpus

    gpus = [g.strip() for g in args.gpu.split(",") if g.strip()]
    if not gpus:
        raise ConfigError("--gpu", "give at least one GPU type")
    results = plan_gpus(args.model, args.method, gpus=gpus, host_ram=args.host_ram,
                        gpus_per_node=args.gpus_per_node, max_gpus=args.max_gpus, flags=args.extra,
                        keep=args.keep, allow_lora=args.allow_lora, version=args.openrlhf_version)
    if args.json:
        render.print_json(render.plan_result_json(results[0]) if len(results) == 1
                          else render.plan_comparison_json(results))
    elif len(results) == 1:
        print(render.plan_result_text(results[0]))
    else:
        print(render.plan_comparison_text(results))
    return 0
