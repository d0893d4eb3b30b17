"""MIND: hand-computed losses, selection and fusion, the inertia filter, MultiSteps,
gradient isolation, sharded == single device, and checkpointed inertia state."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mind_jax import checkpoint, inertia, losses, mind_step, sharding, state as state_lib
from mind_jax.config import default_config
from mind_jax.models.decoder import Decoder, DecoderConfig
from mind_jax.ta import TAConfig
from tests.helpers import assert_trees_close

B, K, T, E, N = 8, 4, 32, 16, 20


# ------------------------------------------------------------------ hand-computed values


def test_listnet_kl_hand_computed():
  s = jnp.array([[1.0, 0.0, 3.0]])
  l_bar = jnp.array([[1.0, 3.0, 0.5]])
  present = jnp.array([[1.0, 1.0, 0.0]])  # the third perspective is absent
  # tau = 2 over the two present ones: p = softmax([0.5, 0]), q = softmax([-0.5, -1.5]).
  p = np.exp([0.5, 0.0]) / np.exp([0.5, 0.0]).sum()
  q = np.exp([-0.5, -1.5]) / np.exp([-0.5, -1.5]).sum()
  expected = np.sum(p * np.log(p / q))
  got = losses.listnet_kl(s, l_bar, present, tau=2.0)
  np.testing.assert_allclose(float(got[0]), expected, rtol=1e-5)  # fp32
  assert expected > 0.01  # a non-trivial case
  # Identical rankings give zero.
  same = losses.listnet_kl(jnp.array([[1.0, 2.0]]), jnp.array([[-1.0, -2.0]]),
                           jnp.ones((1, 2)), tau=1.0)
  np.testing.assert_allclose(float(same[0]), 0.0, atol=1e-7)


def test_jensen_shannon_hand_computed():
  log_p = jnp.log(jnp.array([0.5, 0.5]))
  log_q = jnp.log(jnp.array([1.0, 1e-30]))
  # M = (0.75, 0.25): KL(P||M) = 0.5 ln(2/3) + 0.5 ln 2, KL(Q||M) = ln(4/3).
  expected = 0.5 * ((0.5 * np.log(2 / 3) + 0.5 * np.log(2)) + np.log(4 / 3))
  np.testing.assert_allclose(float(losses.jensen_shannon(log_p, log_q)), expected, rtol=1e-5)
  np.testing.assert_allclose(float(losses.jensen_shannon(log_p, log_p)), 0.0, atol=1e-7)
  assert expected == pytest.approx(0.215762, abs=1e-6)


def test_selection_with_beta():
  s = jnp.array([[1.0, 0.85, 0.5, 2.0]])
  present = jnp.array([[1.0, 1.0, 1.0, 0.0]])  # the highest score is absent: ignored
  np.testing.assert_array_equal(losses.select(s, present, beta=0.8), [[1, 1, 0, 0]])
  np.testing.assert_array_equal(losses.select(s, present, beta=0.4), [[1, 1, 1, 0]])
  np.testing.assert_array_equal(losses.select(s, present, beta=1.0), [[1, 0, 0, 0]])


def test_masked_softmax_with_absent_perspectives():
  got = losses.masked_softmax(jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[1.0, 0.0, 1.0]]))
  e1, e3 = np.exp(1.0), np.exp(3.0)
  np.testing.assert_allclose(got, [[e1 / (e1 + e3), 0.0, e3 / (e1 + e3)]], rtol=1e-6)
  # Fusion: alpha over I only, with temperature tau_s.
  alpha, selected = losses.fusion_weights(jnp.array([[2.0, 1.9, 0.1]]), jnp.ones((1, 3)),
                                          beta=0.9, tau_s=0.5)
  w = np.exp(np.array([2.0, 1.9]) / 0.5)
  np.testing.assert_allclose(alpha, [[w[0] / w.sum(), w[1] / w.sum(), 0.0]], rtol=1e-6)
  np.testing.assert_array_equal(selected, [[1, 1, 0]])


def test_inertia_example_mode_ema_and_first_sighting():
  state = inertia.init_state("example", num_examples=4, num_perspectives=2)
  idx = jnp.array([2])
  # First sighting sets L_bar to CE; an absent perspective records nothing.
  state, l_bar = inertia.observe(state, "example", 0.9, idx, jnp.array([[2.0, 5.0]]),
                                 jnp.array([[1.0, 0.0]]))
  np.testing.assert_allclose(l_bar, [[2.0, 0.0]])
  np.testing.assert_allclose(state.seen[2], [1.0, 0.0])
  # Second sighting: 0.9 * 2 + 0.1 * 1 = 1.9; perspective 1 is seen for the first time.
  state, l_bar = inertia.observe(state, "example", 0.9, idx, jnp.array([[1.0, 3.0]]),
                                 jnp.array([[1.0, 1.0]]))
  np.testing.assert_allclose(l_bar, [[1.9, 3.0]], rtol=1e-6)
  np.testing.assert_allclose(state.ema[2], [1.9, 3.0], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(state.ema)[[0, 1, 3]], 0.0)  # other examples untouched


def test_inertia_perspective_and_instant_modes():
  state = inertia.init_state("perspective", 10, 2)
  losses_ = jnp.array([[1.0, 4.0], [3.0, 8.0]])
  present = jnp.array([[1.0, 1.0], [1.0, 0.0]])
  state, l_bar = inertia.observe(state, "perspective", 0.5, jnp.array([0, 1]), losses_, present)
  np.testing.assert_allclose(state.ema, [2.0, 4.0])  # batch means over present rows
  state, l_bar = inertia.observe(state, "perspective", 0.5, jnp.array([0, 1]),
                                 jnp.array([[4.0, 0.0], [4.0, 0.0]]), jnp.ones((2, 2)))
  np.testing.assert_allclose(l_bar, [[3.0, 2.0], [3.0, 2.0]])
  state = inertia.init_state("instant", 10, 2)
  _, l_bar = inertia.observe(state, "instant", 0.0, jnp.array([0, 1]), losses_, present)
  np.testing.assert_allclose(l_bar, losses_)


def test_ta_optimizer_multisteps_accumulates_then_applies_the_mean():
  params = {"w": jnp.array([1.0, -2.0])}
  opt = inertia.ta_optimizer("example", 3, 2, learning_rate=0.1, every_k=2,
                             b1=0.9, b2=0.999, eps=1e-8)
  state = opt.init(params)

  def feedback(state):  # what a step records, before its update stores it
    return dict(inertia_state=inertia.observe(
        inertia.inertia_state_of(state), "example", 0.9, jnp.array([0]), jnp.ones((1, 2)),
        jnp.ones((1, 2)))[0])
  u1, state = opt.update({"w": jnp.array([1.0, 2.0])}, state, params, **feedback(state))
  np.testing.assert_array_equal(u1["w"], [0.0, 0.0])  # accumulating: no update yet
  u2, state = opt.update({"w": jnp.array([3.0, -4.0])}, state, params, **feedback(state))
  # One Adam step on the mean gradient (2, -1): the first Adam step is -lr * sign.
  reference = optax.adam(0.1, b1=0.9, b2=0.999, eps=1e-8)
  ref_u, _ = reference.update({"w": jnp.array([2.0, -1.0])}, reference.init(params), params)
  np.testing.assert_allclose(u2["w"], ref_u["w"], rtol=1e-6)
  np.testing.assert_allclose(u2["w"], [-0.1, 0.1], rtol=1e-5)
  # The inertia filter recorded both sightings inside the same optimizer state.
  np.testing.assert_allclose(inertia.inertia_state_of(state).ema[0], [1.0, 1.0])


def test_inertia_state_is_found_by_its_type_wherever_the_chain_puts_it():
  opt = optax.chain(optax.scale(1.0), inertia.inertia_filter("example", 3, 2))
  state = jax.eval_shape(opt.init, {"w": jnp.zeros(2)})
  assert inertia.inertia_state_of(state).ema.shape == (3, 2)
  axes = inertia.logical_axes(state)
  assert axes[1] == inertia.InertiaState(("examples", None), ("examples", None))
  assert jax.tree.leaves(axes[0], is_leaf=lambda x: x is None) in ([], [None])


def test_beta_one_with_a_clearly_best_perspective_is_one_hot():
  alpha, _ = losses.fusion_weights(jnp.array([[0.1, 5.0, 0.2, 0.3]]), jnp.ones((1, 4)),
                                   beta=1.0, tau_s=1.0)
  np.testing.assert_array_equal(alpha, [[0.0, 1.0, 0.0, 0.0]])


# ------------------------------------------------------------------ the step


def _config(weighting="ta"):
  c = default_config()
  c.model.hidden_size, c.model.intermediate_size = 64, 128
  c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = 8, 4, 8
  c.method = "mind"
  c.mind.weighting = weighting
  c.mind.ta_grad_accum = 2
  # Random token sequences give nearly equal CE per perspective; a sharp TA
  # temperature keeps the TA's gradients well above float noise (Adam would
  # otherwise normalise that noise into the updates).
  c.mind.tau = 0.05
  return c


def _batch(seed=0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, 512, (B, K, T)).astype(np.int32)
  lengths = rng.randint(20, T, (B, K))
  attn = (np.arange(T)[None, None, :] < lengths[..., None]).astype(np.int32)
  loss_mask = attn.copy()
  loss_mask[..., :8] = 0  # the prompt
  answer_mask = np.zeros_like(attn)
  for b in range(B):
    for k in range(K):
      end = lengths[b, k]
      answer_mask[b, k, end - 4:end - 1] = 1
      ids[b, k, end - 4:end - 1] = [7, 8, 9]  # the same answer in every slot
  present = (rng.rand(B, K) > 0.2).astype(np.float32)
  present[:, 0] = 1
  return dict(example_index=rng.permutation(N)[:B].astype(np.int32), input_ids=ids,
              attention_mask=attn, loss_mask=loss_mask, answer_mask=answer_mask,
              present=present, question_embedding=rng.randn(B, E).astype(np.float32),
              rationale_embedding=rng.randn(B, K, E).astype(np.float32))


class Setup:
  def __init__(self, config, mesh_shape=(1, 1, 1)):
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_shape
    self.mesh = sharding.make_mesh(config.mesh, jax.devices()[:int(np.prod(mesh_shape))])
    self.model_config = DecoderConfig.from_config(config.model)
    self.ta_config = TAConfig.from_config(config.ta)
    self.optimizer = state_lib.make_optimizer(config.optim, 100)
    self.ta_optimizer = state_lib.make_ta_optimizer(config, N, K)
    self.settings = mind_step.MindSettings.from_config(config.mind, [f"p{i}" for i in range(K)])
    self.abstract, self.shardings = state_lib.abstract_mind_state_and_shardings(
        self.model_config, self.optimizer, self.ta_config, self.ta_optimizer, E, K, self.mesh,
        config.mesh.rules, self.settings.uses_ta)
    self.batch_shardings = {k: sharding.batch_sharding(self.mesh, config.mesh.rules, v.shape)
                            for k, v in _batch().items()}

  def init(self):
    return state_lib.init_mind_state(self.model_config, self.optimizer, self.ta_config,
                                     self.ta_optimizer, E, K, 0, self.shardings,
                                     self.settings.uses_ta)

  def step(self, phase):
    return mind_step.jit_mind_step(self.model_config, self.ta_config, self.optimizer,
                                   self.ta_optimizer, self.settings, phase, self.shardings,
                                   self.batch_shardings)

  def put(self, batch):
    return {k: jax.device_put(v, self.batch_shardings[k]) for k, v in batch.items()}


def _run(setup, schedule=(("warmup", 2), ("joint", 3)), make_batch=None):
  make_batch = make_batch or _batch
  state, seen = setup.init(), []
  for phase, count in schedule:
    step = setup.step(phase)
    for i in range(count):
      state, metrics = step(state, setup.put(make_batch(i)))
      seen.append(jax.device_get(metrics))
  return state, seen


def test_gradient_isolation():
  setup = Setup(_config())
  state = setup.init()
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  model = Decoder(setup.model_config)
  scores = jnp.abs(jnp.asarray(np.random.RandomState(1).randn(B, K), jnp.float32)) + 0.1
  # The student's loss does not depend on the TA's scores (nor so on its params).
  d_scores = jax.grad(lambda s: mind_step.student_objective(
      state.params, model, batch, s, setup.settings)[0])(scores)
  np.testing.assert_array_equal(d_scores, 0.0)
  # The TA's loss does not reach the student's params through the CE feedback.
  def meta_loss(params):
    ce = mind_step.student_forward(params, model, batch,
                                   mind_step.slot_groups(setup.settings, K, T))[0]
    l_bar = inertia.observe(inertia.inertia_state_of(state.ta_opt_state), "example",
                            0.9, batch["example_index"], ce, batch["present"])[1]
    return jnp.mean(losses.listnet_kl(scores, l_bar, batch["present"], 1.0))
  d_params = jax.grad(meta_loss)(state.params)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(d_params))
  # ...while the student's own loss does move them (the check above can fail).
  d_student = jax.grad(lambda p: mind_step.student_objective(
      p, model, batch, scores, setup.settings)[0])(state.params)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(d_student)) > 0


def test_warmup_freezes_the_student_and_trains_the_ta():
  setup = Setup(_config())
  state = setup.init()
  params0, ta0 = jax.device_get(state.params), jax.device_get(state.ta_params)
  step = setup.step("warmup")
  for i in range(2):  # G_ta = 2: the TA applies its first update on the second step
    state, _ = step(state, setup.put(_batch(i)))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params0),
                                                  jax.tree.leaves(jax.device_get(state.params))))
  assert not all(np.array_equal(a, b) for a, b in
                 zip(jax.tree.leaves(ta0), jax.tree.leaves(jax.device_get(state.ta_params))))


# l_meta is a KL of ~0.1 between softmaxes of CE values (~6 nats) that agree to rtol 1e-5
# across meshes (~6e-5 absolute): a reduction-order change moves it by up to ~1e-5
# absolute (seen: 2.5e-6 on an AVX-512 CPU), above the 1e-6 floor of the other metrics.
METRIC_ATOL = {"l_meta": 1e-5}


def _assert_metrics_close(metrics, reference):
  for a, b in zip(reference, metrics):
    for key in a:
      np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=METRIC_ATOL.get(key, 1e-6),
                                 err_msg=key)


def _assert_states_close(state, reference):
  """The student's params and the inertia table at rtol 1e-5. The TA's params at 2e-4
  tensor-wise, and single elements to two TA Adam steps: the TA's targets are
  softmax(-L_bar / tau) with tau = 0.05 here, which turns the CE's ~1e-6 reduction-order
  noise into ~1e-4 in its gradients, and Adam divides each update by the root of its own
  squared gradients, so a weight whose gradient is ~1e-6 of the others (the synergy key
  kernel: softmax over K is shift invariant) turns that noise into update noise (seen:
  7.5e-5 tensor-wise for align_in's bias once the activations were pinned to the batch
  axes, and one element of 16384 off by 1.5e-3, one step, with lr_ta 1.5e-3, on an
  AVX-512 CPU: its gradient changed sign between the two meshes). A
  sharding bug moves whole tensors by far more. The TA's Adam moments are not compared,
  for the same reason."""
  assert_trees_close((state.params, inertia.inertia_state_of(state.ta_opt_state)),
                     (reference.params, inertia.inertia_state_of(reference.ta_opt_state)))
  config = _config()
  ta_step = config.optim.learning_rate * config.mind.ta_lr_ratio
  assert_trees_close(state.ta_params, reference.ta_params, rtol=2e-4,
                     element_atol=2 * ta_step)


def test_mind_step_on_8_devices_equals_1_device():
  state1, metrics1 = _run(Setup(_config(), (1, 1, 1)))
  state8, metrics8 = _run(Setup(_config(), (2, 2, 2)))
  _assert_metrics_close(metrics8, metrics1)
  _assert_states_close(state8, state1)
  ema = inertia.inertia_state_of(state8.ta_opt_state).ema
  assert ema.sharding.spec[0] is not None  # the [N, K] table is split over the mesh


def test_restored_inertia_state_gives_the_same_next_step(tmp_path):
  setup = Setup(_config())
  state, _ = _run(setup, (("warmup", 1), ("joint", 2)))
  mngr = checkpoint.manager(str(tmp_path), async_save=False)
  checkpoint.save(mngr, 3, state.params, {"data_position": 3},
                  opt=dict(opt_state=state.opt_state, step=state.step, rng=state.rng,
                           ta_params=state.ta_params, ta_opt_state=state.ta_opt_state))
  mngr.close()
  target = sharding.with_shardings(setup.abstract, setup.shardings)
  _, items = checkpoint.restore(str(tmp_path), 3, {
      "params": target.params,
      "opt": dict(opt_state=target.opt_state, step=target.step, rng=target.rng,
                  ta_params=target.ta_params, ta_opt_state=target.ta_opt_state)})
  o = items["opt"]
  restored = state_lib.TrainState(step=o["step"], params=items["params"],
                                  opt_state=o["opt_state"], rng=o["rng"],
                                  ta_params=o["ta_params"], ta_opt_state=o["ta_opt_state"])
  # Found by type: a restore that lost the NamedTuple (plain tuple or dict) raises here.
  assert float(jnp.abs(inertia.inertia_state_of(restored.ta_opt_state).ema).sum()) > 0
  step = setup.step("joint")
  next_a, metrics_a = step(state, setup.put(_batch(7)))
  next_b, metrics_b = step(restored, setup.put(_batch(7)))
  for a, b in zip(jax.tree.leaves(jax.device_get((next_a, metrics_a))),
                  jax.tree.leaves(jax.device_get((next_b, metrics_b)))):
    np.testing.assert_array_equal(a, b)


def test_uniform_alpha_without_consistency_is_the_union_loss():
  config = _config()
  config.mind.fusion = "uniform"
  config.mind.beta = 1e-6  # every present perspective is selected
  config.mind.consistency_weight = 0.0
  setup = Setup(config)
  state = setup.init()
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  model = Decoder(setup.model_config)
  scores = jnp.abs(jnp.asarray(np.random.RandomState(1).randn(B, K), jnp.float32)) + 0.1
  mind_loss, aux = mind_step.student_objective(state.params, model, batch, scores,
                                               setup.settings)
  union = Setup(_config("uniform"))
  union_settings = union.settings.__class__(**{**union.settings.__dict__,
                                               "consistency_weight": 0.0})
  union_loss, _ = mind_step.student_objective(state.params, model, batch, scores, union_settings)
  # By hand: the mean over questions of the mean CE over the present rationales.
  ce, present = np.asarray(aux["ce"]), _batch()["present"]
  by_hand = np.mean(np.sum(ce * present, axis=1) / present.sum(axis=1))
  np.testing.assert_allclose(float(mind_loss), by_hand, rtol=1e-6)
  np.testing.assert_allclose(float(union_loss), by_hand, rtol=1e-6)


@pytest.mark.parametrize("weighting", ["uniform", "loss", "single"])
def test_baselines_run_without_a_ta(weighting):
  config = _config(weighting)
  config.mind.single_perspective = "p0"
  setup = Setup(config)
  state, metrics = _run(setup, (("joint", 2),))
  assert state.ta_params is None
  assert np.isfinite(metrics[-1]["loss"])
  if weighting == "single":
    np.testing.assert_allclose(metrics[-1]["alpha"], [1.0, 0.0, 0.0, 0.0])


# ------------------------------------------------------------------ cheaper reads, same losses

WIDTHS = (16, 24, 24, 32)  # per-perspective longest slot; T = 32


def _short_batch(seed=0):
  """_batch() with perspective k's sequences no longer than WIDTHS[k]."""
  batch = _batch(seed)
  rng = np.random.RandomState(100 + seed)
  for k, width in enumerate(WIDTHS):
    lengths = rng.randint(12, width + 1, B)
    real = np.arange(T)[None, :] < lengths[:, None]
    batch["attention_mask"][:, k] = real
    batch["loss_mask"][:, k] = real & (np.arange(T)[None, :] >= 8)
    batch["answer_mask"][:, k] = 0
    for b in range(B):
      batch["input_ids"][b, k, lengths[b] - 4:lengths[b] - 1] = [7, 8, 9]
      batch["answer_mask"][b, k, lengths[b] - 4:lengths[b] - 1] = 1
  return batch


