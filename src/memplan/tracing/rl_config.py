"""The RL trace request: one role of an OpenRLHF ``train_ppo_ray`` run, fully resolved.

A PPO-family run (OpenRLHF/OpenRLHF@3c3be62, v0.11.0: ``openrlhf/cli/train_ppo_ray.py``) places each
model on its own GPUs unless colocated: the actor (trained, LM head), the critic (trained, value head;
only with ``--advantage_estimator gae``), the reference (frozen LM; only with a KL term) and the reward
model (frozen, value head). A trace measures one rank of one role over its whole iteration:

- ``make_experience``: the role's no-grad forward at ``micro_rollout_batch_size`` sequences of
  prompt + generation tokens (``RemoteExperienceMaker.make_experience``), for every role;
- ``forward``, ``backward``, ``optimizer_step``: the training step at ``micro_train_batch_size``
  (``ActorPPOTrainer.training_step`` / ``CriticPPOTrainer.training_step``), for the actor and critic.

Defaults are OpenRLHF v0.11.0's (``--train.micro_batch_size 1``, ``--rollout.micro_batch_size 1``,
``--data.max_len 2048`` split as the legacy ``--prompt_max_len 1024 --generate_max_len 1024``,
``--algo.kl.init_coef 0.01``; /work/shared/reference/openrlhf.md §1.1). Standard library only.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from enum import StrEnum

from memplan.errors import ConfigError
from memplan.tracing.config import AttnImplementation, Engine


class RlMethod(StrEnum):
    """memplan's RL methods; each is one ``--advantage_estimator`` of ``train_ppo_ray``."""

    PPO = "ppo"
    """``gae``: the only estimator with a critic."""
    GRPO = "grpo"
    """``group_norm``."""
    REINFORCE = "reinforce"
    """``reinforce`` (REINFORCE++)."""
    RLOO = "rloo"
    """``rloo``."""


#: memplan method -> OpenRLHF ``--advantage_estimator`` (as frameworks/openrlhf/rl_job.py maps them).
ESTIMATOR = {RlMethod.PPO: "gae", RlMethod.GRPO: "group_norm", RlMethod.REINFORCE: "reinforce",
             RlMethod.RLOO: "rloo"}


class RlRole(StrEnum):
    """The models of a ``train_ppo_ray`` run that a trace can measure."""

    ACTOR = "actor"
    """Policy: ``Actor`` (causal LM), trained with PolicyLoss."""
    CRITIC = "critic"
    """Value model: base transformer + ``score`` head, trained with ValueLoss (gae only)."""
    REF = "ref"
    """Reference policy: frozen ``Actor`` (only with a KL term)."""
    REWARD = "reward"
    """Reward model: frozen base transformer + ``score`` head."""

    @property
    def trained(self) -> bool:
        """Whether the role has gradients and an optimizer."""
        return self in (RlRole.ACTOR, RlRole.CRITIC)


#: OpenRLHF v0.11.0 defaults (openrlhf/cli/train_ppo_ray.py): micro batches, lengths, KL coefficient.
DEFAULT_MICRO_TRAIN_BATCH_SIZE = 1
DEFAULT_MICRO_ROLLOUT_BATCH_SIZE = 1
DEFAULT_PROMPT_MAX_LEN = 1024
DEFAULT_GENERATE_MAX_LEN = 1024
DEFAULT_INIT_KL_COEF = 0.01


