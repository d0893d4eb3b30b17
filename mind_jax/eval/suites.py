"""Evaluation suites: named lists of `Question`s with one answer format each.

Procedural suites (reasoning-gym, offline, deterministic for a seed):

  id             held-out gsm_symbolic questions from the templates the training
                 questions used, drawn with another seed and DE-DUPLICATED against
                 the training questions by text: item i of a reasoning-gym dataset
                 uses Random(seed + i), so two seeds close together can repeat
                 questions.
  ood_templates  gsm_symbolic questions from HELD-OUT templates. `split_gsm_templates`
                 splits the templates into train / held-out sets deterministically;
                 train with `questions.rg_templates = <train set>` so the held-out
                 ones are unseen (the suite fails if the training questions used one).
  rg:<task>      any other reasoning-gym task, scored as numeric. The default OOD
                 tasks (DEFAULT_OOD_TASKS) were chosen from reasoning-gym 0.1.25 as
                 tasks whose answers are plain numbers the numeric judge checks
                 exactly, each testing a different kind of transfer:
                   basic_arithmetic    the same operations as gsm_symbolic but as bare
                                       expressions (negatives, parentheses, division):
                                       does the arithmetic survive without the story?
                   leg_counting        a different word-problem domain: multiply and
                                       add over a list, with commonsense facts (how
                                       many legs a spider has) supplied by the model.
                   decimal_arithmetic  non-integer answers (gsm_symbolic's are integers);
                                       the judge's relative tolerance (1e-6) accepts
                                       answers rounded to about 7 significant digits.
                 Not chosen: chain_sum (a subset of basic_arithmetic),
                 fraction_simplification (an unsimplified fraction is numerically
                 equal, so the numeric judge cannot score it), time_intervals and
                 calendar_arithmetic (answers are not numbers).

Arithmetic suites (the controlled testbed, mind_jax/data/arithmetic.py; offline,
deterministic). The training questions' Question.source names their families and
digits; each suite is drawn with its own seed and de-duplicated against them:

  arith_id          the training families and digits
  arith_ood_length  the training families with a first operand one digit longer than
                    any operand in training
  arith_ood_mix     chains of two trained operations, never trained together
                    (arithmetic.MIX_FAMILIES whose operators the training used:
                    a + b - c and a - b + c for add and sub), at the training digits

Benchmarks of the paper, from user-supplied JSONL files (we ship none; each
loader maps its file's fields, see BENCHMARKS):

  gsm8k       {"question", "answer": "...#### 42"}                     numeric
  math500     {"problem", "answer": LaTeX}                              math
  svamp       {"Body", "Question", "Answer"} or {"question", "answer"}  numeric
  csqa        {"question": {"stem", "choices": [{"label", "text"}]},    choice
               "answerKey"}
  strategyqa  {"question", "answer": true/false}                        yes_no
  gpqa        {"Question", "Correct Answer", "Incorrect Answer 1..3"}   choice (options
                                                                        shuffled per
                                                                        question, seeded)

A bad line fails with the file, the line and the field (questions.BadRecord).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from random import Random
from typing import Callable, Iterable, Iterator, Sequence

from mind_jax import faults, paths
from mind_jax.config import load_config, unknown_field
from mind_jax.data.questions import (BadRecord, Question, jsonl_lines, gsm_symbolic_templates,
                                     gsm_template, load_jsonl, load_questions, load_reasoning_gym)

DEFAULT_OOD_TASKS = ("basic_arithmetic", "leg_counting", "decimal_arithmetic")
# De-duplication draws more candidates until `size` new questions are found, at
# most this many times (size + number excluded): a task that repeats itself this
# much cannot supply the suite, and we say so instead of looping.
MAX_CANDIDATE_FACTOR = 8
CHOICE_LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Suite:
  name: str
  answer_format: str  # one of judge.ANSWER_FORMATS
  questions: tuple[Question, ...]

  def limited(self, limit: int | None) -> "Suite":
    """The first `limit` questions (all when None)."""
    return self if limit is None else replace(self, questions=self.questions[:limit])


# ------------------------------------------------------------ procedural suites


def _normalised(text: str) -> str:
  return " ".join(text.split())


def fresh_questions(load: Callable[[int], list[Question]], size: int,
                    exclude: Iterable[Question] = ()) -> list[Question]:
  """The first `size` questions of load(n) whose text is neither in `exclude` nor
  repeated. load(n) must return n questions whose first k do not depend on n
  (true of reasoning-gym: item i depends on seed + i only)."""
  excluded = {_normalised(q.question) for q in exclude}
  limit = MAX_CANDIDATE_FACTOR * (size + len(excluded))
  n = size
  while True:
    kept, seen = [], set(excluded)
    for q in load(n):
      text = _normalised(q.question)
      if text not in seen:
        seen.add(text)
        kept.append(q)
        if len(kept) == size:
          return kept
    if n >= limit:
      raise ValueError(f"only {len(kept)} of {size} questions are new among {n} candidates")
    n = min(2 * n, limit)


def split_gsm_templates(held_out_fraction: float = 0.25, seed: int = 0
                        ) -> tuple[list[int], list[int]]:
  """(train, held_out) gsm_symbolic template indices: a seeded shuffle of all
  usable templates, the first `held_out_fraction` of it held out. Both sorted."""
  if not 0 < held_out_fraction < 1:
    raise ValueError(f"held_out_fraction={held_out_fraction} must be in (0, 1)")
  templates = sorted(gsm_symbolic_templates())
  shuffled = list(templates)
  Random(seed).shuffle(shuffled)
  n_held_out = max(1, round(held_out_fraction * len(templates)))
  return sorted(shuffled[n_held_out:]), sorted(shuffled[:n_held_out])


def id_suite(train_questions: Sequence[Question], size: int, seed: int,
             name: str = "id", exclude: Sequence[Question] = ()) -> Suite:
  """gsm_symbolic questions from the training questions' templates (all templates
  when they record none), none of them a training question (nor in `exclude`)."""
  templates = sorted({t for t in map(gsm_template, train_questions) if t is not None}) or None
  questions = fresh_questions(
      lambda n: load_reasoning_gym("gsm_symbolic", n, seed, templates=templates), size,
      exclude=list(train_questions) + list(exclude))
  return Suite(name, "numeric", tuple(questions))


def dev_suite(spec: str, train_questions: Sequence[Question], test_suites: Sequence[Suite],
              size: int, seed: int) -> Suite:
  """"dev": held-out questions of the training distribution, in none of the test suites,
  to choose with (eval.perspective best / vote) without looking at the test results."""
  items = _spec_items(spec)
  exclude = [q for suite in test_suites for q in suite.questions]
  if "arith_id" in items or any(item in ARITH_SUITES for item in items):
    return arithmetic_suite("arith_id", train_questions, size, seed, "dev", exclude)
  if "id" in items:
    return id_suite(train_questions, size, seed, "dev", exclude)
  raise faults.BadInput(f"eval suites {spec!r}: a dev split is drawn like the ID suite, so "
                        "choosing a perspective needs 'id' or 'arith_id' among them")


def ood_template_suite(held_out_templates: Sequence[int], size: int, seed: int,
                       train_questions: Sequence[Question] = (),
                       name: str = "ood_templates") -> Suite:
  """gsm_symbolic questions from held-out templates; fails if a training question
  came from one of them (the suite would not be out of distribution)."""
  seen = sorted({gsm_template(q) for q in train_questions} & set(held_out_templates))
  if seen:
    raise ValueError(f"the training questions use held-out templates {seen}: train with "
                     "questions.rg_templates set to the train side of split_gsm_templates()")
  questions = fresh_questions(
      lambda n: load_reasoning_gym("gsm_symbolic", n, seed, templates=held_out_templates),
      size, exclude=train_questions)
  return Suite(name, "numeric", tuple(questions))


def rg_suite(task: str, size: int, seed: int, train_questions: Sequence[Question] = ()
             ) -> Suite:
  """A reasoning-gym task with numeric answers, named "rg:<task>"."""
  questions = fresh_questions(lambda n: load_reasoning_gym(task, n, seed), size,
                              exclude=train_questions)
  return Suite(f"rg:{task}", "numeric", tuple(questions))


ARITH_SUITES = ("arith_id", "arith_ood_length", "arith_ood_mix")


def arithmetic_suite(name: str, train_questions: Sequence[Question], size: int,
                     seed: int, rename: str = "", exclude: Sequence[Question] = ()) -> Suite:
  """One of ARITH_SUITES, from the distribution of the training questions; none of them
  a training question (nor in `exclude`)."""
  from mind_jax.data import arithmetic
  tags = {arithmetic.parse_source(q.source) for q in train_questions} - {None}
  if not tags:
    raise faults.BadInput(f"suite {name!r} needs training questions from the arithmetic "
                     "generator (questions.source='arithmetic')")
  families = sorted({family for family, _, _ in tags})
  low, high = min(t[1] for t in tags), max(t[2] for t in tags)
  # Mixes of the trained operators only: the shift is the mix, not a new operator.
  trained_ops = {op for family in families for op in arithmetic.FAMILIES[family]}
  mixes = [f for f in arithmetic.MIX_FAMILIES if set(arithmetic.FAMILIES[f]) <= trained_ops]
  settings = dict(arith_id=(families, None), arith_ood_length=(families, high + 1),
                  arith_ood_mix=(mixes, None))
  if name not in settings:
    raise ValueError(f"unknown arithmetic suite {name!r}: expected one of {ARITH_SUITES}")
  suite_families, first_digits = settings[name]
  if name == "arith_ood_mix" and (set(families) & set(arithmetic.MIX_FAMILIES) or not mixes):
    raise faults.BadInput(f"arith_ood_mix: the training families {families} already mix "
                          "operations or have no two operators to mix")
  questions = fresh_questions(
      lambda n: arithmetic.generate(suite_families, n, seed, low, high, first_digits), size,
      exclude=list(train_questions) + list(exclude))
  return Suite(rename or name, "numeric", tuple(questions))


# ------------------------------------------------------------ benchmark files


def _records(path: str | os.PathLike) -> Iterator[tuple[int, str, dict]]:
  """(line number, "file, line N", JSON object) of each non-blank line."""
  for number, where, raw in jsonl_lines(path):
    try:
      record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
      raise BadRecord(where, "not_utf8", f"not valid UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
      raise BadRecord(where, "malformed_json", f"malformed JSON ({e.msg}, column {e.colno})") \
          from None
    if not isinstance(record, dict):
      raise BadRecord(where, "malformed_json", f"expected a JSON object, got "
                     f"{type(record).__name__}")
    yield number, where, record


def _field(record: dict, where: str, field: str, numbers: bool = False,
           label: str | None = None) -> str:
  """A non-empty string field (numbers too when `numbers`: answers often are),
  stripped. `label` names it in errors when it is nested ("question.stem")."""
  value = record.get(field) if isinstance(record, dict) else None
  label = label or field
  if value is None or (isinstance(value, str) and not value.strip()):
    raise BadRecord(where, "missing_field", "missing or empty", label)
  allowed = (str, int, float) if numbers else (str,)
  if isinstance(value, bool) or not isinstance(value, allowed):
    raise BadRecord(where, "bad_type", f"expected a {'string or number' if numbers else 'string'}"
                   f", got {type(value).__name__}", label)
  return value.strip() if isinstance(value, str) else str(value)


def _question_id(record: dict, where: str, id_field: str, benchmark: str, line: int,
                 seen: dict[str, int]) -> str:
  """The record's own id when it has one, else "<benchmark>-<line>"; unique."""
  qid = (_field(record, where, id_field, numbers=True) if record.get(id_field) is not None
         else f"{benchmark}-{line}")
  if qid in seen:
    raise BadRecord(where, "duplicate_id", f"duplicate id {qid!r} (first on line {seen[qid]})",
                   id_field)
  seen[qid] = line
  return qid


