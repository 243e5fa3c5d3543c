"""Stage ``sample``: K graded samples per question, on the generation pool (``generation``).

    questions ─► [SampleActor × pool] ─► samples.parquet/    (K samples per question, graded)

Reads ``data/train.parquet`` and the policy; writes ``sample/samples.parquet/``, one
``records.Sample`` row per sample plus ``n_tokens`` (generated tokens, for throughput accounting;
-1 where not tracked). A question whose prompt cannot fit the context is skipped and reported.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq

from glore_ray.config import RunConfig
from glore_ray.data import worlds
from glore_ray.data.grading import extract_answer, split_steps
from glore_ray.prompts import policy_prompt
from glore_ray.records import Question, read_rows
from glore_ray.stages.generation import (
    SAMPLING_READS,
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

READS = SAMPLING_READS + ("rollout.n_questions", "rollout.k_samples", "rollout.max_tokens")
WHAT = "K samples per question"

# Output schema: the record's fields plus the generated-token count.
SAMPLE_SCHEMA = pa.schema([
    ("qid", pa.string()), ("sample_id", pa.int64()), ("text", pa.string()),
    ("steps", pa.list_(pa.string())), ("final_answer", pa.string()), ("correct", pa.bool_()),
    ("oracle_first_wrong", pa.int64()), ("n_tokens", pa.int64())])


def grade_sample(q: dict, sample_id: int, text: str, n_tokens: int) -> dict:
    """A ``records.Sample`` row (+ n_tokens) for one generated solution."""
    oracle = q.get("oracle") or ""
    return {"qid": q["qid"], "sample_id": sample_id, "text": text, "steps": split_steps(text),
            "final_answer": extract_answer(text) or "",
            "correct": worlds.grade(text, q["answer"], oracle),
            "oracle_first_wrong": worlds.first_wrong_step(text, oracle)[0] if oracle else -2,
            "n_tokens": n_tokens}


class SampleActor(EngineActor):
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


def run(cfg: RunConfig, paths, log=print) -> dict:
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
    stats = stats_actor()
    items = [{"qid": q.qid, "question": q.question, "answer": q.answer, "oracle": q.oracle}
             for q in questions]
    ds = ray.data.from_items(items, override_num_blocks=n_blocks(len(items), r.batch_size))
    ds = map_generate(ds, SampleActor, cfg, paths.policy_model, stats)
    n = write_parts(ds, paths.samples,
                    lambda: (len(questions) - len(skipped_keys(stats))) * r.k_samples,
                    "sample", SAMPLE_SCHEMA, stats, r.max_actor_restarts)
    summary = summarise(stats, time.time() - t0)
    report_skipped(summary, len(questions), r, "questions", log)
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
