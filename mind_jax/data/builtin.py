"""A small built-in SFT dataset: procedural arithmetic word problems with
step-by-step rationales. It lets the spine train and resume with no files; the
multi-perspective rationale records (mind_jax/data/records) replace it for MIND.
"""
from __future__ import annotations

import numpy as np

NAMES = ("Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack")
ITEMS = ("apples", "books", "coins", "marbles", "pencils", "stickers", "shells", "cards")


def _gain_then_loss(rng, name, item):
  a, b, c = rng.integers(5, 60), rng.integers(2, 40), rng.integers(1, 30)
  c = min(c, a + b)
  q = (f"{name} has {a} {item}. {name} buys {b} more and then gives away {c}. "
       f"How many {item} does {name} have now?")
  r = (f"{name} starts with {a} {item}. After buying {b} more, {name} has {a} + {b} = {a + b}. "
       f"After giving away {c}, {name} has {a + b} - {c} = {a + b - c}.")
  return q, r, a + b - c


def _boxes(rng, name, item):
  a, b, c = rng.integers(2, 9), rng.integers(2, 9), rng.integers(2, 7)
  q = f"A box holds {a} rows of {b} {item}. How many {item} are in {c} boxes?"
  r = f"One box holds {a} * {b} = {a * b} {item}. So {c} boxes hold {a * b} * {c} = {a * b * c}."
  return q, r, a * b * c


def _reading(rng, name, item):
  a, b, c = rng.integers(5, 30), rng.integers(2, 8), rng.integers(1, 20)
  q = (f"{name} reads {a} pages a day for {b} days, then {c} pages on the last day. "
       f"How many pages does {name} read in total?")
  r = (f"In {b} days {name} reads {a} * {b} = {a * b} pages. "
       f"Adding the last day gives {a * b} + {c} = {a * b + c}.")
  return q, r, a * b + c


def _sharing(rng, name, item):
  per, friends, extra = rng.integers(2, 12), rng.integers(2, 8), rng.integers(0, 5)
  total = per * friends + extra
  q = (f"{name} shares {total} {item} equally among {friends} friends and keeps the rest. "
       f"How many {item} does {name} keep?")
  r = (f"Each friend gets {total} // {friends} = {per} {item}, which uses {per} * {friends} = "
       f"{per * friends}. {name} keeps {total} - {per * friends} = {extra}.")
  return q, r, extra


TEMPLATES = (_gain_then_loss, _boxes, _reading, _sharing)


def generate_examples(num_examples: int, seed: int) -> list[dict]:
  """Deterministic list of {id, question, rationale, answer} dicts."""
  rng = np.random.default_rng(seed)
  examples = []
  for i in range(num_examples):
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    name, item = NAMES[int(rng.integers(len(NAMES)))], ITEMS[int(rng.integers(len(ITEMS)))]
    question, rationale, answer = template(rng, name, item)
    examples.append(dict(id=f"builtin-{i}", question=question, rationale=rationale,
                         answer=str(int(answer))))
  return examples
