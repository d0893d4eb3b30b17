"""LoRA and QLoRA (mind_jax/models/lora.py) on a tiny random Llama imported from transformers:
the base stays frozen and only the adapters train and carry optimizer state; checkpoints
hold the adapters and name their base, and resume; the merged export matches peft's own
merge_and_unload, and the --adapter_only directory loads with PeftModel.from_pretrained;
NF4 trains and exports the dequantized math; a sharded step equals the 1-device step.

Run with `pytest -s` to see the measured differences.
"""
import collections
import json
import os
import shutil
import types

import jax
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec as P

from mind_jax import checkpoint, export_hf, import_hf, inference, sharding, train
from mind_jax import state as state_lib
from mind_jax import step as step_lib
from mind_jax.config import default_config
from mind_jax.models import decoder, lora
from tests.helpers import assert_trees_close
from tests.test_hf_parity import (max_diff_at_tokens, padded_batch, save_hf_dir, tiny_hf_model,
                                  torch_logits)

STEPS = 3
MODULES = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"),
           ("self_attn", "o_proj"), ("mlp", "gate_proj"), ("mlp", "up_proj"),
           ("mlp", "down_proj"))
Base = collections.namedtuple("Base", "hf_dir workdir")
Run = collections.namedtuple("Run", "config workdir state")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
  """A random 2-layer Llama (hidden 64) saved by transformers and imported as a workdir."""
  root = tmp_path_factory.mktemp("lora_base")
  hf_dir = save_hf_dir(tiny_hf_model("llama", tied=False), str(root / "hf"))
  workdir = str(root / "base")
  import_hf.import_hf(hf_dir, workdir)
  return Base(hf_dir, workdir)


def run_config(base: Base, steps: int = STEPS, **lora_fields):
  """SFT with rank-4 adapters on every projection of `base`, on one device."""
  config = default_config()
  config.train.init_from = base.workdir
  config.tokenizer.path = os.path.join(base.workdir, "tokenizer")
  config.mesh.data = 1  # test_sharded_lora_step_matches_one_device compares meshes
  config.train.steps = steps
  config.train.batch_size = 8
  config.train.seq_len = 192  # the tiny test tokenizer spends ~150-220 tokens per example
  config.train.log_every = 1
  config.train.checkpoint_every = 1
  config.train.keep_checkpoints = steps
  config.train.async_checkpointing = False
  config.data.num_examples = 48
  config.optim.warmup_steps = 0
  config.optim.learning_rate = 1e-2
  config.lora.rank = 4
  config.lora.alpha = 8.0
  config.lora.base_dtype = "float32"  # exact parity with transformers' fp32 models
  for name, value in lora_fields.items():
    config.lora[name] = value
  return config


@pytest.fixture(scope="module")
def fp32_run(base, tmp_path_factory) -> Run:
  workdir = str(tmp_path_factory.mktemp("lora_fp32") / "run")
  config = run_config(base)
  return Run(config, workdir, jax.device_get(train.train(config, workdir)))


def model_config(workdir: str) -> decoder.DecoderConfig:
  return decoder.DecoderConfig.from_config(checkpoint.read_meta(workdir)[1]["model"])


def lora_logits(run: Run, ids, mask, positions) -> np.ndarray:
  """Our model: the qwix-wrapped Decoder on the run's frozen base and adapters."""
  cfg = model_config(run.workdir)
  model = lora.make_model(cfg, lora.LoraConfig.from_config(run.config.lora))
  logits = jax.jit(model.apply)(lora.variables(run.state.params, run.state.frozen),
                                ids, positions, mask)
  return np.asarray(logits)[..., :cfg.vocab_size]


def adapter_leaves(tree) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def one_device_mesh():
  return sharding.make_mesh(types.SimpleNamespace(data=1, fsdp=1, tensor=1),
                            devices=jax.devices()[:1])


