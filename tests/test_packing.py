"""Packed rationales and accumulation over questions give the padded full-batch MIND step:
the same CE, alpha, losses, student and TA updates and inertia table (rtol 1e-5), on 1
and 8 devices; and the packer itself: every present rationale once, in its slot."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mind_jax import inertia, mind_step, state as state_lib
from mind_jax.data import packing
from mind_jax.models import decoder, lora
from mind_jax.models.decoder import Decoder
from tests.helpers import assert_trees_close
from tests.test_mind import (B, E, K, T, Setup, _assert_metrics_close, _assert_states_close,
                             _batch, _config)

ROW_LENGTH, A = 64, 8


def _packed(seed, micro_batches=1):
  """_batch(seed) packed into 16 rows (8 per micro-batch for 2): room for every rationale
  (checked by _run), and a multiple of the 8-device mesh's data * fsdp = 4."""
  return packing.pack_batch(_batch(seed), 16 // micro_batches, ROW_LENGTH, micro_batches, A)


class PackedSetup(Setup):
  """Setup (tests/test_mind.py) whose batches are packed and/or split into micro-batches."""

  def __init__(self, config, mesh_shape=(1, 1, 1), micro_batches=1, packed=True):
    super().__init__(config, mesh_shape)
    self.micro_batches, self.packed = micro_batches, packed
    example = self.make(0)
    self.batch_shardings = mind_step.batch_shardings(
        {k: v.shape for k, v in example.items()}, self.mesh, config.mesh.rules)

  def make(self, seed):
    return _packed(seed, self.micro_batches) if self.packed else _batch(seed)

  def step(self, phase):
    return mind_step.jit_mind_step(self.model_config, self.ta_config, self.optimizer,
                                   self.ta_optimizer, self.settings, phase, self.shardings,
                                   self.batch_shardings, self.micro_batches)


def _run(setup, schedule=(("warmup", 2), ("joint", 3))):
  state, seen = setup.init(), []
  for phase, count in schedule:
    step = setup.step(phase)
    for i in range(count):
      state, metrics = step(state, setup.put(setup.make(i)))
      metrics = jax.device_get(metrics)
      assert metrics.pop("packing_overflow", 0) == 0  # else the batches would differ
      metrics.pop("packed_fill", None)
      seen.append(metrics)
  return state, seen


def _multi_steps_state(ta_opt_state) -> optax.MultiStepsState:
  """The TA's MultiSteps state, found by its type as inertia.inertia_state_of finds the
  filter's: a change to the TA's optax chain must not silently compare other states."""
  def is_multi(node):
    return isinstance(node, optax.MultiStepsState)
  [found] = [node for node in jax.tree.leaves(ta_opt_state, is_leaf=is_multi) if is_multi(node)]
  return found


def _consistency_config():
  config = _config()
  config.mind.consistency_weight = 0.5  # the answer positions come from the packed rows
  config.mind.max_answer_tokens = A
  return config


# ------------------------------------------------------------------ the packer


def test_pack_places_every_present_rationale_once_in_its_slot():
  batch = _batch(3)
  packed = packing.pack_batch(batch, 8, ROW_LENGTH, 2, A)
  lengths = packing.slot_lengths(batch)
  assert packed["packed_ids"].shape == (2, 8, ROW_LENGTH)
  np.testing.assert_array_equal(packed["packing_dropped"], 0)
  for m, questions in enumerate(packing.micro_batch_questions(B, 2)):
    slots = packed["packed_slots"][m]
    for j, q in enumerate(questions):
      for k in range(K):
        where = slots == j * K + k
        assert where.sum() == lengths[q, k]  # absent slots take no token
        if lengths[q, k]:
          np.testing.assert_array_equal(packed["packed_ids"][m][where],
                                        batch["input_ids"][q, k, :lengths[q, k]])
          np.testing.assert_array_equal(packed["packed_positions"][m][where],
                                        np.arange(lengths[q, k]))
          # Scored targets: the padded layout's loss_mask[1:], one segment at a time.
          assert packed["packed_weights"][m][where].sum() == batch["loss_mask"][
              q, k, 1:lengths[q, k]].sum()
  real = packed["packed_segments"] > 0
  np.testing.assert_array_equal(real, packed["packed_slots"] < (B // 2) * K)
  assert packing.fill_fraction(packed) == real.mean()


def test_a_batch_that_does_not_fit_counts_what_it_leaves_out():
  batch = _batch(4)
  needed = packing.rows_needed(batch, ROW_LENGTH, 1)
  packed = packing.pack_batch(batch, needed - 1, ROW_LENGTH, 1, A)
  dropped = int(packed["packing_dropped"].sum())
  assert dropped > 0
  assert batch["present"].sum() - packed["present"].sum() == dropped
  kept_tokens = packing.slot_lengths({**batch, "present": packed["present"]}).sum()
  assert (packed["packed_segments"] > 0).sum() == kept_tokens


def test_rows_longer_than_the_records_are_required():
  with pytest.raises(ValueError, match="train.seq_len=16 is shorter"):
    packing.pack_batch(_batch(0), 8, 16, 1, A)


def test_first_fit_decreasing_and_the_automatic_row_count():
  rows = packing.first_fit_decreasing([5, 7, 3, 2], 10)
  assert sorted(sum(rows, [])) == [0, 1, 2, 3]
  assert all(sum([5, 7, 3, 2][i] for i in row) <= 10 for row in rows)
  assert len(rows) == 2
  chosen = packing.choose_rows([_batch(0), _batch(1)], ROW_LENGTH, 1, multiple=4)
  worst = max(packing.rows_needed(_batch(s), ROW_LENGTH, 1) for s in (0, 1))
  assert chosen % 4 == 0 and worst <= chosen < worst + 4


def test_balanced_windows_regroup_the_same_questions_into_equal_micro_batches():
  window = [_batch(s) for s in range(4)]
  regrouped = packing.balanced_window(window, micro_batches=2)
  assert len(regrouped) == 4 and all(len(b["present"]) == B for b in regrouped)
  # The same questions, each once, with all their arrays moved together.
  np.testing.assert_array_equal(
      np.sort(np.concatenate([b["example_index"] for b in regrouped]), kind="stable"),
      np.sort(np.concatenate([b["example_index"] for b in window]), kind="stable"))
  index_of = {}
  for b in window:
    for i, e in enumerate(b["example_index"]):
      index_of.setdefault(int(e), []).append(b["input_ids"][i])
  for b in regrouped:
    for i, e in enumerate(b["example_index"]):
      assert any(np.array_equal(b["input_ids"][i], ids) for ids in index_of[int(e)])
  # Micro-batches (questions m, m + 2, ...) carry nearly equal token totals.
  totals = [packing.slot_lengths(b)[m::2].sum() for b in regrouped for m in range(2)]
  raw = [packing.slot_lengths(b)[m::2].sum() for b in window for m in range(2)]
  assert np.ptp(totals) < np.ptp(raw) and np.ptp(totals) <= 2 * T


def test_balanced_batches_resume_mid_window_with_the_same_batches():
  stream = [_batch(s) for s in range(12)]

  def read_from(p):
    return iter(stream[p:])
  straight = list(itertools.islice(packing.balanced_batches(read_from, 0, 4, 2), 8))
  resumed = list(itertools.islice(packing.balanced_batches(read_from, 5, 4, 2), 3))
  for a, b in zip(straight[5:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


# ------------------------------------------------------------------ equal to the padded step


def test_packed_forward_gives_the_padded_ce_answers_and_gradients():
  setup = Setup(_consistency_config())
  state, model = setup.init(), Decoder(setup.model_config)
  batch, packed = _batch(0), _packed(0)
  groups = mind_step.slot_groups(setup.settings, K, T)
  ce, answers = mind_step.student_forward(state.params, model, batch, groups, A)
  one = {k: v[0] if k in packing.MICRO_KEYS else v for k, v in packed.items()}
  packed_ce, _, packed_answers = mind_step.packed_student_forward(state.params, model, one,
                                                                  B, K, A)
  present = batch["present"] > 0
  np.testing.assert_allclose(packed_ce[present], ce[present], rtol=1e-5)
  valid = np.asarray(answers[1]) > 0
  np.testing.assert_array_equal(np.asarray(packed_answers[1]) > 0, valid & present[..., None])
  np.testing.assert_allclose(np.asarray(packed_answers[0])[valid & present[..., None]],
                             np.asarray(answers[0])[valid & present[..., None]],
                             rtol=1e-5, atol=1e-5)
  scores = jnp.asarray(np.random.RandomState(1).rand(B, K), jnp.float32)

  def loss(p, b):
    return mind_step.student_loss_and_grads(p, model, b, scores, setup.settings, 1, False)[0]
  np.testing.assert_allclose(loss(state.params, packed), loss(state.params, batch), rtol=1e-5)
  assert_trees_close(jax.grad(loss)(state.params, packed), jax.grad(loss)(state.params, batch))


@pytest.fixture(scope="module")
def padded_reference():
  """The padded full-batch run on 1 device that every variant below must give."""
  return _run(PackedSetup(_consistency_config(), (1, 1, 1), packed=False))


@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), (2, 2, 2)])
def test_packed_steps_equal_padded_steps(padded_reference, mesh_shape):
  state_padded, metrics_padded = padded_reference
  state_packed, metrics_packed = _run(PackedSetup(_consistency_config(), mesh_shape))
  _assert_metrics_close(metrics_packed, metrics_padded)
  assert float(metrics_padded[-1]["l_cons"]) > 0
  _assert_states_close(state_packed, state_padded)


@pytest.mark.parametrize("packed,mesh_shape", [(False, (1, 1, 1)), (True, (2, 2, 2))])
def test_accumulation_over_questions_equals_the_full_batch(padded_reference, packed,
                                                           mesh_shape):
  """Two micro-batches of questions: one student update, one TA feedback per step, the
  same inertia table and MultiSteps as the full batch."""
  state_full, metrics_full = padded_reference
  state_acc, metrics_acc = _run(PackedSetup(_consistency_config(), mesh_shape,
                                            micro_batches=2, packed=packed))
  _assert_metrics_close(metrics_acc, metrics_full)
  _assert_states_close(state_acc, state_full)
  # The TA's MultiSteps saw as many feedbacks, and accumulated the same gradients (at the
  # TA's tolerance, see _assert_states_close; seen: 1.4e-5 on 8 devices).
  multi_acc, multi_full = (_multi_steps_state(s.ta_opt_state) for s in (state_acc, state_full))
  assert int(multi_acc.mini_step) == int(multi_full.mini_step) == 5 % 2
  assert_trees_close(multi_acc.acc_grads, multi_full.acc_grads, rtol=2e-4)


# ------------------------------------------------------------------ with LoRA


class LoraSetup(PackedSetup):
  """PackedSetup with rank-4 adapters on a frozen random base (mind_jax/models/lora.py)."""

  def __init__(self, config, mesh_shape=(1, 1, 1), micro_batches=1, packed=True):
    self.lora_config = lora.LoraConfig(rank=4, alpha=8.0, base_dtype="float32")
    super().__init__(config, mesh_shape, micro_batches, packed)
    self.abstract, self.shardings = state_lib.abstract_mind_state_and_shardings(
        self.model_config, self.optimizer, self.ta_config, self.ta_optimizer, E, K, self.mesh,
        config.mesh.rules, True, self.lora_config)

  def init(self):
    state = state_lib.init_mind_state(self.model_config, self.optimizer, self.ta_config,
                                      self.ta_optimizer, E, K, 0, self.shardings, True,
                                      self.lora_config)
    base = decoder.init_params(self.model_config, jax.random.PRNGKey(7))
    return state_lib.with_frozen_base(state, base, self.model_config, self.lora_config,
                                      self.shardings)

  def step(self, phase):
    return mind_step.jit_mind_step(self.model_config, self.ta_config, self.optimizer,
                                   self.ta_optimizer, self.settings, phase, self.shardings,
                                   self.batch_shardings, self.micro_batches, self.lora_config)


def test_lora_mind_step_packed_and_accumulated_equals_padded_and_keeps_the_base():
  """MIND with LoRA: only the adapters move, and packing + 2 micro-batches on 8 devices
  give the padded full-batch step on 1 device."""
  reference = LoraSetup(_consistency_config(), (1, 1, 1), packed=False)
  state_padded, metrics_padded = _run(reference)
  state_packed, metrics_packed = _run(LoraSetup(_consistency_config(), (2, 2, 2),
                                                micro_batches=2))
  _assert_metrics_close(metrics_packed, metrics_padded)
  assert_trees_close((state_packed.params, inertia.inertia_state_of(state_packed.ta_opt_state)),
                     (state_padded.params, inertia.inertia_state_of(state_padded.ta_opt_state)))
  # The TA at 3e-4 tensor-wise and single elements to two TA Adam steps (seen: 1.2e-4 for
  # one kernel, and one element of 32768 off by 1.3 steps, on an AVX-512 CPU): with the
  # adapters at 0 the student is its random base, whose CE of every perspective is ~log V
  # to 1e-6, so the TA's targets softmax(-L_bar / 0.05) amplify reduction-order noise,
  # which Adam then normalises into whole updates (see _assert_states_close). The CE,
  # losses, adapters and inertia table above are held to 1e-5.
  config = _consistency_config()
  ta_step = config.optim.learning_rate * config.mind.ta_lr_ratio
  assert_trees_close(state_packed.ta_params, state_padded.ta_params, rtol=3e-4,
                     element_atol=2 * ta_step)
  base = decoder.init_params(reference.model_config, jax.random.PRNGKey(7))
  for frozen, initial in zip(jax.tree.leaves(jax.device_get(state_packed.frozen)),
                             jax.tree.leaves(base)):
    np.testing.assert_array_equal(frozen, initial)  # the base is frozen, bitwise
  leaves = jax.tree_util.tree_flatten_with_path(state_packed.params)[0]
  assert leaves and all("lora" in jax.tree_util.keystr(path) for path, _ in leaves)
  assert any(float(jnp.abs(leaf).max()) > 0 for path, leaf in leaves
             if "lora_b" in jax.tree_util.keystr(path))  # B starts at 0 and was trained
