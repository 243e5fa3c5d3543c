"""Stage order, the run folder, and resume.

Each stage is one module, ``glore_ray/stages/<name>.py``, holding ``run(cfg, paths, log) -> dict``
(a small summary), ``READS``, ``WHAT`` and, for a stage that keeps its finished parts across an
interruption, ``RESUMES = True``. A stage's outputs live in its own folder with a ``_DONE.json``
naming the hash of what the stage reads (``READS``: whole sections such as ``"label"`` or single
fields such as ``"rollout.k_rollouts"``) and what every stage upstream of it reads, plus the seed,
with the config's *knobs* left out (fields declared with ``config.knob()``: pool and batch sizes,
actor and worker resources, ports, checkpoint cadence, ...). Rerunning a finished stage with the
same config is a no-op; changing ``label.balance`` reruns label and everything after it, but not
the rollouts; changing ``rollout.k_rollouts`` reruns rollout onwards but keeps the samples;
``rollout.temperature`` re-samples; ``rollout.max_actors`` or ``serve.port`` reruns nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import yaml

from glore_ray.config import RunConfig
from glore_ray.records import write_json
from glore_ray.stages import data, evaluate, label, policy, rollout, sample, train


@dataclass(frozen=True)
class Stage:
    """A stage module under its name: ``run``, ``reads``, ``what`` and ``resumes`` are its own."""

    module: ModuleType

    @property
    def name(self) -> str:
        return self.module.__name__.rsplit(".", 1)[-1]

    @property
    def reads(self) -> tuple[str, ...]:
        """Dotted config paths this stage itself reads (a section, or one field); knobs in a
        section are left out of the hash. What upstream stages read is added by ``stage_hash``."""
        return self.module.READS

    @property
    def what(self) -> str:
        return self.module.WHAT

    @property
    def resumes(self) -> bool:
        return getattr(self.module, "RESUMES", False)

    def run(self, cfg: RunConfig, paths: RunPaths, log=print) -> dict:
        return self.module.run(cfg, paths, log)


STAGES: list[Stage] = [Stage(m) for m in (data, policy, sample, rollout, label, train, evaluate)]
STAGE_NAMES = [s.name for s in STAGES]


class RunPaths:
    """Where every stage reads and writes, under ``<output_dir>/<name>/``."""

    def __init__(self, cfg: RunConfig):
        # Absolute: Ray workers (train, serve) do not share the driver's working directory.
        self.root = cfg.run_dir.resolve()
        self._policy_cfg = cfg.policy

    def stage(self, name: str) -> Path:
        return self.root / name

    @property
    def stage_names(self) -> list[str]:
        """Every stage's folder name, in stage order (for a stage that reports on the others)."""
        return list(STAGE_NAMES)

    @property
    def questions_train(self) -> Path:
        return self.root / "data" / "train.parquet"

    @property
    def questions_test(self) -> Path:
        return self.root / "data" / "test.parquet"

    @property
    def policy(self) -> Path:
        return self.root / "policy" / "model"

    @property
    def policy_model(self) -> str:
        """The folder or hub id of the policy every later stage loads: this run's policy folder
        (the tiny policy, or the SFT of ``policy.model``), else ``policy.model`` resolved (local
        folders made absolute, since Ray workers run in their own working directories)."""
        p = self._policy_cfg
        if p.model is None or p.sft is not None:
            return str(self.policy)
        from glore_ray.hub import resolve_model

        return resolve_model(p.model)

    @property
    def samples(self) -> Path:
        return self.root / "sample" / "samples.parquet"

    @property
    def rollouts(self) -> Path:
        return self.root / "rollout" / "rollouts.parquet"

    @property
    def labels(self) -> Path:
        return self.root / "label" / "step_labels.parquet"

    def training_set(self, which: str) -> Path:
        """which: orm, sorm, global, local."""
        return self.root / "label" / "sets" / which

    def model(self, which: str) -> Path:
        """which: orm, sorm, global, local."""
        return self.root / "train" / which

    @property
    def report(self) -> Path:
        return self.root / "evaluate"


