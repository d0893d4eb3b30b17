"""What every teacher backend takes and returns.

A teacher turns TeacherRequests (a question, a reasoning perspective and the
prompt built for it) into rationale texts, one per request, in order. None
means the teacher produced nothing for that request; the caller counts those.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from mind_jax.config import PERSPECTIVE_PROMPTS
from mind_jax.data.questions import Question

# The K = 8 reasoning paradigms of MIND, in slot order (defined with their prompts in config.py).
PERSPECTIVES = tuple(PERSPECTIVE_PROMPTS)

# What a build counts per teacher (manifest teacher_usage). Backends that call a model
# service keep these in a `usage` dict; for the others the build counts requests.
USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "retries", "failures")


@dataclass
class TeacherRequest:
  question: Question
  perspective: str  # a paradigm name, e.g. "formal_symbolic"
  prompt: str  # the full text sent to a model teacher


@runtime_checkable
class Teacher(Protocol):
  name: str  # recorded with each rationale it produced

  def generate(self, requests: list[TeacherRequest]) -> list[str | None]:
    """One rationale per request, in order; None where it produced nothing."""
    ...
