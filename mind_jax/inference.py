"""A trained model read back from its checkpoint, for generation and export.

    model = inference.load_model("runs/demo")           # on the first device
    model = inference.load_model("runs/demo", mesh=sharding.device_mesh())  # over all
    decode.generate(model.params, model.cfg, prompts, 64, model.eos_ids, model.pad_id,
                    mesh=model.mesh, rules=model.rules)

load_model gives the params on a mesh, the model config, the tokenizer and its stop
tokens: what the evaluation (eval/run.py), the JAX teacher and the demo generate with.
restore_params gives the params only. The export (export_hf.py) never holds the whole
model: it reads a few params at a time with ParamReader / LoraMergeReader.

A LoRA run's checkpoints hold its adapters only: its params are read as its base
with the adapters merged in (as the run stored the base: bf16 rounded, or
NF4-dequantized), so a plain Decoder computes what the trained model computed.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.sharding import Mesh

from mind_jax import checkpoint, decode, paths, sharding
from mind_jax.models import decoder, lora


@dataclasses.dataclass
class Model:
  workdir: str
  step: int
  cfg: decoder.DecoderConfig
  params: Any
  tokenizer: Any
  eos_ids: list[int]
  pad_id: int
  mesh: Mesh
  rules: tuple


def load_model(path: str, step: int | None = None, mesh: Mesh | None = None,
               rules=None) -> Model:
  """The model of `step` (default: the newest) of `path` (a workdir, its checkpoints/
  or a step dir; local or gs://). Params are placed in their logical shardings (`rules`,
  default config.mesh.rules) on `mesh`, by default the first device."""
  from mind_jax import tokenizer as tokenizer_lib
  workdir = checkpoint.resolve_workdir(path)
  mesh = mesh if mesh is not None else sharding.single_device_mesh()
  rules = decode.hashable_rules(rules)
  step, cfg, params = restore_params(workdir, step, mesh, rules)
  tok_dir = checkpoint.tokenizer_dir(workdir)
  tokenizer = tokenizer_lib.load(tok_dir, local_files_only=True)  # local or gs://
  eos_ids = eos_token_ids(tok_dir, tokenizer, cfg)
  return Model(workdir, step, cfg, params, tokenizer, eos_ids, pad_id_of(tokenizer, eos_ids),
               mesh, rules)


def pad_id_of(tokenizer, eos_ids: list[int]) -> int:
  """The pad id only fills masked slots; any valid id will do when there is none."""
  pad = tokenizer.pad_token_id
  return pad if pad is not None else (eos_ids[0] if eos_ids else 0)


def restore_params(path: str, step: int | None = None, mesh: Mesh | None = None,
                   rules=None) -> tuple[int, decoder.DecoderConfig, dict]:
  """(step, model config, params) of `step` (default: the newest), the params item only
  (no optimizer state), in their logical shardings on `mesh` (default: the first device)."""
  step, meta = checkpoint.read_meta(path, step)
  cfg = decoder.DecoderConfig.from_config(meta["model"])
  mesh = mesh if mesh is not None else sharding.single_device_mesh()
  shardings = decode.param_shardings(cfg, mesh, decode.hashable_rules(rules))
  if "lora" in meta:  # the checkpoint holds the adapters only
    return step, cfg, jax.device_put(lora_merged_params(path, step, cfg, meta["lora"]), shardings)
  abstract = sharding.with_shardings(decoder.abstract_params(cfg)[0], shardings)
  step, restored = checkpoint.restore(path, step, {"params": abstract})
  return step, cfg, restored["params"]


def eos_token_ids(tokenizer_dir: str, tokenizer, cfg: decoder.DecoderConfig) -> list[int]:
  """What HF generate stops on: generation_config.json's eos (one id or a list; import_hf
  copies or writes it), else the tokenizer's, else the model config's."""
  path = os.path.join(tokenizer_dir, "generation_config.json")
  if paths.isfile(path):
    eos = paths.read_json(path).get("eos_token_id")
    if eos is not None:
      return [eos] if isinstance(eos, int) else list(eos)
  if tokenizer.eos_token_id is not None:
    return [tokenizer.eos_token_id]
  return [cfg.eos_token_id] if cfg.eos_token_id >= 0 else []


def lora_merged_params(path: str, step: int, cfg: decoder.DecoderConfig,
                       lora_meta: dict) -> dict:
  """A LoRA run's step (meta["lora"] of its checkpoint) as the params of a plain Decoder,
  host numpy arrays in model.param_dtype: the base with the adapters merged in, as the
  merged export writes them (LoraMergeReader)."""
  reader = LoraMergeReader(checkpoint.resolve_workdir(path), step, cfg, lora_meta)
  try:
    flat = reader.read(sorted(traverse_util.flatten_dict(decoder.abstract_params(cfg)[0])))
  finally:
    reader.close()
  dtype = jnp.dtype(cfg.param_dtype)
  return traverse_util.unflatten_dict({p: np.asarray(v).astype(dtype) for p, v in flat.items()})


# ------------------------------------------------------------------ a few params at a time


class ParamReader:
  """Reads chosen params of a checkpoint step as host numpy arrays, a few at a time
  (Orbax partial restore), so the export never holds the whole model."""

  def __init__(self, workdir: str, step: int):
    self.workdir, self.step = workdir, step
    self.path = os.path.join(checkpoint.checkpoints_dir(workdir), str(step), "params")
    self.checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())

  def read(self, paths: list[tuple[str, ...]]) -> dict[tuple[str, ...], np.ndarray]:
    item = traverse_util.unflatten_dict({p: 0 for p in paths})  # the structure only
    restore_args = traverse_util.unflatten_dict(
        {p: ocp.RestoreArgs(restore_type=np.ndarray) for p in paths})
    with checkpoint.reading(self.workdir, self.step):  # a damaged file: one line
      tree = self.checkpointer.restore(self.path, args=ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args, partial_restore=True))
    return traverse_util.flatten_dict(tree)

  def close(self) -> None:
    self.checkpointer.close()


class LoraMergeReader:
  """ParamReader's interface for a LoRA run: base params (from the workdir its meta names)
  as the run stored them, with the run's adapters merged in (lora.merged_params)."""

  def __init__(self, workdir: str, step: int, cfg: decoder.DecoderConfig, lora_meta: dict):
    self.cfg, self.lora_config = cfg, lora.LoraConfig.from_config(lora_meta)
    self.base = ParamReader(lora_meta["base"], lora_meta["base_step"])
    self.adapters = ParamReader(workdir, step)
    adapter_shapes = lora.abstract(cfg, self.lora_config)[0]
    self.adapter_paths = set(traverse_util.flatten_dict(adapter_shapes))

  def read(self, paths: list[tuple[str, ...]]) -> dict[tuple[str, ...], np.ndarray]:
    wanted = [p for path in paths for p in lora.adapter_paths(path) if p in self.adapter_paths]
    adapters = self.adapters.read(wanted) if wanted else {}
    return lora.merged_params(self.base.read(paths), adapters, self.cfg, self.lora_config)

  def close(self) -> None:
    self.base.close()
    self.adapters.close()
