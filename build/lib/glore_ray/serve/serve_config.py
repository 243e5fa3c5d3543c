"""Write a Ray Serve config file (for ``serve run`` / ``serve deploy``) for a run config.

    python -m glore_ray.serve.serve_config configs/embedded.yaml -o serve.yaml [key=value ...]
    serve run serve.yaml                   # local, foreground
    serve deploy serve.yaml                # to the cluster at RAY_DASHBOARD_ADDRESS / --address

The application is built on the cluster by ``glore_ray.serve.app:app_builder`` from the run
config's trained model folders, so glore-ray must be installed there and ``workdir`` (where the
config path and the run's ``output_dir`` are resolved) must be visible to the cluster's nodes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from glore_ray.config import load_config
from glore_ray.ray_env import SERVE_ENV, WORKER_ENV


def serve_config(config_path: str | Path, overrides: list[str] | None = None,
                 workdir: str | Path | None = None) -> dict[str, Any]:
    cfg = load_config(config_path, overrides)  # validate now, not on the cluster
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.serve.host, "port": cfg.serve.port},
        "controller_options": {"runtime_env": {"env_vars": dict(SERVE_ENV)}},  # ray_env: why
        "applications": [{
            "name": "glore",
            "route_prefix": "/",
            "import_path": "glore_ray.serve.app:app_builder",
            "args": {"config": str(config_path), "overrides": list(overrides or []),
                     "workdir": str(Path(workdir or Path.cwd()).resolve())},
            "runtime_env": {"env_vars": dict(WORKER_ENV)},
        }],
    }


def validate(doc: dict) -> None:
    """Raise if Ray Serve would reject the file."""
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="write a Ray Serve config YAML for a run config")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("-o", "--out", default="-", help="output file (default: stdout)")
    ap.add_argument("--workdir", help="where relative paths resolve on the cluster (default: cwd)")
    args = ap.parse_args(argv)
    doc = serve_config(args.config, args.overrides, args.workdir)
    validate(doc)
    text = yaml.safe_dump(doc, sort_keys=False)
    if args.out == "-":
        print(text, end="")
    else:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}: `serve run {args.out}` or `serve deploy {args.out}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
