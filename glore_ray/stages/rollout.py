"""Stages ``sample`` and ``rollout``: generation on a Ray Data actor pool.

    questions ─► [SampleActor × pool] ─► samples.parquet/    (K samples per question, graded)
    samples   ─► [RolloutActor × pool] ─► rollouts.parquet/  (K rollouts per step prefix, graded)

Each actor builds one engine (vLLM, or HF ``generate`` as the fallback) in ``__init__`` and keeps
it for the whole stage; Ray Data streams batches of ``rollout.batch_size`` rows through an
autoscaling pool of ``rollout.min_actors..max_actors`` actors that each ask for
``rollout.num_cpus`` CPUs and ``rollout.num_gpus`` GPUs, and writes the results as Parquet parts.
There is no driver-side loop over prompts: the driver only builds the dataset and waits.

Rows (see ``records``): a sample row is ``records.Sample`` and a rollout row ``records.Rollout``,
both plus ``n_tokens`` (generated tokens, for throughput accounting; -1 where not tracked).
Every prefix of a sample is rolled out except a final ``####`` answer line, whose label is the
sample's own correctness. The K rollouts of a prefix come from one request with ``n=K``, and all
prefixes of a sample are in the same engine call, so prefix caching reuses their shared tokens.

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
from glore_ray.data import worlds
from glore_ray.data.grading import extract_answer, is_correct, split_steps
from glore_ray.method.prefixes import rolled_out
from glore_ray.prompts import policy_prompt, prefix_text, rollout_prompt
from glore_ray.records import Question, atomic_dir, commit_dir, read_rows

# Output schemas: the records' fields plus the generated-token count.
SAMPLE_SCHEMA = pa.schema([
    ("qid", pa.string()), ("sample_id", pa.int64()), ("text", pa.string()),
    ("steps", pa.list_(pa.string())), ("final_answer", pa.string()), ("correct", pa.bool_()),
    ("oracle_first_wrong", pa.int64()), ("n_tokens", pa.int64())])
ROLLOUT_SCHEMA = pa.schema([
    ("qid", pa.string()), ("sample_id", pa.int64()), ("step_idx", pa.int64()), ("k", pa.int64()),
    ("text", pa.string()), ("correct", pa.bool_()), ("final_answer", pa.string()),
    ("n_tokens", pa.int64())])
_FAULT_ENV = ("GLORE_FAULT_EXIT_AFTER_BATCHES", "GLORE_FAULT_MARKER")


# ------------------------------------------------------------------ pure helpers (unit-testable)

def request_seed(base: int, *key: Any) -> int:
    """A deterministic per-request seed: reruns and retries give the same rows."""
    return zlib.crc32(repr((base, *key)).encode()) & 0x7FFFFFFF


def grade_sample(q: dict, sample_id: int, text: str, n_tokens: int) -> dict:
    """A ``records.Sample`` row (+ n_tokens) for one generated solution."""
    oracle = q.get("oracle") or ""
    return {"qid": q["qid"], "sample_id": sample_id, "text": text, "steps": split_steps(text),
            "final_answer": extract_answer(text) or "", "correct": is_correct(text, q["answer"]),
            "oracle_first_wrong": worlds.first_wrong_step(text, oracle)[0] if oracle else -2,
            "n_tokens": n_tokens}


def grade_rollout(answer: str, steps: list[str], step_idx: int, qid: str, sample_id: int, k: int,
                  text: str, n_tokens: int) -> dict:
    """A ``records.Rollout`` row (+ n_tokens): graded on prefix + continuation."""
    full = prefix_text(steps, step_idx) + text
    return {"qid": qid, "sample_id": sample_id, "step_idx": step_idx, "k": k, "text": text,
            "correct": is_correct(full, answer), "final_answer": extract_answer(full) or "",
            "n_tokens": n_tokens}


# ------------------------------------------------------------------ the Ray Data actors

class _EngineActor:
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


class SampleActor(_EngineActor):
    """Question rows in, ``k_samples`` graded sample rows per question out."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        qs = batch.to_pylist()
        self._maybe_die(f"questions {qs[0]['qid']}..{qs[-1]['qid']}" if qs else "")
        outs = self._generate([policy_prompt(q["question"]) for q in qs], self.cfg.k_samples,
                              [request_seed(self.seed, "sample", q["qid"]) for q in qs],
                              [q["qid"] for q in qs])
        rows = [grade_sample(q, i, c.text, c.n_tokens)
                for q, comps in zip(qs, outs) if comps is not None for i, c in enumerate(comps)]
        self._batch_done()
        return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)


