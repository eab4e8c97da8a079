"""``memplan trace MODEL --method METHOD ...``: measure one OpenRLHF training step on the real modeling code.

Single-model methods (sft, rm, dpo, kto, kd, prm) trace their trainer's step. RL methods (ppo, grpo,
reinforce, rloo: ``train_ppo_ray``) trace one role with ``--role actor|critic|ref|reward``: its
make-experience forward and, for the actor and critic, its training step.

``--framework verl`` traces verl's FSDP workers instead (:mod:`memplan.cli.trace_verl`): real FSDP2 on the
CPU (``--engine fsdp-cpu``), verl's log-prob and loss code at full size (``--engine fake``) or verl's engine step
itself at full size (``--engine fake-engine``).

Needs the optional ``trace`` extra (torch, transformers, peft, deepspeed), imported only inside :func:`run`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from memplan.cli.trace_verl import register_verl

MISSING_EXTRA = "memplan: error: memplan trace needs the trace extra: pip install 'memplan[trace]'"

#: Methods with one model group (``deepspeed`` launcher scripts) and the RL family (``train_ppo_ray``).
SINGLE_METHODS = ("sft", "rm", "dpo", "kto", "kd", "prm")
RL_METHODS = ("ppo", "grpo", "reinforce", "rloo")

#: dest -> flag of the options only RL methods take (all default to None, meaning "not given").
RL_ONLY = {"role": "--role", "micro_rollout_batch_size": "--micro_rollout_batch_size",
           "prompt_max_len": "--prompt_max_len", "generate_max_len": "--generate_max_len",
           "init_kl_coef": "--init_kl_coef", "use_kl_loss": "--use_kl_loss",
           "entropy_loss_coef": "--entropy_loss_coef", "reward_pretrain": "--reward_pretrain",
           "critic_pretrain": "--critic_pretrain"}


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``trace`` command."""
    parser = subparsers.add_parser(
        "trace", help="measure one training step on the real modeling code (optional trace extra)",
        description="Run the method's OpenRLHF training step twice on the real Hugging Face modeling code and "
                    "measure memory per phase and category with PyTorch's MemTracker. --engine fake: full size "
                    "under FakeTensorMode (no memory used). --engine deepspeed-cpu: real DeepSpeed on the CPU "
                    "accelerator, one process per rank (small models only). RL methods (ppo, grpo, reinforce, "
                    "rloo) trace one role of train_ppo_ray with --role: its make-experience forward and, for the "
                    "actor and critic, its training step (fake engine). --framework verl: verl's FSDP workers, with "
                    "--engine fsdp-cpu (real FSDP2 on the CPU, --gpus ranks), --engine fake (verl's log-prob and "
                    "loss code at full size) or --engine fake-engine (verl's FSDPEngineWithLMHead step and ppo_loss "
                    "at full size); the last two need verl installed.")
    parser.add_argument("model", metavar="MODEL", help="preset name, hub id, config.json or its directory")
    parser.add_argument("--framework", default="openrlhf", choices=["openrlhf", "verl"],
                        help="whose step code to trace (default openrlhf; verl: see the verl options)")
    parser.add_argument("--method", default=None, choices=[*SINGLE_METHODS, *RL_METHODS],
                        help="the OpenRLHF method (required with --framework openrlhf)")
    parser.add_argument("--engine", default="fake", choices=["fake", "deepspeed-cpu", "fsdp-cpu", "fake-engine"])
    parser.add_argument("--max_len", "--max-len", "--data.max_len", dest="max_len", type=int, default=None,
                        help="tokens per sequence (default per method: sft/kto/kd/prm 2048, rm/dpo 512)")
    parser.add_argument("--micro_train_batch_size", "--micro-train-batch-size", "--train.micro_batch_size",
                        dest="micro_train_batch_size", type=int, default=None,
                        help="sequences (pairs for rm/dpo) per rank per step (default per method)")
    parser.add_argument("--gradient_checkpointing", "--model.gradient_checkpointing_enable",
                        "--actor.gradient_checkpointing_enable", dest="gradient_checkpointing", action="store_true")
    parser.add_argument("--attn_implementation", "--ds.attn_implementation", dest="attn_implementation",
                        default="flash_attention_2", choices=["flash_attention_2", "sdpa", "eager"])
    parser.add_argument("--lora_rank", "--ds.lora.rank", dest="lora_rank", type=int, default=0)
    parser.add_argument("--lora_alpha", "--ds.lora.alpha", dest="lora_alpha", type=int, default=16)
    parser.add_argument("--target_modules", "--ds.lora.target_modules", dest="target_modules", nargs="+",
                        default=None, help="LoRA target modules (default all-linear)")
    parser.add_argument("--zero_stage", "--ds.zero_stage", dest="zero_stage", type=int, default=2)
    parser.add_argument("--adam_offload", "--ds.adam_offload", dest="adam_offload", action="store_true")
    parser.add_argument("--param_dtype", "--ds.param_dtype", dest="param_dtype", default="bf16",
                        choices=["bf16", "fp16"])
    parser.add_argument("--gpus", type=int, default=1, help="world size (ranks); deepspeed-cpu launches this many")
    parser.add_argument("--ref_pretrain", "--ref.model_name_or_path", dest="ref_pretrain", default=None,
                        help="reference model for dpo/kto (default MODEL)")
    parser.add_argument("--teacher_model", dest="teacher_model", default=None, help="teacher for kd (default MODEL)")
    parser.add_argument("--packing_samples", "--ds.packing_samples", dest="packing_samples", action="store_true")
    _register_rl(parser)
    register_verl(parser)
    parser.add_argument("--modules", type=int, nargs="?", const=2, default=0, metavar="DEPTH",
                        help="also print a per-module table, modules up to DEPTH levels deep (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.set_defaults(func=run)


def _register_rl(parser: argparse.ArgumentParser) -> None:
    """Options of the RL methods (OpenRLHF ``train_ppo_ray`` flags, legacy and 0.11 spellings)."""
    rl = parser.add_argument_group("RL methods (ppo, grpo, reinforce, rloo)")
    rl.add_argument("--role", default=None, choices=["actor", "critic", "ref", "reward"],
                    help="the model of the RL run to trace (critic: ppo only; ref: with a KL term)")
    rl.add_argument("--micro_rollout_batch_size", "--rollout.micro_batch_size", dest="micro_rollout_batch_size",
                    type=int, default=None, help="sequences per make-experience forward (default 1)")
    rl.add_argument("--prompt_max_len", dest="prompt_max_len", type=int, default=None,
                    help="prompt tokens per sequence (default 1024)")
    rl.add_argument("--generate_max_len", "--rollout.max_new_tokens", dest="generate_max_len", type=int,
                    default=None, help="generated tokens per sequence (default 1024)")
    rl.add_argument("--init_kl_coef", "--algo.kl.init_coef", dest="init_kl_coef", type=float, default=None,
                    help="KL coefficient (default 0.01; 0 without --use_kl_loss means no reference model)")
    rl.add_argument("--use_kl_loss", "--algo.kl.use_loss", dest="use_kl_loss", action="store_const", const=True,
                    default=None, help="KL against the reference as a loss term of the actor step")
    rl.add_argument("--entropy_loss_coef", "--actor.entropy_coef", dest="entropy_loss_coef", type=float,
                    default=None, help="set (even 0): the actor computes the entropy of its fp32 logits")
    rl.add_argument("--reward_pretrain", "--reward.model_name_or_path", dest="reward_pretrain", default=None,
                    help="reward model (default MODEL)")
    rl.add_argument("--critic_pretrain", "--critic.model_name_or_path", dest="critic_pretrain", default=None,
                    help="critic (default the reward model)")


def _rl_request(args: argparse.Namespace) -> Any:
    from memplan.errors import ConfigError
    from memplan.tracing.rl_config import resolve_rl_request

    unsupported = [("--max_len", args.max_len is not None), ("--lora_rank", args.lora_rank != 0),
                   ("--target_modules", args.target_modules is not None), ("--adam_offload", args.adam_offload),
                   ("--gpus", args.gpus != 1), ("--teacher_model", args.teacher_model is not None),
                   ("--packing_samples", args.packing_samples)]
    for flag, given in unsupported:
        if given:
            hint = " (give --prompt_max_len and --generate_max_len)" if flag == "--max_len" else ""
            raise ConfigError(flag, f"not supported for RL traces ({args.method}){hint}")
    return resolve_rl_request(
        model=args.model, method=args.method, role=args.role, engine=args.engine,
        prompt_max_len=args.prompt_max_len, generate_max_len=args.generate_max_len,
        micro_train_batch_size=args.micro_train_batch_size, micro_rollout_batch_size=args.micro_rollout_batch_size,
        gradient_checkpointing=args.gradient_checkpointing, attn_implementation=args.attn_implementation,
        init_kl_coef=args.init_kl_coef, use_kl_loss=bool(args.use_kl_loss), entropy_loss_coef=args.entropy_loss_coef,
        zero_stage=args.zero_stage, param_dtype=args.param_dtype, ref_pretrain=args.ref_pretrain,
        reward_pretrain=args.reward_pretrain, critic_pretrain=args.critic_pretrain)


def _request(args: argparse.Namespace) -> Any:
    from memplan.errors import ConfigError
    from memplan.tracing.config import resolve_request

    if args.method in RL_METHODS:
        return _rl_request(args)
    for dest, flag in RL_ONLY.items():
        if getattr(args, dest) is not None:
            raise ConfigError(flag, f"only for RL methods ({', '.join(RL_METHODS)}), not {args.method}")
    if args.ref_pretrain and args.teacher_model:
        raise ConfigError("--teacher_model", "give either --ref_pretrain (dpo, kto) or --teacher_model (kd)")
    return resolve_request(
        model=args.model, method=args.method, engine=args.engine, max_len=args.max_len,
        micro_train_batch_size=args.micro_train_batch_size, gradient_checkpointing=args.gradient_checkpointing,
        attn_implementation=args.attn_implementation, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        target_modules=tuple(args.target_modules) if args.target_modules else None, zero_stage=args.zero_stage,
        adam_offload=args.adam_offload, param_dtype=args.param_dtype, gpus=args.gpus,
        ref_pretrain=args.ref_pretrain or args.teacher_model, packing_samples=args.packing_samples)


def _progress(quiet: bool) -> Any:
    """One progress line on a terminal (rewritten in place), plain lines otherwise, nothing if quiet."""
    interactive = sys.stderr.isatty()

    def show(message: str) -> None:
        if quiet:
            return
        if interactive:
            sys.stderr.write(f"\r\033[Kmemplan trace: {message}")
        else:
            sys.stderr.write(f"memplan trace: {message}\n")
        sys.stderr.flush()
    return show


def _check_models(request: Any) -> None:
    """Read the config.json of every model the trace builds, before torch is imported.

    Importing torch and transformers takes seconds; a misspelt model must fail at once, with the
    loader's own message, as ``estimate`` does.
    """
    from memplan.tracing.config import TraceRequest, load_config_dict

    if isinstance(request, TraceRequest):
        names = [request.model, request.ref_pretrain]
    else:
        names = [request.role_model]
    for name in dict.fromkeys(n for n in names if n):
        load_config_dict(name)


def run(args: argparse.Namespace) -> int:
    """Resolve the request, check its models, run the engine, render the result."""
    from memplan.errors import ConfigError

    if args.framework == "verl":
        from memplan.cli.trace_verl import run_verl

        return run_verl(args, _progress(args.quiet))
    if args.method is None:
        raise ConfigError("--method", f"required with --framework openrlhf (one of "
                                      f"{', '.join((*SINGLE_METHODS, *RL_METHODS))})")
    if args.engine in ("fsdp-cpu", "fake-engine"):
        raise ConfigError("--engine", f"{args.engine} traces verl's FSDP workers: give --framework verl")
    request = _request(args)
    _check_models(request)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    from memplan import __version__
    from memplan.cli import render
    from memplan.tracing.result import to_estimate_json
    from memplan.tracing.runner import trace

    progress = _progress(args.quiet)
    try:
        result = trace(request, progress, module_depth=args.modules)
    finally:
        if not args.quiet and sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
    data = to_estimate_json(result, __version__)
    if args.json:
        if args.modules:
            data["trace"]["modules"] = [list(r.modules) for r in result.ranks]
        render.print_json(data)
        return 0
    print(_text(data, result, render))
    return 0


def _text(data: dict[str, Any], result: Any, render: Any) -> str:
    from memplan.tracing.track import CATEGORIES

    lines = [f"traced {data['trace']['command']}", ""]
    for role, info in data["models"].items():
        lines.append(f"  {role}: {info['name']}  {info['num_params']:,} params, {info['trainable_params']:,} trainable")
    lines.append("")
    for device, rank in zip(data["devices"], result.ranks, strict=True):
        rows = []
        for phase in rank.phases():
            _, snap = rank.phase_peak(phase)
            rows.append([phase, *(render.human_bytes(snap[c]) for c in CATEGORIES), render.human_bytes(snap["total"])])
        lines.append(f"rank {rank.rank} ({device['id']}): peak {render.gib(device['peak_bytes'])} "
                     f"({device['peak_bytes']:,} B) in {device['peak_phase']}")
        lines.append(render.table(["phase", *CATEGORIES, "total"], rows, "l" + "r" * (len(CATEGORIES) + 1)))
        if rank.modules:
            lines += ["", _modules(rank.modules, render)]
        lines.append("")
    lines += [f"engine {data['trace']['engine']}, {data['trace']['wall_seconds']} s; emulated:"]
    lines += [f"  - {e}" for e in data["trace"]["emulated"]] or ["  - nothing"]
    lines += ["notes:"] + [f"  - {n}" for n in data["trace"]["notes"]]
    return "\n".join(lines)


def _modules(rows: Any, render: Any) -> str:
    table = [[r["module"], render.human_bytes(r["param_bytes"]), render.human_bytes(r["output_bytes"]),
              render.human_bytes(r["peak_forward_bytes"]), render.human_bytes(r["peak_backward_bytes"])]
             for r in rows]
    return render.table(["module", "params", "output", "peak fwd", "peak bwd"], table, "lrrrr")
