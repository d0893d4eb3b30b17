"""The accuracy probe behind mind.capability="accuracy" (capability.py).

Every mind.probe_every steps (and at the first step a run takes) the student answers
mind.probe_size held-out questions of its training distribution in each perspective:
greedy decoding (decode.generate, jitted) from the perspective's tagged prompt, judged
as eval judges (eval/answers.py). The accuracies [K] go into the TA optimizer's
AccuracyState, where the next steps' TA target reads them.

The questions are drawn once per run (mind.probe_seed), like the eval suite
mind.probe_suite, and none is a training question. They are not drawn apart from the
test suites, which the training run does not know: an overlap can only inform the
weights between perspectives, never train on an answer.
"""
from __future__ import annotations

import logging
import os
import time

import jax
import numpy as np

from mind_jax import capability, checkpoint, decode, faults, inference, paths
from mind_jax.eval import perspectives as perspectives_lib, suites as suites_lib

PROBE_FILE = "probe.json"  # in the workdir: every probe's accuracies and seconds


class Probe:
  """Asks the student its perspectives now and then; `seconds` is the time it took."""

  def __init__(self, suite: suites_lib.Suite, names, model: inference.Model, every: int,
               mu: float, max_new_tokens: int, path: str):
    self.suite, self.names, self.model = suite, list(names), model
    self.every, self.mu, self.max_new_tokens, self.path = every, mu, max_new_tokens, path
    self.log = paths.read_json(path) if paths.isfile(path) else dict(probes=[])
    self.seconds = 0.0

  @classmethod
  def for_run(cls, config, manifest: dict, tokenizer, model_config, mesh,
              workdir: str) -> "Probe":
    """The probe of a training run: its questions drawn from the records' questions."""
    m = config.mind
    if not manifest.get("perspective_tags"):
      raise faults.BadInput(
          f"mind.capability='accuracy' asks each perspective by its tag, but the records "
          f"{config.data.records_dir} were built without encode.perspective_tags")
    if config.lora.rank > 0:
      raise faults.BadInput("mind.capability='accuracy' with lora.rank > 0: the probe decodes "
                            "with plain params; LoRA students are not probed yet")
    suites_lib.check_spec(m.probe_suite)
    train = suites_lib.training_questions(config.data.records_dir)
    suite = suites_lib.dev_suite(m.probe_suite, train, (), m.probe_size, m.probe_seed)
    eos = inference.eos_token_ids(checkpoint.tokenizer_dir(workdir), tokenizer, model_config)
    model = inference.Model(workdir, 0, model_config, None, tokenizer, eos,
                            inference.pad_id_of(tokenizer, eos), mesh,
                            decode.hashable_rules(config.mesh.rules))
    return cls(suite, manifest["perspectives"], model, m.probe_every, m.probe_mu,
               m.probe_max_new_tokens, os.path.join(workdir, PROBE_FILE))

  def due(self, step: int, first: bool) -> bool:
    return first or step % self.every == 0

  def __call__(self, state, step: int, board=None):
    """`state` with this probe's accuracies recorded in its TA optimizer state."""
    start = time.perf_counter()
    self.model.params, self.model.step = state.params, step
    accuracy = perspectives_lib.dev_accuracy(self.model, self.suite, self.names,
                                             self.max_new_tokens, len(self.suite.questions))
    ta_opt_state = capability.record_accuracy(
        state.ta_opt_state, np.array([accuracy[p] for p in self.names]), self.mu)
    seconds = time.perf_counter() - start
    self.seconds += seconds
    logging.info("probe at step %d (%.1f s): %s", step, seconds,
                 ", ".join(f"{p} {a:.2f}" for p, a in accuracy.items()))
    self.log["probes"].append(dict(step=step, accuracy=accuracy, seconds=seconds))
    if board is not None:
      board.scalars(step, {f"probe/{p}": a for p, a in accuracy.items()})
    return state.replace(ta_opt_state=ta_opt_state)

  def save(self, loop_s: float) -> None:
    """probe.json, with the probes' share of this run's loop time (steps + probes)."""
    self.log["probe_s"] = self.log.get("probe_s", 0.0) + self.seconds
    self.log["loop_s"] = self.log.get("loop_s", 0.0) + loop_s
    self.log["share_of_step_time"] = self.log["probe_s"] / max(
        self.log["loop_s"] - self.log["probe_s"], 1e-9)
    logging.info("probe: %.1f s in %d probes, %.1f%% of the step time", self.log["probe_s"],
                 len(self.log["probes"]), 100 * self.log["share_of_step_time"])
    if jax.process_index() == 0:
      paths.write_json(self.path, self.log)
    self.seconds = 0.0
