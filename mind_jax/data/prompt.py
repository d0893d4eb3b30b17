"""The plain prompt format of a (question, rationale, answer) training sequence.

  <bos>Question: {question}\nAnswer: {rationale} The answer is {answer}.<eos>

With perspective tags (encode.perspective_tags), the prompt names the perspective the
rationale is written in, so one student learns every perspective and is asked for one:

  <bos>Question: {question}\nPerspective: {perspective}\nAnswer: ...

With a tokenizer that has a chat template, the "Question: ...\nAnswer:" text is the
user message instead (mind_jax/data/encode.py builds every student sequence, for SFT,
MIND and evaluation alike). Only the tokens after the prompt are scored.
"""
from __future__ import annotations

PROMPT = "Question: {question}\nAnswer:"
TAGGED_PROMPT = "Question: {question}\nPerspective: {perspective}\nAnswer:"
TARGET = " {rationale} The answer is {answer}."


def prompt_text(question: str, perspective: str = "") -> str:
  """The prompt; with a perspective, the tagged prompt that names it."""
  if perspective:
    return TAGGED_PROMPT.format(question=question, perspective=perspective)
  return PROMPT.format(question=question)


def target_text(rationale: str, answer: str) -> str:
  """The target as text (what encode.encode_slot scores), e.g. to train a tokenizer on."""
  return TARGET.format(rationale=rationale, answer=answer)