def test_lora_needs_a_base_and_valid_settings():
  config = default_config()
  config.lora.rank = 4
  with pytest.raises(ValueError, match="train.init_from"):
    train.lora_config_of(config)
  config.train.init_from = "/some/base"
  config.lora.base_dtype = "int8"
  with pytest.raises(ValueError, match="lora.base_dtype"):
    train.lora_config_of(config)
  cfg = decoder.DecoderConfig(hidden_size=64, head_dim=16, intermediate_size=96)
  with pytest.raises(ValueError, match="lora.nf4_block_size=32 does not divide model.head_dim"):
    lora.make_model(cfg, lora.LoraConfig(rank=4, base_dtype="nf4", nf4_block_size=32))


def test_base_frozen_and_only_adapters_train(base, fp32_run):
  config, workdir, state = fp32_run
  # The frozen base is bitwise the imported params after the steps.
  _, _, base_params = inference.restore_params(base.workdir, None)
  jax.tree.map(np.testing.assert_array_equal, state.frozen, jax.device_get(base_params))

  # Every adapter moved from its initial value; B started at zero (the model began as its base).
  cfg, lora_config = model_config(workdir), lora.LoraConfig.from_config(config.lora)
  optimizer = state_lib.make_optimizer(config.optim, config.train.steps)
  _, shardings = state_lib.abstract_state_and_shardings(cfg, optimizer, one_device_mesh(),
                                                        config.mesh.rules, lora_config)
  initial = adapter_leaves(state_lib.init_state(cfg, optimizer, config.train.seed, shardings,
                                                lora_config).params)
  trained = adapter_leaves(state.params)
  # Scanned layers: one stacked A and B per targeted module, [num_layers, ...].
  assert sorted(trained) == sorted(initial) and len(trained) == 2 * len(MODULES)
  assert all(value.shape[0] == cfg.num_layers for value in trained.values())
  for name, value in trained.items():
    assert name.endswith(("kernel_lora_a']", "kernel_lora_b']")), name
    if name.endswith("kernel_lora_b']"):
      assert not initial[name].any(), name
    assert np.abs(value - initial[name]).max() > 1e-4, name


def test_optimizer_state_holds_only_adapters(fp32_run):
  adapters = adapter_leaves(fp32_run.state.params)
  arrays = {name: leaf for name, leaf in adapter_leaves(fp32_run.state.opt_state).items()
            if leaf.ndim > 0}
  # Adam's two moments per adapter, and nothing of the base's size.
  assert len(arrays) == 2 * len(adapters)
  for name, leaf in arrays.items():
    adapter = name[name.index("['layers']"):]
    assert adapter in adapters and leaf.shape == adapters[adapter].shape, name
  adapter_size = sum(a.size for a in adapters.values())
  base_size = sum(np.size(x) for x in jax.tree.leaves(fp32_run.state.frozen))
  assert sum(a.size for a in arrays.values()) == 2 * adapter_size < base_size


def test_checkpoint_holds_adapters_names_base_and_resumes(base, fp32_run, tmp_path):
  config, workdir, state = fp32_run
  step, meta = checkpoint.read_meta(workdir)
  assert step == STEPS
  assert meta["lora"] == dict(rank=4, alpha=8.0, target_modules=[m for _, m in MODULES],
                              base_dtype="float32", nf4_block_size=64,
                              base=os.path.abspath(base.workdir), base_step=0)
  with checkpoint.manager(workdir, read_only=True) as mngr:
    saved = mngr.item_metadata(step)
  saved_params = adapter_leaves(jax.tree.map(lambda m: np.zeros(m.shape), saved["params"]))
  assert set(saved_params) == set(adapter_leaves(state.params))

  # Rewind a copy by one checkpoint: the resumed run redoes the last step bitwise.
  resumed_dir = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed_dir)
  shutil.rmtree(os.path.join(resumed_dir, "checkpoints", str(STEPS)))
  assert checkpoint.latest_step(resumed_dir) == STEPS - 1
  resumed = jax.device_get(train.train(config, resumed_dir))
  assert int(resumed.step) == STEPS
  jax.tree.map(np.testing.assert_array_equal, resumed.params, state.params)
  jax.tree.map(np.testing.assert_array_equal, resumed.opt_state, state.opt_state)


