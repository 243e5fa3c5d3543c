"""What limits refinement in the embedded world: an analysis of a finished run (not a stage).

    .venv/bin/python benchmarks/refinement_headroom.py [--run runs/embedded]
        [--train-questions 4000] [--epochs 8] [--lr 3e-4] [--out benchmarks/results/headroom.json]

Three measurements, all against the synthetic oracle, all in-process on the run's own policy
(plain torch, HF ``generate``; no Ray, so it takes minutes, not a pipeline run):

1. **Headroom at the first error**: for each wrong greedy test draft, teacher-force the policy on
   the right prefix and read the rank of the correct token where the draft's bad step first
   departs from the gold step. Rank 2 = the fix is the policy's runner-up.
2. **Which drafts a local refiner should learn from**: two local refiners, fine-tuned from the
   policy with the pipeline's ``prompts.local_prompt`` on the same number of pairs and steps, differ
   only in where the wrong drafts come from: the run's *sampled* drafts (temperature
   ``rollout.temperature``, what the label stage uses) or *greedy* drafts of other train questions
   (what the refiner sees at inference). Both use the oracle's first wrong step and the gold
   continuation, so only the draft distribution differs. Reported: the share of wrong greedy test
   drafts each one fixes (oracle-located).
3. **Can the ORM rerank?** The run's within-question pairwise accuracy (from its ``metrics.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def greedy(model, tok, prompts_: list[str]) -> list[str]:
    from glore_ray.engines.base import SamplingSpec
    from glore_ray.engines.hf import HFEngine

    eng = HFEngine.from_model(model, tok, batch_size=200)
    return [c[0].text for c in eng.generate(prompts_, SamplingSpec(n=1, temperature=0.0,
                                                                   max_tokens=96))]


def local_pairs(questions, drafts) -> list[tuple[str, str]]:
    """(local prompt with [BAD] at the oracle's first wrong step, gold continuation) for every wrong
    draft whose steps before the error are the gold ones."""
    from glore_ray.data.grading import is_correct, split_steps
    from glore_ray.data.synthetic import first_wrong_step
    from glore_ray.prompts import local_prompt

    out = []
    for q, d in zip(questions, drafts):
        if is_correct(d, q.answer):
            continue
        steps, gold = split_steps(d), q.gold_solution.split("\n")
        j, _ = first_wrong_step(d, q.oracle)
        if 0 <= j < len(steps) - 1 and j < len(gold) - 1 and steps[:j] == gold[:j]:
            out.append((local_prompt(q.question, steps, j), "\n".join(gold[j:])))
    return out


def schedule(steps: int, warmup_steps: int):
    """The pipeline's learning-rate shape (``train/loop.lr_lambda``: linear warm-up, cosine),
    to 0."""
    from glore_ray.train.loop import LoopSpec, lr_lambda

    return lr_lambda(steps, LoopSpec(name="benchmark", kind="reward", policy="",
                                     warmup_ratio=warmup_steps / steps, min_lr_ratio=0.0))


def finetune(policy: str, pairs, steps: int, lr: float, seed: int = 0):
    """The refiner recipe in one process: AdamW, 10% warm-up then cosine, batch 32, loss on the
    target only (the pipeline trains the same loss under Ray Train + DeepSpeed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glore_ray.train.tiny_policy import _batches, collate, encode_pairs, sft_step

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy)
    enc = encode_pairs(tok, pairs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    batches = _batches(enc, 32, random.Random(seed))
    lr_at = schedule(steps, max(1, steps // 10))
    model.train()
    for s in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * lr_at(s)
        sft_step(model, opt, *collate(enc, next(batches), tok.pad_token_id))
    return model.eval(), tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=str(REPO / "runs" / "embedded"))
    ap.add_argument("--train-questions", type=int, default=4000)
    ap.add_argument("--epochs", type=float, default=8.0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "headroom.json"))
    a = ap.parse_args()
    torch.set_num_threads(2)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glore_ray.data.grading import is_correct, split_steps
    from glore_ray.data.synthetic import first_wrong_step
    from glore_ray.prompts import local_prompt, policy_prompt, prefix_text
    from glore_ray.records import Question, Sample, read_rows

    run = Path(a.run)
    policy = str(run / "policy" / "model")
    cfg_metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    n_test = cfg_metrics["n_questions"]
    test = read_rows(run / "data" / "test.parquet", Question)[:n_test]
    train = read_rows(run / "data" / "train.parquet", Question)
    samples = read_rows(run / "sample" / "samples.parquet", Sample)
    tok = AutoTokenizer.from_pretrained(policy)
    base = AutoModelForCausalLM.from_pretrained(policy).eval()
    t0 = time.time()

    # 1. headroom at the first error of the wrong greedy test drafts
    drafts = greedy(base, tok, [policy_prompt(q.question) for q in test])
    ranks: Counter = Counter()
    for q, d in zip(test, drafts):
        if is_correct(d, q.answer):
            continue
        steps, gold = split_steps(d), q.gold_solution.split("\n")
        j, _ = first_wrong_step(d, q.oracle)
        if not (0 <= j < len(steps) and j < len(gold) and steps[:j] == gold[:j]):
            ranks["other"] += 1
            continue
        pre = policy_prompt(q.question) + prefix_text(steps, j - 1)
        right, wrong = tok(pre + gold[j])["input_ids"], tok(pre + steps[j])["input_ids"]
        n = next((i for i in range(min(len(right), len(wrong))) if right[i] != wrong[i]), None)
        if n is None:
            ranks["other"] += 1
            continue
        with torch.no_grad():
            p = torch.softmax(base(torch.tensor([right[:n]])).logits[0, -1], -1)
        r = int((p > p[right[n]]).sum()) + 1
        ranks[str(r) if r <= 3 else ">3"] += 1
    n_wrong = sum(ranks.values())

    # 2. local refiners from sampled vs greedy drafts, same pairs count and steps
    seen = {s.qid for s in samples}
    by_qid = {q.qid: q for q in train}
    sampled = local_pairs([by_qid[s.qid] for s in samples], ["\n".join(s.steps) for s in samples])
    sampled = list(dict.fromkeys(sampled))
    extra = [q for q in train if q.qid not in seen][: a.train_questions]
    greedy_pairs = local_pairs(extra, greedy(base, tok, [policy_prompt(q.question) for q in extra]))
    n_pairs = min(len(sampled), len(greedy_pairs))
    rng = random.Random(0)
    steps = max(1, int(a.epochs * n_pairs / 32))
    test_wrong = [(q, d) for q, d in zip(test, drafts) if not is_correct(d, q.answer)]
    located = []
    for q, d in test_wrong:
        st = split_steps(d)
        j, _ = first_wrong_step(d, q.oracle)
        if 0 <= j < len(st) - 1:
            located.append((q, st, j))
    refiners = {}
    for name, pairs in (("sampled_drafts", sampled), ("greedy_drafts", greedy_pairs)):
        t1 = time.time()
        model, rtok = finetune(policy, rng.sample(pairs, n_pairs), steps, a.lr)
        outs = greedy(model, rtok, [local_prompt(q.question, st, j) for q, st, j in located])
        fixed = sum(is_correct(prefix_text(st, j - 1) + o, q.answer)
                    for (q, st, j), o in zip(located, outs))
        refiners[name] = {"pairs_available": len(pairs), "fixed": fixed,
                          "fix_rate": round(fixed / max(1, len(located)), 4),
                          "seconds": round(time.time() - t1, 1)}
        print(f"[headroom] local refiner from {name}: fixes {fixed}/{len(located)}", flush=True)

    within = cfg_metrics["reward_models"].get("within_question", {})
    out = {
        "run": str(run), "policy_greedy_accuracy": 1 - len(test_wrong) / len(test),
        "first_error_rank_of_correct_token": dict(ranks), "wrong_drafts": n_wrong,
        "runner_up_share": round(ranks.get("2", 0) / max(1, n_wrong), 4),
        "local_refiner": {"pairs": n_pairs, "steps": steps, "lr": a.lr,
                          "oracle_located_wrong_drafts": len(located), **refiners},
        "orm_within_question_pairwise": within.get("orm", {}).get("pairwise_accuracy"),
        "sorm_within_question_pairwise": within.get("sorm", {}).get("pairwise_accuracy"),
    }
    write_result(out, a, "benchmarks/refinement_headroom.py", t0)


def write_result(out: dict, args, script: str, t0: float) -> None:
    """Stamp the seconds, machine and command line on a result, write it to ``args.out``,
    print it."""
    out.update(seconds=round(time.time() - t0, 1),
               machine=platform.processor() or platform.machine(),
               command=script + " " + " ".join(f"--{k.replace('_', '-')} {v}"
                                               for k, v in vars(args).items() if k != "out"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
