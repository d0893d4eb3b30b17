"""MIND through `mind_jax.train` on rationale records: the demo config and every
baseline config train, observability is written, and a resumed run is bitwise
the uninterrupted one."""
import glob
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from mind_jax import checkpoint, faults, inertia, tokenizer as tok_lib, train
from mind_jax.config import load_config_file
from mind_jax.data import records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K, T, E, N = 4, 32, 16, 24
NAMES = [f"perspective_{j}" for j in range(K)]


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
  """Synthetic well-formed records with a real tokenizer and manifest."""
  out = str(tmp_path_factory.mktemp("records"))
  tokenizer = tok_lib.train_bpe([f"question {i}? rationale {i} answer {i}" for i in range(200)],
                                300)
  tokenizer.save_pretrained(os.path.join(out, "tokenizer"))
  spec = records.RecordSpec(K, T, E)
  examples = records.synthetic_examples(N, spec, seed=0, vocab_size=len(tokenizer))
  shards = records.write_shards(examples, out, 4, spec)
  records.write_manifest(out, dict(
      perspectives=NAMES, num_perspectives=K, max_len=T,
      tokenizer=dict(name="test-bpe", fingerprint=tok_lib.fingerprint(tokenizer))), shards, spec)
  return out


def _tiny(config, records_dir, joint_steps=4, warmup_steps=2):
  m = config.model
  m.vocab_size, m.hidden_size, m.intermediate_size = 300, 32, 64
  m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim = 1, 2, 1, 16
  config.ta.hidden_size, config.ta.score_hidden_size = 16, 8
  config.mesh.data = 1
  config.data.records_dir = records_dir
  config.data.shuffle_buffer = 64
  config.train.batch_size = 4
  config.train.steps = joint_steps
  config.mind.ta_warmup_steps = warmup_steps
  config.mind.ta_grad_accum = 2
  config.train.log_every = 1
  config.train.checkpoint_every = 2
  config.train.async_checkpointing = False
  config.mind.single_perspective = NAMES[0]
  return config


def _flat(tree):
  return jax.tree.leaves(jax.device_get(tree))


def test_mind_demo_config_trains_and_writes_its_observability(records_dir, tmp_path):
  config = _tiny(load_config_file(os.path.join(REPO, "configs", "mind_demo.py")), records_dir)
  state = train.train(config, str(tmp_path))
  assert int(state.step) == 6 and state.ta_params is not None
  history = [json.loads(line) for line in open(tmp_path / train.HISTORY)]
  assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
  for name in NAMES:
    for key in ("alpha", "selection_rate", "score", "l_bar", "ce"):
      assert f"{key}/{name}" in history[-1], (key, name)
  for key in ("l_meta", "l_sft", "l_cons", "loss", "tokens_per_s", "steps_per_s"):
    assert np.isfinite(history[-1][key]), key
  assert os.path.getsize(tmp_path / train.ALPHA_PLOT) > 1000
  # The inertia table of the TA optimizer saw every example of the batches.
  ema = np.asarray(inertia.inertia_state_of(state.ta_opt_state).ema)
  assert ema.shape == (N, K) and np.count_nonzero(ema.sum(axis=1)) >= 4


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "baselines",
                                                               "*.py"))), ids=os.path.basename)
def test_every_baseline_config_trains(records_dir, tmp_path, path):
  config = _tiny(load_config_file(path), records_dir, joint_steps=2, warmup_steps=1)
  if config.mind.capability == "accuracy":  # trains on tagged records: test_experiment's
    with pytest.raises(faults.BadInput, match="without encode.perspective_tags"):
      train.train(config, str(tmp_path))
    return
  state = train.train(config, str(tmp_path))
  history = [json.loads(line) for line in open(tmp_path / train.HISTORY)]
  assert np.isfinite(history[-1]["loss"])
  uses_ta = config.mind.weighting == "ta"
  assert (state.ta_params is not None) == uses_ta
  if config.mind.weighting == "single":
    assert history[-1][f"alpha/{NAMES[0]}"] > 0 and history[-1][f"alpha/{NAMES[1]}"] == 0


class Stop(Exception):
  pass


MIND_DEMO = os.path.join(REPO, "configs", "mind_demo.py")


@pytest.fixture(scope="module")
def straight_mind(records_dir, tmp_path_factory):
  """The tiny demo-config MIND run, uninterrupted: its final state."""
  return _flat(train.train(_tiny(load_config_file(MIND_DEMO), records_dir),
                           str(tmp_path_factory.mktemp("straight_mind"))))


