"""The refine-and-rerank inference graph (GLoRe §4), as plain asyncio over five async callables.

No Ray here: the Serve ingress passes callables that call deployment handles, and the evaluate
stage can pass callables over local engines and scorers to run the very same logic offline.

    draft (greedy policy) -> ORM(draft)
      -> refine?  (mode ``always_refine`` = the paper's main table, else ORM < when_threshold)
      -> SORM per-step scores -> where = first step with score < where_threshold
      -> global refinement  ||  local refinement (concurrently)
      -> ORM scores the new candidates in one call -> rerank {draft, global, local}

Modes: ``draft`` (greedy only), ``global`` / ``local`` (that refinement replaces the draft when
refinement is triggered), ``glore`` (rerank all three), ``best_of_n`` (n policy samples at
the run's ``rollout.temperature`` / ``top_p``, as in evaluate, reranked by the ORM — the paper's
baseline).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Awaitable, Callable, Literal

from glore_ray.data.grading import extract_answer, split_steps
from glore_ray.engines.base import SamplingSpec
from glore_ray.prompts import global_prompt, local_prompt, policy_prompt, prefix_text

Mode = Literal["draft", "global", "local", "glore", "best_of_n"]
MODES: tuple[str, ...] = ("draft", "global", "local", "glore", "best_of_n")

# (prompt, spec) -> spec.n completion texts (continuations only)
GenerateFn = Callable[[str, SamplingSpec], Awaitable[list[str]]]
# (question, [steps of candidate 1, steps of candidate 2, ...]) -> per-step probabilities each
ScoreFn = Callable[[str, list[list[str]]], Awaitable[list[list[float]]]]


@dataclass
class Models:
    policy: GenerateFn
    global_refiner: GenerateFn
    local_refiner: GenerateFn
    orm: ScoreFn
    sorm: ScoreFn


@dataclass
class GraphParams:
    when_threshold: float = 0.5
    where_threshold: float = 0.5
    always_refine: bool = True
    max_tokens: int = 128
    best_of: int = 3
    seed: int = 0
    sample_temperature: float = 1.0  # best-of-n sampling: the run's rollout.temperature / top_p
    sample_top_p: float = 1.0


@dataclass
class Candidate:
    name: str  # draft | global | local | sample_<i>
    text: str
    steps: list[str]
    answer: str | None
    orm_score: float | None = None


@dataclass
class TraceEvent:
    stage: str
    start_ms: float
    end_ms: float
    info: dict = field(default_factory=dict)


@dataclass
class SolveResult:
    mode: str
    answer: str | None
    chosen: str
    candidates: list[Candidate]
    refined: bool
    sorm_scores: list[float] | None
    located_step: int | None
    trace: list[TraceEvent]
    timings_ms: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


class Trace:
    """Records each stage's interval relative to the request start (ms)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.events: list[TraceEvent] = []

    def now(self) -> float:
        return (time.perf_counter() - self.t0) * 1000

    async def run(self, stage: str, coro: Awaitable, **info):
        start = self.now()
        try:
            return await coro
        finally:
            self.events.append(TraceEvent(stage, round(start, 3), round(self.now(), 3), info))


def orm_score(step_probs: list[float]) -> float:
    """A solution's ORM score is its last step's probability (0 for an empty solution)."""
    return float(step_probs[-1]) if step_probs else 0.0


def should_refine(draft_orm_score: float, when_threshold: float) -> bool:
    """*When* (gated mode): refine a draft whose ORM score is under the threshold."""
    return draft_orm_score < when_threshold


def locate(sorm_scores: list[float], threshold: float) -> int | None:
    """*Where*: the first step whose SORM probability is under the threshold (None = all pass)."""
    return next((i for i, s in enumerate(sorm_scores) if s < threshold), None)


def _candidate(name: str, text: str) -> Candidate:
    return Candidate(name, text, split_steps(text), extract_answer(text))


