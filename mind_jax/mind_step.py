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

A batch is a dict of arrays as mind_jax/data/records.batch_spec states them.
With train.packing the four [B, K, T] arrays are replaced by packed rows of the
present rationales (mind_jax/data/packing.py): the same CE, alpha, losses and
gradients, without computing padding.

With M = optim.grad_accum_steps > 1 the student goes over the questions in M
micro-batches (questions m, m + M, ...), accumulating the gradient of the summed
objective; the TA scores the whole batch once, gets the whole batch's CE once, and
the student takes one update: what the full batch would give.

A step whose loss, L_meta or new state is not finite changes nothing but the step and
rng: the student, the TA and the inertia table keep their values (mind_jax/nonfinite.py;
metric `nonfinite`).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from mind_jax import capability, inertia, losses, nonfinite, sharding
from mind_jax.config import check_fields, default_config
from mind_jax.data import packing
from mind_jax.models import lora
from mind_jax.models.decoder import Decoder, DecoderConfig
from mind_jax.state import TrainState
from mind_jax.ta import TAConfig, TeachingAssistant

WEIGHTINGS = ("ta", "uniform", "loss", "single")
PHASES = ("warmup", "joint")


@dataclasses.dataclass(frozen=True)
class MindSettings:
  """The static settings of a step, built by `from_config` from `config.mind`: its defaults
  and what each field means are in mind_jax/config.py."""
  weighting: str
  single_index: int              # slot of config.mind.single_perspective in the records
  uniform_fusion: bool
  beta: float
  tau: float
  tau_s: float
  consistency_weight: float
  max_answer_tokens: int
  inertia_mode: str
  inertia_mu: float
  alpha_floor: float             # collapse guard: alpha mixed with uniform by this much
  slot_groups: tuple = ()        # ((slots, width), ...): perspectives read together, cut to
                                 # width tokens; () reads all K at the records' full length
  loss_chunk_tokens: int = 0     # train.loss_chunk_tokens: the CE's logits are made this
                                 # many positions of every row at a time (0: all at once)
  capability: str = "loss"       # mind.capability: what the TA's target follows
  progress_fast_mu: float = 0.5
  progress_slow_mu: float = 0.95
  accuracy_loss_weight: float = 0.1  # mind.accuracy_loss_weight (capability="accuracy")

  @classmethod
  def from_config(cls, mind_config, perspective_names: list[str]) -> "MindSettings":
    check_fields("mind", dict(mind_config), default_config().mind)
    if mind_config.weighting not in WEIGHTINGS:
      raise ValueError(f"mind.weighting={mind_config.weighting!r}: expected one of {WEIGHTINGS}")
    if mind_config.fusion not in ("softmax", "uniform"):
      raise ValueError(f"mind.fusion={mind_config.fusion!r}: expected softmax or uniform")
    if not 0.0 < mind_config.beta <= 1.0:
      raise ValueError(f"mind.beta={mind_config.beta}: must be in (0, 1]")
    if mind_config.capability not in capability.CAPABILITIES:
      raise ValueError(f"mind.capability={mind_config.capability!r}: expected one of "
                       f"{capability.CAPABILITIES}")
    if not 0.0 <= mind_config.progress_fast_mu < mind_config.progress_slow_mu < 1.0:
      raise ValueError(f"mind.progress_fast_mu={mind_config.progress_fast_mu} and "
                       f"progress_slow_mu={mind_config.progress_slow_mu}: expected "
                       "0 <= fast < slow < 1")
    if not 0.0 <= mind_config.alpha_floor <= 1.0:
      raise ValueError(f"mind.alpha_floor={mind_config.alpha_floor}: must be in [0, 1]")
    single_index = 0
    if mind_config.weighting == "single":
      if mind_config.single_perspective not in perspective_names:
        raise ValueError(f"mind.single_perspective={mind_config.single_perspective!r} is not "
                         f"among the records' perspectives {perspective_names}")
      single_index = perspective_names.index(mind_config.single_perspective)
    return cls(weighting=mind_config.weighting, single_index=single_index,
               uniform_fusion=mind_config.fusion == "uniform", beta=mind_config.beta,
               tau=mind_config.tau, tau_s=mind_config.tau_s,
               consistency_weight=mind_config.consistency_weight,
               max_answer_tokens=mind_config.max_answer_tokens,
               inertia_mode=mind_config.inertia_mode, inertia_mu=mind_config.inertia_mu,
               alpha_floor=mind_config.alpha_floor, capability=mind_config.capability,
               progress_fast_mu=mind_config.progress_fast_mu,
               progress_slow_mu=mind_config.progress_slow_mu,
               accuracy_loss_weight=mind_config.accuracy_loss_weight)

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
                   max_answer_tokens: int, frozen=None, chunk: int = 0):
  """CE [B, m] of `slots` (m of them) read up to `width` tokens, and (answer log-probs
  [B, m, A, V], valid [B, m, A]) when max_answer_tokens > 0. The logits are made `chunk`
  positions at a time (losses.chunked_token_nll), the answer positions' on their own."""
  def cut(key):
    return batch[key][:, list(slots), :width]
  ids = cut("input_ids")
  b, m, t = ids.shape
  nll, hidden, logits_fn = losses.model_token_nll(
      model, lora.variables(params, frozen), losses.next_token_targets(ids.reshape(b * m, t)),
      chunk, ids.reshape(b * m, t), attention_mask=cut("attention_mask").reshape(b * m, t))
  nll = nll.reshape(b, m, t)[:, :, :-1]
  ce = losses.sequence_token_mean(nll, cut("loss_mask")[:, :, 1:].astype(jnp.float32))
  if not max_answer_tokens:
    return ce, None
  positions, valid = losses.answer_positions(cut("answer_mask")[:, :, 1:], max_answer_tokens)
  hidden = hidden.reshape(b, m, t, -1)
  picked = jnp.take_along_axis(hidden, positions[..., None], axis=2)  # [B, m, A, E]
  return ce, (jax.nn.log_softmax(logits_fn(picked).astype(jnp.float32), axis=-1), valid)


