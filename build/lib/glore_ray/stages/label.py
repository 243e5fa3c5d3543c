"""Stage ``label``: ORM and SORM step labels from the samples and their step rollouts, and the four
training sets, on Ray Data so the driver never holds the rows.

    data/train.parquet ──┐
    samples.parquet ─────┼─► union ─► groupby(qid) ─► label_question ─► sort ─► write_outputs
    rollouts.parquet ────┘            (Ray tasks: method/labels, method/pairs)   (one Ray task)

``label_question`` (one question's samples and rollouts, in Ray tasks) returns one row per sample
with its ORM/SORM/oracle labels, cleaning counts and, on the question's first sample, its
refinement pairs, sorted by (qid, sample_id). ``write_outputs`` (one Ray task, not the driver) then
streams the rows twice: pass 1 counts the SORM classes per step index for balancing
(``method.balance``), pass 2 writes ``step_labels.parquet`` and the sets (``build.SetWriter``);
the pairs stream once more in qid order. The driver only lists the input files, counts the
samples and waits; what the writer keeps is per question (the held-out qids) or per step index
(balancing ranks).

Outputs, row for row the same as labelling in memory (``make_labels``, the unit-test path):

- ``paths.labels``: one ``records.StepLabel`` per (sample, step), in (qid, sample_id) order;
- the four sets (see ``build``): orm/sorm in (qid, sample_id) order, global/local pairs in qid
  order. The samples file is in the order its actors finished; the sets never depend on it.

Oracle (synthetic worlds): ``oracle_label`` per step from ``worlds.oracle_step_labels``, and the
summary reports precision/recall of ORM, raw SORM and cleaned SORM labels against it.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from glore_ray.config import LabelConfig, RunConfig
from glore_ray.method.labels import label_quality, label_sample, quality_counts, quality_report
from glore_ray.method.pairs import correct_solutions, global_pairs, local_pairs
from glore_ray.records import Question, Rollout, Sample, StepLabel

READS = ("label",)
WHAT = "ORM/SORM labels and training sets"

# One row per labelled sample: what label_question hands the driver.
_F, _S = pa.list_(pa.float64()), pa.list_(pa.string())
LABELLED = pa.schema([
    ("qid", pa.string()), ("pos", pa.int64()), ("sample_id", pa.int64()),
    ("question", pa.string()), ("steps", _S), ("correct", pa.bool_()),
    ("hard", _F), ("soft", _F), ("raw_hard", _F), ("n_rollouts", pa.list_(pa.int64())),
    ("oracle", _F),  # empty when the world has no oracle or it does not parse the sample
    ("n_rollout_rows", pa.int64()), ("flips", pa.list_(pa.int64())),  # FLIPS order
    ("rolled_out", pa.bool_()),  # False: its question got no rollouts (no SORM labels: empty)
    ("global_prompt", _S), ("global_target", _S), ("global_source", _S), ("local_prompt", _S),
    ("local_target", _S)])
FLIPS = ("intermediate_check", "inferred", "monotone", "intermediate_cut")
# The union of questions, samples and rollouts that is grouped by qid (kind q / s / r).
_MIXED = pa.schema([
    ("kind", pa.string()), ("qid", pa.string()), ("pos", pa.int64()), ("sample_id", pa.int64()),
    ("step_idx", pa.int64()), ("k", pa.int64()), ("text", pa.string()), ("steps", _S),
    ("correct", pa.bool_()), ("final_answer", pa.string()), ("oracle_first_wrong", pa.int64()),
    ("question", pa.string()), ("answer", pa.string()), ("gold_solution", pa.string()),
    ("oracle", pa.string())])


# ------------------------------------------------------------------ one question (Ray-free)

def label_question(q: Question, samples: list[Sample], rollouts: list[Rollout], cfg: LabelConfig,
                   seed: int, pos: list[int] | None = None, rolled_out: bool = True) -> list[dict]:
    """LABELLED rows for one question's samples (in their given order; ``pos`` = their places in
    the samples file) from its rollouts. Raises ValueError on inconsistent inputs. A question that
    was not rolled out (``rollout.rollout_questions``) keeps its ORM labels and global pairs; its
    SORM labels are empty and it has no local pairs."""
    if not rolled_out and rollouts:
        raise ValueError(f"question {q.qid!r} has rollouts but is outside rollout.rollout_questions"
                         " (rerun the rollout stage)")
    by_key: dict[tuple[str, int], Sample] = {}
    for s in samples:
        key = (s.qid, int(s.sample_id))
        if key in by_key:
            raise ValueError(f"samples: duplicate (qid, sample_id) rows, e.g. {key}")
        by_key[key] = s  # an empty completion is a wrong sample with no steps (counted as empty)
    grouped: dict[tuple[str, int], dict[int, list[Rollout]]] = defaultdict(
        lambda: defaultdict(list))
    per_sample: dict[tuple[str, int], list[Rollout]] = defaultdict(list)
    for r in rollouts:
        key = (r.qid, int(r.sample_id))
        s = by_key.get(key)
        if s is None:
            raise ValueError(f"rollout for unknown sample {key}: rollouts and samples disagree "
                             f"(rerun the rollout stage)")
        if not 0 <= r.step_idx < len(s.steps):
            raise ValueError(f"rollout {key} step_idx {r.step_idx} outside the sample's "
                             f"{len(s.steps)} steps")
        grouped[key][r.step_idx].append(r)
        per_sample[key].append(r)
    rows, hard_by_key = [], {}
    for j, s in enumerate(samples):
        key = (s.qid, int(s.sample_id))
        row = {"qid": s.qid, "pos": pos[j] if pos else j, "sample_id": int(s.sample_id),
               "question": q.question, "steps": list(s.steps), "correct": bool(s.correct),
               "oracle": _oracle(q, s) or [], "rolled_out": rolled_out, "global_prompt": [],
               "global_target": [], "global_source": [], "local_prompt": [], "local_target": []}
        if not rolled_out:  # ORM labels and global pairs only
            row.update(hard=[], soft=[], raw_hard=[], n_rollouts=[], n_rollout_rows=0,
                       flips=[-1] * len(FLIPS))
        else:
            lab = label_sample(list(s.steps), bool(s.correct), grouped.get(key, {}), cfg)
            hard_by_key[key] = lab.hard
            row.update(hard=lab.hard, soft=lab.soft, raw_hard=lab.raw_hard,
                       n_rollouts=lab.n_rollouts, n_rollout_rows=len(per_sample.get(key, [])),
                       # -1: the rule did not run
                       flips=[lab.flips[f] if f in lab.flips else -1 for f in FLIPS])
        rows.append(row)
    if rows:
        sols = correct_solutions(q, samples, rollouts, by_key, gold=cfg.gold_targets)
        glob = global_pairs(q, samples, sols, cfg.max_global_pairs_per_question, seed,
                            cfg.global_from_rollouts)
        loc = local_pairs(q, samples, hard_by_key, per_sample, sols,
                          cfg.max_local_pairs_per_question, seed) if rolled_out else []
        first = min(rows, key=lambda r: r["pos"])  # the question's pairs ride on its first sample
        first.update(global_prompt=[p["prompt"] for p in glob],
                     global_target=[p["target"] for p in glob],
                     global_source=[p["source"] for p in glob],
                     local_prompt=[p["prompt"] for p in loc],
                     local_target=[p["target"] for p in loc])
    return rows


def _oracle(q: Question, s: Sample) -> list[float] | None:
    if not q.oracle:
        return None
    from glore_ray.data.worlds import oracle_step_labels

    labels = oracle_step_labels("\n".join(s.steps), q.oracle)
    return labels if len(labels) == len(s.steps) else None


def step_label_rows(row: dict) -> list[StepLabel]:
    """The StepLabel rows of one LABELLED row (none for a sample that was not rolled out)."""
    if not row["rolled_out"]:
        return []
    orm = 1.0 if row["correct"] else 0.0
    oracle = row["oracle"]
    return [StepLabel(row["qid"], int(row["sample_id"]), i, orm, row["hard"][i], row["soft"][i],
                      int(row["n_rollouts"][i]), oracle[i] if oracle else -1.0)
            for i in range(len(row["steps"]))]


def make_labels(questions: dict[str, Question], samples: list[Sample], rollouts: list[Rollout],
                cfg: LabelConfig, log=print, rolled_qids: set[str] | None = None,
                ) -> tuple[list[StepLabel], dict, dict]:
    """In memory (tests, small benchmarks): StepLabel rows for every rolled-out sample in order,
    the label quality report and the cleaning counts; the same ``label_question`` as the stage.
    ``rolled_qids``: the questions that got rollouts (None: all)."""
    unknown = sorted({s.qid for s in samples} - set(questions))
    if unknown:
        raise ValueError(f"samples for {len(unknown)} questions not in the train split, "
                         f"e.g. {unknown[0]!r}")
    by_q: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_q[s.qid].append(i)
    roll_q: dict[str, list[Rollout]] = defaultdict(list)
    for r in rollouts:
        roll_q[r.qid].append(r)
    stray = set(roll_q) - set(by_q)
    if stray:
        r = roll_q[sorted(stray)[0]][0]
        raise ValueError(f"rollout for unknown sample {(r.qid, int(r.sample_id))}: rollouts and "
                         f"samples disagree (rerun the rollout stage)")
    labelled = []
    for qid, idx in by_q.items():
        labelled += label_question(questions[qid], [samples[i] for i in idx], roll_q.get(qid, []),
                                   cfg, 0, idx, rolled_qids is None or qid in rolled_qids)
    labelled.sort(key=lambda r: (r["qid"], r["sample_id"]))
    tally = _Tally()
    for row in labelled:
        tally.add(row)
    return [x for row in labelled for x in step_label_rows(row)], tally.quality(), tally.flips()


class _Tally:
    """Counts over LABELLED rows: the stage summary, the cleaning counts, the oracle quality."""

    def __init__(self) -> None:
        self.c: Counter = Counter()
        self._flips: Counter = Counter()
        self._ran: set[str] = set()
        self.q = {"orm": Counter(), "sorm_raw": Counter(), "sorm": Counter()}

    def add(self, row: dict) -> None:
        n = len(row["steps"])
        self.c.update(f"global_from_{src}" for src in row.get("global_source") or [])
        self.c.update(samples=1, steps=n, empty=int(n == 0), rollouts=row["n_rollout_rows"],
                      right=int(row["correct"]), orm_pos=n * int(row["correct"]))
        if not row["rolled_out"]:
            return  # no SORM labels; the quality report compares ORM and SORM on the same steps
        self.c.update(sorm_samples=1, sorm_steps=n, sorm_pos=int(sum(row["hard"])))
        for name, v in zip(FLIPS, row["flips"]):
            if v >= 0:
                self._ran.add(name)
                self._flips[name] += v
        if row["oracle"]:
            orm = [1.0 if row["correct"] else 0.0] * n
            for k, pred in (("orm", orm), ("sorm_raw", row["raw_hard"]), ("sorm", row["hard"])):
                self.q[k].update(quality_counts(pred, row["oracle"]))

    def flips(self) -> dict:
        # the intermediate check and its cut are only counted when they flipped something
        return {k: self._flips[k] for k in FLIPS
                if k in self._ran and (not k.startswith("intermediate") or self._flips[k])}

    def quality(self) -> dict:
        return {k: quality_report(v) for k, v in self.q.items()} if self.q["orm"] else {}


# ------------------------------------------------------------------ reading the inputs on Ray

def _parts(path: Path) -> list[tuple[str, int]]:
    """The Parquet files of a file-or-folder output in read order, with their row offsets."""
    import pyarrow.dataset as pads  # imports pandas: only when the stage runs

    if not path.exists():
        return []
    files = pads.dataset(str(path), format="parquet").files
    out, offset = [], 0
    for f in files:
        out.append((f, offset))
        offset += pq.read_metadata(f).num_rows
    return out


def _read_part(batch: pa.Table, kind: str, keep_qids: list[str] | None = None) -> pa.Table:
    """Rows of the listed part files in the union's schema (``pos`` = place in the output);
    ``keep_qids``: only these questions (the sampled ones, of a train split of any size)."""
    import pyarrow.compute as pc  # in the Ray tasks only: keeps `import glore_ray.pipeline` light

    tables = []
    for f, offset in zip(batch.column("path").to_pylist(), batch.column("offset").to_pylist()):
        t = pq.read_table(f)
        if keep_qids is not None:
            t = t.filter(pc.is_in(t.column("qid"), pa.array(keep_qids, pa.string())))
        n = t.num_rows
        cols = {"kind": pa.array([kind] * n, pa.string()),
                "pos": pa.array(range(int(offset), int(offset) + n), pa.int64())}
        for name in _MIXED.names:
            if name in cols:
                continue
            cols[name] = (t.column(name).cast(_MIXED.field(name).type) if name in t.column_names
                          else pa.nulls(n, _MIXED.field(name).type))
        tables.append(pa.table(cols, schema=_MIXED))
    return pa.concat_tables(tables) if tables else _MIXED.empty_table()


def _label_group(group: pa.Table, label_cfg: dict, seed: int,
                 rolled: list[str] | None = None) -> pa.Table:
    """map_groups: one qid's question, samples and rollouts -> its LABELLED rows."""
    cfg = LabelConfig(**label_cfg)
    rows = group.to_pylist()
    qs = [r for r in rows if r["kind"] == "q"]
    ss = sorted((r for r in rows if r["kind"] == "s"), key=lambda r: r["pos"])
    if not ss:
        stray = next((r for r in rows if r["kind"] == "r"), None)
        if stray:
            raise ValueError(f"rollout for unknown sample {(stray['qid'], stray['sample_id'])}: "
                             "rollouts and samples disagree (rerun the rollout stage)")
        return LABELLED.empty_table()  # a train question that was not sampled
    if not qs:
        raise ValueError(f"samples for questions not in the train split, e.g. {ss[0]['qid']!r}")
    q = Question(**{k: qs[0][k] for k in ("qid", "question", "answer", "gold_solution", "oracle")})
    samples = [Sample(r["qid"], r["sample_id"], r["text"], r["steps"], r["final_answer"] or "",
                      r["correct"], r["oracle_first_wrong"]) for r in ss]
    rollouts = [Rollout(r["qid"], r["sample_id"], r["step_idx"], r["k"], r["text"], r["correct"],
                        r["final_answer"] or "") for r in rows if r["kind"] == "r"]
    out = label_question(q, samples, rollouts, cfg, seed, [r["pos"] for r in ss],
                         rolled is None or q.qid in rolled)
    return pa.Table.from_pylist(out, schema=LABELLED)


