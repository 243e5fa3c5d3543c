"""Build DeepSpeed's one-time JIT op into the cache, once, at install time.

On CPU, ``deepspeed.initialize`` -> ``deepspeed.comm`` builds the shared-memory collective op
(``ShareMemCommBuilder``, a C++ extension): ~25-70 s and ~6 GiB peak the first time. Torch caches
the build under ``TORCH_EXTENSIONS_DIR``; every later load (each Ray Train worker, each test) is a
sub-second ``dlopen``. The Makefile runs ``python -m glore_ray.train.warmup`` with
``TORCH_EXTENSIONS_DIR=.venv/torch_extensions``; tests/conftest.py sets the same default.

    TORCH_EXTENSIONS_DIR=.venv/torch_extensions python -m glore_ray.train.warmup
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parents[2] / ".venv" / "torch_extensions"


def extensions_dir() -> Path:
    """The cache the workers will look in (they inherit TORCH_EXTENSIONS_DIR via ray_env)."""
    return Path(os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_DIR)))


def warm(log=print) -> dict:
    """Build (or just load, when cached) every op DeepSpeed JIT-compiles on this accelerator."""
    cache = extensions_dir()
    cache.mkdir(parents=True, exist_ok=True)
    import deepspeed  # noqa: F401  (sets up the accelerator)
    from deepspeed.accelerator import get_accelerator

    built: dict[str, float] = {}
    acc = get_accelerator()
    # CPU: deepspeed.comm's shm allreduce. GPU builds of DeepSpeed need nothing for our configs
    # (torch AdamW, no fused/offload ops), so there is nothing to warm there.
    names = ["ShareMemCommBuilder"] if acc.device_name() == "cpu" else []
    for name in names:
        builder = acc.create_op_builder(name)
        if builder is None or not builder.is_compatible(verbose=False):
            log(f"[warmup] {name}: not compatible here, skipped")
            continue
        t0 = time.time()
        builder.load(verbose=False)
        built[name] = round(time.time() - t0, 1)
        log(f"[warmup] {name}: ready in {built[name]}s (cache {cache})")
    return built


def main() -> int:
    try:
        warm()
    except Exception as e:  # a failed build must not hide behind a cryptic traceback at train time
        print(f"[warmup] DeepSpeed op build failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
