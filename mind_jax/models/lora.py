"""LoRA and QLoRA on the decoder, through qwix; the merge for export; PEFT names.

qwix's LoraProvider intercepts the `jax.lax.dot_general` of every targeted `Linear`
(q_proj ... down_proj) and adds `(alpha / r) * x @ A @ B`, creating the adapters next
to the kernel: `kernel_lora_a` [prod(input dims), r] and `kernel_lora_b`
[r, prod(output dims)], whose logical axes are the kernel's input and output axes
(the rank axis unsharded), so they follow their base weight on the mesh. With
base_dtype "nf4" the provider also quantizes the targeted kernels to 4-bit NormalFloat
(qwix `WithAux(QArray)`) with one scale per `nf4_block_size` input elements; the
frozen tree keeps their codes packed two to a uint8 byte (see `_pack`).

The params split in two trees:
  trainable  the adapters only, master weights in model.param_dtype (fp32 by default)
             whatever base_dtype and model.dtype are (cast to model.dtype to compute,
             LoraModel): what the optimizer updates and checkpoints hold
  frozen     every other param, stored as lora.base_dtype says (freeze_base): rebuilt
             from the base workdir (train.init_from) at every start, never saved
and `variables(trainable, frozen)` joins them for `model.apply`. Without LoRA
(rank 0) the trainable tree is all params and `frozen` is None.

How a step uses it (mind_jax/step.py):
    model = lora.make_model(model_config, lora_config)   # Decoder, or LoraModel (qwix)
    logits = model.apply(lora.variables(state.params, state.frozen), input_ids, ...)
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import traverse_util

from mind_jax import sharding
from mind_jax.config import check_fields
from mind_jax.models import decoder, hf

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE_DTYPES = ("float32", "bfloat16", "nf4")
# qwix names a kernel's adapters after it: kernel -> kernel_lora_a, kernel_lora_b.
A_SUFFIX, B_SUFFIX = "_lora_a", "_lora_b"
# PEFT's key prefix for a causal LM (PeftModelForCausalLM.base_model.model).
PEFT_PREFIX = "base_model.model."
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
# What a LoRA checkpoint's meta["lora"] holds besides the config (train._lora_meta): the
# base workdir and step the adapters apply to.
META_KEYS = ("base", "base_step")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Built from `config.lora`. These defaults are config.lora's; what each field means is
  documented in mind_jax/config.py."""
  rank: int = 0
  alpha: float = 16.0
  target_modules: tuple[str, ...] = TARGET_MODULES
  base_dtype: str = "bfloat16"
  nf4_block_size: int = 64

  @classmethod
  def from_config(cls, lora_config) -> "LoraConfig":
    """From config.lora or a checkpoint's meta["lora"], whose META_KEYS are not config (a
    missing field takes its default; an unknown one fails)."""
    values = {k: v for k, v in dict(lora_config).items() if k not in META_KEYS}
    check_fields("lora", values, {f.name for f in dataclasses.fields(cls)})
    values["target_modules"] = tuple(values.get("target_modules", TARGET_MODULES))
    return cls(**values).validated()

  def to_dict(self) -> dict[str, Any]:
    return dict(dataclasses.asdict(self), target_modules=list(self.target_modules))

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def validated(self) -> "LoraConfig":
    if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
      raise ValueError(f"lora.rank={self.rank!r}: expected an integer >= 0 (0: no LoRA)")
    if not self.enabled:
      return self
    if not self.alpha > 0:
      raise ValueError(f"lora.alpha={self.alpha!r}: expected > 0")
    unknown = sorted(set(self.target_modules) - set(TARGET_MODULES))
    if unknown or not self.target_modules:
      raise ValueError(f"lora.target_modules={self.target_modules!r}: expected a non-empty "
                       f"subset of {TARGET_MODULES}")
    if self.base_dtype not in BASE_DTYPES:
      raise ValueError(f"lora.base_dtype={self.base_dtype!r}: expected one of {BASE_DTYPES}")
    if self.nf4_block_size < 1:
      raise ValueError(f"lora.nf4_block_size={self.nf4_block_size}: expected >= 1")
    return self

  def check_model(self, cfg: decoder.DecoderConfig) -> None:
    """Shape checks against the model, each naming the field to change."""
    if not self.enabled:
      return
    # A rank as large as a kernel dim is no low-rank update, and qwix, which finds a
    # 4-bit kernel among the module's params by shape, could take an adapter for it.
    smallest = min(cfg.hidden_size, cfg.intermediate_size)
    if self.rank >= smallest:
      raise ValueError(f"lora.rank={self.rank}: expected < {smallest} (model.hidden_size="
                       f"{cfg.hidden_size}, model.intermediate_size={cfg.intermediate_size})")
    if self.base_dtype != "nf4":
      return
    # Two NF4 codes per byte along each kernel's last axis (_pack).
    for field, size in (("model.head_dim", cfg.head_dim), ("model.hidden_size", cfg.hidden_size),
                        ("model.intermediate_size", cfg.intermediate_size)):
      if size % 2:
        raise ValueError(f"lora.base_dtype='nf4' packs two 4-bit codes per byte: {field}="
                         f"{size} must be even")
    # The NF4 blocks run along each kernel's last input axis.
    block_axes = {"q_proj": ("model.hidden_size", cfg.hidden_size),
                  "k_proj": ("model.hidden_size", cfg.hidden_size),
                  "v_proj": ("model.hidden_size", cfg.hidden_size),
                  "gate_proj": ("model.hidden_size", cfg.hidden_size),
                  "up_proj": ("model.hidden_size", cfg.hidden_size),
                  "o_proj": ("model.head_dim", cfg.head_dim),
                  "down_proj": ("model.intermediate_size", cfg.intermediate_size)}
    for module in self.target_modules:
      field, size = block_axes[module]
      if size % self.nf4_block_size:
        raise ValueError(f"lora.nf4_block_size={self.nf4_block_size} does not divide "
                         f"{field}={size} ({module}'s input axis)")


