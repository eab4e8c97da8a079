"""The GPU measurement harness (validation/gpu/measure.py): its plan, its arithmetic, and a CPU dry run.

The dry run executes the same code as a GPU run (model building, DeepSpeed when importable, the OpenRLHF
steps, the per-phase readings, the record) on tiny configs on the CPU, and must write a record that
``validate_run`` accepts, so no GPU time is spent on a harness that cannot run.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from memplan.memory.breakdown import Device
from memplan.memory.logits import LogProbImpl
from memplan.validation.commands import parse_command, predict

REPO = Path(__file__).resolve().parents[2]
GPU_DIR = REPO / "validation" / "gpu"


def _module(name: str) -> ModuleType:
    sys.path.insert(0, str(GPU_DIR))
    try:
        spec = importlib.util.spec_from_file_location(name, GPU_DIR / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up; measure.py imports configs by name
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(GPU_DIR))


configs = _module("configs")
measure = _module("measure")


def test_plan_is_cheapest_first_and_fits_the_budget() -> None:
    cases = configs.GPU_CASES
    assert 20 <= len(cases) <= 30
    assert len({c.id for c in cases}) == len(cases)
    assert sum(c.seconds for c in cases) <= 480  # about 8 minutes of device time
    methods = {c.method for c in cases}
    assert {"sft", "dpo", "rm", "rollout"} <= methods
    assert {c.zero_stage for c in cases} == {0, 1, 2, 3}
    assert any(c.adam_offload for c in cases) and any(c.lora_rank for c in cases)
    assert {c.attn for c in cases} == {"sdpa", "eager"}
    assert min(c.max_len for c in cases) <= 1024 and max(c.max_len for c in cases) >= 16384


@pytest.mark.parametrize("case", configs.GPU_CASES + configs.DRY_RUN_CASES, ids=lambda c: c.id)
def test_every_case_has_a_working_memplan_command(case) -> None:
    command = configs.memplan_command(case)
    est = predict(parse_command(command), logprob_impl=LogProbImpl(configs.LOGPROB_IMPL))
    assert est.devices
    if case.trains:  # the harness steps every micro-batch (accumulation 1): memplan must not assume 128
        assert command.endswith(f"--train_batch_size {case.micro_batch * configs.WORLD_SIZE}")
    if not case.trains:  # compared with the actor's make-experience transient
        device = max(est.devices, key=lambda d: d.peak_bytes)
        transient = [t for u in device.phases if str(u.phase) == "make_experience" for t in u.terms
                     if t.device == Device.GPU and t.path.startswith("actor.") and t.phase is not None]
        assert transient


def test_list_needs_no_torch() -> None:
    out = subprocess.run([sys.executable, "-S", str(GPU_DIR / "measure.py"), "--list"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert "GPU plan: 25 cases" in out and "memplan estimate qwen2.5-0.5b --method sft" in out


def test_peak_summary_arithmetic() -> None:
    def phase(alloc: int, reserved: int, non_torch: int) -> dict:
        return measure.phase_reading({"allocated": 0}, {"allocated": 0, "reserved": reserved, "device_used": 0,
                                                        "non_torch": non_torch},
                                     {"max_memory_allocated": alloc, "max_memory_reserved": reserved}, 0.1)

    phases = {"forward": phase(900, 1000, 500), "backward": phase(1200, 1300, 500),
              "optimizer_step": phase(1100, 1400, 600)}
    peak = measure.peak_summary(phases, {"allocated": 100, "reserved": 200})
    # allocated 1200 - baseline 100; reserved 1400 - 200; device used = max(reserved + non-torch) = 1400 + 600
    assert peak == {"phase": "backward", "max_memory_allocated": 1100, "max_memory_reserved": 1200,
                    "device_used": 2000}


#: The torch-emulation dry run takes two cases (the DeepSpeed one, with ``auto``, takes them all).
EMULATED_ONLY = ["tiny-dpo-z3-s64-b2", "tiny-sft-lora8-z2-offload-s128-b2-ckpt"]


@pytest.mark.tracing
@pytest.mark.parametrize("engine", ["auto", "torch"])
def test_dry_run_writes_a_valid_record(tmp_path: Path, engine: str) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    only = ["--only", *EMULATED_ONLY] if engine == "torch" else []
    proc = subprocess.run([sys.executable, str(GPU_DIR / "measure.py"), "--dry-run", "--out", str(tmp_path),
                           "--run-id", "dry", "--engine", engine, *only], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads((tmp_path / "dry.json").read_text())
    assert measure.validate_run(run) == []
    assert run["dry_run"] is True and not run["skipped"]
    expected = EMULATED_ONLY if engine == "torch" else [c.id for c in configs.DRY_RUN_CASES]
    assert [c["case"] for c in run["cases"]] == expected
    assert all(c["error"] is None for c in run["cases"]), [c["error"] for c in run["cases"]]
    # each case in its own process (fresh CUDA context on a GPU): no GPU touched before the case starts
    assert all(c["process"]["cuda_initialized_before_case"] is False for c in run["cases"])
    if engine == "torch":
        assert {c["engine"] for c in run["cases"]} == {"torch-emulation"}
        assert {c["predict"]["compare"] for c in run["cases"]} == {"none"}
    for case in run["cases"]:
        assert parse_command(case["predict"]["command"]).model == case["config"]["model"]


# --- the verl-style FSDP2 suite (--suite fsdp) -----------------------------------------------------------------

fsdp_cases = sys.modules["fsdp_cases"]  # imported by measure.py beside configs


def test_fsdp_plan_fits_its_budget_and_covers_verl_knobs() -> None:
    cases = fsdp_cases.GPU_CASES
    assert 8 <= len(cases) <= 10 and len({c.id for c in cases}) == len(cases)
    assert sum(c.seconds for c in cases) <= 180  # plus ~10 s start-up per process: within ~300 s on an H200
    assert {c.role for c in cases} == {"actor", "ref"}
    assert any(not c.reshard_after_forward for c in cases) and any(c.offload for c in cases)
    assert min(c.max_len for c in cases) <= 1024 and max(c.max_len for c in cases) >= 8192
    assert {c.micro_batch for c in cases} >= {1, 2, 4}


def test_fsdp_records_carry_verl_keys_and_a_pending_verl_command() -> None:
    case = next(c for c in fsdp_cases.GPU_CASES if c.offload)
    command = fsdp_cases.memplan_command(case)
    assert command.startswith(f"memplan estimate {case.model} --framework verl --method grpo ")
    # hand-checked against verl 0.9.1's _generated_ppo_trainer.yaml key names
    assert "actor_rollout_ref.actor.fsdp_config.param_offload=True" in command.split()
    assert "actor_rollout_ref.actor.fsdp_config.optimizer_offload=True" in command.split()
    assert "actor_rollout_ref.actor.fsdp_config.model_dtype=fp32" in command.split()
    assert "data.max_prompt_length=1024" in command.split() and "data.max_response_length=3072" in command.split()
    assert fsdp_cases.predict_spec(case)["compare"] == "pending"


def test_fsdp_list_needs_no_torch() -> None:
    out = subprocess.run([sys.executable, "-S", str(GPU_DIR / "measure.py"), "--list", "--suite", "fsdp"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert f"GPU plan: {len(fsdp_cases.GPU_CASES)} cases" in out and "--framework verl --method grpo" in out


@pytest.mark.tracing
def test_fsdp_dry_run_writes_a_valid_record_that_validate_leaves_pending(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    proc = subprocess.run([sys.executable, str(GPU_DIR / "measure.py"), "--suite", "fsdp", "--dry-run", "--out",
                           str(tmp_path), "--run-id", "dry"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads((tmp_path / "dry.json").read_text())
    assert measure.validate_run(run) == [] and run["suite"] == "fsdp"
    assert [c["case"] for c in run["cases"]] == [c.id for c in fsdp_cases.DRY_RUN_CASES]
    assert all(c["error"] is None for c in run["cases"]), [c["error"] for c in run["cases"]]
    by_id = {c["case"]: c for c in run["cases"]}
    offload = by_id["tiny-verl-fsdp2-actor-s128-b1-offload"]
    assert list(offload["measured"]["phases"]) == ["compute_log_prob", "update_forward", "backward",
                                                   "optimizer_step", "offload"]
    assert all(p["host_rss_at_end"] > 0 for p in offload["measured"]["phases"].values())
    assert list(by_id["tiny-verl-fsdp2-ref-s128-b2-cpuoffload"]["measured"]["phases"]) == ["compute_ref_log_prob"]

    # the same records as if measured on a GPU: validate lists them as pending and compares nothing
    from memplan.validation import Kind, compare
    from memplan.validation.measured import measured_rows, pending_cases
    from memplan.validation.policy import load_policy

    root = tmp_path / "validation"
    (root / "measured").mkdir(parents=True)
    (root / "tolerances.toml").write_text((REPO / "validation" / "tolerances.toml").read_text())
    (root / "known_misses.toml").write_text("")
    run["dry_run"] = False
    (root / "measured" / "dry.json").write_text(json.dumps(run))
    assert measured_rows(root, load_policy(root)) == []
    assert pending_cases(root) == [f"measured/dry.json: {c.id}" for c in sorted(fsdp_cases.DRY_RUN_CASES,
                                                                                   key=lambda c: c.id)]
    result = compare(root, [Kind.MEASURED])
    assert result.passed and len(result.pending) == len(fsdp_cases.DRY_RUN_CASES)
