"""The pipeline's stage recipes, on Ray: each reads the previous stage's Parquet, runs the method
(``glore_ray.method``) on Ray Data / Ray Train / Ray actors, and writes its own outputs.

    data      glore_ray/data/questions.py   questions of the configured world or GSM8K
    policy    glore_ray/policy.py           the base policy (shipped, trained, or a pretrained one)
    sample    stages/rollout.py             K samples per question    (Ray Data + vLLM actor pool)
    rollout   stages/rollout.py             K rollouts per step prefix (Ray Data + vLLM actor pool)
    label     stages/label.py, build.py     step labels and the four training sets (Ray Data)
    train     stages/train.py               ORM, SORM, global and local refiner (Ray Train + ZeRO)
    evaluate  stages/evaluate.py, report.py the paper's tables (method.solve on actor pools)

Order, reuse and resume: ``glore_ray/pipeline.py``.
"""