def _lettered(stem: str, options: Sequence[str], letters: str) -> str:
  """The question with one "(A) option" line per option."""
  return stem + "\nAnswer Choices:\n" + "\n".join(
      f"({letter}) {text}" for letter, text in zip(letters, options))


def load_gsm8k(path, name: str = "gsm8k") -> Suite:
  questions, seen = [], {}
  for line, where, r in _records(path):
    solution = _field(r, where, "answer", numbers=True)
    rationale, sep, answer = solution.rpartition("####")
    if not sep or not answer.strip():
      raise BadRecord(where, "bad_value", "no '#### <answer>' at the end", "answer")
    questions.append(Question(_question_id(r, where, "id", name, line, seen),
                              _field(r, where, "question"), answer.strip(),
                              rationale=rationale.strip() or None, source=name))
  return Suite(name, "numeric", tuple(questions))


def load_math500(path, name: str = "math500") -> Suite:
  questions, seen = [], {}
  for line, where, r in _records(path):
    questions.append(Question(_question_id(r, where, "unique_id", name, line, seen),
                              _field(r, where, "problem"), _field(r, where, "answer", True),
                              rationale=r.get("solution") if isinstance(r.get("solution"), str)
                              else None, answer_format="math", source=name))
  return Suite(name, "math", tuple(questions))


