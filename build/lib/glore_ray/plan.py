"""`glore plan CONFIG`: what a run will cost, before it is submitted.

From the config and the dataset size alone (nothing is downloaded or loaded), estimate per stage:
prompts, samples, step prefixes and rollouts, generated and training tokens, GPU-hours and wall
hours on the GPUs the config asks for, and what budgeted labelling saves. Every assumption is a
``plan.*`` config field, printed with the plan and overridable like any key
(``glore plan CONFIG plan.gen_tokens_per_gpu_s=3000``).

The counting follows the stages: samples = prompts x ``k_samples``; a sample of ``m`` steps has
``m - 1`` non-final prefixes (the last step's label is the answer's correctness), each rolled out
``k_rollouts`` times when labelling exhaustively. Budgeted labelling binary-searches the first
negative step of each *wrong* sample (``ceil(log2 m)`` probes), stops a positive prefix's rollouts
at the first success (chunks of ``budget_chunk``) and labels right samples from their answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from glore_ray.config import RunConfig

GSM8K_SPLITS = (7473, 1319)  # openai/gsm8k "main": train / test questions
GSM8K_STEPS = 4.58  # mean non-blank lines of GSM8K train gold solutions, `#### n` line included


@dataclass
class StagePlan:
    stage: str
    work: str  # what the stage does, in counts
    gen_tokens: float = 0.0
    train_tokens: float = 0.0
    gpu_hours: float = 0.0
    gpus: float = 0.0  # GPUs the stage uses at once (0 = CPU only)

    @property
    def wall_hours(self) -> float:
        return self.gpu_hours / self.gpus if self.gpus else 0.0


@dataclass
class Plan:
    name: str
    source: str
    n_train: int
    n_test: int
    prompts: int
    samples: int
    steps_per_solution: float
    prefixes: int
    rollouts_exhaustive: int
    rollouts_budgeted: int
    budgeted: bool  # the labelling mode this config runs (rollout.budgeted)
    stages: list[StagePlan] = field(default_factory=list)
    assumptions: dict[str, float] = field(default_factory=dict)

    @property
    def rollouts(self) -> int:
        """Rollouts the configured labelling mode will generate."""
        return self.rollouts_budgeted if self.budgeted else self.rollouts_exhaustive

    @property
    def budget_saving(self) -> float:
        if not self.rollouts_exhaustive:
            return 0.0
        return 1 - self.rollouts_budgeted / self.rollouts_exhaustive

    @property
    def total_gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)


def dataset_sizes(cfg: RunConfig) -> tuple[int, int, str]:
    """(train, test, where the numbers come from), without downloading anything."""
    d = cfg.data
    if d.source in ("dependency", "synthetic"):
        w = getattr(d, d.source)
        return w.n_train, w.n_test, f"generated world (data.{d.source})"
    if d.source == "gsm8k_jsonl":
        from pathlib import Path

        from glore_ray.data.gsm8k import default_gsm8k_dir

        folder = Path(d.path) if d.path else default_gsm8k_dir()
        files = [folder / f"{s}.jsonl" for s in ("train", "test")]
        if all(f.is_file() for f in files):
            n = [sum(1 for line in f.open(encoding="utf-8") if line.strip()) for f in files]
            return n[0], n[1], f"GSM8K jsonl in {folder} (counted)"
    return (*GSM8K_SPLITS, f"GSM8K {d.hub_name} (known split sizes)")


def steps_per_solution(cfg: RunConfig) -> float:
    if cfg.plan.steps_per_solution is not None:
        return cfg.plan.steps_per_solution
    if cfg.data.source in ("dependency", "synthetic"):
        # a generated world: count the gold lines of 400 of its questions (the needed-quantity
        # counts of the dependency world are not uniform: 3-16 needed average ~7 lines)
        from glore_ray.data import worlds

        train, _ = worlds.generate(cfg.data, n_train=400)
        return sum(len(q.gold_solution.strip().splitlines()) for q in train) / len(train)
    return GSM8K_STEPS


def expected_draws_positive(k: int, chunk: int, p: float) -> float:
    """Expected rollouts from a positive prefix when drawing in chunks and stopping at a success."""
    draws, drawn = 0.0, 0
    while drawn < k:
        size = min(chunk, k - drawn)
        draws += size * (1 - p) ** drawn  # this chunk is drawn only if every earlier one failed
        drawn += size
    return draws


def _gpu_hours(tokens: float, per_gpu_s: float) -> float:
    return tokens / per_gpu_s / 3600


def compute_plan(cfg: RunConfig) -> Plan:
    a, r, t, lab = cfg.plan, cfg.rollout, cfg.train, cfg.label
    n_train, n_test, source = dataset_sizes(cfg)
    prompts = min(r.n_questions or n_train, n_train)
    samples = prompts * r.k_samples
    m = steps_per_solution(cfg)
    prefixes = round(samples * (m - 1))
    exhaustive = prefixes * r.k_rollouts

    wrong = samples * (1 - a.sample_accuracy)
    probes = math.ceil(math.log2(m))
    # Binary search: assume half the probed prefixes are positive (stop early), half negative (K).
    per_probe = 0.5 * expected_draws_positive(r.k_rollouts, r.budget_chunk, a.rollout_success) \
        + 0.5 * r.k_rollouts
    budgeted = min(exhaustive, round(wrong * probes * per_probe))

    plan = Plan(cfg.name, source, n_train, n_test, prompts, samples, m, prefixes, exhaustive,
                budgeted, r.budgeted,
                assumptions=a.model_dump() | {"steps_per_solution": m})
    pool_gpus = r.max_actors * r.num_gpus
    plan.stages.append(StagePlan("data", f"{n_train:,} train / {n_test:,} test questions"))
    train_gpus = t.num_workers if t.use_gpu else 0
    sft = cfg.policy.sft
    if cfg.policy.model and sft is not None:
        # SFT on gold solutions: prompt + one solution per row, then a greedy check
        rows = sft.steps * sft.batch_size * sft.grad_accum * t.num_workers
        tokens = rows * (a.prompt_tokens + a.solution_tokens)
        check = sft.eval_questions * a.solution_tokens
        plan.stages.append(StagePlan(
            "policy", f"SFT of {cfg.policy.model}: {sft.steps:,} steps x {rows // sft.steps:,} "
            f"gold solutions, then {sft.eval_questions} greedy held-out answers",
            train_tokens=tokens, gen_tokens=check,
            gpu_hours=_gpu_hours(tokens, a.train_tokens_per_gpu_s)
            + _gpu_hours(check, a.gen_tokens_per_gpu_s), gpus=train_gpus))
    else:
        plan.stages.append(StagePlan("policy", f"pretrained {cfg.policy.model}: nothing to do"
                                     if cfg.policy.model else "tiny policy: trained on CPU"))

    gen = samples * a.solution_tokens
    plan.stages.append(StagePlan(
        "sample", f"{prompts:,} prompts x {r.k_samples} = {samples:,} samples", gen_tokens=gen,
        gpu_hours=_gpu_hours(gen, a.gen_tokens_per_gpu_s), gpus=pool_gpus))

    # A rollout from the prefix through step i writes the remaining steps: m/2 of m on average.
    gen = plan.rollouts * a.solution_tokens / 2
    how = (f"budgeted: {wrong:,.0f} wrong samples x {probes} probes x {per_probe:.1f} draws"
           if r.budgeted else f"{prefixes:,} prefixes x {r.k_rollouts}")
    plan.stages.append(StagePlan(
        "rollout", f"{plan.rollouts:,} rollouts ({how})", gen_tokens=gen,
        gpu_hours=_gpu_hours(gen, a.gen_tokens_per_gpu_s), gpus=pool_gpus))

    keep = 1 - lab.holdout_fraction
    sets = {
        "orm": (samples * keep, a.prompt_tokens + a.solution_tokens),
        "sorm": (samples * keep, a.prompt_tokens + a.solution_tokens),
        "global_refiner": (min(wrong, prompts * lab.max_global_pairs_per_question) * keep,
                           a.prompt_tokens + 2 * a.solution_tokens),
        "local_refiner": (min(wrong, prompts * lab.max_local_pairs_per_question) * keep,
                          a.prompt_tokens + 2 * a.solution_tokens),
    }
    plan.stages.append(StagePlan(
        "label", "ORM/SORM rows {:,.0f} each, refine pairs <= {:,.0f} global / {:,.0f} local (CPU)"
        .format(sets["orm"][0], sets["global_refiner"][0], sets["local_refiner"][0])))

    for which, (rows, seq) in sets.items():
        mt = getattr(t, which)
        seen = rows * mt.epochs
        if mt.max_steps is not None:
            seen = min(seen, mt.max_steps * mt.batch_size * mt.grad_accum * t.num_workers)
        tokens = seen * seq
        plan.stages.append(StagePlan(
            f"train {which}", f"{rows:,.0f} rows x {mt.epochs} epochs, {seq} tokens/row",
            train_tokens=tokens, gpu_hours=_gpu_hours(tokens, a.train_tokens_per_gpu_s),
            gpus=train_gpus))

    n_eval = min(cfg.evaluate.n_questions or n_test, n_test)
    drafts = n_eval * (cfg.refine.best_of + 3)  # greedy, best-of-n, global, local
    gen = drafts * a.solution_tokens
    scored = n_eval * (cfg.refine.best_of + 4) * (a.prompt_tokens + a.solution_tokens)
    plan.stages.append(StagePlan(
        "evaluate", f"{n_eval:,} test questions x {cfg.refine.best_of + 3} generations",
        gen_tokens=gen, gpu_hours=_gpu_hours(gen, a.gen_tokens_per_gpu_s)
        + _gpu_hours(scored, a.score_tokens_per_gpu_s), gpus=pool_gpus))
    return plan


def _num(x: float) -> str:
    if x == 0:
        return "-"
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


def format_plan(plan: Plan) -> str:
    lines = [f"glore plan: {plan.name}",
             f"data: {plan.n_train:,} train / {plan.n_test:,} test questions — {plan.source}",
             "",
             f"{'stage':<22}{'gen tok':>9}{'train tok':>11}{'GPU-h':>9}{'GPUs':>6}{'wall h':>8}"
             "  work"]
    for s in plan.stages:
        gpu_h = f"{s.gpu_hours:.1f}" if s.gpu_hours else "-"
        wall = f"{s.wall_hours:.1f}" if s.gpus else ("-" if not s.gpu_hours else "CPU")
        lines.append(f"{s.stage:<22}{_num(s.gen_tokens):>9}{_num(s.train_tokens):>11}"
                     f"{gpu_h:>9}{f'{s.gpus:g}' if s.gpus else '-':>6}{wall:>8}  {s.work}")
    lines.append(f"{'total':<22}{_num(sum(s.gen_tokens for s in plan.stages)):>9}"
                 f"{_num(sum(s.train_tokens for s in plan.stages)):>11}"
                 f"{plan.total_gpu_hours:>9.1f}")
    ex, bu = plan.rollouts_exhaustive, plan.rollouts_budgeted
    lines += ["",
              f"labelling: exhaustive {ex:,} rollouts ({plan.prefixes:,} prefixes x K); "
              f"budgeted ~{bu:,} — saves {plan.budget_saving:.0%} of the rollouts "
              f"({'on' if plan.budgeted else 'off'} in this config: rollout.budgeted)",
              "",
              "assumptions (override with plan.<key>=VALUE):"]
    for k, v in plan.assumptions.items():
        if v is not None:
            lines.append(f"  {k} = {v:g}" if isinstance(v, float) else f"  {k} = {v}")
    lines.append("  GPU-h = tokens / per-GPU throughput; wall h = GPU-h / GPUs the stage requests "
                 "(rollout.max_actors x num_gpus, train.num_workers); prefill not counted "
                 "(prefix caching)")
    return "\n".join(lines)


def print_plan(cfg: RunConfig) -> None:
    print(format_plan(compute_plan(cfg)))
