"""The rationale record: the one place that writes and parses its schema.

One record (a tf.train.Example) per question, with K perspective slots of T
tokens and E-dim sentence embeddings, all fixed-size so that every batch has
the same shapes:

  example_index int64 (dense 0..N-1)   question_id, question, answer bytes
  difficulty float                     perspectives, teachers, rationales bytes[K]
  input_ids int[K*T]  (prompt + rationale + final answer, right padded)
  lengths int[K]      (real tokens per slot; attention mask = position < length)
  loss_mask int[K*T]  (rationale and answer tokens)   answer_mask int[K*T]
  present int[K] (0/1)                 question_embedding float[E]
  rationale_embedding float[K*E]       (an absent slot: empty rationale, zeros; stored
                                       under the key "rationale_embeddings")

A batch of records, as the train step reads it, is `batch_spec`.

A records directory holds shards `records-SSSSS-of-NNNNN.tfrecord`,
`manifest.json` (build counts, tokenizer, spec, and each shard's size and
sha256) and the student's tokenizer (`tokenizer_dir`). The manifest is written
last, so a directory is complete only once it has one. Files go through
mind_jax.paths and the shards through tf.io's TFRecord writer and reader, so a
directory may be on GCS.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Iterable, NamedTuple

import numpy as np
import tensorflow as tf

from mind_jax import paths

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer"
RECORD_FORMAT = 1  # bump when the schema changes; readers refuse other versions
_HASH_CHUNK_BYTES = 1 << 22

TEXT_FIELDS = ("question_id", "question", "answer", "perspectives", "teachers", "rationales")
# The key record_format 1 stores rationale_embedding under: renaming it would make every
# built directory unreadable.
RATIONALE_EMBEDDING_KEY = "rationale_embeddings"


class CorruptShardError(ValueError):
  """A shard that is missing, truncated or whose bytes differ from the manifest."""


@dataclasses.dataclass(frozen=True)
class RecordSpec:
  num_perspectives: int  # K
  max_len: int           # T
  embed_dim: int         # E


@dataclasses.dataclass
class EncodedExample:
  """One question with its K perspective slots, as the build stages produce it."""
  example_index: int
  question_id: str
  question: str
  answer: str
  difficulty: float
  perspectives: list[str]           # [K] perspective name per slot
  teachers: list[str]               # [K]
  rationales: list[str]             # [K], "" for an absent slot
  input_ids: np.ndarray             # [K, T] int
  lengths: np.ndarray               # [K] int
  loss_mask: np.ndarray             # [K, T] int
  answer_mask: np.ndarray           # [K, T] int
  present: np.ndarray               # [K] int 0/1
  question_embedding: np.ndarray    # [E] float32
  rationale_embedding: np.ndarray   # [K, E] float32


# ------------------------------------------------------------------ serialize

def _expected_shapes(spec: RecordSpec) -> dict[str, tuple[int, ...]]:
  k, t, e = spec.num_perspectives, spec.max_len, spec.embed_dim
  return dict(input_ids=(k, t), lengths=(k,), loss_mask=(k, t), answer_mask=(k, t),
              present=(k,), question_embedding=(e,), rationale_embedding=(k, e))


def validate(example: EncodedExample, spec: RecordSpec) -> None:
  """Raise ValueError naming the question and the field when the example does not fit."""
  def fail(field, why):
    raise ValueError(f"record {example.question_id!r} (example_index {example.example_index}): "
                     f"field {field} {why}")

  if int(example.example_index) < 0:
    fail("example_index", f"is {example.example_index}, expected >= 0")
  for field in ("perspectives", "teachers", "rationales"):
    if len(getattr(example, field)) != spec.num_perspectives:
      fail(field, f"has {len(getattr(example, field))} entries, expected K="
           f"{spec.num_perspectives}")
  for field, shape in _expected_shapes(spec).items():
    got = np.shape(getattr(example, field))
    if got != shape:
      fail(field, f"has shape {got}, expected {shape} (K, T, E = {spec.num_perspectives}, "
           f"{spec.max_len}, {spec.embed_dim})")
  lengths = np.asarray(example.lengths)
  if lengths.min() < 0 or lengths.max() > spec.max_len:
    fail("lengths", f"{lengths.tolist()} outside [0, max_len={spec.max_len}]")
  present = np.asarray(example.present)
  if not np.isin(present, (0, 1)).all():
    fail("present", f"{present.tolist()} is not 0/1")


def _int64(values) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=np.ravel(values).tolist()))


def _float(values) -> tf.train.Feature:
  return tf.train.Feature(float_list=tf.train.FloatList(
      value=np.ravel(np.asarray(values, np.float32)).tolist()))


def _bytes(values) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))


def serialize(example: EncodedExample, spec: RecordSpec) -> bytes:
  """The record as a serialized tf.train.Example; ValueError if it does not fit `spec`."""
  validate(example, spec)
  e = example
  feature = dict(
      example_index=_int64([e.example_index]), question_id=_bytes([e.question_id]),
      question=_bytes([e.question]), answer=_bytes([e.answer]),
      difficulty=_float([e.difficulty]), perspectives=_bytes(e.perspectives),
      teachers=_bytes(e.teachers), rationales=_bytes(e.rationales),
      input_ids=_int64(e.input_ids), lengths=_int64(e.lengths), loss_mask=_int64(e.loss_mask),
      answer_mask=_int64(e.answer_mask), present=_int64(e.present),
      question_embedding=_float(e.question_embedding))
  feature[RATIONALE_EMBEDDING_KEY] = _float(e.rationale_embedding)
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def deserialize(data: bytes, spec: RecordSpec) -> EncodedExample:
  """A serialized record back into an EncodedExample (numpy; for tools and tests)."""
  feature = tf.train.Example.FromString(data).features.feature
  shapes = _expected_shapes(spec)

  def ints(name):
    return np.asarray(feature[name].int64_list.value, np.int32).reshape(shapes[name])

  def floats(name, key=None):
    values = feature[key or name].float_list.value
    return np.asarray(values, np.float32).reshape(shapes[name])

  def texts(name):
    return [v.decode() for v in feature[name].bytes_list.value]

  return EncodedExample(
      example_index=int(feature["example_index"].int64_list.value[0]),
      question_id=texts("question_id")[0], question=texts("question")[0],
      answer=texts("answer")[0], difficulty=float(feature["difficulty"].float_list.value[0]),
      perspectives=texts("perspectives"), teachers=texts("teachers"),
      rationales=texts("rationales"), input_ids=ints("input_ids"), lengths=ints("lengths"),
      loss_mask=ints("loss_mask"), answer_mask=ints("answer_mask"), present=ints("present"),
      question_embedding=floats("question_embedding"),
      rationale_embedding=floats("rationale_embedding", RATIONALE_EMBEDDING_KEY))


# ---------------------------------------------------------------------- parse

def _feature_spec(spec: RecordSpec, with_text: bool) -> dict:
  k, t, e = spec.num_perspectives, spec.max_len, spec.embed_dim
  features = dict(
      example_index=tf.io.FixedLenFeature([], tf.int64),
      input_ids=tf.io.FixedLenFeature([k, t], tf.int64),
      lengths=tf.io.FixedLenFeature([k], tf.int64),
      loss_mask=tf.io.FixedLenFeature([k, t], tf.int64),
      answer_mask=tf.io.FixedLenFeature([k, t], tf.int64),
      present=tf.io.FixedLenFeature([k], tf.int64),
      question_embedding=tf.io.FixedLenFeature([e], tf.float32))
  features[RATIONALE_EMBEDDING_KEY] = tf.io.FixedLenFeature([k, e], tf.float32)
  if with_text:
    features.update(
        question_id=tf.io.FixedLenFeature([], tf.string),
        question=tf.io.FixedLenFeature([], tf.string),
        answer=tf.io.FixedLenFeature([], tf.string),
        difficulty=tf.io.FixedLenFeature([], tf.float32),
        perspectives=tf.io.FixedLenFeature([k], tf.string),
        teachers=tf.io.FixedLenFeature([k], tf.string),
        rationales=tf.io.FixedLenFeature([k], tf.string))
  return features


class ArraySpec(NamedTuple):
  shape: tuple[int, ...]
  dtype: type


def batch_spec(spec: RecordSpec, batch_size: int) -> dict[str, ArraySpec]:
  """The train step's inputs for `batch_size` questions (B), name -> (shape, dtype): the
  one statement of the batch schema. parse_fn gives these per record (without B).
  attention_mask is position < length; the masks and `present` are 0/1."""
  b, k, t, e = batch_size, spec.num_perspectives, spec.max_len, spec.embed_dim
  tokens = ArraySpec((b, k, t), np.int32)
  return dict(example_index=ArraySpec((b,), np.int32), input_ids=tokens,
              attention_mask=tokens, loss_mask=tokens, answer_mask=tokens,
              present=ArraySpec((b, k), np.float32),
              question_embedding=ArraySpec((b, e), np.float32),
              rationale_embedding=ArraySpec((b, k, e), np.float32))


def parse_fn(spec: RecordSpec, with_text: bool = False):
  """A function serialized -> dict of fixed-shape tensors, for `tf.data.Dataset.map`.

  Takes one record (scalar) or a batch (vector: parsing after `batch` is several
  times faster). It returns the train-step inputs (batch_spec) and, with
  `with_text=True` only (so the train path does no string work), question_id,
  question, answer [] string, difficulty [] float32, perspectives, teachers,
  rationales [K] string.
  """
  features = _feature_spec(spec, with_text)
  dtypes = {name: array.dtype for name, array in batch_spec(spec, 1).items()}

  def parse(serialized):
    raw = tf.io.parse_example(serialized, features)
    arrays = dict(raw, attention_mask=tf.sequence_mask(raw["lengths"], spec.max_len),
                  rationale_embedding=raw[RATIONALE_EMBEDDING_KEY])
    out = {name: tf.cast(arrays[name], dtype) for name, dtype in dtypes.items()}
    if with_text:
      out.update({name: raw[name] for name in TEXT_FIELDS + ("difficulty",)})
    return out

  return parse


# --------------------------------------------------------------------- shards

def shard_name(index: int, num_shards: int) -> str:
  return f"records-{index:05d}-of-{num_shards:05d}.tfrecord"


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with paths.open(path, "rb") as f:
    while chunk := f.read(_HASH_CHUNK_BYTES):
      digest.update(chunk)
  return digest.hexdigest()


def _check_dense(indices: set[int], count: int) -> None:
  if len(indices) != count:
    raise ValueError(f"example_index values repeat: {count} records, {len(indices)} distinct")
  if min(indices) != 0 or max(indices) != count - 1:
    missing = sorted(set(range(max(indices) + 1)) - indices)[:5]
    raise ValueError(f"example_index must be dense 0..{count - 1}; missing e.g. {missing}")


def write_shards(examples: Iterable[EncodedExample], out_dir: str, num_shards: int,
                 spec: RecordSpec) -> list[dict]:
  """Write the examples into `num_shards` TFRecord files; return per-shard
  {file, records, sha256, bytes} for the manifest.

  Example i goes to shard i % num_shards, in input order: the same input gives
  byte-identical shards. Streams: one record in memory at a time. Each shard is
  written under a temporary name and renamed once all are complete, and any old
  manifest is removed first, so a killed write never leaves a directory that
  looks complete. example_index must be dense 0..N-1 (checked before renaming).
  """
  if num_shards < 1:
    raise ValueError(f"num_shards={num_shards}: expected >= 1")
  paths.makedirs(out_dir)
  paths.remove(os.path.join(out_dir, MANIFEST))  # no-op when there is none
  names = [shard_name(i, num_shards) for i in range(num_shards)]
  tmp_paths = [os.path.join(out_dir, f".{name}.tmp") for name in names]
  counts, seen = [0] * num_shards, set()
  writers = [tf.io.TFRecordWriter(p) for p in tmp_paths]
  try:
    for example in examples:
      shard = int(example.example_index) % num_shards
      writers[shard].write(serialize(example, spec))
      counts[shard] += 1
      seen.add(int(example.example_index))
    for writer in writers:
      writer.close()
    if not seen:
      raise ValueError(f"no examples to write into {out_dir}")
    _check_dense(seen, sum(counts))
  except BaseException:
    for writer, tmp in zip(writers, tmp_paths):
      writer.close()
      paths.remove(tmp)
    raise
  shards = []
  for name, tmp, count in zip(names, tmp_paths, counts):
    path = os.path.join(out_dir, name)
    paths.replace(tmp, path)
    shards.append(dict(file=name, records=count, sha256=_sha256(path), bytes=paths.size(path)))
  logging.info("wrote %d records into %d shards in %s", sum(counts), num_shards, out_dir)
  return shards


# ------------------------------------------------------------------- manifest

def write_manifest(out_dir: str, manifest: dict, shards: list[dict],
                   spec: RecordSpec) -> dict:
  """Write `manifest.json` (tmp + rename); returns what was written.

  `manifest` holds the build's own entries (counts per stage, drops by reason,
  tokenizer {name, fingerprint}, perspectives, encoder, ...); this adds
  "shards" (from write_shards), "num_examples", "record_spec" and "record_format".
  """
  full = dict(manifest, shards=list(shards), num_examples=sum(s["records"] for s in shards),
              record_spec=dataclasses.asdict(spec), record_format=RECORD_FORMAT)
  paths.write_whole(os.path.join(out_dir, MANIFEST),
                              json.dumps(full, indent=2, sort_keys=True))
  return full


def read_manifest(out_dir: str) -> dict:
  path = os.path.join(out_dir, MANIFEST)
  if not paths.exists(path):
    raise FileNotFoundError(
        f"no {MANIFEST} in {out_dir}: not a records directory, or its build did not finish "
        "(the manifest is written last; run `python -m mind_jax.data.build` to complete it)")
  manifest = paths.read_json(path)
  if manifest.get("record_format") != RECORD_FORMAT:
    raise ValueError(f"{path}: record_format {manifest.get('record_format')!r}, this code "
                     f"reads {RECORD_FORMAT}; rebuild the records")
  return manifest


def spec_from_manifest(manifest: dict) -> RecordSpec:
  return RecordSpec(**manifest["record_spec"])


def tokenizer_dir(records_dir: str) -> str:
  """Where a records directory keeps the student tokenizer its records were encoded with."""
  return os.path.join(records_dir, TOKENIZER)


def verify_shards(out_dir: str, manifest: dict, files: Iterable[str] | None = None,
                  check_hash: bool = True) -> None:
  """Check each listed shard's size (and sha256) against the manifest.

  `files` limits the check to those shard names (a process checks its own);
  check_hash=False only compares sizes (a stat, cheap: catches truncation).
  Raises CorruptShardError naming every bad shard file.
  """
  wanted = None if files is None else set(files)
  problems = []
  for shard in manifest["shards"]:
    if wanted is not None and shard["file"] not in wanted:
      continue
    path = os.path.join(out_dir, shard["file"])
    if not paths.exists(path):
      problems.append(f"{path}: missing")
      continue
    size = paths.size(path)
    if size != shard["bytes"]:
      problems.append(f"{path}: {size} bytes, manifest says {shard['bytes']} (truncated?)")
    elif check_hash and _sha256(path) != shard["sha256"]:
      problems.append(f"{path}: sha256 differs from the manifest (corrupt)")
  if problems:
    raise CorruptShardError("bad record shards:\n  " + "\n  ".join(problems))


# ------------------------------------------------------------------ synthetic

def synthetic_examples(num_examples: int, spec: RecordSpec, seed: int = 0,
                       vocab_size: int = 32000) -> list[EncodedExample]:
  """Random but well-formed examples (tests and benchmarks): absent slots are
  empty, masks cover the tail of each slot's real tokens."""
  rng = np.random.default_rng(seed)
  k, t, e = spec.num_perspectives, spec.max_len, spec.embed_dim
  examples = []
  for i in range(num_examples):
    present = (rng.random(k) < 0.8).astype(np.int32)
    present[rng.integers(k)] = 1  # a kept question has at least one rationale
    lengths = np.where(present == 1, rng.integers(max(t // 4, 3), t + 1, size=k), 0)
    positions = np.arange(t)[None, :]
    prompt_len = lengths[:, None] // 3
    input_ids = np.where(positions < lengths[:, None], rng.integers(3, vocab_size, (k, t)), 0)
    loss_mask = (positions >= prompt_len) & (positions < lengths[:, None])
    answer_mask = (positions >= lengths[:, None] - 2) & (positions < lengths[:, None])
    examples.append(EncodedExample(
        example_index=i, question_id=f"q{i:06d}", question=f"question {i}?",
        answer=str(i % 97), difficulty=float(rng.random()),
        perspectives=[f"perspective_{j}" for j in range(k)],
        teachers=["teacher" if p else "" for p in present],
        rationales=[f"rationale {i}/{j}" if p else "" for j, p in enumerate(present)],
        input_ids=input_ids.astype(np.int32), lengths=lengths.astype(np.int32),
        loss_mask=loss_mask.astype(np.int32), answer_mask=answer_mask.astype(np.int32),
        present=present,
        question_embedding=rng.standard_normal(e).astype(np.float32),
        rationale_embedding=(rng.standard_normal((k, e)) * present[:, None]).astype(np.float32)))
  return examples
