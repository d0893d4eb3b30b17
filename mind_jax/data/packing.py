"""Packing: the present rationales of a batch's questions into rows of `length` tokens.

The padded MIND batch is [B, K, T]: every slot costs T tokens, absent slots
included, however short its rationale. A packed batch puts the present
rationales one after another into R rows of L tokens (first-fit decreasing),
each rationale one segment, so the student computes real tokens and little
padding. The step recovers per-slot CE [B, K] by summing the token losses of
each segment into its slot (a segment sum, as Levanter's per_segment_loss), and
gathers the answer positions of the consistency JSD from the rows.

Where: on the host, per batch, after tf.data has parsed it (`pack_batch`). It is
a pure function of the batch, so the reader's exact resume is unchanged; at
record-build time rows would tie the same questions together forever, and a
shuffled batch could not be packed across its questions.

With optim.grad_accum_steps = M, question m, m + M, ... of a batch form micro-batch
m (the split mind_step makes of the per-question arrays), and each micro-batch
is packed into its own R rows.

Packed arrays, [M, R, L] int32 unless noted:
  packed_ids        token ids (0 on padding)
  packed_targets    the next token of the same segment, which position t predicts
  packed_weights    1 where that target is scored (loss_mask of the next token)
  packed_positions  position within the segment (RoPE)
  packed_segments   1, 2, ... per segment in its row; 0 on padding
  packed_slots      the slot b * K + k (b within the micro-batch) a token belongs
                    to; Bm * K on padding (a bucket nothing reads)
  answer_rows, answer_cols [M, Bm, K, A]: where slot (b, k)'s first A answer
                    tokens are predicted (the position before each), as
                    losses.answer_positions finds them in the padded layout;
  answer_valid      [M, Bm, K, A] float32
  packing_dropped   [B] float32: rationales of the question left out of this
                    batch because they did not fit (their slot's present is 0)
The per-question arrays (example_index, present, embeddings) stay as they are.
"""
from __future__ import annotations

import logging
import math

import numpy as np

SLOT_ARRAYS = ("input_ids", "attention_mask", "loss_mask", "answer_mask")  # replaced
MICRO_KEYS = ("packed_ids", "packed_targets", "packed_weights", "packed_positions",
              "packed_segments", "packed_slots", "answer_rows", "answer_cols",
              "answer_valid")  # [M, ...]: split into micro-batches by the packer


def slot_lengths(batch: dict[str, np.ndarray]) -> np.ndarray:
  """Real tokens of each present slot [B, K]; 0 for absent slots."""
  lengths = batch["attention_mask"].sum(axis=-1)
  return np.where(batch["present"] > 0, lengths, 0).astype(np.int64)


def first_fit_decreasing(lengths: list[int], row_length: int) -> list[list[int]]:
  """Items (indices into `lengths`) per row: longest first, each into the first row
  with room. Deterministic: ties keep index order."""
  order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
  rows, room = [], []
  for i in order:
    for r, free in enumerate(room):
      if lengths[i] <= free:
        rows[r].append(i)
        room[r] -= lengths[i]
        break
    else:
      rows.append([i])
      room.append(row_length - lengths[i])
  return rows


def micro_batch_questions(batch_size: int, micro_batches: int) -> list[np.ndarray]:
  """Question indices of each micro-batch: m, m + M, ... (mind_step splits alike)."""
  return [np.arange(m, batch_size, micro_batches) for m in range(micro_batches)]


def rows_needed(batch: dict[str, np.ndarray], row_length: int, micro_batches: int) -> int:
  """The most rows any micro-batch of `batch` needs."""
  lengths = slot_lengths(batch)
  return max(len(first_fit_decreasing([int(x) for x in lengths[q].ravel() if x > 0], row_length))
             for q in micro_batch_questions(lengths.shape[0], micro_batches))


def _answer_positions(answer_mask: np.ndarray, max_answer_tokens: int) -> np.ndarray:
  """Positions t whose next token is an answer token, first A of them (the padded
  layout's losses.answer_positions on answer_mask[1:])."""
  return (np.flatnonzero(answer_mask[1:] > 0))[:max_answer_tokens]


def pack_batch(batch: dict[str, np.ndarray], rows: int, row_length: int, micro_batches: int,
               max_answer_tokens: int, process_index: int = 0,
               process_count: int = 1) -> dict[str, np.ndarray]:
  """A padded batch -> the packed batch described in the module docstring.

  On P processes each packs its local questions into its `rows` (the global row count /
  P); slot ids and answer rows are then numbered as in the assembled global batch, whose
  rows and questions are the processes' in process order."""
  b, k, t = batch["input_ids"].shape
  if t > row_length:
    raise ValueError(f"train.seq_len={row_length} is shorter than the records' max_len={t}: "
                     "a packed row must hold the longest rationale")
  if b % micro_batches:
    raise ValueError(f"a batch of {b} questions does not split into "
                     f"optim.grad_accum_steps={micro_batches} micro-batches")
  bm, a = b // micro_batches, max(max_answer_tokens, 1)
  shape = (micro_batches, rows, row_length)
  out = {name: np.zeros(shape, np.int32) for name in
         ("packed_ids", "packed_targets", "packed_weights", "packed_positions",
          "packed_segments")}
  # Global numbering: this process's questions and rows follow the earlier processes'.
  first_slot, first_row = process_index * bm * k, process_index * rows
  out["packed_slots"] = np.full(shape, process_count * bm * k, np.int32)
  out["answer_rows"] = np.zeros((micro_batches, bm, k, a), np.int32)
  out["answer_cols"] = np.zeros((micro_batches, bm, k, a), np.int32)
  out["answer_valid"] = np.zeros((micro_batches, bm, k, a), np.float32)
  present = batch["present"].copy()
  dropped = np.zeros((b,), np.float32)
  lengths = slot_lengths(batch)
  for m, questions in enumerate(micro_batch_questions(b, micro_batches)):
    slots = [(j, kk) for j in range(bm) for kk in range(k) if lengths[questions[j], kk] > 0]
    packed_rows = first_fit_decreasing([int(lengths[questions[j], kk]) for j, kk in slots],
                                       row_length)
    for r, items in enumerate(packed_rows):
      if r >= rows:  # no room left in this batch: leave these out, and count them
        for i in items:
          j, kk = slots[i]
          present[questions[j], kk] = 0.0
          dropped[questions[j]] += 1
        continue
      start = 0
      for segment, i in enumerate(items, start=1):
        j, kk = slots[i]
        _place(out, batch, (m, r, start, segment), questions[j], kk,
               first_slot + j * k + kk, (first_row + r, j), int(lengths[questions[j], kk]),
               max_answer_tokens)
        start += int(lengths[questions[j], kk])
  out.update({key: value for key, value in batch.items() if key not in SLOT_ARRAYS})
  out["present"], out["packing_dropped"] = present, dropped
  return out


