"""Ray Train wiring: one ``TorchTrainer`` per fine-tune, DeepSpeed inside each worker.

- data: the set's ``train.parquet`` / ``eval.parquet`` as Ray Data datasets; each worker reads its
  shard with ``ray.train.get_dataset_shard``;
- checkpoints: every ``checkpoint_every`` steps every rank saves its DeepSpeed shard to a local
  folder and reports it; Ray Train merges the shards into one checkpoint folder under
  ``<run>/train/ray/<model>/`` and keeps the last two. On a worker failure
  (``FailureConfig(max_failures)``) the group restarts and the loop resumes from
  ``ray.train.get_checkpoint()``. They exist to resume a fit: once its model is exported they are
  removed (``train.keep_checkpoints`` keeps them) — with the optimizer state a checkpoint is ~4x
  the model, and a run has five fine-tunes. Before training, ``check_disk`` refuses to start
  when the disk cannot hold one checkpoint and the exported model;
- metrics: every report goes through Ray Train; ``MetricsCallback`` (a Ray Train ``UserCallback``)
  appends them to ``metrics.jsonl`` and TensorBoard event files — MLflow or W&B callbacks plug in
  the same way through ``RunConfig(callbacks=...)``;
- the end: the driver consolidates the final checkpoint into a plain HF folder (``loop.export_hf``;
  DeepSpeed's zero_to_fp32 for ZeRO shards).

Fault injection for the resume test: ``GLORE_TRAIN_FAIL_AT_STEP=N`` (+ ``GLORE_TRAIN_FAIL_MARKER``)
makes the last rank ``os._exit(1)`` once, after step N.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from glore_ray.train.loop import (
    DeepSpeedEngine,
    Engine,
    Hooks,
    LoopSpec,
    NonFiniteLoss,
    export_hf,
    progress_line,
)

FAIL_AT_ENV = "GLORE_TRAIN_FAIL_AT_STEP"
FAIL_MARKER_ENV = "GLORE_TRAIN_FAIL_MARKER"


# ------------------------------------------------------------------ inside each worker

def train_worker(config: dict) -> None:
    """``train_loop_per_worker``: Ray Train specifics only; the loop itself is ``loop.train``."""
    import ray.train

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    spec = LoopSpec(**config["spec"])
    train_rows = list(ray.train.get_dataset_shard("train").iter_rows())
    eval_shard = ray.train.get_dataset_shard("eval")
    eval_rows = list(eval_shard.iter_rows()) if eval_shard is not None else []

    def report(metrics: dict) -> None:
        ray.train.report(_clean(metrics))

    def save(engine: Engine, state: dict, metrics: dict) -> None:
        # every rank writes its shard into its own temp folder; Ray merges them in storage
        with tempfile.TemporaryDirectory(prefix=f"glore-ckpt-r{rank}-") as tmp:
            try:
                engine.save(tmp, state)
            except (OSError, RuntimeError) as e:  # torch.save says "unexpected pos" on a full disk
                raise CheckpointWriteError(
                    f"[train {spec.name}] writing the step-{state['step']} checkpoint to {tmp} "
                    f"failed ({e}); {_free_gib(tmp):.1f} GiB free there, one checkpoint is "
                    f"~{(config.get('checkpoint_bytes') or 0) / 2**30:.1f} GiB: free disk "
                    f"space or point TMPDIR at a larger disk") from e
            has_files = any(Path(tmp).iterdir())
            ckpt = ray.train.Checkpoint.from_directory(tmp) if has_files else None
            ray.train.report(_clean({**metrics, "checkpoint_step": state["step"]}),
                             checkpoint=ckpt, checkpoint_dir_name=f"step_{state['step']:06d}")

    def load(engine: Engine) -> dict | None:
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as folder:
            return engine.load(folder)

    fail_at, marker = config.get("fail_at_step"), config.get("fail_marker")

    def after_step(step: int) -> None:
        if fail_at and step == fail_at and rank == ctx.get_world_size() - 1 and marker \
                and not os.path.exists(marker):
            # Reports are processed asynchronously: let the controller commit what was already
            # reported (the last checkpoint included) so the kill lands after it, as in a real
            # crash some time after a checkpoint, not in the middle of registering one.
            from ray.train import CheckpointConsistencyMode

            ray.train.get_all_reported_checkpoints(CheckpointConsistencyMode.COMMITTED,
                                                   timeout_s=300)
            Path(marker).write_text(f"killed rank {rank} after step {step}\n")
            print(f"[fault injection] rank {rank} exits after step {step}", flush=True)
            os._exit(1)

    from glore_ray.train.loop import train

    # progress lines are printed by MetricsCallback on the controller, from the reports
    train(spec, train_rows, eval_rows, Hooks(report=report, save=save, load=load,
                                             after_step=after_step, progress=None))


def _clean(metrics: dict) -> dict:
    """Reportable metrics: numbers and strings, NaN kept as None-free floats."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}


