"""The README's paper recipe, end to end, on tiny random HF models with chat templates.

The commands are read from README.md (the block after the "recipe-commands" marker) and run
as they are written, one subprocess each, with tiny paths in the block's variables and, per
command, a few settings appended that make it fast (FAST) or possible with random models
(the judge off). So the README and this test cannot drift apart.
"""
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mind_jax import checkpoint, inference, train
from mind_jax import tokenizer as tokenizer_lib
from mind_jax.config import load_config_file
from mind_jax.eval import suites
from mind_jax.models import decoder
from tests.test_decode import lively
from tests.test_hf_parity import (max_diff_at_tokens, our_logits, padded_batch, save_hf_dir,
                                  tiny_hf_model, torch_logits)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "<!-- recipe-commands"
CHAT_TEMPLATE = ("{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}\n"
                 "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
STEPS = ["mind_jax.import_hf", "mind_jax.import_hf", "mind_jax.data.build", "mind_jax.train",
         "mind_jax.eval.run", "mind_jax.eval.run", "mind_jax.export_hf"]
PERSPECTIVES = ["formal_symbolic", "decomposition"]
# Appended to the README's command of each module.
FAST = {
    "mind_jax.import_hf": [],
    "mind_jax.data.build": [
        "--config.judge.enabled=false",  # random teachers' answers are wrong
        f"--config.perspectives.names={json.dumps(PERSPECTIVES)}",
        "--config.teacher.max_new_tokens=12", "--config.teacher.batch_size=8",
        "--config.resample.easy_keep_rate=1.0",  # judged all correct = all easy: keep them
        "--config.encode.max_len=192", "--config.write.num_shards=1"],
    "mind_jax.train": [
        "--config.train.steps=2", "--config.mind.ta_warmup_steps=1",
        "--config.optim.warmup_steps=1", "--config.train.batch_size=4",
        "--config.train.log_every=1"],
    "mind_jax.eval.run": ["--max_new_tokens", "8", "--batch_size", "4"],
    "mind_jax.export_hf": [],
}
GSM8K_TRAIN = [(f"Tom has {a} apples and buys {b} more. How many apples does Tom have?",
                f"He has {a} + {b} = {a + b} apples.\n#### {a + b}")
               for a, b in [(3, 4), (5, 2), (7, 1), (2, 9), (4, 4), (6, 3), (8, 5), (1, 1)]]
GSM8K_TEST = [("Seven sheep and six swans: how many animals?", "7 + 6 = 13\n#### 13"),
              ("A fox jumps over 2 dogs, then 3 more. How many dogs?", "2 + 3 = 5\n#### 5"),
              ("Tom had 9 apples and ate 4. How many are left?", "9 - 4 = 5\n#### 5"),
              ("What is 6 times 7?", "6 * 7 = 42\n#### 42")]
MATH500_TEST = [("What is $\\frac{1}{2} + \\frac{1}{4}$?", "\\frac{3}{4}"),
                ("Solve $2x = 10$ for $x$.", "5"),
                ("What is $3^2$?", "9")]


def readme_recipe() -> tuple[list[str], list[str]]:
  """(variable names, commands) of the README's recipe block: NAME=value lines, and the
  other lines with backslash continuations joined; comments and blank lines dropped."""
  with open(os.path.join(REPO, "README.md")) as f:
    text = f.read()
  assert text.count(MARKER) == 1, f"README.md needs exactly one {MARKER} marker"
  block = re.search(r"```bash\n(.*?)```", text[text.index(MARKER):], re.DOTALL).group(1)
  names, commands, pending = [], [], ""
  for line in block.splitlines():
    if not pending and (not line.strip() or line.lstrip().startswith("#")):
      continue
    pending += line.rstrip().removesuffix("\\")
    if line.rstrip().endswith("\\"):
      continue
    assignment = re.fullmatch(r"([A-Z][A-Z0-9_]*)=\S+", pending.strip())
    if assignment:
      names.append(assignment.group(1))
    else:
      commands.append(" ".join(pending.split()))
    pending = ""
  return names, commands


def module_of(command: str) -> str:
  words = shlex.split(command)
  assert words[:2] == ["python", "-m"], command
  return words[2]


def write_jsonl(path, rows) -> str:
  with open(path, "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)
  return str(path)


def save_hf_model(model, path: str) -> str:
  """A tiny model with the shared tiny BPE, and a chat template for it (the file that
  transformers writes; re-saving the tokenizer here would make it the model type's class)."""
  model.config.max_position_embeddings = 512  # room for the recipe's sequences
  save_hf_dir(model, path)
  with open(os.path.join(path, "chat_template.jinja"), "w") as f:
    f.write(CHAT_TEMPLATE)
  return path


def run(command: str, env: dict) -> None:
  extra = " ".join(shlex.quote(arg) for arg in FAST[module_of(command)])
  start = time.perf_counter()
  result = subprocess.run(["bash", "-c", f"{command} {extra}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, f"{command}\n{result.stderr[-4000:]}"
  print(f"\n[{time.perf_counter() - start:.0f}s] {command} {extra}")


@pytest.fixture(autouse=True, scope="module")
def _no_progress_bars():
  from transformers.utils import logging as hf_logging
  hf_logging.disable_progress_bar()


def test_readme_recipe_block_is_the_six_steps():
  """Six steps, seven commands: the teacher is imported too, and evaluated are the student
  before and after."""
  names, commands = readme_recipe()
  assert [module_of(c) for c in commands] == STEPS
  assert set(names) == {"STUDENT_HF", "TEACHER_HF", "GSM8K_TRAIN", "GSM8K_TEST", "MATH500_TEST",
                        "RUNS"}
  # The records are judged in the recipe; only this test turns the judge off.
  assert "judge" not in " ".join(commands)


def test_readme_recipe_end_to_end(tmp_path):
  from transformers import AutoModelForCausalLM, AutoTokenizer

  student = tiny_hf_model("qwen2", tied=True, seed=1)
  teacher = lively(tiny_hf_model("llama", tied=False))  # says more than the 0.02-std init
  runs = tmp_path / "runs"
  variables = dict(
      STUDENT_HF=save_hf_model(student, str(tmp_path / "student_hf")),
      TEACHER_HF=save_hf_model(teacher, str(tmp_path / "teacher_hf")),
      GSM8K_TRAIN=write_jsonl(tmp_path / "gsm8k_train.jsonl",
                              [dict(question=q, answer=a) for q, a in GSM8K_TRAIN]),
      GSM8K_TEST=write_jsonl(tmp_path / "gsm8k_test.jsonl",
                             [dict(question=q, answer=a) for q, a in GSM8K_TEST]),
      MATH500_TEST=write_jsonl(tmp_path / "math500_test.jsonl",
                               [dict(problem=p, answer=a, unique_id=f"test/{i}.json")
                                for i, (p, a) in enumerate(MATH500_TEST)]),
      RUNS=str(runs))
  names, commands = readme_recipe()
  assert set(names) == set(variables)
  env = dict(os.environ, XLA_FLAGS="", **variables)  # one CPU device, as on a user's machine
  # The README's `python` is the one running the tests (CI calls .venv/bin/python without
  # activating the venv, so PATH's python may be another one).
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
  ids, mask, positions = padded_batch()

  # 1. The imported student computes the HF model's logits.
  run(commands[0], env)
  _, imported = checkpoint.read_meta(str(runs / "student"))
  student_cfg = decoder.DecoderConfig.from_config(imported["model"])
  assert max_diff_at_tokens(our_logits(str(runs / "student"), student_cfg, ids, mask, positions),
                            torch_logits(student, ids, mask, positions), mask) < 1e-4

  # 2-3. The teacher (imported) writes 2 perspectives for each of the 8 questions; the
  # records are encoded with the student's tokenizer.
  run(commands[1], env)
  assert checkpoint.latest_step(str(runs / "teacher")) == 0
  run(commands[2], env)
  with open(runs / "records" / "manifest.json") as f:
    manifest = json.load(f)
  assert manifest["teacher"] == "jax" and manifest["perspectives"] == PERSPECTIVES
  # GSM8K's own lines were read: the answer is what follows "####".
  assert [q.answer for q in suites.training_questions(str(runs / "records"))] == [
      a.rpartition("#### ")[2] for _, a in GSM8K_TRAIN]
  assert manifest["counts"]["questions_loaded"] == len(GSM8K_TRAIN)
  assert manifest["counts"]["rationales_generated"] == 2 * len(GSM8K_TRAIN)
  assert manifest["num_examples"] == manifest["counts"]["questions_written"] == len(GSM8K_TRAIN)
  assert manifest["counts"]["slots_written"] == 2 * len(GSM8K_TRAIN)
  assert manifest["by_teacher"] == {"teacher": dict(rationales_generated=16,
                                                    rationales_correct=16)}
  student_tokenizer = AutoTokenizer.from_pretrained(runs / "student" / "tokenizer")
  assert manifest["tokenizer"]["fingerprint"] == tokenizer_lib.fingerprint(student_tokenizer)

  # 4. MIND: 1 TA warm-up step and 2 joint steps from the imported weights on packed
  # rationales, finite losses; the model is the imported student's (no shape in the
  # config), run in bf16.
  run(commands[3], env)
  mind = str(runs / "mind")
  step, meta = checkpoint.read_meta(mind)
  assert step == 3
  assert meta["model"] == dict(imported["model"], dtype="bfloat16", remat="dots")
  with open(os.path.join(mind, train.HISTORY)) as f:
    history = [json.loads(line) for line in f]
  assert [h["step"] for h in history] == [1, 2, 3]
  assert all(math.isfinite(h["loss"]) for h in history)
  assert history[-1]["packing_overflow"] == 0 and history[-1]["packed_fill"] > 0  # packed
  # A shape the config states must be the checkpoint's.
  config = load_config_file(os.path.join(REPO, "configs", "recipe_mind.py"))
  config.train.init_from, config.model.num_layers = str(runs / "student"), 3
  with pytest.raises(ValueError, match=r"model.num_layers=3 \(the checkpoint's: 2\)"):
    train.stated_model_config(config, str(tmp_path / "new_run"))
  _, _, trained = inference.restore_params(mind, None)
  _, _, initial = inference.restore_params(str(runs / "student"), None)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(trained),
                                                      jax.tree.leaves(initial)))

  # 5. Both test files are answered and judged, by the student before and after.
  for command, workdir, step in ((commands[4], "student", 0), (commands[5], "mind", 3)):
    run(command, env)
    with open(runs / workdir / "results.json") as f:
      results = json.load(f)
    assert results["step"] == step
    assert [(s["name"], s["format"], s["n"]) for s in results["suites"]] == [
        ("gsm8k", "numeric", len(GSM8K_TEST)), ("math500", "math", len(MATH500_TEST))]

  # 6. transformers loads the export, with the trained weights and the chat template.
  run(commands[6], env)
  exported = AutoModelForCausalLM.from_pretrained(runs / "export").eval()
  assert type(exported) is type(student)
  fp32 = decoder.DecoderConfig.from_config(dict(meta["model"], dtype="float32"))
  diff = max_diff_at_tokens(torch_logits(exported, ids, mask, positions),
                            our_logits(mind, fp32, ids, mask, positions), mask)
  assert diff < 1e-4
  assert AutoTokenizer.from_pretrained(runs / "export").chat_template == CHAT_TEMPLATE
