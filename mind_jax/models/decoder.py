"""A Llama/Qwen2-family decoder-only LM in Flax, numerically the transformers model.

RMSNorm, RoPE (with Llama-3 frequency scaling), grouped-query attention,
SwiGLU, optional q/k/v bias (Qwen2), tied or untied embeddings. Parameter names
mirror transformers' (`layers/self_attn/q_proj/kernel`, stacked over the layers), so
the HF mapping in `hf.py` is a table, and every weight carries logical axis names that
`mind_jax.sharding` maps onto the mesh.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mind_jax import sharding
from mind_jax.config import check_fields

FAMILIES = ("llama", "qwen2")
# The leading axis of the scanned layers' stacked params (model.scan_layers). Never sharded:
# the scan takes one layer's slice per iteration (see sharding.logical_to_spec).
LAYERS_AXIS = "layers"
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """The model's shape, built from `config.model`. These defaults are config.model's; what
  each field means is documented in mind_jax/config.py."""
  family: str = "llama"
  vocab_size: int = 512
  vocab_pad_multiple: int = 128
  hidden_size: int = 64
  intermediate_size: int = 172
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  qkv_bias: bool = False
  o_bias: bool = False
  tie_embeddings: bool = False
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: str = "none"
  rope_factor: float = 8.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_position: int = 8192
  max_position_embeddings: int = 2048
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  scan_layers: bool = True
  causal_block_size: int = 0
  bos_token_id: int = -1
  eos_token_id: int = -1
  pad_token_id: int = -1

  @classmethod
  def from_config(cls, model_config) -> "DecoderConfig":
    """From config.model or the dict a checkpoint's meta keeps (a missing field takes its
    default; an unknown one fails)."""
    values = dict(model_config)
    check_fields("model", values, {f.name for f in dataclasses.fields(cls)})
    return cls(**values).validated()

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def validated(self) -> "DecoderConfig":
    if self.family not in FAMILIES:
      raise ValueError(f"model.family={self.family!r}: expected one of {FAMILIES}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"model.num_heads={self.num_heads} is not a multiple of "
                       f"model.num_kv_heads={self.num_kv_heads}")
    if self.rope_scaling not in ("none", "llama3"):
      raise ValueError(f"model.rope_scaling={self.rope_scaling!r}: expected 'none' or 'llama3'")
    if self.remat != "none" and self.remat not in REMAT_POLICIES:
      raise ValueError(f"model.remat={self.remat!r}: expected 'none' or one of "
                       f"{tuple(REMAT_POLICIES)}")
    if self.causal_block_size < 0:
      raise ValueError(f"model.causal_block_size={self.causal_block_size}: expected >= 0")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16"):
        raise ValueError(f"model.{name}={getattr(self, name)!r}: expected float32 or bfloat16")
    return self

  @property
  def padded_vocab_size(self) -> int:
    m = max(1, self.vocab_pad_multiple)
    return int(math.ceil(self.vocab_size / m) * m)

  def num_params(self, include_embeddings: bool = True) -> int:
    e, f, d = self.hidden_size, self.intermediate_size, self.head_dim
    attn = e * d * (2 * self.num_heads + 2 * self.num_kv_heads)
    attn += d * (self.num_heads + 2 * self.num_kv_heads) * self.qkv_bias + e * self.o_bias
    layer = attn + 3 * e * f + 2 * e
    n = self.num_layers * layer + e
    if include_embeddings:
      n += self.padded_vocab_size * e * (1 if self.tie_embeddings else 2)
    return n


def rope_inverse_frequencies(cfg: DecoderConfig) -> np.ndarray:
  """RoPE inverse frequencies, as transformers computes them (fp32)."""
  exponent = np.arange(0, cfg.head_dim, 2, dtype=np.int64).astype(np.float32) / cfg.head_dim
  inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** exponent)).astype(np.float32)
  if cfg.rope_scaling == "llama3":
    low_wavelen = cfg.rope_original_max_position / cfg.rope_low_freq_factor
    high_wavelen = cfg.rope_original_max_position / cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / cfg.rope_factor, inv_freq)
    smooth = ((cfg.rope_original_max_position / wavelen - cfg.rope_low_freq_factor)
              / (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor))
    smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
  return inv_freq


def rope_tables(cfg: DecoderConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos and sin, [batch, length, head_dim], in fp32."""
  inv_freq = jnp.asarray(rope_inverse_frequencies(cfg))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x: [batch, length, heads, head_dim]; the rotate-half convention of transformers."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
  return x * cos + rotated * sin


