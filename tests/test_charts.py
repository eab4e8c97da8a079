"""The Vega-Lite spec of a real estimate and plan: its bars add back up to the JSON report's bytes."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from memplan.api import estimate
from memplan.charts import CATEGORY_LABELS, estimate_chart, plan_chart
from memplan.jobs.report import estimate_json

#: Llama-2-70B PPO on 32 × A800-80G (the issue's browser example): actor 8, critic 8, ref 4, reward 4, vLLM 4 × TP2.
PPO_70B_FLAGS = ["--reward_pretrain", "llama-2-70b", "--actor_num_gpus_per_node", "8", "--critic_num_gpus_per_node",
                 "8", "--ref_num_gpus_per_node", "4", "--reward_num_gpus_per_node", "4", "--vllm_num_engines", "4",
                 "--vllm_tensor_parallel_size", "2", "--zero_stage", "3", "--adam_offload",
                 "--gradient_checkpointing"]


def _bars(panel: dict) -> dict[str, int]:
    """Sum of the exact bytes of each bar's segments."""
    sums: dict[str, int] = defaultdict(int)
    for row in panel["data"]["values"]:
        sums[row["x"]] += row["bytes"]
    return dict(sums)


@pytest.mark.parametrize("args", [
    ("llama-2-70b", "ppo", PPO_70B_FLAGS, {"gpu": "a800-80g", "host_ram": "1600GB"}),
    ("llama-3-8b", "sft", ["--zero_stage", "2", "--adam_offload"], {"gpus": 8, "gpu": "a100-80g",
                                                                    "host_ram": "512GiB"}),
], ids=["ppo-70b-32xa800", "sft-8b"])
def test_estimate_chart_bars_equal_json_phases(args):
    model, method, flags, kwargs = args
    est = estimate(model, method, flags, **kwargs)
    report = json.loads(json.dumps(estimate_json(est)))
    spec = json.loads(json.dumps(estimate_chart(est)))  # plain JSON data
    panels = spec["concat"]
    entries = report["devices"] + report["hosts"]
    assert len(panels) == len(entries)
    for panel, entry in zip(panels, entries):
        # one bar per phase of the device (or node), in the JSON's order, each summing to that phase's bytes
        assert _bars(panel) == entry["phases"]
        order = sorted({(r["x_order"], r["x"]) for r in panel["data"]["values"]})
        assert [x for _, x in order] == list(entry["phases"])
        assert {r["category"] for r in panel["data"]["values"]} <= set(CATEGORY_LABELS.values())
        rule = [layer for layer in panel["layer"] if layer["mark"]["type"] == "rule"]
        # the line is what the verdict is judged against: a GPU's capacity, a node's Ray kill threshold
        limit = entry.get("judged_against_bytes", entry["capacity_bytes"])
        assert rule[0]["encoding"]["y"]["datum"] * 2**30 == pytest.approx(limit)
    if method == "ppo":
        # the role sets: rollout, actor, critic, ref, reward; four RL phases each
        assert [p["title"] for p in panels[:len(report["devices"])]] == [
            f"{d['count']} × GPU {{{', '.join(d['roles'])}}}" for d in report["devices"]]
        assert all(list(d["phases"]) == ["rollout", "make_experience", "training", "weight_sync"]
                   for d in report["devices"])
        assert sum(d["count"] for d in report["devices"]) == 32
    else:
        assert list(report["devices"][0]["phases"]) == ["forward", "backward", "optimizer_step"]


def test_plan_chart_minimum_and_recommended_sum_to_peaks():
    from memplan.cli.render import plan_result_json
    from memplan.planner import plan_gpus

    results = plan_gpus("llama-3-8b", "dpo", gpus=["a100-80g", "rtx4090-24g"], host_ram="512GiB", gpus_per_node=8,
                        max_gpus=16, flags=[], keep=[], allow_lora=False, version=None)
    spec = plan_chart(results)
    assert len(spec["vconcat"]) == 2
    for row, result in zip(spec["vconcat"], results):
        data = plan_result_json(result)
        for panel, key in zip(row["hconcat"], ("minimum", "recommended")):
            assert key in panel["title"]
            if data[key] is None:
                assert "no layout fits" in panel["data"]["values"][0]["text"]
                continue
            bars = list(_bars(panel).values())
            assert bars == [d["peak_bytes"] for d in data[key]["devices"]]
