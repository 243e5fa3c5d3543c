"""Stage ``policy``: the base policy every later stage generates with, at ``policy/model/``.

- no ``policy.model``: the tiny policy of the generated world (``train/tiny_policy.py``): the
  checkpoint shipped in the package for this recipe, or trained here on ``data/train.parquet``
  and measured on ``data/test.parquet``;
- ``policy.model`` with ``policy.sft``: that model fine-tuned on the train split's gold solutions
  with the refiners' loop (``sft_policy``);
- ``policy.model`` alone: used as it is (later stages load it from ``policy.model``).

Reads the ``policy`` section (the tiny policy's recipe; the world's tokenizer comes from ``data``,
upstream) and, with ``policy.sft``, the train section's loop fields. Writes ``policy/model/``: an
HF folder with ``glore_policy.json`` (its metrics).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

from glore_ray.config import RunConfig, TrainConfig, is_knob
from glore_ray.data.worlds import grade
from glore_ray.engines.base import SamplingSpec
from glore_ray.prompts import policy_prompt
from glore_ray.records import Question, write_json
from glore_ray.train.spec import SHARED_FIELDS

READS = ("policy",)
WHAT = "the base policy model"
# With ``policy.sft`` the stage fine-tunes with the train section's loop, so the train fields every
# fine-tune shares (``train.spec``; knobs left out, they change no output) shape the policy too —
# only then: the tiny policy and a model used as it is never read them (``pipeline.stage_reads``).
SFT_READS = tuple(f"train.{f}" for f in SHARED_FIELDS if not is_knob(TrainConfig.model_fields[f]))


def run(cfg: RunConfig, paths, log=print) -> dict:
    """The tiny policy, a pretrained one as it is, or a pretrained one fine-tuned on the world's
    gold solutions (``policy.sft``), at ``paths.policy``."""
    from glore_ray.stages.data import read

    if cfg.policy.model is not None and cfg.policy.sft is not None:
        return sft_policy(cfg, paths, log)
    if cfg.policy.model is not None:
        log(f"[policy] using the pretrained model {cfg.policy.model} as it is")
        return {"model": paths.policy_model}
    out = tiny_policy(cfg, read(paths, "train"), read(paths, "test"), paths.policy, log)
    return json.loads((out / "glore_policy.json").read_text())["metrics"]


def tiny_policy(cfg: RunConfig, train: list[Question], test: list[Question], out_dir: Path,
                log=print) -> Path:
    """The tiny policy's folder at ``out_dir``: the shipped checkpoint of this recipe, copied, or
    one trained, measured on the test split and saved."""
    import torch

    from glore_ray.train.tiny_policy import (
        ASSETS,
        evaluate_policy,
        recipe_hash,
        save_policy,
        train_policy,
    )

    h = recipe_hash(cfg)
    if cfg.policy.shipped and (ASSETS / h / "glore_policy.json").exists():
        log(f"[policy] using the shipped checkpoint for this recipe ({h}); "
            "set policy.shipped=false to retrain it")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(ASSETS / h, out_dir)
        return out_dir
    torch.manual_seed(cfg.policy.seed)
    t0 = time.time()
    model, tokenizer = train_policy(cfg, train, log)
    metrics = evaluate_policy(model, tokenizer, test[: cfg.policy.eval_questions])
    metrics["train_seconds"] = round(time.time() - t0, 1)
    save_policy(model, tokenizer, out_dir, {"hash": h, "metrics": metrics})
    log(f"policy: greedy accuracy {metrics['greedy_accuracy']:.3f} on {metrics['n']} test "
        f"questions; first wrong steps {metrics['first_wrong_step']}")
    return out_dir


def sft_policy(cfg: RunConfig, paths, log=print) -> dict:
    """``policy.sft``: fine-tune ``policy.model`` on the train split's gold solutions with the
    refiners' loop (Ray Train + DeepSpeed, loss on the solution tokens only), save the HF folder
    at ``paths.policy``, then greedy-decode held-out train questions on the rollout pool and report
    the accuracy and the share of answers with a gradable ``#### n`` line.

    One training row: ``{"qid": "gsm8k-train-00012", "prompt": "Question: ...\nAnswer:\n",
    "target": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n...\n#### 72"}``"""
    from transformers import AutoTokenizer

    from glore_ray.data.grading import extract_answer
    from glore_ray.engines.context import model_context
    from glore_ray.hub import resolve_model
    from glore_ray.stages.build import SCHEMAS, write_set
    from glore_ray.stages.data import read
    from glore_ray.stages.generation import generate_texts
    from glore_ray.train.ray_trainer import fit
    from glore_ray.train.spec import fit_options, loop_spec

    s, t = cfg.policy.sft, cfg.train
    base = resolve_model(cfg.policy.model)
    train = read(paths, "train")
    if len(train) <= s.eval_questions:
        raise ValueError(f"policy.sft: the train split has {len(train)} questions, not more than "
                         f"policy.sft.eval_questions={s.eval_questions}")
    held, pool = train[-s.eval_questions:], train[:-s.eval_questions][: s.n_questions]
    tok = AutoTokenizer.from_pretrained(base)
    rows = [{"qid": q.qid, "prompt": policy_prompt(q.question), "target": q.gold_solution}
            for q in pool + held if q.gold_solution.strip()]
    spec = loop_spec(cfg, "policy", "sft", base, default_max_len=model_context(base) or 2048,
                     lr=s.lr, batch_size=s.batch_size, grad_accum=s.grad_accum,
                     max_steps=s.steps, lora_rank=s.lora_rank)
    # a solution longer than train.max_len (default: the model's context) cannot be learned
    # whole: leave it out, say how many
    max_len = spec.max_len
    fits = [len(tok(r["prompt"] + r["target"])["input_ids"]) < max_len for r in rows]
    if not all(fits):
        log(f"[policy] {fits.count(False)} of {len(rows)} gold solutions are longer than "
            f"{max_len} tokens (train.max_len or the model's context): left out of the SFT")
    rows = [r for r, ok in zip(rows, fits) if ok]
    folder = paths.stage("policy") / "sft"  # eval.parquet: the held-out questions' gold
    counts = write_set(folder, rows, SCHEMAS["global"], {q.qid for q in held}, hf=False)
    # as many epochs as policy.sft.steps optimizer steps need (the loop stops at max_steps)
    per_step = s.batch_size * s.grad_accum * t.num_workers
    spec = dataclasses.replace(spec, epochs=max(1, math.ceil(s.steps * per_step
                                                             / counts["train"])))
    log(f"[policy] fine-tuning {cfg.policy.model} on {counts['train']} gold solutions, "
        f"{s.steps} steps")
    fitted = fit(spec, folder / "train.parquet", folder / "eval.parquet",
                 storage=paths.stage("policy") / "ray", out_dir=paths.policy, log=log,
                 **fit_options(cfg))
    greedy = SamplingSpec(n=1, temperature=0.0, max_tokens=s.max_new_tokens, seed=cfg.seed)
    texts = [c[0] for c in generate_texts(cfg, str(paths.policy),
                                          [policy_prompt(q.question) for q in held], greedy, log)]
    metrics = {"model": cfg.policy.model, "base": base, "sft_rows": counts["train"],
               "sft_steps": s.steps, "fit_seconds": fitted["fit_seconds"],
               "final_loss": fitted["final"].get("loss"), "n_held_out": len(held),
               "held_out_greedy_accuracy": sum(grade(x, q.answer, q.oracle) for x, q in
                                               zip(texts, held)) / len(held),
               "held_out_gradable": sum(extract_answer(x) is not None for x in texts) / len(held),
               "examples": [{"question": q.question, "greedy": x} for q, x in
                            zip(held[:2], texts[:2])]}
    write_json(paths.policy / "glore_policy.json", {"metrics": metrics})
    log(f"[policy] after SFT: held-out greedy accuracy {metrics['held_out_greedy_accuracy']:.3f},"
        f" gradable answers {metrics['held_out_gradable']:.3f} ({len(held)} train questions held "
        "out)")
    return metrics

