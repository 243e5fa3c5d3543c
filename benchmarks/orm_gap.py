"""Does a policy-initialised ORM rank one question's solutions, and how fast does it learn to?

    .venv/bin/python benchmarks/orm_gap.py [--config configs/dependency.yaml] [--questions 256]
        [--k 8] [--steps 600] [--variants bce,lm,rank,rank+lm] [--policy DIR] [--engine vllm|hf]
        [--out benchmarks/results/orm_gap.json]

In-process (plain torch, samples from vLLM or HF ``generate``; no Ray), on the config's policy and
world, *train and validation questions only* (never the test split): K temperature-1 samples of
``--questions`` train questions, labelled by final-answer correctness (the ORM's own signal, no
oracle); one reward model per variant, trained from the policy with the pipeline's
``train/reward.py`` on batches of whole questions; every ``--eval-every`` steps the within-question
pairwise accuracy (evaluate's ``within_question_pairwise``) on validation questions' greedy draft +
3 samples. Variants: ``bce`` (the paper's ORM loss), ``rank`` (BCE + ``--rank-weight`` x the
within-question ranking term, ``reward.ranking_loss``), ``lm`` (BCE + ``--lm-weight`` x the policy's
next-token loss on the solution tokens, ``reward.RewardWithLM``) and ``rank+lm`` (both). Whether the
dependency world can become the embedded default rests on this number (issue 23's gate: >= 70%).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def sample(eng, tok, questions, n: int, temperature: float, seed: int) -> list[list[str]]:
    from glore_ray.engines.base import SamplingSpec
    from glore_ray.prompts import policy_prompt

    longest = max(len(tok(q.gold_solution)["input_ids"]) for q in questions)
    spec = SamplingSpec(n=n, temperature=temperature, max_tokens=longest + 32, seed=seed)
    prompts = [policy_prompt(q.question) for q in questions]
    if eng.name == "vllm":  # one seed per question: samples independent of the batching
        outs = eng.generate(prompts, spec, seeds=[seed * 100_003 + i for i in range(len(prompts))])
    else:
        outs = eng.generate(prompts, spec)
    return [[c.text for c in cs] for cs in outs]


def rows_of(questions, texts) -> list[dict]:
    from glore_ray.data.grading import split_steps
    from glore_ray.data.worlds import grade

    rows = []
    for q, ts in zip(questions, texts):
        for sid, t in enumerate(ts):
            steps = split_steps(t)
            if steps:
                ok = float(grade(t, q.answer, q.oracle))
                rows.append({"qid": q.qid, "sample_id": sid, "question": q.question,
                             "steps": steps, "labels": [ok] * len(steps), "ok": bool(ok)})
    return rows


def question_batches(rows: list[dict], per_batch: int, rng: random.Random):
    """Batches of whole questions (all of a question's samples together), forever."""
    by: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by.setdefault(r["qid"], []).append(i)
    groups, batch = list(by.values()), []
    while True:  # a batch may span two passes (fewer rows than one batch: every batch does)
        rng.shuffle(groups)
        for g in groups:
            batch += g
            if len(batch) >= per_batch:
                yield batch
                batch = []


def pairwise(model, tok, rows, batch_size: int = 64) -> float:
    from glore_ray.stages.evaluate import within_question_pairwise
    from glore_ray.train import reward

    enc = reward.encode_rows(tok, rows, 512)
    final = []
    model.eval()
    with torch.inference_mode():
        for s in range(0, len(enc), batch_size):
            b = reward.collate(enc[s : s + batch_size], tok.pad_token_id)
            lg = reward.step_logits(model, b)
            final += lg.gather(1, b["last"].view(-1, 1)).squeeze(1).tolist()
    model.train()
    qids = {q: i for i, q in enumerate(dict.fromkeys(r["qid"] for r in rows))}
    return within_question_pairwise(final, [r["ok"] for r in rows],
                                    [qids[r["qid"]] for r in rows])["pairwise_accuracy"]


def samples(args, cfg, pol: Path) -> tuple[list[dict], list[dict]]:
    """Train and validation rows, sampled in a child process (the engine's KV cache and threads
    go with it) and cached under runs/: a re-run with the same arguments reuses the rows."""
    import hashlib
    import json
    import multiprocessing as mp

    key = json.dumps([str(pol), cfg.data.model_dump(mode="json"), args.questions, args.k, args.val,
                      args.seed, args.engine], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = REPO / "runs" / "orm_gap_samples" / f"{digest}.json"
    if not cache.exists():
        child = mp.get_context("spawn").Process(target=_sample_to, args=(args, cfg, pol, cache))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"sampling failed (exit code {child.exitcode})")
    got = json.loads(cache.read_text())
    return got["rows"], got["val_rows"]


def _sample_to(args, cfg, pol: Path, cache: Path) -> None:
    from transformers import AutoTokenizer

    from glore_ray.data import dependency, worlds
    from glore_ray.engines import make_engine
    from glore_ray.records import write_json

    tok = AutoTokenizer.from_pretrained(pol)
    gen = make_engine(cfg.rollout.model_copy(update={"engine": args.engine}), str(pol), args.seed)
    train, test = worlds.generate(cfg.data)
    w = worlds.world_config(cfg.data)
    val = dependency.validation(w, w.seed, args.val, {q.question for q in train + test})
    qs = random.Random(args.seed).sample(train, args.questions)
    rows = rows_of(qs, sample(gen, tok, qs, args.k, 1.0, args.seed))
    vt = [g + s for g, s in zip(sample(gen, tok, val, 1, 0.0, 0), sample(gen, tok, val, 3, 1.0, 7))]
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_json(cache, {"rows": rows, "val_rows": rows_of(val, vt)})


def main() -> None:
    from glore_ray.config import load_config
    from glore_ray.train import reward, tiny_policy
    from glore_ray.train.loop import LoopSpec, lr_lambda

    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "configs" / "dependency.yaml"))
    ap.add_argument("--questions", type=int, default=256)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--val", type=int, default=150)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--rank-weight", type=float, default=1.0)
    ap.add_argument("--lm-weight", type=float, default=0.5)
    ap.add_argument("--variants", default="bce,lm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", choices=["vllm", "hf"], default="vllm", help="sampling engine")
    ap.add_argument("--policy", default=None, help="policy folder (default: the config's policy)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "orm_gap.json"))
    ap.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(args.seed)
    cfg = load_config(args.config, args.overrides)
    if args.policy:
        pol = Path(args.policy)
    elif cfg.policy.model:  # e.g. shipped:<hash>
        from glore_ray.hub import resolve_model

        pol = Path(resolve_model(cfg.policy.model))
    else:
        pol = tiny_policy.ASSETS / tiny_policy.recipe_hash(cfg)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pol)
    rows, val_rows = samples(args, cfg, pol)
    print(f"{len(rows)} train rows ({sum(r['ok'] for r in rows) / len(rows):.1%} right), "
          f"{len(val_rows)} validation rows; sampling {time.time() - t0:.0f}s", flush=True)
    out = {"questions": args.questions, "k": args.k, "engine": args.engine,
           "train_right": sum(r["ok"] for r in rows) / len(rows),
           "val_questions": args.val, "curves": {}}
    for variant in args.variants.split(","):
        torch.manual_seed(args.seed)
        model = reward.build_reward_model(pol)
        if "lm" in variant.split("+"):
            model = reward.RewardWithLM(model, pol)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(args.steps, LoopSpec(name="orm", kind="reward", policy=str(pol))))
        enc = reward.encode_rows(tok, rows, 512)
        batches = question_batches(rows, args.batch, random.Random(args.seed))
        curve, t1 = [], time.time()
        for step in range(1, args.steps + 1):
            b = reward.collate([enc[i] for i in next(batches)], tok.pad_token_id)
            lg, lm = reward.forward(model, b)
            loss, _ = reward.reward_loss(lg, b)
            if lm is not None:
                loss = loss + args.lm_weight * reward.lm_loss(lm, b)
            if "rank" in variant.split("+"):
                rl, _ = reward.ranking_loss(lg, b)
                loss = loss + args.rank_weight * rl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if step % args.eval_every == 0 or step == args.steps:
                acc = pairwise(model, tok, val_rows)
                curve.append({"step": step, "pairwise_accuracy": acc,
                              "seconds": round(time.time() - t1, 1)})
                print(f"[{variant}] step {step} loss {loss.item():.3f} within-question "
                      f"{acc:.3f} ({time.time() - t1:.0f}s)", flush=True)
        out["curves"][variant] = curve
    from refinement_headroom import write_result

    write_result(out, args, "benchmarks/orm_gap.py", t0)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    main()
