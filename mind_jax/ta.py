"""The Teaching Assistant (TA): scores how well each rationale fits the student now.

Input: a question embedding e(x) [B, E], K rationale embeddings e(r_k) [B, K, E]
(frozen MiniLM sentence embeddings stored in the records) and a presence mask
[B, K]. Output: a score s_k > 0 per rationale [B, K] (0 for absent ones).

  1. feature alignment: h_k = MLP([e(x); e(r_k); e(x) * e(r_k)])   (shared over k)
  2. synergy layer: multi-head self-attention across the K perspectives, so the
     TA can model how perspectives complement each other (a flag removes it)
  3. inertia scoring heads: M MLP heads give S [B, K, M]; s = softplus(mean_m S)

The TA is small (~10^5 params): its params are replicated on every device.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mind_jax.config import check_fields


@dataclasses.dataclass(frozen=True)
class TAConfig:
  """Built from `config.ta`. These defaults are config.ta's; what each field means is
  documented in mind_jax/config.py."""
  hidden_size: int = 128
  num_attention_heads: int = 4
  num_score_heads: int = 4
  score_hidden_size: int = 64
  synergy: bool = True

  @classmethod
  def from_config(cls, ta_config) -> "TAConfig":
    values = dict(ta_config)
    check_fields("ta", values, {f.name for f in dataclasses.fields(cls)})
    return cls(**values)


class TeachingAssistant(nn.Module):
  cfg: TAConfig

  @nn.compact
  def __call__(self, question_embedding: jax.Array, rationale_embedding: jax.Array,
               present: jax.Array) -> jax.Array:
    c = self.cfg
    num_perspectives = rationale_embedding.shape[1]
    question = jnp.broadcast_to(question_embedding[:, None, :], rationale_embedding.shape)
    features = jnp.concatenate(
        [question, rationale_embedding, question * rationale_embedding], axis=-1)
    h = nn.gelu(nn.Dense(c.hidden_size, name="align_in")(features))
    h = nn.Dense(c.hidden_size, name="align_out")(h)

    present = present.astype(jnp.bool_)
    if c.synergy:
      # Pre-norm residual attention over the K perspectives; absent ones are not attended to.
      mask = present[:, None, None, :] & jnp.ones((1, 1, num_perspectives, 1), jnp.bool_)
      # No biases: a key bias has an exactly zero gradient (softmax is shift
      # invariant), and Adam would turn its float noise into full-size updates.
      attended = nn.MultiHeadDotProductAttention(
          num_heads=c.num_attention_heads, qkv_features=c.hidden_size, use_bias=False,
          name="synergy")(
              nn.LayerNorm(name="synergy_norm")(h), mask=mask)
      h = h + attended

    # M independent scoring heads, computed together: [B, K, M].
    heads = nn.gelu(nn.DenseGeneral((c.num_score_heads, c.score_hidden_size), name="heads_in")(h))
    score_matrix = nn.DenseGeneral(1, axis=-1, name="heads_out")(heads)[..., 0]
    scores = nn.softplus(jnp.mean(score_matrix, axis=-1))
    return jnp.where(present, scores, 0.0)


def init_ta_params(cfg: TAConfig, embed_dim: int, num_perspectives: int, rng: jax.Array):
  q = jnp.zeros((1, embed_dim), jnp.float32)
  r = jnp.zeros((1, num_perspectives, embed_dim), jnp.float32)
  present = jnp.ones((1, num_perspectives), jnp.float32)
  return nn.unbox(TeachingAssistant(cfg).init(rng, q, r, present)["params"])
