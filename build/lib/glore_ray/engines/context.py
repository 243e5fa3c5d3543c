"""How long a prompt may be: the model's own context, checked before anything is submitted.

A prompt whose tokens plus ``max_tokens`` do not fit the context would be rejected by vLLM or,
worse, generate until the context is full and stop without its ``#### n`` line — graded wrong, a
false-negative label with no message. So the engines' callers ask ``fitting`` first and skip (and
count) what cannot fit; nothing is ever cut.

    resolve_max_model_len("runs/x/policy/model", None, cap=4096)  # the model's 512 -> 512
    fitting(engine, prompts, max_tokens=128)                      # [True, False, ...]
"""

from __future__ import annotations


class PromptTooLong(ValueError):
    """A prompt whose tokens plus the tokens to generate exceed the model's context."""


def model_context(model_path: str, local_only: bool = False) -> int | None:
    """The model's own context length (``max_position_embeddings`` or its aliases), if it says
    (``local_only``: from a local folder or the hub cache, never a download)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(model_path), local_files_only=local_only)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    return None


def resolve_max_model_len(model_path: str, requested: int | None, cap: int) -> int:
    """``requested`` (``rollout.max_model_len`` / ``serve.max_model_len``) if set, else the
    model's own context capped at ``cap`` (the KV cache grows with it). A request above the
    model's context is an error: its position embeddings end there."""
    own = model_context(model_path)
    if own and requested is not None and requested > own:
        raise ValueError(f"max_model_len={requested} is longer than the context of {model_path} "
                         f"({own} tokens)")
    return choose_max_model_len(own, requested, cap)


def choose_max_model_len(own: int | None, requested: int | None, cap: int) -> int:
    """The rule: ``requested`` if set, else the model's own context (``own``) capped at ``cap``."""
    if requested is not None:
        return requested
    return min(own, cap) if own else cap


def fitting(engine, prompts: list[str], max_tokens: int,
            lengths: list[int] | None = None) -> list[bool]:
    """Whether each prompt's tokens (``lengths``, counted here when not given) plus
    ``max_tokens`` fit ``engine.max_model_len``."""
    lengths = engine.count_tokens(prompts) if lengths is None else lengths
    return [n + max_tokens <= engine.max_model_len for n in lengths]


def too_long_message(n_skipped: int, n_total: int, max_tokens: int, max_model_len: int,
                     what: str) -> str:
    return (f"{n_skipped} of {n_total} {what} do not fit the context: prompt + max_tokens "
            f"({max_tokens}) > max_model_len ({max_model_len}); raise rollout.max_model_len (up "
            f"to the model's context) or lower rollout.max_tokens")
