"""Export a mind_jax checkpoint as a transformers model directory.

    python -m mind_jax.export_hf --checkpoint /runs/qwen05 --out /exports/qwen05
    python -m mind_jax.export_hf --checkpoint /runs/x/checkpoints/1200 --out D --dtype bfloat16

A LoRA run (config.lora.rank > 0; its checkpoints hold adapters and name their base)
exports merged: every weight is the base's as the run stored it (bf16 rounded, or
NF4-dequantized for QLoRA) plus (alpha / r) * A @ B on the adapted projections, so the
export computes what the trained model computed. With --adapter_only it writes a PEFT
adapter directory instead (adapter_config.json, adapter_model.safetensors):

    python -m mind_jax.export_hf --checkpoint /runs/lora --out /exports/adapter --adapter_only

The result loads with `AutoModelForCausalLM.from_pretrained(out)` and
`AutoTokenizer.from_pretrained(out)`: config.json, generation_config.json,
model.safetensors (or model-0000i-of-0000n.safetensors shards and
model.safetensors.index.json, as transformers writes them) and the tokenizer
files of the run. Host memory stays bounded whatever the model size: params are
read from the checkpoint one decoder layer at a time, or with scanned layers one stacked
param (that weight of every layer) at a time (inference.ParamReader), and
cast and written in blocks straight into the safetensors file, so the export holds
neither the whole model nor a whole output shard (benchmarks/export_memory.py
measures peak RSS on a Qwen2.5-0.5B-shaped model).

Failures leave nothing behind: a weight that is NaN or inf stops the export (exit 3)
unless --allow_nonfinite, a full disk ends as one line (exit 5), and either way, as after
any error, the files this export wrote (and `out`, if it made it) are removed, so the
same command can simply be run again. Nothing it did not write is ever removed.

Any path may be on an object store (mind_jax/paths.py):

    python -m mind_jax.export_hf --checkpoint gs://bucket/run --out gs://bucket/export

The checkpoint is read from the bucket by Orbax and the tokenizer files are downloaded
(paths.local_copy). A remote `out` is written to a local staging directory first, by the
same streaming writer, and uploaded once the whole export is written (paths.staged): it
needs local disk for one full export (about the weights' size in the chosen dtype plus
the tokenizer, logged at the start) in the system temp dir; set TMPDIR to stage it on
another disk. A failed export uploads nothing; a failed upload removes the files it
uploaded (each object appears whole or not at all). A full staging disk is one line
naming it (exit 5).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mind_jax import checkpoint, faults, inference, paths, progress
from mind_jax.models import decoder, hf, lora

TOKENIZER_MARKERS = ("tokenizer_config.json", "tokenizer.json")  # what AutoTokenizer loads from
DTYPES = ("float32", "bfloat16")  # what --dtype may ask for
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class OutNotEmpty(faults.BadInput, FileExistsError):
  """`out` holds files already: the export never writes among files it did not make."""


class NoTokenizer(faults.BadInput, FileNotFoundError):
  """The workdir has no tokenizer files (--allow_no_tokenizer exports anyway)."""


class NonFiniteWeights(faults.NonFinite):
  """A weight being written holds NaN or inf (--allow_nonfinite exports anyway)."""


def parse_size(size: int | str) -> int:
  """Bytes from 123, "500MB", "2GB" or "1GiB" (decimal units, as transformers reads them)."""
  if isinstance(size, int):
    return size
  match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", size)
  if not match or match.group(2).upper() not in SIZE_UNITS:
    raise faults.BadInput(f"--max_shard_size {size!r}: expected bytes or e.g. '500MB', '2GB', "
                          "'1GiB'")
  return int(float(match.group(1)) * SIZE_UNITS[match.group(2).upper()])


def step_of_step_dir(path: str) -> int | None:
  """<workdir>/checkpoints/<step> names its step; a workdir or checkpoints/ dir does not."""
  path = paths.absolute(path)
  parent = os.path.basename(os.path.dirname(path))
  if os.path.basename(path).isdigit() and parent == checkpoint.CHECKPOINTS:
    return int(os.path.basename(path))
  return None


def plan_shards(mappings: list[hf.TensorMapping], itemsize: int,
                max_bytes: int) -> list[list[hf.TensorMapping]]:
  """Greedy split in write order; a tensor bigger than max_bytes gets a shard of its own."""
  shards, size = [[]], 0
  for m in mappings:
    nbytes = int(np.prod(m.hf_shape)) * itemsize
    if shards[-1] and size + nbytes > max_bytes:
      shards.append([])
      size = 0
    shards[-1].append(m)
    size += nbytes
  return shards


# Bytes converted and written at a time: a large tensor (the embedding) is cast in
# row blocks of about this size, so the output side never holds a whole copy of it.
WRITE_BLOCK_BYTES = 64 * 2**20
SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16"}


def safetensors_header(shard: list[hf.TensorMapping], dtype: np.dtype) -> bytes:
  """The 8-byte length plus JSON header of a safetensors file whose tensors follow
  in `shard` order; padded with spaces to 8 bytes, as the safetensors library does."""
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for m in shard:
    nbytes = int(np.prod(m.hf_shape)) * dtype.itemsize
    header[m.hf_name] = dict(dtype=SAFETENSORS_DTYPES[dtype.name], shape=list(m.hf_shape),
                             data_offsets=[offset, offset + nbytes])
    offset += nbytes
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)
  return len(text).to_bytes(8, "little") + text


def check_finite(array: np.ndarray, name: str) -> None:
  """NonFiniteWeights naming `name` when `array` (as written) holds NaN or inf."""
  if np.isfinite(array).all():
    return
  kinds = [kind for kind, bad in (("NaN", np.isnan(array).any()), ("inf", np.isinf(array).any()))
           if bad]
  raise NonFiniteWeights(f"tensor {name} holds {' and '.join(kinds)}")


def _write_tensor(f, array: np.ndarray, dtype: np.dtype, check_name: str | None = None) -> int:
  """Cast and write `array` (C order) in row blocks; returns the bytes written. With
  check_name, each cast block is checked finite before it is written (the cast can
  overflow too), so the check holds no more than the block."""
  array = np.ascontiguousarray(array)
  rows = max(1, WRITE_BLOCK_BYTES // max(1, array[:1].size * dtype.itemsize)) if array.ndim else 1
  for start in range(0, array.shape[0], rows) if array.ndim else [None]:
    block = (array if start is None else array[start:start + rows]).astype(dtype)
    if check_name is not None:
      check_finite(block, check_name)
    f.write(block.tobytes())
  return array.size * dtype.itemsize


def _read_key(m: hf.TensorMapping) -> tuple[str, ...]:
  """What is read at once: an unrolled decoder layer (its top-level param), or one stacked
  param of the scanned layers (all its layers' slices)."""
  return m.path[:1] if m.layer is None else m.path


def _layer_groups(shard: list[hf.TensorMapping]) -> list[list[hf.TensorMapping]]:
  """Consecutive mappings read together (_read_key)."""
  groups: list[list[hf.TensorMapping]] = []
  for m in shard:
    if groups and _read_key(groups[-1][0]) == _read_key(m):
      groups[-1].append(m)
    else:
      groups.append([m])
  return groups


def write_weights(reader: inference.ParamReader, cfg: decoder.DecoderConfig, out: str,
                  dtype: np.dtype, max_bytes: int, outputs: Outputs | None = None,
                  allow_nonfinite: bool = False) -> list[str]:
  """safetensors file(s) plus, when sharded, the index; returns the files written.

  Host memory: one decoder layer of checkpoint params (or the embedding), or one stacked
  param of the scanned layers, at a time,
  plus one block being cast; never a whole output shard. Unless allow_nonfinite, the
  first tensor holding NaN or inf raises NonFiniteWeights. `outputs` records each file
  before it is written (Outputs.remove)."""
  outputs = outputs or Outputs(out)
  mappings = hf.tensor_mappings(cfg)
  shards = plan_shards(mappings, dtype.itemsize, max_bytes)
  names = ([hf.SAFETENSORS_FILE] if len(shards) == 1 else
           [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)])
  weight_map, total = {}, 0
  for name, shard in zip(names, shards):
    path, shard_bytes = outputs.path(name), 0
    with open(outputs.path(name + ".tmp"), "wb") as f:  # local: in outputs.local (staged)
      f.write(safetensors_header(shard, dtype))
      for group in _layer_groups(shard):
        params = reader.read(sorted({m.path for m in group}))
        for m in group:
          hf_array = m.hf_array(params[m.path])
          if tuple(hf_array.shape) != tuple(m.hf_shape):
            raise ValueError(f"{m.hf_name}: converted shape {hf_array.shape} != {m.hf_shape}")
          shard_bytes += _write_tensor(f, hf_array, dtype,
                                       None if allow_nonfinite else m.hf_name)
          del hf_array
        del params
    # A killed export never leaves a half-written shard.
    os.replace(path + ".tmp", path)  # local: in outputs.local (staged)
    total += shard_bytes
    weight_map.update({m.hf_name: name for m in shard})
    logging.info("wrote %s: %d tensors, %.1f MB", name, len(shard), shard_bytes / 1e6)
  if len(shards) > 1:
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(outputs.path(hf.SAFETENSORS_INDEX), "w") as f:  # local: in outputs.local
      json.dump(index, f, indent=2)
    names.append(hf.SAFETENSORS_INDEX)
  return names


