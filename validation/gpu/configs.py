"""The configurations the GPU harness measures, cheapest first, and the memplan command predicting each.

Every case is one OpenRLHF-style run on one GPU (world size 1): a model preset with random weights, a
method (sft, rm, dpo, or a forward-only ``rollout`` pass that scores sequences the way make-experience
does), ZeRO stage, Adam offload, LoRA, gradient checkpointing, attention implementation, sequence length
and micro-batch. ``seconds`` is a rough wall-clock guess on an H200 (model build, DeepSpeed start-up, two
steps) used by ``--budget-seconds`` to skip cases that would not finish in time; it is ordering data, not a
measurement.

Standard library only: ``measure.py --list`` and the tests read this without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: GPUs per measured run (the harness runs one process on one GPU).
WORLD_SIZE = 1

#: GPU named in the predicting commands of the GPU plan (the RL estimator sizes vLLM's KV budget from it;
#: single-model estimates only use it for the verdict).
GPU_NAME = "h200-141g"

#: How OpenRLHF computes log-probs where flash-attn is not installed (the device image has none): the torch
#: fallback, gather + chunked logsumexp (memplan's ``LogProbImpl.TORCH_CHUNKED``).
LOGPROB_IMPL = "torch_chunked"

#: ``--remote_rm_url`` placeholder for rollout predictions: no reward model is loaded (none is measured).
REMOTE_RM = "http://localhost:5000/get_reward"


@dataclass(frozen=True, kw_only=True)
class Case:
    """One measured configuration."""

    id: str
    """Case id (file-name safe)."""
    model: str
    """memplan preset name, or a path to a config.json (dry run)."""
    method: str
    """sft, rm, dpo, or rollout (forward-only scoring, no optimizer)."""
    max_len: int
    """Tokens per sequence (rollout: prompt + generation)."""
    micro_batch: int
    """Sequences per micro-batch (dpo/rm: pairs, so 2x rows; rollout: micro_rollout_batch_size)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage (OpenRLHF default 2)."""
    adam_offload: bool = False
    """``--adam_offload``."""
    lora_rank: int = 0
    """``--lora_rank`` (alpha = 2 x rank, all linear layers)."""
    gradient_checkpointing: bool = False
    """``--gradient_checkpointing``."""
    attn: str = "sdpa"
    """``--attn_implementation``: sdpa (torch's flash kernel on GPU) or eager."""
    seconds: float = 10.0
    """Rough wall-clock guess on an H200, for the budget."""
    tags: tuple[str, ...] = field(default=())
    """What the case exercises (for --list)."""

    @property
    def trains(self) -> bool:
        """False for forward-only rollout scoring."""
        return self.method != "rollout"


def openrlhf_flags(case: Case) -> list[str]:
    """The OpenRLHF flags of a training case (as memplan estimate takes them)."""
    flags = ["--max_len", str(case.max_len), "--micro_train_batch_size", str(case.micro_batch),
             "--zero_stage", str(case.zero_stage), "--param_dtype", "bf16", "--attn_implementation", case.attn]
    if case.gradient_checkpointing:
        flags.append("--gradient_checkpointing")
    if case.adam_offload:
        flags.append("--adam_offload")
    if case.lora_rank:
        flags += ["--lora_rank", str(case.lora_rank), "--lora_alpha", str(2 * case.lora_rank),
                  "--target_modules", "all-linear"]
    if case.method == "dpo":
        flags += ["--ref_pretrain", case.model]
    return flags


def rollout_flags(case: Case) -> list[str]:
    """GRPO flags whose make-experience phase scores ``micro_batch`` sequences of ``max_len`` with the actor."""
    prompt = case.max_len // 2
    return ["--actor_num_nodes", "1", "--actor_num_gpus_per_node", "1", "--vllm_num_engines", "1",
            "--vllm_tensor_parallel_size", "1", "--colocate_all_models", "--remote_rm_url", REMOTE_RM,
            "--init_kl_coef", "0", "--micro_rollout_batch_size", str(case.micro_batch),
            "--prompt_max_len", str(prompt), "--generate_max_len", str(case.max_len - prompt),
            "--zero_stage", str(case.zero_stage), "--param_dtype", "bf16", "--attn_implementation", case.attn]


def memplan_command(case: Case, gpu: str = GPU_NAME) -> str:
    """The ``memplan estimate`` command that predicts ``case`` (stored in its record)."""
    if case.trains:
        # The harness steps once per micro-batch (gradient accumulation 1), so the global batch is one
        # micro-batch per GPU; without the flag memplan would assume OpenRLHF's --train_batch_size 128.
        words = ["memplan", "estimate", case.model, "--method", case.method, "--gpus", str(WORLD_SIZE), "--gpu", gpu,
                 *openrlhf_flags(case), "--train_batch_size", str(case.micro_batch * WORLD_SIZE)]
    else:
        words = ["memplan", "estimate", case.model, "--method", "grpo", "--gpu", gpu, *rollout_flags(case)]
    return " ".join(words)


def _c(id_: str, model: str, method: str, max_len: int, micro_batch: int, seconds: float, *tags: str,
       **kw: object) -> Case:
    return Case(id=id_, model=model, method=method, max_len=max_len, micro_batch=micro_batch, seconds=seconds,
                tags=tags, **kw)  # type: ignore[arg-type]


Q05, Q15, Q3, L1, L3, Q17, L8, Q8 = ("qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "llama-3.2-1b", "llama-3.2-3b",
                                     "qwen3-1.7b", "llama-3-8b", "qwen3-8b")

#: The GPU plan, cheapest first (about 25 cases, aiming at <= 8 minutes on one H200 with DeepSpeed).
GPU_CASES: tuple[Case, ...] = (
    _c("qwen2.5-0.5b-sft-z2-s1024-b1", Q05, "sft", 1024, 1, 6, "sdpa", "zero2"),
    _c("qwen2.5-0.5b-sft-z2-s1024-b1-eager", Q05, "sft", 1024, 1, 5, "eager", attn="eager"),
    _c("qwen2.5-0.5b-rollout-s2048-b8", Q05, "rollout", 2048, 8, 4, "rollout forward"),
    _c("qwen2.5-0.5b-sft-z0-s2048-b2", Q05, "sft", 2048, 2, 6, "zero0", zero_stage=0),
    _c("qwen2.5-0.5b-sft-z1-s2048-b2", Q05, "sft", 2048, 2, 6, "zero1", zero_stage=1),
    _c("qwen2.5-0.5b-sft-z3-s2048-b2", Q05, "sft", 2048, 2, 8, "zero3", zero_stage=3),
    _c("qwen2.5-0.5b-sft-z2-offload-s2048-b2", Q05, "sft", 2048, 2, 10, "adam offload", adam_offload=True),
    _c("qwen2.5-0.5b-sft-z2-s4096-b1-ckpt", Q05, "sft", 4096, 1, 6, "checkpointing", gradient_checkpointing=True),
    _c("qwen2.5-0.5b-rm-z2-s1024-b2", Q05, "rm", 1024, 2, 6, "reward model"),
    _c("qwen2.5-0.5b-dpo-z2-s1024-b1", Q05, "dpo", 1024, 1, 8, "dpo + reference"),
    _c("llama-3.2-1b-sft-z2-s2048-b2", L1, "sft", 2048, 2, 9, "llama"),
    _c("llama-3.2-1b-sft-z2-s2048-b2-ckpt", L1, "sft", 2048, 2, 9, "checkpointing", gradient_checkpointing=True),
    _c("llama-3.2-1b-sft-lora16-s2048-b2-ckpt", L1, "sft", 2048, 2, 8, "lora", lora_rank=16,
       gradient_checkpointing=True),
    _c("llama-3.2-1b-dpo-z3-s1024-b2", L1, "dpo", 1024, 2, 14, "dpo zero3", zero_stage=3),
    _c("qwen2.5-1.5b-rm-z2-s2048-b1", Q15, "rm", 2048, 1, 12, "reward model"),
    _c("qwen2.5-1.5b-sft-z2-s8192-b1-ckpt", Q15, "sft", 8192, 1, 12, "8k", gradient_checkpointing=True),
    _c("qwen2.5-1.5b-sft-z3-offload-s4096-b1-ckpt", Q15, "sft", 4096, 1, 20, "zero3 + offload", zero_stage=3,
       adam_offload=True, gradient_checkpointing=True),
    _c("qwen3-1.7b-sft-z2-s16384-b1-ckpt", Q17, "sft", 16384, 1, 16, "16k", gradient_checkpointing=True),
    _c("llama-3.2-3b-sft-z2-s4096-b1-ckpt", L3, "sft", 4096, 1, 18, "3b", gradient_checkpointing=True),
    _c("llama-3.2-3b-sft-z2-s2048-b1-eager-ckpt", L3, "sft", 2048, 1, 18, "eager", attn="eager",
       gradient_checkpointing=True),
    _c("llama-3.2-3b-dpo-lora16-s2048-b1", L3, "dpo", 2048, 1, 14, "dpo lora", lora_rank=16),
    _c("qwen2.5-3b-sft-z3-s4096-b2-ckpt", Q3, "sft", 4096, 2, 22, "zero3 3b", zero_stage=3,
       gradient_checkpointing=True),
    _c("llama-3-8b-rollout-s4096-b4", L8, "rollout", 4096, 4, 14, "8b rollout forward"),
    _c("llama-3-8b-sft-lora16-s4096-b1-ckpt", L8, "sft", 4096, 1, 22, "8b lora", lora_rank=16,
       gradient_checkpointing=True),
    _c("qwen3-8b-sft-z3-lora16-s16384-b1-ckpt", Q8, "sft", 16384, 1, 28, "8b lora 16k zero3", zero_stage=3,
       lora_rank=16, gradient_checkpointing=True),
)

#: Tiny configs for ``--dry-run`` on the CPU: the same code paths (sft/rm/dpo/rollout, ZeRO 0/2/3, offload,
#: LoRA, checkpointing, eager), seconds each.
TINY_LLAMA = "tests/data/tiny/llama-tiny.json"
TINY_QWEN2 = "tests/data/tiny/qwen2-tiny.json"
DRY_RUN_CASES: tuple[Case, ...] = (
    _c("tiny-sft-z2-s128-b2", TINY_LLAMA, "sft", 128, 2, 3, "sft"),
    _c("tiny-sft-z0-s128-b2-eager", TINY_LLAMA, "sft", 128, 2, 3, "zero0 eager", zero_stage=0, attn="eager"),
    _c("tiny-rollout-s128-b2", TINY_LLAMA, "rollout", 128, 2, 1, "rollout forward"),
    _c("tiny-rm-z2-s64-b2", TINY_QWEN2, "rm", 64, 2, 3, "reward model"),
    _c("tiny-dpo-z3-s64-b2", TINY_QWEN2, "dpo", 64, 2, 4, "dpo zero3", zero_stage=3),
    _c("tiny-sft-lora8-z2-offload-s128-b2-ckpt", TINY_LLAMA, "sft", 128, 2, 3, "lora offload ckpt", lora_rank=8,
       adam_offload=True, gradient_checkpointing=True),
)


def select(cases: tuple[Case, ...], only: list[str] | None) -> list[Case]:
    """``cases`` in plan order, or just the ids in ``only`` (unknown ids raise ValueError)."""
    if not only:
        return list(cases)
    known = {c.id: c for c in cases}
    missing = [i for i in only if i not in known]
    if missing:
        raise ValueError(f"unknown case ids: {', '.join(missing)} (see --list)")
    return [c for c in cases if c.id in only]
