"""Batched generation with the Decoder's KV cache: prefill, then a jitted decode loop.

    new_tokens = decode.generate(params, cfg, [[5, 9, 2], [7]], max_new_tokens=64,
                                 eos_token_id=1, pad_token_id=2)

Prompts are left padded to a common length, so every row's prompt ends in the
same column and all rows write the same cache slot each step; position ids are
cumsum(attention_mask) - 1 (clipped at 0), as transformers' generate uses for a
left-padded batch, so the tokens equal `model.generate(**batch)` of the HF model.

One jitted program does everything: the prompt is prefilled in one forward, then
a `lax.while_loop` feeds one token per step until every row has emitted an EOS
or `max_new_tokens` are out. Shapes are fixed per (batch bucket, prompt bucket,
max_new_tokens): the batch is padded to a multiple of the mesh's batch shards
and the prompt length to a power of two, so few distinct programs get compiled.

On a mesh, params keep their logical shardings (config.mesh.rules), the batch
and the KV cache are split over the "batch" rule's axes ("data", "fsdp") and
KV heads over "tensor"; the generated tokens come back replicated on every
host. Without a mesh it runs on the first device.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mind_jax import sharding
from mind_jax.config import MESH_RULES
from mind_jax.models import decoder

# Prompts are padded to a power of two at least this long: one compiled program
# serves every prompt length up to the bucket.
MIN_PROMPT_BUCKET = 16


def prompt_bucket(length: int) -> int:
  return max(MIN_PROMPT_BUCKET, 1 << (max(length, 1) - 1).bit_length())


def batch_bucket(rows: int, mesh: Mesh, rules) -> int:
  """Rows padded up to a multiple of the number of batch shards, so the batch splits evenly."""
  axes = sharding.logical_to_spec(("batch",), (0,), mesh, rules)[0] or ()
  axes = (axes,) if isinstance(axes, str) else axes
  shards = int(np.prod([mesh.shape[axis] for axis in axes]))
  return -(-rows // shards) * shards


def left_pad(prompts: Sequence[Sequence[int]], rows: int, length: int,
             pad_token_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(input_ids, attention_mask, positions) [rows, length], prompts right-aligned.

  Rows past len(prompts) are filler (all pad tokens, unmasked so no row is
  all padding); the caller marks them finished from the start.
  """
  ids = np.full((rows, length), pad_token_id, np.int32)
  mask = np.zeros((rows, length), np.int32)
  mask[len(prompts):] = 1
  for row, prompt in enumerate(prompts):
    if len(prompt):
      ids[row, length - len(prompt):] = prompt
      mask[row, length - len(prompt):] = 1
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  return ids, mask, positions


