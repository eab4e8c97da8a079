"""Generate memplan's OpenRLHF flag tables (TOML) from the argparse code at pinned commits.

Data only: option strings, dest, type/action, nargs, choices, literal defaults.
Run: python scripts/gen_openrlhf_flags.py src/memplan/frameworks/openrlhf/data
(REPO is a local git mirror of OpenRLHF/OpenRLHF holding the pinned commits.)
"""
import ast, json, math, subprocess, sys

REPO = "/work/.mirror/OpenRLHF+OpenRLHF/repo"
SNAPSHOTS = [
    # (memplan version, tag, commit, scripts)
    ("0.8", "v0.8.5", "5974dfe8bded77e90dcdb92f08f3bdba31972ff2",
     ["train_sft", "train_rm", "train_dpo", "train_kto", "train_prm", "train_kd", "train_ppo_ray"]),
    ("0.9", "v0.9.5", "c0e2ee2473cd115863630599cc3d51917d4b7c3e",
     ["train_sft", "train_rm", "train_dpo", "train_kto", "train_prm", "train_kd", "train_ppo_ray"]),
    ("0.11", "v0.11.0", "3c3be6234e0cb353e76bb8019947db9dfe99fca7",
     ["train_sft", "train_rm", "train_dpo", "train_ppo_ray"]),
]

