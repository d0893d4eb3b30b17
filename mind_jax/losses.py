"""Losses. Token losses are reduced as (sum, count), never as a mean of means,
so they stay right with padding, with gradient accumulation and across devices."""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from mind_jax.models import decoder


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Negative log-likelihood of each target token, in fp32: [..., vocab], [...] -> [...]."""
  logits = logits.astype(jnp.float32)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - target_logit


def chunked_token_nll(hidden: jax.Array, targets: jax.Array,
                      logits_fn: Callable[[jax.Array], jax.Array], chunk: int) -> jax.Array:
  """token_nll of the logits `logits_fn(hidden)`, made `chunk` positions of every row at a
  time: hidden [..., T, E], targets [..., T] -> [..., T] fp32.

  The [..., T, vocab] logits never exist at once: a scan over T / chunk chunks makes one
  chunk's logits, reduces them to its NLL, and (jax.checkpoint) keeps nothing of them
  for the backward pass, which makes them again chunk by chunk. Live at once: one chunk's
  logits and their gradient, [..., chunk, vocab] (the idea of Liger's chunked and fused
  linear cross-entropy; Cut Cross-Entropy, Wijmans et al. 2024, goes further). The rows
  stay whole, so their sharding over the batch axes is untouched. chunk <= 0 or >= T:
  the whole length at once, without recomputation."""
  length = targets.shape[-1]
  if chunk <= 0 or chunk >= length:
    return token_nll(logits_fn(hidden), targets)
  pad = -length % chunk
  if pad:  # zero hidden states and target 0: finite NLL, sliced off below
    hidden = jnp.pad(hidden, [(0, 0)] * (hidden.ndim - 2) + [(0, pad), (0, 0)])
    targets = jnp.pad(targets, [(0, 0)] * (targets.ndim - 1) + [(0, pad)])
  n = (length + pad) // chunk
  # [..., n * chunk, E] -> [n, ..., chunk, E]: the scan runs over the leading axis.
  xs = jnp.moveaxis(hidden.reshape(hidden.shape[:-2] + (n, chunk, hidden.shape[-1])), -3, 0)
  ts = jnp.moveaxis(targets.reshape(targets.shape[:-1] + (n, chunk)), -2, 0)

  @jax.checkpoint
  def one_chunk(x, t):
    return token_nll(logits_fn(x), t)

  nll = jax.lax.map(lambda args: one_chunk(*args), (xs, ts))  # [n, ..., chunk]
  nll = jnp.moveaxis(nll, 0, -2).reshape(targets.shape)
  return nll[..., :length]


def model_token_nll(model, variables, targets: jax.Array, chunk: int, *args, **kwargs
                    ) -> tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]:
  """A decoder's per-token NLL of `targets` [.., T] through chunked_token_nll: `model`
  (models/decoder.Decoder, or lora.LoraModel) is applied to `variables` and *args,
  **kwargs with return_hidden. Returns (NLL [.., T], final hidden states [.., T, E],
  logits_fn): logits_fn(hidden rows) makes the logits of a few chosen positions (the
  consistency loss's answer tokens) without the full [.., T, vocab] array."""
  hidden, head = model.apply(variables, *args, return_hidden=True, **kwargs)
  logits_fn = functools.partial(decoder.vocab_logits, head=head, cfg=model.cfg)
  return chunked_token_nll(hidden, targets, logits_fn, chunk), hidden, logits_fn


def model_next_token_loss(model, variables, input_ids: jax.Array, loss_mask: jax.Array,
                          chunk: int, **kwargs) -> tuple[jax.Array, jax.Array]:
  """(sum, count) of next-token prediction's NLL over the tokens `loss_mask` [B, T] scores
  (token t, predicted from position t - 1), the logits made `chunk` positions at a time
  (model_token_nll): what the SFT step trains on and eval's perplexity reads."""
  nll, _, _ = model_token_nll(model, variables, next_token_targets(input_ids), chunk,
                              input_ids, **kwargs)
  return masked_sum_and_count(nll[:, :-1], loss_mask[:, 1:].astype(jnp.float32))


def next_token_targets(input_ids: jax.Array) -> jax.Array:
  """Position t's target is token t + 1; the last position's is a stand-in, never scored.
  Scored over all T positions rather than on logits[:, :-1]: slicing a [.., T, vocab]
  array copies it, and the slice's gradient pads a second copy back; the NLL is cheap to
  slice."""
  return jnp.concatenate([input_ids[..., 1:], input_ids[..., -1:]], axis=-1)


def next_token_nll(logits: jax.Array, input_ids: jax.Array,
                   loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-token NLL of predicting token t+1 from position t, and its weight.

  `loss_mask[b, t]` is 1 where token t is scored (rationale and answer tokens),
  0 on the prompt and on padding. Returns ([B, T-1] nll, [B, T-1] weights).
  """
  nll = token_nll(logits, next_token_targets(input_ids))[:, :-1]
  weights = loss_mask[:, 1:].astype(jnp.float32)
  return nll, weights


def masked_sum_and_count(nll: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  return jnp.sum(nll * weights), jnp.sum(weights)


# ---------------------------------------------------------------------------- MIND
# Shapes: B questions, K perspectives; `present` [B, K] is 1 for the rationales
# that survived the judge. Absent perspectives are masked everywhere.


# Masked entries get a large finite logit, not -inf: 0 * (-inf) would turn the
# gradients of masked terms into NaN.
MASKED_LOGIT = -1e9


def masked_log_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """log softmax over the last axis restricted to `mask` (about -1e9 outside it)."""
  logits = jnp.where(mask > 0, logits, MASKED_LOGIT)
  return logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)


def masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """softmax over `mask`; exactly 0 outside it."""
  return jnp.where(mask > 0, jnp.exp(masked_log_softmax(logits, mask)), 0.0)


def listnet_kl(scores: jax.Array, smoothed_losses: jax.Array, present: jax.Array,
               tau: float) -> jax.Array:
  """L_meta per question [B]: KL(softmax(s/tau) || softmax(-L_bar/tau)) over present k.

  The prediction comes first, the target second, as the paper writes it.
  """
  log_p = masked_log_softmax(scores / tau, present)
  log_q = masked_log_softmax(-smoothed_losses / tau, present)
  p = jnp.exp(log_p)
  return jnp.sum(jnp.where(present > 0, p * (log_p - log_q), 0.0), axis=-1)


def select(scores: jax.Array, present: jax.Array, beta: float) -> jax.Array:
  """The dynamic subset I = {k present : s_k >= beta * max_j s_j}, as a 0/1 mask."""
  best = jnp.max(jnp.where(present > 0, scores, -jnp.inf), axis=-1, keepdims=True)
  return ((present > 0) & (scores >= beta * best)).astype(jnp.float32)


def fusion_weights(scores: jax.Array, present: jax.Array, beta: float, tau_s: float,
                   uniform: bool = False) -> tuple[jax.Array, jax.Array]:
  """(alpha, selected): alpha = softmax(s / tau_s) over I (or uniform over I), 0 outside.

  Under stop_gradient: the TA is never trained by the student's loss.
  """
  scores = jax.lax.stop_gradient(scores)
  selected = select(scores, present, beta)
  logits = jnp.zeros_like(scores) if uniform else scores / tau_s
  return jax.lax.stop_gradient(masked_softmax(logits, selected)), selected


def mix_with_uniform(alpha: jax.Array, present: jax.Array, epsilon: float) -> jax.Array:
  """(1 - epsilon) alpha + epsilon uniform over the present perspectives: every present
  rationale keeps at least epsilon / K_present of the weight (a guard against collapse)."""
  uniform = present / jnp.maximum(jnp.sum(present, axis=-1, keepdims=True), 1.0)
  return (1.0 - epsilon) * alpha + epsilon * uniform


def entropy(weights: jax.Array) -> jax.Array:
  """Entropy (nats) of weight vectors over the last axis; 0 * log 0 counts as 0."""
  safe = jnp.where(weights > 0, weights, 1.0)
  return -jnp.sum(jnp.where(weights > 0, weights * jnp.log(safe), 0.0), axis=-1)


def sequence_token_mean(nll: jax.Array, weights: jax.Array) -> jax.Array:
  """Per-sequence token mean of the NLL over the weighted tokens: [..., T] -> [...]."""
  return jnp.sum(nll * weights, axis=-1) / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)


def jensen_shannon(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  """JSD(P || Q) over the last axis, from log-probabilities (natural log)."""
  log_m = jnp.logaddexp(log_p, log_q) - jnp.log(2.0)
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  kl_pm = jnp.sum(jnp.where(p > 0, p * (log_p - log_m), 0.0), axis=-1)
  kl_qm = jnp.sum(jnp.where(q > 0, q * (log_q - log_m), 0.0), axis=-1)
  return 0.5 * (kl_pm + kl_qm)


def answer_positions(answer_mask: jax.Array, max_answer_tokens: int) -> tuple[jax.Array, jax.Array]:
  """Positions of the first `max_answer_tokens` answer tokens of each sequence, in order.

  answer_mask [..., T] -> (positions [..., A], valid [..., A]).
  """
  length = answer_mask.shape[-1]
  order = jnp.arange(length)
  # Answer tokens sort first (by position), everything else after them.
  keys = jnp.where(answer_mask > 0, order, length + order)
  positions = jnp.argsort(keys, axis=-1)[..., :max_answer_tokens]
  valid = jnp.arange(max_answer_tokens) < jnp.sum(answer_mask > 0, axis=-1, keepdims=True)
  return positions, valid.astype(jnp.float32)


def pairwise_consistency(answer_log_probs: jax.Array, answer_valid: jax.Array,
                         alpha: jax.Array) -> jax.Array:
  """L_cons per question [B]: sum_{i<j} alpha_i alpha_j JSD(P_i || P_j).

  answer_log_probs [B, K, A, V]: the student's next-token log-distributions at
  the A answer positions of each sequence (teacher forced). All K sequences
  end in the same answer string, so position a of every k predicts the same
  token; JSD is averaged over the valid positions. Pairs are looped over in
  Python (K is small and static) to keep memory at one [B, A, V] pair at a time.
  """
  num_perspectives = answer_log_probs.shape[1]
  valid = jnp.max(answer_valid, axis=1)  # the same answer tokens in every present slot
  total = jnp.zeros(answer_log_probs.shape[0], jnp.float32)
  for i in range(num_perspectives):
    for j in range(i + 1, num_perspectives):
      jsd = jensen_shannon(answer_log_probs[:, i], answer_log_probs[:, j])  # [B, A]
      mean_jsd = jnp.sum(jsd * valid, axis=-1) / jnp.maximum(jnp.sum(valid, axis=-1), 1.0)
      total = total + alpha[:, i] * alpha[:, j] * mean_jsd
  return total