def student_forward(params, model: Decoder, batch, groups, max_answer_tokens: int = 0,
                    frozen=None, chunk: int = 0):
  """The student over the slots of `groups` (see slot_groups) -> CE [B, K] (0 for slots
  not read) and, with max_answer_tokens, (answer log-probs [B, K, A, V], valid [B, K, A]).
  With LoRA, `params` are the adapters and `frozen` the base (mind_jax/models/lora.py)."""
  b, k = batch["present"].shape
  ce = jnp.zeros((b, k), jnp.float32)
  answers = None
  for slots, width in groups:
    group_ce, group_answers = _group_forward(params, model, batch, slots, width,
                                             max_answer_tokens, frozen, chunk)
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


def packed_student_forward(params, model: Decoder, packed, num_questions: int,
                           num_perspectives: int, max_answer_tokens: int = 0, frozen=None,
                           chunk: int = 0):
  """The student over one micro-batch's packed rows (mind_jax/data/packing.py) -> CE
  [Bm, K], scored tokens per slot [Bm, K] and, with max_answer_tokens, (answer log-probs
  [Bm, K, A, V], valid [Bm, K, A]): what student_forward gives in the padded layout."""
  nll, hidden, logits_fn = losses.model_token_nll(
      model, lora.variables(params, frozen), packed["packed_targets"], chunk,
      packed["packed_ids"], positions=packed["packed_positions"],
      segment_ids=packed["packed_segments"])  # [R, L]
  weights = packed["packed_weights"].astype(jnp.float32)
  # Per-slot sums of the token losses; padding goes to an extra bucket, dropped.
  slots, n = packed["packed_slots"].reshape(-1), num_questions * num_perspectives
  sums = jax.ops.segment_sum((nll * weights).reshape(-1), slots, num_segments=n + 1)[:n]
  counts = jax.ops.segment_sum(weights.reshape(-1), slots, num_segments=n + 1)[:n]
  shape = (num_questions, num_perspectives)
  ce = (sums / jnp.maximum(counts, 1.0)).reshape(shape)
  if not max_answer_tokens:
    return ce, counts.reshape(shape), None
  picked = hidden[packed["answer_rows"], packed["answer_cols"]][:, :, :max_answer_tokens]
  return ce, counts.reshape(shape), (
      jax.nn.log_softmax(logits_fn(picked).astype(jnp.float32), axis=-1),
      packed["answer_valid"][:, :, :max_answer_tokens])


