"""The tiny base policy of a generated world: a Llama of ~0.9M parameters trained on the world's
gold solutions until it is right on roughly half the held-out questions and wrong mostly at
intermediate steps — the regime in which GLoRe's refinements matter. Arithmetic world (the embedded
default): its errors are carries and borrows. Dependency world: the schedule is stopped early at
``policy.stop_at``, the first snapshot in the regime on validation questions
(``scripts/ship_policy.py --select``).

The recipe (calibrated on 2 cores, docs/worlds.md): AdamW lr 1e-3, betas (0.9, 0.98), weight
decay 0.1 on matrices, clip 1.0, 50 warm-up steps then cosine to 1e-4, batch 32, ``policy.steps``
steps, batches grouped by length, loss on answer tokens only. A trained checkpoint ships in
``glore_ray/assets/policies/<recipe hash>/``; the policy stage (``stages/policy.py``) reuses it
when the config asks for the same recipe.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import torch

from glore_ray.config import RunConfig
from glore_ray.data import worlds
from glore_ray.engines.base import SamplingSpec
from glore_ray.engines.hf import HFEngine
from glore_ray.hub import SHIPPED, shipped_folder
from glore_ray.prompts import policy_prompt
from glore_ray.records import Question, write_json

ASSETS = SHIPPED
_NOT_RECIPE = {"model", "sft", "chat_template", "shipped", "eval_questions", "snapshot_every"}
# knobs added after policies were shipped: at these values they hash as if absent
_NEW_DEFAULTS = {"policy": {"batches": "grouped", "init_from": None},
                 "world": {"style": "worded"}}


def recipe_hash(cfg: RunConfig) -> str:
    """What determines the trained policy: the world, the architecture, the schedule, its seed
    (not the run's seed: runs with different seeds share one base policy)."""
    import hashlib

    recipe = cfg.policy.model_dump(mode="json", exclude=_NOT_RECIPE)
    if recipe["stop_at"] is None:  # the full schedule: hashes as before stop_at existed
        del recipe["stop_at"]
    # ``strict`` changes the grader, not the problems the policy learns from
    blob = {"policy": recipe,
            "world": worlds.world_config(cfg.data).model_dump(mode="json", exclude={"strict"})}
    for part, defaults in _NEW_DEFAULTS.items():
        for key, value in defaults.items():
            if blob[part].get(key) == value:
                del blob[part][key]
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def build_model(cfg: RunConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    p = cfg.policy
    mcfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=p.hidden_size, intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_layers, num_attention_heads=p.num_heads,
        num_key_value_heads=p.num_heads, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(cfg.policy.seed)
    return LlamaForCausalLM(mcfg)


def init_model(cfg: RunConfig, tokenizer):
    """``policy.init_from``: the shipped policy to continue, checked against this world's tokens
    and this recipe's architecture (a mismatch would train on ids that mean other words)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = cfg.policy
    src = shipped_folder(p.init_from, f"policy.init_from={p.init_from}")
    if AutoTokenizer.from_pretrained(src).get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"policy.init_from={p.init_from}: its vocabulary is not this world's "
                         "(data.dependency.style / max_value must match the policy it continues)")
    model = AutoModelForCausalLM.from_pretrained(src)
    c = model.config
    want = (p.hidden_size, p.num_layers, p.num_heads, p.intermediate_size)
    got = (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size)
    if want != got:
        raise ValueError(f"policy.init_from={p.init_from}: its shape (hidden, layers, heads, "
                         f"ffn) {got} differs from policy's {want}")
    return model


def encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """(prompt, target) -> (token ids ending in EOS, number of prompt tokens)."""
    out = []
    for prompt, target in pairs:
        p_ids = tokenizer(prompt)["input_ids"]
        ids = tokenizer(prompt + target)["input_ids"] + [tokenizer.eos_token_id]
        out.append((ids, len(p_ids)))
    return out


def _batches(encoded, batch_size: int, rng: random.Random, kind: str = "grouped"):
    """``grouped``: shuffle, sort within chunks of 50 batches, shuffle the batches (+25%
    throughput); ``random``: each batch drawn at random (the prototype's, which learned
    binding, drew its batches this way)."""
    if kind == "random":
        while True:
            yield rng.sample(range(len(encoded)), batch_size)
    idx = list(range(len(encoded)))
    while True:
        rng.shuffle(idx)
        chunk = batch_size * 50
        groups = []
        for s in range(0, len(idx), chunk):
            part = sorted(idx[s : s + chunk], key=lambda i: len(encoded[i][0]))
            groups += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
        rng.shuffle(groups)
        yield from groups


def collate(encoded, batch: list[int], pad_id: int):
    """(input_ids, attention_mask, labels) for the chosen ``encoded`` pairs; loss on the answer."""
    from glore_ray.train.sft import collate as sft_collate

    b = sft_collate([{"ids": encoded[i][0], "n_prompt": encoded[i][1]} for i in batch], pad_id)
    return b["input_ids"], b["attention_mask"], b["labels"]


def sft_step(model, opt, ids, mask, labels) -> float:
    """One optimiser step of next-token loss on the labelled tokens (clip 1.0); returns the loss."""
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def train_policy(cfg: RunConfig, train: list[Question], log=print, on_snapshot=None):
    """Train to ``policy.stop_at`` (default: the end) of a ``policy.steps`` schedule;
    ``on_snapshot(step, model, tokenizer, loss)`` is called every ``policy.snapshot_every`` steps
    (``loss``: the running per-token loss) and stops the training (keeping that step's model) by
    returning True."""
    p = cfg.policy
    tokenizer = worlds.build_world_tokenizer(cfg.data)
    model = init_model(cfg, tokenizer) if p.init_from else build_model(cfg, tokenizer)
    encoded = encode_pairs(tokenizer, [(policy_prompt(q.question), q.gold_solution) for q in train])
    decay = [w for n, w in model.named_parameters() if w.dim() >= 2]
    no_decay = [w for n, w in model.named_parameters() if w.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=p.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < p.warmup_steps:
            return p.lr * (step + 1) / p.warmup_steps
        frac = (step - p.warmup_steps) / max(1, p.steps - p.warmup_steps)
        return p.min_lr + 0.5 * (p.lr - p.min_lr) * (1 + math.cos(math.pi * frac))

    batches = _batches(encoded, p.batch_size, random.Random(cfg.policy.seed), p.batches)
    model.train()
    t0, running = time.time(), None
    stop = p.stop_at or p.steps
    for step in range(stop):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = sft_step(model, opt, *collate(encoded, next(batches), tokenizer.pad_token_id))
        running = loss if running is None else 0.98 * running + 0.02 * loss
        if (step + 1) % 100 == 0 or step + 1 == stop:
            log(f"policy step {step + 1}/{stop} loss {running:.4f} "
                f"({time.time() - t0:.0f}s)")
        if on_snapshot and p.snapshot_every and (step + 1) % p.snapshot_every == 0:
            model.eval()
            if on_snapshot(step + 1, model, tokenizer, running):
                break
            model.train()
    model.eval()
    return model, tokenizer


BINDING = ("wrong_clause", "copy", "unknown_quantity")  # errors of reading the question


def evaluate_policy(model, tokenizer, test: list[Question], max_tokens: int | None = None,
                    pass_k: int = 0) -> dict:
    """Greedy accuracy and, from the oracle, where and how the wrong solutions go wrong
    (``binding_share``: the wrong drafts' share of errors in reading the question); ``pass_k`` > 0
    adds pass@k of temperature-1 samples (the headroom SORM labels need). ``max_tokens``
    defaults to the longest gold solution plus 32 tokens."""
    if max_tokens is None:
        max_tokens = max(len(tokenizer(q.gold_solution)["input_ids"]) for q in test) + 32
    engine = HFEngine.from_model(model, tokenizer, batch_size=100)
    prompts = [policy_prompt(q.question) for q in test]
    outs = engine.generate(prompts, SamplingSpec(n=1, temperature=0.0, max_tokens=max_tokens))
    kinds, first_steps, n_right = Counter(), Counter(), 0
    for q, (c,) in zip(test, outs):
        right = worlds.grade(c.text, q.answer, q.oracle)
        n_right += right
        if not right:
            i, kind = worlds.first_wrong_step(c.text, q.oracle)
            kinds[kind] += 1
            n_ops = worlds.n_solution_steps(q.oracle)
            first_steps["final line" if i >= n_ops else f"step {i}"] += 1
    wrong = len(test) - n_right
    extra = {}
    if pass_k:
        samples = engine.generate(prompts, SamplingSpec(n=pass_k, temperature=1.0,
                                                        max_tokens=max_tokens, seed=1))
        right = [[worlds.grade(c.text, q.answer, q.oracle) for c in cs]
                 for q, cs in zip(test, samples)]
        extra = {f"pass@{pass_k}": sum(any(r) for r in right) / len(test),
                 "sample_accuracy": sum(map(sum, right)) / (len(test) * pass_k)}
    return {"n": len(test), "greedy_accuracy": n_right / len(test), **extra,
            "error_kinds": dict(kinds),
            "binding_share": sum(kinds[k] for k in BINDING) / wrong if wrong else 0.0,
            "first_wrong_step": dict(sorted(first_steps.items())),
            "intermediate_error_share": (sum(v for k, v in first_steps.items() if k != "final line")
                                         / wrong if wrong else 0.0)}


def save_policy(model, tokenizer, out_dir: Path, meta: dict) -> Path:
    """Write an HF folder + ``glore_policy.json`` (``meta``) to a temp path, then rename it over
    ``out_dir``: a killed save never leaves a half-written policy behind."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "glore_policy.json", meta)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
