"""Load on ``memplan serve``: 200 valid requests from 50 concurrent clients, then 30 malformed ones.

Starts the server on a free localhost port in a subprocess (or uses ``--url``), sends a mix of
estimates, pasted commands, plans and catalogue reads, and prints the p50/p95/max latency and the status
counts. Every valid request must answer 200; every malformed one (oversized, wrong types, NaN, huge
numbers, unknown fields, bad commands, paths) a 4xx with the ``{"error": {"location", "message"}}`` shape,
none a 5xx or a traceback. A benchmark, not a test (it needs the web extra and httpx):

    python benchmarks/web_load.py [--requests 200] [--clients 50] [--url http://127.0.0.1:8000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import socket
import statistics
import subprocess
import sys
import time

import httpx

PPO_70B = ["--reward_pretrain", "llama-2-70b", "--actor_num_gpus_per_node", "8", "--critic_num_gpus_per_node", "8",
           "--ref_num_gpus_per_node", "4", "--reward_num_gpus_per_node", "4", "--vllm_num_engines", "4",
           "--vllm_tensor_parallel_size", "2", "--zero_stage", "3", "--adam_offload", "--gradient_checkpointing"]
VALID = [
    ("POST", "/api/estimate", {"model": "llama-3-8b", "method": "sft", "gpus": 8, "gpu": "a100-80g"}),
    ("POST", "/api/estimate", {"model": "llama-2-70b", "method": "ppo", "gpu": "a800-80g", "host_ram": "1600GB",
                               "flags": PPO_70B}),
    ("POST", "/api/estimate", {"model": "llama-3-8b", "method": "sft", "gpus": 1, "gpu": "a100-80g"}),  # OOM + advice
    ("POST", "/api/estimate", {"model": "llama-3-8b", "method": "dpo", "gpus": 4, "gpu": "rtx4090-24g",
                               "flags": ["--lora_rank", "16"]}),
    ("POST", "/api/check", {"command": "deepspeed --num_gpus 8 --module openrlhf.cli.train_sft --pretrain "
                                       "meta-llama/Meta-Llama-3-8B --zero_stage 2 --gradient_checkpointing",
                            "gpu": "a100-80g"}),
    ("POST", "/api/plan", {"model": "llama-3-8b", "method": "sft", "gpu": "a100-80g"}),
    ("POST", "/api/estimate/chart", {"model": "llama-3-8b", "method": "sft", "gpus": 8, "gpu": "a100-80g"}),
    ("GET", "/api/models", None),
    ("GET", "/api/gpus", None),
]
_BASE = {"model": "llama-3-8b", "method": "sft"}
MALFORMED: list[tuple[str, bytes | dict]] = [
    ("/api/estimate", b"{" + b" " * (300 * 1024) + b"}"),                      # oversized
    ("/api/check", {"command": "x" * 200_000}),                                  # oversized command
    ("/api/estimate", b"{not json"),
    ("/api/estimate", b'{"model": "llama-3-8b", "method": "sft", "gpus": NaN}'),
    ("/api/estimate", b'{"model": "llama-3-8b", "method": "sft", "gpus": ' + b"9" * 5000 + b"}"),  # 5000 digits
    ("/api/estimate", b'{"model": "llama-3-8b", "method": "sft", "gpus": 1e999}'),
    ("/api/estimate", {**_BASE, "gpus": 10**40}),
    ("/api/estimate", {**_BASE, "gpus": -3}),
    ("/api/estimate", {**_BASE, "gpus": "eight"}),
    ("/api/estimate", {**_BASE, "gpus": 2.5}),
    ("/api/estimate", b'{"model": "x", "method": "sft", "configs": {"x": ' + b'{"a": ' * 30000 + b"1"
     + b"}" * 30000 + b"}}"),  # nested 30,000 deep
    ("/api/estimate", {**_BASE, "unknown_field": 1}),
    ("/api/estimate", {**_BASE, "method": "magic"}),
    ("/api/estimate", {"method": "sft"}),
    ("/api/estimate", {**_BASE, "flags": "--zero_stage 3"}),
    ("/api/estimate", {**_BASE, "flags": ["--zero_stage", "NaN"]}),
    ("/api/estimate", {**_BASE, "flags": ["--micro_train_batch_size", "99999999999999999999"]}),
    ("/api/estimate", {**_BASE, "flags": ["--max_len", "-1"]}),
    ("/api/estimate", {**_BASE, "flags": ["--vllm_gpu_memory_utilization", "nan"], "method": "ppo"}),
    ("/api/estimate", {**_BASE, "gpu": "b9000"}),
    ("/api/estimate", {**_BASE, "host_ram": "-5GB"}),
    ("/api/estimate", {**_BASE, "model": "/etc/passwd"}),
    ("/api/estimate", {**_BASE, "model": "../../../../root/config.json"}),
    ("/api/estimate", {**_BASE, "model": "some-org/not-a-preset"}),
    ("/api/estimate", {**_BASE, "model": "up", "configs": {"up": {"model_type": "llama", "hidden_size": -1}}}),
    ("/api/check", {"command": "rm -rf / --no-preserve-root"}),
    ("/api/check", {"command": "deepspeed --module openrlhf.cli.train_sft --pretrain llama-3-8b --zero_stage 7"}),
    ("/api/check", {"command": ""}),
    ("/api/plan", {**_BASE, "gpu": "a100-80g", "max_gpus": 0}),
    ("/api/plan", {**_BASE, "gpu": "a100-80g", "keep": ["zero_stage"]}),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    """``memplan serve`` on a free port; returns the process and its URL once it answers."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "memplan", "serve", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/api/gpus", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


