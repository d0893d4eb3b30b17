"""Orbax checkpoints of a run: save, find the newest committed one, restore onto any mesh.

A run's workdir holds:
  <workdir>/checkpoints/<step>/params   the model params (Orbax PyTree)
  <workdir>/checkpoints/<step>/opt      optimizer state, step and rng (training only)
  <workdir>/checkpoints/<step>/meta     JSON: model shape, full config, data position
  <workdir>/tokenizer/                  the tokenizer files the run used

`import_hf` writes the same layout with step 0 and no `opt`, so an imported
model and a training run are read by the same code. Orbax writes each step to
a temporary directory and renames it only once every item is written, so an
interrupted write is never listed as a step and never restored.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

CHECKPOINTS = "checkpoints"
TOKENIZER = "tokenizer"
# Arrays are stored in chunks of at most this many bytes, so that a reader of one
# array (the HF export) decodes it chunk by chunk instead of holding a whole-array
# chunk and its decoded copy at once: a 545 MB embedding otherwise costs ~1.2 GB.
CHUNK_BYTES = 64 * 2**20


class CheckpointMismatchError(ValueError):
  """A checkpoint whose arrays do not have the shapes the config asks for."""


def checkpoints_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


def tokenizer_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), TOKENIZER)


def resolve_workdir(path: str) -> str:
  """Accept a workdir, its checkpoints/ dir, or one step dir; return the workdir."""
  path = os.path.abspath(path)
  if os.path.basename(path).isdigit() and os.path.basename(os.path.dirname(path)) == CHECKPOINTS:
    return os.path.dirname(os.path.dirname(path))
  if os.path.basename(path) == CHECKPOINTS:
    return os.path.dirname(path)
  return path


def manager(workdir: str, keep: int = 3, async_save: bool = True,
            read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
      create=not read_only, read_only=read_only,
      enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only)
  handlers = dict(params=ocp.StandardCheckpointHandler(), opt=ocp.StandardCheckpointHandler(),
                  meta=ocp.JsonCheckpointHandler())
  return ocp.CheckpointManager(checkpoints_dir(workdir), options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, step: int, params: Any, meta: dict,
         opt: Any | None = None, force: bool = True) -> None:
  items = dict(params=_chunked_save(params), meta=ocp.args.JsonSave(meta))
  if opt is not None:
    items["opt"] = _chunked_save(opt)
  mngr.save(step, args=ocp.args.Composite(**items), force=force)


def _chunked_save(tree: Any) -> ocp.args.StandardSave:
  save_args = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES), tree)
  return ocp.args.StandardSave(tree, save_args=save_args)


def latest_step(workdir: str) -> int | None:
  """Newest committed step in the workdir, or None."""
  if not os.path.isdir(checkpoints_dir(workdir)):
    return None
  with manager(workdir, read_only=True) as mngr:
    return mngr.latest_step()


def read_meta(workdir: str, step: int | None = None) -> tuple[int, dict]:
  workdir = resolve_workdir(workdir)
  with manager(workdir, read_only=True) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no committed checkpoint under {checkpoints_dir(workdir)}")
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  return step, dict(meta)


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _flat_shapes(tree: Any) -> dict[str, tuple]:
  # Saved metadata turns NamedTuples (optax states) into dicts: compare by key names.
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in flat
          if hasattr(leaf, "shape")}


def check_shapes(saved: Any, target: Any, where: str) -> None:
  """Fail listing every array whose saved shape differs from what the config expects."""
  saved_shapes, target_shapes = _flat_shapes(saved), _flat_shapes(target)
  problems = []
  for key in sorted(set(saved_shapes) | set(target_shapes)):
    s, t = saved_shapes.get(key), target_shapes.get(key)
    if s != t:
      problems.append(f"  {key}: checkpoint {s if s is not None else 'missing'}, "
                      f"config expects {t if t is not None else 'missing'}")
  if problems:
    raise CheckpointMismatchError(
        f"checkpoint {where} does not match the model config ({len(problems)} arrays):\n"
        + "\n".join(problems))


def restore(workdir: str, step: int | None, abstract: dict[str, Any]) -> tuple[int, dict]:
  """Restore the named items onto the shardings of `abstract` (ShapeDtypeStructs).

  `abstract` maps item name ("params", "opt") to a tree of jax.ShapeDtypeStruct
  carrying the target sharding, so a checkpoint saved on one mesh loads onto
  any other. Returns (step, {item: tree, "meta": dict}).
  """
  workdir = resolve_workdir(workdir)
  with manager(workdir, read_only=True) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no committed checkpoint under {checkpoints_dir(workdir)}")
    saved = mngr.item_metadata(step)
    where = os.path.join(checkpoints_dir(workdir), str(step))
    for name, tree in abstract.items():
      if saved.get(name) is None:
        raise CheckpointMismatchError(f"checkpoint {where} has no {name!r} item")
      check_shapes(saved[name], tree, f"{where} ({name})")
    args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract.items()}
    args["meta"] = ocp.args.JsonRestore()
    restored = mngr.restore(step, args=ocp.args.Composite(**args))
  logging.info("restored step %d from %s", step, where)
  return step, {name: restored[name] for name in list(abstract) + ["meta"]}
