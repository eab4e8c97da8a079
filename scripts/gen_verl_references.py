"""Regenerate the verl reference records: validation/fsdp_cpu/ (real FSDP2 on the CPU) and validation/verl_fake/
(verl's log-prob and loss code, or its FSDPEngineWithLMHead step, at full size under FakeTensorMode).

Each case is one ``memplan trace MODEL --framework verl ...`` command line; the record stores the command the
request renders, so running it from the repository root reproduces the measured bytes.

    python scripts/gen_verl_references.py --list
    python scripts/gen_verl_references.py --only 'qwen2-small-*'
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shlex
import sys

from gen_references import SMALL_LLAMA, SMALL_QWEN2, TINY_QWEN2, VALIDATION  # the same tiny configs

#: Common settings of the small FSDP cases: 2 sequences of 128 + 128 tokens per rank.
SMALL = "--micro_batch_size 2 --prompt_length 128 --response_length 128"
FSDP = "--framework verl --engine fsdp-cpu"
FAKE = "--framework verl --engine fake --gpus 1"
ENGINE = "--framework verl --engine fake-engine --gpus 1"

#: One micro-batch of one 1024 + 1024-token sequence.
S2048 = "--micro_batch_size 1 --prompt_length 1024 --response_length 1024"

#: case id -> (directory under validation/, arguments after ``memplan trace``, one-line description).
CASES: dict[str, tuple[str, str, str]] = {
    "qwen2-tiny-fsdp2-actor-w2": ("fsdp_cpu", f"{TINY_QWEN2} {FSDP} --gpus 2 --micro_batch_size 2 --prompt_length 32 "
                                              "--response_length 32", "re-run live by the tests (seconds)"),
    "qwen2-small-fsdp2-actor-w1": ("fsdp_cpu", f"{SMALL_QWEN2} {FSDP} --gpus 1 {SMALL}", "one rank: nothing sharded"),
    "qwen2-small-fsdp2-actor-w2": ("fsdp_cpu", f"{SMALL_QWEN2} {FSDP} --gpus 2 {SMALL}", "tied embeddings"),
    "qwen2-small-fsdp2-actor-w4": ("fsdp_cpu", f"{SMALL_QWEN2} {FSDP} --gpus 4 {SMALL}", ""),
    "qwen2-small-fsdp2-actor-noreshard-w2": ("fsdp_cpu", f"{SMALL_QWEN2} {FSDP} --gpus 2 {SMALL} "
                                                         "--no_reshard_after_forward", "reshard_after_forward=False"),
    "qwen2-small-fsdp2-actor-nockpt-w2": ("fsdp_cpu", f"{SMALL_QWEN2} {FSDP} --gpus 2 {SMALL} "
                                                      "--no_gradient_checkpointing", "no gradient checkpointing"),
    "qwen2-small-fsdp2-actor-entropy-w2": ("fsdp_cpu", f"{SMALL_QWEN2} {FSDP} --gpus 2 {SMALL} --entropy",
                                           "entropy in the log-prob forwards"),
    "qwen2-small-fsdp2-ref-w2": ("fsdp_cpu", f"{SMALL_QWEN2} {FSDP} --role ref --gpus 2 {SMALL}",
                                 "forward-only ref: bf16 params, CPUOffloadPolicy"),
    "llama-small-fsdp2-actor-w2": ("fsdp_cpu", f"{SMALL_LLAMA} {FSDP} --gpus 2 {SMALL}",
                                   "untied embeddings: embed_tokens and lm_head wrapped on their own"),
    "llama-small-fsdp2-actor-w4": ("fsdp_cpu", f"{SMALL_LLAMA} {FSDP} --gpus 4 {SMALL}", ""),
    # --- verl's log-prob and policy-loss code at full size under FakeTensorMode (needs verl installed) ---
    "qwen2.5-0.5b-verl-actor-s2048-b1": ("verl_fake", f"qwen2.5-0.5b {FAKE} {S2048}",
                                         "actor: log-prob forward and update, checkpointing"),
    "qwen2.5-0.5b-verl-actor-entropy-s2048-b1": ("verl_fake", f"qwen2.5-0.5b {FAKE} {S2048} --entropy",
                                                 "entropy_from_logits in both forwards"),
    "qwen2.5-1.5b-verl-actor-s2048-b1": ("verl_fake", f"qwen2.5-1.5b {FAKE} {S2048}", ""),
    "qwen2.5-7b-verl-actor-s2048-b1": ("verl_fake", f"qwen2.5-7b {FAKE} {S2048}", ""),
    # --- verl's FSDPEngineWithLMHead step and ppo_loss at full size under FakeTensorMode (needs verl installed) ---
    "qwen2.5-0.5b-verl-engine-actor-s2048-b1": ("verl_fake", f"qwen2.5-0.5b {ENGINE} {S2048}",
                                                "engine: compute_log_prob (entropy on) and the actor update"),
    "qwen2.5-0.5b-verl-engine-actor-entropy-s2048-b1": ("verl_fake", f"qwen2.5-0.5b {ENGINE} {S2048} --entropy",
                                                        "engine: the update also computes the entropy"),
    "qwen2.5-1.5b-verl-engine-actor-s2048-b1": ("verl_fake", f"qwen2.5-1.5b {ENGINE} {S2048}", ""),
    "qwen2.5-7b-verl-engine-actor-s2048-b1": ("verl_fake", f"qwen2.5-7b {ENGINE} {S2048}", ""),
}


def generate(case: str) -> dict:  # type: ignore[type-arg]
    """Run the case's command in-process (``--json``) and return its record with id and description."""
    import contextlib
    import io

    from memplan.cli.main import main

    directory, arguments, description = CASES[case]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["trace", *shlex.split(arguments), "--json", "--quiet"])
    if status != 0:
        raise SystemExit(f"{case}: memplan trace exited {status}")
    record = json.loads(out.getvalue())
    return {"case": case, "description": description, **record}


def main() -> int:
    """Regenerate the selected cases."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="*", help="comma-separated glob patterns of case ids")
    parser.add_argument("--list", action="store_true", help="list the cases and their commands")
    args = parser.parse_args()
    patterns = args.only.split(",")
    cases = [c for c in CASES if any(fnmatch.fnmatch(c, p) for p in patterns)]
    for index, case in enumerate(cases, 1):
        directory, arguments, _ = CASES[case]
        if args.list:
            print(f"{case:<42} memplan trace {arguments}")
            continue
        print(f"[{index}/{len(cases)}] {case}: memplan trace {arguments}", flush=True)
        path = VALIDATION / directory / f"{case}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(generate(case), indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