@dataclass(frozen=True, slots=True, kw_only=True)
class RlTraceRequest:
    """One fully resolved RL role to trace (fake engine, one rank at world size 1)."""

    model: str
    """MODEL: the actor (``--pretrain``); the default for every other role's model."""
    method: RlMethod
    """Which advantage estimator (decides whether a critic exists)."""
    role: RlRole
    """Which model of the run is traced."""
    engine: Engine
    """Always the fake engine."""
    prompt_max_len: int
    """Prompt tokens per sequence (every sequence is full length: the worst case)."""
    generate_max_len: int
    """Generated tokens per sequence."""
    micro_train_batch_size: int
    """Sequences per training micro-step of the actor or critic."""
    micro_rollout_batch_size: int
    """Sequences per make-experience forward."""
    gradient_checkpointing: bool
    """HF gradient checkpointing (non-reentrant), actor and critic (the critic reads the actor's flag)."""
    attn_implementation: AttnImplementation
    """As requested; :attr:`AttnImplementation.traced` is what runs."""
    init_kl_coef: float
    """KL coefficient; > 0 (or ``use_kl_loss``) makes a reference model exist."""
    use_kl_loss: bool
    """KL as a loss term in the actor step (``--use_kl_loss``) instead of a reward penalty."""
    entropy_loss_coef: float | None
    """Set (even 0): the actor computes the entropy of its fp32 logits."""
    zero_stage: int
    """DeepSpeed ZeRO stage (recorded; one rank at world size 1 partitions nothing)."""
    param_dtype: str
    """``bf16`` or ``fp16`` weights and gradients; fp32 master weights and Adam states."""
    ref_pretrain: str | None
    """Reference model (default MODEL); None when the run has no reference."""
    reward_pretrain: str
    """Reward model (default MODEL)."""
    critic_pretrain: str | None
    """Critic (default the reward model, as train_ppo_ray sets it); None without gae."""

    @property
    def max_len(self) -> int:
        """Tokens per sequence: prompt + generation."""
        return self.prompt_max_len + self.generate_max_len

    @property
    def role_model(self) -> str:
        """The model the traced role loads."""
        return {RlRole.ACTOR: self.model, RlRole.REF: self.ref_pretrain, RlRole.REWARD: self.reward_pretrain,
                RlRole.CRITIC: self.critic_pretrain}[self.role] or self.model

    @property
    def kl_in_loss(self) -> bool:
        """The actor loss has a KL term against the reference log-probs (``use_loss`` and coef > 0)."""
        return self.use_kl_loss and self.init_kl_coef > 0

    def as_dict(self) -> dict[str, object]:
        """Plain JSON values (enums as strings); :func:`rl_request_from_dict` reads it back."""
        return {"model": self.model, "method": str(self.method), "role": str(self.role),
                "engine": str(self.engine), "advantage_estimator": ESTIMATOR[self.method],
                "prompt_max_len": self.prompt_max_len, "generate_max_len": self.generate_max_len,
                "max_len": self.max_len, "micro_train_batch_size": self.micro_train_batch_size,
                "micro_rollout_batch_size": self.micro_rollout_batch_size,
                "gradient_checkpointing": self.gradient_checkpointing,
                "attn_implementation": str(self.attn_implementation),
                "traced_attn_implementation": str(self.attn_implementation.traced),
                "init_kl_coef": self.init_kl_coef, "use_kl_loss": self.use_kl_loss,
                "entropy_loss_coef": self.entropy_loss_coef, "zero_stage": self.zero_stage,
                "param_dtype": self.param_dtype, "ref_pretrain": self.ref_pretrain,
                "reward_pretrain": self.reward_pretrain, "critic_pretrain": self.critic_pretrain,
                "role_model": self.role_model}

    def to_command(self) -> str:
        """The ``memplan trace`` command line that reproduces this request, every value explicit."""
        parts = ["memplan", "trace", self.model, "--method", str(self.method), "--role", str(self.role),
                 "--engine", str(self.engine), "--prompt_max_len", str(self.prompt_max_len),
                 "--generate_max_len", str(self.generate_max_len),
                 "--micro_train_batch_size", str(self.micro_train_batch_size),
                 "--micro_rollout_batch_size", str(self.micro_rollout_batch_size),
                 "--attn_implementation", str(self.attn_implementation), "--init_kl_coef", repr(self.init_kl_coef),
                 "--zero_stage", str(self.zero_stage), "--param_dtype", self.param_dtype,
                 "--reward_pretrain", self.reward_pretrain]
        if self.gradient_checkpointing:
            parts.append("--gradient_checkpointing")
        if self.use_kl_loss:
            parts.append("--use_kl_loss")
        if self.entropy_loss_coef is not None:
            parts += ["--entropy_loss_coef", repr(self.entropy_loss_coef)]
        if self.ref_pretrain is not None:
            parts += ["--ref_pretrain", self.ref_pretrain]
        if self.critic_pretrain is not None:
            parts += ["--critic_pretrain", self.critic_pretrain]
        return shlex.join(parts)


def _positive(value: int | None, default: int, flag: str) -> int:
    resolved = default if value is None else value
    if resolved < 1:
        raise ConfigError(flag, f"must be >= 1, got {resolved}")
    return resolved


def _enum(enum: type[StrEnum], value: str, flag: str) -> StrEnum:
    try:
        return enum(value)
    except ValueError:
        raise ConfigError(flag, f"must be one of {', '.join(m.value for m in enum)}, got {value!r}") from None


