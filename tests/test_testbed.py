"""The arithmetic testbed: its question generator, column algorithms, the `styles`
teacher's 8 rationale styles, the arithmetic eval suites and the digit-split tokenizer."""
from random import Random

import pytest

from mind_jax import tokenizer as tokenizer_lib
from mind_jax.data import arithmetic, encode, judge
from mind_jax.data.questions import Question
from mind_jax.data.teachers import styles
from mind_jax.data.teachers.base import TeacherRequest
from mind_jax.eval import suites as suites_lib


# ------------------------------------------------------------------ questions


def test_generator_is_deterministic_with_a_stable_prefix():
  long = arithmetic.generate(("add", "sub", "sum3", "mul1"), 40, 3, 2, 4)
  short = arithmetic.generate(("add", "sub", "sum3", "mul1"), 10, 3, 2, 4)
  assert long[:10] == short  # suites draw more items to de-duplicate: the prefix must hold
  assert [q.source.split("/")[1] for q in short[:4]] == ["add", "sub", "sum3", "mul1"]
  assert len({q.id for q in long}) == 40
  assert arithmetic.generate(("add",), 5, 4, 2, 4) != arithmetic.generate(("add",), 5, 3, 2, 4)
  for q in long:
    values, ops = arithmetic.parse_question(q.question)
    assert str(arithmetic.evaluate(values, ops)) == q.answer
    assert int(q.answer) >= 0
    assert all(2 <= len(str(v)) <= 4 for v, op in zip(values, [None] + ops) if op != "*")
    assert arithmetic.parse_source(q.source)[1:] == (2, 4)


def test_mixes_never_go_negative_and_length_shift_is_one_digit_longer():
  for q in arithmetic.generate(("add_sub", "sub_add"), 200, 0, 2, 2):
    values, ops = arithmetic.parse_question(q.question)
    partial = values[0]
    for op, v in zip(ops, values[1:]):
      partial = partial + v if op == "+" else partial - v
      assert partial >= 0, q.question
  for q in arithmetic.generate(("add", "sub"), 50, 0, 2, 2, first_digits=3):
    values, _ = arithmetic.parse_question(q.question)
    assert len(str(values[0])) == 3 or (len(str(values[1])) == 3)  # sub may swap them
    assert max(len(str(v)) for v in values) == 3


def test_bad_generator_settings_and_questions_fail_clearly():
  with pytest.raises(ValueError, match="families"):
    arithmetic.generate(("div",), 3, 0, 2, 2)
  with pytest.raises(ValueError, match="digits"):
    arithmetic.generate(("add",), 3, 0, 3, 2)
  with pytest.raises(ValueError, match="not an arithmetic question"):
    arithmetic.parse_question("How many legs does a spider have?")


def test_column_algorithms_by_hand():
  add = arithmetic.column_add([68, 933])
  # ones 8+3=11 -> 1 carry 1; tens 6+3+1=10 -> 0 carry 1; hundreds 0+9+1=10 -> 0 carry 1;
  # the last carry is its own column.
  assert [(c.digits, c.carry_in, c.total, c.digit, c.carry_out) for c in add.columns] == [
      ((8, 3), 0, 11, 1, 1), ((6, 3), 1, 10, 0, 1), ((0, 9), 1, 10, 0, 1), ((), 1, 1, 1, 0)]
  assert add.result == 1001
  sub = arithmetic.column_sub(304, 88)
  # ones 4-8 borrows: 14-8=6; tens 0-8-1 borrows: 10-8-1=1; hundreds 3-0-1=2.
  assert [(c.total, c.digit, c.carry_out) for c in sub.columns] == [(-4, 6, 1), (-9, 1, 1),
                                                                    (2, 2, 0)]
  assert sub.result == 216
  mul = arithmetic.column_mul(418, 6)
  assert [(c.total, c.digit, c.carry_out) for c in mul.columns] == [(48, 8, 4), (10, 0, 1),
                                                                    (25, 5, 2), (2, 2, 0)]
  chain = arithmetic.operations([401, 8987, 32], ["+", "-"])
  assert [(op.kind, op.result) for op in chain] == [("add", 9388), ("sub", 9356)]
  assert arithmetic.operations([611, 232, 66], ["+", "+"])[0].operands == (611, 232, 66)


def test_number_words():
  assert arithmetic.number_words(4821) == "four thousand eight hundred twenty-one"
  assert arithmetic.number_words(0) == "zero"
  assert arithmetic.number_words(1005) == "one thousand five"
  assert arithmetic.number_words(90) == "ninety"
  assert arithmetic.number_words(110000) == "one hundred ten thousand"


# ------------------------------------------------------------------ the styles teacher


def _requests(questions):
  return [TeacherRequest(q, style, "") for q in questions for style in styles.STYLES]


def test_every_style_is_correct_and_passes_the_judge():
  questions = (arithmetic.generate(("add", "sub", "sum3", "mul1"), 40, 1, 1, 4)
               + arithmetic.generate(arithmetic.MIX_FAMILIES, 15, 2, 2, 3))
  teacher = styles.StylesTeacher(seed=0)
  texts = teacher.generate(_requests(questions))
  for request, text in zip(_requests(questions), texts):
    verdict = judge.judge(text, request.question.answer, "numeric")
    assert verdict.correct, (request.perspective, text)
    assert not judge.arithmetic_errors(text), (request.perspective, text)
    assert text.endswith(f"The answer is {request.question.answer}.")