def test_eval_load_model_merges_lora_adapters(fp32_run):
  """eval.run.load_model, on the first device and sharded over all of them: a LoRA
  checkpoint's params are its base with the adapters merged (what the export writes), so
  the plain Decoder the evaluation applies computes what the LoRA model computed."""
  from mind_jax.eval import run as eval_run
  ids, mask, positions = padded_batch()
  want = lora_logits(fp32_run, ids, mask, positions)
  real = mask.astype(bool)
  for all_devices in (False, True):
    model = eval_run.load_model(fp32_run.workdir, all_devices=all_devices)
    assert model.step == STEPS
    assert len(model.mesh.devices.flat) == (jax.device_count() if all_devices else 1)
    got = np.asarray(jax.jit(decoder.Decoder(model.cfg).apply)({"params": model.params},
                                                             ids, positions, mask))
    np.testing.assert_allclose(got[..., :model.cfg.vocab_size][real], want[real],
                               rtol=1e-4, atol=1e-5, err_msg=f"all_devices={all_devices}")


def tiny_lora_model(base_dtype: str, dtype: str):
  cfg = decoder.DecoderConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                              num_heads=2, num_kv_heads=1, head_dim=8, num_layers=1, dtype=dtype)
  return cfg, lora.LoraConfig(rank=2, alpha=4.0, base_dtype=base_dtype, nf4_block_size=8)


