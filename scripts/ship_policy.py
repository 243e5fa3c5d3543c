"""Train the tiny policy of a generated world and ship the checkpoint in the package.

    .venv/bin/python scripts/ship_policy.py configs/arithmetic.yaml         # the config's recipe
    .venv/bin/python scripts/ship_policy.py configs/embedded.yaml --select  # choose policy.stop_at

``--select`` trains the whole ``policy.steps`` schedule and evaluates a snapshot every
``policy.snapshot_every`` steps on *validation* questions (a separate stream of train-distribution
questions, never the test split): running loss, greedy accuracy and the oracle's error kinds, and
pass@8 at temperature 1 once greedy is in range. It keeps the first snapshot in the paper's regime
— greedy 40-65%, errors of reading the question (wrong clause, copy, unknown quantity) at most 25%
of the wrong drafts (the rest: planning), pass@8 at least 15 points above greedy — and writes its
step as ``policy.stop_at`` into the shipped metadata (the config must then say the same to reuse
it), with the whole curve. ``--snapshots DIR`` also saves every snapshot and the curve so far
(``DIR/curve.json``) as it goes: a killed run loses nothing already measured; ``--full`` records
the curve to the end of the schedule instead of stopping at the chosen snapshot.
The checkpoint lands in glore_ray/assets/policies/<recipe hash>/ with its test metrics (greedy
accuracy, pass@8, error kinds) in glore_policy.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from glore_ray.config import load_config
from glore_ray.data import worlds
from glore_ray.records import write_json
from glore_ray.train import tiny_policy

REGIME = (0.40, 0.65)  # greedy accuracy on validation
MAX_BINDING = 0.25  # share of the wrong greedy drafts that misread the question
HEADROOM = 0.15  # pass@8 - greedy


def in_regime(m: dict) -> bool:
    return REGIME[0] <= m["greedy_accuracy"] <= REGIME[1] and m["binding_share"] <= MAX_BINDING


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--select", action="store_true")
    ap.add_argument("--full", action="store_true", help="with --select: train to the end")
    ap.add_argument("--snapshots", type=Path, help="with --select: save snapshots + curve here")
    ap.add_argument("--val-questions", type=int, default=200)
    args = ap.parse_args()
    cfg = load_config(args.config, [*args.overrides, "policy.shipped=false"])
    log = lambda m: print(m, flush=True)  # noqa: E731
    train, test = worlds.generate(cfg.data)
    chosen: dict = {}
    curve: list[dict] = []
    t0 = time.time()
    if args.select:
        from glore_ray.data.dependency import validation

        if cfg.data.source != "dependency":
            raise SystemExit("--select needs the dependency world's validation stream "
                             "(data.source: dependency)")

        w = worlds.world_config(cfg.data)
        val = validation(w, w.seed, args.val_questions, {q.question for q in train + test})
        cfg.policy.snapshot_every = cfg.policy.snapshot_every or 250
        cfg.policy.stop_at = None

        def on_snapshot(step, model, tokenizer, loss) -> bool:
            m = tiny_policy.evaluate_policy(model, tokenizer, val, pass_k=0)
            if in_regime(m):
                m = tiny_policy.evaluate_policy(model, tokenizer, val, pass_k=8)
            point = {"step": step, "loss": round(loss, 4), "seconds": round(time.time() - t0),
                     **{k: m[k] for k in ("greedy_accuracy", "binding_share", "error_kinds")},
                     **({"pass@8": m["pass@8"]} if "pass@8" in m else {})}
            curve.append(point)
            log(f"[select] {json.dumps(point)}")
            if args.snapshots:
                tiny_policy.save_policy(model, tokenizer, args.snapshots / f"step-{step:05d}",
                                        {"validation": m, "step": step, "loss": loss})
                write_json(args.snapshots / "curve.json", curve)
            if not chosen and "pass@8" in m and m["pass@8"] >= m["greedy_accuracy"] + HEADROOM:
                chosen.update(step=step, val=m)
                return not args.full
            return False

        model, tokenizer = tiny_policy.train_policy(cfg, train, log, on_snapshot)
        if chosen:
            cfg.policy.stop_at = chosen["step"]
            if args.full:  # ship the chosen snapshot, not the end of the schedule
                model, tokenizer = _load(args.snapshots / f"step-{chosen['step']:05d}")
        else:  # keep the fully trained model for inspection; the caller gets exit code 1
            log("[select] no snapshot reached the regime on validation: shipping the full schedule")
    else:
        model, tokenizer = tiny_policy.train_policy(cfg, train, log)
    seconds = time.time() - t0
    metrics = tiny_policy.evaluate_policy(model, tokenizer, test[: cfg.policy.eval_questions],
                                          pass_k=8)
    metrics["train_seconds"] = round(seconds, 1)
    if chosen:
        metrics["validation"] = dict(chosen["val"])
    if curve:
        metrics["validation_curve"] = curve
    dest = tiny_policy.ASSETS / tiny_policy.recipe_hash(cfg)
    tiny_policy.save_policy(model, tokenizer, dest, {
        "hash": tiny_policy.recipe_hash(cfg), "metrics": metrics,
        "recipe": {"policy": cfg.policy.model_dump(mode="json", exclude=tiny_policy._NOT_RECIPE),
                   "world": worlds.world_config(cfg.data).model_dump(mode="json")}})
    log(json.dumps({"dest": str(dest), "stop_at": cfg.policy.stop_at,
                    **{k: v for k, v in metrics.items() if k != "validation_curve"}}, indent=1))
    if args.select and not chosen:
        raise SystemExit(1)


def _load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not folder.is_dir():
        raise SystemExit("--full ships the chosen snapshot: "
                         f"pass --snapshots to keep {folder.name}")
    return (AutoModelForCausalLM.from_pretrained(folder).eval(),
            AutoTokenizer.from_pretrained(folder))


if __name__ == "__main__":
    main()