def _place(out, batch, where, question, perspective, slot, answer_at, length,
           max_answer_tokens) -> None:
  """Write one rationale (question, perspective) of `length` tokens as segment `segment`
  at row[start:] of micro-batch m (where = (m, row, start, segment)); slot is its global
  slot id, answer_at its (global row, local question)."""
  m, row, start, segment = where
  span = slice(start, start + length)
  ids = batch["input_ids"][question, perspective, :length]
  out["packed_ids"][m, row, span] = ids
  out["packed_targets"][m, row, start:start + length - 1] = ids[1:]
  out["packed_weights"][m, row, start:start + length - 1] = (
      batch["loss_mask"][question, perspective, 1:length])
  out["packed_positions"][m, row, span] = np.arange(length)
  out["packed_segments"][m, row, span] = segment
  out["packed_slots"][m, row, span] = slot
  if max_answer_tokens:
    positions = _answer_positions(batch["answer_mask"][question, perspective, :length],
                                  max_answer_tokens)
    n, (global_row, local_question) = len(positions), answer_at
    out["answer_rows"][m, local_question, perspective, :n] = global_row
    out["answer_cols"][m, local_question, perspective, :n] = start + positions
    out["answer_valid"][m, local_question, perspective, :n] = 1.0


def choose_rows(sample_batches, row_length: int, micro_batches: int, multiple: int) -> int:
  """Rows per micro-batch for train.packed_rows = 0: the worst of the sampled batches,
  rounded up to `multiple` (the devices the rows are split over)."""
  worst = max(rows_needed(batch, row_length, micro_batches) for batch in sample_batches)
  return int(math.ceil(worst / multiple) * multiple)


# ------------------------------------------------------------------ balanced windows
# Rows are a static shape, so they must hold a batch's rationales however long they
# happen to be; with a random B questions per batch the total varies by about +-10%, and
# rows sized for the longest batches run ~75% full. Balancing W batches at a time (a
# window) into micro-batches of equal total length makes every batch look alike: ~92%
# full on rationales of 100-2000 tokens (benchmarks/packing.py).


def balance(totals: np.ndarray, groups: int, size: int) -> list[list[int]]:
  """`groups` groups of `size` items of nearly equal summed `totals`: longest first,
  each into the lightest group with room (LPT). Deterministic."""
  members, load = [[] for _ in range(groups)], [0] * groups
  for item in np.argsort(-np.asarray(totals), kind="stable"):
    lightest = min((g for g in range(groups) if len(members[g]) < size),
                   key=lambda g: (load[g], g))
    members[lightest].append(int(item))
    load[lightest] += int(totals[item])
  return members


def balanced_window(window: list[dict[str, np.ndarray]],
                    micro_batches: int) -> list[dict[str, np.ndarray]]:
  """W batches -> W batches of the same questions, regrouped so that every micro-batch
  (questions m, m + M, ... of a batch) holds about the same number of tokens."""
  merged = {key: np.concatenate([batch[key] for batch in window]) for key in window[0]}
  batch_size = len(window[0]["present"])
  size = batch_size // micro_batches
  groups = balance(slot_lengths(merged).sum(axis=1), len(window) * micro_batches, size)
  out = []
  for b in range(len(window)):
    mine = groups[b * micro_batches:(b + 1) * micro_batches]
    order = [mine[i % micro_batches][i // micro_batches] for i in range(batch_size)]
    out.append({key: value[order] for key, value in merged.items()})
  return out


def balanced_batches(read_from, start: int, window: int, micro_batches: int):
  """Batches start, start + 1, ... regrouped in windows of `window` batches.
  `read_from(p)` iterates the reader's batches from position p; window w is always
  batches w * window ... (w + 1) * window - 1, so a resumed run regroups the same
  window the same way and skips to its position (exact resume)."""
  first = start - start % window
  batches = read_from(first)
  skip = start - first
  while True:
    for batch in balanced_window([next(batches) for _ in range(window)], micro_batches):
      if skip:
        skip -= 1
        continue
      yield batch


def fill_fraction(packed: dict[str, np.ndarray]) -> float:
  """Share of the packed rows' tokens that are real (not padding)."""
  return float(np.mean(packed["packed_segments"] > 0))


def log_overflow(dropped: int, position: int) -> None:
  if dropped:
    logging.warning("packing: %d rationales of batch %d did not fit train.packed_rows and are "
                    "left out of that step (metric packing_overflow)", dropped, position)
