"""Run a trace request on its engine."""

from __future__ import annotations

from collections.abc import Callable

from memplan.errors import ConfigError, MemplanError
from memplan.tracing.config import Engine, TraceRequest
from memplan.tracing.result import TraceResult
from memplan.tracing.rl_config import RlTraceRequest


def trace(request: TraceRequest | RlTraceRequest, progress: Callable[[str], None],
          module_depth: int = 0) -> TraceResult:
    """Measure ``request``; ``progress`` receives one short status message at a time.

    A configuration the engine cannot run raises :class:`ConfigError` saying why; nothing is estimated
    in its place.
    """
    try:
        if isinstance(request, RlTraceRequest):
            from memplan.tracing.rl_engine import run_rl_fake

            return run_rl_fake(request, progress, module_depth)
        if request.engine is Engine.FAKE:
            from memplan.tracing.fake_engine import run_fake

            return run_fake(request, progress, module_depth)
        from memplan.tracing.deepspeed_cpu import run_deepspeed_cpu

        return run_deepspeed_cpu(request, progress, module_depth)
    except MemplanError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the traced code is reported, never estimated
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"--engine {request.engine}", f"cannot trace this configuration; nothing was measured "
                                                        f"({type(exc).__name__}: {first})") from None