@pytest.mark.parametrize("base_dtype", lora.BASE_DTYPES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_adapters_are_param_dtype_master_weights(base_dtype, dtype):
  """The adapters, and with them Adam's moments, are kept in model.param_dtype (fp32)
  whatever the base's storage and the compute dtype, and compute in model.dtype. (All
  abstract, as train.py first makes the state: eval_shape, nothing compiled.)"""
  cfg, lora_config = tiny_lora_model(base_dtype, dtype)
  adapters, frozen, _, _ = lora.abstract(cfg, lora_config)
  assert len(jax.tree.leaves(adapters)) == 2 * len(MODULES)
  assert {x.dtype for x in jax.tree.leaves(adapters)} == {np.dtype("float32")}
  # The abstract frozen base is what freeze_base makes (NF4 scales from the fp32 base).
  base_params = jax.eval_shape(lambda: decoder.init_params(cfg, jax.random.PRNGKey(1)))
  made = jax.eval_shape(lambda p: lora.freeze_base(p, cfg, lora_config), base_params)
  assert jax.tree.map(lambda x: x.dtype, made) == jax.tree.map(lambda x: x.dtype, frozen)
  if dtype == "float32" or base_dtype == "float32":
    return  # the train state of bf16 compute on a bf16 or NF4 base, below

  config = default_config()
  optimizer = state_lib.make_optimizer(config.optim, 10)
  state, _ = state_lib.abstract_state_and_shardings(cfg, optimizer, one_device_mesh(),
                                                    config.mesh.rules, lora_config)
  fresh = jax.eval_shape(lambda: lora.init_adapters(cfg, lora_config, jax.random.PRNGKey(0)))
  assert jax.tree.map(lambda x: x.dtype, state.params) == jax.tree.map(lambda x: x.dtype, fresh)
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
  assert len(moments) == 2 * len(MODULES) * 2  # Adam's mu and nu per adapter
  assert {x.dtype for x in moments} == {np.dtype("float32")}
  # ... which compute in bf16: the adapted projections give bf16 activations.
  ids = jax.ShapeDtypeStruct((1, 4), np.int32)
  _, found = jax.eval_shape(
      lambda p, f, i: lora.make_model(cfg, lora_config).apply(
          lora.variables(p, f), i, capture_intermediates=True), state.params, made, ids)
  outputs = traverse_util.flatten_dict(found["intermediates"])
  projections = {p[-2]: v[0].dtype for p, v in outputs.items() if p[-2:-1] and
                 p[-2].endswith("_proj")}
  assert len(projections) == len(MODULES) and set(projections.values()) == {
      np.dtype("bfloat16")}
  # A step's gradients and updates leave the adapters and their moments in fp32.
  batch = {k: jax.ShapeDtypeStruct((2, 8), np.int32) for k in step_lib.BATCH_KEYS}
  stepped, _ = jax.eval_shape(
      lambda s, b: step_lib.train_step(
          s, b, model=lora.make_model(cfg, lora_config), optimizer=optimizer,
          schedule=state_lib.learning_rate_schedule(config.optim, 10)),
      state.replace(frozen=made), batch)
  assert jax.tree.map(lambda x: x.dtype, (stepped.params, stepped.opt_state)) == \
      jax.tree.map(lambda x: x.dtype, (state.params, state.opt_state))


def peft_merged(hf_dir: str, adapters: dict, lora_config):
  """transformers' base with peft LoRA layers holding our adapter values, merged by peft."""
  import peft
  import torch
  from transformers import AutoModelForCausalLM
  model = peft.get_peft_model(
      AutoModelForCausalLM.from_pretrained(hf_dir),
      peft.LoraConfig(r=lora_config.rank, lora_alpha=lora_config.alpha, lora_dropout=0.0,
                      target_modules=list(lora_config.target_modules)))
  with torch.no_grad():
    for i, layer in enumerate(model.base_model.model.model.layers):
      for group, name in MODULES:
        module, ours = getattr(getattr(layer, group), name), adapters["layers"][group][name]
        # Ours: A [layers, in, r], B [layers, r, out]; torch Linear weights: lora_A [r, in],
        # lora_B [out, r].
        module.lora_A["default"].weight.copy_(torch.from_numpy(ours["kernel_lora_a"][i].T.copy()))
        module.lora_B["default"].weight.copy_(torch.from_numpy(ours["kernel_lora_b"][i].T.copy()))
  return model.merge_and_unload().eval()


def test_merged_export_matches_peft_merge_and_unload(base, fp32_run, tmp_path):
  from transformers import AutoModelForCausalLM
  config, workdir, state = fp32_run
  ids, mask, positions = padded_batch()
  out = export_hf.export_hf(workdir, str(tmp_path / "merged"))
  ours = torch_logits(AutoModelForCausalLM.from_pretrained(out).eval(), ids, mask, positions)
  reference = torch_logits(peft_merged(base.hf_dir, state.params,
                                       lora.LoraConfig.from_config(config.lora)),
                           ids, mask, positions)
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], reference[real], rtol=1e-4, atol=1e-5)
  original = torch_logits(AutoModelForCausalLM.from_pretrained(base.hf_dir).eval(),
                          ids, mask, positions)
  moved = max_diff_at_tokens(reference, original, mask)
  print(f"\n[lora fp32] merged export vs peft merge_and_unload: max |diff| = "
        f"{max_diff_at_tokens(ours, reference, mask):.3g}; the adapters moved logits by {moved:.3g}")
  assert moved > 1e-2  # the parity above is not that of two unchanged bases

  # Our LoRA model, and the merged params a plain Decoder gets from restore_params (eval).
  np.testing.assert_allclose(lora_logits(fp32_run, ids, mask, positions)[real], reference[real],
                             rtol=1e-4, atol=1e-5)
  _, cfg, merged = inference.restore_params(workdir, None)
  plain = np.asarray(jax.jit(decoder.Decoder(cfg).apply)({"params": merged}, ids, positions, mask))
  np.testing.assert_allclose(plain[..., :cfg.vocab_size][real], reference[real],
                             rtol=1e-4, atol=1e-5)


def test_adapter_only_export_loads_with_peft(base, fp32_run, tmp_path):
  import peft
  from safetensors.numpy import load_file
  from transformers import AutoModelForCausalLM
  out = str(tmp_path / "adapter")
  export_hf.main(["--checkpoint", fp32_run.workdir, "--out", out, "--adapter_only"])
  assert sorted(os.listdir(out)) == [lora.PEFT_CONFIG_FILE, lora.PEFT_WEIGHTS_FILE]
  with open(os.path.join(out, lora.PEFT_CONFIG_FILE)) as f:
    assert json.load(f)["base_model_name_or_path"] == base.hf_dir
  loaded = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base.hf_dir),
                                          out).eval()
  # PEFT skips unknown keys quietly: every tensor we wrote must be one of its adapter weights.
  written = load_file(os.path.join(out, lora.PEFT_WEIGHTS_FILE))
  assert set(written) == set(peft.get_peft_model_state_dict(loaded))

  ids, mask, positions = padded_batch()
  got = torch_logits(loaded, ids, mask, positions)
  want = lora_logits(fp32_run, ids, mask, positions)
  print(f"\n[lora fp32] PeftModel.from_pretrained(adapter) vs our model: max |diff| = "
        f"{max_diff_at_tokens(got, want, mask):.3g}")
  real = mask.astype(bool)
  np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-5)