class Linear(nn.Module):
  """y = x @ kernel (+ bias) with named, multi-dimensional input and output axes."""
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  in_axes: tuple[str, ...]
  out_axes: tuple[str, ...]
  use_bias: bool
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                               self.in_axes + self.out_axes),
        self.in_shape + self.out_shape, self.param_dtype)
    n_in = len(self.in_shape)
    # jnp.asarray, not kernel.astype: under QLoRA (models/lora.py) the kernel is qwix's
    # 4-bit array, whose cast qwix supports through jnp.asarray only.
    y = jax.lax.dot_general(x.astype(self.dtype), jnp.asarray(kernel, self.dtype),
                            ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.out_axes),
                        self.out_shape, self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class RMSNorm(nn.Module):
  eps: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * normed.astype(self.dtype)


# Attention. The G = num_heads / num_kv_heads query heads that share a KV head are
# one batch entry of [B, K, G, T, H] (a reshape: K/V are never repeated G times), and
# the backward pass is written out (custom_vjp) because autodiff of the softmax
# reduces dP * P over the keys, a pass over a [B, N, T, S] array, where dO . O over
# head_dim gives the same sums (as in FlashAttention); on CPU that pass is a
# measurable share of the step (benchmarks/train_step_vs_torch.py).

@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention_block(q, k, v, mask, scale):
  """softmax(q k^T * scale, masked) v: q [B,K,G,T,H], k and v [B,K,S,H], mask
  [B,1,1,T,S] bool (True: attend). Logits and softmax in fp32, as transformers."""
  return _attention_block_fwd(q, k, v, mask, scale)[0]


def _attention_block_fwd(q, k, v, mask, scale):
  logits = jnp.einsum("bkgth,bksh->bkgts", q, k, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bksh->bkgth", probs, v)
  return out, (q, k, v, mask, probs, out)


def _attention_block_bwd(scale, residuals, d_out):
  q, k, v, mask, probs, out = residuals
  d_v = jnp.einsum("bkgts,bkgth->bksh", probs, d_out)
  d_probs = jnp.einsum("bkgth,bksh->bkgts", d_out, v, preferred_element_type=jnp.float32)
  # Softmax backward: dL = P * (dP - sum_s dP * P), and sum_s dP * P = dO . O.
  row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
  d_logits = jnp.where(mask, probs.astype(jnp.float32) * (d_probs - row), 0.0) * scale
  d_logits = d_logits.astype(q.dtype)
  d_q = jnp.einsum("bkgts,bksh->bkgth", d_logits, k)
  d_k = jnp.einsum("bkgts,bkgth->bksh", d_logits, q)
  return d_q, d_k, d_v, None


_attention_block.defvjp(_attention_block_fwd, _attention_block_bwd)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float,
              causal_block_size: int = 0) -> jax.Array:
  """Grouped-query attention: q [B,T,N,H], k and v [B,S,K,H], mask [B,1,T,S] bool
  (True: attend) -> [B,T,N,H].

  causal_block_size > 0 (self-attention under a causal mask only, T == S): the
  queries go in blocks of that many, and each block attends only to the keys up
  to its last position, skipping the blocks of the causal mask that are all
  masked (about half the attention work for many blocks). Outputs at real tokens
  are unchanged; a row with no key to attend to (left padding) averages the
  values of its block's keys instead of all keys: such rows are padding, and
  nothing reads them.
  """
  b, t, n, h = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(b, t, kv_heads, n // kv_heads, h).transpose(0, 2, 3, 1, 4)  # [B,K,G,T,H]
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B,K,S,H]
  mask = mask[:, :, None]  # [B,1,1,T,S]
  if causal_block_size <= 0 or causal_block_size >= t:
    out = _attention_block(q, k, v, mask, scale)
  else:
    assert k.shape[2] == t, "causal_block_size needs self-attention (T == S)"
    blocks = []
    for start in range(0, t, causal_block_size):
      end = min(start + causal_block_size, t)
      blocks.append(_attention_block(q[:, :, :, start:end], k[:, :, :end], v[:, :, :end],
                                     mask[..., start:end, :end], scale))
    out = jnp.concatenate(blocks, axis=3)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