def top_p_filter(logits: jax.Array, top_p: jax.Array) -> jax.Array:
  """Keep the most probable tokens whose probabilities first reach top_p (at least
  one), like transformers' TopPLogitsWarper; top_p >= 1 keeps everything."""
  descending = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(descending, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs  # of the more probable tokens
  threshold = jnp.min(jnp.where(mass_before < top_p, descending, jnp.inf), axis=-1,
                      keepdims=True)
  filtered = jnp.where(logits >= threshold, logits, -jnp.inf)
  return jnp.where(top_p >= 1.0, logits, filtered)


def next_token(logits: jax.Array, rng: jax.Array, temperature: jax.Array, top_p: jax.Array,
               greedy: bool) -> jax.Array:
  """[batch, vocab] logits -> [batch] token ids: argmax, or a temperature / top-p sample."""
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = logits.astype(jnp.float32) / temperature
  return jax.random.categorical(rng, top_p_filter(scaled, top_p), axis=-1).astype(jnp.int32)


def _generate_tokens(params, input_ids, attention_mask, positions, done, rng, temperature,
                     top_p, eos_ids, *, cfg: decoder.DecoderConfig, max_new_tokens: int,
                     greedy: bool, pad_token_id: int, cache_shardings):
  """[batch, max_new_tokens] new tokens; after a row's EOS (and in rows done from the
  start) the entries are pad_token_id."""
  model = decoder.Decoder(cfg)
  batch, length = input_ids.shape
  cache = jax.lax.with_sharding_constraint(
      decoder.init_cache(cfg, batch, length + max_new_tokens), cache_shardings)
  logits, cache = model.apply({"params": params}, input_ids, positions, attention_mask,
                              cache=cache, last_only=True)

  def pick(logits, step, done):
    token = next_token(logits[:, -1], jax.random.fold_in(rng, step), temperature, top_p, greedy)
    token = jnp.where(done, pad_token_id, token)
    return token, done | jnp.isin(token, eos_ids)

  token, new_done = pick(logits, 0, done)
  out = jnp.full((batch, max_new_tokens), pad_token_id, jnp.int32).at[:, 0].set(token)
  last_position = positions[:, -1]

  def keep_going(state):
    step, _, done, _, _ = state
    return (step < max_new_tokens) & ~jnp.all(done)

  def one_step(state):
    # Feed the token chosen at step-1; it sits at position last_position + step.
    step, token, done, cache, out = state
    logits, cache = model.apply({"params": params}, token[:, None],
                                (last_position + step)[:, None], cache=cache)
    token, done = pick(logits, step, done)
    out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
    return step + 1, token, done, cache, out

  state = (jnp.int32(1), token, new_done, cache, out)
  return jax.lax.while_loop(keep_going, one_step, state)[-1]


def _cache_shardings(cfg, batch: int, length: int, mesh: Mesh, rules):
  shapes = jax.eval_shape(lambda: decoder.init_cache(cfg, batch, length))
  return sharding.tree_shardings(shapes, decoder.cache_logical_axes(cfg), mesh, rules)


@functools.lru_cache(maxsize=32)
def _compiled_generate(cfg: decoder.DecoderConfig, mesh: Mesh, rules, batch: int, length: int,
                       max_new_tokens: int, greedy: bool, pad_token_id: int):
  """The jitted program for one (batch, prompt length, max_new_tokens) bucket."""
  fn = functools.partial(
      _generate_tokens, cfg=cfg, max_new_tokens=max_new_tokens, greedy=greedy,
      pad_token_id=pad_token_id,
      cache_shardings=_cache_shardings(cfg, batch, length + max_new_tokens, mesh, rules))
  # Replicated output: every host can read all rows.
  return jax.jit(fn, out_shardings=NamedSharding(mesh, P()))


def hashable_rules(rules=None) -> tuple:
  """config.mesh.rules (default: the default config's) as nested tuples, to key caches."""
  rules = rules if rules is not None else MESH_RULES
  return tuple((name, tuple(t) if isinstance(t, (list, tuple)) else t) for name, t in rules)


@functools.lru_cache(maxsize=8)
def param_shardings(cfg: decoder.DecoderConfig, mesh: Mesh, rules) -> Any:
  shapes, axes = decoder.abstract_params(cfg)
  return sharding.tree_shardings(shapes, axes, mesh, rules)


def place_params(params: Any, cfg: decoder.DecoderConfig, mesh: Mesh, rules) -> Any:
  """Params onto their logical shardings on `mesh` (a no-op for params already there)."""
  return jax.device_put(params, param_shardings(cfg, mesh, rules))


def _global_array(host: np.ndarray, spec_sharding: NamedSharding) -> jax.Array:
  # Every process holds the whole (small) host array and fills its own shards:
  # works on one host and on a multi-host pod alike.
  return jax.make_array_from_callback(host.shape, spec_sharding, lambda index: host[index])


def _key_data(rng: jax.Array) -> np.ndarray:
  """A PRNG key as raw uint32 data (jax.random.key or PRNGKey), to place like any array."""
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return np.asarray(rng)


def _eos_ids(eos_token_id: int | Sequence[int] | None) -> np.ndarray:
  ids = [] if eos_token_id is None else (
      [eos_token_id] if isinstance(eos_token_id, (int, np.integer)) else list(eos_token_id))
  ids = [int(i) for i in ids if i is not None and int(i) >= 0]
  return np.asarray(ids or [-1], np.int32)  # -1 matches no token: generation runs to the end


def cut_at_eos(tokens: np.ndarray, eos_ids: np.ndarray) -> list[int]:
  """A row's new tokens up to, not including, its first EOS."""
  hits = np.flatnonzero(np.isin(tokens, eos_ids))
  return tokens[:hits[0] if len(hits) else len(tokens)].tolist()


def generate(params: Any, model_config, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             eos_token_id: int | Sequence[int] | None, pad_token_id: int,
             temperature: float = 0.0, top_p: float = 1.0, rng: jax.Array | None = None,
             mesh: Mesh | None = None, rules=None) -> list[list[int]]:
  """New tokens for each prompt (token id lists), stopping at the first EOS.

  Returns only the generated tokens, EOS excluded: decoding a row with
  skip_special_tokens gives the same text as transformers' generate output
  decoded that way. `eos_token_id` may be one id or a list (e.g. Qwen's two);
  None never stops early. temperature == 0 decodes greedily (top_p unused);
  otherwise each step samples from softmax(logits / temperature) cut to top_p,
  with `rng` (default PRNGKey(0)) folded with the step number. `model_config`
  is a DecoderConfig or config.model; `rules` defaults to config.mesh.rules.
  Every process of a multi-host run must call this with the same arguments.
  """
  cfg = (model_config if isinstance(model_config, decoder.DecoderConfig)
         else decoder.DecoderConfig.from_config(model_config))
  if not prompts:
    return []
  if any(len(p) == 0 for p in prompts):
    raise ValueError("generate: every prompt needs at least one token")
  if max_new_tokens < 1:
    raise ValueError(f"generate: max_new_tokens={max_new_tokens} must be >= 1")
  mesh = mesh if mesh is not None else sharding.single_device_mesh()
  rules = hashable_rules(rules)
  rows = batch_bucket(len(prompts), mesh, rules)
  length = prompt_bucket(max(len(p) for p in prompts))
  ids, mask, positions = left_pad(prompts, rows, length, pad_token_id)
  done = np.arange(rows) >= len(prompts)  # filler rows are finished from the start

  batch_sh = sharding.batch_sharding(mesh, rules, ids.shape)
  row_sh = sharding.batch_sharding(mesh, rules, done.shape)
  replicated = sharding.replicated(mesh)
  eos_ids = _eos_ids(eos_token_id)
  greedy = temperature == 0
  # The temperature is unused when greedy: 1.0 just keeps the division harmless.
  replicated_inputs = dict(rng=_key_data(rng if rng is not None else jax.random.PRNGKey(0)),
                           temperature=np.float32(1.0 if greedy else temperature),
                           top_p=np.float32(top_p), eos_ids=eos_ids)
  fn = _compiled_generate(cfg, mesh, rules, rows, length, int(max_new_tokens), greedy,
                          int(pad_token_id))
  out = fn(place_params(params, cfg, mesh, rules),
           *(_global_array(a, batch_sh) for a in (ids, mask, positions)),
           _global_array(done, row_sh),
           *(_global_array(np.asarray(v), replicated) for v in replicated_inputs.values()))
  out = np.asarray(out.addressable_data(0))  # replicated: each host has every row
  return [cut_at_eos(out[row], eos_ids) for row in range(len(prompts))]
