"""Reward models (ORM and SORM): a causal-LM backbone from the policy with a scalar head.

One input row (the label stage's ``orm`` / ``sorm`` sets)::

    {"qid": "syn-train-00012", "sample_id": 3, "question": "Mia has 23 shells. ...",
     "steps": ["23 + 45 = 68", "68 - 12 = 57", "#### 57"],
     "labels": [1.0, 0.0, 0.0],                # ORM: the sample's correctness on every step
     "mask": [1.0, 1.0, 0.0]}                  # SORM only; 0 = dropped by balancing

The text is ``policy_prompt(question) + "".join(s + "\\n" for s in steps)`` and step i is scored at
the last token of its line, the one holding its ``"\\n"``. The loss is BCE-with-logits on those
positions only (float targets, weighted by ``mask``); every other token is ignored. The model is an
``AutoModelForTokenClassification`` with ``num_labels=1`` (``LlamaForTokenClassification`` for the
tiny policy), saved with ``save_pretrained`` + the tokenizer, so plain transformers reloads it.

``train.<model>.lm_weight`` > 0 adds the policy's next-token loss on the solution tokens beside the
BCE (``RewardWithLM``, training only): the verifier keeps reading solutions as the policy did
(measured on the prototype world: a policy-initialised ORM with BCE + 0.5 x LM loss ranked
right above wrong within a question at 80%). The exported folder is the token-classification
model alone.
"""

from __future__ import annotations

import bisect
import threading
import zlib
from pathlib import Path
from typing import Any, Sequence

import torch

from glore_ray.prompts import chat, policy_prompt
from glore_ray.train.batching import pad_right

UNSCORED = 0.5  # probability reported for a step cut off by the context window (never in practice)


# ------------------------------------------------------------------ tokenisation

def reward_text(question: str, steps: Sequence[str], chat_tokenizer=None) -> tuple[str, list[int]]:
    """The scored text and, per step, the character index just past its ``"\\n"``;
    ``chat_tokenizer``: the prompt in its chat template (``policy.chat_template``)."""
    text = policy_prompt(question)
    if chat_tokenizer is not None:
        text = chat(text, chat_tokenizer)
    ends = []
    for s in steps:
        text += s + "\n"
        ends.append(len(text))
    return text, ends


def encode_reward(tokenizer, question: str, steps: Sequence[str], max_len: int,
                  chat: bool = False, with_start: bool = False):
    """Token ids and, per step, the index of the token holding that step's final character
    (its ``"\\n"``), found through the tokenizer's character offsets so it works for the local
    word-level tokenizer and for BPE alike. A sequence longer than ``max_len`` loses tokens from
    the *start* (the question), so the steps keep their positions; a step whose end falls in the
    cut-off part gets position -1. ``with_start``: also the index of the first solution token
    (where the LM loss starts)."""
    text, ends = reward_text(question, steps, tokenizer if chat else None)
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    # Special tokens carry (0, 0); give them an empty span so they never hold a character.
    starts = [s if e > s else -1 for s, e in offsets]
    positions = []
    for end in ends:
        # the last token starting at or before the step's final character
        t = bisect.bisect_right(starts, end - 1) - 1
        if t < 0 or offsets[t][1] < end:
            raise ValueError(f"cannot locate the end of a step in the tokenized text: {text!r}")
        positions.append(t)
    prompt_end = (ends[0] - len(steps[0]) - 1) if steps else len(text)
    start = next((i for i, s in enumerate(starts) if s >= prompt_end), len(ids))
    if len(ids) > max_len:
        cut = len(ids) - max_len
        keep_bos = tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
        head = ids[:1] if keep_bos else []
        cut += len(head)
        ids = head + ids[cut:]
        positions = [p - cut + len(head) if p >= cut else -1 for p in positions]
        start = max(len(head), start - cut + len(head))
    return (ids, positions, start) if with_start else (ids, positions)


def encode_rows(tokenizer, rows: Sequence[dict], max_len: int, chat: bool = False) -> list[dict]:
    """Label-stage rows -> encoded examples ``{ids, positions, targets, weights}``."""
    out = []
    for r in rows:
        steps, labels = list(r["steps"]), [float(x) for x in r["labels"]]
        if len(steps) != len(labels):
            raise ValueError(f"row {r.get('qid')}/{r.get('sample_id')}: {len(steps)} steps but "
                             f"{len(labels)} labels")
        mask = r.get("mask")
        weights = [1.0] * len(steps) if mask is None else [float(m) for m in mask]
        if len(weights) != len(steps):
            raise ValueError(f"row {r.get('qid')}: mask has {len(weights)} entries, "
                             f"{len(steps)} steps")
        ids, pos, start = encode_reward(tokenizer, r["question"], steps, max_len, chat, True)
        keep = [i for i, p in enumerate(pos) if p >= 0]
        out.append({"ids": ids, "positions": [pos[i] for i in keep], "lm_from": start,
                    "targets": [labels[i] for i in keep], "weights": [weights[i] for i in keep],
                    # for the within-question ranking term: which question, and the outcome
                    "group": zlib.crc32(str(r.get("qid", "")).encode()),
                    "outcome": labels[-1] if labels else 0.0})
    return out


