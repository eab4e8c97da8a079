"""Calibration traces for memplan.memory.activations / logits / transient.

Runs the real Hugging Face modeling code under FakeTensorMode with PyTorch's MemTracker (no real
memory is allocated) and compares the activation + temp bytes at three instants with memplan's
prediction:

    fwd_end   ACT + TEMP right after the loss is computed (what backward starts from)
    fwd_peak  the largest ACT + TEMP during forward
    bwd_peak  the largest ACT + TEMP during backward (parameter gradients are handed off and dropped,
              as ZeRO-2/3 do, so GRAD never piles up)

The trace runs what a CPU can run: SDPA's CPU flash kernel (saves output + logsumexp, like CUDA
flash-attn) and OpenRLHF's torch fallback for log-probs (``LogProbImpl.TORCH_CHUNKED``); memplan is
asked to predict exactly that. Layer counts are truncated (the per-layer terms scale linearly).

Trace fixes (each mirrors what a real GPU run does):
- ``masking_utils.find_packed_sequence_indices`` is patched to return None: with fake tensors it
  cannot read position ids and assumes packing, which builds a T × T mask, disables SDPA's GQA and
  makes the CPU kernel keep a mask copy per layer. A real unpacked batch gets no mask.
- LoRA adapters are cast to the model dtype, as DeepSpeed's engine casts every parameter
  (``_configure_distributed_model``); peft leaves them fp32 (``autocast_adapter_dtype``).
- MemTracker's gradient hooks are skipped on frozen parameters (torch 2.13 raises otherwise).

Usage:  python scripts/probe_activations.py [--quick] [--case NAME ...] [--full-width]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

warnings.filterwarnings("ignore")

try:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType
    import transformers.masking_utils as _masking
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
except ImportError as exc:  # pragma: no cover - the probe needs the trace extra
    sys.exit(f"probe_activations needs torch and transformers: {exc}")

from memplan.dtypes import DType
from memplan.memory.activations import AttnImpl
from memplan.memory.activations import ActivationConfig
from memplan.memory.logits import Head, LogProbImpl
from memplan.memory.transient import HeadConfig, forward_only_terms, micro_step_transients, total
from memplan.model import spec_from_config
from memplan.model.presets import find_preset

LOGSUMEXP_CHUNK = 1024  # OpenRLHF _logsumexp_by_chunk default


class _NoopHandle:
    def remove(self) -> None:
        pass


@contextlib.contextmanager
def trace_fixes() -> Iterator[None]:
    """The two trace fixes of the module docstring, undone on exit (tests share the process)."""
    register, post = torch.Tensor.register_hook, torch.Tensor.register_post_accumulate_grad_hook
    packed = _masking.find_packed_sequence_indices

    def guarded_register(self: torch.Tensor, fn: Callable) -> Any:
        return register(self, fn) if self.requires_grad else _NoopHandle()

    def guarded_post(self: torch.Tensor, fn: Callable) -> Any:
        return post(self, fn) if self.requires_grad else _NoopHandle()

    torch.Tensor.register_hook = guarded_register  # type: ignore[method-assign]
    torch.Tensor.register_post_accumulate_grad_hook = guarded_post  # type: ignore[method-assign]
    _masking.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        torch.Tensor.register_hook = register  # type: ignore[method-assign]
        torch.Tensor.register_post_accumulate_grad_hook = post  # type: ignore[method-assign]
        _masking.find_packed_sequence_indices = packed


class PhaseTracker(MemTracker):
    """MemTracker that also keeps the peak of ACT + TEMP separately for forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.act_temp_peak = {"fwd": 0, "bwd": 0}

    def act_temp(self) -> int:
        return sum(s.get(_MemRefType.ACT, 0) + s.get(_MemRefType.TEMP, 0) for s in self._curr_mem_snap.values())

    def _update_peak_stats(self, peak_state: Any) -> None:
        super()._update_peak_stats(peak_state)
        phase = "bwd" if self._mod_tracker.is_bw else "fwd"
        self.act_temp_peak[phase] = max(self.act_temp_peak[phase], self.act_temp())


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    config: dict[str, Any]
    layers: int
    batch: int
    seq: int
    attn: str = "sdpa"
    gc: bool = False
    lora_rank: int = 0
    head: str = "lm"
    forward_only: bool = False
    reference: bool = False
    """DPO shape: a frozen copy runs a no-grad forward on the same rows between forward and backward."""


