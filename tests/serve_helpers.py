"""Helpers shared by the serve tests and ``benchmarks/serve.py``: smoke models (no training) and
a free port. Not a test module (no ``test_`` prefix).

Smoke models: the tiny policy serves as policy, global and local refiner (copies of its folder);
ORM and SORM are ``AutoModelForTokenClassification(num_labels=1)`` over the same backbone with an
untrained head — a real forward pass with meaningless scores.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_smoke_models(policy_dir: str | Path, out_dir: str | Path) -> dict[str, str]:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    out = Path(out_dir)
    paths = {"policy": str(policy_dir)}
    for name in ("global", "local"):
        if not (out / name).exists():
            shutil.copytree(policy_dir, out / name)
        paths[name] = str(out / name)
    tok = AutoTokenizer.from_pretrained(policy_dir)
    for i, name in enumerate(("orm", "sorm")):
        if not (out / name / "config.json").exists():
            torch.manual_seed(i)
            model = AutoModelForTokenClassification.from_pretrained(policy_dir, num_labels=1)
            model.save_pretrained(out / name)
            tok.save_pretrained(out / name)
        paths[name] = str(out / name)
    return paths


def policy_dir(request) -> Path:
    """The shipped tiny policy (fixture ``tiny_policy``); ``GLORE_SERVE_POLICY`` may point at
    another HF folder (e.g. a smoke run's policy)."""
    import os

    if os.environ.get("GLORE_SERVE_POLICY"):
        return Path(os.environ["GLORE_SERVE_POLICY"])
    return request.getfixturevalue("tiny_policy")


def start_service(policy: Path, work: Path, overrides: list[str] = ()):
    """Smoke models + the real Serve app on 127.0.0.1:<free port>; returns (url, cfg).
    The caller must ``serve.shutdown()``."""
    from glore_ray.config import load_config
    from glore_ray.serve.app import start

    models = make_smoke_models(policy, work)
    cfg = load_config(REPO / "configs" / "smoke.yaml",
                      ["serve.engine=hf", "serve.host=127.0.0.1", f"serve.port={free_port()}",
                       "refine.max_new_tokens=48", f"output_dir={work}", *overrides])
    return start(cfg, models), cfg
