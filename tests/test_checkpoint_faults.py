"""Damaged checkpoints and failed exports: a resume falls back past a damaged step (moved
aside to <step>.corrupt, one warning line), every read of one fails in one readable line,
a config mismatch stays a mismatch, and the HF export refuses non-finite weights and
leaves nothing behind when it fails (a full disk included).

One small workdir (steps 2 and 4, written in-process with checkpoint.save, every param
of step s offset by s so the steps differ) is copied per case."""
import dataclasses
import glob
import logging
import os
import re
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from mind_jax import (checkpoint, checkpoint_errors, export_hf, faults, sharding,
                      state as state_lib)
from mind_jax.config import default_config
from mind_jax.eval import run as eval_run
from mind_jax.models.decoder import DecoderConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD, NEW = 2, 4  # the committed steps of the source workdir
TMPFS_BYTES = 64 * 2**10  # far less than the tiny model's ~0.5 MB export
SHORT = 5  # lines: a readable error is shorter than this


@dataclasses.dataclass
class Source:
  workdir: str
  target: dict  # restore target: {"params", "opt"} ShapeDtypeStructs with shardings
  cfg: DecoderConfig
  params: dict  # step -> host params saved at that step


def _target(cfg: DecoderConfig, hidden_size: int | None = None):
  """(state initialiser, restore target) of the default tiny model on one device."""
  if hidden_size is not None:
    cfg = dataclasses.replace(cfg, hidden_size=hidden_size)
  config = default_config()
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  optimizer = state_lib.make_optimizer(config.optim, 10)
  abstract, shardings = state_lib.abstract_state_and_shardings(cfg, optimizer, mesh,
                                                               config.mesh.rules)
  target = sharding.with_shardings(abstract, shardings)
  init = lambda: state_lib.init_state(cfg, optimizer, 0, shardings)
  return init, {"params": target.params,
                "opt": dict(opt_state=target.opt_state, step=target.step, rng=target.rng)}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("faults") / "run")
  cfg = DecoderConfig.from_config(default_config().model)
  init, target = _target(cfg)
  state = init()
  mngr = checkpoint.manager(workdir, keep=5, async_save=False)
  saved = {}
  for step in (OLD, NEW):
    params = jax.tree.map(lambda p, s=step: p + s, state.params)
    opt = dict(opt_state=state.opt_state, step=state.step + step, rng=state.rng)
    checkpoint.save(mngr, step, params, dict(model=cfg.to_dict(), data_position=step), opt=opt)
    saved[step] = jax.device_get(params)
  mngr.close()
  return Source(workdir, target, cfg, saved)


def _copy(source: Source, tmp_path) -> str:
  workdir = str(tmp_path / "run")
  shutil.copytree(source.workdir, workdir)
  return workdir


# ------------------------------------------------------------------ damage


def _largest_data_file(step_dir: str) -> str:
  files = glob.glob(os.path.join(step_dir, "params", "**", "d", "*"), recursive=True)
  return max(files, key=os.path.getsize)


def truncate_array_file(step_dir):
  path = _largest_data_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


def remove_item_metadata(step_dir):
  os.remove(os.path.join(step_dir, "params", checkpoint.ARRAY_ITEM_METADATA))


def delete_data_file(step_dir):
  os.remove(_largest_data_file(step_dir))


def corrupt_meta(step_dir):
  with open(os.path.join(step_dir, "meta", checkpoint.META_FILE), "w") as f:
    f.write('{"model": ')


# Each damage and what its one warning line names: the array or file, and the cause.
DAMAGES = [(truncate_array_file, ("params array ", "OUT_OF_RANGE")),
           (remove_item_metadata, ("params file ", "_METADATA", "missing")),
           (delete_data_file, ("params array ", "Truncated Zstd-compressed stream")),
           (corrupt_meta, ("meta file ", "not valid JSON"))]


def _warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("damage, names", DAMAGES, ids=[d.__name__ for d, _ in DAMAGES])
def test_resume_falls_back_past_a_damaged_step(source, tmp_path, caplog, damage, names):
  workdir = _copy(source, tmp_path)
  damage(checkpoint.step_dir(workdir, NEW))
  with caplog.at_level(logging.INFO):
    step, items = checkpoint.restore_with_fallback(workdir, source.target)
  assert step == OLD and items["meta"]["data_position"] == OLD
  for got, want in zip(jax.tree.leaves(jax.device_get(items["params"])),
                       jax.tree.leaves(source.params[OLD]), strict=True):
    np.testing.assert_array_equal(got, want)
  assert int(items["opt"]["step"]) == OLD
  warnings = _warnings(caplog)
  assert len(warnings) == 1, warnings
  assert f"step {NEW} " in warnings[0] and f"{NEW}.corrupt" in warnings[0]
  assert all(name in warnings[0] for name in names), warnings[0]
  assert os.path.isdir(checkpoint.step_dir(workdir, NEW) + ".corrupt")
  assert checkpoint.committed_steps(workdir) == [OLD]