def resolve_rl_request(*, model: str, method: str, role: str | None, engine: str = "fake",
                       prompt_max_len: int | None = None, generate_max_len: int | None = None,
                       micro_train_batch_size: int | None = None, micro_rollout_batch_size: int | None = None,
                       gradient_checkpointing: bool = False, attn_implementation: str = "flash_attention_2",
                       init_kl_coef: float | None = None, use_kl_loss: bool = False,
                       entropy_loss_coef: float | None = None, zero_stage: int = 2, param_dtype: str = "bf16",
                       ref_pretrain: str | None = None, reward_pretrain: str | None = None,
                       critic_pretrain: str | None = None) -> RlTraceRequest:
    """Fill OpenRLHF v0.11.0's defaults, check the role exists in this run, and return the frozen request."""
    method_enum = RlMethod(_enum(RlMethod, method, "--method"))
    if role is None:
        raise ConfigError("--role", f"required for {method_enum}: actor, critic, ref or reward")
    role_enum = RlRole(_enum(RlRole, role, "--role"))
    if engine != Engine.FAKE.value:
        raise ConfigError("--engine", "RL roles are traced with the fake engine only")
    kl = DEFAULT_INIT_KL_COEF if init_kl_coef is None else init_kl_coef
    if kl < 0:
        raise ConfigError("--init_kl_coef", f"must be >= 0, got {kl}")
    has_ref = kl > 0 or use_kl_loss
    gae = method_enum is RlMethod.PPO
    _check_role(role_enum, method_enum, has_ref, critic_pretrain, ref_pretrain)
    reward = reward_pretrain or model
    request = RlTraceRequest(
        model=model, method=method_enum, role=role_enum, engine=Engine.FAKE,
        prompt_max_len=_positive(prompt_max_len, DEFAULT_PROMPT_MAX_LEN, "--prompt_max_len"),
        generate_max_len=_positive(generate_max_len, DEFAULT_GENERATE_MAX_LEN, "--generate_max_len"),
        micro_train_batch_size=_positive(micro_train_batch_size, DEFAULT_MICRO_TRAIN_BATCH_SIZE,
                                         "--micro_train_batch_size"),
        micro_rollout_batch_size=_positive(micro_rollout_batch_size, DEFAULT_MICRO_ROLLOUT_BATCH_SIZE,
                                           "--micro_rollout_batch_size"),
        gradient_checkpointing=gradient_checkpointing,
        attn_implementation=AttnImplementation(_enum(AttnImplementation, attn_implementation, "--attn_implementation")),
        init_kl_coef=kl, use_kl_loss=use_kl_loss, entropy_loss_coef=entropy_loss_coef, zero_stage=zero_stage,
        param_dtype=param_dtype, ref_pretrain=(ref_pretrain or model) if has_ref else None, reward_pretrain=reward,
        critic_pretrain=(critic_pretrain or reward) if gae else None)
    if zero_stage not in (0, 1, 2, 3):
        raise ConfigError("--zero_stage", f"must be 0, 1, 2 or 3, got {zero_stage}")
    if param_dtype not in ("bf16", "fp16"):
        raise ConfigError("--param_dtype", f"must be bf16 or fp16, got {param_dtype!r}")
    return request


def _check_role(role: RlRole, method: RlMethod, has_ref: bool, critic: str | None, ref: str | None) -> None:
    """Roles and models that do not exist in this run (train_ppo_ray.py creates them conditionally)."""
    if method is not RlMethod.PPO and (role is RlRole.CRITIC or critic is not None):
        flag = "--role" if role is RlRole.CRITIC else "--critic_pretrain"
        raise ConfigError(flag, f"{method} (--advantage_estimator {ESTIMATOR[method]}) has no critic; "
                                "only ppo (gae) trains one")
    if not has_ref and (role is RlRole.REF or ref is not None):
        flag = "--role" if role is RlRole.REF else "--ref_pretrain"
        raise ConfigError(flag, "no reference model exists with --init_kl_coef 0 and without --use_kl_loss")


def rl_request_from_dict(data: dict[str, object]) -> RlTraceRequest:
    """Inverse of :meth:`RlTraceRequest.as_dict`."""
    derived = ("advantage_estimator", "max_len", "traced_attn_implementation", "role_model")
    fields = {k: v for k, v in data.items() if k not in derived}
    return resolve_rl_request(**fields)  # type: ignore[arg-type]
