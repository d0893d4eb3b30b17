"""Evaluation (mind_jax/eval): benchmark loaders on small invented sample files,
the procedural suites (held out from training), scoring of fake generations,
and one end-to-end run with perplexity on a tiny random model."""
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mind_jax import checkpoint, faults
from mind_jax.config import default_config
from mind_jax.data import encode, judge
from mind_jax.data.questions import BadRecord, Question, gsm_template, load_reasoning_gym
from mind_jax.eval import run, suites
from mind_jax.models import decoder

DATA = os.path.join(os.path.dirname(__file__), "data", "benchmarks")


def sample(name: str) -> str:
  return os.path.join(DATA, f"{name}.jsonl")


# ------------------------------------------------------------ benchmark loaders


@pytest.mark.parametrize("name, fmt, golds", [
    ("gsm8k", "numeric", ["26", "1,000", "15"]),
    ("math500", "math", ["\\frac{3}{4}", "4", "5\\sqrt{2}"]),
    ("svamp", "numeric", ["13.0", "25", "24"]),
    ("csqa", "choice", ["B", "C", "A"]),
    ("strategyqa", "yes_no", ["yes", "no", "yes"]),
])
def test_loader_golds_and_formats(name, fmt, golds):
  suite = suites.load_benchmark(name, sample(name))
  assert (suite.name, suite.answer_format) == (name, fmt)
  assert [q.answer for q in suite.questions] == golds
  assert all(q.answer_format == fmt for q in suite.questions)
  assert len({q.id for q in suite.questions}) == len(golds)


def test_loader_fields():
  gsm = suites.load_benchmark("gsm8k", sample("gsm8k"))
  assert [q.id for q in gsm.questions] == ["gsm8k-1", "gsm8k-2", "gsm8k-4"]  # line numbers
  assert gsm.questions[0].rationale.endswith("26 pencils.") and "####" not in \
      gsm.questions[0].rationale
  svamp = suites.load_benchmark("svamp", sample("svamp"))
  assert svamp.questions[0].question == ("Tom had 8 marbles. He found 5 more on the way home. "
                                         "How many marbles does Tom have now?")
  assert svamp.questions[0].id == "chal-901" and svamp.questions[2].id == "svamp-3"
  math500 = suites.load_benchmark("math500", sample("math500"))
  assert math500.questions[0].id == "test/prealgebra/901.json"


def test_csqa_options_text():
  q = suites.load_benchmark("csqa", sample("csqa")).questions[0]
  assert q.question == ("Where would you most likely keep fresh milk at home?\nAnswer Choices:\n"
                        "(A) oven\n(B) refrigerator\n(C) bookshelf\n(D) garage\n(E) mailbox")
  assert q.choices == "ABCDE"


def _option(question_text: str, letter: str) -> str:
  line = next(l for l in question_text.splitlines() if l.startswith(f"({letter}) "))
  return line[4:]


def test_gpqa_shuffle_deterministic_and_gold_right(tmp_path):
  raw = [json.loads(l) for l in open(sample("gpqa"))]
  first = suites.load_benchmark("gpqa", sample("gpqa"), gpqa_seed=0)
  again = suites.load_benchmark("gpqa", sample("gpqa"), gpqa_seed=0)
  assert first == again
  for q, record in zip(first.questions, raw):
    assert q.choices == "ABCD" and q.answer_format == "choice"
    assert _option(q.question, q.answer) == record["Correct Answer"].strip()
    assert sorted(_option(q.question, c) for c in "ABCD") == sorted(
        record[f].strip() for f in suites.GPQA_OPTIONS)
  # The order depends on (seed, question) only, not on the file's order...
  reversed_file = tmp_path / "gpqa_reversed.jsonl"
  reversed_file.write_text("\n".join(json.dumps(r) for r in reversed(raw)))
  rev = suites.load_benchmark("gpqa", str(reversed_file), gpqa_seed=0)
  assert {q.id: q.question for q in rev.questions} == {q.id: q.question for q in first.questions}
  # ...the gold letters are not all the same, and another seed reorders.
  assert len({q.answer for q in first.questions}) > 1
  other = suites.load_benchmark("gpqa", sample("gpqa"), gpqa_seed=1)
  assert [q.question for q in other.questions] != [q.question for q in first.questions]