def load_svamp(path, name: str = "svamp") -> Suite:
  """SVAMP's own fields (Body + Question) or a {question, answer} conversion."""
  questions, seen = [], {}
  for line, where, r in _records(path):
    if "Body" in r or "Question" in r:
      text = _field(r, where, "Body") + " " + _field(r, where, "Question")
      answer = _field(r, where, "Answer", numbers=True)
    else:
      text, answer = _field(r, where, "question"), _field(r, where, "answer", numbers=True)
    questions.append(Question(_question_id(r, where, "ID", name, line, seen), text, answer,
                              source=name))
  return Suite(name, "numeric", tuple(questions))


def load_csqa(path, name: str = "csqa") -> Suite:
  """CommonsenseQA: the stem with its lettered options; gold is answerKey."""
  questions, seen = [], {}
  for line, where, r in _records(path):
    q = r.get("question")
    if not isinstance(q, dict):
      raise BadRecord(where, "bad_type", "expected an object {stem, choices}", "question")
    stem = _field(q, where, "stem", label="question.stem")
    choices = q.get("choices")
    if not isinstance(choices, list) or not choices:
      raise BadRecord(where, "missing_field", "expected a non-empty list", "question.choices")
    labels = [_field(c, where, "label", label=f"question.choices[{i}].label")
              for i, c in enumerate(choices)]
    texts = [_field(c, where, "text", label=f"question.choices[{i}].text")
             for i, c in enumerate(choices)]
    if len(set(labels)) != len(labels) or any(len(x) != 1 or x not in CHOICE_LETTERS
                                                for x in labels):
      raise BadRecord(where, "bad_value", f"labels {labels} must be distinct letters "
                     f"from {CHOICE_LETTERS}", "question.choices")
    key = _field(r, where, "answerKey")
    if key not in labels:
      raise BadRecord(where, "bad_value", f"{key!r} is not one of the labels {labels}",
                     "answerKey")
    questions.append(Question(_question_id(r, where, "id", name, line, seen),
                              _lettered(stem, texts, labels), key, answer_format="choice",
                              choices="".join(labels), source=name))
  return Suite(name, "choice", tuple(questions))


