"""Orbax checkpoints of a run: save, find the newest committed one, restore onto any mesh.

A run's workdir holds:
  <workdir>/checkpoints/<step>/params   the model params (Orbax PyTree)
  <workdir>/checkpoints/<step>/opt      optimizer state, step and rng (training only)
  <workdir>/checkpoints/<step>/meta     JSON: model shape, full config, data position
  <workdir>/tokenizer/                  the tokenizer files the run used

`import_hf` writes the same layout with step 0 and no `opt`, so an imported
model and a training run are read by the same code. Orbax writes each step to
a temporary directory and renames it only once every item is written (on gs://, which
has no rename, it writes a commit_success.txt last instead), so an interrupted write is
never listed as a step and never restored. The workdir may be local or gs://: every path
goes through mind_jax.paths, and Orbax reaches GCS through the same epath.

A committed step can still be damaged later (a truncated or deleted file on a shared
disk, a lost metadata file). Reading one raises `CheckpointDamaged`: one line naming the
step, the item, the array or file and the storage error (OUT_OF_RANGE, DATA_LOSS...),
the full trace at DEBUG. Resuming a run (`restore_with_fallback`) moves such a step
aside to `<step>.corrupt` (never deleted; Orbax lists, rotates and cleans only plain
step names) and resumes from the next newest step.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from mind_jax import paths
# The errors live in checkpoint_errors: callers catch them from there.
from mind_jax.checkpoint_errors import (CheckpointDamaged, CheckpointError,
                                        CheckpointMismatchError, NoCheckpoint,
                                        NoReadableCheckpoint, as_damage, orbax_quiet)

CHECKPOINTS = "checkpoints"
TOKENIZER = "tokenizer"
# Arrays are stored in chunks of at most this many bytes, so that a reader of one
# array (the HF export) decodes it chunk by chunk instead of holding a whole-array
# chunk and its decoded copy at once: a 545 MB embedding otherwise costs ~1.2 GB.
CHUNK_BYTES = 64 * 2**20
# A damaged step is renamed to <step> + this suffix: not a step name to Orbax.
CORRUPT_SUFFIX = ".corrupt"
ARRAY_ITEM_METADATA = "_METADATA"  # Orbax's tree metadata file of an array item
META_FILE = "metadata"             # the JSON file of the meta item


def checkpoints_dir(workdir: str) -> str:
  return os.path.join(paths.absolute(workdir), CHECKPOINTS)


def tokenizer_dir(workdir: str) -> str:
  return os.path.join(paths.absolute(workdir), TOKENIZER)


def step_dir(workdir: str, step: int) -> str:
  return os.path.join(checkpoints_dir(workdir), str(step))


def resolve_workdir(path: str) -> str:
  """Accept a workdir, its checkpoints/ dir, or one step dir; return the workdir."""
  path = paths.absolute(path)
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


def committed_steps(workdir: str) -> list[int]:
  """The workdir's committed steps, newest first (none: [])."""
  if not paths.isdir(checkpoints_dir(workdir)):
    return []
  with orbax_quiet(), manager(workdir, read_only=True) as mngr:
    return sorted(mngr.all_steps(), reverse=True)


def latest_step(workdir: str) -> int | None:
  """Newest committed step in the workdir, or None."""
  steps = committed_steps(workdir)
  return steps[0] if steps else None


def _steps_to_read(workdir: str, step: int | None) -> list[int]:
  """[step] when stated (and committed), else every committed step, newest first."""
  steps = committed_steps(workdir)
  if not steps:
    raise NoCheckpoint(f"no committed checkpoint under {checkpoints_dir(workdir)}")
  if step is None:
    return steps
  if step not in steps:
    raise NoCheckpoint(f"no committed checkpoint step {step} under {checkpoints_dir(workdir)} "
                       f"(committed: {', '.join(map(str, sorted(steps)))})")
  return [step]


