"""Serve fails closed: a configured but unset API key refuses to start, keys compare in constant
time, the body limit holds for chunked bodies, a stuck request gets a 504, and a 500 carries a
request id instead of the exception text. On the ingress's FastAPI app (no Ray needed)."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from glore_ray.config import ServeConfig
from glore_ray.serve.api import APIError, create_app, within
from glore_ray.serve.app import ingress_settings


def _client(**settings) -> TestClient:
    app = create_app({"api_key": None, "max_body_bytes": 1024, **settings})

    @app.post("/solve")
    async def _solve(body: dict) -> dict:
        return {"ok": len(body)}

    @app.get("/boom")
    async def _boom() -> dict:
        raise RuntimeError("secret path /home/me/.cache and a stack")

    return TestClient(app, raise_server_exceptions=False)


def test_a_configured_key_that_is_unset_refuses_to_start(monkeypatch):
    monkeypatch.delenv("GLORE_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match=r"\$GLORE_TEST_KEY, which is unset"):
        ingress_settings(ServeConfig(api_key_env="GLORE_TEST_KEY"))
    monkeypatch.setenv("GLORE_TEST_KEY", "  ")
    with pytest.raises(ValueError, match="unset or empty"):
        ingress_settings(ServeConfig(api_key_env="GLORE_TEST_KEY"))
    monkeypatch.setenv("GLORE_TEST_KEY", "k3y")
    assert ingress_settings(ServeConfig(api_key_env="GLORE_TEST_KEY"))["api_key"] == "k3y"
    assert ingress_settings(ServeConfig())["api_key"] is None  # no key asked for: open


def test_the_key_check_handles_odd_headers():
    client = _client(api_key="s3cret")
    for headers in ({"Authorization": "Bearer s3cre"}, {"Authorization": "Bearer s3cret2"},
                    {"Authorization": "Basic s3cret"},
                    {"X-API-Key": "\xe9s3cret".encode("latin-1")}, {}):
        r = client.post("/solve", json={}, headers=headers)
        assert r.status_code == 401, headers
    assert client.post("/solve", json={"a": 1}, headers={"X-API-Key": "s3cret"}).json() == {"ok": 1}


def test_the_body_limit_holds_for_chunked_bodies():
    client = _client()
    # no Content-Length: a generator body goes out chunked
    r = client.post("/solve", content=(b"x" * 300 for _ in range(5)),
                    headers={"Content-Type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert r.status_code == 413 and r.json()["error"]["field"] == "body"
    small = client.post("/solve", content=(p for p in [b'{"a": ', b'"b"}']),
                        headers={"Content-Type": "application/json"})
    assert small.status_code == 200 and small.json() == {"ok": 1}


def test_a_500_names_a_request_id_not_the_exception(caplog):
    r = _client().get("/boom")
    err = r.json()["error"]
    assert r.status_code == 500 and err["type"] == "internal_error"
    assert "secret" not in r.text and "RuntimeError" not in r.text
    assert len(err["request_id"]) == 16 and err["request_id"] in err["message"]


def test_a_request_past_its_time_is_a_504():
    async def stuck():
        await asyncio.sleep(5)

    with pytest.raises(APIError) as e:
        asyncio.run(within(stuck(), 0.05))
    assert e.value.status == 504 and "serve.request_timeout_s" in e.value.message
    assert asyncio.run(within(asyncio.sleep(0, result=7), 1.0)) == 7
