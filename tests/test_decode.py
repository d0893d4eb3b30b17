"""KV-cache generation (mind_jax.decode) against transformers' generate, on tiny random
Llama / Qwen2 models imported offline; and the JaxTeacher against HFTeacher.

Run with `pytest -s` to see the measured differences.
"""
import types

import jax
import numpy as np
import pytest

from mind_jax import decode, import_hf, inference, sharding
from mind_jax.data.questions import Question
from mind_jax.data.teachers.base import TeacherRequest
from mind_jax.models import decoder
from tests.test_hf_parity import PAD, VOCAB, save_hf_dir, tiny_hf_model

NEW_TOKENS = 20
PROMPT_LENGTHS = (3, 11, 7, 1)  # different lengths: every row but one is left padded


@pytest.fixture(autouse=True, scope="module")
def _no_progress_bars():
  from transformers.utils import logging as hf_logging
  hf_logging.disable_progress_bar()


def lively(model, std: float = 0.2):
  """Larger random projection weights: with transformers' init (std 0.02) the layers
  barely change the residual stream, and a tied model then repeats its last token
  forever, which would leave greedy decoding (and EOS stopping) untested."""
  import torch
  torch.manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if ".layers." in name and name.endswith("proj.weight"):
        p.normal_(0.0, std)
  return model


def imported(tmp_path_factory, family: str, tied: bool, chat_template: str | None = None):
  """(HF model, HF dir, our workdir, our config, our params on one device)."""
  model = lively(tiny_hf_model(family, tied))
  hf_dir = str(tmp_path_factory.mktemp(f"{family}-hf"))
  save_hf_dir(model, hf_dir)
  if chat_template is not None:
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(hf_dir)
  workdir = str(tmp_path_factory.mktemp(f"{family}-run"))
  import_hf.import_hf(hf_dir, workdir)
  _, cfg, params = inference.restore_params(workdir, None)
  return types.SimpleNamespace(model=model, hf_dir=hf_dir, workdir=workdir, cfg=cfg,
                               params=params)


@pytest.fixture(scope="module", params=[("llama", False), ("qwen2", True)],
                ids=["llama-untied", "qwen2-tied"])
def tiny(request, tmp_path_factory):
  return imported(tmp_path_factory, *request.param)


def random_prompts(seed: int = 0) -> list[list[int]]:
  rng = np.random.RandomState(seed)
  return [rng.randint(3, VOCAB, size=n).tolist() for n in PROMPT_LENGTHS]


def hf_greedy(model, prompts, eos_token_id) -> list[list[int]]:
  """transformers' generate(do_sample=False) on a left-padded batch: new tokens, cut
  before the first EOS (the padding transformers puts after it is dropped too)."""
  import torch
  length = max(map(len, prompts))
  ids = np.full((len(prompts), length), PAD)
  mask = np.zeros_like(ids)
  for row, p in enumerate(prompts):
    ids[row, length - len(p):], mask[row, length - len(p):] = p, 1
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=eos_token_id,
                         pad_token_id=PAD, temperature=None, top_p=None, top_k=None)
  new = out[:, length:].numpy()
  return [decode.cut_at_eos(row, np.asarray([eos_token_id])) for row in new]


