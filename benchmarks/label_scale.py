"""Label-stage scale benchmark: wall time and memory of the real ``label`` stage on N rollouts.

    .venv/bin/python benchmarks/label_scale.py --rollouts 1000000 \
        --out benchmarks/results/label_scale_1m.json [--k-rollouts 4] [--k-samples 4] [--seed 0]
        [--keep DIR]

No model: the script writes a synthetic run folder holding exactly what the label stage reads, in
the formats the real stages write — ``data/train.parquet`` (``records.Question``, arithmetic-world
oracle included), ``sample/samples.parquet/`` and ``rollout/rollouts.parquet/`` (folders of parts,
``sample.SAMPLE_SCHEMA`` / ``rollout.ROLLOUT_SCHEMA``). Solutions are arithmetic chains of 2–6 steps
``a op b = c`` (each result feeds the next step) and a ``#### n`` line; ~40% of samples are right,
a wrong one has an arithmetic slip (or a wrong answer line) and carries the wrong value on. Every
prefix gets K rollouts: from a right prefix each is right with a per-question probability
(0.35–0.9), from a wrong one only a "restart" (re-derives the chain from scratch, sometimes saying
the slip's value) is right, with probability 0.15. So labels are mixed and every cleaning rule
(intermediate check, monotone, balance) and all four sets get rows. Questions/samples are chosen
so that the rollouts total exactly N (N must be a multiple of K); data are written in chunks, so
the generator's own memory stays small.

The stage then runs in a child process — ``glore_ray.ray_env.init_ray()``, ``label.run(cfg,
RunPaths(cfg))``, ``ray.shutdown()`` — so the child is the Ray driver whose memory is measured:
``seconds`` (the ``label.run`` call, timed in the child), ``driver_peak_rss_mib`` (the child's RSS
sampled every 0.1 s from here), ``driver_maxrss_mib`` (the child's own ``ru_maxrss``) and
``worker_peak_rss_mib`` (the largest RSS of any Ray worker process ``ray::...`` among the child's
descendants; raylet, gcs_server and the other Ray system processes are reported apart). The
child's ``glore_ray`` is whichever one ``PYTHONPATH`` puts first: its path and git commit are in
the result. The run folder goes under /tmp and is deleted afterwards unless ``--keep DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024

# ------------------------------------------------------------------ the synthetic run folder

NAMES = ["Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Ben"]
OBJECTS = ["apples", "shells", "stickers", "coins", "marbles", "books", "cards", "beads"]
PHRASE = {"+": "{P} buys {b} more {o}.", "-": "{P} gives away {b} {o}.",
          "*": "Then the number of {o} is multiplied by {b}."}
APPLY = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}


def make_question(rng: random.Random, qid: str) -> tuple[dict, list[tuple[int, str, int, int]]]:
    """A Question row and its gold chain [(a, op, b, c)] of 2–6 steps."""
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    value = rng.randint(2, 99)
    text, chain = [f"{name} has {value} {obj}."], []
    for _ in range(rng.randint(2, 6)):
        op = rng.choice(("+-*" if value < 300 else "+-") if value > 3 else "+*")
        b = (rng.randint(2, 3) if op == "*"
             else rng.randint(2, min(99, value - 1) if op == "-" else 99))
        c = APPLY[op](value, b)
        text.append(PHRASE[op].format(P=name, b=b, o=obj))
        chain.append((value, op, b, c))
        value = c
    text.append(f"How many {obj} does {name} have now?")
    gold = "\n".join([f"{a} {op} {b} = {c}" for a, op, b, c in chain] + [f"#### {value}"])
    return ({"qid": qid, "question": " ".join(text), "answer": str(value), "gold_solution": gold,
             "oracle": json.dumps(chain)}, chain)


def run_chain(chain, start: int, begin: int, slip: int | None, rng: random.Random) -> list[str]:
    """Lines of the chain from step ``begin`` on, starting at value ``start``, with an arithmetic
    slip at step ``slip`` (``len(chain)`` = the answer line) and the result carried on."""
    lines, v = [], start
    for j in range(begin, len(chain)):
        _, op, b, _ = chain[j]
        c = APPLY[op](v, b) + (rng.choice([-10, -2, -1, 1, 2, 10]) if j == slip else 0)
        lines.append(f"{v} {op} {b} = {c}")
        v = c
    off = rng.choice([-3, -1, 1, 3]) if slip == len(chain) else 0
    return lines + [f"#### {v + off}"]


def make_sample(q: dict, chain, sid: int, n_lines: int, rng: random.Random) -> tuple[dict, dict]:
    """A sample row with ``n_lines`` calculation lines (fewer than the chain only to make the total
    come out at N: then it answers too early), and what its rollouts need to know."""
    n = len(chain)
    slip = None if rng.random() < 0.4 or n_lines < n else rng.choice(list(range(n)) + [n])
    lines = run_chain(chain, chain[0][0], 0, slip, rng)
    values = [chain[0][0]] + [int(ln.rsplit(" ", 1)[1]) for ln in lines[:-1]]
    if n_lines < n:
        lines = lines[:n_lines] + [f"#### {values[n_lines]}"]
    answer = lines[-1].split()[-1]
    correct = answer == q["answer"]
    first_wrong = -1 if correct else (n_lines if n_lines < n else slip)
    text = "\n".join(lines)
    row = {"qid": q["qid"], "sample_id": sid, "text": text, "steps": lines, "final_answer": answer,
           "correct": correct, "oracle_first_wrong": first_wrong, "n_tokens": len(text.split())}
    return row, {"values": values, "first_wrong": n if correct else first_wrong}


def make_rollouts(q: dict, chain, sample: dict, info: dict, k: int, p_good: float,
                  rng: random.Random) -> list[dict]:
    """K rollout rows for every prefix (every line but the ``####`` one) of one sample."""
    rows, n = [], len(chain)
    for i in range(len(sample["steps"]) - 1):
        good = i < info["first_wrong"]
        for kk in range(k):
            if good:  # continue from the prefix's (right) value
                ok = rng.random() < p_good
                slip = None if ok else rng.randint(i + 1, n)
                lines = run_chain(chain, info["values"][i + 1], i + 1, slip, rng)
            elif rng.random() < 0.15:  # a restart that recovers the right answer
                lines = run_chain(chain, chain[0][0], 0, None, rng)
                if rng.random() < 0.3:
                    lines = [f"{info['values'][i + 1]} is wrong, start again"] + lines
            else:  # carry the wrong value on
                lines = run_chain(chain, info["values"][i + 1], i + 1, None, rng)
            text = "\n".join(lines)
            fa = lines[-1].split()[-1]
            rows.append({"qid": q["qid"], "sample_id": sample["sample_id"], "step_idx": i,
                         "k": kk, "text": text, "correct": fa == q["answer"], "final_answer": fa,
                         "n_tokens": len(text.split())})
    return rows


def write_run(root: Path, n_rollouts: int, k_samples: int, k: int, seed: int,
              chunk_rollouts: int = 100_000) -> dict:
    """The label stage's inputs under ``root``; returns their counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        from glore_ray.stages.rollout import ROLLOUT_SCHEMA
        from glore_ray.stages.sample import SAMPLE_SCHEMA
    except ImportError:  # before one module per stage: both in stages/rollout.py, or earlier
        try:
            from glore_ray.stages.rollout import ROLLOUT_SCHEMA, SAMPLE_SCHEMA
        except ImportError:  # before the stages/ layout
            from glore_ray.rollout import ROLLOUT_SCHEMA, SAMPLE_SCHEMA

    if n_rollouts % k:
        raise SystemExit(f"--rollouts {n_rollouts} is not a multiple of --k-rollouts {k}")
    q_schema = pa.schema([(n, pa.string()) for n in
                          ("qid", "question", "answer", "gold_solution", "oracle")])
    for d in ("data", "sample/samples.parquet", "rollout/rollouts.parquet"):
        (root / d).mkdir(parents=True)
    qwriter = pq.ParquetWriter(root / "data" / "train.parquet", q_schema)
    rng = random.Random(f"label-scale-{seed}")
    left = n_rollouts // k  # prefixes still to make
    buf: dict[str, list] = {"q": [], "s": [], "r": []}
    counts = {"questions": 0, "samples": 0, "rollouts": 0, "steps": 0, "correct_samples": 0,
              "rollout_chars": 0, "parts": 0}

    def flush() -> None:
        part = f"part-{counts['parts']:05d}.parquet"
        qwriter.write_table(pa.Table.from_pylist(buf["q"], schema=q_schema))
        pq.write_table(pa.Table.from_pylist(buf["s"], schema=SAMPLE_SCHEMA),
                       root / "sample" / "samples.parquet" / part)
        pq.write_table(pa.Table.from_pylist(buf["r"], schema=ROLLOUT_SCHEMA),
                       root / "rollout" / "rollouts.parquet" / part)
        counts["parts"] += 1
        for v in buf.values():
            v.clear()

    while left > 0:
        q, chain = make_question(rng, f"bench-{counts['questions']:07d}")
        counts["questions"] += 1
        buf["q"].append(q)
        p_good = rng.uniform(0.35, 0.9)
        for sid in range(k_samples):
            if left == 0:
                break
            s, info = make_sample(q, chain, sid, min(len(chain), left), rng)
            left -= len(s["steps"]) - 1
            rs = make_rollouts(q, chain, s, info, k, p_good, rng)
            buf["s"].append(s)
            buf["r"] += rs
            counts["samples"] += 1
            counts["steps"] += len(s["steps"])
            counts["correct_samples"] += s["correct"]
            counts["rollouts"] += len(rs)
            counts["rollout_chars"] += sum(len(r["text"]) for r in rs)
        if len(buf["r"]) >= chunk_rollouts:
            flush()
    if buf["q"]:
        flush()
    qwriter.close()
    assert counts["rollouts"] == n_rollouts, counts
    counts["input_mib"] = round(sum(f.stat().st_size for f in root.rglob("*.parquet")
                                    if f.is_file()) / MIB, 1)
    return counts


# ------------------------------------------------------------------ the child: one Ray driver

def child(overrides: list[str], result_path: str) -> None:
    """Run the real label stage as a Ray driver and write its timing to ``result_path``."""
    import ray

    import glore_ray
    from glore_ray import ray_env
    try:
        from glore_ray.stages import label
    except ImportError:  # the code before the stages/ layout (the 'before' measurement)
        from glore_ray import label
    from glore_ray.config import load_config
    from glore_ray.pipeline import RunPaths

    pkg = Path(glore_ray.__file__).resolve().parent
    print(f"[child] glore_ray from {pkg}", flush=True)
    git = lambda *a: subprocess.run(["git", "-C", str(pkg), *a], capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    cfg = load_config(None, overrides)
    ray_env.init_ray()
    t0 = time.perf_counter()
    summary = label.run(cfg, RunPaths(cfg), lambda m: print(m, flush=True))
    seconds = time.perf_counter() - t0
    ray.shutdown()
    Path(result_path).write_text(json.dumps({
        "seconds": seconds, "summary": summary, "glore_ray_file": glore_ray.__file__,
        "git_commit": git("rev-parse", "HEAD") or None,
        "git_dirty_package": bool(git("status", "--porcelain", "--", ".")),
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, default=str))


def _is_worker(p) -> bool:
    try:
        return " ".join(p.cmdline()).startswith("ray::")
    except Exception:
        return False


def measure(cmd: list[str], interval: float = 0.1) -> dict:
    """Run ``cmd``; sample its RSS and its descendants' every ``interval`` seconds."""
    import psutil

    proc = subprocess.Popen(cmd)
    me = psutil.Process(proc.pid)
    peak = {"driver": 0, "worker": 0, "workers_sum": 0, "system_sum": 0}
    workers_seen: set[int] = set()
    while proc.poll() is None:
        try:
            peak["driver"] = max(peak["driver"], me.memory_info().rss)
            kids = me.children(recursive=True)
        except psutil.Error:
            break
        wsum = ssum = 0
        for c in kids:
            try:
                rss = c.memory_info().rss
            except psutil.Error:
                continue
            if _is_worker(c):
                workers_seen.add(c.pid)
                peak["worker"] = max(peak["worker"], rss)
                wsum += rss
            else:
                ssum += rss
        peak["workers_sum"] = max(peak["workers_sum"], wsum)
        peak["system_sum"] = max(peak["system_sum"], ssum)
        time.sleep(interval)
    rc = proc.wait()
    if rc:
        raise SystemExit(f"label stage child failed with exit code {rc}")
    return {**{k: round(v / MIB, 1) for k, v in peak.items()}, "workers_seen": len(workers_seen)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(json.loads(sys.argv[2]), sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rollouts", type=int, required=True)
    ap.add_argument("--k-rollouts", type=int, default=4)
    ap.add_argument("--k-samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="write the run folder here and keep it")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "label_scale.json"))
    args = ap.parse_args()

    base = (Path(args.keep) if args.keep
            else Path(tempfile.mkdtemp(prefix="label-scale-", dir="/tmp")))
    name = "bench"
    try:
        t0 = time.perf_counter()
        counts = write_run(base / name, args.rollouts, args.k_samples, args.k_rollouts, args.seed)
        gen_s = time.perf_counter() - t0
        gen_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"wrote {counts} to {base / name} in {gen_s:.1f}s", flush=True)
        overrides = [f"name={name}", f"output_dir={base}", "data.source=synthetic",
                     f"rollout.k_samples={args.k_samples}", f"rollout.k_rollouts={args.k_rollouts}",
                     f"seed={args.seed}"]
        result = base / "child_result.json"
        mem = measure([sys.executable, __file__, "--child", json.dumps(overrides), str(result)])
        res = json.loads(result.read_text())
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    summary = res["summary"]
    out = {
        "benchmark": "label stage at scale (synthetic run folder, no model)",
        "rollouts": counts["rollouts"], "samples": counts["samples"],
        "questions": counts["questions"], "steps": counts["steps"],
        "sample_accuracy": round(counts["correct_samples"] / counts["samples"], 4),
        "k_samples": args.k_samples, "k_rollouts": args.k_rollouts, "seed": args.seed,
        "input_parquet_mib": counts["input_mib"], "input_parts": counts["parts"],
        "mean_rollout_text_chars": round(counts["rollout_chars"] / counts["rollouts"], 1),
        "generate_seconds": round(gen_s, 1), "generator_maxrss_mib": round(gen_rss, 1),
        "seconds": round(res["seconds"], 2),
        "rollouts_per_s": round(counts["rollouts"] / res["seconds"], 1),
        "driver_peak_rss_mib": mem["driver"], "driver_maxrss_mib": round(res["maxrss_mib"], 1),
        "worker_peak_rss_mib": mem["worker"] if mem["workers_seen"] else None,
        "workers_seen": mem["workers_seen"], "workers_sum_peak_rss_mib": mem["workers_sum"],
        "ray_system_sum_peak_rss_mib": mem["system_sum"],
        "glore_ray_file": res["glore_ray_file"], "git_commit": res["git_commit"],
        "git_dirty_package": res["git_dirty_package"],
        "sets": {k: {s: v[s] for s in ("train", "eval")} for k, v in summary["sets"].items()
                 if isinstance(v, dict)},
        "trl_rows": summary["sets"]["sorm"].get("trl"),
        "cleaning": summary["cleaning"],
        "label_summary": {k: summary[k] for k in ("n_samples", "n_rollouts", "n_steps",
                                                  "sorm_positive_steps", "sorm_negative_steps")},
        "sorm_vs_oracle": summary.get("oracle_quality", {}).get("sorm"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join([Path(sys.executable).name, "benchmarks/label_scale.py",
                             *sys.argv[1:]]),
        "pythonpath": os.environ.get("PYTHONPATH"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("rollouts", "seconds", "rollouts_per_s",
                                          "driver_peak_rss_mib", "driver_maxrss_mib",
                                          "worker_peak_rss_mib", "sets", "cleaning",
                                          "glore_ray_file", "git_commit")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
