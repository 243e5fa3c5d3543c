"""Stage reuse by the fields a stage reads (pure CPU, no Ray; a second or two).

Resource / execution knobs (``config.knob()``) never invalidate a stage's outputs; anything a
stage reads that can change what it writes does, and so does everything upstream of it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from glore_ray import pipeline
from glore_ray.config import ConfigError, RunConfig, is_knob, load_config
from glore_ray.pipeline import STAGE_NAMES, STAGES, RunPaths, is_done, mark_done, stage_hash
from glore_ray.stages.policy import SFT_READS

REPO = Path(__file__).resolve().parents[1]

# Fields that no stage reads: serving-only settings (the serve graph reads them, not evaluate)
# and `glore plan`'s cost assumptions. Everything else that is not a knob must be read by a stage.
NOT_READ_BY_A_STAGE = {"name", "output_dir", "seed", "plan", "serve.default_mode",
                       "serve.max_question_chars", "serve.engine", "serve.max_best_of"}


def _cfg(*overrides: str) -> RunConfig:
    return load_config(REPO / "configs/smoke.yaml", list(overrides))


def _same(stage: str, *overrides: str) -> bool:
    return stage_hash(_cfg(), stage) == stage_hash(_cfg(*overrides), stage)


def _first_rerun(*overrides: str) -> str | None:
    """The first stage whose hash an override changes (None: every stage is reused)."""
    return next((s for s in STAGE_NAMES if not _same(s, *overrides)), None)


# ------------------------------------------------------------------ both ways, per field

@pytest.mark.parametrize("override", [
    "rollout.k_rollouts=7", "rollout.max_actors=3", "rollout.batch_size=2",
    "rollout.num_cpus=2", "rollout.num_gpus=1", "rollout.kv_cache_gib=8",
    "rollout.prefix_caching=false", "rollout.block_size=16", "rollout.enforce_eager=false",
    "rollout.budgeted=true", "rollout.budget_chunk=3"])
def test_pool_sizes_and_rollout_only_fields_keep_the_samples(override):
    assert _same("data", override) and _same("policy", override)
    assert _same("sample", override)


def test_k_rollouts_reruns_rollout_onwards_but_not_sample():
    assert _first_rerun("rollout.k_rollouts=7") == "rollout"
    assert _first_rerun("rollout.budgeted=true") == "rollout"


@pytest.mark.parametrize("override", ["rollout.temperature=0.7", "rollout.top_p=0.9",
                                      "rollout.k_samples=3", "rollout.n_questions=5",
                                      "rollout.max_tokens=64", "rollout.dtype=bfloat16",
                                      "rollout.engine=hf"])
def test_sampling_parameters_resample(override):
    assert _first_rerun(override) == "sample"


@pytest.mark.parametrize("override", [
    "rollout.max_actors=4", "rollout.batch_size=1", "train.cpus_per_worker=0.5",
    "train.resources_per_worker={accel: 1}", "train.checkpoint_every=1", "train.max_failures=0",
    "train.log_every=1", "serve.port=9001", "serve.host=0.0.0.0", "serve.generator_replicas=2",
    "serve.replica_cpus=2", "serve.max_batch_size=4", "serve.generator_max_replicas=4",
    "serve.api_key_env=OTHER", "serve.max_body_bytes=4096", "policy.snapshot_every=10",
    "serve.default_mode=draft", "serve.max_best_of=5", "plan.prompt_tokens=50"])
def test_knobs_and_fields_no_stage_reads_rerun_nothing(override):
    assert _first_rerun(override) is None


def test_serve_port_keeps_evaluate_but_the_graph_parameters_do_not():
    assert _same("evaluate", "serve.port=9001")
    assert _first_rerun("refine.where_threshold=0.3") == "evaluate"
    assert _first_rerun("refine.when_threshold=0.3") == "evaluate"
    assert _first_rerun("refine.always_refine=false") == "evaluate"
    assert _first_rerun("refine.max_new_tokens=64") == "evaluate"
    assert _first_rerun("evaluate.n_plot_examples=1") == "evaluate"  # the report changes
    assert _first_rerun("refine.best_of=5") == "evaluate"


def test_label_balance_reruns_label_not_rollout():
    assert _first_rerun("label.balance=false") == "label"
    assert not _same("train", "label.balance=false")  # and everything downstream


@pytest.mark.parametrize("override,first", [
    ("train.num_workers=1", "train"),  # effective batch
    ("train.zero_stage=1", "train"), ("train.bf16=true", "train"), ("train.use_gpu=true", "train"),
    ("train.engine=ddp", "train"), ("train.orm.lr=0.001", "train"),
    ("policy.steps=10", "policy"), ("data.dependency.n_test=10", "data"), ("seed=1", "data")])
def test_content_fields_rerun_from_their_stage(override, first):
    assert _first_rerun(override) == first


@pytest.mark.parametrize("override", ["train.bf16=false", "train.max_len=400",
                                      "train.zero_stage=3", "train.warmup_ratio=0.2"])
def test_the_policy_sft_reads_the_train_loop_fields(override):
    # gsm8k-smoke fine-tunes its policy with the train section's loop: a change there is a new
    # policy (and new samples); the tiny policy's runs rerun only their train stage (above)
    gsm8k = load_config(REPO / "configs/gsm8k-smoke.yaml", [])
    changed = load_config(REPO / "configs/gsm8k-smoke.yaml", [override])
    assert stage_hash(gsm8k, "data") == stage_hash(changed, "data")
    assert stage_hash(gsm8k, "policy") != stage_hash(changed, "policy")


def test_the_policy_sft_keeps_its_policy_when_a_reward_model_changes():
    # the reward models' own steps are not the SFT's: the policy and its samples are kept
    gsm8k = load_config(REPO / "configs/gsm8k-smoke.yaml", [])
    steps = load_config(REPO / "configs/gsm8k-smoke.yaml", ["train.orm.max_steps=3"])
    assert stage_hash(gsm8k, "sample") == stage_hash(steps, "sample")
    assert stage_hash(gsm8k, "train") != stage_hash(steps, "train")


# ------------------------------------------------------------------ the read lists and knobs

def _content_leaves(model: BaseModel, prefix: str = "") -> list[str]:
    """Dotted paths of every non-knob leaf field."""
    out = []
    for name, f in type(model).model_fields.items():
        if is_knob(f):
            continue
        value = getattr(model, name)
        out += (_content_leaves(value, f"{prefix}{name}.") if isinstance(value, BaseModel)
                else [prefix + name])
    return out


def test_every_read_path_names_a_config_field_and_no_knob():
    cfg = RunConfig()
    for s in STAGES:
        assert s.reads or s.name == "rollout", s.name
        for path in (*s.reads, *(SFT_READS if s.name == "policy" else ())):
            cfg.get_path(path)  # raises ConfigError on a renamed or misspelt field
            assert not cfg.path_is_knob(path), f"stage {s.name} lists the knob {path}"
    with pytest.raises(ConfigError, match="rollout.k_rolouts"):
        cfg.fields_hash("rollout.k_rolouts")


def test_every_content_field_is_read_by_some_stage():
    """A new field that changes outputs must be added to a stage's reads (or be a knob)."""
    reads = pipeline.stage_reads(STAGE_NAMES[-1])
    unread = [p for p in _content_leaves(RunConfig())
              if not any(p == r or p.startswith(r + ".") for r in reads)
              and not any(p == x or p.startswith(x + ".") for x in NOT_READ_BY_A_STAGE)]
    assert unread == []


