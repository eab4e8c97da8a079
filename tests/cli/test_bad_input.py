"""Every bad input of issue 11 (items 1, 2, 5): exit 2 at once, one line, naming the flag as typed.

The allowed values each message states come from the rule's source (DeepSpeed's batch assertion,
vLLM's heads rule, the model's config.json), worked out by hand in the comments.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from memplan.cli.main import main

SFT = ["estimate", "llama-3-8b", "--method", "sft"]
PPO = ["estimate", "llama-3-8b", "--method", "ppo", "--remote_rm_url", "http://rm"]
CHECK_SFT = "--module openrlhf.cli.train_sft --pretrain llama-3-8b"
PLAN = ["plan", "llama-3-8b", "--method", "ppo", "--gpu", "a100-80g"]
#: Wall time a refusal may take: it happens before any estimate (the unbounded runs took minutes).
REFUSAL_SECONDS = 3.0


def _refused(capsys, argv: list[str], start: str) -> str:
    began = time.perf_counter()
    status = main(argv)
    elapsed = time.perf_counter() - began
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2, captured.out[:400]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"memplan: error: {start}"), lines[0]
    assert captured.out == ""
    assert elapsed < REFUSAL_SECONDS
    return lines[0]


@pytest.mark.parametrize(("extra", "start"), [
    (["--gpus", "1000000000"], "--gpus: must be between 1 and 262144, got 1000000000"),
    (["--gpus", "0"], "--gpus: must be between 1 and"),
    (["--gpus", "100"], "--gpus: 100 GPUs do not fill whole nodes of 8"),
    (["--nodes", "1000000"], "--nodes: must be between 1 and 262144, got 1000000"),
    (["--gpus-per-node", "1000"], "--gpus-per-node: must be between 1 and 72, got 1000"),
    (["--nodes", "10000", "--gpus-per-node", "72"], "--nodes: 10000 nodes × 72 GPUs is more than 262144"),
    (["--lora_rank", "-8"], "--lora_rank: must be between 0 and 65536 (0 means no LoRA), got -8"),
    (["--train_batch_size", "0"], "--train_batch_size: must be between 1 and"),
    (["--train_batch_size", "-4"], "--train_batch_size: must be between 1 and"),
    # DeepSpeed asserts train_batch == micro × accumulation × world: 7 is no multiple of 1 × 8 = 8
    (["--train_batch_size", "7", "--micro_train_batch_size", "1", "--gpus", "8"],
     "--train_batch_size: 7 must be a multiple of --micro_train_batch_size 1 × 8 GPUs = 8"),
    (["--max_len", "1000000000000"], "--max_len: must be between 1 and 16777216, got 1000000000000"),
    (["--max_len", "1e12"], "--max_len: expected an integer, got '1e12'"),
    (["--grad_accum_dtype", "bogus"], "--grad_accum_dtype: must be one of fp32,"),
    (["--zpg", "-1"], "--zpg: must be between 0 and"),
    (["--ds.zpg", "-1"], "--ds.zpg: must be between 0 and"),
    (["--zero_stage", "7"], "--zero_stage: must be between 0 and 3, got 7"),
    (["--micro_train_batch_size", "0"], "--micro_train_batch_size: must be between 1 and"),
    # errors found past the parser name the typed spelling too: 3 does not divide 8 ranks (8 % 3 = 2);
    # train_sft.py asserts packing for ring attention
    (["--ds.zpg", "3", "--gpus", "8"], "--ds.zpg: 3 must divide the 8 data-parallel ranks"),
    (["--ds.ring_attn_size", "2"], "--ds.ring_attn_size: ring attention needs packing_samples"),
    (["--gpu", ""], "--gpu: empty"),
    (["--openrlhf-version", ""], "--openrlhf-version: empty"),
])
def test_estimate_refuses(capsys, extra: list[str], start: str) -> None:
    _refused(capsys, SFT + extra, start)


@pytest.mark.parametrize(("extra", "start"), [
    (["--vllm_gpu_memory_utilization", "0"], "--vllm_gpu_memory_utilization: must be in (0, 1]"),
    (["--vllm_tensor_parallel_size", "0"], "--vllm_tensor_parallel_size: must be between 1 and"),
    # Meta-Llama-3-8B has 32 attention heads (config.json num_attention_heads): 3 and 64 do not divide 32
    (["--vllm_num_engines", "2", "--vllm_tensor_parallel_size", "3"],
     "--vllm_tensor_parallel_size: 3 does not divide the model's 32 attention heads"),
    (["--vllm_num_engines", "1", "--vllm_tensor_parallel_size", "64"],
     "--vllm_tensor_parallel_size: 64 does not divide the model's 32 attention heads"),
    (["--vllm_num_engines", "-1"], "--vllm_num_engines: must be between 0 and"),
    (["--generate_max_len", "-1"], "--generate_max_len: must be between 1 and"),
    (["--prompt_max_len", "0"], "--prompt_max_len: must be between 1 and"),
    (["--init_kl_coef", "nan"], "--init_kl_coef: must be a finite number, got nan"),
    (["--init_kl_coef", "inf"], "--init_kl_coef: must be a finite number, got inf"),
    # Meta-Llama-3-8B: max_position_embeddings 8192, no rope_scaling; vLLM refuses max_model_len 100000
    (["--vllm_num_engines", "1", "--max_len", "100000"],
     "--max_len: sequences of 100000 tokens exceed the model's max_position_embeddings 8192"),
    (["--actor_num_nodes", "10000000"], "--actor_num_nodes: must be between 1 and 262144"),
    (["--critic_num_gpus_per_node", "10000000"], "--critic_num_gpus_per_node: must be between 1 and 72"),
    (["--ref_num_nodes", "10000000"], "--ref_num_nodes: must be between 1 and"),
    (["--vllm_num_engines", "10000000"], "--vllm_num_engines: must be between 0 and 262144"),
    (["--vllm_tensor_parallel_size", "100000000000"], "--vllm_tensor_parallel_size: must be between 1 and"),
    (["--vllm_tensor_parallel_size", "1e11"], "--vllm_tensor_parallel_size: expected an integer"),
    # 100,000 engines × 8 GPUs = 800,000 GPUs, beyond any cluster
    (["--vllm_num_engines", "100000", "--vllm_tensor_parallel_size", "8"],
     "--vllm_num_engines: the run asks for 8000"),
    (["--actor_num_nodes", "100000", "--actor_num_gpus_per_node", "8"], "--actor_num_nodes: the run asks for"),
])
def test_rl_estimate_refuses(capsys, extra: list[str], start: str) -> None:
    _refused(capsys, PPO + extra, start)


@pytest.mark.parametrize(("launcher", "start"), [
    ("deepspeed --num_gpus -3", "deepspeed --num_gpus: must be between 1 and 72"),
    ("deepspeed --num_gpus 0", "deepspeed --num_gpus: must be between 1 and 72"),
    ("deepspeed --num_gpus 1000000000", "deepspeed --num_gpus: must be between 1 and 72"),
    ("deepspeed --num_gpus 1e9", "deepspeed --num_gpus: expected an integer, got '1e9'"),
    ("deepspeed --num_gpus 2.5", "deepspeed --num_gpus: expected an integer"),
    ("deepspeed --num_nodes 0", "deepspeed --num_nodes: must be between 1 and 262144"),
    ("deepspeed --num_nodes -5", "deepspeed --num_nodes: must be between 1 and 262144"),
    ("deepspeed --include localhost:" + ",".join(map(str, range(100))),
     "deepspeed --include localhost: must be between 1 and 72 (GPUs of one node), got 100"),
    ("torchrun --nproc_per_node 0", "torchrun --nproc_per_node: must be between 1 and 72, got 0"),
    ("torchrun --nproc_per_node -1", "torchrun --nproc_per_node: must be between 1 and 72, got -1"),
    ("torchrun --nnodes 0", "torchrun --nnodes: must be between 1 and"),
    ("torchrun --nnodes 4:2", "torchrun --nnodes: expected N or MIN:MAX with MIN <= MAX"),
])
def test_check_refuses_launcher_options(capsys, launcher: str, start: str) -> None:
    module = CHECK_SFT.replace("--module", "-m") if launcher.startswith("torchrun") else CHECK_SFT
    _refused(capsys, ["check", "--", f"{launcher} {module}"], start)


def test_deepspeed_default_minus_one_still_means_every_gpu(capsys) -> None:
    # DeepSpeed's runner: --num_gpus default -1 (runner.py@0.19.8 L90-95): every local GPU
    assert main(["check", "--json", "--", f"deepspeed --num_gpus -1 {CHECK_SFT}"]) == 0


def test_check_refuses_pasted_flags_as_typed(capsys) -> None:
    _refused(capsys, ["check", "--", f"deepspeed {CHECK_SFT} --ds.lora.rank -8"], "--ds.lora.rank: must be between 0")


def test_check_names_what_the_path_is(capsys, tmp_path: Path) -> None:
    _refused(capsys, ["check", "--", "/nonexistent/train.sh"], "/nonexistent/train.sh: no such file")
    _refused(capsys, ["check", "--", str(tmp_path)], f"{tmp_path}: is a directory")
    _refused(capsys, ["check", "--", "/dev/zero"], "/dev/zero: is not a regular file")


def test_estimate_names_a_device_file(capsys) -> None:
    _refused(capsys, ["estimate", "/dev/zero", "--method", "sft"], "/dev/zero: is not a regular file")


@pytest.mark.parametrize(("extra", "start"), [
    (["--gpus-per-node", "1000000000"], "--gpus-per-node: must be between 1 and 72"),
    (["--gpus-per-node", "0"], "--gpus-per-node: must be between 1 and 72"),
    (["--max-gpus", "1000000000"], "--max-gpus: must be between 0 and 262144"),
    (["--keep", "zero_stage=7"], "--keep zero_stage=7: must be between 0 and 3, got 7"),
    (["--keep", "micro_train_batch_size=0"], "--keep micro_train_batch_size=0: must be between 1 and"),
    (["--keep", "actor_num_gpus_per_node=1000000000"], "--keep actor_num_gpus_per_node=1000000000: must be"),
    (["--keep", "actor_num_gpus_per_node=1e9"], "--keep actor_num_gpus_per_node=1e9: expected an integer"),
    (["--keep", "vllm_gpu_memory_utilization=0"], "--keep vllm_gpu_memory_utilization=0: must be in (0, 1]"),
    (["--openrlhf-version", ""], "--openrlhf-version: empty"),
    (["--init_kl_coef", "nan"], "--init_kl_coef: must be a finite number"),
])
def test_plan_refuses(capsys, extra: list[str], start: str) -> None:
    _refused(capsys, PLAN + extra, start)


def test_argparse_int_options_fail_in_one_line(capsys) -> None:
    assert main(PLAN + ["--gpus-per-node", "1e9"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["memplan plan: error: argument --gpus-per-node: invalid int value: '1e9'"]


@pytest.mark.parametrize("argv", [
    SFT + ["--train_batch_size", "24", "--micro_train_batch_size", "3", "--gpus", "8"],  # 24 = 3 × 1 × 8
    # ring attention 2: DeepSpeed sees 4 × 2 = 8 = 1 × 1 × 8
    SFT + ["--train_batch_size", "4", "--micro_train_batch_size", "1", "--gpus", "8", "--ring_attn_size", "2",
           "--packing_samples"],
])
def test_valid_batches_still_estimate(capsys, argv: list[str]) -> None:
    assert main(argv + ["--json"]) == 0


@pytest.mark.parametrize(("argv", "start"), [
    (PPO + ["--actor.model_name_or_path", "no-such-model"], "--actor.model_name_or_path: 'no-such-model'"),
    (["estimate", "llama-3-8b", "--method", "ppo", "--reward_pretrain", "no-such-rm"], "--reward_pretrain: 'no-such-rm'"),
    (["check", "--", "deepspeed", "--module", "openrlhf.cli.train_dpo", "--pretrain", "llama-3-8b",
      "--ref_pretrain", "-1"], "--ref_pretrain: '-1'"),
])
def test_unknown_checkpoint_names_its_flag(capsys, argv: list[str], start: str) -> None:
    """A checkpoint no preset, path or hub id matches is a bad value of the flag that gave it (found by the fuzzer)."""
    _refused(capsys, argv, start)


def test_tilde_of_an_unknown_user_is_no_such_file(capsys) -> None:
    """``~0`` is the home of a user named 0; pathlib raises RuntimeError for it (found by the fuzzer)."""
    _refused(capsys, ["estimate", "~no-such-user-xyz/config.json", "--method", "sft"], "~no-such-user-xyz/config.json: no such file")


def test_nodes_bound_counts_the_default_gpus_per_node(capsys) -> None:
    """40,000 nodes of the default 8 GPUs are 320,000 GPUs, above the 262,144 of one run (bounds.py)."""
    _refused(capsys, [*SFT, "--nodes", "40000"], "--nodes: 40000 nodes × 8 GPUs is more than 262144 GPUs")
