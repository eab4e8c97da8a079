"""LoRA adapters (Hu et al., arXiv:2106.09685 §4.1) as peft builds them: which linear layers get an
adapter, and the adapter tensors' sizes.

peft ``LoraLayer.update_layer`` adds ``lora_A = Linear(in_features, r, bias=False)`` and
``lora_B = Linear(r, out_features, bias=False)`` per targeted ``nn.Linear``
(huggingface/peft:src/peft/tuners/lora/layer.py@v0.21.2). ``target_modules="all-linear"`` selects
every ``nn.Linear`` except the output layer (peft ``tuners_utils._maybe_include_all_linear_layers``).
"""

from __future__ import annotations

from memplan.errors import ConfigError
from memplan.memory.activations import LinearModule
from memplan.model.params import ModuleKind, ParamModule

#: peft's special value for "every linear layer but the output head".
ALL_LINEAR = "all-linear"

#: Output layers peft's all-linear leaves out: the LM head, and the value head OpenRLHF stores as
#: ``score`` (``--value_head_prefix`` default) on critic and reward models.
OUTPUT_LAYERS = frozenset({"lm_head", "score"})

#: Module names (last path component) → the activation model's LinearModule they feed.
_ACTIVATION_MODULE = {
    "q_proj": LinearModule.Q_PROJ, "qkv_proj": LinearModule.Q_PROJ, "q_a_proj": LinearModule.Q_PROJ,
    "q_b_proj": LinearModule.Q_PROJ, "k_proj": LinearModule.K_PROJ, "kv_a_proj_with_mqa": LinearModule.K_PROJ,
    "kv_b_proj": LinearModule.K_PROJ, "v_proj": LinearModule.V_PROJ, "o_proj": LinearModule.O_PROJ,
    "gate_proj": LinearModule.GATE_PROJ, "gate_up_proj": LinearModule.GATE_PROJ, "up_proj": LinearModule.UP_PROJ,
    "down_proj": LinearModule.DOWN_PROJ,
}


def targeted_linears(tree: ParamModule, target_modules: tuple[str, ...]) -> tuple[ParamModule, ...]:
    """The ``nn.Linear`` modules peft adapts for ``target_modules`` (names or ``all-linear``).

    A module matches a name when its path equals it or ends with ``.name`` (peft's suffix rule).
    Raises ConfigError when nothing matches, as peft does ("Target modules ... not found").
    """
    linears = [m for m in tree.walk() if m.kind == ModuleKind.LINEAR]
    if ALL_LINEAR in target_modules:
        chosen = [m for m in linears if m.name not in OUTPUT_LAYERS]
    else:
        names = set(target_modules)
        chosen = [m for m in linears if m.name in names or any(m.path.endswith(f".{n}") for n in names)]
    if not chosen:
        raise ConfigError("lora.target_modules", f"no linear layer of the model matches {', '.join(target_modules)}")
    return tuple(chosen)


def adapter_tensor_numels(tree: ParamModule, target_modules: tuple[str, ...], rank: int) -> tuple[int, ...]:
    """Element counts of every ``lora_A`` (r × in) and ``lora_B`` (out × r) weight."""
    if rank < 1:
        raise ConfigError("lora.rank", f"must be >= 1 for LoRA, got {rank}")
    numels: list[int] = []
    for module in targeted_linears(tree, target_modules):
        out_features, in_features = module.tensors[0].shape
        numels += [rank * in_features, out_features * rank]
    return tuple(numels)


def adapter_shapes(tree: ParamModule, target_modules: tuple[str, ...], rank: int
                   ) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Per targeted linear (by module path): the shapes of its ``lora_A`` (r × in) and ``lora_B`` (out × r)
    weights, in the order peft registers them (after the base layer's own tensors)."""
    if rank < 1:
        raise ConfigError("lora.rank", f"must be >= 1 for LoRA, got {rank}")
    shapes: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    for module in targeted_linears(tree, target_modules):
        out_features, in_features = module.tensors[0].shape
        shapes[module.path] = ((rank, in_features), (out_features, rank))
    return shapes


def adapter_params(tree: ParamModule, target_modules: tuple[str, ...], rank: int) -> int:
    """Trainable parameters of the adapters: Σ r·(in + out) over targeted linears."""
    return sum(adapter_tensor_numels(tree, target_modules, rank))


def activation_targets(tree: ParamModule, target_modules: tuple[str, ...]) -> frozenset[LinearModule]:
    """The decoder-layer linears (as the activation model names them) that carry an adapter."""
    return frozenset(_ACTIVATION_MODULE[m.name] for m in targeted_linears(tree, target_modules)
                     if m.name in _ACTIVATION_MODULE)
