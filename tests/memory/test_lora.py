"""LoRA adapter sizes against hand computation."""

from __future__ import annotations

import pytest

from memplan.errors import ConfigError
from memplan.memory import lora
from memplan.model import load_model_spec, param_tree


def test_llama2_7b_all_linear_rank_16() -> None:
    tree = param_tree(load_model_spec("llama-2-7b"))
    # per layer, r = 16: q,k,v,o: 4 × 16·(4096+4096); gate, up: 2 × 16·(4096+11008); down: 16·(11008+4096)
    per_layer = 4 * 16 * (4096 + 4096) + 3 * 16 * (4096 + 11008)
    assert per_layer == 1_249_280
    assert lora.adapter_params(tree, ("all-linear",), 16) == 32 * per_layer  # 39,976,960 (peft prints the same)


def test_named_targets_and_suffix_match() -> None:
    tree = param_tree(load_model_spec("llama-2-7b"))
    # q_proj and v_proj only, r = 8: 32 layers × 2 × 8·(4096+4096) = 4,194,304 (the classic peft example)
    assert lora.adapter_params(tree, ("q_proj", "v_proj"), 8) == 4_194_304


def test_lm_head_never_in_all_linear() -> None:
    tree = param_tree(load_model_spec("llama-2-7b"))
    assert all(m.path != "lm_head" for m in lora.targeted_linears(tree, ("all-linear",)))


def test_no_match_is_an_error() -> None:
    tree = param_tree(load_model_spec("llama-2-7b"))
    with pytest.raises(ConfigError, match="lora.target_modules"):
        lora.adapter_params(tree, ("c_attn",), 8)


def test_qwen25_7b_rank_32_all_linear_by_hand() -> None:
    """Qwen2.5-7B (hidden 3584, 4 KV heads x 128 = 512, intermediate 18944, 28 layers), r = 32 on every linear
    layer but lm_head. Per layer: q and o 32·(3584+3584) = 229,376 each; k and v 32·(3584+512) = 131,072
    each; gate, up and down 32·(3584+18944) = 720,896 each: 2,883,584; x 28 = 80,740,352."""
    tree = param_tree(load_model_spec("qwen2.5-7b"))
    assert lora.adapter_params(tree, ("all-linear",), 32) == 80_740_352
    shapes = lora.adapter_shapes(tree, ("all-linear",), 32)
    assert len(shapes) == 28 * 7
    assert shapes["model.layers.0.self_attn.k_proj"] == ((32, 3584), (512, 32))
    assert shapes["model.layers.27.mlp.down_proj"] == ((32, 18944), (3584, 32))


@pytest.mark.tracing
def test_peft_builds_the_same_adapters_for_qwen25_7b() -> None:
    """peft's own count on the model transformers builds from the preset's config, on the meta device (no
    weights): ``get_peft_model`` with verl's LoraConfig (r 32, all-linear, bias none; verl 0.9.1
    ``verl/workers/engine/fsdp/transformer_impl.py`` :359-368) gives the same trainable tensors, shape by shape."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    import json
    from pathlib import Path

    import memplan.model

    path = Path(memplan.model.__file__).parent / "presets" / "data" / "qwen2.5-7b.json"
    cfg = json.loads(path.read_text())
    config = transformers.AutoConfig.for_model(cfg.pop("model_type"),
                                               **{k: v for k, v in cfg.items() if k != "architectures"})
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    model = peft.get_peft_model(model, peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM, r=32, lora_alpha=32,
                                                       target_modules="all-linear", bias="none"))
    trained = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 80_740_352
    assert sum(p.numel() for p in model.parameters() if not p.requires_grad) == 7_615_616_512  # the frozen base
    ours = lora.adapter_shapes(param_tree(load_model_spec("qwen2.5-7b")), ("all-linear",), 32)
    prefix = "base_model.model."
    expected = {f"{prefix}{path}.lora_{ab}.default.weight": shape for path, (a, b) in ours.items()
                for ab, shape in (("A", a), ("B", b))}
    assert trained == expected
