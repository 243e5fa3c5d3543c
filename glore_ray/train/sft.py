"""Refiner SFT data (global and local): loss on the target tokens only.

One input row (the label stage's ``global`` / ``local`` sets; prompts from ``glore_ray.prompts``)::

    {"qid": "syn-train-00012",
     "prompt": "Question: Mia has 23 shells. ...\\nWrong draft:\\n23 + 45 = 68\\n...\\nAnswer:\\n",
     "target": "23 + 45 = 68\\n68 - 12 = 56\\n#### 56"}

The model sees ``prompt + target + EOS``; labels are -100 on the prompt and the padding, so only the
target (and its EOS) is learned. Which tokens are the target is decided by character offsets, so a
BPE merge across the prompt/target boundary cannot shift the mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from glore_ray.prompts import chat as chat_prompt
from glore_ray.train.batching import pad_right


def encode_pair(tokenizer, prompt: str, target: str, max_len: int,
                chat: bool = False) -> tuple[list[int], int]:
    """(ids ending in EOS, number of leading prompt tokens). Over-long pairs lose prompt tokens
    from the start (after BOS): the target is what the refiner must learn to write. ``chat``: the
    prompt in the tokenizer's chat template (``policy.chat_template``)."""
    if not target.strip():
        raise ValueError(f"empty SFT target for prompt {prompt[:60]!r}")
    if chat:
        prompt = chat_prompt(prompt, tokenizer)
    enc = tokenizer(prompt + target, return_offsets_mapping=True, add_special_tokens=True)
    ids = list(enc["input_ids"]) + [tokenizer.eos_token_id]
    # first token that reaches into the target; special tokens have (0, 0) spans
    n_prompt = next((t for t, (s, e) in enumerate(enc["offset_mapping"])
                     if e > s and e > len(prompt)), len(enc["input_ids"]))
    if len(ids) > max_len:
        keep_bos = tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
        head = ids[:1] if keep_bos else []
        cut = len(ids) - max_len + len(head)
        if cut > n_prompt:
            raise ValueError(f"SFT target alone is longer than max_len={max_len} tokens")
        ids = head + ids[cut:]
        n_prompt = n_prompt - cut + len(head)
    return ids, n_prompt


def encode_rows(tokenizer, rows: Sequence[dict], max_len: int, chat: bool = False) -> list[dict]:
    """Label-stage rows -> encoded examples ``{ids, n_prompt}``."""
    out = []
    for r in rows:
        if "prompt" not in r or "target" not in r:
            raise ValueError(f"refiner row needs 'prompt' and 'target', got {sorted(r)}")
        ids, n_prompt = encode_pair(tokenizer, r["prompt"], r["target"], max_len, chat)
        out.append({"ids": ids, "n_prompt": n_prompt})
    return out


