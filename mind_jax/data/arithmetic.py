"""Multi-digit arithmetic: the controlled testbed's questions, and the column algorithms
the `styles` teacher writes its rationales from.

A question is a chain of integer operations, e.g. "What is 4821 + 937?",
"What is 305 + 2214 + 78?", "What is 6072 - 891?", "What is 4417 * 6?". Families:

  add       a + b                 sub       a - b (a >= b)
  sum3      a + b + c             mul1      a * d (d a single digit 2-9)
  add_sub   a + b - c (>= 0)      sub_add   a - b + c (a >= b)
  mul1_add  a * d + b

Operands have between `min_digits` and `max_digits` digits (the single digit of
mul1 aside). The testbed (configs/testbed/data.py) trains on add and sub with 2 digits;
its out-of-distribution suites shift one thing each:
  length  the same families, the first operand one digit longer than any in training;
  mix     chains of two operations the student only saw one at a time (add_sub and
          sub_add for a student trained on add and sub).

Item i of a (families, digits, seed) stream depends only on (seed, i), so the first
n items do not depend on how many are drawn: suites de-duplicate against training
questions by drawing more (mind_jax/eval/suites.py).
"""
from __future__ import annotations

import dataclasses
import re
from random import Random
from typing import Sequence

from mind_jax.data.questions import Question

# Family -> its operators, left to right. A chain is evaluated left to right, which is
# also the usual precedence for every family here (a multiplication only comes first).
FAMILIES = {
    "add": ("+",),
    "sub": ("-",),
    "sum3": ("+", "+"),
    "mul1": ("*",),
    "add_sub": ("+", "-"),
    "sub_add": ("-", "+"),
    "mul1_add": ("*", "+"),
}
MIX_FAMILIES = ("add_sub", "sub_add", "mul1_add")
QUESTION = "What is {expression}?"
_QUESTION_RE = re.compile(r"^What is ([0-9 +\-*]+)\?$")
_SOURCE_RE = re.compile(r"^arithmetic/(\w+)/d(\d+)-(\d+)$")


# ------------------------------------------------------------------ questions


def _number(rng: Random, digits: int) -> int:
  return rng.randint(10 ** (digits - 1), 10 ** digits - 1)


def _operands(family: str, rng: Random, min_digits: int, max_digits: int,
              first_digits: int | None) -> list[int]:
  ops = FAMILIES[family]
  sizes = [first_digits or rng.randint(min_digits, max_digits)]
  sizes += [1 if op == "*" else rng.randint(min_digits, max_digits) for op in ops]
  values = [_number(rng, size) for size in sizes]
  for i, op in enumerate(ops):
    if op == "*":
      values[i + 1] = rng.randint(2, 9)
  if family in ("sub", "sub_add") and values[0] < values[1]:
    values[0], values[1] = values[1], values[0]
  if family == "add_sub" and values[0] + values[1] < values[2]:
    values[0], values[2] = values[2], values[0]  # keeps every intermediate >= 0
  return values


def expression_text(values: Sequence[int], ops: Sequence[str]) -> str:
  parts = [str(values[0])]
  for op, value in zip(ops, values[1:]):
    parts += [op, str(value)]
  return " ".join(parts)


def evaluate(values: Sequence[int], ops: Sequence[str]) -> int:
  result = values[0]
  for op, value in zip(ops, values[1:]):
    result = {"+": result + value, "-": result - value, "*": result * value}[op]
  return result


def source_tag(family: str, min_digits: int, max_digits: int) -> str:
  """Question.source of a generated question: how the suites recognise its distribution."""
  return f"arithmetic/{family}/d{min_digits}-{max_digits}"


def parse_source(source: str) -> tuple[str, int, int] | None:
  """(family, min_digits, max_digits) from Question.source, or None."""
  m = _SOURCE_RE.match(source)
  return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def generate(families: Sequence[str], size: int, seed: int, min_digits: int,
             max_digits: int, first_digits: int | None = None) -> list[Question]:
  """`size` questions; item i uses Random((seed, i)) and family families[i % len]."""
  unknown = sorted(set(families) - set(FAMILIES))
  if unknown or not families:
    raise ValueError(f"arithmetic families {unknown or list(families)}: expected some of "
                     f"{sorted(FAMILIES)}")
  if not 1 <= min_digits <= max_digits:
    raise ValueError(f"digits {min_digits}-{max_digits}: need 1 <= min <= max")
  questions = []
  for index in range(size):
    family = families[index % len(families)]
    rng = Random(f"{seed}-{index}")
    values = _operands(family, rng, min_digits, max_digits, first_digits)
    ops = FAMILIES[family]
    first = f"-f{first_digits}" if first_digits else ""
    questions.append(Question(
        # The id names everything the question depends on: the same id, the same question.
        id=f"arith-{family}-d{min_digits}-{max_digits}{first}-s{seed}-{index}",
        question=QUESTION.format(expression=expression_text(values, ops)),
        answer=str(evaluate(values, ops)), answer_format="numeric",
        source=source_tag(family, min_digits, max(first_digits or 0, max_digits))))
  return questions