def _partitions(paths) -> int:
    """Shuffle partitions for the groupby: one per MiB of input Parquet (compressed; several MiB
    of rows in memory), so blocks stay small wherever they land — the driver streams them one at
    a time — and small runs do not pay for Ray Data's default of 200."""
    size = sum(Path(f).stat().st_size for p in (paths.samples, paths.rollouts)
               for f, _ in _parts(Path(p)))
    return max(1, min(1000, -(-size // (1 << 20))))


def labelled_dataset(cfg: RunConfig, paths):
    """The LABELLED rows of the whole run as a Ray Dataset, sorted by (qid, sample_id): the
    samples file is in the order the actors finished, and the sets (and so the trained models)
    must not depend on it."""
    import ray

    def parts(path: Path, kind: str, **kw):
        items = [{"path": f, "offset": o} for f, o in _parts(Path(path))]
        if not items:
            return None
        return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _read_part, fn_kwargs={"kind": kind, **kw}, batch_size=1, batch_format="pyarrow")

    from glore_ray.stages.rollout import rolled_out_qids

    sampled = sorted(_column_values(Path(paths.samples), "qid"))
    rolled = rolled_out_qids(cfg, paths)
    inputs = [d for d in (parts(paths.questions_train, "q", keep_qids=sampled),
                          parts(paths.samples, "s"),
                          parts(paths.rollouts, "r")) if d is not None]
    mixed = inputs[0].union(*inputs[1:])
    return mixed.groupby("qid", num_partitions=_partitions(paths)).map_groups(
        _label_group, batch_format="pyarrow",
        fn_kwargs={"label_cfg": cfg.label.model_dump(), "seed": cfg.seed,
                   "rolled": None if rolled is None else sorted(rolled)}).sort(["qid", "sample_id"])


# ------------------------------------------------------------------ the stage

def run(cfg: RunConfig, paths, log=print) -> dict:
    """samples + rollouts -> ``paths.labels`` (StepLabel rows) and the four training sets."""
    import ray

    from glore_ray.ray_env import init_ray, preserve_order

    for p, what in ((paths.samples, "samples"), (paths.rollouts, "rollouts")):
        if not Path(p).exists():
            raise FileNotFoundError(f"label stage: {what} not found at {p} (run the "
                                    f"{'sample' if what == 'samples' else 'rollout'} stage)")
    n_samples, right, gradable = _sample_counts(Path(paths.samples))
    if not n_samples:
        raise ValueError(f"label stage: no samples in {paths.samples}")
    if right == 0 and not cfg.label.gold_targets:
        # Nothing to learn from: no positive ORM label and no refiner target. Say so here, before
        # four models train on one class and the refiner sets come out empty.
        raise ValueError(
            f"label stage: none of the {n_samples} samples answered correctly ({gradable} "
            "ended with a gradable `#### n` answer line); the reward models need right and wrong "
            "samples and the refiners need right ones. Fine-tune the policy on gold solutions in "
            "the project's prompt format first (policy.sft), sample more (rollout.k_samples, "
            "rollout.n_questions), or let unsolved questions take their gold solution as the "
            "refiners' target (label.gold_targets=true).")
    if right == 0:
        log(f"[label] warning: none of the {n_samples} samples is right ({gradable} gradable): "
            "the reward models see wrong samples only; the refiners learn the gold solutions "
            "(label.gold_targets)")
    n_roll = sum(pq.read_metadata(f).num_rows for f, _ in _parts(Path(paths.rollouts)))
    log(f"[label] {n_samples} samples, {n_roll} rollouts "
        f"({'budgeted' if cfg.rollout.budgeted else 'exhaustive'} rollouts), on Ray Data")
    init_ray()
    t0 = time.time()
    with preserve_order(), _user_errors():
        labelled = labelled_dataset(cfg, paths).materialize()
        log(f"[label] labelled {n_samples} samples by question in {time.time() - t0:.1f}s")
        # The writing runs in one Ray task: the rows' blocks are mapped into the process that
        # reads them, and that should not be the driver (on a cluster, the head node).
        summary = ray.get(ray.remote(num_cpus=1)(write_outputs).remote(
            labelled, cfg, paths, n_samples))
    log("[label] sets: " + ", ".join(f"{k} {v['train']}+{v['eval']}"
                                     for k, v in summary["sets"].items() if isinstance(v, dict))
        + f" (train+eval rows) in {time.time() - t0:.1f}s; global targets by source: "
        + ", ".join(f"{k} {v}" for k, v in summary["global_pairs_by_source"].items()))
    quality = summary["oracle_quality"]
    if quality:
        s = quality["sorm"]
        log(f"[label] vs oracle: SORM accuracy {s['accuracy']:.3f}, wrong-step precision "
            f"{_fmt(s['negative']['precision'])} recall {_fmt(s['negative']['recall'])}; ORM "
            f"accuracy {quality['orm']['accuracy']:.3f}")
    return summary


def _print(msg: str) -> None:
    print(msg, flush=True)  # from a Ray task: reaches the driver's output (log_to_driver)


def write_outputs(labelled, cfg: RunConfig, paths, n_samples: int, log=_print) -> dict:
    """Stream the sorted LABELLED rows into ``paths.labels`` and the four sets; the summary."""
    from glore_ray.ray_env import preserve_order
    from glore_ray.stages import build

    t0 = time.time()
    with preserve_order():
        # pass 1: what needs every row first: the held-out questions and the balancing counts
        qids: set[str] = set()
        balancer = build.Balancer(cfg.seed) if cfg.label.balance else None
        for b in labelled.select_columns(["qid", "hard", "rolled_out"]).iter_batches(
                batch_format="pyarrow"):
            qids.update(b.column("qid").to_pylist())
            if balancer:
                for hard, rolled in zip(b.column("hard").to_pylist(),
                                        b.column("rolled_out").to_pylist()):
                    if rolled:
                        balancer.count(hard)
        eval_qids = build.split_qids(qids, cfg.label.holdout_fraction, cfg.seed)
        writer = build.SetWriter(cfg, paths, eval_qids, balancer)
        # pass 2: step labels, orm and sorm rows, in (qid, sample_id) order
        tally, done, shown = _Tally(), 0, 0.0
        with build.ParquetOut(paths.labels, build.STEP_LABEL_SCHEMA) as step_out:
            for b in labelled.iter_batches(batch_format="pyarrow", batch_size=2048):
                rows = b.to_pylist()
                for row in rows:
                    tally.add(row)
                step_out.write([vars(x) for row in rows for x in step_label_rows(row)])
                writer.add_samples(rows)
                done += len(rows)
                if time.time() - shown > 10 or done == n_samples:
                    shown = time.time()
                    log(f"[label] wrote {done}/{n_samples} samples' labels "
                        f"({time.time() - t0:.1f}s)")
        # the refinement pairs, in qid order
        pairs = labelled.select_columns(["qid", "global_prompt", "global_target", "local_prompt",
                                         "local_target"]).sort("qid")
        for b in pairs.iter_batches(batch_format="pyarrow", batch_size=2048):
            writer.add_pairs(b.to_pylist())
        sets = writer.close()
    c = tally.c
    return {
        "n_samples": c["samples"], "n_rollouts": c["rollouts"], "n_steps": c["steps"],
        "rolled_out_samples": c["sorm_samples"],  # the SORM's and local refiner's samples
        "empty_samples": c["empty"],  # completions with no step at all: wrong, in no reward set
        "sample_accuracy": c["right"] / c["samples"],
        "orm_positive_steps": float(c["orm_pos"]),
        "sorm_positive_steps": float(c["sorm_pos"]),
        "sorm_negative_steps": float(c["sorm_steps"] - c["sorm_pos"]),
        "cleaning": tally.flips(), "sets": sets, "oracle_quality": tally.quality(),
        "global_pairs_by_source": {k: c[f"global_from_{k}"] for k in ("sample", "rollout", "gold")},
    }


def _column_values(path: Path, column: str) -> set:
    """The distinct values of one column, streamed from the Parquet parts (qids: per question)."""
    out: set = set()
    for f, _ in _parts(path):
        for b in pq.ParquetFile(f).iter_batches(columns=[column]):
            out.update(b.column(column).to_pylist())
    return out


def _sample_counts(path: Path) -> tuple[int, int, int]:
    """(samples, right ones, ones with a gradable answer), streamed from the Parquet parts."""
    n = right = gradable = 0
    for f, _ in _parts(path):
        for b in pq.ParquetFile(f).iter_batches(columns=["correct", "final_answer"]):
            n += b.num_rows
            right += sum(bool(x) for x in b.column("correct").to_pylist())
            gradable += sum(bool(x) for x in b.column("final_answer").to_pylist())
    return n, right, gradable


@contextlib.contextmanager
def _user_errors():
    """A ValueError raised by our code inside a Ray task reaches the user as itself, one clear
    line (e.g. rollouts and samples disagree), not as a Ray Data traceback."""
    try:
        yield
    except Exception as e:
        cause = getattr(e, "cause", None)  # RayTaskError: the exception the task raised
        if type(e) is not ValueError and type(cause) is ValueError:
            raise ValueError(f"label stage: {cause}") from None
        raise


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


__all__ = ["run", "label_question", "make_labels", "step_label_rows", "labelled_dataset",
           "label_quality"]
