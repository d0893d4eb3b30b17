"""Progress lines (loss, steps/s, tokens/s, step time, ETA) and TensorBoard scalars.

The logdir, the metrics history and the plots may be local or on gs:// (mind_jax.paths)."""
from __future__ import annotations

import datetime
import io
import json
import logging
import os
import time
from typing import Mapping, Sequence

import jax
import numpy as np

from mind_jax import faults, paths


def quiet_library_logs() -> None:
  """INFO for our lines; Orbax logs every file it writes through absl at INFO.

  A library has already put a handler on the root logger (so basicConfig would
  do nothing): set the levels instead."""
  logging.getLogger().setLevel(logging.INFO)
  absl_logger = logging.getLogger("absl")
  absl_logger.setLevel(logging.WARNING)
  # Orbax warns on every read-only look at a checkpoint directory; that is all we do.
  absl_logger.addFilter(lambda record: "is read only" not in record.getMessage())
  faults.quiet_background_errors()


class TensorBoard:
  """Scalars into <workdir>/tensorboard, written by process 0 only. The writer creates
  the logdir itself, local or gs://."""

  def __init__(self, logdir: str):
    self._writer = None
    if jax.process_index() == 0:
      import tensorflow as tf  # imported here: only the writer needs it

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


def read_history(path: str, up_to_step: int | None = None) -> list[tuple[int, dict]]:
  if not paths.isfile(path):
    return []
  history = []
  for line in paths.read_text(path).splitlines():
    record = json.loads(line)
    step = record.pop("step")
    if up_to_step is None or step <= up_to_step:
      history.append((step, record))
  return history


def _history_line(step: int, values: dict) -> str:
  return json.dumps({"step": step, **values}) + "\n"


def _history_text(history) -> str:
  return "".join(_history_line(step, values) for step, values in history)


def save_figure(fig, path: str, dpi: int) -> None:
  """fig.savefig to a local or remote `path` (the format from its extension), whole."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format=os.path.splitext(path)[1][1:] or "png", dpi=dpi)  # local: memory
  paths.write_whole(path, buffer.getvalue())


class Progress:
  """Every `every` steps: fetch the metrics, log a line, write TensorBoard scalars.

  Timing starts after the first step, so compilation does not skew steps/s or ETA.
  """

  def __init__(self, total_steps: int, tokens_per_step: int, every: int, board: TensorBoard,
               names: Sequence[str] = (), history_path: str | None = None,
               start_step: int = 0, flops_per_step: float = 0.0,
               peak_flops: float | None = None, remote_history_every_s: float = 0.0):
    """`names` label the entries of vector metrics (MIND: one per perspective).

    Logged values are appended to `history_path` (JSON lines) so plots cover a
    resumed run too; lines past `start_step` (written after the checkpoint a
    run resumes from) are dropped first. A remote history cannot be appended to: it is
    rewritten whole at a log step once `remote_history_every_s` (train.remote_metrics_every_s)
    have passed since the last write, and at every `flush()` (the loop calls it at each
    checkpoint and at the end). With `peak_flops` (all devices together) the line also shows
    MFU = flops_per_step / step time / peak_flops.
    """
    self.flops_per_step, self.peak_flops = flops_per_step, peak_flops
    self.total_steps, self.tokens_per_step, self.every = total_steps, tokens_per_step, every
    self.board = board
    self.names = list(names)
    self.history_path = history_path
    self.history = read_history(history_path, start_step) if history_path else []
    self._writes = bool(history_path) and jax.process_index() == 0
    self._rewriter = None  # a local history is appended to instead
    if self._writes and paths.is_remote(history_path):
      self._rewriter = paths.Rewriter(history_path, lambda: _history_text(self.history),
                                      remote_history_every_s)
    if self._writes:
      paths.write_whole(history_path, _history_text(self.history))
    self._mark_step = None
    self._mark_time = None

  def _flatten(self, metrics) -> dict[str, float]:
    values = {}
    for key, value in jax.device_get(dict(metrics)).items():
      value = np.asarray(value)
      if value.ndim == 0:
        values[key] = float(value)
      else:
        for name, entry in zip(self.names or range(len(value)), value):
          values[f"{key}/{name}"] = float(entry)
    return values

  def restart_timing(self) -> None:
    """After a recompilation (a new phase): the next step is not timed."""
    self._mark_step = None

  def update(self, step: int, metrics: Mapping[str, jax.Array], phase: str = "") -> None:
    """`step` is the number of steps done; `metrics` are the last step's (device arrays)."""
    compiled_now = self._mark_step is None  # this step includes compilation: not timed
    if not compiled_now and step % self.every and step != self.total_steps:
      return
    values = self._flatten(metrics)  # fetching the values waits for the step
    now = time.perf_counter()
    prefix = f"[{phase}] " if phase else ""
    if compiled_now:
      logging.info("%sstep %d/%d | loss %.4f | (includes compilation)", prefix, step,
                   self.total_steps, values["loss"])
    else:
      step_time = (now - self._mark_time) / max(step - self._mark_step, 1)
      values.update(steps_per_s=1.0 / step_time, tokens_per_s=self.tokens_per_step / step_time,
                    step_time_s=step_time)
      mfu = ""
      if self.peak_flops:
        values["mfu"] = self.flops_per_step / step_time / self.peak_flops
        mfu = f" | MFU {100 * values['mfu']:.1f}%"
      eta = datetime.timedelta(seconds=round(step_time * (self.total_steps - step)))
      logging.info("%sstep %d/%d | loss %.4f | %.2f steps/s | %.0f tokens/s | step %.3fs%s | "
                   "ETA %s", prefix, step, self.total_steps, values["loss"],
                   values["steps_per_s"], values["tokens_per_s"], step_time, mfu, eta)
    self._mark_step, self._mark_time = step, now
    self.board.scalars(step, values)
    self.history.append((step, values))
    if not self._writes:
      return
    if self._rewriter is None:
      with paths.open(self.history_path, "a") as f:
        f.write(_history_line(step, values))
      return
    self._rewriter.changed()
    self._rewriter.sync()

  def flush(self) -> None:
    """A remote history's lines not yet written, written (a local one is appended to at
    every log step: nothing to do)."""
    if self._rewriter is not None:
      self._rewriter.sync(force=True)


def plot_per_perspective(history: list[tuple[int, dict[str, float]]], key: str,
                         names: Sequence[str], path: str, title: str) -> bool:
  """A PNG of `key/<name>` over training, one line per perspective; False if no data."""
  steps = [step for step, values in history if f"{key}/{names[0]}" in values]
  if not steps:
    return False
  import matplotlib
  matplotlib.use("Agg")  # files only, no display
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 4.5))
  for name in names:
    ax.plot(steps, [values[f"{key}/{name}"] for _, values in history
                    if f"{key}/{name}" in values], label=name)
  ax.set_xlabel("step")
  ax.set_ylabel(key)
  ax.set_title(title)
  ax.legend(fontsize=8, ncol=2)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  save_figure(fig, path, dpi=120)
  plt.close(fig)
  return True
