"""Asking a perspective-tagged student (encode.perspective_tags) for its perspectives.

A student trained on tagged prompts ("Perspective: <name>", data/prompt.py) writes the
perspective it is asked for. At test time (experiment eval.perspective):

  none     the untagged prompt, as every student is asked today;
  <name>   that perspective's tag;
  best     the perspective with the best accuracy on a dev split of the training
           distribution (held out from training and from every test suite: the test
           results never choose);
  vote     one greedy answer per perspective; the answer most of them give wins
           (self-consistency, arXiv 2203.11171, over perspectives instead of samples),
           ties going to the answer of the perspective best on the dev split.
"""
from __future__ import annotations

import collections
from typing import Sequence

from mind_jax import faults
from mind_jax.data import judge
from mind_jax.eval import answers as answers_lib, suites as suites_lib

NONE, BEST, VOTE = "none", "best", "vote"


def check_mode(mode: str, perspectives: Sequence[str], tagged: bool, where: str) -> None:
  """One line (BadInput) unless `mode` can be asked of students trained as `tagged` says."""
  if mode == NONE:
    return
  if mode not in (BEST, VOTE, *perspectives):
    raise faults.BadInput(f"{where}={mode!r}: expected {NONE!r}, {BEST!r}, {VOTE!r} or a "
                          f"perspective of the records {list(perspectives)}")
  if not tagged:
    raise faults.BadInput(f"{where}={mode!r} asks for a perspective, but the records were "
                          "built without encode.perspective_tags: the student never saw a tag")


def answers(model, questions, perspective: str, max_new_tokens: int, batch_size: int):
  return answers_lib.generate_answers(model, questions, max_new_tokens, batch_size, perspective)


def dev_accuracy(model, dev: suites_lib.Suite, perspectives: Sequence[str],
                 max_new_tokens: int, batch_size: int) -> dict[str, float]:
  """Accuracy of each perspective's tag on the dev split."""
  return {p: answers_lib.score_suite(dev, answers(model, dev.questions, p, max_new_tokens,
                                               batch_size), 0)["accuracy"]
          for p in perspectives}


def ranked(dev: dict[str, float]) -> list[str]:
  """Perspectives best first on the dev split; equal ones in their records order."""
  order = list(dev)
  return sorted(order, key=lambda p: (-dev[p], order.index(p)))


def vote(suite: suites_lib.Suite, generations: dict[str, list[str]],
         tie_order: Sequence[str]) -> dict:
  """The majority answer per question over the perspectives' generations, judged.

  Answers are compared after the judge extracts them (judge.judge's `predicted`); a
  perspective with no answer does not vote. Ties: the answer of the perspective first
  in `tie_order`. Returns score_suite's fields plus each question's winning perspective.
  """
  correct, no_answer, winners = 0, 0, []
  for i, q in enumerate(suite.questions):
    verdicts = {p: judge.judge(generations[p][i], q.answer, q.answer_format,
                               q.choices or "ABCDE") for p in tie_order}
    counts = collections.Counter(v.predicted for v in verdicts.values() if v.predicted)
    if not counts:
      no_answer += 1
      winners.append(None)
      continue
    top = max(counts.values())
    winner = next(p for p in tie_order if counts.get(verdicts[p].predicted) == top)
    winners.append(winner)
    correct += verdicts[winner].correct
  n = len(suite.questions)
  return dict(name=suite.name, n=n, correct=correct, accuracy=correct / n if n else 0.0,
              no_answer=no_answer, winners=collections.Counter(w for w in winners if w))


def needs_dev(modes: Sequence[str]) -> bool:
  return any(mode in (BEST, VOTE) for mode in modes)


def accuracy_by_mode(model, suites: Sequence[suites_lib.Suite], mode: str,
                     perspectives: Sequence[str], dev_scores: dict[str, float] | None,
                     max_new_tokens: int, batch_size: int) -> dict:
  """{accuracy: {suite: value}, perspective_dev: ..., chosen: ...} of one eval mode;
  dev_scores (dev_accuracy's, computed once for every mode) for best and vote."""
  out = dict(accuracy={}, mode=mode)
  if mode in (BEST, VOTE):
    out["perspective_dev"] = dict(dev_scores)
  order = ranked(out["perspective_dev"]) if "perspective_dev" in out else list(perspectives)
  ask = "" if mode == NONE else (order[0] if mode in (BEST, VOTE) else mode)
  if mode == BEST:
    out["chosen"] = ask
  for suite in suites:
    if mode == VOTE:
      generations = {p: answers(model, suite.questions, p, max_new_tokens, batch_size)
                     for p in perspectives}
      scored = vote(suite, generations, order)
      out.setdefault("vote_winners", {})[suite.name] = dict(scored["winners"])
    else:
      scored = answers_lib.score_suite(
          suite, answers(model, suite.questions, ask, max_new_tokens, batch_size), 0)
    out["accuracy"][suite.name] = scored["accuracy"]
  return out
