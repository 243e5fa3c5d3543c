"""Helpers of the serve tests: the policy they serve and a started service. Not a test module (no
``test_`` prefix). The smoke models and the free port are shared with ``benchmarks/serve.py``
(``benchmarks/_helpers.py``).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks._helpers import free_port, make_smoke_models

REPO = Path(__file__).resolve().parents[1]
__all__ = ["free_port", "make_smoke_models", "policy_dir", "start_service"]


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
