"""Per-op memory timeline of one deepspeed-cpu reference case: what memory/grad_timeline.py is checked on.

Runs the case's ranks exactly as ``memplan trace --engine deepspeed-cpu`` does (memplan.tracing.ds_worker)
and, for the steady-state iteration, records each rank's bytes by category after every operator
MemTracker sees. Printed: the points where a category moves by more than ``--step`` MB, so the moment the
reduce bucket appears (first gradient hook), each flush's flat copy and the gradient partition can be read
off against the activation + temp curve.

    python scripts/probe_grad_timeline.py llama-small-zero2-w2          # a validation/deepspeed_cpu case
    python scripts/probe_grad_timeline.py llama-small-zero3-w2 --step 5 --rank 1

Needs the trace extra (torch, deepspeed); a small case takes 1-2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "validation" / "deepspeed_cpu"
MB = 1e6


def _worker(request_json: str, out_dir: str) -> None:
    """One rank: the deepspeed-cpu worker with a timeline hook on the tracker's peak update."""
    import memplan.tracing.ds_worker as worker
    from memplan.tracing.track import PhaseTracker

    timeline: list[dict[str, object]] = []
    note = PhaseTracker._note_phase_peak

    def noting(self: PhaseTracker) -> None:
        note(self)
        iteration, phase = self.phase
        if iteration == 2 and phase in ("forward", "backward", "optimizer_step"):
            timeline.append({**self.current_categories(), "phase": phase, "total": self.current_total()})

    PhaseTracker._note_phase_peak = noting  # type: ignore[method-assign]
    out = Path(out_dir)
    worker.run_rank(worker.request_from_dict(json.loads(request_json)), out)
    rank = int(os.environ.get("RANK", "0"))
    (out / f"timeline{rank}.json").write_text(json.dumps(timeline), encoding="utf-8")


def _print(timeline: list[dict[str, object]], step_mb: float) -> None:
    keys = ("param", "grad", "optimizer", "activation", "temp")
    last: dict[str, float] | None = None
    print(f"{'op':>6} {'phase':<15}" + "".join(f"{k:>12}" for k in keys) + f"{'total':>12}   (MB)")
    for i, point in enumerate(timeline):
        now = {k: float(point[k]) / MB for k in keys}  # type: ignore[arg-type]
        if last is None or any(abs(now[k] - last[k]) >= step_mb for k in keys) or point["phase"] != last.get("phase"):
            print(f"{i:>6} {point['phase']:<15}" + "".join(f"{now[k]:>12.1f}" for k in keys)
                  + f"{float(point['total']) / MB:>12.1f}")  # type: ignore[arg-type]
            last = {**now, "phase": point["phase"]}  # type: ignore[dict-item]


def main(argv: list[str] | None = None) -> int:
    """Run a case's ranks with the timeline hook and print rank ``--rank``'s timeline."""
    if argv and argv[0] == "--worker":
        _worker(argv[1], argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", help="a record id in validation/deepspeed_cpu (e.g. llama-small-zero2-w2)")
    parser.add_argument("--rank", type=int, default=0, help="which rank's timeline to print (default 0)")
    parser.add_argument("--step", type=float, default=20.0, help="print a point when a category moves this many MB")
    args = parser.parse_args(argv)
    path = CASES / f"{args.case}.json"
    if not path.is_file():
        parser.error(f"case: no record {path.relative_to(ROOT)}")
    config = json.loads(path.read_text(encoding="utf-8"))["config"]
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={config['gpus']}",
               __file__, "--worker", json.dumps(config), out]
        print(f"running {args.case} on {config['gpus']} rank(s) ...", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode:
            print(done.stdout[-3000:] + done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        timeline = json.loads((Path(out) / f"timeline{args.rank}.json").read_text(encoding="utf-8"))
    _print(timeline, args.step)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
