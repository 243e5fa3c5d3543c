"""The generation pool of the stages that generate (sample, rollout, evaluate, the policy's SFT
check): Ray Data actors that each hold one engine.

Each actor builds one engine (vLLM, or HF ``generate`` as the fallback) in ``__init__`` and keeps
it for the whole stage; Ray Data streams batches of ``rollout.batch_size`` rows through an
autoscaling pool of ``rollout.min_actors..max_actors`` actors that each ask for
``rollout.num_cpus`` CPUs and ``rollout.num_gpus`` GPUs, and writes the results as Parquet parts.
There is no driver-side loop over prompts: the driver only builds the dataset and waits.

Fault tolerance: a pool actor that dies is restarted (its engine rebuilt) and its in-flight batch
is retried; a batch's rows only reach the writer when its task succeeds, so each expected row is
written exactly once, and the stage checks the count before committing its output folder.
The restarts are bounded (``rollout.max_actor_restarts``): a batch that kills every actor it
meets (a deterministic OOM) stops the stage with one line naming it, instead of looping.
For tests, ``GLORE_FAULT_EXIT_AFTER_BATCHES=N`` with ``GLORE_FAULT_MARKER=<file>`` in the driver's
environment makes an actor ``os._exit(1)`` at its (N+1)-th batch, once (the marker records it);
``GLORE_FAULT_MARKER=always`` makes every actor die there.
"""

from __future__ import annotations

import math
import os
import time
import zlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from glore_ray.config import RunConfig
from glore_ray.records import atomic_dir, commit_dir

# The sampling fields every generating stage reads (engine and sampler; the pool is all knobs).
SAMPLING_READS = ("rollout.engine", "rollout.dtype", "rollout.temperature", "rollout.top_p",
                  "rollout.max_model_len", "rollout.context_cap")  # what fits the context
_FAULT_ENV = ("GLORE_FAULT_EXIT_AFTER_BATCHES", "GLORE_FAULT_MARKER")


def request_seed(base: int, *key: Any) -> int:
    """A deterministic per-request seed: reruns and retries give the same rows."""
    return zlib.crc32(repr((base, *key)).encode()) & 0x7FFFFFFF


# ------------------------------------------------------------------ the Ray Data actors

class EngineActor:
    """One engine per actor for the whole stage; reports its start-up and work to ``stats``."""

    def __init__(self, rollout_cfg: dict, model_path: str, seed: int, stats=None,
                 fault: dict | None = None, chat: bool = False):
        from glore_ray.config import RolloutConfig
        from glore_ray.engines import make_engine

        self.cfg = RolloutConfig.model_validate(rollout_cfg)
        self.seed, self.stats, self.fault, self.n_batches = seed, stats, fault, 0
        self.engine = make_engine(self.cfg, model_path, seed=seed, chat=chat)
        if stats is not None:
            stats.add.remote(engine_start_s=[round(self.engine.start_seconds, 2)],
                             engine=self.engine.name)

    def _maybe_die(self, first_key: str = "") -> None:
        """Note the batch this actor works on (``stats.in_flight``, for the error a batch that
        keeps killing actors gets); fault injection for the tests: exit hard, mid-stage (see the
        module docstring)."""
        self.n_batches += 1
        if self.stats is not None:
            import ray

            ray.get(self.stats.start.remote(os.getpid(), first_key))
        if self.fault and self.n_batches > self.fault["after"]:
            if self.fault["marker"] == "always":
                os._exit(1)
            marker = Path(self.fault["marker"])
            if not marker.exists():
                marker.write_text(f"pid {os.getpid()} exited at batch {self.n_batches}\n")
                os._exit(1)

    def _batch_done(self) -> None:
        if self.stats is not None:
            self.stats.done.remote(os.getpid())

    def _generate(self, prompts: list[str], n: int, seeds: list[int], keys: list[str]):
        """``n`` completions per prompt; ``None`` for a prompt that cannot fit the context with
        ``max_tokens`` (engines.context): it is skipped, never cut, and its key (a qid, or
        qid/sample/step) reported to ``stats``."""
        from glore_ray.engines import spec_from_config
        from glore_ray.engines.context import fitting

        spec = spec_from_config(self.cfg, n)
        keep = [i for i, ok in enumerate(fitting(self.engine, prompts, spec.max_tokens)) if ok]
        t0 = time.perf_counter()
        outs = self.engine.generate([prompts[i] for i in keep], spec,
                                    seeds=[seeds[i] for i in keep]) if keep else []
        full: list = [None] * len(prompts)
        for i, o in zip(keep, outs):
            full[i] = o
        if self.stats is not None:
            self.stats.add.remote(gen_s=time.perf_counter() - t0, batches=1, prompts=len(prompts),
                                  tokens=sum(c.n_tokens for o in outs for c in o),
                                  skipped=[k for k, o in zip(keys, full) if o is None],
                                  max_model_len=self.engine.max_model_len)
        return full


