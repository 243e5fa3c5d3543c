"""Tests for glore_ray.data.grading and glore_ray.data.gsm8k."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glore_ray.data.grading import (
    calculator_results,
    extract_answer,
    is_correct,
    normalize_number,
    split_steps,
    strip_calculator,
)
from glore_ray.data.gsm8k import (
    EXAMPLE_MODEL_KEYS,
    default_gsm8k_dir,
    load_example_solutions,
    load_gsm8k_jsonl,
)


# --------------------------------------------------------------------------- #
# normalize_number
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("18", "18"),
        ("18.0", "18"),
        ("18.00", "18"),
        ("$18.00", "18"),
        ("  18  ", "18"),
        ("+18", "18"),
        ("18.", "18"),
        ("1,000", "1000"),
        ("1,450,000", "1450000"),
        ("$1,234.50", "1234.5"),
        ("50%", "50"),
        ("12.5%", "12.5"),
        ("18 dollars", "18"),
        ("about 18 eggs per day", "18"),
        ("-5", "-5"),
        ("-$5", "-5"),
        ("$-5", "-5"),
        ("\u22125", "-5"),  # unicode minus sign
        ("-2.50", "-2.5"),
        ("-1.8 billion", "-1.8"),
        (".5", "0.5"),
        ("0.50", "0.5"),
        ("3/4", "0.75"),
        ("-3/4", "-0.75"),
        ("6/3", "2"),
        ("7/14", "0.5"),
        ("1/3", "1/3"),
        ("2/6", "1/3"),
        ("1/8", "0.125"),
        ("0", "0"),
        ("0.0", "0"),
        ("007", "7"),
        ("8.333333333333334", "8.333333333333334"),
        ("10+John's age", "10"),
        ("18, so the answer", "18"),
    ],
)
def test_normalize_number(raw: str, expected: str) -> None:
    assert normalize_number(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "none", "$", "-", "five", "1/0", None])
def test_normalize_number_unparsable(raw: str | None) -> None:
    assert normalize_number(raw) is None


def test_normalize_number_equivalences() -> None:
    forms = ["18", "18.0", "$18.00", "18 dollars", "+18", "36/2", "$18"]
    assert {normalize_number(f) for f in forms} == {"18"}


# --------------------------------------------------------------------------- #
# extract_answer / is_correct
# --------------------------------------------------------------------------- #
GSM8K_SOLUTION = (
    "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
    "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer\u2019s market.\n"
    "#### 18"
)
A_SOLUTION = GSM8K_SOLUTION.replace("#### 18", "A: 18")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GSM8K_SOLUTION, "18"),
        (A_SOLUTION, "18"),
        ("step\n#### 1,080", "1080"),
        ("step\n#### $1,080.00", "1080"),
        ("step\n#### -9", "-9"),
        ("step\n#### 12.50", "12.5"),
        ("step\n#### 3/4", "0.75"),
        ("step\n#### 25%", "25"),
        ("step\nA: 18", "18"),
        ("step\nA:18", "18"),
        ("step\nA: $2,125", "2125"),
        ("step\nA: -1.8 billion", "-1.8"),
        ("step\n  A: 7  \n", "7"),  # trailing whitespace / blank line
        ("The answer is #### 42", "42"),  # '####' mid-line still counts
        # '####' takes precedence over an 'A:' line, even a later one.
        ("#### 5\nA: 6", "5"),
        ("A: 6\n#### 5", "5"),
        # The last '####' line wins.
        ("#### 1\nmore work\n#### 2", "2"),
        # The last 'A:' line wins.
        ("A: 1\nrevised\nA: 2", "2"),
        # 'A:' must start the line: "Job A: $15" is part of a step.
        ("Job A: $15 * 2000 = $30000\nA: 25400", "25400"),
    ],
)
def test_extract_answer(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no answer here",
        "She makes 9 * 2 = 18 dollars",  # numbers, but no answer line
        "Job A: $15 * 2000 hours",  # 'A:' not at line start
        "step\n#### ",  # empty answer
        "step\n#### unknown",  # unparsable answer
        "step\nA: John's age",
        "3 * 2 = <<3*2=6>>6\nThen 6 * 4 = <<6*4=24>>2",  # truncated generation
        # A final unparsable '####' line is not rescued by an earlier one.
        "#### 5\n#### none",
    ],
)
def test_extract_answer_none(text: str) -> None:
    assert extract_answer(text) is None
    assert is_correct(text, "5") is False
    assert is_correct(text, "#### 5") is False


@pytest.mark.parametrize(
    ("solution", "gold", "expected"),
    [
        (GSM8K_SOLUTION, "18", True),
        (GSM8K_SOLUTION, "18.0", True),
        (GSM8K_SOLUTION, "$18", True),
        (GSM8K_SOLUTION, "19", False),
        (A_SOLUTION, "18", True),
        (A_SOLUTION, GSM8K_SOLUTION, True),  # gold given as a full solution
        (GSM8K_SOLUTION, A_SOLUTION, True),
        ("x\n#### 1080", "1,080", True),
        ("x\n#### 1,080", "#### 1080", True),
        ("x\nA: 1080.00", "step\n#### 1,080", True),
        ("x\n#### -3", "-3", True),
        ("x\n#### 3", "-3", False),
        ("x\n#### 0.75", "3/4", True),
        ("x\n#### 1/3", "2/6", True),
        ("x\n#### 0.333", "1/3", False),
        ("x\n#### 50%", "50", True),
        ("x\n#### 5", "", False),  # unusable gold never matches
        ("x\n#### 5", "no number", False),
    ],
)
def test_is_correct(solution: str, gold: str, expected: bool) -> None:
    assert is_correct(solution, gold) is expected


# --------------------------------------------------------------------------- #
# split_steps / calculator notes
# --------------------------------------------------------------------------- #
def test_split_steps() -> None:
    steps = split_steps(GSM8K_SOLUTION)
    assert len(steps) == 3
    assert steps[0].startswith("Janet sells")
    assert steps[-1] == "#### 18"


def test_split_steps_drops_blank_lines_and_strips() -> None:
    text = "\n  first step  \n\n\t\nsecond step\r\n#### 3\n\n"
    assert split_steps(text) == ["first step", "second step", "#### 3"]
    assert split_steps("") == []


def test_strip_calculator() -> None:
    assert strip_calculator("16 - 3 - 4 = <<16-3-4=9>>9 eggs") == "16 - 3 - 4 = 9 eggs"
    assert strip_calculator("$<<9*2=18>>18 and <<2/2=1>>1") == "$18 and 1"
    assert strip_calculator("no notes") == "no notes"
    stripped = strip_calculator(GSM8K_SOLUTION)
    assert "<<" not in stripped and ">>" not in stripped
    assert stripped.endswith("#### 18")


def test_calculator_results() -> None:
    assert calculator_results("a <<16-3-4=9>>9 and <<9*2=18>>18") == ["9", "18"]
    assert calculator_results("<<2*0.5=1.0>>1.0") == ["1.0"]
    assert calculator_results("no notes") == []
    assert calculator_results("<<malformed>>") == []


# --------------------------------------------------------------------------- #
# Loader errors (synthetic files)
# --------------------------------------------------------------------------- #
def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_load_gsm8k_jsonl_small(tmp_path: Path) -> None:
    rec = {"question": "Q?", "answer": "2+2=<<2+2=4>>4\n#### 4"}
    rec2 = {"question": "Q2?", "answer": "x\n#### 1,080"}
    path = _write_lines(tmp_path / "dev.jsonl", [json.dumps(rec), "", json.dumps(rec2)])
    rows = load_gsm8k_jsonl(path)
    assert [r["qid"] for r in rows] == ["dev-00000", "dev-00001"]
    assert rows[0] == {
        "qid": "dev-00000",
        "question": "Q?",
        "answer": "4",
        "gold_solution": rec["answer"],
    }
    assert rows[1]["answer"] == "1080"


def test_load_gsm8k_jsonl_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_gsm8k_jsonl(missing)


def test_load_gsm8k_jsonl_malformed_line(tmp_path: Path) -> None:
    good = json.dumps({"question": "Q?", "answer": "#### 4"})
    path = _write_lines(tmp_path / "bad.jsonl", [good, good, "{not json"])
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        load_gsm8k_jsonl(path)


def test_load_gsm8k_jsonl_missing_answer_line(tmp_path: Path) -> None:
    good = json.dumps({"question": "Q?", "answer": "#### 4"})
    bad = json.dumps({"question": "Q?", "answer": "no final answer"})
    path = _write_lines(tmp_path / "noans.jsonl", [good, bad])
    with pytest.raises(ValueError, match=r"noans\.jsonl:2"):
        load_gsm8k_jsonl(path)


def test_load_gsm8k_jsonl_missing_key(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "nokey.jsonl", [json.dumps({"question": "Q?"})])
    with pytest.raises(ValueError, match=r"nokey\.jsonl:1"):
        load_gsm8k_jsonl(path)


def test_load_gsm8k_jsonl_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_gsm8k_jsonl(empty)
    blank = _write_lines(tmp_path / "blank.jsonl", ["", "   "])
    with pytest.raises(ValueError, match="empty"):
        load_gsm8k_jsonl(blank)


def test_load_example_solutions_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        load_example_solutions(tmp_path / "absent.jsonl")
    incomplete = {"question": "Q?", "ground_truth": "x\nA: 3"}  # no model entries
    path = _write_lines(tmp_path / "ex.jsonl", [json.dumps(incomplete)])
    with pytest.raises(ValueError, match=r"ex\.jsonl:1"):
        load_example_solutions(path)


def test_default_gsm8k_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GLORE_GSM8K_DIR", str(tmp_path))
    assert default_gsm8k_dir() == tmp_path


# --------------------------------------------------------------------------- #
# Real data: agreement with OpenAI's labels, gold self-consistency
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def gsm8k_dir() -> Path:
    data_dir = default_gsm8k_dir()
    if not (data_dir / "example_model_solutions.jsonl").is_file():
        # Fail rather than skip: the key grader check must not vanish silently.
        pytest.fail(f"GSM8K data not found in {data_dir}; set GLORE_GSM8K_DIR")
    return data_dir


def test_agreement_with_openai_labels(gsm8k_dir: Path) -> None:
    rows = load_example_solutions(gsm8k_dir / "example_model_solutions.jsonl")
    assert len(rows) == 5276
    assert {r["model"] for r in rows} == set(EXAMPLE_MODEL_KEYS)
    mismatches = [r for r in rows if is_correct(r["solution"], r["gold_answer"]) != r["is_correct"]]
    agreement = 1 - len(mismatches) / len(rows)
    n_true = sum(r["is_correct"] for r in rows)
    print(
        f"\ngrader agreement with OpenAI is_correct: {agreement:.4%} "
        f"({len(rows) - len(mismatches)}/{len(rows)}; {n_true} labelled correct)"
    )
    for r in mismatches[:10]:
        print(f"  MISMATCH label={r['is_correct']} gold={r['gold_answer']}: "
              f"{r['solution'][-120:]!r}")
    assert agreement >= 0.995


@pytest.mark.parametrize(("split", "expected_rows"), [("train", 7473), ("test", 1319)])
def test_gold_solutions_grade_themselves(gsm8k_dir: Path, split: str, expected_rows: int) -> None:
    rows = load_gsm8k_jsonl(gsm8k_dir / f"{split}.jsonl")
    assert len(rows) == expected_rows
    assert rows[0]["qid"] == f"{split}-00000"
    assert rows[-1]["qid"] == f"{split}-{expected_rows - 1:05d}"
    assert len({r["qid"] for r in rows}) == expected_rows
    for r in rows:
        assert is_correct(r["gold_solution"], r["answer"]), r["qid"]
        steps = split_steps(r["gold_solution"])
        assert steps[-1].startswith("####"), r["qid"]
        assert normalize_number(steps[-1].removeprefix("####")) == r["answer"], r["qid"]
