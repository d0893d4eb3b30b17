"""One override syntax for every CLI: --config.a.b=value, checked the same way everywhere
(mind_jax/config.py). Each CLI runs in-process and stops at its arguments: nothing trains."""
import os

import pytest
from absl import flags
from ml_collections import config_flags

from mind_jax import config as config_lib, faults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG = os.path.join(REPO, "configs", "debug_cpu.py")
DATA = os.path.join(REPO, "configs", "data", "demo.py")
EXPERIMENT = os.path.join(REPO, "configs", "testbed", "experiment.py")
SWEEP = os.path.join(REPO, "configs", "testbed", "sweep.py")


def _cli(name):
  """(main, the arguments before the overrides) of each CLI that reads a config."""
  if name == "train":  # also perf: absl's CLIs, whose flags parser runs the checks
    return config_lib.parse_absl_flags, ["train", "--config", DEBUG, "--workdir", "/nonexistent"]
  if name == "build":
    from mind_jax.data import build
    return build.main, ["--config", DATA, "--out", "/nonexistent"]
  if name == "experiment":
    from mind_jax.eval import experiment
    return experiment.main, ["--config", EXPERIMENT, "--out", "/nonexistent"]
  if name == "sweep":
    from mind_jax.eval import sweep
    return sweep.main, ["--config", SWEEP, "--out", "/nonexistent"]
  from mind_jax import demo  # overrides change configs/mind_demo.py
  return demo.main, ["--workdir", "/nonexistent"]


# (CLI, a misspelt field, the field meant)
TYPOS = [("train", "train.stepz", "train.steps"), ("demo", "train.stepz", "train.steps"),
         ("build", "question.rg_size", "questions.rg_size"),
         ("experiment", "joint_stepz", "joint_steps"), ("sweep", "betaz", "betas")]


def _fails(caplog, main, argv) -> str:
  """The one line a CLI ends with, on bad input (exit code 2)."""
  caplog.clear()
  with pytest.raises(SystemExit) as stop:
    main(argv)
  assert stop.value.code == faults.EXIT_BAD_INPUT
  (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
  return record.getMessage()


@pytest.mark.parametrize("cli,typo,meant", TYPOS, ids=[t[0] for t in TYPOS])
def test_every_cli_names_an_unknown_field_and_the_closest(caplog, cli, typo, meant):
  main, argv = _cli(cli)
  assert _fails(caplog, main, [*argv, f"--config.{typo}=3"]) == (
      f"unknown field --config.{typo}; did you mean --config.{meant}?")


@pytest.mark.parametrize("cli,field", [("train", "train.steps"), ("build", "questions.rg_size")])
def test_a_bad_value_names_the_type_expected(caplog, cli, field):
  main, argv = _cli(cli)
  assert _fails(caplog, main, [*argv, f"--config.{field}=many"]) == (
      f"--config.{field}=many: expected an integer")


@pytest.mark.parametrize("cli", ["train", "build", "experiment", "sweep", "demo"])
def test_the_old_set_syntax_is_refused_with_the_new_one(caplog, cli):
  main, argv = _cli(cli)
  assert _fails(caplog, main, [*argv, "--set", "a.b=1"]) == "--set is gone: write --config.a.b=1"
  assert _fails(caplog, main, [*argv, "--set=a.b=1"]) == "--set is gone: write --config.a.b=1"


def test_split_overrides_takes_absl_forms():
  overrides, rest = config_lib.split_overrides(
      ["--config", "c.py", "--config.a.b=1", "--config.c", "2", "--config.d", "--out", "o",
       "--config.e"])
  assert overrides == ["a.b=1", "c=2", "d", "e"]
  assert rest == ["--config", "c.py", "--out", "o"]


def test_sections_and_bare_non_booleans_are_refused():
  with pytest.raises(faults.BadInput, match="--config.train is a section"):
    config_lib.load_config(DEBUG, ["train=1"])
  with pytest.raises(faults.BadInput, match=r"--config.train.steps=: expected an integer"):
    config_lib.load_config(DEBUG, ["train.steps"])


def test_values_parse_as_ml_collections_parses_them():
  """train and perf keep ml-collections' config_flags, which applies their overrides after
  the checks: both read every kind of field alike."""
  argv = ["train", "--config", DEBUG, "--config.train.steps=0x10", "--config.optim.learning_rate=1e-3",
          "--config.train.strict_resume", "--config.train.init_from=gs://b/run",
          "--config.mind.ta_warmup_steps", "7", "--config.lora.target_modules=('q_proj',)",
          "--config.train.checkpoint_every=5", "--config.model.qkv_bias=True"]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv,
                                           lock_config=True)
  values(argv)
  ours = config_lib.load_config(DEBUG, config_lib.split_overrides(argv[1:])[0])
  assert ours.to_dict() == holder.value.to_dict()
  assert (ours.train.steps, ours.train.strict_resume, ours.lora.target_modules) == (
      16, True, ("q_proj",))


def test_demo_loads_its_train_config_once_with_the_overrides(monkeypatch):
  from mind_jax import cpu_backend, demo
  loaded, ran, real_load = [], {}, demo.load_config

  def load_config(path, overrides=()):
    loaded.append(path)
    return real_load(path, overrides)

  monkeypatch.setattr(demo, "load_config", load_config)
  monkeypatch.setattr(cpu_backend, "prepare", lambda train: None)  # not in this process
  monkeypatch.setattr(demo, "run", lambda *args: ran.update(config=args[-1]))
  demo.main(["--workdir", "/nonexistent", "--config.train.steps=3"])
  assert loaded == [demo.TRAIN_CONFIG] and ran["config"].train.steps == 3