@dataclasses.dataclass(frozen=True)
class LoraModel:
  """The qwix-wrapped Decoder, applied with its adapters cast to the compute dtype
  (model.dtype): they are kept, updated and checkpointed in model.param_dtype (master
  weights), but computed with like every other weight (Linear casts its kernel), so that
  under bf16 compute the targeted projections still give bf16 activations (qwix adds
  `x @ A @ B` in the adapters' own dtype: fp32 adapters would turn every projection's
  output, and all that follows it, to fp32). The cast is inside `apply`, so gradients
  reach the adapters in their own dtype."""
  module: nn.Module
  dtype: Any

  @property
  def cfg(self) -> decoder.DecoderConfig:
    return self.module.cfg

  def init(self, *args, **kwargs):
    return self.module.init(*args, **kwargs)

  def apply(self, variables: Mapping, *args, **kwargs):
    params = _cast_adapters(variables["params"], self.dtype)
    return self.module.apply(dict(variables, params=params), *args, **kwargs)


def _cast_adapters(params: Mapping, dtype: Any) -> dict:
  return {key: (_cast_adapters(value, dtype) if isinstance(value, Mapping)
                else value.astype(dtype) if is_adapter((key,)) else value)
          for key, value in params.items()}


def make_model(cfg: decoder.DecoderConfig, lora_config: LoraConfig | None = None,
               activation_sharding: Any = None) -> nn.Module | LoraModel:
  """What a step applies: the Decoder, or with LoRA on the qwix-wrapped Decoder (LoraModel:
  `init` and `apply` as a module's). activation_sharding: see decoder.Decoder."""
  if lora_config is None or not lora_config.enabled:
    return decoder.Decoder(cfg, activation_sharding)
  return LoraModel(_qwix_model(cfg, lora_config, activation_sharding), jnp.dtype(cfg.dtype))


