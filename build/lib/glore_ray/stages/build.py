"""The four training sets, written row by row as the label stage streams its labelled samples.

Each set lives at ``paths.training_set(which)`` with ``train.parquet``, ``eval.parquet`` (held out
by qid: ``split_qids``) and ``hf/`` (a ``datasets.DatasetDict`` saved with ``save_to_disk``):

- ``orm``:  ``{qid, sample_id, question, steps: list[str], labels: list[float]}`` — every label is
  the sample's correctness.
- ``sorm``: the same plus ``soft_labels: list[float]`` and ``mask: list[float]``; ``labels`` are
  the cleaned SORM labels (hard by default, ``label.sorm_labels=soft`` for soft). ``mask[i] = 0``
  marks a step dropped by balancing (``method.balance``): the trainer multiplies step i's loss by
  ``mask[i]``. Rows whose steps were all dropped are left out. ``sorm/trl/{train,eval}.parquet``
  is the same set in TRL's stepwise-supervision format ``{prompt, completions: list[str], labels:
  list[bool]}`` (cleaned hard labels; TRL has no mask, so the balancing is not carried there).
- ``global`` / ``local``: ``{qid, prompt, target}`` refinement pairs (``method.pairs``).

    orm_row({"qid": "q1", "sample_id": 0, "question": "...", "steps": ["2 + 3 = 5", "#### 5"],
             "correct": True, ...})
    # {"qid": "q1", "sample_id": 0, "question": "...", "steps": [...], "labels": [1.0, 1.0]}

Every file is written through ``ParquetOut`` (a temp path renamed when complete) inside a temp
folder committed at the end, so a killed stage never leaves a set that looks finished.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from glore_ray import prompts
from glore_ray.method.balance import Balancer
from glore_ray.method.decide import NEGATIVE_BELOW
from glore_ray.records import StepLabel, _schema, atomic_dir, commit_dir

SETS = ("orm", "sorm", "global", "local")
_STR, _FLOATS = pa.string(), pa.list_(pa.float64())
SCHEMAS: dict[str, pa.Schema] = {
    "orm": pa.schema([("qid", _STR), ("sample_id", pa.int64()), ("question", _STR),
                      ("steps", pa.list_(_STR)), ("labels", _FLOATS)]),
    "sorm": pa.schema([("qid", _STR), ("sample_id", pa.int64()), ("question", _STR),
                       ("steps", pa.list_(_STR)), ("labels", _FLOATS), ("soft_labels", _FLOATS),
                       ("mask", _FLOATS)]),
    "global": pa.schema([("qid", _STR), ("prompt", _STR), ("target", _STR)]),
    "local": pa.schema([("qid", _STR), ("prompt", _STR), ("target", _STR)]),
    "trl": pa.schema([("prompt", _STR), ("completions", pa.list_(_STR)),
                      ("labels", pa.list_(pa.bool_()))]),
}
STEP_LABEL_SCHEMA = _schema(StepLabel)


# ------------------------------------------------------------------ one row of each set

def orm_row(s: dict) -> dict:
    """From a labelled sample (``label.LABELLED``): every step labelled with its correctness."""
    return {"qid": s["qid"], "sample_id": int(s["sample_id"]), "question": s["question"],
            "steps": list(s["steps"]), "labels": [1.0 if s["correct"] else 0.0] * len(s["steps"])}


def sorm_row(s: dict, use_soft: bool, mask: list[float]) -> dict:
    return {"qid": s["qid"], "sample_id": int(s["sample_id"]), "question": s["question"],
            "steps": list(s["steps"]), "labels": list(s["soft"] if use_soft else s["hard"]),
            "soft_labels": list(s["soft"]), "mask": mask}


def trl_row(question: str, steps: list[str], hard: list[float]) -> dict:
    """TRL stepwise supervision: the policy prompt, the steps, one bool per step."""
    return {"prompt": prompts.policy_prompt(question), "completions": list(steps),
            "labels": [v >= NEGATIVE_BELOW for v in hard]}


# ------------------------------------------------------------------ split and write

def split_qids(qids: set[str] | list[str], fraction: float, seed: int) -> set[str]:
    """The held-out qids: a seeded shuffle, ``round(fraction * n)`` of them (at least one when
    ``fraction > 0`` and there are two or more questions, never all)."""
    ordered = sorted(set(qids))
    if fraction <= 0 or len(ordered) < 2:
        return set()
    random.Random(f"split-{seed}").shuffle(ordered)
    n_eval = min(len(ordered) - 1, max(1, round(fraction * len(ordered))))
    return set(ordered[:n_eval])


class ParquetOut:
    """One Parquet file written in batches of rows; it appears at ``path`` only when closed
    without an error (``with ParquetOut(path, schema) as out: out.write(rows)``)."""

    def __init__(self, path: str | Path, schema: pa.Schema):
        self.path, self.schema, self.n = Path(path), schema, 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self._w = pq.ParquetWriter(str(self.tmp), schema)

    def write(self, rows: list[dict]) -> None:
        if rows:
            self._w.write_table(pa.Table.from_pylist(rows, schema=self.schema))
            self.n += len(rows)

    def close(self) -> None:
        self._w.close()
        os.replace(self.tmp, self.path)

    def __enter__(self) -> "ParquetOut":
        return self

    def __exit__(self, typ, *_) -> None:
        if typ is None:
            self.close()
        else:
            self._w.close()
            self.tmp.unlink(missing_ok=True)


class SplitWriter:
    """A set's ``train.parquet`` / ``eval.parquet`` (+ ``hf/``) in a temp folder, split by qid;
    ``commit`` renames the folder into place and returns the row counts."""

    def __init__(self, folder: Path, schema: pa.Schema, eval_qids: set[str], hf: bool = True):
        self.folder, self.eval_qids, self.hf = Path(folder), eval_qids, hf
        self.tmp = atomic_dir(self.folder)
        self.out = {s: ParquetOut(self.tmp / f"{s}.parquet", schema) for s in ("train", "eval")}

    def write(self, rows: list[dict], qids: list[str] | None = None) -> None:
        """``qids`` gives each row's qid when the schema has no qid column (the TRL export)."""
        qids = qids if qids is not None else [r["qid"] for r in rows]
        parts: dict[str, list] = {"train": [], "eval": []}
        for r, q in zip(rows, qids):
            parts["eval" if q in self.eval_qids else "train"].append(r)
        for split, part in parts.items():
            self.out[split].write(part)

    def commit(self) -> dict:
        for o in self.out.values():
            o.close()
        if self.hf:
            _save_hf(self.tmp)
        commit_dir(self.tmp, self.folder)
        return {k: o.n for k, o in self.out.items()}


