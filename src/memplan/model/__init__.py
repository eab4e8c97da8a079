"""Model architecture: specs from config.json and exact parameter counts."""

from memplan.model.loader import load_model_spec, spec_from_config
from memplan.model.params import largest_layer_params, num_params, param_tree
from memplan.model.spec import ModelSpec

__all__ = ["ModelSpec", "largest_layer_params", "load_model_spec", "num_params", "param_tree", "spec_from_config"]