def _run_short(setup, groups, steps=3):
  setup.settings = dataclasses.replace(setup.settings, slot_groups=groups)
  return _run(setup, (("warmup", 1), ("joint", steps)), _short_batch)


def test_per_perspective_widths_give_the_same_step_on_1_and_8_devices():
  """Reading each perspective up to its longest slot (train.slot_width_multiple) is the
  full-length step with less padding: the same CE, alpha, losses and updates."""
  groups = (((0,), 16), ((1, 2), 24), ((3,), 32))
  config = _config()
  config.mind.consistency_weight = 0.5  # the answer positions are gathered per group
  state_full, metrics_full = _run_short(Setup(config, (1, 1, 1)), ())
  state_cut, metrics_cut = _run_short(Setup(_config_like(config), (2, 2, 2)), groups)
  _assert_metrics_close(metrics_cut, metrics_full)
  assert float(metrics_full[-1]["l_cons"]) > 0
  _assert_states_close(state_cut, state_full)


def _config_like(config):
  copy = _config()
  copy.mind.consistency_weight = config.mind.consistency_weight
  return copy


def test_single_path_reads_only_its_slot():
  config = _config("single")
  config.mind.single_perspective = "p2"
  setup = Setup(config)
  state = setup.init()
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  batch["present"] = batch["present"].at[:, 2].set(1.0)
  model = Decoder(setup.model_config)
  scores = jnp.zeros((B, K))
  assert mind_step.slot_groups(setup.settings, K, T) == (((2,), T),)
  loss, aux = mind_step.student_objective(state.params, model, batch, scores, setup.settings)
  # The same loss as reading all K slots and weighting slot 2 alone.
  full_ce, _ = mind_step.student_forward(state.params, model, batch, ((tuple(range(K)), T),))
  np.testing.assert_allclose(float(loss), float(jnp.mean(full_ce[:, 2])), rtol=1e-6)
  np.testing.assert_allclose(aux["ce"][:, 2], full_ce[:, 2], rtol=1e-6)
  np.testing.assert_array_equal(aux["ce"][:, [0, 1, 3]], 0.0)  # never read
  grad = jax.grad(lambda p: mind_step.student_objective(p, model, batch, scores,
                                                        setup.settings)[0])(state.params)
  full_grad = jax.grad(lambda p: jnp.mean(mind_step.student_forward(
      p, model, batch, ((tuple(range(K)), T),))[0][:, 2]))(state.params)
  assert_trees_close(grad, full_grad, rtol=1e-5)
  lengths = np.asarray(batch["loss_mask"][:, 2, 1:]).sum(-1)
  np.testing.assert_allclose(float(aux["trained_tokens"]), lengths.sum())


