"""Reward scoring throughput: the transformers ``RewardScorer`` vs vLLM's pooling API
(``VLLMRewardScorer``), scored steps/s on the same solutions, warm-up excluded, model load and
engine start reported apart. Passes alternate between the two (the cores may be shared: each gets
its turn under the same load) and the fastest pass of each counts. Also the largest |Δp| between
the two (they must agree to 1e-3).

    python benchmarks/scoring.py --model tiny                    # runs/k8-s0/train/orm
    python benchmarks/scoring.py --model smollm2 --questions 40  # SmolLM2-135M, random head

Inputs: the first ``--questions`` questions of ``<run>/sample/samples.parquet`` with ``--k`` of
their samples each (questions from ``<run>/data/train.parquet``); without that run, fresh
dependency-world questions with their gold solution ``--k`` times. Solutions go to ``score`` in
chunks of ``--chunk`` (64: the evaluate stage's ``ScorerPool.CHUNK``). Both run with torch's
default thread count (vLLM's CPU worker keeps it and ignores later changes). Writes
``benchmarks/results/scoring_<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def inputs(run: Path, n_questions: int, k: int) -> tuple[list[str], list[list[str]], str]:
    samples, data = run / "sample" / "samples.parquet", run / "data" / "train.parquet"
    if samples.exists() and data.exists():
        import pandas as pd

        s = pd.read_parquet(samples, columns=["qid", "sample_id", "steps"])
        q = pd.read_parquet(data, columns=["qid", "question"]).set_index("qid")["question"]
        qids = sorted(s["qid"].unique())[:n_questions]
        s = s[s["qid"].isin(qids)].sort_values(["qid", "sample_id"]).groupby("qid").head(k)
        return ([q[i] for i in s["qid"]], [list(x) for x in s["steps"]],
                f"{samples.relative_to(REPO) if samples.is_relative_to(REPO) else samples}")
    from glore_ray.config import DependencyConfig
    from glore_ray.data import dependency, split_steps

    rng = random.Random(0)
    problems = [dependency.make_problem(rng, DependencyConfig(style="symbolic", max_value=20))
                for _ in range(n_questions)]
    return ([p.question for p in problems for _ in range(k)],
            [split_steps(p.solution) for p in problems for _ in range(k)],
            "generated dependency questions, gold solutions")


def smollm2_reward(folder: Path) -> str:
    """SmolLM2-135M's backbone with a random 1-output head: the speed is the backbone's."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from glore_ray.hub import smollm2_folder

    base = str(smollm2_folder())
    torch.manual_seed(0)
    AutoModelForTokenClassification.from_pretrained(base, num_labels=1, dtype=torch.float32
                                                    ).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return str(folder)


def build(make) -> tuple[object, dict]:
    t0 = time.perf_counter()
    scorer = make()
    return scorer, {"start_s": round(time.perf_counter() - t0, 2)}


def timed_pass(scorer, questions, steps, chunk: int) -> tuple[float, list[list[float]]]:
    t0 = time.perf_counter()
    probs = [p for s in range(0, len(questions), chunk)
             for p in scorer.score(questions[s : s + chunk], steps[s : s + chunk])]
    return time.perf_counter() - t0, probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    ap.add_argument("--run", default=str(REPO / "runs" / "k8-s0"))
    ap.add_argument("--questions", type=int, default=300)
    ap.add_argument("--k", type=int, default=4, help="solutions per question")
    ap.add_argument("--chunk", type=int, default=64, help="solutions per score() call")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per backend")
    ap.add_argument("--note", default="", help="free text kept in the JSON (e.g. shared cores)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from glore_ray.train.reward import RewardScorer, encode_reward

    load_before = os.getloadavg()
    questions, steps, source = inputs(Path(args.run), args.questions, args.k)
    tmp = tempfile.TemporaryDirectory()
    path = (str(Path(args.run) / "train" / "orm") if args.model == "tiny"
            else smollm2_reward(Path(tmp.name) / "orm"))
    tok = AutoTokenizer.from_pretrained(path)
    n_tokens = sum(len(encode_reward(tok, q, s, 10**6)[0]) for q, s in zip(questions, steps))

    hf_scorer, hf = build(lambda: RewardScorer(path, device="cpu"))
    t0 = time.perf_counter()
    import vllm  # noqa: F401  (its import is timed apart from the engine start)

    from glore_ray.train.vllm_scorer import VLLMRewardScorer

    vllm_import = time.perf_counter() - t0
    vl_scorer, vl = build(lambda: VLLMRewardScorer(path))
    vl["import_s"] = round(vllm_import, 1)
    backends = {"hf": (hf_scorer, hf), "vllm": (vl_scorer, vl)}
    for scorer, rec in backends.values():  # warm-up: first-call allocations, lazy imports
        rec["warmup_s"] = round(timed_pass(scorer, questions[:8], steps[:8], args.chunk)[0], 2)
        rec["passes_s"] = []
    probs, n_steps = {}, sum(map(len, steps))
    for _ in range(args.repeats):
        for name, (scorer, rec) in backends.items():
            sec, probs[name] = timed_pass(scorer, questions, steps, args.chunk)
            rec["passes_s"].append(round(sec, 2))
    for rec in (hf, vl):
        best = min(rec["passes_s"])
        rec.update(steps_per_s=round(n_steps / best, 1), tokens_per_s=round(n_tokens / best, 1),
                   solutions_per_s=round(len(questions) / best, 2))
    import torch

    out = {
        "model": args.model,
        "folder": path if args.model == "tiny" else "SmolLM2-135M backbone + random head",
        "inputs": source, "solutions": len(questions), "steps": n_steps, "tokens": n_tokens,
        "chunk": args.chunk, "torch_threads": torch.get_num_threads(), "hf": hf, "vllm": vl,
        "speedup_vllm_over_hf": round(vl["steps_per_s"] / hf["steps_per_s"], 2),
        "max_abs_dp": max(abs(a - b) for x, y in zip(probs["hf"], probs["vllm"])
                          for a, b in zip(x, y)),
        "cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()], "note": args.note,
        "command": shlex.join(["python", "benchmarks/scoring.py", *sys.argv[1:]]),
    }
    dest = Path(args.out or REPO / "benchmarks" / "results" / f"scoring_{args.model}.json")
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    tmp.cleanup()


if __name__ == "__main__":
    main()
