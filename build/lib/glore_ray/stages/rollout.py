"""Stage ``rollout``: K graded rollouts from every step prefix of the samples, on the generation
pool (``generation``).

    samples ─► [RolloutActor × pool] ─► rollouts.parquet/  (K rollouts per step prefix, graded)

Reads ``data/train.parquet``, ``sample/samples.parquet/`` and the policy; writes
``rollout/rollouts.parquet/``, one ``records.Rollout`` row per rollout plus ``n_tokens``
(generated tokens, for throughput accounting; -1 where not tracked). Every prefix of a sample is
rolled out except a final ``####`` answer line, whose label is the sample's own correctness. The
K rollouts of a prefix come from one request with ``n=K``, and all prefixes of a sample are in the
same engine call, so prefix caching reuses their shared tokens. ``rollout.budgeted`` asks only for
the rollouts ``method.budgeted.search`` needs; ``rollout.rollout_questions`` rolls out the samples
of the first questions only (``rolled_out_qids``).
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq

from glore_ray.config import RunConfig
from glore_ray.data.grading import extract_answer
from glore_ray.data.worlds import grade
from glore_ray.method.prefixes import rolled_out
from glore_ray.prompts import prefix_text, rollout_prompt
from glore_ray.records import Question, read_rows
from glore_ray.stages.generation import (
    EngineActor,
    map_generate,
    n_blocks,
    report_skipped,
    request_seed,
    skipped_keys,
    stats_actor,
    summarise,
    write_parts,
)

# The sampling fields come with the sample stage, upstream.
READS = ("rollout.k_rollouts", "rollout.rollout_questions", "rollout.budgeted",
         "rollout.budget_chunk")
WHAT = "K rollouts per step prefix"

# Output schema: the record's fields plus the generated-token count.
ROLLOUT_SCHEMA = pa.schema([
    ("qid", pa.string()), ("sample_id", pa.int64()), ("step_idx", pa.int64()), ("k", pa.int64()),
    ("text", pa.string()), ("correct", pa.bool_()), ("final_answer", pa.string()),
    ("n_tokens", pa.int64())])


def grade_rollout(answer: str, oracle: str, steps: list[str], step_idx: int, qid: str,
                  sample_id: int, k: int, text: str, n_tokens: int) -> dict:
    """A ``records.Rollout`` row (+ n_tokens): graded on prefix + continuation."""
    full = prefix_text(steps, step_idx) + text
    return {"qid": qid, "sample_id": sample_id, "step_idx": step_idx, "k": k, "text": text,
            "correct": grade(full, answer, oracle), "final_answer": extract_answer(full) or "",
            "n_tokens": n_tokens}


class RolloutActor(EngineActor):
    """Sample rows in, ``k_rollouts`` graded rollout rows per step prefix out (or, when
    ``rollout.budgeted``, the rows ``glore_ray.method.budgeted.search`` asks for)."""

    def __init__(self, rollout_cfg: dict, model_path: str, seed: int, questions: dict,
                 stats=None, fault: dict | None = None, chat: bool = False):
        super().__init__(rollout_cfg, model_path, seed, stats, fault, chat)
        self.questions = questions  # qid -> (question, answer, oracle)

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
        return [grade_rollout(*self.questions[s["qid"]][1:], s["steps"], i, s["qid"],
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
                  "oracle": self.questions[s["qid"]][2],
                  "steps": list(s["steps"]), "correct": bool(s["correct"]),
                  "probe_limit": self._fitting_prefixes(s)} for s in samples]
        rows = budgeted.search(items, generate, k=self.cfg.k_rollouts, chunk=self.cfg.budget_chunk)
        return [{**{f: r[f] for f in ("qid", "sample_id", "step_idx", "k", "text", "correct")},
                 "final_answer": r.get("final_answer", ""), "n_tokens": -1} for r in rows]


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


def run(cfg: RunConfig, paths, log=print) -> dict:
    """Stage: ``k_rollouts`` graded continuations from every step prefix of every sample (of the
    ``rolled_out_qids`` questions)."""
    import ray

    from glore_ray.ray_env import init_ray

    questions = {q.qid: (q.question, q.answer, q.oracle)
                 for q in read_rows(paths.questions_train, Question)}
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
    stats = stats_actor()
    ds = ray.data.read_parquet(str(paths.samples)).select_columns(
        ["qid", "sample_id", "steps", "correct"])
    if keep is not None:
        ds = ds.map_batches(_only, fn_kwargs={"qids": sorted(keep)}, batch_format="pyarrow")
    ds = ds.repartition(n_blocks(n_samples, r.batch_size))
    ds = map_generate(ds, RolloutActor, cfg, paths.policy_model, stats, questions=questions)
    n = write_parts(ds, paths.rollouts, None if expected is None else
                    (lambda: expected - len(skipped_keys(stats)) * r.k_rollouts), "rollout",
                    ROLLOUT_SCHEMA, stats, r.max_actor_restarts)
    summary = summarise(stats, time.time() - t0)
    report_skipped(summary, n_prefixes, r, "step prefixes", log)
    correct = pq.read_table(str(paths.rollouts), columns=["correct"]).column("correct").to_pylist()
    summary.update(n_samples=n_samples, n_prefixes=n_prefixes, n_rollouts=n,
                   exhaustive_rollouts=n_prefixes * r.k_rollouts,
                   rollout_accuracy=round(sum(correct) / n, 4) if n else 0.0)
    log(f"[rollout] {n} rollouts ({summary['rollout_accuracy']:.3f} correct); "
        f"{summary['generated_tokens']} tokens at {summary['tokens_per_s']:.0f} tok/s "
        f"(engine start {summary['engine_start_s']} s)")
    return summary
