"""The train state pytree and the optimizer that updates it.

One pytree holds everything a step reads and writes (MIND adds the TA's
params and optimizer state to it later). Its shardings come from the params'
logical axes: optimizer moments mirror their param's sharding.

With LoRA (config.lora.rank > 0, mind_jax/models/lora.py) `params` holds the
adapters only, so the optimizer state exists for them alone, and `frozen` holds
the base weights, which no step changes: `init_state` leaves it None and
`with_frozen_base` fills it from the base checkpoint (train.init_from).
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from mind_jax import capability, inertia, sharding
from mind_jax import ta as ta_lib
from mind_jax.models import decoder, lora


@flax.struct.dataclass
class TrainState:
  step: jax.Array      # int32 scalar: optimizer steps taken
  params: Any          # the student's trainable params (fp32 master weights): all of
                       # them, or with LoRA the adapters only
  opt_state: Any       # optax state of the student's optimizer
  rng: jax.Array       # uint32[2] raw PRNG key, split every step
  ta_params: Any = None     # MIND: the Teaching Assistant's params (None for SFT)
  ta_opt_state: Any = None  # MIND: its optimizer state, the inertia filter's EMA in it
  frozen: Any = None   # LoRA: the frozen base params, in lora.base_dtype (never saved:
                       # rebuilt from train.init_from); apply lora.variables(params, frozen)


def learning_rate_schedule(optim_config, total_steps: int) -> optax.Schedule:
  decay_steps = optim_config.decay_steps if optim_config.decay_steps > 0 else total_steps
  warmup = min(optim_config.warmup_steps, max(decay_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim_config.learning_rate, warmup_steps=warmup,
      decay_steps=max(decay_steps, warmup + 1),
      end_value=optim_config.learning_rate * optim_config.end_lr_ratio)


NO_DECAY = ("scale", "bias")  # the param names that weight decay leaves alone


def make_optimizer(optim_config, total_steps: int) -> optax.GradientTransformation:
  """AdamW with warm-up and cosine decay, global-norm clipping; weight decay on the
  matrices (kernels, embeddings, LoRA adapters), not on norm scales and biases. Decided by
  name, not by rank: scanned layers stack a norm's [hidden] scale into [layers, hidden]."""
  def decay_mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) not in NO_DECAY, params)
  adamw = optax.adamw(learning_rate_schedule(optim_config, total_steps), b1=optim_config.b1,
                      b2=optim_config.b2, eps=optim_config.eps,
                      weight_decay=optim_config.weight_decay, mask=decay_mask)
  if optim_config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(optim_config.grad_clip), adamw)
  return adamw


def _lora_on(lora_config: lora.LoraConfig | None) -> bool:
  return lora_config is not None and lora_config.enabled


def _init_state(model_config: decoder.DecoderConfig, optimizer, seed: int,
                lora_config: lora.LoraConfig | None = None) -> TrainState:
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
  if _lora_on(lora_config):  # the frozen base comes later: with_frozen_base
    params = lora.init_adapters(model_config, lora_config, init_rng)
  else:
    params = decoder.init_params(model_config, init_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), rng=state_rng)


def abstract_state_and_shardings(model_config: decoder.DecoderConfig, optimizer, mesh: Mesh,
                                 rules, lora_config: lora.LoraConfig | None = None
                                 ) -> tuple[TrainState, TrainState]:
  """ShapeDtypeStructs of the state and its shardings, without allocating anything.
  With LoRA the adapters and the frozen base follow their base weights' logical axes."""
  abstract = jax.eval_shape(lambda: _init_state(model_config, optimizer, 0, lora_config))
  frozen_shardings = None
  if _lora_on(lora_config):
    _, frozen, param_axes, frozen_axes = lora.abstract(model_config, lora_config)
    param_shardings = lora.tree_shardings(abstract.params, param_axes, mesh, rules)
    frozen_shardings = lora.tree_shardings(frozen, frozen_axes, mesh, rules)
    abstract = abstract.replace(frozen=frozen)
  else:
    _, param_axes = decoder.abstract_params(model_config)
    param_shardings = sharding.tree_shardings(abstract.params, param_axes, mesh, rules)
  # Optimizer moments have the params' structure: give them the params' shardings;
  # everything else in the optimizer state (counts) is replicated.
  opt_shardings = optax.tree_map_params(
      optimizer, lambda _, s: s, abstract.opt_state, param_shardings,
      transform_non_params=lambda _: sharding.replicated(mesh))
  shardings = TrainState(step=sharding.replicated(mesh), params=param_shardings,
                         opt_state=opt_shardings, rng=sharding.replicated(mesh),
                         frozen=frozen_shardings)
  return abstract, shardings


