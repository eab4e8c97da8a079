"""Ground truth from DeepSpeed itself, for memplan's model-state formulas (memory/model_states.py).

Two subcommands, both run in the project's venv (torch CPU + deepspeed 0.19.8):

``estimator``: call DeepSpeed's own estimators (``estimate_zero2_model_states_mem_needs`` and
``estimate_zero3_model_states_mem_needs``, plus the printing ``*_all_cold`` wrappers) for the cases in
docs/reference (Llama-2-7B; DeepSpeed docs t5-3b; HF docs T0_3B) and write
validation/exact/deepspeed_estimator.json::

    python scripts/probe_deepspeed_buffers.py estimator --out validation/exact/deepspeed_estimator.json

``probe``: run real DeepSpeed on its CPU accelerator (gloo) with a tiny Llama, record every tensor
DeepSpeed allocates with ``torch.distributed._tools.mem_tracker.MemTracker`` through init, forward,
backward and step, and print per-phase bytes (see reference/tracing.md §2)::

    python -m torch.distributed.run --nproc_per_node 2 scripts/probe_deepspeed_buffers.py probe --stage 2

Small sizes only (hidden <= 512): the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path

LLAMA2_7B_PARAMS = 6_738_415_616  # LlamaForCausalLM, validation/exact/param_counts.json
LLAMA2_7B_LARGEST_LAYER = 131_072_000  # embed_tokens (= lm_head) 32000 × 4096
#: DeepSpeed docs (docs/code-docs/source/memory.rst) print "2851M total params", "32M largest layer".
T5_3B_PARAMS_PRINTED = 2_851_000_000
T5_3B_LARGEST_LAYER_PRINTED = 32_000_000
#: HF transformers docs (main_classes/deepspeed.md) print "2783M total params" for bigscience/T0_3B.
T0_3B_PARAMS_PRINTED = 2_783_000_000
T0_3B_LARGEST_LAYER_PRINTED = 32_000_000


def _estimator_cases() -> list[dict]:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    models = [("llama-2-7b", LLAMA2_7B_PARAMS, LLAMA2_7B_LARGEST_LAYER, [(1, 1), (1, 8), (2, 8)]),
              ("t5-3b (DeepSpeed docs)", T5_3B_PARAMS_PRINTED, T5_3B_LARGEST_LAYER_PRINTED, [(1, 8)]),
              ("T0_3B (HF docs)", T0_3B_PARAMS_PRINTED, T0_3B_LARGEST_LAYER_PRINTED, [(1, 1)])]
    cases = []
    for name, params, largest, layouts in models:
        for nodes, gpus in layouts:
            for offload in (True, False):
                cpu, gpu = estimate_zero2_model_states_mem_needs(total_params=params, num_gpus_per_node=gpus,
                                                                 num_nodes=nodes, cpu_offload=offload)
                cases.append({"model": name, "stage": 2, "total_params": params, "num_nodes": nodes,
                              "num_gpus_per_node": gpus, "cpu_offload": offload, "gpu_bytes": gpu,
                              "cpu_bytes": cpu})
            for offload, offload_params in ((True, True), (True, False), (False, False)):
                for zero_init in (True, False):
                    cpu, gpu, largest_mem = estimate_zero3_model_states_mem_needs(
                        total_params=params, largest_layer_params=largest, num_gpus_per_node=gpus,
                        num_nodes=nodes, cpu_offload=offload, cpu_offload_params=offload_params,
                        zero_init=zero_init)
                    cases.append({"model": name, "stage": 3, "total_params": params,
                                  "largest_layer_params": largest, "num_nodes": nodes, "num_gpus_per_node": gpus,
                                  "cpu_offload": offload, "cpu_offload_params": offload_params,
                                  "zero_init": zero_init, "gpu_bytes": gpu, "cpu_bytes": cpu,
                                  "largest_layer_memory": largest_mem})
    return cases


def _printed_tables() -> dict[str, str]:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    tables = {}
    for nodes, gpus in ((1, 1), (1, 8)):
        for stage, fn, kwargs in ((2, estimate_zero2_model_states_mem_needs_all_cold, {}),
                                  (3, estimate_zero3_model_states_mem_needs_all_cold,
                                   {"largest_layer_params": LLAMA2_7B_LARGEST_LAYER})):
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                fn(total_params=LLAMA2_7B_PARAMS, num_gpus_per_node=gpus, num_nodes=nodes, **kwargs)
            tables[f"llama-2-7b zero{stage} {nodes}x{gpus}"] = buffer.getvalue()
    return tables


#: Values the published docs print (public-cases.md rows 28-30): GiB labelled "GB".
PUBLISHED = [
    {"row": 28, "source": "deepspeedai/DeepSpeed:docs/code-docs/source/memory.rst", "model": "t5-3b",
     "stage": 2, "num_nodes": 1, "num_gpus_per_node": 8,
     "printed": {"offload_optimizer=cpu": {"cpu": "127.48GB", "gpu": "5.31GB"},
                 "offload_optimizer=none": {"cpu": "127.48GB", "gpu": "15.93GB"}},
     "note": "15.93 GB = 6P (old formula 4P + 16P/N, before deepspeedai/DeepSpeed#5099); the 0.19.8 code "
             "gives 2P + 18P/N"},
    {"row": 29, "source": "deepspeedai/DeepSpeed:docs/code-docs/source/memory.rst", "model": "t5-3b",
     "stage": 3, "num_nodes": 1, "num_gpus_per_node": 8,
     "printed": {"offload_param+optimizer, zero_init=1": {"cpu": "71.71GB", "gpu": "0.12GB"},
                 "offload_param+optimizer, zero_init=0": {"cpu": "127.48GB", "gpu": "0.12GB"},
                 "offload_optimizer, zero_init=1": {"cpu": "63.74GB", "gpu": "0.79GB"},
                 "offload_optimizer, zero_init=0": {"cpu": "127.48GB", "gpu": "0.79GB"},
                 "none, zero_init=1": {"cpu": "1.47GB", "gpu": "6.10GB"},
                 "none, zero_init=0": {"cpu": "127.48GB", "gpu": "6.10GB"}}},
    {"row": 30, "source": "huggingface/transformers:docs/source/en/main_classes/deepspeed.md", "model": "T0_3B",
     "stage": 3, "num_nodes": 1, "num_gpus_per_node": 1,
     "printed": {"none": {"gpu": "46.91GB"}, "offload_optimizer": {"cpu": "62.23GB", "gpu": "5.43GB"},
                 "offload_param+optimizer": {"cpu": "70GB", "gpu": "0.25GB"}}},
]


def write_estimator_json(out: Path) -> None:
    import deepspeed

    data = {
        "generated_by": "python scripts/probe_deepspeed_buffers.py estimator --out " + str(out),
        "deepspeed_version": deepspeed.__version__,
        "functions": {
            "zero2": "deepspeed/runtime/zero/stage_1_and_2.py:4017-4034 estimate_zero2_model_states_mem_needs",
            "zero3": "deepspeed/runtime/zero/stage3.py:4016-4052 estimate_zero3_model_states_mem_needs",
        },
        "units": "bytes (int); the *_all_cold tables print GiB labelled GB",
        "additional_buffer_factor": 1.5,
        "inputs_note": "t5-3b and T0_3B inputs are the rounded counts the docs print, so their bytes differ "
                       "slightly from the docs' live-model outputs",
        "cases": _estimator_cases(),
        "printed_tables": _printed_tables(),
        "published": PUBLISHED,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")


# --- probe: real DeepSpeed on the CPU accelerator ------------------------------------------------


TINY_LLAMA = {"model_type": "llama", "vocab_size": 1024, "hidden_size": 256, "intermediate_size": 688,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
              "max_position_embeddings": 128, "tie_word_embeddings": False}


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**{k: v for k, v in TINY_LLAMA.items() if k != "model_type"}))


def _grouped_params(model) -> list[dict]:
    """OpenRLHF's two AdamW groups: weight decay, and none for biases and norm weights."""
    no_decay = ("bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if not any(k in n for k in no_decay)], "weight_decay": 0.0},
            {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0}]


