"""Answering and judging: a model's greedy answers to questions, each judged against its
gold answer. Used by eval.run, the experiment runner and eval/perspectives.py."""
from __future__ import annotations

from typing import Sequence

from mind_jax import decode
from mind_jax.data import encode, judge
from mind_jax.data.questions import Question
from mind_jax.eval import suites as suites_lib
from mind_jax.inference import Model


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
  """Indices grouped by length (similar lengths share a batch: less padding and
  fewer prompt-length buckets to compile)."""
  order = sorted(range(len(lengths)), key=lambda i: lengths[i])
  return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def generate_answers(model: Model, questions: Sequence[Question], max_new_tokens: int,
                     batch_size: int, perspective: str = "") -> list[str]:
  """Greedy generations (text, special tokens removed) in question order; with a
  perspective, from the tagged prompt that asks for it (encode.perspective_tags)."""
  prompts = [encode.prompt_ids(model.tokenizer, q.question, perspective) for q in questions]
  texts = [""] * len(prompts)
  for rows in length_batches([len(p) for p in prompts], batch_size):
    batch = [prompts[i] for i in rows]
    # A full batch every time: the last one reuses the compiled program.
    batch += [batch[-1]] * (batch_size - len(batch))
    new_tokens = decode.generate(model.params, model.cfg, batch, max_new_tokens, model.eos_ids,
                                 model.pad_id, mesh=model.mesh, rules=model.rules)
    for i, tokens in zip(rows, new_tokens):
      texts[i] = model.tokenizer.decode(tokens, skip_special_tokens=True)
  return texts


def score_suite(suite: suites_lib.Suite, generations: Sequence[str],
                num_examples: int = 3) -> dict:
  """Judge each generation against its question's gold answer."""
  if len(generations) != len(suite.questions):
    raise ValueError(f"{suite.name}: {len(generations)} generations for "
                     f"{len(suite.questions)} questions")
  verdicts = [judge.judge(text, q.answer, q.answer_format, q.choices or "ABCDE")
              for q, text in zip(suite.questions, generations)]
  n, correct = len(verdicts), sum(v.correct for v in verdicts)
  examples = [dict(id=q.id, question=q.question, gold=q.answer, generation=text,
                   predicted=v.predicted, verdict=v.reason)
              for q, text, v in list(zip(suite.questions, generations, verdicts))[:num_examples]]
  return dict(name=suite.name, format=suite.answer_format, n=n, correct=correct,
              accuracy=correct / n if n else 0.0,
              no_answer=sum(v.reason == "no_answer" for v in verdicts), examples=examples)


