"""The evaluate stage's report: ``report.md`` tables and matplotlib PNGs."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "greedy": "greedy draft", "best_of_n": "best-of-N (ORM rerank)", "global": "global only",
    "local": "local only (SORM where)", "glore": "global+local+ORM rerank",
    "global_oracle_when": "global, oracle when", "local_oracle_when": "local, oracle when",
    "glore_oracle_when": "global+local+rerank, oracle when",
    "glore_when": "global+local+ORM rerank, ORM when",
    "glore_oracle_rerank": "global+local, oracle rerank (ceiling)",
}


def _pct(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def refinement_table(metrics: dict) -> str:
    rows = ["| strategy | accuracy | fixes wrong drafts | breaks right drafts |",
            "|---|---|---|---|"]
    for name, m in metrics["refinement"].items():
        rows.append(f"| {LABELS.get(name, name)} | {_pct(m['accuracy'])} | "
                    f"{_pct(m['fixes_wrong_drafts'])} | {_pct(m['breaks_right_drafts'])} |")
    return "\n".join(rows)


def reward_table(metrics: dict) -> str:
    rm = metrics["reward_models"]
    rows = ["| model | step acc. vs oracle | step AUC vs oracle | step acc. vs rollout labels | "
            "final-answer acc. | right > wrong, same question |", "|---|---|---|---|---|---|"]
    for m in ("orm", "sorm"):
        vo = rm.get("vs_oracle", {}).get(m, {})
        vr = rm.get("vs_rollout_labels", {}).get(m, {})
        rows.append(f"| {m.upper()} | {_pct(vo.get('step_accuracy'))} | "
                    f"{vo.get('step_auc', float('nan')):.3f} | {_pct(vr.get('step_accuracy'))} | "
                    f"{_pct(rm['final_answer'][m]['final_answer_accuracy'])} | "
                    f"{_pct(rm.get('within_question', {}).get(m, {}).get('pairwise_accuracy'))} |")
    return "\n".join(rows)


def times_table(metrics: dict) -> str:
    rows = ["| stage | seconds |", "|---|---|"]
    for k, v in metrics.get("stage_seconds", {}).items():
        rows.append(f"| {k} | {v} |")
    return "\n".join(rows)


def summary_table(metrics: dict) -> str:
    return ("\nRefinement on {n} test questions:\n{r}\n\nReward models:\n{m}\n".format(
        n=metrics["n_questions"], r=refinement_table(metrics), m=reward_table(metrics)))


def draft_errors_line(metrics: dict) -> str:
    """How the wrong greedy drafts go wrong, by the oracle's first wrong line."""
    kinds = metrics.get("draft_error_kinds") or {}
    if not kinds:
        return ""
    listed = ", ".join(f"{k} {v}" for k, v in kinds.items())
    return (f"Wrong greedy drafts by the oracle's first error ({sum(kinds.values())}): {listed}.")


def render(cfg, metrics: dict) -> str:
    plots = "\n".join(f"![{p}]({p})" for p in metrics.get("plots", []))
    return f"""# GLoRe report — {cfg.name} (seed {cfg.seed})

{metrics['n_questions']} held-out test questions; *when* = always refine (the paper's main table)
except "ORM when" (refine when the draft's ORM score < {metrics['thresholds']['when']}: \
{_pct(metrics.get('refined_share_when'))} of drafts); *where* threshold
{metrics['thresholds']['where']}; SORM located a step in {_pct(metrics['located_share'])} of drafts.
"Right > wrong, same question" is how often a reward model scores a right solution above a wrong
one to the same question (draft and best-of-N samples; 50% = no better than chance): the ORM's
accuracy as a reranker.

## Refinement

{refinement_table(metrics)}

Best-of-N pool: {metrics.get('best_of_n_samples', {})} (per-sample accuracy and pass@N of the
policy samples the ORM reranks).

{draft_errors_line(metrics)}

## Reward models

Step accuracy at threshold 0.5; "vs oracle" = the synthetic world's true first wrong step on the
greedy drafts and best-of-N samples; "vs rollout labels" = the label stage's held-out SORM split.

{reward_table(metrics)}

## Stage wall times

{times_table(metrics)}

## Plots

{plots}
"""


def make_plots(out: Path, metrics: dict, examples: list[dict], orm_probs, sorm_probs,
               oracle_labels, n_examples: int) -> list[Path]:
    """Writes the PNGs and ``plots.json`` (each PNG's series labels, so tests and readers can
    check what a plot shows without looking at pixels)."""
    import json

    paths = []
    series: dict[str, list[str]] = {}
    # 1. accuracy per strategy
    names = list(metrics["refinement"])
    acc = [100 * metrics["refinement"][k]["accuracy"] for k in names]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(range(len(names)), acc, color=["#888"] + ["#4c72b0"] * (len(names) - 1))
    ax.set_xticks(range(len(names)), [LABELS.get(k, k) for k in names], rotation=30, ha="right",
                  fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy per refinement strategy")
    for i, a in enumerate(acc):
        ax.text(i, a + 0.5, f"{a:.1f}", ha="center", fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, out / "accuracy_by_strategy.png"))
    series["accuracy_by_strategy.png"] = names

    # 2. ROC of ORM vs SORM step scores against oracle step labels
    if oracle_labels is not None:
        from sklearn.metrics import roc_curve

        y = [int(v) for row in oracle_labels for v in row]
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for name, probs in (("ORM", orm_probs), ("SORM", sorm_probs)):
            p = [x for row in probs for x in row]
            if 0 < sum(y) < len(y):
                fpr, tpr, _ = roc_curve(y, p)
                ax.plot(fpr, tpr, label=name)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("Step scores vs oracle step correctness")
        ax.legend()
        series["roc_orm_sorm.png"] = [t.get_text() for t in ax.get_legend().get_texts()]
        fig.tight_layout()
        paths.append(_save(fig, out / "roc_orm_sorm.png"))

    # 3. per-step score traces for a few wrong drafts
    picks = [e for e in examples if not e["draft_correct"]][:n_examples]
    if picks:
        fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3), squeeze=False)
        for ax, e in zip(axes[0], picks):
            xs = list(range(len(e["draft_steps"])))
            ax.plot(xs, e["orm"], "o-", label="ORM")
            ax.plot(xs, e["sorm"], "s-", label="SORM")
            if e["oracle"] is not None:
                ax.step(xs, e["oracle"], "k--", where="mid", label="oracle", lw=0.8)
            if e["located"] is not None:
                ax.axvline(e["located"], color="r", lw=0.8)
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("step")
        axes[0][0].set_ylabel("P(step leads to a right answer)")
        axes[0][0].legend(fontsize=7)
        fig.suptitle("Per-step scores on wrong drafts (red: located step)", fontsize=9)
        series["step_traces.png"] = [t.get_text() for t in axes[0][0].get_legend().get_texts()]
        fig.tight_layout()
        paths.append(_save(fig, out / "step_traces.png"))
    (out / "plots.json").write_text(json.dumps(series, indent=2))
    return paths


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
