"""The fine-tunes' disk rules (train/ray_trainer.py): a checkpoint's size is known before
training, a disk that cannot hold it is refused before anything is trained, and a finished fit's
resumable checkpoints are removed (inside a real fit: tests/stages/test_train_ray.py)."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest


def _spec(policy: Path, **kw):
    from glore_ray.train.loop import LoopSpec

    return LoopSpec(name="orm", kind="reward", policy=str(policy), **kw)


def test_checkpoint_bytes_counts_weights_and_adam_state(tiny_policy):
    from safetensors.torch import load_file

    from glore_ray.train.ray_trainer import checkpoint_bytes

    n = sum(t.numel() for t in load_file(str(Path(tiny_policy) / "model.safetensors")).values())
    assert checkpoint_bytes(_spec(tiny_policy)) == 16 * n  # fp32 weights + master + 2 moments
    assert checkpoint_bytes(_spec(tiny_policy, lora_rank=4)) == 4 * n
    assert checkpoint_bytes(_spec(Path("org/a-hub-model"))) is None  # unknown: nothing checked


def test_a_disk_too_small_is_refused_before_training(tiny_policy, tmp_path, monkeypatch):
    from glore_ray.train import ray_trainer

    need = ray_trainer.checkpoint_bytes(_spec(tiny_policy))
    assert ray_trainer.check_disk(_spec(tiny_policy), tmp_path / "ray", tmp_path / "orm") == need
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ray_trainer.shutil, "disk_usage",
                        lambda p: usage(10 * need, 9 * need, need))  # one checkpoint's worth
    with pytest.raises(ray_trainer.NotEnoughDisk, match="GiB free on the disk of .*nothing was"):
        ray_trainer.check_disk(_spec(tiny_policy), tmp_path / "ray", tmp_path / "orm")


def test_removing_checkpoints_keeps_the_metrics(tmp_path):
    from glore_ray.train.ray_trainer import _remove_checkpoints

    run = tmp_path / "orm"
    for step in ("step_000002", "step_000004"):
        (run / step / "ckpt").mkdir(parents=True)
        (run / step / "ckpt" / "optim.pt").write_bytes(b"x" * 1000)
    (run / "metrics.jsonl").write_text("{}\n")
    note = _remove_checkpoints(run)
    assert "2 resumable checkpoint(s)" in note
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]
    assert _remove_checkpoints(run) == "" and _remove_checkpoints(tmp_path / "none") == ""
    shutil.rmtree(run)