def _qwix_model(cfg: decoder.DecoderConfig, lora_config: LoraConfig,
                activation_sharding: Any = None) -> nn.Module:
  model = decoder.Decoder(cfg, activation_sharding)
  lora_config.check_model(cfg)
  nf4 = lora_config.base_dtype == "nf4"
  targets = "|".join(re.escape(name) for name in lora_config.target_modules)
  provider = qwix.LoraProvider(
      # module paths look like layers/self_attn/q_proj (scanned) or layers_3/self_attn/q_proj
      module_path=rf".*/({targets})",
      rank=lora_config.rank, alpha=lora_config.alpha,
      weight_qtype="nf4" if nf4 else None,
      tile_size=lora_config.nf4_block_size if nf4 else None)
  return qwix.apply_lora_to_model(model, provider)


def variables(trainable: Any, frozen: Any = None) -> dict:
  """The variables `model.apply` takes: the adapters put into the frozen base (its NF4
  codes unpacked for qwix), or, without LoRA (frozen None), the trainable params alone."""
  if frozen is None:
    return {"params": trainable}
  frozen = jax.tree.map(lambda x: _unpack(x) if _is_quantized(x) else x, frozen,
                        is_leaf=_is_quantized)
  return {"params": _join(frozen, trainable)}


def _join(base: Mapping, extra: Mapping) -> dict:
  out = dict(base)
  for key, value in extra.items():
    out[key] = _join(base[key], value) if isinstance(value, Mapping) and key in base else value
  return out


def is_adapter(path: tuple[str, ...]) -> bool:
  return path[-1].endswith((A_SUFFIX, B_SUFFIX))


def split(params: Any) -> tuple[dict, dict]:
  """(adapters, everything else) of a LoRA model's params tree (or a tree like it)."""
  flat = traverse_util.flatten_dict(params)
  adapters = {p: v for p, v in flat.items() if is_adapter(p)}
  rest = {p: v for p, v in flat.items() if not is_adapter(p)}
  return traverse_util.unflatten_dict(adapters), traverse_util.unflatten_dict(rest)


def adapter_paths(kernel_path: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """The (A, B) param paths of a kernel's adapters."""
  *module, name = kernel_path
  return tuple(module) + (name + A_SUFFIX,), tuple(module) + (name + B_SUFFIX,)


def _is_quantized(x: Any) -> bool:
  """qwix's WithAux(QArray) (a 4-bit kernel); qwix does not export the WithAux class and
  recognises it by name itself (flax_util.find_param)."""
  return isinstance(x, qwix.QArray) or type(x).__name__ == "WithAux"


# NF4 codes, two per byte. qwix keeps each code in a uint4 array, but the CPU runtime of
# JAX 0.10 gives a compiled step's uint4 outputs another layout than its inputs expect,
# so the second call of a compiled step (train.py) refuses them; whole bytes also pin the
# storage to 4 bits a code on every backend.

def _pack(quantized: Any) -> Any:
  """WithAux(QArray) with uint4 codes [..., n] -> the same with uint8 codes [..., n / 2]."""
  codes = quantized.array.qvalue.astype(jnp.uint8)
  packed = (codes[..., 0::2] << 4) | codes[..., 1::2]
  return quantized.replace(array=quantized.array.replace(qvalue=packed))


def _unpack(packed: Any) -> Any:
  """The inverse of _pack, inside the step: qwix sees the uint4 codes it made."""
  q = packed.array.qvalue
  codes = jnp.stack([q >> 4, q & 15], axis=-1).reshape(q.shape[:-1] + (2 * q.shape[-1],))
  return packed.replace(array=packed.array.replace(qvalue=codes.astype(jnp.uint4)))


def dequantized(frozen_leaf: Any) -> jax.Array:
  """A frozen param as the model computes with it: NF4 codes times their scales, or the
  stored array itself."""
  if _is_quantized(frozen_leaf):
    return qwix.dequantize(_unpack(frozen_leaf).array)
  return frozen_leaf


def _storage_dtype(lora_config: LoraConfig) -> jnp.dtype:
  """Frozen params that are not 4-bit kernels: fp32, or bf16 for bfloat16 and nf4."""
  return jnp.dtype(jnp.float32 if lora_config.base_dtype == "float32" else jnp.bfloat16)


def _init_model(cfg: decoder.DecoderConfig, lora_config: LoraConfig) -> nn.Module:
  """The qwix-wrapped Decoder that creates the params, computing in model.param_dtype.

  qwix gives each adapter the dtype of the weight it finds at init: the kernel param of a
  plain base (model.param_dtype), but under nf4 the scales of the kernel it quantizes
  there, which is the kernel as Linear passes it to dot_general, cast to the compute
  dtype: bf16 adapters (and bf16 scales) under bf16 compute. The params do not depend on
  the compute dtype, so the init computes in the param dtype and the adapters (and the
  abstract NF4 scales, as freeze_base makes them from the base in model.param_dtype)
  follow model.param_dtype whatever lora.base_dtype and model.dtype are."""
  return _qwix_model(dataclasses.replace(cfg, dtype=cfg.param_dtype), lora_config)


@functools.lru_cache(maxsize=8)  # the export asks once per layer; callers never mutate it
def _boxed_params(cfg: decoder.DecoderConfig, lora_config: LoraConfig) -> Any:
  """The LoRA model's params, abstract, with their logical-axis boxes."""
  dummy = jnp.zeros((1, 1), jnp.int32)
  model = _init_model(cfg, lora_config)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy)["params"])


