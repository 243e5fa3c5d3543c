"""Real Ray Train + real DeepSpeed (ZeRO-2 on gloo): a worker killed mid-run resumes from its last
checkpoint, and the checkpoints are removed once the model is exported. (The four models of a run,
trained by `glore run`, are checked in test_pipeline_ray.)"""

from __future__ import annotations

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
        from glore_ray.tokenizer import build_tokenizer
        from glore_ray.train.tiny_policy import build_model

        path = tmp_path_factory.mktemp("random_policy")
        tok = build_tokenizer(synthetic.vocabulary())
        build_model(load_config(None), tok).save_pretrained(path)
        tok.save_pretrained(path)
        return path


def test_killed_worker_resumes_from_last_checkpoint(ray_local, policy, tmp_path, monkeypatch):
    from benchmarks._helpers import write_synthetic_sets
    from glore_ray.train.loop import LoopSpec
    from glore_ray.train.ray_trainer import FAIL_AT_ENV, FAIL_MARKER_ENV, find_jemalloc, fit

    sets = write_synthetic_sets(tmp_path / "sets", 24)
    marker = tmp_path / "killed"
    monkeypatch.setenv(FAIL_AT_ENV, "3")
    monkeypatch.setenv(FAIL_MARKER_ENV, str(marker))
    spec = LoopSpec(name="orm", kind="reward", policy=str(policy), epochs=3, batch_size=8,
                    max_steps=5, checkpoint_every=2, log_every=1, zero_stage=2)
    s = fit(spec, sets["orm"] / "train.parquet", sets["orm"] / "eval.parquet",
            storage=tmp_path / "ray", out_dir=tmp_path / "orm", num_workers=2, max_failures=1,
            allocator="auto")
    assert marker.exists()  # the last rank really died after step 3
    steps = [(h["step"], h["resumed_from"]) for h in s["history"]]
    first_run = [st for st, r in steps if r == -1]
    second_run = [st for st, r in steps if r == 2]
    assert first_run == [1, 2, 3]  # step 3 was reported, then the worker exited
    assert second_run and second_run[0] == 3  # continued after the step-2 checkpoint, not from 0
    assert s["final"]["step"] == 5 and s["restarts"] == 1
    # train.allocator=auto preloads jemalloc into the workers where the node has it
    assert {h["malloc"] for h in s["history"]} == {"jemalloc" if find_jemalloc() else "system"}
    assert (tmp_path / "orm" / "config.json").exists()
    # the fit is done: its resumable checkpoints are gone, its metrics stay
    run_dir = tmp_path / "ray" / "orm"
    assert (run_dir / "metrics.jsonl").exists() and not list(run_dir.glob("step_*"))
    # Ray Train's placement-group cleaner asked the (absent) state API every second of the fit,
    # a warning each time; the local cluster's workers mute it (ray_env.quiet_local_worker)
    logs = Path(ray_local._private.worker._global_node.get_session_dir_path()) / "logs"
    assert list(logs.glob("worker-*.err"))
    assert not [f.name for f in logs.glob("worker-*.err")
                if "Failed to query Ray Train Controller" in f.read_text(errors="replace")]


@pytest.mark.parametrize("eval_rows", [0, 1])
def test_a_tiny_eval_file_still_gives_every_worker_eval_rows(ray_local, tmp_path, eval_rows):
    """Ray Train splits a dataset equally over the workers and drops the remainder: a 1-row eval
    file would leave both workers without eval rows (and the model without eval metrics), as the
    smoke run's local refiner once had. Such a set is replaced by a held-out split of train."""
    import pandas as pd

    from glore_ray.train.ray_trainer import _datasets

    pd.DataFrame({"x": range(8)}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"x": range(100, 100 + eval_rows)}).to_parquet(tmp_path / "eval.parquet")
    notes: list[str] = []
    train, ev = _datasets(tmp_path / "train.parquet", tmp_path / "eval.parquet", 0.1, 0,
                          num_workers=2, log=notes.append)
    train_x = sorted(r["x"] for r in train.iter_rows())
    eval_x = sorted(r["x"] for r in ev.iter_rows())
    assert len(eval_x) == 2 and len(train_x) == 6 and sorted(train_x + eval_x) == list(range(8))
    assert bool(notes) == (eval_rows > 0)  # replacing a given eval file is said
    # a set too small to hold rows out trains on everything and says it has no eval
    pd.DataFrame({"x": range(5)}).to_parquet(tmp_path / "small.parquet")
    train, ev = _datasets(tmp_path / "small.parquet", None, 0.1, 0, num_workers=2,
                          log=notes.append)
    assert ev is None and train.count() == 5 and "no eval metrics" in notes[-1]
