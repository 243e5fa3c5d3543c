"""Load benchmark of the refine-and-rerank service on a local Ray cluster (127.0.0.1 only).

Phases, all in one run against the same deployed application:
  1. glore mode, @serve.batch on  (N closed-loop clients for --seconds)
  2. draft mode, @serve.batch on  (overhead of the full graph vs the greedy draft alone)
  3. glore mode, batching off     (max_batch_size=1: user_config reconfigures replicas in place)
Reports p50/p99 latency, requests/s and errors per phase, the batching speed-up (goal >= 3x) and
the glore/draft overhead, and writes benchmarks/results/serve.json.

    .venv/bin/python benchmarks/serve.py --seconds 60 --clients 16
    .venv/bin/python benchmarks/serve.py --config configs/smoke.yaml --trained   # a trained run

Without --trained it serves the smoke models (tiny policy as policy and both refiners, untrained
reward heads); the model sizes, not their quality, decide the throughput.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]


def questions(cfg, n: int, seed: int = 0) -> list[str]:
    """``n`` fresh questions of the config's generated world (its own stream, not a split)."""
    from glore_ray.data import worlds

    w = worlds.world_config(cfg.data)
    if cfg.data.source == "dependency":
        from glore_ray.data.dependency import make_problem
    else:
        from glore_ray.data.synthetic import make_problem
    rng = random.Random(f"bench-{seed}")
    return [make_problem(rng, w).question for _ in range(n)]


def load_phase(url: str, mode: str, clients: int, seconds: float, qs: list[str],
               max_tokens: int) -> dict:
    """Closed loop: each client sends its next request as soon as the previous one returns."""
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(i: int) -> None:
        s, k = requests.Session(), i
        while time.perf_counter() < stop_at:
            q = qs[k % len(qs)]
            k += clients
            t = time.perf_counter()
            try:
                r = s.post(f"{url}/solve", json={"question": q, "mode": mode,
                                                 "max_tokens": max_tokens}, timeout=300)
                ok = r.status_code == 200
                err = None if ok else f"{r.status_code} {r.text[:120]}"
            except requests.RequestException as e:
                ok, err = False, f"{type(e).__name__}: {e}"[:160]
            with lock:
                (lat.append(time.perf_counter() - t) if ok else errors.append(err))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0  # includes the requests in flight at the deadline
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    return {"mode": mode, "clients": clients, "seconds": round(wall, 1), "requests": len(lat),
            "errors": len(errors), "error_examples": errors[:3],
            "requests_per_s": round(len(lat) / wall, 3),
            "p50_s": round(q[49], 3), "p99_s": round(q[98], 3),
            "mean_s": round(statistics.fmean(lat), 3) if lat else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="per phase (spec: 60)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--engine", default="auto", choices=["auto", "vllm", "hf"])
    ap.add_argument("--config", default=str(REPO / "configs" / "smoke.yaml"))
    ap.add_argument("--trained", action="store_true", help="serve the config's trained run folder")
    ap.add_argument("--policy", help="HF folder for the smoke models (default: shipped policy)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve.json"))
    args = ap.parse_args()

    import ray
    from _helpers import free_port, make_smoke_models  # this folder: smoke models, free port
    from ray import serve

    from glore_ray.config import load_config
    from glore_ray.ray_env import init_ray
    from glore_ray.serve.app import build_app, model_paths_for, start

    overrides = ["serve.host=127.0.0.1", f"serve.port={free_port()}",
                 f"refine.max_new_tokens={args.max_tokens}", f"serve.engine={args.engine}"]
    cfg = load_config(args.config, overrides)
    work = Path(tempfile.mkdtemp(prefix="glore-serve-bench-"))
    if args.trained:
        models = model_paths_for(cfg)
    else:
        from glore_ray.train.tiny_policy import ASSETS, recipe_hash

        models = make_smoke_models(args.policy or ASSETS / recipe_hash(cfg), work)
    qs = questions(cfg, 256)
    init_ray()
    try:
        t0 = time.perf_counter()
        url = start(cfg, models)
        print(f"service up in {time.perf_counter() - t0:.0f}s at {url}", flush=True)
        results: dict = {"clients": args.clients, "seconds_per_phase": args.seconds,
                         "max_tokens": args.max_tokens, "engine": cfg.serve.engine,
                         "max_batch_size": cfg.serve.max_batch_size, "phases": {}}

        def phase(name: str, mode: str) -> None:
            load_phase(url, mode, 4, 3, qs, args.max_tokens)  # warm-up (batch shapes, caches)
            r = load_phase(url, mode, args.clients, args.seconds, qs, args.max_tokens)
            results["phases"][name] = r
            print(f"{name:>14}: {r['requests_per_s']:.2f} req/s  p50 {r['p50_s']:.2f}s  "
                  f"p99 {r['p99_s']:.2f}s  errors {r['errors']} ({r['requests']} ok)", flush=True)

        phase("glore_batched", "glore")
        phase("draft_batched", "draft")
        # Batching off: same deployments, max_batch_size=1 (a user_config change: no restart).
        cfg_off = load_config(args.config, overrides + ["serve.max_batch_size=1",
                                                        f"serve.port={cfg.serve.port}"])
        serve.run(build_app(cfg_off, models), name="glore", route_prefix="/")
        phase("glore_unbatched", "glore")

        p = results["phases"]
        results["batching_speedup"] = round(
            p["glore_batched"]["requests_per_s"] / max(p["glore_unbatched"]["requests_per_s"],
                                                       1e-9), 2)
        results["glore_vs_draft_latency_p50"] = round(
            p["glore_batched"]["p50_s"] / p["draft_batched"]["p50_s"], 2)
        results["glore_vs_draft_throughput"] = round(
            p["draft_batched"]["requests_per_s"] / max(p["glore_batched"]["requests_per_s"],
                                                       1e-9), 2)
        results["errors_total"] = sum(x["errors"] for x in p.values())
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(json.dumps({k: v for k, v in results.items() if k != "phases"}, indent=2))
        print(f"wrote {args.out}")
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
