"""Can a reward model of the embedded policy's size rank solutions to the same question at all?

    .venv/bin/python benchmarks/reranker_capacity.py [--run runs/embedded]
        [--train-questions 2000] [--epochs 3] [--lr 5e-4]
        [--shapes 4x128] [--verifier-steps 2000] [--out benchmarks/results/reranker_capacity.json]

GLoRe's final step reranks {draft, global, local} with the ORM, so it can only beat the greedy draft
if the ORM scores a right solution above a wrong one *to the same question*. The run's ORM and SORM
do that no better than chance (``within_question`` in ``metrics.json``). Every wrong greedy draft in
the embedded world is an arithmetic slip (``a op b = c`` with a wrong ``c``), so ranking within a
question means checking the policy's own arithmetic. Two best cases, in-process against the oracle:

1. **The pipeline's reward model with perfect labels**: ``train/reward.py``'s model, initialised
   from the run's policy as the ORM/SORM are, fine-tuned on the *oracle's* step labels of greedy
   drafts of other train questions (the drafts it must judge at inference), plus the gold solution
   of every question whose draft is wrong (so each wrong draft has a right solution beside it).
   Reported: how often the gold solution of a test question scores above its wrong greedy draft.
2. **A line verifier from scratch**: a Llama of each ``--shapes`` LxH (layers x hidden) trained
   with direct supervision on generated ``a op b = c`` lines, half of them with a one-digit slip
   (the policy's kind of error), fresh lines every batch. Reported: accuracy on new lines, and how
   often it scores the right line above the policy's actual wrong line at each test draft's first
   arithmetic error.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refinement_headroom import REPO, greedy, schedule, write_result  # noqa: E402


def oracle_reward_rows(questions, drafts) -> list[dict]:
    from glore_ray.data.grading import is_correct, split_steps
    from glore_ray.data.synthetic import oracle_step_labels

    rows = []
    for q, d in zip(questions, drafts):
        steps = split_steps(d)
        if not steps:
            continue
        rows.append({"question": q.question, "steps": steps,
                     "labels": oracle_step_labels(d, q.oracle)})
        if not is_correct(d, q.answer):
            gold = q.gold_solution.split("\n")
            rows.append({"question": q.question, "steps": gold, "labels": [1.0] * len(gold)})
    return rows


def train_reward(policy: str, rows: list[dict], epochs: float, lr: float, folder: Path) -> dict:
    """The reward recipe (AdamW, 10% warm-up then cosine, batch 32, BCE on step ends),
    in-process."""
    from transformers import AutoTokenizer

    from glore_ray.train import reward as rw

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(policy)
    model = rw.build_reward_model(policy)
    enc = rw.encode_rows(tok, rows, 512)
    steps, rng, order, losses = max(1, int(epochs * len(enc) / 32)), random.Random(0), [], []
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    lr_at = schedule(steps, max(1, steps // 10))
    model.train()
    for s in range(steps):
        if len(order) < 32:
            order += rng.sample(range(len(enc)), len(enc))
        batch, order = rw.collate([enc[i] for i in order[:32]], tok.pad_token_id), order[32:]
        for g in opt.param_groups:
            g["lr"] = lr * lr_at(s)
        loss, _ = rw.reward_loss(rw.step_logits(model, batch), batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    tail = losses[-max(1, steps // 10):]
    return {"rows": len(rows), "steps": steps, "final_loss": round(sum(tail) / len(tail), 4)}


def slip_line(rng: random.Random) -> tuple[str, int]:
    """A world-like ``a op b = c`` line; half the time ``c`` has one digit off by one."""
    op = rng.choice("+-*/")
    if op == "+":
        a, b = rng.randint(2, 900), rng.randint(2, 99)
        c = a + b
    elif op == "-":
        a = rng.randint(5, 999)
        b = rng.randint(2, min(99, a - 1))
        c = a - b
    elif op == "*":
        b = rng.choice([2, 3])
        a = rng.randint(2, 999 // b)
        c = a * b
    else:
        b = rng.choice([2, 3])
        c = rng.randint(1, 999 // b)
        a = c * b
    if rng.random() < 0.5:
        digits = list(str(c))
        i = rng.randrange(len(digits))
        d = int(digits[i]) + rng.choice([-1, 1])
        if 0 <= d <= 9 and not (i == 0 and d == 0 and len(digits) > 1):
            digits[i] = str(d)
            return f"{a} {op} {b} = {''.join(digits)}\n", 0
    return f"{a} {op} {b} = {c}\n", 1


def line_verifier(tok, layers: int, hidden: int, steps: int, real: list[tuple[str, str]]) -> dict:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=3 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=64, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model, rng, t0 = LlamaForSequenceClassification(cfg), random.Random(0), time.time()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    lr_at = schedule(steps, 100)

    def logits(texts: list[str]) -> torch.Tensor:
        return model(**tok(texts, padding=True, return_tensors="pt")).logits[:, 0]

    for s in range(steps):
        for g in opt.param_groups:
            g["lr"] = 1e-3 * lr_at(s)
        texts, ys = zip(*(slip_line(rng) for _ in range(64)))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits(list(texts)),
                                                                    torch.tensor(ys).float())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    with torch.no_grad():
        held = [slip_line(rng) for _ in range(2000)]
        acc = ((logits([t for t, _ in held]) > 0).long() == torch.tensor([y for _, y in held]))
        wins = sum(int(s[0] > s[1]) for s in (logits([r, w]) for r, w in real))
    return {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "steps": steps, "batch": 64, "new_line_accuracy": round(acc.float().mean().item(), 4),
            "right_above_policy_error": round(wins / max(1, len(real)), 4),
            "policy_errors": len(real),
            "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/embedded")
    ap.add_argument("--train-questions", type=int, default=2000)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--shapes", default="4x128", help="comma-separated LAYERSxHIDDEN")
    ap.add_argument("--verifier-steps", type=int, default=2000)
    ap.add_argument("--out",
                    default=str(REPO / "benchmarks" / "results" / "reranker_capacity.json"))
    a = ap.parse_args()
    torch.set_num_threads(2)

    from sklearn.metrics import roc_auc_score
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glore_ray.data.grading import is_correct, split_steps
    from glore_ray.data.synthetic import first_wrong_step
    from glore_ray.prompts import policy_prompt
    from glore_ray.records import Question, Sample, read_rows
    from glore_ray.train.reward import RewardScorer

    run = Path(a.run) if Path(a.run).is_absolute() else REPO / a.run
    policy = str(run / "policy" / "model")
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    test = read_rows(run / "data" / "test.parquet", Question)[: metrics["n_questions"]]
    seen = {s.qid for s in read_rows(run / "sample" / "samples.parquet", Sample)}
    extra = [q for q in read_rows(run / "data" / "train.parquet", Question)
             if q.qid not in seen][: a.train_questions]
    tok = AutoTokenizer.from_pretrained(policy)
    base = AutoModelForCausalLM.from_pretrained(policy).eval()
    t0 = time.time()
    drafts = greedy(base, tok, [policy_prompt(q.question) for q in test])
    ok = [is_correct(d, q.answer) for q, d in zip(test, drafts)]

    # 1. the pipeline's reward model on oracle labels of greedy drafts
    rows = oracle_reward_rows(extra, greedy(base, tok, [policy_prompt(q.question) for q in extra]))
    with tempfile.TemporaryDirectory() as tmp:
        fit = train_reward(policy, rows, a.epochs, a.lr, Path(tmp))
        scorer = RewardScorer(tmp, device="cpu", batch_size=64)
        qs = [q.question for q in test]
        draft_score = [p[-1] for p in scorer.score(qs, [split_steps(d) for d in drafts])]
        gold_score = [p[-1] for p in scorer.score(qs, [q.gold_solution.split("\n") for q in test])]
    wrong = [i for i, o in enumerate(ok) if not o]
    oracle_rm = {**fit, "epochs": a.epochs, "lr": a.lr, "train_questions": len(extra),
                 "draft_auc": round(roc_auc_score(ok, draft_score), 4),
                 "gold_above_wrong_draft": round(
                     sum(gold_score[i] > draft_score[i] for i in wrong) / max(1, len(wrong)), 4),
                 "wrong_drafts": len(wrong)}
    print(f"[reranker] oracle-label reward model: {oracle_rm}", flush=True)

    # 2. line verifiers from scratch, judged on the policy's real first arithmetic errors
    real = []
    for q, d in zip(test, drafts):
        j, kind = first_wrong_step(d, q.oracle)
        if kind == "arithmetic":
            x, op, y, z = json.loads(q.oracle)[j]
            real.append((f"{x} {op} {y} = {z}\n", split_steps(d)[j] + "\n"))
    verifiers = {}
    for shape in a.shapes.split(","):
        layers, hidden = (int(v) for v in shape.lower().split("x"))
        verifiers[shape] = line_verifier(tok, layers, hidden, a.verifier_steps, real)
        print(f"[reranker] line verifier {shape}: {verifiers[shape]}", flush=True)

    within = metrics["reward_models"].get("within_question", {})
    out = {
        "run": a.run, "policy_greedy_accuracy": round(sum(ok) / len(ok), 4),
        "run_orm_within_question": within.get("orm", {}).get("pairwise_accuracy"),
        "run_sorm_within_question": within.get("sorm", {}).get("pairwise_accuracy"),
        "oracle_label_reward_model": oracle_rm, "line_verifiers": verifiers,
    }
    write_result(out, a, "benchmarks/reranker_capacity.py", t0)


if __name__ == "__main__":
    main()