GOOD = {
    "gsm8k": {"question": "Q?", "answer": "x\n#### 3"},
    "csqa": {"question": {"stem": "S?", "choices": [{"label": "A", "text": "a"},
                                                    {"label": "B", "text": "b"}]},
             "answerKey": "A"},
    "strategyqa": {"question": "Q?", "answer": True},
    "gpqa": {"Question": "Q?", "Correct Answer": "a", "Incorrect Answer 1": "b",
             "Incorrect Answer 2": "c", "Incorrect Answer 3": "d"},
    "math500": {"problem": "P?", "answer": "1"},
    "svamp": {"Body": "B.", "Question": "Q?", "Answer": 2},
}


@pytest.mark.parametrize("name, bad, field", [
    ("gsm8k", {"question": "Q?", "answer": "no final line"}, "answer"),
    ("gsm8k", {"answer": "#### 3"}, "question"),
    ("csqa", {"question": {"stem": "S?", "choices": [{"label": "A", "text": "a"},
                                                     {"label": "B"}]}, "answerKey": "A"},
     "question.choices[1].text"),
    ("csqa", dict(GOOD["csqa"], answerKey="E"), "answerKey"),
    ("strategyqa", {"question": "Q?", "answer": "maybe"}, "answer"),
    ("gpqa", {k: v for k, v in GOOD["gpqa"].items() if k != "Incorrect Answer 2"},
     "Incorrect Answer 2"),
    ("math500", {"problem": "P?", "answer": ["1"]}, "answer"),
    ("svamp", {"Body": "B.", "Answer": 2}, "Question"),
])
def test_bad_line_names_file_line_field(tmp_path, name, bad, field):
  path = tmp_path / f"{name}.jsonl"
  path.write_text(json.dumps(GOOD[name]) + "\n" + json.dumps(bad) + "\n")
  with pytest.raises(BadRecord) as e:
    suites.load_benchmark(name, str(path))
  assert str(e.value).startswith(f"{path}, line 2, field '{field}'"), str(e.value)


def test_malformed_json_and_duplicate_id(tmp_path):
  path = tmp_path / "s.jsonl"
  path.write_text(json.dumps(GOOD["strategyqa"]) + "\n{not json\n")
  with pytest.raises(BadRecord, match=r"s.jsonl, line 2: malformed JSON"):
    suites.load_benchmark("strategyqa", str(path))
  path.write_text("\n".join(json.dumps(dict(GOOD["strategyqa"], qid="x")) for _ in range(2)))
  with pytest.raises(BadRecord, match=r"line 2, field 'qid': duplicate id 'x'"):
    suites.load_benchmark("strategyqa", str(path))


# ------------------------------------------------------------ procedural suites


@pytest.fixture(scope="module")
def demo_train():
  """The demo's training questions (configs/data/demo.py: gsm_symbolic, seed 0, 400)."""
  return load_reasoning_gym("gsm_symbolic", 400, 0)


def test_id_suite_holds_out_training_questions(demo_train):
  train_texts = {q.question for q in demo_train}
  # Seed 1 is next to the training seed: undeduplicated it repeats training questions.
  raw = load_reasoning_gym("gsm_symbolic", 100, 1)
  assert any(q.question in train_texts for q in raw)
  suite = suites.id_suite(demo_train, 100, seed=1)
  assert len(suite.questions) == 100 and suite.answer_format == "numeric"
  assert not any(q.question in train_texts for q in suite.questions)
  assert len({q.question for q in suite.questions}) == 100
  assert suite == suites.id_suite(demo_train, 100, seed=1)  # deterministic


