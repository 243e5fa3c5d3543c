"""Assemble the Serve application from a run config and its model folders, and run it.

    build_app(cfg, model_paths)   -> serve.Application (ingress + 5 model deployments)
    app_builder({"config": ...})  -> the same, for ``serve run`` / ``serve deploy`` YAML
    serve_foreground(cfg)         -> `glore serve CONFIG`: start, print the URL, block until Ctrl-C
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ray import serve

from glore_ray.config import RunConfig, ServeConfig, load_config
from glore_ray.method.solve import GraphParams
from glore_ray.serve.api import build_ingress
from glore_ray.serve.deployments import Generator, RewardModel, is_lora_folder

APP_NAME = "glore"
MODEL_KEYS = ("policy", "global", "local", "orm", "sorm")


def model_paths_for(cfg: RunConfig) -> dict[str, str]:
    """The five model folders of a trained run; a clear error names what is missing."""
    from glore_ray.pipeline import RunPaths

    paths = RunPaths(cfg)
    out = {"policy": paths.policy_model}
    # the run's own policy folder must exist; a pretrained model used as is may be a hub id
    local_policy = out["policy"] == str(paths.policy)
    out.update({k: str(paths.model(k)) for k in ("orm", "sorm", "global", "local")})
    missing = [f"{k} ({p})" for k, p in out.items()
               if (k != "policy" or local_policy) and not Path(p).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"model folder(s) missing: {', '.join(missing)}; train first: "
            f"`glore run CONFIG` (or `glore train CONFIG`) for run folder {paths.root}")
    return out


def _options(s: ServeConfig, replicas: int, max_replicas: int) -> dict[str, Any]:
    opts: dict[str, Any] = {
        # On GPU clusters the model replicas must land on GPU nodes, not the CPU head.
        "ray_actor_options": {"num_cpus": s.replica_cpus, "num_gpus": s.replica_gpus},
        "user_config": {"max_batch_size": s.max_batch_size,
                        "batch_wait_timeout_s": s.batch_wait_timeout_s},
    }
    if max_replicas > replicas:
        opts["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max_replicas,
                                      "target_ongoing_requests": s.target_ongoing_requests}
    else:
        opts["num_replicas"] = replicas
    return opts


def ingress_settings(s: ServeConfig) -> dict[str, Any]:
    """The ingress's settings: the serve section and the API key (the graph's parameters come
    from ``GraphParams.from_config``, as in evaluate).

    A key that is configured (``serve.api_key_env`` names a variable) but unset here fails
    closed: the service refuses to start rather than serve everyone."""
    settings = s.model_dump()
    settings["api_key"] = None
    if s.api_key_env:
        settings["api_key"] = os.environ.get(s.api_key_env, "").strip()
        if not settings["api_key"]:
            raise ValueError(
                f"serve.api_key_env names ${s.api_key_env}, which is unset or empty here: export "
                f"it (clients then send 'Authorization: Bearer KEY'), or set "
                f"serve.api_key_env=null to serve without a key")
    return settings


def build_app(cfg: RunConfig, model_paths: dict[str, str], scorer_cls: Any = None
              ) -> serve.Application:
    """The deployment graph. ``scorer_cls`` overrides the reward scorer class (tests)."""
    s = cfg.serve
    missing = [k for k in MODEL_KEYS if k not in model_paths]
    if missing:
        raise ValueError(f"model_paths lacks {missing}")
    rollout = cfg.rollout.model_dump(mode="json")
    gen_opts = _options(s, s.generator_replicas, s.generator_max_replicas)
    rew_opts = _options(s, s.reward_replicas, s.reward_max_replicas)

    def gen(name: str, path: str, adapters: dict[str, str] | None = None):
        return Generator.options(name=name, **gen_opts).bind(
            path, rollout, engine=s.engine, adapters=adapters, num_cpus=s.replica_cpus,
            chat=cfg.policy.chat_template, max_model_len=s.max_model_len)

    if is_lora_folder(model_paths["global"]) and is_lora_folder(model_paths["local"]):
        # Refiners trained as LoRA adapters of the policy: one engine serves all three.
        lora = gen("generator", model_paths["policy"],
                   {"global": model_paths["global"], "local": model_paths["local"]})
        policy = global_ = local = lora
        adapters = {"policy": None, "global": "global", "local": "local"}
    else:
        policy = gen("policy", model_paths["policy"])
        global_ = gen("global_refiner", model_paths["global"])
        local = gen("local_refiner", model_paths["local"])
        adapters = {}
    orm = RewardModel.options(name="orm", **rew_opts).bind(
        model_paths["orm"], num_cpus=s.replica_cpus, scorer_cls=scorer_cls,
        chat=cfg.policy.chat_template, scorer=s.scorer)
    sorm = RewardModel.options(name="sorm", **rew_opts).bind(
        model_paths["sorm"], num_cpus=s.replica_cpus, scorer_cls=scorer_cls,
        chat=cfg.policy.chat_template, scorer=s.scorer)
    ingress = build_ingress(ingress_settings(s), GraphParams.from_config(cfg)).options(
        name="ingress", ray_actor_options={"num_cpus": 0})
    return ingress.bind(policy, global_, local, orm, sorm, adapters)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """``import_path: glore_ray.serve.app:app_builder`` with ``args: {config: PATH,
    overrides: [key=value, ...], workdir: DIR}`` in a Serve config file (see serve_config.py)."""
    workdir = Path(args.get("workdir") or ".")
    config = Path(args["config"])
    cfg = load_config(config if config.is_absolute() else workdir / config,
                      list(args.get("overrides", [])))
    if not Path(cfg.output_dir).is_absolute():  # the run folder is relative to workdir too
        cfg.output_dir = str(workdir / cfg.output_dir)
    return build_app(cfg, model_paths_for(cfg))


def start(cfg: RunConfig, model_paths: dict[str, str], scorer_cls: Any = None,
          blocking_ready: bool = True) -> str:
    """Start Serve on ``cfg.serve.host:port`` and deploy the app; returns the base URL."""
    from glore_ray.ray_env import SERVE_ENV

    # the controller runs the proxy health checks: lenient ones on a cluster too (ray_env)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port},
                controller_options={"runtime_env": {"env_vars": dict(SERVE_ENV)}})
    serve.run(build_app(cfg, model_paths, scorer_cls), name=APP_NAME, route_prefix="/",
              blocking=False)
    return f"http://{cfg.serve.host}:{cfg.serve.port}"


def stop(timeout_s: float = 120.0) -> None:
    """``serve.shutdown()``, then wait until Serve's controller and proxy actors are gone. Serve
    force-kills a proxy that outlives its graceful shutdown; a Serve started before that lands (a
    restart on a busy node, the next test module) would bind the dying proxy and fail."""
    import ray

    serve.shutdown()
    names = ["SERVE_CONTROLLER_ACTOR"] + [f"SERVE_PROXY_ACTOR-{n['NodeID']}" for n in ray.nodes()]
    deadline = time.time() + timeout_s
    while True:
        alive = []
        for name in names:
            try:
                ray.get_actor(name, namespace="serve")
                alive.append(name)
            except ValueError:  # no such (live) named actor
                pass
        if not alive:
            return
        if time.time() > deadline:
            raise RuntimeError(f"Serve actors still alive {timeout_s:.0f}s after shutdown: {alive}")
        time.sleep(0.5)


def serve_foreground(cfg: RunConfig) -> int:
    """`glore serve CONFIG`: local cluster (or RAY_ADDRESS), foreground until Ctrl-C."""
    import signal

    import ray

    from glore_ray.ray_env import init_ray

    model_paths = model_paths_for(cfg)  # fail before starting anything
    ingress_settings(cfg.serve)  # a configured API key must be set
    init_ray()

    def _stop(*_) -> None:  # SIGTERM (kill, systemd, k8s) stops as cleanly as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignored it
    try:
        t0 = time.time()
        url = start(cfg, model_paths)
        print(f"glore serve: ready in {time.time() - t0:.0f}s at {url} "
              f"(POST /solve, POST /v1/chat/completions, GET /healthz, docs at {url}/docs); "
              "Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("glore serve: stopping ...", flush=True)
        return 0
    finally:
        stop()
        ray.shutdown()