def collate(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; ``targets``/``weights`` are dense (B, T) with weight 0 off the step ends;
    ``lm_labels`` holds the solution tokens (-100 elsewhere) for the auxiliary LM loss."""
    ids, attn = pad_right([e["ids"] for e in examples], pad_id)
    targets = torch.zeros(ids.shape, dtype=torch.float32)
    weights = torch.zeros(ids.shape, dtype=torch.float32)
    lm_labels = torch.full(ids.shape, -100, dtype=torch.long)
    for i, e in enumerate(examples):
        n, start = len(e["ids"]), e.get("lm_from", len(e["ids"]))
        lm_labels[i, start:n] = ids[i, start:n]
        if e["positions"]:
            pos = torch.tensor(e["positions"])
            targets[i, pos] = torch.tensor(e["targets"])
            weights[i, pos] = torch.tensor(e["weights"])
    last = torch.tensor([e["positions"][-1] if e["positions"] else 0 for e in examples])
    group = torch.tensor([e.get("group", i) for i, e in enumerate(examples)], dtype=torch.int64)
    outcome = torch.tensor([float(e.get("outcome", 0.0)) for e in examples])
    return {"input_ids": ids, "attention_mask": attn, "targets": targets, "weights": weights,
            "last": last, "group": group, "outcome": outcome, "lm_labels": lm_labels}


# ------------------------------------------------------------------ model and loss

def build_reward_model(policy: str | Path, dtype: torch.dtype = torch.float32):
    """The policy's backbone with a fresh 1-output head (its LM head is dropped)."""
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(
        str(policy), num_labels=1, dtype=dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


class RewardWithLM(torch.nn.Module):
    """Training only: the reward model plus a next-token head on the same final hidden states —
    the tied input embedding (the tiny policy) or the policy's own LM head (untied models), kept
    beside the reward model and dropped at export (``reward`` is what gets saved).

    ``forward`` returns ``(step logits (B, T, 1), next-token logits (B, T, V))``."""

    def __init__(self, reward_model, policy: str | Path, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.reward = reward_model
        self.lm_head = None
        if not getattr(reward_model.config, "tie_word_embeddings", False):
            from transformers import AutoModelForCausalLM

            lm = AutoModelForCausalLM.from_pretrained(str(policy), dtype=dtype)
            self.lm_head = lm.get_output_embeddings()

    def forward(self, input_ids, attention_mask):
        h = self.reward.base_model(input_ids=input_ids,
                                   attention_mask=attention_mask).last_hidden_state
        lm = (self.lm_head(h) if self.lm_head is not None
              else h @ self.reward.get_input_embeddings().weight.T)
        head = self.reward.score if hasattr(self.reward, "score") else self.reward.classifier
        return head(h), lm


def forward(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) step logits, one per token, and the next-token logits when the model has an LM head
    (``RewardWithLM``), else None."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    if isinstance(out, tuple):
        return out[0].squeeze(-1).float(), out[1]
    return out.logits.squeeze(-1).float(), None


def step_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T) logits, one per token."""
    return forward(model, batch)[0]


def lm_loss(lm_logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy on the solution tokens."""
    labels = batch["lm_labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        lm_logits[:, :-1].float().reshape(-1, lm_logits.shape[-1]), labels.reshape(-1),
        ignore_index=-100)


def reward_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
    """Weighted BCE over the step ends only. Returns (loss, total weight)."""
    w = batch["weights"]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, batch["targets"], reduction="none")
    total = float(w.sum())
    return (bce * w).sum() / max(total, 1e-8), total


def ranking_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Within-question ranking: mean ``-log sigmoid(s_right - s_wrong)`` over every pair of one
    question's solutions in the batch whose outcomes differ, on their last-step logits (the score
    that reranks). BCE alone is mostly won by telling easy questions from hard ones; this term only
    rewards telling one question's right solutions from its wrong ones. Returns (loss, pairs)."""
    final = logits.gather(1, batch["last"].view(-1, 1)).squeeze(1)
    same = batch["group"].view(-1, 1) == batch["group"].view(1, -1)
    better = (batch["outcome"].view(-1, 1) >= 0.5) & (batch["outcome"].view(1, -1) < 0.5)
    pairs = same & better
    n = int(pairs.sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    diff = final.view(-1, 1) - final.view(1, -1)
    return torch.nn.functional.softplus(-diff)[pairs].mean(), n


def gather_steps(logits: torch.Tensor,
                 batch: dict[str, torch.Tensor]) -> tuple[list[float], list[float]]:
    """(probabilities, targets) at the scored positions of a batch (weight > 0)."""
    sel = batch["weights"] > 0
    return (torch.sigmoid(logits[sel]).tolist(), batch["targets"][sel].tolist())


# ------------------------------------------------------------------ evaluation helper

def step_metrics(probs: Sequence[Sequence[float]] | Sequence[float],
                 labels: Sequence[Sequence[float]] | Sequence[float],
                 threshold: float = 0.5) -> dict[str, Any]:
    """Step-level accuracy (probability >= threshold vs label >= 0.5) and ROC AUC.

    Takes per-solution lists (``[[p, p], [p]]``) or flat lists; AUC is NaN when the labels hold a
    single class. The evaluate stage reports with this same function."""
    def flat(x):
        return [float(v) for row in x for v in row] if x and isinstance(x[0], (list, tuple)) \
            else [float(v) for v in x]

    p, y = flat(probs), [int(v >= 0.5) for v in flat(labels)]
    if len(p) != len(y):
        raise ValueError(f"step_metrics: {len(p)} probabilities but {len(y)} labels")
    n = len(y)
    acc = sum((pi >= threshold) == bool(yi) for pi, yi in zip(p, y)) / n if n else float("nan")
    auc = float("nan")
    if 0 < sum(y) < n:
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score(y, p))
    return {"step_accuracy": acc, "step_auc": auc, "n_steps": n,
            "positive_share": sum(y) / n if n else float("nan")}


