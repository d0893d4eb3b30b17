"""mind.capability (mind_jax/capability.py): learning progress by hand, that it moves the
TA's target toward the perspective whose CE falls (not the one whose CE is low), and that
it runs as a link of the TA's optax chain, checkpointed with it; "loss" adds nothing."""
import json

import jax
import numpy as np
import pytest

from mind_jax import capability, checkpoint, inertia, losses, sharding
from tests.test_mind import Setup, _config, _run


def test_progress_by_hand():
  state = capability.init_state(3)
  present = np.ones((2, 3), np.float32)
  present[1, 2] = 0  # an absent slot is not counted
  ce = np.array([[2.0, 1.0, 4.0], [4.0, 1.0, 9.0]], np.float32)
  state, target = capability.observe(state, ce, present, 0.5, 0.9)
  # First sighting: both EMAs take the batch means [3, 1, 4]; no progress anywhere yet.
  np.testing.assert_allclose(state.fast, [3.0, 1.0, 4.0])
  np.testing.assert_allclose(state.slow, [3.0, 1.0, 4.0])
  np.testing.assert_allclose(target, np.zeros((2, 3)), atol=1e-6)
  state, target = capability.observe(state, np.array([[1.0, 1.0, 4.0]] * 2, np.float32),
                                     np.ones((2, 3), np.float32), 0.5, 0.9)
  fast = np.array([0.5 * 3 + 0.5 * 1, 1.0, 4.0])
  slow = np.array([0.9 * 3 + 0.1 * 1, 1.0, 4.0])
  np.testing.assert_allclose(state.fast, fast, rtol=1e-6)
  np.testing.assert_allclose(state.slow, slow, rtol=1e-6)
  progress = (slow - fast) / slow
  z = (progress - progress.mean()) / (progress.std() + capability.EPS)
  np.testing.assert_allclose(target, np.broadcast_to(-z, (2, 3)), rtol=1e-5, atol=1e-6)


def test_progress_targets_the_falling_perspective_and_loss_the_low_one():
  """Perspective 0's CE is low and flat; perspective 1's is high and falling. The paper's
  target goes to 0; learning progress goes to 1."""
  state, present = capability.init_state(2), np.ones((4, 2), np.float32)
  for step in range(10):
    ce = np.tile(np.array([[0.5, 3.0 - 0.2 * step]], np.float32), (4, 1))
    state, target = capability.observe(state, ce, present, 0.5, 0.95)
  weights_progress = np.exp(losses.masked_log_softmax(-target, present))[0]
  weights_loss = np.exp(losses.masked_log_softmax(-ce, present))[0]
  assert weights_progress[1] > 0.8 and weights_loss[0] > 0.6  # tau = 1 in both


def _setup(capability_name):
  config = _config()
  config.mind.capability = capability_name
  return Setup(config)


def test_progress_runs_in_the_step_and_is_state_of_the_ta_chain(tmp_path):
  setup = _setup("progress")
  state, seen = _run(setup)
  progress_state = capability.progress_state_of(state.ta_opt_state)
  assert float(progress_state.seen.sum()) > 0 and np.isfinite(progress_state.slow).all()
  inertia.inertia_state_of(state.ta_opt_state)  # the inertia filter is still there
  assert all(np.isfinite(m["l_meta"]) for m in seen)
  # "loss" (the paper): no progress link at all, so old checkpoints keep their shape.
  plain, _ = _run(_setup("loss"), schedule=(("warmup", 1),))
  with pytest.raises(ValueError, match="expected one ProgressState"):
    capability.progress_state_of(plain.ta_opt_state)
  # Checkpointed with the TA optimizer: saved and restored unchanged, found by its type.
  mngr = checkpoint.manager(str(tmp_path), async_save=False)
  checkpoint.save(mngr, 5, state.params, {}, opt=dict(ta_opt_state=state.ta_opt_state))
  mngr.close()
  target = sharding.with_shardings(setup.abstract, setup.shardings)
  _, items = checkpoint.restore(str(tmp_path), 5, {
      "params": target.params, "opt": dict(ta_opt_state=target.ta_opt_state)})
  jax.tree.map(np.testing.assert_array_equal,
               capability.progress_state_of(items["opt"]["ta_opt_state"]), progress_state)


def test_bad_capability_settings_are_refused():
  from mind_jax import mind_step
  for field, value, match in (("capability", "accuracy_typo", "expected one of"),
                              ("progress_fast_mu", 0.99, "expected 0 <= fast < slow < 1")):
    config = _config()
    config.mind[field] = value
    with pytest.raises(ValueError, match=match):
      mind_step.MindSettings.from_config(config.mind, ["p0", "p1", "p2"])


