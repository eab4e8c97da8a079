"""``memplan check -- COMMAND``: estimate an OpenRLHF or verl launch command exactly as typed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memplan.cli.estimate import add_capacity_args

EPILOG = """\
Examples:
  memplan check --gpu a100-80g -- deepspeed --num_gpus 8 --module openrlhf.cli.train_sft \\
      --pretrain meta-llama/Meta-Llama-3-8B --zero_stage 2 --gradient_checkpointing
  memplan check --gpu h100-80g -- train_sft_llama.sh        (a script file)
  cat train.sh | memplan check --gpu h100-80g -             (standard input)
  memplan check --gpu h100-80g -- python3 -m verl.trainer.main_ppo algorithm.adv_estimator=grpo \
      actor_rollout_ref.model.path=Qwen/Qwen2.5-7B-Instruct trainer.n_gpus_per_node=8 ...
  memplan check --gpu h100-80g -- run_qwen2_5-7b_grpo.sh   (a verl script: read as verl without --framework)
"""

#: Largest script accepted from a file or standard input (a launch script is a few KB).
MAX_SCRIPT_BYTES = 1 << 20


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``check`` command."""
    parser = subparsers.add_parser(
        "check", help="estimate an OpenRLHF or verl launch command as typed", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reads deepspeed/torchrun/python/ray job submit commands, line continuations and "
                    "both flag spellings; flags that change no memory are ignored, unknown ones reported.")
    add_capacity_args(parser)
    from memplan.cli.estimate import add_framework_args

    add_framework_args(parser, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                        help="the launch command, a script file, or - for standard input")
    parser.set_defaults(func=run)


def _is_file(text: str) -> bool:
    """True for an existing file; a long pasted command is not a path (ENAMETOOLONG).

    One word that is clearly meant as a script path (it names a ``.sh`` file or starts with ``/``,
    ``./``, ``../`` or ``~``) but is no regular file is refused here with what it is instead, so
    ``check -- /tmp`` says "is a directory", not "no OpenRLHF entry point found".
    """
    from memplan.errors import ConfigError

    try:
        path = Path(text).expanduser()
        if path.is_file():
            return True
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError):
        return False
    if any(c.isspace() for c in text) or not (text.endswith(".sh") or text.startswith(("/", "./", "../", "~"))):
        return False
    if is_dir:
        raise ConfigError(text, "is a directory; give a launch script file or the command itself")
    if exists:
        raise ConfigError(text, "is not a regular file; give a launch script file or the command itself")
    raise ConfigError(text, "no such file")


def _command_text(words: list[str]) -> str | list[str]:
    from memplan.errors import ConfigError

    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise ConfigError("COMMAND", "missing: give the launch command after --")
    if words == ["-"]:
        text = sys.stdin.read(MAX_SCRIPT_BYTES + 1)
    elif len(words) == 1 and _is_file(words[0]):
        path = Path(words[0]).expanduser()
        if path.stat().st_size > MAX_SCRIPT_BYTES:
            raise ConfigError(words[0], f"is larger than {MAX_SCRIPT_BYTES} bytes; not a launch script")
        text = path.read_text(encoding="utf-8", errors="replace")
    else:
        return words if len(words) > 1 else words[0]
    if len(text) > MAX_SCRIPT_BYTES:
        raise ConfigError("COMMAND", f"larger than {MAX_SCRIPT_BYTES} bytes; not a launch script")
    return text


def run(args: argparse.Namespace) -> int:
    """Estimate the command."""
    from memplan.api import estimate_run, resolve_capacity, resolve_command
    from memplan.cli.estimate import report
    from memplan.cli.figures import check_output_args

    from memplan.cli.estimate import framework_version

    check_output_args(args)
    text = _command_text(args.command)
    from memplan.frameworks import detect

    framework = args.framework or detect(text)
    run_ = resolve_command(text, version=framework_version(args, framework), framework=framework)
    args._capacity = resolve_capacity(args.gpu, args.host_ram)
    est = estimate_run(run_, gpu=args._capacity[0], host_ram_bytes=args._capacity[1])
    return report(run_, est, args)