def init_state(model_config: decoder.DecoderConfig, optimizer, seed: int,
               shardings: TrainState, lora_config: lora.LoraConfig | None = None) -> TrainState:
  """A fresh state created directly in its shardings (never on one device first); with
  LoRA, fresh adapters and `frozen` None (see with_frozen_base)."""
  return jax.jit(lambda: _init_state(model_config, optimizer, seed, lora_config),
                 out_shardings=shardings.replace(frozen=None))()


def with_frozen_base(state: TrainState, base_params: Any, model_config: decoder.DecoderConfig,
                     lora_config: lora.LoraConfig, shardings: TrainState) -> TrainState:
  """LoRA: `state` with its frozen base made from the plain base params (as import_hf
  saves them): cast to lora.base_dtype, NF4-quantized for nf4, in its shardings."""
  freeze = jax.jit(lambda p: lora.freeze_base(p, model_config, lora_config),
                   out_shardings=shardings.frozen)
  return state.replace(frozen=freeze(base_params))


# ------------------------------------------------------------------ MIND


def make_ta_optimizer(config, num_examples: int, num_perspectives: int):
  """The inertia filter and MultiSteps(G_ta) over Adam at lr_ta = rho * lr_student."""
  m, o = config.mind, config.optim
  # mind.capability "progress" and "accuracy" keep their EMAs in a link of their own;
  # "loss" adds nothing.
  links = dict(progress=capability.progress_filter, accuracy=capability.accuracy_filter)
  extra = (links[m.capability](num_perspectives),) if m.capability in links else ()
  return inertia.ta_optimizer(
      m.inertia_mode, num_examples, num_perspectives,
      learning_rate=m.ta_lr_ratio * o.learning_rate, every_k=m.ta_grad_accum, b1=o.b1, b2=o.b2,
      eps=o.eps, extra_links=extra)


def _init_mind_state(model_config, optimizer, ta_config, ta_optimizer, embed_dim: int,
                     num_perspectives: int, seed: int, with_ta: bool,
                     lora_config: lora.LoraConfig | None = None) -> TrainState:
  state = _init_state(model_config, optimizer, seed, lora_config)
  if not with_ta:
    return state
  rng, ta_rng = jax.random.split(state.rng)
  ta_params = ta_lib.init_ta_params(ta_config, embed_dim, num_perspectives, ta_rng)
  return state.replace(rng=rng, ta_params=ta_params, ta_opt_state=ta_optimizer.init(ta_params))


def abstract_mind_state_and_shardings(model_config, optimizer, ta_config, ta_optimizer,
                                      embed_dim: int, num_perspectives: int, mesh: Mesh, rules,
                                      with_ta: bool, lora_config: lora.LoraConfig | None = None
                                      ) -> tuple[TrainState, TrainState]:
  abstract = jax.eval_shape(lambda: _init_mind_state(
      model_config, optimizer, ta_config, ta_optimizer, embed_dim, num_perspectives, 0, with_ta,
      lora_config))
  student, student_shardings = abstract_state_and_shardings(model_config, optimizer, mesh, rules,
                                                            lora_config)
  abstract = abstract.replace(frozen=student.frozen)
  if not with_ta:
    return abstract, student_shardings
  shardings = student_shardings.replace(
      ta_params=jax.tree.map(lambda _: sharding.replicated(mesh), abstract.ta_params),
      ta_opt_state=sharding.tree_shardings(abstract.ta_opt_state,
                                           inertia.logical_axes(abstract.ta_opt_state),
                                           mesh, rules))
  return abstract, shardings


def init_mind_state(model_config, optimizer, ta_config, ta_optimizer, embed_dim: int,
                    num_perspectives: int, seed: int, shardings: TrainState,
                    with_ta: bool, lora_config: lora.LoraConfig | None = None) -> TrainState:
  """As init_state: with LoRA, `frozen` is None until with_frozen_base."""
  return jax.jit(lambda: _init_mind_state(model_config, optimizer, ta_config, ta_optimizer,
                                          embed_dim, num_perspectives, seed, with_ta,
                                          lora_config),
                 out_shardings=shardings.replace(frozen=None))()