class Attention(nn.Module):
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, x, cos, sin, mask, kv_cache=None, cache_index=None):
    """With `kv_cache` ({"k", "v"}, see `init_cache`): returns (output, updated kv_cache)."""
    c = self.cfg
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    e, d = c.hidden_size, c.head_dim

    def proj(name, heads, axis, bias):
      return Linear((e,), (heads, d), ("embed",), (axis, "head_dim"), bias, dt, pdt, name=name)(x)

    q = apply_rope(proj("q_proj", c.num_heads, "heads", c.qkv_bias), cos, sin)
    k = apply_rope(proj("k_proj", c.num_kv_heads, "kv_heads", c.qkv_bias), cos, sin)
    v = proj("v_proj", c.num_kv_heads, "kv_heads", c.qkv_bias)
    if kv_cache is not None:  # generation: store the new keys/values, attend over all slots
      kv_cache = {name: jax.lax.dynamic_update_slice(
          kv_cache[name], new.astype(kv_cache[name].dtype), (0, cache_index, 0, 0))
                  for name, new in (("k", k), ("v", v))}
      k, v = kv_cache["k"].astype(dt), kv_cache["v"].astype(dt)
    # Blocks skip masked keys under the training (causal, T == S) mask only.
    block = c.causal_block_size if kv_cache is None else 0
    out = attention(q, k, v, mask, d ** -0.5, block)
    out = Linear((c.num_heads, d), (e,), ("heads", "head_dim"), ("embed",), c.o_bias, dt, pdt,
                 name="o_proj")(out)
    return out if kv_cache is None else (out, kv_cache)


class MLP(nn.Module):
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, x):
    c = self.cfg
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    e, f = c.hidden_size, c.intermediate_size
    gate = Linear((e,), (f,), ("embed",), ("mlp",), False, dt, pdt, name="gate_proj")(x)
    up = Linear((e,), (f,), ("embed",), ("mlp",), False, dt, pdt, name="up_proj")(x)
    return Linear((f,), (e,), ("mlp",), ("embed",), False, dt, pdt, name="down_proj")(
        nn.silu(gate) * up)


class DecoderLayer(nn.Module):
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, x, cos, sin, mask, kv_cache=None, cache_index=None):
    """(output, updated kv_cache or None): the (carry, output) pair nn.scan wants."""
    c = self.cfg
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    h = RMSNorm(c.rms_norm_eps, dt, pdt, name="input_layernorm")(x)
    attn = Attention(c, name="self_attn")(h, cos, sin, mask, kv_cache, cache_index)
    if kv_cache is not None:
      attn, kv_cache = attn
    x = x + attn
    h = RMSNorm(c.rms_norm_eps, dt, pdt, name="post_attention_layernorm")(x)
    return x + MLP(c, name="mlp")(h), kv_cache


class LMHead(nn.Module):
  """The untied output projection's kernel [hidden, padded_vocab], returned rather than
  applied: the train steps' loss applies it a chunk of tokens at a time (vocab_logits)."""
  cfg: DecoderConfig

  @nn.compact
  def __call__(self) -> jax.Array:
    c = self.cfg
    return self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                             ("embed", "vocab")),
                      (c.hidden_size, c.padded_vocab_size), jnp.dtype(c.param_dtype))


def vocab_logits(x: jax.Array, head: jax.Array, cfg: DecoderConfig) -> jax.Array:
  """Logits [..., padded_vocab] of final hidden states x [..., hidden]: `head` is the
  embedding table [padded_vocab, hidden] when tied, else the LM head's kernel [hidden,
  padded_vocab]. The vocabulary's padding rows get the dtype's minimum, so softmax,
  cross-entropy and argmax see the real vocabulary only."""
  spec = "...e,ve->...v" if cfg.tie_embeddings else "...e,ev->...v"
  logits = jnp.einsum(spec, x, head.astype(x.dtype))
  if cfg.padded_vocab_size != cfg.vocab_size:
    real = jnp.arange(cfg.padded_vocab_size) < cfg.vocab_size
    logits = jnp.where(real, logits, jnp.finfo(logits.dtype).min)
  return logits