def test_moved_aside_steps_stay_out_of_orbax_s_way(source, tmp_path):
  """<step>.corrupt (and .corrupt.1 when that is taken) is neither listed, nor rotated
  away by max_to_keep, nor cleaned as a temporary dir; saving the same step again works."""
  workdir = _copy(source, tmp_path)
  earlier = checkpoint.step_dir(workdir, NEW) + ".corrupt"
  os.makedirs(earlier)
  with open(os.path.join(earlier, "kept"), "w") as f:
    f.write("an earlier damaged step 4")
  truncate_array_file(checkpoint.step_dir(workdir, NEW))
  _, items = checkpoint.restore_with_fallback(workdir, source.target)
  moved = earlier + ".1"
  assert os.path.isdir(os.path.join(moved, "params"))
  assert checkpoint.latest_step(workdir) == OLD

  tmp = os.path.join(checkpoint.checkpoints_dir(workdir), f"{NEW + 4}.orbax-checkpoint-tmp-1")
  os.makedirs(tmp)
  mngr = checkpoint.manager(workdir, keep=1, async_save=False)  # cleans tmp dirs
  for step in (NEW, NEW + 2):
    checkpoint.save(mngr, step, items["params"], dict(items["meta"], data_position=step),
                    opt=items["opt"])
  mngr.close()
  assert checkpoint.committed_steps(workdir) == [NEW + 2]
  assert not os.path.exists(tmp)
  assert os.path.isfile(os.path.join(earlier, "kept")) and os.path.isdir(moved)


def test_strict_raises_and_moves_nothing(source, tmp_path):
  workdir = _copy(source, tmp_path)
  truncate_array_file(checkpoint.step_dir(workdir, NEW))
  with pytest.raises(checkpoint_errors.CheckpointDamaged, match=f"step {NEW} .*OUT_OF_RANGE"):
    checkpoint.restore_with_fallback(workdir, source.target, strict=True)
  assert checkpoint.committed_steps(workdir) == [NEW, OLD]


def test_no_readable_step_left(source, tmp_path):
  workdir = _copy(source, tmp_path)
  truncate_array_file(checkpoint.step_dir(workdir, NEW))
  corrupt_meta(checkpoint.step_dir(workdir, OLD))
  with pytest.raises(checkpoint_errors.NoReadableCheckpoint) as error:
    checkpoint.restore_with_fallback(workdir, source.target)
  message = str(error.value)
  assert len(message.splitlines()) == 1 and error.value.exit_code == faults.EXIT_BAD_INPUT
  assert checkpoint.checkpoints_dir(workdir) in message
  assert f"{NEW} (params array" in message and f"{OLD} (meta file" in message
  assert checkpoint.committed_steps(workdir) == []
  with pytest.raises(checkpoint_errors.NoCheckpoint, match="no committed checkpoint"):
    checkpoint.restore_with_fallback(workdir, source.target)


def test_a_config_mismatch_is_not_damage(source, tmp_path):
  workdir = _copy(source, tmp_path)
  _, narrower = _target(source.cfg, hidden_size=32)
  with pytest.raises(checkpoint_errors.CheckpointMismatchError, match="embed_tokens: checkpoint"):
    checkpoint.restore_with_fallback(workdir, narrower)
  shutil.rmtree(os.path.join(checkpoint.step_dir(workdir, NEW), "opt"))  # a params-only step
  with pytest.raises(checkpoint_errors.CheckpointMismatchError, match="has no 'opt' item"):
    checkpoint.restore_with_fallback(workdir, source.target)
  assert checkpoint.committed_steps(workdir) == [NEW, OLD]


def test_processes_agree_on_each_step(source, tmp_path, monkeypatch, caplog):
  """Each process reads only its shards: damage another process saw moves the step aside
  here too, and another process's failure stops this one (the gather is faked)."""
  workdir = _copy(source, tmp_path)  # nothing damaged here
  others = iter([checkpoint.DAMAGED, checkpoint.OK])
  monkeypatch.setattr(checkpoint, "_worst_outcome", lambda mine: max(mine, next(others)))
  step, _ = checkpoint.restore_with_fallback(workdir, source.target)
  assert step == OLD and checkpoint.committed_steps(workdir) == [OLD]
  assert "another process" in _warnings(caplog)[0]
  monkeypatch.setattr(checkpoint, "_worst_outcome", lambda mine: checkpoint.FAILED)
  with pytest.raises(checkpoint_errors.CheckpointError, match="failed on another process"):
    checkpoint.restore_with_fallback(workdir, source.target)
  assert checkpoint.committed_steps(workdir) == [OLD]


