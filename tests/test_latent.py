"""The latent-space analysis (mind_jax/eval/latent.py) on points built so: the style
separation score must tell tight, apart clusters from mixed ones, and t-SNE keeps them."""
import numpy as np
import pytest

from mind_jax.eval import latent
from mind_jax.data.teachers import styles


def _clusters(spread: float, seed: int = 0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(3, 16)) * 5
  labels = [s for s in ("a", "b", "c") for _ in range(10)]
  features = np.concatenate([c + spread * rng.normal(size=(10, 16)) for c in centres])
  return features, labels


def test_separation_is_high_for_apart_clusters_and_low_for_mixed_ones():
  apart, labels = _clusters(0.1)
  mixed, _ = _clusters(50.0)
  assert latent.style_separation(apart, labels) > 0.8
  assert latent.style_separation(mixed, labels) < 0.2
  points = latent.tsne_2d(apart, seed=0)
  assert points.shape == (30, 2)
  centre = {s: points[[i for i, label in enumerate(labels) if label == s]].mean(0)
            for s in "abc"}
  for i, label in enumerate(labels):  # each point nearest to its own cluster's centre
    assert min(centre, key=lambda s: np.linalg.norm(points[i] - centre[s])) == label


class _CharTokenizer:
  pad_token_id, eos_token_id, bos_token_id = 0, 1, None

  def encode(self, text, add_special_tokens=False):
    return [2 + ord(ch) % 200 for ch in text]

  def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=True, **_):
    return self.encode(messages[-1]["content"])


def test_held_out_slots_write_every_question_in_every_style():
  from mind_jax.data.questions import Question
  questions = [Question(id="q0", question="What is 12 + 34?", answer="46"),
               Question(id="q1", question="What is 50 - 17?", answer="33")]
  slots = latent.held_out_slots(_CharTokenizer(), questions, styles.STYLES[:3], 1000)
  assert [style for _, _, style in slots] == list(styles.STYLES[:3]) * 2
  for ids, mask, _ in slots:
    assert len(ids) == len(mask) and 0 < sum(mask) < len(mask)  # prompt unscored


def test_unknown_styles_are_refused(tmp_path):
  import json
  (tmp_path / "data").mkdir()
  (tmp_path / "data" / "manifest.json").write_text(json.dumps(
      dict(perspectives=["socratic"], max_len=64)))
  with pytest.raises(Exception, match="not styles-teacher styles"):
    latent.analyse(str(tmp_path))