_YES_NO = {True: "yes", False: "no", "true": "yes", "false": "no", "yes": "yes", "no": "no"}


def load_strategyqa(path, name: str = "strategyqa") -> Suite:
  """StrategyQA: answer true/false (or "yes"/"no") -> gold "yes"/"no"."""
  questions, seen = [], {}
  for line, where, r in _records(path):
    answer = r.get("answer")
    key = answer.strip().lower() if isinstance(answer, str) else answer
    if isinstance(key, (bool, str)) and key in _YES_NO:
      gold = _YES_NO[key]
    else:
      raise BadRecord(where, "bad_value", f"expected true/false or yes/no, got {answer!r}",
                     "answer")
    questions.append(Question(_question_id(r, where, "qid", name, line, seen),
                              _field(r, where, "question"), gold, answer_format="yes_no",
                              source=name))
  return Suite(name, "yes_no", tuple(questions))


GPQA_OPTIONS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                "Incorrect Answer 3")


def gpqa_order(question: str, seed: int) -> list[int]:
  """The option order of one GPQA question: a shuffle seeded by (seed, question
  text), so it does not depend on the file's order or on PYTHONHASHSEED."""
  order = list(range(len(GPQA_OPTIONS)))
  Random(f"{seed}:{question}").shuffle(order)
  return order


