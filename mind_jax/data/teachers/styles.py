"""StylesTeacher: the controlled testbed's teacher. OFFLINE and DETERMINISTIC; not a model.

It answers the testbed's multi-digit arithmetic questions (mind_jax/data/arithmetic.py)
in K = 8 rationale styles whose learnability for a small from-scratch student differs
BY CONSTRUCTION. Every style is correct: each one ends "The answer is X." with the
right X, and every "a op b = c" it writes is true, so the judge keeps all of them.
What differs is how much of the computation the student can imitate step by step.
The expected spread follows Lee et al. 2023, "Teaching Arithmetic to Small
Transformers" (detailed scratchpads and reversed output learn far faster than the
plain answer); the measured one is in results/testbed/.

  helpful by construction
    scratchpad          Lee et al.'s detailed scratchpad: every column, ones first, with
                        the operands still to do restated, the carry (or borrow) in and
                        out, and the result's digits so far
    compact_scratchpad  every column sum, the carry folded in only when it is not 0
    reversed_digits     the result's digits ones first (each depends on one column and
                        the carry), then the result
    verbose_scratchpad  the scratchpad with filler sentences between the steps
  hard to imitate by construction
    plain_answer        the expression restated with its result: no steps at all
    carry_free_shorthand  the raw column sums without their carries, then the result
                        (correct, but the carries are left for the reader)
    number_words        the whole computation in English number words
    shuffled_scratchpad the scratchpad's columns in a shuffled order: each step is
                        true, but a carry is used before the column that makes it

The phrasing of verbose_scratchpad and the order of shuffled_scratchpad come from a
RNG seeded by (teacher seed, question id, style), so a build is reproducible.
"""
from __future__ import annotations

import logging
from random import Random
from typing import Callable

from mind_jax.data import arithmetic
from mind_jax.data.arithmetic import Column, Operation
from mind_jax.data.teachers.base import TeacherRequest

log = logging.getLogger(__name__)

PLACES = ("Ones", "Tens", "Hundreds", "Thousands", "Ten-thousands", "Hundred-thousands",
          "Millions", "Ten-millions")
OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}
FILLERS = (
    "Let us take this slowly and carefully.",
    "It is important not to rush this part.",
    "We keep the carry in mind as we go.",
    "Now we move on to the next place value.",
    "This is a simple step, but it still needs care.",
    "Careful bookkeeping makes the rest easy.",
    "We write the digit down before going on.",
    "Checking each column as we go avoids mistakes.",
)
VERBOSE_FILLER_RATE = 0.5  # share of columns a filler sentence comes before

# What a model teacher would be asked for each style (perspectives.prompts of the
# testbed's data config); the StylesTeacher itself writes the style without a model.
STYLE_PROMPTS = {
    "scratchpad": "Add, subtract or multiply column by column from the ones place, writing "
                  "each column's digits, the carry or borrow in, the digit written and the "
                  "carry or borrow out.",
    "compact_scratchpad": "Write each column's sum or difference from the ones place, "
                          "including a carry only when it is not zero, then the result.",
    "reversed_digits": "Write the digits of the result from the ones place upwards, then the "
                       "result.",
    "plain_answer": "Restate the computation with its result, without intermediate steps.",
    "verbose_scratchpad": "Work column by column from the ones place, explaining each step at "
                          "length.",
    "carry_free_shorthand": "List the raw column sums, differences or products without their "
                            "carries, then give the result.",
    "number_words": "Write the whole computation in English number words.",
    "shuffled_scratchpad": "Work the columns in any order you like, writing each column's "
                           "carries, then the result.",
}
STYLES = tuple(STYLE_PROMPTS)


def place(column: Column) -> str:
  return PLACES[column.place] if column.place < len(PLACES) else f"Place {column.place + 1}"


def _expression(op: Operation) -> str:
  symbol = {"add": "+", "sub": "-", "mul": "*"}[op.kind]
  return f" {symbol} ".join(str(x) for x in op.operands)


# ------------------------------------------------------------------ one column


