#!/usr/bin/env python
"""Generate the exact parameter counts memplan is checked against (validation/exact/param_counts.json).

For every bundled preset (``src/memplan/model/presets/index.toml``) and every synthetic config
(``tests/data/synthetic/*.json``) this builds the causal LM with transformers on the meta device,
never running remote code::

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))

and records

* ``num_params``: ``sum(p.numel() for p in model.parameters())`` (``parameters()`` yields a tied
  weight once, so a tied LM head is not counted twice);
* ``largest_layer_params``: DeepSpeed's "largest layer",
  ``max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())``
  (deepspeedai/DeepSpeed:deepspeed/runtime/zero/stage3.py@v0.19.8,
  ``estimate_zero3_model_states_mem_needs_all_live``);
* ``num_persistent_buffer_elements``: buffers saved in the state dict (DeepSeek-V3's
  ``e_score_correction_bias``); non-persistent ones (rotary ``inv_freq``) are left out;
* ``config`` (the file, relative to the repository root) and its ``config_sha256``, so a config that
  changes without a regenerated count fails tests/model/test_param_counts.py.

A multimodal wrapper config (``gemma3`` with a ``text_config``) is counted as its text model
(``gemma3_text``), as memplan's loader reads it.

Usage::

    python scripts/gen_param_counts.py                 # recount everything, rewrite the file
    python scripts/gen_param_counts.py --only NAME     # recount one case (``preset:x``, ``synthetic:y`` or bare name)
    python scripts/gen_param_counts.py --check         # recount and compare with the file; exit 1 on mismatch
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PRESETS_DIR = ROOT / "src" / "memplan" / "model" / "presets"
SYNTHETIC_DIR = ROOT / "tests" / "data" / "synthetic"
OUTPUT = ROOT / "validation" / "exact" / "param_counts.json"
SCRIPT = "scripts/gen_param_counts.py"
#: Wrapper configs whose language model sits under ``text_config`` (as memplan.model.loader reads them).
TEXT_CONFIG_WRAPPERS = {"gemma3": "gemma3_text"}
#: Fields recorded per case and compared by ``--check``.
COUNT_FIELDS = ("num_params", "largest_layer_params", "num_persistent_buffer_elements")


def discover_cases() -> dict[str, Path]:
    """Case name -> config file, presets first (index order), then synthetic configs (sorted)."""
    index = tomllib.loads((PRESETS_DIR / "index.toml").read_text(encoding="utf-8"))
    cases = {f"preset:{p['name']}": PRESETS_DIR / "data" / p["file"] for p in index.get("preset", [])}
    for path in sorted(SYNTHETIC_DIR.glob("*.json")):
        cases[f"synthetic:{path.stem}"] = path
    return cases


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language-model part of ``config`` (unwraps ``gemma3`` → ``gemma3_text``)."""
    model_type = config.get("model_type")
    if model_type in TEXT_CONFIG_WRAPPERS and isinstance(config.get("text_config"), dict):
        inner = dict(config["text_config"])
        inner.setdefault("model_type", TEXT_CONFIG_WRAPPERS[model_type])
        return inner
    return config


def count(config: dict[str, Any]) -> dict[str, Any]:
    """Build ``config`` with transformers on the meta device and count its parameters."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(**text_config(config))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=False)
    persistent = sum(buf.numel() for module in model.modules() for name, buf in module._buffers.items()
                     if buf is not None and name not in module._non_persistent_buffers_set)
    return {
        "model_class": type(model).__name__,
        "num_params": sum(p.numel() for p in model.parameters()),
        "largest_layer_params": max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
        "num_persistent_buffer_elements": persistent,
    }


def count_case(name: str, path: Path) -> dict[str, Any]:
    """The stored record of one case."""
    raw = path.read_bytes()
    record = count(json.loads(raw))
    record["config"] = path.relative_to(ROOT).as_posix()
    record["config_sha256"] = hashlib.sha256(raw).hexdigest()
    return record


def select(cases: dict[str, Path], only: str | None) -> dict[str, Path]:
    """All cases, or the one called ``only`` (full case name or bare preset/synthetic name)."""
    if only is None:
        return cases
    matches = {k: v for k, v in cases.items() if only in (k, k.split(":", 1)[1])}
    if not matches:
        sys.exit(f"error: no case named {only!r}; known: {', '.join(cases)}")
    return matches


def generator_info(argv: list[str]) -> dict[str, str]:
    """Versions and command that produced the file."""
    import torch
    import transformers

    return {"transformers": transformers.__version__, "torch": torch.__version__, "script": SCRIPT,
            "command": " ".join(["python", SCRIPT, *argv])}


def run(cases: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Count every case, printing one progress line each."""
    records = {}
    for i, (name, path) in enumerate(cases.items(), 1):
        start = time.perf_counter()
        records[name] = count_case(name, path)
        r = records[name]
        print(f"[{i:>3}/{len(cases)}] {name:<48} num_params={r['num_params']:>16,} "
              f"largest_layer={r['largest_layer_params']:>14,} ({time.perf_counter() - start:.1f} s)", flush=True)
    return records


def check(records: dict[str, dict[str, Any]], stored: dict[str, dict[str, Any]]) -> list[str]:
    """Differences between fresh counts and the stored ones."""
    problems = []
    for name, fresh in records.items():
        old = stored.get(name)
        if old is None:
            problems.append(f"{name}: not in {OUTPUT.relative_to(ROOT)}")
            continue
        for key in (*COUNT_FIELDS, "config", "config_sha256"):
            if fresh[key] != old.get(key):
                problems.append(f"{name}: {key} stored {old.get(key)!r}, recounted {fresh[key]!r}")
    return problems


def stale(cases: dict[str, Path], stored: dict[str, dict[str, Any]]) -> list[str]:
    """Stored cases whose preset or synthetic config no longer exists."""
    return [f"{name}: stored, but no such preset or synthetic config" for name in stored if name not in cases]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--only", metavar="NAME", help="recount one case only (preset:x, synthetic:y or a bare name)")
    parser.add_argument("--check", action="store_true", help="compare with the stored file instead of writing it")
    args = parser.parse_args(argv)
    cases = select(discover_cases(), args.only)
    stored = json.loads(OUTPUT.read_text(encoding="utf-8")) if OUTPUT.exists() else {"cases": {}}
    records = run(cases)
    if args.check:
        problems = check(records, stored["cases"])
        if args.only is None:
            problems += stale(cases, stored["cases"])
        for line in problems:
            print(f"MISMATCH {line}")
        print(f"{len(records)} case(s) checked, {len(problems)} mismatch(es)")
        return 1 if problems else 0
    merged = {**stored["cases"], **records} if args.only else records
    order = list(discover_cases())
    info = generator_info(argv)
    if args.only and "generator" in stored:
        old = stored["generator"]
        if (old["transformers"], old["torch"]) != (info["transformers"], info["torch"]):
            print(f"warning: other cases were generated with transformers {old['transformers']}, torch {old['torch']}; "
                  "rerun without --only to regenerate them all", file=sys.stderr)
        info = old  # the file as a whole still comes from the last full run
    data = {"generator": info,
            "cases": {k: merged[k] for k in sorted(merged, key=lambda k: order.index(k) if k in order else len(order))}}
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(data['cases'])} case(s) to {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
