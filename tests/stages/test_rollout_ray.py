"""Stages ``sample`` and ``rollout`` on a real local Ray cluster.

- the smoke config end to end through the CLI with the real vLLM CPU engine: row counts, grading,
  rerun skipped;
- an actor killed mid-stage (``os._exit`` from inside, once): every row written exactly once;
- the budgeted-search path wired into the rollout actor.
The last two use the HF engine: they test Ray's fault tolerance and the wiring, and each restart
would otherwise cost a vLLM start.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from glore_ray.cli import main
from glore_ray.config import load_config
from glore_ray.data import worlds
from glore_ray.data.grading import extract_answer, is_correct, split_steps
from glore_ray.method.prefixes import rolled_out
from glore_ray.pipeline import RunPaths
from glore_ray.prompts import prefix_text
from glore_ray.records import Question, Rollout, Sample, read_rows
from glore_ray.stages.generation import request_seed
from glore_ray.stages.rollout import rolled_out_qids

# ------------------------------------------------------------------ helpers, unit tests

def test_request_seed_is_deterministic_and_distinct():
    assert request_seed(0, "rollout", "q1", 0, 1) == request_seed(0, "rollout", "q1", 0, 1)
    seeds = {request_seed(0, "rollout", "q1", s, i) for s in range(4) for i in range(4)}
    assert len(seeds) == 16 and all(0 <= s < 2**31 for s in seeds)
    assert request_seed(1, "sample", "q1") != request_seed(0, "sample", "q1")


# ------------------------------------------------------------------ checks on stage outputs

def _questions(paths: RunPaths) -> dict[str, Question]:
    return {q.qid: q for q in read_rows(paths.questions_train, Question)}


def check_samples(paths: RunPaths, n_questions: int, k: int) -> list[Sample]:
    samples = read_rows(paths.samples, Sample)
    qs = _questions(paths)
    first = list(qs)[:n_questions]
    keys = Counter((s.qid, s.sample_id) for s in samples)
    assert len(samples) == n_questions * k and max(keys.values()) == 1  # exactly once
    assert set(keys) == {(q, i) for q in first for i in range(k)}
    for s in samples:  # graded by the foundation grader and the oracle
        q = qs[s.qid]
        assert s.correct == is_correct(s.text, q.answer)
        assert s.steps == split_steps(s.text)
        assert s.final_answer == (extract_answer(s.text) or "")
        assert s.oracle_first_wrong == worlds.first_wrong_step(s.text, q.oracle)[0]
    return samples


def check_rollouts(paths: RunPaths, samples: list[Sample], k: int) -> list[Rollout]:
    rollouts = read_rows(paths.rollouts, Rollout)
    qs = _questions(paths)
    by_sample = {(s.qid, s.sample_id): s for s in samples}
    expected = {(s.qid, s.sample_id, i, j) for s in samples
                for i in rolled_out(s.steps) for j in range(k)}
    keys = Counter((r.qid, r.sample_id, r.step_idx, r.k) for r in rollouts)
    assert max(keys.values(), default=1) == 1 and set(keys) == expected
    for r in rollouts:
        s = by_sample[(r.qid, r.sample_id)]
        assert r.correct == is_correct(prefix_text(s.steps, r.step_idx) + r.text, qs[r.qid].answer)
    return rollouts


def _done(paths: RunPaths, stage: str) -> dict:
    return json.loads((paths.stage(stage) / "_DONE.json").read_text())


# ------------------------------------------------------------------ the smoke run, real vLLM

@pytest.mark.ray
def test_workers_are_not_niced(ray_local):
    """Ray's default starts workers at nice 15: beside any other CPU job on the node they stall
    (ray_env.init_ray). The local cluster's workers run at the driver's priority."""

    @ray_local.remote
    def niceness() -> int:
        import os

        return os.nice(0)

    assert ray_local.get(niceness.remote()) == os.nice(0)


@pytest.mark.ray
@pytest.mark.vllm
def test_smoke_sample_then_rollout_with_vllm(ray_local, tiny_policy, smoke_config_path, tmp_path,
                                             capsys):
    over = [f"output_dir={tmp_path}"]
    cfg = load_config(smoke_config_path, over)
    paths = RunPaths(cfg)
    for stage in ("data", "policy", "sample", "rollout"):
        assert main([stage, str(smoke_config_path), *over]) == 0, stage
    r = cfg.rollout
    samples = check_samples(paths, r.n_questions, r.k_samples)
    # the smoke config rolls out a subset (rollout.rollout_questions): only its samples
    rolled = rolled_out_qids(cfg, paths)
    assert rolled is not None and len(rolled) == r.rollout_questions < r.n_questions
    rollouts = check_rollouts(paths, [s for s in samples if s.qid in rolled], r.k_rollouts)
    assert {x.qid for x in rollouts} <= rolled
    s_sum, r_sum = _done(paths, "sample")["summary"], _done(paths, "rollout")["summary"]
    assert s_sum["engine"] == r_sum["engine"] == "vllm"
    # one engine per actor for the whole stage (a 1..1 pool: one start)
    assert len(s_sum["engine_start_s"]) == len(r_sum["engine_start_s"]) == 1
    assert s_sum["generated_tokens"] > 0 and r_sum["n_rollouts"] == len(rollouts)
    # the trained policy is right on roughly half: both outcomes appear among samples/rollouts
    assert 0 < sum(s.correct for s in samples) < len(samples)
    assert 0 < sum(x.correct for x in rollouts) < len(rollouts)
    # rolling out from a correct sample's prefixes succeeds more often than from a wrong one's
    ok = {(s.qid, s.sample_id): s.correct for s in samples}
    rate = lambda c: (sum(x.correct for x in rollouts if ok[(x.qid, x.sample_id)] == c)  # noqa
                      / max(1, sum(ok[(x.qid, x.sample_id)] == c for x in rollouts)))
    assert rate(True) > rate(False)
    # rerun with the same config: skipped, outputs untouched
    mtime = max(p.stat().st_mtime for p in Path(paths.samples).glob("*.parquet"))
    capsys.readouterr()
    assert main(["sample", str(smoke_config_path), *over]) == 0
    assert "already done" in capsys.readouterr().out
    assert max(p.stat().st_mtime for p in Path(paths.samples).glob("*.parquet")) == mtime


# ------------------------------------------------------------------ fault tolerance, budgeted

HF_OVERRIDES = ["name=hf", "rollout.engine=hf", "rollout.n_questions=6", "rollout.k_samples=2",
                "rollout.k_rollouts=2", "rollout.batch_size=2", "rollout.max_tokens=48"]


@pytest.fixture(scope="module")
def hf_run(ray_local, tiny_policy, smoke_config_path, tmp_path_factory):
    over = [f"output_dir={tmp_path_factory.mktemp('runs')}", *HF_OVERRIDES]
    for stage in ("data", "policy", "sample"):
        assert main([stage, str(smoke_config_path), *over]) == 0, stage
    cfg = load_config(smoke_config_path, over)
    return SimpleNamespace(over=over, cfg=cfg, paths=RunPaths(cfg),
                           samples=check_samples(RunPaths(cfg), 6, 2))


@pytest.mark.ray
def test_killed_actor_still_writes_every_row_once(hf_run, smoke_config_path, tmp_path,
                                                   monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv("GLORE_FAULT_EXIT_AFTER_BATCHES", "2")
    monkeypatch.setenv("GLORE_FAULT_MARKER", str(marker))
    assert main(["rollout", str(smoke_config_path), *hf_run.over]) == 0
    assert marker.exists(), "the actor was not killed: the test tested nothing"
    check_rollouts(hf_run.paths, hf_run.samples, k=2)
    # the replacement actor started a second engine
    assert len(_done(hf_run.paths, "rollout")["summary"]["engine_start_s"]) == 2


@pytest.mark.ray
def test_a_batch_that_kills_every_actor_stops_the_stage_and_is_named(
        hf_run, smoke_config_path, tmp_path, monkeypatch, capsys):
    """A deterministic crash (every actor dies on its first batch) is not retried forever: after
    rollout.max_actor_restarts the stage stops with one line naming the batch."""
    import shutil

    shutil.copytree(hf_run.paths.root, tmp_path / "hf")
    monkeypatch.setenv("GLORE_FAULT_EXIT_AFTER_BATCHES", "0")
    monkeypatch.setenv("GLORE_FAULT_MARKER", "always")
    over = [*hf_run.over[1:], f"output_dir={tmp_path}", "rollout.max_actor_restarts=1"]
    with pytest.raises(RuntimeError, match=r"died more than rollout.max_actor_restarts=1 times; "
                                           r"the batch\(es\) it was on: \['samples "):
        main(["rollout", str(smoke_config_path), *over, "--force"])  # restarts are a knob
    assert not (tmp_path / "hf" / "rollout" / "_DONE.json").exists()


@pytest.mark.ray
def test_budgeted_rollouts_run_inside_the_actor(hf_run, tmp_path):
    from glore_ray.method.prefixes import n_prefixes
    from glore_ray.stages import rollout

    cfg = hf_run.cfg.model_copy(deep=True)
    cfg.rollout.budgeted = True
    paths = SimpleNamespace(questions_train=hf_run.paths.questions_train,
                            samples=hf_run.paths.samples, policy=hf_run.paths.policy,
                            policy_model=hf_run.paths.policy_model,
                            rollouts=tmp_path / "rollouts.parquet")
    summary = rollout.run(cfg, paths, log=lambda m: None)
    rows = read_rows(paths.rollouts, Rollout)
    by_sample = {(s.qid, s.sample_id): s for s in hf_run.samples}
    assert summary["n_rollouts"] == len(rows) <= summary["exhaustive_rollouts"]
    assert len(set((r.qid, r.sample_id, r.step_idx, r.k) for r in rows)) == len(rows)
    qs = _questions(hf_run.paths)
    for r in rows:
        s = by_sample[(r.qid, r.sample_id)]
        assert not s.correct, "a correct sample needs no rollouts"
        assert 0 <= r.step_idx < n_prefixes(s.steps)
        assert r.correct == is_correct(prefix_text(s.steps, r.step_idx) + r.text, qs[r.qid].answer)


@pytest.mark.ray
def test_generate_texts_keeps_prompt_order(hf_run, tiny_policy):
    from glore_ray.engines.base import SamplingSpec
    from glore_ray.engines.hf import HFEngine
    from glore_ray.prompts import policy_prompt
    from glore_ray.stages.generation import generate_texts

    prompts = [policy_prompt(q.question) for q in list(_questions(hf_run.paths).values())[:5]]
    spec = SamplingSpec(n=2, temperature=0.0, max_tokens=48)
    out = generate_texts(hf_run.cfg, str(tiny_policy), prompts, spec)
    direct = HFEngine(str(tiny_policy)).generate(prompts, spec)
    assert out == [[c.text for c in o] for o in direct]
    assert generate_texts(hf_run.cfg, str(tiny_policy), [], spec) == []


@pytest.mark.ray
def test_prompts_over_the_context_are_skipped_and_counted(hf_run, smoke_config_path, tmp_path,
                                                          capsys):
    """A question whose prompt + max_tokens cannot fit the context gets no samples (never cut
    ones); the summary counts and names the skipped; when nothing fits, one clear error."""
    import shutil

    from transformers import AutoTokenizer

    from glore_ray.prompts import policy_prompt

    shutil.copytree(hf_run.paths.root, tmp_path / "hf")
    qs = list(_questions(hf_run.paths).values())[:6]
    tok = AutoTokenizer.from_pretrained(hf_run.paths.policy_model)
    lengths = sorted(len(tok(policy_prompt(q.question))["input_ids"]) for q in qs)
    distinct = sorted(set(lengths))
    assert len(distinct) > 1
    limit = distinct[(len(distinct) - 1) // 2] + 48  # max_tokens 48: the shorter prompts fit
    too_long = {q.qid for q in qs if len(tok(policy_prompt(q.question))["input_ids"]) + 48 > limit}
    over = [*hf_run.over[1:], f"output_dir={tmp_path}", f"rollout.max_model_len={limit}"]
    assert main(["sample", str(smoke_config_path), *over]) == 0
    cfg = load_config(smoke_config_path, over)
    samples = read_rows(RunPaths(cfg).samples, Sample)
    assert too_long and {s.qid for s in samples} == {q.qid for q in qs} - too_long
    summary = _done(RunPaths(cfg), "sample")["summary"]
    assert summary["skipped_over_context"] == len(too_long)
    assert set(summary["skipped_examples"]) <= too_long and summary["max_model_len"] == limit
    assert "do not fit the context" in capsys.readouterr().out
    # nothing fits: a one-line error that says what to change, no stage marked done
    over[-1] = f"rollout.max_model_len={lengths[0]}"
    assert main(["sample", str(smoke_config_path), *over]) == 2
    err = capsys.readouterr().err
    assert "6 of 6 questions do not fit the context" in err and "rollout.max_model_len" in err
