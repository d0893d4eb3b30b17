"""Encoded SFT sequences and deterministic, resumable batches over them.

Batch i of the run is a pure function of (seed, i): epoch e = i*B // N is a
permutation seeded by (seed, e). The data position saved in a checkpoint is
therefore just the number of batches consumed, and a resumed run sees exactly
the batches the uninterrupted run would have seen, on any process count.
"""
from __future__ import annotations

import logging

import jax
import numpy as np

from mind_jax.data import encode


SFT_KEYS = ("input_ids", "attention_mask", "loss_mask")


def encode_examples(tokenizer, examples: list[dict], max_len: int) -> dict[str, np.ndarray]:
  """Stack encoded sequences, built as every student sequence is (encode.encode_slot: the
  chat template when the tokenizer has one); those longer than max_len are dropped and
  counted."""
  encoded, too_long = [], []
  for ex in examples:
    try:
      slot = encode.encode_slot(tokenizer, ex["question"], ex["rationale"], ex["answer"],
                                max_len)
      encoded.append({key: slot[key] for key in SFT_KEYS})
    except encode.SequenceTooLong:
      too_long.append(ex["id"])
  if too_long:
    logging.warning("dropped %d of %d examples longer than seq_len=%d (first: %s)",
                    len(too_long), len(examples), max_len, too_long[:3])
  if not encoded:
    raise ValueError(f"no example fits seq_len={max_len}")
  return {k: np.stack([e[k] for e in encoded]) for k in encoded[0]}


class SFTBatches:
  """Global batches of `batch_size` rows; this process materialises only its rows."""

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int):
    self.arrays = arrays
    self.num_examples = len(next(iter(arrays.values())))
    self.batch_size = batch_size
    self.seed = seed

  def _global_rows(self, index: int) -> np.ndarray:
    start = index * self.batch_size
    positions = np.arange(start, start + self.batch_size)
    epochs, offsets = positions // self.num_examples, positions % self.num_examples
    rows = np.empty_like(positions)
    for epoch in np.unique(epochs):
      order = np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_examples)
      rows[epochs == epoch] = order[offsets[epochs == epoch]]
    return rows

  def local_batch(self, index: int) -> dict[str, np.ndarray]:
    """This process's contiguous share of global batch `index`."""
    rows = self._global_rows(index)
    per_process = self.batch_size // jax.process_count()
    mine = rows[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
    return {k: v[mine] for k, v in self.arrays.items()}

  def global_batch(self, index: int, sharding) -> dict[str, jax.Array]:
    local = self.local_batch(index)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}

