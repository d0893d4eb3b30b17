"""The paper's latent-space analysis: where each student puts the rationale styles.

    python -m mind_jax.eval.latent --table runs/testbed_smollm2

For one seed of a finished table (mind_jax/eval/experiment.py), every student (zero-shot,
each single style, union, MIND) reads the same held-out rationales: ID test questions
(never trained on) written in every style by the offline styles teacher, in the training
format (encode.encode_slot). Each rationale becomes one point, its last hidden state
mean-pooled over the rationale's tokens. Per student:

  t-SNE (scikit-learn) of those points, coloured by style, one panel per student;
  style separation, the silhouette score of the style labels in the full hidden space
  (1: each style its own tight cluster; 0: styles overlap), so the picture has a number.

The paper reads a mixture student's tighter, overlapping clusters as "one shared
representation of the reasoning". Writes <table>/latent_tsne.png and latent.json.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import random
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mind_jax import faults, paths, progress
from mind_jax.data import encode
from mind_jax.data.teachers import styles
from mind_jax.eval import run as eval_run, suites as suites_lib
from mind_jax.models import decoder

PLOT = "latent_tsne.png"
RESULT = "latent.json"


def held_out_slots(tokenizer, questions, style_names: Sequence[str], max_len: int,
                   seed: int = 0) -> list[tuple[list[int], list[int], str]]:
  """(token ids, rationale mask, style) of every question written in every style."""
  rng = random.Random(seed)
  slots = []
  for q in questions:
    for style in style_names:
      slot = encode.encode_slot(tokenizer, q.question, styles.rationale(q.question, style, rng),
                                q.answer, max_len)
      n = int(slot["length"])
      slots.append((slot["input_ids"][:n].tolist(), slot["loss_mask"][:n].tolist(), style))
  return slots


@functools.lru_cache(maxsize=4)
def _pooled_program(cfg: decoder.DecoderConfig):
  """Jitted (params, ids, attention mask, pool mask) -> [batch, hidden] mean-pooled
  last hidden state (after the final norm) over the pool mask's tokens."""
  model = decoder.Decoder(cfg)

  def pooled(params, ids, attention_mask, pool):
    hidden, _ = model.apply({"params": params}, ids, attention_mask=attention_mask,
                            return_hidden=True)
    weights = pool.astype(jnp.float32)[..., None]
    return (hidden.astype(jnp.float32) * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)

  return jax.jit(pooled)


def mean_hidden(model: eval_run.Model, slots, batch_size: int) -> np.ndarray:
  """[len(slots), hidden]: each slot's mean-pooled last hidden state over its rationale."""
  program = _pooled_program(model.cfg)
  length = max(len(ids) for ids, _, _ in slots)
  out = []
  for start in range(0, len(slots), batch_size):
    chunk = slots[start:start + batch_size]
    chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one compiled shape
    ids = np.full((batch_size, length), model.pad_id, np.int32)
    attention, pool = np.zeros_like(ids), np.zeros_like(ids)
    for row, (tokens, mask, _) in enumerate(chunk):
      ids[row, :len(tokens)], attention[row, :len(tokens)], pool[row, :len(tokens)] = (
          tokens, 1, mask)
    out.append(np.asarray(program(model.params, ids, attention, pool)))
  return np.concatenate(out)[:len(slots)]


def style_separation(features: np.ndarray, labels: Sequence[str]) -> float:
  """Silhouette score of the style labels (cosine distance) in the full hidden space."""
  from sklearn.metrics import silhouette_score  # scikit-learn: only this analysis needs it
  return float(silhouette_score(features, list(labels), metric="cosine"))


def tsne_2d(features: np.ndarray, seed: int) -> np.ndarray:
  from sklearn.manifold import TSNE  # scikit-learn: only this analysis needs it
  perplexity = min(30.0, (len(features) - 1) / 3)
  return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
              metric="cosine").fit_transform(features)


