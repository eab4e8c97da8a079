#!/usr/bin/env python3
"""GPU memory measurements of OpenRLHF-style training steps, for ``memplan validate`` (kind: measured).

For every configuration of ``configs.py`` (cheapest first) this builds the Hugging Face model(s) from a
memplan preset with random weights directly on the device (``from_config``, bf16; no download), runs the
step OpenRLHF runs, one warm-up iteration and one measured iteration, and records per phase (forward,
backward, optimizer_step) ``torch.cuda.max_memory_allocated``, ``max_memory_reserved`` (peak stats reset at
each phase start) and the device's used memory from ``torch.cuda.mem_get_info`` (CUDA context, NCCL and
library workspaces included), with the GPU, driver, CUDA and package versions, into one JSON file per run:
``OUT/<run-id>.json``, rewritten after every case so a run cut short keeps what it measured.

The steps mirror OpenRLHF v0.9.5 (OpenRLHF/OpenRLHF@c0e2ee2), as ``memplan.tracing.steps`` does for the
CPU traces: SFT (``Actor.forward`` with fp32 logits, per-token log-probs, masked-mean loss), DPO (chosen and
rejected concatenated, policy then frozen reference forward), RM (base model + ``score`` value head,
pairwise loss) and rollout-style scoring (the actor's forward-only log-probs of make-experience, no vLLM).
The trainer's variables are kept alive across phases as Python scoping keeps them in OpenRLHF's loops.

Engines: real DeepSpeed when importable (ZeRO 0-3, ``--adam_offload``; OpenRLHF's DeepSpeed config;
``deepspeed.initialize`` with a client torch AdamW, since FusedAdam / DeepSpeedCPUAdam need a JIT build
that the device machine cannot afford; memory is the same: fp32 moments per parameter, no step
temporaries), else a torch emulation of DeepSpeed's bf16 optimizer at world size 1 (fp32 masters and
moments, no DeepSpeed buckets or flat copies). Each record says which; only DeepSpeed records are compared
with memplan's whole-step prediction, emulated ones keep their device/allocator readings.

Log-probs use OpenRLHF's torch fallback (gather + logsumexp over 1024-row chunks): flash-attn is not
installed on the device machine, so OpenRLHF itself would run it; memplan predicts it with
``LogProbImpl.TORCH_CHUNKED`` (each record's ``predict.logprob_impl``).

Usage (validation/gpu/README.md has the exact device command)::

    python validation/gpu/measure.py --out DIR [--budget-seconds 480] [--only ID ...] [--engine auto]
    python validation/gpu/measure.py --dry-run --out /tmp/m1     # the same code on the CPU, tiny configs
    python validation/gpu/measure.py --list
    python validation/gpu/measure.py --suite fsdp --out DIR    # verl-style FSDP2 steps (fsdp_cases.py)

Needs torch, transformers and peft (DeepSpeed optional). memplan itself is not imported: presets are read
from ``src/memplan/model/presets/data`` as files. No network.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import configs  # noqa: E402  (beside this file)
import fsdp_cases  # noqa: E402
from configs import Case  # noqa: E402

#: Case suites: OpenRLHF-style DeepSpeed steps (``configs.py``) and verl-style FSDP2 steps (``fsdp_cases.py``).
SUITES = ("deepspeed", "fsdp")


def suite_cases(suite: str, dry_run: bool) -> tuple[Any, ...]:
    """A suite's GPU plan or dry-run cases."""
    module: Any = fsdp_cases if suite == "fsdp" else configs
    return module.DRY_RUN_CASES if dry_run else module.GPU_CASES


def case_command(case: Any) -> str:
    """The memplan command predicting a case of either suite."""
    return (fsdp_cases if isinstance(case, fsdp_cases.FsdpCase) else configs).memplan_command(case)


def any_case_config(case: Any) -> dict[str, Any]:
    """The record's configuration of a case of either suite."""
    return fsdp_cases.case_config(case) if isinstance(case, fsdp_cases.FsdpCase) else case_config(case)

#: Record schema version.
SCHEMA = 1

#: memplan's bundled preset configs (read as data; memplan is not imported).
PRESETS_DIR = REPO / "src" / "memplan" / "model" / "presets" / "data"

#: Seed of the random weights and token ids.
SEED = 1234

#: Warm-up iterations before the measured one (the optimizer state exists from the first step on).
WARMUP_ITERATIONS = 1

#: OpenRLHF's ``_logsumexp_by_chunk`` rows per chunk (openrlhf/models/utils.py@v0.9.5).
LOGSUMEXP_CHUNK_ROWS = 1024

#: Prompt share of each sequence, masked out of the loss (no memory effect).
PROMPT_FRACTION = 4

#: OpenRLHF's optimizer settings (train_sft.py@v0.9.5: --adam_betas 0.9 0.95, --l2 0, --max_norm 1.0).
ADAM_BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
LEARNING_RATE = 1e-6
MAX_NORM = 1.0
NO_DECAY_NAMES = ("bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight")

#: DPO beta (no memory effect).
BETA = 0.1

#: Phases of one training iteration, in order.
TRAIN_PHASES = ("forward", "backward", "optimizer_step")


