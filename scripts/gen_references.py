"""Regenerate the traced reference records in validation/traced/, validation/traced_rl/ (one role of an
RL run: ``memplan trace MODEL --method ppo|grpo|reinforce|rloo --role ...``) and validation/deepspeed_cpu/.

Each case is defined by its ``memplan trace`` command line; the record stores that command, so running it
from the repository root reproduces the measured bytes. Cases run one at a time (full-size fake traces
take 1-6 minutes each on 2 cores; 70B the longest).

    python scripts/gen_references.py --list
    python scripts/gen_references.py --only 'tiny-*'
    python scripts/gen_references.py --engine deepspeed-cpu
    python scripts/gen_references.py --engine fake --only 'rl-*,tiny-rl-*'   # the RL role traces
    python scripts/gen_references.py            # everything (about an hour)
"""

from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VALIDATION = REPO / "validation"

TINY_LLAMA = "tests/data/tiny/llama-tiny.json"
TINY_QWEN2 = "tests/data/tiny/qwen2-tiny.json"
SMALL_LLAMA = "tests/data/tiny/llama-small.json"
SMALL_QWEN2 = "tests/data/tiny/qwen2-small.json"

#: The two sequence/batch settings of the full-size RL cases: (prompt, generation, micro train, micro rollout).
RL_S2048 = "--prompt_max_len 1024 --generate_max_len 1024 --micro_train_batch_size 1 --micro_rollout_batch_size 2"
RL_S4096 = "--prompt_max_len 1024 --generate_max_len 3072 --micro_train_batch_size 2 --micro_rollout_batch_size 4"

#: RL role cases (Llama-3-8B: 128k vocabulary, the fp32 logits dominate the actor's transient).
RL_CASES: dict[str, tuple[str, str]] = {
    "rl-llama-3-8b-grpo-actor-kl-s2048-b1": (f"llama-3-8b --method grpo --role actor {RL_S2048} --use_kl_loss "
                                             "--init_kl_coef 0.001", "GRPO actor, KL loss (k1), no checkpointing"),
    "rl-llama-3-8b-grpo-actor-entropy-s2048-b1": (f"llama-3-8b --method grpo --role actor {RL_S2048} "
                                                  "--init_kl_coef 0 --entropy_loss_coef 0",
                                                  "GRPO actor without reference, entropy of the fp32 logits"),
    "rl-llama-3-8b-grpo-actor-entropy1e-3-s2048-b1": (f"llama-3-8b --method grpo --role actor {RL_S2048} "
                                                      "--init_kl_coef 0 --entropy_loss_coef 0.001",
                                                      "GRPO actor, entropy in the loss (its backward runs)"),
    "rl-llama-3-8b-ppo-actor-kl-s4096-b2-ckpt": (f"llama-3-8b --method ppo --role actor {RL_S4096} --use_kl_loss "
                                                 "--gradient_checkpointing", "PPO actor, KL loss, checkpointing"),
    "rl-llama-3-8b-ppo-critic-s2048-b1": (f"llama-3-8b --method ppo --role critic {RL_S2048}",
                                          "PPO critic (value head), no checkpointing"),
    "rl-llama-3-8b-ppo-critic-s4096-b2-ckpt": (f"llama-3-8b --method ppo --role critic {RL_S4096} "
                                               "--gradient_checkpointing", "PPO critic, checkpointing"),
    "rl-llama-3-8b-ppo-ref-s2048-b2": (f"llama-3-8b --method ppo --role ref {RL_S2048}",
                                       "reference log-probs (forward only, fp32 logits)"),
    "rl-llama-3-8b-ppo-ref-s4096-b4": (f"llama-3-8b --method ppo --role ref {RL_S4096}", ""),
    "rl-llama-3-8b-ppo-reward-s2048-b2": (f"llama-3-8b --method ppo --role reward {RL_S2048}",
                                          "reward model (forward only, value head)"),
    "rl-llama-3-8b-ppo-reward-s4096-b4": (f"llama-3-8b --method ppo --role reward {RL_S4096}", ""),
}

