"""The rationale records as a TFDS dataset, "mind_rationales".

  from mind_jax.data import tfds_builder
  builder = tfds_builder.make_builder("/data/mind_records", data_dir="/data/tfds")
  builder.download_and_prepare()
  ds = builder.as_dataset(split="train")

The config names the records directory that `python -m mind_jax.data.build`
wrote; K, T and E come from its manifest, which is also stored as the
dataset's metadata. A prepared dataset reads back without this module:
`tfds.builder_from_directory(builder.data_dir)`. Features are the record's
fields as `records.EncodedExample` names them (lengths, not attention masks).

The builder lives outside the TFDS catalogue, so its DatasetInfo is built
explicitly in `_info` rather than from metadata files next to the module.

For datasets too large to prepare on one machine, `use_beam=True` makes
`_generate_examples` return an Apache Beam transform (one shard per element):
`pip install -e .[beam]`, then pass
`download_config=tfds.download.DownloadConfig(beam_runner=...)` to
download_and_prepare.
"""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from mind_jax.data import records


@dataclasses.dataclass(eq=False)
class MindRationalesConfig(tfds.core.BuilderConfig):
  """name: the config's name (its subdirectory of data_dir); records_dir: the built records."""
  records_dir: str = ""
  use_beam: bool = False


def features(spec: records.RecordSpec) -> tfds.features.FeaturesDict:
  """The record's fields, with the shapes of `spec`."""
  k, t, e = spec.num_perspectives, spec.max_len, spec.embed_dim

  def ints(*shape):
    return tfds.features.Tensor(shape=shape, dtype=np.int32)

  def floats(*shape):
    return tfds.features.Tensor(shape=shape, dtype=np.float32)

  def texts():
    return tfds.features.Sequence(tfds.features.Text(), length=k)

  return tfds.features.FeaturesDict(dict(
      example_index=tfds.features.Scalar(dtype=np.int64),
      question_id=tfds.features.Text(), question=tfds.features.Text(),
      answer=tfds.features.Text(), difficulty=tfds.features.Scalar(dtype=np.float32),
      perspectives=texts(), teachers=texts(), rationales=texts(),
      input_ids=ints(k, t), lengths=ints(k), loss_mask=ints(k, t), answer_mask=ints(k, t),
      present=ints(k), question_embedding=floats(e), rationale_embedding=floats(k, e)))


def _read_shard(path: str, spec: records.RecordSpec):
  """(key, feature dict) for each record of one shard; the key is example_index."""
  for data in tf.data.TFRecordDataset(path).as_numpy_iterator():
    example = records.deserialize(data, spec)
    yield example.example_index, dataclasses.asdict(example)


def _beam_examples(paths: list[str], spec: records.RecordSpec):
  try:
    import apache_beam as beam  # only this path needs Beam
  except ImportError as error:
    raise ImportError("use_beam=True needs Apache Beam: pip install -e .[beam]") from error
  return beam.Create(paths) | beam.FlatMap(_read_shard, spec=spec)


def _generator_examples(paths: list[str], spec: records.RecordSpec):
  for path in paths:
    yield from _read_shard(path, spec)


class MindRationales(tfds.core.GeneratorBasedBuilder):
  """MIND questions with K multi-perspective rationales, read from a records directory."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": f"record_format {records.RECORD_FORMAT}",
                   "1.1.0": "rationale_embeddings renamed rationale_embedding"}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 finds a packaged builder's file through `importlib_resources`,
    # which it only installs on Python < 3.9 (tensorflow/datasets#11212): say it here.
    return epath.Path(__file__)

  def _manifest(self) -> dict:
    config = self.builder_config
    if not isinstance(config, MindRationalesConfig) or not config.records_dir:
      raise ValueError("mind_rationales needs config=MindRationalesConfig(name=..., "
                       "records_dir=...) (or use tfds_builder.make_builder)")
    return records.read_manifest(config.records_dir)

  def _info(self) -> tfds.core.DatasetInfo:
    manifest = self._manifest()
    return tfds.core.DatasetInfo(
        builder=self,
        description="MIND multi-perspective chain-of-thought records "
                    f"({self.builder_config.records_dir})",
        features=features(records.spec_from_manifest(manifest)),
        metadata=tfds.core.MetadataDict(manifest=manifest))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the records are local (or on GCS)
    records_dir = self.builder_config.records_dir
    manifest = self._manifest()
    records.verify_shards(records_dir, manifest)  # never publish a corrupt shard
    paths = [os.path.join(records_dir, s["file"]) for s in manifest["shards"]]
    return {"train": self._generate_examples(paths, records.spec_from_manifest(manifest))}

  def _generate_examples(self, paths: list[str], spec: records.RecordSpec):
    # A plain function, not a generator: it returns either a generator or, with
    # use_beam, a beam PTransform that TFDS runs on its pipeline.
    if self.builder_config.use_beam:
      return _beam_examples(paths, spec)
    return _generator_examples(paths, spec)


def config_name(records_dir: str) -> str:
  """A TFDS-safe config name from the records directory's base name."""
  base = os.path.basename(os.path.normpath(records_dir)).lower()
  return re.sub(r"[^a-z0-9_]+", "_", base).strip("_") or "records"


def make_builder(records_dir: str, data_dir: str, name: str | None = None,
                 use_beam: bool = False) -> MindRationales:
  """The builder for one records directory; name defaults to config_name(records_dir)."""
  config = MindRationalesConfig(name=name or config_name(records_dir),
                                records_dir=records_dir, use_beam=use_beam)
  return MindRationales(config=config, data_dir=data_dir)
