"""The two model deployments. Both batch concurrent calls with ``@serve.batch``; batch size and
wait come from ``user_config`` so a redeploy with new values reconfigures replicas in place.

* ``Generator`` — one class bound three times (policy, global refiner, local refiner), each with
  its own engine (vLLM where importable, HF ``generate`` otherwise). When the refiners are LoRA
  adapters of the policy, one ``Generator`` holds the base model and both adapters (vLLM
  multi-LoRA; HF merges each adapter into its own copy) and the ingress routes by ``adapter``.
* ``RewardModel`` — bound twice (ORM, SORM): per-step probabilities for (question, steps) pairs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve

from glore_ray.engines.base import Completion, SamplingSpec, truncate_at_answer
from glore_ray.prompts import chat as chat_prompt

log = logging.getLogger("ray.serve")


def _limit_threads(num_cpus: float) -> None:
    """Replicas share a few cores: one torch thread pool per replica sized to its CPU share."""
    import torch

    torch.set_num_threads(max(1, int(round(num_cpus))))


def is_lora_folder(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


@dataclass(frozen=True)
class GenRequest:
    prompt: str
    spec: SamplingSpec
    adapter: str | None = None  # None = the base model


class _VLLMMultiLoRA:
    """One vLLM engine for the base model plus LoRA adapters, chosen per request."""

    name = "vllm-lora"

    def __init__(self, base: str, adapters: dict[str, str], rollout_cfg,
                 max_model_len: int | None = None) -> None:
        import json

        from glore_ray.engines.context import resolve_max_model_len
        from glore_ray.engines.vllm import set_engine_env

        set_engine_env(rollout_cfg.kv_cache_gib)
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        rank = max(json.loads((Path(p) / "adapter_config.json").read_text())["r"]
                   for p in adapters.values())
        self.max_model_len = resolve_max_model_len(
            base, max_model_len or rollout_cfg.max_model_len, rollout_cfg.context_cap)
        self.llm = LLM(model=str(base), dtype=rollout_cfg.dtype, enable_lora=True,
                       max_loras=len(adapters), max_lora_rank=max(8, rank),
                       enforce_eager=rollout_cfg.enforce_eager, max_model_len=self.max_model_len)
        self.loras = {name: LoRARequest(name, i + 1, str(p))
                      for i, (name, p) in enumerate(adapters.items())}

    def count_tokens(self, prompts: list[str]) -> list[int]:
        from glore_ray.engines.vllm import count_tokens

        return count_tokens(self.llm, prompts)

    def generate(self, prompts: list[str], spec: SamplingSpec,
                 adapter: str | None = None) -> list[list[Completion]]:
        from vllm import SamplingParams

        greedy = spec.temperature == 0
        params = SamplingParams(n=spec.n, temperature=spec.temperature,
                                top_p=1.0 if greedy else spec.top_p, max_tokens=spec.max_tokens,
                                seed=None if greedy else spec.seed)
        outs = self.llm.generate(prompts, params, use_tqdm=False,
                                 lora_request=self.loras[adapter] if adapter else None)
        return [[Completion(truncate_at_answer(c.text), len(c.token_ids)) for c in o.outputs]
                for o in outs]


def _hf_merged(base: str, adapter_path: str):
    """HF fallback for a LoRA refiner: the adapter merged into its own copy of the base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from glore_ray.engines.hf import HFEngine

    engine = HFEngine(base)
    engine.model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base), adapter_path).merge_and_unload().eval()
    return engine