def parse_question(text: str) -> tuple[list[int], list[str]]:
  """(operands, operators) of a question written by `generate`; ValueError otherwise."""
  m = _QUESTION_RE.match(text.strip())
  if not m:
    raise ValueError(f"not an arithmetic question of this testbed: {text!r}")
  tokens = m.group(1).split()
  if len(tokens) % 2 == 0 or any(op not in "+-*" for op in tokens[1::2]):
    raise ValueError(f"not a chain 'a op b [op c]': {text!r}")
  return [int(t) for t in tokens[0::2]], tokens[1::2]


# ------------------------------------------------------------------ column algorithms


@dataclasses.dataclass(frozen=True)
class Column:
  """One place of a written column operation, ones first.

  add: digits of every operand (0 past its length) plus carry_in = total; `digit`
       is written, carry_out = total // 10.
  sub: top - bottom - borrow_in, plus 10 when that is negative (borrow_out = 1).
  mul: top * multiplier + carry_in = total.
  """
  place: int
  digits: tuple[int, ...]   # the operands' digits at this place (sub: top, bottom)
  carry_in: int             # carry (add, mul) or borrow (sub) from the place before
  total: int                # add/mul: the column's sum or product plus carry;
                            # sub: top - bottom - borrow_in (negative before borrowing)
  digit: int                # the digit written
  carry_out: int


@dataclasses.dataclass(frozen=True)
class Operation:
  """One written operation: kind "add" (n operands), "sub" or "mul" (by one digit)."""
  kind: str
  operands: tuple[int, ...]
  result: int
  columns: tuple[Column, ...]


def _digit(n: int, place: int) -> int:
  return n // 10 ** place % 10


def column_add(operands: Sequence[int]) -> Operation:
  columns, carry, place = [], 0, 0
  width = max(len(str(x)) for x in operands)
  while place < width or carry:
    digits = tuple(_digit(x, place) for x in operands) if place < width else ()
    total = sum(digits) + carry
    columns.append(Column(place, digits, carry, total, total % 10, total // 10))
    carry, place = total // 10, place + 1
  return Operation("add", tuple(operands), sum(operands), tuple(columns))


def column_sub(top: int, bottom: int) -> Operation:
  if top < bottom:
    raise ValueError(f"{top} - {bottom}: the column algorithm here needs top >= bottom")
  columns, borrow = [], 0
  for place in range(len(str(top))):
    a, b = _digit(top, place), _digit(bottom, place)
    total = a - b - borrow
    borrow_out = int(total < 0)
    columns.append(Column(place, (a, b), borrow, total, total + 10 * borrow_out, borrow_out))
    borrow = borrow_out
  return Operation("sub", (top, bottom), top - bottom, tuple(columns))


def column_mul(top: int, multiplier: int) -> Operation:
  if not 0 <= multiplier <= 9:
    raise ValueError(f"{top} * {multiplier}: the column algorithm here multiplies by one digit")
  columns, carry, place = [], 0, 0
  width = len(str(top))
  while place < width or carry:
    digits = (_digit(top, place), multiplier) if place < width else ()
    total = (digits[0] * multiplier if digits else 0) + carry
    columns.append(Column(place, digits, carry, total, total % 10, total // 10))
    carry, place = total // 10, place + 1
  return Operation("mul", (top, multiplier), top * multiplier, tuple(columns))


def operations(values: Sequence[int], ops: Sequence[str]) -> list[Operation]:
  """The written operations of a chain: consecutive additions at the start are one
  column addition (a + b + c); every other operator is its own operation."""
  steps, i, current = [], 0, values[0]
  if ops and ops[0] == "+":
    j = 0
    while j < len(ops) and ops[j] == "+":
      j += 1
    steps.append(column_add(values[:j + 1]))
    current, i = steps[-1].result, j
  while i < len(ops):
    op, value = ops[i], values[i + 1]
    if op == "+":
      steps.append(column_add([current, value]))
    elif op == "-":
      steps.append(column_sub(current, value))
    else:
      steps.append(column_mul(current, value))
    current, i = steps[-1].result, i + 1
  return steps


# ------------------------------------------------------------------ numbers as words

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand"), (100, "hundred"))


def number_words(n: int) -> str:
  """English words of a non-negative integer: 4821 -> 'four thousand eight hundred
  twenty-one'."""
  if n < 0:
    return "minus " + number_words(-n)
  if n < 20:
    return _ONES[n]
  if n < 100:
    return _TENS[n // 10] + ("-" + _ONES[n % 10] if n % 10 else "")
  for scale, name in _SCALES:
    if n >= scale:
      head, rest = divmod(n, scale)
      return f"{number_words(head)} {name}" + (f" {number_words(rest)}" if rest else "")
  raise AssertionError(n)