class RolloutActor(_EngineActor):
    """Sample rows in, ``k_rollouts`` graded rollout rows per step prefix out (or, when
    ``rollout.budgeted``, the rows ``glore_ray.method.budgeted.search`` asks for)."""

    def __init__(self, rollout_cfg: dict, model_path: str, seed: int, questions: dict,
                 stats=None, fault: dict | None = None, chat: bool = False):
        super().__init__(rollout_cfg, model_path, seed, stats, fault, chat)
        self.questions = questions  # qid -> (question, answer)

    def __call__(self, batch: pa.Table) -> pa.Table:
        samples = batch.to_pylist()
        self._maybe_die(f"samples {samples[0]['qid']}/{samples[0]['sample_id']}.."
                        f"{samples[-1]['qid']}/{samples[-1]['sample_id']}" if samples else "")
        rows = self._budgeted(samples) if self.cfg.budgeted else self._exhaustive(samples)
        self._batch_done()
        return pa.Table.from_pylist(rows, schema=ROLLOUT_SCHEMA)

    def _exhaustive(self, samples: list[dict]) -> list[dict]:
        # Prefixes of one sample stay adjacent in one call: their shared tokens hit the cache.
        jobs = [(s, i) for s in samples for i in rolled_out(s["steps"])]
        if not jobs:
            return []
        prompts = [rollout_prompt(self.questions[s["qid"]][0], s["steps"], i) for s, i in jobs]
        seeds = [request_seed(self.seed, "rollout", s["qid"], s["sample_id"], i) for s, i in jobs]
        keys = [f"{s['qid']}/{s['sample_id']}/{i}" for s, i in jobs]
        # a skipped prefix has no rollouts: the label stage infers its step like any unprobed one
        outs = self._generate(prompts, self.cfg.k_rollouts, seeds, keys)
        return [grade_rollout(self.questions[s["qid"]][1], s["steps"], i, s["qid"],
                              s["sample_id"], k, c.text, c.n_tokens)
                for (s, i), comps in zip(jobs, outs) if comps is not None
                for k, c in enumerate(comps)]

    def _fitting_prefixes(self, s: dict) -> int:
        """How many of a wrong sample's prefixes fit the context with ``max_tokens`` (prompts grow
        with the prefix); the others are reported as skipped, as in exhaustive rollouts."""
        from glore_ray.engines.context import fitting

        idx = list(rolled_out(s["steps"]))
        if s["correct"] or not idx:
            return len(idx)
        q = self.questions[s["qid"]][0]
        prompts = [rollout_prompt(q, s["steps"], i) for i in idx]
        # prompts grow with the prefix: when the longest fits, every one does (the usual case)
        if fitting(self.engine, prompts[-1:], self.cfg.max_tokens)[0]:
            return len(idx)
        ok = fitting(self.engine, prompts, self.cfg.max_tokens)
        n = next((j for j, f in enumerate(ok) if not f), len(idx))
        if n < len(idx) and self.stats is not None:
            self.stats.add.remote(skipped=[f"{s['qid']}/{s['sample_id']}/{i}" for i in idx[n:]])
        return n

    def _budgeted(self, samples: list[dict]) -> list[dict]:
        from glore_ray.method import budgeted  # written alongside; imported only when asked for

        calls: dict[str, int] = {}  # prompt -> times asked in this batch, so chunks differ

        def generate(prompts: list[str], n: int) -> list[list[str]]:
            from glore_ray.engines.context import PromptTooLong, too_long_message

            seeds = []
            for p in prompts:
                calls[p] = calls.get(p, 0) + 1
                seeds.append(request_seed(self.seed, "budgeted", p, calls[p]))
            outs = self._generate(prompts, n, seeds, [f"budgeted:{len(p)}" for p in prompts])
            if any(o is None for o in outs):  # the search needs every answer: say so instead
                raise PromptTooLong(too_long_message(
                    sum(o is None for o in outs), len(outs), self.cfg.max_tokens,
                    self.engine.max_model_len, "budgeted rollout prompts"))
            return [[c.text for c in comps] for comps in outs]

        items = [{"qid": s["qid"], "sample_id": s["sample_id"],
                  "question": self.questions[s["qid"]][0], "answer": self.questions[s["qid"]][1],
                  "steps": list(s["steps"]), "correct": bool(s["correct"]),
                  "probe_limit": self._fitting_prefixes(s)} for s in samples]
        rows = budgeted.search(items, generate, k=self.cfg.k_rollouts, chunk=self.cfg.budget_chunk)
        return [{**{f: r[f] for f in ("qid", "sample_id", "step_idx", "k", "text", "correct")},
                 "final_answer": r.get("final_answer", ""), "n_tokens": -1} for r in rows]