class Decoder(nn.Module):
  """Causal LM: token ids [batch, length] -> logits [batch, length, padded_vocab].

  Logits of the padding rows of the vocabulary are set to the dtype's minimum,
  so softmax, cross-entropy and argmax see the real vocabulary only.

  `return_hidden` returns (final hidden states [batch, length, hidden], the output
  head in the compute dtype) instead of logits: `vocab_logits(hidden, head, cfg)` gives
  them, and the train steps' loss makes them a chunk of tokens at a time
  (losses.chunked_token_nll), so the [tokens, vocab] logits never exist at once.

  With model.scan_layers (the default) the layers are one `nn.scan` over a traced layer:
  their params are stacked on a leading "layers" axis (`layers/mlp/up_proj/kernel`
  [num_layers, ...]), and compile time no longer grows with depth. Without it they are
  unrolled (`layers_0`, `layers_1`, ...): the layout of checkpoints written before the
  field existed (checkpoint.read_meta reads those as scan_layers=False).

  Generation (mind_jax.decode) passes `cache` (from `init_cache`): the new
  tokens' keys/values are written at cache["index"], they attend over every
  filled cache slot that is not padding, and the call returns
  (logits, updated cache). `attention_mask` then covers the new tokens only
  (the cache remembers the earlier ones), and `last_only` computes the logits
  of the last position only (a prefill needs no [batch, length, vocab] array).

  Packed rows (mind_jax/data/packing.py) pass `segment_ids` [batch, length]: a
  token attends only to earlier tokens of its own segment, and `positions` count
  from 0 in every segment, so each segment computes what it would alone.

  `activation_sharding` (the train steps set it: sharding.activation_sharding) pins
  the activations' rows to the mesh's batch axes. Without it XLA may give the
  embedding lookup's output the embedding table's sharding (embed over fsdp), and
  every device would then compute the whole batch.
  """
  cfg: DecoderConfig
  activation_sharding: Any = None

  @nn.compact
  def __call__(self, input_ids: jax.Array, positions: jax.Array | None = None,
               attention_mask: jax.Array | None = None, cache: dict | None = None,
               last_only: bool = False, segment_ids: jax.Array | None = None,
               return_hidden: bool = False):
    c = self.cfg
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    batch, length = input_ids.shape
    if cache is not None and positions is None:  # continue after the cached tokens
      positions = cache["index"] + jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32),
                                                     (batch, length))
    if positions is None:  # transformers' default: 0..length-1 whatever the padding.
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    mask = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))[None, None]
    if attention_mask is not None:
      mask = mask & attention_mask.astype(jnp.bool_)[:, None, None, :]
    if segment_ids is not None:
      mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    if cache is not None:
      filled, mask = cache_attention_mask(cache, attention_mask, length)
    cos, sin = rope_tables(c, positions)

    embedding = self.param(
        "embed_tokens", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                     ("vocab", "embed")),
        (c.padded_vocab_size, c.hidden_size), pdt)
    x = jnp.take(embedding, input_ids, axis=0).astype(dt)
    if self.activation_sharding is not None:
      x = jax.lax.with_sharding_constraint(x, self.activation_sharding)

    layers = cache["layers"] if cache is not None else None
    index = cache["index"] if cache is not None else None
    x, new_layers = decoder_layers(c, x, cos, sin, mask, layers, index)
    if last_only:
      x = x[:, -1:]
    x = RMSNorm(c.rms_norm_eps, dt, pdt, name="norm")(x)

    head = embedding if c.tie_embeddings else LMHead(c, name="lm_head")()
    if return_hidden:  # the loss makes the logits itself, a chunk at a time (losses.py)
      return x, head.astype(dt)
    logits = vocab_logits(x, head.astype(dt), c)
    if cache is not None:
      return logits, {"index": cache["index"] + length, "mask": filled, "layers": new_layers}
    return logits