def read_meta(workdir: str, step: int | None = None, fallback: bool = False
              ) -> tuple[int, dict]:
  """(step, meta) of `step` or the newest committed step.

  fallback: an unreadable newest meta is skipped with a warning (the step is not moved:
  restore_with_fallback decides that) and the next newest readable one is returned, so
  a resume can read the model shape before restoring."""
  workdir = resolve_workdir(workdir)
  steps = _steps_to_read(workdir, step)
  damages = []
  for s in steps:
    try:
      with orbax_quiet(), manager(workdir, read_only=True) as mngr:
        return s, _read_meta_item(mngr, workdir, s)
    except CheckpointDamaged as e:
      if not fallback or len(steps) == 1:
        raise
      damages.append(e)
      logging.warning("%s; reading the meta of an older step", e)
  raise NoReadableCheckpoint(_none_readable(workdir, damages, moved=False))


def _read_meta_item(mngr: ocp.CheckpointManager, workdir: str, step: int) -> dict:
  where = os.path.join(step_dir(workdir, step), "meta", META_FILE)
  with orbax_quiet(), as_damage(checkpoints_dir(workdir), step, "meta", f"file {where}"):
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  if not isinstance(meta, dict):
    raise CheckpointDamaged(checkpoints_dir(workdir), step, "meta", f"file {where}",
                            f"holds a {type(meta).__name__}, not a JSON object")
  meta = dict(meta)
  model = meta.get("model")
  if isinstance(model, dict) and "scan_layers" not in model:
    # Written before model.scan_layers existed: its layers are unrolled (layers_0, ...), and
    # it restores as such.
    meta["model"] = dict(model, scan_layers=False)
  return meta


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


def _item_metadata(workdir: str, step: int, name: str) -> Any:
  """The saved tree metadata of one array item. An item that is not there is a mismatch
  (a checkpoint without `opt`); one whose directory is there but whose metadata file is
  gone or unreadable is damage."""
  item_dir = os.path.join(step_dir(workdir, step), name)
  if not paths.isdir(item_dir):
    raise CheckpointMismatchError(f"checkpoint {step_dir(workdir, step)} has no {name!r} item")
  where = f"file {os.path.join(item_dir, ARRAY_ITEM_METADATA)}"
  handler = ocp.StandardCheckpointHandler()
  try:
    with orbax_quiet(), as_damage(checkpoints_dir(workdir), step, name, where):
      return handler.metadata(epath.Path(item_dir))
  finally:
    handler.close()


def _restore_step(workdir: str, step: int, abstract: dict[str, Any]) -> dict:
  """{item: tree, "meta": dict} of one step; CheckpointDamaged if it cannot be read."""
  with orbax_quiet(), manager(workdir, read_only=True) as mngr:
    meta = _read_meta_item(mngr, workdir, step)
    for name, tree in abstract.items():
      check_shapes(_item_metadata(workdir, step, name), tree,
                   f"{step_dir(workdir, step)} ({name})")
    args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract.items()}
    with as_damage(checkpoints_dir(workdir), step, "/".join(abstract), "arrays"):
      restored = mngr.restore(step, args=ocp.args.Composite(**args))
  return {**{name: restored[name] for name in abstract}, "meta": meta}


def restore(workdir: str, step: int | None, abstract: dict[str, Any]) -> tuple[int, dict]:
  """Restore the named items onto the shardings of `abstract` (ShapeDtypeStructs).

  `abstract` maps item name ("params", "opt") to a tree of jax.ShapeDtypeStruct
  carrying the target sharding, so a checkpoint saved on one mesh loads onto
  any other. Returns (step, {item: tree, "meta": dict}). A damaged step raises
  CheckpointDamaged (one line); there is no fallback: the caller stated this step
  or wants the newest.
  """
  workdir = resolve_workdir(workdir)
  step = _steps_to_read(workdir, step)[0]
  items = _restore_step(workdir, step, abstract)
  logging.info("restored step %d from %s", step, step_dir(workdir, step))
  return step, items


