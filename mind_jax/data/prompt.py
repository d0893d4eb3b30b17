"""The plain prompt format of a (question, rationale, answer) training sequence.

  <bos>Question: {question}\nAnswer: {rationale} The answer is {answer}.<eos>

Only the tokens after "Answer: " are scored (the loss mask); the prompt never is.
"""
from __future__ import annotations

import numpy as np

PROMPT = "Question: {question}\nAnswer:"
TARGET = " {rationale} The answer is {answer}."


def prompt_text(question: str) -> str:
  return PROMPT.format(question=question)


def target_text(rationale: str, answer: str) -> str:
  return TARGET.format(rationale=rationale, answer=answer)


class SequenceTooLong(ValueError):
  pass


def encode_sequence(tokenizer, question: str, rationale: str, answer: str,
                    max_len: int) -> dict[str, np.ndarray]:
  """Token ids, attention mask and loss mask, right padded to max_len.

  Raises SequenceTooLong rather than truncating: a cut answer would teach a wrong one.
  """
  prompt = tokenizer.encode(prompt_text(question), add_special_tokens=False)
  target = tokenizer.encode(target_text(rationale, answer), add_special_tokens=False)
  if tokenizer.bos_token_id is not None:
    prompt = [tokenizer.bos_token_id] + prompt
  if tokenizer.eos_token_id is not None:
    target = target + [tokenizer.eos_token_id]
  length = len(prompt) + len(target)
  if length > max_len:
    raise SequenceTooLong(f"sequence of {length} tokens > max_len {max_len}")
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  input_ids = np.full((max_len,), pad, np.int32)
  input_ids[:length] = prompt + target
  attention_mask = np.zeros((max_len,), np.int32)
  attention_mask[:length] = 1
  loss_mask = np.zeros((max_len,), np.int32)
  loss_mask[len(prompt):length] = 1
  return dict(input_ids=input_ids, attention_mask=attention_mask, loss_mask=loss_mask)