def test_styles_differ_by_construction():
  q = Question("q", "What is 68 + 933?", "1001")
  text = {s: styles.rationale(q.question, s, Random(0)) for s in styles.STYLES}
  assert text["scratchpad"].startswith("68 + 933: 8+3+0=11, carry 1, so far 1. 6 + 93:")
  assert text["compact_scratchpad"].startswith("8+3=11; 6+3+1=10; 0+9+1=10; 1;")
  assert "Digits from the ones place: 1 0 0 1." in text["reversed_digits"]
  assert text["plain_answer"].startswith("68 + 933 = 1001.")
  assert text["carry_free_shorthand"].startswith("sums 11 9 9 1 so 1001.")
  assert "sixty-eight plus nine hundred thirty-three is one thousand one" in text["number_words"]
  # The verbose and shuffled scratchpads hold the scratchpad's steps, differently.
  steps = [s.strip() + "." for s in text["scratchpad"].split(" Result")[0].split(".") if s.strip()]
  assert all(step in text["verbose_scratchpad"] for step in steps)
  assert len(text["verbose_scratchpad"]) > len(text["scratchpad"])
  assert sorted(s.strip() for s in text["shuffled_scratchpad"].split(".")) == sorted(
      s.strip() for s in text["scratchpad"].split("."))
  assert text["shuffled_scratchpad"] != text["scratchpad"]
  # Deterministic per (seed, question, style).
  teacher = styles.StylesTeacher(seed=5)
  request = TeacherRequest(q, "verbose_scratchpad", "")
  assert teacher.generate([request]) == teacher.generate([request])


def test_styles_teacher_refuses_unknown_styles_and_skips_other_questions():
  q = Question("q", "What is 2 + 2?", "4")
  with pytest.raises(ValueError, match="not a style"):
    styles.StylesTeacher().generate([TeacherRequest(q, "socratic", "")])
  other = Question("w", "How many legs does a spider have?", "8")
  assert styles.StylesTeacher().generate([TeacherRequest(other, "scratchpad", "")]) == [None]


# ------------------------------------------------------------------ suites, tokenizer


def test_arithmetic_suites_hold_out_training_questions_and_shift_one_thing():
  train = arithmetic.generate(("add", "sub"), 300, 0, 2, 2)
  id_suite, length, mix = suites_lib.build_suites(
      "arith_id,arith_ood_length,arith_ood_mix", train, id_size=50, ood_size=30)
  seen = {q.question for q in train}
  assert len(id_suite.questions) == 50 and not seen & {q.question for q in id_suite.questions}
  for q in id_suite.questions:
    values, ops = arithmetic.parse_question(q.question)
    assert len(ops) == 1 and all(len(str(v)) == 2 for v in values)
  for q in length.questions:
    values, ops = arithmetic.parse_question(q.question)
    assert len(ops) == 1 and max(len(str(v)) for v in values) == 3
  for q in mix.questions:  # only the trained operators, two of them in one chain
    _, ops = arithmetic.parse_question(q.question)
    assert sorted(ops) == ["+", "-"]
  with pytest.raises(ValueError, match="arithmetic generator"):
    suites_lib.build_suites("arith_id", [Question("a", "What?", "1")])


def test_split_digit_tokenizer_gives_every_digit_its_own_token():
  texts = ["What is 4821 + 937?", "8+3+0=11, carry 1, so far 1."] * 50
  tok = tokenizer_lib.train_bpe(texts, 300, split_digits=True)
  pieces = tok.tokenize("What is 4821 + 937?")
  digits = [p for p in pieces if any(ch.isdigit() for ch in p)]
  assert all(sum(ch.isdigit() for ch in p) == 1 for p in digits)
  assert len(digits) == 7
  assert tok.decode(tok.encode("What is 4821 + 937?")) == "What is 4821 + 937?"
  merged = tokenizer_lib.train_bpe(texts, 300)
  assert any(sum(ch.isdigit() for ch in p) > 1 for p in merged.tokenize("What is 4821 + 937?"))
  # Encoded as a student sequence, the answer digits are the answer-mask tokens.
  slot = encode.encode_slot(tok, "What is 68 + 933?", "68 + 933 = 1001.", "1001", 64)
  answer = [t for t, m in zip(slot["input_ids"], slot["answer_mask"]) if m]
  assert tok.decode(answer).strip() == "1001" and len(answer) == 4


def test_generations_are_assigned_to_the_style_they_follow():
  from mind_jax.eval import styles_written
  questions = ["What is 68 + 71?", "What is 93 - 63?", "What is 12 + 34 + 56?"]
  for question in questions:
    for style in styles.STYLES:
      for seed in range(3):  # verbose's fillers and shuffled's order vary with the RNG
        text = styles.rationale(question, style, Random(100 + seed))
        assert styles_written.classify(question, text) == style, (question, style, text)
  # A wrong digit keeps the format; a column order tells shuffled from scratchpad.
  assert styles_written.classify("What is 68 + 71?", "68 + 71 = 141. The answer is 141.") == (
      "plain_answer")
  assert styles_written.classify(
      "What is 68 + 71?", "68 + 71: 8+1+0=8, carry 0, so far 8. 6 + 7") == "scratchpad"
  assert styles_written.classify("What is 68 + 71?", "6 + 7: 6+7+0=13, carry 1") == (
      "shuffled_scratchpad")
  assert styles_written.classify("What is 68 + 71?", "sixty plus seventy is ninety") == (
      "number_words")
  assert styles_written.classify("What is 68 + 71?", "hello") == styles_written.OTHER
  counts = styles_written.tally(
      [Question("q", "What is 68 + 71?", "139")] * 2,
      ["68 + 71 = 139. The answer is 139.", "68 + 71 = 140. The answer is 140."])
  assert counts == {"plain_answer": dict(n=2, correct=1)}
