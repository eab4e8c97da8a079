"""A verl run (``VerlRun``) → the hybrid-engine job memplan estimates (``jobs.hybrid_estimate.HybridJob``).

Roles (w: the verl 0.9.1 wheel; reference/verl.md §1, §3, §5):

* actor: trained, FSDP over the whole world (``fsdp_size``), sharded params stored in ``model_dtype`` (fp32
  by default: the master copy), bf16 compute, fp32 reduce, AdamW (``torch.optim``) moments in the stored
  dtype; ``param_offload``/``optimizer_offload`` move them to host between phases (the schedule).
* ref (KL in loss or reward, no LoRA): forward-only, FSDP CPU offload always
  (w:verl/workers/engine/fsdp/transformer_impl.py:428-463). With LoRA there is no ref model: the actor
  computes the reference log-probs with its adapters disabled (w:verl/trainer/ppo/v1/trainer_base.py:233-237,
  :338-339, :1703-1707; ``disable_adapter`` in w:verl/workers/engine_workers.py:403-425), a no-grad forward no
  larger than its old log-prob pass (same micro-batches, no entropy), so it adds no phase of its own.
* actor LoRA (``model.lora_rank`` > 0; the FSDP engine reads that key only, transformer_impl.py:162): peft
  ``get_peft_model`` on the loaded model before FSDP (:339-382, :597-599) with ``target_modules``, ``bias="none"``;
  the base weights are frozen but stay in ``model_dtype`` (fp32 by default, :258-262), and adapters are cast
  to the base dtype (:370-380), so the sharded parameters are base + adapters in the stored dtype; only the
  adapters get gradients and AdamW state (memory/fsdp.py). FSDP1 wraps each adapter ``Linear`` as its own
  unit (w:verl/utils/fsdp_utils.py:113-125). ``lora.merge`` only changes the sync and the engine's sleep.
* critic (GAE or ``critic.enable``): trained, value head.
* rollout: vLLM 0.24.0 or SGLang 0.5.12 (the releases verl 0.9.x pins), one TP shard per GPU; vLLM's
  ``gpu_memory_utilization`` is a fraction of total memory, SGLang's ``mem_fraction_static`` of free memory;
  ``max_model_len`` None → the model's ``max_position_embeddings``
  (w:verl/workers/rollout/vllm_rollout/vllm_async_server.py:1104-1105); chunked prefill off raises
  ``max_num_batched_tokens`` to ``max_model_len`` (:1113-1119); sleep level 2, 1 with LoRA as adapter
  (:1289-1305); never with ``free_cache_engine=False``.

Micro-batches: with ``use_remove_padding`` a micro-batch is one packed row: ``max_token_len_per_gpu`` × Ulysses
tokens with ``use_dynamic_bsz`` (w:verl/workers/engine/utils.py:108-121), else micro batch × (prompt + response),
every sequence at its longest (the worst case); without it, padded rows of prompt + response.
"""

from __future__ import annotations

import math
from dataclasses import replace

from memplan.dtypes import DType, bytes_for
from memplan.errors import ConfigError
from memplan.frameworks.verl.run import Batching, FsdpConfig, FsdpStrategy, RolloutEngine, VerlRun
from memplan.frameworks.verl.schedule import Micro, verl_schedule
from memplan.jobs.hybrid_estimate import EngineJob, HybridJob, WeightSync
from memplan.jobs.job import GpuGroup, Job, LoraOptions, Role, RoleName
from memplan.jobs.options import Method
from memplan.memory.activations import AttnImpl
from memplan.memory.breakdown import Phase
from memplan.memory import lora as lora_sizes
from memplan.memory.fsdp import FsdpSharding, FsdpVersion, fsdp_units, unsharded_numel
from memplan.memory.logits import Head, LogProbImpl
from memplan.memory.sglang import sglang_config
from memplan.memory.vllm import VllmConfig
from memplan.model import load_model_spec
from memplan.model.params import param_tree
from memplan.model.spec import ModelSpec
from memplan.sources import code

#: The vLLM and SGLang releases verl 0.9.x pins (setup.py extras; reference/verl.md §0).
VLLM_VERSION = "0.24.0"
ROLLOUT_KEY = "actor_rollout_ref.rollout"
MIB = 1 << 20
_DTYPES = {d.value[0]: d for d in DType}


def model_spec(path: str, key: str) -> ModelSpec:
    """The model at ``path`` (a preset, a Hugging Face id, a local directory; else its last path part)."""
    try:
        return load_model_spec(path)
    except ConfigError as exc:
        tail = path.rstrip("/").rsplit("/", 1)[-1]
        try:
            return load_model_spec(tail)
        except ConfigError:
            raise ConfigError(key, f"{path!r}: {exc.message}") from None