def remaining(op: Operation, c: Column) -> str:
  """The operands with the columns already done dropped: '6 + 93' once the ones are done
  (Lee et al.'s detailed scratchpad restates them, so each column's digits are the last
  ones just written: a local lookup instead of a long-range one)."""
  scale = 10 ** c.place
  if op.kind == "mul":
    return f"{op.operands[0] // scale} * {op.operands[1]}"
  symbol = "+" if op.kind == "add" else "-"
  return f" {symbol} ".join(str(x // scale) for x in op.operands)


def so_far(op: Operation, c: Column) -> str:
  """The result's digits written up to this column, most significant first ('01')."""
  return "".join(str(col.digit) for col in reversed(op.columns[:c.place + 1]))


def scratchpad_column(op: Operation, c: Column) -> str:
  """'6 + 93: 6+3+1=10, carry 1, so far 01.' (sub: borrows; mul: a*d+carry)."""
  if not c.digits:  # the last carry becomes the leading digit
    return f"carry {c.carry_in}, so far {so_far(op, c)}."
  if op.kind == "add":
    work = f"{'+'.join(map(str, c.digits))}+{c.carry_in}={c.total}, carry {c.carry_out}"
  elif op.kind == "mul":
    a, d = c.digits
    work = f"{a}*{d}+{c.carry_in}={c.total}, carry {c.carry_out}"
  else:
    a, b = c.digits
    work = f"{a}-{b}-{c.carry_in}={c.total}"
    if c.carry_out:
      work += f", borrow, {a + 10}-{b}-{c.carry_in}={c.digit}"
    work += f", borrow {c.carry_out}"
  return f"{remaining(op, c)}: {work}, so far {so_far(op, c)}."


def compact_column(op: Operation, c: Column) -> str:
  """'8+9=17', '4+0+1=5', '1-7=-6>4', '8*7+1=57'; the carry only when it is not 0."""
  if not c.digits:
    return str(c.carry_in)
  carry = f"{'-' if op.kind == 'sub' else '+'}{c.carry_in}" if c.carry_in else ""
  symbol = {"add": "+", "sub": "-", "mul": "*"}[op.kind]
  text = symbol.join(map(str, c.digits)) + carry + f"={c.total}"
  return text + (f">{c.digit}" if op.kind == "sub" and c.carry_out else "")


def raw_column(op: Operation, c: Column) -> int:
  """The column's value without any carry or borrow (what the shorthand lists)."""
  if not c.digits:
    return c.carry_in
  if op.kind == "add":
    return sum(c.digits)
  if op.kind == "mul":
    return c.digits[0] * c.digits[1]
  return c.digits[0] - c.digits[1]


# ------------------------------------------------------------------ one operation per style


def scratchpad(op: Operation, rng: Random) -> str:
  del rng
  return " ".join(scratchpad_column(op, c) for c in op.columns) + f" Result: {op.result}."


def compact_scratchpad(op: Operation, rng: Random) -> str:
  del rng
  return "; ".join(compact_column(op, c) for c in op.columns) + f"; result {op.result}."


def reversed_digits(op: Operation, rng: Random) -> str:
  del rng
  digits = " ".join(str(c.digit) for c in op.columns)
  return f"Digits from the ones place: {digits}. Result {op.result}."


def plain_answer(op: Operation, rng: Random) -> str:
  del rng
  return f"{_expression(op)} = {op.result}."


def verbose_scratchpad(op: Operation, rng: Random) -> str:
  """The scratchpad's steps, an opening filler and one before about half the columns."""
  steps = [rng.choice(FILLERS[:2])]
  for c in op.columns:
    if rng.random() < VERBOSE_FILLER_RATE:
      steps.append(rng.choice(FILLERS[2:]))
    steps.append(scratchpad_column(op, c))
  steps.append(f"Putting the digits together, the result is {op.result}.")
  return " ".join(steps)


def carry_free_shorthand(op: Operation, rng: Random) -> str:
  del rng
  word = {"add": "sums", "sub": "diffs", "mul": "products"}[op.kind]
  return f"{word} {' '.join(str(raw_column(op, c)) for c in op.columns)} so {op.result}."


def words(op: Operation, rng: Random) -> str:
  del rng
  symbol = {"add": "+", "sub": "-", "mul": "*"}[op.kind]
  text = f" {OP_WORDS[symbol]} ".join(arithmetic.number_words(x) for x in op.operands)
  return f"{text} is {arithmetic.number_words(op.result)}."


def shuffled_scratchpad(op: Operation, rng: Random) -> str:
  columns = list(op.columns)
  if len(columns) > 1:
    order = list(range(len(columns)))
    while order == sorted(order):  # never the natural order
      rng.shuffle(order)
    columns = [columns[i] for i in order]
  return " ".join(scratchpad_column(op, c) for c in columns) + f" Result: {op.result}."


RENDERERS: dict[str, Callable[[Operation, Random], str]] = {
    "scratchpad": scratchpad,
    "compact_scratchpad": compact_scratchpad,
    "reversed_digits": reversed_digits,
    "plain_answer": plain_answer,
    "verbose_scratchpad": verbose_scratchpad,
    "carry_free_shorthand": carry_free_shorthand,
    "number_words": words,
    "shuffled_scratchpad": shuffled_scratchpad,
}
assert tuple(RENDERERS) == STYLES


def rationale(question: str, style: str, rng: Random) -> str:
  """The rationale of `question` in `style`, ending 'The answer is X.'."""
  values, ops = arithmetic.parse_question(question)
  steps = arithmetic.operations(values, ops)
  render = RENDERERS[style]
  if len(steps) == 1:
    body = render(steps[0], rng)
  else:  # a chain: each operation in turn, on the previous result
    body = " ".join(f"Step {i}: {render(op, rng)}" for i, op in enumerate(steps, start=1))
  return f"{body} The answer is {arithmetic.evaluate(values, ops)}."


class StylesTeacher:
  """Offline testbed teacher: one rationale per (question, style). See the module doc."""

  name = "styles"

  def __init__(self, seed: int = 0):
    self.seed = seed

  def generate(self, requests: list[TeacherRequest]) -> list[str | None]:
    out, unparsable = [], 0
    for request in requests:
      if request.perspective not in RENDERERS:
        raise ValueError(f"teacher 'styles': perspective {request.perspective!r} is not a "
                         f"style; expected one of {list(STYLES)}")
      rng = Random(f"{self.seed}:{request.question.id}:{request.perspective}")
      try:
        out.append(rationale(request.question.question, request.perspective, rng))
      except ValueError:
        unparsable += 1
        out.append(None)  # counted downstream as no_output
    if unparsable:
      log.warning("teacher 'styles': %d of %d questions are not testbed arithmetic; no "
                  "rationale for them", unparsable, len(requests))
    return out
