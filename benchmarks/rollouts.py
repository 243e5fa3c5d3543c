"""Rollout benchmark, one run on one machine and one tiny model (run it on quiet cores, once):

- P1: generated tokens/s, vLLM vs HF engine, through the whole Ray Data ``rollout`` stage (the
  shared-prefix workload that dominates GLoRe's cost; goal >= 4x) and the ``sample`` stage (goal
  >= 1.3x). Engine start-up is reported separately: one engine per actor for the whole stage.
- P3: the ``rollout`` stage with vLLM prefix caching on vs off (goal >= 1.8x).
- MFU of generation: 2 x params FLOPs per generated token, against the peak measured here with a
  large fp32 matmul.

All three rollout variants read the same samples (the vLLM sample stage's), so they do the same
work. Both engines get the same cores (``rollout.num_cpus`` = all of them: Ray sets the actor's
``OMP_NUM_THREADS`` from it, which is what HF generate uses).

    .venv/bin/python benchmarks/rollouts.py            # -> benchmarks/results/rollouts.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]


def peak_gflops(n: int = 4096, reps: int = 4) -> float:
    """fp32 matmul throughput on every core: the machine's practical peak."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def count_params(model_path: str) -> int:
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_path).parameters())


def rates(summary: dict) -> dict:
    """Tokens/s of a stage: end to end, with engine start-up taken out (amortised: one engine per
    actor per stage), and inside ``generate`` only."""
    start = sum(summary["engine_start_s"])
    toks = summary["generated_tokens"]
    return {"tokens": toks, "stage_s": summary["stage_seconds"], "engine_start_s": start,
            "generate_s": summary["generate_seconds"],
            "tok_s_end_to_end": round(toks / summary["stage_seconds"], 1),
            "tok_s_excl_start": round(toks / max(1e-9, summary["stage_seconds"] - start), 1),
            "tok_s_generate": round(toks / max(1e-9, summary["generate_seconds"]), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "embedded.yaml"))
    ap.add_argument("--run-dir", default="/tmp/glore-bench-rollouts")
    ap.add_argument("--n-questions", type=int, default=48)
    ap.add_argument("--k", type=int, default=8, help="samples per question and rollouts per prefix")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "rollouts.json"))
    ap.add_argument("overrides", nargs="*", help="extra dotted config overrides")
    args = ap.parse_args()

    from glore_ray.config import load_config
    from glore_ray.pipeline import RunPaths, run_stage
    from glore_ray.ray_env import init_ray
    from glore_ray.stages import rollout, sample

    ncpu = os.cpu_count() or 1
    cfg = load_config(args.config, [
        f"output_dir={args.run_dir}", "name=bench", f"rollout.n_questions={args.n_questions}",
        f"rollout.k_samples={args.k}", f"rollout.k_rollouts={args.k}", f"rollout.num_cpus={ncpu}",
        "rollout.min_actors=1", "rollout.max_actors=1", *args.overrides])
    load_before = os.getloadavg()
    peak = peak_gflops()
    print(f"peak fp32 matmul: {peak:.1f} GFLOP/s on {ncpu} cores", flush=True)
    for stage in ("data", "policy"):
        run_stage(cfg, stage)
    paths = RunPaths(cfg)
    model = paths.policy_model
    n_params = count_params(model)
    init_ray()

    root = Path(args.run_dir) / "variants"
    log = lambda m: print(m, flush=True)  # noqa: E731

    def variant(name: str, engine: str, caching: bool = True, samples: Path | None = None):
        c = cfg.model_copy(deep=True)
        c.rollout.engine, c.rollout.prefix_caching = engine, caching
        ns = SimpleNamespace(questions_train=paths.questions_train, policy=paths.policy,
                             samples=samples or root / name / "samples.parquet",
                             rollouts=root / name / "rollouts.parquet")
        (root / name).mkdir(parents=True, exist_ok=True)
        return c, ns

    results: dict = {}
    c, ns = variant("sample_vllm", "vllm")
    results["sample_vllm"] = rates(sample.run(c, ns, log))
    vllm_samples = ns.samples
    c, ns = variant("sample_hf", "hf")
    results["sample_hf"] = rates(sample.run(c, ns, log))
    for name, engine, caching in [("rollout_vllm_cache_on", "vllm", True),
                                  ("rollout_vllm_cache_off", "vllm", False),
                                  ("rollout_hf", "hf", True)]:
        c, ns = variant(name, engine, caching, samples=vllm_samples)
        s = rollout.run(c, ns, log)
        results[name] = {**rates(s), "n_rollouts": s["n_rollouts"], "n_prefixes": s["n_prefixes"]}

    import ray

    ray.shutdown()
    key = "tok_s_excl_start"
    ratio = lambda a, b: round(results[a][key] / results[b][key], 2)  # noqa: E731
    flops_per_token = 2 * n_params
    out = {
        "machine": {"cpus": ncpu, "processor": platform.processor() or platform.machine(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "workload": {"n_questions": args.n_questions, "k": args.k,
                     "max_tokens": cfg.rollout.max_tokens, "temperature": cfg.rollout.temperature,
                     "batch_size": cfg.rollout.batch_size, "block_size": cfg.rollout.block_size,
                     "dtype": cfg.rollout.dtype, "model_params": n_params},
        "peak_gflops_fp32_matmul": round(peak, 1),
        "stages": results,
        "P1_rollout_vllm_over_hf": ratio("rollout_vllm_cache_on", "rollout_hf"),
        "P1_sample_vllm_over_hf": ratio("sample_vllm", "sample_hf"),
        "P3_rollout_cache_on_over_off": ratio("rollout_vllm_cache_on", "rollout_vllm_cache_off"),
        "ratio_basis": f"{key}: generated tokens / (stage wall time - engine start-up)",
        "mfu_generation": {name: round(flops_per_token * r["tok_s_generate"] / (peak * 1e9), 5)
                           for name, r in results.items()},
        "mfu_basis": "2 x params FLOPs per generated token at tok_s_generate (prefill excluded)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    print(f"P1 rollout {out['P1_rollout_vllm_over_hf']}x (goal 4x), sample "
          f"{out['P1_sample_vllm_over_hf']}x (goal 1.3x); P3 "
          f"{out['P3_rollout_cache_on_over_off']}x (goal 1.8x); wrote {args.out}")


if __name__ == "__main__":  # vLLM spawns subprocesses
    main()
