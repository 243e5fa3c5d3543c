"""Stand-ins shared by the benchmarks and the tests, so that neither needs the other's folder on
its path for them: smoke models for Serve (no training), a free port, and synthetic labelled
training sets standing in for the label stage. The benchmark scripts import this file as
``_helpers`` (their folder is on ``sys.path`` when they run); the tests as ``benchmarks._helpers``.

Smoke models: the tiny policy serves as policy, global and local refiner (copies of its folder);
ORM and SORM are ``AutoModelForTokenClassification(num_labels=1)`` over the same backbone with an
untrained head — a real forward pass with meaningless scores.

Synthetic sets (``write_synthetic_sets``): gold and perturbed solutions of the synthetic world,
labelled by the oracle, in exactly the label stage's row format.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
from pathlib import Path

# ------------------------------------------------------------------ serving without training

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_smoke_models(policy_dir: str | Path, out_dir: str | Path) -> dict[str, str]:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    out = Path(out_dir)
    paths = {"policy": str(policy_dir)}
    for name in ("global", "local"):
        if not (out / name).exists():
            shutil.copytree(policy_dir, out / name)
        paths[name] = str(out / name)
    tok = AutoTokenizer.from_pretrained(policy_dir)
    for i, name in enumerate(("orm", "sorm")):
        if not (out / name / "config.json").exists():
            torch.manual_seed(i)
            model = AutoModelForTokenClassification.from_pretrained(policy_dir, num_labels=1)
            model.save_pretrained(out / name)
            tok.save_pretrained(out / name)
        paths[name] = str(out / name)
    return paths


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
    from glore_ray.stages.train import MODELS

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
