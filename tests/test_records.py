"""Records: serialize/parse round trip, deterministic shards, manifest, corrupt
and truncated shards named in the error, interrupted writes, the TFDS builder."""
import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from mind_jax.data import reader as reader_lib, records

SPEC = records.RecordSpec(num_perspectives=3, max_len=16, embed_dim=8)
NUM_EXAMPLES, NUM_SHARDS = 50, 4


def build(out_dir, examples=None, num_shards=NUM_SHARDS, extra=None):
  examples = examples if examples is not None else records.synthetic_examples(
      NUM_EXAMPLES, SPEC, seed=0, vocab_size=100)
  shards = records.write_shards(examples, str(out_dir), num_shards, SPEC)
  return records.write_manifest(str(out_dir), dict(extra or {}), shards, SPEC)


def assert_examples_equal(a: records.EncodedExample, b: records.EncodedExample):
  for field in dataclasses.fields(records.EncodedExample):
    x, y = getattr(a, field.name), getattr(b, field.name)
    if isinstance(x, np.ndarray):
      np.testing.assert_array_equal(x, y, err_msg=field.name)
    else:
      assert x == pytest.approx(y) if isinstance(x, float) else x == y, field.name


def assert_parsed_matches(parsed: dict, ex: records.EncodedExample, with_text: bool):
  np.testing.assert_array_equal(parsed["input_ids"], ex.input_ids)
  np.testing.assert_array_equal(parsed["attention_mask"],
                                np.arange(SPEC.max_len)[None, :] < ex.lengths[:, None])
  np.testing.assert_array_equal(parsed["loss_mask"], ex.loss_mask)
  np.testing.assert_array_equal(parsed["answer_mask"], ex.answer_mask)
  np.testing.assert_array_equal(parsed["present"], ex.present)
  np.testing.assert_array_equal(parsed["question_embedding"], ex.question_embedding)
  np.testing.assert_array_equal(parsed["rationale_embedding"], ex.rationale_embedding)
  assert int(parsed["example_index"]) == ex.example_index
  if with_text:
    assert parsed["question_id"] == ex.question_id.encode()
    assert parsed["question"] == ex.question.encode()
    assert parsed["answer"] == ex.answer.encode()
    assert parsed["difficulty"] == pytest.approx(ex.difficulty)
    for field in ("perspectives", "teachers", "rationales"):
      assert [v.decode() for v in parsed[field]] == getattr(ex, field)
  else:
    assert not set(records.TEXT_FIELDS) & set(parsed)


def test_round_trip_serialize_parse():
  examples = records.synthetic_examples(8, SPEC, seed=1, vocab_size=100)
  data = [records.serialize(ex, SPEC) for ex in examples]
  for with_text in (False, True):
    parse = records.parse_fn(SPEC, with_text=with_text)
    one = {k: v.numpy() for k, v in parse(tf.constant(data[0])).items()}
    assert one["input_ids"].shape == (3, 16) and one["input_ids"].dtype == np.int32
    assert one["present"].dtype == np.float32 and one["example_index"].shape == ()
    assert_parsed_matches(one, examples[0], with_text)
    batch = {k: v.numpy() for k, v in parse(tf.constant(data)).items()}
    for i, ex in enumerate(examples):
      assert_parsed_matches({k: v[i] for k, v in batch.items()}, ex, with_text)
  for ex, d in zip(examples, data):
    assert_examples_equal(records.deserialize(d, SPEC), ex)
  assert any((ex.present == 0).any() for ex in examples)  # absent slots are exercised


@pytest.mark.parametrize("field, value, message", [
    ("input_ids", np.zeros((3, 15), np.int32), "input_ids has shape (3, 15)"),
    ("rationale_embedding", np.zeros((2, 8), np.float32), "rationale_embedding"),
    ("teachers", ["a", "b"], "teachers has 2 entries"),
    ("lengths", np.array([1, 17, 2]), "lengths"),
    ("present", np.array([0, 2, 1]), "present"),
])
def test_serialize_rejects_bad_fields_naming_question_and_field(field, value, message):
  ex = records.synthetic_examples(1, SPEC, seed=2)[0]
  with pytest.raises(ValueError, match="q000000") as info:
    records.serialize(dataclasses.replace(ex, **{field: value}), SPEC)
  assert message in str(info.value)