def abstract(cfg: decoder.DecoderConfig, lora_config: LoraConfig) -> tuple[Any, Any, Any, Any]:
  """(adapter shapes, frozen shapes, adapter logical axes, frozen logical axes), as
  ShapeDtypeStruct trees, without allocating anything. Frozen shapes carry the stored
  dtypes (4-bit kernels as qwix WithAux)."""
  boxed = _boxed_params(cfg, lora_config)
  adapters, base = split(nn.unbox(boxed))
  adapter_axes, base_axes = split(sharding.params_logical_axes(boxed))
  dtype = _storage_dtype(lora_config)
  frozen = jax.tree.map(
      lambda x: jax.eval_shape(_pack, x) if _is_quantized(x) else jax.ShapeDtypeStruct(
          x.shape, dtype), base, is_leaf=_is_quantized)
  return adapters, frozen, adapter_axes, base_axes


def tree_shardings(shapes: Any, axes: Any, mesh, rules) -> Any:
  """NamedShardings of a (frozen or adapter) tree from its logical axes; unlike
  sharding.tree_shardings it keeps the empty slots (None) of qwix's QArray as they are."""
  def one(leaf, names):
    if not names or not leaf.shape:
      return sharding.replicated(mesh)
    return sharding.logical_sharding(names, leaf.shape, mesh, rules)
  return jax.tree.map(one, shapes, axes)


def init_adapters(cfg: decoder.DecoderConfig, lora_config: LoraConfig, rng: jax.Array) -> dict:
  """Fresh adapters: A random (qwix's he_uniform), B zero, so the model starts as its base.
  Under jit, the base params the init also computes are dropped unused."""
  dummy = jnp.zeros((1, 1), jnp.int32)
  params = nn.unbox(_init_model(cfg, lora_config).init(rng, dummy)["params"])
  return split(params)[0]


def freeze_base(base: Any, cfg: decoder.DecoderConfig, lora_config: LoraConfig) -> Any:
  """Plain base params (as import_hf saves them; a subtree works too) -> the frozen tree:
  targeted kernels quantized to NF4 under base_dtype nf4, everything else cast to the
  stored dtype."""
  if lora_config.base_dtype == "nf4":
    base = _quantized(base, cfg, lora_config)
  dtype = _storage_dtype(lora_config)
  return jax.tree.map(lambda x: _pack(x) if _is_quantized(x) else x.astype(dtype), base,
                      is_leaf=_is_quantized)