# ------------------------------------------------------------------ metrics on the controller

def _callback_class():
    from ray.train import UserCallback

    class MetricsCallback(UserCallback):
        """Runs on the Ray Train controller after every ``ray.train.report``: appends rank 0's
        metrics to ``metrics.jsonl`` and writes TensorBoard scalars (tensorboardX)."""

        def __init__(self, folder: str):
            self.folder = folder
            self._tb = None

        def after_report(self, run_context, metrics, checkpoint):
            if not metrics:
                return
            m = dict(metrics[0])
            m["checkpoint"] = checkpoint.path if checkpoint is not None else None
            m["time"] = time.time()
            print(progress_line(m), flush=True)
            Path(self.folder).mkdir(parents=True, exist_ok=True)
            with open(Path(self.folder) / "metrics.jsonl", "a") as f:
                f.write(json.dumps(m) + "\n")
            try:
                if self._tb is None:
                    from tensorboardX import SummaryWriter

                    self._tb = SummaryWriter(str(Path(self.folder) / "tensorboard"))
                for k, v in m.items():
                    if isinstance(v, (int, float)) and k != "step":
                        self._tb.add_scalar(k, v, global_step=int(m.get("step", 0)))
                self._tb.flush()
            except ImportError:
                pass

    return MetricsCallback


# ------------------------------------------------------------------ the driver side

def fit(spec: LoopSpec, train_path: str | Path, eval_path: str | Path | None,
        storage: str | Path, out_dir: str | Path, *, num_workers: int = 2,
        use_gpu: bool = False, cpus_per_worker: float = 1.0,
        resources_per_worker: dict[str, float] | None = None, max_failures: int = 2,
        eval_fraction: float = 0.1, keep_checkpoints: bool = False, allocator: str = "system",
        log=print) -> dict:
    """Train ``spec`` on a real Ray cluster and write the HF folder ``out_dir``; then remove the
    run's resumable checkpoints unless ``keep_checkpoints``.

    Returns a summary: final metrics, the report history, restarts and timings."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from glore_ray.ray_env import init_ray

    init_ray()
    storage = Path(storage).resolve()
    run_dir = storage / spec.name
    if run_dir.exists():  # a previous, interrupted attempt of this stage: start clean
        shutil.rmtree(run_dir)
    ckpt_bytes = check_disk(spec, storage, Path(out_dir))
    train_ds, eval_ds = _datasets(train_path, eval_path, eval_fraction, spec.seed, num_workers,
                                  log)
    worker_env = allocator_env(allocator, spec.name, log)
    resources = {"CPU": cpus_per_worker, **(resources_per_worker or {})}
    if use_gpu:
        resources.setdefault("GPU", 1)
    config: dict[str, Any] = {"spec": asdict(spec), "checkpoint_bytes": ckpt_bytes}
    if os.environ.get(FAIL_AT_ENV):
        config["fail_at_step"] = int(os.environ[FAIL_AT_ENV])
        config["fail_marker"] = (os.environ.get(FAIL_MARKER_ENV)
                                 or str(storage / f"{spec.name}.killed"))
    trainer = TorchTrainer(
        train_worker, train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=spec.name, storage_path=str(storage),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[_callback_class()(str(run_dir))],
            worker_runtime_env={"env_vars": worker_env} if worker_env else None,
            logging_config=LoggingConfig(log_level="WARNING")),
        datasets={"train": train_ds, **({"eval": eval_ds} if eval_ds is not None else {})})
    t0 = time.time()
    log(f"[train {spec.name}] {num_workers} workers, "
        f"{spec.engine}{' ZeRO-%d' % spec.zero_stage if spec.engine == 'deepspeed' else ''}, "
        f"up to {spec.max_steps or 'all'} steps")
    result = trainer.fit()
    fit_s = time.time() - t0
    if (result.metrics or {}).get("nonfinite"):
        kept = f"; the last good checkpoint is {result.checkpoint.path}" if result.checkpoint \
            else ""
        raise NonFiniteLoss(result.metrics["nonfinite"] + kept)
    if result.checkpoint is None:
        raise RuntimeError(f"[train {spec.name}] finished without a checkpoint")
    t1 = time.time()
    with result.checkpoint.as_directory() as folder:
        tmp = Path(str(out_dir) + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        export_hf(folder, spec, tmp)
    history = _history(run_dir)
    summary = {"model": spec.name, "final": result.metrics, "fit_seconds": round(fit_s, 1),
               "export_seconds": round(time.time() - t1, 1),
               "restarts": len({h["resumed_from"] for h in history
                                if h.get("resumed_from", -1) >= 0}),
               "history": history, "spec": asdict(spec)}
    (tmp / "glore_train.json").write_text(json.dumps(summary, indent=2, default=str))
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    freed = "" if keep_checkpoints else _remove_checkpoints(run_dir)
    log(f"[train {spec.name}] saved {out_dir} ({fit_s:.0f}s training){freed}")
    return summary


# ------------------------------------------------------------------ allocator

JEMALLOC = "jemalloc"  # ctypes.util.find_library's name for libjemalloc.so.2


def find_jemalloc() -> str | None:
    """jemalloc's soname where this node's loader finds it (``libjemalloc.so.2``), else None."""
    import ctypes.util

    return ctypes.util.find_library(JEMALLOC)


def allocator_env(allocator: str, name: str, log=print) -> dict[str, str]:
    """The train workers' extra environment for ``train.allocator``: ``LD_PRELOAD`` of jemalloc
    (after any preload already set), or nothing for glibc's malloc. The soname, not a path: the
    workers' loader searches its own library path (a node without it ignores it, with a line)."""
    if allocator == "system":
        return {}
    lib = find_jemalloc()
    if lib is None:
        if allocator == "jemalloc":
            raise RuntimeError(
                f"[train {name}] train.allocator=jemalloc, but this node has no libjemalloc.so.2: "
                f"install it (Debian/Ubuntu: apt-get install libjemalloc2) or set "
                f"train.allocator=system")
        log(f"[train {name}] glibc malloc: no libjemalloc.so.2 here (apt-get install "
            f"libjemalloc2 cut a SmolLM2 SFT's peak memory by a quarter; train.allocator)")
        return {}
    return {"LD_PRELOAD": " ".join(p for p in (os.environ.get("LD_PRELOAD", ""), lib) if p)}


