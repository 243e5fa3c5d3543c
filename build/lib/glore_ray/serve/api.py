"""The HTTP face of the service: a FastAPI app served by the ``Ingress`` deployment.

    POST /solve                 question + mode -> answer, candidates, ORM/SORM scores, trace
    POST /v1/chat/completions   OpenAI-compatible (the last user message is the question)
    GET  /healthz               liveness + which models are bound
    GET  /docs                  OpenAPI UI (schema at /openapi.json)

Every bad request gets a 4xx JSON body ``{"error": {"type", "field", "message"}}`` naming the
offending field; the request never reaches a model deployment. A request that outlives
``serve.request_timeout_s`` gets a 504; an internal error a 500 whose body carries a request id
(the exception goes to the replica's log under that id, never to the client).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from glore_ray.engines.base import SamplingSpec
from glore_ray.engines.context import PromptTooLong
from glore_ray.method.decide import MODES, Mode
from glore_ray.method.solve import GraphParams, Models, solve


class SolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    question: StrictStr = Field(..., description="the math word problem")
    mode: Mode | None = Field(None, description="default: serve.default_mode (glore)")
    max_tokens: StrictInt | None = Field(None, ge=1, description="≤ refine.max_new_tokens")
    n: StrictInt | None = Field(None, ge=1,
                                description="samples for best_of_n (≤ serve.max_best_of)")


class CandidateOut(BaseModel):
    name: str
    text: str
    steps: list[str]
    answer: str | None
    orm_score: float | None


class TraceEventOut(BaseModel):
    stage: str
    start_ms: float
    end_ms: float
    info: dict[str, Any]


class SolveResponse(BaseModel):
    mode: str
    answer: str | None
    chosen: str
    candidates: list[CandidateOut]
    refined: bool
    sorm_scores: list[float] | None
    located_step: int | None
    trace: list[TraceEventOut]
    timings_ms: dict[str, float]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    # OpenAI clients send many optional fields (temperature, user, ...): ignore those we don't use.
    model_config = ConfigDict(extra="ignore")

    model: StrictStr = "glore"
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    n: StrictInt | None = Field(None, ge=1, le=1)
    stream: bool | None = False
    mode: Mode | None = None


class APIError(Exception):
    def __init__(self, status: int, field: str, message: str, type_: str = "invalid_request"):
        super().__init__(message)
        self.status, self.field, self.message, self.type = status, field, message, type_


def _error(status: int, field: str, message: str, type_: str = "invalid_request",
           **extra: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={
        "error": {"type": type_, "field": field, "message": message, **extra}})


_log = logging.getLogger("ray.serve")


class BodyLimit:
    """ASGI middleware, the one body-size check: a declared ``Content-Length`` over ``limit`` (or
    not a number) is refused before anything is read; otherwise the body is read (at most
    ``limit`` bytes) before the app sees it, so the limit holds for chunked bodies too."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = _error(413, "body", f"request body over {self.limit} bytes")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_big(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await too_big(scope, receive, send)
            more = msg.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# pydantic appends the union member's type to the location ("content.str"): drop those tags.
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|literal\[.*\]|"
                       r"function-.*|tagged-union.*)$")


def _field_of(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body" and not _TYPE_TAG.match(str(p))]
    return ".".join(parts) or "body"


def create_app(settings: dict) -> FastAPI:
    """The FastAPI app; ``settings`` = ServeConfig values + ``api_key`` (None = open)."""
    app = FastAPI(title="GLoRe refine-and-rerank",
                  description="Global and local refinements with ORM/SORM (Havrilla et al. 2024) "
                              "on Ray Serve.", version="0.1.0")

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError):
        return _error(e.status, e.field, e.message, e.type)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError):
        first = e.errors()[0]
        if first.get("type") == "json_invalid":
            return _error(400, "body", "malformed JSON: " + str(first.get("ctx", {}).get(
                "error", first.get("msg"))))
        field = _field_of(tuple(first.get("loc", ())))
        msg = "unknown field" if first.get("type") == "extra_forbidden" else first.get("msg", "")
        return _error(422, field, f"{field}: {msg}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException):
        # FastAPI raises 400 "There was an error parsing the body" for undecodable bytes.
        field = "body" if e.status_code == 400 else "path"
        return _error(e.status_code, field, str(e.detail))

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception):
        rid = uuid.uuid4().hex[:16]
        _log.error("glore: request %s failed", rid, exc_info=e)
        return _error(500, "server", f"internal error; the server log has the details under "
                      f"request id {rid}", "internal_error", request_id=rid)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        # The API key, before the body is parsed (its size: BodyLimit).
        key = settings.get("api_key")
        if key and request.url.path not in ("/healthz", "/docs", "/openapi.json"):
            auth = request.headers.get("authorization", "")
            given = request.headers.get("x-api-key") or (auth[7:] if auth.startswith("Bearer ")
                                                         else "")
            if not hmac.compare_digest(given.encode(), key.encode()):
                return _error(401, "authorization", "missing or wrong API key "
                              "(send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')",
                              "unauthorized")
        return await call_next(request)

    app.add_middleware(BodyLimit, limit=settings["max_body_bytes"])
    return app


async def within(coro, timeout: float | None):
    """``await coro``, or a 504 ``APIError`` once ``timeout`` seconds have passed."""
    try:
        return await asyncio.wait_for(coro, timeout)
    except asyncio.TimeoutError:
        raise APIError(504, "server", f"no answer within {timeout} s (serve.request_timeout_s); "
                       "try again, or ask for fewer tokens", "timeout") from None