# 0.11 dotted dest -> canonical (legacy flat) key, where the rule "last component" or
# "dots to underscores" does not already give the legacy name. Read off the rename commit
# ed62d0e2 (feat(cli,muon): dotted config hierarchy) diff of openrlhf/cli/*.py.
DOTTED = {
    "ckpt.output_dir": "save_path", "ckpt.save_steps": "save_steps", "ckpt.save_hf": "save_hf_ckpt",
    "ckpt.disable_ds": "disable_ds_ckpt", "ckpt.path": "ckpt_path", "ckpt.max_num": "max_ckpt_num",
    "ckpt.max_mem": "max_ckpt_mem", "ckpt.load_enable": "load_checkpoint",
    "ckpt.best_metric_key": "best_metric_key",
    "ds.use_universal_ckpt": "use_ds_universal_ckpt", "logger.logging_steps": "logging_steps",
    "eval.steps": "eval_steps", "eval.dataset": "eval_dataset", "eval.split": "eval_split",
    "eval.temperature": "eval_temperature", "eval.n_samples_per_prompt": "eval_n_samples_per_prompt",
    "train.micro_batch_size": "micro_train_batch_size", "train.batch_size": "train_batch_size",
    "train.seed": "seed", "train.full_determinism_enable": "full_determinism",
    "train.max_epochs": "max_epochs", "train.num_episodes": "num_episodes",
    "train.colocate_actor_ref": "colocate_actor_ref", "train.colocate_critic_reward": "colocate_critic_reward",
    "train.colocate_all": "colocate_all_models", "train.async_enable": "async_train",
    "train.async_queue_size": "async_queue_size", "train.partial_rollout_enable": "partial_rollout",
    "train.enable_ema": "enable_ema", "train.ema_beta": "ema_beta",
    "train.dynamic_batch_enable": "use_dynamic_batch", "train.max_tokens_per_gpu": "train_max_tokens_per_gpu",
    "train.agent_func_path": "agent_func_path",
    "model.gradient_checkpointing_enable": "gradient_checkpointing",
    "model.gradient_checkpointing_reentrant": "gradient_checkpointing_use_reentrant",
    "actor.gradient_checkpointing_enable": "gradient_checkpointing",
    "actor.gradient_checkpointing_reentrant": "gradient_checkpointing_use_reentrant",
    "model.model_name_or_path": "pretrain", "actor.model_name_or_path": "pretrain",
    "ref.model_name_or_path": "ref_pretrain", "reward.model_name_or_path": "reward_pretrain",
    "critic.model_name_or_path": "critic_pretrain", "reward.remote_url": "remote_rm_url",
    "model.pretrain_mode_enable": "pretrain_mode", "model.aux_loss_coef": "aux_loss_coef",
    "actor.aux_loss_coef": "aux_loss_coef",
    "model.compute_fp32_loss_enable": "compute_fp32_loss", "model.margin_loss_enable": "margin_loss",
    "model.loss_type": "loss", "model.beta": "beta", "model.ipo_enable": "ipo",
    "model.label_smoothing": "label_smoothing", "model.nll_loss_coef": "nll_loss_coef",
    "ds.zero_stage": "zero_stage", "ds.param_dtype": "param_dtype", "ds.zpg": "zpg",
    "ds.adam_offload": "adam_offload", "ds.attn_implementation": "attn_implementation",
    "ds.experts_implementation": "experts_implementation", "ds.use_liger_kernel": "use_liger_kernel",
    "ds.grad_accum_dtype": "grad_accum_dtype", "ds.overlap_comm": "overlap_comm",
    "ds.tensor_parallel_size": "ds_tensor_parallel_size", "ds.deepcompile": "deepcompile",
    "ds.ring_attn_size": "ring_attn_size", "ds.ring_attn_head_stride": "ring_head_stride",
    "ds.load_in_4bit": "load_in_4bit", "ds.lora.rank": "lora_rank", "ds.lora.alpha": "lora_alpha",
    "ds.lora.target_modules": "target_modules", "ds.lora.dropout": "lora_dropout",
    "ds.packing_samples": "packing_samples", "ds.enable_sleep": "deepspeed_enable_sleep",
    "ds.value_head_prefix": "value_head_prefix",
    "ref.offload": "ref_offload", "reward.offload": "reward_offload",
    "ref.num_nodes": "ref_num_nodes", "ref.num_gpus_per_node": "ref_num_gpus_per_node",
    "reward.num_nodes": "reward_num_nodes", "reward.num_gpus_per_node": "reward_num_gpus_per_node",
    "actor.num_nodes": "actor_num_nodes", "actor.num_gpus_per_node": "actor_num_gpus_per_node",
    "critic.num_nodes": "critic_num_nodes", "critic.num_gpus_per_node": "critic_num_gpus_per_node",
    "vllm.num_engines": "vllm_num_engines", "vllm.tensor_parallel_size": "vllm_tensor_parallel_size",
    "vllm.sync_backend": "vllm_sync_backend", "vllm.sync_with_ray": "vllm_sync_with_ray",
    "vllm.enable_prefix_caching": "enable_prefix_caching", "vllm.enforce_eager": "enforce_eager",
    "vllm.enable_sleep": "vllm_enable_sleep", "vllm.gpu_memory_utilization": "vllm_gpu_memory_utilization",
    "algo.advantage.is_correction_enable": "enable_vllm_is_correction",
    "algo.advantage.is_correction_threshold": "vllm_is_truncated_threshold",
    "algo.advantage.is_correction_type": "vllm_is_correction_type",
    "algo.advantage.estimator": "advantage_estimator", "algo.advantage.no_std_norm": "no_advantage_std_norm",
    "algo.advantage.lambd": "lambd", "algo.advantage.gamma": "gamma",
    "algo.kl.target": "kl_target", "algo.kl.horizon": "kl_horizon", "algo.kl.init_coef": "init_kl_coef",
    "algo.kl.estimator": "kl_estimator", "algo.kl.use_loss": "use_kl_loss",
    "algo.dynamic_filtering_enable": "dynamic_filtering",
    "algo.dynamic_filtering_range": "dynamic_filtering_reward_range",
    "rollout.max_tokens_per_gpu": "rollout_max_tokens_per_gpu", "rollout.batch_size": "rollout_batch_size",
    "rollout.vllm_generate_batch_size": "vllm_generate_batch_size",
    "rollout.micro_batch_size": "micro_rollout_batch_size", "rollout.max_new_tokens": "generate_max_len",
    "rollout.top_p": "top_p", "rollout.temperature": "temperature",
    "rollout.n_samples_per_prompt": "n_samples_per_prompt",
    "actor.eps_clip": "eps_clip", "actor.eps_clip_low_high": "eps_clip_low_high",
    "actor.dual_clip": "dual_clip", "actor.policy_loss_type": "policy_loss_type",
    "actor.entropy_coef": "entropy_loss_coef", "actor.freeze_visual_encoder": "freeze_visual_encoder",
    "critic.value_clip": "value_clip", "critic.freezing_steps": "freezing_actor_steps",
    "critic.save_value_network": "save_value_network",
    "reward.normalize_enable": "normalize_reward", "reward.clip_range": "reward_clip_range",
    "reward.overlong_buffer_len": "overlong_buffer_len",
    "reward.overlong_penalty_factor": "overlong_penalty_factor",
    "reward.stop_properly_penalty_coef": "stop_properly_penalty_coef",
    "data.max_len": "max_len", "data.max_samples": "max_samples", "data.dataset": "dataset",
    "data.dataset_probs": "dataset_probs", "data.dataset_split": "dataset_split",
    "data.multiturn": "multiturn", "data.input_key": "input_key", "data.output_key": "output_key",
    "data.input_template": "input_template", "data.apply_chat_template": "apply_chat_template",
    "data.tokenizer_chat_template": "tokenizer_chat_template",
    "data.disable_fast_tokenizer": "disable_fast_tokenizer",
    "data.dataloader_num_workers": "dataloader_num_workers", "data.prompt_key": "prompt_key",
    "data.chosen_key": "chosen_key", "data.rejected_key": "rejected_key", "data.label_key": "label_key",
    "data.prompt_dataset": "prompt_data", "data.prompt_probs": "prompt_data_probs",
    "data.prompt_split": "prompt_split", "data.image_key": "image_key",
    "data.max_images_per_prompt": "max_images_per_prompt",
    "logger.wandb.key": "use_wandb", "logger.wandb.org": "wandb_org", "logger.wandb.group": "wandb_group",
    "logger.wandb.project": "wandb_project", "logger.wandb.run_name": "wandb_run_name",
    "logger.tensorboard_dir": "use_tensorboard",
    # optimiser groups: SFT/RM/DPO have one; PPO has actor.* (same keys) and critic.* (critic_ prefix)
    "adam.lr": "learning_rate", "adam.betas": "adam_betas", "adam.eps": "adam_eps",
    "adam.weight_decay": "l2", "muon.lr": "muon_lr", "muon.momentum": "muon_momentum",
    "muon.ns_steps": "muon_ns_steps", "muon.nesterov": "muon_nesterov",
}
OPTIM_SUFFIXES = ["optim", "adam.lr", "adam.betas", "adam.eps", "adam.weight_decay", "muon.lr",
                  "muon.momentum", "muon.ns_steps", "muon.nesterov", "lr_scheduler", "lr_warmup_ratio",
                  "min_lr_ratio", "max_norm"]
