"""Stage ``data``: the train and test questions of this run, as Parquet.

Reads the ``data`` section (a generated world, or GSM8K from JSONL files or the hub); writes
``data/train.parquet`` and ``data/test.parquet`` (``records.Question`` rows).
"""

from __future__ import annotations

from glore_ray.config import RunConfig
from glore_ray.data import worlds
from glore_ray.records import Question, read_rows, write_rows

READS = ("data",)
WHAT = "load or generate the questions"


def load(cfg: RunConfig) -> tuple[list[Question], list[Question]]:
    """(train, test) questions for the configured source."""
    d = cfg.data
    if d.source in worlds.GENERATED:
        return worlds.generate(d)
    from glore_ray.data import gsm8k

    if d.source == "gsm8k_jsonl":
        from pathlib import Path

        folder = Path(d.path) if d.path else gsm8k.default_gsm8k_dir()
        rows = [gsm8k.load_gsm8k_jsonl(folder / f"{s}.jsonl") for s in ("train", "test")]
    else:
        rows = [gsm8k.load_gsm8k_hub(s, d.hub_name) for s in ("train", "test")]
    train, test = ([Question(**r) for r in part] for part in rows)
    return train, test


def run(cfg: RunConfig, paths, log=print) -> dict:
    train, test = load(cfg)
    if not train or not test:
        raise ValueError(f"data source {cfg.data.source!r} gave an empty split "
                         f"(train {len(train)}, test {len(test)})")
    write_rows(paths.questions_train, train, Question)
    write_rows(paths.questions_test, test, Question)
    log(f"[data] {len(train)} train / {len(test)} test questions ({cfg.data.source})")
    return {"n_train": len(train), "n_test": len(test)}


def read(paths, split: str) -> list[Question]:
    return read_rows(paths.questions_train if split == "train" else paths.questions_test, Question)