# ------------------------------------------------------------------ accuracy


def test_accuracy_is_recorded_through_its_filter_and_targets_by_hand():
  setup = _setup("accuracy")
  opt = setup.init().ta_opt_state
  opt = capability.record_accuracy(opt, np.array([0.0, 1.0, 0.5, 0.5]), 0.5)
  state = capability.accuracy_state_of(opt)
  np.testing.assert_allclose(state.ema, [0.0, 1.0, 0.5, 0.5])  # the first probe as it is
  np.testing.assert_array_equal(state.seen, 1.0)
  opt = capability.record_accuracy(opt, np.array([1.0, 0.0, 0.5, 0.5]), 0.5)
  state = capability.accuracy_state_of(opt)
  np.testing.assert_allclose(state.ema, [0.5, 0.5, 0.5, 0.5])
  # Equal accuracies leave only lambda * L_bar; unequal ones their z-scores.
  l_bar = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
  np.testing.assert_allclose(capability.accuracy_target(state, l_bar, 0.1), 0.1 * l_bar,
                             atol=1e-6)
  state = capability.AccuracyState(np.array([0.0, 1.0, 0.5, 0.5], np.float32), np.ones(4))
  a = np.array([0.0, 1.0, 0.5, 0.5])
  z = (a - a.mean()) / (a.std() + capability.EPS)
  np.testing.assert_allclose(capability.accuracy_target(state, l_bar, 0.1), -z + 0.1 * l_bar,
                             rtol=1e-5)


def _answer_right_only_in(perspective):
  def answers(model, questions, asked, max_new_tokens, batch_size):
    del model, max_new_tokens, batch_size
    return [f"The answer is {q.answer}." if asked == perspective else "The answer is 0."
            for q in questions]
  return answers


def _probe(tmp_path, monkeypatch, setup, right):
  from mind_jax import inference, probe as probe_lib
  from mind_jax.data.questions import Question
  from mind_jax.eval import perspectives as perspectives_lib, suites as suites_lib
  monkeypatch.setattr(perspectives_lib, "answers", _answer_right_only_in(right))
  questions = tuple(Question(f"q{i}", f"What is {i} + 10?", str(i + 10)) for i in range(1, 5))
  model = inference.Model(str(tmp_path), 0, setup.model_config, None, None, [], 0, setup.mesh,
                          ())
  return probe_lib.Probe(suites_lib.Suite("probe", "numeric", questions), [f"p{i}" for i in range(4)],
                         model, every=2, mu=0.5, max_new_tokens=4,
                         path=str(tmp_path / "probe.json"))


def _signed_batch(i):
  """test_mind's random batch, each perspective's rationale embeddings marked (as a
  style marks real ones), so that the TA can tell the perspectives apart."""
  from tests.test_mind import _batch
  batch = _batch(i)
  for k in range(batch["rationale_embedding"].shape[1]):
    batch["rationale_embedding"][:, k, k] += 2.0
  return batch


def _scores_after(setup, state, steps=24, last=4):
  """The TA's mean score per perspective over the last steps of a TA warm-up."""
  step, seen = setup.step("warmup"), []
  for i in range(steps):
    state, metrics = step(state, setup.put(_signed_batch(i)))
    seen.append(np.asarray(jax.device_get(metrics["score"])))
  return np.mean(seen[-last:], axis=0)


def test_accuracy_moves_the_ta_to_the_perspective_the_student_answers(tmp_path, monkeypatch):
  """A student built to answer right only when asked for p2 (its CE no lower than the
  others'): the probe finds it, and the TA's scores go there; with the paper's target
  (capability=loss) they do not."""
  setup = _setup("accuracy")
  probe = _probe(tmp_path, monkeypatch, setup, "p2")
  state = probe(setup.init(), 0)
  np.testing.assert_allclose(capability.accuracy_state_of(state.ta_opt_state).ema,
                             [0.0, 0.0, 1.0, 0.0])
  scores = _scores_after(setup, state)
  assert np.argmax(scores) == 2 and scores[2] - np.delete(scores, 2).max() > 0.1, scores
  plain = _setup("loss")
  scores = _scores_after(plain, plain.init())
  assert scores[2] - np.delete(scores, 2).max() < 0.05, scores
  probe.save(loop_s=10.0)
  log = json.load(open(tmp_path / "probe.json"))
  assert log["probes"][0]["accuracy"] == {"p0": 0.0, "p1": 0.0, "p2": 1.0, "p3": 0.0}
  assert 0 < log["share_of_step_time"] < np.inf