#: case id -> (arguments after ``memplan trace``, one-line description).
CASES: dict[str, tuple[str, str]] = {
    # --- tiny cases, re-run live by tests/tracing/test_trace_live.py ---
    "tiny-sft": (f"{TINY_LLAMA} --method sft --max_len 128 --micro_train_batch_size 2", "CI: tiny llama SFT"),
    "tiny-dpo": (f"{TINY_QWEN2} --method dpo --max_len 64 --micro_train_batch_size 2",
                 "CI: tiny qwen2 (tied embeddings) DPO with reference"),
    "tiny-sft-lora": (f"{TINY_LLAMA} --method sft --max_len 128 --micro_train_batch_size 2 --lora_rank 8 "
                      "--gradient_checkpointing", "CI: tiny llama LoRA r8 all-linear, checkpointing"),
    "tiny-ds-zero2-w2": (f"{TINY_LLAMA} --method sft --engine deepspeed-cpu --max_len 128 "
                         "--micro_train_batch_size 2 --zero_stage 2 --gpus 2", "CI: tiny llama ZeRO-2, 2 ranks"),
    "tiny-rl-ppo-actor": (f"{TINY_LLAMA} --method ppo --role actor --prompt_max_len 48 --generate_max_len 80 "
                          "--micro_train_batch_size 2 --micro_rollout_batch_size 4 --use_kl_loss "
                          "--entropy_loss_coef 0.01", "CI: tiny llama PPO actor, KL loss and entropy"),
    "tiny-rl-ppo-critic": (f"{TINY_LLAMA} --method ppo --role critic --prompt_max_len 48 --generate_max_len 80 "
                           "--micro_train_batch_size 2 --micro_rollout_batch_size 4 --gradient_checkpointing",
                           "CI: tiny llama PPO critic (value head), checkpointing"),
    # --- fake engine, full size ---
    "llama-2-7b-sft-s2048-b8": ("llama-2-7b --method sft --max_len 2048 --micro_train_batch_size 8",
                                "OpenRLHF train_sft defaults"),
    "llama-2-7b-sft-s2048-b1": ("llama-2-7b --method sft --max_len 2048 --micro_train_batch_size 1", ""),
    "llama-2-7b-sft-s2048-b1-eager": ("llama-2-7b --method sft --max_len 2048 --micro_train_batch_size 1 "
                                      "--attn_implementation eager", "eager attention (s x s scores)"),
    "llama-2-7b-sft-s4096-b1-ckpt": ("llama-2-7b --method sft --max_len 4096 --micro_train_batch_size 1 "
                                     "--gradient_checkpointing", ""),
    "llama-2-7b-sft-s2048-b4-ckpt": ("llama-2-7b --method sft --max_len 2048 --micro_train_batch_size 4 "
                                     "--gradient_checkpointing", ""),
    "llama-2-7b-sft-lora16-s2048-b4-ckpt": ("llama-2-7b --method sft --max_len 2048 --micro_train_batch_size 4 "
                                            "--gradient_checkpointing --lora_rank 16 --lora_alpha 32", "LoRA"),
    "llama-2-7b-dpo-s512-b8": ("llama-2-7b --method dpo --max_len 512 --micro_train_batch_size 8",
                               "OpenRLHF train_dpo defaults"),
    "llama-2-7b-rm-s512-b1": ("llama-2-7b --method rm --max_len 512 --micro_train_batch_size 1",
                              "OpenRLHF train_rm defaults"),
    "llama-2-7b-kd-s2048-b2-ckpt": ("llama-2-7b --method kd --max_len 2048 --micro_train_batch_size 2 "
                                    "--gradient_checkpointing", "student + teacher, fp32 softmax"),
    "llama-2-13b-sft-s2048-b1-ckpt": ("llama-2-13b --method sft --max_len 2048 --micro_train_batch_size 1 "
                                      "--gradient_checkpointing", ""),
    "llama-2-13b-dpo-s1024-b2-ckpt": ("llama-2-13b --method dpo --max_len 1024 --micro_train_batch_size 2 "
                                      "--gradient_checkpointing", ""),
    "llama-2-70b-sft-s4096-b1-ckpt": ("llama-2-70b --method sft --max_len 4096 --micro_train_batch_size 1 "
                                      "--gradient_checkpointing", "the motivating case"),
    "llama-2-70b-sft-s2048-b1": ("llama-2-70b --method sft --max_len 2048 --micro_train_batch_size 1", ""),
    "llama-3-8b-sft-s8192-b1-ckpt": ("llama-3-8b --method sft --max_len 8192 --micro_train_batch_size 1 "
                                     "--gradient_checkpointing", "128k vocabulary, long sequence"),
    "llama-3-8b-sft-s2048-b2-eager": ("llama-3-8b --method sft --max_len 2048 --micro_train_batch_size 2 "
                                      "--attn_implementation eager", ""),
    "llama-3-8b-dpo-s2048-b1-ckpt": ("llama-3-8b --method dpo --max_len 2048 --micro_train_batch_size 1 "
                                     "--gradient_checkpointing", ""),
    "qwen2.5-7b-sft-s4096-b2-ckpt": ("qwen2.5-7b --method sft --max_len 4096 --micro_train_batch_size 2 "
                                     "--gradient_checkpointing", ""),
    "qwen2.5-7b-rm-s1024-b4": ("qwen2.5-7b --method rm --max_len 1024 --micro_train_batch_size 4", ""),
    "qwen3-8b-sft-s2048-b1": ("qwen3-8b --method sft --max_len 2048 --micro_train_batch_size 1 "
                              "--attn_implementation sdpa", ""),
    "mistral-7b-sft-s8192-b1-ckpt": ("mistral-7b --method sft --max_len 8192 --micro_train_batch_size 1 "
                                     "--gradient_checkpointing", ""),
    "mixtral-8x7b-sft-s2048-b1-ckpt": ("mixtral-8x7b --method sft --max_len 2048 --micro_train_batch_size 1 "
                                       "--gradient_checkpointing", "MoE (grouped_mm experts)"),
    "gemma-2-9b-sft-s2048-b1-ckpt-eager": ("gemma-2-9b --method sft --max_len 2048 --micro_train_batch_size 1 "
                                           "--gradient_checkpointing --attn_implementation eager",
                                           "256k vocabulary; transformers has no sdpa for gemma2"),
    "gemma-2-9b-rm-s1024-b2-eager": ("gemma-2-9b --method rm --max_len 1024 --micro_train_batch_size 2 "
                                     "--attn_implementation eager", "reward model: no vocabulary logits"),
    # --- fake engine, full size: one role of an OpenRLHF train_ppo_ray run (validation/traced_rl/) ---
    **RL_CASES,
    # --- deepspeed-cpu engine, real DeepSpeed, small models ---
    "llama-small-zero0-w1": (f"{SMALL_LLAMA} --method sft --engine deepspeed-cpu --max_len 256 "
                             "--micro_train_batch_size 2 --zero_stage 0 --gpus 1", "bf16 optimizer, no ZeRO"),
    "llama-small-zero0-w2": (f"{SMALL_LLAMA} --method sft --engine deepspeed-cpu --max_len 256 "
                             "--micro_train_batch_size 2 --zero_stage 0 --gpus 2", ""),
    "llama-small-zero1-w2": (f"{SMALL_LLAMA} --method sft --engine deepspeed-cpu --max_len 256 "
                             "--micro_train_batch_size 2 --zero_stage 1 --gpus 2", ""),
    "llama-small-zero2-w1": (f"{SMALL_LLAMA} --method sft --engine deepspeed-cpu --max_len 256 "
                             "--micro_train_batch_size 2 --zero_stage 2 --gpus 1", ""),
    "llama-small-zero2-w2": (f"{SMALL_LLAMA} --method sft --engine deepspeed-cpu --max_len 256 "
                             "--micro_train_batch_size 2 --zero_stage 2 --gpus 2", ""),
    "llama-small-zero2-w4": (f"{SMALL_LLAMA} --method sft --engine deepspeed-cpu --max_len 256 "
                             "--micro_train_batch_size 2 --zero_stage 2 --gpus 4", ""),
    "llama-small-zero3-w2": (f"{SMALL_LLAMA} --method sft --engine deepspeed-cpu --max_len 256 "
                             "--micro_train_batch_size 2 --zero_stage 3 --gpus 2", ""),
    "llama-small-zero3-w4": (f"{SMALL_LLAMA} --method sft --engine deepspeed-cpu --max_len 256 "
                             "--micro_train_batch_size 2 --zero_stage 3 --gpus 4", ""),
    "llama-small-zero2-offload-w2": (f"{SMALL_LLAMA} --method sft --engine deepspeed-cpu --max_len 256 "
                                     "--micro_train_batch_size 2 --zero_stage 2 --adam_offload --gpus 2",
                                     "DeepSpeedCPUAdam"),
    "llama-small-zero3-offload-w2": (f"{SMALL_LLAMA} --method sft --engine deepspeed-cpu --max_len 256 "
                                     "--micro_train_batch_size 2 --zero_stage 3 --adam_offload --gpus 2", ""),
    "llama-small-zero2-lora8-w2": (f"{SMALL_LLAMA} --method sft --engine deepspeed-cpu --max_len 256 "
                                   "--micro_train_batch_size 2 --zero_stage 2 --lora_rank 8 --gpus 2", "LoRA"),
    "qwen2-small-dpo-zero2-w2": (f"{SMALL_QWEN2} --method dpo --engine deepspeed-cpu --max_len 256 "
                                 "--micro_train_batch_size 2 --zero_stage 2 --gpus 2", "policy + ref (stage 0)"),
    "qwen2-small-rm-zero3-w2": (f"{SMALL_QWEN2} --method rm --engine deepspeed-cpu --max_len 256 "
                                "--micro_train_batch_size 2 --zero_stage 3 --gpus 2", ""),
    "qwen2-small-sft-zero1-w4": (f"{SMALL_QWEN2} --method sft --engine deepspeed-cpu --max_len 256 "
                                 "--micro_train_batch_size 2 --zero_stage 1 --gpus 4", ""),
}


