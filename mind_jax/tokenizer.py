"""The student tokenizer: load a HF tokenizer directory, or train a small
byte-level BPE on the built-in data. Either way a copy goes into
<workdir>/tokenizer, so a resumed run and the HF export use the same one.
Any of these directories may be remote (gs://...)."""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from typing import Any, Callable

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mind_jax import paths

# save_pretrained writes it, and has_saved_copy takes its presence for a complete copy.
CONFIG_FILE = "tokenizer_config.json"
# Not a tokenizer file, but what says every stop token of a chat model (SmolLM2 and
# Qwen2.5-Instruct have two): copied along with the tokenizer, so that decoding, eval and
# the export (hf.TOKENIZER_FILES) of a trained workdir stop where the base model stops.
GENERATION_CONFIG = "generation_config.json"

SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}


def train_bpe(texts: list[str], vocab_size: int,
              split_digits: bool = False) -> PreTrainedTokenizerFast:
  """A byte-level BPE trained in about a second; deterministic for the same texts.

  split_digits: every digit is its own token (as in the Llama and Qwen tokenizers), so
  "4821" is 4 tokens whatever the merges; multi-digit arithmetic needs it. A space
  before a digit stays with it (" 4" can be one token), so numbers cost no extra token.
  """
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.pre_tokenizer = (pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(r" ?\p{N}"), behavior="isolated"), byte_level])
                       if split_digits else byte_level)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                special_tokens=list(SPECIAL_TOKENS.values()),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def fingerprint(tokenizer) -> str:
  """sha256 of the tokenizer's vocabulary and special tokens: names it in records and checks."""
  vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
  payload = repr((vocab, tokenizer.all_special_tokens)).encode()
  return hashlib.sha256(payload).hexdigest()


def load_or_create(path: str, bpe_vocab_size: int, texts: list[str], save_dir: str,
                   split_digits: bool = False):
  """The run's tokenizer: the saved copy in `save_dir` if there is one, else the
  tokenizer at `path`, else a byte-level BPE trained on `texts` (see train_bpe)."""
  if has_saved_copy(save_dir):
    return load(save_dir)
  if path:
    tokenizer = load(path)
    logging.info("tokenizer: %s (%d tokens)", path, len(tokenizer))
  else:
    tokenizer = train_bpe(texts, bpe_vocab_size, split_digits)
    logging.info("tokenizer: byte-level BPE trained on %d texts (%d tokens)", len(texts),
                 len(tokenizer))
  return save(tokenizer, save_dir, source=path or None)


def load_checked(source: str, save_dir: str, check: Callable[[Any, str], None]):
  """The run's tokenizer: the copy in `save_dir` if an earlier start saved one, else the
  one at `source`, then copied into `save_dir`. `check(tokenizer, where)` runs first
  (raising on a mismatch), so only a tokenizer that passed is ever copied."""
  resumed = has_saved_copy(save_dir)
  where = save_dir if resumed else source
  tokenizer = load(where)
  check(tokenizer, where)
  return tokenizer if resumed else save(tokenizer, save_dir, source=source)


def has_saved_copy(save_dir: str) -> bool:
  """Whether `save` completed a copy there (it makes CONFIG_FILE appear last)."""
  return paths.isfile(os.path.join(save_dir, CONFIG_FILE))


def load(path: str, **kwargs):
  """AutoTokenizer.from_pretrained(path), `path` a local or remote directory (or a hub
  name); a remote one keeps its own path as name_or_path, not the download's."""
  with paths.local_copy(path) as local:
    tokenizer = AutoTokenizer.from_pretrained(local, **kwargs)
  if local != path:
    tokenizer.name_or_path = path
  return tokenizer


def save(tokenizer, save_dir: str, source: str | None = None):
  """Save atomically (a kill never leaves a half-written tokenizer); return the saved one.
  `source`: the directory it was loaded from, whose generation_config.json comes along."""
  if paths.is_remote(save_dir):
    return _save_remote(tokenizer, save_dir, source)
  tmp = save_dir + ".tmp"
  paths.rmtree(tmp)
  tokenizer.save_pretrained(tmp)
  _copy_generation_config(source, tmp)
  os.replace(tmp, save_dir)  # local: remote dirs go through _save_remote
  return AutoTokenizer.from_pretrained(save_dir)


def _copy_generation_config(source: str | None, local_dir: str) -> None:
  if source and paths.isfile(os.path.join(source, GENERATION_CONFIG)):
    paths.of(os.path.join(source, GENERATION_CONFIG)).copy(
        os.path.join(local_dir, GENERATION_CONFIG), overwrite=True)


def _save_remote(tokenizer, save_dir: str, source: str | None = None):
  """An object store renames no directory: the files are uploaded one by one, the
  config (what load_or_create looks for) last, so a kill leaves no copy that looks whole."""
  with tempfile.TemporaryDirectory(prefix="mind_jax_tokenizer_") as tmp:
    files, config = os.path.join(tmp, "files"), os.path.join(tmp, CONFIG_FILE)
    tokenizer.save_pretrained(files)
    _copy_generation_config(source, files)
    saved = AutoTokenizer.from_pretrained(files)
    os.replace(os.path.join(files, CONFIG_FILE), config)  # local: tempfile
    paths.rmtree(save_dir)
    paths.copy_tree(files, save_dir)
    paths.copy_local_file(config, os.path.join(save_dir, CONFIG_FILE))
  saved.name_or_path = save_dir
  return saved