@serve.deployment(max_ongoing_requests=64)
class Generator:
    def __init__(self, model_path: str, rollout_cfg: dict, engine: str = "auto",
                 adapters: dict[str, str] | None = None, num_cpus: float = 1.0,
                 chat: bool = False, max_model_len: int | None = None) -> None:
        from glore_ray.config import RolloutConfig
        from glore_ray.engines import make_engine, resolve_engine_name

        _limit_threads(num_cpus)
        rc = RolloutConfig.model_validate({**rollout_cfg, "engine": engine})
        self.kind = resolve_engine_name(rc.engine)
        self.engines: dict[str | None, Any] = {}
        if adapters and self.kind == "vllm":
            self.engines[None] = _VLLMMultiLoRA(model_path, adapters, rc, max_model_len)
            self.multi_lora = True
        else:
            self.engines[None] = make_engine(rc, model_path, max_model_len=max_model_len)
            for name, path in (adapters or {}).items():
                self.engines[name] = _hf_merged(model_path, path)
            self.multi_lora = False
        self.model_path = model_path
        # policy.chat_template: every prompt (policy or adapter) goes through the chat template
        self.chat_tokenizer = None
        if chat:
            from transformers import AutoTokenizer

            self.chat_tokenizer = AutoTokenizer.from_pretrained(model_path)
        log.info("Generator %s ready (%s engine, adapters %s)", model_path, self.kind,
                 list(adapters or {}))

    def reconfigure(self, config: dict) -> None:
        self._batched.set_max_batch_size(int(config.get("max_batch_size", 16)))
        self._batched.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.01)))

    async def generate(self, prompt: str, spec: SamplingSpec, adapter: str | None = None
                       ) -> list[str]:
        """``spec.n`` completion texts for one prompt (batched with concurrent callers);
        ``PromptTooLong`` when the prompt and ``spec.max_tokens`` do not fit the context."""
        out = await self._batched(GenRequest(prompt, spec, adapter))
        if isinstance(out, str):
            from glore_ray.engines.context import PromptTooLong

            raise PromptTooLong(out)
        return out

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batched(self, reqs: list[GenRequest]) -> list[list[str]]:
        # One engine call per (sampling spec, adapter) group; the engine is blocking, so it runs in
        # a thread and the replica's event loop keeps accepting (and queueing) requests.
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault((r.spec, r.adapter), []).append(i)
        out: list[list[str] | str] = [[] for _ in reqs]
        from glore_ray.engines.context import fitting

        for (spec, adapter), idx in groups.items():
            prompts = [reqs[i].prompt for i in idx]
            if self.chat_tokenizer is not None:
                prompts = [chat_prompt(p, self.chat_tokenizer) for p in prompts]
            engine = self.engines.get(adapter, self.engines[None])
            lengths = engine.count_tokens(prompts)
            ok = fitting(engine, prompts, spec.max_tokens, lengths)
            for i, f, n in zip(idx, ok, lengths):
                if not f:  # a message, not a cut completion: generate() raises it for this caller
                    out[i] = (f"the prompt is {n} tokens; with max_tokens {spec.max_tokens} it "
                              f"does not fit the model's context of {engine.max_model_len}")
            idx = [i for i, f in zip(idx, ok) if f]
            prompts = [p for p, f in zip(prompts, ok) if f]
            if not idx:
                continue
            if self.multi_lora:
                res = await asyncio.to_thread(self.engines[None].generate, prompts, spec, adapter)
            else:
                res = await asyncio.to_thread(engine.generate, prompts, spec)
            for i, comps in zip(idx, res):
                out[i] = [c.text for c in comps]
        return out

    def info(self) -> dict:
        return {"model": self.model_path, "engine": self.kind, "adapters": list(self.engines)}


@serve.deployment(max_ongoing_requests=64)
class RewardModel:
    """The scorer is ``train.vllm_scorer.make_scorer(path, scorer)`` (``serve.scorer``: hf, vllm
    or auto), or ``scorer_cls(path)`` when given (tests), with
    ``.score(questions, steps) -> per-step probabilities``."""

    def __init__(self, model_path: str, num_cpus: float = 1.0, scorer_cls: Any = None,
                 chat: bool = False, scorer: str = "hf") -> None:
        _limit_threads(num_cpus)  # first: vLLM's CPU worker makes it a no-op afterwards
        if scorer_cls is not None:
            self.scorer = scorer_cls(model_path, chat=True) if chat else scorer_cls(model_path)
        else:
            from glore_ray.train.vllm_scorer import make_scorer

            self.scorer = make_scorer(model_path, scorer, chat=chat)
        self.model_path = model_path

    def reconfigure(self, config: dict) -> None:
        self._batched.set_max_batch_size(int(config.get("max_batch_size", 16)))
        self._batched.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.01)))

    async def score(self, question: str, steps: list[list[str]]) -> list[list[float]]:
        """Per-step probabilities of each candidate (a list of steps) of one question."""
        return await self._batched((question, steps))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batched(self, reqs: list[tuple[str, list[list[str]]]]) -> list[list[list[float]]]:
        # Flatten every candidate of every request into one scorer call; empty solutions score [].
        flat = [(q, s) for q, cands in reqs for s in cands if s]
        scores = iter(await asyncio.to_thread(
            self.scorer.score, [q for q, _ in flat], [s for _, s in flat]) if flat else [])
        return [[[float(x) for x in next(scores)] if s else [] for s in cands]
                for _, cands in reqs]