async def solve(question: str, mode: Mode, models: Models, params: GraphParams,
                max_tokens: int | None = None, best_of: int | None = None) -> SolveResult:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    trace = Trace()
    greedy = SamplingSpec(n=1, temperature=0.0, max_tokens=max_tokens or params.max_tokens,
                          seed=params.seed)
    if mode == "best_of_n":
        return await _best_of_n(question, models, params, trace, greedy, best_of or params.best_of)

    (draft_text,) = await trace.run("draft", models.policy(policy_prompt(question), greedy))
    draft = _candidate("draft", draft_text)
    (draft_probs,) = await trace.run("orm", models.orm(question, [draft.steps]))
    draft.orm_score = orm_score(draft_probs)
    candidates = [draft]

    refine = mode != "draft" and (params.always_refine
                                   or should_refine(draft.orm_score, params.when_threshold))
    sorm_scores: list[float] | None = None
    where: int | None = None
    if refine:
        if mode in ("local", "glore") and draft.steps:
            (sorm_scores,) = await trace.run("sorm", models.sorm(question, [draft.steps]))
            where = locate(sorm_scores, params.where_threshold)
            trace.events[-1].info["located_step"] = where
        jobs: dict[str, Awaitable[str]] = {}
        if mode in ("global", "glore"):
            jobs["global"] = _global(question, draft, models, greedy, trace)
        if mode in ("local", "glore") and where is not None:
            jobs["local"] = _local(question, draft, where, models, greedy, trace)
        texts = await asyncio.gather(*jobs.values())
        new = [_candidate(name, text) for name, text in zip(jobs, texts)]
        if new:
            probs = await trace.run("rerank", models.orm(question, [c.steps for c in new]),
                                    scored=[c.name for c in new])
            for c, p in zip(new, probs):
                c.orm_score = orm_score(p)
            candidates += new

    if mode == "glore":
        chosen = max(candidates, key=lambda c: c.orm_score)  # ties keep the draft
    else:  # draft / global / local: the requested refinement when it ran, else the draft
        chosen = next((c for c in candidates if c.name == mode), draft)
    return _result(mode, chosen, candidates, refine, sorm_scores, where, trace)


async def _global(question: str, draft: Candidate, models: Models, spec: SamplingSpec,
                  trace: Trace) -> str:
    (text,) = await trace.run("global", models.global_refiner(
        global_prompt(question, draft.text), spec))
    return text


async def _local(question: str, draft: Candidate, where: int, models: Models, spec: SamplingSpec,
                 trace: Trace) -> str:
    """The local refiner continues after the good prefix; the candidate is prefix + continuation."""
    (cont,) = await trace.run("local", models.local_refiner(
        local_prompt(question, draft.steps, where), spec), located_step=where)
    return prefix_text(draft.steps, where - 1) + cont


async def _best_of_n(question: str, models: Models, params: GraphParams, trace: Trace,
                     greedy: SamplingSpec, n: int) -> SolveResult:
    spec = SamplingSpec(n=n, temperature=params.sample_temperature, top_p=params.sample_top_p,
                        max_tokens=greedy.max_tokens, seed=params.seed)
    texts = await trace.run("sample", models.policy(policy_prompt(question), spec), n=n)
    cands = [_candidate(f"sample_{i}", t) for i, t in enumerate(texts)]
    probs = await trace.run("rerank", models.orm(question, [c.steps for c in cands]),
                            scored=[c.name for c in cands])
    for c, p in zip(cands, probs):
        c.orm_score = orm_score(p)
    chosen = max(cands, key=lambda c: c.orm_score)
    return _result("best_of_n", chosen, cands, False, None, None, trace)


def _result(mode: str, chosen: Candidate, candidates: list[Candidate], refined: bool,
            sorm_scores: list[float] | None, where: int | None, trace: Trace) -> SolveResult:
    timings: dict[str, float] = {}
    for e in trace.events:
        timings[e.stage] = round(timings.get(e.stage, 0.0) + e.end_ms - e.start_ms, 3)
    timings["total"] = round(trace.now(), 3)
    return SolveResult(mode, chosen.answer, chosen.name, candidates, refined, sorm_scores, where,
                       trace.events, timings)
