"""P5: step time and peak memory per worker for DDP, ZeRO-2 and ZeRO-3 on the same model and data,
in one run, on a real local Ray cluster (Ray Train TorchTrainer, gloo); plus training MFU.

    .venv/bin/python benchmarks/training.py --steps 12 --out benchmarks/results/training.json

The model is a random Llama larger than the tiny policy (default ~20M parameters) so that what
ZeRO partitions (gradients, Adam moments) is visible next to the ~1 GiB a worker process costs
anyway. Step time = median gap between consecutive step reports, excluding the first step, the
eval step and the checkpoint steps. MFU = 6 * params * tokens/s / (measured fp32 matmul peak of one
thread x workers): on CPU the "peak" is what torch reaches on this machine, not a datasheet value.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_policy(folder: Path, hidden: int, layers: int, inter: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from glore_ray.data import synthetic
    from glore_ray.tokenizer import build_tokenizer

    tok = build_tokenizer(synthetic.vocabulary())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                      num_key_value_heads=max(1, hidden // 64), max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def matmul_peak_flops(n: int = 1024, reps: int = 10) -> float:
    """fp32 GEMM FLOP/s of one thread (each Ray Train worker here gets one CPU)."""
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def step_times(history: list[dict], ckpt_every: int) -> list[float]:
    rows = sorted((h for h in history if h.get("resumed_from", -1) == -1), key=lambda h: h["step"])
    out = []
    for prev, cur in zip(rows, rows[1:]):
        if cur["step"] != prev["step"] + 1 or prev["step"] < 1:
            continue
        if "eval_loss" in cur or cur["step"] % ckpt_every == 0 or prev["step"] % ckpt_every == 0:
            continue  # eval or checkpoint time would blur the step time
        out.append(cur["elapsed_s"] - prev["elapsed_s"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--configs", default="ddp,zero2,zero3")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "training.json"))
    args = ap.parse_args()

    import ray
    from _helpers import write_synthetic_sets  # this folder: the label stage's stand-in

    from glore_ray.ray_env import init_ray
    from glore_ray.train.loop import LoopSpec
    from glore_ray.train.ray_trainer import fit

    work = Path(tempfile.mkdtemp(prefix="glore-bench-train-"))
    n_params = make_policy(work / "policy", args.hidden, args.layers, args.intermediate)
    # enough rows that every worker runs --steps micro-batches within one epoch
    n_q = (args.steps + 2) * args.batch_size * args.workers // 3 + 8
    sets = write_synthetic_sets(work / "sets", n_q, eval_fraction=0.05)
    peak = matmul_peak_flops()
    init_ray()
    ckpt_every = 10**6  # only the final checkpoint: we time steps, not saves
    results: dict = {"n_params": n_params, "workers": args.workers, "batch_size": args.batch_size,
                     "steps": args.steps, "matmul_peak_flops_per_worker": peak, "configs": {}}
    for name in args.configs.split(","):
        engine, stage = ("ddp", 0) if name == "ddp" else ("deepspeed", int(name[-1]))
        spec = LoopSpec(name=f"bench_{name}", kind="reward", policy=str(work / "policy"),
                        batch_size=args.batch_size, max_steps=args.steps, epochs=1,
                        engine=engine, zero_stage=stage, checkpoint_every=ckpt_every,
                        log_every=1, warmup_ratio=0.0)
        t0 = time.time()
        s = fit(spec, sets["orm"] / "train.parquet", sets["orm"] / "eval.parquet",
                storage=work / "ray", out_dir=work / "out" / name, num_workers=args.workers,
                max_failures=0)
        gaps = step_times(s["history"], ckpt_every)
        last = s["history"][-1]
        tok_s = statistics.median(h["tokens_per_s"] for h in s["history"]
                                  if "eval_loss" not in h and h["step"] > 1)
        results["configs"][name] = {
            "step_time_s": statistics.median(gaps) if gaps else None, "step_times_s": gaps,
            "tokens_per_s": tok_s, "peak_mem_mib_per_worker": last["peak_mem_mib"],
            "mem_before_model_mib": last["base_mem_mib"], "setup_s": last["setup_s"],
            "wall_s": round(time.time() - t0, 1),
            "mfu": 6 * n_params * tok_s / (peak * args.workers)}
        print(json.dumps({name: results["configs"][name]}, default=str), flush=True)
    ray.shutdown()
    c = results["configs"]
    if c.get("ddp", {}).get("step_time_s") and c.get("zero2", {}).get("step_time_s"):
        results["zero2_over_ddp"] = c["zero2"]["step_time_s"] / c["ddp"]["step_time_s"]
        results["goal_zero2_le_1.3x_ddp"] = results["zero2_over_ddp"] <= 1.3
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    _plot(results, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["configs"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    a.bar(names, [results["configs"][n]["step_time_s"] or 0 for n in names])
    a.set_ylabel("s / step")
    a.set_title("step time")
    b.bar(names, [results["configs"][n]["peak_mem_mib_per_worker"] for n in names])
    b.set_ylabel("MiB")
    b.set_title("peak memory per worker")
    fig.suptitle(f"{results['n_params'] / 1e6:.1f}M params, {results['workers']} CPU workers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
