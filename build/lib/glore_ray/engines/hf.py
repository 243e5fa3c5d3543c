"""The fallback engine: transformers ``generate``, batched, on CPU or one GPU.

Unlike vLLM it has no ``n``: each prompt is repeated ``n`` times in the batch. Sampling draws from
one global generator per batch, so seeding is per call (the same prompts and seeds in the same
order give the same completions), not per prompt as in vLLM.
"""

from __future__ import annotations

import time
import zlib

import torch

from glore_ray.engines.base import Completion, SamplingSpec, truncate_at_answer


class HFEngine:
    name = "hf"

    def __init__(self, model_path: str, dtype: str = "float32", batch_size: int = 64,
                 device: str | None = None, max_model_len: int | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype)).to(self.device).eval()
        self.batch_size = batch_size
        self.max_model_len = max_model_len or self.model.config.max_position_embeddings
        self.start_seconds = time.perf_counter() - t0

    @classmethod
    def from_model(cls, model, tokenizer, batch_size: int = 64) -> "HFEngine":
        """Wrap an in-memory model (used while training the policy)."""
        self = cls.__new__(cls)
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.max_model_len = model.config.max_position_embeddings
        self.device = next(model.parameters()).device
        tokenizer.padding_side = "left"
        return self

    def count_tokens(self, prompts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(prompts)["input_ids"]] if prompts else []

    @torch.no_grad()
    def generate(self, prompts: list[str], spec: SamplingSpec,
                 seeds: list[int] | None = None) -> list[list[Completion]]:
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        flat = [p for p in prompts for _ in range(spec.n)]
        # Sort by length so a batch pads little; restore order afterwards.
        order = sorted(range(len(flat)), key=lambda i: len(flat[i]))
        out: list[Completion | None] = [None] * len(flat)
        # Per-prompt seeds fold into one seed for the call (see the module docstring).
        seed = spec.seed if seeds is None else zlib.crc32(repr((spec.seed, seeds)).encode())
        gen = torch.Generator(device="cpu").manual_seed(seed)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer([flat[i] for i in idx], return_tensors="pt", padding=True).to(
                self.device)
            greedy = spec.temperature == 0
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            ids = self.model.generate(
                **enc, max_new_tokens=spec.max_tokens, do_sample=not greedy,
                temperature=None if greedy else spec.temperature,
                top_p=None if greedy else spec.top_p, top_k=None if greedy else 0,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id)
            new = ids[:, enc["input_ids"].shape[1]:]
            for row, i in enumerate(idx):
                toks = new[row].tolist()
                if self.tokenizer.eos_token_id in toks:
                    toks = toks[: toks.index(self.tokenizer.eos_token_id) + 1]
                toks = [t for t in toks if t != self.tokenizer.pad_token_id]
                text = self.tokenizer.decode(toks, skip_special_tokens=True)
                out[i] = Completion(truncate_at_answer(text), len(toks))
        return [out[i * spec.n : (i + 1) * spec.n] for i in range(len(prompts))]  # type: ignore
