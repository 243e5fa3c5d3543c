"""Training: ORM and SORM reward models and the global/local refiners, on Ray Train + DeepSpeed.

- ``loop.py``        the Ray-free inner loop (DeepSpeed ZeRO 0-3 or torch DDP, eval, export)
- ``reward.py``      reward-model tokenisation, loss, ``RewardScorer``, ``step_metrics``
- ``vllm_scorer.py`` the same scoring through vLLM's pooling API; ``make_scorer`` picks one
- ``sft.py``         refiner data and loss (target tokens only)
- ``ray_trainer.py`` ``TorchTrainer`` wiring: Ray Data shards, checkpoints, failures, metrics
- ``warmup.py``      builds DeepSpeed's JIT op into ``TORCH_EXTENSIONS_DIR`` once
- ``tiny_policy.py`` the tiny base policy of a generated world: recipe, training, evaluation

The train stage that fits the four models in sequence is ``glore_ray/stages/train.py``; the
policy stage (``glore_ray/stages/policy.py``) trains or copies the tiny policy.
"""
