"""Question sources: JSONL (every bad-input case), reasoning-gym, TFDS."""
import json
import logging

import numpy as np
import pytest

from mind_jax.data import questions as qmod
from mind_jax.data.questions import BadRecord, Question, load_jsonl, load_reasoning_gym, load_tfds


def write_lines(tmp_path, lines, name="q.jsonl"):
  """lines: dicts (dumped as JSON), str (written as is) or bytes."""
  path = tmp_path / name
  raw = [json.dumps(x).encode() if isinstance(x, dict) else
         x.encode() if isinstance(x, str) else x for x in lines]
  path.write_bytes(b"\n".join(raw) + b"\n")
  return path


GOOD = [{"id": "q1", "question": "1 + 1?", "answer": "2"},
        {"id": 7, "question": "Half of 5?", "answer": 2.5, "rationale": "5 / 2 = 2.5"},
        {"id": "q3", "question": "Is ice cold?", "answer": "yes", "answer_format": "yes_no"},
        {"id": "q4", "question": "Pick one", "answer": "B", "answer_format": "choice",
         "choices": "ABCD"}]


# ---------------------------------------------------------------------- JSONL


def test_load_jsonl_reads_fields_and_ignores_blank_lines(tmp_path):
  path = write_lines(tmp_path, [GOOD[0], "", "   ", *GOOD[1:]])
  got, skipped = load_jsonl(path)
  assert not skipped
  assert [q.id for q in got] == ["q1", "7", "q3", "q4"]  # numeric ids become strings
  assert got[0] == Question("q1", "1 + 1?", "2", source=str(path))
  assert got[1].answer == "2.5" and got[1].rationale == "5 / 2 = 2.5"
  assert got[2].answer_format == "yes_no"
  assert (got[3].answer_format, got[3].choices) == ("choice", "ABCD")


def test_default_answer_format(tmp_path):
  got, _ = load_jsonl(write_lines(tmp_path, [GOOD[0], GOOD[2]]), default_answer_format="math")
  assert [q.answer_format for q in got] == ["math", "yes_no"]


def test_malformed_json_names_file_and_line(tmp_path):
  path = write_lines(tmp_path, [GOOD[0], GOOD[1], '{"id": "q9", "question": '])
  with pytest.raises(BadRecord, match="line 3") as e:
    load_jsonl(path)
  assert str(path) in str(e.value) and e.value.reason == "malformed_json"


def test_not_an_object_is_malformed(tmp_path):
  with pytest.raises(BadRecord, match="line 1.*JSON object"):
    load_jsonl(write_lines(tmp_path, ['["q1", "1 + 1?", "2"]']))


@pytest.mark.parametrize("field", ["id", "question", "answer"])
@pytest.mark.parametrize("value", [None, "", "  "])
def test_missing_or_empty_field_is_named(tmp_path, field, value):
  record = dict(GOOD[0])
  if value is None:
    del record[field]
  else:
    record[field] = value
  with pytest.raises(BadRecord, match=f"line 2, field '{field}': missing or empty") as e:
    load_jsonl(write_lines(tmp_path, [GOOD[2], record]))
  assert e.value.field == field and e.value.reason == "missing_field"


@pytest.mark.parametrize("field,value", [("id", ["q1"]), ("answer", {"v": 2}), ("id", True),
                                         ("question", 5), ("rationale", 3)])
def test_wrong_type_is_named(tmp_path, field, value):
  with pytest.raises(BadRecord, match=f"line 1, field '{field}'") as e:
    load_jsonl(write_lines(tmp_path, [dict(GOOD[0], **{field: value})]))
  assert e.value.reason == "bad_type"


def test_unknown_answer_format(tmp_path):
  with pytest.raises(BadRecord, match="field 'answer_format'.*'essay'"):
    load_jsonl(write_lines(tmp_path, [dict(GOOD[0], answer_format="essay")]))


def test_duplicate_id_names_both_lines(tmp_path):
  path = write_lines(tmp_path, [GOOD[0], GOOD[1], GOOD[2], dict(GOOD[2], question="again")])
  with pytest.raises(BadRecord, match=r"line 4, field 'id': duplicate question id 'q3' "
                                     r"\(first on line 3\)"):
    load_jsonl(path)


def test_numeric_and_string_ids_collide(tmp_path):
  with pytest.raises(BadRecord, match="duplicate question id '7'"):
    load_jsonl(write_lines(tmp_path, [GOOD[1], dict(GOOD[0], id="7")]))


def test_not_utf8_names_the_line(tmp_path):
  bad = '{"id": "q2", "question": "caf'.encode() + b"\xe9" + b'?", "answer": "1"}'
  path = write_lines(tmp_path, [GOOD[0], bad, GOOD[2]])
  with pytest.raises(BadRecord, match="line 2.*not valid UTF-8") as e:
    load_jsonl(path)
  assert str(path) in str(e.value) and e.value.reason == "not_utf8"


