"""``train.allocator``: which malloc the train workers get (train/ray_trainer.allocator_env), and
the loop's report of the one it really runs with (inside a real Ray Train fit:
tests/stages/test_train_ray.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_allocator_env(monkeypatch):
    from glore_ray.train import ray_trainer

    notes: list[str] = []
    assert ray_trainer.allocator_env("system", "orm", notes.append) == {}
    monkeypatch.setattr(ray_trainer, "find_jemalloc", lambda: "libjemalloc.so.2")
    monkeypatch.setenv("LD_PRELOAD", "libother.so")  # a preload already set is kept, first
    for allocator in ("auto", "jemalloc"):
        env = ray_trainer.allocator_env(allocator, "orm", notes.append)
        assert env == {"LD_PRELOAD": "libother.so libjemalloc.so.2"}
    assert not notes
    monkeypatch.setattr(ray_trainer, "find_jemalloc", lambda: None)  # a node without it
    assert ray_trainer.allocator_env("auto", "orm", notes.append) == {}
    assert len(notes) == 1 and "glibc malloc" in notes[0] and "libjemalloc2" in notes[0]
    with pytest.raises(RuntimeError, match="apt-get install libjemalloc2.*allocator=system"):
        ray_trainer.allocator_env("jemalloc", "orm", notes.append)


def test_the_loop_reports_the_malloc_it_runs_with():
    from glore_ray.train.ray_trainer import find_jemalloc

    code = "from glore_ray.train.loop import malloc_name; print(malloc_name())"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin"}, check=True)
    assert plain.stdout.strip() == "system"
    lib = find_jemalloc()
    if lib is None:
        pytest.skip("no libjemalloc.so.2 on this machine (apt-get install libjemalloc2)")
    pre = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "LD_PRELOAD": lib}, check=True)
    assert pre.stdout.strip() == "jemalloc"