def test_alpha_floor_and_entropy_by_hand():
  alpha = jnp.array([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
  present = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
  mixed = losses.mix_with_uniform(alpha, present, 0.3)
  # Row 0: 0.7 * one-hot + 0.3 / 3 over the 3 present; row 1: + 0.3 / 4 over all four.
  np.testing.assert_allclose(mixed, [[0.8, 0.1, 0.1, 0.0], [0.425, 0.425, 0.075, 0.075]],
                             rtol=1e-6)
  np.testing.assert_allclose(mixed.sum(-1), 1.0, rtol=1e-6)
  h = losses.entropy(jnp.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]))
  np.testing.assert_allclose(h, [np.log(2.0), 0.0], atol=1e-7)
  # In the step: the floor keeps every present perspective weighted, with the TA's order.
  config = _config()
  config.mind.alpha_floor = 0.4
  settings = mind_step.MindSettings.from_config(config.mind, [f"p{i}" for i in range(K)])
  scores = jnp.array([[3.0, 1.0, 0.5, 0.2]])
  got, selected = mind_step.fusion_alpha(settings, scores, None, jnp.ones((1, K)))
  plain, _ = mind_step.fusion_alpha(dataclasses.replace(settings, alpha_floor=0.0), scores,
                                    None, jnp.ones((1, K)))
  np.testing.assert_allclose(got, 0.6 * plain + 0.1, rtol=1e-6)
  np.testing.assert_array_equal(selected, 1.0)
  with pytest.raises(ValueError, match="alpha_floor"):
    config.mind.alpha_floor = 1.5
    mind_step.MindSettings.from_config(config.mind, [f"p{i}" for i in range(K)])
