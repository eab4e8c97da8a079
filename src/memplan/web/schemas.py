"""Request bodies of the JSON API: typed, bounded, unknown fields rejected.

The fields are the CLI's options; OpenRLHF flags travel as the flag list the CLI would receive
(``["--zero_stage", "3"]``), verl's options as its ``key=value`` Hydra words (``framework: "verl"``), so the
CLI's own flag tables, types and bounds judge them. The bounds here
only keep a request's size and work small before memplan sees it; memplan's own checks apply after.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from memplan.api import MAX_GPUS, MAX_GPUS_PER_NODE
from memplan.jobs.options import Method

#: Longest model name, GPU name, size or version string: a hub id is at most 96 + 1 + 96 characters
#: (huggingface_hub's ``REPO_ID_MAX_LENGTH`` = 96 per part), so 200 leaves room without allowing essays.
MAX_NAME_CHARS = 200
#: Most OpenRLHF flag words in one request: train_ppo_ray has about 250 flags, each with one value at most.
MAX_FLAG_WORDS = 600
#: Longest single flag word (a reward URL or a JSON-ish value still fits).
MAX_FLAG_CHARS = 2000
#: Largest pasted launch command: the CLI's ``check`` limit for a script is 1 MiB, but a request body
#: is limited to ``MAX_BODY_BYTES`` (web/app.py) anyway; 64 KiB holds any real launch script.
MAX_COMMAND_CHARS = 64 * 1024
#: Uploaded config.json objects per request, and their key count (real configs have about 40 keys).
MAX_CONFIGS, MAX_CONFIG_KEYS = 4, 500

Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS, strip_whitespace=True)]
FlagWord = Annotated[str, StringConstraints(max_length=MAX_FLAG_CHARS)]
MethodName = Literal[tuple(m.value for m in Method)]  # type: ignore[valid-type]
FrameworkName = Literal["openrlhf", "verl"]
ConfigObject = Annotated[dict[str, Any], Field(max_length=MAX_CONFIG_KEYS)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    gpu: Name | None = Field(None, description="GPU type (GET /api/gpus) or a size such as 80GiB")
    host_ram: Name | None = Field(None, description="host RAM per node, e.g. 1600GB or 1.5TiB")
    openrlhf_version: Name | None = Field(None, description="OpenRLHF defaults to apply: 0.8, 0.9 or 0.11")
    framework: FrameworkName = Field("openrlhf", description="the framework that runs it: openrlhf or verl")
    framework_version: Name | None = Field(None, description="verl defaults to apply: 0.8, 0.9.0 or 0.9.1 "
                                                              "(for OpenRLHF the same as openrlhf_version)")
    configs: dict[Name, ConfigObject] = Field(
        default_factory=dict, max_length=MAX_CONFIGS,
        description="uploaded config.json objects by name; use the name as the model (parsed as data only)")


class EstimateRequest(_Request):
    """``memplan estimate MODEL --method METHOD [flags] [--gpus N] ...``."""

    model: Name = Field(description="preset (GET /api/models) or the name of an uploaded config")
    method: MethodName = Field(description="sft, rm, dpo, kto, prm, kd, ppo, grpo, reinforce, rloo")
    flags: list[FlagWord] = Field(default_factory=list, max_length=MAX_FLAG_WORDS,
                                  description='OpenRLHF flags as the CLI takes them, e.g. ["--zero_stage", "3"]; '
                                              'for verl key=value words, e.g. ["trainer.n_gpus_per_node=8"]')
    gpus: int | None = Field(None, ge=1, le=MAX_GPUS, description="GPUs in total, on nodes of gpus_per_node "
                                                                "(default 8) (single-model methods)")
    nodes: int | None = Field(None, ge=1, le=MAX_GPUS, description="nodes (single-model methods)")
    gpus_per_node: int | None = Field(None, ge=1, le=MAX_GPUS_PER_NODE, description="GPUs per node")


class CheckRequest(_Request):
    """``memplan check -- COMMAND``: an OpenRLHF or verl launch command as typed (text, never a file name)."""

    framework: FrameworkName | None = Field(None, description="openrlhf or verl (default: read from the command)")

    command: Annotated[str, StringConstraints(min_length=1, max_length=MAX_COMMAND_CHARS)] = Field(
        description="deepspeed/torchrun/python/ray job submit or python3 -m verl.trainer.main_ppo command (or a "
                    "pasted script), line continuations allowed")


class PlanRequest(_Request):
    """``memplan plan MODEL --method METHOD --gpu GPU[,GPU...] ...``."""

    model: Name
    method: MethodName
    gpu: Name = Field(description="GPU type(s), comma-separated to compare")  # type: ignore[assignment]
    gpus_per_node: int = Field(8, ge=1, le=MAX_GPUS_PER_NODE)
    max_gpus: int | None = Field(None, ge=0, le=MAX_GPUS)  # 0: no plan, the GPU count binds (as the CLI)
    flags: list[FlagWord] = Field(default_factory=list, max_length=MAX_FLAG_WORDS)
    keep: list[Annotated[str, StringConstraints(max_length=MAX_FLAG_CHARS)]] = Field(
        default_factory=list, max_length=MAX_FLAG_WORDS,
        description="FLAG=VALUE pins, e.g. zero_stage=2 (verl: a key, e.g. trainer.n_gpus_per_node=8)")
    allow_lora: bool = False