def sharding(cfg: FsdpConfig, *, cpu_offload: bool = False) -> FsdpSharding:
    """The FSDP sharding verl builds from one role's ``fsdp_config``."""
    fsdp2 = cfg.strategy == FsdpStrategy.FSDP2
    return FsdpSharding(version=FsdpVersion.FSDP2 if fsdp2 else FsdpVersion.FSDP1, shard_size=cfg.fsdp_size,
                        param_dtype=_DTYPES[cfg.model_dtype], compute_dtype=_DTYPES[cfg.param_dtype],
                        reduce_dtype=_DTYPES[cfg.reduce_dtype], reshard_after_forward=cfg.reshard_after_forward,
                        param_offload=cfg.param_offload and not cpu_offload,
                        optimizer_offload=cfg.optimizer_offload and not cpu_offload,
                        cpu_offload=cpu_offload or (fsdp2 and cfg.offload_policy), cpu_offload_pinned=True,
                        no_sync_accumulation=cfg.use_no_sync, forward_prefetch=cfg.forward_prefetch,
                        embeddings_wrapped=fsdp2)


def micro_batch(batching: Batching, longest: int, ulysses: int, packed: bool) -> Micro:
    """(sequences, tokens per sequence) of one micro-batch of a pass (module docstring)."""
    if packed and batching.use_dynamic_bsz:
        return 1, batching.max_token_len_per_gpu * ulysses
    micro = batching.micro_batch_size_per_gpu or 1
    return (1, micro * longest) if packed else (micro, longest)