def test_shards_are_deterministic_and_balanced(tmp_path):
  first, second = build(tmp_path / "a"), build(tmp_path / "b")
  assert first["shards"] == second["shards"]  # same names, counts, sizes and sha256
  assert [s["file"] for s in first["shards"]] == [
      f"records-{i:05d}-of-00004.tfrecord" for i in range(4)]
  assert [s["records"] for s in first["shards"]] == [13, 13, 12, 12]
  assert sorted(os.listdir(tmp_path / "a")) == sorted(
      [s["file"] for s in first["shards"]] + ["manifest.json"])  # no temporaries left
  for i, shard in enumerate(first["shards"]):
    path = str(tmp_path / "a" / shard["file"])
    indices = [records.deserialize(d, SPEC).example_index
               for d in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    assert all(j % 4 == i for j in indices)


def test_manifest_round_trip(tmp_path):
  extra = dict(tokenizer=dict(name="tok", fingerprint="abc"), drops=dict(wrong_answer=3),
               perspectives=["a", "b", "c"])
  written = build(tmp_path, extra=extra)
  read = records.read_manifest(str(tmp_path))
  assert read == written
  assert read["tokenizer"] == extra["tokenizer"] and read["num_examples"] == NUM_EXAMPLES
  assert records.spec_from_manifest(read) == SPEC
  records.verify_shards(str(tmp_path), read)
  with pytest.raises(FileNotFoundError, match="no manifest.json"):
    records.read_manifest(str(tmp_path / "missing"))


def test_write_refuses_non_dense_indices(tmp_path):
  examples = records.synthetic_examples(5, SPEC, seed=3)
  examples[2] = dataclasses.replace(examples[2], example_index=7)
  with pytest.raises(ValueError, match="dense"):
    records.write_shards(examples, str(tmp_path), 2, SPEC)
  assert os.listdir(tmp_path) == []  # nothing that looks like a shard


def test_interrupted_write_leaves_no_complete_looking_files(tmp_path):
  build(tmp_path)  # an earlier complete build in the same directory

  def killed_midway():
    yield from records.synthetic_examples(10, SPEC, seed=4)
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    records.write_shards(killed_midway(), str(tmp_path), NUM_SHARDS, SPEC)
  assert "manifest.json" not in os.listdir(tmp_path)
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
  with pytest.raises(FileNotFoundError):
    reader_lib.RecordReader(str(tmp_path), batch_size=10, seed=0)


def _flip_bytes(path, offset, count=4):
  data = bytearray(open(path, "rb").read())
  for i in range(offset, offset + count):
    data[i] ^= 0xFF
  open(path, "wb").write(bytes(data))


def test_corrupt_shard_is_named(tmp_path):
  manifest = build(tmp_path)
  bad = manifest["shards"][2]["file"]
  _flip_bytes(str(tmp_path / bad), offset=100)
  with pytest.raises(records.CorruptShardError, match=bad) as info:
    records.verify_shards(str(tmp_path), manifest)
  assert "sha256" in str(info.value)
  for good in (manifest["shards"][i]["file"] for i in (0, 1, 3)):
    assert good not in str(info.value)
  # The reader checks sizes only at start-up; TF's DataLossError mid-read names no file.
  reader = reader_lib.RecordReader(str(tmp_path), batch_size=10, seed=0)
  with pytest.raises(records.CorruptShardError, match=bad):
    for _ in reader.iterator(0):
      pass


def test_truncated_shard_is_named(tmp_path):
  manifest = build(tmp_path)
  bad = manifest["shards"][1]["file"]
  path = str(tmp_path / bad)
  data = open(path, "rb").read()
  open(path, "wb").write(data[:-10])
  with pytest.raises(records.CorruptShardError, match=f"{bad}.*truncated"):
    records.verify_shards(str(tmp_path), manifest, check_hash=False)
  with pytest.raises(records.CorruptShardError, match=bad):
    reader_lib.RecordReader(str(tmp_path), batch_size=10, seed=0)


def test_tfds_builder_reads_back_the_records(tmp_path):
  from mind_jax.data import tfds_builder
  import tensorflow_datasets as tfds

  examples = records.synthetic_examples(6, SPEC, seed=5, vocab_size=100)
  records_dir = tmp_path / "tiny_records"
  build(records_dir, examples, num_shards=2)
  builder = tfds_builder.make_builder(str(records_dir), data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare()
  assert builder.info.splits["train"].num_examples == 6
  assert builder.info.metadata["manifest"]["num_examples"] == 6
  got = {}
  for row in tfds.as_numpy(builder.as_dataset(split="train")):
    got[int(row["example_index"])] = row
  assert sorted(got) == list(range(6))
  row, ex = got[3], examples[3]
  back = records.EncodedExample(**{
      f.name: (row[f.name].decode() if isinstance(row[f.name], bytes)
               else [v.decode() for v in row[f.name]] if row[f.name].dtype == object
               else row[f.name])
      for f in dataclasses.fields(records.EncodedExample)})
  back.example_index, back.difficulty = int(back.example_index), float(back.difficulty)
  assert_examples_equal(back, ex)
  # A prepared dataset reads back without our builder class.
  reloaded = tfds.builder_from_directory(builder.data_dir)
  assert reloaded.info.features["input_ids"].shape == (3, 16)