class TextActor(_EngineActor):
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


def _stats_actor():
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


# ------------------------------------------------------------------ the stages

def rolled_out_qids(cfg: RunConfig, paths) -> set[str] | None:
    """The questions whose samples get step rollouts: the first ``rollout.rollout_questions`` of
    the sampled ones (None: all). The rollout and label stages both ask here."""
    r = cfg.rollout
    if r.rollout_questions is None or (r.n_questions is not None
                                       and r.rollout_questions >= r.n_questions):
        return None
    return {q.qid for q in read_rows(paths.questions_train, Question)[: r.rollout_questions]}


def _only(batch: pa.Table, qids: list[str]) -> pa.Table:
    import pyarrow.compute as pc

    return batch.filter(pc.is_in(batch.column("qid"), value_set=pa.array(qids, pa.string())))


def _fault_from_env() -> dict | None:
    after, marker = (os.environ.get(k) for k in _FAULT_ENV)
    return {"after": int(after), "marker": marker} if after and marker else None


def _map_generate(ds, actor_cls: type, cfg: RunConfig, model_path: str, stats, **kwargs):
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


def _write(ds, final: Path, expected, what: str, schema: pa.Schema, stats=None,
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


def _blocks(n_rows: int, batch_size: int) -> int:
    # About one block per batch, so an autoscaling pool sees a queue of work to scale on.
    return max(1, min(1000, math.ceil(n_rows / batch_size)))


def _skipped(stats) -> list[str]:
    import ray

    return ray.get(stats.get.remote())["skipped"]


def _report_skipped(summary: dict, n_total: int, r, what: str, log) -> None:
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


def _summarise(stats, seconds: float) -> dict:
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


def run_sample(cfg: RunConfig, paths, log=print) -> dict:
    """Stage: the first ``rollout.n_questions`` train questions × ``k_samples`` graded samples."""
    import ray

    from glore_ray.ray_env import init_ray

    questions = read_rows(paths.questions_train, Question)[: cfg.rollout.n_questions]
    if not questions:
        raise ValueError(f"no train questions in {paths.questions_train}")
    init_ray()
    r = cfg.rollout
    log(f"[sample] {len(questions)} questions x {r.k_samples} samples, engine {r.engine}, "
        f"pool {r.min_actors}..{r.max_actors} actors, batch {r.batch_size}")
    t0 = time.time()
    stats = _stats_actor()
    items = [{"qid": q.qid, "question": q.question, "answer": q.answer, "oracle": q.oracle}
             for q in questions]
    ds = ray.data.from_items(items, override_num_blocks=_blocks(len(items), r.batch_size))
    ds = _map_generate(ds, SampleActor, cfg, paths.policy_model, stats)
    n = _write(ds, paths.samples, lambda: (len(questions) - len(_skipped(stats))) * r.k_samples,
               "sample", SAMPLE_SCHEMA, stats, r.max_actor_restarts)
    summary = _summarise(stats, time.time() - t0)
    _report_skipped(summary, len(questions), r, "questions", log)
    t = pq.read_table(str(paths.samples), columns=["qid", "correct", "final_answer"])
    correct = t.column("correct").to_pylist()
    # the share that commits to a final answer at all: a fresh pretrained policy's first hurdle
    gradable = sum(bool(a) for a in t.column("final_answer").to_pylist())
    by_q: dict[str, bool] = {}
    for qid, c in zip(t.column("qid").to_pylist(), correct):
        by_q[qid] = by_q.get(qid, False) or c
    summary.update(n_questions=len(questions), n_samples=n, accuracy=round(sum(correct) / n, 4),
                   pass_at_k=round(sum(by_q.values()) / len(by_q), 4),
                   gradable=round(gradable / n, 4))
    log(f"[sample] {n} samples, accuracy {summary['accuracy']:.3f}, pass@{r.k_samples} "
        f"{summary['pass_at_k']:.3f}, with a final answer {gradable}/{n}; "
        f"{summary['generated_tokens']} tokens at "
        f"{summary['tokens_per_s']:.0f} tok/s (engine start {summary['engine_start_s']} s)")
    return summary


def run_rollout(cfg: RunConfig, paths, log=print) -> dict:
    """Stage: ``k_rollouts`` graded continuations from every step prefix of every sample (of the
    ``rolled_out_qids`` questions)."""
    import ray

    from glore_ray.ray_env import init_ray

    questions = {q.qid: (q.question, q.answer) for q in read_rows(paths.questions_train, Question)}
    steps_col = pq.read_table(str(paths.samples), columns=["qid", "steps"])
    keep = rolled_out_qids(cfg, paths)
    if keep is not None:
        steps_col = _only(steps_col, sorted(keep))
    n_samples = steps_col.num_rows
    qids = set(steps_col.column("qid").to_pylist())
    if qids - questions.keys():
        raise ValueError(f"samples name {len(qids - questions.keys())} questions that are not in "
                         f"{paths.questions_train}")
    questions = {q: v for q, v in questions.items() if q in qids}  # only what the actors need
    r = cfg.rollout
    n_prefixes = sum(len(rolled_out(s)) for s in steps_col.column("steps").to_pylist())
    expected = None if r.budgeted else n_prefixes * r.k_rollouts
    init_ray()
    subset = "" if keep is None else f" (of the first {len(keep)} questions)"
    log(f"[rollout] {n_samples} samples{subset}, {n_prefixes} step prefixes x {r.k_rollouts} "
        f"rollouts"
        f"{' (budgeted search)' if r.budgeted else ''}, engine {r.engine}, "
        f"pool {r.min_actors}..{r.max_actors} actors, batch {r.batch_size} samples")
    t0 = time.time()
    stats = _stats_actor()
    ds = ray.data.read_parquet(str(paths.samples)).select_columns(
        ["qid", "sample_id", "steps", "correct"])
    if keep is not None:
        ds = ds.map_batches(_only, fn_kwargs={"qids": sorted(keep)}, batch_format="pyarrow")
    ds = ds.repartition(_blocks(n_samples, r.batch_size))
    ds = _map_generate(ds, RolloutActor, cfg, paths.policy_model, stats, questions=questions)
    n = _write(ds, paths.rollouts, None if expected is None else
               (lambda: expected - len(_skipped(stats)) * r.k_rollouts), "rollout", ROLLOUT_SCHEMA,
               stats, r.max_actor_restarts)
    summary = _summarise(stats, time.time() - t0)
    _report_skipped(summary, n_prefixes, r, "step prefixes", log)
    correct = pq.read_table(str(paths.rollouts), columns=["correct"]).column("correct").to_pylist()
    summary.update(n_samples=n_samples, n_prefixes=n_prefixes, n_rollouts=n,
                   exhaustive_rollouts=n_prefixes * r.k_rollouts,
                   rollout_accuracy=round(sum(correct) / n, 4) if n else 0.0)
    log(f"[rollout] {n} rollouts ({summary['rollout_accuracy']:.3f} correct); "
        f"{summary['generated_tokens']} tokens at {summary['tokens_per_s']:.0f} tok/s "
        f"(engine start {summary['engine_start_s']} s)")
    return summary


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
    ds = ray.data.from_items(items, override_num_blocks=_blocks(len(items), cfg.rollout.batch_size))
    ds = _map_generate(ds, TextActor, cfg, model_path, None, spec=dataclasses.asdict(spec))
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