def _save_hf(folder: Path) -> None:
    """``hf/``: the two splits as a ``datasets.DatasetDict`` (memory-mapped from the Parquet)."""
    import datasets

    dd = datasets.DatasetDict({s: datasets.Dataset(pq.read_table(folder / f"{s}.parquet",
                                                                memory_map=True))
                               for s in ("train", "eval")})
    dd.save_to_disk(str(folder / "hf"))


def write_set(folder: Path, rows: list[dict], schema: pa.Schema, eval_qids: set[str],
              qids: list[str] | None = None, hf: bool = True) -> dict:
    """All rows of one set at once (tests, small scripts): ``SplitWriter`` in one call."""
    w = SplitWriter(folder, schema, eval_qids, hf)
    w.write(rows, qids)
    return w.commit()


class SetWriter:
    """The four sets of one run, fed labelled samples (in (qid, sample_id) order) and then pairs."""

    def __init__(self, cfg, paths, eval_qids: set[str], balancer: Balancer | None):
        self.use_soft = cfg.label.sorm_labels == "soft"
        self.balancer, self.eval_qids = balancer, eval_qids
        self.balance_stats = balancer.plan() if balancer else None
        self.sets = {w: SplitWriter(paths.training_set(w), SCHEMAS[w], eval_qids) for w in SETS}
        # the TRL export goes inside the sorm folder, committed with it
        self.trl = SplitWriter(self.sets["sorm"].tmp / "trl", SCHEMAS["trl"], eval_qids, hf=False)

    def add_samples(self, labelled: list[dict]) -> None:
        sorm, trl = [], []
        labelled = [s for s in labelled if s["steps"]]  # no step end to score in an empty one
        for s in labelled:
            if not s["rolled_out"]:
                continue  # not rolled out: ORM row only
            mask = self.balancer.mask(s["hard"]) if self.balancer else [1.0] * len(s["steps"])
            if any(mask):
                sorm.append(sorm_row(s, self.use_soft, mask))
                trl.append(trl_row(s["question"], s["steps"], s["hard"]))
        self.sets["orm"].write([orm_row(s) for s in labelled])
        self.sets["sorm"].write(sorm)
        self.trl.write(trl, [r["qid"] for r in sorm])

    def add_pairs(self, rows: list[dict]) -> None:
        """Rows ``{qid, global_prompt: [...], global_target: [...], local_prompt,
        local_target}``."""
        for which in ("global", "local"):
            self.sets[which].write([
                {"qid": r["qid"], "prompt": p, "target": t} for r in rows
                for p, t in zip(r[f"{which}_prompt"], r[f"{which}_target"])])

    def close(self) -> dict:
        trl = self.trl.commit()
        out: dict = {w: self.sets[w].commit() for w in SETS}
        out["sorm"]["trl"] = trl
        out["eval_questions"] = len(self.eval_qids)
        if self.balance_stats is not None:
            out["sorm"]["balance"] = self.balance_stats
        return out


__all__ = ["SETS", "SCHEMAS", "Balancer", "orm_row", "sorm_row", "trl_row", "split_qids",
           "ParquetOut", "SplitWriter", "SetWriter", "write_set"]
