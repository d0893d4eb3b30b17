"""Progress lines (loss, steps/s, tokens/s, step time, ETA) and TensorBoard scalars."""
from __future__ import annotations

import datetime
import logging
import os
import time
from typing import Mapping

import jax


def quiet_library_logs() -> None:
  """INFO for our lines; Orbax logs every file it writes through absl at INFO.

  A library has already put a handler on the root logger (so basicConfig would
  do nothing): set the levels instead."""
  logging.getLogger().setLevel(logging.INFO)
  absl_logger = logging.getLogger("absl")
  absl_logger.setLevel(logging.WARNING)
  # Orbax warns on every read-only look at a checkpoint directory; that is all we do.
  absl_logger.addFilter(lambda record: "is read only" not in record.getMessage())


class TensorBoard:
  """Scalars into <workdir>/tensorboard, written by process 0 only."""

  def __init__(self, logdir: str):
    self._writer = None
    if jax.process_index() == 0:
      import tensorflow as tf  # imported here: only the writer needs it

      os.makedirs(logdir, exist_ok=True)
      self._tf = tf
      self._writer = tf.summary.create_file_writer(logdir)

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    with self._writer.as_default():
      for name, value in values.items():
        self._tf.summary.scalar(name, value, step=step)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


class Progress:
  """Every `every` steps: fetch the metrics, log a line, write TensorBoard scalars.

  Timing starts after the first step, so compilation does not skew steps/s or ETA.
  """

  def __init__(self, total_steps: int, tokens_per_step: int, every: int, board: TensorBoard):
    self.total_steps, self.tokens_per_step, self.every = total_steps, tokens_per_step, every
    self.board = board
    self._mark_step = None
    self._mark_time = None

  def update(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
    """`step` is the number of steps done; `metrics` are the last step's (device arrays)."""
    if self._mark_step is None:  # the first step includes compilation
      jax.block_until_ready(metrics)
      self._mark_step, self._mark_time = step, time.perf_counter()
      logging.info("step %d/%d done (includes compilation)", step, self.total_steps)
      return
    if step % self.every and step != self.total_steps:
      return
    values = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
    now = time.perf_counter()
    steps = step - self._mark_step
    step_time = (now - self._mark_time) / max(steps, 1)
    values.update(steps_per_s=1.0 / step_time, tokens_per_s=self.tokens_per_step / step_time,
                  step_time_s=step_time)
    eta = datetime.timedelta(seconds=round(step_time * (self.total_steps - step)))
    logging.info("step %d/%d | loss %.4f | %.2f steps/s | %.0f tokens/s | step %.3fs | ETA %s",
                 step, self.total_steps, values["loss"], values["steps_per_s"],
                 values["tokens_per_s"], step_time, eta)
    self.board.scalars(step, values)
    self._mark_step, self._mark_time = step, now