def check_question(question: str, max_chars: int, field: str = "question") -> str:
    q = question.strip()
    if not q:
        raise APIError(422, field, f"{field}: must not be empty")
    if len(q) > max_chars:
        raise APIError(422, field, f"{field}: {len(q)} characters, over the limit {max_chars}")
    if "\x00" in q:
        raise APIError(422, field, f"{field}: contains a NUL character")
    return q


def build_ingress(settings: dict, params: GraphParams):
    """The ingress deployment class bound to a FastAPI app made from ``settings``, running the
    graph ``params`` (``GraphParams.from_config``: the very values the evaluate stage runs)."""
    app = create_app(settings)

    @serve.deployment(max_ongoing_requests=256)
    @serve.ingress(app)
    class Ingress:
        def __init__(self, policy, global_refiner, local_refiner, orm, sorm,
                     adapters: dict[str, str | None]) -> None:
            self.s = settings
            self.handles = dict(policy=policy, global_refiner=global_refiner,
                                local_refiner=local_refiner, orm=orm, sorm=sorm)
            self.params = params
            self.models = Models(
                policy=self._gen("policy", adapters.get("policy")),
                global_refiner=self._gen("global_refiner", adapters.get("global")),
                local_refiner=self._gen("local_refiner", adapters.get("local")),
                orm=self._score("orm"), sorm=self._score("sorm"))

        def _gen(self, name: str, adapter: str | None):
            handle = self.handles[name]

            async def call(prompts: list[str], spec: SamplingSpec) -> list[list[str]]:
                # one request per prompt: the deployment's @serve.batch groups them again
                out = await asyncio.gather(*(handle.generate.remote(p, spec, adapter)
                                             for p in prompts), return_exceptions=True)
                for i, r in enumerate(out):
                    if isinstance(r, PromptTooLong) and name != "policy":
                        out[i] = [""] * spec.n  # a refinement that cannot fit: no candidate
                    elif isinstance(r, BaseException):
                        raise r
                return list(out)
            return call

        def _score(self, name: str):
            handle = self.handles[name]

            async def call(questions: list[str], steps: list[list[str]]) -> list[list[float]]:
                # the deployment scores one question's candidates per call
                runs: list[tuple[str, list[list[str]]]] = []
                for q, st in zip(questions, steps):
                    if runs and runs[-1][0] == q:
                        runs[-1][1].append(st)
                    else:
                        runs.append((q, [st]))
                out = await asyncio.gather(*(handle.score.remote(q, st) for q, st in runs))
                return [p for part in out for p in part]
            return call

        async def _solve(self, question: str, mode: str | None, max_tokens: int | None,
                         n: int | None, field_prefix: str = "") -> dict:
            limit = self.params.max_tokens
            if max_tokens is not None and max_tokens > limit:
                raise APIError(422, field_prefix + "max_tokens",
                               f"max_tokens: {max_tokens} requested, the limit is {limit}")
            if n is not None and n > self.s["max_best_of"]:
                raise APIError(422, "n", f"n: {n} requested, the limit is {self.s['max_best_of']}")
            try:
                (res,) = await within(solve([question], mode or self.s["default_mode"],
                                            self.models, self.params, max_tokens=max_tokens,
                                            best_of=n), self.s.get("request_timeout_s"))
            except PromptTooLong as e:  # the question itself does not fit the policy's context
                raise APIError(413, field_prefix + "question",
                               f"question: {getattr(e, 'cause', e)}") from None
            return res.to_dict()

        @app.post("/solve", response_model=SolveResponse)
        async def solve_route(self, req: SolveRequest) -> dict:
            q = check_question(req.question, self.s["max_question_chars"])
            return await self._solve(q, req.mode, req.max_tokens, req.n)

        @app.post("/v1/chat/completions")
        async def chat(self, req: ChatRequest) -> dict:
            if req.stream:
                raise APIError(400, "stream", "stream: streaming is not supported")
            users = [m for m in req.messages if m.role == "user"]
            if not users:
                raise APIError(422, "messages", "messages: no message with role 'user'")
            content = users[-1].content
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content
                                  if isinstance(p, dict) and p.get("type") == "text"
                                  and isinstance(p.get("text"), str))
            q = check_question(content or "", self.s["max_question_chars"], "messages.content")
            # The model name may pick the mode: "glore", "glore-local", "best_of_n", ...
            mode = req.mode or next((m for m in MODES if req.model in (m, f"glore-{m}")), None)
            max_tokens = req.max_completion_tokens or req.max_tokens
            res = await self._solve(q, mode, max_tokens, None)
            chosen = next(c for c in res["candidates"] if c["name"] == res["chosen"])
            n_completion = len(chosen["text"].split())
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                "created": int(time.time()), "model": req.model,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": chosen["text"]}}],
                # Word counts, not tokens: the ingress holds no tokenizer.
                "usage": {"prompt_tokens": len(q.split()), "completion_tokens": n_completion,
                          "total_tokens": len(q.split()) + n_completion},
                "glore": {k: res[k] for k in ("mode", "answer", "chosen", "refined",
                                              "located_step", "timings_ms")},
            }

        @app.get("/healthz")
        async def healthz(self) -> dict:
            return {"status": "ok", "modes": list(MODES), "default_mode": self.s["default_mode"]}

    return Ingress
