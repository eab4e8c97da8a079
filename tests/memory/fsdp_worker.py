"""Real FSDP on the CPU (gloo) for tests/memory/test_fsdp.py: one run, every rank, sizes read from tensors.

``python tests/memory/fsdp_worker.py fsdp2,fsdp1 WORLD CONFIG_JSON OUT_JSON``. Builds a tiny transformers
causal LM from CONFIG_JSON (no download), wraps it as verl does (each decoder layer, then the root;
FSDP2 ``fully_shard`` with ``MixedPrecisionPolicy(bf16, fp32)``, or FSDP1 with the same
``MixedPrecision``; versions ``fsdp2-lora``/``fsdp1-lora`` first add peft LoRA adapters, rank ``LORA_RANK`` on
all linear layers, as verl's ``_build_lora_module`` does, and FSDP1 then or-s verl's LoRA lambda policy, one
unit per leaf module whose weight requires grad, into the layer policy), runs one forward/backward and one
``torch.optim.AdamW(foreach=True)`` step, and writes
per rank: sharded param bytes (storage, padding included), grad bytes, optimizer state bytes, and the
unsharded parameter bytes alive at each decoder layer's forward and backward.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _sum_storages(tensors) -> int:
    """Bytes of the distinct, allocated storages behind ``tensors`` (DTensors: their local tensors)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        st = _local(t).untyped_storage()
        if st.nbytes():
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


class Fsdp2Probe:
    """Reads, at chosen moments, every FSDP2-owned transient tensor alive: all-gather outputs (unsharded
    parameters), the held flat all-gather output, unsharded gradients and reduce-scatter inputs."""

    def __init__(self, units):
        self.groups = [g for u in units for g in u._get_fsdp_state()._fsdp_param_groups]
        self.forward: list[int] = []
        self.backward: list[int] = []
        self.extra: list = []
        self.copy_in: list = []

    def _held(self):
        ctx = self.groups[0].comm_ctx
        held = []
        ag = getattr(ctx, "all_gather_state", None)
        if ag is not None:
            held.append(ag.all_gather_result.all_gather_output)
        for rs in list(getattr(ctx, "reduce_scatter_states", []) or []) + [getattr(ctx, "reduce_scatter_state", None)]:
            if rs is not None:
                held.append(rs.reduce_scatter_input)
        return held

    def now(self) -> int:
        tensors = list(self._held()) + list(self.extra)
        for g in self.groups:
            if g._all_gather_result is not None:  # issued (prefetched), not yet copied out
                tensors.append(g._all_gather_result.all_gather_output)
            for fp in g.fsdp_params:
                tensors += list(getattr(fp, "all_gather_outputs", []) or [])
                up = getattr(fp, "_unsharded_param", None)
                if up is not None and up.grad is not None:
                    tensors.append(up.grad)
        return _sum_storages(tensors)

    def record(self) -> None:
        """Note the bytes alive now, as a forward or a backward moment (autograd runs a graph task)."""
        (self.backward if torch._C._current_graph_task_id() != -1 else self.forward).append(self.now())

    def uninstall(self):
        self.restore()

    def install(self):
        from torch.distributed.fsdp._fully_shard import _fsdp_collectives as coll
        from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup, TrainingState

        from torch.distributed.fsdp._fully_shard._fsdp_param import FSDPParam

        probe = self
        wait, post_bwd, copy_in = FSDPParamGroup.wait_for_unshard, FSDPParamGroup.post_backward, coll.foreach_reduce_scatter_copy_in
        from torch.distributed.fsdp._fully_shard import _fsdp_param_group as pg

        get_inputs, allocate, inputs_prop = coll._get_param_all_gather_inputs, coll.DefaultAllGather.allocate, FSDPParam.all_gather_inputs
        alloc = pg.alloc_storage

        def _get_param_all_gather_inputs(fsdp_params):
            out = get_inputs(fsdp_params)
            probe.extra = [t for ts in out for t in ts]  # held until the flat output is allocated
            return out

        def allocate_output(comm, *args, **kwargs):
            out = allocate(comm, *args, **kwargs)
            probe.extra.append(out)
            probe.record()
            probe.extra = []
            return out

        def all_gather_inputs(fsdp_param):  # shard size 1: one parameter's cast at a time
            out = inputs_prop.fget(fsdp_param)
            probe.extra = list(out)  # alive while its output is allocated and filled
            return out

        def alloc_storage_probe(tensor):
            alloc(tensor)
            probe.record()
            probe.extra = []

        def wait_for_unshard(group):
            wait(group)
            if group._training_state == TrainingState.FORWARD:
                probe.forward.append(probe.now())

        def post_backward(group, *args):
            probe.backward.append(probe.now())
            return post_bwd(group, *args)

        def foreach_reduce_scatter_copy_in(grads, rs_input, world_size):
            probe.copy_in.append([_sum_storages(grads), len(grads), sum(g.numel() for g in grads), rs_input.numel()])
            probe.extra = [*grads, rs_input]
            probe.backward.append(probe.now())
            probe.extra = []
            return copy_in(grads, rs_input, world_size)

        self.restore = lambda: (setattr(FSDPParamGroup, "wait_for_unshard", wait),
                                setattr(coll, "_get_param_all_gather_inputs", get_inputs),
                                setattr(coll.DefaultAllGather, "allocate", allocate),
                                setattr(FSDPParam, "all_gather_inputs", inputs_prop),
                                setattr(pg, "alloc_storage", alloc),
                                setattr(FSDPParamGroup, "post_backward", post_bwd),
                                setattr(coll, "foreach_reduce_scatter_copy_in", copy_in))
        FSDPParamGroup.wait_for_unshard = wait_for_unshard
        coll._get_param_all_gather_inputs = _get_param_all_gather_inputs
        coll.DefaultAllGather.allocate = allocate_output
        if self.groups[0].mesh_info.shard_mesh_size == 1:
            FSDPParam.all_gather_inputs = property(all_gather_inputs)
            pg.alloc_storage = alloc_storage_probe
        FSDPParamGroup.post_backward = post_backward
        coll.foreach_reduce_scatter_copy_in = foreach_reduce_scatter_copy_in