def accumulation_steps(batching: Batching, mini_batch_prompts: int, rollout_n: int, world: int, ulysses: int,
                       longest: int) -> int:
    """Micro-batches per optimizer step on one GPU (more than one: the gradients accumulate across them).

        per GPU = ppo_mini_batch_size · rollout.n / (world / Ulysses)
        steps   = ⌈per GPU / micro batch⌉, or with a token budget ⌈per GPU · longest / (budget · Ulysses)⌉

    Source: verl 0.9.1 ``verl/workers/engine_workers.py`` ``train_mini_batch`` :255-275 (``mini_batch_size //
    get_data_parallel_size()``), w:verl/workers/engine/utils.py:108-121 (token-budget micro-batches).
    Assumes: every sequence at its longest (the worst case the rest of the estimate takes).
    """
    per_gpu = max(1, mini_batch_prompts * rollout_n // max(1, world // max(1, ulysses)))
    if batching.use_dynamic_bsz:
        budget = max(1, batching.max_token_len_per_gpu * max(1, ulysses))
        return max(1, -(-per_gpu * longest // budget))
    return max(1, -(-per_gpu // (batching.micro_batch_size_per_gpu or 1)))


def _role(name: RoleName, spec: ModelSpec, head: Head, trained: bool, shard: FsdpSharding, micro: Micro,
          packed: bool, ulysses: int, checkpointing: bool, entropy: bool = False,
          entropy_in_loss: bool = False, entropy_chunk: int | None = None, fused: bool = False,
          accumulation: int = 1, lora: LoraOptions | None = None) -> Role:
    return Role(name=name, spec=spec, head=head, trained=trained, group="all", param_dtype=shard.compute_dtype,
                sharding=shard, lora=lora, load_in_4bit=False, gradient_checkpointing=checkpointing and trained,
                attn_impl=AttnImpl.FLASH_ATTENTION_2, micro_batch_size=micro[0], sequences_per_sample=1,
                seq_len=micro[1], packing=packed, ring_size=ulysses, ds_tp_size=1, entropy=entropy,
                entropy_in_loss=entropy_in_loss, entropy_chunk=entropy_chunk, fused_head=fused, autocast_head=True,
                grad_accum_steps=accumulation)


def actor_lora(run: VerlRun) -> LoraOptions | None:
    """The actor's peft LoRA (None: full fine-tuning): ``model.lora_rank``, ``lora_alpha``, ``target_modules``
    (w:verl/workers/engine/fsdp/transformer_impl.py:359-367)."""
    m = run.actor.model
    if m.fsdp_lora_rank <= 0:
        return None
    return LoraOptions(rank=m.fsdp_lora_rank, alpha=m.lora_alpha, target_modules=m.lora_target_modules)


def adapter_sync(run: VerlRun, spec: ModelSpec, lora: LoraOptions, shard: FsdpSharding, sync: WeightSync) -> WeightSync:
    """The weight sync of a LoRA actor whose adapters go to the engine unmerged.

    Once the engine holds the base model (``rollout.load_format`` other than dummy: ``base_sync_done``,
    w:verl/workers/engine_workers.py:673), each sync sends the adapters alone, collected to host tensors
    (w:verl/utils/fsdp_utils.py ``collect_lora_params`` :715-789): the largest sent tensor is an adapter's. With a
    dummy load the first sync sends the base model too (engine_workers.py:790-803), tensor by tensor. Without
    ``layered_summon``, FSDP1 gathers the whole model unsharded, in its stored dtype, on every GPU for the collection
    (``FSDP.summon_full_params(module, writeback=False)``, :751-775; at shard size 1 the parameters are already
    whole); with it, one FSDP unit at a time (``layered_summon_lora_params`` :645-712: adapter units only under
    FSDP1). ``layered_summon`` with a dummy load raises in verl (:725-730), refused here.
    Assumes: FSDP2 collects adapter by adapter (``full_tensor()`` of one small tensor).
    """
    r = run.rollout
    base_loaded = "dummy" not in r.load_format
    if r.layered_summon and not base_loaded:
        raise ConfigError(f"{ROLLOUT_KEY}.layered_summon", "needs the base model preloaded in the rollout engine: "
                          f"verl raises with {ROLLOUT_KEY}.load_format={r.load_format} (set load_format=safetensors)")
    tree = param_tree(spec)
    shapes = lora_sizes.adapter_shapes(tree, lora.target_modules, lora.rank)
    largest = max(math.prod(s) for pair in shapes.values() for s in pair) if base_loaded else None
    summoned = 0
    if shard.version == FsdpVersion.FSDP1 and shard.shard_size > 1 and not r.layered_summon:
        units = fsdp_units(tree, adapters=shapes)
        summoned = bytes_for(sum(unsharded_numel(u, shard) for u in units), shard.param_dtype)
    src = code("verl-project/verl:verl/utils/fsdp_utils.py@v0.9.1", "collect_lora_params :715-789 (summon_full_params "
               "without layered_summon :751-775); engine_workers.py update_weights :784-803")
    return replace(sync, largest_numel=largest, summoned_bytes=summoned, source=src)


def engine(run: VerlRun, spec: ModelSpec, gpu_memory_mib: int) -> tuple[EngineJob, int]:
    """The rollout engine of ``run`` and its sleep level."""
    r = run.rollout
    lora = run.actor.model.lora_rank > 0 and not run.actor.model.lora_merge
    level = 0 if not r.free_cache_engine else (1 if lora else 2)
    max_len = r.max_model_len or spec.max_position_embeddings
    if r.name == RolloutEngine.SGLANG:
        cfg = sglang_config(tensor_parallel_size=r.tensor_parallel_size, mem_fraction_static=r.gpu_memory_utilization,
                            context_len=max_len, gpu_memory_mib=gpu_memory_mib, disable_cuda_graph=r.enforce_eager,
                            max_running_requests=r.max_num_seqs)
        return EngineJob(spec=spec, sglang=cfg, sglang_sleeps=level > 0), level
    if r.name != RolloutEngine.VLLM:
        raise ConfigError(f"{ROLLOUT_KEY}.name", f"{r.name.value} is read but not modelled (vllm, sglang are)")
    tokens = r.max_num_batched_tokens if r.enable_chunked_prefill else max(r.max_num_batched_tokens, max_len)
    cfg = VllmConfig(tensor_parallel_size=r.tensor_parallel_size, gpu_memory_utilization=r.gpu_memory_utilization,
                     max_model_len=max_len, max_num_seqs=r.max_num_seqs, max_num_batched_tokens=tokens,
                     enforce_eager=r.enforce_eager, enable_prefix_caching=r.enable_prefix_caching, sleep_level=level,
                     vllm_version=VLLM_VERSION)
    return EngineJob(spec=spec, vllm=cfg), level


def hybrid_job(run: VerlRun, command: str, *, gpu_memory_mib: int,
               logprob_impl: LogProbImpl = LogProbImpl.FLASH_ATTN_TRITON) -> HybridJob:
    """The job of ``run``: every role and the engine on every GPU (verl's hybrid engine)."""
    if not run.hybrid_engine or run.rollout.nnodes:
        raise ConfigError("actor_rollout_ref.hybrid_engine", "memplan models verl's hybrid engine (every role and "
                                                             "the rollout on the same GPUs); a separate rollout pool is not modelled yet")
    spec = model_spec(run.actor.model.path, "actor_rollout_ref.model.path")
    longest = run.max_prompt_length + run.max_response_length
    a = run.actor
    packed = a.model.use_remove_padding
    chunk = a.entropy.chunk_size if a.entropy.from_logits_with_chunking else None
    actor_shard = sharding(a.fsdp)
    lora = actor_lora(run)
    update = micro_batch(a.update, longest, a.ulysses_sequence_parallel_size, packed)
    micro: dict[tuple[RoleName, Phase], Micro] = {
        (RoleName.ACTOR, Phase.UPDATE_ACTOR): update,
        (RoleName.ACTOR, Phase.OLD_LOG_PROB): micro_batch(a.log_prob, longest, a.ulysses_sequence_parallel_size, packed),
    }
    world = run.nnodes * run.n_gpus_per_node
    roles = [_role(RoleName.ACTOR, spec, Head.LM, True, actor_shard, update, packed,
                   a.ulysses_sequence_parallel_size, a.model.enable_gradient_checkpointing,
                   entropy=True, entropy_in_loss=a.entropy_in_update, entropy_chunk=chunk,
                   fused=a.model.use_fused_kernels, lora=lora,
                   accumulation=accumulation_steps(a.update, a.ppo_mini_batch_size, run.rollout_n, world,
                                                   a.ulysses_sequence_parallel_size, longest))]
    if run.ref is not None:
        ref_micro = micro_batch(run.ref.log_prob, longest, run.ref.ulysses_sequence_parallel_size, packed)
        micro[(RoleName.REF, Phase.REF_LOG_PROB)] = ref_micro
        ref_chunk = run.ref.entropy.chunk_size if run.ref.entropy.from_logits_with_chunking else None
        roles.append(_role(RoleName.REF, spec, Head.LM, False, sharding(run.ref.fsdp, cpu_offload=True), ref_micro,
                           packed, run.ref.ulysses_sequence_parallel_size, False, entropy_chunk=ref_chunk,
                           fused=a.model.use_fused_kernels))
    critic_offload = None
    if run.critic is not None:
        c = run.critic
        cspec = model_spec(c.model.path, "critic.model.path")
        cpacked = c.model.use_remove_padding
        cu = micro_batch(c.update, longest, c.ulysses_sequence_parallel_size, cpacked)
        micro[(RoleName.CRITIC, Phase.UPDATE_CRITIC)] = cu
        micro[(RoleName.CRITIC, Phase.VALUES)] = micro_batch(c.values, longest, c.ulysses_sequence_parallel_size, cpacked)
        roles.append(_role(RoleName.CRITIC, cspec, Head.VALUE, True, sharding(c.fsdp), cu, cpacked,
                           c.ulysses_sequence_parallel_size, c.model.enable_gradient_checkpointing,
                           accumulation=accumulation_steps(c.update, c.ppo_mini_batch_size, run.rollout_n, world,
                                                           c.ulysses_sequence_parallel_size, longest)))
        critic_offload = (c.fsdp.param_offload, c.fsdp.optimizer_offload)
    eng, level = engine(run, spec, gpu_memory_mib)
    schedule = verl_schedule(actor_offload=(a.fsdp.param_offload, a.fsdp.optimizer_offload),
                             critic_offload=critic_offload, ref=run.ref is not None, sleep_level=level,
                             staged_sync=a.fsdp.strategy == FsdpStrategy.FSDP or lora is not None, micro=micro)
    job = Job(method=Method.PPO if run.critic is not None else Method.GRPO, roles=tuple(roles),
              groups=(GpuGroup(name="all", num_nodes=run.nnodes, gpus_per_node=run.n_gpus_per_node),),
              logprob_impl=logprob_impl, framework_version=run.version, command=command)
    sync = WeightSync(bucket_bytes=run.rollout.update_weights_bucket_megabytes * MIB, gathered_dtype=actor_shard.param_dtype,
                      source=code("verl-project/verl:verl/workers/engine_workers.py@v0.9.1",
                                  "update_weights: full_tensor() in the stored dtype into a bucket sent by CUDA IPC "
                                  ":728-827; bucketed_weight_transfer.py:120,183"))
    if lora is not None and not a.model.lora_merge:
        sync = adapter_sync(run, spec, lora, actor_shard, sync)
    saving = tuple(r.name for r in roles if r.trained) if run.save_freq > 0 else ()
    contents = {RoleName.ACTOR: a.checkpoint_contents,
                RoleName.CRITIC: run.critic.checkpoint_contents if run.critic is not None else ()}
    hf = tuple(r for r in saving if "hf_model" in contents.get(r, ()))
    loading = {r.name: run.n_gpus_per_node if r.spec.tie_word_embeddings else 1 for r in roles}
    return HybridJob(job=job, schedule=schedule, engine=eng, nodes=run.nnodes, gpus_per_node=run.n_gpus_per_node,
                     weight_sync=sync, checkpoint_roles=saving, hf_model_roles=hf, loading_ranks=loading)
