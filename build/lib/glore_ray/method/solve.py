"""The refine-and-rerank graph (GLoRe §4) over a batch of questions: Serve (a batch of one per
request) and the evaluate stage (every test question at once) both call ``solve``.

    draft (greedy policy) -> ORM(draft)
      -> refine?  (``always_refine`` = the paper's main table, else ``decide.should_refine``)
      -> SORM per-step scores -> where = ``decide.locate``
      -> global refinement  ||  local refinement (concurrently)
      -> ORM scores the new candidates in one call -> rerank {draft, global, local}

Modes (``decide.MODES``): ``draft`` (greedy only), ``global`` / ``local`` (that refinement
replaces the draft when it ran), ``glore`` (rerank all three), ``best_of_n`` (n policy samples at
the run's ``rollout.temperature`` / ``top_p``, reranked by the ORM — the paper's baseline).

The five models are async *batch* callables and no Ray is imported here: Serve passes callables
over deployment handles, evaluate passes callables over Ray Data actor pools.

    results = await solve(["Mia has 23 shells. ..."], "glore", models, GraphParams())
    results[0].answer, results[0].chosen, [c.name for c in results[0].candidates]
    # "56", "local", ["draft", "global", "local"]
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Awaitable, Callable

from glore_ray.data.grading import extract_answer, split_steps
from glore_ray.engines.base import SamplingSpec
from glore_ray.method.decide import MODES, Mode, locate, orm_score, rerank, should_refine
from glore_ray.prompts import global_prompt, local_prompt, policy_prompt, prefix_text

# (prompts, spec) -> spec.n completion texts per prompt (continuations only)
GenerateBatch = Callable[[list[str], SamplingSpec], Awaitable[list[list[str]]]]
# (questions, steps of one candidate each) -> per-step probabilities per candidate
ScoreBatch = Callable[[list[str], list[list[str]]], Awaitable[list[list[float]]]]


@dataclass
class Models:
    policy: GenerateBatch
    global_refiner: GenerateBatch
    local_refiner: GenerateBatch
    orm: ScoreBatch
    sorm: ScoreBatch


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

    @classmethod
    def from_config(cls, cfg) -> "GraphParams":
        """A run config's graph, the one evaluate runs and Serve is handed: the ``refine``
        section's decisions, the run's seed, the ``rollout`` section's sampling and length."""
        r = cfg.refine
        return cls(when_threshold=r.when_threshold, where_threshold=r.where_threshold,
                   always_refine=r.always_refine,
                   max_tokens=r.max_new_tokens or cfg.rollout.max_tokens, best_of=r.best_of,
                   seed=cfg.seed, sample_temperature=cfg.rollout.temperature,
                   sample_top_p=cfg.rollout.top_p)


@dataclass
class Candidate:
    name: str  # draft | global | local | sample_<i>
    text: str
    steps: list[str]
    answer: str | None
    orm_score: float | None = None  # the last step's ORM probability (decide.orm_score)
    orm_steps: list[float] = field(default_factory=list)  # the ORM's probability per step


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

    def candidate(self, name: str) -> Candidate | None:
        return next((c for c in self.candidates if c.name == name), None)


class Trace:
    """Records each stage's interval relative to the batch's start (ms); one trace per batch,
    shared by its results (``info`` holds per-question lists, a value for a batch of one)."""

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


def _candidate(name: str, text: str) -> Candidate:
    return Candidate(name, text, split_steps(text), extract_answer(text))


async def _scored(models: Models, trace: Trace, stage: str, questions: list[str],
                  cands: list[Candidate]) -> None:
    """Set ``orm_score`` on each candidate with one ORM call."""
    if not cands:
        return
    probs = await trace.run(stage, models.orm(questions, [c.steps for c in cands]),
                            scored=[c.name for c in cands])
    for c, p in zip(cands, probs):
        c.orm_score, c.orm_steps = orm_score(p), list(p)