async def _one(client: httpx.AsyncClient, method: str, path: str, body: object) -> tuple[int, float, str]:
    start = time.perf_counter()
    if isinstance(body, bytes):
        response = await client.request(method, path, content=body, headers={"content-type": "application/json"})
    else:
        response = await client.request(method, path, json=body)
    return response.status_code, time.perf_counter() - start, response.text


async def run_valid(url: str, total: int, clients: int) -> tuple[list[float], collections.Counter[int], list[str]]:
    queue: asyncio.Queue[tuple[str, str, object]] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(VALID[i % len(VALID)])
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            method, path, body = queue.get_nowait()
            status, seconds, text = await _one(client, method, path, body)
            latencies.append(seconds)
            statuses[status] += 1
            if status != 200:
                failures.append(f"{path} {status} {text[:200]}")

    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=clients)) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return latencies, statuses, failures


async def run_malformed(url: str) -> tuple[collections.Counter[int], list[str]]:
    statuses: collections.Counter[int] = collections.Counter()
    problems: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for path, body in MALFORMED:
            status, _, text = await _one(client, "POST", path, body)
            statuses[status] += 1
            try:
                error = json.loads(text)["error"]
                shaped = bool(error["message"]) and "location" in error
            except (ValueError, KeyError, TypeError):
                shaped = False
            if not 400 <= status < 500 or not shaped or "Traceback" in text:
                problems.append(f"{path} {str(body)[:80]!r}: {status} {text[:200]}")
    return statuses, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--url", help="an already running server (default: start one)")
    args = parser.parse_args()
    proc, url = (None, args.url) if args.url else start_server()
    try:
        httpx.post(f"{url}/api/estimate", json=VALID[0][2], timeout=60)  # warm-up: model specs cached
        wall = time.perf_counter()
        latencies, statuses, failures = asyncio.run(run_valid(url, args.requests, args.clients))
        wall = time.perf_counter() - wall
        bad_statuses, problems = asyncio.run(run_malformed(url))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    q = statistics.quantiles(latencies, n=100)
    print(f"{len(latencies)} valid requests from {args.clients} concurrent clients in {wall:.2f} s "
          f"({len(latencies) / wall:.0f} requests/s)")
    print(f"latency p50 {q[49] * 1000:.0f} ms, p95 {q[94] * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    print(f"status counts (valid): {dict(sorted(statuses.items()))}")
    print(f"{len(MALFORMED)} malformed requests: status counts {dict(sorted(bad_statuses.items()))}")
    for line in failures + problems:
        print("  problem:", line)
    return 1 if failures or problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