class Fsdp1Probe:
    """The FSDP1 counterpart: every flat parameter's padded unsharded buffer and low-precision shard, the
    unsharded gradient autograd hands to the post-backward hook, and the reduce-scatter tensors."""

    def __init__(self):
        self.handles: list = []
        self.forward: list[int] = []
        self.backward: list[int] = []
        self.extra: list = []

    def now(self) -> int:
        tensors = list(self.extra)
        for h in self.handles:
            fp = h.flat_param
            tensors += [getattr(fp, "_full_param_padded", None), getattr(fp, "_mp_shard", None)]
            if fp.grad is not None and fp.grad.numel() != fp._local_shard.numel():  # unsharded grad
                tensors.append(fp.grad)
        return _sum_storages(tensors)

    def record(self) -> None:
        (self.backward if torch._C._current_graph_task_id() != -1 else self.forward).append(self.now())

    def install(self):
        from torch.distributed.fsdp import _runtime_utils as ru
        from torch.distributed.fsdp._flat_param import FlatParamHandle

        probe = self
        unshard, hook, rs = FlatParamHandle.unshard, ru._post_backward_hook, ru._get_reduce_scatter_tensors

        def unshard_probe(handle):
            unshard(handle)
            probe.record()

        def post_backward_hook(state, handle, *args):
            grad = handle.flat_param.grad
            probe.extra = [grad.data] if grad is not None else []  # autograd's grad, alive through the hook
            probe.record()
            try:
                return hook(state, handle, *args)
            finally:
                probe.extra = []

        def reduce_scatter_tensors(state, unsharded_grad):
            padded, sharded = rs(state, unsharded_grad)
            probe.extra = [*probe.extra, unsharded_grad, padded, sharded]
            probe.record()
            return padded, sharded

        FlatParamHandle.unshard = unshard_probe
        ru._post_backward_hook = post_backward_hook
        ru._get_reduce_scatter_tensors = reduce_scatter_tensors
        self.restore = lambda: (setattr(FlatParamHandle, "unshard", unshard),
                                setattr(ru, "_post_backward_hook", hook),
                                setattr(ru, "_get_reduce_scatter_tensors", rs))

    def uninstall(self):
        self.restore()


def _probe_foreach_sqrt(record: list[int]):
    original = torch._foreach_sqrt

    def sqrt(tensors):
        out = original(tensors)
        record.append(_sum_storages(out))
        return out

    torch._foreach_sqrt = sqrt
    return original


def _build(config_path: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    with open(config_path) as f:
        cfg = json.load(f)
    config = AutoConfig.for_model(cfg.pop("model_type"), **{k: v for k, v in cfg.items() if k != "architectures"})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32), config


