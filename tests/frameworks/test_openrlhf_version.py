"""Which OpenRLHF version an estimate applies, and what that version does with sequence lengths.

Truth comes from OpenRLHF's own code, not from memplan's formulas:

* v0.11.0 (3c3be62) ``openrlhf/cli/train_ppo_ray.py`` line 377:
  ``parser.add_argument("--rollout.micro_batch_size", type=int, default=1)``; line 379:
  ``parser.add_argument("--data.max_len", type=int, default=2048, ...)``; v0.9.5 (c0e2ee2) line 337:
  ``parser.add_argument("--micro_rollout_batch_size", type=int, default=8)``.
* v0.11.0 ``trainer/ppo_utils/samples_generator.py`` lines 249-267 cut every sample at ``max_len``
  tokens (``sequences[:truncate_length]``, ``truncate_length = generate_kwargs.get("max_len", 2048)``);
  v0.9.5 ``trainer/ppo_utils/experience_maker.py`` lines 406-424 at ``prompt_max_len + max_new_tokens``.
* Llama-3-8B's vocabulary: 128,256 tokens (its config.json). The reference model's make-experience
  forward holds fp32 logits of micro_rollout_batch_size × sequence × vocab × 4 bytes
  (models/actor.py@3c3be62 line 267 in ``Actor.forward``: ``output["logits"].to(torch.float32)``), so that
  term shows the batch and the sequence length each version uses.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from memplan.api import estimate
from memplan.cli.main import main
from memplan.frameworks.openrlhf import load_table, parse_command

LLAMA3_VOCAB = 128_256
PPO = ["estimate", "llama-3-8b", "--method", "ppo", "--reward_pretrain", "llama-3-8b", "--json"]
V0_11 = "3c3be6234e0cb353e76bb8019947db9dfe99fca7"


def _estimate(capsys, *flags: str) -> dict:
    assert main([*PPO, *flags]) == 0
    return json.loads(capsys.readouterr().out)


def _device(data: dict, role: str) -> dict:
    return next(d for d in data["devices"] if role in d["roles"])


def _term(data: dict, role: str, path: str) -> int:
    return next(t["bytes"] for t in _device(data, role)["breakdown"] if t["path"] == path)


def _ref_logits(micro: int, seq: int) -> int:
    return micro * seq * LLAMA3_VOCAB * 4


def test_rollout_micro_batch_default_is_read_from_the_v0_11_source_line() -> None:
    spec = load_table("train_ppo_ray", "0.11").by_key["micro_rollout_batch_size"][0]
    assert (spec.option, spec.line, spec.default) == ("--rollout.micro_batch_size", 377, 1)
    repo = os.environ.get("MEMPLAN_OPENRLHF_REPO")
    if repo:  # the line itself, from OpenRLHF's checkout
        text = subprocess.run(["git", "-C", repo, "show", f"{V0_11}:openrlhf/cli/train_ppo_ray.py"],
                              capture_output=True, text=True, check=True).stdout
        assert text.splitlines()[spec.line - 1].strip() == \
            'parser.add_argument("--rollout.micro_batch_size", type=int, default=1)'


def test_flat_ppo_flags_get_the_latest_release_defaults(capsys) -> None:
    latest = _estimate(capsys)
    older = _estimate(capsys, "--openrlhf-version", "0.9")
    # 0.11: one sequence per make-experience forward, 2048 tokens (--data.max_len default)
    assert _term(latest, "ref", "ref.logits.fp32") == _ref_logits(1, 2048)
    # 0.9: eight sequences of prompt_max_len 1024 + generate_max_len 1024
    assert _term(older, "ref", "ref.logits.fp32") == _ref_logits(8, 2048)
    assert _device(latest, "ref")["peak_bytes"] < _device(older, "ref")["peak_bytes"]
    pinned = _estimate(capsys, "--openrlhf-version", "0.9", "--micro_rollout_batch_size", "1")
    assert _device(latest, "ref")["peak_bytes"] == _device(pinned, "ref")["peak_bytes"]
    assert not any("assumed, not the latest" in n for n in latest["notes"])


def test_a_flag_only_an_older_release_has_selects_it_with_a_note(capsys) -> None:
    data = _estimate(capsys, "--prompt_max_len", "1024")
    assert _term(data, "ref", "ref.logits.fp32") == _ref_logits(8, 2048)  # 0.9 defaults
    assert ("OpenRLHF 0.9 assumed, not the latest release (0.11): --prompt_max_len is not a flag of "
            "OpenRLHF 0.11; pass --openrlhf-version to choose") in data["notes"]


def test_an_explicit_version_is_kept_and_foreign_flags_are_named(capsys) -> None:
    data = _estimate(capsys, "--openrlhf-version", "0.11", "--prompt_max_len", "512")
    assert "--prompt_max_len is not a flag of OpenRLHF 0.11: not read" in data["notes"]
    assert _term(data, "ref", "ref.logits.fp32") == _ref_logits(1, 2048)


@pytest.mark.parametrize("flag", ["--max_len", "--data.max_len"])
def test_v0_11_sequences_are_max_len_long(capsys, flag: str) -> None:
    long, short = _estimate(capsys, flag, "16384"), _estimate(capsys, flag, "4096")
    assert _term(long, "ref", "ref.logits.fp32") == _ref_logits(1, 16384)
    assert _term(short, "ref", "ref.logits.fp32") == _ref_logits(1, 4096)
    assert _device(long, "actor")["peak_bytes"] > _device(short, "actor")["peak_bytes"]


def test_v0_11_max_new_tokens_does_not_shorten_the_longest_sequence(capsys) -> None:
    # A long prompt is cut to max_len - max_new_tokens (utils/agent.py@3c3be62 lines 222-233): still max_len.
    data = _estimate(capsys, "--data.max_len", "4096", "--rollout.max_new_tokens", "1024")
    assert _term(data, "ref", "ref.logits.fp32") == _ref_logits(1, 4096)


def test_v0_11_generation_longer_than_max_len_is_cut_with_a_note(capsys) -> None:
    data = _estimate(capsys, "--generate_max_len", "4096")  # read as --rollout.max_new_tokens; max_len 2048
    assert _term(data, "ref", "ref.logits.fp32") == _ref_logits(1, 2048)
    assert ("--rollout.max_new_tokens 4096 leaves no room for a prompt within --data.max_len 2048: OpenRLHF 0.11 "
            "cuts every sequence at 2048 tokens") in data["notes"]


def test_v0_9_sequences_are_prompt_plus_generation_capped_by_max_len(capsys) -> None:
    data = _estimate(capsys, "--openrlhf-version", "0.9", "--micro_rollout_batch_size", "1",
                     "--prompt_max_len", "512", "--generate_max_len", "3000")
    assert _term(data, "ref", "ref.logits.fp32") == _ref_logits(1, 3512)
    # --max_len is vLLM's max_model_len in 0.9; vLLM ends a request there (v1 ``check_stop``)
    capped = _estimate(capsys, "--openrlhf-version", "0.9", "--micro_rollout_batch_size", "1",
                       "--prompt_max_len", "512", "--generate_max_len", "3000", "--max_len", "2000")
    assert _term(capped, "ref", "ref.logits.fp32") == _ref_logits(1, 2000)


def test_replay_buffer_items_by_hand(capsys) -> None:
    # One Experience of T = 2048 tokens (0.11 default): sequences and attention_mask int64 over T; action_mask
    # (bool) and seven fp32 fields (action_log_probs, base_action_log_probs, rollout_log_probs, values,
    # returns, advantages, kl) over the T - 1 shifted positions. 1024 prompts x 1 sample over 8 actor ranks.
    per_item = 2 * 8 * 2048 + (1 + 7 * 4) * 2047
    est = estimate("llama-3-8b", "ppo", ["--reward_pretrain", "llama-3-8b"])
    # the buffer lives in the training phase only (not necessarily the host's peak phase)
    terms = {t.bytes for h in est.hosts for usage in h.phases for t in usage.terms
             if t.path.startswith("actor.replay_buffer")}
    assert terms == {8 * (1024 // 8) * per_item}  # 8 ranks on the node


@pytest.mark.parametrize("method", ["kto", "prm", "kd"])
def test_methods_0_11_removed_select_0_9_with_a_note(capsys, method: str) -> None:
    assert main(["estimate", "llama-3-8b", "--method", method, "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert (f"OpenRLHF 0.9 assumed, not the latest release (0.11): openrlhf.cli.train_{method} is not an "
            "entry script of OpenRLHF 0.11; pass --openrlhf-version to choose") in notes


@pytest.mark.parametrize("method", ["kto", "prm", "kd"])
def test_methods_0_11_removed_are_refused_under_an_explicit_0_11(capsys, method: str) -> None:
    assert main(["estimate", "llama-3-8b", "--method", method, "--openrlhf-version", "0.11"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--openrlhf-version: OpenRLHF 0.11 has no openrlhf.cli.train_{method} (--method {method}); "
                        "OpenRLHF 0.9 has it: pass --openrlhf-version 0.9")
    assert len(err.splitlines()) == 1


def test_release_tags_are_normalised_before_use(capsys) -> None:
    by_tag = _estimate(capsys, "--openrlhf-version", "v0.9.5")
    by_version = _estimate(capsys, "--openrlhf-version", "0.9")
    assert by_tag["devices"] == by_version["devices"]


def test_the_hint_follows_settings_not_spellings() -> None:
    flat = parse_command("python3 -m openrlhf.cli.train_ppo_ray --zero_stage 3 --micro_rollout_batch_size 4")
    assert flat.version_hint is None and flat.version_reason is None
    kto = parse_command("deepspeed --module openrlhf.cli.train_kto --zero_stage 3")
    assert (kto.version_hint, kto.version_reason) == ("0.9", "openrlhf.cli.train_kto is not an entry script of "
                                                             "OpenRLHF 0.11")
    legacy = parse_command("deepspeed --module openrlhf.cli.train_sft --bf16 --flash_attn")
    assert (legacy.version_hint, legacy.version_reason) == ("0.8", "--bf16, --flash_attn are not flags of "
                                                                   "OpenRLHF 0.9")


@pytest.mark.parametrize("command", ["estimate", "plan"])
def test_help_says_which_version_has_kto_prm_kd(capsys, command: str) -> None:
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "kto, prm, kd: OpenRLHF <= 0.9, --openrlhf-version 0.9" in text
    assert "default: the latest, 0.11, unless the method" in text
