"""The train stage: ORM, SORM, global and local refiners, one ``TorchTrainer`` each, in sequence.

Inputs: the label stage's sets at ``paths.training_set(which)`` (``train.parquet``,
``eval.parquet``) and the policy folder. Outputs: plain HF folders at ``paths.model(which)`` (+
``glore_train.json`` with the metric history), Ray Train storage under ``paths.stage("train")/ray``.
Reads the ``train`` section: the fields every fine-tune shares and each model's own
(``train/spec.py`` maps them onto the loop).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from glore_ray.config import RunConfig
from glore_ray.records import write_json

READS = ("train",)
WHAT = "ORM, SORM and both refiners"
MODELS = ("orm", "sorm", "global", "local")
# A rerun after a killed driver keeps the models already finished for this config (the pipeline
# keeps this stage's folder when it was started for the same config hash).
RESUMES = True


def run(cfg: RunConfig, paths, log=print) -> dict:
    from glore_ray.train.ray_trainer import fit
    from glore_ray.train.spec import fit_options, model_spec

    policy = paths.policy_model
    missing = [w for w in MODELS if not (paths.training_set(w) / "train.parquet").exists()]
    if missing:
        raise FileNotFoundError(f"train: training sets missing for {missing} under "
                                f"{paths.training_set('orm').parent} (run the label stage first)")
    t = cfg.train
    summary: dict = {"max_len": {}}
    t0 = time.time()
    for i, which in enumerate(MODELS):
        start = str(paths.model("orm")) if which == "sorm" and t.sorm_from_orm else policy
        spec = model_spec(cfg, which, start)
        spec = dataclasses.replace(spec, max_len=_max_len(spec, paths.training_set(which),
                                                          t.max_len, log))
        summary["max_len"][which] = spec.max_len
        s = _finished(paths.model(which), spec)
        if s is not None:
            log(f"[train] model {i + 1}/{len(MODELS)}: {which} already trained for this config "
                f"({paths.model(which)}): kept")
        else:
            log(f"[train] model {i + 1}/{len(MODELS)}: {which}")
            s = fit(spec, paths.training_set(which) / "train.parquet",
                    paths.training_set(which) / "eval.parquet",
                    storage=paths.stage("train") / "ray", out_dir=paths.model(which), log=log,
                    **fit_options(cfg))
        summary[which] = {k: v for k, v in s["final"].items()
                          if k.startswith("eval_") or k in ("loss", "step", "tokens_per_s")}
        summary[which].update(path=str(paths.model(which)), fit_seconds=s["fit_seconds"],
                              restarts=s["restarts"])
    summary["seconds"] = round(time.time() - t0, 1)
    write_json(paths.stage("train") / "summary.json", summary)
    return summary


def _max_len(spec, folder: Path, configured: int | None, log) -> int:
    """``train.max_len``, or the longest row of this set (train + eval, encoded as the loop
    encodes it) capped at the policy's context; rows longer than the result are reported."""
    import pandas as pd
    from transformers import AutoTokenizer

    from glore_ray.engines.context import model_context
    from glore_ray.train import reward, sft

    rows = [r for split in ("train", "eval") if (folder / f"{split}.parquet").exists()
            for r in pd.read_parquet(folder / f"{split}.parquet").to_dict("records")]
    tok = AutoTokenizer.from_pretrained(spec.policy)
    mod = reward if spec.kind == "reward" else sft
    lengths = [len(e["ids"]) for e in mod.encode_rows(tok, rows, 10**9, spec.chat_template)]
    context = model_context(spec.policy) or max(lengths, default=8)
    max_len = configured or min(max(lengths, default=8), context)
    cut = sum(n > max_len for n in lengths)
    if cut:
        log(f"[train] {spec.name}: {cut} of {len(lengths)} rows are longer than "
            f"{max_len} tokens ({'train.max_len' if configured else 'the policy context'}; the "
            f"longest is {max(lengths)}): they lose the start of their prompt")
    return max_len


def _finished(folder: Path, spec) -> dict | None:
    """The summary of a model already exported to ``folder`` with this very spec, else None
    (``glore_train.json`` is written before the folder is renamed into place)."""
    from dataclasses import asdict

    f = Path(folder) / "glore_train.json"
    if not f.exists():
        return None
    s = json.loads(f.read_text())
    return s if s.get("spec") == json.loads(json.dumps(asdict(spec), default=str)) else None