def test_skip_bad_counts_every_reason_and_warns(tmp_path, caplog):
  lines = [GOOD[0],
           "{not json",                                            # malformed_json
           {"id": "q5", "question": "", "answer": "1"},            # missing_field
           {"id": "q6", "answer": "1"},                            # missing_field
           dict(GOOD[0], question="dup"),                          # duplicate_id
           b'{"id": "q7", "question": "\xff", "answer": "1"}',     # not_utf8
           {"id": ["x"], "question": "?", "answer": "1"},          # bad_type
           GOOD[2]]
  with caplog.at_level(logging.WARNING, logger="mind_jax.data.questions"):
    got, skipped = load_jsonl(write_lines(tmp_path, lines), skip_bad=True)
  assert [q.id for q in got] == ["q1", "q3"]
  assert skipped == {"malformed_json": 1, "missing_field": 2, "duplicate_id": 1,
                     "not_utf8": 1, "bad_type": 1}
  assert "skipped 6 bad line(s)" in caplog.text and "missing_field=2" in caplog.text
  assert "line 3" in caplog.text  # the first error of each kind is quoted


def test_answer_formats_match_the_judge():
  from mind_jax.data import judge
  assert qmod.ANSWER_FORMATS == judge.ANSWER_FORMATS


# -------------------------------------------------------------- reasoning-gym


def test_reasoning_gym_is_deterministic_and_keeps_the_gold_solution():
  a = load_reasoning_gym("gsm_symbolic", size=6, seed=3)
  assert a == load_reasoning_gym("gsm_symbolic", size=6, seed=3)
  assert a != load_reasoning_gym("gsm_symbolic", size=6, seed=4)
  assert [q.id for q in a] == [f"gsm_symbolic-3-{i}" for i in range(6)]
  for q in a:
    assert q.answer_format == "numeric"
    assert "#### " in q.rationale  # metadata["answer_cot"]
    assert qmod.gsm_template(q) in qmod.gsm_symbolic_templates()


def test_gsm_symbolic_template_subset():
  subset = [0, 11, 45]
  got = load_reasoning_gym("gsm_symbolic", size=30, seed=0, templates=subset)
  templates = [qmod.gsm_template(q) for q in got]
  assert set(templates) == set(subset)
  assert got == load_reasoning_gym("gsm_symbolic", size=30, seed=0, templates=[45, 0, 11])
  # Each template's questions really come from that generator: template 0 is
  # the peel-and-saute one.
  assert all("peel" in q.question for q, t in zip(got, templates) if t == 0)
  other = load_reasoning_gym("gsm_symbolic", size=30, seed=0, templates=[1, 2])
  assert {qmod.gsm_template(q) for q in other} <= {1, 2}


def test_gsm_symbolic_bad_templates():
  with pytest.raises(ValueError, match=r"\[32\] are not usable.*tasks_need_fix"):
    load_reasoning_gym("gsm_symbolic", size=2, seed=0, templates=[0, 32])
  with pytest.raises(ValueError, match="not usable"):
    load_reasoning_gym("gsm_symbolic", size=2, seed=0, templates=[])
  with pytest.raises(ValueError, match="only supported for gsm_symbolic"):
    load_reasoning_gym("basic_arithmetic", size=2, seed=0, templates=[0])


def test_gsm_template_of_other_sources_is_none():
  assert qmod.gsm_template(Question("a", "q", "1", source="data.jsonl")) is None


# ----------------------------------------------------------------------- TFDS

ROWS = [("What is 2 + 3?", 5, "a"), ("What is 4 * 2?", 8, "b"), ("", 1, "c")]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A tiny TFDS dataset, prepared from memory ("tiny_questions", splits
  train = the first two rows, bad = all three, the last with an empty question)."""
  import tensorflow_datasets as tfds

  class TinyQuestions(tfds.core.GeneratorBasedBuilder):
    # A one-part module name: for a builder inside a package, tfds 4.9.10 needs
    # the importlib_resources backport (declared only for Python < 3.9), which
    # is not installed.
    __module__ = "tiny_questions_builder"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "problem": tfds.features.Text(), "solution": np.int64, "key": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(ROWS[:2]), "bad": self._generate_examples(ROWS)}

    def _generate_examples(self, rows):
      for i, (problem, solution, key) in enumerate(rows):
        yield i, {"problem": problem, "solution": solution, "key": key}

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  TinyQuestions(data_dir=data_dir).download_and_prepare()
  return data_dir


def test_load_tfds(tfds_dir):
  got = load_tfds("tiny_questions", "train", "problem", "solution", data_dir=tfds_dir)
  assert sorted((q.question, q.answer) for q in got) == [("What is 2 + 3?", "5"),
                                                        ("What is 4 * 2?", "8")]
  assert sorted(q.id for q in got) == ["tiny_questions-train-0", "tiny_questions-train-1"]
  assert all(q.source == "tfds:tiny_questions/train" and q.rationale is None for q in got)
  keyed = load_tfds("tiny_questions", "train", "problem", "solution", data_dir=tfds_dir,
                    id_field="key", max_examples=1)
  assert len(keyed) == 1 and keyed[0].id in ("a", "b")


def test_load_tfds_errors(tfds_dir):
  with pytest.raises(BadRecord, match=r"record \d, field 'answer': no such feature"):
    load_tfds("tiny_questions", "train", "problem", "answer", data_dir=tfds_dir)
  with pytest.raises(BadRecord, match="field 'problem': empty"):
    load_tfds("tiny_questions", "bad", "problem", "solution", data_dir=tfds_dir)
