"""Perspective tags (encode.perspective_tags) and asking a tagged student for its
perspectives (mind_jax/eval/perspectives.py): the tagged prompt, the vote by hand, the dev
split's independence, and the modes' checks."""
import pytest

from mind_jax import faults
from mind_jax.data import arithmetic, encode, prompt
from mind_jax.data.questions import Question
from mind_jax.eval import perspectives, suites


class _WordTokenizer:
  """Whitespace tokens: the prompt's words are visible in the ids."""
  pad_token_id, eos_token_id, bos_token_id, chat_template = 0, 1, None, None

  def __init__(self):
    self.vocab = {}

  def encode(self, text, add_special_tokens=False):
    return [self.vocab.setdefault(w, len(self.vocab) + 2) for w in text.split()]


def test_a_tagged_prompt_names_the_perspective_and_the_untagged_one_is_unchanged():
  assert prompt.prompt_text("What is 2 + 3?") == "Question: What is 2 + 3?\nAnswer:"
  assert prompt.prompt_text("What is 2 + 3?", "scratchpad") == (
      "Question: What is 2 + 3?\nPerspective: scratchpad\nAnswer:")
  tok = _WordTokenizer()
  plain = encode.encode_slot(tok, "What is 2 + 3?", "2 plus 3 is 5.", "5", 64)
  tagged = encode.encode_slot(tok, "What is 2 + 3?", "2 plus 3 is 5.", "5", 64, "scratchpad")
  n_plain, n_tagged = int(plain["length"]), int(tagged["length"])
  assert n_tagged == n_plain + 2  # "Perspective:" and "scratchpad", both unscored
  assert tagged["loss_mask"].sum() == plain["loss_mask"].sum()
  assert tagged["input_ids"][n_tagged - int(tagged["loss_mask"].sum()):n_tagged].tolist() == \
      plain["input_ids"][n_plain - int(plain["loss_mask"].sum()):n_plain].tolist()


def _suite(golds):
  return suites.Suite("s", "numeric", tuple(
      Question(id=f"q{i}", question=f"q{i}", answer=g) for i, g in enumerate(golds)))


def test_vote_takes_the_majority_and_breaks_ties_by_the_dev_order():
  suite = _suite(["5", "7", "9", "4"])
  generations = {
      "a": ["The answer is 5.", "The answer is 1.", "The answer is 9.", "no idea"],
      "b": ["The answer is 5.", "The answer is 7.", "The answer is 8.", "no idea"],
      "c": ["The answer is 6.", "The answer is 7.", "nothing", "none"],
  }
  # q0: 5 twice -> right; q1: 7 twice -> right; q2: 9 vs 8 tie (c gave no answer):
  # the first of the order decides; q3: nobody answers.
  scored = perspectives.vote(suite, generations, ["b", "a", "c"])
  assert (scored["correct"], scored["no_answer"]) == (2, 1)
  assert scored["accuracy"] == pytest.approx(0.5)
  scored = perspectives.vote(suite, generations, ["a", "b", "c"])
  assert scored["correct"] == 3
  assert dict(scored["winners"]) == {"a": 2, "b": 1}  # q0 and q2 to a, q1 to b


def test_ranked_is_best_first_and_stable():
  assert perspectives.ranked({"a": 0.2, "b": 0.5, "c": 0.5}) == ["b", "c", "a"]


def test_modes_are_checked_in_one_line():
  perspectives.check_mode("none", ["a"], False, "eval.perspective")
  perspectives.check_mode("vote", ["a"], True, "eval.perspective")
  with pytest.raises(faults.BadInput, match="expected 'none', 'best', 'vote' or a perspective"):
    perspectives.check_mode("socratic", ["a"], True, "eval.perspective")
  with pytest.raises(faults.BadInput, match="without encode.perspective_tags"):
    perspectives.check_mode("a", ["a"], False, "eval.perspective")


def test_the_dev_split_is_the_training_distribution_and_in_no_test_suite():
  train = arithmetic.generate(("add", "sub"), 300, 0, 2, 2, None)
  tests = suites.build_suites("arith_id,arith_ood_length", train, id_size=150, ood_size=50)
  dev = suites.dev_suite("arith_id,arith_ood_length", train, tests, 100, 3000)
  assert dev.name == "dev" and len(dev.questions) == 100
  seen = {q.question for q in train} | {q.question for s in tests for q in s.questions}
  assert not seen & {q.question for q in dev.questions}
  for q in dev.questions:  # two-digit operands, as trained (not the OOD length's three)
    values, _ = arithmetic.parse_question(q.question)
    assert all(10 <= abs(v) <= 99 for v in values), q.question
  with pytest.raises(faults.BadInput, match="needs 'id' or 'arith_id'"):
    suites.dev_suite("rg:leg_counting", train, tests, 10, 3000)
