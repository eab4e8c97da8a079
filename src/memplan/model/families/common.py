"""Pieces shared by the family adapters."""

from __future__ import annotations

from memplan.errors import ConfigError
from memplan.model.fields import MAX_COUNT, Fields
from memplan.model.spec import AttentionType


#: ``num_key_value_heads`` when a config leaves the key out: the ``<Family>Config`` class default
#: (huggingface/transformers v5.24.0 ``models/<family>/configuration_<family>.py``; e.g.
#: ``MistralConfig.num_key_value_heads: int = 8``). Families not listed default to ``None``, which
#: their ``__post_init__`` turns into ``num_attention_heads`` (Llama, Phi-3, DeepSeek-V2), or, for
#: DeepSeek-V3 (default 128), do not use the field: MLA has one key/value per query head.
#: An explicit ``null`` is read as ``num_attention_heads``, as ``__post_init__`` resolves it in the
#: families whose field allows ``None`` (Llama, Qwen2, Qwen3, Phi-3, DeepSeek); transformers rejects
#: a null in the others, which memplan reads the same lenient way.
DEFAULT_NUM_KEY_VALUE_HEADS = {
    "mistral": 8, "qwen2": 32, "qwen3": 32, "mixtral": 8, "qwen2_moe": 16, "qwen3_moe": 4,
    "gemma": 16, "gemma2": 4, "gemma3_text": 4,
}


def core_dims(fields: Fields, model_type: str) -> dict[str, int]:
    """hidden, layers, heads, kv heads, vocab: required in every family (a config without them is
    not a real checkpoint's; transformers would silently fill in its 7B defaults), except
    ``num_key_value_heads``, which takes the family default of ``DEFAULT_NUM_KEY_VALUE_HEADS``."""
    hidden = fields.int("hidden_size")
    layers = fields.int("num_hidden_layers", limit=MAX_COUNT)
    heads = fields.int("num_attention_heads", limit=MAX_COUNT)
    given = "num_key_value_heads" in fields._config
    kv_default = heads if given else DEFAULT_NUM_KEY_VALUE_HEADS.get(model_type, heads)
    kv_heads = fields.int("num_key_value_heads", kv_default, limit=MAX_COUNT)
    if heads % kv_heads:
        origin = "" if given else f" (transformers' {model_type} default; the config does not set it)"
        raise ConfigError(f"{fields._location}: num_key_value_heads",
                          f"{kv_heads}{origin} does not divide num_attention_heads ({heads})")
    vocab = fields.int("vocab_size")
    return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "vocab_size": vocab}


def head_dim(fields: Fields, hidden: int, heads: int, default: int | None) -> int:
    """``head_dim`` from the config, else the family default, else ``hidden // heads``
    (transformers: ``getattr(config, "head_dim", hidden_size // num_attention_heads)``)."""
    fallback = default if default is not None else hidden // heads
    if fallback < 1:
        raise ConfigError(f"{fields._location}: num_attention_heads",
                          f"{heads} heads leave no room in hidden_size {hidden}")
    return fields.int("head_dim", fallback)


def layer_types(fields: Fields, num_layers: int, default: tuple[AttentionType, ...]) -> tuple[AttentionType, ...]:
    """``layer_types`` from the config when given, else the family's default pattern."""
    given = fields.str_list("layer_types")
    if given is None:
        return default
    if len(given) != num_layers:
        raise ConfigError(f"{fields._location}: layer_types",
                          f"has {len(given)} entries for {num_layers} layers")
    try:
        return tuple(AttentionType(v) for v in given)
    except ValueError:
        raise ConfigError(f"{fields._location}: layer_types",
                          f"entries must be 'full_attention' or 'sliding_attention', got {list(given)!r}") from None


def uniform(kind: AttentionType, num_layers: int) -> tuple[AttentionType, ...]:
    """Every layer of the same attention type."""
    return (kind,) * num_layers
