"""The real service on a local Ray cluster with the smoke models: /solve in every mode, the graph's
trace (order and global ∥ local concurrency), the OpenAI route through the official client."""

from __future__ import annotations

import concurrent.futures as cf

import pytest
import requests
from serve_helpers import policy_dir, start_service

pytestmark = pytest.mark.ray


# where_threshold=1.0: every SORM probability is below it, so the local refiner always runs
# (the smoke ORM/SORM heads are untrained).
OVERRIDES = ["refine.where_threshold=1.0", "refine.always_refine=true"]


@pytest.fixture(scope="module")
def served(request, ray_local, tmp_path_factory):
    from glore_ray.serve.app import stop

    work, policy = tmp_path_factory.mktemp("serve"), policy_dir(request)
    url, cfg = start_service(policy, work, OVERRIDES)
    try:
        yield url, cfg, work, policy
    finally:
        stop()


@pytest.fixture(scope="module")
def service(served):
    return served[0]


def _solve(url: str, **body) -> dict:
    r = requests.post(f"{url}/solve", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _stage(trace: list[dict], name: str) -> dict:
    (event,) = [e for e in trace if e["stage"] == name]
    return event


QUESTION = "Ava has 12 apples. She buys 7 more apples. How many apples does Ava have now?"


def test_health_and_docs(service):
    assert requests.get(f"{service}/healthz", timeout=30).json()["status"] == "ok"
    assert requests.get(f"{service}/docs", timeout=30).status_code == 200
    spec = requests.get(f"{service}/openapi.json", timeout=30).json()
    assert {"/solve", "/v1/chat/completions", "/healthz"} <= set(spec["paths"])


def test_glore_trace_order_and_concurrency(service):
    res = _solve(service, question=QUESTION, mode="glore")
    t = res["trace"]
    draft, orm, sorm = _stage(t, "draft"), _stage(t, "orm"), _stage(t, "sorm")
    glob, loc, rerank = _stage(t, "global"), _stage(t, "local"), _stage(t, "rerank")
    assert draft["end_ms"] <= orm["start_ms"] and orm["end_ms"] <= sorm["start_ms"]
    assert sorm["end_ms"] <= min(glob["start_ms"], loc["start_ms"])
    # global and local were in flight at the same time
    assert glob["start_ms"] < loc["end_ms"] and loc["start_ms"] < glob["end_ms"]
    assert max(glob["end_ms"], loc["end_ms"]) <= rerank["start_ms"]
    assert set(rerank["info"]["scored"]) == {"global", "local"}

    draft_c = res["candidates"][0]
    assert draft_c["name"] == "draft" and len(res["sorm_scores"]) == len(draft_c["steps"])
    assert res["located_step"] == sorm["info"]["located_step"] == 0  # threshold 1.0
    assert loc["info"]["located_step"] == res["located_step"]
    names = [c["name"] for c in res["candidates"]]
    assert names == ["draft", "global", "local"] and res["refined"]
    best = max(res["candidates"], key=lambda c: c["orm_score"])
    assert res["chosen"] == best["name"]
    assert res["answer"] == best["answer"]
    assert all(0.0 <= c["orm_score"] <= 1.0 for c in res["candidates"])
    assert res["timings_ms"]["total"] >= rerank["end_ms"] - 1


@pytest.mark.parametrize("mode", ["draft", "global", "local", "best_of_n"])
def test_other_modes(service, mode):
    res = _solve(service, question=QUESTION, mode=mode, n=4, max_tokens=32)
    stages = [e["stage"] for e in res["trace"]]
    names = [c["name"] for c in res["candidates"]]
    if mode == "draft":
        assert stages == ["draft", "orm"] and names == ["draft"] and res["chosen"] == "draft"
    elif mode == "best_of_n":
        assert stages == ["sample", "rerank"] and names == [f"sample_{i}" for i in range(4)]
        assert res["chosen"] == max(res["candidates"], key=lambda c: c["orm_score"])["name"]
    else:
        expected = ["draft", "orm", "sorm", "local", "rerank"] if mode == "local" else \
            ["draft", "orm", "global", "rerank"]
        assert stages == expected and names == ["draft", mode] and res["chosen"] == mode
    chosen = next(c for c in res["candidates"] if c["name"] == res["chosen"])
    assert res["answer"] == chosen["answer"] and res["mode"] == mode


def test_default_mode_and_concurrent_clients(service):
    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: _solve(service, question=f"{QUESTION} ({i})"), range(8)))
    assert all(r["mode"] == "glore" and len(r["candidates"]) == 3 for r in results)


