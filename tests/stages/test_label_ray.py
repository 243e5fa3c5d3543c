"""The label stage on Ray Data: all four sets from a world's rows, its stop-with-advice check, the
real chain through `glore label`, and row-for-row equality with labelling in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from glore_ray.config import load_config
from glore_ray.records import Rollout, Sample
from glore_ray.stages.label import make_labels


def _world_rows(cfg, n_q: int = 6):
    """Samples and rollouts written by a deterministic 'policy' that follows the synthetic oracle:
    sample j of a question writes a wrong value at step j-1 (sample 0 is right); a rollout
    from a clean prefix finishes the gold chain on odd k only, from a broken prefix it fails."""
    from glore_ray.data.worlds import first_wrong_step
    from glore_ray.stages.data import load

    train, _ = load(cfg)
    samples, rollouts = [], []
    for q in train[:n_q]:
        gold = q.gold_solution.split("\n")
        for j in range(3):
            steps = list(gold)
            if 0 < j < len(gold):
                a, rest = steps[j - 1].rsplit("= ", 1)
                steps[j - 1] = f"{a}= {int(rest) + 10}"
                steps[-1] = f"#### {int(gold[-1].split()[-1]) + 10}"
            text = "\n".join(steps)
            fw, _ = first_wrong_step(text, q.oracle)
            samples.append(Sample(q.qid, j, text, steps, steps[-1][5:], fw == -1, fw))
            for i in range(len(steps) - 1):
                clean = fw == -1 or i < fw
                for k in range(2):
                    ok = clean and k == 1
                    cont = "\n".join(gold[i + 1:]) if ok else "#### 0"
                    rollouts.append(Rollout(q.qid, j, i, k, cont, ok))
    return samples, rollouts


def _prepared(tmp_path, smoke_config_path, *over):
    """The smoke config (60 train questions, 5 test) with its questions written: (cfg, paths)."""
    from glore_ray.pipeline import RunPaths
    from glore_ray.stages import data as qstage

    cfg = load_config(smoke_config_path, [f"output_dir={tmp_path}", "data.dependency.n_train=60",
                                          "data.dependency.n_test=5", *over])
    paths = RunPaths(cfg)
    qstage.run(cfg, paths, log=lambda m: None)
    return cfg, paths


def test_label_stage_builds_all_four_sets(tmp_path, smoke_config_path):
    import datasets

    from glore_ray.pipeline import RunPaths
    from glore_ray.records import StepLabel, read_rows, write_rows
    from glore_ray.stages import data as qstage
    from glore_ray.stages import label

    cfg = load_config(smoke_config_path, [f"output_dir={tmp_path}", "data.dependency.n_train=40",
                                          "data.dependency.n_test=5"])
    paths = RunPaths(cfg)
    qstage.run(cfg, paths, log=lambda m: None)
    samples, rollouts = _world_rows(cfg)
    write_rows(paths.samples, samples, Sample)
    write_rows(paths.rollouts, rollouts, Rollout)
    logs: list[str] = []
    summary = label.run(cfg, paths, logs.append)

    labels = read_rows(paths.labels, StepLabel)
    assert len(labels) == sum(len(s.steps) for s in samples)
    assert all(r.oracle_label in (0.0, 1.0) for r in labels)
    # this 'policy' only succeeds from clean prefixes: SORM labels equal the oracle
    assert summary["oracle_quality"]["sorm"]["accuracy"] == 1.0
    assert summary["oracle_quality"]["orm"]["accuracy"] < 1.0
    for which in ("orm", "sorm", "global", "local"):
        folder = paths.training_set(which)
        train, ev = (pq.read_table(folder / f"{s}.parquet") for s in ("train", "eval"))
        assert train.num_rows > 0 and ev.num_rows > 0, which
        assert not set(train["qid"].to_pylist()) & set(ev["qid"].to_pylist())
        dd = datasets.load_from_disk(str(folder / "hf"))
        assert set(dd) == {"train", "eval"} and dd["train"].num_rows == train.num_rows
    sorm = pq.read_table(paths.training_set("sorm") / "train.parquet").to_pylist()
    assert all(len(r["labels"]) == len(r["steps"]) == len(r["mask"]) == len(r["soft_labels"])
               for r in sorm)
    loc = pq.read_table(paths.training_set("local") / "train.parquet").to_pylist()
    assert all("[BAD]" in r["prompt"] and r["target"].split("\n")[-1].startswith("####")
               for r in loc)
    trl = datasets.load_dataset("parquet", data_files={
        "train": str(paths.training_set("sorm") / "trl" / "train.parquet")})["train"]
    assert trl.column_names == ["prompt", "completions", "labels"]
    assert isinstance(trl[0]["labels"][0], bool)
    assert any("labelled" in m for m in logs)


def test_label_stage_stops_with_advice_when_no_sample_is_right(tmp_path, smoke_config_path):
    from glore_ray.pipeline import RunPaths
    from glore_ray.records import write_rows
    from glore_ray.stages import data as qstage
    from glore_ray.stages import label

    cfg = load_config(smoke_config_path, [f"output_dir={tmp_path}", "data.dependency.n_train=10",
                                          "data.dependency.n_test=2"])
    paths = RunPaths(cfg)
    qstage.run(cfg, paths, log=lambda m: None)
    samples, _ = _world_rows(cfg, n_q=3)
    samples = [Sample(s.qid, s.sample_id, "no answer here", ["no answer here"], "", False, 0)
               for s in samples]
    write_rows(paths.samples, samples, Sample)
    write_rows(paths.rollouts, [], Rollout)  # one-step samples: no prefix to roll out
    with pytest.raises(ValueError, match="none of the 9 samples answered correctly .0 ended with "
                                         "a gradable.*Fine-tune the policy"):
        label.run(cfg, paths, lambda m: None)
    assert not paths.labels.exists()  # nothing half-written

    # label.gold_targets: the same samples label, with a warning; every refiner target is the
    # question's gold solution (the policy solved none), and the ORM sees wrong samples only
    cfg = cfg.model_copy(update={"label": cfg.label.model_copy(update={"gold_targets": True})})
    logs: list[str] = []
    label.run(cfg, paths, logs.append)
    assert any("warning: none of the 9 samples is right" in m for m in logs)
    gold = {q.qid: q.gold_solution for q in qstage.read(paths, "train")}
    for which in ("global", "local"):
        files = [paths.training_set(which) / f"{part}.parquet" for part in ("train", "eval")]
        rows = [r for f in files if f.exists() for r in pq.read_table(f).to_pylist()]
        assert rows and all(r["target"] == gold[r["qid"]] for r in rows), which
    orm = pq.read_table(paths.training_set("orm") / "train.parquet").to_pylist()
    assert orm and not any(v for r in orm for v in r["labels"])


@pytest.mark.ray
@pytest.mark.vllm
def test_glore_label_cli_on_smoke_rollouts(tmp_path, smoke_config_path, tiny_policy):
    """The real chain: data -> policy -> sample -> rollout (Ray Data + the engine)
    -> `glore label`."""
    from glore_ray import cli, pipeline

    overrides = [f"output_dir={tmp_path}"]
    cfg = load_config(smoke_config_path, overrides)
    try:
        for name in ("data", "policy", "sample", "rollout"):
            assert pipeline.run_stage(cfg, name, log=lambda m: None) is not None
    finally:
        import ray

        ray.shutdown()
    assert cli.main(["label", str(smoke_config_path), *overrides]) == 0
    paths = pipeline.RunPaths(cfg)
    for which in ("orm", "sorm", "global", "local"):
        assert (paths.training_set(which) / "train.parquet").exists()
    done = json.loads((paths.stage("label") / "_DONE.json").read_text())["summary"]
    assert done["n_samples"] > 0 and "sorm" in done["oracle_quality"]
    assert Path(paths.training_set("sorm") / "trl" / "eval.parquet").exists()


def test_label_stage_equals_labelling_in_memory(tmp_path, smoke_config_path):
    """The streamed stage (Ray Data groupby, sorted passes, balancing from counts) writes row for
    row what the plain in-memory rules give: make_labels, method.balance, the pair rules."""
    from glore_ray.method.balance import balance
    from glore_ray.method.pairs import correct_solutions, global_pairs, local_pairs
    from glore_ray.records import StepLabel, read_rows, write_rows
    from glore_ray.stages import build, label
    from glore_ray.stages import data as qstage

    cfg, paths = _prepared(tmp_path, smoke_config_path, "seed=3", "rollout.rollout_questions=null")
    samples, rollouts = _world_rows(cfg, n_q=12)
    samples = samples[::-1]  # the file's order must not matter: rows come in (qid, sample_id)
    write_rows(paths.samples, samples, Sample)
    write_rows(paths.rollouts, rollouts, Rollout)
    label.run(cfg, paths, log=lambda m: None)

    questions = {q.qid: q for q in qstage.read(paths, "train")}
    expected, _, _ = make_labels(questions, samples, rollouts, cfg.label)
    assert read_rows(paths.labels, StepLabel) == expected
    hard: dict = {}
    for r in expected:
        hard.setdefault((r.qid, r.sample_id), []).append(r)
    eval_q = build.split_qids({s.qid for s in samples}, cfg.label.holdout_fraction, cfg.seed)
    sorm = [{"qid": s.qid, "sample_id": s.sample_id, "question": questions[s.qid].question,
             "steps": s.steps, "labels": [r.sorm_hard for r in hard[(s.qid, s.sample_id)]],
             "soft_labels": [r.sorm_soft for r in hard[(s.qid, s.sample_id)]],
             "mask": [1.0] * len(s.steps)}
            for s in sorted(samples, key=lambda s: (s.qid, s.sample_id))]
    sorm, _ = balance(sorm, cfg.seed)
    for split in ("train", "eval"):
        got = pq.read_table(paths.training_set("sorm") / f"{split}.parquet").to_pylist()
        assert got == [r for r in sorm if (r["qid"] in eval_q) == (split == "eval")]
    by_key = {(s.qid, s.sample_id): s for s in samples}
    glob, loc = [], []
    for qid in sorted({s.qid for s in samples}):
        qs = [s for s in samples if s.qid == qid]
        rs = [r for r in rollouts if r.qid == qid]
        sols = correct_solutions(questions[qid], qs, rs, by_key)
        glob += [{k: v for k, v in p.items() if k != "source"} for p in global_pairs(
            questions[qid], qs, sols, cfg.label.max_global_pairs_per_question, cfg.seed,
            cfg.label.global_from_rollouts)]
        per_s: dict = {}
        for r in rs:
            per_s.setdefault((r.qid, r.sample_id), []).append(r)
        loc += local_pairs(questions[qid], qs,
                           {k: [r.sorm_hard for r in v] for k, v in hard.items()}, per_s, sols,
                           cfg.label.max_local_pairs_per_question, cfg.seed)
    for which, rows in (("global", glob), ("local", loc)):
        got = [r for split in ("train", "eval") for r in pq.read_table(
            paths.training_set(which) / f"{split}.parquet").to_pylist()]
        assert sorted(got, key=lambda r: r["qid"]) == rows and rows, which


def test_label_stage_names_inconsistent_rollouts_in_one_line(tmp_path, smoke_config_path):
    """A rollout of a sample that does not exist, found inside a Ray task, reaches the user as a
    plain ValueError that says what to do, and no set folder looks finished."""
    from glore_ray.pipeline import RunPaths
    from glore_ray.records import write_rows
    from glore_ray.stages import data as qstage
    from glore_ray.stages import label

    cfg = load_config(smoke_config_path, [f"output_dir={tmp_path}", "data.dependency.n_train=20",
                                          "data.dependency.n_test=5"])
    paths = RunPaths(cfg)
    qstage.run(cfg, paths, log=lambda m: None)
    samples, rollouts = _world_rows(cfg, n_q=3)
    rollouts.append(Rollout(samples[0].qid, 99, 0, 0, "x", False))
    write_rows(paths.samples, samples, Sample)
    write_rows(paths.rollouts, rollouts, Rollout)
    with pytest.raises(ValueError) as e:
        label.run(cfg, paths, log=lambda m: None)
    assert type(e.value) is ValueError and "rerun the rollout stage" in str(e.value)
    assert "\n" not in str(e.value)
    assert not (paths.training_set("orm") / "train.parquet").exists()


def test_label_stage_with_a_rollout_subset(tmp_path, smoke_config_path):
    """rollout.rollout_questions: every sample reaches the ORM set and global pairs; only the
    rolled-out questions reach the step labels, the SORM set and the local pairs (the stage
    equals labelling in memory with the same subset)."""
    from glore_ray.records import StepLabel, read_rows, write_rows
    from glore_ray.stages import data as qstage
    from glore_ray.stages import label
    from glore_ray.stages.rollout import rolled_out_qids

    cfg, paths = _prepared(tmp_path, smoke_config_path, "rollout.n_questions=12",
                           "rollout.rollout_questions=4")
    samples, rollouts = _world_rows(cfg, n_q=12)
    rolled = rolled_out_qids(cfg, paths)
    assert len(rolled) == 4 and rolled < {s.qid for s in samples}
    rollouts = [r for r in rollouts if r.qid in rolled]
    write_rows(paths.samples, samples, Sample)
    write_rows(paths.rollouts, rollouts, Rollout)
    summary = label.run(cfg, paths, log=lambda m: None)

    questions = {q.qid: q for q in qstage.read(paths, "train")}
    expected, _, _ = make_labels(questions, samples, rollouts, cfg.label, rolled_qids=rolled)
    assert read_rows(paths.labels, StepLabel) == expected
    assert {r.qid for r in expected} == rolled
    assert summary["rolled_out_samples"] == sum(s.qid in rolled for s in samples)

    def qids(which):
        return {r["qid"] for split in ("train", "eval") for r in pq.read_table(
            paths.training_set(which) / f"{split}.parquet").to_pylist()}

    assert qids("orm") == {s.qid for s in samples}
    assert qids("sorm") <= rolled and qids("local") and qids("local") <= rolled
    assert qids("global") - rolled  # the global refiner learns from every question
    # a subset that covers every sampled question is no subset
    assert rolled_out_qids(load_config(smoke_config_path, [
        f"output_dir={tmp_path}", "rollout.n_questions=12", "rollout.rollout_questions=12"]),
        paths) is None