def test_id_suite_keeps_training_templates():
  train_templates, _ = suites.split_gsm_templates()
  train = load_reasoning_gym("gsm_symbolic", 50, 0, templates=train_templates[:5])
  suite = suites.id_suite(train, 30, seed=7)
  assert {gsm_template(q) for q in suite.questions} <= set(train_templates[:5])


def test_template_split_and_ood_suite(demo_train):
  train, held_out = suites.split_gsm_templates(0.25, seed=0)
  assert not set(train) & set(held_out)
  assert sorted(train + held_out) == sorted(suites.gsm_symbolic_templates())
  assert len(held_out) == round(0.25 * len(train + held_out))
  assert (train, held_out) == suites.split_gsm_templates(0.25, seed=0)
  assert held_out != suites.split_gsm_templates(0.25, seed=1)[1]

  trained_on_split = load_reasoning_gym("gsm_symbolic", 40, 0, templates=train)
  ood = suites.ood_template_suite(held_out, 20, seed=3, train_questions=trained_on_split)
  assert {gsm_template(q) for q in ood.questions} <= set(held_out)
  # The demo trains on every template: its held-out suite would not be OOD.
  with pytest.raises(ValueError, match="held-out templates"):
    suites.ood_template_suite(held_out, 20, seed=3, train_questions=demo_train)


def test_ood_task_golds_are_judgeable():
  built = suites.build_suites("ood", ood_size=15, ood_seed=5)
  assert [s.name for s in built] == ["ood_templates"] + [
      f"rg:{t}" for t in suites.DEFAULT_OOD_TASKS]
  for suite in built:
    assert len(suite.questions) == 15
    for q in suite.questions:
      assert judge.judge(f"So we get it. The answer is {q.answer}.", q.answer, "numeric").correct
      wrong = float(q.answer) * 1.5 + 1
      assert not judge.judge(f"The answer is {wrong}.", q.answer, "numeric").correct


def test_build_suites_errors():
  with pytest.raises(faults.BadInput, match="needs the training questions"):
    suites.build_suites("id")
  with pytest.raises(faults.BadInput, match="unknown suite nope"):
    suites.build_suites("nope")
  with pytest.raises(faults.BadInput, match="unknown benchmark mmlu"):
    suites.build_suites("mmlu=x.jsonl")


# (--suites and other flags, what the one line must say): each found before any load
BAD_SUITES = [
    (["--suites", "id,bogus"], ["--suites id,bogus: unknown suite bogus", "ood_templates",
                                "rg:<task>", "gsm8k"]),
    (["--suites", "id,oood"], ["unknown suite oood; did you mean ood?"]),
    (["--suites", "mmlu=x.jsonl"], ["unknown benchmark mmlu", "gsm8k, math500"]),
    (["--suites", "gsm8k"], ["write gsm8k=<file.jsonl>"]),
    (["--suites", "rg:leg_countin"], ["did you mean rg:leg_counting?"]),
    (["--suites", "ood", "--ood_tasks", "basic_arithmetc"],
     ["--ood_tasks basic_arithmetc", "did you mean basic_arithmetic?"]),
    (["--suites", "id,id"], ["--suites id,id: id named twice"]),
]