def pick_eos(rows: list[list[int]]) -> int:
  """A token some row emits after a few steps and another row never emits, so that
  with it as EOS one row stops early and another runs to max_new_tokens."""
  for step in range(2, NEW_TOKENS // 2):
    for row in rows:
      token = row[step]
      if token not in row[:step] and any(token not in other for other in rows):
        return token
  raise AssertionError(f"no usable EOS candidate in {rows}")


def test_greedy_equals_transformers_generate(tiny):
  prompts = random_prompts()
  free = decode.generate(tiny.params, tiny.cfg, prompts, NEW_TOKENS, eos_token_id=None,
                         pad_token_id=PAD)
  assert [len(row) for row in free] == [NEW_TOKENS] * len(prompts)
  eos = pick_eos(free)
  ours = decode.generate(tiny.params, tiny.cfg, prompts, NEW_TOKENS, eos_token_id=eos,
                         pad_token_id=PAD)
  expected = hf_greedy(tiny.model, prompts, eos)
  lengths = [len(row) for row in ours]
  print(f"\n[{tiny.cfg.family}] eos={eos}: new tokens per row {lengths}; ours == transformers: "
        f"{ours == expected}")
  assert ours == expected
  assert min(lengths) < NEW_TOKENS and max(lengths) == NEW_TOKENS  # stopping is exercised
  assert all(row == full[:len(row)] for row, full in zip(ours, free))


def test_kv_cache_logits_equal_full_forward(tiny):
  """Prefill then one token at a time through the cache == one forward over the
  whole left-padded sequence, at every generated position."""
  cfg, steps = tiny.cfg, 8
  prompts = random_prompts(seed=1)
  length = decode.prompt_bucket(max(map(len, prompts)))
  ids, mask, positions = decode.left_pad(prompts, len(prompts), length, PAD)
  model = decoder.Decoder(cfg)
  apply_cached = jax.jit(lambda p, *a, **k: model.apply({"params": p}, *a, **k),
                         static_argnames="last_only")

  cache = decoder.init_cache(cfg, len(prompts), length + steps)
  logits, cache = apply_cached(tiny.params, ids, positions, mask, cache=cache, last_only=True)
  step_logits, tokens = [logits[:, -1]], []
  for step in range(1, steps):
    tokens.append(np.argmax(step_logits[-1], axis=-1))
    logits, cache = apply_cached(tiny.params, tokens[-1][:, None],
                                 positions[:, -1:] + step, cache=cache)
    step_logits.append(logits[:, -1])
  assert int(cache["index"]) == length + steps - 1

  full_ids = np.concatenate([ids, np.stack(tokens, axis=1)], axis=1)
  full_mask = np.concatenate([mask, np.ones_like(full_ids[:, length:])], axis=1)
  full_positions = np.maximum(np.cumsum(full_mask, axis=1) - 1, 0)
  full = jax.jit(model.apply)({"params": tiny.params}, full_ids, full_positions, full_mask)
  diffs = [float(np.abs(np.asarray(got) - np.asarray(full[:, length - 1 + step])
                        )[:, :cfg.vocab_size].max())
           for step, got in enumerate(step_logits)]
  scale = float(np.abs(np.asarray(full)[..., :cfg.vocab_size]).max())
  print(f"\n[{cfg.family}] max |cached - full forward logits| per step (|logits| <= "
        f"{scale:.2g}): " + " ".join(f"{d:.2g}" for d in diffs))
  assert max(diffs) < 1e-5


def test_top_p_filter_matches_transformers():
  import torch
  from transformers.generation.logits_process import TopPLogitsWarper
  logits = np.random.RandomState(0).normal(size=(6, 50)).astype(np.float32) * 3
  for top_p in (0.05, 0.5, 0.9, 1.0):
    ours = np.isfinite(np.asarray(decode.top_p_filter(logits, np.float32(top_p))))
    ref = TopPLogitsWarper(top_p)(None, torch.tensor(logits)).isfinite().numpy()
    assert (ours == ref).all(), top_p


def test_sampling_is_deterministic_per_rng(tiny):
  prompts = random_prompts(seed=2)

  def sample(seed, top_p=0.9):
    return decode.generate(tiny.params, tiny.cfg, prompts, NEW_TOKENS, eos_token_id=None,
                           pad_token_id=PAD, temperature=0.8, top_p=top_p,
                           rng=jax.random.PRNGKey(seed))
  first = sample(1)
  assert first == sample(1)
  assert first == decode.generate(tiny.params, tiny.cfg, prompts, NEW_TOKENS, None, PAD,
                                  temperature=0.8, top_p=0.9, rng=jax.random.key(1))
  assert first != sample(2)
  # A top_p so small that only the most probable token survives: sampling is greedy.
  greedy = decode.generate(tiny.params, tiny.cfg, prompts, NEW_TOKENS, eos_token_id=None,
                           pad_token_id=PAD)
  assert sample(3, top_p=1e-6) == greedy


def test_sharded_mesh_gives_the_same_tokens(tiny):
  mesh = sharding.make_mesh(types.SimpleNamespace(data=1, fsdp=2, tensor=4))
  assert mesh.devices.size == 8
  prompts = random_prompts(seed=3) + random_prompts(seed=4)[:1]  # 5 rows: padded to 6
  single = decode.generate(tiny.params, tiny.cfg, prompts, NEW_TOKENS, eos_token_id=None,
                           pad_token_id=PAD)
  sharded = decode.generate(tiny.params, tiny.cfg, prompts, NEW_TOKENS, eos_token_id=None,
                            pad_token_id=PAD, mesh=mesh)
  assert sharded == single
  q_kernel = decode.place_params(tiny.params, tiny.cfg, mesh, decode.hashable_rules())[
      "layers"]["self_attn"]["q_proj"]["kernel"]  # [layers, embed, heads, head_dim]
  assert q_kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)


# A minimal chat template, so the teachers' chat-template path is exercised.
CHAT_TEMPLATE = ("{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}\n"
                 "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.mark.parametrize("chat_template", [None, CHAT_TEMPLATE], ids=["plain", "chat"])
def test_jax_teacher_equals_hf_teacher_greedy(tmp_path_factory, chat_template):
  from mind_jax.data.teachers.hf import HFTeacher
  from mind_jax.data.teachers.jax_teacher import JaxTeacher
  tiny = imported(tmp_path_factory, "llama", False, chat_template)
  texts = ["Tom has 3 apples", "The quick brown fox jumps over the lazy dog.",
           "Seven sheep", "How many apples does Tom have now?", "Six sleek swans swim"]
  requests = [TeacherRequest(Question(f"q{i}", text, answer="7"), "intuitive", prompt=text)
              for i, text in enumerate(texts)]
  settings = dict(max_new_tokens=12, temperature=0.0, batch_size=3)
  ours_teacher = JaxTeacher(tiny.workdir, **settings)
  ours = ours_teacher.generate(requests)
  reference = HFTeacher(tiny.hf_dir, **settings).generate(requests)
  print(f"\n[JaxTeacher, {'chat template' if chat_template else 'plain'}] {ours[:2]}")
  assert len(ours) == len(requests)
  assert all(text is None or isinstance(text, str) for text in ours)
  assert ours == reference
  assert ours_teacher.name == tiny.workdir.rstrip("/").rsplit("/", 1)[-1]
  assert bool(ours_teacher.tokenizer.chat_template) == (chat_template is not None)

  ours_teacher.temperature, ours_teacher.top_p = 0.7, 0.95
  sampled = ours_teacher.generate(requests)
  assert len(sampled) == len(requests) and sampled == ours_teacher.generate(requests)