def collate(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    ids, attn = pad_right([e["ids"] for e in examples], pad_id)
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(examples):
        n = len(e["ids"])
        labels[i, e["n_prompt"] : n] = ids[i, e["n_prompt"] : n]
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def build_refiner(policy: str | Path, dtype: torch.dtype = torch.float32):
    """A causal LM initialised from the policy (same architecture, same tokenizer)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(policy), dtype=dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


# Logits (positions x vocabulary) that exist at once in ``_chunked_ce``: 100 MB in fp32, 512
# positions of SmolLM2's 49k vocabulary, and their gradient.
CHUNK_LOGITS = 512 * 49152
# Logits computed whole up to 1 GiB in fp32, chunked above. Measured on the bring-your-own-model
# SFT shape (SmolLM2, 8 x ~300 tokens, ~0.45 GB of logits, gradient checkpointing; one worker,
# 2 CPUs): chunked, peak RSS 6,147 -> 5,983 MiB but steps 6.16 -> 6.94 s (torchrun) and 7.71 ->
# 7.94 s (Ray Train) (benchmarks/results/launchers_smollm2_gc{,_chunked}.json): it pays only
# where logits dwarf the rest (long rows, big batches, GPU memory).
CHUNK_ABOVE = 2**28


def sft_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float, float]:
    """Mean token cross-entropy on the targets. Returns (loss, n target tokens, n correct).

    The vocabulary-sized logits are the largest tensors of a step (~2 GB of SmolLM2's, 49k
    vocabulary; docs/performance.md). Logits larger than ``CHUNK_ABOVE`` are never whole: the
    model returns its final hidden states, and the LM head is applied only at target positions,
    a chunk at a time, each chunk's logits recomputed in backward instead of kept
    (``_chunked_ce``). Smaller ones, a model whose logits are not its head applied to the last
    hidden state (a logit scale, soft-capping: checked at the last position), a model without
    ``get_output_embeddings`` and ZeRO-3 take ``_full_logits_ce``."""
    labels = batch["labels"]
    targeted = (labels[:, 1:] != -100).any(0).nonzero()
    start = int(targeted[0]) if len(targeted) else 0  # position t predicts token t + 1
    # position start + j predicts labels[:, start + j + 1]; the last position predicts nothing
    target = torch.nn.functional.pad(labels[:, start + 1:], (0, 1), value=-100)
    head = _output_head(model)
    # ZeRO-3 gathers a weight only inside its module's forward: not into a recomputed chunk
    if head is not None and not hasattr(head.weight, "ds_id") \
            and target.numel() * head.weight.shape[0] > CHUNK_ABOVE:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states[-1]
        with torch.no_grad():
            plain = torch.allclose(head(hidden[:, -1:]).float(), out.logits.float(), rtol=1e-3,
                                   atol=1e-3)
        if plain:
            return _chunked_ce(head, hidden[:, start:], target)
    return _full_logits_ce(model, batch, start, target)


def _output_head(model):
    """The LM head of a causal LM, also inside a DeepSpeed engine or DDP (``.module``)."""
    inner = getattr(model, "module", model)
    get = getattr(inner, "get_output_embeddings", None)
    return get() if callable(get) else None


def _chunked_ce(head, hidden: torch.Tensor, target: torch.Tensor
                ) -> tuple[torch.Tensor, float, float]:
    """Cross-entropy of ``head(hidden)`` against ``target`` (-100: none) over the target positions
    only, in chunks of ``CHUNK_LOGITS`` logits, recomputed in backward (``checkpoint``)."""
    from torch.utils.checkpoint import checkpoint

    valid = target != -100
    h, t = hidden[valid], target[valid]
    chunk = max(1, CHUNK_LOGITS // head.weight.shape[0])

    def part(x, y):
        logits = head(x).float()
        return (torch.nn.functional.cross_entropy(logits, y, reduction="sum"),
                (logits.argmax(-1) == y).sum())

    loss_sum, correct = hidden.new_zeros((), dtype=torch.float32), 0
    for i in range(0, len(t), chunk):
        x, y = h[i:i + chunk], t[i:i + chunk]
        s, c = checkpoint(part, x, y, use_reentrant=False) if torch.is_grad_enabled() \
            else part(x, y)
        loss_sum, correct = loss_sum + s, correct + int(c)
    n = float(len(t))
    return loss_sum / max(n, 1.0), n, float(correct)


def _full_logits_ce(model, batch, start: int, target: torch.Tensor
                    ) -> tuple[torch.Tensor, float, float]:
    """The plain path: logits from the first target position on (``logits_to_keep``), the shift
    applied to the labels so the logits are never copied."""
    keep = batch["labels"].size(1) - start
    try:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       logits_to_keep=keep).logits
    except TypeError as e:  # a model without HF's logits_to_keep: every position
        if "logits_to_keep" not in str(e):
            raise
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits[:, start:]
    logits = logits.float()  # a copy only under bf16 autocast
    loss_sum = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100,
        reduction="sum")
    valid = target != -100
    n = float(valid.sum())
    correct = float(((logits.argmax(-1) == target) & valid).sum())
    return loss_sum / max(n, 1.0), n, correct