# ------------------------------------------------------------------ inference

def encode_for_scoring(tokenizer, questions: list[str], steps: list[list[str]], max_len: int,
                       chat: bool) -> list[tuple[list[int], list[int]]]:
    """``encode_reward`` per solution for a scorer (``([], [])`` for an empty one): both scorers
    feed a model exactly these ids and read it at these step-end positions."""
    if len(questions) != len(steps):
        raise ValueError(f"score: {len(questions)} questions but {len(steps)} step lists")
    return [encode_reward(tokenizer, q, s, max_len, chat) if s else ([], [])
            for q, s in zip(questions, steps)]


class RewardScorer:
    """Per-step probabilities from a saved reward-model folder (ORM or SORM).

        scorer = RewardScorer("runs/embedded/train/sorm")
        scorer.score(["Mia has 23 shells. ..."], [["23 + 45 = 68", "#### 68"]])  # [[0.93, 0.88]]

    Construction loads the folder once (a few MB for the tiny model); ``score`` runs batched,
    length-sorted forward passes under ``torch.inference_mode`` and a lock, so one instance can be
    shared by the threads of a Serve replica.
    """

    def __init__(self, path: str | Path, device: str | None = None, batch_size: int = 32,
                 max_len: int | None = None, chat: bool = False):
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no reward model at {path} (expected an HF folder with "
                                    "config.json; train it with `glore train CONFIG`)")
        self.path = path
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForTokenClassification.from_pretrained(str(path)).to(self.device)
        self.model.eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"{path}: a reward model has num_labels=1, "
                             f"found {self.model.config.num_labels}")
        self.pad_id = (self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                       else self.tokenizer.eos_token_id)
        self.batch_size, self.chat = batch_size, chat
        self.max_len = max_len or int(getattr(self.model.config, "max_position_embeddings", 2048))
        self._lock = threading.Lock()

    def score(self, questions: list[str], steps: list[list[str]]) -> list[list[float]]:
        encoded = encode_for_scoring(self.tokenizer, questions, steps, self.max_len, self.chat)
        out: list[list[float]] = [[] for _ in questions]
        order = sorted((i for i, (ids, _) in enumerate(encoded) if ids),
                       key=lambda i: len(encoded[i][0]))
        with self._lock, torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                batch = collate([{"ids": encoded[i][0], "positions": [], "targets": [],
                                  "weights": []} for i in idx], self.pad_id)
                logits = self.model(input_ids=batch["input_ids"].to(self.device),
                                    attention_mask=batch["attention_mask"].to(self.device)
                                    ).logits.squeeze(-1).float()
                probs = torch.sigmoid(logits).cpu()
                for row, i in enumerate(idx):
                    out[i] = [float(probs[row, p]) if p >= 0 else UNSCORED
                              for p in encoded[i][1]]
        return out