def restore_with_fallback(workdir: str, abstract: dict[str, Any], strict: bool = False
                          ) -> tuple[int, dict]:
  """`restore(workdir, None, abstract)` for resuming a run: a damaged newest step is
  moved aside to <step>.corrupt (one warning line) and the next newest is tried.

  strict: raise CheckpointDamaged instead. A config mismatch (CheckpointMismatchError)
  or an unreadable store (CheckpointUnreadable) is never taken for damage. Every process
  tries the same steps and agrees on each outcome; process 0 moves the step aside.
  Raises NoReadableCheckpoint when every committed step was damaged."""
  workdir = resolve_workdir(workdir)
  steps = _steps_to_read(workdir, None)
  damages = []
  for i, step in enumerate(steps):
    items, damage = _agreed_attempt(lambda: _restore_step(workdir, step, abstract),
                                    workdir, step)
    if damage is None:
      logging.info("restored step %d from %s", step, step_dir(workdir, step))
      return step, items
    if strict:
      raise damage
    damages.append(damage)
    try:
      moved = _move_aside(workdir, step)
    except Exception as e:  # noqa: BLE001 (OSError; on gs:// also gfile's own errors)
      # Left in place, a later save of this step would fail on it.
      raise CheckpointError(f"{damage}; moving it aside failed ({e}): move or delete "
                            f"{step_dir(workdir, step)}, then run the same command") from e
    then = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "no older step left"
    logging.warning("%s; moved it to %s, %s", damage, moved, then)
  raise NoReadableCheckpoint(_none_readable(workdir, damages, moved=True))


def _none_readable(workdir: str, damages: list[CheckpointDamaged], moved: bool) -> str:
  aside = f"; each was moved to <step>{CORRUPT_SUFFIX}" if moved else ""
  return (f"no readable checkpoint under {checkpoints_dir(workdir)}: tried steps "
          f"{', '.join(d.summary() for d in damages)}{aside}")


# ------------------------------------------------------------------ processes agree

OK, DAMAGED, FAILED = 0, 1, 2  # outcome of one process's attempt, worst wins


def _agreed_attempt(attempt: Callable[[], dict], workdir: str, step: int
                    ) -> tuple[dict | None, CheckpointDamaged | None]:
  """(items, None) when every process restored `step`, (None, damage) when any found it
  damaged: each process reads only its own shards, so one may see damage the others
  do not, and all must then move on together."""
  try:
    items, damage = attempt(), None
  except CheckpointDamaged as e:
    items, damage = None, e
  except BaseException:
    with contextlib.suppress(Exception):
      _worst_outcome(FAILED)  # the others stop instead of waiting for this process
    raise
  worst = _worst_outcome(DAMAGED if damage else OK)
  if worst == FAILED:
    raise CheckpointError(f"restoring checkpoint step {step} in {checkpoints_dir(workdir)} "
                          "failed on another process: see its log")
  if worst == DAMAGED and damage is None:
    damage = CheckpointDamaged(checkpoints_dir(workdir), step, "arrays", "read by another process",
                               "damaged (see that process's log)")
  return (None, damage) if worst == DAMAGED else (items, None)


def _worst_outcome(outcome: int) -> int:
  if jax.process_count() == 1:
    return outcome
  return int(np.max(multihost_utils.process_allgather(np.int32(outcome))))


def _move_aside(workdir: str, step: int) -> str:
  """Rename a damaged step to <step>.corrupt (or .corrupt.1, ...): kept for a look,
  out of Orbax's sight. Process 0 renames while the others wait at the barriers, so no
  process reads the step while it moves.

  On gs:// there is no directory rename: the step's objects are copied, then deleted
  (paths.move_tree), so a move cut short leaves both; the step left is then moved again
  (to .corrupt.1) by the next resume."""
  source = step_dir(workdir, step)
  target, n = source + CORRUPT_SUFFIX, 0
  while paths.exists(target):
    n += 1
    target = f"{source}{CORRUPT_SUFFIX}.{n}"
  multihost_utils.sync_global_devices(f"mind_jax.checkpoint: move step {step} aside")
  if jax.process_index() == 0:
    paths.move_tree(source, target)
  multihost_utils.sync_global_devices(f"mind_jax.checkpoint: step {step} moved aside")
  return target


@contextlib.contextmanager
def reading(workdir: str, step: int, item: str = "params", where: str = "arrays"):
  """Reading a checkpoint step by other means (the HF export's partial restore): Orbax's
  own lines kept out of the log, its errors made one line, as restore does."""
  with orbax_quiet(), as_damage(checkpoints_dir(resolve_workdir(workdir)), step, item, where):
    yield
