"""Rationales produced elsewhere (a vLLM run, an API), imported from JSONL.

One line per (question, perspective):
  {"question_id": "q1", "perspective": "socratic", "rationale": "...", "teacher": "qwen-72b"}
"teacher" is optional. A null or blank rationale means the teacher produced
nothing for that pair; so does a pair with no line at all.
"""
from __future__ import annotations

import json
import os

from mind_jax.data.questions import jsonl_lines
from mind_jax.data.teachers.base import TeacherRequest


class JsonlTeacher:

  def __init__(self, path: str | os.PathLike, name: str | None = None):
    """name: recorded as the teacher of the rationales without their own
    "teacher" field; default: the one "teacher" all lines share, else
    "jsonl:<file name>"."""
    self.path = os.fspath(path)
    self._entries = _read_entries(self.path)  # (question_id, perspective) -> (rationale, teacher)
    teachers = {teacher for _, teacher in self._entries.values() if teacher}
    if name is None:
      name = teachers.pop() if len(teachers) == 1 else f"jsonl:{os.path.basename(self.path)}"
    self.name = name

  def generate(self, requests: list[TeacherRequest]) -> list[str | None]:
    out = []
    for request in requests:
      rationale, _ = self._entries.get((request.question.id, request.perspective), (None, None))
      out.append(rationale if rationale and rationale.strip() else None)
    return out

  def teacher_of(self, request: TeacherRequest) -> str:
    """The teacher named on the request's line, else self.name."""
    _, teacher = self._entries.get((request.question.id, request.perspective), (None, None))
    return teacher or self.name


def _read_entries(path: str) -> dict[tuple[str, str], tuple[str | None, str | None]]:
  entries, first_line = {}, {}
  for number, where, raw in jsonl_lines(path):
    key, rationale, teacher = _parse_line(raw, where)
    if key in first_line:
      raise ValueError(f"{where}: duplicate entry for question_id={key[0]!r}, "
                       f"perspective={key[1]!r} (first on line {first_line[key]})")
    first_line[key] = number
    entries[key] = (rationale, teacher)
  return entries


def _parse_line(raw: bytes, where: str):
  try:
    record = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{where}: malformed line ({e})") from None
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
  for field in ("question_id", "perspective"):
    value = record.get(field)
    if field == "question_id" and isinstance(value, (int, float)) and not isinstance(value, bool):
      value = str(value)  # numeric ids, converted as load_jsonl converts them
    if not isinstance(value, str) or not value.strip():
      raise ValueError(f"{where}: field {field!r} must be a non-empty string, got {value!r}")
    record[field] = value
  if "rationale" not in record:
    raise ValueError(f"{where}: field 'rationale' is missing (null means no rationale)")
  for field in ("rationale", "teacher"):
    if record.get(field) is not None and not isinstance(record[field], str):
      raise ValueError(f"{where}: field {field!r} must be a string or null")
  return (record["question_id"], record["perspective"]), record["rationale"], record.get("teacher")
