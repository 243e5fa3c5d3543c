"""Answer grading and step splitting for GSM8K-style solutions.

Solutions are newline-separated reasoning steps ending in a final-answer line,
either ``#### n`` (the GSM8K dataset format) or ``A: n`` (the format of OpenAI's
``example_model_solutions.jsonl``).  Answers are compared numerically through a
canonical string form, so ``"18"``, ``"18.0"``, ``"$18.00"`` and ``"18 dollars"``
all grade the same.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = [
    "calculator_results",
    "extract_answer",
    "gradable",
    "is_correct",
    "normalize_number",
    "split_steps",
    "strip_calculator",
]

# A number with optional sign, optional currency sign between sign and digits
# ("-$5"), comma thousands separators, a decimal part, and an optional
# "/denominator" so exact fractions such as "3/4" survive as one token.
# Commas are only allowed *between* digits so "18, so" does not swallow the comma.
_UNSIGNED = r"(?:\d(?:[\d,]*\d)?(?:\.\d+)?|\.\d+)"
_NUMBER_RE = re.compile(
    rf"(?P<sign>[-+\u2212]?)\s*\$?\s*(?P<num>{_UNSIGNED})"
    rf"(?:\s*/\s*(?P<den>{_UNSIGNED}))?"
)
# Final-answer markers.  "####" may appear anywhere on its line (models sometimes
# write "The answer is #### 5"); "A:" must start the line, otherwise phrases
# such as "Publisher A: 5000 cents" inside a step would be taken as the answer.
_HASH_RE = re.compile(r"####(?P<ans>[^#]*)$")
_A_LINE_RE = re.compile(r"^\s*A\s*:(?P<ans>.*)$")
# GSM8K calculator annotations: "<<16-3-4=9>>".
_CALC_RE = re.compile(r"<<([^<>]*)>>")


def _to_fraction(token: str) -> Fraction:
    """Parse an unsigned decimal token ("1,000", "2.50", ".5") exactly."""
    # Commas are thousands separators in GSM8K ("1,080"), never decimal commas.
    return Fraction(token.replace(",", ""))


def _canonical(value: Fraction) -> str:
    """Integer string when integral, exact decimal when finite, else "a/b"."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        # Not a terminating decimal (e.g. 1/3): keep the exact reduced fraction
        # rather than a rounded float so equality stays exact.
        return f"{value.numerator}/{value.denominator}"
    # value * 10**k is an integer; format it with k decimal places.  Doing this
    # with integers avoids Decimal context precision limits.
    k = max(twos, fives)
    scaled = value * 10**k
    assert scaled.denominator == 1
    sign = "-" if scaled.numerator < 0 else ""
    digits = str(abs(scaled.numerator)).rjust(k + 1, "0")
    whole, frac = digits[:-k], digits[-k:].rstrip("0")
    return f"{sign}{whole}.{frac}"


def normalize_number(s: str | None) -> str | None:
    """Canonical string for the first number in ``s``, or None if there is none.

    Handles commas, ``$``, ``%``, units/surrounding text, trailing zeros,
    leading ``+``, negatives and exact fractions (``"3/4"`` -> ``"0.75"``,
    ``"1/3"`` stays ``"1/3"``).
    """
    if s is None:
        return None
    match = _NUMBER_RE.search(s)
    if match is None:
        return None
    value = _to_fraction(match.group("num"))
    den = match.group("den")
    if den is not None:
        den_value = _to_fraction(den)
        if den_value == 0:
            # "5/0" is not a number; fall back to the numerator alone would be
            # wrong too, so treat it as unparsable.
            return None
        value /= den_value
    if match.group("sign") in ("-", "\u2212"):
        value = -value
    return _canonical(value)


def extract_answer(solution_text: str) -> str | None:
    """Normalised final answer of a solution, or None when it has none.

    The last line containing ``####`` wins (GSM8K format); only when there is
    no such line is the last line starting with ``A:`` used.  A marker line
    whose content is not a number yields None: the solution committed to an
    unparsable answer, so it must not be rescued by an earlier line.
    """
    lines = solution_text.splitlines()
    for line in reversed(lines):
        hit = _HASH_RE.search(line)
        if hit is not None:
            return normalize_number(hit.group("ans"))
    for line in reversed(lines):
        hit = _A_LINE_RE.match(line)
        if hit is not None:
            return normalize_number(hit.group("ans"))
    return None


def gradable(solution_text: str) -> bool:
    """Whether the solution commits to a number on a ``#### n`` line (the project's format)."""
    return any(_HASH_RE.search(line) for line in solution_text.splitlines()) \
        and extract_answer(solution_text) is not None


def is_correct(solution_text: str, gold_answer: str) -> bool:
    """Whether the solution's final answer equals the gold answer.

    ``gold_answer`` may be a bare number ("1,080") or a full reference
    solution ending in ``#### n`` / ``A: n``.
    """
    predicted = extract_answer(solution_text)
    if predicted is None:
        return False
    gold = extract_answer(gold_answer)
    if gold is None:
        gold = normalize_number(gold_answer)
    return gold is not None and predicted == gold


def split_steps(solution_text: str) -> list[str]:
    """Non-empty, stripped lines of a solution; the answer line is the last step."""
    return [line.strip() for line in solution_text.splitlines() if line.strip()]


def strip_calculator(text: str) -> str:
    """Remove GSM8K calculator annotations such as ``<<16-3-4=9>>``."""
    return _CALC_RE.sub("", text)


def calculator_results(text: str) -> list[str]:
    """Results (right of the last ``=``) of the calculator annotations in ``text``."""
    results = []
    for body in _CALC_RE.findall(text):
        if "=" in body:
            results.append(body.rsplit("=", 1)[1].strip())
    return results
