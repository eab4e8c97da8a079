"""Live RL role traces of tiny configs (``memplan trace MODEL --method ppo|grpo|... --role ...``).

The stored tiny RL records (validation/traced_rl/tiny-rl-*.json) are re-traced byte for byte by
test_trace_live.py::test_tiny_record_reproduces_exactly; here: the tracer's sanity on values computed by
hand or counted by transformers, the phases each role records, and the one-line errors.
"""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from live_traces import REPO, TINY_RECORDS, live_record, trace_json

pytestmark = pytest.mark.tracing

TINY = "tests/data/tiny/llama-tiny.json"
#: llama-tiny.json: 2 layers, hidden 64, vocab 512, untied LM head; memplan and transformers count 158016.
TINY_PARAMS = 158_016
TINY_HIDDEN, TINY_VOCAB = 64, 512
#: Both tiny RL records: 48 prompt + 80 generated tokens; micro train batch 2, micro rollout batch 4.
TINY_TOKENS = 48 + 80
FROZEN = f"{TINY} --method ppo --prompt_max_len 48 --generate_max_len 80 --micro_rollout_batch_size 4 --quiet"


def _states(live: dict[str, Any]) -> dict[str, int]:
    states: dict[str, int] = live["trace"]["ranks"][0]["model_states"]
    return states


def _steady(live: dict[str, Any]) -> dict[str, dict[str, int]]:
    phases: dict[str, dict[str, int]] = live["trace"]["ranks"][0]["iterations"]["2"]
    return phases


def test_tiny_rl_records_exist() -> None:
    names = {p.stem for p in TINY_RECORDS if p.parent.name == "traced_rl"}
    assert names == {"tiny-rl-ppo-actor", "tiny-rl-ppo-critic"}


def test_actor_param_bytes_equal_count_times_bf16() -> None:
    _, live = live_record("tiny-rl-ppo-actor")
    states = _states(live)
    assert states["actor_num_params"] == TINY_PARAMS == live["models"]["actor"]["num_params"]
    assert states["param_bytes"] == TINY_PARAMS * 2  # tracked by MemTracker before the first step
    assert states["actor_param_bytes"] == TINY_PARAMS * 2


def test_critic_is_the_base_model_plus_a_value_head_as_transformers_counts_it() -> None:
    torch = pytest.importorskip("torch")
    import transformers

    from memplan.tracing.build import hf_config, load_config_dict

    with torch.device("meta"):
        base = transformers.AutoModel.from_config(hf_config(load_config_dict(str(REPO / TINY)), "sdpa"))
    base_params = sum(p.numel() for p in base.parameters())
    assert base_params == TINY_PARAMS - TINY_VOCAB * TINY_HIDDEN  # no LM head: 158016 - 512 * 64 = 125248
    _, live = live_record("tiny-rl-ppo-critic")
    states = _states(live)
    assert states["critic_num_params"] == base_params + TINY_HIDDEN  # score = Linear(64, 1, bias=False)
    assert states["critic_param_bytes"] == (base_params + TINY_HIDDEN) * 2


def test_value_models_add_fp32_mean_and_std_buffers() -> None:
    _, actor = live_record("tiny-rl-ppo-actor")
    _, critic = live_record("tiny-rl-ppo-critic")
    # get_llm_for_sequence_regression registers mean = zeros(1) and std = ones(1), fp32: 4 + 4 bytes.
    assert _states(critic)["buffer_bytes"] == _states(actor)["buffer_bytes"] + 8


@pytest.mark.parametrize("name", ["tiny-rl-ppo-actor", "tiny-rl-ppo-critic"])
def test_trained_roles_keep_fp32_masters_and_two_adam_moments(name: str) -> None:
    _, live = live_record(name)
    states = _states(live)
    assert states["trainable_params"] == next(iter(live["models"].values()))["num_params"]
    assert states["master_bytes"] == states["trainable_params"] * 4
    assert states["adam_moment_bytes"] == 2 * states["trainable_params"] * 4
    assert states["grad_bytes_tracked"] == states["trainable_params"] * 2  # bf16 grads after backward


@pytest.mark.parametrize("name", ["tiny-rl-ppo-actor", "tiny-rl-ppo-critic"])
def test_trained_roles_record_make_experience_then_the_training_step(name: str) -> None:
    _, live = live_record(name)
    assert list(live["devices"][0]["phases"]) == ["make_experience", "forward", "backward", "optimizer_step"]
    assert _steady(live)["make_experience"]["grad"] == 0  # no-grad forward


def _stored_transient(name: str) -> dict[str, dict[str, int]]:
    record, _ = live_record(name)
    steady: dict[str, dict[str, int]] = record["measured"]["ranks"][0]["transient_iterations"]["2"]
    return steady


