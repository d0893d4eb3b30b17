"""Answer extraction and checking, shared by the rationale judge (teacher
rationales whose answer disagrees with the gold answer are dropped) and by the
benchmark scorer (student generations). One module so both agree exactly on
what "the answer" of a text is.

Formats: "numeric" (GSM8K, SVAMP, gsm_symbolic), "math" (MATH500: LaTeX
expressions), "choice" (CommonsenseQA A-E, GPQA A-D), "yes_no" (StrategyQA).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from math_verify import parse, verify

ANSWER_FORMATS = ("numeric", "math", "choice", "yes_no")

# Relative tolerance of the plain-float fallback used when math_verify cannot
# parse one side; tight enough that 19 vs 20 or 2.5 vs 2.51 still differ.
NUMERIC_REL_TOL = 1e-6
# Sympy can stall on long inputs and we disable math_verify's signal-based
# timeout (signals only work in the main thread), so long strings skip it and
# use the numeric fallback only.
MAX_VERIFY_CHARS = 300

# "The answer is X", "Final answer: X", "answer: X", "Answer = X"; the slot is
# the rest of the line. "final" needs no own case: "answer" is matched inside it.
# The slot is read in a lookahead so one cue's slot does not swallow a later
# cue on the same line ("the answer is 3. No wait, the answer is 5").
_ANSWER_CUE = re.compile(r"\banswer\s*(?:is\b|:|=)\s*:?[ \t]*(?=([^\n]*))", re.IGNORECASE)
_HASH_LINE = re.compile(r"^\s*####[ \t]*([^\n]*)", re.MULTILINE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# A number as written in prose: optional sign and currency, thousands commas
# only in groups of three (so "5, 6" stays two numbers), decimals, a "/den"
# fraction and a percent sign.
_NUMBER = re.compile(
    r"(?<![\w.])[-−]?(?:[$€£]\s?[-−]?)?(?:\d{1,3}(?:,\d{3})+|\d+|(?=\.\d))(?:\.\d+)?"
    r"(?:\s?/\s?\d+(?:\.\d+)?)?\s?%?")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
# The slot must open with the word ("No, because..."), so "it is not true"
# is not read as "true".
_YES_NO_WORD = re.compile(r"^\W*(yes|no|true|false)\b", re.IGNORECASE)
_YES_NO_MAP = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}
# A whole text that is only a bare yes/no ("Yes." / "No, it cannot."): the
# word must be followed by punctuation or the end, so "No mammal..." is not one.
_BARE_YES_NO = re.compile(r"^\W*(yes|no|true|false)\s*(?:[.,!;:]|$)", re.IGNORECASE)


@dataclass
class Verdict:
  correct: bool
  predicted: str | None
  reason: str  # "correct", "wrong_answer" or "no_answer"


# ----------------------------------------------------------------- candidates


def _last_boxed(text: str) -> str | None:
  """Content of the last \\boxed{...}, matching braces so nested groups like
  \\boxed{\\frac{1}{2}} are kept whole."""
  starts = [m.end() for m in _BOXED.finditer(text)]
  for start in reversed(starts):
    depth, i = 1, start
    while i < len(text) and depth:
      depth += {"{": 1, "}": -1}.get(text[i], 0)
      i += 1
    if depth == 0:
      return text[start:i - 1].strip()
  return None


def _candidates(text: str):
  """Answer slots in priority order: last boxed, cue phrases (last first),
  '####' lines (last first). Later ones are used only when earlier ones do not
  parse in the requested format."""
  boxed = _last_boxed(text)
  if boxed is not None:
    yield "boxed", boxed
  for m in reversed(list(_ANSWER_CUE.finditer(text))):
    yield "slot", m.group(1)
  for m in reversed(list(_HASH_LINE.finditer(text))):
    yield "slot", m.group(1)


# ------------------------------------------------------------- normalisation


def _delatex(s: str) -> str:
  """LaTeX that only dresses up a plain number: \\frac{3}{4} -> 3/4,
  1{,}000 -> 1,000, \\$ -> $, \\% -> %, \\text{...} unwrapped."""
  s = _TEXT_WRAP.sub(r"\1", s)
  s = _FRAC.sub(r"\1/\2", s)
  s = s.replace("{,}", ",").replace("\\!", "").replace("\\,", "")
  return s.replace("\\$", "$").replace("\\%", "%").replace("\\left", "").replace("\\right", "")


def _clean_number(s: str) -> str:
  """'1,000' -> '1000', '$5.00' -> '5.00', '50%' -> '50', '3 / 4' -> '3/4'."""
  s = s.replace("−", "-")
  return re.sub(r"[\s,$€£%]", "", s)


def _full_number(s: str) -> str | None:
  """The normalised number if s is exactly one number (trailing period allowed)."""
  s = _delatex(s).strip().strip("$ ").rstrip(".").strip()
  m = _NUMBER.fullmatch(s)
  return _clean_number(m.group(0)) if m else None


def _first_number(s: str) -> str | None:
  m = _NUMBER.search(_delatex(s))
  return _clean_number(m.group(0)) if m else None


def _last_number(s: str) -> str | None:
  found = _NUMBER.findall(_delatex(s))
  return _clean_number(found[-1]) if found else None


def _strip_math(s: str) -> str:
  """Slot text to a bare expression: the first $...$ or \\(...\\) if any;
  else a leading number followed by prose ("5 because ...", "12 apples");
  else the text. No markdown bold, trailing period or stray dollars."""
  s = s.strip().strip("*").strip()
  m = re.search(r"\$([^$]+)\$|\\\((.+?)\\\)", s)
  if m:
    return (m.group(1) or m.group(2)).strip()
  m = _NUMBER.match(s)
  number = m.group(0).rstrip() if m else ""
  if number and re.match(r"\s+[A-Za-z]{2}", s[len(number):]):
    return number
  return s.rstrip(".").strip().strip("$").strip()


# ------------------------------------------------------------ per format


def _parse_numeric(kind: str, s: str) -> str | None:
  if kind == "boxed":
    # A boxed answer is the whole answer: a non-number (\sqrt{2}) is kept for
    # math_verify rather than mined for a digit.
    return _full_number(s) or (s or None)
  # "The answer is 12 * 4 = 48 apples": the value is after the last "=".
  return _first_number(s.rsplit("=", 1)[-1])


def _parse_math(kind: str, s: str) -> str | None:
  s = s if kind == "boxed" else _strip_math(s)
  # LaTeX answers stay as written for math_verify; only plain numerals like
  # "1,000" or "$5" are normalised.
  plain = None if "\\" in s else _full_number(s)
  return plain or (s or None)


def _choice_letter(s: str, choices: str) -> str | None:
  """First standalone capital in choices: '(B)', 'B)', 'B.', 'option B',
  '\\text{B}'. Lower-case is ignored so the article 'a' never reads as A."""
  m = re.search(rf"(?<![A-Za-z])([{re.escape(choices)}])(?![A-Za-z])", s)
  return m.group(1) if m else None


def _bare_choice(text: str, choices: str) -> str | None:
  """A whole text that is only a letter: 'B', '(B)', 'B.', 'option B: Paris'.
  Stricter than a slot so 'A dog...' is not read as choice A."""
  c = re.escape(choices)
  m = re.match(rf"^\s*(?:option\s+)?(?:\(([{c}])\)|([{c}])(?:[.:)]|\s*$))", text, re.IGNORECASE)
  return (m.group(1) or m.group(2)).upper() if m else None


def _yes_no(s: str) -> str | None:
  m = _YES_NO_WORD.match(_delatex(s))
  return _YES_NO_MAP[m.group(1).lower()] if m else None


def extract_answer(text: str, answer_format: str, choices: str = "ABCDE") -> str | None:
  """The final answer of a rationale or generation, normalised; None if none."""
  if answer_format not in ANSWER_FORMATS:
    raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
  for kind, slot in _candidates(text):
    if answer_format == "numeric":
      found = _parse_numeric(kind, slot)
    elif answer_format == "math":
      found = _parse_math(kind, slot)
    elif answer_format == "choice":
      found = _choice_letter(slot, choices)
    else:
      found = _yes_no(slot)
    if found:
      return found
  if answer_format == "numeric":
    return _last_number(text)
  if answer_format == "choice":
    return _bare_choice(text, choices)
  if answer_format == "yes_no":
    m = _BARE_YES_NO.match(text)
    return _YES_NO_MAP[m.group(1).lower()] if m else None
  return None


# ----------------------------------------------------------------- matching


def _as_math(s: str) -> str:
  # math_verify's LaTeX extractor wants math delimiters; bare "x^2+2x+1"
  # parses to nothing without them.
  return s if "$" in s else f"${s}$"


def _to_float(s: str) -> float | None:
  num = _full_number(s)
  if num is None:
    return None
  try:
    return float(Fraction(num))
  except (ValueError, ZeroDivisionError):
    return None


def _numeric_equal(predicted: str, gold: str) -> bool:
  a, b = _to_float(predicted), _to_float(gold)
  return a is not None and b is not None and math.isclose(a, b, rel_tol=NUMERIC_REL_TOL)


def _math_equal(predicted: str, gold: str) -> bool:
  """math_verify first (symbolic: 3/4 == \\frac{3}{4} == 0.75, (x+1)^2 ==
  x^2+2x+1), plain numbers when it cannot parse a side. Timeouts are off so
  it also runs outside the main thread (its timeout uses signals)."""
  if max(len(predicted), len(gold)) <= MAX_VERIFY_CHARS:
    g = parse(_as_math(gold), parsing_timeout=None)
    p = parse(_as_math(predicted), parsing_timeout=None)
    if g and p:
      return verify(g, p, timeout_seconds=None)
  return _numeric_equal(predicted, gold)


def answers_match(predicted: str, gold: str, answer_format: str) -> bool:
  """Whether a predicted answer equals the gold answer in this format."""
  if answer_format in ("numeric", "math"):
    return _math_equal(predicted, gold)
  if answer_format == "choice":
    # Gold may come as "B" or "(B)"; read both the same way.
    return (_bare_choice(predicted, "ABCDEFGHIJ") or predicted.strip().upper()) == \
           (_bare_choice(gold, "ABCDEFGHIJ") or gold.strip().upper())
  if answer_format == "yes_no":
    # Gold may come as "yes"/"no" or as a boolean's str ("True").
    return (_yes_no(predicted) or predicted.strip().lower()) == \
           (_yes_no(gold) or gold.strip().lower())
  raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")


def judge(text: str, gold: str, answer_format: str, choices: str = "ABCDE") -> Verdict:
  """Judge a rationale or generation against the gold answer."""
  predicted = extract_answer(text, answer_format, choices)
  if predicted is None:
    return Verdict(False, None, "no_answer")
  if answers_match(predicted, str(gold), answer_format):
    return Verdict(True, predicted, "correct")
  return Verdict(False, predicted, "wrong_answer")


# ----------------------------------------------------------------- arithmetic steps

# "35 × 3 = 105", "160-48=112", "(2 + 3) * 4 = 20", "$5.70 / 2 = 2.85": a numeric
# expression with at least one operator, then "=", then a number.
_STEP = re.compile(
    r"(?<![\w.])((?:[$]?\d[\d,]*(?:\.\d+)?|[()])(?:\s*(?:[-+*/×x÷]|//)?\s*"
    r"(?:[$]?\d[\d,]*(?:\.\d+)?|[()]))*)\s*=\s*[$]?(-?\d[\d,]*(?:\.\d+)?(?:/\d+)?)(?![\d.]*\d)")
_OPERATOR = re.compile(r"\d\s*(?:[-+*/×x÷]|//)\s*[$(]?\d")
# Relative tolerance of a step: the written result may round to 2 decimals.
STEP_ABS_TOL = 0.005


def _evaluate(expression: str) -> float | None:
  """The value of a plain arithmetic expression, or None if it is not one."""
  import ast
  import operator

  ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
         ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv}
  cleaned = (expression.replace(",", "").replace("$", "").replace("×", "*")
             .replace("÷", "/").replace("x", "*"))

  def value(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
      return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in ops:
      return ops[type(node.op)](value(node.left), value(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
      return -value(node.operand)
    raise ValueError(node)

  try:
    return value(ast.parse(cleaned, mode="eval").body)
  except (SyntaxError, ValueError, ZeroDivisionError, TypeError):
    return None


def arithmetic_errors(text: str) -> list[str]:
  """The "a op b = c" steps of a rationale whose result is wrong.

  Catches solutions (gold ones included) that round an intermediate value, e.g.
  "11*0.5=5", even when their final answer agrees with a gold answer that
  carries the same mistake.
  """
  errors = []
  for match in _STEP.finditer(text):
    expression, written = match.group(1).strip(), match.group(2).replace(",", "")
    before = text[:match.start(1)].rstrip()
    if not _OPERATOR.search(expression) or (before and before[-1] in "-+*/×x÷"):
      continue  # not arithmetic, or only the tail of "5 kilograms * 2 - 9 = 1"
    if "÷" in expression and "/" in expression:
      continue  # "10÷1/2" is written meaning 10 ÷ (1/2): ambiguous, not checked
    computed, value = _evaluate(expression), _evaluate(written)
    if computed is None or value is None:
      continue
    candidates = [value]
    if text[match.end():match.end() + 1] == "%":  # "0.2*100 = 20%" and "20/100 = 20%"
      candidates.append(value / 100)
    if all(abs(computed - v) > STEP_ABS_TOL + 1e-9 * abs(computed) for v in candidates):
      errors.append(f"{expression} = {written} (is {computed:g})")
  return errors
