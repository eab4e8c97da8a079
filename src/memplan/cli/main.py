"""``memplan`` entry point: registers one sub-command per module and maps errors to exit status 2.

Each command module exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a
callable taking the parsed arguments and returning the exit status. Command modules import their
heavy dependencies inside ``func`` so ``memplan --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from memplan import __version__
from memplan.errors import MemplanError

#: Command modules, in the order ``--help`` lists them.
COMMAND_MODULES = ("estimate", "check", "plan", "models", "gpus", "serve", "trace", "validate")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2), as for every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    import importlib

    parser = _Parser(prog="memplan", description=(
        "Predict GPU memory per device and host RAM per node for LLM fine-tuning and RLHF "
        "(OpenRLHF: SFT, RM, DPO, PPO/GRPO with DeepSpeed and vLLM), phase by phase."))
    parser.add_argument("--version", action="version", version=f"memplan {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"memplan.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "accepts_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse's own errors and --help/--version
        return exc.code if isinstance(exc.code, int) else 2
    args.extra = extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        status: int = args.func(args)
    except MemplanError as exc:
        print(f"memplan: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memplan: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return status