def test_read_meta_falls_back_without_moving(source, tmp_path, caplog):
  workdir = _copy(source, tmp_path)
  corrupt_meta(checkpoint.step_dir(workdir, NEW))
  with pytest.raises(checkpoint_errors.CheckpointDamaged, match="not valid JSON"):
    checkpoint.read_meta(workdir)
  step, meta = checkpoint.read_meta(workdir, fallback=True)
  assert (step, meta["data_position"]) == (OLD, OLD)
  assert len(_warnings(caplog)) == 1
  assert checkpoint.committed_steps(workdir) == [NEW, OLD]


def test_plain_restore_error_is_one_readable_line(source, tmp_path):
  """What eval, export and init_from see: the step, item, array and status, no fallback."""
  workdir = _copy(source, tmp_path)
  truncate_array_file(checkpoint.step_dir(workdir, NEW))
  with pytest.raises(checkpoint_errors.CheckpointDamaged) as error:
    checkpoint.restore(workdir, None, {"params": source.target["params"]})
  message = str(error.value)
  assert len(message.splitlines()) < SHORT, message
  # Which array's read fails first varies: any of them, named.
  assert f"step {NEW} " in message
  assert re.search(r"params array (embed_tokens|layers|norm|lm_head)", message), message
  assert "OUT_OF_RANGE" in message and "tensorstore_spec" not in message
  assert checkpoint.committed_steps(workdir) == [NEW, OLD]  # nothing moved


def test_leftovers_of_a_failed_read_go_to_debug(source, tmp_path, monkeypatch, caplog):
  """Tensorstore's threads report a failed read's other arrays through sys.unraisablehook,
  often after the read returned (so the CLI test above cannot count on seeing them): the
  hook installed at the first failed read takes those, and passes anything else on."""
  passed_on = []
  monkeypatch.setattr(sys, "unraisablehook", passed_on.append)
  workdir = _copy(source, tmp_path)
  truncate_array_file(checkpoint.step_dir(workdir, NEW))
  with pytest.raises(checkpoint_errors.CheckpointDamaged):
    checkpoint.restore(workdir, None, {"params": source.target["params"]})
  leftovers = [RuntimeError("Event loop is closed"),
               Exception("Encountered error while reading array index: (slice(0, 64, 1),)")]
  other = types.SimpleNamespace(exc_value=ValueError("not a leftover"))
  with caplog.at_level(logging.DEBUG):
    for exc in leftovers:
      sys.unraisablehook(types.SimpleNamespace(exc_value=exc))
    sys.unraisablehook(other)
  # An earlier test's reads may still report late, before the hook is in place: those are
  # tensorstore's own UnraisableHookArgs; only what this test sent is judged here.
  sent_here = [u for u in passed_on if isinstance(u, types.SimpleNamespace)]
  assert sent_here == [other]
  debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
  assert sum("Event loop is closed" in m for m in debug) == 1


def test_export_cli_of_a_damaged_step_prints_one_line(source, tmp_path):
  """Through the CLI: exit 2, one ERROR line, none of Orbax's or asyncio's tracebacks
  (they come late, from tensorstore's threads), and no partial export left."""
  workdir = _copy(source, tmp_path)
  delete_data_file(checkpoint.step_dir(workdir, NEW))
  out = str(tmp_path / "export")
  result = subprocess.run(
      [sys.executable, "-m", "mind_jax.export_hf", "--checkpoint", workdir, "--out", out,
       "--allow_no_tokenizer"], capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == faults.EXIT_BAD_INPUT, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if "is damaged" in line]
  assert len(errors) == 1 and "Truncated Zstd" in errors[0], result.stderr[-3000:]
  for noise in ("Traceback", "Event loop is closed", "Encountered error"):
    assert noise not in result.stderr, result.stderr[-3000:]
  assert not os.path.exists(out)


# ------------------------------------------------------------------ export


def _nan_step(source: Source, workdir: str) -> int:
  """A step NEW + 2 whose layer 1 up_proj kernel holds one NaN: restored, edited, saved."""
  step = NEW + 2
  _, items = checkpoint.restore(workdir, NEW, {"params": source.target["params"]})
  params = jax.tree.map(np.array, jax.device_get(items["params"]))  # writable copies
  params["layers"]["mlp"]["up_proj"]["kernel"][1, 0, 0] = np.nan
  with checkpoint.manager(workdir, keep=5, async_save=False) as mngr:
    checkpoint.save(mngr, step, params, dict(items["meta"], data_position=step))
  return step


