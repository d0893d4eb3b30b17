"""The data build (mind_jax.data.build) end to end: the demo config with the real
sentence encoder, restartable stages, bad input, judge drops, the student's
tokenizer check at train start, corrupt shards and the TFDS path.

Builds are small (a dozen questions) and, where the embedding values do not
matter, `build.embed_texts` is a fast deterministic fake; the module fixture
`demo_build` runs the real MiniLM encoder once.
"""
import hashlib
import json
import os
import shutil
import types

import numpy as np
import pytest
import tensorflow as tf
from transformers import AutoTokenizer

from mind_jax import faults, paths, tokenizer as tokenizer_lib
from mind_jax.config import PERSPECTIVE_PROMPTS, default_config, load_config
from mind_jax.data import build as build_lib, encode, records
from mind_jax.data.questions import BadRecord

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "data", "demo.py")
PERSPECTIVES = tuple(PERSPECTIVE_PROMPTS)
K = len(PERSPECTIVES)
DEMO_SIZE = 16    # questions of the real-encoder demo build
SMALL_SIZE = 12   # questions of the fake-embedding builds
FAKE_DIM = 16


# ------------------------------------------------------------------ helpers


def demo_config(*overrides, size=SMALL_SIZE):
  return load_config(DEMO, [f"questions.rg_size={size}", *overrides])


def fake_embed(cfg, out, texts):
  """Deterministic, unit-norm, text-dependent vectors; no model."""
  rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:FAKE_DIM], np.uint8) for t in texts]
  vectors = np.asarray(rows, np.float32) + 1.0
  return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def fast_embed(monkeypatch):
  monkeypatch.setattr(build_lib, "embed_texts", fake_embed)


class Killed(RuntimeError):
  pass


class RecordingTeacher:
  """Wraps a real teacher: logs the (question, perspective) keys it is asked
  for, and raises before batch number `log.fail_after` (a simulated kill)."""

  def __init__(self, inner, log):
    self.inner, self.log, self.name = inner, log, inner.name

  def generate(self, requests):
    if self.log.fail_after is not None and self.log.batches >= self.log.fail_after:
      raise Killed("simulated kill during generation")
    self.log.batches += 1
    self.log.keys += [(r.question.id, r.perspective) for r in requests]
    return self.inner.generate(requests)


@pytest.fixture
def teacher_log(monkeypatch):
  """Counts teachers made and generate calls; set .fail_after to kill the build."""
  log = types.SimpleNamespace(made=0, batches=0, keys=[], fail_after=None)
  real = build_lib.make_teacher

  def make(cfg, backend):
    log.made += 1
    return RecordingTeacher(real(cfg, backend), log)

  monkeypatch.setattr(build_lib, "make_teacher", make)
  return log


def reset(log):
  log.made, log.batches, log.keys, log.fail_after = 0, 0, [], None


def shard_bytes(out) -> dict[str, bytes]:
  return {name: open(os.path.join(out, name), "rb").read()
          for name in sorted(os.listdir(out)) if name.endswith(".tfrecord")}


def read_records(out) -> list[records.EncodedExample]:
  manifest = records.read_manifest(str(out))
  spec = records.spec_from_manifest(manifest)
  examples = []
  for shard in manifest["shards"]:
    path = os.path.join(out, shard["file"])
    got = [records.deserialize(d, spec)
           for d in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    assert len(got) == shard["records"], shard["file"]
    examples += got
  return sorted(examples, key=lambda ex: ex.example_index)


def rationales_file(out) -> str:
  stages = os.path.join(out, build_lib.STAGES)
  (name,) = [n for n in os.listdir(stages) if n.startswith("rationales-")]
  return os.path.join(stages, name)


def stage_data(out, name):
  with open(os.path.join(out, build_lib.STAGES, name)) as f:
    return json.load(f)["data"]


def all_keys(out):
  return {(q["id"], p) for q in stage_data(out, "questions.json")["questions"]
          for p in PERSPECTIVES}


def manifest_without_run_details(manifest):
  """The manifest as written (JSON), less the timing, the tokenizer's path and the
  teacher usage (what was asked over every run of this directory, a cost history)."""
  return {k: v for k, v in json.loads(json.dumps(manifest)).items()
          if k not in ("build_seconds", "tokenizer", "teacher_usage")}


def requests_asked(manifest) -> int:
  return sum(usage["requests"] for usage in manifest["teacher_usage"].values())


# ------------------------------------------------------------------ the demo, real encoder


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory):
  """configs/data/demo.py on DEMO_SIZE questions with the real MiniLM encoder.
  Read-only for the tests: copy it before changing anything."""
  out = str(tmp_path_factory.mktemp("demo_build") / "records")
  manifest = build_lib.build(demo_config(size=DEMO_SIZE), out)
  return out, manifest