# ------------------------------------------------------------------ disk

class CheckpointWriteError(RuntimeError):
    """A worker could not write its checkpoint (a full disk, mostly); the message says where."""


class NotEnoughDisk(RuntimeError):
    """The disk cannot hold one checkpoint and the exported model: refused before training."""


def _free_gib(folder: str | Path) -> float:
    return shutil.disk_usage(folder).free / 2**30


def _n_params(spec: LoopSpec) -> int | None:
    """Parameters of the policy, from its safetensors headers; None when it is not a local folder
    of safetensors (a hub id)."""
    folder = Path(spec.policy)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    n = 0
    for f in files:
        with safe_open(str(f), "pt") as h:  # reads the header only
            n += sum(math.prod(h.get_slice(k).get_shape()) for k in h.keys())
    return n


def _checkpoint_bytes_per_param(spec: LoopSpec) -> int:
    # fp32 weights, plus, for a full fine-tune, the optimizer's fp32 master copy and two Adam
    # moments; LoRA trains few parameters
    return 4 if spec.lora_rank else 16


def checkpoint_bytes(spec: LoopSpec) -> int | None:
    """About the bytes of one resumable checkpoint of ``spec`` (16 bytes a parameter for a full
    fine-tune, 4 with LoRA). None when the parameter count is unknown (``_n_params``)."""
    n = _n_params(spec)
    return None if n is None else n * _checkpoint_bytes_per_param(spec)


def check_disk(spec: LoopSpec, storage: Path, out_dir: Path) -> int | None:
    """Refuse to start a fine-tune whose first checkpoint and exported model cannot fit: the
    workers write a checkpoint to TMPDIR, Ray copies it into ``storage``, the export goes to
    ``out_dir`` (fp32 weights). A lower bound — later checkpoints (two are kept while training)
    need more. Returns the checkpoint estimate (None: unknown, nothing checked)."""
    n = _n_params(spec)
    if n is None:
        return None
    ckpt, weights = n * _checkpoint_bytes_per_param(spec), 4 * n  # headers read once
    needs: dict[Path, int] = {}
    for folder, size in ((Path(tempfile.gettempdir()), ckpt), (storage, ckpt),
                         (out_dir.parent, weights)):
        folder = next(p for p in (folder, *folder.parents) if p.exists())
        dev = next((d for d in needs if os.stat(d).st_dev == os.stat(folder).st_dev), folder)
        needs[dev] = needs.get(dev, 0) + size
    for folder, need in needs.items():
        free = shutil.disk_usage(folder).free
        if free < need:
            raise NotEnoughDisk(
                f"[train {spec.name}] needs at least {need / 2**30:.1f} GiB free on the disk of "
                f"{folder} (one checkpoint with optimizer state {ckpt / 2**30:.1f} GiB, written "
                f"to TMPDIR then copied to {storage}, and the {weights / 2**30:.1f} GiB model); "
                f"it has {free / 2**30:.1f} GiB. Free space, or put output_dir / TMPDIR on a "
                f"larger disk; nothing was trained")
    return ckpt