class _PhasePeaks:
    """Peak bytes per phase from a MemTracker: reset the tracker's running peak at each phase start."""

    def __init__(self, tracker) -> None:
        self.tracker = tracker

    def current(self) -> int:
        return sum(s["Total"] for d, s in self.tracker.get_tracker_snapshot().items() if str(d) != "meta")

    def start(self) -> int:
        import copy

        snap = self.tracker.get_tracker_snapshot()
        self.tracker._peak_mem_snap = copy.deepcopy(snap)  # private: probe only
        self.tracker._peak_mem = {d: s["Total"] for d, s in snap.items()}
        return self.current()

    def peak(self) -> int:
        return sum(v for d, v in self.tracker._peak_mem.items() if str(d) != "meta")


def run_probe(args: argparse.Namespace) -> None:
    import deepspeed
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    torch.manual_seed(0)
    model = _tiny_llama().to(torch.bfloat16)
    zero = {"stage": args.stage, "reduce_bucket_size": args.reduce_bucket_size,
            "offload_optimizer": {"device": "cpu" if args.adam_offload else "none", "pin_memory": False}}
    if args.stage == 3:
        zero.update({"stage3_prefetch_bucket_size": args.prefetch, "stage3_max_reuse_distance": args.reuse,
                     "stage3_max_live_parameters": args.live})
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
              "zero_optimization": zero, "gradient_clipping": 1.0}
    if args.grad_accum_dtype:
        config["data_types"] = {"grad_accum_dtype": args.grad_accum_dtype}
    groups = _grouped_params(model)
    optimizer = (deepspeed.ops.adam.DeepSpeedCPUAdam(groups, lr=1e-5) if args.adam_offload
                 else torch.optim.AdamW(groups, lr=1e-5))
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    rows = []
    with tracker:
        peaks = _PhasePeaks(tracker)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        rows.append(("init", peaks.current(), peaks.peak()))
        ids = torch.randint(0, TINY_LLAMA["vocab_size"], (1, args.seq))
        for step in range(args.steps):
            tracker.reset_mod_stats()
            before = peaks.start()
            loss = engine(input_ids=ids, labels=ids).loss
            rows.append((f"{step} forward", before, peaks.current(), peaks.peak()))
            before = peaks.start()
            engine.backward(loss)
            del loss
            rows.append((f"{step} backward", before, peaks.current(), peaks.peak()))
            before = peaks.start()
            engine.step()
            rows.append((f"{step} step", before, peaks.current(), peaks.peak()))
    rank = os.environ.get("RANK", "0")
    if rank == "0":
        _print_prediction(args, world=int(os.environ.get("WORLD_SIZE", "1")))
    for row in rows:
        print(f"rank {rank} {row[0]:>12}: " + "  ".join(f"{name}={value:,}" for name, value in
                                                     zip(("before", "after", "peak") if len(row) == 4
                                                         else ("after", "peak"), row[1:])))


