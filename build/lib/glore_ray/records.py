"""The typed rows that flow one way through the pipeline, and their Parquet I/O.

question ─► sample ─► rollout ─► step label ─► training sets

Every stage reads the previous stage's Parquet and writes its own; a file is written to a temp
path and renamed, so a killed stage never leaves a half-written output that looks finished.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class Question:
    qid: str
    question: str
    answer: str  # normalised final number
    gold_solution: str
    # synthetic world only: JSON of the gold steps, for the oracle ("" for GSM8K)
    oracle: str = ""


@dataclass
class Sample:
    qid: str
    sample_id: int
    text: str
    steps: list[str]
    final_answer: str  # "" when none could be extracted
    correct: bool
    # synthetic world: index of the first wrong step by the oracle, -1 when all steps are right,
    # -2 when there is no oracle (GSM8K)
    oracle_first_wrong: int = -2


@dataclass
class Rollout:
    qid: str
    sample_id: int
    step_idx: int  # the prefix is steps[: step_idx + 1]
    k: int
    text: str  # the continuation only
    correct: bool
    final_answer: str = ""


@dataclass
class StepLabel:
    qid: str
    sample_id: int
    step_idx: int
    orm_label: float
    sorm_hard: float
    sorm_soft: float
    n_rollouts: int
    oracle_label: float = -1.0  # 1/0 from the oracle, -1 when unknown


R = TypeVar("R")


def to_table(rows: Iterable[Any], cls: type) -> pa.Table:
    names = [f.name for f in dataclasses.fields(cls)]
    cols: dict[str, list] = {n: [] for n in names}
    for r in rows:
        d = r if isinstance(r, dict) else dataclasses.asdict(r)
        for n in names:
            cols[n].append(d[n])
    return pa.table(cols) if cols[names[0]] else pa.Table.from_pylist([], schema=_schema(cls))


_PA = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
       "list[str]": pa.list_(pa.string())}


def _schema(cls: type) -> pa.Schema:
    return pa.schema([(f.name, _PA[f.type if isinstance(f.type, str) else f.type.__name__])
                      for f in dataclasses.fields(cls)])


def write_rows(path: str | Path, rows: Iterable[Any], cls: type) -> Path:
    """Write typed rows as one Parquet file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(to_table(rows, cls), tmp)
    os.replace(tmp, path)
    return path


def read_rows(path: str | Path, cls: type[R]) -> list[R]:
    """Read Parquet (a file or a folder of parts) back into typed rows."""
    table = pq.read_table(str(path))
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in table.column_names
               and dataclasses.fields(cls)[names.index(n)].default is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} for {cls.__name__}")
    rows = table.to_pylist()
    return [cls(**{k: v for k, v in r.items() if k in names}) for r in rows]


def atomic_dir(final: str | Path) -> Path:
    """A temp sibling folder to build an output in; ``commit_dir`` renames it into place."""
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: str | Path) -> Path:
    final = Path(final)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def write_json(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


__all__ = ["Question", "Sample", "Rollout", "StepLabel", "write_rows", "read_rows", "atomic_dir",
           "commit_dir", "write_json", "field"]