def question_terms(params, model: Decoder, batch, scores, settings: MindSettings, frozen=None):
  """One (micro-)batch's objective sum_q [L_SFT + lambda L_cons] over the questions that
  have a weighted rationale, and its per-question terms (each [b] or [b, K]), padded or
  packed (a packed batch here is one micro-batch's rows)."""
  present = batch["present"]
  # Single-path has no pair to compare: no consistency term, no answer distributions.
  with_cons = settings.consistency_weight > 0 and settings.weighting != "single"
  answer_tokens = settings.max_answer_tokens if with_cons else 0
  if "packed_ids" in batch:
    ce, scored, answers = packed_student_forward(params, model, batch, *present.shape,
                                                 answer_tokens, frozen,
                                                 settings.loss_chunk_tokens)
  else:
    groups = slot_groups(settings, present.shape[1], batch["input_ids"].shape[2])
    ce, answers = student_forward(params, model, batch, groups, answer_tokens, frozen,
                                  settings.loss_chunk_tokens)
    scored = jnp.sum(batch["loss_mask"][:, :, 1:], axis=-1).astype(jnp.float32)
  alpha, selected = fusion_alpha(settings, scores, ce, present)
  l_sft = jnp.sum(alpha * ce, axis=-1)
  l_cons = losses.pairwise_consistency(*answers, alpha) if with_cons else jnp.zeros_like(l_sft)
  # Questions with no weighted rationale (e.g. single-path where that slot is
  # absent) are left out of the mean rather than diluting it.
  counted = (jnp.sum(alpha, axis=-1) > 0).astype(jnp.float32)
  objective = jnp.sum((l_sft + settings.consistency_weight * l_cons) * counted)
  # What the student read: scored tokens of the slots with weight > 0.
  terms = dict(ce=jax.lax.stop_gradient(ce), alpha=alpha, selected=selected, l_sft=l_sft,
               l_cons=l_cons, counted=counted,
               trained_tokens=jnp.sum(jnp.where(alpha > 0, scored, 0.0), axis=-1))
  return objective, terms


def _question_means(terms) -> dict:
  """Batch-level aux from per-question terms: means over the counted questions."""
  counted = terms["counted"]
  denom = jnp.maximum(jnp.sum(counted), 1.0)
  return dict(ce=terms["ce"], alpha=terms["alpha"], selected=terms["selected"],
              l_sft=jnp.sum(terms["l_sft"] * counted) / denom,
              l_cons=jnp.sum(terms["l_cons"] * counted) / denom,
              alpha_entropy=jnp.sum(losses.entropy(terms["alpha"]) * counted) / denom,
              trained_tokens=jnp.sum(terms["trained_tokens"]))


def student_objective(params, model: Decoder, batch, scores, settings: MindSettings,
                      frozen=None):
  """(L_total, aux) with L_total = mean over questions of L_SFT + lambda L_cons."""
  objective, terms = question_terms(params, model, batch, scores, settings, frozen)
  return objective / jnp.maximum(jnp.sum(terms["counted"]), 1.0), _question_means(terms)


# ------------------------------------------------------------------ micro-batches


