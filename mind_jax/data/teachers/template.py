"""TemplateTeacher: an OFFLINE DEMONSTRATION teacher. It is not a model.

It rewrites the gold step-by-step solution that reasoning-gym's gsm_symbolic
ships with each item (Question.rationale: lines such as "35 × 3 = 105 kiwi",
ending "#### 288") into the 8 reasoning paradigms, so the data pipeline and the
demo run end to end with no model weights. The rationales are rule-based
rewrites of one solution, far less diverse than a real teacher's.

Every rationale ends "The answer is X." where X is the value on the gold
solution's own "#### X" line, not the item's answer field: a wrong gold
solution stays wrong, so the judge downstream can catch it.

Phrasing varies with a RNG seeded by (seed, question id, perspective), so the
output is deterministic.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from fractions import Fraction
from random import Random

from mind_jax.data.questions import Question
from mind_jax.data.judge import arithmetic_errors
from mind_jax.data.teachers.base import TeacherRequest

log = logging.getLogger(__name__)

# --------------------------------------------------------------- parsing

# A number as the gold solutions write it: currency, thousands commas,
# decimals, a tight fraction ("1/4") and a percent sign. Not glued to letters
# ("2x", "3rd").
_NUM = r"[$€£]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?%?"
_TOKENS = re.compile(rf"""
    (?P<num>(?<![\w.]){_NUM}(?![A-Za-z\d]))
  | (?P<op>[-+×*÷−/]|(?<!\w)[xX](?!\w))
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<eq>=)
  | (?P<sep>[,;:]|\.(?=\s|$))
  | (?P<word>[A-Za-z_][\w'’]*)
""", re.VERBOSE)
_OP_SYMBOL = {"+": "+", "-": "-", "−": "-", "*": "×", "×": "×", "x": "×", "X": "×",
              "/": "÷", "÷": "÷"}
_FINAL = re.compile(r"^\s*####\s*(.+?)\s*$", re.MULTILINE)
_LIST_MARKER = re.compile(r"^\s*(?:[-•*]|\d+[.)])\s+")
_PREAMBLE = re.compile(r"^let'?s solve this step by step:?$", re.IGNORECASE)
# reasoning-gym appends this to every gsm_symbolic question.
_RG_SUFFIX = " Give the result as your final answer. Do not include units."
# Relative tolerance when checking a parsed computation against its written
# result (the gold solutions print floats like 0.6666666666666666).
REL_TOL = 1e-6


def number_value(text: str) -> Fraction:
  """'$1,200' -> 1200, '25%' -> 1/4, '1/4' -> 1/4."""
  text = text.lstrip("$€£").replace(",", "")
  scale = Fraction(1, 100) if text.endswith("%") else 1
  num, _, den = text.rstrip("%").partition("/")
  return Fraction(num) / Fraction(den or 1) * scale


def fmt(value: Fraction) -> str:
  """A computed value as plain text: integers exactly, others to 4 decimals."""
  if value.denominator == 1:
    return str(value.numerator)
  return f"{float(value):.4f}".rstrip("0").rstrip(".")


def _close(a: Fraction, b: Fraction) -> bool:
  return abs(a - b) <= REL_TOL * max(1, abs(b))


@dataclass
class Tok:
  kind: str  # "num", "op", "lp" or "rp"
  text: str  # numbers as written; operators normalised to + - × ÷
  start: int
  end: int
  value: Fraction | None = None
  fraction: bool = False  # an "(" opening a written fraction "1/4" (see _fraction_group)


def render_expr(expr: list[Tok], names: list[str] | None = None,
                op_text: dict | None = None) -> str:
  """Tokens as text. A written fraction shows as "1/4" again, unless it is
  the whole expression ("90/18 = 5"), which then reads as a division."""
  names = iter(names) if names else None
  op_text = op_text or {}
  whole_fraction = len(expr) == 5 and expr[0].fraction
  parts, i = [], 0
  while i < len(expr):
    tok = expr[i]
    if tok.kind == "num":
      parts.append(next(names) if names else tok.text)
    elif tok.fraction and not whole_fraction:
      a, b = (next(names), next(names)) if names else (expr[i + 1].text, expr[i + 3].text)
      parts.append(f"{a}/{b}")
      i += 4  # skip the fraction's tokens up to its ")"
    elif tok.kind == "op":
      parts.append(op_text.get(tok.text, tok.text))
    elif not whole_fraction:
      parts.append(tok.text)
    i += 1
  return " ".join(parts).replace("( ", "(").replace(" )", ")")


@dataclass
class Calc:
  """One checked computation "expr = result" inside a solution line."""
  expr: list[Tok]
  result: Tok

  @property
  def start(self) -> int:
    return self.expr[0].start

  @property
  def ops(self) -> list[str]:
    return [t.text for t in self.expr if t.kind == "op"]

  @property
  def operands(self) -> list[Tok]:
    return [t for t in self.expr if t.kind == "num"]

  def plain(self, names: list[str] | None = None, op_text: dict | None = None) -> str:
    """'35 × 3', or with names (one per operand) 'b × a'; op_text renames the
    operators (e.g. to words)."""
    return render_expr(self.expr, names, op_text)


@dataclass
class Step:
  text: str  # the solution line, list markers removed
  calcs: list[Calc]


@dataclass
class Solution:
  steps: list[Step]
  final: str  # the text of the "#### X" line
  givens: list[Tok]  # the numbers of the question, in order
  ask: str  # the question's last interrogative sentence
  failed: list[Calc]  # computations whose written result is wrong

  @property
  def calcs(self) -> list[Calc]:
    return [c for s in self.steps for c in s.calcs]

  def final_value(self) -> Fraction | None:
    try:
      return number_value(self.final)
    except (ValueError, ZeroDivisionError):
      return None


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction:
  if op == "+":
    return a + b
  if op == "-":
    return a - b
  return a * b if op == "×" else a / b


def evaluate(expr: list[Tok], values: list[Fraction] | None = None) -> Fraction | None:
  """Value of an expression (× ÷ before + -), None if it does not parse.
  values: replacements for the operands, in order (for what-if replays)."""
  nums = iter(values if values is not None else [t.value for t in expr if t.kind == "num"])
  pos = 0

  def peek_op(symbols: str) -> str | None:
    if pos < len(expr) and expr[pos].kind == "op" and expr[pos].text in symbols:
      return expr[pos].text
    return None

  def atom() -> Fraction:
    nonlocal pos
    pos += 1
    if expr[pos - 1].kind == "num":
      return next(nums)
    value = sum_()  # after "("
    if expr[pos].kind != "rp":
      raise ValueError("unbalanced parentheses")
    pos += 1
    return value

  def product() -> Fraction:
    nonlocal pos
    value = atom()
    while op := peek_op("×÷"):
      pos += 1
      value = _apply(op, value, atom())
    return value

  def sum_() -> Fraction:
    nonlocal pos
    value = product()
    while op := peek_op("+-"):
      pos += 1
      value = _apply(op, value, product())
    return value

  try:
    value = sum_()
    return value if pos == len(expr) else None
  except (ValueError, IndexError, ZeroDivisionError, StopIteration):
    return None


def _fraction_group(tok: Tok) -> list[Tok]:
  """An operand written '141/168' is the division (141 ÷ 168): its parts can
  then be linked to earlier values, and '10÷1/2' still means 10 ÷ (1/2)."""
  num, den = tok.text.rsplit("/", 1)
  mid = tok.start + len(num)
  return [Tok("lp", "(", tok.start, tok.start, fraction=True),
          Tok("num", num, tok.start, mid, number_value(num)),
          Tok("op", "÷", mid, mid + 1), Tok("num", den, mid + 1, tok.end, number_value(den)),
          Tok("rp", ")", tok.end, tok.end)]


def _is_expression(expr: list[Tok]) -> bool:
  return (any(t.kind == "op" for t in expr) and expr[-1].kind in ("num", "rp")
          and sum(t.kind == "lp" for t in expr) == sum(t.kind == "rp" for t in expr))


def find_calcs(line: str, failed: list[Calc] | None = None) -> list[Calc]:
  """The computations "expr = result" of a line whose result checks out
  (those that do not are appended to `failed`, when given).

  Unit words between an operand and the next operator are skipped ("90 onion /
  10 onion/minute = 9"); an operator followed by a word is not one ("per
  member/robotics club"); two operands with no operator between start over.
  """
  calcs, expr = [], []
  pending_op, word_since_op, want_result = None, False, None
  for m in _TOKENS.finditer(line):
    kind, text = m.lastgroup, m.group()
    if want_result is not None:  # the token right after "=" must be the result
      if kind == "num":
        result = Tok("num", text, m.start(), m.end(), number_value(text))
        value = evaluate(want_result) if want_result else None
        if value is not None and _close(value, result.value):
          calcs.append(Calc(want_result, result))
        elif value is not None and failed is not None:
          failed.append(Calc(want_result, result))
        expr, pending_op, want_result = [result], None, None
        continue
      expr, pending_op, want_result = [], None, None
    if kind in ("num", "lp"):
      tok = Tok(kind, text, m.start(), m.end(), number_value(text) if kind == "num" else None)
      if pending_op and not word_since_op:
        expr.append(pending_op)
      elif expr and expr[-1].kind in ("num", "rp"):
        if kind == "lp" and expr[-1].end == m.start():  # "2(13+8)": implicit product
          expr.append(Tok("op", "×", m.start(), m.start()))
        else:
          expr = []
      expr += _fraction_group(tok) if "/" in text else [tok]
      pending_op, word_since_op = None, False
    elif kind == "rp":
      if sum(t.kind == "lp" for t in expr) > sum(t.kind == "rp" for t in expr):
        expr.append(Tok("rp", ")", m.start(), m.end()))
    elif kind == "op":
      if expr and expr[-1].kind in ("num", "rp"):
        pending_op, word_since_op = Tok("op", _OP_SYMBOL[text], m.start(), m.end()), False
    elif kind == "word":
      word_since_op = True
    elif kind == "eq":
      want_result = list(expr) if _is_expression(expr) else []
      pending_op = None
    else:  # a separator: a new clause
      expr, pending_op = [], None
  return calcs


def _clean_lines(cot: str) -> list[str]:
  """Solution lines without list markers, the preamble and the #### line;
  a header line ("Initial amounts:") is joined to the line after it."""
  lines, header = [], ""
  for raw in cot.splitlines():
    line = _LIST_MARKER.sub("", raw).strip()
    if not line or line.startswith("####") or _PREAMBLE.match(line):
      continue
    if line.endswith(":"):
      header += line + " "
      continue
    if line[-1] not in ".!?":
      line += "."
    lines.append(header + line)
    header = ""
  return lines


def _ask_sentence(question: str) -> str:
  sentences = re.split(r"(?<=[.?!])\s+", question.replace(_RG_SUFFIX, "").strip())
  asks = [s for s in sentences if s.endswith("?")]
  return asks[-1] if asks else sentences[-1]


def parse_solution(question: str, cot: str) -> Solution | None:
  """None when the solution has no "#### X" line."""
  finals = _FINAL.findall(cot)
  if not finals:
    return None
  failed = []
  steps = [Step(line, find_calcs(line, failed)) for line in _clean_lines(cot)]
  text = question.replace(_RG_SUFFIX, "")
  givens = [Tok("num", m.group(), m.start(), m.end(), number_value(m.group()))
            for m in _TOKENS.finditer(text) if m.lastgroup == "num"]
  return Solution(steps, finals[-1], givens, _ask_sentence(question), failed)


# ------------------------------------------------ what an operand refers to


def _matches(sol: Solution, i: int, tok: Tok) -> tuple[list[int], list[int]]:
  """The earlier calcs and the givens whose value equals operand tok of calc i."""
  calcs = sol.calcs
  earlier = [k for k in range(i) if _close(tok.value, calcs[k].result.value)]
  given = [g for g, t in enumerate(sol.givens) if _close(tok.value, t.value)]
  return earlier, given


def operand_sources(sol: Solution) -> list[list[tuple[str, int | None]]]:
  """For each calc, for each operand: ("result", k) if it equals the result of
  an earlier calc k (the latest), ("given", g) if it equals given number g,
  else ("literal", None). The gold solutions reuse values by restating them,
  so equal values are the best available link."""
  sources = []
  for i, calc in enumerate(sol.calcs):
    row = []
    for tok in calc.operands:
      earlier, given = _matches(sol, i, tok)
      row.append(("result", earlier[-1]) if earlier else
                 ("given", given[0]) if given else ("literal", None))
    sources.append(row)
  return sources


def links_are_unambiguous(sol: Solution) -> bool:
  """No operand equals two candidates (two earlier results, two givens, or a
  result and a given), so operand_sources() is not a guess."""
  return all(len(sum(_matches(sol, i, tok), [])) <= 1
             for i, calc in enumerate(sol.calcs) for tok in calc.operands)


def replay(sol: Solution, given: int, new_value: Fraction) -> Fraction | None:
  """The last calc's value when given number `given` is new_value and every
  later step is redone with the same operations (None if one fails)."""
  calcs, new_results = sol.calcs, []
  for calc, row in zip(calcs, operand_sources(sol)):
    values = []
    for tok, (kind, index) in zip(calc.operands, row):
      if kind == "result":
        values.append(new_results[index])
      elif kind == "given" and index == given:
        values.append(new_value)
      else:
        values.append(tok.value)
    value = evaluate(calc.expr, values)
    if value is None:
      return None
    new_results.append(value)
  return new_results[-1] if new_results else None


def as_written(value: Fraction, like: Tok) -> Fraction:
  """A computed value on the scale `like` is written in: 0.25 -> 25 for '25%'."""
  return value * 100 if like.text.endswith("%") else value


def chain_reaches_final(sol: Solution) -> bool:
  """Whether the last checked computation produces the #### value, i.e. the
  parsed chain covers the whole solution."""
  final = sol.final_value()
  if not sol.calcs or final is None:
    return False
  last = sol.calcs[-1].result
  return _close(last.value, final) or _close(as_written(last.value, last), final)


# ---------------------------------------------------------------- phrasing

_OP_WORDS = {"+": "plus", "-": "minus", "×": "times", "÷": "divided by"}


def rewrite(step: Step, render) -> str:
  """The step's text with each computation replaced by render(calc)."""
  out, pos = [], 0
  for calc in step.calcs:
    if calc.start < pos:  # a chain "a + b = c + d = e": c is already written
      out.append(", and " + render(calc))
    else:
      out += [step.text[pos:calc.start], render(calc)]
    pos = calc.result.end
  return "".join(out + [step.text[pos:]])


def plain_calc(calc: Calc) -> str:
  return f"{calc.plain()} = {calc.result.text}"


def words_calc(calc: Calc, rng: Random) -> str:
  """'35 times 3 makes 105': the computation with no symbols."""
  expr = calc.plain(op_text=_OP_WORDS)
  return f"{expr} {rng.choice(['is', 'makes', 'comes to', 'gives'])} {calc.result.text}"


# A line's own sequencing word, dropped where a connector replaces it.
_SEQUENCING = re.compile(r"^(?:therefore|thus|so|hence|first|then|next|now|finally)\b,?\s*",
                         re.IGNORECASE)
# Sentence-initial words that are lowercased after a connector ("Then, he
# has..."); any other capitalised word may be a name and is left alone.
_COMMON_STARTERS = frozenset(
    "a add after all altogether an and as at but calculate cold combining each first for "
    "from he her his if in it minus multiply next now of on one out since she so subtract "
    "that the their then there they this to together tomorrow total warm we when which "
    "while with yesterday".split())


def _lower_first(text: str) -> str:
  first = text.split(" ", 1)[0].lower()
  return text[:1].lower() + text[1:] if first in _COMMON_STARTERS else text


def plan_phrase(calc: Calc, row) -> str:
  """'Multiply 35 by 3', referring to earlier results by their plan step
  (plan step k computes calc k - 1). row: the calc's operand_sources()."""
  refs = [f"the result of step {index + 1}" if kind == "result" else tok.text
          for tok, (kind, index) in zip(calc.operands, row)]
  ops = set(calc.ops)
  if len(ops) == 1 and not any(t.kind == "lp" for t in calc.expr):
    op = ops.pop()
    if op == "+":
      return f"Add {', '.join(refs[:-1])} and {refs[-1]}"
    if op == "-":
      return f"Subtract {' and '.join(refs[1:])} from {refs[0]}"
    if op == "×":
      return f"Multiply {refs[0]} by {' and '.join(refs[1:])}"
    return f"Divide {refs[0]} by {' and then by '.join(refs[1:])}"
  return f"Work out {calc.plain(refs)}"


# ---------------------------------------------------------------- paradigms
# Each takes (sol, rng) and returns the body; the caller appends the answer line.

_GIVEN_NAMES = "abcdefghkmnpqstuvwyz"  # no x (times), no i/j/l/o (look like digits)


def formal_symbolic(sol: Solution, rng: Random) -> str:
  sources = operand_sources(sol)
  used = sorted({index for row in sources for kind, index in row if kind == "given"})
  names = {g: _GIVEN_NAMES[k] for k, g in enumerate(used[:len(_GIVEN_NAMES)])}
  lines = []
  if names:
    lines.append("Let the given quantities be " + ", ".join(
        f"{names[g]} = {sol.givens[g].text}" for g in names) + ".")
  if sol.calcs:
    lines.append(rng.choice(["Denote the intermediate results by r1, r2, ... and derive each "
                             "from earlier ones.", "Define r_k as the k-th derived quantity; "
                             "each is obtained by substitution."]))
  calc_index = 0
  for step in sol.steps:
    if not step.calcs:
      lines.append(f"Statement: {step.text}")
    for calc in step.calcs:
      row = sources[calc_index]
      symbols = [f"r{index + 1}" if kind == "result" else names.get(index, tok.text)
                 if kind == "given" else tok.text
                 for tok, (kind, index) in zip(calc.operands, row)]
      symbolic = calc.plain(symbols)
      middle = f" = {calc.plain()}" if symbolic != calc.plain() else ""
      lines.append(f"r{calc_index + 1} = {symbolic}{middle} = {calc.result.text}")
      calc_index += 1
  if chain_reaches_final(sol):
    lines.append(f"Therefore the required quantity is r{len(sol.calcs)} = {sol.final}.")
  else:
    lines.append(f"Therefore the required quantity is {sol.final}.")
  return "\n".join(lines)


def intuitive(sol: Solution, rng: Random) -> str:
  opening = rng.choice(["Let's just think it through the way you would in your head.",
                        "No need for algebra here; let's follow the story.",
                        "Think of it like keeping a running tally."])
  connectors = ["First,", "Then", "After that,", "Next,", "And"]
  sentences = [opening]
  for i, step in enumerate(sol.steps):
    text = rewrite(step, lambda c: words_calc(c, rng))
    if not arithmetic_errors(text):
      # In words; a wrong step keeps its "a op b = c" form so the judge can see it.
      text = text.replace(" = ", " is ")
    text = _SEQUENCING.sub("", text)  # the connector says it
    connector = connectors[0] if i == 0 else rng.choice(connectors[1:])
    if i == len(sol.steps) - 1 and i > 0:
      connector = "So in the end,"
    sentences.append(f"{connector} {_lower_first(text)}")
  sentences.append(rng.choice(["That all adds up to", "It all comes to", "So we end up with"])
                   + f" {sol.final}.")
  return " ".join(sentences)


def decomposition(sol: Solution, rng: Random) -> str:
  n = sum(1 for step in sol.steps if step.calcs) or len(sol.steps)
  lines = [rng.choice([f"Break the problem into {n} sub-problems and solve them in order.",
                       f"This splits into {n} smaller sub-problems; solve each in turn."])]
  k = 0
  for step in sol.steps:
    if not step.calcs and any(s.calcs for s in sol.steps):
      lines.append(f"(Known: {step.text})")
      continue
    k += 1
    goal = "; ".join(f"compute {c.plain()}" for c in step.calcs) or "establish the fact"
    lines.append(f"Sub-problem {k}: {goal}.\n  {rewrite(step, plain_calc)}")
  lines.append(f"Combining the sub-problems in order gives {sol.final}.")
  return "\n".join(lines)


def planning(sol: Solution, rng: Random) -> str:
  """The plan names the operations only; the execution then fills in values."""
  sources, calcs = operand_sources(sol), sol.calcs
  plan = [f"{k}. {plan_phrase(c, row)}."
          for k, (c, row) in enumerate(zip(calcs, sources), start=1)]
  lines = [rng.choice(["Plan:", "First, a plan:", "Plan before computing:"])]
  lines += plan or ["1. Collect what the problem states.", "2. Read off the quantity asked for."]
  lines.append(rng.choice(["Execution:", "Now carry out the plan:", "Carrying it out:"]))
  if calcs:
    lines += [f"Step {k}: {plain_calc(c)}." for k, c in enumerate(calcs, start=1)]
  else:
    lines += [step.text for step in sol.steps]
  lines.append(f"Every step of the plan is done, and the last one gives {sol.final}.")
  return "\n".join(lines)


_ANALOG_THINGS = [("marbles", "bags"), ("apples", "baskets"), ("coins", "jars")]


def _analog(op: str, rng: Random, things: tuple[str, str]) -> str:
  item, box = things
  a, b = rng.randint(2, 5), rng.randint(2, 4)
  return {"+": f"a pile of {a} {item} and a pile of {b} {item} make {a} + {b} = {a + b} {item}",
          "-": f"{a + b} {item} with {b} given away leave {a + b} - {b} = {a} {item}",
          "×": f"{a} {box} of {b} {item} each hold {a} × {b} = {a * b} {item}",
          "÷": f"{a * b} {item} shared equally among {a} {box} put {a * b} ÷ {a} = {b} in each"
          }[op]


_ANALOG_MOVES = {"+": "putting piles together", "-": "giving some away",
                 "×": "counting equal groups", "÷": "sharing out equally"}


def analogy(sol: Solution, rng: Random) -> str:
  things = rng.choice(_ANALOG_THINGS)
  ops = list(dict.fromkeys(op for c in sol.calcs for op in c.ops))
  lines = [f"This is the same kind of problem as a simpler one about {things[0]} "
           f"in {things[1]}."]
  for op in ops:
    lines.append(f"In the simple version, {_analog(op, rng, things)}.")
  lines.append(rng.choice(["Our problem uses the same moves, only with its own numbers:",
                           "Mapping each move onto our problem:"]))
  for step in sol.steps:
    moves = list(dict.fromkeys(_ANALOG_MOVES[op] for c in step.calcs for op in c.ops))
    note = f" (like {' and '.join(moves)})" if moves else ""
    lines.append(rewrite(step, plain_calc).rstrip(".") + note + ".")
  lines.append(f"Mapping back to the original question, the quantity asked for is {sol.final}.")
  return "\n".join(lines)


def socratic(sol: Solution, rng: Random) -> str:
  lines = [f"What is the question asking? {sol.ask}"]
  if sol.givens:
    numbers = dict.fromkeys(t.text for t in sol.givens)  # distinct, in order
    lines.append("What do we know? The problem gives the numbers " + ", ".join(numbers) + ".")
  for step in sol.steps:
    if step.calcs:
      question = rng.choice(["What do we get from {}?", "What is {}?",
                             "And what does {} come to?"]).format(step.calcs[0].plain())
    else:
      question = rng.choice(["What else does the problem tell us?", "What follows from that?"])
    lines.append(f"{question} {rewrite(step, plain_calc)}")
  lines.append(f"Is that the quantity the question asks for? Yes: {sol.final}.")
  return "\n".join(lines)


def _wrong_candidates(sol: Solution) -> list[tuple[str, Fraction, str]]:
  """(approach, the value it gives, why it is wrong), all tempting shortcuts."""
  out = []
  if len(sol.givens) >= 2:
    total = sum((as_written(t.value, t) for t in sol.givens), Fraction(0))  # 4% counts as 4
    out.append((f"add up every number in the question ({' + '.join(t.text for t in sol.givens)})",
                total, "it treats all the quantities as the same kind of thing and ignores "
                "how they relate"))
  calcs = sol.calcs
  if len(calcs) >= 2:
    out.append((f"stop after the first calculation ({plain_calc(calcs[0])})",
                calcs[0].result.value, "that is only an intermediate quantity, not the one asked for"))
  if calcs and len(calcs[-1].ops) == 1:
    last = calcs[-1]
    flipped = {"+": "-", "-": "+", "×": "÷", "÷": "×"}[last.ops[0]]
    expr = [Tok("op", flipped, t.start, t.end) if t.kind == "op" else t for t in last.expr]
    value = evaluate(expr)
    if value is not None:
      out.append((f"use {_OP_WORDS[flipped]} instead of {_OP_WORDS[last.ops[0]]} in the last "
                  f"step ({Calc(expr, last.result).plain()})", value,
                  f"the problem calls for {_OP_WORDS[last.ops[0]]} there"))
  return out


def contrastive(sol: Solution, rng: Random) -> str:
  final = sol.final_value()
  candidates = [c for c in _wrong_candidates(sol) if final is None or not _close(c[1], final)]
  lines = []
  if candidates:
    approach, value, why = rng.choice(candidates)
    lines.append(f"Candidate A: {approach}, which gives {fmt(value)}.")
    lines.append("Candidate B: follow how each quantity depends on the others, step by step.")
  else:
    why = "a single number from the statement ignores how the quantities relate"
    lines.append("Candidate A: read the result straight off one number in the statement.")
    lines.append("Candidate B: work through the relations step by step.")
  lines.append(" ".join(rewrite(step, plain_calc) for step in sol.steps))
  lines.append(f"Comparing the two: candidate A fails because {why}, so it is eliminated; "
               f"candidate B uses every relation in the problem and gives {sol.final}.")
  return "\n".join(lines)


def _number_like(value: Fraction, like: str) -> str:
  """fmt(value), with thousands commas if `like` has them."""
  if "," in like and value.denominator == 1:
    return f"{value.numerator:,}"
  return fmt(value)


def _what_if(sol: Solution, rng: Random) -> str | None:
  """'What if 35 were 70? ... 576 rather than 288': one given number changed
  and the same steps redone. Only where the replay can be trusted: every
  computation checked out, the chain reaches the final value and every
  operand's link to an earlier value is unambiguous. A replay that finds no
  change is not reported: it more likely missed a link (the solution restating
  "50%" as "50/100") than found a quantity that does not matter."""
  final = sol.final_value()
  if sol.failed or not chain_reaches_final(sol) or not links_are_unambiguous(sol):
    return None
  used = sorted({index for row in operand_sources(sol) for kind, index in row if kind == "given"})
  rng.shuffle(used)
  for g in used:
    old = sol.givens[g]
    # A clear change that keeps counts whole; shares (0.75, 65%) are halved
    # instead, since doubled they could exceed the whole.
    new_value = old.value / 2 if old.value < 1 else old.value * 2
    new_final = replay(sol, g, new_value)
    if new_final is None:
      continue
    new_final = as_written(new_final, sol.calcs[-1].result)
    if _close(new_final, final) or (new_final < 0) != (final < 0):  # negative: not a sensible world
      continue
    new_text = re.sub(r"\d[\d,.]*(?:/\d+)?", _number_like(as_written(new_value, old), old.text),
                      old.text, count=1)
    return (f"What if {old.text} were {new_text} instead? Redoing the same steps gives "
            f"{fmt(new_final)} rather than {sol.final}, so this quantity is a constraint that "
            f"matters.")
  return None


def counterfactual(sol: Solution, rng: Random) -> str:
  lines = [rng.choice(["Before solving, vary the conditions to see which ones matter.",
                       "First ask what would change if the conditions were different."])]
  what_if = _what_if(sol, rng)
  if what_if:
    lines.append(what_if)
  else:
    lines.append("If any number used in the steps below changed, every step built on it would "
                 "change too, so those numbers are the constraints that matter.")
  lines.append("If the names or the kind of items were different, no number would change, "
               "so those details do not matter.")
  lines.append("Now solve under the actual conditions:")
  lines += [rewrite(step, plain_calc) for step in sol.steps]
  lines.append(f"Under the actual conditions the result is {sol.final}.")
  return "\n".join(lines)


PARADIGM_WRITERS = {
    "formal_symbolic": formal_symbolic, "intuitive": intuitive, "decomposition": decomposition,
    "planning": planning, "analogy": analogy, "socratic": socratic,
    "contrastive": contrastive, "counterfactual": counterfactual,
}


class TemplateTeacher:
  """Offline demonstration teacher (not a model): rule-based rewrites of
  gsm_symbolic gold solutions into the 8 paradigms. A question without a gold
  solution ending "#### X" gets None."""

  def __init__(self, seed: int = 0, name: str = "offline-demo-template"):
    self.seed = seed
    self.name = name

  def rationale(self, question: Question, perspective: str) -> str | None:
    writer = PARADIGM_WRITERS.get(perspective)
    if writer is None:
      raise ValueError(f"unknown perspective {perspective!r}; TemplateTeacher knows "
                       f"{list(PARADIGM_WRITERS)}")
    sol = parse_solution(question.question, question.rationale or "")
    if sol is None:
      return None
    rng = Random(f"{self.seed}|{question.id}|{perspective}")
    return f"{writer(sol, rng)}\nThe answer is {sol.final}."

  def generate(self, requests: list[TeacherRequest]) -> list[str | None]:
    out = [self.rationale(r.question, r.perspective) for r in requests]
    missing = sum(text is None for text in out)
    if missing:
      log.warning("TemplateTeacher: %d of %d requests have no gold solution ending "
                  "'#### X'; returned None for them", missing, len(out))
    return out
