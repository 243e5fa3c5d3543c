"""`glore run configs/smoke.yaml` end to end on a real local Ray cluster: every stage, the report's
structure (not its numbers), valid PNGs with the expected series, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.ray]

STAGES = ["data", "policy", "sample", "rollout", "label", "train", "evaluate"]


def _glore(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "glore_ray.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _run(args: list[str], timeout: float = 1500) -> str:
    p = _glore(args)
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, str, list[str]]:
    out_dir = tmp_path_factory.mktemp("runs")
    # The HF engine here keeps the suite fast: the vLLM engine is exercised by the rollout tests.
    overrides = [f"output_dir={out_dir}", "rollout.engine=hf"]
    log = _run(["run", "configs/smoke.yaml", *overrides])
    return out_dir / "smoke", log, overrides


def test_every_stage_ran_and_the_report_has_its_structure(smoke_run):
    root, log, _ = smoke_run
    for s in STAGES:
        assert (root / s / "_DONE.json").exists(), s
    report = root / "evaluate"
    m = json.loads((report / "metrics.json").read_text())
    assert set(m["refinement"]) == {"greedy", "best_of_n", "global", "local", "glore",
                                    "glore_when", "global_oracle_when", "local_oracle_when",
                                    "glore_oracle_when", "glore_oracle_rerank"}
    # the ceiling is never below what the ORM picks from the same three candidates
    assert (m["refinement"]["glore_oracle_rerank"]["accuracy"]
            >= m["refinement"]["glore"]["accuracy"])
    for rm in ("orm", "sorm"):
        assert set(m["reward_models"]["within_question"][rm]) == {"pairwise_accuracy", "n_pairs"}
    for v in m["refinement"].values():
        assert 0.0 <= v["accuracy"] <= 1.0
        assert set(v) == {"accuracy", "fixes_wrong_drafts", "breaks_right_drafts"}
    assert set(m["reward_models"]["vs_oracle"]) == {"orm", "sorm"}
    assert {"step_accuracy", "step_auc"} <= set(m["reward_models"]["vs_oracle"]["sorm"])
    assert set(m["stage_seconds"]) >= set(STAGES)
    text = (report / "report.md").read_text()
    for heading in ("## Refinement", "## Reward models", "## Stage wall times", "## Plots"):
        assert heading in text
    assert "global+local+ORM rerank" in log  # the summary table is printed at the end
    assert "=== pipeline: stage 1/7 data" in log and "=== pipeline: stage 7/7 evaluate" in log
    # the run folder keeps the log: stage lines, the table, and the Ray workers' forwarded lines
    kept = (root / "logs" / "glore.log").read_text()
    assert "[evaluate] done" in kept and "global+local+ORM rerank" in kept and "pid=" in kept


def test_the_four_trained_models_load_and_score(smoke_run):
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    from glore_ray.train.reward import RewardScorer

    root, log, _ = smoke_run
    assert "[train orm] step" in log  # the progress line, from Ray Train's reports
    summary = json.loads((root / "train" / "_DONE.json").read_text())["summary"]
    q = "Mia has 23 shells. She finds 45 more shells. How many shells does Mia have now?"
    for which in ("orm", "sorm"):
        folder = root / "train" / which
        model = AutoModelForTokenClassification.from_pretrained(folder)  # plain transformers
        assert model.config.num_labels == 1
        probs = RewardScorer(folder).score([q, q], [["23 + 45 = 68", "#### 68"], ["#### 67"]])
        assert [len(p) for p in probs] == [2, 1] and all(0 < x < 1 for p in probs for x in p)
        assert 0 <= summary[which]["eval_step_accuracy"] <= 1
        hist = json.loads((folder / "glore_train.json").read_text())["history"]
        assert hist and hist[-1]["step"] == summary[which]["step"]
    for which in ("global", "local"):
        folder = root / "train" / which
        tok = AutoTokenizer.from_pretrained(folder)
        lm = AutoModelForCausalLM.from_pretrained(folder)
        ids = tok("Question: " + q + "\nAnswer:\n", return_tensors="pt")["input_ids"]
        gen = lm.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        assert gen.shape[1] > ids.shape[1]
        assert "eval_token_accuracy" in summary[which]


def test_plots_are_valid_pngs_with_the_expected_series(smoke_run):
    from PIL import Image

    report = smoke_run[0] / "evaluate"
    series = json.loads((report / "plots.json").read_text())
    assert series["accuracy_by_strategy.png"][0] == "greedy"
    assert "glore" in series["accuracy_by_strategy.png"]
    assert series["roc_orm_sorm.png"] == ["ORM", "SORM"]
    for name in series:
        with Image.open(report / name) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
            assert len(set(im.convert("L").getdata())) > 2  # not a blank canvas
    if "step_traces.png" in series:
        assert series["step_traces.png"][:2] == ["ORM", "SORM"]


def test_rerun_skips_finished_stages(smoke_run):
    root, _, overrides = smoke_run
    log = _run(["run", "configs/smoke.yaml", *overrides], timeout=300)
    for s in STAGES:
        assert f"[{s}] already done for this config: skipped" in log


def test_killed_run_resumes_where_it_stopped(smoke_run, tmp_path):
    """Kill `glore run` in the train stage once its first model is saved, rerun: finished stages
    are skipped, the finished model is kept, the rest run."""
    root, _, overrides = smoke_run
    out = tmp_path / "runs"
    # Reuse the finished smoke run's upstream outputs by copying them, then kill in `label`.
    import shutil

    shutil.copytree(root, out / "smoke")
    for s in ("label", "train", "evaluate"):
        shutil.rmtree(out / "smoke" / s)
    args = ["run", "configs/smoke.yaml", f"output_dir={out}", "rollout.engine=hf"]
    p = _glore(args, start_new_session=True)
    deadline = time.time() + 300
    seen = ""
    while time.time() < deadline:
        line = p.stdout.readline()
        seen += line
        if "[train orm] saved" in line:  # the first model is done: kill the driver now
            os.killpg(p.pid, signal.SIGKILL)
            break
    p.wait(timeout=60)
    assert (out / "smoke" / "label" / "_DONE.json").exists(), seen[-3000:]
    assert not (out / "smoke" / "train" / "_DONE.json").exists()
    log = _run(args + ["--until", "train"])  # the smoke run itself covers evaluate
    for s in ("data", "policy", "sample", "rollout", "label"):
        assert f"[{s}] already done for this config: skipped" in log
    assert "[train] done" in log and "[evaluate]" not in log
    assert "[train] model 1/4: orm already trained for this config" in log
    assert "[train orm] saved" not in log and "[train local] saved" in log
