"""The main engine: ``vllm.LLM`` (CPU build here, CUDA build on clusters, same code).

K completions per prompt come from ``SamplingParams(n=K)``: the prompt is prefilled once and its
KV blocks are shared by the K children; with prefix caching on, the prefixes of one sample (which
share the question and their earlier steps) reuse each other's blocks too.
"""

from __future__ import annotations

import os
import time

from glore_ray.engines.base import Completion, SamplingSpec, truncate_at_answer


class VLLMEngine:
    name = "vllm"

    def __init__(self, model_path: str, dtype: str = "float32", prefix_caching: bool = True,
                 block_size: int = 32, enforce_eager: bool = True, kv_cache_gib: float = 2.0,
                 seed: int = 0, max_model_len: int = 512, gpu_memory_utilization: float = 0.5):
        set_engine_env(kv_cache_gib)
        from vllm import LLM

        t0 = time.perf_counter()
        kwargs = dict(model=str(model_path), dtype=dtype, enable_prefix_caching=prefix_caching,
                      block_size=block_size, enforce_eager=enforce_eager, seed=seed,
                      max_model_len=max_model_len,
                      # Chunked prefill splits a long batch's prompts across steps and rewinds
                      # the per-request generator of a split one: on CPU torch generators that
                      # raises "CPU Generator does not use offset" and kills the engine (seen
                      # here with seeded n=8 rollout batches). Whole prompts only, then.
                      enable_chunked_prefill=False,
                      max_num_batched_tokens=max(2048, max_model_len))
        if _on_gpu():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = LLM(**kwargs)
        self.max_model_len = max_model_len
        self.start_seconds = time.perf_counter() - t0

    def count_tokens(self, prompts: list[str]) -> list[int]:
        return count_tokens(self.llm, prompts)

    def generate(self, prompts: list[str], spec: SamplingSpec,
                 seeds: list[int] | None = None) -> list[list[Completion]]:
        """``seeds`` (one per prompt) make each prompt's K samples independent of what else is in
        the batch; without them every prompt uses ``spec.seed``."""
        from vllm import SamplingParams

        if not prompts:
            return []
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        greedy = spec.temperature == 0
        params = [SamplingParams(n=spec.n, temperature=spec.temperature,
                                 top_p=1.0 if greedy else spec.top_p,
                                 max_tokens=spec.max_tokens,
                                 seed=None if greedy else (seeds[i] if seeds else spec.seed))
                  for i in range(len(prompts))]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[Completion(truncate_at_answer(c.text), len(c.token_ids))
                 for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]


def count_tokens(llm, prompts: list[str]) -> list[int]:
    """Prompt tokens as a ``vllm.LLM`` will see them (its own tokenizer, special tokens too)."""
    return [len(ids) for ids in llm.get_tokenizer()(prompts)["input_ids"]] if prompts else []


def set_engine_env(kv_cache_gib: float) -> None:
    """Environment a vLLM engine reads at construction; call it before building ``LLM``."""
    # The CPU build sizes its KV cache from this variable (whole GiB) and otherwise tries to take
    # 92% of RAM; a value already in the environment (ray_env.WORKER_ENV) is overridden by the
    # config so one config gives one behaviour.
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(kv_cache_gib)))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if not _on_gpu():
        # On CPU run the engine core in this process: its own EngineCore + worker processes cost
        # ~16 s of start per actor here, and their teardown killed the actor's multiprocessing
        # resource tracker, so every actor exit printed KeyError tracebacks into the run log.
        # Same samples either way (checked on the smoke run). GPU keeps vLLM's default: a
        # separate core process overlaps scheduling with GPU compute.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _on_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