def test_demo_build_end_to_end(demo_build):
  out, manifest = demo_build
  assert json.loads(json.dumps(manifest)) == records.read_manifest(out)
  counts, dropped = manifest["counts"], manifest["dropped"]

  # Counts per stage, each stage's drops accounting for the difference.
  assert counts["questions_in"] == counts["questions_loaded"] == DEMO_SIZE
  assert dropped["bad_input"] == {}
  assert counts["rationales_generated"] == DEMO_SIZE * K
  assert counts["rationales_correct"] + sum(dropped["rationales"].values()) == DEMO_SIZE * K
  assert counts["questions_after_judge"] == (DEMO_SIZE
                                             - dropped["questions"].get("no_correct_rationale", 0))
  assert counts["questions_after_resample"] == (counts["questions_after_judge"]
                                                - dropped["questions"].get("easy_downsampled", 0))
  assert counts["questions_written"] == (counts["questions_after_resample"]
                                         - dropped["questions"]["no_rationale_fits"])
  assert counts["questions_written"] == manifest["num_examples"] > 0
  assert dropped["questions"].get("easy_downsampled", 0) > 0  # the demo teacher is always right

  # Tokenizer, shapes, perspectives, encoder.
  tokenizer = AutoTokenizer.from_pretrained(os.path.join(out, "tokenizer"))
  assert manifest["tokenizer"]["name"] == os.path.join(out, "tokenizer")
  assert manifest["tokenizer"]["fingerprint"] == tokenizer_lib.fingerprint(tokenizer)
  assert manifest["tokenizer"]["vocab_size"] == len(tokenizer)
  max_len = demo_config().encode.max_len
  assert manifest["max_len"] == max_len
  assert manifest["num_perspectives"] == K == 8
  assert manifest["perspectives"] == list(PERSPECTIVES)
  assert manifest["record_spec"] == dict(num_perspectives=8, max_len=max_len, embed_dim=384)
  assert manifest["encoder"]["embed_dim"] == 384 and "MiniLM" in manifest["encoder"]["dir"]

  # Shards: record counts and sha256, checked by records.verify_shards too.
  assert len(manifest["shards"]) == 4
  for shard in manifest["shards"]:
    data = open(os.path.join(out, shard["file"]), "rb").read()
    assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    assert len(data) == shard["bytes"]
  assert sum(s["records"] for s in manifest["shards"]) == manifest["num_examples"]
  records.verify_shards(out, manifest)

  # Every record parses (tf.data parse_fn and deserialize); example_index is dense.
  spec = records.spec_from_manifest(manifest)
  parse = records.parse_fn(spec, with_text=True)
  paths = [os.path.join(out, s["file"]) for s in manifest["shards"]]
  parsed = list(tf.data.TFRecordDataset(paths).map(parse).as_numpy_iterator())
  assert sorted(int(p["example_index"]) for p in parsed) == list(range(manifest["num_examples"]))
  examples = read_records(out)
  assert [ex.example_index for ex in examples] == list(range(len(examples)))
  for i, shard in enumerate(manifest["shards"]):  # example i lives in shard i % num_shards
    assert shard["records"] == len(range(i, len(examples), len(manifest["shards"])))

  questions = {q["id"]: q for q in stage_data(out, "questions.json")["questions"]}
  verdicts = stage_data(out, "judged.json")
  generated = build_lib._read_generated(rationales_file(out))
  too_long = 0
  for ex in examples:
    q = questions[ex.question_id]
    assert (ex.question, ex.answer) == (q["question"], q["answer"])
    assert ex.perspectives == list(PERSPECTIVES)
    correct = [verdicts[q["id"]][p] == "correct" for p in PERSPECTIVES]
    assert ex.difficulty == pytest.approx(sum(correct) / K)
    prompt = encode.prompt_ids(tokenizer, q["question"])
    assert np.linalg.norm(ex.question_embedding) == pytest.approx(1.0, abs=1e-4)
    for k, name in enumerate(PERSPECTIVES):
      if not ex.present[k]:
        assert ex.rationales[k] == "" and ex.teachers[k] == "" and ex.lengths[k] == 0
        assert not ex.input_ids[k].any() and not ex.loss_mask[k].any()
        assert not ex.answer_mask[k].any() and not ex.rationale_embedding[k].any()
        if correct[k]:  # a correct rationale is absent only because it does not fit
          with pytest.raises(encode.SequenceTooLong):
            encode.encode_slot(tokenizer, q["question"], generated[(q["id"], name)]["rationale"],
                               q["answer"], manifest["max_len"])
          too_long += 1
        continue
      assert correct[k]
      assert ex.rationales[k] == generated[(q["id"], name)]["rationale"]
      assert ex.teachers[k] == "offline-demo-template"
      n = int(ex.lengths[k])
      ids, loss, answer = ex.input_ids[k], ex.loss_mask[k], ex.answer_mask[k]
      # The whole sequence, as encode_slot makes it: nothing cut.
      full = encode.encode_slot(tokenizer, q["question"], ex.rationales[k], q["answer"],
                                manifest["max_len"])
      np.testing.assert_array_equal(ids, full["input_ids"])
      assert ids[n - 1] == tokenizer.eos_token_id
      # The prompt is never scored; everything after it up to the length is.
      np.testing.assert_array_equal(ids[:len(prompt)], prompt)
      assert not loss[:len(prompt)].any()
      assert loss[len(prompt):n].all() and not loss[n:].any()
      # The answer tokens decode to the gold answer and are scored.
      assert (loss >= answer).all()
      assert tokenizer.decode(ids[answer == 1]).strip() == q["answer"]
      assert np.linalg.norm(ex.rationale_embedding[k]) == pytest.approx(1.0, abs=1e-4)
  if dropped["questions"]["no_rationale_fits"] == 0:
    assert too_long == dropped["slots_too_long"]

  # The stored vectors are the encoder's (real MiniLM, not the test fake).
  from mind_jax.models.encoder import SentenceEmbedder
  ex = examples[0]
  k = int(np.argmax(ex.present))
  want = SentenceEmbedder().embed([ex.question, ex.rationales[k]])
  np.testing.assert_allclose(ex.question_embedding, want[0], atol=1e-5)
  np.testing.assert_allclose(ex.rationale_embedding[k], want[1], atol=1e-5)