def test_knobs_are_leaf_fields_and_the_expected_ones():
    cfg = RunConfig()
    knobs = RunConfig.knob_paths()
    for path in knobs:
        assert cfg.path_is_knob(path)
        assert not isinstance(cfg.get_path(path), BaseModel), path
    assert {"rollout.batch_size", "rollout.max_actors", "rollout.num_gpus", "train.cpus_per_worker",
            "train.checkpoint_every", "serve.port", "serve.replica_gpus"} <= set(knobs)
    for content in ("rollout.temperature", "rollout.k_rollouts", "rollout.dtype",
                    "train.num_workers", "train.zero_stage", "train.bf16", "train.use_gpu",
                    "refine.where_threshold", "evaluate.n_plot_examples", "policy.eval_questions"):
        assert content not in knobs


def test_a_knob_inside_a_whole_section_is_left_out():
    base = RunConfig()
    assert base.fields_hash("train") == base.model_copy(
        update={"train": base.train.model_copy(update={"log_every": 3})}).fields_hash("train")
    assert base.fields_hash("train") != base.model_copy(
        update={"train": base.train.model_copy(update={"eval_fraction": 0.2})}).fields_hash("train")


# ------------------------------------------------------------------ is_done / run_stage

def test_is_done_survives_knob_changes_only(tmp_path):
    cfg = _cfg(f"output_dir={tmp_path}")
    paths = RunPaths(cfg)
    for name in STAGE_NAMES:
        paths.stage(name).mkdir(parents=True)
        mark_done(cfg, paths, name, {"ok": True}, 0.0)
    knobs = _cfg(f"output_dir={tmp_path}", "rollout.max_actors=2", "rollout.batch_size=2",
                 "train.cpus_per_worker=2", "serve.port=9001")
    assert all(is_done(knobs, RunPaths(knobs), n) for n in STAGE_NAMES)
    temp = _cfg(f"output_dir={tmp_path}", "rollout.temperature=0.5")
    assert [n for n in STAGE_NAMES if is_done(temp, RunPaths(temp), n)] == ["data", "policy"]


def test_run_stage_reuses_the_data_stage_across_knobs(tmp_path):
    small = ["data.dependency.n_train=20", "data.dependency.n_test=5", f"output_dir={tmp_path}"]
    lines: list[str] = []
    cfg = _cfg(*small)
    assert pipeline.run_stage(cfg, "data", log=lines.append) == {"n_train": 20, "n_test": 5}
    assert not any("already done" in m for m in lines)
    lines.clear()
    again = _cfg(*small, "rollout.max_actors=4", "serve.port=9001", "rollout.k_rollouts=1")
    assert pipeline.run_stage(again, "data", log=lines.append) == {"n_train": 20, "n_test": 5}
    assert any("already done" in m for m in lines)
    lines.clear()
    other = _cfg(*small[1:], "data.dependency.n_train=10")
    assert pipeline.run_stage(other, "data", log=lines.append) == {"n_train": 10, "n_test": 5}
    assert not any("already done" in m for m in lines)
