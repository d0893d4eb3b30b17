"""Import a transformers Llama / Qwen2 checkpoint into a mind_jax workdir.

    python -m mind_jax.import_hf --hf_dir /models/Qwen2.5-0.5B --out /runs/qwen05
    python -m mind_jax.import_hf --hf_dir D --out C --mesh_fsdp 4 --mesh_tensor 2
    python -m mind_jax.import_hf --hf_dir gs://b/models/qwen05 --out gs://b/runs/qwen05
    python -m mind_jax.import_hf --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out /runs/smol

Tensors are read one at a time from model.safetensors (or the shards listed in
model.safetensors.index.json), put into our layout on the host, and placed
straight into their final sharding on the mesh: no device ever holds the whole
model unless the mesh is one device. The result is step 0 of a normal
checkpoint (see mind_jax/checkpoint.py) plus the tokenizer files, so training
(`train.init_from`) and `export_hf` read it like any run. Either directory may be
on GCS: a remote model's files are downloaded first (safetensors reads local files).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os

import jax
import numpy as np
from flax import traverse_util

from mind_jax import checkpoint, faults, paths, progress, sharding
from mind_jax.config import MESH_RULES
from mind_jax.models import decoder, hf


def read_config(hf_dir: str) -> decoder.DecoderConfig:
  return read_hf_config(hf_dir)[1]


def read_hf_config(hf_dir: str) -> tuple[dict, decoder.DecoderConfig]:
  """config.json and the DecoderConfig it implies. What a user can get wrong (no such
  directory, no config.json, a model we do not support) is one line (faults.BadInput)."""
  if not paths.isdir(hf_dir):
    raise faults.BadInput(f"--hf_dir {hf_dir}: no such directory (expected a transformers "
                          "model directory)")
  try:
    path = hf.config_json_path(hf_dir)
  except FileNotFoundError as e:
    raise faults.BadInput(f"--hf_dir {e}") from e
  try:
    hf_config = paths.read_json(path)
  except ValueError as e:  # json.JSONDecodeError names no file
    raise faults.BadInput(f"--hf_dir {path}: not valid JSON ({e})") from e
  try:
    return hf_config, hf.decoder_config_from_hf(hf_config, path)
  except ValueError as e:  # an unsupported family, architecture or field: hf names it
    raise faults.BadInput(f"--hf_dir {e}") from e


def check_tensor_names(reader: hf.SafetensorsReader, cfg: decoder.DecoderConfig,
                       mappings: list[hf.TensorMapping]) -> None:
  """Fail before loading anything if the files lack a tensor or hold one we do not know."""
  expected = {m.hf_name for m in mappings}
  present = reader.names()
  missing = sorted(expected - present)
  if missing:
    raise faults.BadInput(f"{reader.hf_dir}: missing tensors {missing} for this {cfg.family} "
                          "config")
  extra = sorted(n for n in present - expected if not hf.is_ignorable(n, cfg))
  if extra:
    raise faults.BadInput(f"{reader.hf_dir}: unexpected tensors {extra} (not part of a "
                          f"{cfg.family} model with this config.json)")
  for name in sorted(present - expected):
    logging.info("ignoring %s", name)


def load_params(reader: hf.SafetensorsReader, cfg: decoder.DecoderConfig,
                mesh: jax.sharding.Mesh, rules=MESH_RULES) -> dict:
  """Params tree with every array already in its logical sharding (`rules`: a config's
  mesh.rules) on `mesh`."""
  mappings = hf.tensor_mappings(cfg)
  check_tensor_names(reader, cfg, mappings)
  shapes, axes = decoder.abstract_params(cfg)
  shardings = sharding.tree_shardings(shapes, axes, mesh, rules)
  flat_shapes = traverse_util.flatten_dict(shapes)
  flat_shardings = traverse_util.flatten_dict(shardings)
  if set(flat_shapes) != {m.path for m in mappings}:  # a table / model mismatch is our bug
    raise AssertionError(f"hf.tensor_mappings does not cover the Decoder params: "
                         f"{sorted(set(flat_shapes) ^ {m.path for m in mappings})}")

  read_count, read_bytes = 0, 0

  def read(m: hf.TensorMapping) -> np.ndarray:
    nonlocal read_count, read_bytes
    hf_array = reader.read(m.hf_name)
    if tuple(hf_array.shape) != m.hf_shape:
      raise faults.BadInput(f"{reader.hf_dir}: tensor {m.hf_name} has shape "
                            f"{tuple(hf_array.shape)}, config.json implies {m.hf_shape}")
    read_count, read_bytes = read_count + 1, read_bytes + hf_array.nbytes
    logging.info("[%d/%d] %s %s %s -> %s (%.1f MB read)", read_count, len(mappings),
                 m.hf_name, tuple(hf_array.shape), hf_array.dtype, "/".join(m.path),
                 read_bytes / 1e6)
    return hf_array

  flat_params = {}
  for path, host in hf.whole_params(cfg, read, jax.numpy.dtype(cfg.param_dtype)):
    flat_params[path] = jax.make_array_from_callback(
        flat_shapes[path].shape, flat_shardings[path], lambda index, host=host: host[index])
  return traverse_util.unflatten_dict(flat_params)


def copy_tokenizer(hf_dir: str, out: str, hf_config: dict) -> None:
  """Tokenizer files into <out>/tokenizer; a generation_config.json is written if absent
  so that a list of eos ids (DecoderConfig keeps only the first) survives export."""
  tok_dir = checkpoint.tokenizer_dir(out)
  paths.makedirs(tok_dir)
  copied = [name for name in hf.TOKENIZER_FILES if paths.isfile(os.path.join(hf_dir, name))]
  for name in copied:
    paths.of(os.path.join(hf_dir, name)).copy(os.path.join(tok_dir, name), overwrite=True)
  if "generation_config.json" not in copied:
    generation = hf.generation_config_dict(hf_config.get("bos_token_id"),
                                           hf_config.get("eos_token_id"),
                                           hf_config.get("pad_token_id"))
    paths.write_json(os.path.join(tok_dir, "generation_config.json"), generation)
  if not any(name.startswith("tokenizer") for name in copied):
    logging.warning("%s has no tokenizer files: export_hf will need --allow_no_tokenizer", hf_dir)
  logging.info("tokenizer files -> %s: %s", tok_dir, copied)


def import_hf(hf_dir: str, out: str, mesh: jax.sharding.Mesh | None = None,
              dtype: str = "float32", rules=MESH_RULES,
              mesh_shape: tuple[int, int, int] = (1, -1, 1)) -> decoder.DecoderConfig:
  """Write the HF model in `hf_dir` as step 0 of the workdir `out`; returns its config.

  `dtype` is the params' (and the model's compute) dtype; bf16 checkpoints are
  upcast to float32 by default, as master weights for training. The params go onto
  `mesh` (default: one of `mesh_shape`, data/fsdp/tensor sizes, built once the inputs are
  checked) in their logical shardings (`rules`).
  """
  hf_dir = paths.absolute(hf_dir)
  hf_config, cfg = read_hf_config(hf_dir)
  refuse_used_out(out)
  cfg = dataclasses.replace(cfg, dtype=dtype, param_dtype=dtype).validated()
  mesh = mesh if mesh is not None else _device_mesh(mesh_shape)
  logging.info("importing %s (%s, %.1fM params) onto mesh %s", hf_dir, cfg.family,
               cfg.num_params() / 1e6, dict(mesh.shape))
  with hf.local_model_dir(hf_dir) as local:
    params = load_params(hf.SafetensorsReader(local, source=hf_dir), cfg, mesh, rules)
    copy_tokenizer(local, out, hf_config)  # before the checkpoint commits: never one without

  meta = {"model": cfg.to_dict(), "config": None, "data_position": 0,
          "source": {"hf_dir": hf_dir}}
  mngr = checkpoint.manager(out)
  checkpoint.save(mngr, 0, params, meta)
  mngr.wait_until_finished()
  mngr.close()
  logging.info("wrote %s", checkpoint.checkpoints_dir(out))
  return cfg


def _device_mesh(shape: tuple[int, int, int]) -> jax.sharding.Mesh:
  try:
    return sharding.device_mesh(*shape)
  except ValueError as e:  # sizes that do not fit the devices: sharding says why
    raise faults.BadInput(f"--mesh_data/--mesh_fsdp/--mesh_tensor {shape}: "
                          f"{str(e).removeprefix('mesh: ')}") from e


def refuse_used_out(out: str) -> None:
  """An import writes step 0 of a new workdir: one that holds a checkpoint is refused."""
  step = checkpoint.latest_step(out)
  if step is not None:
    raise faults.BadInput(f"--out {out} already holds a checkpoint (step {step}): import "
                          "into a new workdir")


def import_gguf(gguf_path: str, out: str, **kwargs) -> decoder.DecoderConfig:
  """import_hf of a GGUF file (llama.cpp's format), through a temporary transformers
  directory (models/gguf.py: weights dequantized to fp32)."""
  import tempfile
  from mind_jax.models import gguf
  refuse_used_out(out)  # before the slow conversion
  with tempfile.TemporaryDirectory(prefix="mind_jax_gguf_") as tmp:
    return import_hf(gguf.gguf_to_hf_dir(gguf_path, tmp), out, **kwargs)


@faults.exit_cleanly
def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--hf_dir", help="transformers model directory")
  source.add_argument("--gguf", help="a llama or qwen2 GGUF file (llama.cpp, Ollama, the Hub)")
  p.add_argument("--out", required=True, help="workdir to write (checkpoints/0, tokenizer/)")
  p.add_argument("--mesh_data", type=int, default=1)
  p.add_argument("--mesh_fsdp", type=int, default=-1, help="-1: the remaining devices")
  p.add_argument("--mesh_tensor", type=int, default=1)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="params dtype in the checkpoint")
  args = p.parse_args(argv)
  progress.quiet_library_logs()
  kwargs = dict(dtype=args.dtype, mesh_shape=(args.mesh_data, args.mesh_fsdp, args.mesh_tensor))
  if args.gguf:
    import_gguf(args.gguf, args.out, **kwargs)
  else:
    import_hf(args.hf_dir, args.out, **kwargs)


if __name__ == "__main__":
  main()
