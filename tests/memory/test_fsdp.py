"""FSDP formulas (memory/fsdp.py, memory/fsdp_transient.py) against real FSDP1/FSDP2 on the CPU, and by hand.

The real runs (tests/memory/fsdp_worker.py, one ``torch.multiprocessing`` spawn of 4 gloo ranks, about
20 s) wrap a 3-layer Llama built from tests/data/tiny/llama-tiny.json as verl does (each decoder layer,
then the root; bf16 compute, fp32 reduce, fp32 stored parameters) at shard sizes 4, 2 and 1, with
``intermediate_size`` 178 and ``vocab_size`` 515 so that dim-0 chunking and flat-parameter padding both
occur (178 and 515 are not multiples of 4). Sizes are read from the real tensors (storages, padding
included); transients from the FSDP2 tensors alive at each unshard, post-backward and reduce-scatter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from memplan.dtypes import DType
from memplan.memory.breakdown import Device, Phase, total_bytes
from memplan.memory.fsdp import (
    FsdpSharding,
    FsdpUnit,
    FsdpVersion,
    adam_states,
    fsdp1_flat_numel,
    fsdp2_local_numel,
    fsdp2_shard_numel,
    fsdp_onload_terms,
    fsdp_state_terms,
    fsdp_units,
    grad_shard_numel,
    num_optimizer_params,
    sharded_grads,
    shard_numel,
)
from memplan.memory.fsdp_transient import (
    adam_step_temporaries,
    backward_moments,
    forward_moments,
    fsdp_transient_terms,
    head_moment,
    no_sync_grads,
    reduce_output_moment,
)
from memplan.memory import lora
from memplan.model import load_model_spec
from memplan.model.loader import spec_from_config
from memplan.model.params import param_tree

HERE = Path(__file__).resolve().parent
TINY = HERE.parent / "data" / "tiny" / "llama-tiny.json"
#: Changes to the vendored tiny config that force padding at shard size 4 (see the module docstring).
PADDED = {"intermediate_size": 178, "vocab_size": 515, "num_hidden_layers": 3}
SIZES = (4, 2, 1)
#: Relative tolerance on transients (the issue's acceptance: within 5%).
TRANSIENT_TOLERANCE = 0.05


def _config() -> dict[str, Any]:
    return {**json.loads(TINY.read_text()), **PADDED}


@cache
def _real(tmp_dir: str, versions: str = "fsdp2,fsdp1") -> list[dict[str, Any]]:
    """Per rank of the 4-rank spawn: ``{"<shard size>/<version>": measurements}``."""
    config, out = Path(tmp_dir) / "config.json", Path(tmp_dir) / "out.json"
    config.write_text(json.dumps(_config()))
    subprocess.run([sys.executable, str(HERE / "fsdp_worker.py"), versions, "4", str(config), str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return _real(str(tmp_path_factory.mktemp("fsdp")))


@pytest.fixture(scope="module")
def real_lora(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    return _real(str(tmp_path_factory.mktemp("fsdp_lora")), "fsdp2-lora,fsdp1-lora")


def _units() -> tuple[FsdpUnit, ...]:
    return fsdp_units(param_tree(spec_from_config(_config(), name="llama-tiny-padded")))


def _lora_units(rank: int = 4) -> tuple[FsdpUnit, ...]:
    """The tiny model with peft LoRA on every linear layer (the worker's ``LORA_RANK``)."""
    tree = param_tree(spec_from_config(_config(), name="llama-tiny-padded"))
    return fsdp_units(tree, adapters=lora.adapter_shapes(tree, ("all-linear",), rank))


def _sharding(version: FsdpVersion, size: int, **changes: Any) -> FsdpSharding:
    fields: dict[str, Any] = dict(version=version, shard_size=size, param_dtype=DType.FP32,
                                  compute_dtype=DType.BF16, reduce_dtype=DType.FP32, reshard_after_forward=True,
                                  param_offload=False, optimizer_offload=False, cpu_offload=False,
                                  cpu_offload_pinned=False)
    return FsdpSharding(**{**fields, **changes})


def _runs(real: list[dict[str, Any]], version: str):
    for rank_results in real:
        for key, run in rank_results.items():
            size, v = key.split("/")
            if v == version:
                yield int(size), run


# --- by hand --------------------------------------------------------------------------------------


def test_fsdp2_dim0_chunking_by_hand() -> None:
    # Qwen2.5-7B embedding (152064, 3584) over 8 ranks: 152064/8 = 19008 rows exactly -> 19008*3584.
    assert fsdp2_shard_numel((152064, 3584), 8) == 19008 * 3584
    # 515 rows over 4: chunks of ceil(515/4) = 129 rows; ranks hold 129, 129, 129, 128 -> all store 129.
    assert fsdp2_shard_numel((515, 64), 4) == 129 * 64
    assert [fsdp2_local_numel((515, 64), 4, r) for r in range(4)] == [129 * 64, 129 * 64, 129 * 64, 128 * 64]
    # 2 rows over 4 ranks: torch.chunk gives 2 chunks of 1 row; ranks 2 and 3 hold nothing but store 1 row.
    assert [fsdp2_local_numel((2, 5), 4, r) for r in range(4)] == [5, 5, 0, 0]
    assert fsdp2_shard_numel((2, 5), 4) == 5


def test_fsdp1_flat_padding_by_hand() -> None:
    unit = FsdpUnit(name="u", shapes=((3, 3), (5,)))
    # packed: 9 + 5 = 14 elements; over 4 ranks ceil(14/4) = 4 per rank.
    assert fsdp1_flat_numel(unit, _sharding(FsdpVersion.FSDP1, 4)) == 14
    assert shard_numel(unit, _sharding(FsdpVersion.FSDP1, 4)) == 4
    # use_orig_params, bf16 compute: 16 B / 2 B = 8-element alignment: 9, pad 7 -> 16, + 5 = 21, pad to 24.
    orig = _sharding(FsdpVersion.FSDP1, 4, use_orig_params=True)
    assert fsdp1_flat_numel(unit, orig) == 24
    assert shard_numel(unit, orig) == 6


def test_units_follow_verl_wrapping() -> None:
    units = _units()
    assert [u.name for u in units] == ["model.layers.0", "model.layers.1", "model.layers.2", ""]
    # root: embed (515*64) + final norm (64) + untied lm_head (515*64); the embedding's grad comes last.
    assert units[-1].numel == 515 * 64 * 2 + 64
    assert units[-1].late_grad_numel == 515 * 64


def test_fsdp2_wraps_untied_embeddings_as_their_own_units() -> None:
    """verl 0.9.1 ``_select_fsdp2_wrap_targets``: untied ``embed_tokens`` and ``lm_head`` are units of their own,
    in forward order around the layers; the root keeps the final norm. llama-small: V = 32000, h = 512."""
    tree = param_tree(spec_from_config(json.loads((TINY.parent / "llama-small.json").read_text()), name="llama-small"))
    units = fsdp_units(tree, wrap_embeddings=True)
    assert [u.name for u in units] == ["model.embed_tokens", *(f"model.layers.{i}" for i in range(4)), "lm_head", ""]
    assert units[0].numel == units[-2].numel == 32000 * 512 and units[-1].numel == 512
    assert all(u.late_grad_numel == 0 for u in units)
    # tied (the padded tiny Qwen-style config ties nothing, so tie it): nothing is split off
    tied = param_tree(spec_from_config({**_config(), "tie_word_embeddings": True}, name="tied"))
    assert [u.name for u in fsdp_units(tied, wrap_embeddings=True)][-1] == ""
    assert len(fsdp_units(tied, wrap_embeddings=True)) == 4


def test_head_and_reduce_output_moments_by_hand() -> None:
    """llama-small over 2 ranks, bf16 compute, fp32 reduce, its LM head a unit: at the head the root's norm
    (512 x 2 B) and the LM head unsharded (32000 x 512 x 2 B = 32,768,000) plus its flat all-gather output, held
    until the root's post-forward (another 32,768,000). At the input embedding's reduce, after the copy-in: the
    gradient list cleared, the reduce-scatter output S x 4 B = 8,192,000 x 4 = 32,768,000 and, on gloo, the clone of
    the input 2 x S x 4 B = 65,536,000. The unit's one gradient (32000 x 512 x 2 B = 32,768,000) is still alive:
    torch 2.11 ``foreach_reduce`` (torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py lines 504-515) binds
    it to the copy-in loop's variable ``unsharded_grad``, which outlives ``unsharded_grads.clear()`` (line 531)."""
    tree = param_tree(spec_from_config(json.loads((TINY.parent / "llama-small.json").read_text()), name="llama-small"))
    units = fsdp_units(tree, wrap_embeddings=True)
    sharding = _sharding(FsdpVersion.FSDP2, 2, embeddings_wrapped=True)
    assert total_bytes(head_moment(units, sharding, role="a")) == 1024 + 2 * 32_768_000
    reduce = [t for t in backward_moments(units, sharding, role="a")[-3]]  # the embedding's reduce (last unit)
    after = reduce_output_moment(reduce, units[0], sharding, role="a")
    assert not any(t.path.endswith("unsharded_grads.layer") for t in after)
    added = {t.path.rsplit(".", 1)[-1]: t.bytes for t in after if t not in reduce}
    assert added == {"reduce_scatter_output": 32_768_000, "last": 32_768_000}
    gloo = reduce_output_moment(reduce, units[0], _sharding(FsdpVersion.FSDP2, 2, gloo=True), role="a")
    assert {t.path.rsplit(".", 1)[-1]: t.bytes for t in gloo if t not in reduce}["gloo_reduce_scatter_clone"] == 65_536_000


def test_offload_places_states_on_host() -> None:
    units = _units()
    offloaded = _sharding(FsdpVersion.FSDP2, 4, param_offload=True, optimizer_offload=True)
    terms = fsdp_state_terms(units, offloaded, role="actor", trained=True)
    assert {t.path: t.device for t in terms} == {"actor.params": Device.CPU, "actor.optimizer.exp_avg": Device.CPU,
                                                 "actor.optimizer.exp_avg_sq": Device.CPU,
                                                 "actor.optimizer.step": Device.CPU}
    onload = fsdp_onload_terms(units, offloaded, role="actor", trained=True, phase=Phase.TRAINING)
    assert [t.path for t in onload] == ["actor.params.onload", "actor.optimizer.exp_avg.onload",
                                        "actor.optimizer.exp_avg_sq.onload"]
    assert all(t.device == Device.GPU and t.phase == Phase.TRAINING for t in onload)
    # FSDP's own CPU offload: the framework does not onload; the optimizer runs on the host, per tensor.
    policy = _sharding(FsdpVersion.FSDP2, 4, cpu_offload=True, cpu_offload_pinned=True)
    assert fsdp_onload_terms(units, policy, role="ref", trained=False, phase=Phase.MAKE_EXPERIENCE) == []
    assert sharded_grads(units, policy, role="ref").device == Device.CPU
    # largest local tensor: the 515x64 embedding / lm_head at 129 rows -> 129*64 fp32 = 33024 B on the host.
    step = adam_step_temporaries(units, policy, role="ref")
    assert [(t.device, t.bytes) for t in step] == [(Device.CPU, 129 * 64 * 4)]


def test_no_sync_grads_by_hand() -> None:
    units = _units()
    # layer: q 64*64 + k,v 2*32*64 + o 64*64 + gate,up 2*178*64 + down 64*178 + 2 norms 64 = 46592 elements;
    # all = 3*46592 + 515*64*2 + 64 = 205760.
    assert sum(u.numel for u in units) == 3 * 46592 + 515 * 64 * 2 + 64 == 205760
    fsdp2 = _sharding(FsdpVersion.FSDP2, 4, no_sync_accumulation=True)
    assert [t.bytes for t in no_sync_grads(units, fsdp2, role="a")] == [205760 * 4]   # reduce dtype fp32
    fsdp1 = _sharding(FsdpVersion.FSDP1, 4, no_sync_accumulation=True)
    assert [t.bytes for t in no_sync_grads(units, fsdp1, role="a")] == [205760 * 2]   # compute dtype bf16
    assert no_sync_grads(units, _sharding(FsdpVersion.FSDP2, 4), role="a") == []


def test_forward_worst_moment_by_hand() -> None:
    units = _units()
    # shard size 4, bf16: root S = 129*64 (embed) + 129*64 (lm_head) + 64/4 (norm) = 16528 -> 4*16528*2 = 132224 B;
    # layer S = q 16*64 + k,v 2*8*64 + o 16*64 + gate,up 2*45*64 + down 16*178 + norms 2*16 = 11712
    #   -> unsharded 4*11712*2 = 93696 B, all-gather input 11712*2 = 23424 B.
    root, layer, inp = 132224, 93696, 23424
    on = _sharding(FsdpVersion.FSDP2, 4)
    # worst with resharding: layer 0's all-gather, while the root's flat output is still held.
    assert total_bytes(fsdp_transient_terms(units, on, role="a", phase=Phase.FORWARD)) == root + root + inp + layer
    # without: layer 2's all-gather also holds layers 0 and 1 and layer 1's flat output.
    off = _sharding(FsdpVersion.FSDP2, 4, reshard_after_forward=False)
    assert total_bytes(fsdp_transient_terms(units, off, role="a", phase=Phase.FORWARD)) == root + 2 * layer + layer + inp + layer


# --- against real FSDP on the CPU ---------------------------------------------------------------


@pytest.mark.tracing
@pytest.mark.parametrize("version", [FsdpVersion.FSDP2, FsdpVersion.FSDP1])
def test_states_match_real_fsdp(real: list[dict[str, Any]], version: FsdpVersion) -> None:
    """Byte-exact per rank: padded shards, gradients, Adam moments (FSDP2: unpadded local rows, so the last
    rank of 4 holds less), host step scalars (one per original parameter, or per flat parameter in FSDP1)."""
    units = _units()
    assert _states_match(units, _runs(real, version.value), version) == 7
    assert num_optimizer_params(units, _sharding(FsdpVersion.FSDP1, 4)) == 4  # 3 layers + root flat parameters


def _states_match(units: tuple[FsdpUnit, ...], runs, version: FsdpVersion) -> int:  # type: ignore[no-untyped-def]
    """Assert each run's measured states; return how many (shard size, rank) runs were checked."""
    seen = set()
    for size, run in runs:
        sharding, rank = _sharding(version, size), run["rank"]
        states = {t.path: t.bytes for t in fsdp_state_terms(units, sharding, role="a", trained=True, rank=rank)}
        assert states["a.params"] == run["param_bytes"], (size, rank)
        assert sharded_grads(units, sharding, role="a").bytes == run["grad_bytes"], (size, rank)
        assert states["a.optimizer.exp_avg"] + states["a.optimizer.exp_avg_sq"] == run["moment_bytes"], (size, rank)
        assert states["a.optimizer.step"] == run["step_bytes"]
        assert num_optimizer_params(units, sharding) == run["num_state_tensors"]
        seen.add((size, rank))
    return len(seen)


def _peak_matches(units: tuple[FsdpUnit, ...], runs, phase: Phase) -> None:  # type: ignore[no-untyped-def]
    """The worst FSDP2 moment of ``phase`` within the tolerance of the measured one, at every shard size."""
    which = "forward_fsdp_bytes" if phase == Phase.FORWARD else "backward_fsdp_bytes"
    for size, run in runs:
        predicted = total_bytes(fsdp_transient_terms(units, _sharding(FsdpVersion.FSDP2, size), role="a", phase=phase))
        measured = max(run[which])
        assert abs(predicted - measured) <= TRANSIENT_TOLERANCE * measured, (size, predicted, measured)


@pytest.mark.tracing
def test_fsdp2_unshard_matches_real_fsdp(real: list[dict[str, Any]]) -> None:
    _peak_matches(_units(), _runs(real, "fsdp2"), Phase.FORWARD)


@pytest.mark.tracing
def test_fsdp2_backward_matches_real_fsdp(real: list[dict[str, Any]]) -> None:
    units = _units()
    for size, run in _runs(real, "fsdp2"):
        sharding = _sharding(FsdpVersion.FSDP2, size)
        predicted = total_bytes(fsdp_transient_terms(units, sharding, role="a", phase=Phase.BACKWARD))
        measured = max(run["backward_fsdp_bytes"])
        assert abs(predicted - measured) <= TRANSIENT_TOLERANCE * measured, (size, predicted, measured)
        # every moment the model walks is one the real run passes through
        moments = sorted({total_bytes(m) for m in backward_moments(units, sharding, role="a")})
        assert set(moments) <= set(run["backward_fsdp_bytes"]), (size, moments, run["backward_fsdp_bytes"])
        forward = {total_bytes(m) for m in forward_moments(units, sharding, role="a")}
        assert forward <= set(run["forward_fsdp_bytes"])


@pytest.mark.tracing
def test_fsdp1_transients_match_real_fsdp(real: list[dict[str, Any]]) -> None:
    """FSDP1 forward at every shard size, backward where it reduce-scatters (N > 1). The root's gradient
    until its last use is an autograd input buffer (the flat parameter's views feed one split), which
    no tensor the probe can reach holds, so ``unsharded_grads.root_so_far`` is left out of the comparison;
    at the root's own post-backward the flat gradient is real and compared."""
    units = _units()
    for size, run in _runs(real, "fsdp1"):
        sharding = _sharding(FsdpVersion.FSDP1, size)
        forward = total_bytes(fsdp_transient_terms(units, sharding, role="a", phase=Phase.FORWARD))
        assert abs(forward - max(run["forward_fsdp_bytes"])) <= TRANSIENT_TOLERANCE * forward, (size, forward)
        if size == 1:
            continue
        visible = max(sum(t.bytes for t in m if not t.path.endswith("root_so_far"))
                      for m in backward_moments(units, sharding, role="a"))
        measured = max(run["backward_fsdp_bytes"])
        assert abs(visible - measured) <= TRANSIENT_TOLERANCE * measured, (size, visible, measured)


@pytest.mark.tracing
def test_adam_foreach_temporary_matches_real(real: list[dict[str, Any]]) -> None:
    units = _units()
    for version in ("fsdp2", "fsdp1"):
        for size, run in _runs(real, version):
            sharding = _sharding(FsdpVersion(version), size)
            temp = adam_step_temporaries(units, sharding, role="a", rank=run["rank"])
            assert [t.bytes for t in temp] == run["foreach_sqrt_bytes"], (version, size, run["rank"])
            assert adam_states(units, sharding, role="a", rank=run["rank"])[1].bytes == temp[0].bytes


def test_activation_offload_by_hand() -> None:
    from memplan.memory.fsdp_transient import activation_offload_terms

    # 28 wrapped layers of 100 MB saved each: 27 go to pinned host memory, 2 stay in the GPU window.
    terms = activation_offload_terms(100_000_000, 28, role="actor")
    assert [(t.device, t.bytes) for t in terms] == [(Device.GPU, 200_000_000), (Device.CPU, 2_700_000_000)]
    assert [t.bytes for t in activation_offload_terms(5, 1, role="a")] == [5, 0]


# --- LoRA (verl: peft before FSDP; only the adapters train) ----------------------------------------


def test_lora_units_by_hand() -> None:
    """Qwen2.5-7B, r 32 on all linear layers (80,740,352 adapter elements, tests/memory/test_lora.py) over 8
    ranks. FSDP2: a layer's adapter shards are ceil(d0/8)·d1 per tensor: A (32, 3584) → 4·3584 rows, B (3584,
    32) → 448·32, …; exact here since 32, 512, 3584 and 18944 divide by 8, so the gradient shard is 1/8 of
    2,883,584 = 360,448 per layer and the root (embedding, norm, lm_head: all frozen) has none. FSDP1: the
    layer's frozen flat parameter (233,057,792 elements, tests/golden/test_published_verl.py, divisible by 8)
    and 14 adapter flat parameters, each its own unit; AdamW holds 28 x 14 = 392 states either way."""
    tree = param_tree(load_model_spec("qwen2.5-7b"))
    units = fsdp_units(tree, adapters=lora.adapter_shapes(tree, ("all-linear",), 32))
    root = units[-1]
    assert root.grad_numel == 0 and root.late_grad_numel == 0
    assert units[0].grad_numel == 2_883_584 and units[0].numel == 233_057_792 + 2_883_584
    for version in (FsdpVersion.FSDP2, FsdpVersion.FSDP1):
        sharding = _sharding(version, 8)
        assert grad_shard_numel(units[0], sharding) == 360_448
        assert shard_numel(units[0], sharding) == (233_057_792 + 2_883_584) // 8
        assert sharded_grads(units, sharding, role="a").bytes == 4 * 80_740_352 // 8
        assert num_optimizer_params(units, sharding) == 392
        moments = adam_states(units, sharding, role="a")
        assert moments[0].bytes == moments[1].bytes == 4 * 80_740_352 // 8


@pytest.mark.tracing
@pytest.mark.parametrize("version", [FsdpVersion.FSDP2, FsdpVersion.FSDP1])
def test_lora_states_match_real_fsdp(real_lora: list[dict[str, Any]], version: FsdpVersion) -> None:
    """Byte-exact per rank with peft LoRA (r 4, all-linear) wrapped as verl wraps it: the sharded parameters
    are base + adapters (FSDP1: the layer's frozen flat parameter plus one flat parameter per adapter), and
    only the adapters have gradients, Adam moments and step scalars (42 = 3 layers x 7 linears x A, B)."""
    units = _lora_units()
    assert _states_match(units, _runs(real_lora, f"{version.value}-lora"), version) == 7
    assert num_optimizer_params(units, _sharding(version, 4)) == 42


@pytest.mark.tracing
def test_lora_fsdp2_forward_matches_real_fsdp(real_lora: list[dict[str, Any]]) -> None:
    _peak_matches(_lora_units(), _runs(real_lora, "fsdp2-lora"), Phase.FORWARD)


@pytest.mark.tracing
def test_lora_fsdp2_backward_matches_real_fsdp(real_lora: list[dict[str, Any]]) -> None:
    _peak_matches(_lora_units(), _runs(real_lora, "fsdp2-lora"), Phase.BACKWARD)
