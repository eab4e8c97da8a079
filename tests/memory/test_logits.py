"""Vocabulary-sized tensors, checked against hand arithmetic."""

from __future__ import annotations

from memplan.dtypes import DType
from memplan.memory import logits as lg
from memplan.memory.logits import LogProbImpl
from memplan.model import load_model_spec

LLAMA3 = load_model_spec("llama-3-8b")  # V 128256, h 4096
GEMMA2 = load_model_spec("gemma-2-9b")  # V 256000, final logit soft-capping 30
N = 4096  # B 1 × T 4096


def test_fp32_logits_llama3_8b() -> None:
    # 4 B × 128256 × 4096 = 2,101,346,304
    assert lg.logits_bytes(LLAMA3, N, lg.LOGITS_FP32) == 2_101_346_304
    # the bf16 LM-head output: 2 × 128256 × 4096 = 1,050,673,152
    assert lg.logits_bytes(LLAMA3, N, DType.BF16) == 1_050_673_152


def test_logprob_backward_by_hand() -> None:
    # GPU: fp32 dlogits (4) + its bf16 cast (2) = 6 × 128256 × 4096 = 3,152,019,456
    assert lg.logprob_backward_bytes(LLAMA3, N, LogProbImpl.FLASH_ATTN_TRITON, DType.BF16) == 3_152_019_456
    # torch fallback (a CPU trace): three fp32 [N, V] at the out-of-place sum = 12 × 128256 × 4096
    assert lg.logprob_backward_bytes(LLAMA3, N, LogProbImpl.TORCH_CHUNKED, DType.BF16) == 6_304_038_912


def test_lm_head_weight_grad() -> None:
    # V × h × 2 = 128256 × 4096 × 2 = 1,050,673,152; none when the head is frozen (LoRA)
    assert lg.lm_head_weight_grad_bytes(LLAMA3, DType.BF16, trained=True) == 1_050_673_152
    assert lg.lm_head_weight_grad_bytes(LLAMA3, DType.BF16, trained=False) == 0


def test_gemma2_softcap() -> None:
    # tanh keeps its bf16 output: 2 × 256000 × 4096 = 2,097,152,000
    assert lg.softcap_saved_bytes(GEMMA2, N, DType.BF16, trained=True) == 2_097_152_000
    assert lg.softcap_saved_bytes(GEMMA2, N, DType.BF16, trained=False) == 0
    assert lg.softcap_saved_bytes(LLAMA3, N, DType.BF16, trained=True) == 0


def test_entropy() -> None:
    # softmax over the fp32 logits: another 4 × V × N
    assert lg.entropy_bytes(LLAMA3, N) == 2_101_346_304


def test_kd_by_hand() -> None:
    # 6 fp32 [N, V] (CE log_softmax, teacher logits, teacher probs, student log-probs, product,
    # filled product) + 1 bool mask: (6 × 4 + 1) × 128256 × 4096 = 25 × 525,336,576
    assert lg.kd_loss_bytes(LLAMA3, N) == 25 * 525_336_576


def test_value_head_is_tiny() -> None:
    # values [N] in bf16: 2 × 4096
    assert lg.value_head_bytes(N, DType.BF16) == 8192
