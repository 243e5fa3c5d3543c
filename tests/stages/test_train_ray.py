"""Real Ray Train + real DeepSpeed (ZeRO-2 on gloo): the four models of the smoke config, and a
worker killed mid-run that resumes from its last checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.deepspeed]

@pytest.fixture(scope="module")
def policy(request, tmp_path_factory) -> Path:
    """The shipped tiny policy; while it is not there yet, a random tiny Llama of the same shape
    (the mechanics under test do not depend on the weights)."""
    try:
        return request.getfixturevalue("tiny_policy")
    except (AssertionError, pytest.FixtureLookupError):
        from glore_ray.config import load_config
        from glore_ray.data import synthetic
        from glore_ray.policy import build_model
        from glore_ray.tokenizer import build_tokenizer

        path = tmp_path_factory.mktemp("random_policy")
        tok = build_tokenizer(synthetic.vocabulary())
        build_model(load_config(None), tok).save_pretrained(path)
        tok.save_pretrained(path)
        return path


Q = "Mia has 23 shells. She finds 45 more shells. How many shells does Mia have now?"


def _fake_upstream(cfg, policy: Path, n_questions: int) -> None:
    """Stand in for the stages before train: the policy folder, the label stage's four sets, and
    their _DONE markers (so `glore train` runs exactly as in the pipeline)."""
    from glore_ray.pipeline import STAGE_NAMES, RunPaths, mark_done
    from glore_ray.stages.train import write_synthetic_sets

    paths = RunPaths(cfg)
    shutil.copytree(policy, paths.policy)
    write_synthetic_sets(paths.training_set("orm").parent, n_questions, seed=cfg.seed)
    for name in STAGE_NAMES[: STAGE_NAMES.index("train")]:
        mark_done(cfg, paths, name, {"stub": True}, 0.0)


def test_glore_train_smoke_four_models_load_and_score(ray_local, policy, smoke_config_path,
                                                      tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    from glore_ray.cli import main
    from glore_ray.config import load_config
    from glore_ray.pipeline import RunPaths
    from glore_ray.train.reward import RewardScorer

    overrides = [f"output_dir={tmp_path}"]
    cfg = load_config(smoke_config_path, overrides)
    _fake_upstream(cfg, policy, n_questions=16)
    assert main(["train", str(smoke_config_path), *overrides]) == 0
    out = capsys.readouterr().out
    assert "[train orm] step" in out  # the progress line, from Ray Train's reports

    paths = RunPaths(cfg)
    summary = json.loads((paths.stage("train") / "_DONE.json").read_text())["summary"]
    for which in ("orm", "sorm"):
        folder = paths.model(which)
        model = AutoModelForTokenClassification.from_pretrained(folder)  # plain transformers
        assert model.config.num_labels == 1
        probs = RewardScorer(folder).score([Q, Q], [["23 + 45 = 68", "#### 68"], ["#### 67"]])
        assert [len(p) for p in probs] == [2, 1] and all(0 < x < 1 for p in probs for x in p)
        assert 0 <= summary[which]["eval_step_accuracy"] <= 1
        hist = json.loads((folder / "glore_train.json").read_text())["history"]
        assert hist and hist[-1]["step"] == summary[which]["step"]
    for which in ("global", "local"):
        folder = paths.model(which)
        tok = AutoTokenizer.from_pretrained(folder)
        lm = AutoModelForCausalLM.from_pretrained(folder)
        ids = tok("Question: " + Q + "\nAnswer:\n", return_tensors="pt")["input_ids"]
        gen = lm.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        assert gen.shape[1] > ids.shape[1]
        assert "eval_token_accuracy" in summary[which]
    # a finished stage with the same config is skipped
    assert main(["train", str(smoke_config_path), *overrides]) == 0
    assert "already done" in capsys.readouterr().out


def test_killed_worker_resumes_from_last_checkpoint(ray_local, policy, tmp_path, monkeypatch):
    from glore_ray.train.loop import LoopSpec
    from glore_ray.train.ray_trainer import FAIL_AT_ENV, FAIL_MARKER_ENV, fit
    from glore_ray.stages.train import write_synthetic_sets

    sets = write_synthetic_sets(tmp_path / "sets", 24)
    marker = tmp_path / "killed"
    monkeypatch.setenv(FAIL_AT_ENV, "3")
    monkeypatch.setenv(FAIL_MARKER_ENV, str(marker))
    spec = LoopSpec(name="orm", kind="reward", policy=str(policy), epochs=3, batch_size=8,
                    max_steps=5, checkpoint_every=2, log_every=1, zero_stage=2)
    s = fit(spec, sets["orm"] / "train.parquet", sets["orm"] / "eval.parquet",
            storage=tmp_path / "ray", out_dir=tmp_path / "orm", num_workers=2, max_failures=1)
    assert marker.exists()  # the last rank really died after step 3
    steps = [(h["step"], h["resumed_from"]) for h in s["history"]]
    first_run = [st for st, r in steps if r == -1]
    second_run = [st for st, r in steps if r == 2]
    assert first_run == [1, 2, 3]  # step 3 was reported, then the worker exited
    assert second_run and second_run[0] == 3  # continued after the step-2 checkpoint, not from 0
    assert s["final"]["step"] == 5 and s["restarts"] == 1
    assert (tmp_path / "orm" / "config.json").exists()