def request_for(case: str):  # type: ignore[no-untyped-def]
    """Parse a case's command exactly as ``memplan trace`` would."""
    from memplan.cli.main import build_parser
    from memplan.cli.trace import _request

    args = build_parser().parse_args(["trace", *shlex.split(CASES[case][0])])
    return _request(args)


def generate(case: str) -> dict:  # type: ignore[type-arg]
    """Trace one case and write its record; returns the record."""
    from memplan.tracing.record import build_record, request_record_path, write_record
    from memplan.tracing.runner import trace

    request = request_for(case)

    def progress(message: str) -> None:
        print(f"  [{case}] {message}", file=sys.stderr, flush=True)

    result = trace(request, progress)
    record = build_record(case, result, CASES[case][1])
    write_record(request_record_path(VALIDATION, request, case), record)
    return record


def main() -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated case ids or globs")
    parser.add_argument("--engine", choices=["fake", "deepspeed-cpu"], help="only this engine's cases")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--skip-existing", action="store_true", help="keep records that already exist")
    args = parser.parse_args()
    patterns = args.only.split(",") if args.only else ["*"]
    cases = [c for c in CASES if any(fnmatch.fnmatch(c, p) for p in patterns)]
    if args.engine:
        cases = [c for c in cases if ("--engine deepspeed-cpu" in CASES[c][0]) == (args.engine == "deepspeed-cpu")]
    if args.list:
        for case in cases:
            print(f"{case:<42} memplan trace {CASES[case][0]}")
        return 0
    from memplan.tracing.record import request_record_path

    failures: list[str] = []
    for index, case in enumerate(cases, 1):
        request = request_for(case)
        if args.skip_existing and request_record_path(VALIDATION, request, case).is_file():
            print(f"[{index}/{len(cases)}] {case}: exists, skipped", flush=True)
            continue
        start = time.monotonic()
        print(f"[{index}/{len(cases)}] {case}: memplan trace {CASES[case][0]}", flush=True)
        try:
            record = generate(case)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other cases
            failures.append(case)
            print(f"[{index}/{len(cases)}] {case}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        peak = record["measured"]["peak_bytes"]
        print(f"[{index}/{len(cases)}] {case}: peak {peak / 2**30:.2f} GiB in {record['measured']['peak_phase']} "
              f"({time.monotonic() - start:.0f} s)", flush=True)
    if failures:
        print(f"failed: {', '.join(failures)}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