def _fakeify(model: torch.nn.Module, mode: FakeTensorMode) -> None:
    conv, memo = mode.fake_tensor_converter, {}
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                if id(p) not in memo:
                    fake = conv.from_meta_and_device(mode, p.data, torch.device("cpu"))
                    memo[id(p)] = torch.nn.Parameter(fake, requires_grad=p.requires_grad)
                mod._parameters[name] = memo[id(p)]
        for name, b in list(mod._buffers.items()):
            if b is not None:
                if id(b) not in memo:
                    memo[id(b)] = conv.from_meta_and_device(mode, b, torch.device("cpu"))
                mod._buffers[name] = memo[id(b)]


def build(case: Case) -> torch.nn.Module:
    cfg = AutoConfig.for_model(**{**case.config, "num_hidden_layers": case.layers, "use_cache": False})
    dtype = torch.bfloat16
    with torch.device("meta"):
        if case.head == "value":
            base = AutoModel.from_config(cfg, dtype=dtype, attn_implementation=case.attn)
            model = _ValueModel(base, cfg.hidden_size, dtype)
        else:
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=case.attn)
    if case.lora_rank:
        from peft import LoraConfig, get_peft_model

        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=case.lora_rank, lora_alpha=16, target_modules="all-linear",
                                                 lora_dropout=0.0, bias="none"))
        for p in model.parameters():
            p.data = p.data.to(dtype)
    if case.gc:
        target = model.base if case.head == "value" else model
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if case.forward_only:
        model.eval()
        model.requires_grad_(False)
    else:
        model.train()
    return model


