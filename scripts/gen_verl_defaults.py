"""Generate memplan's verl default tables (TOML) from the flattened trainer configs inside verl's wheels.

verl ships, next to its Hydra config groups, one flattened copy of the composed PPO config per model
engine: ``verl/trainer/config/_generated_ppo_trainer.yaml`` (``model_engine=dp``, FSDP) and
``_generated_ppo_{megatron,torchtitan,veomni}_trainer.yaml`` (each is ``print_cfg.py --cfg job
model_engine=<engine>``, per the file's own header). This script reads those files from the wheel (a zip)
and writes one table per (version, engine): every leaf as its full dotted Hydra path with its default,
its kind, and its line in the yaml. Interpolations (``${...}``) are kept as typed; memplan resolves them
after the user's overrides, as OmegaConf does.

Data only. Run (the wheels come from PyPI, e.g. ``pip download verl==0.9.1 --no-deps -d /tmp/verl-whl``):

    python scripts/gen_verl_defaults.py /tmp/verl-whl/verl-0.9.1-py3-none-any.whl \\
        /tmp/verl-whl/verl-0.8.0-py3-none-any.whl src/memplan/frameworks/verl/data
"""
import hashlib
import json
import math
import re
import sys
import zipfile
from pathlib import Path

import yaml

ENGINES = {"dp": "_generated_ppo_trainer.yaml", "megatron": "_generated_ppo_megatron_trainer.yaml",
           "torchtitan": "_generated_ppo_torchtitan_trainer.yaml", "veomni": "_generated_ppo_veomni_trainer.yaml"}
CONFIG_DIR = "verl/trainer/config/"
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _leaves(node, prefix):
    """(dotted key, yaml node) for every leaf; an empty mapping is a leaf of kind dict."""
    if isinstance(node, yaml.MappingNode) and node.value:
        for key_node, value_node in node.value:
            yield from _leaves(value_node, f"{prefix}.{key_node.value}" if prefix else key_node.value)
    else:
        yield prefix, node


def _kind(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "interpolation" if "${" in value else "str"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "dict"
    raise TypeError(value)


def _toml(value):
    """A TOML value (strings as JSON strings, which TOML's basic strings accept)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (int, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def _key(key):
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _has_null(value):
    if value is None:
        return True
    if isinstance(value, list):
        return any(_has_null(v) for v in value)
    if isinstance(value, dict):
        return any(_has_null(v) for v in value.values())
    return False


def table(wheel: Path, engine: str) -> tuple[str, str]:
    with zipfile.ZipFile(wheel) as archive:
        version = archive.read("verl/version/version").decode().strip()
        name = CONFIG_DIR + ENGINES[engine]
        text = archive.read(name).decode()
    digest = hashlib.sha256(text.encode()).hexdigest()
    root = yaml.compose(text)
    rows = []
    for key, node in _leaves(root, ""):
        value = yaml.safe_load(yaml.serialize(node))
        kind = _kind(value)
        row = [f"kind = {json.dumps(kind)}"]
        if kind != "null":
            if _has_null(value):
                row.append(f"default_json = {json.dumps(json.dumps(value))}")
            else:
                row.append(f"default = {_toml(value)}")
        row.append(f"line = {node.start_mark.line + 1}")
        rows.append(f"{json.dumps(key)} = {{ {', '.join(row)} }}")
    header = (f"# verl {version} defaults, model_engine={engine}: every leaf of {name}\n"
              f"# read from {wheel.name} (PyPI) by scripts/gen_verl_defaults.py; do not edit.\n"
              "# Key = full dotted Hydra path. kind: null/bool/int/float/str/list/dict/interpolation\n"
              "# (an interpolation is kept as typed and resolved after the overrides). A null default has\n"
              "# no `default`; a list or dict holding nulls has `default_json`. `line` = line in the yaml.\n\n"
              f'version = "{version}"\nengine = "{engine}"\nwheel = "{wheel.name}"\nsource = "{name}"\n'
              f'sha256 = "{digest}"\n\n[keys]\n')
    return version, header + "\n".join(rows) + "\n"


def main() -> None:
    *wheels, out = sys.argv[1:]
    for wheel in map(Path, wheels):
        for engine in ENGINES:
            version, text = table(wheel, engine)
            path = Path(out) / f"defaults_{version}_{engine}.toml"
            path.write_text(text)
            print(path, text.count("\n"))


if __name__ == "__main__":
    main()
