"""Cluster operations: the paper configs validate offline, `glore plan` counts consistently,
cluster.yaml passes Ray's own autoscaler validation and fits what the stages request, and the
stages run as real `ray job submit` jobs on a real head node started here (token auth on)."""

from __future__ import annotations

import copy
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from glore_ray.cli import main
from glore_ray.config import RunConfig, load_config
from glore_ray.plan import GSM8K_SPLITS, compute_plan, expected_draws_positive

REPO = Path(__file__).resolve().parents[1]
PAPER = ["gsm8k-llama2-7b", "gsm8k-llama2-13b", "gsm8k-small"]
BIN = Path(sys.executable).parent


# --- paper configs -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_validate_offline(name, tmp_path, monkeypatch, capsys):
    # Any hub access would create files under HF_HOME; offline mode turns it into an error.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["validate", str(REPO / "configs" / f"{name}.yaml")]) == 0
    assert "config OK" in capsys.readouterr().out
    assert not (tmp_path / "hf").exists()


def test_paper_configs_have_the_paper_sizes():
    for name in ("gsm8k-llama2-7b", "gsm8k-llama2-13b"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        assert cfg.data.source == "gsm8k_hub"
        assert "Llama-2" in cfg.policy.model and name.split("-")[-1] in cfg.policy.model.lower()
        r, t = cfg.rollout, cfg.train
        assert (r.k_samples, r.k_rollouts, r.temperature) == (96, 8, 1.0)
        assert r.n_questions is None and r.num_gpus >= 1
        assert t.use_gpu and t.zero_stage == 3 and t.bf16 and t.num_workers == 8
    small = load_config(REPO / "configs" / "gsm8k-small.yaml")
    assert small.train.use_gpu and small.rollout.max_actors * small.rollout.num_gpus <= 8
    assert small.train.num_workers <= 8


# --- glore plan ----------------------------------------------------------------------------------

def test_plan_counts_match_the_paper_config():
    cfg = load_config(REPO / "configs" / "gsm8k-llama2-7b.yaml")
    plan = compute_plan(cfg)
    r = cfg.rollout
    assert (plan.n_train, plan.n_test) == GSM8K_SPLITS
    assert plan.prompts == plan.n_train  # n_questions: null = every train question
    assert plan.samples == plan.prompts * r.k_samples
    assert plan.prefixes == round(plan.samples * (plan.steps_per_solution - 1))
    assert plan.rollouts_exhaustive == plan.prefixes * r.k_rollouts
    assert not r.budgeted and plan.rollouts == plan.rollouts_exhaustive
    # Budgeted: only wrong samples, ceil(log2 m) probes, at most K draws each.
    wrong = plan.samples * (1 - cfg.plan.sample_accuracy)
    probes = math.ceil(math.log2(plan.steps_per_solution))
    assert 0 < plan.rollouts_budgeted <= wrong * probes * r.k_rollouts + 1
    assert 0 < plan.budget_saving < 1

    stages = {s.stage: s for s in plan.stages}
    a = cfg.plan
    assert stages["sample"].gen_tokens == plan.samples * a.solution_tokens
    assert stages["sample"].gpu_hours == pytest.approx(
        plan.samples * a.solution_tokens / a.gen_tokens_per_gpu_s / 3600)
    assert stages["sample"].gpus == r.max_actors * r.num_gpus
    assert stages["train orm"].gpus == cfg.train.num_workers
    assert stages["rollout"].gpu_hours > stages["sample"].gpu_hours  # 3.6 prefixes x 8 > 1
    assert plan.total_gpu_hours == pytest.approx(sum(s.gpu_hours for s in plan.stages))

    # Throughput is an assumption you override like any key: doubling it halves generation cost.
    fast = compute_plan(load_config(REPO / "configs" / "gsm8k-llama2-7b.yaml",
                                    [f"plan.gen_tokens_per_gpu_s={2 * a.gen_tokens_per_gpu_s}"]))
    fast_stages = {s.stage: s for s in fast.stages}
    assert fast_stages["rollout"].gpu_hours == pytest.approx(stages["rollout"].gpu_hours / 2)
    assert fast_stages["train orm"].gpu_hours == pytest.approx(stages["train orm"].gpu_hours)

    # Turning budgeted labelling on makes the rollout stage generate the budgeted count.
    budget = compute_plan(load_config(REPO / "configs" / "gsm8k-llama2-7b.yaml",
                                      ["rollout.budgeted=true"]))
    assert budget.rollouts == plan.rollouts_budgeted
    assert {s.stage: s for s in budget.stages}["rollout"].gpu_hours < stages["rollout"].gpu_hours


@pytest.mark.parametrize("config", ["dependency", "embedded"])
def test_plan_steps_follow_the_generated_world(config):
    """A generated world's step count is known from the config: check it against real data."""
    from glore_ray.data import worlds

    cfg = load_config(REPO / "configs" / f"{config}.yaml")
    train, _ = worlds.generate(cfg.data, n_train=400)
    mean_lines = sum(len(q.gold_solution.strip().splitlines()) for q in train) / len(train)
    assert compute_plan(cfg).steps_per_solution == pytest.approx(mean_lines, abs=0.15)


def test_budgeted_draws():
    assert expected_draws_positive(8, 2, 1.0) == 2  # first chunk always succeeds
    assert expected_draws_positive(8, 8, 0.5) == 8
    assert expected_draws_positive(8, 2, 0.5) == pytest.approx(2 * (1 + 0.25 + 0.0625 + 0.015625))


def test_glore_plan_cli_prints_the_table(capsys):
    assert main(["plan", str(REPO / "configs" / "gsm8k-llama2-7b.yaml")]) == 0
    out = capsys.readouterr().out
    plan = compute_plan(load_config(REPO / "configs" / "gsm8k-llama2-7b.yaml"))
    assert f"{plan.rollouts_exhaustive:,}" in out and f"{plan.samples:,} samples" in out
    assert "gen_tokens_per_gpu_s = 2000" in out and "GPU-h" in out
    assert f"saves {plan.budget_saving:.0%}" in out
    assert main(["plan", str(REPO / "configs" / "gsm8k-llama2-7b.yaml"), "plan.bogus=1"]) == 2


# --- cluster.yaml --------------------------------------------------------------------------------

def _cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _prepared(raw: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(raw))  # merges the provider's defaults, as `ray up` does
    validate_config(cfg)  # Ray's JSON schema + node-type checks; no cloud call, no credentials
    return cfg


def test_cluster_yaml_passes_ray_validation():
    import jsonschema

    cfg = _prepared(_cluster())
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_groups = {k: v for k, v in types.items() if v["resources"].get("GPU", 0) > 0}
    assert {"rollout", "train"} <= set(gpu_groups)
    assert all(v["min_workers"] == 0 for v in gpu_groups.values())  # GPU groups scale from zero
    assert types["train"]["resources"]["GPU"] == 8

    start_head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start_head  # job API only through an SSH tunnel
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in " ".join(cmds)
    assert any("[gpu]" in c for c in cfg["setup_commands"])
    assert any("auth_token" in k for k in cfg["file_mounts"])

    # The validation is real: a wrongly typed resource count is rejected.
    bad = _cluster()
    bad["available_node_types"]["train"]["resources"]["GPU"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        _prepared(bad)


def _requests(cfg: RunConfig) -> dict[str, tuple[dict[str, float], int]]:
    """What the stages ask Ray for: (resources of one actor/worker, how many at once).
    generation.py: map_batches(num_cpus=, num_gpus=, ActorPoolStrategy(max_size=max_actors));
    Ray Train: ScalingConfig(num_workers, use_gpu, resources_per_worker={CPU: cpus_per_worker})."""
    r, t = cfg.rollout, cfg.train
    worker = {"CPU": t.cpus_per_worker, **({"GPU": 1.0} if t.use_gpu else {})}
    return {"rollout": ({"CPU": r.num_cpus, "GPU": r.num_gpus}, r.max_actors),
            "train": (worker, t.num_workers)}


@pytest.mark.parametrize("name", ["gsm8k-llama2-7b", "gsm8k-llama2-13b"])
def test_cluster_yaml_fits_the_stage_requests(name):
    types = _prepared(_cluster())["available_node_types"]
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    for group, (one, count) in _requests(cfg).items():
        node = types[group]
        missing = [k for k, v in one.items() if v and k not in node["resources"]]
        assert not missing, f"{group} group lacks resources {missing}"
        per_node = min(int(node["resources"][k] // v) for k, v in one.items() if v)
        assert per_node >= 1, f"one {group} actor does not fit a {group} node"
        assert per_node * node["max_workers"] >= count, f"{group} group too small for {count}"
    # ZeRO-3 wants all training workers on one node (NVLink): 8 workers fit one train node.
    one, count = _requests(cfg)["train"]
    assert types["train"]["resources"]["GPU"] >= count * one["GPU"]


# --- ray job submit on a real head node ----------------------------------------------------------

def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _pids_of_head(temp_dir: str, token: str) -> list[int]:
    """Processes of the head started here, and only those: every Ray process names its temp dir
    on its command line (sockets, logs), job drivers and actors run in a working dir under it,
    and all of them inherit this head's random auth token."""
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.info["pid"] == os.getpid():
            continue
        try:
            ours = (temp_dir in " ".join(p.info["cmdline"] or [])
                    or (p.cwd() + os.sep).startswith(temp_dir + os.sep)
                    or p.environ().get("RAY_AUTH_TOKEN") == token)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if ours:
            pids.append(p.info["pid"])
    return pids


def _stop_head(temp_dir: str, token: str) -> None:
    """Stop only this head's processes, by pid (`ray stop` would kill every Ray on the machine,
    including the local clusters of other tests)."""
    import psutil

    procs = []
    for pid in _pids_of_head(temp_dir, token):
        try:
            procs.append(psutil.Process(pid))
            procs[-1].send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def ray_head():
    """A real head node on loopback with the dashboard (job API) and token auth, in its own
    temp dir; yields (job API address, env for the `ray` CLI)."""
    temp_dir = tempfile.mkdtemp(prefix="glrhead", dir="/tmp")  # short: Unix socket paths
    names = ["port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
             "node-manager-port", "object-manager-port"]
    ports = dict(zip(names, _free_ports(len(names))))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1",
           "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--num-cpus", "4",
           "--temp-dir", temp_dir, "--disable-usage-stats",
           *[f"--{k}={v}" for k, v in ports.items()]]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, f"ray start failed:\n{out.stdout}\n{out.stderr}"
        address = f"http://127.0.0.1:{ports['dashboard-port']}"
        _wait_for_job_api(address, env)
        yield address, env
    finally:
        _stop_head(temp_dir, env["RAY_AUTH_TOKEN"])
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _wait_for_job_api(address: str, env: dict, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while True:
        out = _ray(["job", "list", "--address", address], env, timeout=60)
        if out.returncode == 0:
            return
        if time.time() > deadline:
            raise AssertionError(f"job API at {address} not up:\n{out.stdout}\n{out.stderr}")
        time.sleep(2)


RUNTIME_ENV = json.dumps({"excludes": [".venv", "runs", ".git", "**/__pycache__",
                                       ".pytest_cache", ".benchmarks"]})


def _submit(address: str, env: dict, script: str, *args: str) -> str:
    """`ray job submit` exactly as on a cluster; waits (the CLI tails logs until the job ends)
    and returns the job's log. Same python as the test: the cluster is this machine."""
    job_id, t0 = f"glore-test-{secrets.token_hex(4)}", time.time()
    out = _ray(["job", "submit", "--address", address, "--submission-id", job_id,
                "--working-dir", ".", "--runtime-env-json", RUNTIME_ENV, "--", sys.executable,
                f"jobs/{script}", *args], env)
    log = out.stdout + out.stderr
    print(f"job {script}: {time.time() - t0:.0f}s")
    assert out.returncode == 0, f"job {script} failed:\n{log[-4000:]}"
    # The CLI tails the logs until the job ends, then prints its final status: JobStatus.SUCCEEDED
    # reads "Job '<id>' succeeded" (it exits 0 for a STOPPED job too, hence this check).
    assert f"Job '{job_id}' succeeded" in log, log[-4000:]
    return log


def _assert_shipped(log: str) -> None:
    """The job ran the code shipped with --working-dir, not this checkout in place."""
    line = next(x for x in log.splitlines() if "(glore_ray from " in x)
    where = line.split("(glore_ray from ", 1)[1].rstrip(")")
    assert "working_dir_files" in where and not where.startswith(str(REPO)), line


@pytest.fixture(scope="module")
def job_policy(tmp_path_factory) -> Path:
    """A tiny policy folder for the jobs: the shipped checkpoint when present, else an untrained
    model of the same recipe (the jobs test plumbing, not accuracy; training takes minutes)."""
    from glore_ray.data import worlds
    from glore_ray.hub import resolve_model
    from glore_ray.train.tiny_policy import ASSETS, build_model, recipe_hash

    cfg = load_config(REPO / "configs" / "smoke.yaml")
    shipped = (Path(resolve_model(cfg.policy.model)) if cfg.policy.model
               else ASSETS / recipe_hash(cfg))
    if (shipped / "config.json").exists():
        return shipped
    out = tmp_path_factory.mktemp("policy")
    tokenizer = worlds.build_world_tokenizer(cfg.data)
    build_model(cfg, tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.ray
def test_ray_job_submit_runs_the_stages(ray_head, job_policy, tmp_path):
    address, env = ray_head
    runs = tmp_path / "runs"
    common = ["configs/smoke.yaml", f"output_dir={runs}", f"policy.model={job_policy}"]
    t0 = time.time()

    log = _submit(address, env, "data.py", *common)
    _assert_shipped(log)
    run = runs / "smoke"
    assert json.loads((run / "data" / "_DONE.json").read_text())["summary"]["n_train"] > 0
    import pyarrow.parquet as pq

    assert pq.read_table(run / "data" / "train.parquet").num_rows > 0

    # The pipeline entry resumes: data is skipped, policy and sample run.
    # HF engine here: the vLLM engine start alone takes 30-60 s on 2 shared cores (the vLLM
    # actor pool has its own tests); the job, the actor pool and the outputs are the same.
    log = _submit(address, env, "pipeline.py", *common, "rollout.engine=hf", "--until", "sample")
    assert "[data] already done" in log
    done = json.loads((run / "policy" / "_DONE.json").read_text())
    assert done["summary"]["model"] == str(job_policy)
    assert pq.read_table(run / "sample" / "samples.parquet").num_rows > 0
    assert (run / "sample" / "_DONE.json").exists()
    print(f"2 jobs (pipeline until sample) in {time.time() - t0:.0f}s")

    # Token auth is on: the same API with a wrong token refuses the request.
    bad = _ray(["job", "list", "--address", address], {**env, "RAY_AUTH_TOKEN": "0" * 64}, 60)
    assert bad.returncode != 0
    assert "auth" in (bad.stdout + bad.stderr).lower(), bad.stdout + bad.stderr


@pytest.mark.ray
def test_failed_stage_fails_the_job(ray_head):
    address, env = ray_head
    out = _ray(["job", "submit", "--address", address, "--working-dir", ".",
                "--runtime-env-json", RUNTIME_ENV, "--", sys.executable, "jobs/data.py",
                "configs/smoke.yaml", "rollout.bogus=1"], env)
    assert out.returncode != 0
    assert "unknown key" in out.stdout + out.stderr