class TextActor(EngineActor):
    """Rows ``{i, prompt, seed}`` in, ``{i, texts}`` out: plain generation for other stages
    (``generate_texts``) with the same engines and pool."""

    def __init__(self, rollout_cfg: dict, model_path: str, seed: int, spec: dict, stats=None,
                 fault: dict | None = None, chat: bool = False):
        from glore_ray.engines import SamplingSpec

        super().__init__(rollout_cfg, model_path, seed, stats, fault, chat)
        self.spec = SamplingSpec(**spec)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from glore_ray.engines.context import fitting

        rows = batch.to_pylist()
        ok = fitting(self.engine, [r["prompt"] for r in rows], self.spec.max_tokens)
        keep = [r for r, f in zip(rows, ok) if f]
        outs = iter(self.engine.generate([r["prompt"] for r in keep], self.spec,
                                         seeds=[r["seed"] for r in keep]) if keep else [])
        # a prompt over the context gets no completion (an empty list), never a cut one
        return pa.table({"i": [r["i"] for r in rows],
                         "texts": [[c.text for c in next(outs)] if f else [] for f in ok]},
                        schema=pa.schema([("i", pa.int64()), ("texts", pa.list_(pa.string()))]))


def stats_actor():
    """A tiny actor the pool reports to: engine start-up per actor, tokens, generation time."""
    import ray

    @ray.remote(num_cpus=0)
    class StageStats:
        def __init__(self):
            self.d: dict[str, Any] = {"engine_start_s": [], "gen_s": 0.0, "batches": 0,
                                      "prompts": 0, "tokens": 0, "engine": None, "skipped": [],
                                      "max_model_len": None}

        def add(self, **kw) -> None:
            for k, v in kw.items():
                self.d[k] = v if k in ("engine", "max_model_len") else self.d[k] + v

        def start(self, pid: int, batch: str) -> None:
            self.d.setdefault("in_flight", {})[pid] = batch

        def done(self, pid: int) -> None:
            self.d.setdefault("in_flight", {}).pop(pid, None)

        def get(self) -> dict:
            return self.d

    return StageStats.remote()


# ------------------------------------------------------------------ the pool

def _fault_from_env() -> dict | None:
    after, marker = (os.environ.get(k) for k in _FAULT_ENV)
    return {"after": int(after), "marker": marker} if after and marker else None


def map_generate(ds, actor_cls: type, cfg: RunConfig, model_path: str, stats, **kwargs):
    import ray

    r = cfg.rollout
    return ds.map_batches(
        actor_cls, batch_size=r.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=r.min_actors, max_size=r.max_actors),
        num_cpus=r.num_cpus, num_gpus=r.num_gpus,
        # Ray Data's defaults are -1/-1 (a dead actor replaced, its batch retried, forever): a
        # batch that deterministically kills its actor would loop. A Python error in a batch
        # still fails the stage at once: it is not retried.
        max_restarts=r.max_actor_restarts, max_task_retries=r.max_actor_restarts,
        fn_constructor_kwargs={"rollout_cfg": r.model_dump(mode="json"),
                               "model_path": model_path, "seed": cfg.seed, "stats": stats,
                               "fault": _fault_from_env(), "chat": cfg.policy.chat_template,
                               **kwargs})


