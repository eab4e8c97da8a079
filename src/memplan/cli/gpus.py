"""``memplan gpus``: the GPU catalogue (placeholder until the catalogue lands)."""

from __future__ import annotations

import argparse


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``gpus`` command."""
    parser = subparsers.add_parser("gpus", help="list the GPU catalogue")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the catalogue."""
    print("GPU catalogue: not yet available")
    return 0