for _suffix in OPTIM_SUFFIXES:
    _base = DOTTED.get(_suffix, _suffix)
    DOTTED[f"actor.{_suffix}"] = "actor_learning_rate" if _suffix == "adam.lr" else _base
    DOTTED[f"critic.{_suffix}"] = "critic_learning_rate" if _suffix == "adam.lr" else f"critic_{_base}"

# Legacy flags whose value sets more than one canonical key.
LEGACY_ALSO = {("train_ppo_ray", "ref_reward_offload"): ("ref_offload", "reward_offload")}


def git_show(rev, path):
    return subprocess.run(["git", "-C", REPO, "show", f"{rev}:{path}"], capture_output=True, text=True,
                          check=True).stdout


def value_of(node, text, env):
    """A literal (with `prefix` substituted, int(...)/float(...) of literals), or ('expr', source)."""
    src = ast.get_source_segment(text, node)
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    if isinstance(node, ast.JoinedStr) or isinstance(node, ast.IfExp) or isinstance(node, ast.Call):
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in ("int", "float")):
            return ("expr", src)
        try:
            return eval(compile(ast.Expression(node), "<arg>", "eval"), {"__builtins__": {"int": int, "float": float}}, env)
        except Exception:
            return ("expr", src)
    return ("expr", src)