def _print_prediction(args: argparse.Namespace, world: int) -> None:
    """memplan's terms for the same run (GPU and host together: the CPU accelerator holds both)."""
    from memplan.dtypes import DType
    from memplan.memory.sharding import ZeroStage
    from memplan.memory.model_states import trained_model_states
    from memplan.memory.zero import ZeroConfig, layout_from_tree
    from memplan.model import param_tree, spec_from_config

    layout = layout_from_tree(param_tree(spec_from_config(TINY_LLAMA, name="tiny-llama")))
    accum = DType.from_name(args.grad_accum_dtype) if args.grad_accum_dtype else DType.BF16
    zero = ZeroConfig(stage=ZeroStage(args.stage), dp_degree=world, ranks_per_node=world, param_dtype=DType.BF16,
                      grad_accum_dtype=accum, offload_optimizer=args.adam_offload, pin_memory=False,
                      overlap_comm=args.stage == 3, reduce_bucket_size=args.reduce_bucket_size,
                      prefetch_bucket_size=args.prefetch, max_reuse_distance=args.reuse,
                      max_live_parameters=args.live)
    terms = trained_model_states(layout, zero, role="model")
    for term in terms:
        print(f"memplan {term.path:<40} {str(term.phase):<28} {term.bytes:>14,}")
    persistent = sum(t.bytes for t in terms if t.phase is None)
    print(f"memplan persistent {persistent:,}")
    for phase in sorted({t.phase for t in terms if t.phase is not None}):
        print(f"memplan {phase} transient {sum(t.bytes for t in terms if t.phase == phase):,}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    est = sub.add_parser("estimator")
    est.add_argument("--out", type=Path, default=Path("validation/exact/deepspeed_estimator.json"))
    probe = sub.add_parser("probe")
    probe.add_argument("--stage", type=int, default=2)
    probe.add_argument("--adam-offload", action="store_true")
    probe.add_argument("--grad-accum-dtype", default=None)
    probe.add_argument("--reduce-bucket-size", type=int, default=5_000_000)
    probe.add_argument("--prefetch", type=int, default=0)
    probe.add_argument("--reuse", type=int, default=0)
    probe.add_argument("--live", type=int, default=1_000_000_000)
    probe.add_argument("--seq", type=int, default=64)
    probe.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "estimator":
        write_estimator_json(args.out)
    else:
        run_probe(args)


if __name__ == "__main__":
    sys.exit(main())