# ------------------------------------------------------------------ restartable


def test_second_run_reuses_every_stage(demo_build, teacher_log, monkeypatch, tmp_path):
  original, manifest = demo_build
  out = str(tmp_path / "copy")
  shutil.copytree(original, out)
  before = shard_bytes(out)

  def forbidden(*args, **kwargs):
    raise AssertionError("a stage was redone")

  import mind_jax.models.encoder as encoder_lib
  monkeypatch.setattr(encoder_lib, "SentenceEmbedder", forbidden)  # embeddings: from the cache
  monkeypatch.setattr(tokenizer_lib, "train_bpe", forbidden)       # tokenizer: the saved one
  monkeypatch.setattr(build_lib, "load_questions", forbidden)      # questions: the stage file
  monkeypatch.setattr(build_lib, "judge_rationale", forbidden)     # verdicts: the stage file
  again = build_lib.build(demo_config(size=DEMO_SIZE), out)
  assert teacher_log.made == teacher_log.batches == 0
  assert shard_bytes(out) == before
  assert manifest_without_run_details(again) == manifest_without_run_details(manifest)
  assert again["tokenizer"]["fingerprint"] == manifest["tokenizer"]["fingerprint"]


def test_killed_generation_resumes_without_regenerating(fast_embed, teacher_log, tmp_path):
  cfg = demo_config()
  batch = cfg.teacher.batch_size
  killed = str(tmp_path / "killed")
  teacher_log.fail_after = 2
  with pytest.raises(Killed):
    build_lib.build(cfg, killed)
  first = list(teacher_log.keys)
  assert len(first) == 2 * batch
  with open(rationales_file(killed)) as f:  # both finished batches were saved
    assert [tuple(json.loads(line)[k] for k in ("question_id", "perspective"))
            for line in f] == first
  assert not os.path.exists(os.path.join(killed, records.MANIFEST))

  reset(teacher_log)
  resumed = build_lib.build(cfg, killed)
  second = list(teacher_log.keys)
  assert not set(first) & set(second)  # finished (question, perspective) keys are not asked again
  assert len(second) == len(set(second))
  assert set(first) | set(second) == all_keys(killed)
  assert teacher_log.batches == -(-len(second) // batch)

  # The resumed build equals an uninterrupted one, byte for byte.
  reset(teacher_log)
  fresh = str(tmp_path / "fresh")
  uninterrupted = build_lib.build(cfg, fresh)
  assert len(teacher_log.keys) == SMALL_SIZE * K
  assert shard_bytes(killed) == shard_bytes(fresh)
  assert manifest_without_run_details(resumed) == manifest_without_run_details(uninterrupted)
  # The cost history counts the killed batch too: it was asked, and paid for.
  assert requests_asked(uninterrupted) == SMALL_SIZE * K
  assert requests_asked(resumed) == SMALL_SIZE * K + batch


def test_truncated_last_line_is_ignored_and_redone(fast_embed, teacher_log, tmp_path):
  cfg = demo_config()
  out = str(tmp_path / "records")
  build_lib.build(cfg, out)
  before = shard_bytes(out)
  path = rationales_file(out)
  lines = open(path, "rb").read().splitlines(keepends=True)
  last = json.loads(lines[-1])
  with open(path, "wb") as f:  # a kill in the middle of writing the last row
    f.write(b"".join(lines[:-1]) + lines[-1][:len(lines[-1]) // 2])

  reset(teacher_log)
  build_lib.build(cfg, out)
  assert teacher_log.keys == [(last["question_id"], last["perspective"])]
  assert shard_bytes(out) == before
  rows = [json.loads(line) for line in open(path)]  # the file is whole again
  assert len(rows) == len(lines) == SMALL_SIZE * K

  reset(teacher_log)  # and stays complete: a third run generates nothing
  build_lib.build(cfg, out)
  assert teacher_log.made == teacher_log.batches == 0
  assert shard_bytes(out) == before


def test_rewriter_writes_at_most_every_every_s(tmp_path):
  """paths.Rewriter, on a fake clock: a change is written once every_s have passed since
  the last write, or when forced; with nothing new, nothing is written."""
  path, now, lines, reads = str(tmp_path / "grows.jsonl"), [0.0], [], []
  def content():
    reads.append(now[0])
    return "".join(lines)
  rewriter = paths.Rewriter(path, content, every_s=60, clock=lambda: now[0])
  lines.append("a\n")
  rewriter.changed()
  now[0] = 59.0
  rewriter.sync()
  assert not os.path.exists(path)
  now[0] = 60.0
  rewriter.sync()
  assert open(path).read() == "a\n"
  lines.append("b\n")
  rewriter.changed()
  now[0] = 119.0
  rewriter.sync()
  assert open(path).read() == "a\n"
  rewriter.sync(force=True)
  assert open(path).read() == "a\nb\n"
  now[0] = 1000.0
  rewriter.sync(force=True)
  assert reads == [60.0, 119.0]


def test_remote_rationales_are_rewritten_whole_on_close(monkeypatch, tmp_path):
  """On an object store (a local file stands in: is_remote patched) the kept lines and the
  new ones are rewritten whole, not within write.remote_rationales_every_s of the last
  write, and on close."""
  path, kept = str(tmp_path / "rationales.jsonl"), '{"row": 1}\n'
  with open(path, "w") as f:
    f.write(kept + '{"row": 2, "cut')  # a kill in the middle of a row
  monkeypatch.setattr(paths, "is_remote", lambda p: True)
  with build_lib._RowWriter(path, len(kept), remote_every_s=3600.0) as writer:
    writer.write('{"row": 3}\n')
    writer.sync()
    assert open(path).read() == kept + '{"row": 2, "cut'
  assert open(path).read() == kept + '{"row": 3}\n'


def test_changed_settings_redo_only_what_they_touch(fast_embed, teacher_log, tmp_path):
  out = str(tmp_path / "records")
  first = build_lib.build(demo_config(), out)
  reset(teacher_log)
  second = build_lib.build(demo_config("resample.easy_keep_rate=1.0"), out)
  assert teacher_log.made == 0  # resampling comes after generation
  assert second["counts"]["questions_written"] > first["counts"]["questions_written"]
  assert "easy_downsampled" not in second["dropped"]["questions"]


def test_fewer_questions_rebuild_equals_a_fresh_build(fast_embed, teacher_log, tmp_path):
  """Shrinking the question set reuses the rationales, but counts, the trained
  BPE and the records are those of a fresh build of the smaller set."""
  out, fresh = str(tmp_path / "records"), str(tmp_path / "fresh")
  build_lib.build(demo_config(), out)
  reset(teacher_log)
  smaller = build_lib.build(demo_config(size=8), out)
  assert teacher_log.made == 0
  assert smaller["counts"]["rationales_generated"] == 8 * K
  fresh_manifest = build_lib.build(demo_config(size=8), fresh)
  assert manifest_without_run_details(fresh_manifest) == manifest_without_run_details(smaller)
  assert requests_asked(smaller) == requests_asked(fresh_manifest) + (SMALL_SIZE - 8) * K
  assert fresh_manifest["tokenizer"]["fingerprint"] == smaller["tokenizer"]["fingerprint"]
  assert shard_bytes(out) == shard_bytes(fresh)

  # Another student tokenizer: the saved BPE is not reused.
  reset(teacher_log)
  other = tokenizer_lib.train_bpe([q["question"] for q in stage_data(
      out, "questions.json")["questions"]], 400)
  other.save_pretrained(str(tmp_path / "other_tokenizer"))
  again = build_lib.build(demo_config(f"encode.tokenizer_path={tmp_path / 'other_tokenizer'}",
                                      size=8), out)
  assert again["tokenizer"]["fingerprint"] == tokenizer_lib.fingerprint(other)
  assert teacher_log.made == 0


def test_edited_input_files_are_read_again(fast_embed, tmp_path):
  """The questions and teacher JSONL files are inputs of their stages: editing
  them redoes the stages (and the judge) instead of reusing stale results."""
  out = str(tmp_path / "out")
  broken = b'{"id": "q3", "question": "What is 4 + 4?", '
  cfg = jsonl_config(tmp_path, GOOD + [broken])
  first = build_lib.build(cfg, out, skip_bad=True)
  assert first["dropped"]["bad_input"] == dict(malformed_json=1)

  # Fix the bad line; give q0 wrong rationales; change q1's gold answer.
  fixed = [GOOD[0], dict(GOOD[1], answer="1000"), GOOD[2], arithmetic_question(3)]

  def rationale(q, p):
    if q["id"] == "q0":
      return "Counting again, she ends up with 999 apples.\nThe answer is 999."
    return correct_rationale(arithmetic_question(int(q["id"][1:])), p)

  cfg = jsonl_config(tmp_path, fixed, rationale)
  second = build_lib.build(cfg, out, skip_bad=True)
  assert second["dropped"]["bad_input"] == {}
  assert second["counts"]["questions_loaded"] == 4
  assert second["dropped"]["rationales"] == dict(wrong_answer=2 * K)  # q0 and q1
  assert [ex.question_id for ex in read_records(out)] == ["q2", "q3"]


def test_embedding_cache_is_per_encoder_setting(monkeypatch, tmp_path):
  calls = []

  class FakeEmbedder:
    def __init__(self, model_dir=None):
      self.model_dir = model_dir

    def embed(self, texts, batch_size, max_length):
      calls.append((self.model_dir, max_length, list(texts)))
      return np.full((len(texts), 4), float(max_length), np.float32)

  import mind_jax.models.encoder as encoder_lib
  monkeypatch.setattr(encoder_lib, "SentenceEmbedder", FakeEmbedder)
  out = str(tmp_path)
  texts = ["one question", "one rationale", "one question"]
  first = build_lib.embed_texts(demo_config(), out, texts)
  assert first.shape == (3, 4) and len(calls) == 1 and calls[0][2] == ["one question",
                                                                          "one rationale"]
  np.testing.assert_array_equal(build_lib.embed_texts(demo_config(), out, texts[::-1]),
                                first[::-1])
  assert len(calls) == 1  # cached
  shorter = build_lib.embed_texts(demo_config("encode.encoder_max_length=128"), out, texts)
  assert len(calls) == 2 and (shorter == 128).all()  # other settings: embedded again
  build_lib.embed_texts(demo_config(), out, texts + ["new"])
  assert calls[-1][2] == ["new"]  # both settings stay cached side by side


# ------------------------------------------------------------------ bad input (JSONL)


def arithmetic_question(i):
  a, b = 3 + 7 * i, 11 + 5 * i
  return dict(id=f"q{i}", question=f"Ann has {a} apples and buys {b} more. How many apples "
              f"does she have now?", answer=str(a + b))


def correct_rationale(q, perspective):
  a, b = [int(w) for w in q["question"].split() if w.isdigit()]
  return (f"Thinking in the {perspective} way: she starts with {a} apples and adds {b}, "
          f"so {a} + {b} = {a + b}.\nThe answer is {a + b}.")


def write_lines(path, lines):
  with open(path, "wb") as f:
    f.write(b"\n".join(line if isinstance(line, bytes) else json.dumps(line).encode()
                       for line in lines) + b"\n")


def jsonl_config(tmp_path, questions, rationale=correct_rationale, *overrides):
  """jsonl questions (lines: dicts or raw bytes) and a JsonlTeacher file with
  rationale(question, perspective) for every question (None: no line)."""
  qpath, rpath = tmp_path / "questions.jsonl", tmp_path / "teacher.jsonl"
  write_lines(qpath, questions)
  rows, seen = [], set()
  for q in questions:  # rationales for the well-formed lines (first of each id)
    if not isinstance(q, dict) or not all(str(q.get(f, "")).strip()
                                          for f in ("id", "question", "answer")):
      continue
    if q["id"] in seen:
      continue
    seen.add(q["id"])
    for p in PERSPECTIVES:
      text = rationale(q, p)
      if text is not None:
        rows.append(dict(question_id=q["id"], perspective=p, rationale=text))
  write_lines(rpath, rows)
  return load_config(DEMO, [
      "questions.source=jsonl", f"questions.jsonl_path={qpath}", "teacher.backend=jsonl",
      f"teacher.jsonl_path={rpath}", "resample.easy_keep_rate=1.0", "write.num_shards=1",
      *overrides])


GOOD = [arithmetic_question(i) for i in range(3)]
BAD_LINES = {  # reason -> (line, the field the error names)
    "malformed_json": (b'{"id": "bad", "question": "What is 1 + 1?", "answer": ', None),
    "missing_field": (dict(id="bad", question="What is 1 + 1?"), "answer"),
    "empty_field": (dict(id="bad", question="  ", answer="2"), "question"),
    "duplicate_id": (dict(GOOD[0], question="Another question with the same id?"), "id"),
    "not_utf8": (b'{"id": "bad", "question": "caf\xe9 bill?", "answer": "2"}', None),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_bad_jsonl_line_fails_naming_file_and_line(kind, tmp_path):
  line, field = BAD_LINES[kind]
  cfg = jsonl_config(tmp_path, GOOD[:2] + [line] + GOOD[2:])
  with pytest.raises(BadRecord) as info:
    build_lib.build(cfg, str(tmp_path / "out"))
  message = str(info.value)
  assert f"{tmp_path / 'questions.jsonl'}, line 3" in message
  if field:
    assert f"field '{field}'" in message
  assert not os.path.exists(tmp_path / "out" / records.MANIFEST)


def test_skip_bad_skips_and_counts_bad_lines(fast_embed, tmp_path):
  lines = [GOOD[0]] + [line for line, _ in BAD_LINES.values()] + GOOD[1:]
  cfg = jsonl_config(tmp_path, lines)
  with pytest.raises(BadRecord, match="line 2"):  # without --skip_bad: the first bad line
    build_lib.build(cfg, str(tmp_path / "out"))
  manifest = build_lib.build(cfg, str(tmp_path / "out"), skip_bad=True)
  assert manifest["dropped"]["bad_input"] == dict(malformed_json=1, missing_field=2,
                                                  duplicate_id=1, not_utf8=1)
  assert manifest["counts"]["questions_in"] == len(lines)
  assert manifest["counts"]["questions_loaded"] == manifest["num_examples"] == len(GOOD)
  assert [ex.question_id for ex in read_records(str(tmp_path / "out"))] == ["q0", "q1", "q2"]


def test_too_long_slots_are_dropped_and_counted(fast_embed, tmp_path):
  filler = ("She counts the apples one by one, checking every basket twice, writing each "
            "number down carefully before moving to the next shelf of the old barn. ")

  def rationale(q, p):
    text = correct_rationale(q, p)
    long = q["id"] == "q1" or (q["id"] == "q2" and PERSPECTIVES.index(p) % 2)
    return filler * 4 + text if long else text

  cfg = jsonl_config(tmp_path, GOOD, rationale, "encode.max_len=96")
  manifest = build_lib.build(cfg, str(tmp_path / "out"))
  assert manifest["dropped"]["slots_too_long"] == K + K // 2
  assert manifest["dropped"]["questions"]["no_rationale_fits"] == 1  # q1: every slot too long
  examples = {ex.question_id: ex for ex in read_records(str(tmp_path / "out"))}
  assert sorted(examples) == ["q0", "q2"]
  assert examples["q0"].present.tolist() == [1] * K
  assert examples["q2"].present.tolist() == [1, 0] * (K // 2)
  tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "out" / "tokenizer"))
  for ex in examples.values():  # what is kept is whole: it ends with the answer and eos
    for k in np.flatnonzero(ex.present):
      n = ex.lengths[k]
      assert n <= 96 and ex.input_ids[k, n - 1] == tokenizer.eos_token_id
      assert tokenizer.decode(ex.input_ids[k][ex.answer_mask[k] == 1]).strip() == ex.answer


def test_question_with_every_rationale_wrong_is_dropped(fast_embed, tmp_path):
  def rationale(q, p):
    if q["id"] != "q1":
      return correct_rationale(q, p)
    wrong = int(q["answer"]) + 1
    return f"Adding the two amounts carelessly gives {wrong}.\nThe answer is {wrong}."

  manifest = build_lib.build(jsonl_config(tmp_path, GOOD, rationale), str(tmp_path / "out"))
  assert manifest["dropped"]["rationales"] == dict(wrong_answer=K)
  assert manifest["dropped"]["questions"]["no_correct_rationale"] == 1
  assert manifest["counts"]["questions_after_judge"] == len(GOOD) - 1
  assert [ex.question_id for ex in read_records(str(tmp_path / "out"))] == ["q0", "q2"]


def test_output_with_no_answer_is_judged_wrong(fast_embed, tmp_path):
  def rationale(q, p):
    if q["id"] == "q0" and p == "socratic":
      return "Hmm, what is asked here? I am not sure how to go on with this one."
    if q["id"] == "q0" and p == "analogy":
      return None  # the teacher produced nothing for this pair
    return correct_rationale(q, p)

  manifest = build_lib.build(jsonl_config(tmp_path, GOOD, rationale), str(tmp_path / "out"))
  assert manifest["dropped"]["rationales"] == dict(no_answer=1, no_output=1)
  assert manifest["counts"]["rationales_generated"] == len(GOOD) * K - 1
  q0 = read_records(str(tmp_path / "out"))[0]
  assert q0.question_id == "q0" and q0.difficulty == pytest.approx((K - 2) / K)
  present = dict(zip(PERSPECTIVES, q0.present.tolist()))
  assert present["socratic"] == present["analogy"] == 0 and sum(present.values()) == K - 2


WRONG_STEP_GOLD = ("Tom sells 11 pens at $0.5 each: 11*0.5=5 dollars.\n"
                   "Then he earns 3 dollars more: 5+3=8 dollars.\n#### 8")


def test_wrong_arithmetic_step_is_dropped(fast_embed, tmp_path):
  """A gsm_symbolic-like gold solution that rounds a step ("11*0.5=5") yet ends
  on the item's (equally wrong) answer: the final answer agrees, the step does not."""
  q = dict(id="q_step", question="Tom sells 11 pens at $0.5 each and then earns $3 more. "
           "How many dollars does he have?", answer="8")

  def rationale(question, p):
    return WRONG_STEP_GOLD if question["id"] == "q_step" else correct_rationale(question, p)

  manifest = build_lib.build(jsonl_config(tmp_path, GOOD + [q], rationale),
                             str(tmp_path / "out"))
  assert manifest["dropped"]["rationales"] == dict(wrong_step=K)
  assert manifest["dropped"]["questions"]["no_correct_rationale"] == 1
  assert "q_step" not in [ex.question_id for ex in read_records(str(tmp_path / "out"))]
  # With the check off, the same rationales pass the (final-answer) judge.
  off = build_lib.build(jsonl_config(tmp_path, GOOD + [q], rationale,
                                     "judge.check_arithmetic=false"), str(tmp_path / "off"))
  assert off["dropped"]["rationales"] == {}


@pytest.mark.parametrize("spacing", ["tight", "spaced"])
def test_template_teacher_rewrites_of_a_wrong_step_are_dropped(spacing, fast_embed, tmp_path):
  """The demo teacher rewrites such a gold solution into the 8 paradigms: no
  rationale that survives the judge may still state the wrong step."""
  gold = WRONG_STEP_GOLD
  if spacing == "spaced":  # as gsm_symbolic writes its steps: "35 × 3 = 105"
    gold = gold.replace("11*0.5=5", "11 * 0.5 = 5").replace("5+3=8", "5 + 3 = 8")
  q = dict(id="q_step", question="Tom sells 11 pens at $0.5 each and then earns $3 more. "
           "How many dollars does he have?", answer="8", rationale=gold)
  write_lines(tmp_path / "questions.jsonl", [q])
  cfg = load_config(DEMO, ["questions.source=jsonl",
                                     f"questions.jsonl_path={tmp_path / 'questions.jsonl'}",
                                     "write.num_shards=1", "resample.easy_keep_rate=1.0"])
  out = str(tmp_path / "out")
  try:
    manifest = build_lib.build(cfg, out)
  except ValueError as e:  # every rationale dropped: nothing to write
    assert "every question was dropped" in str(e)
    verdicts = stage_data(out, "judged.json")["q_step"]
    assert set(verdicts.values()) == {"wrong_step"}
    return
  verdicts = stage_data(out, "judged.json")["q_step"]
  assert manifest["dropped"]["rationales"]["wrong_step"] >= K - 2
  generated = build_lib._read_generated(rationales_file(out))
  for p, verdict in verdicts.items():
    if verdict == "correct":  # what survives does not state the wrong step in any form
      text = generated[("q_step", p)]["rationale"]
      assert "0.5 is 5" not in text and "0.5=5" not in text and "0.5 = 5" not in text, (p, text)


def test_unknown_override_field_fails_naming_it(tmp_path, caplog):
  with pytest.raises(faults.BadInput, match="questions.rg_sizee"):
    load_config(DEMO, ["questions.rg_sizee=3"])
  with pytest.raises(faults.BadInput, match="question"):
    load_config(DEMO, ["question.rg_size=3"])
  with pytest.raises(SystemExit):  # one line, exit code 2
    build_lib.main(["--config", DEMO, "--out", str(tmp_path / "out"), "--config.encode.maxlen=9"])
  assert "encode.maxlen" in caplog.text
  assert demo_config("encode.max_len=128").encode.max_len == 128  # a known field works


# ------------------------------------------------------------------ consumers of the records


def mind_train_config(records_dir, tokenizer_path=""):
  c = default_config()
  c.method = "mind"
  c.data.source = "records"
  c.data.records_dir = records_dir
  c.tokenizer.path = tokenizer_path
  c.model.vocab_size = 4096
  c.mesh.data = 1
  c.train.batch_size = 2
  c.train.steps = 1
  c.mind.ta_warmup_steps = 0
  c.train.async_checkpointing = False
  return c


def test_training_refuses_records_of_another_tokenizer(demo_build, tmp_path):
  from mind_jax import sharding, train as train_lib

  records_dir, manifest = demo_build
  other = tokenizer_lib.train_bpe(["A completely different corpus for another tokenizer."] * 5,
                                  300)
  other_dir = str(tmp_path / "other_tokenizer")
  other.save_pretrained(other_dir)
  other_fingerprint = tokenizer_lib.fingerprint(other)
  assert other_fingerprint != manifest["tokenizer"]["fingerprint"]
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError) as info:
    train_lib.train(mind_train_config(records_dir, other_dir), workdir)
  message = str(info.value)
  for part in (manifest["tokenizer"]["name"], manifest["tokenizer"]["fingerprint"],
               other_dir, other_fingerprint):
    assert part in message
  assert not os.path.isdir(os.path.join(workdir, "checkpoints"))

  # Following the advice (train with the records' tokenizer) works, in the same workdir.
  config = mind_train_config(records_dir)
  task = train_lib.mind_task(config, workdir, sharding.make_mesh(config.mesh))
  assert tokenizer_lib.fingerprint(task.tokenizer) == manifest["tokenizer"]["fingerprint"]
  assert task.names == tuple(PERSPECTIVES)


def test_corrupt_built_shard_is_named_by_the_reader(demo_build, tmp_path):
  from mind_jax.data import reader as reader_lib

  original, manifest = demo_build
  out = str(tmp_path / "records")
  shutil.copytree(original, out)
  truncated, flipped = manifest["shards"][1]["file"], manifest["shards"][2]["file"]
  data = open(os.path.join(out, truncated), "rb").read()
  with open(os.path.join(out, truncated), "wb") as f:
    f.write(data[:-100])
  with pytest.raises(records.CorruptShardError, match=f"{truncated}.*truncated"):
    reader_lib.RecordReader(out, batch_size=2, seed=0)

  shutil.copy(os.path.join(original, truncated), os.path.join(out, truncated))
  path = os.path.join(out, flipped)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2:len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2:
                                                                        len(data) // 2 + 8])
  open(path, "wb").write(bytes(data))
  reader = reader_lib.RecordReader(out, batch_size=2, seed=0)  # sizes match: starts
  with pytest.raises(records.CorruptShardError, match=flipped) as info:
    for _, _ in zip(range(10 * reader.batches_per_epoch), reader.iterator(0)):
      pass
  assert truncated not in str(info.value)


def test_tfds_dataset_reads_back(fast_embed, tmp_path):
  import tensorflow_datasets as tfds
  from mind_jax.data import tfds_builder

  out, tfds_dir = str(tmp_path / "records"), str(tmp_path / "tfds")
  manifest = build_lib.build(demo_config("write.num_shards=2"), out, tfds_dir=tfds_dir)
  builder = tfds.builder_from_directory(tfds_builder.make_builder(out, tfds_dir).data_dir)
  assert builder.info.splits["train"].num_examples == manifest["num_examples"]
  rows = {int(r["example_index"]): r for r in tfds.as_numpy(builder.as_dataset(split="train"))}
  assert sorted(rows) == list(range(manifest["num_examples"]))
  for ex in read_records(out):
    row = rows[ex.example_index]
    assert row["question_id"].decode() == ex.question_id
    for field in ("input_ids", "loss_mask", "answer_mask", "present", "lengths",
                  "question_embedding", "rationale_embedding"):
      np.testing.assert_array_equal(row[field], getattr(ex, field), err_msg=field)


def test_beam_directrunner_prepares_the_same_dataset_as_the_local_path(fast_embed, tmp_path):
  """The TFDS builder's Apache Beam path, run for real on Beam's DirectRunner, writes the
  same arrays as the local (generator) path."""
  import apache_beam as beam
  import tensorflow_datasets as tfds
  from mind_jax.data import tfds_builder

  out = str(tmp_path / "records")
  manifest = build_lib.build(demo_config("write.num_shards=3"), out)
  local = tfds_builder.make_builder(out, str(tmp_path / "local"))
  local.download_and_prepare()
  on_beam = tfds_builder.make_builder(out, str(tmp_path / "beam"), use_beam=True)
  on_beam.download_and_prepare(download_config=tfds.download.DownloadConfig(
      beam_runner=beam.runners.DirectRunner()))

  def rows(builder):
    ds = tfds.builder_from_directory(builder.data_dir).as_dataset(split="train")
    return {int(r["example_index"]): r for r in tfds.as_numpy(ds)}

  a, b = rows(local), rows(on_beam)
  assert sorted(a) == sorted(b) == list(range(manifest["num_examples"]))
  for index, row in a.items():
    assert set(row) == set(b[index])
    for field, value in row.items():
      np.testing.assert_array_equal(b[index][field], value, err_msg=f"{index}: {field}")
