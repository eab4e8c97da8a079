"""memplan: GPU and host memory planning for LLM fine-tuning and RLHF.

Public API: :func:`load_model_spec`, :func:`num_params`, and the result types. Importing memplan
loads only the standard library.
"""

from memplan.errors import ConfigError, MemplanError
from memplan.model import ModelSpec, load_model_spec, num_params

__version__ = "0.1.0"

__all__ = ["ConfigError", "MemplanError", "ModelSpec", "__version__", "estimate", "estimate_command",
           "load_model_spec", "num_params", "plan"]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """``memplan.estimate``, ``memplan.estimate_command`` and ``memplan.plan``, imported on first use so
    ``import memplan`` stays fast."""
    if name in ("estimate", "estimate_command"):
        from memplan import api

        return getattr(api, name)
    if name == "plan":
        from memplan.planner import plan

        return plan
    raise AttributeError(f"module 'memplan' has no attribute {name!r}")