def say(message: str) -> None:
    """Progress on stdout, flushed (the device tool returns the tail of it)."""
    print(f"[measure {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- configs and models ------------------------------------------------------------------------------


def load_config_dict(model: str) -> dict[str, Any]:
    """config.json of a preset name (memplan's bundled data) or of a path relative to the repository."""
    path = Path(model)
    if not path.is_absolute():
        path = REPO / model
    if path.suffix != ".json":
        path = PRESETS_DIR / f"{model}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def hf_config(config: dict[str, Any], attn: str) -> Any:
    """A transformers config (never remote code) with OpenRLHF's settings: no KV cache, the attention."""
    import transformers

    kwargs = {k: v for k, v in config.items() if k not in ("model_type", "auto_map", "transformers_version")}
    cfg = transformers.AutoConfig.for_model(config["model_type"], **kwargs)
    cfg.use_cache = False
    cfg._attn_implementation = attn
    return cfg


def reward_model_class() -> type:
    """OpenRLHF's reward model: base transformer + ``score`` head, value at the last real token."""
    import torch
    from torch import nn

    class RewardModel(nn.Module):
        def __init__(self, base: nn.Module, hidden_size: int) -> None:
            super().__init__()
            self.model = base
            self.score = nn.Linear(hidden_size, 1, bias=False, dtype=torch.bfloat16)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            eos = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(dim=1, keepdim=True)
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(attention_mask == 0, 1)
            hidden = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids)
            values = self.score(hidden["last_hidden_state"]).squeeze(-1)
            return values.gather(dim=1, index=eos).squeeze(1)

    return RewardModel


def _placement(device: str | None) -> Any:
    """Create tensors on ``device``; None: where DeepSpeed's ``zero.Init`` puts them (ZeRO-3 partitions)."""
    import contextlib

    import torch

    return torch.device(device) if device is not None else contextlib.nullcontext()


def build_trained(case: Case, device: str | None) -> Any:
    """The trained model on ``device`` in bf16: causal LM (or reward model), LoRA, checkpointing."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    cfg = hf_config(load_config_dict(case.model), case.attn)
    with _placement(device):
        if case.method == "rm":
            base = AutoModel.from_config(cfg, dtype=torch.bfloat16, attn_implementation=case.attn)
            model = reward_model_class()(base, cfg.hidden_size)
        else:
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation=case.attn)
        if case.lora_rank:
            from peft import LoraConfig, TaskType, get_peft_model

            target = model.model if case.method == "rm" else model
            target.enable_input_require_grads()
            kw = {} if case.method == "rm" else {"task_type": TaskType.CAUSAL_LM}
            model = get_peft_model(model, LoraConfig(r=case.lora_rank, lora_alpha=2 * case.lora_rank,
                                                     target_modules="all-linear", lora_dropout=0.0, bias="none",
                                                     **kw))
    if case.gradient_checkpointing:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base = base.model if case.method == "rm" else base
        kwargs = {"use_reentrant": False}  # OpenRLHF's gradient_checkpointing_use_reentrant default
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x renamed it
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()
    return model


def build_frozen(case: Case, device: str | None) -> Any:
    """The DPO reference (or the rollout actor): the causal LM, bf16, eval mode, no gradients."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = hf_config(load_config_dict(case.model), case.attn)
    with _placement(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation=case.attn)
    model.requires_grad_(False)
    model.eval()
    return model


def trainable(module: Any) -> list[tuple[str, Any]]:
    """Trainable parameters with names, tied weights once."""
    seen: set[int] = set()
    out = []
    for name, param in module.named_parameters():
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            out.append((name, param))
    return out