async def solve(questions: list[str], mode: Mode, models: Models, params: GraphParams,
                max_tokens: int | None = None, best_of: int | None = None) -> list[SolveResult]:
    """One SolveResult per question, in order (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    trace = Trace()
    greedy = SamplingSpec(n=1, temperature=0.0, max_tokens=max_tokens or params.max_tokens,
                          seed=params.seed)
    if mode == "best_of_n":
        return await _best_of_n(questions, models, params, trace, greedy, best_of or params.best_of)
    n = len(questions)
    texts = await trace.run("draft", models.policy([policy_prompt(q) for q in questions], greedy))
    drafts = [_candidate("draft", t[0]) for t in texts]
    await _scored(models, trace, "orm", questions, drafts)

    refine = [mode != "draft" and (params.always_refine
                                   or should_refine(d.orm_score, params.when_threshold))
              for d in drafts]
    sorm: list[list[float] | None] = [None] * n
    where: list[int | None] = [None] * n
    if mode in ("local", "glore"):
        idx = [i for i in range(n) if refine[i] and drafts[i].steps]
        if idx:
            probs = await trace.run("sorm", models.sorm([questions[i] for i in idx],
                                                        [drafts[i].steps for i in idx]))
            for i, p in zip(idx, probs):
                sorm[i], where[i] = p, locate(p, params.where_threshold)
            trace.events[-1].info["located_step"] = _one([where[i] for i in idx])
    g_idx = [i for i in range(n) if refine[i]] if mode in ("global", "glore") else []
    l_idx = [i for i in range(n) if where[i] is not None] if mode in ("local", "glore") else []
    g_texts, l_texts = await asyncio.gather(
        _generate(trace, "global", models.global_refiner,
                  [global_prompt(questions[i], drafts[i].text) for i in g_idx], greedy),
        _generate(trace, "local", models.local_refiner,
                  [local_prompt(questions[i], drafts[i].steps, where[i]) for i in l_idx], greedy,
                  located_step=_one([where[i] for i in l_idx])))
    new: dict[int, list[Candidate]] = {i: [] for i in range(n)}
    for i, t in zip(g_idx, g_texts):
        new[i].append(_candidate("global", t[0]))
    for i, t in zip(l_idx, l_texts):  # the candidate is the good prefix + the continuation
        new[i].append(_candidate("local", prefix_text(drafts[i].steps, where[i] - 1) + t[0]))
    flat = [(i, c) for i in range(n) for c in new[i]]
    await _scored(models, trace, "rerank", [questions[i] for i, _ in flat], [c for _, c in flat])

    results = []
    for i in range(n):
        cands = [drafts[i]] + new[i]
        if mode == "glore":
            chosen = cands[rerank([c.orm_score for c in cands])]
        else:  # draft / global / local: the requested refinement when it ran, else the draft
            chosen = next((c for c in cands if c.name == mode), drafts[i])
        results.append(_result(mode, chosen, cands, refine[i], sorm[i], where[i], trace))
    return results


async def _generate(trace: Trace, stage: str, fn: GenerateBatch, prompts: list[str],
                    spec: SamplingSpec, **info) -> list[list[str]]:
    if not prompts:
        return []
    return await trace.run(stage, fn(prompts, spec), **info)


def _one(values: list):
    """Trace info per question: the value itself for a batch of one (a Serve request)."""
    return values[0] if len(values) == 1 else values


async def _best_of_n(questions: list[str], models: Models, params: GraphParams, trace: Trace,
                     greedy: SamplingSpec, k: int) -> list[SolveResult]:
    spec = SamplingSpec(n=k, temperature=params.sample_temperature, top_p=params.sample_top_p,
                        max_tokens=greedy.max_tokens, seed=params.seed)
    texts = await trace.run("sample", models.policy([policy_prompt(q) for q in questions], spec),
                            n=k)
    cands = [[_candidate(f"sample_{j}", t) for j, t in enumerate(row)] for row in texts]
    flat = [(q, c) for q, row in zip(questions, cands) for c in row]
    await _scored(models, trace, "rerank", [q for q, _ in flat], [c for _, c in flat])
    return [_result("best_of_n", row[rerank([c.orm_score for c in row])], row, False, None, None,
                    trace) for row in cands]


def _result(mode: str, chosen: Candidate, candidates: list[Candidate], refined: bool,
            sorm_scores: list[float] | None, where: int | None, trace: Trace) -> SolveResult:
    timings: dict[str, float] = {}
    for e in trace.events:
        timings[e.stage] = round(timings.get(e.stage, 0.0) + e.end_ms - e.start_ms, 3)
    timings["total"] = round(trace.now(), 3)
    return SolveResult(mode, chosen.answer, chosen.name, candidates, refined, sorm_scores, where,
                       list(trace.events), timings)
