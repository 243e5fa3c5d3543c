"""Questions in, graded solutions out: GSM8K loading, the generated worlds (dependency: the embedded
default; synthetic: the arithmetic control) and their oracles (`worlds`), the grader."""

from glore_ray.data.grading import extract_answer, is_correct, split_steps, strip_calculator

__all__ = ["extract_answer", "is_correct", "split_steps", "strip_calculator"]