def _quantized(base: Any, cfg: decoder.DecoderConfig, lora_config: LoraConfig) -> Any:
  """The targeted kernels of `base` quantized to NF4. qwix.quantize_params reads how each
  kernel is quantized from the model's abstract params; for scanned layers that is said of
  one layer's kernel (its tiles count from the layer's own axes), so the stacked layers are
  quantized one layer at a time under vmap, with an unrolled layer's abstract params."""
  if not cfg.scan_layers:
    return qwix.quantize_params(base, nn.unbox(_boxed_params(cfg, lora_config)))
  base = dict(base)
  layers = base.pop(decoder.LAYERS_AXIS, None)
  unrolled = nn.unbox(_boxed_params(dataclasses.replace(cfg, scan_layers=False), lora_config))
  out = qwix.quantize_params(base, unrolled) if base else {}
  if layers is not None:
    one_layer = unrolled["layers_0"]
    out[decoder.LAYERS_AXIS] = jax.vmap(lambda layer: qwix.quantize_params(layer, one_layer))(
        layers)
  return out


def merged_params(base: dict, adapters: dict, cfg: decoder.DecoderConfig,
                  lora_config: LoraConfig) -> dict:
  """Flat {path: array} of base params (all, or one layer's) -> the float32 params with
  which a plain Decoder computes what the trained LoRA model computes: each base array as
  the run stored it (bf16 rounding, NF4 quantization), plus (alpha / r) * A @ B on every
  kernel whose adapters are in the flat `adapters`."""
  # Training restores the base in the run's param dtype before freezing it: so here too
  # (NF4 scales take the dtype of what is quantized).
  base = {p: jnp.asarray(v, cfg.param_dtype) for p, v in base.items()}
  frozen = traverse_util.flatten_dict(
      freeze_base(traverse_util.unflatten_dict(base), cfg, lora_config))
  out = {}
  for path, value in frozen.items():
    stacked = cfg.scan_layers and path[0] == decoder.LAYERS_AXIS
    value = np.asarray((jax.vmap(dequantized) if stacked else dequantized)(value), np.float32)
    a_path, b_path = adapter_paths(path)
    if a_path in adapters:
      a, b = np.asarray(adapters[a_path], np.float32), np.asarray(adapters[b_path], np.float32)
      # Our kernels are [input dims..., output dims...] and A, B their flattened halves
      # (with scanned layers, all three carry the leading layer axis: a batched matmul).
      value = value + np.float32(lora_config.scale) * (a @ b).reshape(value.shape)
    out[path] = value
  return out


# ------------------------------------------------------------------ PEFT adapter files


def peft_tensors(adapters: dict, cfg: decoder.DecoderConfig) -> dict[str, np.ndarray]:
  """Flat adapters -> PEFT's adapter_model.safetensors tensors: for the HF module
  model.layers.3.self_attn.q_proj, base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
  [r, in] and ...lora_B.weight [out, r]. The HF weight's input and output dims flatten
  ours in the same (row-major) order, so A and B only transpose."""
  out = {}
  for m in hf.tensor_mappings(cfg):
    a_path, b_path = adapter_paths(m.path)
    if a_path not in adapters:
      continue
    module = PEFT_PREFIX + m.hf_name.removesuffix(".weight")
    a, b = np.asarray(adapters[a_path]), np.asarray(adapters[b_path])
    if m.layer is not None:  # scanned layers: this layer's slice of the stacked adapters
      a, b = a[m.layer], b[m.layer]
    out[module + ".lora_A.weight"] = np.ascontiguousarray(a.T)
    out[module + ".lora_B.weight"] = np.ascontiguousarray(b.T)
  layers = cfg.num_layers if cfg.scan_layers else 1
  if len(out) != 2 * layers * len([p for p in adapters if p[-1].endswith(A_SUFFIX)]):
    raise AssertionError("hf.tensor_mappings does not name every adapter's kernel")
  return out


def peft_config(lora_config: LoraConfig, base_model: str) -> dict:
  """adapter_config.json for `peft.PeftModel.from_pretrained(base, dir)`."""
  return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
          "r": lora_config.rank, "lora_alpha": lora_config.alpha,
          "target_modules": sorted(lora_config.target_modules), "lora_dropout": 0.0,
          "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
          "inference_mode": True}