def test_qlora_nf4_trains_and_exports_the_dequantized_math(base, tmp_path):
  from safetensors.numpy import load_file
  from transformers import AutoModelForCausalLM
  steps = 6
  config = run_config(base, steps=steps, base_dtype="nf4", nf4_block_size=16)
  workdir = str(tmp_path / "nf4")
  run = Run(config, workdir, jax.device_get(train.train(config, workdir)))
  with open(os.path.join(workdir, train.HISTORY)) as f:
    losses = [json.loads(line)["loss"] for line in f]
  print(f"\n[qlora nf4] losses: {np.round(losses, 3).tolist()}")
  assert len(losses) == steps and np.isfinite(losses).all()
  assert np.mean(losses[-2:]) < np.mean(losses[:2])

  stacked = run.state.frozen["layers"]["self_attn"]["q_proj"]["kernel"]  # WithAux(QArray)
  cfg = model_config(workdir)
  assert stacked.array.qvalue.dtype == np.uint8  # two 4-bit codes a byte
  layers = cfg.num_layers
  assert stacked.array.qvalue.shape == (layers, cfg.hidden_size, cfg.num_heads, cfg.head_dim // 2)
  assert stacked.array.scale.shape == (layers, cfg.hidden_size // 16, cfg.num_heads, cfg.head_dim)
  assert run.state.frozen["layers"]["input_layernorm"]["scale"].dtype == np.dtype("bfloat16")
  q = jax.tree.map(lambda x: x[0], stacked)  # layer 0

  # The merged kernel is the dequantized NF4 base plus (alpha / r) A @ B ...
  out = export_hf.export_hf(workdir, str(tmp_path / "merged"))
  weights = load_file(os.path.join(out, "model.safetensors"))
  adapters = jax.tree.map(lambda x: x[0], run.state.params["layers"]["self_attn"]["q_proj"])
  kernel = np.asarray(lora.dequantized(q), np.float32)  # [hidden, heads, head_dim]
  delta = (config.lora.alpha / config.lora.rank) * (
      adapters["kernel_lora_a"] @ adapters["kernel_lora_b"]).reshape(kernel.shape)
  expected = (kernel + delta).reshape(kernel.shape[0], -1).T  # HF [heads * head_dim, hidden]
  exported = weights["model.layers.0.self_attn.q_proj.weight"]
  np.testing.assert_allclose(exported, expected, rtol=1e-6, atol=1e-6)
  _, _, base_params = inference.restore_params(base.workdir, None)
  unquantized = np.asarray(base_params["layers"]["self_attn"]["q_proj"]["kernel"][0]) + delta
  assert np.abs(exported - unquantized.reshape(kernel.shape[0], -1).T).max() > 1e-4

  # ... so transformers computes with it what the QLoRA model computed.
  ids, mask, positions = padded_batch()
  got = torch_logits(AutoModelForCausalLM.from_pretrained(out).eval(), ids, mask, positions)
  want = lora_logits(run, ids, mask, positions)
  print(f"[qlora nf4] merged export vs our model: max |diff| = "
        f"{max_diff_at_tokens(got, want, mask):.3g}")
  real = mask.astype(bool)
  np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-5)


def moved_b(adapters):
  """The adapters with a random B, as training leaves it: at B = 0 (the init) A has no
  gradient, and Adam's first steps turn the reduction-order noise of B's near-zero
  gradients into lr-sized differences."""
  rng = np.random.RandomState(2)
  def one(path, x):
    if jax.tree_util.keystr(path).endswith("kernel_lora_b']"):
      return rng.normal(0.0, 0.01, x.shape).astype(np.float32)
    return np.asarray(x)
  return jax.tree_util.tree_map_with_path(one, jax.device_get(adapters))


def test_sharded_lora_step_matches_one_device():
  base_dtype = "nf4"  # the 4-bit kernels and their scales are sharded too
  config = default_config()
  config.optim.warmup_steps = 0
  config.optim.learning_rate = 1e-3
  cfg = decoder.DecoderConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                              num_heads=4, num_kv_heads=2, head_dim=8)
  lora_config = lora.LoraConfig(rank=4, alpha=8.0, base_dtype=base_dtype, nf4_block_size=8)
  optimizer = state_lib.make_optimizer(config.optim, 10)
  schedule = state_lib.learning_rate_schedule(config.optim, 10)
  base_params = decoder.init_params(cfg, jax.random.PRNGKey(1))
  rng = np.random.RandomState(0)
  batch = dict(input_ids=rng.randint(0, cfg.vocab_size, (8, 16)).astype(np.int32),
               attention_mask=np.ones((8, 16), np.int32), loss_mask=np.ones((8, 16), np.int32))

  def shardings_on(mesh):
    return state_lib.abstract_state_and_shardings(cfg, optimizer, mesh, config.mesh.rules,
                                                  lora_config)[1]

  def run(state, mesh, shardings):
    batch_sharding = sharding.batch_sharding(mesh, config.mesh.rules, (8, 16))
    step = step_lib.jit_train_step(cfg, optimizer, schedule, shardings, batch_sharding,
                                   lora_config=lora_config)
    placed = {k: jax.device_put(v, batch_sharding) for k, v in batch.items()}
    for _ in range(2):
      state, metrics = step(state, placed)
    return state, (float(metrics["loss"]), float(metrics["grad_norm"]))

  # The state is made sharded on the (fsdp 4, tensor 2) mesh; the 1-device run gets a copy.
  mesh, one_mesh = sharding.make_mesh(types.SimpleNamespace(data=1, fsdp=4, tensor=2)), \
      one_device_mesh()
  shardings, one_shardings = shardings_on(mesh), shardings_on(one_mesh)
  state = state_lib.init_state(cfg, optimizer, 0, shardings, lora_config)
  state = state_lib.with_frozen_base(state, base_params, cfg, lora_config, shardings)
  state = state.replace(params=jax.device_put(moved_b(state.params), shardings.params))
  copy = jax.device_put(jax.device_get(state), one_shardings)  # the steps donate the state
  one, one_loss = run(copy, one_mesh, one_shardings)
  many, many_loss = run(state, mesh, shardings)
  # The adapters follow their base kernel: A its input axes, B its output axes.
  # (The leading axis of the scanned layers is never sharded.)
  attn = many.params["layers"]["self_attn"]
  assert attn["q_proj"]["kernel_lora_a"].sharding.spec == P(None, "fsdp", None)   # [embed, r]
  assert attn["q_proj"]["kernel_lora_b"].sharding.spec == P(None, None, "tensor")  # [r, heads*hd]
  assert attn["o_proj"]["kernel_lora_a"].sharding.spec == P(None, "tensor", None)  # [heads*hd, r]
  assert attn["o_proj"]["kernel_lora_b"].sharding.spec == P(None, None, "fsdp")    # [r, embed]
  frozen_q = many.frozen["layers"]["self_attn"]["q_proj"]["kernel"]
  frozen_q = frozen_q.array.qvalue if base_dtype == "nf4" else frozen_q
  assert frozen_q.sharding.spec == P(None, "fsdp", "tensor", None)
  print(f"\n[lora {base_dtype}] (loss, grad norm) of step 2: 1 device {one_loss}, "
        f"8 devices {many_loss}")
  assert many_loss == pytest.approx(one_loss, rel=1e-5)
  assert_trees_close(many.params, one.params, rtol=1e-5)
  assert_trees_close(many.opt_state, one.opt_state, rtol=1e-5)