def write_parts(ds, final: Path, expected, what: str, schema: pa.Schema, stats=None,
                max_restarts: int = 0) -> int:
    """Stream ``ds`` to Parquet parts in a temp folder; commit it only when the count is right
    (``expected``: a number, None, or a function called after the write: what was skipped is
    only known then)."""
    tmp = atomic_dir(final)
    try:
        ds.write_parquet(str(tmp))
    except Exception as e:
        if stats is not None and "ActorDiedError" in f"{type(e).__name__} {e}":
            import ray

            batches = sorted(set(ray.get(stats.get.remote()).get("in_flight", {}).values()))
            raise RuntimeError(
                f"{what}: a generation actor died more than rollout.max_actor_restarts="
                f"{max_restarts} times; the batch(es) it was on: {batches[:3]} (out of memory on "
                f"a long batch? lower rollout.batch_size or rollout.max_tokens)") from None
        raise
    if callable(expected):
        expected = expected()
    parts = list(tmp.glob("*.parquet"))
    if not parts:  # nothing generated (e.g. budgeted, all samples correct): still a readable table
        pq.write_table(schema.empty_table(), tmp / "empty.parquet")
    n = sum(pq.read_metadata(str(f)).num_rows for f in parts)
    if expected is not None and n != expected:
        raise RuntimeError(f"{what}: wrote {n} rows, expected {expected}; output not committed")
    commit_dir(tmp, final)
    return n


def n_blocks(n_rows: int, batch_size: int) -> int:
    # About one block per batch, so an autoscaling pool sees a queue of work to scale on.
    return max(1, min(1000, math.ceil(n_rows / batch_size)))


def skipped_keys(stats) -> list[str]:
    import ray

    return ray.get(stats.get.remote())["skipped"]


def report_skipped(summary: dict, n_total: int, r, what: str, log) -> None:
    """Say what did not fit the context (the stage summary keeps the count and the first keys);
    when nothing fit, stop with what to change."""
    from glore_ray.engines.context import PromptTooLong, too_long_message

    n = summary["skipped_over_context"]
    if not n:
        return
    msg = too_long_message(n, n_total, r.max_tokens, summary["max_model_len"], what)
    if n >= n_total:
        raise PromptTooLong(msg)
    log(f"[warning] {msg}; skipped, e.g. {summary['skipped_examples']}")


def summarise(stats, seconds: float) -> dict:
    import ray

    s = ray.get(stats.get.remote())
    ray.kill(stats)
    return {"engine": s["engine"], "engine_start_s": s["engine_start_s"],
            "max_model_len": s["max_model_len"],
            "skipped_over_context": len(s["skipped"]), "skipped_examples": sorted(s["skipped"])[:5],
            "generated_tokens": s["tokens"], "generate_seconds": round(s["gen_s"], 2),
            "stage_seconds": round(seconds, 2),
            "tokens_per_s": round(s["tokens"] / seconds, 1) if seconds else 0.0,
            "engine_calls": s["batches"]}


def generate_texts(cfg: RunConfig, model_path: str, prompts: list[str], spec,
                   log=print) -> list[list[str]]:
    """``spec.n`` completions per prompt, in prompt order, from the configured engine on the same
    kind of actor pool as the stages (one engine per actor, started once). A prompt that cannot
    fit the context gets ``n`` empty completions (no answer: graded wrong), and the count is
    logged; when none fits, ``PromptTooLong``."""
    import dataclasses

    import ray

    from glore_ray.ray_env import init_ray

    if not prompts:
        return []
    init_ray()
    items = [{"i": i, "prompt": p, "seed": request_seed(spec.seed, "text", i)}
             for i, p in enumerate(prompts)]
    ds = ray.data.from_items(items,
                             override_num_blocks=n_blocks(len(items), cfg.rollout.batch_size))
    ds = map_generate(ds, TextActor, cfg, model_path, None, spec=dataclasses.asdict(spec))
    out = sorted(ds.take_all(), key=lambda r: r["i"])
    if len(out) != len(prompts):
        raise RuntimeError(f"generate_texts: {len(out)} results for {len(prompts)} prompts")
    skipped = sum(not r["texts"] for r in out) if spec.n else 0
    if skipped:
        from glore_ray.engines.context import PromptTooLong

        msg = (f"{skipped} of {len(prompts)} prompts do not fit the context with max_tokens "
               f"{spec.max_tokens} (rollout.max_model_len / context_cap)")
        if skipped == len(prompts):
            raise PromptTooLong(msg)
        log(f"[warning] {msg}: they get empty completions")
    return [list(r["texts"]) or [""] * spec.n for r in out]
