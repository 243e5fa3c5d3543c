"""Connecting to Ray: the cluster in ``RAY_ADDRESS`` when set (``ray job submit`` sets it), else a
local one sized for this machine."""

from __future__ import annotations

import contextlib
import os

# Environment every worker needs (actors inherit it through the runtime env).
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    # vLLM CPU build: without a KV-cache size it tries to take 92% of RAM; let it use every core.
    "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
    "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"),
}
# Serve's proxy health checks (Ray's defaults: 5 s to report ready, 10 s per health check, 5 s to
# drain): on a node whose cores are busy (a training job beside it; Ray's workers run niced) the
# proxy missed three 5 s readiness checks in a row, was force-killed and restarted, and every
# request of the Serve suite failed (seen here). Minutes of slack cost nothing on a healthy node.
# A value already in the environment wins, here and wherever SERVE_ENV is passed on.
SERVE_ENV = {k: os.environ.get(k, v) for k, v in {
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_GRACEFUL_SHUTDOWN_TIMEOUT_S": "30",
}.items()}
WORKER_ENV.update(SERVE_ENV)
if os.environ.get("TORCH_EXTENSIONS_DIR"):
    WORKER_ENV["TORCH_EXTENSIONS_DIR"] = os.environ["TORCH_EXTENSIONS_DIR"]


def init_ray(num_cpus: int | None = None) -> None:
    """Idempotent ``ray.init``. Locally, advertise at least 4 logical CPUs: on a 2-core laptop the
    rollout actor, Ray Data's read/write tasks and the train workers must fit side by side."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    for k, v in SERVE_ENV.items():  # a local cluster's processes (Serve's controller) inherit these
        os.environ.setdefault(k, v)
    # Ray starts its workers at nice 15 so a desktop stays responsive; here the workers *are* the
    # job, and at nice 15 any other process on the node takes their cores (seen here: beside a
    # 2-thread training, the suite's Ray workers got ~3-10% of a core and the GSM8K run stalled).
    # Set RAY_worker_niceness yourself to keep Ray's default.
    os.environ.setdefault("RAY_worker_niceness", "0")
    kwargs = dict(runtime_env={"env_vars": WORKER_ENV}, log_to_driver=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        kwargs["runtime_env"]["worker_process_setup_hook"] = f"{__name__}.quiet_local_worker"
        ray.init(num_cpus=num_cpus or max(4, os.cpu_count() or 1), include_dashboard=False,
                 **kwargs)


# Ray Train's placement-group cleaner asks the state API every second whether the train
# controller still lives; the state API is served by the dashboard, which a local cluster here
# runs without, so every ask fails with a warning that reaches the driver's log (490 lines in one
# `make demo`). Its only use is removing a dead controller's placement group, which a local
# cluster's shutdown does anyway.
PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_local_worker() -> None:
    """``worker_process_setup_hook`` of the local cluster's workers (see ``PG_CLEANER_LOGGER``)."""
    import logging

    logging.getLogger(PG_CLEANER_LOGGER).setLevel(logging.ERROR)


@contextlib.contextmanager
def preserve_order():
    """Ray Data yields rows in dataset order inside this block (the label stage streams sorted
    rows into its outputs); the setting is put back after."""
    import ray

    ctx = ray.data.DataContext.get_current()
    before = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        yield
    finally:
        ctx.execution_options.preserve_order = before
