"""Bad input never reaches a model and never kills a replica: 30+ distinct bad requests against the
real service each get a 4xx JSON error naming the field, then a good request still succeeds."""

from __future__ import annotations

import json

import pytest
import requests
from serve_helpers import policy_dir, start_service

Q = "Ava has 12 apples. She buys 7 more apples. How many apples does Ava have now?"
MAX_CHARS, MAX_TOKENS, MAX_N = 200, 48, 16

# (description, path, raw body or JSON-able object, headers, expected status, expected field)
J = {"Content-Type": "application/json"}
BAD: list[tuple[str, str, object, dict, int, str]] = [
    ("malformed JSON", "/solve", b'{"question": "x"', J, 400, "body"),
    ("trailing garbage", "/solve", b'{"question": "x"} xx', J, 400, "body"),
    ("not JSON at all", "/solve", b"question=hello", J, 400, "body"),
    ("empty body", "/solve", b"", J, 422, "body"),
    ("JSON null", "/solve", None, J, 422, "body"),
    ("JSON list", "/solve", [Q], J, 422, "body"),
    ("JSON string", "/solve", Q, J, 422, "body"),
    ("missing question", "/solve", {"mode": "glore"}, J, 422, "question"),
    ("empty question", "/solve", {"question": ""}, J, 422, "question"),
    ("blank question", "/solve", {"question": "  \n\t "}, J, 422, "question"),
    ("oversized question", "/solve", {"question": "apples " * 100}, J, 422, "question"),
    ("question is int", "/solve", {"question": 12}, J, 422, "question"),
    ("question is list", "/solve", {"question": [Q]}, J, 422, "question"),
    ("question is null", "/solve", {"question": None}, J, 422, "question"),
    ("question is object", "/solve", {"question": {"text": Q}}, J, 422, "question"),
    ("question with NUL", "/solve", {"question": "two\x00apples"}, J, 422, "question"),
    ("unknown mode", "/solve", {"question": Q, "mode": "turbo"}, J, 422, "mode"),
    ("mode is int", "/solve", {"question": Q, "mode": 3}, J, 422, "mode"),
    ("too many tokens", "/solve", {"question": Q, "max_tokens": MAX_TOKENS + 1}, J, 422,
     "max_tokens"),
    ("zero tokens", "/solve", {"question": Q, "max_tokens": 0}, J, 422, "max_tokens"),
    ("negative tokens", "/solve", {"question": Q, "max_tokens": -5}, J, 422, "max_tokens"),
    ("tokens as string", "/solve", {"question": Q, "max_tokens": "32"}, J, 422, "max_tokens"),
    ("tokens as float", "/solve", {"question": Q, "max_tokens": 3.5}, J, 422, "max_tokens"),
    ("huge n", "/solve", {"question": Q, "mode": "best_of_n", "n": MAX_N + 1}, J, 422, "n"),
    ("n zero", "/solve", {"question": Q, "mode": "best_of_n", "n": 0}, J, 422, "n"),
    ("unknown field", "/solve", {"question": Q, "temperature": 2}, J, 422, "temperature"),
    ("non-UTF-8 bytes", "/solve", b'{"question": "\xff\xfe apples"}', J, 400, "body"),
    ("latin-1 body", "/solve", '{"question": "caf\xe9"}'.encode("latin-1"), J, 400, "body"),
    ("body over size limit", "/solve", {"question": Q, "pad": "x" * 70000}, J, 413, "body"),
    ("GET on /solve", "/solve", "GET", {}, 405, "path"),
    ("unknown route", "/solvee", {"question": Q}, J, 404, "path"),
    ("chat: no messages", "/v1/chat/completions", {"model": "glore", "messages": []}, J, 422,
     "messages"),
    ("chat: messages missing", "/v1/chat/completions", {"model": "glore"}, J, 422, "messages"),
    ("chat: no user message", "/v1/chat/completions",
     {"messages": [{"role": "system", "content": "be brief"}]}, J, 422, "messages"),
    ("chat: content is int", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": 7}]}, J, 422, "messages.0.content"),
    ("chat: empty content", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": " "}]}, J, 422, "messages.content"),
    ("chat: too many tokens", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": Q}], "max_tokens": 10_000}, J, 422, "max_tokens"),
    ("chat: n=2", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": Q}], "n": 2}, J, 422, "n"),
    ("chat: stream", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": Q}], "stream": True}, J, 400, "stream"),
    ("chat: malformed JSON", "/v1/chat/completions", b'{"messages": [', J, 400, "body"),
]


def _send(url: str, path: str, body: object, headers: dict) -> requests.Response:
    if body == "GET":
        return requests.get(url + path, timeout=60)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url + path, data=data, headers=headers, timeout=60)


@pytest.mark.ray
class TestBadInputOnService:
    @pytest.fixture(scope="class")
    def service(self, request, ray_local, tmp_path_factory):
        from glore_ray.serve.app import stop

        url, _ = start_service(policy_dir(request), tmp_path_factory.mktemp("serve_bad"),
                               [f"serve.max_question_chars={MAX_CHARS}",
                                f"refine.max_new_tokens={MAX_TOKENS}",
                                f"serve.max_best_of={MAX_N}"])
        try:
            yield url
        finally:
            stop()

    def test_bad_requests_then_good(self, service):
        assert len({d for d, *_ in BAD}) == len(BAD) >= 30
        failures = []
        for desc, path, body, headers, status, field in BAD:
            r = _send(service, path, body, headers)
            try:
                err = r.json()["error"]
                ok = r.status_code == status and err["field"] == field and err["message"]
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                failures.append(f"{desc}: {r.status_code} {r.text[:200]}")
        assert not failures, "\n".join(failures)
        # the service is still alive and answers a good request
        r = requests.post(f"{service}/solve", json={"question": Q, "mode": "draft"}, timeout=120)
        assert r.status_code == 200 and r.json()["candidates"][0]["name"] == "draft"
        assert requests.get(f"{service}/healthz", timeout=30).status_code == 200


def test_api_key_required_when_configured():
    """The key check runs in middleware before routing: a plain FastAPI app shows it (no Ray)."""
    from fastapi.testclient import TestClient

    from glore_ray.serve.api import create_app

    app = create_app({"api_key": "s3cret", "max_body_bytes": 65536})

    @app.post("/solve")
    async def _solve() -> dict:
        return {"ok": True}

    client = TestClient(app)
    r = client.post("/solve", json={})
    assert r.status_code == 401 and r.json()["error"]["field"] == "authorization"
    assert client.post("/solve", json={}, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/solve", json={}, headers={"Authorization": "Bearer s3cret"}).json() == \
        {"ok": True}
    assert client.post("/solve", json={}, headers={"X-API-Key": "s3cret"}).status_code == 200


def test_missing_models_is_a_clear_cli_error(tmp_path, capsys, smoke_config_path):
    from glore_ray.cli import main

    rc = main(["serve", str(smoke_config_path), f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and "model folder(s) missing" in err and "train first" in err