@pytest.mark.parametrize("name", ["tiny-rl-ppo-actor", "tiny-rl-ppo-critic"])
def test_tiny_rl_transient_peaks_reproduce_exactly(name: str) -> None:
    pytest.importorskip("torch")
    from memplan.cli.main import build_parser
    from memplan.cli.trace import _request
    from memplan.tracing.runner import trace

    record, _ = live_record(name)
    result = trace(_request(build_parser().parse_args(shlex.split(record["command"])[1:])), lambda _: None)
    live = {str(it): phases for it, phases in sorted(result.ranks[0].transient_iterations.items())}
    assert live == record["measured"]["ranks"][0]["transient_iterations"]


def test_actor_make_experience_holds_bf16_and_fp32_logits() -> None:
    transient = _stored_transient("tiny-rl-ppo-actor")["make_experience"]
    logits = 4 * TINY_TOKENS * TINY_VOCAB  # micro rollout batch 4 x 128 tokens x vocab 512
    assert logits * (2 + 4) <= transient["activation"] + transient["temp"] < logits * (2 + 4) * 1.05


def test_actor_holds_its_fp32_logits_through_the_optimizer_step() -> None:
    transient = _stored_transient("tiny-rl-ppo-actor")["optimizer_step"]
    fp32_logits = 2 * TINY_TOKENS * TINY_VOCAB * 4  # micro train batch 2: training_step's output until return
    assert fp32_logits <= transient["activation"] + transient["temp"] < fp32_logits * 1.05


@pytest.mark.parametrize("role", ["ref", "reward"])
def test_frozen_roles_trace_make_experience_only(role: str) -> None:
    live = trace_json(f"memplan trace {FROZEN} --role {role}")
    assert list(live["devices"][0]["phases"]) == ["make_experience"]
    states = _states(live)
    count = TINY_PARAMS if role == "ref" else TINY_PARAMS - TINY_VOCAB * TINY_HIDDEN + TINY_HIDDEN
    assert states[f"{role}_num_params"] == count and states["trainable_params"] == 0
    assert states["param_bytes"] == count * 2
    assert "master_bytes" not in states and _steady(live)["make_experience"]["optimizer"] == 0


@pytest.mark.parametrize(("extra", "flag"), [
    (["--method", "grpo", "--role", "critic"], "--role"),
    (["--method", "rloo", "--role", "actor", "--critic_pretrain", TINY], "--critic_pretrain"),
    (["--method", "ppo", "--role", "ref", "--init_kl_coef", "0"], "--role"),
    (["--method", "ppo"], "--role"),
    (["--method", "sft", "--role", "actor"], "--role"),
    (["--method", "sft", "--micro_rollout_batch_size", "2"], "--micro_rollout_batch_size"),
    (["--method", "ppo", "--role", "actor", "--max_len", "256"], "--max_len"),
    (["--method", "ppo", "--role", "actor", "--lora_rank", "8"], "--lora_rank"),
    (["--method", "ppo", "--role", "actor", "--engine", "deepspeed-cpu"], "--engine"),
    (["--method", "ppo", "--role", "actor", "--generate_max_len", "0"], "--generate_max_len"),
])
def test_combinations_that_do_not_exist_are_one_line_exit_2(extra: list[str], flag: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from memplan.cli.main import main

    assert main(["trace", str(REPO / TINY), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"memplan: error: {flag}") and "\n" not in err


def test_rl_request_command_round_trips() -> None:
    from memplan.cli.main import build_parser
    from memplan.cli.trace import _request
    from memplan.tracing.rl_config import resolve_rl_request, rl_request_from_dict

    request = resolve_rl_request(model="llama-3-8b", method="ppo", role="critic", prompt_max_len=512,
                                 generate_max_len=1536, micro_train_batch_size=2, micro_rollout_batch_size=8,
                                 gradient_checkpointing=True, init_kl_coef=0.001, use_kl_loss=True,
                                 entropy_loss_coef=0.0, reward_pretrain="llama-2-7b", attn_implementation="eager")
    args = build_parser().parse_args(shlex.split(request.to_command())[1:])
    assert _request(args) == request
    assert rl_request_from_dict(request.as_dict()) == request
    assert request.critic_pretrain == "llama-2-7b"  # train_ppo_ray: the critic starts from the reward model
    assert request.max_len == 2048


def test_dotted_0_11_flags_are_accepted() -> None:
    from memplan.cli.main import build_parser
    from memplan.cli.trace import _request

    args = build_parser().parse_args(["trace", "llama-3-8b", "--method", "grpo", "--role", "actor",
                                      "--rollout.micro_batch_size", "4", "--rollout.max_new_tokens", "3072",
                                      "--algo.kl.use_loss", "--algo.kl.init_coef", "0.001",
                                      "--actor.entropy_coef", "0", "--actor.gradient_checkpointing_enable"])
    request = _request(args)
    assert (request.micro_rollout_batch_size, request.generate_max_len, request.init_kl_coef) == (4, 3072, 0.001)
    assert request.use_kl_loss and request.entropy_loss_coef == 0.0 and request.gradient_checkpointing
    assert request.critic_pretrain is None  # grpo: no critic