class _ValueModel(torch.nn.Module):
    """OpenRLHF's reward model shape: backbone + Linear(hidden, 1) on the last hidden state."""

    def __init__(self, base: torch.nn.Module, hidden: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.base = base
        self.score = torch.nn.Linear(hidden, 1, bias=False, dtype=dtype)

    def forward(self, ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.base(ids, position_ids=position_ids).last_hidden_state
        return self.score(hidden).squeeze(-1)


def _log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """OpenRLHF's ImportError fallback: gather the label logit, subtract a chunked logsumexp."""
    vocab = logits.shape[-1]
    picked = torch.gather(logits, dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)
    flat = logits.reshape(-1, vocab)
    lse = torch.zeros((flat.shape[0],), device=logits.device, dtype=logits.dtype)
    for start in range(0, flat.shape[0], LOGSUMEXP_CHUNK):
        stop = min(start + LOGSUMEXP_CHUNK, flat.shape[0])
        lse[start:stop] = torch.logsumexp(flat[start:stop], dim=-1)
    return picked - lse.view(*logits.shape[:-1])


def trace(case: Case) -> dict[str, int]:
    with trace_fixes():
        return _trace(case)


def _trace(case: Case) -> dict[str, int]:
    model = build(case)
    mode = FakeTensorMode()
    _fakeify(model, mode)
    ref = None
    if case.reference:
        ref = build(dataclasses.replace(case, forward_only=True, lora_rank=0, gc=False))
        _fakeify(ref, mode)
    with mode:
        for p in model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(lambda q: setattr(q, "grad", None))
        tracker = PhaseTracker()
        with tracker:
            ids = torch.randint(0, case.config["vocab_size"], (case.batch, case.seq))
            grad_ctx = torch.no_grad() if case.forward_only else torch.enable_grad()
            with grad_ctx:
                # OpenRLHF passes [B, T] position ids (cos/sin are then [B, T, head_dim]) and, without
                # padding, an all-ones mask that HF drops; passing none is the same for the kernels.
                pos = torch.arange(case.seq).unsqueeze(0).expand(case.batch, -1)
                if case.head == "value":
                    loss = model(ids, pos)[:, -1].float().mean()
                    kept: Any = None
                else:
                    output = model(ids, position_ids=pos)
                    output["logits"] = output["logits"].to(torch.float32)
                    kept = output
                    log_probs = _log_probs(output["logits"], torch.roll(ids, -1, 1))[:, :-1]
                    loss = -log_probs.mean()
                    if ref is not None:  # DPOTrainer: policy's output is local to concatenated_forward
                        kept = output = None
                        with torch.no_grad():
                            ref_out = ref(ids, position_ids=pos)
                            ref_out["logits"] = ref_out["logits"].to(torch.float32)
                            ref_lp = _log_probs(ref_out["logits"], torch.roll(ids, -1, 1))[:, :-1]
                            del ref_out
                        loss = loss - ref_lp.mean()
            fwd_end = tracker.act_temp()
            if not case.forward_only:
                loss.backward()
            del kept
    return {"fwd_end": fwd_end, "fwd_peak": tracker.act_temp_peak["fwd"], "bwd_peak": tracker.act_temp_peak["bwd"]}


def predict(case: Case) -> dict[str, int]:
    spec = spec_from_config({**case.config, "num_hidden_layers": case.layers}, name=case.name)
    cfg = ActivationConfig(micro_batch_size=case.batch, seq_len=case.seq, attn_impl=AttnImpl(case.attn),
                           gradient_checkpointing=case.gc, compute_dtype=DType.BF16, lora_rank=case.lora_rank,
                           trainable=not case.forward_only)
    head = HeadConfig(head=Head.VALUE if case.head == "value" else Head.LM, logprob_impl=LogProbImpl.TORCH_CHUNKED)
    if case.forward_only:
        peak = total(forward_only_terms(spec, cfg, head))
        return {"fwd_peak": peak, "bwd_peak": 0}
    phases = micro_step_transients(spec, cfg, head, reference_role="reference" if case.reference else None)
    from memplan.memory.breakdown import Phase

    return {"fwd_peak": total(phases[Phase.FORWARD]), "bwd_peak": total(phases[Phase.BACKWARD])}


def _preset(name: str) -> dict[str, Any]:
    preset = find_preset(name)
    if preset is None:
        raise SystemExit(f"no preset {name}")
    config = dict(preset.config())
    config.pop("quantization_config", None)
    return config


def tiny(model_type: str, **extra: Any) -> dict[str, Any]:
    """A small config of a family's shape (seconds to trace)."""
    base = dict(model_type=model_type, hidden_size=256, intermediate_size=688, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=1000, max_position_embeddings=8192, tie_word_embeddings=False)
    return {**base, **extra}


TINY_MOE = dict(num_local_experts=8, num_experts_per_tok=2, intermediate_size=384)
TINY_GEMMA2 = dict(head_dim=64, query_pre_attn_scalar=64, sliding_window=128, hidden_activation="gelu_pytorch_tanh")


def quick_cases() -> list[Case]:
    return [
        Case("tiny-llama", tiny("llama"), 2, 2, 512),
        Case("tiny-llama-gc", tiny("llama"), 2, 2, 512, gc=True),
        Case("tiny-llama-eager", tiny("llama"), 2, 1, 512, attn="eager"),
        Case("tiny-llama-lora", tiny("llama"), 2, 2, 512, lora_rank=8),
        Case("tiny-qwen3", tiny("qwen3", head_dim=64), 2, 2, 512),
        Case("tiny-mixtral", tiny("mixtral", **TINY_MOE), 2, 2, 256),
        Case("tiny-gemma2-eager", tiny("gemma2", **TINY_GEMMA2), 2, 1, 256, attn="eager"),
        Case("tiny-llama-value", tiny("llama"), 2, 2, 512, head="value"),
        Case("tiny-llama-fwd-only", tiny("llama"), 2, 2, 512, forward_only=True),
        Case("tiny-qwen2-dpo", tiny("qwen2"), 2, 4, 256, reference=True),
        Case("tiny-qwen2-dpo-gc", tiny("qwen2", vocab_size=4000), 2, 4, 256, gc=True, reference=True),
    ]


def full_width_cases() -> list[Case]:
    out = []
    for preset in ("llama-2-7b", "llama-3-8b", "qwen2.5-7b", "qwen3-8b", "mistral-7b"):
        config = _preset(preset)
        out += [Case(f"{preset}", config, 2, 1, 2048), Case(f"{preset}-gc", config, 2, 1, 2048, gc=True)]
    llama = _preset("llama-2-7b")
    out += [Case("llama-2-7b-b4-s512", llama, 2, 4, 512), Case("llama-2-7b-s4096", llama, 2, 1, 4096),
            Case("llama-2-7b-b1-s512", llama, 2, 1, 512), Case("llama-2-7b-gc-16l-s4096", llama, 16, 1, 4096, gc=True),
            Case("llama-2-7b-12l-s1024", llama, 12, 1, 1024),
            Case("llama-3-8b-b1-s256", _preset("llama-3-8b"), 2, 1, 256),
            Case("llama-2-7b-eager", llama, 2, 1, 2048, attn="eager"),
            Case("llama-2-7b-lora", llama, 2, 1, 2048, lora_rank=16),
            Case("llama-2-7b-lora-gc", llama, 2, 1, 2048, gc=True, lora_rank=16),
            Case("llama-2-7b-value", llama, 2, 1, 2048, head="value"),
            Case("llama-2-7b-fwd-only", llama, 2, 1, 2048, forward_only=True),
            Case("qwen2.5-7b-dpo-gc", _preset("qwen2.5-7b"), 4, 2, 1024, gc=True, reference=True),
            Case("mixtral-8x7b", _preset("mixtral-8x7b"), 2, 1, 1024),
            Case("gemma-2-9b-eager", _preset("gemma-2-9b"), 2, 1, 1024, attn="eager")]
    return out


def compare(case: Case) -> list[tuple[str, int, int, float]]:
    traced, predicted = trace(case), predict(case)
    rows = []
    for key in ("fwd_peak", "bwd_peak"):
        if key == "bwd_peak" and case.forward_only:
            continue
        err = (predicted[key] - traced[key]) / traced[key] * 100 if traced[key] else 0.0
        rows.append((key, predicted[key], traced[key], err))
    return rows


def _reference_prediction(config: dict[str, Any]) -> dict[str, int]:
    """memplan's prediction for one validation/traced record (fake engine, single GPU)."""
    from pathlib import Path

    from memplan.memory.breakdown import Phase
    from memplan.memory.transient import micro_step_transients
    from memplan.model import load_model_spec

    spec = load_model_spec(str(Path(config["model"])) if config["model"].endswith(".json") else config["model"])
    rows = config["micro_train_batch_size"] * (2 if config["method"] in ("dpo", "rm") else 1)
    traced_attn = config.get("traced_attn_implementation") or config["attn_implementation"]
    targets = config.get("target_modules") or ["all-linear"]
    if targets != ["all-linear"]:
        raise ValueError(f"target_modules {targets} not mapped here")
    cfg = ActivationConfig(micro_batch_size=1 if config.get("packing_samples") else rows,
                           seq_len=config["max_len"] * (rows if config.get("packing_samples") else 1),
                           attn_impl=AttnImpl(traced_attn), gradient_checkpointing=config["gradient_checkpointing"],
                           packing=bool(config.get("packing_samples")), lora_rank=config.get("lora_rank", 0))
    head = HeadConfig(head=Head.VALUE if config["method"] == "rm" else Head.LM,
                      logprob_impl=LogProbImpl.TORCH_CHUNKED, holds_output=config["method"] == "sft")
    phases = micro_step_transients(spec, cfg, head, reference_role="reference" if config["method"] == "dpo" else None)
    return {phase.value: total(terms) for phase, terms in phases.items()}


def compare_references(root: str = "validation/traced") -> float:
    """Predicted vs each fake-engine record's steady-state (last iteration) ACT + TEMP per phase."""
    import json
    from pathlib import Path

    worst = 0.0
    for path in sorted(Path(root).glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("engine") != "fake":
            continue
        try:
            predicted = _reference_prediction(record["config"])
        except (ValueError, KeyError) as exc:
            print(f"{record['case']:28s} skipped: {exc}")
            continue
        rank = record["measured"]["ranks"][0]
        last = rank["iterations"][max(rank["iterations"], key=int)]
        for phase in ("forward", "backward"):
            snap = last[phase]
            traced = snap["activation"] + snap["temp"]
            if snap.get("grad", 0):
                # the record keeps the phase's snapshot at its *total* peak; once gradients pile up
                # (no ZeRO hand-off at world size 1) that instant is not the ACT + TEMP peak
                print(f"{record['case']:28s} {phase:9s} {predicted[phase]:15,d} {traced:15,d}   n/a "
                      f"(snapshot at the total peak holds {snap['grad']:,d} B of gradients)")
                continue
            err = (predicted[phase] - traced) / traced * 100
            worst = max(worst, abs(err))
            print(f"{record['case']:28s} {phase:9s} {predicted[phase]:15,d} {traced:15,d} {err:+7.2f}%")
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes only (seconds)")
    parser.add_argument("--full-width", action="store_true", help="preset widths, 2 layers")
    parser.add_argument("--case", action="append", default=[], help="run only these case names")
    parser.add_argument("--references", action="store_true", help="compare with validation/traced/*.json")
    args = parser.parse_args(argv)
    if args.references:
        print(f"worst |error| {compare_references():.2f}%")
        return 0
    cases = quick_cases() if args.quick or not args.full_width else []
    if args.full_width:
        cases += full_width_cases()
    if args.case:
        cases = [c for c in cases if c.name in args.case]
    worst = 0.0
    print(f"{'case':28s} {'moment':9s} {'predicted':>15s} {'traced':>15s} {'error':>8s} {'s':>5s}")
    for case in cases:
        start = time.time()
        for key, pred, traced, err in compare(case):
            worst = max(worst, abs(err))
            print(f"{case.name:28s} {key:9s} {pred:15,d} {traced:15,d} {err:+7.2f}% {time.time() - start:5.1f}")
    print(f"worst |error| {worst:.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
