"""The MIND train step: `mind_step(state, batch) -> (state, metrics)`, pure and jitted.

One student forward over the B*K sequences of a batch gives per-rationale
cross-entropies CE [B, K] (perspectives of different lengths may go through in
groups, each cut to its own width: `slot_groups`; single-path reads its slot
only). The same CE values are both the student's loss terms and the TA's
feedback:

  TA:       s = TA(e(x), e(r_1..K))              scores, stop_gradient into the student
            alpha = fusion over I = {k : s_k >= beta max s}
  student:  L = sum_k alpha_k CE_k + lambda sum_{i<j} alpha_i alpha_j JSD(P_i || P_j)
  TA:       L_bar = inertia filter(CE)           stop_gradient into the TA
            L_meta = KL(softmax(s/tau) || softmax(-L_bar/tau)), applied every G_ta steps

Phase "warmup" freezes the student (forward only) and trains the TA; phase
"joint" trains both. Baselines are settings of `MindSettings`, never other code.

A batch is a dict (records, mind_jax/data/records.py):
  example_index [B] int32, input_ids / attention_mask / loss_mask / answer_mask
  [B, K, T] int32, present [B, K] float32, question_embedding [B, E],
  rationale_embedding [B, K, E] float32.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from mind_jax import inertia, losses
from mind_jax.models.decoder import Decoder, DecoderConfig
from mind_jax.state import TrainState
from mind_jax.ta import TAConfig, TeachingAssistant

WEIGHTINGS = ("ta", "uniform", "loss", "single")
PHASES = ("warmup", "joint")
BATCH_KEYS = ("example_index", "input_ids", "attention_mask", "loss_mask", "answer_mask",
              "present", "question_embedding", "rationale_embedding")


@dataclasses.dataclass(frozen=True)
class MindSettings:
  """The static settings of a step, from `config.mind` (documented in mind_jax/config.py)."""
  weighting: str = "ta"
  single_index: int = 0          # slot of config.mind.single_perspective in the records
  uniform_fusion: bool = False
  beta: float = 0.8
  tau: float = 1.0
  tau_s: float = 0.5
  consistency_weight: float = 0.1
  max_answer_tokens: int = 8
  inertia_mode: str = "example"
  inertia_mu: float = 0.9
  alpha_floor: float = 0.0       # collapse guard: alpha mixed with uniform by this much
  slot_groups: tuple = ()        # ((slots, width), ...): perspectives read together, cut to
                                 # width tokens; () reads all K at the records' full length

  @classmethod
  def from_config(cls, mind_config, perspective_names: list[str]) -> "MindSettings":
    if mind_config.weighting not in WEIGHTINGS:
      raise ValueError(f"mind.weighting={mind_config.weighting!r}: expected one of {WEIGHTINGS}")
    if mind_config.fusion not in ("softmax", "uniform"):
      raise ValueError(f"mind.fusion={mind_config.fusion!r}: expected softmax or uniform")
    if not 0.0 < mind_config.beta <= 1.0:
      raise ValueError(f"mind.beta={mind_config.beta}: must be in (0, 1]")
    if not 0.0 <= mind_config.alpha_floor <= 1.0:
      raise ValueError(f"mind.alpha_floor={mind_config.alpha_floor}: must be in [0, 1]")
    single_index = 0
    if mind_config.weighting == "single":
      if mind_config.single_perspective not in perspective_names:
        raise ValueError(f"mind.single_perspective={mind_config.single_perspective!r} is not "
                         f"among the records' perspectives {perspective_names}")
      single_index = perspective_names.index(mind_config.single_perspective)
    mu = 0.0 if mind_config.inertia_mode == "instant" else mind_config.inertia_mu
    return cls(weighting=mind_config.weighting, single_index=single_index,
               uniform_fusion=mind_config.fusion == "uniform", beta=mind_config.beta,
               tau=mind_config.tau, tau_s=mind_config.tau_s,
               consistency_weight=mind_config.consistency_weight,
               max_answer_tokens=mind_config.max_answer_tokens,
               inertia_mode=mind_config.inertia_mode, inertia_mu=mu,
               alpha_floor=mind_config.alpha_floor)

  @property
  def uses_ta(self) -> bool:
    return self.weighting == "ta"


# ------------------------------------------------------------------ student side


def slot_groups(settings: "MindSettings", num_perspectives: int,
                length: int) -> tuple[tuple[tuple[int, ...], int], ...]:
  """((slots, width), ...): which perspective slots go through the student together, cut
  to how many tokens. Single-path reads its one slot; the others read every slot."""
  groups = settings.slot_groups or ((tuple(range(num_perspectives)), length),)
  if settings.weighting == "single":
    width = next(w for slots, w in groups if settings.single_index in slots)
    return (((settings.single_index,), width),)
  return groups


def _group_forward(params, model: Decoder, batch, slots: tuple[int, ...], width: int,
                   max_answer_tokens: int):
  """CE [B, m] of `slots` (m of them) read up to `width` tokens, and (answer log-probs
  [B, m, A, V], valid [B, m, A]) when max_answer_tokens > 0."""
  def cut(key):
    return batch[key][:, list(slots), :width]
  ids = cut("input_ids")
  b, m, t = ids.shape
  logits = model.apply({"params": params}, ids.reshape(b * m, t),
                       attention_mask=cut("attention_mask").reshape(b * m, t))
  logits = logits.reshape(b, m, t, -1)
  # Position t predicts token t + 1; the last position's target is a stand-in, unscored.
  targets = jnp.concatenate([ids[:, :, 1:], ids[:, :, -1:]], axis=2)
  nll = losses.token_nll(logits, targets)[:, :, :-1]
  ce = losses.sequence_token_mean(nll, cut("loss_mask")[:, :, 1:].astype(jnp.float32))
  if not max_answer_tokens:
    return ce, None
  positions, valid = losses.answer_positions(cut("answer_mask")[:, :, 1:], max_answer_tokens)
  picked = jnp.take_along_axis(logits, positions[..., None], axis=2)  # [B, m, A, V]
  return ce, (jax.nn.log_softmax(picked.astype(jnp.float32), axis=-1), valid)


def student_forward(params, model: Decoder, batch, groups, max_answer_tokens: int = 0):
  """The student over the slots of `groups` (see slot_groups) -> CE [B, K] (0 for slots
  not read) and, with max_answer_tokens, (answer log-probs [B, K, A, V], valid [B, K, A])."""
  b, k = batch["present"].shape
  ce = jnp.zeros((b, k), jnp.float32)
  answers = None
  for slots, width in groups:
    group_ce, group_answers = _group_forward(params, model, batch, slots, width,
                                             max_answer_tokens)
    ce = ce.at[:, list(slots)].set(group_ce)
    if group_answers is not None:
      log_probs, valid = group_answers
      if answers is None:
        answers = (jnp.zeros((b, k) + log_probs.shape[2:], log_probs.dtype),
                   jnp.zeros((b, k) + valid.shape[2:], valid.dtype))
      answers = (answers[0].at[:, list(slots)].set(log_probs),
                 answers[1].at[:, list(slots)].set(valid))
  return ce, answers


def fusion_alpha(settings: MindSettings, scores, ce, present) -> tuple[jax.Array, jax.Array]:
  """(alpha, selected) [B, K] for the configured weighting; always under stop_gradient."""
  if settings.weighting == "ta":
    alpha, selected = losses.fusion_weights(scores, present, settings.beta, settings.tau_s,
                                            uniform=settings.uniform_fusion)
    if settings.alpha_floor > 0:
      alpha = losses.mix_with_uniform(alpha, present, settings.alpha_floor)
      selected = (alpha > 0).astype(alpha.dtype)
    return alpha, selected
  if settings.weighting == "uniform":
    return losses.masked_softmax(jnp.zeros_like(present), present), present
  if settings.weighting == "loss":  # lower loss, more weight: no TA, no selection
    neg_ce = jax.lax.stop_gradient(-ce)
    return losses.masked_softmax(neg_ce / settings.tau_s, present), present
  one_hot = jax.nn.one_hot(settings.single_index, present.shape[-1]) * present
  return one_hot, one_hot


def student_objective(params, model: Decoder, batch, scores, settings: MindSettings):
  """(L_total, aux) with L_total = mean over questions of L_SFT + lambda L_cons."""
  present = batch["present"]
  # Single-path has no pair to compare: no consistency term, no answer distributions.
  with_cons = settings.consistency_weight > 0 and settings.weighting != "single"
  groups = slot_groups(settings, present.shape[1], batch["input_ids"].shape[2])
  ce, answers = student_forward(params, model, batch, groups,
                                settings.max_answer_tokens if with_cons else 0)
  alpha, selected = fusion_alpha(settings, scores, ce, present)
  l_sft = jnp.sum(alpha * ce, axis=-1)
  l_cons = jnp.zeros_like(l_sft)
  if with_cons:
    l_cons = losses.pairwise_consistency(*answers, alpha)
  # Questions with no weighted rationale (e.g. single-path where that slot is
  # absent) are left out of the mean rather than diluting it.
  counted = (jnp.sum(alpha, axis=-1) > 0).astype(jnp.float32)
  denom = jnp.maximum(jnp.sum(counted), 1.0)
  total = jnp.sum((l_sft + settings.consistency_weight * l_cons) * counted) / denom
  # What the student read this step: scored tokens of the slots with weight > 0.
  scored_tokens = jnp.sum(batch["loss_mask"][:, :, 1:], axis=-1).astype(jnp.float32)
  aux = dict(ce=jax.lax.stop_gradient(ce), alpha=alpha, selected=selected,
             l_sft=jnp.sum(l_sft * counted) / denom, l_cons=jnp.sum(l_cons * counted) / denom,
             alpha_entropy=jnp.sum(losses.entropy(alpha) * counted) / denom,
             trained_tokens=jnp.sum(jnp.where(alpha > 0, scored_tokens, 0.0)))
  return total, aux


# ------------------------------------------------------------------ TA side


def ta_update(state: TrainState, ta_model: TeachingAssistant, ta_optimizer, batch, scores,
              ta_vjp, ce, settings: MindSettings):
  """L_meta against the inertia-filtered CE; returns (ta_params, ta_opt_state, L_meta, L_bar)."""
  present = batch["present"]
  feedback = dict(example_index=batch["example_index"], losses=ce, present=present)
  l_bar = inertia.smoothed_losses(inertia.inertia_state_of(state.ta_opt_state),
                                  settings.inertia_mode, settings.inertia_mu, **feedback)

  def meta_loss(s):
    return jnp.mean(losses.listnet_kl(s, l_bar, present, settings.tau))

  l_meta, d_scores = jax.value_and_grad(meta_loss)(scores)
  (ta_grads,) = ta_vjp(d_scores)
  updates, ta_opt_state = ta_optimizer.update(ta_grads, state.ta_opt_state, state.ta_params,
                                              **feedback)
  return optax.apply_updates(state.ta_params, updates), ta_opt_state, l_meta, l_bar


# ------------------------------------------------------------------ the step


def _masked_mean_over_batch(values, mask):
  """Per-perspective mean [K] over the questions where `mask` is set."""
  return jnp.sum(values * mask, axis=0) / jnp.maximum(jnp.sum(mask, axis=0), 1.0)


def mind_step(state: TrainState, batch: dict, *, model: Decoder, ta_model: TeachingAssistant,
              optimizer, ta_optimizer, settings: MindSettings,
              phase: str) -> tuple[TrainState, dict]:
  present = batch["present"]
  scores, ta_vjp = jnp.zeros_like(present), None
  if settings.uses_ta:
    scores, ta_vjp = jax.vjp(
        lambda p: ta_model.apply({"params": p}, batch["question_embedding"],
                                 batch["rationale_embedding"], present), state.ta_params)

  objective = functools.partial(student_objective, model=model, batch=batch,
                                scores=scores, settings=settings)
  params, opt_state = state.params, state.opt_state
  if phase == "joint":
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
  else:  # TA warm-up: the student is frozen, forward only
    loss, aux = objective(state.params)

  metrics = dict(loss=loss, l_sft=aux["l_sft"], l_cons=aux["l_cons"],
                 alpha_entropy=aux["alpha_entropy"], trained_tokens=aux["trained_tokens"],
                 alpha=_masked_mean_over_batch(aux["alpha"], present),
                 selection_rate=_masked_mean_over_batch(aux["selected"], present),
                 ce=_masked_mean_over_batch(aux["ce"], present))
  ta_params, ta_opt_state = state.ta_params, state.ta_opt_state
  if settings.uses_ta:
    ta_params, ta_opt_state, l_meta, l_bar = ta_update(
        state, ta_model, ta_optimizer, batch, scores, ta_vjp, aux["ce"], settings)
    metrics.update(l_meta=l_meta, score=_masked_mean_over_batch(scores, present),
                   l_bar=_masked_mean_over_batch(l_bar, present))
  rng, _ = jax.random.split(state.rng)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            ta_params=ta_params, ta_opt_state=ta_opt_state, rng=rng)
  return new_state, metrics


def jit_mind_step(model_config: DecoderConfig, ta_config: TAConfig, optimizer, ta_optimizer,
                  settings: MindSettings, phase: str, state_shardings,
                  batch_shardings: dict):
  """The jitted step for one phase, with explicit in/out shardings and a donated state."""
  if phase not in PHASES:
    raise ValueError(f"phase={phase!r}: expected one of {PHASES}")
  step = functools.partial(mind_step, model=Decoder(model_config),
                           ta_model=TeachingAssistant(ta_config), optimizer=optimizer,
                           ta_optimizer=ta_optimizer, settings=settings,
                           phase=phase)
  mesh = next(iter(batch_shardings.values())).mesh
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)