def decoder_layers(c: DecoderConfig, x, cos, sin, mask, cache_layers, cache_index):
  """The decoder layers, called inside Decoder's compact __call__ (so they are its
  submodules): scanned (one traced layer, params stacked on a leading "layers" axis)
  or unrolled (layers_0, layers_1, ...). Returns (x, the updated cache's layers or None).
  """
  layer_cls = DecoderLayer
  if c.remat != "none":
    # Inside a scan XLA cannot CSE the recomputation away, so prevent_cse is not needed
    # (and costs a little); unrolled layers need it.
    layer_cls = nn.remat(DecoderLayer, policy=REMAT_POLICIES[c.remat],
                         prevent_cse=not c.scan_layers)
  if c.scan_layers:
    # Intermediates (apply(..., capture_intermediates=True)) are stacked like the params.
    scanned = nn.scan(layer_cls, variable_axes={"params": 0, "intermediates": 0},
                      split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0, nn.broadcast),
                      length=c.num_layers, metadata_params={nn.PARTITION_NAME: LAYERS_AXIS})
    return scanned(c, name="layers")(x, cos, sin, mask, cache_layers, cache_index)
  new_layers = []
  for i in range(c.num_layers):
    kv = None if cache_layers is None else cache_layers[i]
    x, kv = layer_cls(c, name=f"layers_{i}")(x, cos, sin, mask, kv, cache_index)
    new_layers.append(kv)
  return x, (tuple(new_layers) if cache_layers is not None else None)


def init_cache(cfg: DecoderConfig, batch: int, length: int) -> dict:
  """An empty KV cache with `length` token slots per row, for `Decoder(cache=...)`.

  {"index": the next slot to write (int32 scalar; all rows write the same slot,
   so prompts are left padded), "mask": [batch, length] bool, True where a slot
   holds a real (not padding) token, "layers": {"k", "v"} [num_layers, batch, length,
   kv_heads, head_dim] in the compute dtype with scanned layers, else a tuple of one
   {"k", "v"} [batch, length, kv_heads, head_dim] per layer}.
  """
  shape = (batch, length, cfg.num_kv_heads, cfg.head_dim)
  dtype = jnp.dtype(cfg.dtype)
  if cfg.scan_layers:
    zeros = jnp.zeros((cfg.num_layers,) + shape, dtype)
    layers = {"k": zeros, "v": zeros}
  else:
    zeros = jnp.zeros(shape, dtype)
    layers = tuple({"k": zeros, "v": zeros} for _ in range(cfg.num_layers))
  return {"index": jnp.zeros((), jnp.int32), "mask": jnp.zeros((batch, length), jnp.bool_),
          "layers": layers}


def cache_logical_axes(cfg: DecoderConfig) -> dict:
  """Logical axis names of `init_cache`'s arrays, for sharding.tree_shardings."""
  kv = ("batch", "length", "kv_heads", "head_dim")
  if cfg.scan_layers:
    layers = {"k": (LAYERS_AXIS,) + kv, "v": (LAYERS_AXIS,) + kv}
  else:
    layers = tuple({"k": kv, "v": kv} for _ in range(cfg.num_layers))
  return {"index": None, "mask": ("batch", "length"), "layers": layers}


def cache_attention_mask(cache: dict, attention_mask: jax.Array | None,
                         length: int) -> tuple[jax.Array, jax.Array]:
  """(the cache's new slot mask, the [batch, 1, length, slots] attention mask) for
  `length` new tokens written at cache["index"]: each attends to the filled,
  non-padding slots up to its own."""
  filled = cache["mask"]
  new = (jnp.ones((filled.shape[0], length), jnp.bool_) if attention_mask is None
         else attention_mask.astype(jnp.bool_))
  filled = jax.lax.dynamic_update_slice(filled, new, (0, cache["index"]))
  query_slots = cache["index"] + jnp.arange(length)
  causal = jnp.arange(filled.shape[1])[None, :] <= query_slots[:, None]
  return filled, causal[None, None] & filled[:, None, None, :]


def abstract_params(cfg: DecoderConfig) -> tuple[Any, Any]:
  """(ShapeDtypeStruct tree, logical-axes tree) of the params, without allocating them."""
  dummy = jnp.zeros((1, 1), jnp.int32)
  boxed = jax.eval_shape(lambda: Decoder(cfg).init(jax.random.PRNGKey(0), dummy)["params"])
  axes = sharding.params_logical_axes(boxed)
  shapes = nn.unbox(boxed)
  return shapes, axes


def init_params(cfg: DecoderConfig, rng: jax.Array) -> Any:
  dummy = jnp.zeros((1, 1), jnp.int32)
  return nn.unbox(Decoder(cfg).init(rng, dummy)["params"])