def load_gpqa(path, seed: int = 0, name: str = "gpqa") -> Suite:
  """GPQA(-Diamond): the four answers shuffled into A-D; gold is the correct one's letter."""
  questions, seen = [], {}
  for line, where, r in _records(path):
    stem = _field(r, where, "Question")
    options = [_field(r, where, field) for field in GPQA_OPTIONS]
    order = gpqa_order(stem, seed)
    letters = CHOICE_LETTERS[:len(options)]
    gold = letters[order.index(0)]  # where the correct answer (option 0) went
    questions.append(Question(_question_id(r, where, "Record ID", name, line, seen),
                              _lettered(stem, [options[i] for i in order], letters), gold,
                              answer_format="choice", choices=letters, source=name))
  return Suite(name, "choice", tuple(questions))


BENCHMARKS = {"gsm8k": load_gsm8k, "math500": load_math500, "svamp": load_svamp,
              "csqa": load_csqa, "strategyqa": load_strategyqa, "gpqa": load_gpqa}


def load_benchmark(name: str, path, gpqa_seed: int = 0) -> Suite:
  """The suite of one benchmark file; `name` is a key of BENCHMARKS."""
  if name not in BENCHMARKS:
    raise ValueError(f"unknown benchmark {name!r}: expected one of {sorted(BENCHMARKS)}")
  if name == "gpqa":
    return load_gpqa(path, seed=gpqa_seed)
  return BENCHMARKS[name](path)


# ------------------------------------------------------------ from a spec string


def training_questions(path: str) -> list[Question]:
  """The questions a run trained on, from a records directory built by
  mind_jax.data.build (its stages/questions.json), a data config file
  (configs/data/X.py: the questions are regenerated) or a questions JSONL. The records
  directory and the JSONL may be local or remote."""
  if paths.isdir(path):
    stage = paths.read_json(os.path.join(path, "stages", "questions.json"))
    return [Question(**q) for q in stage["data"]["questions"]]
  if path.endswith(".py"):
    return load_questions(load_config(path), skip_bad=False)[0]
  return load_jsonl(path)[0]


SUITE_NAMES = ("id", "ood", "ood_templates", *ARITH_SUITES)  # besides rg:<task>, <benchmark>=
SPEC_FORMS = (f"{', '.join(SUITE_NAMES)}, rg:<task> or <benchmark>=<file.jsonl> with a "
              f"benchmark of {', '.join(sorted(BENCHMARKS))}")


def _spec_items(spec: str) -> list[str]:
  return [item.strip() for item in spec.split(",") if item.strip()]


