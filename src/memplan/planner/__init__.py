"""Planning: the fewest GPUs that fit, and a recommended layout, with their OpenRLHF launch commands.

``plan(model, method, gpu=...)`` searches GPU counts per role, placement (separate groups, the
colocation options, the hybrid engine), ZeRO stage, Adam offload, gradient checkpointing, LoRA
(when allowed), vLLM engines × TP and memory share, sleep flags, micro batch sizes and ring
attention, estimating every candidate with ``memplan.api.estimate_run``.
"""

from memplan.planner.plan import BindingLimit, LimitKind, Plan, PlanResult, plan, plan_gpus
from memplan.planner.space import Fit, Layout, Placement

__all__ = ["BindingLimit", "Fit", "Layout", "LimitKind", "Placement", "Plan", "PlanResult", "plan", "plan_gpus"]
