"""OpenRLHF's DeepSpeed configs, as ``openrlhf/utils/deepspeed/deepspeed_utils.py`` builds them.

Source: OpenRLHF/OpenRLHF@v0.9.5 (c0e2ee2) ``get_train_ds_config`` / ``get_eval_ds_config`` with the CLI
defaults of ``train_sft.py`` (``--zpg 1``, ``--max_norm 1.0``, no ``--overlap_comm``, no
``--grad_accum_dtype``). Keys OpenRLHF sets to ``"auto"`` are dropped here, as DeepSpeed's
``DeepSpeedConfigModel`` drops them (``deepspeed/runtime/config_utils.py``), so DeepSpeed's own defaults
apply. Batch keys: gradient accumulation 1 (every micro step is an optimizer step).
"""

from __future__ import annotations

from typing import Any

from memplan.tracing.config import TraceRequest

#: ``--max_norm`` default of OpenRLHF (DeepSpeed ``gradient_clipping``).
MAX_NORM = 1.0

#: ``--zpg`` default of OpenRLHF's CLI (ZeRO++ ``zero_hpz_partition_size``).
ZPG = 1


def _precision(param_dtype: str) -> dict[str, Any]:
    return {"bf16": {"enabled": param_dtype == "bf16"}, "fp16": {"enabled": param_dtype == "fp16"}}


def _batch(request: TraceRequest) -> dict[str, Any]:
    return {"train_micro_batch_size_per_gpu": request.micro_train_batch_size,
            "train_batch_size": request.micro_train_batch_size * request.gpus,
            "gradient_accumulation_steps": 1}


def train_config(request: TraceRequest) -> dict[str, Any]:
    """``get_train_ds_config(offload=False, adam_offload, stage, param_dtype, max_norm, zpg)``, autos dropped."""
    zero: dict[str, Any] = {
        "stage": request.zero_stage,
        "offload_param": {"device": "none"},
        "offload_optimizer": {"device": "cpu" if request.adam_offload else "none", "pin_memory": True},
        "zero_hpz_partition_size": ZPG,
        "zero_quantized_weights": False,
        "zero_quantized_gradients": False,
    }
    if request.zero_stage == 3:
        zero["reduce_scatter"] = True
    return {"steps_per_print": 100, "zero_optimization": zero, **_precision(request.param_dtype),
            "gradient_clipping": MAX_NORM, "prescale_gradients": False, "wall_clock_breakdown": False,
            "data_types": {"grad_accum_dtype": None}, **_batch(request)}


def eval_config(request: TraceRequest) -> dict[str, Any]:
    """``get_eval_ds_config(offload=False, stage=3 if zero_stage == 3 else 0)``, autos dropped."""
    zero = {"stage": 3 if request.zero_stage == 3 else 0, "offload_param": {"device": "none", "pin_memory": True}}
    return {"steps_per_print": 100, "zero_optimization": zero, **_precision(request.param_dtype),
            "gradient_clipping": 1.0, "prescale_gradients": False, "wall_clock_breakdown": False, **_batch(request)}