def test_sigint_saves_the_step_reached_with_ta_and_inertia_and_resumes_bitwise(
    records_dir, tmp_path, straight_mind):
  """Ctrl-C in a subprocess at step 4 of 6 (TA warm-up 2, then joint): the run saves step
  5 (not a periodic checkpoint), exits with the preemption code, and the resumed run ends
  bitwise equal to the uninterrupted one, TA and inertia table included."""
  script = textwrap.dedent(f"""
      import os, signal
      from mind_jax import faults, train
      from mind_jax.config import load_config_file
      from tests.test_mind_train import _tiny
      def interrupt(step, state):
        if step == 4:
          os.kill(os.getpid(), signal.SIGINT)
      config = _tiny(load_config_file({MIND_DEMO!r}), {records_dir!r})
      config.train.checkpoint_every = 4
      faults.exit_cleanly(train.train)(config, {str(tmp_path)!r}, interrupt)
      """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
  assert result.returncode == faults.EXIT_PREEMPTED, result.stderr[-3000:]
  assert "preempted (SIGINT) at step 5: checkpoint 5 is committed" in result.stderr
  assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr
  assert checkpoint.latest_step(str(tmp_path)) == 5
  resumed = train.train(_tiny(load_config_file(MIND_DEMO), records_dir), str(tmp_path))
  for a, b in zip(straight_mind, _flat(resumed)):
    assert np.array_equal(a, b)


def test_interrupted_mind_run_resumes_bitwise(records_dir, tmp_path, straight_mind):
  base = MIND_DEMO

  def crash(step, state):
    if step == 5:  # after the checkpoint of step 4, mid-way through the joint phase
      raise Stop()
  with pytest.raises(Stop):
    train.train(_tiny(load_config_file(base), records_dir), str(tmp_path / "b"), crash)
  assert checkpoint.latest_step(str(tmp_path / "b")) == 4
  resumed = train.train(_tiny(load_config_file(base), records_dir), str(tmp_path / "b"))
  for a, b in zip(straight_mind, _flat(resumed)):
    assert np.array_equal(a, b)


def test_slot_widths_come_from_the_manifest_and_old_records_are_named():
  manifest = dict(perspectives=["a", "b", "c"], max_len=40,
                  slot_max_lengths={"a": 9, "b": 17, "c": 40})
  # Rounded up to 16 and capped at max_len; equal widths read together.
  assert train.slot_groups_of(manifest, 16, "R") == (((0,), 16), ((1,), 32), ((2,), 40))
  assert train.slot_groups_of(manifest, 8, "R") == (((0,), 16), ((1,), 24), ((2,), 40))
  del manifest["slot_max_lengths"]
  with pytest.raises(ValueError, match="R predates"):
    train.slot_groups_of(manifest, 16, "R")


def test_a_baseline_file_applies_to_any_student_config():
  union = load_config_file(os.path.join(REPO, "configs", "baselines", "union.py") + ":"
                           + os.path.join(REPO, "configs", "testbed", "mind.py"))
  testbed = load_config_file(os.path.join(REPO, "configs", "testbed", "mind.py"))
  demo_union = load_config_file(os.path.join(REPO, "configs", "baselines", "union.py"))
  assert union.mind.weighting == demo_union.mind.weighting == "uniform"
  assert union.model.to_dict() == testbed.model.to_dict()
  assert demo_union.model.vocab_size == 4096  # the default student: configs/mind_demo.py


def _packed(config, records_dir):
  config = _tiny(config, records_dir)
  config.train.packing, config.train.packed_rows, config.train.seq_len = True, 0, 2 * T
  config.optim.grad_accum_steps = 2
  return config


def test_packed_accumulated_mind_run_resumes_bitwise(records_dir, tmp_path):
  """train.packing with rows chosen at start-up and 2 micro-batches of questions: the
  packing metrics are logged, and a resumed run is bitwise the uninterrupted one."""
  base = os.path.join(REPO, "configs", "mind_demo.py")
  straight = train.train(_packed(load_config_file(base), records_dir), str(tmp_path / "a"))
  history = [json.loads(line) for line in open(tmp_path / "a" / train.HISTORY)]
  assert all(h["packing_overflow"] == 0 for h in history)
  assert 0 < history[-1]["packed_fill"] <= 1

  def crash(step, state):
    if step == 5:
      raise Stop()
  with pytest.raises(Stop):
    train.train(_packed(load_config_file(base), records_dir), str(tmp_path / "b"), crash)
  resumed = train.train(_packed(load_config_file(base), records_dir), str(tmp_path / "b"))
  for a, b in zip(_flat(straight), _flat(resumed)):
    assert np.array_equal(a, b)


def test_mind_with_lora_trains_adapters_on_a_frozen_base_and_resumes(records_dir, tmp_path):
  """MIND + LoRA + packing through train: the base (train.init_from) stays bitwise as it
  was, only adapters are trained and checkpointed (the meta names the base), and a
  resumed run is bitwise the uninterrupted one."""
  base_config = _tiny(load_config_file(os.path.join(REPO, "configs", "debug_cpu.py")),
                      records_dir)
  base_config.method, base_config.train.steps = "sft", 0  # the initial state, saved
  base_config.tokenizer.path = os.path.join(records_dir, "tokenizer")
  base_config.train.seq_len, base_config.data.num_examples = 1024, 8  # a 300-token BPE
  base_config.model.max_position_embeddings = 512  # as configs/mind_demo.py states
  base = train.train(base_config, str(tmp_path / "base"))

  def lora_config():
    config = _packed(load_config_file(os.path.join(REPO, "configs", "mind_demo.py")),
                     records_dir)
    config.train.init_from = str(tmp_path / "base")
    config.lora.rank, config.lora.base_dtype = 4, "float32"
    return config
  straight = train.train(lora_config(), str(tmp_path / "a"))
  for frozen, initial in zip(_flat(straight.frozen), _flat(base.params)):
    assert np.array_equal(frozen, initial)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
      straight.params)[0]]
  assert paths and all("lora_a" in p or "lora_b" in p for p in paths)
  _, meta = checkpoint.read_meta(str(tmp_path / "a"))
  assert meta["lora"]["base"] == str(tmp_path / "base") and meta["lora"]["rank"] == 4

  def crash(step, state):
    if step == 5:
      raise Stop()
  with pytest.raises(Stop):
    train.train(lora_config(), str(tmp_path / "b"), crash)
  resumed = train.train(lora_config(), str(tmp_path / "b"))
  for a, b in zip(_flat(straight), _flat(resumed)):
    assert np.array_equal(a, b)
