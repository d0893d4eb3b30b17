"""Question sources for the rationale pipeline: JSONL files, reasoning-gym
procedural datasets and users' TFDS datasets, all returned as `Question`s.

Bad input fails loudly with the file, the line (or record index) and the field;
`skip_bad=True` skips such lines instead, but counts them by reason and logs the
counts, so nothing is ever dropped silently.
"""
from __future__ import annotations

import collections
import json
import logging
import os
from dataclasses import dataclass
from random import Random
from typing import Iterator, Sequence

from mind_jax import faults, paths

log = logging.getLogger(__name__)

# The answer formats the judge understands (mind_jax.data.judge.ANSWER_FORMATS;
# a test checks the two agree).
ANSWER_FORMATS = ("numeric", "math", "choice", "yes_no")
REQUIRED_FIELDS = ("id", "question", "answer")


@dataclass(frozen=True)
class Question:
  id: str
  question: str
  answer: str
  rationale: str | None = None  # a gold step-by-step solution, when the source has one
  answer_format: str = "numeric"  # one of ANSWER_FORMATS
  choices: str = ""  # the option letters of a "choice" question, e.g. "ABCDE"
  source: str = ""  # where it came from, e.g. "gsm_symbolic/template=11"


class BadRecord(faults.BadInput):
  """A bad line or record of an input file (one line, exit 2, as any bad input).
  `reason` is the key it is counted under with skip_bad."""

  def __init__(self, where: str, reason: str, detail: str, field: str | None = None):
    self.where, self.reason, self.field = where, reason, field
    field_part = f", field '{field}'" if field else ""
    super().__init__(f"{where}{field_part}: {detail}")


# ---------------------------------------------------------------------- JSONL


def _scalar_text(value, where: str, field: str) -> str:
  """id and answer may be strings or numbers (GSM8K answers often are)."""
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    raise BadRecord(where, "bad_type", f"expected a string or a number, got "
                   f"{type(value).__name__}", field)
  return value if isinstance(value, str) else str(value)


def _optional_text(record: dict, where: str, field: str, default: str | None) -> str | None:
  value = record.get(field)
  if value is None:
    return default
  if not isinstance(value, str):
    raise BadRecord(where, "bad_type", f"expected a string, got {type(value).__name__}", field)
  return value


def question_from_record(record, where: str, default_answer_format: str = "numeric",
                         source: str = "") -> Question:
  """One decoded JSON object -> Question; BadRecord names `where` and the field."""
  if not isinstance(record, dict):
    raise BadRecord(where, "malformed_json", f"expected a JSON object, got {type(record).__name__}")
  for field in REQUIRED_FIELDS:
    value = record.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
      raise BadRecord(where, "missing_field", "missing or empty", field)
  if not isinstance(record["question"], str):
    raise BadRecord(where, "bad_type", f"expected a string, got "
                   f"{type(record['question']).__name__}", "question")
  answer_format = _optional_text(record, where, "answer_format", default_answer_format)
  if answer_format not in ANSWER_FORMATS:
    raise BadRecord(where, "bad_value", f"{answer_format!r} is not one of {ANSWER_FORMATS}",
                   "answer_format")
  return Question(id=_scalar_text(record["id"], where, "id"),
                  question=record["question"],
                  answer=_scalar_text(record["answer"], where, "answer"),
                  rationale=_optional_text(record, where, "rationale", None),
                  answer_format=answer_format,
                  choices=_optional_text(record, where, "choices", ""),
                  source=source)


