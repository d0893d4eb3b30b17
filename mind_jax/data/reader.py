"""tf.data reader of a records directory: per-process shards, deterministic
shuffled epochs, fixed-shape batches, and a resumable position.

Process i of P reads shards i, i+P, ... and yields batches of batch_size / P
records; `global_batch` assembles the processes' rows into global jax.Arrays.
Every process yields the same number of batches per epoch (the smallest
process's count), so "position" -- the number of global batches consumed, as
saved in a checkpoint -- means the same thing on every process.

Epoch e is a pure function of (seed, e): the shard order and the seed of the
record shuffle both come from numpy's generator seeded with [seed, e], and
tf.data runs with deterministic=True (a global tf.random.set_seed, if a program
sets one, also feeds the shuffle: set the same one, or none, on resume).
`iterator(p)` starts epoch p // B_e and skips p % B_e batches in it (tf.data
skip, before parsing: it still reads and shuffles those records), so a resumed
run sees exactly the batches the uninterrupted run would have seen -- on the
same process count.

Resuming with a different process count P' (or a changed batch size):
  * kept: the position counter, the seed, and that each epoch holds every
    example at most once (exactly once, less the drop_remainder leftovers
    logged at start-up);
  * changed: which records form which batch, because the shards are split
    over the processes differently. Batch contents from the resume point on
    differ from the uninterrupted run's, and the epoch in progress is not
    completed as it began: it restarts in the P' layout at the same offset,
    so in that one epoch some examples are seen twice and some not at all.
    Every later epoch covers every example once again. batches_per_epoch can
    also change with P' (it is the smallest process's records // local
    batch); then the resumed run's epoch boundaries shift to position //
    B_e under the new B_e.
  Use num_shards a multiple of every process count you plan to use: each
  process then reads the same number of shards and (almost) no records drop.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Iterator

import jax
import numpy as np
import tensorflow as tf

from mind_jax.data import records

DEFAULT_SHUFFLE_BUFFER = 4096  # records; the demo records are ~25 KB serialized
DEFAULT_CYCLE_LENGTH = 16      # shards read at once, interleaved record by record
DEFAULT_PREFETCH = 4           # parsed batches kept ready


class RecordReader:
  """Batches of one process's shards of a records directory, epochs forever."""

  def __init__(self, data_dir: str, batch_size: int, seed: int,
               shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
               process_index: int | None = None, process_count: int | None = None,
               with_text: bool = False, verify: bool = False,
               cycle_length: int = DEFAULT_CYCLE_LENGTH, prefetch: int = DEFAULT_PREFETCH):
    """batch_size is global; process_index/process_count default to jax's.

    with_text: also yield the text fields (not for the train step).
    verify: check every shard's sha256 against the manifest at start-up (reads
    this process's shards once); sizes are always checked, which is a stat.
    """
    self.data_dir = data_dir
    self.manifest = records.read_manifest(data_dir)
    self.spec = records.spec_from_manifest(self.manifest)
    self.batch_size, self.seed = batch_size, seed
    self.shuffle_buffer, self.cycle_length, self.prefetch = shuffle_buffer, cycle_length, prefetch
    self.with_text = with_text
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    self.local_batch_size = self._local_batch_size()
    shards = self.manifest["shards"]
    self.files = [s["file"] for s in shards[self.process_index::self.process_count]]
    records.verify_shards(data_dir, self.manifest, self.files, check_hash=verify)
    self._batches_per_epoch = self._count_batches_per_epoch()

  def _local_batch_size(self) -> int:
    p, count = self.process_index, self.process_count
    if not 0 <= p < count:
      raise ValueError(f"process_index={p} outside [0, process_count={count})")
    if self.batch_size % count:
      raise ValueError(f"global batch_size={self.batch_size} does not divide over "
                       f"{count} processes")
    shards = len(self.manifest["shards"])
    if shards < count:
      raise ValueError(f"{self.data_dir} has {shards} shards, fewer than the {count} "
                       "processes: rebuild the records with num_shards >= process count")
    if shards % count:
      logging.warning("%d shards over %d processes: processes read unequal shares and the "
                      "larger ones' extra records drop every epoch", shards, count)
    return self.batch_size // count

  def _count_batches_per_epoch(self) -> int:
    """The smallest process's batch count: every process must stop together."""
    shards, count = self.manifest["shards"], self.process_count
    per_process = [sum(s["records"] for s in shards[p::count]) for p in range(count)]
    batches = min(n // self.local_batch_size for n in per_process)
    if batches == 0:
      raise ValueError(f"{self.data_dir}: a process has {min(per_process)} records, fewer "
                       f"than its batch of {self.local_batch_size}")
    left_out = self.num_examples - batches * self.batch_size
    logging.info("reader: %d examples, %d batches of %d per epoch; drop_remainder leaves "
                 "out %d records per epoch (a different random set each epoch)",
                 self.num_examples, batches, self.batch_size, left_out)
    return batches

  @property
  def num_examples(self) -> int:
    return int(self.manifest["num_examples"])

  @property
  def batches_per_epoch(self) -> int:
    return self._batches_per_epoch

  def epoch_dataset(self, epoch: int) -> tf.data.Dataset:
    """Epoch `epoch` of this process: batches of serialized records, not yet parsed."""
    rng = np.random.default_rng([self.seed, epoch])
    order = rng.permutation(len(self.files))
    shuffle_seed = int(rng.integers(2**31 - 1))
    paths = [os.path.join(self.data_dir, self.files[i]) for i in order]
    ds = tf.data.Dataset.from_tensor_slices(paths)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(paths), self.cycle_length),
                       block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.shuffle(self.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    return ds.batch(self.local_batch_size, drop_remainder=True).take(self._batches_per_epoch)

  def iterator(self, start_position: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's numpy batches for global batches start_position, start_position+1, ..."""
    if start_position < 0:
      raise ValueError(f"start_position={start_position}: expected >= 0")
    epoch, offset = divmod(start_position, self._batches_per_epoch)
    parse = records.parse_fn(self.spec, with_text=self.with_text)
    options = tf.data.Options()
    options.deterministic = True
    while True:
      ds = self.epoch_dataset(epoch).skip(offset)  # skip before parsing: no wasted parse
      ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      ds = ds.prefetch(self.prefetch).with_options(options)
      try:
        yield from ds.as_numpy_iterator()
      except tf.errors.DataLossError as error:
        raise self._name_corrupt_shard(error) from error
      epoch, offset = epoch + 1, 0

  def _name_corrupt_shard(self, error: tf.errors.DataLossError) -> records.CorruptShardError:
    """TF's message does not say which file: find it by checking this process's shards."""
    try:
      records.verify_shards(self.data_dir, self.manifest, self.files)
    except records.CorruptShardError as bad:
      return records.CorruptShardError(f"{bad}\n(tf.data: {error.message})")
    return records.CorruptShardError(
        f"reading one of {self.files} in {self.data_dir} failed ({error.message}), yet sizes "
        "and sha256 match the manifest: the shard was written corrupt; rebuild the records")


def global_batch(local_batch: dict[str, np.ndarray],
                 sharding_for: Callable[[str], jax.sharding.Sharding] | jax.sharding.Sharding
                 ) -> dict[str, jax.Array]:
  """Global jax.Arrays from every process's local rows (text fields are left out).

  sharding_for: key -> Sharding, or one Sharding for every key.
  """
  get = sharding_for if callable(sharding_for) else (lambda key: sharding_for)
  return {key: jax.make_array_from_process_local_data(get(key), value)
          for key, value in local_batch.items() if value.dtype.kind in "biuf"}


def check_tokenizer(manifest: dict, tokenizer_fingerprint: str, tokenizer_name: str) -> None:
  """Refuse records tokenized with another tokenizer than the student's.

  The manifest's "tokenizer" entry is {"name", "fingerprint"}, fingerprint as
  mind_jax.tokenizer.fingerprint computes it; names may differ (paths), ids may not.
  """
  built = manifest.get("tokenizer") or {}
  if built.get("fingerprint") != tokenizer_fingerprint:
    raise ValueError(
        f"the records were tokenized with {built.get('name')!r} (fingerprint "
        f"{built.get('fingerprint')}), but the student's tokenizer is {tokenizer_name!r} "
        f"(fingerprint {tokenizer_fingerprint}): rebuild the records with the student's "
        "tokenizer, or train with the records' one")