#: Adapter rank of the ``-lora`` versions.
LORA_RANK = 4


def _layers(model):
    inner = model.base_model.model if hasattr(model, "peft_config") else model
    return list(inner.model.layers)


def _fsdp2(model, group):
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = DeviceMesh.from_group(group, device_type="cpu")
    mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    layers = _layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=True)
    return layers


def _lora(model):
    """peft LoRA as verl 0.9.1 builds it (verl/workers/engine/fsdp/transformer_impl.py:359-368)."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=LORA_RANK, lora_alpha=16, target_modules="all-linear",
                        bias="none")
    return get_peft_model(model, config)


def _fsdp1(model, group, lora: bool = False):
    import functools

    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, MixedPrecision
    from torch.distributed.fsdp.wrap import _or_policy, lambda_auto_wrap_policy, transformer_auto_wrap_policy

    layer_cls = type(_layers(model)[0])
    policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={layer_cls})
    if lora:  # verl/utils/fsdp_utils.py get_fsdp_wrap_policy :113-125
        def leaf_trained(module):
            return bool(len(list(module.named_children())) == 0 and getattr(module, "weight", None) is not None
                        and module.weight.requires_grad)

        lam = functools.partial(lambda_auto_wrap_policy, lambda_fn=leaf_trained)
        policy = functools.partial(_or_policy, policies=[lam, policy])
    mixed = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, buffer_dtype=torch.float32)
    return FSDP(model, process_group=group, auto_wrap_policy=policy, mixed_precision=mixed, device_id=torch.device("cpu"),
                use_orig_params=False)


def _rank(rank: int, world: int, versions: list[str], config_path: str, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    results = {}
    for size in sorted({1, 2, 4} & set(range(1, world + 1)), reverse=True):
        group = dist.new_group(list(range(size)))  # collective: every rank creates every group
        if rank < size:
            for version in versions:
                results[f"{size}/{version}"] = _run(version, config_path, group)
        dist.barrier()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


def _run(version: str, config_path: str, group) -> dict:
    model, config = _build(config_path)
    if version.endswith("-lora"):
        model = _lora(model)
    result: dict = {"rank": dist.get_rank(group)}
    probe = None
    if version.startswith("fsdp2"):
        layers = _fsdp2(model, group)
        probe = Fsdp2Probe([*layers, model])
        probe.install()
    else:
        probe = Fsdp1Probe()
        probe.install()
        model = _fsdp1(model, group, lora=version.endswith("-lora"))
        from torch.distributed.fsdp._traversal_utils import _get_fsdp_handles

        probe.handles = _get_fsdp_handles(model)
    sqrt_bytes: list[int] = []
    original_sqrt = _probe_foreach_sqrt(sqrt_bytes)
    params = list(model.parameters())
    result["param_bytes"] = _sum_storages(params)
    optimizer = torch.optim.AdamW(params, lr=1e-3, foreach=True)
    torch.manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (2, 16))
    if version.endswith("-lora"):  # verl's forward runs under autocast (transformer_impl.py:1560); FSDP1's nested
        with torch.autocast("cpu", dtype=torch.bfloat16):  # adapter units see the layer's fp32-cast input
            out = model(input_ids=ids, labels=ids)
    else:
        out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    result["grad_bytes"] = _sum_storages(p.grad for p in params)
    result["grad_dtypes"] = sorted({str(p.grad.dtype) for p in params if p.grad is not None})
    optimizer.step()
    moments = [s[k] for s in optimizer.state.values() for k in ("exp_avg", "exp_avg_sq")]
    result["moment_bytes"] = _sum_storages(moments)
    result["step_bytes"] = sum(s["step"].untyped_storage().nbytes() for s in optimizer.state.values())
    result["num_state_tensors"] = len(optimizer.state)
    result["forward_fsdp_bytes"] = probe.forward if probe else []
    result["backward_fsdp_bytes"] = probe.backward if probe else []
    result["foreach_sqrt_bytes"] = sqrt_bytes
    if probe:
        probe.uninstall()
    torch._foreach_sqrt = original_sqrt
    return result


def main() -> None:
    versions, world, config_path, out_path = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(world, versions, config_path, os.path.join(tmp, "init"), tmp), nprocs=world)
        ranks = [json.load(open(os.path.join(tmp, f"rank{r}.json"))) for r in range(world)]
    with open(out_path, "w") as f:
        json.dump(ranks, f, indent=1)


if __name__ == "__main__":
    main()