def check_spec(spec: str, ood_tasks: Sequence[str] = DEFAULT_OOD_TASKS) -> None:
  """Fails (faults.BadInput, one line) on the first item of a --suites spec that names no
  suite, before anything is loaded: a typo costs no checkpoint load."""
  items = _spec_items(spec)
  repeated = sorted({item for item in items if items.count(item) > 1})
  if repeated:
    raise faults.BadInput(f"--suites {spec}: {', '.join(repeated)} named twice")
  for item in items:
    name, sep, _ = (part.strip() for part in item.partition("="))
    if sep and name not in BENCHMARKS:
      unknown = unknown_field(name, BENCHMARKS, what="benchmark")
      raise faults.BadInput(f"--suites {spec}: {unknown} (benchmarks: "
                            f"{', '.join(sorted(BENCHMARKS))})")
    if not sep and name in BENCHMARKS:
      raise faults.BadInput(f"--suites {spec}: the benchmark {name} reads a file: write "
                            f"{name}=<file.jsonl>")
    if not sep and name.startswith("rg:"):
      _check_rg_task(name[3:], f"--suites {spec}", "rg:")
    elif not sep and name not in SUITE_NAMES:
      unknown = unknown_field(name, SUITE_NAMES, what="suite")
      raise faults.BadInput(f"--suites {spec}: {unknown} (suites: {SPEC_FORMS})")
    if name == "ood":
      for task in ood_tasks:
        _check_rg_task(task, f"--ood_tasks {','.join(ood_tasks)} (of --suites ood)")


def _check_rg_task(task: str, where: str, prefix: str = "") -> None:
  from reasoning_gym.factory import DATASETS  # imported here: only rg suites need it
  if task not in DATASETS:
    raise faults.BadInput(f"{where}: {unknown_field(task, sorted(DATASETS), prefix, 'task')} (a "
                          "reasoning-gym task)")


def build_suites(spec: str, train_questions: Sequence[Question] = (), id_size: int = 200,
                 id_seed: int = 1000, ood_size: int = 100, ood_seed: int = 2000,
                 ood_tasks: Sequence[str] = DEFAULT_OOD_TASKS, held_out_fraction: float = 0.25,
                 template_split_seed: int = 0, gpqa_seed: int = 0) -> list[Suite]:
  """Suites from a comma-separated spec: "id", "ood" (= "ood_templates" and
  "rg:<task>" for each of ood_tasks), "ood_templates", "rg:<task>", and
  "<benchmark>=<file.jsonl>" for each key of BENCHMARKS."""
  check_spec(spec, ood_tasks)
  suites = []
  for item in _spec_items(spec):
    name, sep, path = item.partition("=")
    if sep:
      suites.append(load_benchmark(name.strip(), path.strip(), gpqa_seed))
    elif item == "id":
      if not train_questions:
        raise faults.BadInput("suite 'id' needs the training questions (to hold them out): "
                              "eval.run reads them from --train_questions or the "
                              "checkpoint's data.records_dir")
      suites.append(id_suite(train_questions, id_size, id_seed))
    elif item in ("ood", "ood_templates"):
      held_out = split_gsm_templates(held_out_fraction, template_split_seed)[1]
      suites.append(ood_template_suite(held_out, ood_size, ood_seed, train_questions))
      if item == "ood":
        suites += [rg_suite(task, ood_size, ood_seed, train_questions) for task in ood_tasks]
    elif item in ARITH_SUITES:
      size, seed = (id_size, id_seed) if item == "arith_id" else (ood_size, ood_seed)
      suites.append(arithmetic_suite(item, train_questions, size, seed))
    else:  # rg:<task>, the one form check_spec lets through besides the above
      suites.append(rg_suite(item[3:], ood_size, ood_seed, train_questions))
  names = [s.name for s in suites]
  if len(set(names)) != len(names):
    raise ValueError(f"suite names repeat: {names}")
  return suites
