"""Host RAM of saving: the HF model (``Phase.SAVE``) and a DeepSpeed checkpoint (``Phase.CHECKPOINT``).

When each save happens (which flags, which roles) is framework knowledge: frameworks/openrlhf/saves.py.
This module only says what one rank holds on the host while it saves. Neither save adds GPU memory above
the training peak: ZeRO-3 gathers one module's own parameters at a time (below the forward's gathered
parameters), ZeRO 0-2 copy GPU tensors straight to the host, and ``torch.save`` moves one storage at a time.
"""

from __future__ import annotations

from memplan.dtypes import bytes_for
from memplan.memory.sharding import ZeroStage
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.model_states import MASTER_DTYPE
from memplan.memory.zero import ParamLayout, ZeroConfig, ds_source, largest_sub_group_numel, stage12_partition_numels

#: DeepSpeed's fp32 optimizer partitions (master weights and Adam moments) are float32.


def hf_state_dict_rank0(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """The full state dict that ``save_model`` builds on rank 0's host under ZeRO-3 (or DeepSpeed AutoTP).

        rank 0: num_params × lp, one copy (tied weights kept shared); other ranks: nothing

    Source: OpenRLHF openrlhf/utils/deepspeed/deepspeed.py ``save_model`` (v0.11.0 :541-546, v0.9.5 :370-375)
    calls DeepSpeed's ``_zero3_consolidated_16bit_state_dict`` (deepspeed/runtime/engine.py@v0.19.8
    :5631-5700): every rank gathers one module's own parameters on the GPU (``GatheredParameters``,
    ``modifier_rank=0``), rank 0 copies each to the host (``param.detach().cpu()``, lp) and keeps it in an
    ``OrderedDict`` until ``save_pretrained`` has written every shard; shared params (``ds_id``) once.
    Assumes: safetensors ≥ 0.8 writes from the tensors' memory (safetensors/torch.py ``_flatten_as_ptr``,
    no serialisation copy); held from the first gathered module until ``del output_state_dict`` (:585).
    Checked by: tests/memory/test_save.py::test_llama2_70b_zero3_state_dict_on_rank0
    """
    if zero.stage != ZeroStage.ZERO_3:
        return []
    return [Term(path=f"{role}.save.state_dict", bytes=bytes_for(layout.num_params, zero.param_dtype),
                 category=Category.PARAM, device=Device.CPU, phase=Phase.SAVE,
                 source=ds_source("runtime/engine.py", "_zero3_consolidated_16bit_state_dict on rank 0 :5631-5700, "
                                  "called by OpenRLHF save_model (deepspeed.py@v0.11.0 :541-546)"))]


def hf_state_dict_per_rank(layout: ParamLayout, zero: ZeroConfig, *, role: str, tied_numel: int = 0) -> list[Term]:
    """The state dict every rank clones to its host in ``save_model`` under ZeRO 0-2.

        every rank: (num_params + tied_numel) × lp

    Source: OpenRLHF deepspeed.py ``save_model`` (v0.11.0 :548-550, v0.9.5 :377-379):
    ``clone_tensors_for_torch_save(model_to_save.state_dict())`` runs on every rank, not only rank 0;
    DeepSpeed deepspeed/checkpoint/utils.py@v0.19.8 :41-65 copies each state-dict entry to the CPU
    (``item.detach().to('cpu')``), so a tied embedding, two entries of one tensor, is copied twice.
    Assumes: ranks save together (the barrier at :591); freed by ``del output_state_dict`` (:585).
    Checked by: tests/memory/test_save.py::test_zero2_every_rank_clones_the_state_dict
    """
    if zero.stage == ZeroStage.ZERO_3:
        return []
    return [Term(path=f"{role}.save.state_dict_clone", bytes=bytes_for(layout.num_params + tied_numel, zero.param_dtype),
                 category=Category.PARAM, device=Device.CPU, phase=Phase.SAVE,
                 source=ds_source("checkpoint/utils.py", "clone_tensors_for_torch_save :41-65, called by OpenRLHF "
                                  "save_model on every rank (deepspeed.py@v0.11.0 :548-550)"))]


def ds_checkpoint_copy(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """What one rank holds on the host beyond its resident state while ``save_checkpoint`` writes.

        optimizer on the GPU, ZeRO-3:   the largest fp32 sub-group partition, largest_sub_group × 4
        optimizer on the GPU, ZeRO 0-2: the largest fp32 partition group, max(Σ group / dp) × 4
        optimizer state offloaded to the host: nothing

    Source: deepspeed/runtime/engine.py@v0.19.8 ``_save_zero_checkpoint`` :5549-5564 puts references to the
    optimizer's state (stage3.py ``_rigid_state_dict`` :3433-3444, stage_1_and_2.py ``state_dict``
    :3370-3390: fp32 flat groups and Adam moments, no clones) into a dict that the default
    ``TorchCheckpointEngine.save`` hands to ``torch.save``; torch/serialization.py@v2.13.0 :1287-1310 writes
    a host storage in place and copies a GPU one to the host (``storage.cpu()``) one storage at a time.
    Assumes: ``use_pinned_memory_for_d2h`` off (its default); under ZeRO 0-2 data-parallel rank 0 also writes
    the lp module state dict, one GPU tensor at a time (≤ largest_tensor × lp), below the partitions above.
    Checked by: tests/memory/test_save.py::test_checkpoint_copies_one_gpu_storage_at_a_time
    """
    if zero.offload_optimizer or not layout.trainable_params:
        return []
    if zero.stage == ZeroStage.ZERO_3:
        numel, detail = largest_sub_group_numel(layout, zero.dp_degree, zero.sub_group_size), "largest sub-group"
        path = "runtime/zero/stage3.py"
    else:
        numel, detail = max(stage12_partition_numels(layout, zero.dp_degree), default=0), "largest partition group"
        path = "runtime/zero/stage_1_and_2.py"
    return [Term(path=f"{role}.checkpoint.storage_copy", bytes=bytes_for(numel, MASTER_DTYPE), category=Category.TEMP,
                 device=Device.CPU, phase=Phase.CHECKPOINT,
                 source=ds_source(path, f"torch.save copies one GPU storage to the host: fp32 {detail}"))]
