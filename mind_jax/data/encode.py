"""Student sequences of a question's K rationales: token ids, loss mask, answer mask.

Every slot ends in the same final-answer string, so the answer tokens of all K
sequences align token by token (the consistency loss compares them):

  [prompt] [rationale body] " The answer is" [" {answer}"] "." [eos]
   not scored  <------------------- loss mask ------------------------->
                                              <- answer mask ->

The prompt is the tokenizer's chat template (user turn, generation prompt) when
it has one, else the plain format of mind_jax/data/prompt.py. The teacher's own
final-answer statement is cut from its rationale first (the judge has already
checked it), so the answer appears once, in the standard form.
"""
from __future__ import annotations

import re

import numpy as np

from mind_jax.data import prompt as prompt_lib

ANSWER_LEAD = " The answer is"
# Trailing final-answer statements teachers write: "#### 42", "The answer is 42.",
# "Final answer: 42", "\boxed{42}" (alone or in the last sentence).
_TRAILING_ANSWER = re.compile(
    r"(?:\n\s*####[^\n]*|(?:^|(?<=[.!?\n]))[^.!?\n]*(?:\banswer\s*(?:is|:|=)|\\boxed\s*\{)"
    r"[^\n]*)\s*$", re.IGNORECASE)


class SequenceTooLong(ValueError):
  pass


def strip_final_answer(rationale: str) -> str:
  """The rationale without its trailing final-answer statement(s)."""
  text = rationale.strip()
  while True:
    stripped = _TRAILING_ANSWER.sub("", text).rstrip()
    if stripped == text or not stripped:
      return text if not stripped else stripped
    text = stripped


def chat_prompt_ids(tokenizer, text: str) -> list[int]:
  """`text` as the user turn of the tokenizer's chat template (with the generation
  prompt) when it has one, else bos + text. Every prompt a model reads goes through
  here: the student's (prompt_ids) and the teachers' (data/teachers/hf.py, jax_teacher.py)."""
  if getattr(tokenizer, "chat_template", None):
    return list(tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                              add_generation_prompt=True, tokenize=True,
                                              return_dict=False))
  ids = tokenizer.encode(text, add_special_tokens=False)
  return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids


def prompt_ids(tokenizer, question: str, perspective: str = "") -> list[int]:
  """The student's prompt for a question: in training (SFT and MIND) and in evaluation.
  With a perspective, the tagged prompt (encode.perspective_tags) that asks for it."""
  return chat_prompt_ids(tokenizer, prompt_lib.prompt_text(question, perspective))


def encode_slot(tokenizer, question: str, rationale: str, answer: str,
                max_len: int, perspective: str = "") -> dict[str, np.ndarray]:
  """One sequence, right padded to max_len; SequenceTooLong instead of truncating
  (a cut answer would teach a wrong one). With a perspective, its prompt is tagged."""
  segments = [
      (prompt_ids(tokenizer, question, perspective), 0, 0),
      (tokenizer.encode(" " + strip_final_answer(rationale), add_special_tokens=False), 1, 0),
      (tokenizer.encode(ANSWER_LEAD, add_special_tokens=False), 1, 0),
      (tokenizer.encode(" " + answer.strip(), add_special_tokens=False), 1, 1),
      (tokenizer.encode(".", add_special_tokens=False), 1, 0),
      ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [], 1, 0),
  ]
  ids = [t for seg, _, _ in segments for t in seg]
  if len(ids) > max_len:
    raise SequenceTooLong(f"{len(ids)} tokens > max_len {max_len}")
  loss = [scored for seg, scored, _ in segments for _ in seg]
  ans = [is_answer for seg, _, is_answer in segments for _ in seg]
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  out = dict(input_ids=np.full(max_len, pad, np.int32), loss_mask=np.zeros(max_len, np.int32),
             answer_mask=np.zeros(max_len, np.int32))
  out["input_ids"][:len(ids)] = ids
  out["loss_mask"][:len(ids)] = loss
  out["answer_mask"][:len(ids)] = ans
  out["length"] = np.int32(len(ids))
  out["attention_mask"] = (np.arange(max_len) < len(ids)).astype(np.int32)
  return out
