"""transformers <-> mind_jax: configs and the weight-name table, in one place.

Only LlamaForCausalLM and Qwen2ForCausalLM are supported; anything the Flax
`Decoder` cannot compute exactly (another architecture, sliding-window
attention, MLP biases, another RoPE scaling) fails with the field that asks
for it instead of importing into a model that silently computes something else.

Layout differences handled by the table:
  * HF `nn.Linear` stores [out, in]; our kernels are [in, out], with the head
    axis split out for attention ([hidden, heads, head_dim] and
    [heads, head_dim, hidden]).
  * Our vocabulary axis is padded to `padded_vocab_size` (zero rows on
    import, cut back to `vocab_size` on export).
  * With tied embeddings we have no `lm_head` param and HF writes no
    `lm_head.weight`; both sides use the embedding matrix.

A HF model directory is read here too: `SafetensorsReader` (one tensor at a time onto the
host, bfloat16 included), `config_json_path`, and `local_model_dir` (a remote directory's
files downloaded first: safetensors reads local files).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import os
import struct
import tempfile
from typing import Any, Callable, Iterator

import ml_dtypes
import numpy as np
from flax import traverse_util
from safetensors import safe_open

from mind_jax import paths

from mind_jax.models.decoder import DecoderConfig

# transformers' file names for safetensors weights: one file, or shards listed in an index.
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# model_type -> the one architecture (class name) we import for it.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
ROPE_TYPES = {"default": "none", "llama3": "llama3"}  # HF rope_type -> DecoderConfig.rope_scaling


def _config_class(model_type: str):
  from transformers import LlamaConfig, Qwen2Config  # configs only: no torch needed
  return {"llama": LlamaConfig, "qwen2": Qwen2Config}[model_type]


def _first(ids) -> int:
  """HF ids may be None, an int, or (eos) a list; DecoderConfig keeps one int, -1 for none."""
  if isinstance(ids, (list, tuple)):
    ids = ids[0] if ids else None
  return -1 if ids is None else int(ids)


# ------------------------------------------------------------------ configs

def decoder_config_from_hf(config_json: dict, path: str) -> DecoderConfig:
  """DecoderConfig for a HF config.json dict (`path` is only used in error messages).

  The dict goes through transformers' own config class, so missing fields get
  transformers' defaults and old-style `rope_theta`/`rope_scaling` files are
  normalised into `rope_parameters` exactly as transformers would.
  """
  model_type = config_json.get("model_type")
  architectures = config_json.get("architectures") or []
  if model_type not in ARCHITECTURES:
    raise ValueError(f"{path}: model_type={model_type!r} (architectures={architectures}) is not "
                     f"supported; supported: {sorted(ARCHITECTURES.values())}")
  expected = ARCHITECTURES[model_type]
  if architectures and architectures != [expected]:
    raise ValueError(f"{path}: architectures={architectures} is not supported; "
                     f"model_type={model_type!r} is imported as {expected} only")
  # A deep copy: transformers rewrites the nested rope dicts of what it is given.
  hf = _config_class(model_type).from_dict(copy.deepcopy(config_json))

  def unsupported(field: str, value: Any) -> ValueError:
    return ValueError(f"{path}: {field}={value!r} is not supported by mind_jax's Decoder")

  if hf.hidden_act != "silu":
    raise unsupported("hidden_act", hf.hidden_act)
  if model_type == "llama" and hf.mlp_bias:
    raise unsupported("mlp_bias", hf.mlp_bias)
  if model_type == "qwen2" and (hf.use_sliding_window or "sliding_attention" in hf.layer_types):
    raise unsupported("use_sliding_window", hf.use_sliding_window)

  rope = dict(hf.rope_parameters)
  rope_type = rope.get("rope_type", "default")
  if rope_type not in ROPE_TYPES:
    raise unsupported("rope_parameters.rope_type (or rope_scaling)", rope_type)
  llama3 = rope_type == "llama3"
  if model_type == "llama":
    qkv_bias = o_bias = bool(hf.attention_bias)  # Llama's flag covers q, k, v and o.
  else:
    qkv_bias, o_bias = True, False  # Qwen2: always q/k/v biases, never an o bias.

  defaults = DecoderConfig()
  return DecoderConfig(
      family=model_type,
      vocab_size=hf.vocab_size,
      hidden_size=hf.hidden_size,
      intermediate_size=hf.intermediate_size,
      num_layers=hf.num_hidden_layers,
      num_heads=hf.num_attention_heads,
      num_kv_heads=hf.num_key_value_heads,
      head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
      qkv_bias=qkv_bias,
      o_bias=o_bias,
      tie_embeddings=bool(hf.tie_word_embeddings),
      rms_norm_eps=hf.rms_norm_eps,
      rope_theta=float(rope["rope_theta"]),
      rope_scaling=ROPE_TYPES[rope_type],
      rope_factor=float(rope["factor"]) if llama3 else defaults.rope_factor,
      rope_low_freq_factor=float(rope["low_freq_factor"]) if llama3
      else defaults.rope_low_freq_factor,
      rope_high_freq_factor=float(rope["high_freq_factor"]) if llama3
      else defaults.rope_high_freq_factor,
      rope_original_max_position=int(rope["original_max_position_embeddings"]) if llama3
      else defaults.rope_original_max_position,
      max_position_embeddings=hf.max_position_embeddings,
      bos_token_id=_first(hf.bos_token_id),
      eos_token_id=_first(hf.eos_token_id),
      pad_token_id=_first(hf.pad_token_id),
  ).validated()


def _optional_id(token_id: int) -> int | None:
  return None if token_id < 0 else token_id


def hf_config_from_decoder(cfg: DecoderConfig, dtype: str | None = None):
  """The transformers config (LlamaConfig / Qwen2Config) that computes what `cfg` computes.

  `dtype` is the dtype the weights are written in (default: cfg.param_dtype).
  """
  dtype = dtype or cfg.param_dtype
  if cfg.family == "llama" and cfg.qkv_bias != cfg.o_bias:
    raise ValueError(f"model.qkv_bias={cfg.qkv_bias} with model.o_bias={cfg.o_bias}: HF Llama "
                     "has one attention_bias flag for q, k, v and o")
  if cfg.family == "qwen2" and (not cfg.qkv_bias or cfg.o_bias):
    raise ValueError(f"model.family='qwen2' needs qkv_bias=True and o_bias=False for HF Qwen2, "
                     f"got qkv_bias={cfg.qkv_bias}, o_bias={cfg.o_bias}")
  rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  if cfg.rope_scaling == "llama3":
    rope.update(rope_type="llama3", factor=cfg.rope_factor,
                low_freq_factor=cfg.rope_low_freq_factor,
                high_freq_factor=cfg.rope_high_freq_factor,
                original_max_position_embeddings=cfg.rope_original_max_position)
  fields = dict(
      architectures=[ARCHITECTURES[cfg.family]],
      vocab_size=cfg.vocab_size,  # the real vocabulary: export cuts the padding rows
      hidden_size=cfg.hidden_size,
      intermediate_size=cfg.intermediate_size,
      num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim,  # Qwen2Config has no such field but Qwen2Attention reads it
      hidden_act="silu",
      max_position_embeddings=cfg.max_position_embeddings,
      rms_norm_eps=cfg.rms_norm_eps,
      tie_word_embeddings=cfg.tie_embeddings,
      rope_parameters=rope,
      bos_token_id=_optional_id(cfg.bos_token_id),
      eos_token_id=_optional_id(cfg.eos_token_id),
      pad_token_id=_optional_id(cfg.pad_token_id),
      dtype=dtype,
  )
  if cfg.family == "llama":
    fields.update(attention_bias=cfg.qkv_bias, mlp_bias=False)
  else:
    fields.update(use_sliding_window=False)
  return _config_class(cfg.family)(**fields)


def generation_config_dict(bos_token_id, eos_token_id, pad_token_id) -> dict:
  """generation_config.json contents; ids may be None/-1 (left out) and eos a list."""
  out = {}
  for name, value in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id),
                      ("pad_token_id", pad_token_id)):
    if isinstance(value, (list, tuple)):
      value = [int(v) for v in value] or None
    elif value is not None and value < 0:
      value = None
    if value is not None:
      out[name] = value
  return out


# ------------------------------------------------------------------ weights

@dataclasses.dataclass(frozen=True)
class TensorMapping:
  """One HF tensor and the param it becomes.

  `to_ours` turns the HF array ([out, in] etc., real vocab) into our layout;
  `to_hf` is its inverse. Both are plain numpy functions on host arrays. With scanned
  layers (model.scan_layers) a layer's tensor is slice `layer` of the stacked param at
  `path` ([num_layers, ...]); `layer` is None for a param of its own.
  """
  hf_name: str
  hf_shape: tuple[int, ...]
  path: tuple[str, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]
  layer: int | None = None

  def hf_array(self, param: np.ndarray) -> np.ndarray:
    """The HF tensor of this mapping from the whole param at `path` (stacked or not)."""
    return self.to_hf(param if self.layer is None else param[self.layer])


def _identity(x: np.ndarray) -> np.ndarray:
  return x


def _transpose(x: np.ndarray) -> np.ndarray:
  return x.T


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  return np.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def _embedding_to_ours(w, padded):  # [vocab, hidden] -> [padded_vocab, hidden]
  return _pad_rows(w, padded)


def _embedding_to_hf(x, vocab):
  return x[:vocab]


def _lm_head_to_ours(w, padded):  # [vocab, hidden] -> [hidden, padded_vocab]
  return _pad_rows(w, padded).T


def _lm_head_to_hf(k, vocab):
  return k[:, :vocab].T


def _in_proj_to_ours(w, heads, head_dim):  # [heads*head_dim, hidden] -> [hidden, heads, head_dim]
  return w.T.reshape(w.shape[1], heads, head_dim)


def _in_proj_to_hf(k, heads, head_dim):
  return k.reshape(k.shape[0], heads * head_dim).T


def _out_proj_to_ours(w, heads, head_dim):  # [hidden, heads*head_dim] -> [heads, head_dim, hidden]
  return w.T.reshape(heads, head_dim, w.shape[0])


def _out_proj_to_hf(k, heads, head_dim):
  return k.reshape(heads * head_dim, k.shape[-1]).T


def _bias_to_ours(b, heads, head_dim):  # [heads*head_dim] -> [heads, head_dim]
  return b.reshape(heads, head_dim)


def _bias_to_hf(b, heads, head_dim):
  return b.reshape(heads * head_dim)


def _layer_mappings(cfg: DecoderConfig, i: int) -> list[TensorMapping]:
  e, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
  hf, ours = f"model.layers.{i}.", (("layers",) if cfg.scan_layers else (f"layers_{i}",))
  out = [
      TensorMapping(hf + "input_layernorm.weight", (e,), ours + ("input_layernorm", "scale"),
                    _identity, _identity),
      TensorMapping(hf + "post_attention_layernorm.weight", (e,),
                    ours + ("post_attention_layernorm", "scale"), _identity, _identity),
  ]
  for name, heads in (("q_proj", cfg.num_heads), ("k_proj", cfg.num_kv_heads),
                      ("v_proj", cfg.num_kv_heads)):
    split = dict(heads=heads, head_dim=d)
    path = ours + ("self_attn", name)
    out.append(TensorMapping(hf + f"self_attn.{name}.weight", (heads * d, e), path + ("kernel",),
                             functools.partial(_in_proj_to_ours, **split),
                             functools.partial(_in_proj_to_hf, **split)))
    if cfg.qkv_bias:
      out.append(TensorMapping(hf + f"self_attn.{name}.bias", (heads * d,), path + ("bias",),
                               functools.partial(_bias_to_ours, **split),
                               functools.partial(_bias_to_hf, **split)))
  split = dict(heads=cfg.num_heads, head_dim=d)
  o_path = ours + ("self_attn", "o_proj")
  out.append(TensorMapping(hf + "self_attn.o_proj.weight", (e, cfg.num_heads * d),
                           o_path + ("kernel",), functools.partial(_out_proj_to_ours, **split),
                           functools.partial(_out_proj_to_hf, **split)))
  if cfg.o_bias:
    out.append(TensorMapping(hf + "self_attn.o_proj.bias", (e,), o_path + ("bias",),
                             _identity, _identity))
  for name, hf_shape in (("gate_proj", (f, e)), ("up_proj", (f, e)), ("down_proj", (e, f))):
    out.append(TensorMapping(hf + f"mlp.{name}.weight", hf_shape,
                             ours + ("mlp", name, "kernel"), _transpose, _transpose))
  if cfg.scan_layers:
    out = [dataclasses.replace(m, layer=i) for m in out]
  return out


def tensor_mappings(cfg: DecoderConfig) -> list[TensorMapping]:
  """Every HF tensor of the model: in the order transformers writes them, except that with
  scanned layers the num_layers slices of one stacked param come together (the export then
  reads each stacked param once)."""
  vocab, padded, e = cfg.vocab_size, cfg.padded_vocab_size, cfg.hidden_size
  out = [TensorMapping("model.embed_tokens.weight", (vocab, e), ("embed_tokens",),
                       functools.partial(_embedding_to_ours, padded=padded),
                       functools.partial(_embedding_to_hf, vocab=vocab))]
  layers = [_layer_mappings(cfg, i) for i in range(cfg.num_layers)]
  if cfg.scan_layers:
    layers = list(zip(*layers))  # [param][layer] instead of [layer][param]
  out += [m for group in layers for m in group]
  out.append(TensorMapping("model.norm.weight", (e,), ("norm", "scale"), _identity, _identity))
  if not cfg.tie_embeddings:
    out.append(TensorMapping("lm_head.weight", (vocab, e), ("lm_head", "kernel"),
                             functools.partial(_lm_head_to_ours, padded=padded),
                             functools.partial(_lm_head_to_hf, vocab=vocab)))
  return out


def whole_params(cfg: DecoderConfig, read: Callable[[TensorMapping], np.ndarray],
                 dtype=np.float32) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
  """(path, host array) of each of our params as soon as it is whole, from `read(m)`, the
  HF tensor of mapping m: a scanned layers' stacked param once its last layer is read.
  Host memory holds one param (one stacked param) at a time besides what the caller keeps."""
  stacked: dict[tuple[str, ...], np.ndarray] = {}
  for m in tensor_mappings(cfg):
    ours = np.asarray(m.to_ours(read(m)), dtype)
    if m.layer is None:
      yield m.path, ours
      continue
    # The slices of one stacked param come one after another (tensor_mappings).
    stacked.setdefault(m.path, np.empty((cfg.num_layers,) + ours.shape, dtype))[m.layer] = ours
    if m.layer == cfg.num_layers - 1:
      yield m.path, stacked.pop(m.path)


def params_from_hf(cfg: DecoderConfig, tensors: dict[str, np.ndarray]) -> dict:
  """Our params tree (host float32 arrays; scanned layers stacked) from HF tensors by name,
  all in memory: for small models and benchmarks (import_hf streams a large one)."""
  return traverse_util.unflatten_dict(
      dict(whole_params(cfg, lambda m: np.asarray(tensors[m.hf_name]))))


def hf_from_params(cfg: DecoderConfig, params: dict) -> dict[str, np.ndarray]:
  """HF tensors by name from our params tree (the inverse of params_from_hf)."""
  flat = traverse_util.flatten_dict(params)
  return {m.hf_name: m.hf_array(np.asarray(flat[m.path], np.float32))
          for m in tensor_mappings(cfg)}


def is_ignorable(hf_name: str, cfg: DecoderConfig) -> bool:
  """Tensors some HF checkpoints carry that hold nothing we need.

  RoPE inverse frequencies are recomputed from the config; with tied
  embeddings transformers overwrites a stored lm_head.weight with the embedding.
  """
  if hf_name.endswith("rotary_emb.inv_freq"):
    return True
  return cfg.tie_embeddings and hf_name == "lm_head.weight"


# ------------------------------------------------------------------ reading a HF directory

# Copied into <workdir>/tokenizer when present; export_hf copies them back out.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
                   "tokenizer.model", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")


@contextlib.contextmanager
def local_model_dir(hf_dir: str) -> Iterator[str]:
  """`hf_dir` itself when local; else a temporary download of the files that an import
  (or the encoder) reads: config.json, safetensors weights and tokenizer files. Not the
  whole directory: a hub repo may also hold .bin or original/ weights, never read."""
  if not paths.is_remote(hf_dir):
    yield hf_dir
    return
  present = set(paths.listdir(hf_dir))
  if not present:
    raise FileNotFoundError(f"{hf_dir}: no such directory (or it is empty)")
  names = {"config.json", SAFETENSORS_FILE, SAFETENSORS_INDEX, *TOKENIZER_FILES}
  if SAFETENSORS_INDEX in present:
    index = paths.read_json(os.path.join(hf_dir, SAFETENSORS_INDEX))
    names |= set(index["weight_map"].values())
  with tempfile.TemporaryDirectory(prefix="mind_jax_hf_") as tmp:
    for name in sorted(names & present):
      paths.of(os.path.join(hf_dir, name)).copy(os.path.join(tmp, name))
    yield tmp


class SafetensorsReader:
  """Tensors of a HF model directory by name, read one at a time onto the host.

  `hf_dir` is local (see local_model_dir); `source`, the directory that errors name
  (default: hf_dir), may be the remote one it was downloaded from."""

  def __init__(self, hf_dir: str, source: str | None = None):
    if paths.is_remote(hf_dir):
      raise ValueError(f"{hf_dir}: safetensors reads local files (use local_model_dir)")
    self.hf_dir = source or hf_dir
    index = os.path.join(hf_dir, SAFETENSORS_INDEX)
    if paths.isfile(index):
      weight_map = paths.read_json(index)["weight_map"]
      self.files = {name: os.path.join(hf_dir, file) for name, file in weight_map.items()}
    elif paths.isfile(os.path.join(hf_dir, SAFETENSORS_FILE)):
      path = os.path.join(hf_dir, SAFETENSORS_FILE)
      with safe_open(path, framework="numpy") as f:
        self.files = {name: path for name in f.keys()}
    else:
      raise FileNotFoundError(f"{self.hf_dir}: neither {SAFETENSORS_FILE} nor "
                              f"{SAFETENSORS_INDEX} found "
                              "(only safetensors checkpoints are supported)")

  def names(self) -> set[str]:
    return set(self.files)

  def read(self, name: str) -> np.ndarray:
    path = self.files[name]
    with safe_open(path, framework="numpy") as f:
      if f.get_slice(name).get_dtype() == "BF16":
        return read_bfloat16(path, name)
      return f.get_tensor(name)


def read_bfloat16(path: str, name: str) -> np.ndarray:
  """safetensors' numpy reader has no bfloat16: read the raw bytes as ml_dtypes.bfloat16.

  File layout: an 8-byte little-endian header length, a JSON header with each
  tensor's dtype, shape and [begin, end) byte offsets, then the data.
  """
  with paths.open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    entry = json.loads(f.read(header_len))[name]
    begin, end = entry["data_offsets"]
    f.seek(8 + header_len + begin)
    data = f.read(end - begin)
  return np.frombuffer(data, dtype=ml_dtypes.bfloat16).reshape(entry["shape"])


def config_json_path(hf_dir: str) -> str:
  path = os.path.join(hf_dir, "config.json")
  if not paths.isfile(path):
    raise FileNotFoundError(f"{hf_dir}: no config.json (expected a transformers model directory)")
  return path