def split_micro_batches(batch: dict, scores, micro_batches: int):
  """(batch, scores) -> the same with a leading micro-batch axis [M, ...]: question m, m +
  M, ... form micro-batch m (each device keeps an equal share of every one); packed
  arrays come split already."""
  def split(x):
    return jnp.swapaxes(x.reshape((x.shape[0] // micro_batches, micro_batches) + x.shape[1:]),
                        0, 1)
  micro = {key: value if key in packing.MICRO_KEYS else split(value)
           for key, value in batch.items()}
  return micro, split(scores)


def merge_micro_batches(tree):
  """The inverse of split_micro_batches' question split: [M, Bm, ...] -> [B, ...]."""
  def merge(x):
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])
  return jax.tree.map(merge, tree)


def student_loss_and_grads(params, model: Decoder, batch, scores, settings: MindSettings,
                           micro_batches: int, with_grads: bool, frozen=None):
  """(L_total, aux, grads or None) over the whole batch, in `micro_batches` passes of
  its questions (optim.grad_accum_steps): the gradient of the summed objective is
  accumulated, then everything is divided by the batch's count of questions. Gradients
  are taken with respect to `params` only (with LoRA, not the `frozen` base)."""
  def terms(p, micro, micro_scores):
    return question_terms(p, model, micro, micro_scores, settings, frozen)

  grad_fn = jax.value_and_grad(terms, has_aux=True)
  if micro_batches == 1:
    one = {k: v[0] if k in packing.MICRO_KEYS else v for k, v in batch.items()}
    if with_grads:
      (objective, per_question), grads = grad_fn(params, one, scores)
    else:
      (objective, per_question), grads = terms(params, one, scores), None
  else:
    def body(carry, xs):
      objective, grads = carry
      micro, micro_scores = xs
      if with_grads:
        (part, per_question), part_grads = grad_fn(params, micro, micro_scores)
        grads = jax.tree.map(jnp.add, grads, part_grads)
      else:
        part, per_question = terms(params, micro, micro_scores)
      return (objective + part, grads), per_question

    zeros = jax.tree.map(jnp.zeros_like, params) if with_grads else None
    (objective, grads), stacked = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), zeros),
        split_micro_batches(batch, scores, micro_batches))
    per_question = merge_micro_batches(stacked)
  denom = jnp.maximum(jnp.sum(per_question["counted"]), 1.0)
  if grads is not None:
    grads = jax.tree.map(lambda g: g / denom, grads)
  return objective / denom, _question_means(per_question), grads


# ------------------------------------------------------------------ TA side


def ta_update(state: TrainState, ta_model: TeachingAssistant, ta_optimizer, batch, scores,
              ta_vjp, ce, settings: MindSettings):
  """L_meta against the inertia-filtered CE (or, with mind.capability="progress" or
  "accuracy", against learning progress or the probe's accuracy: capability.py); returns
  (ta_params, ta_opt_state, L_meta, L_bar)."""
  present = batch["present"]
  inertia_state, l_bar = inertia.observe(
      inertia.inertia_state_of(state.ta_opt_state), settings.inertia_mode, settings.inertia_mu,
      batch["example_index"], ce, present)
  target, links = l_bar, dict(inertia_state=inertia_state)
  if settings.capability == "progress":
    links["progress_state"], target = capability.observe(
        capability.progress_state_of(state.ta_opt_state), ce, present,
        settings.progress_fast_mu, settings.progress_slow_mu)
  elif settings.capability == "accuracy":
    target = capability.accuracy_target(capability.accuracy_state_of(state.ta_opt_state),
                                        l_bar, settings.accuracy_loss_weight)

  def meta_loss(s):
    return jnp.mean(losses.listnet_kl(s, target, present, settings.tau))

  l_meta, d_scores = jax.value_and_grad(meta_loss)(scores)
  (ta_grads,) = ta_vjp(d_scores)
  updates, ta_opt_state = ta_optimizer.update(ta_grads, state.ta_opt_state, state.ta_params,
                                              **links)
  return optax.apply_updates(state.ta_params, updates), ta_opt_state, l_meta, l_bar


# ------------------------------------------------------------------ the step