def write_tokenizer(workdir: str, cfg: decoder.DecoderConfig, out: str,
                    outputs: Outputs | None = None) -> None:
  """The run's tokenizer files (downloaded first when the workdir is remote);
  generation_config.json from the config if none came along."""
  outputs = outputs or Outputs(out)
  tok_dir = checkpoint.tokenizer_dir(workdir)
  files = paths.listdir(tok_dir)
  if files:
    with paths.local_copy(tok_dir) as local:
      for name in files:
        shutil.copy2(os.path.join(local, name), outputs.path(name))  # local: local_copy to staged
  if "generation_config.json" not in files:
    generation = hf.generation_config_dict(cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id)
    with open(outputs.path("generation_config.json"), "w") as f:  # local: in outputs.local
      json.dump(generation, f, indent=2)


def write_peft_adapter(workdir: str, step: int, cfg: decoder.DecoderConfig, lora_meta: dict,
                       out: str, dtype: np.dtype, outputs: Outputs | None = None,
                       allow_nonfinite: bool = False) -> list[str]:
  """adapter_config.json and adapter_model.safetensors (PEFT's names) of a LoRA step."""
  from safetensors.numpy import save_file
  outputs = outputs or Outputs(out)
  lora_config = lora.LoraConfig.from_config(lora_meta)
  reader = inference.ParamReader(workdir, step)
  try:
    paths = sorted(traverse_util.flatten_dict(lora.abstract(cfg, lora_config)[0]))
    tensors = lora.peft_tensors(reader.read(paths), cfg)
  finally:
    reader.close()
  tensors = {k: np.ascontiguousarray(v.astype(dtype)) for k, v in tensors.items()}
  if not allow_nonfinite:
    for name, tensor in tensors.items():
      check_finite(tensor, name)
  save_file(tensors, outputs.path(lora.PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
  # The base PEFT loads the adapter onto: the HF model the base workdir was imported from.
  base_meta = checkpoint.read_meta(lora_meta["base"], lora_meta["base_step"])[1]
  base_model = (base_meta.get("source") or {}).get("hf_dir") or lora_meta["base"]
  with open(outputs.path(lora.PEFT_CONFIG_FILE), "w") as f:  # local: in outputs.local
    json.dump(lora.peft_config(lora_config, base_model), f, indent=2)
  if lora_config.base_dtype == "nf4":
    logging.warning("these adapters were trained on an NF4-quantized base; PEFT applies them to "
                    "whatever base it is given")
  return [lora.PEFT_CONFIG_FILE, lora.PEFT_WEIGHTS_FILE]


def export_hf(checkpoint_path: str, out: str, step: int | None = None,
              max_shard_size: int | str = "2GB", dtype: str | None = None,
              allow_no_tokenizer: bool = False, adapter_only: bool = False,
              allow_nonfinite: bool = False) -> str:
  """Write checkpoint `checkpoint_path` (workdir, its checkpoints/ or a step dir) to `out`.

  `dtype` (float32 / bfloat16) defaults to the checkpoint's param dtype. A LoRA run's
  adapters are merged into its base; `adapter_only` writes them as a PEFT adapter instead.
  A weight holding NaN or inf is refused (faults.NonFinite) unless allow_nonfinite. On
  any failure the files written so far are removed (Outputs). Either path may be remote
  (gs://...; see the module docstring). Returns the absolute output directory.
  """
  if dtype is not None and dtype not in DTYPES:  # before anything is read or written
    raise faults.BadInput(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
  max_bytes = parse_size(max_shard_size)
  workdir = checkpoint.resolve_workdir(checkpoint_path)
  if step is None:
    step = step_of_step_dir(checkpoint_path)
  out = _out_dir(out)
  if adapter_only:
    return _export_adapter(workdir, out, step, dtype, allow_nonfinite)
  tok_dir = checkpoint.tokenizer_dir(workdir)
  has_tokenizer = any(paths.isfile(os.path.join(tok_dir, name)) for name in TOKENIZER_MARKERS)
  if not has_tokenizer and not allow_no_tokenizer:
    raise NoTokenizer(f"{tok_dir} holds no tokenizer ({' or '.join(TOKENIZER_MARKERS)}): "
                      "the export would not load with AutoTokenizer (pass "
                      "--allow_no_tokenizer to export anyway)")
  _refuse_non_empty(out)

  step, meta = checkpoint.read_meta(workdir, step)
  cfg = decoder.DecoderConfig.from_config(meta["model"])
  dtype = dtype or cfg.param_dtype  # a stated one is checked; DecoderConfig checks its own
  with _removed_on_failure(out, f"step {step} of {workdir}",
                           export_bytes(cfg, jnp.dtype(dtype))) as outputs:
    outputs.made_by(lambda: hf.hf_config_from_decoder(cfg, dtype).save_pretrained(outputs.local))
    reader = (inference.LoraMergeReader(workdir, step, cfg, meta["lora"]) if "lora" in meta
              else inference.ParamReader(workdir, step))
    try:
      files = write_weights(reader, cfg, outputs.local, jnp.dtype(dtype), max_bytes, outputs,
                            allow_nonfinite)
    finally:
      reader.close()
    write_tokenizer(workdir, cfg, outputs.local, outputs)
  logging.info("exported step %d of %s to %s (%s, %s)", step, workdir, out, dtype, files)
  return out


def _export_adapter(workdir: str, out: str, step: int | None, dtype: str | None,
                    allow_nonfinite: bool = False) -> str:
  step, meta = checkpoint.read_meta(workdir, step)
  if "lora" not in meta:
    raise faults.BadInput(f"--adapter_only: step {step} of {workdir} holds no LoRA adapters (it "
                          "was trained with lora.rank=0); export it without --adapter_only")
  _refuse_non_empty(out)
  dtype = dtype or "float32"  # the adapters' master weights; a stated one is checked
  cfg = decoder.DecoderConfig.from_config(meta["model"])
  with _removed_on_failure(out, f"the LoRA adapters of step {step} of {workdir}") as outputs:
    files = write_peft_adapter(workdir, step, cfg, meta["lora"], outputs.local, jnp.dtype(dtype),
                               outputs, allow_nonfinite)
  logging.info("exported the LoRA adapters of step %d of %s to %s (%s, %s)", step, workdir, out,
               dtype, files)
  return out


def _refuse_non_empty(out: str) -> None:
  """Before anything is written: an export never mixes its files with others'."""
  if paths.listdir(out):
    raise OutNotEmpty(f"{out} is not empty: export into a new directory")


def _out_dir(out: str) -> str:
  """`out` absolute; a remote one without a trailing slash (its parent is then its dirname)."""
  return paths.absolute(out)


def export_bytes(cfg: decoder.DecoderConfig, dtype: np.dtype) -> int:
  """Bytes of the weights an export of `cfg` in `dtype` writes (what a full disk needs)."""
  return sum(int(np.prod(m.hf_shape)) for m in hf.tensor_mappings(cfg)) * dtype.itemsize


class Outputs:
  """The files an export wrote, each recorded before it is written, and the directories
  it made: after a failure exactly these are removed (remove), so the retry finds `out`
  as it was, and nothing the export did not write is touched.

  Files are written into `local`: `out` itself when it is local, else the staging
  directory (paths.staged) uploaded to `out` once the whole export is written; `uploaded`
  then names its files, which remove() deletes from `out` as well."""

  def __init__(self, out: str):
    self.out, self.local, self.files, self.uploaded = out, out, [], []
    self.made_dirs = _missing_dirs(out)  # recorded before anything makes them

  def path(self, name: str) -> str:
    path = os.path.join(self.local, name)
    self.files.append(path)
    return path

  def made_by(self, write: Callable[[], Any]) -> None:
    """Run `write`, which names its own files (transformers' save_pretrained): record
    whatever appeared in `local` meanwhile, also when it fails midway."""
    before = set(os.listdir(self.local))  # local: paths.staged's dir
    try:
      write()
    finally:
      after = set(os.listdir(self.local))  # local: paths.staged's dir
      self.files += [os.path.join(self.local, n) for n in sorted(after - before)]

  def remove(self) -> None:
    for path in self.files:  # a staging dir's are gone with it already
      paths.remove(path)
    kept = [name for name in self.uploaded if not _removed(os.path.join(self.out, name))]
    if kept:
      logging.warning("could not remove %d uploaded files of the failed export from %s (%s): "
                      "remove them before running the same command again", len(kept),
                      self.out, ", ".join(kept))
    elif self.uploaded:
      logging.warning("the upload to %s failed: removed the files it had uploaded", self.out)
    if self.uploaded or not paths.is_remote(self.out):  # else it made no remote dir
      for directory in self.made_dirs:
        _remove_if_empty(directory)


def _missing_dirs(path: str) -> list[str]:
  """`path` and its missing parents, deepest first: what making `path` makes (never a
  file system root or a bucket)."""
  missing = []
  while not _is_root(path) and not paths.exists(path):
    missing.append(path)
    path = os.path.dirname(path)
  return missing


def _is_root(path: str) -> bool:
  if paths.is_remote(path):
    return "/" not in path.split("://", 1)[1].strip("/")  # gs://bucket
  return os.path.dirname(path) == path


def _removed(path: str) -> bool:
  """Remove an uploaded file; False (logged) when the store refuses, as after a lost
  connection, so the rest are still tried."""
  try:
    paths.remove(path)
    return True
  except Exception as e:  # noqa: BLE001 (any storage error: reported by the caller)
    logging.debug("could not remove %s: %s", path, faults.first_line(e))
    return False


def _remove_if_empty(directory: str) -> None:
  """Remove a directory the export made, unless someone else wrote into it meanwhile."""
  if not paths.is_remote(directory):
    with contextlib.suppress(OSError):
      os.rmdir(directory)  # local: not remote (above); atomic, only ever an empty dir
    return
  try:  # an empty remote "directory" is a marker object
    paths.of(directory).rmdir()
  except Exception as e:  # noqa: BLE001 (not empty, gone, or unreachable: leave it)
    logging.debug("kept %s: %s", directory, faults.first_line(e))


def _staging_full_message(out: str, local: str, needed_bytes: int | None) -> str:
  """A full disk under a remote `out`: the local staging disk, and how to choose another."""
  return (faults.disk_full_message(local, needed_bytes, what="the staged export") +
          f" (an export to {out} is staged in the system temp dir before its upload: "
          "set TMPDIR to a disk with room)")


def _check_staging_room(out: str, needed_bytes: int | None) -> None:
  """Before reading a checkpoint a remote export could not stage: fail at once."""
  staging = tempfile.gettempdir()
  free = faults.free_bytes(staging)
  logging.info("staging the export to %s in %s%s, then uploading it", out, staging,
               f" (about {needed_bytes / 2**20:.1f} MiB)" if needed_bytes else "")
  if needed_bytes and free is not None and free < needed_bytes:
    raise faults.DiskFull(_staging_full_message(out, staging, needed_bytes))


@contextlib.contextmanager
def _removed_on_failure(out: str, what: str, needed_bytes: int | None = None):
  """Yield the Outputs of `out`, whose files go to outputs.local: `out` itself (made
  here) when local, else a staging dir uploaded to `out` when the block ends. On any
  failure remove what was written or uploaded, then re-raise: a full disk as
  faults.DiskFull (one line: the path and the bytes needed), non-finite weights as
  faults.NonFinite naming `what`."""
  remote = paths.is_remote(out)
  if remote:
    _check_staging_room(out, needed_bytes)
  outputs = Outputs(out)
  try:
    with paths.staged(out) as local:
      outputs.local = local
      yield outputs
      if remote:  # the upload starts as the block ends
        outputs.uploaded = sorted(os.listdir(local))  # local: paths.staged's dir
        started, size = time.monotonic(), paths.local_tree_bytes(local)
        logging.info("uploading %d files (%.1f MB) to %s", len(outputs.uploaded), size / 1e6, out)
    if remote:
      logging.info("uploaded %s in %.1f s", out, time.monotonic() - started)
  except BaseException as e:
    outputs.remove()
    logging.debug("export of %s failed; removed %d files it wrote%s", what, len(outputs.files),
                  f" and {len(outputs.uploaded)} it uploaded" if outputs.uploaded else "",
                  exc_info=True)
    if isinstance(e, NonFiniteWeights):
      raise NonFiniteWeights(f"{what} not exported: {e} (the first such tensor; pass "
                             "--allow_nonfinite to export it anyway)") from e
    if isinstance(e, Exception) and not isinstance(e, faults.RunStopped) and faults.is_disk_full(e):
      if remote:
        staging = outputs.local if outputs.local != out else tempfile.gettempdir()
        raise faults.DiskFull(_staging_full_message(
            out, faults.failed_path(e) or staging, needed_bytes)) from e
      raise faults.DiskFull(faults.disk_full_message(out, needed_bytes)) from e
    raise


@faults.exit_cleanly
def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True,
                 help="workdir, its checkpoints/ directory, or one step directory")
  p.add_argument("--out", required=True, help="new directory for the transformers model")
  p.add_argument("--step", type=int, default=None, help="default: the newest committed step")
  p.add_argument("--max_shard_size", default="2GB", help="bytes per safetensors file")
  p.add_argument("--dtype", default=None, choices=DTYPES,
                 help="weights dtype; default: the checkpoint's param dtype (float32 for "
                      "--adapter_only)")
  p.add_argument("--allow_no_tokenizer", action="store_true",
                 help="export even when the workdir has no tokenizer/ files")
  p.add_argument("--adapter_only", action="store_true",
                 help="LoRA runs: write a PEFT adapter directory (adapter_config.json, "
                      "adapter_model.safetensors) instead of merged weights")
  p.add_argument("--allow_nonfinite", action="store_true",
                 help="export even weights holding NaN or inf (refused by default)")
  args = p.parse_args(argv)
  progress.quiet_library_logs()
  export_hf(args.checkpoint, args.out, args.step, args.max_shard_size, args.dtype,
            args.allow_no_tokenizer, args.adapter_only, args.allow_nonfinite)


if __name__ == "__main__":
  main()