@pytest.mark.parametrize("flags,says", BAD_SUITES, ids=[" ".join(f) for f, _ in BAD_SUITES])
def test_cli_names_a_bad_suite_before_loading(caplog, monkeypatch, flags, says):
  monkeypatch.setattr(checkpoint, "read_meta", lambda *a: pytest.fail("checkpoint read"))
  with pytest.raises(SystemExit) as stop:
    run.main(["--checkpoint", "/nonexistent", *flags])
  assert stop.value.code == faults.EXIT_BAD_INPUT
  (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
  for text in says:
    assert text in line


def test_arithmetic_suites_without_arithmetic_training_questions_are_bad_input():
  with pytest.raises(faults.BadInput, match="needs training questions from the arithmetic"):
    suites.build_suites("arith_id", [])


def test_cli_bad_suite_is_one_line_in_a_subprocess(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "mind_jax.eval.run", "--checkpoint", str(tmp_path / "none"),
       "--suites", "id,bogus"], capture_output=True, text=True, timeout=120,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == faults.EXIT_BAD_INPUT, result.stderr
  assert "Traceback" not in result.stderr
  (line,) = result.stderr.strip().splitlines()
  assert "--suites id,bogus: unknown suite bogus" in line


# ------------------------------------------------------------ scoring (no model)


FAKE = {  # question id -> generation; each suite's golds are in test_loader_golds_and_formats
    "gsm8k-1": "She keeps 36 - 10 pencils. The answer is 26.",
    "gsm8k-2": "It ships 250 crates a day. The answer is 1,000.",
    "gsm8k-4": "Each costs $7.50. The answer is $15.00.",
    "test/prealgebra/901.json": "Add the halves and quarters: \\boxed{\\frac{3}{4}}",
    "test/algebra/902.json": "Then x = 4. The answer is 3/4.",  # wrong
    "test/algebra/903.json": "I do not know.",  # no answer
    "csqa-901": "Milk spoils when warm. The answer is (B).",
    "csqa-902": "Scissors cut paper. The answer is C.",
    "csqa-903": "A pilot flies planes.",  # no answer
    "sqa-901": "Yes.",
    "sqa-902": "Yes.",  # wrong
    "sqa-903": "A week has seven days. The answer is yes.",
}


def test_scoring_of_fake_generations(monkeypatch, tmp_path):
  monkeypatch.setattr(run, "load_model", lambda workdir, step, all_devices: run.Model(
      workdir, 7, None, None, None, [], 0, None, ()))
  monkeypatch.setattr(run, "generate_answers", lambda model, questions, max_new_tokens,
                      batch_size: [FAKE[q.id] for q in questions])
  built = [suites.load_benchmark(n, sample(n)) for n in ("gsm8k", "math500", "csqa",
                                                           "strategyqa")]
  results = run.evaluate("W", built, out=str(tmp_path / "r.json"), num_examples=2)
  by_name = {s["name"]: s for s in results["suites"]}
  expect = {"gsm8k": (3, 3, 0), "math500": (3, 1, 1), "csqa": (3, 2, 1), "strategyqa": (3, 2, 0)}
  assert {n: (s["n"], s["correct"], s["no_answer"]) for n, s in by_name.items()} == expect
  assert by_name["math500"]["accuracy"] == pytest.approx(1 / 3)
  assert by_name["gsm8k"]["examples"][1] == dict(
      id="gsm8k-2", question=built[0].questions[1].question, gold="1,000",
      generation=FAKE["gsm8k-2"], predicted="1000", verdict="correct")
  assert len(by_name["csqa"]["examples"]) == 2
  assert json.load(open(tmp_path / "r.json")) == results


# ------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
  """A random 2-layer model with a small BPE, saved as a step-0 checkpoint."""
  from mind_jax import tokenizer as tokenizer_lib
  workdir = str(tmp_path_factory.mktemp("tiny-eval"))
  texts = [q.question for q in load_reasoning_gym("gsm_symbolic", 50, 0)]
  tokenizer = tokenizer_lib.train_bpe(texts, 400)
  tokenizer.save_pretrained(checkpoint.tokenizer_dir(workdir))
  cfg = decoder.DecoderConfig.from_config(default_config().model)
  cfg = decoder.DecoderConfig(**dict(cfg.to_dict(), vocab_size=len(tokenizer),
                                     bos_token_id=tokenizer.bos_token_id,
                                     eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id))
  params = decoder.init_params(cfg, jax.random.PRNGKey(0))
  with checkpoint.manager(workdir, async_save=False) as mngr:
    checkpoint.save(mngr, 0, params, {"model": cfg.to_dict(), "config": {}})
  return workdir


def test_evaluate_end_to_end(tiny_workdir, tmp_path, capsys):
  out = str(tmp_path / "results.json")
  results = run.main(["--checkpoint", tiny_workdir, "--suites",
                      f"rg:basic_arithmetic,csqa={sample('csqa')}", "--limit", "4",
                      "--max_new_tokens", "8", "--batch_size", "4", "--perplexity",
                      "--one_device", "--out", out])
  assert json.load(open(out)) == results
  assert results["step"] == 0 and results["settings"]["max_new_tokens"] == 8
  assert [s["name"] for s in results["suites"]] == ["rg:basic_arithmetic", "csqa"]
  assert [s["n"] for s in results["suites"]] == [4, 3]
  for s in results["suites"]:
    assert set(s) == {"name", "format", "n", "correct", "accuracy", "no_answer", "examples"}
    assert 0 <= s["accuracy"] <= 1 and 0 <= s["no_answer"] <= s["n"]
    assert len(s["examples"]) == 3 and all(isinstance(e["generation"], str)
                                           for e in s["examples"])
  ppl = results["perplexity"]
  assert ppl["texts"] == len(run.general_text.PARAGRAPHS) and ppl["tokens"] > 0
  # A random model is near-uniform over the vocabulary.
  assert 1 < ppl["perplexity"] < 10 * 400 and math.isclose(ppl["perplexity"],
                                                           math.exp(ppl["nll"]))
  print(capsys.readouterr().out)


def test_perplexity_matches_an_unbatched_forward(tiny_workdir):
  model = run.load_model(tiny_workdir)
  texts = ["Rivers shape the land.", "A much longer text about bees, bread and rivers."]
  got = run.model_perplexity(model, texts, batch_size=4, max_len=64)  # padding + filler rows
  nll_sum, count = 0.0, 0
  for text in texts:
    ids = np.array([[model.tokenizer.bos_token_id]
                    + model.tokenizer.encode(text, add_special_tokens=False)])
    logits = decoder.Decoder(model.cfg).apply({"params": model.params}, ids)
    logp = jax.nn.log_softmax(np.asarray(logits[0, :-1], np.float64), axis=-1)
    nll_sum -= float(np.take_along_axis(np.asarray(logp), ids[0, 1:, None], axis=-1).sum())
    count += ids.shape[1] - 1
  assert got["tokens"] == count
  assert got["nll"] == pytest.approx(nll_sum / count, rel=1e-5)
  short = run.model_perplexity(model, texts, batch_size=4, max_len=5)
  assert short["truncated"] == 2 and short["tokens"] == 2 * 4


def test_gold_solution_nll_scores_only_the_solution(tiny_workdir):
  model = run.load_model(tiny_workdir)
  qs = [Question(id="a", question="Tom has 3 apples and buys 4. How many?",
                 rationale="3 + 4 = 7.", answer="7"),
        Question(id="b", question="What is 2 times 5?", rationale="2 * 5 = 10. So 10.",
                 answer="10"),
        Question(id="c", question="No gold here", answer="1")]
  got = run.gold_solution_nll(model, qs, batch_size=4, max_len=64)
  assert got["questions"] == 2 and got["skipped"] == {"no_rationale": 1, "too_long": 0}
  nll_sum, count = 0.0, 0
  for q in qs[:2]:
    slot = encode.encode_slot(model.tokenizer, q.question, q.rationale, q.answer, 64)
    n = int(slot["length"])
    ids, scored = slot["input_ids"][None, :n], slot["loss_mask"][:n]
    logits = decoder.Decoder(model.cfg).apply({"params": model.params}, ids)
    logp = jax.nn.log_softmax(np.asarray(logits[0, :-1], np.float64), axis=-1)
    token_nll = -np.take_along_axis(logp, ids[0, 1:, None], axis=-1)[:, 0]
    nll_sum += float((token_nll * scored[1:]).sum())
    count += int(scored[1:].sum())
  assert 0 < count < sum(int(encode.encode_slot(model.tokenizer, q.question, q.rationale,
                                                   q.answer, 64)["length"]) for q in qs[:2])
  assert got["tokens"] == count
  assert got["nll"] == pytest.approx(nll_sum / count, rel=1e-5)
  with pytest.raises(ValueError, match="none of 3"):
    run.gold_solution_nll(model, qs, max_len=8)  # every solution too long
