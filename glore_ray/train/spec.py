"""The one mapping of the config's ``train`` section onto a fine-tune: its ``loop.LoopSpec`` and
the Ray Train worker options of ``ray_trainer.fit``. The train stage's four models
(``model_spec``) and the policy's SFT (``policy.sft``) both build theirs here, each adding its own
per-model fields; the fields named below are what they share, so what the SFT reads of the train
section (and hashes, ``stages/policy.py``) follows from this module.

Light on purpose (no torch at import): the pipeline imports it through the policy stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from glore_ray.train.loop import LoopSpec

# Train-section fields every fine-tune's LoopSpec copies by name (``deepspeed`` read from its file
# when it names one; ``max_len`` unset: the caller's default).
LOOP_FIELDS = ("warmup_ratio", "weight_decay", "engine", "zero_stage", "offload_optimizer", "bf16",
               "deepspeed", "checkpoint_every", "log_every", "max_len", "gradient_checkpointing")
# Train-section fields passed by name to ``ray_trainer.fit``: the workers and the eval split.
FIT_FIELDS = ("num_workers", "use_gpu", "cpus_per_worker", "resources_per_worker", "max_failures",
              "eval_fraction", "keep_checkpoints", "allocator")
# Everything a fine-tune reads from the train section besides its own model's fields.
SHARED_FIELDS = LOOP_FIELDS + FIT_FIELDS


def loop_spec(cfg, name: str, kind: str, policy: str, *, default_max_len: int = 512,
              **per_model) -> LoopSpec:
    """A ``LoopSpec`` from the train section's ``LOOP_FIELDS``, the run's seed and chat template,
    and the fine-tune's own fields (``per_model``: epochs, lr, batch_size, lora_rank, ...)."""
    from glore_ray.train.loop import LoopSpec
    from glore_ray.train.ray_trainer import load_deepspeed_block

    t = cfg.train
    shared = {f: getattr(t, f) for f in LOOP_FIELDS}
    shared.update(deepspeed=load_deepspeed_block(t.deepspeed),
                  max_len=t.max_len or default_max_len)
    return LoopSpec(name=name, kind=kind, policy=policy, chat_template=cfg.policy.chat_template,
                    seed=cfg.seed, **shared, **per_model)


def fit_options(cfg) -> dict:
    """``ray_trainer.fit``'s worker keywords (``FIT_FIELDS``) from the train section."""
    return {f: getattr(cfg.train, f) for f in FIT_FIELDS}


def model_spec(cfg, which: str, policy: str) -> LoopSpec:
    """The LoopSpec of one of the four models from ``cfg.train`` and its own section."""
    t = cfg.train
    section = {"orm": t.orm, "sorm": t.sorm, "global": t.global_refiner, "local": t.local_refiner}
    if which not in section:
        raise ValueError(f"unknown model {which!r}; expected one of {sorted(section)}")
    m = section[which]
    return loop_spec(cfg, which, "reward" if which in ("orm", "sorm") else "sft", policy,
                     epochs=m.epochs, lr=m.lr, batch_size=m.batch_size, grad_accum=m.grad_accum,
                     max_steps=m.max_steps, rank_weight=m.rank_weight, lm_weight=m.lm_weight,
                     lora_rank=t.lora_rank)
