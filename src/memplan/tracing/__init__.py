"""Traced measurement of OpenRLHF training steps on the real Hugging Face modeling code.

Two engines (see :mod:`memplan.tracing.config`):

- ``fake``: the full-size model under ``FakeTensorMode`` with PyTorch's ``MemTracker``: no memory is
  allocated, every tensor storage is recorded by category. DeepSpeed cannot run under fake tensors, so
  its bf16 mixed-precision optimizer is emulated in torch (:mod:`memplan.tracing.precision`).
- ``deepspeed-cpu``: real ``deepspeed.initialize`` on DeepSpeed's CPU accelerator with gloo, real
  tensors, one process per rank (:mod:`memplan.tracing.deepspeed_cpu`).

RL methods (OpenRLHF ``train_ppo_ray``, v0.11.0) trace one role at a time on the fake engine
(:mod:`memplan.tracing.rl_engine`): the actor, critic, reference or reward model's make-experience forward
and, for the actor and critic, the PPO training step.

This package is the optional ``trace`` extra: it imports torch, transformers, peft and deepspeed, and
nothing in the core imports it. Importing this ``__init__`` itself loads only the standard library.
"""