def param_groups(named: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """OpenRLHF's ``get_optimizer_grouped_parameters``: decay / no-decay groups (l2 = 0 in both)."""
    groups = [{"params": [p for n, p in named if not any(k in n for k in NO_DECAY_NAMES)], "weight_decay": 0.0},
              {"params": [p for n, p in named if any(k in n for k in NO_DECAY_NAMES)], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# --- engines ---------------------------------------------------------------------------------------------


def train_ds_config(case: Case) -> dict[str, Any]:
    """OpenRLHF's ``get_train_ds_config`` (openrlhf/utils/deepspeed/deepspeed_utils.py@v0.9.5), CLI defaults,
    "auto" keys dropped as DeepSpeed drops them; world size 1, gradient accumulation 1. The client torch
    optimizer needs ``zero_force_ds_cpu_optimizer: false`` under offload (DeepSpeedCPUAdam is not built)."""
    zero: dict[str, Any] = {
        "stage": case.zero_stage, "offload_param": {"device": "none"},
        "offload_optimizer": {"device": "cpu" if case.adam_offload else "none", "pin_memory": True},
        "zero_hpz_partition_size": 1, "zero_quantized_weights": False, "zero_quantized_gradients": False,
    }
    if case.zero_stage == 3:
        zero["reduce_scatter"] = True
    return {"steps_per_print": 100, "zero_optimization": zero, "bf16": {"enabled": True},
            "fp16": {"enabled": False}, "gradient_clipping": MAX_NORM, "prescale_gradients": False,
            "wall_clock_breakdown": False, "data_types": {"grad_accum_dtype": None},
            "zero_force_ds_cpu_optimizer": False, "train_micro_batch_size_per_gpu": case.micro_batch,
            "train_batch_size": case.micro_batch, "gradient_accumulation_steps": 1}


def eval_ds_config(case: Case) -> dict[str, Any]:
    """OpenRLHF's ``get_eval_ds_config(offload=False, stage=3 if zero_stage == 3 else 0)``."""
    zero = {"stage": 3 if case.zero_stage == 3 else 0, "offload_param": {"device": "none", "pin_memory": True}}
    return {"steps_per_print": 100, "zero_optimization": zero, "bf16": {"enabled": True},
            "gradient_clipping": 1.0, "prescale_gradients": False, "wall_clock_breakdown": False,
            "train_micro_batch_size_per_gpu": case.micro_batch, "train_batch_size": case.micro_batch}


class EmulatedEngine:
    """DeepSpeed's bf16 optimizer at world size 1, in torch: fp32 masters (on the CPU with offload), bf16
    grads on the params, fp32 grads at the step, clip, AdamW on the masters, copy back. No buckets."""

    def __init__(self, module: Any, case: Case, device: str) -> None:
        import torch

        self.module = module
        named = trainable(module)
        self.low = [p for _, p in named]
        self.master_device = "cpu" if case.adam_offload else device
        self.masters = [torch.nn.Parameter(p.detach().to(self.master_device, torch.float32)) for p in self.low]
        by_id = {id(p): m for p, m in zip(self.low, self.masters, strict=True)}
        groups = [{**g, "params": [by_id[id(p)] for p in g["params"]]} for g in param_groups(named)]
        fused = self.master_device.startswith("cuda")
        self.optimizer = torch.optim.AdamW(groups, lr=LEARNING_RATE, betas=ADAM_BETAS, eps=ADAM_EPS,
                                           fused=fused or None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def backward(self, loss: Any) -> None:
        loss.backward()

    def step(self) -> None:
        import torch

        for low, master in zip(self.low, self.masters, strict=True):
            if low.grad is not None:
                master.grad = low.grad.to(self.master_device, torch.float32)
            low.grad = None
        torch.nn.utils.clip_grad_norm_(self.masters, MAX_NORM)
        self.optimizer.step()
        with torch.no_grad():
            for low, master in zip(self.low, self.masters, strict=True):
                low.copy_(master)
                master.grad = None

    def destroy(self) -> None:
        self.optimizer.state.clear()
        self.masters.clear()
        self.low.clear()


def deepspeed_engines(case: Case, device: str) -> tuple[Any, Any]:
    """``deepspeed.initialize`` of the trained model (and of the DPO reference, as an eval engine)."""
    import deepspeed
    import torch
    from transformers.integrations import HfDeepSpeedConfig

    ds = train_ds_config(case)
    keep = HfDeepSpeedConfig(ds) if case.zero_stage == 3 else None  # zero.Init while building, as OpenRLHF
    place = None if case.zero_stage == 3 else device  # zero.Init partitions onto the accelerator itself
    model = build_trained(case, place)
    offload = case.adam_offload
    optimizer = torch.optim.AdamW(param_groups(trainable(model)), lr=LEARNING_RATE, betas=ADAM_BETAS,
                                  eps=ADAM_EPS, fused=(device.startswith("cuda") and not offload) or None)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
    del keep
    ref = None
    if case.method == "dpo":
        ev = eval_ds_config(case)
        keep = HfDeepSpeedConfig(ev) if case.zero_stage == 3 else None
        ref, *_ = deepspeed.initialize(model=build_frozen(case, place), config=ev)
        del keep
    return engine, ref


def torch_engines(case: Case, device: str) -> tuple[Any, Any]:
    """The emulated engine (and a plain frozen reference for DPO)."""
    import torch

    model = build_trained(case, device)
    model.to(torch.bfloat16)  # DeepSpeed's bf16 engine casts LoRA adapters (fp32 in peft) too
    ref = build_frozen(case, device) if case.method == "dpo" else None
    return EmulatedEngine(model, case, device), ref


# --- the OpenRLHF steps ------------------------------------------------------------------------------------


class Step:
    """One case's models and token source; ``iteration`` yields each phase's name before running it."""

    def __init__(self, case: Case, engine: Any, ref: Any, vocab_size: int, device: str) -> None:
        import torch

        self.case, self.engine, self.ref, self.vocab, self.device = case, engine, ref, vocab_size, device
        self.generator = torch.Generator(device=device).manual_seed(SEED)
        self.carry: dict[str, Any] = {}

    def batch(self, rows: int) -> tuple[Any, Any]:
        import torch

        shape = (rows, self.case.max_len)
        ids = torch.randint(0, self.vocab, shape, generator=self.generator, device=self.device)
        return ids, torch.ones(shape, dtype=torch.long, device=self.device)

    def actor_forward(self, model: Any, ids: Any, mask: Any) -> tuple[Any, Any]:
        """``Actor.forward`` with ``return_output``: fp32 logits (OpenRLHF PR #634), per-token log-probs."""
        import torch

        rolled = torch.roll(ids, shifts=-1, dims=1)
        position_ids = mask.long().cumsum(-1) - 1
        position_ids.masked_fill_(mask == 0, 1)
        output = model(ids, attention_mask=mask, position_ids=position_ids)
        output["logits"] = output["logits"].to(torch.float32)
        return log_probs_from_logits(output["logits"], rolled)[:, :-1], output

    def iteration(self) -> Iterator[str]:
        return {"sft": self.sft, "dpo": self.dpo, "rm": self.rm, "rollout": self.rollout}[self.case.method]()

    def _backward_and_step(self, loss: Any) -> Iterator[str]:
        yield "backward"
        self.engine.backward(loss)
        yield "optimizer_step"
        self.engine.step()

    def sft(self) -> Iterator[str]:
        c = self.carry
        yield "forward"
        c["inputs"], c["mask"] = self.batch(self.case.micro_batch)
        loss_mask = c["mask"].clone()
        loss_mask[:, : self.case.max_len // PROMPT_FRACTION] = 0
        c["log_probs"], c["output"] = self.actor_forward(self.engine, c["inputs"], c["mask"])
        c["loss"] = masked_mean(-c["log_probs"], loss_mask[:, :-1])
        yield from self._backward_and_step(c["loss"])

    def _dpo_logps(self, model: Any, ids: Any, mask: Any) -> tuple[Any, Any]:
        log_probs, output = self.actor_forward(model, ids, mask)
        del output  # local to DPOTrainer.concatenated_forward
        loss_mask = mask.clone().bool()
        loss_mask[:, : self.case.max_len // PROMPT_FRACTION] = False
        sums = (log_probs * loss_mask[:, 1:]).sum(-1)
        return sums[: self.case.micro_batch], sums[self.case.micro_batch:]

    def dpo(self) -> Iterator[str]:
        import torch
        import torch.nn.functional as F

        c = self.carry
        yield "forward"
        c["ids"], c["mask"] = self.batch(2 * self.case.micro_batch)
        chosen, rejected = self._dpo_logps(self.engine, c["ids"], c["mask"])
        with torch.no_grad():
            ref_chosen, ref_rejected = self._dpo_logps(self.ref, c["ids"], c["mask"])
        logits = (chosen - rejected) - (ref_chosen - ref_rejected)
        c["loss"] = (-F.logsigmoid(BETA * logits)).mean()
        c["chosen"], c["rejected"] = chosen, rejected
        yield from self._backward_and_step(c["loss"])

    def rm(self) -> Iterator[str]:
        import torch.nn.functional as F

        c = self.carry
        yield "forward"
        ids, mask = self.batch(2 * self.case.micro_batch)
        rewards = self.engine(ids, mask)
        c["chosen"], c["rejected"] = rewards[: self.case.micro_batch], rewards[self.case.micro_batch:]
        c["loss"] = (-F.logsigmoid(c["chosen"] - c["rejected"])).mean()
        yield from self._backward_and_step(c["loss"])

    def rollout(self) -> Iterator[str]:
        """make-experience scoring: the actor's action log-probs of a micro-rollout-batch, no grad."""
        import torch

        yield "forward"
        with torch.no_grad():
            ids, mask = self.batch(self.case.micro_batch)
            log_probs, output = self.actor_forward(self.engine, ids, mask)
            del output
            self.carry["action_log_probs"] = log_probs[:, -(self.case.max_len // 2):]


def log_probs_from_logits(logits: Any, labels: Any) -> Any:
    """OpenRLHF's torch fallback for fp32 logits: gather the label logit minus a chunked logsumexp."""
    import torch

    label_logits = torch.gather(logits, dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)
    flat = logits.reshape(-1, logits.shape[-1])
    lse = torch.zeros(flat.shape[0], device=logits.device, dtype=logits.dtype)
    for start in range(0, flat.shape[0], LOGSUMEXP_CHUNK_ROWS):
        end = min(start + LOGSUMEXP_CHUNK_ROWS, flat.shape[0])
        lse[start:end] = torch.logsumexp(flat[start:end], dim=-1)
    return label_logits - lse.view(*logits.shape[:-1])


def masked_mean(tensor: Any, mask: Any) -> Any:
    """``openrlhf.models.utils.masked_mean`` over everything."""
    return (tensor * mask).sum() / mask.sum()


# --- memory probes --------------------------------------------------------------------------------------------


class CudaProbe:
    """Readings of the CUDA caching allocator and of the device (context included)."""

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def now(self) -> dict[str, int | None]:
        cuda = self.torch.cuda
        cuda.synchronize()
        free, total = cuda.mem_get_info()
        reserved = cuda.memory_reserved()
        return {"allocated": cuda.memory_allocated(), "reserved": reserved, "device_used": total - free,
                "non_torch": total - free - reserved}

    def reset_peak(self) -> None:
        self.torch.cuda.synchronize()
        self.torch.cuda.reset_peak_memory_stats()

    def peaks(self) -> dict[str, int | None]:
        self.torch.cuda.synchronize()
        return {"max_memory_allocated": self.torch.cuda.max_memory_allocated(),
                "max_memory_reserved": self.torch.cuda.max_memory_reserved()}

    def release(self) -> None:
        gc.collect()
        self.torch.cuda.empty_cache()


class CpuProbe:
    """Dry run: no allocator statistics on the CPU (None); the process's resident memory as device use."""

    def now(self) -> dict[str, int | None]:
        with open("/proc/self/statm", encoding="ascii") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return {"allocated": None, "reserved": None, "device_used": rss, "non_torch": None}

    def reset_peak(self) -> None:
        pass

    def peaks(self) -> dict[str, int | None]:
        return {"max_memory_allocated": None, "max_memory_reserved": None}

    def release(self) -> None:
        gc.collect()


def phase_reading(start: dict[str, int | None], end: dict[str, int | None], peaks: dict[str, int | None],
                  seconds: float) -> dict[str, Any]:
    """One phase's record; ``device_used`` = peak reserved + non-PyTorch memory at the phase's end."""
    reserved, non_torch = peaks["max_memory_reserved"], end["non_torch"]
    used = reserved + non_torch if reserved is not None and non_torch is not None else end["device_used"]
    return {"max_memory_allocated": peaks["max_memory_allocated"], "max_memory_reserved": reserved,
            "device_used": used, "allocated_at_start": start["allocated"], "allocated_at_end": end["allocated"],
            "reserved_at_end": end["reserved"], "device_used_at_end": end["device_used"],
            "non_torch_at_end": non_torch, "seconds": round(seconds, 4)}


def run_iteration(step: Any, probe: Any, phases: dict[str, dict[str, Any]] | None = None,
                  extra: Callable[[], dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """One iteration, each phase measured from its start (peak statistics reset) to the next's start, into
    ``phases`` as it goes (a failing phase leaves those before it); ``extra`` adds readings at each phase's end.
    ``step.current_phase`` names the phase running."""
    phases = {} if phases is None else phases
    current: tuple[str, dict[str, int | None], float] | None = None

    def close() -> None:
        if current is not None:
            name, start, t0 = current
            phases[name] = phase_reading(start, probe.now(), probe.peaks(), time.perf_counter() - t0)
            if extra is not None:
                phases[name].update(extra())

    for name in step.iteration():
        close()
        step.current_phase = name
        start = probe.now()
        probe.reset_peak()
        current = (name, start, time.perf_counter())
    close()
    return phases


# --- one case -----------------------------------------------------------------------------------------------------


def peak_summary(phases: dict[str, dict[str, Any]], baseline: dict[str, int | None]) -> dict[str, Any]:
    """The measured iteration's peak: allocated/reserved above the case's baseline, device used absolute."""
    def top(key: str) -> tuple[str, int | None]:
        values = {p: r[key] for p, r in phases.items() if r[key] is not None}
        if not values:
            return next(iter(phases)), None
        phase = max(values, key=lambda p: values[p])
        return phase, values[phase]

    phase, allocated = top("max_memory_allocated")
    _, reserved = top("max_memory_reserved")
    _, used = top("device_used")
    base_alloc, base_res = baseline["allocated"] or 0, baseline["reserved"] or 0
    return {"phase": phase if allocated is not None else top("device_used")[0],
            "max_memory_allocated": None if allocated is None else allocated - base_alloc,
            "max_memory_reserved": None if reserved is None else reserved - base_res,
            "device_used": used}


def measure_case(case: Case, env: "Env") -> dict[str, Any]:
    """Build, warm up, measure, tear down one case; the case's record (with ``error`` on failure)."""
    import torch

    env.probe.release()
    baseline = env.probe.now()
    record: dict[str, Any] = {"case": case.id, "config": case_config(case), "engine": env.engine_name(case),
                              "predict": predict_spec(case, env), "emulated": emulated_notes(case, env)}
    t0 = time.perf_counter()
    engine = ref = step = None
    try:
        torch.manual_seed(SEED)
        engine, ref = env.build(case)
        after_setup = env.probe.now()
        step = Step(case, engine, ref, hf_vocab(case), env.device)
        iterations = [run_iteration(step, env.probe) for _ in range(WARMUP_ITERATIONS + 1)]
        measured = iterations[-1]
        record["measured"] = {"baseline": baseline, "after_setup": after_setup, "phases": measured,
                              "warmup_phases": iterations[0], "peak": peak_summary(measured, baseline),
                              "warmup_iterations": WARMUP_ITERATIONS}
        record["error"] = None
    except Exception as exc:  # noqa: BLE001 - one case's failure (OOM included) must not end the run
        oom = type(exc).__name__ == "OutOfMemoryError"
        record["error"] = {"type": "oom" if oom else type(exc).__name__, "message": str(exc).splitlines()[0][:500],
                           "traceback": traceback.format_exc()[-2000:]}
    finally:
        for obj in (engine, ref):
            if obj is not None and hasattr(obj, "destroy"):
                obj.destroy()
        del engine, ref, step
        env.probe.release()
    record["wall_seconds"] = round(time.perf_counter() - t0, 2)
    return record


def hf_vocab(case: Case) -> int:
    """Token ids are drawn below the config's vocabulary size."""
    return int(load_config_dict(case.model)["vocab_size"])


def case_config(case: Case) -> dict[str, Any]:
    """The case as memplan/OpenRLHF flags (model, method, zero_stage, ...)."""
    return {"model": case.model, "method": case.method, "max_len": case.max_len,
            "micro_train_batch_size" if case.trains else "micro_rollout_batch_size": case.micro_batch,
            "zero_stage": case.zero_stage, "adam_offload": case.adam_offload, "lora_rank": case.lora_rank,
            "lora_alpha": 2 * case.lora_rank if case.lora_rank else None, "gradient_checkpointing":
            case.gradient_checkpointing, "attn_implementation": case.attn, "param_dtype": "bf16", "gpus": 1,
            "ref_pretrain": case.model if case.method == "dpo" else None, "tags": list(case.tags)}


def predict_spec(case: Case, env: "Env") -> dict[str, Any]:
    """The memplan command predicting the case and which of its numbers compare with which reading."""
    spec: dict[str, Any] = {"command": configs.memplan_command(case), "logprob_impl": configs.LOGPROB_IMPL}
    if not case.trains:
        spec.update(compare="transient", phase="make_experience", role="actor", measured_phase="forward")
    elif env.engine_name(case) == "deepspeed":
        spec["compare"] = "peak"
    else:
        spec["compare"] = "none"
        spec["why_not_compared"] = "DeepSpeed was not importable: the torch emulation lacks its buffers"
    return spec


def emulated_notes(case: Case, env: "Env") -> list[str]:
    """What differs from OpenRLHF on a GPU cluster, for this case."""
    notes = ["random weights from config.json built on the device (no checkpoint load, no CPU copy)",
             "log-probs via OpenRLHF's torch fallback (flash-attn not installed)"]
    if env.engine_name(case) == "deepspeed":
        notes.append("client torch AdamW instead of FusedAdam/DeepSpeedCPUAdam (no JIT build); same state sizes")
    elif case.trains:
        notes.append("DeepSpeed bf16 optimizer emulated in torch at world size 1: fp32 masters and moments "
                     f"({'CPU' if case.adam_offload else 'device'}), no buckets or flat copies")
    if env.dry_run:
        notes.append("dry run on the CPU: no allocator statistics; device_used is the process's resident memory")
    return notes


# --- environment, versions, the run ------------------------------------------------------------------------


class Env:
    """Device, probe and engine choice for a run."""

    def __init__(self, *, dry_run: bool, engine: str) -> None:
        self.dry_run = dry_run
        self.device = "cpu" if dry_run else "cuda"
        if dry_run:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
        self.deepspeed = engine != "torch" and self._init_deepspeed(required=engine == "deepspeed")
        self.probe: Any = CpuProbe() if dry_run else CudaProbe()

    def _init_deepspeed(self, *, required: bool) -> bool:
        try:
            import deepspeed
        except ImportError as exc:
            if required:
                raise SystemExit(f"--engine deepspeed: cannot import deepspeed ({exc})") from None
            say(f"deepspeed not importable ({exc}); using the torch emulation")
            return False
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                           ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29611")):
            os.environ.setdefault(key, value)
        if self.dry_run:
            # DeepSpeed's CPU backend would probe every op builder and JIT-compile its shared-memory all-reduce
            # op with ninja (deepspeed 0.19.8, deepspeed/comm/torch.py lines 47-53 and 207-223); that op serves
            # only inference_all_reduce, and the build outlasted a case's timeout on a fresh CI machine. The
            # reasoning is in memplan.tracing.ds_worker._skip_shm_comm_op; a GPU run uses NCCL and never builds it.
            import deepspeed.ops

            deepspeed.ops.__dict__["__compatible_ops__"] = {"deepspeed_shm_comm": False}
        deepspeed.init_distributed(dist_backend="gloo" if self.dry_run else "nccl")
        return True

    def engine_name(self, case: Case) -> str:
        if not case.trains:
            return "plain"
        return "deepspeed" if self.deepspeed else "torch-emulation"

    def build(self, case: Case) -> tuple[Any, Any]:
        if not case.trains:
            model = build_frozen(case, self.device)
            return model, None
        return deepspeed_engines(case, self.device) if self.deepspeed else torch_engines(case, self.device)


def _package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "deepspeed", "peft", "accelerate", "numpy", "triton", "flash-attn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _nvidia_smi() -> dict[str, str]:
    try:
        line = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,pci.bus_id",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    name, driver, total, bus = (s.strip() for s in line.split(","))
    return {"nvidia_smi_name": name, "driver": driver, "nvidia_smi_memory_total": total, "pci_bus_id": bus}


def environment(env: Env) -> tuple[dict[str, Any], dict[str, Any]]:
    """(hardware, versions) of this machine."""
    import torch

    versions: dict[str, Any] = _package_versions()
    versions["torch_cuda"] = torch.version.cuda
    versions["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    hardware: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                                "cpu_count": os.cpu_count(),
                                "host_ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}
    if not env.dry_run:
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        hardware.update(gpu=props.name, gpu_total_bytes=total, gpu_free_bytes_at_start=free,
                        compute_capability=f"{props.major}.{props.minor}",
                        multiprocessors=props.multi_processor_count, **_nvidia_smi())
        versions["driver"] = hardware.get("driver")
    return hardware, versions


def validate_run(run: dict[str, Any]) -> list[str]:
    """Problems with a run record (empty when valid): the schema ``memplan validate`` reads."""
    problems = [f"missing {k}" for k in ("schema", "run_id", "dry_run", "hardware", "versions", "started", "cases")
                if k not in run]
    for rec in run.get("cases", []):
        where = rec.get("case", "?")
        problems += [f"{where}: missing {k}" for k in ("config", "predict", "engine", "error", "wall_seconds")
                     if k not in rec]
        if not str(rec.get("predict", {}).get("command", "")).startswith("memplan estimate "):
            problems.append(f"{where}: predict.command is not a memplan estimate command")
        if rec.get("error") is None:
            measured = rec.get("measured", {})
            phases = measured.get("phases", {})
            want = rec.get("expected_phases") or (TRAIN_PHASES if rec.get("config", {}).get("method") != "rollout"
                                                  else ("forward",))
            problems += [f"{where}: no {p} phase" for p in want if p not in phases]
            numeric = ["device_used"] if run.get("dry_run") else ["max_memory_allocated", "max_memory_reserved",
                                                                  "device_used"]
            problems += [f"{where}: peak.{k} is not an int" for k in numeric
                         if not isinstance(measured.get("peak", {}).get(k), int)]
    return problems


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (a run cut short leaves the last complete file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


#: Seconds a fresh case process is assumed to add to a case's ``seconds`` guess (CUDA context, process
#: group, first kernels, exit) until the run has observed its own.
STARTUP_SECONDS_GUESS = 10.0

#: Seconds to wait for a case process to import torch/transformers/DeepSpeed (the first one compiles).
READY_TIMEOUT_SECONDS = 300.0

#: Case processes kept importing ahead of the running one (imports take longer than most cases).
PREWARM_DEPTH = 2


def _prewarm(dry_run: bool, engine: str, suite: str = "deepspeed") -> dict[str, Any]:
    """Import what a case needs (without touching the GPU), so a waiting process is ready to start at once."""
    import importlib

    t0 = time.perf_counter()
    if dry_run:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
    import torch

    names = ["transformers", "peft", "transformers.models.llama.modeling_llama",
             "transformers.models.qwen2.modeling_qwen2", "transformers.models.qwen3.modeling_qwen3"]
    if suite == "fsdp":
        names += ["torch.distributed.fsdp", "torch.distributed.device_mesh"]
    elif engine != "torch":
        names += ["deepspeed", "deepspeed.runtime.engine", "transformers.integrations.deepspeed"]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - Env reports a missing DeepSpeed; a missing model module is lazy
            pass
    return {"import_seconds": round(time.perf_counter() - t0, 2),
            "cuda_initialized_before_case": bool(torch.cuda.is_initialized())}


def _worker(conn: Any, dry_run: bool, engine: str, suite: str = "deepspeed") -> None:
    """One case process: import, report ready, wait for ``(case id, port)`` (None: exit), measure, report."""
    try:
        if suite == "fsdp":
            engine = "torch"  # no DeepSpeed process group: the FSDP case makes its own
        info = _prewarm(dry_run, engine, suite)
        conn.send(("ready", info))
        order = conn.recv()
        if order is None:
            return
        case = next(c for c in suite_cases(suite, dry_run) if c.id == order)
        os.environ["MASTER_PORT"] = str(_free_port())  # a process group per process; other jobs may hold ports
        t0 = time.perf_counter()
        env = Env(dry_run=dry_run, engine=engine)
        hardware, versions = environment(env)
        info["env_seconds"] = round(time.perf_counter() - t0, 2)
        record = fsdp_cases.measure_case(case, env) if suite == "fsdp" else measure_case(case, env)
        record["process"] = info
        conn.send(("done", record, hardware, versions))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which records the case as failed
        try:
            conn.send(("error", {"type": type(exc).__name__, "message": str(exc).splitlines()[0][:500] if str(exc)
                                 else "", "traceback": traceback.format_exc()[-2000:]}))
        except Exception:  # noqa: BLE001
            pass
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        conn.close()
        os._exit(0)  # no interpreter/NCCL teardown: the driver frees the process's memory at exit


def _free_port() -> int:
    """A TCP port free on this host now (for the process group's rendezvous)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CaseProcess:
    """A spawned process that imports while the previous case runs, then measures one case from a fresh
    CUDA context (nothing a case leaves on the device, a ZeRO-3 engine's state included, reaches the next)."""

    def __init__(self, dry_run: bool, engine: str, suite: str = "deepspeed") -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, dry_run, engine, suite))
        self.proc.start()
        child.close()
        self.info: dict[str, Any] | None = None

    def ready(self, timeout: float) -> dict[str, Any] | str:
        """The import report, or why the process is not ready."""
        if self.info is not None:
            return self.info
        try:
            if not self.conn.poll(timeout):
                return f"not ready after {timeout:.0f}s"
            message = self.conn.recv()
        except (EOFError, OSError):
            return f"exited while importing (exit code {self.proc.exitcode})"
        if message[0] != "ready":
            return f"{message[1]['type']}: {message[1]['message']}"
        self.info = message[1]
        return self.info

    def run(self, case: Case, timeout: float) -> tuple[Any, ...]:
        """``("done", record, hardware, versions)``, or ``("error", error)`` (crash, timeout, exception)."""
        try:
            self.conn.send(case.id)
            if not self.conn.poll(timeout):
                self.kill()
                return ("error", {"type": "timeout", "message": f"case process still running after {timeout:.0f}s"})
            message = self.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self.proc.join(10)
            message = ("error", {"type": "crash", "message": f"case process died (exit code {self.proc.exitcode})"})
        self.close()
        return message

    def close(self) -> None:
        """Tell a waiting process to exit (no-op after its case) and wait for its end (its memory freed)."""
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.proc.join(60)
        if self.proc.is_alive():
            self.kill()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(30)


def run_cases(cases: list[Case], *, dry_run: bool, engine: str, out: Path, run_id: str | None,
              budget_seconds: float, suite: str = "deepspeed") -> tuple[dict[str, Any], Path]:
    """Measure ``cases`` in order, each in its own process, until the budget would be exceeded; returns the
    run record and its file. The next case's process imports while the current case runs."""
    stamp = datetime.datetime.now(datetime.UTC)
    run: dict[str, Any] = {"schema": SCHEMA, "kind": "gpu-measured", "suite": suite, "run_id": run_id,
                           "dry_run": dry_run,
                           "device": "cpu" if dry_run else "cuda", "hardware": {}, "versions": {},
                           "started": stamp.isoformat(timespec="seconds"),
                           "budget_seconds": budget_seconds, "warmup_iterations": WARMUP_ITERATIONS,
                           "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                           "isolation": "process per case (multiprocessing spawn): fresh CUDA context each",
                           "notes": ["each case runs in its own process: the baseline is that process's fresh CUDA "
                                     "context (allocated/reserved 0); peak allocated/reserved are above the "
                                     "baseline; device_used is absolute: peak reserved + non-PyTorch memory (CUDA "
                                     "context, NCCL, library workspaces) at the phase's end"],
                           "cases": [], "skipped": []}
    path: Path | None = None
    extra: list[float] = []  # per case: process seconds beyond the case's ``seconds`` guess
    pending: collections.deque[CaseProcess] = collections.deque()
    start: float | None = None
    took = 0.0
    for i, case in enumerate(cases):
        while len(pending) < min(PREWARM_DEPTH, len(cases) - i):
            pending.append(CaseProcess(dry_run, engine, suite))
        worker = pending.popleft()
        ready = worker.ready(READY_TIMEOUT_SECONDS)
        if start is None:
            start = time.monotonic()  # the budget counts from the first process's imports done
        elapsed = time.monotonic() - start
        startup = sorted(extra)[len(extra) // 2] if extra else STARTUP_SECONDS_GUESS
        if elapsed + case.seconds + startup > budget_seconds:
            run["skipped"].append({"case": case.id, "reason": f"budget: {elapsed:.0f}s used of "
                                   f"{budget_seconds:.0f}s, case estimated {case.seconds + startup:.0f}s"})
            pending.appendleft(worker)  # still warm, for the next case
            continue
        if isinstance(ready, str):  # import failure: record it, try a fresh process for the next case
            worker.kill()
            say(f"case {i + 1}/{len(cases)} {case.id}: case process {ready}")
            record: dict[str, Any] = {"case": case.id, "config": any_case_config(case), "engine": "unknown",
                                      "predict": {"command": case_command(case)},
                                      "error": {"type": "process", "message": ready}, "wall_seconds": 0.0}
            result: tuple[Any, ...] = ("error", record["error"])
        else:
            say(f"case {i + 1}/{len(cases)} {case.id} (process ready, imports {ready['import_seconds']}s)")
            t0 = time.perf_counter()
            timeout = max(120.0, 4 * case.seconds + 60)
            # the next cases' processes import while this one runs (they touch no GPU until told to start)
            while len(pending) < min(PREWARM_DEPTH, len(cases) - i - 1):
                pending.append(CaseProcess(dry_run, engine, suite))
            result = worker.run(case, timeout)
            took = time.perf_counter() - t0
            extra.append(max(0.0, took - case.seconds))
        if result[0] == "done":
            record, hardware, versions = result[1], result[2], result[3]
            record.setdefault("process", {})["seconds"] = round(took, 2)
            if not run["hardware"]:
                run["hardware"], run["versions"] = hardware, versions
        elif isinstance(ready, dict):
            record = {"case": case.id, "config": any_case_config(case), "engine": "unknown",
                      "predict": {"command": case_command(case)}, "error": result[1],
                      "wall_seconds": round(took, 2)}
        run["cases"].append(record)
        peak = record.get("measured", {}).get("peak", {})
        say(f"  -> {record['error']['type'] if record['error'] else 'ok'} in {record['wall_seconds']}s "
            f"(process {round(took, 2)}s); peak {peak.get('phase')} allocated "
            f"{peak.get('max_memory_allocated')} used {peak.get('device_used')}")
        if run["run_id"] is None:
            slug = "dry-run-cpu" if dry_run else device_slug(run["hardware"].get("gpu", ""))
            run["run_id"] = f"{stamp.strftime('%Y%m%dT%H%M%SZ')}-{slug}"
        path = out / f"{run['run_id']}.json"
        run["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        write_json(path, run)
    for worker in pending:
        worker.close()
    run["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    if run["run_id"] is None:  # nothing measured (all skipped)
        run["run_id"] = f"{stamp.strftime('%Y%m%dT%H%M%SZ')}-{'dry-run-cpu' if dry_run else 'gpu'}"
    path = out / f"{run['run_id']}.json"
    write_json(path, run)
    return run, path


def device_slug(name: str) -> str:
    """``nvidia-h200`` from the CUDA device name (run ids start with the UTC time, then this)."""
    import re

    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def list_cases(suite: str = "deepspeed") -> None:
    """Print a suite's GPU plan and dry-run cases with their predicting commands."""
    for title, cases in (("GPU plan", suite_cases(suite, False)), ("dry run (CPU)", suite_cases(suite, True))):
        print(f"{title}: {len(cases)} cases, about {sum(c.seconds for c in cases):.0f}s")
        for c in cases:
            print(f"  {c.id:45s} {c.seconds:4.0f}s  {', '.join(c.tags)}")
            print(f"      {case_command(c)}")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="output folder (created); the run is written to OUT/<run-id>.json")
    parser.add_argument("--dry-run", action="store_true", help="tiny configs on the CPU: checks the harness")
    parser.add_argument("--budget-seconds", type=float, default=480.0,
                        help="start no case that would end past this many seconds (default 480)")
    parser.add_argument("--only", nargs="+", metavar="ID", help="only these case ids (see --list)")
    parser.add_argument("--engine", choices=["auto", "deepspeed", "torch"], default="auto",
                        help="DeepSpeed when importable (auto), required, or the torch emulation")
    parser.add_argument("--run-id", help="run id (default: UTC time + device)")
    parser.add_argument("--suite", choices=SUITES, default="deepspeed",
                        help="deepspeed: OpenRLHF-style steps (default); fsdp: verl-style FSDP2 steps")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    if args.list:
        list_cases(args.suite)
        return 0
    if args.out is None:
        parser.error("--out is required")
    try:
        cases = configs.select(suite_cases(args.suite, args.dry_run), args.only)
    except ValueError as exc:
        parser.error(str(exc))
    args.out.mkdir(parents=True, exist_ok=True)
    # This process never touches the GPU (a CUDA context here would count in every case's device reading):
    # each case runs in a process of its own.
    if not args.dry_run and shutil.which("nvidia-smi") is None and not os.path.exists("/dev/nvidiactl"):
        parser.error("no CUDA device (use --dry-run on a CPU)")
    run, path = run_cases(cases, dry_run=args.dry_run, engine=args.engine, out=args.out, run_id=args.run_id,
                          budget_seconds=args.budget_seconds, suite=args.suite)
    problems = validate_run(run)
    failed = [r["case"] for r in run["cases"] if r["error"]]
    say(f"wrote {path}: {len(run['cases'])} measured ({len(failed)} failed: {failed}), "
        f"{len(run['skipped'])} skipped")
    for problem in problems:
        say(f"INVALID: {problem}")
    return 1 if problems or (args.dry_run and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