def _masked_mean_over_batch(values, mask):
  """Per-perspective mean [K] over the questions where `mask` is set."""
  return jnp.sum(values * mask, axis=0) / jnp.maximum(jnp.sum(mask, axis=0), 1.0)


def mind_step(state: TrainState, batch: dict, *, model: Decoder, ta_model: TeachingAssistant,
              optimizer, ta_optimizer, settings: MindSettings, phase: str,
              micro_batches: int = 1) -> tuple[TrainState, dict]:
  present = batch["present"]
  scores, ta_vjp = jnp.zeros_like(present), None
  if settings.uses_ta:
    scores, ta_vjp = jax.vjp(
        lambda p: ta_model.apply({"params": p}, batch["question_embedding"],
                                 batch["rationale_embedding"], present), state.ta_params)

  # TA warm-up ("warmup"): the student is frozen, forward only.
  loss, aux, grads = student_loss_and_grads(state.params, model, batch, scores, settings,
                                            micro_batches, with_grads=phase == "joint",
                                            frozen=state.frozen)
  params, opt_state = state.params, state.opt_state
  if grads is not None:
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

  metrics = dict(loss=loss, l_sft=aux["l_sft"], l_cons=aux["l_cons"],
                 alpha_entropy=aux["alpha_entropy"], trained_tokens=aux["trained_tokens"],
                 alpha=_masked_mean_over_batch(aux["alpha"], present),
                 selection_rate=_masked_mean_over_batch(aux["selected"], present),
                 ce=_masked_mean_over_batch(aux["ce"], present))
  if "packed_ids" in batch:
    metrics.update(packing_overflow=jnp.sum(batch["packing_dropped"]),
                   packed_fill=jnp.mean((batch["packed_segments"] > 0).astype(jnp.float32)))
  ta_params, ta_opt_state = state.ta_params, state.ta_opt_state
  if settings.uses_ta:
    ta_params, ta_opt_state, l_meta, l_bar = ta_update(
        state, ta_model, ta_optimizer, batch, scores, ta_vjp, aux["ce"], settings)
    metrics.update(l_meta=l_meta, score=_masked_mean_over_batch(scores, present),
                   l_bar=_masked_mean_over_batch(l_bar, present))
  rng, _ = jax.random.split(state.rng)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            ta_params=ta_params, ta_opt_state=ta_opt_state, rng=rng)
  # The TA's meta-loss counts too: a NaN there would poison the scores of the next step.
  checked = loss + metrics.get("l_meta", 0.0)
  new_state, metrics["nonfinite"] = nonfinite.guard(state, new_state, checked)
  return new_state, metrics


def batch_shardings(shapes: dict[str, tuple[int, ...]], mesh, rules) -> dict:
  """Shardings of a MIND batch of these array shapes: the questions (or the packed rows)
  over the mesh's batch axes."""
  def one(key, shape):
    if key in packing.MICRO_KEYS:
      return sharding.micro_batch_sharding(mesh, rules, shape)
    return sharding.batch_sharding(mesh, rules, shape)
  return {key: one(key, shape) for key, shape in shapes.items()}


def jit_mind_step(model_config: DecoderConfig, ta_config: TAConfig, optimizer, ta_optimizer,
                  settings: MindSettings, phase: str, state_shardings,
                  batch_shardings: dict, micro_batches: int = 1,
                  lora_config: lora.LoraConfig | None = None):
  """The jitted step for one phase, with explicit in/out shardings and a donated state."""
  if phase not in PHASES:
    raise ValueError(f"phase={phase!r}: expected one of {PHASES}")
  model = lora.make_model(model_config, lora_config,
                          sharding.activation_sharding(batch_shardings["present"]))
  step = functools.partial(mind_step, model=model,
                           ta_model=TeachingAssistant(ta_config), optimizer=optimizer,
                           ta_optimizer=ta_optimizer, settings=settings,
                           phase=phase, micro_batches=micro_batches)
  mesh = batch_shardings["present"].mesh
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)