def _parse_line(raw: bytes, where: str, default_answer_format: str, source: str) -> Question:
  try:
    text = raw.decode("utf-8")  # strict, per line, so the bad line is the one named
  except UnicodeDecodeError as e:
    raise BadRecord(where, "not_utf8", f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
  try:
    record = json.loads(text)
  except json.JSONDecodeError as e:
    raise BadRecord(where, "malformed_json", f"malformed JSON ({e.msg}, column {e.colno})") from None
  return question_from_record(record, where, default_answer_format, source)


def _log_skipped(path, skipped: collections.Counter, first_error: dict) -> None:
  if not skipped:
    return
  counts = ", ".join(f"{reason}={n}" for reason, n in sorted(skipped.items()))
  examples = "; ".join(first_error[reason] for reason in sorted(first_error))
  log.warning("%s: skipped %d bad line(s): %s (first of each: %s)",
              path, sum(skipped.values()), counts, examples)


def jsonl_lines(path: str | os.PathLike) -> Iterator[tuple[int, str, bytes]]:
  """(line number, "file, line N", raw bytes) of each non-blank line. Bytes, so
  that a line that is not UTF-8 is reported with its number by the caller. The
  file may be remote (gs://...)."""
  with paths.open(os.fspath(path), "rb") as f:
    lines = f.read().split(b"\n")
  for number, raw in enumerate(lines, start=1):
    if raw.strip():
      yield number, f"{path}, line {number}", raw


def load_jsonl(path: str | os.PathLike, skip_bad: bool = False,
               default_answer_format: str = "numeric"
               ) -> tuple[list[Question], collections.Counter]:
  """Questions from a JSONL file: one {id, question, answer[, rationale,
  answer_format, choices]} object per line; blank lines are ignored.

  Returns (questions, skipped) where `skipped` counts the lines skipped by
  reason ("malformed_json", "missing_field", "bad_type", "bad_value",
  "duplicate_id", "not_utf8"); it is empty unless skip_bad.
  """
  questions, first_line = [], {}
  skipped, first_error = collections.Counter(), {}
  for number, where, raw in jsonl_lines(path):
    try:
      question = _parse_line(raw, where, default_answer_format, source=os.fspath(path))
      if question.id in first_line:
        raise BadRecord(where, "duplicate_id", f"duplicate question id {question.id!r} "
                       f"(first on line {first_line[question.id]})", "id")
    except BadRecord as e:
      if not skip_bad:
        raise
      skipped[e.reason] += 1
      first_error.setdefault(e.reason, str(e))
      continue
    first_line[question.id] = number
    questions.append(question)
  _log_skipped(path, skipped, first_error)
  return questions, skipped


# -------------------------------------------------------------- reasoning-gym


def gsm_template(question: Question) -> int | None:
  """The gsm_symbolic template (generator) index recorded in Question.source."""
  _, sep, index = question.source.partition("/template=")
  return int(index) if sep else None


def _restrict_gsm_templates(dataset, templates: Sequence[int], seed: int) -> None:
  """reasoning-gym 0.1.25's GSMSymbolicDatasetConfig has no template option:
  the dataset draws `task_indices = Random(seed).choices(tasks_ok, k=size)` in
  __init__, and item i uses generator task_indices[i] with Random(seed + i). We
  redraw task_indices the same way from the requested subset."""
  from reasoning_gym.arithmetic.gsm_symbolic import gsm_symbolic
  if not hasattr(dataset, "task_indices"):
    raise RuntimeError("this reasoning-gym version has no GSMSymbolicDataset.task_indices; "
                       "the templates= restriction needs updating")
  unknown = sorted(set(templates) - set(gsm_symbolic.tasks_ok))
  if unknown or not templates:
    raise ValueError(f"gsm_symbolic templates {unknown or list(templates)} are not usable: "
                     f"valid ones are reasoning_gym's tasks_ok {gsm_symbolic.tasks_ok} "
                     f"(it marks {gsm_symbolic.tasks_need_fix} as tasks_need_fix)")
  dataset.task_indices = Random(seed).choices(sorted(set(templates)), k=len(dataset))


def gsm_symbolic_templates() -> list[int]:
  """All usable gsm_symbolic template indices (reasoning-gym's tasks_ok)."""
  from reasoning_gym.arithmetic.gsm_symbolic import gsm_symbolic
  return list(gsm_symbolic.tasks_ok)


def load_reasoning_gym(name: str, size: int, seed: int, templates: Sequence[int] | None = None,
                       answer_format: str = "numeric", rationale_key: str = "answer_cot",
                       **kwargs) -> list[Question]:
  """`size` items of a reasoning-gym dataset, deterministic for `seed`.

  The item's gold step-by-step solution (metadata[rationale_key], gsm_symbolic:
  "answer_cot") becomes Question.rationale (None where the dataset has none).
  templates: gsm_symbolic only, the generator indices to draw from (see
  gsm_symbolic_templates()); each question's template is recorded in
  Question.source as "gsm_symbolic/template=N" (read it with gsm_template()).
  Other kwargs go to the dataset's config.
  """
  import reasoning_gym
  dataset = reasoning_gym.create_dataset(name, size=size, seed=seed, **kwargs)
  if templates is not None:
    if name != "gsm_symbolic":
      raise ValueError(f"templates= is only supported for gsm_symbolic, not {name!r}")
    _restrict_gsm_templates(dataset, templates, seed)
  questions = []
  for index in range(size):
    item = dataset[index]
    source = name
    if name == "gsm_symbolic":
      source = f"{name}/template={dataset.task_indices[index]}"
    questions.append(Question(id=f"{name}-{seed}-{index}", question=item["question"],
                              answer=str(item["answer"]),
                              rationale=item["metadata"].get(rationale_key),
                              answer_format=answer_format, source=source))
  return questions


# ----------------------------------------------------------------------- TFDS


def _text(value) -> str:
  """A TFDS scalar (bytes for tf.string, numpy numbers otherwise) as text."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if hasattr(value, "item"):  # numpy scalar -> Python scalar, so 3 prints as "3"
    value = value.item()
  return str(value)


def load_tfds(name: str, split: str, question_field: str, answer_field: str,
              data_dir: str | None = None, id_field: str | None = None,
              rationale_field: str | None = None, answer_format: str = "numeric",
              max_examples: int | None = None, download: bool = False) -> list[Question]:
  """Questions from a TFDS dataset (a registered builder, e.g. one of yours).

  download=False: the dataset must already be prepared in data_dir (`tfds
  build`); True lets TFDS download and prepare it. Ids come from id_field, or
  are f"{name}-{split}-{index}". Records are numbered from 0 in error messages.
  """
  import tensorflow_datasets as tfds
  if answer_format not in ANSWER_FORMATS:
    raise ValueError(f"answer_format {answer_format!r} is not one of {ANSWER_FORMATS}")
  dataset = tfds.load(name, split=split, data_dir=data_dir, download=download)
  fields = {"question": question_field, "answer": answer_field,
            "id": id_field, "rationale": rationale_field}
  questions, first_index = [], {}
  for index, example in enumerate(tfds.as_numpy(dataset)):
    if max_examples is not None and index >= max_examples:
      break
    where = f"TFDS {name}/{split}, record {index}"
    values = {}
    for role, field in fields.items():
      if field is None:
        continue
      if field not in example:
        raise BadRecord(where, "missing_field", f"no such feature (features: "
                       f"{sorted(example)})", field)
      values[role] = _text(example[field])
      if role != "rationale" and not values[role].strip():
        raise BadRecord(where, "missing_field", "empty", field)
    qid = values.get("id", f"{name}-{split}-{index}")
    if qid in first_index:
      raise BadRecord(where, "duplicate_id", f"duplicate question id {qid!r} "
                     f"(first in record {first_index[qid]})", id_field)
    first_index[qid] = index
    questions.append(Question(id=qid, question=values["question"], answer=values["answer"],
                              rationale=values.get("rationale"), answer_format=answer_format,
                              source=f"tfds:{name}/{split}"))
  return questions


def load_questions(cfg, skip_bad: bool) -> tuple[list[Question], dict]:
  """The questions a data config (configs/data/X.py) names in cfg.questions, and the
  counts of bad lines skipped."""
  q = cfg.questions
  if q.source == "jsonl" and q.jsonl_format:  # a benchmark's file, read as evaluation reads it
    from mind_jax.eval.suites import load_benchmark
    return list(load_benchmark(q.jsonl_format, q.jsonl_path).questions), {}
  if q.source == "jsonl":
    items, skipped = load_jsonl(q.jsonl_path, skip_bad=skip_bad or q.skip_bad,
                                default_answer_format=q.answer_format)
    return items, dict(skipped)
  if q.source == "reasoning_gym":
    templates = list(q.rg_templates) or None
    return load_reasoning_gym(q.rg_name, q.rg_size, q.rg_seed, templates=templates), {}
  if q.source == "arithmetic":
    from mind_jax.data import arithmetic  # it builds on Question: imported here, not above
    return arithmetic.generate(tuple(q.arith_families), q.arith_size, q.arith_seed,
                               q.arith_min_digits, q.arith_max_digits), {}
  if q.source == "tfds":
    return load_tfds(q.tfds_name, q.tfds_split, q.tfds_question_field, q.tfds_answer_field,
                     data_dir=q.tfds_data_dir or None, answer_format=q.answer_format), {}
  raise ValueError(f"questions.source={q.source!r}: expected reasoning_gym, arithmetic, jsonl "
                   "or tfds")
