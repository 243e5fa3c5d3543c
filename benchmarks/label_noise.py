"""How many rollouts a SORM label needs: from one finished run's rollouts, the hard label of every
probed prefix of a wrong sample as if only the first j of its rollouts had been drawn (j = 1..k),
against the oracle's label of that step (a step before the sample's first wrong step is good).

The budgeted search stops a prefix at its first successful rollout, so "a success among the first
j draws" is known for every j <= k from the draws it made. A good prefix whose j draws all fail is
a false negative: the label stage then marks it and (by monotonicity) every later step wrong.

    python benchmarks/label_noise.py runs/embedded --out benchmarks/results/label_noise.json

Reads ``<run>/rollout/rollouts.parquet`` and ``<run>/label/step_labels.parquet`` (oracle worlds
only). No Ray, no model: seconds.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq


def prefix_draws(rollouts_path: Path) -> dict[tuple, list[bool]]:
    """(qid, sample_id, step_idx) -> the correctness of its rollouts in draw order."""
    t = pq.read_table(str(rollouts_path), columns=["qid", "sample_id", "step_idx", "k", "correct"])
    draws: dict[tuple, list[tuple[int, bool]]] = defaultdict(list)
    for q, s, i, k, ok in zip(*(t.column(c).to_pylist() for c in t.column_names)):
        draws[(q, s, i)].append((k, ok))
    # a probe draws k = 0, 1, ... from one prefix; a prefix probed twice cannot happen
    return {key: [ok for _, ok in sorted(v)] for key, v in draws.items()}


def oracle_labels(labels_path: Path) -> dict[tuple, float]:
    t = pq.read_table(str(labels_path), columns=["qid", "sample_id", "step_idx", "oracle_label"])
    return {(q, s, i): o for q, s, i, o in zip(*(t.column(c).to_pylist() for c in t.column_names))
            if o >= 0}


def noise_by_draws(draws: dict[tuple, list[bool]], oracle: dict[tuple, float], k: int) -> dict:
    """Per j = 1..k: accuracy of "any success in the first j draws" vs the oracle, and the false
    negative rate among good prefixes (oracle 1) and false positive rate among bad ones."""
    probed = [(d, oracle[key]) for key, d in draws.items() if key in oracle]
    good = [d for d, o in probed if o == 1.0]
    bad = [d for d, o in probed if o == 0.0]
    out = {"n_probed_prefixes": len(probed), "n_good": len(good), "n_bad": len(bad), "by_j": {}}
    for j in range(1, k + 1):
        fn = sum(not any(d[:j]) for d in good)
        fp = sum(any(d[:j]) for d in bad)
        out["by_j"][j] = {"accuracy": round(1 - (fn + fp) / max(1, len(probed)), 4),
                          "false_negative_rate": round(fn / max(1, len(good)), 4),
                          "false_positive_rate": round(fp / max(1, len(bad)), 4)}
    # the success rate of one draw from a good prefix, averaged per prefix: what k must beat
    out["mean_draws_to_success_on_good"] = round(
        sum(d.index(True) + 1 for d in good if any(d)) / max(1, sum(any(d) for d in good)), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished run folder (rollout and label done)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    draws = prefix_draws(args.run / "rollout" / "rollouts.parquet")
    oracle = oracle_labels(args.run / "label" / "step_labels.parquet")
    if not oracle:
        raise SystemExit(f"{args.run}: no oracle labels (a world without an oracle, e.g. GSM8K)")
    k = max((len(d) for d in draws.values()), default=0)
    report = {"run": str(args.run), "k_rollouts": k, **noise_by_draws(draws, oracle, k)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
