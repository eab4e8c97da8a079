"""memplan: GPU and host memory planning for LLM fine-tuning and RLHF.

Public API: :func:`load_model_spec`, :func:`num_params`, and the result types. Importing memplan
loads only the standard library.
"""

from memplan.errors import ConfigError, MemplanError
from memplan.model import ModelSpec, load_model_spec, num_params

__version__ = "0.1.0"

__all__ = ["ConfigError", "MemplanError", "ModelSpec", "__version__", "load_model_spec", "num_params"]
