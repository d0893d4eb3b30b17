"""The NaN/inf guard (train.on_nonfinite).

In the jitted step, `guard` keeps the old params and optimizer states (the TA's and the
inertia table too) when the loss or the new state is not finite, and reports it as the
metric `nonfinite` (1.0 on such a step). The step and rng still advance: the batch was
read, so the data position moves on. A guarded state is finite by construction, so no
checkpoint can hold NaN and rotation can never delete the last finite one.

On the host, `Watch` keeps the metric's device arrays and fetches them only where the loop
waits for the device anyway (log lines, checkpoints, the end), so no step waits for the
host, then applies the policy: "stop" at the first non-finite step, "skip" unless more than
train.max_nonfinite_skips come in a row.
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp

POLICIES = ("stop", "skip")
STATE_FIELDS = ("params", "opt_state", "ta_params", "ta_opt_state")


def all_finite(*trees) -> jax.Array:
  """True (a bool scalar) when every float in the trees is finite."""
  checks = [jnp.all(jnp.isfinite(x)) for tree in trees for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def guard(old_state, new_state, loss: jax.Array):
  """(state, nonfinite): `new_state`, or on a non-finite loss or state, `old_state`'s
  params and optimizer states with `new_state`'s step and rng."""
  finite = jnp.isfinite(loss) & all_finite(*(getattr(new_state, f) for f in STATE_FIELDS))
  kept = {f: jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                          getattr(new_state, f), getattr(old_state, f))
          for f in STATE_FIELDS}
  return new_state.replace(**kept), (~finite).astype(jnp.float32)


class Watch:
  """The loop's side of train.on_nonfinite: `add` every step, `check` where it syncs."""

  def __init__(self, policy: str, max_skips: int):
    if policy not in POLICIES:
      raise ValueError(f"train.on_nonfinite={policy!r}: expected one of {POLICIES}")
    self.policy, self.max_skips = policy, max_skips
    self.pending: list[tuple[int, jax.Array]] = []
    self.in_a_row = 0   # non-finite steps in a row, up to the last checked step
    self.skipped = 0    # non-finite steps skipped in this run

  def add(self, step: int, metrics: dict) -> None:
    self.pending.append((step, metrics["nonfinite"]))

  def check(self) -> tuple[int, int] | None:
    """None when the run may go on; else (the step that stops it, the first non-finite
    step of its streak). Logs the steps skipped."""
    flags = jax.device_get([flag for _, flag in self.pending])
    steps = [step for step, _ in self.pending]
    self.pending = []
    skipped_now = []
    for step, flag in zip(steps, flags):
      if not flag:
        self.in_a_row = 0
        continue
      self.in_a_row += 1
      if self.policy == "stop" or self.in_a_row > self.max_skips:
        return step, step - self.in_a_row + 1
      skipped_now.append(step)
    if skipped_now:
      self.skipped += len(skipped_now)
      logging.warning("non-finite loss or state at step(s) %s: update(s) skipped "
                      "(train.on_nonfinite=skip; %d skipped in this run)",
                      ", ".join(map(str, skipped_now)), self.skipped)
    return None

  def message(self, step: int, first: int, last_good: str) -> str:
    if self.policy == "stop":
      return (f"non-finite loss or state at step {step} (train.on_nonfinite=stop): the run "
              f"stops without saving; last good checkpoint: {last_good}. Lower "
              "optim.learning_rate, or set train.on_nonfinite=skip")
    return (f"{self.in_a_row} non-finite steps in a row (steps {first}..{step}), more than "
            f"train.max_nonfinite_skips={self.max_skips}: the run stops without saving; last "
            f"good checkpoint: {last_good}")
