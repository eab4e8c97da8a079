"""Regenerate README.md's accuracy table from ``memplan validate``.

Replaces what lies between ``<!-- accuracy:start -->`` and ``<!-- accuracy:end -->`` in README.md with
:func:`memplan.cli.validate.markdown_block`. Without the markers it prints the block (to paste once).
``--check`` changes nothing and exits 1 when the README's block is out of date (CI runs the same check as
tests/validation/test_readme_accuracy.py).

    python scripts/update_readme_accuracy.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memplan.cli.validate import markdown_block
from memplan.validation import compare

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
START = "<!-- accuracy:start -->"
END = "<!-- accuracy:end -->"


def generated_block() -> str:
    """The block as memplan validate makes it now, from the repository's validation directory."""
    return markdown_block(compare(REPO / "validation"))


def readme_block(text: str) -> str | None:
    """What the README holds between the markers (stripped), or None without both markers."""
    if START not in text or END not in text:
        return None
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n")


def replace_block(text: str, block: str) -> str:
    """``text`` with the block between the markers replaced."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """Update (or check) README.md; print the block when the markers are absent."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's block is out of date")
    args = parser.parse_args(argv)
    block = generated_block()
    text = README.read_text(encoding="utf-8")
    current = readme_block(text)
    if current is None:
        print(f"README.md has no {START} ... {END} markers; the block to put between them:\n")
        print(block)
        return 1 if args.check else 0
    if current == block:
        print("README.md accuracy table is up to date")
        return 0
    if args.check:
        print("README.md accuracy table is out of date: run python scripts/update_readme_accuracy.py")
        return 1
    README.write_text(replace_block(text, block), encoding="utf-8")
    print("README.md accuracy table updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