def _remove_checkpoints(run_dir: Path) -> str:
    """Delete the fit's checkpoint folders (its metrics stay); say how much that freed."""
    folders = [p for p in run_dir.glob("step_*") if p.is_dir()] if run_dir.exists() else []
    size = sum(f.stat().st_size for p in folders for f in p.rglob("*") if f.is_file())
    for p in folders:
        shutil.rmtree(p, ignore_errors=True)
    return f"; removed its {len(folders)} resumable checkpoint(s), {size / 2**30:.1f} GiB" \
        if folders else ""


def _history(run_dir: Path) -> list[dict]:
    f = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


def _datasets(train_path, eval_path, eval_fraction: float, seed: int, num_workers: int = 1,
              log=print):
    """Ray Data datasets for the set. Ray Train splits each dataset equally over the workers and
    drops the remainder, so an eval set needs a row per worker: an empty, missing or smaller eval
    file -> a split of train with at least ``num_workers`` rows (none if train is too small)."""
    import pyarrow.parquet as pq
    import ray.data

    train_path = Path(train_path)
    if not train_path.exists():
        raise FileNotFoundError(f"training set not found: {train_path}")
    n_train = pq.ParquetFile(train_path).metadata.num_rows
    if n_train == 0:
        raise ValueError(f"training set {train_path} is empty")
    train_ds = ray.data.read_parquet(str(train_path.resolve()))
    n_file = pq.ParquetFile(eval_path).metadata.num_rows \
        if eval_path and Path(eval_path).exists() else 0
    if n_file >= num_workers:
        return train_ds, ray.data.read_parquet(str(Path(eval_path).resolve()))
    n_eval = max(num_workers, int(n_train * eval_fraction))
    if eval_fraction <= 0 or n_train - n_eval < max(4, num_workers):
        if n_file or eval_fraction > 0:
            log(f"[train] {train_path.parent.name}: {n_file} eval rows for {num_workers} workers "
                f"and {n_train} training rows: no eval metrics for this model")
        return train_ds, None
    if n_file:
        log(f"[train] {train_path.parent.name}: {n_file} eval rows for {num_workers} workers: "
            f"{n_eval} training rows held out for eval instead")
    ds = train_ds.random_shuffle(seed=seed)
    eval_ds, train_ds = ds.split_at_indices([n_eval])
    return train_ds, eval_ds


def load_deepspeed_block(block: dict | str) -> dict:
    """``train.deepspeed``: a mapping, or the path of a DeepSpeed JSON/YAML file; its keys are
    checked (``check_deepspeed_block``) and passed through."""
    if isinstance(block, dict):
        check_deepspeed_block(block)
        return block
    import yaml

    p = Path(block)
    if not p.is_file():
        raise FileNotFoundError(f"train.deepspeed: file not found: {p}")
    data = yaml.safe_load(p.read_text())  # YAML is a superset of JSON
    if not isinstance(data, dict):
        raise ValueError(f"train.deepspeed: {p} must hold a mapping of DeepSpeed config keys")
    check_deepspeed_block(data, str(p))
    return data


# Top-level blocks DeepSpeed reads that its constants module does not list.
_DS_BLOCKS = {"zero_optimization", "tensorboard", "activation_checkpointing", "flops_profiler",
              "aio", "comms_logger", "wandb", "csv_monitor", "comet", "compression_training",
              "data_efficiency", "autotuning", "elasticity", "nebula", "compile", "timers",
              "hybrid_engine", "weight_quantization", "monitor_config", "torch_autocast"}


def check_deepspeed_block(block: dict, where: str = "train.deepspeed") -> None:
    """DeepSpeed ignores a misspelt key silently: here an unknown top-level key, or an unknown
    key of ``zero_optimization`` (DeepSpeed's own pydantic model), is a ValueError naming it."""
    if not block:
        return
    import difflib

    import deepspeed.runtime.constants as C
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    known = {v for k, v in vars(C).items() if k.isupper() and isinstance(v, str)} | _DS_BLOCKS
    for key in block:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            raise ValueError(f"{where}: unknown DeepSpeed key {key!r}"
                             + (f" (did you mean {near[0]!r}?)" if near else ""))
    zero = block.get("zero_optimization")
    if isinstance(zero, dict):
        bad = set(zero) - set(DeepSpeedZeroConfig.model_fields) - {
            a for f in DeepSpeedZeroConfig.model_fields.values() for a in [f.alias] if a}
        if bad:
            raise ValueError(f"{where}: unknown zero_optimization key(s) {sorted(bad)}")


__all__ = ["fit", "train_worker", "DeepSpeedEngine", "FAIL_AT_ENV", "FAIL_MARKER_ENV"]