def add_argument_calls(text):
    """Yield (call node, env) for each parser.add_argument; unroll `for prefix in (...)` loops."""
    tree = ast.parse(text)
    loops = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
            names = ast.literal_eval(node.iter)
            for inner in ast.walk(node):
                loops[id(inner)] = (node.target.id, names)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "add_argument"]
    calls.sort(key=lambda n: n.lineno)
    for call in calls:
        if id(call) in loops:
            var, names = loops[id(call)]
            for name in names:
                yield call, {var: name}
        else:
            yield call, {}


def extract(rev, script):
    text = git_show(rev, f"openrlhf/cli/{script}.py")
    out = []
    for call, env in add_argument_calls(text):
        opts = [value_of(a, text, env) for a in call.args]
        kw = {k.arg: k.value for k in call.keywords}
        rec = {"opts": opts, "line": call.lineno}
        rec["type"] = ast.get_source_segment(text, kw["type"]) if "type" in kw else None
        for name in ("default", "choices", "nargs", "action", "dest"):
            if name in kw:
                rec[name] = value_of(kw[name], text, env)
        out.append(rec)
    return out


def canonical(script, version, dest):
    if version != "0.11":
        return dest
    if dest in DOTTED:
        return DOTTED[dest]
    return dest.replace(".", "_")


def coerce(kind, value):
    if isinstance(value, (list, tuple)):
        return [coerce(kind, v) for v in value]
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def flag_record(script, version, rec):
    opt = rec["opts"][0]
    assert isinstance(opt, str) and opt.startswith("--") and len(rec["opts"]) == 1, rec
    dest = rec.get("dest") or opt[2:]
    action = rec.get("action")
    if action in ("store_true", "store_false"):
        kind = action
        default = rec.get("default", action == "store_false")
    else:
        assert action is None, rec
        kind = "choice" if "choices" in rec else {"int": "int", "float": "float", "str": "str", None: "str"}[rec["type"]]
        default = rec.get("default")
    key = canonical(script, version, dest)
    out = {"flag": opt, "key": key}
    also = LEGACY_ALSO.get((script, key)) if version != "0.11" else None
    if also:
        out["key"], out["also"] = also[0], list(also[1:])
    out["kind"] = kind
    if "nargs" in rec:
        out["nargs"] = rec["nargs"]
    if "choices" in rec:
        out["choices"] = list(rec["choices"])
    if isinstance(default, tuple) and len(default) == 2 and default[0] == "expr":
        out["default_expr"] = default[1]
    elif default is not None:
        out["default"] = coerce(kind if kind != "choice" else "str", default)
    out["line"] = rec["line"]
    return out


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        r = repr(v)
        return r if any(c in r for c in ".en") else r + ".0"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def write_version(outdir, version, tag, commit, scripts):
    lines = [f"# OpenRLHF argparse flags at {tag} (commit {commit}).",
             "# Generated from openrlhf/cli/<script>.py by reading every parser.add_argument call",
             "# (option, dest, type/action, nargs, choices, literal default). `key` is memplan's",
             "# canonical key (the legacy flat dest); `line` is the line of the add_argument call.",
             "# A missing `default` means None; `default_expr` is a default that is not a literal.",
             "", f'version = "{version}"', f'tag = "{tag}"', f'commit = "{commit}"', ""]
    for script in scripts:
        lines += [f"[{script}]", f'source = "openrlhf/cli/{script}.py"', "flags = ["]
        seen = set()
        for rec in extract(commit, script):
            f = flag_record(script, version, rec)
            assert f["flag"] not in seen, f
            seen.add(f["flag"])
            body = ", ".join(f"{k} = {toml_value(v)}" for k, v in f.items())
            lines.append(f"  {{ {body} }},")
        lines += ["]", ""]
    path = f"{outdir}/flags_{tag}.toml"
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
    return path


if __name__ == "__main__":
    import tomllib
    for version, tag, commit, scripts in SNAPSHOTS:
        path = write_version(sys.argv[1], version, tag, commit, scripts)
        data = tomllib.load(open(path, "rb"))
        print(path, {s: len(data[s]["flags"]) for s in scripts})
