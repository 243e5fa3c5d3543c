"""The pipeline's stages, one module each, on Ray: each reads the previous stage's Parquet, runs the
method (``glore_ray.method``) on Ray Data / Ray Train / Ray actors, and writes its own outputs.
A stage module holds ``run(cfg, paths, log) -> dict``, ``READS`` (the config it reads) and
``WHAT``.

    data      stages/data.py                questions of the configured world or GSM8K
    policy    stages/policy.py              the base policy (shipped, trained, or a pretrained one;
                                            the tiny policy's recipe: train/tiny_policy.py)
    sample    stages/sample.py              K samples per question    (Ray Data + vLLM actor pool)
    rollout   stages/rollout.py             K rollouts per step prefix (Ray Data + vLLM actor pool)
    label     stages/label.py, build.py     step labels and the four training sets (Ray Data)
    train     stages/train.py               ORM, SORM, global and local refiner (Ray Train + ZeRO)
    evaluate  stages/evaluate.py, report.py the paper's tables (method.solve on actor pools)

The generation pool that sample, rollout, evaluate and the policy's SFT check share:
``stages/generation.py``. Order, reuse and resume: ``glore_ray/pipeline.py``.
"""
