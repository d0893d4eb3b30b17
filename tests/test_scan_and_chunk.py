"""Scanned layers and the chunked vocabulary loss change no arithmetic: the scanned decoder
computes what the unrolled one computes with the same weights (logits, gradients, greedy
tokens), the chunked loss gives the same loss and gradient (rtol 1e-5) in the SFT and MIND
steps (padded and packed), checkpoints written with unrolled layers before
model.scan_layers existed restore and export, and the memory estimate counts one chunk."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mind_jax import checkpoint, decode, export_hf, inference, losses, perf
from mind_jax import step as step_lib
from mind_jax.config import default_config
from mind_jax.models import decoder
from tests.helpers import assert_trees_close
from tests.test_mind import _assert_metrics_close, _assert_states_close
from tests.test_packing import PackedSetup, _consistency_config, _run

CFG = decoder.DecoderConfig(family="qwen2", vocab_size=300, hidden_size=32,
                            intermediate_size=64, num_layers=3, num_heads=4, num_kv_heads=2,
                            head_dim=8, qkv_bias=True)


def unstacked(params: dict, num_layers: int) -> dict:
  """Scanned params ("layers" [L, ...]) -> the unrolled layout (layers_0 ... layers_L-1)."""
  out = {k: v for k, v in params.items() if k != decoder.LAYERS_AXIS}
  for i in range(num_layers):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params[decoder.LAYERS_AXIS])
  return out


def _batch(seed=0, batch=3, length=21):
  rng = np.random.RandomState(seed)
  ids = rng.randint(0, CFG.vocab_size, (batch, length)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[0, -5:] = 0  # one right-padded row
  loss_mask = mask.copy()
  loss_mask[:, :4] = 0  # a prompt
  return dict(input_ids=ids, attention_mask=mask, loss_mask=loss_mask)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_layers_compute_what_unrolled_layers_compute(remat):
  scanned = dataclasses.replace(CFG, remat=remat)
  unrolled = dataclasses.replace(scanned, scan_layers=False)
  params = decoder.init_params(scanned, jax.random.PRNGKey(0))
  assert params["layers"]["mlp"]["up_proj"]["kernel"].shape == (3, 32, 64)
  # The unrolled model's own param tree is the unstacked one, leaf for leaf.
  flat_unrolled = traverse_util.flatten_dict(decoder.abstract_params(unrolled)[0])
  flat_ours = traverse_util.flatten_dict(unstacked(params, 3))
  assert {p: v.shape for p, v in flat_unrolled.items()} == {p: v.shape for p, v in
                                                            flat_ours.items()}
  batch = _batch()

  def loss(model_cfg, p):
    total, count = step_lib._loss_sum(p, decoder.Decoder(model_cfg), batch)
    return total / count

  want_loss, want_grads = jax.value_and_grad(loss, argnums=1)(unrolled, unstacked(params, 3))
  got_loss, got_grads = jax.value_and_grad(loss, argnums=1)(scanned, params)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  assert_trees_close(unstacked(got_grads, 3), want_grads, rtol=1e-5)


def test_scanned_greedy_decoding_equals_unrolled():
  unrolled = dataclasses.replace(CFG, scan_layers=False)
  params = decoder.init_params(CFG, jax.random.PRNGKey(1))
  prompts = [[5, 6, 7, 8, 9], [11, 12], [3, 4, 5, 6, 7, 8, 9, 10]]
  got = decode.generate(params, CFG, prompts, 12, eos_token_id=None, pad_token_id=0)
  want = decode.generate(unstacked(params, 3), unrolled, prompts, 12, eos_token_id=None,
                         pad_token_id=0)
  assert got == want


@pytest.mark.parametrize("chunk", [4, 7])
def test_chunked_loss_gives_the_loss_and_gradient_of_the_full_logits(chunk):
  params = decoder.init_params(CFG, jax.random.PRNGKey(2))
  model, batch = decoder.Decoder(CFG), _batch(length=21)  # 21 is no multiple of 4 or 7

  def loss(p, chunk):
    total, count = step_lib._loss_sum(p, model, batch, chunk=chunk)
    return total / count

  want_loss, want_grads = jax.value_and_grad(loss)(params, 0)
  got_loss, got_grads = jax.value_and_grad(loss)(params, chunk)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  assert_trees_close(got_grads, want_grads, rtol=1e-5)
  # ... and the full logits' NLL is the reference it should be.
  logits = model.apply({"params": params}, batch["input_ids"],
                       attention_mask=batch["attention_mask"])
  nll, weights = losses.next_token_nll(logits, batch["input_ids"], batch["loss_mask"])
  np.testing.assert_allclose(want_loss, jnp.sum(nll * weights) / jnp.sum(weights), rtol=1e-6)


def test_chunked_loss_never_holds_the_full_logits():
  """XLA's temporaries of the SFT gradient: with chunks of 8 positions, less than the full
  [rows, length, vocab] fp32 logits alone would take."""
  cfg = dataclasses.replace(CFG, vocab_size=32768)
  params = decoder.init_params(cfg, jax.random.PRNGKey(3))
  batch = _batch(batch=4, length=128)
  batch["input_ids"] %= 300
  full_logits = 4 * 128 * cfg.padded_vocab_size * 4

  def temporaries(chunk):
    grad = jax.grad(lambda p: step_lib._loss_sum(p, decoder.Decoder(cfg), batch, chunk=chunk)[0])
    return jax.jit(grad).lower(params).compile().memory_analysis().temp_size_in_bytes

  chunked, full = temporaries(8), temporaries(0)
  print(f"\ntemporaries: full logits {full / 2**20:.1f} MiB, chunks of 8 "
        f"{chunked / 2**20:.1f} MiB; the logits alone {full_logits / 2**20:.1f} MiB")
  assert chunked < full_logits < full


@pytest.mark.parametrize("packed", [True, False])
def test_chunked_mind_steps_equal_unchunked(packed):
  """The MIND step (TA warm-up, then joint steps with the consistency JSD read at the
  answer positions) with the CE made 5 positions at a time."""
  reference = PackedSetup(_consistency_config(), packed=packed)
  chunked = PackedSetup(_consistency_config(), packed=packed)
  chunked.settings = dataclasses.replace(chunked.settings, loss_chunk_tokens=5)
  want_state, want = _run(reference, (("warmup", 1), ("joint", 2)))
  got_state, got = _run(chunked, (("warmup", 1), ("joint", 2)))
  _assert_metrics_close(got, want)
  assert float(want[-1]["l_cons"]) > 0  # the answer positions' logits were read
  _assert_states_close(got_state, want_state)


def test_checkpoint_without_scan_layers_restores_unrolled_and_exports(tmp_path):
  """A checkpoint written before model.scan_layers (layers_0, ..., and no such meta field)
  restores as unrolled layers, computes the same logits, and exports."""
  unrolled = dataclasses.replace(CFG, scan_layers=False, bos_token_id=1, eos_token_id=2)
  params = decoder.init_params(unrolled, jax.random.PRNGKey(4))
  meta = {"model": {k: v for k, v in unrolled.to_dict().items() if k != "scan_layers"},
          "config": None, "data_position": 0}
  workdir = str(tmp_path / "old")
  with checkpoint.manager(workdir, async_save=False) as mngr:
    checkpoint.save(mngr, 0, params, meta)
  step, cfg, restored = inference.restore_params(workdir)
  assert (step, cfg.scan_layers) == (0, False)
  assert "layers_2" in restored
  ids = jnp.asarray(_batch()["input_ids"])
  np.testing.assert_array_equal(decoder.Decoder(cfg).apply({"params": restored}, ids),
                                decoder.Decoder(unrolled).apply({"params": params}, ids))
  out = export_hf.export_hf(workdir, str(tmp_path / "hf"), allow_no_tokenizer=True)
  assert os.path.isfile(os.path.join(out, "model.safetensors"))


def test_memory_estimate_counts_one_chunk_of_logits():
  config = default_config()
  config.train.seq_len, config.train.batch_size = 1024, 8
  shape = {"data": 1, "fsdp": 1, "tensor": 1}
  config.train.loss_chunk_tokens = 0
  full = perf.estimate_memory(config, shape)
  config.train.loss_chunk_tokens = 128
  chunked = perf.estimate_memory(config, shape)
  assert chunked["logits"] == pytest.approx(full["logits"] * 128 / 1024)
  assert chunked["total"] - chunked["logits"] == pytest.approx(full["total"] - full["logits"])