def test_export_refuses_nan_weights_unless_allowed(source, tmp_path):
  workdir = _copy(source, tmp_path)
  step = _nan_step(source, workdir)
  out = str(tmp_path / "export")
  with pytest.raises(faults.NonFinite) as error:
    export_hf.export_hf(workdir, out, allow_no_tokenizer=True)
  message = str(error.value)
  assert error.value.exit_code == faults.EXIT_NONFINITE and len(message.splitlines()) == 1
  assert f"step {step} " in message and "model.layers.1.mlp.up_proj.weight holds NaN" in message
  assert not os.path.exists(out)
  export_hf.export_hf(workdir, out, allow_no_tokenizer=True, allow_nonfinite=True)
  weights = load_file(os.path.join(out, "model.safetensors"))
  assert np.isnan(weights["model.layers.1.mlp.up_proj.weight"]).sum() == 1


def test_failed_export_removes_what_it_wrote(source, tmp_path, monkeypatch):
  workdir = _copy(source, tmp_path)
  out = tmp_path / "export"
  write_tensor, calls = export_hf._write_tensor, []

  def fails_after_the_first_tensor(*args, **kwargs):
    if calls:
      raise RuntimeError("simulated failure mid-write")
    calls.append(1)
    return write_tensor(*args, **kwargs)

  monkeypatch.setattr(export_hf, "_write_tensor", fails_after_the_first_tensor)
  with pytest.raises(RuntimeError, match="simulated"):
    export_hf.export_hf(workdir, str(out), allow_no_tokenizer=True)
  assert calls and not out.exists()  # it failed mid-write, then removed config, tmp, dir
  out.mkdir()  # an empty dir it did not make stays
  with pytest.raises(RuntimeError, match="simulated"):
    export_hf.export_hf(workdir, str(out), allow_no_tokenizer=True)
  assert out.is_dir() and not list(out.iterdir())

  monkeypatch.setattr(export_hf, "_write_tensor", write_tensor)
  export_hf.export_hf(workdir, str(out), allow_no_tokenizer=True)  # the retry
  assert {"config.json", "model.safetensors", "generation_config.json"} <= set(os.listdir(out))
  (out / "model.safetensors").unlink()  # not empty: refused, nothing of it removed
  with pytest.raises(export_hf.OutNotEmpty, match="not empty"):
    export_hf.export_hf(workdir, str(out), allow_no_tokenizer=True)
  assert (out / "config.json").is_file()


def _private_mount_prefix() -> list[str] | None:
  """A command prefix that runs in its own mount namespace (root: unshare -m; else a user
  namespace, unshare -rm), or None when this machine allows neither."""
  for prefix in (["unshare", "-m"] if os.geteuid() == 0 else [], ["unshare", "-rm"]):
    if prefix and shutil.which("unshare") and subprocess.run(
        prefix + ["true"], capture_output=True).returncode == 0:
      return prefix
  return None


def test_export_to_a_full_disk_is_one_line_and_leaves_nothing(source, tmp_path):
  prefix = _private_mount_prefix()
  if prefix is None:
    pytest.skip("no private mount namespace (unshare -m / -rm refused): no small tmpfs")
  workdir = _copy(source, tmp_path)
  disk = tmp_path / "disk"
  disk.mkdir()
  script = ('mount -t tmpfs -o size="$1" tmpfs "$2" || exit 99; '
            '"$3" -m mind_jax.export_hf --checkpoint "$4" --out "$2/export" '
            '--allow_no_tokenizer; rc=$?; echo "left: $(ls -A "$2")"; exit $rc')
  result = subprocess.run(
      prefix + ["sh", "-c", script, "sh", str(TMPFS_BYTES), str(disk), sys.executable, workdir],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  if result.returncode == 99:
    pytest.skip(f"mounting a tmpfs failed: {result.stderr.strip()[-300:]}")
  assert result.returncode == faults.EXIT_DISK_FULL, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if "disk full" in line]
  assert len(errors) == 1 and f"{disk}/export" in errors[0] and "MiB" in errors[0], errors
  assert "Traceback" not in result.stderr
  assert result.stdout.strip() == "left:"  # the partial export is gone, dir included


# ------------------------------------------------------------------ eval


def test_eval_reports_a_missing_checkpoint_first(tmp_path, caplog):
  typo = str(tmp_path / "no-such-run")
  with pytest.raises(SystemExit) as exit_:
    eval_run.main(["--checkpoint", typo, "--suites", "id"])
  assert exit_.value.code == faults.EXIT_BAD_INPUT
  errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
  assert errors == [f"no committed checkpoint under {typo}/checkpoints"], errors