def test_openai_client(service):
    import openai

    client = openai.OpenAI(base_url=f"{service}/v1", api_key="unused", timeout=120)
    resp = client.chat.completions.create(
        model="glore", messages=[{"role": "system", "content": "Solve step by step."},
                                 {"role": "user", "content": QUESTION}], max_tokens=32)
    msg = resp.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str) and msg.content
    meta = resp.model_extra["glore"]
    assert meta["mode"] == "glore" and meta["chosen"] in ("draft", "global", "local")
    draft = client.chat.completions.create(
        model="glore-draft", messages=[{"role": "user", "content": QUESTION}])
    assert draft.model_extra["glore"]["mode"] == "draft"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="glore",
                                       messages=[{"role": "user", "content": QUESTION}],
                                       stream=True)


def test_serve_config_yaml_is_valid(smoke_config_path):
    """The shipped example and a generated file both pass Ray Serve's own schema."""
    import yaml

    from glore_ray.serve.serve_config import serve_config, validate

    validate(yaml.safe_load((smoke_config_path.parent / "serve.yaml").read_text()))
    doc = serve_config(smoke_config_path, ["serve.port=8123"])
    validate(doc)
    assert doc["http_options"]["port"] == 8123
    assert doc["applications"][0]["import_path"] == "glore_ray.serve.app:app_builder"
    # lenient proxy health checks: a busy node's proxy is not killed while it starts
    env = doc["controller_options"]["runtime_env"]["env_vars"]
    assert float(env["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"]) >= 30


def test_serve_and_evaluate_run_the_same_solve(served):
    """evaluate's path (method.solve over actor pools: Ray Data generation, ScorerPool) and the
    HTTP service (method.solve over deployment handles) give the same candidates for one input."""
    from glore_ray.pipeline import RunPaths
    from glore_ray.stages.evaluate import solve_offline

    url, cfg, work, policy = served
    cfg = cfg.model_copy(deep=True)
    cfg.rollout.engine = cfg.serve.engine  # the service's generator engine (hf)
    cfg.rollout.num_cpus = 0.5  # beside the service's replicas on this 4-CPU local cluster
    cfg.policy.model = str(policy)
    # the run layout evaluate reads (train/<model>) over the service's own model folders
    paths = RunPaths(cfg)
    paths.model("orm").parent.mkdir(parents=True, exist_ok=True)
    for name in ("orm", "sorm", "global", "local"):
        if not paths.model(name).exists():
            paths.model(name).symlink_to(work / name)
    (offline,) = solve_offline(cfg, paths, [QUESTION], "glore", log=lambda m: None)
    online = _solve(url, question=QUESTION, mode="glore")
    assert [c["name"] for c in online["candidates"]] == [c.name for c in offline.candidates] \
        == ["draft", "global", "local"]
    for a, b in zip(online["candidates"], offline.candidates):
        assert a["text"] == b.text and a["steps"] == b.steps
        assert a["orm_score"] == pytest.approx(b.orm_score, abs=1e-5)
    assert online["located_step"] == offline.located_step
    assert online["sorm_scores"] == pytest.approx(offline.sorm_scores, abs=1e-5)
    assert online["chosen"] == offline.chosen and online["answer"] == offline.answer

