"""The train stage: ORM, SORM, global and local refiners, one ``TorchTrainer`` each, in sequence.

Inputs: the label stage's sets at ``paths.training_set(which)`` (``train.parquet``,
``eval.parquet``) and the policy folder. Outputs: plain HF folders at ``paths.model(which)`` (+
``glore_train.json`` with the metric history), Ray Train storage under ``paths.stage("train")/ray``.

``write_synthetic_sets`` stands in for the label stage in tests and the benchmark: gold and
perturbed solutions of the synthetic world, labelled by the oracle, in exactly the label stage's
row format.
"""

from __future__ import annotations

import dataclasses
import json
import random
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


# ------------------------------------------------------------------ stand-in training sets

def _perturb(steps: list[str], rng: random.Random) -> tuple[list[str], int]:
    """Break one equation's result (an off-by-k error, like the policy's carries) and carry the
    wrong value forward where it is reused, as a model would."""
    k = rng.randrange(len(steps) - 1)  # never the final line itself
    a, rest = steps[k].split(" = ")
    wrong = int(rest) + rng.choice([-10, -2, -1, 1, 2, 10])
    out = steps[:k] + [f"{a} = {wrong}"]
    value = wrong
    for s in steps[k + 1 :]:
        if s.startswith("####"):
            out.append(f"#### {value}")
            continue
        lhs, _ = s.split(" = ")
        x, op, y = lhs.split(" ")
        x = str(value)
        v = {"+": value + int(y), "-": value - int(y), "*": value * int(y),
             "/": value // int(y) if int(y) else value}[op]
        out.append(f"{x} {op} {y} = {v}")
        value = v
    return out, k


def synthetic_rows(n_questions: int, seed: int = 0, n_wrong: int = 2) -> dict[str, list[dict]]:
    """Rows for the four sets from the synthetic world (gold + perturbed solutions, oracle
    labels)."""
    from glore_ray.config import SyntheticConfig
    from glore_ray.data import synthetic
    from glore_ray.data.grading import is_correct
    from glore_ray.prompts import global_prompt, local_prompt

    world = SyntheticConfig(n_train=n_questions, n_test=1)
    questions, _ = synthetic.generate(world, seed)
    rng = random.Random(seed)
    sets: dict[str, list[dict]] = {w: [] for w in MODELS}
    for q in questions:
        gold = q.gold_solution.split("\n")
        sols = [gold] + [_perturb(gold, rng)[0] for _ in range(n_wrong)]
        for sid, steps in enumerate(sols):
            text = "\n".join(steps)
            oracle = synthetic.oracle_step_labels(text, q.oracle)
            ok = float(is_correct(text, q.answer))
            sets["orm"].append({"qid": q.qid, "sample_id": sid, "question": q.question,
                                "steps": steps, "labels": [ok] * len(steps)})
            sets["sorm"].append({"qid": q.qid, "sample_id": sid, "question": q.question,
                                 "steps": steps, "labels": oracle, "soft_labels": oracle,
                                 "mask": [1.0] * len(steps)})
            if sid == 0:
                continue
            bad = oracle.index(0.0)
            sets["global"].append({"qid": q.qid, "prompt": global_prompt(q.question, text),
                                   "target": q.gold_solution})
            sets["local"].append({"qid": q.qid, "prompt": local_prompt(q.question, steps, bad),
                                  "target": "\n".join(gold[bad:])})
    return sets


def write_synthetic_sets(root: Path | str, n_questions: int, seed: int = 0,
                         eval_fraction: float = 0.25) -> dict[str, Path]:
    """Write ``root/<which>/{train,eval}.parquet`` (split by question) for the four models."""
    import pandas as pd

    root = Path(root)
    sets = synthetic_rows(n_questions, seed)
    qids = sorted({r["qid"] for r in sets["orm"]})
    eval_q = set(random.Random(seed).sample(qids, max(1, int(len(qids) * eval_fraction))))
    out = {}
    for which, rows in sets.items():
        folder = root / which
        folder.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame(rows)
        df[~df.qid.isin(eval_q)].to_parquet(folder / "train.parquet", index=False)
        df[df.qid.isin(eval_q)].to_parquet(folder / "eval.parquet", index=False)
        out[which] = folder
    (root / "_synthetic.json").write_text(json.dumps({"n_questions": n_questions, "seed": seed}))
    return out