def plot(points: dict[str, np.ndarray], labels: Sequence[str], separation: dict[str, float],
         path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(points)
  columns = min(4, len(names))
  rows = -(-len(names) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.4 * rows), squeeze=False)
  style_names = list(dict.fromkeys(labels))
  colours = plt.get_cmap("tab10")
  for ax, name in zip(axes.flat, names):
    for i, style in enumerate(style_names):
      chosen = [j for j, label in enumerate(labels) if label == style]
      ax.scatter(points[name][chosen, 0], points[name][chosen, 1], s=9, color=colours(i),
                 label=style)
    ax.set_title(f"{name}\nstyle separation {separation[name]:+.2f}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7, loc="best")
  fig.suptitle("t-SNE of mean-pooled last hidden states over held-out rationales")
  fig.tight_layout()
  with paths.of(path).open("wb") as f:
    fig.savefig(f, dpi=110)
  plt.close(fig)


def students(table: str, seed: int) -> dict[str, str]:
  """Row name -> workdir of every finished run of `seed` (from its result.json)."""
  runs = os.path.join(table, "runs", f"seed{seed}")
  found = {}
  for name in sorted(paths.listdir(runs)):
    result = os.path.join(runs, name, "result.json")
    if paths.isfile(result):
      run = paths.read_json(result)
      found[run["method"]] = run["workdir"]
  if not found:
    raise faults.BadInput(f"{runs}: no finished run (result.json) for seed {seed}")
  return dict(sorted(found.items(), key=lambda kv: (kv[0] != "zero_shot",
                                                    kv[0].startswith(("union", "mind")), kv[0])))


def analyse(table: str, seed: int = 0, questions: int = 25, batch_size: int = 20) -> dict:
  """The plot and the separation scores of every student of `seed` in `table`."""
  data_dir = os.path.join(table, "data")
  manifest = paths.read_json(os.path.join(data_dir, "manifest.json"))
  style_names = list(manifest["perspectives"])
  unknown = sorted(set(style_names) - set(styles.STYLES))
  if unknown:
    raise faults.BadInput(f"{data_dir}: perspectives {unknown} are not styles-teacher styles; "
                          "the latent analysis renders held-out rationales with that teacher")
  suite = suites_lib.build_suites("arith_id", suites_lib.training_questions(data_dir),
                                  id_size=questions, ood_size=1)[0]
  workdirs = students(table, seed)
  points, separation, slots = {}, {}, None
  for name, workdir in workdirs.items():
    model = eval_run.load_model(workdir)
    slots = slots or held_out_slots(model.tokenizer, suite.questions, style_names,
                                    manifest["max_len"], seed)
    labels = [style for _, _, style in slots]
    features = mean_hidden(model, slots, batch_size)
    separation[name] = style_separation(features, labels)
    points[name] = tsne_2d(features, seed)
    logging.info("%s: style separation %+.3f over %d rationales", name, separation[name],
                 len(slots))
  plot(points, labels, separation, os.path.join(table, PLOT))
  result = dict(seed=seed, questions=len(suite.questions), styles=style_names,
                rationales=len(slots), style_separation=separation,
                metric="silhouette of the style labels, cosine, full hidden space")
  paths.write_json(os.path.join(table, RESULT), result)
  return result


@faults.exit_cleanly
def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--table", required=True, help="a finished experiment's --out directory")
  p.add_argument("--seed", type=int, default=0, help="whose students are compared")
  p.add_argument("--questions", type=int, default=25,
                 help="held-out ID questions, each written in every style")
  p.add_argument("--batch_size", type=int, default=20)
  args = p.parse_args(argv)
  if args.questions < 2 or args.batch_size < 1:
    raise faults.BadInput("--questions must be >= 2 and --batch_size >= 1")
  progress.quiet_library_logs()
  result = analyse(args.table, args.seed, args.questions, args.batch_size)
  print(json.dumps(result["style_separation"], indent=1))
  return result


if __name__ == "__main__":
  main()
