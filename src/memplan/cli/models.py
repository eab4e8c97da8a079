"""``memplan models [MODEL]``: list the bundled presets, or show one model's spec and parameter tree."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``models`` command."""
    parser = subparsers.add_parser(
        "models", help="list bundled model presets, or show one model",
        description="Without MODEL: list the bundled presets with their parameter counts. With MODEL (a preset, "
                    "a hub id, a config.json path or its directory): show its architecture and parameter tree.")
    parser.add_argument("model", nargs="?", metavar="MODEL", help="preset name, hub id, config.json or directory")
    parser.add_argument("--depth", type=int, default=2, help="levels of the parameter tree to show (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List presets or describe one model."""
    if args.model is None:
        return _list(args.json)
    return _show(args.model, args.json, args.depth)


def preset_rows() -> list[dict[str, Any]]:
    """Each bundled preset: name, hub id, model type and exact parameter count (``models --json``)."""
    from memplan.model import num_params, spec_from_config
    from memplan.model.presets import load_presets

    rows = []
    for preset in load_presets():
        spec = spec_from_config(preset.config(), name=preset.name, location=f"preset {preset.name}")
        rows.append({"name": preset.name, "hub_id": preset.hub_id, "model_type": spec.model_type,
                     "num_params": num_params(spec)})
    return rows


def _list(as_json: bool) -> int:
    from memplan.cli import render

    rows = preset_rows()
    if as_json:
        render.print_json({"models": rows})
        return 0
    print(render.table(["name", "hub id", "type", "params"],
                       [[r["name"], r["hub_id"], r["model_type"], render.count(r["num_params"])] for r in rows],
                       "lllr"))
    return 0


def spec_to_json(spec: Any) -> dict[str, Any]:
    """The ModelSpec as plain JSON values."""
    data = dataclasses.asdict(spec)
    data["layer_types"] = sorted({str(t) for t in spec.layer_types})
    data["torch_dtype"] = spec.torch_dtype.label if spec.torch_dtype else None
    return data


def _tree_json(module: Any, depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"path": module.path or "(model)", "kind": str(module.kind), "num_params": module.num_params}
    if depth > 0 and module.children:
        node["children"] = [_tree_json(c, depth - 1) for c in module.children]
    return node


def _show(model: str, as_json: bool, depth: int) -> int:
    from memplan.cli import render
    from memplan.model import largest_layer_params, load_model_spec, num_params, param_tree

    spec = load_model_spec(model)
    tree = param_tree(spec)
    if as_json:
        render.print_json({"name": spec.name, "num_params": num_params(spec),
                           "largest_layer_params": largest_layer_params(spec),
                           "spec": spec_to_json(spec), "params": _tree_json(tree, max(depth, 0) + 2)})
        return 0
    print(f"{spec.name}  ({spec.model_type})  {num_params(spec):,} parameters ({render.count(num_params(spec))})")
    print(f"  hidden {spec.hidden_size}, layers {spec.num_hidden_layers}, heads {spec.num_attention_heads} "
          f"(kv {spec.num_key_value_heads}, head_dim {spec.head_dim}), intermediate {spec.intermediate_size}, "
          f"vocab {spec.vocab_size}, tied embeddings: {'yes' if spec.tie_word_embeddings else 'no'}")
    if spec.moe is not None:
        moe = spec.moe
        print(f"  MoE: {moe.num_experts} experts (top-{moe.num_experts_per_tok}), expert width {moe.moe_intermediate_size}, "
              f"shared width {moe.shared_expert_intermediate_size}, {len(spec.moe_layers)} MoE layers")
    if spec.mla is not None:
        print(f"  MLA: q_lora_rank {spec.mla.q_lora_rank}, kv_lora_rank {spec.mla.kv_lora_rank}")
    print(f"  largest layer (DeepSpeed's definition): {largest_layer_params(spec):,} parameters")
    for note in spec.notes:
        print(f"  note: {note}")
    print()
    _print_tree(tree, depth, render)
    return 0


def _print_tree(module: Any, depth: int, render: Any, indent: int = 0) -> None:
    body = module.children[0] if module.path == "" else None
    if module.path == "":
        for child in module.children:
            _print_tree(child, depth, render, indent)
        return
    del body
    label = module.path
    if module.path == "model.layers":
        print(f"{'  ' * indent}{label:<50} {module.num_params:>16,}  ({len(module.children)} layers)")
        if depth > 1 and module.children:
            first = module.children[0]
            print(f"{'  ' * (indent + 1)}per layer (layer 0):")
            _print_tree(first, depth - 1, render, indent + 2)
            if len(module.children) > 1 and module.children[-1].num_params != first.num_params:
                print(f"{'  ' * (indent + 1)}last layer:")
                _print_tree(module.children[-1], depth - 1, render, indent + 2)
        return
    print(f"{'  ' * indent}{label:<50} {module.num_params:>16,}")
    if depth > 0:
        for child in module.children:
            _print_tree(child, depth - 1, render, indent + 1)