def stage_reads(name: str, cfg: RunConfig | None = None) -> list[str]:
    """The dotted config paths read by this stage and all stages before it, in stage order
    (with ``cfg``: plus the train fields a ``policy.sft`` fine-tune reads)."""
    if name not in STAGE_NAMES:
        raise KeyError(f"no stage {name!r}; stages: {STAGE_NAMES}")
    reads: list[str] = []
    for s in STAGES[: STAGE_NAMES.index(name) + 1]:
        extra = policy.SFT_READS if (s.module is policy and cfg is not None
                                     and cfg.policy.sft is not None) else ()
        reads += [x for x in (*s.reads, *extra) if x not in reads]
    return reads


def stage_hash(cfg: RunConfig, name: str) -> str:
    """Hash of what this stage and all stages before it read (knobs left out), plus the seed."""
    return cfg.fields_hash(*stage_reads(name, cfg))


def is_done(cfg: RunConfig, paths: RunPaths, name: str) -> bool:
    marker = paths.stage(name) / "_DONE.json"
    return marker.exists() and json.loads(marker.read_text()).get("hash") == stage_hash(cfg, name)


def mark_done(cfg: RunConfig, paths: RunPaths, name: str, summary: dict, seconds: float) -> None:
    write_json(paths.stage(name) / "_DONE.json",
               {"hash": stage_hash(cfg, name), "seconds": round(seconds, 2), "summary": summary})


def run_stage(cfg: RunConfig, name: str, log=print, force: bool = False) -> dict:
    """Run one stage (skipping it when already done for this config); returns its summary."""
    stage = next(s for s in STAGES if s.name == name)
    paths = RunPaths(cfg)
    if not force and is_done(cfg, paths, name):
        log(f"[{name}] already done for this config: skipped")
        return json.loads((paths.stage(name) / "_DONE.json").read_text())["summary"]
    for s in STAGES[: STAGE_NAMES.index(name)]:
        if not is_done(cfg, paths, s.name):
            raise ValueError(f"stage {name!r} needs stage {s.name!r} first "
                               f"(run `glore {s.name}` or `glore run`)")
    # A stage made for another config starts from a clean folder; one that was interrupted too,
    # unless it keeps its finished parts itself (``RESUMES`` in its module: train keeps each
    # finished model) and was started for this very config.
    started = paths.stage(name) / "_STARTED.json"
    h = stage_hash(cfg, name)
    if paths.stage(name).exists() and not (
            stage.resumes and started.exists() and json.loads(started.read_text())["hash"] == h):
        shutil.rmtree(paths.stage(name))
    paths.stage(name).mkdir(parents=True, exist_ok=True)
    write_json(started, {"hash": h})
    log(f"[{name}] {stage.what} ...")
    t0 = time.time()
    summary = stage.run(cfg, paths, log) or {}
    seconds = time.time() - t0
    mark_done(cfg, paths, name, summary, seconds)
    log(f"[{name}] done in {seconds:.1f}s")
    return summary


class RunFolderBusy(RuntimeError):
    """Another process is writing this run folder."""


@contextlib.contextmanager
def run_lock(cfg: RunConfig):
    """One writer per run folder: an advisory lock (``<run folder>/.lock``, holding the writer's
    pid) for as long as a ``glore run`` or a stage runs. Two writers would overwrite each other's
    temporary files and wipe each other's stage folders; the second one stops at once instead.
    The lock goes with the process, so a killed run leaves nothing to clean up."""
    root = cfg.run_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    f = open(root / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise RunFolderBusy(f"run folder {root} is in use by pid {pid}: wait for it to finish, "
                            "stop it, or run with another name= / output_dir=") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def save_config(cfg: RunConfig) -> Path:
    path = cfg.run_dir / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def run_all(cfg: RunConfig, log=print, until: str | None = None) -> dict:
    """Every stage in order; finished ones are skipped. Returns {stage: summary}."""
    save_config(cfg)
    summaries: dict = {}
    t0 = time.time()
    for i, s in enumerate(STAGES, 1):
        log(f"=== pipeline: stage {i}/{len(STAGES)} {s.name} ({time.time() - t0:.0f}s elapsed) ===")
        summaries[s.name] = run_stage(cfg, s.name, log)
        if s.name == until:
            break
    return summaries
