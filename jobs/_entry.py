"""Shared body of the ``ray job submit`` entry scripts in this folder.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env-json '{"excludes": [".venv", "runs", ".git"]}' \
        -- python jobs/sample.py configs/gsm8k-llama2-7b.yaml rollout.k_samples=32

Each script is ``glore <command> CONFIG [key=value ...]`` and exits with the CLI's code (0 ok,
1 a stage failed, 2 bad input), so the job's status is the stage's outcome.

The package need not be installed on the cluster: ``--working-dir`` ships this repository, and the
repository root is put first on ``sys.path`` so the shipped code wins over any installed copy (the
code you submit is the code that runs). Ray workers started by the stage get the same working dir
through the job's runtime env. Dependencies (torch, vllm, deepspeed, ...) must already be on the
nodes: ``cluster.yaml``'s setup commands install them with the ``gpu`` extra.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(command: str, argv: list[str] | None = None) -> None:
    """Run ``glore <command> *argv`` and exit with its code."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import glore_ray
    from glore_ray.cli import main

    args = sys.argv[1:] if argv is None else argv
    where = Path(glore_ray.__file__).parent
    print(f"[job] glore {command} {' '.join(args)}  (glore_ray from {where})", flush=True)
    sys.exit(main([command, *args]))
