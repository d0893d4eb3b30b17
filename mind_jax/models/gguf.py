"""A GGUF file (llama.cpp's one-file format) into a plain transformers model directory.

    gguf_to_hf_dir("SmolLM2-135M-Instruct.Q4_1.gguf", "/tmp/smollm2-hf")

transformers reads the GGUF (config, tokenizer, chat template, weights dequantized to
fp32); we write what `save_pretrained` would, which it refuses for a GGUF-loaded model:
model.safetensors, config.json, the tokenizer files and a generation_config.json that lists
every stop token. import_hf then reads the directory like any other. Only the llama and
qwen2 architectures are accepted (what mind_jax's Decoder computes), and only quantization
types the `gguf` package can dequantize; anything else fails in one line naming it.
"""
from __future__ import annotations

import logging
import os

from mind_jax import faults, paths
from mind_jax.models import hf

# GGUF general.architecture values we accept: transformers reads them as these model types.
ARCHITECTURES = ("llama", "qwen2")
# Token texts llama.cpp treats as end of generation besides the file's eos id (its vocab
# loader's list): an instruct model's end of turn, a base model's end of text.
END_OF_GENERATION = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>",
                     "<|end_of_text|>", "<|end|>", "<end_of_turn>", "<EOT>")
# Metadata ids llama.cpp stops on besides tokenizer.ggml.eos_token_id.
STOP_ID_FIELDS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                  "tokenizer.ggml.eom_token_id")


def read_metadata(gguf_path: str) -> dict:
  """{"architecture", "types" (quantization type -> tensor count), "stop_ids"} of the file
  header (memory-mapped: no weight is read). A file that is no GGUF is one line."""
  from gguf import GGUFReader
  # local: the GGUF reader and transformers read local files only
  if paths.is_remote(gguf_path) or not os.path.isfile(gguf_path):  # local: said above
    raise faults.BadInput(f"--gguf {gguf_path}: no such local file")
  try:
    reader = GGUFReader(gguf_path)
  except (ValueError, OSError, IndexError) as e:  # bad magic, version or truncated header
    raise faults.BadInput(f"--gguf {gguf_path}: not a readable GGUF file "
                          f"({faults.first_line(e)})") from e
  types: dict[str, int] = {}
  for tensor in reader.tensors:
    types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
  return {"architecture": _field(reader, "general.architecture"), "types": types,
          "stop_ids": [int(v) for name in STOP_ID_FIELDS
                       if (v := _field(reader, name)) is not None]}


def _field(reader, name: str):
  field = reader.get_field(name)
  return None if field is None else field.contents()


def check_supported(gguf_path: str, meta: dict) -> None:
  """Fail before the slow load on what we or transformers cannot read."""
  if meta["architecture"] not in ARCHITECTURES:
    raise faults.BadInput(f"--gguf {gguf_path}: architecture {meta['architecture']!r} is not "
                          f"supported (supported: {', '.join(ARCHITECTURES)})")
  unreadable = sorted(set(meta["types"]) - dequantizable_types())
  if unreadable:
    raise faults.BadInput(f"--gguf {gguf_path}: quantization type(s) {', '.join(unreadable)} "
                          "cannot be dequantized by the installed gguf package")


def dequantizable_types() -> set[str]:
  """What gguf.dequantize (which transformers calls per tensor) implements."""
  from gguf import quants
  return {"F32", "F16", *(t.name for t in quants._type_traits)}  # noqa: SLF001 (its registry)


def gguf_to_hf_dir(gguf_path: str, out_dir: str) -> str:
  """Write `gguf_path` as a transformers directory `out_dir` (fp32 safetensors); returns it."""
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  gguf_path = os.path.abspath(gguf_path)  # local: checked above
  meta = read_metadata(gguf_path)
  check_supported(gguf_path, meta)
  folder, name = os.path.split(gguf_path)
  logging.info("reading %s (%s, %s)", gguf_path, meta["architecture"],
               ", ".join(f"{n} {t}" for t, n in sorted(meta["types"].items())))
  model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
  tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
  os.makedirs(out_dir, exist_ok=True)  # local: save_pretrained's
  write_config(model.config, out_dir, gguf_path)  # checked first: it may refuse the model
  write_weights(model, out_dir)
  tokenizer.save_pretrained(out_dir)
  eos = stop_ids(model, tokenizer, meta["stop_ids"])
  write_generation_config(model.generation_config, eos, out_dir)
  logging.info("wrote %s (stop tokens %s)", out_dir, tokenizer.convert_ids_to_tokens(eos))
  return out_dir


def write_generation_config(generation_config, eos: list[int], out_dir: str) -> None:
  """generation_config.json with every stop id: import_hf copies it, and inference,
  the teachers and export_hf stop on its list (DecoderConfig keeps the first id only)."""
  generation = hf.generation_config_dict(generation_config.bos_token_id, eos,
                                         generation_config.pad_token_id)
  paths.write_json(os.path.join(out_dir, "generation_config.json"), generation)


def write_weights(model, out_dir: str) -> None:
  """model.safetensors as save_pretrained would: no lm_head.weight when it is the (tied)
  embedding, which safetensors refuses to store twice anyway."""
  from safetensors.torch import save_file
  tied = model.config.tie_word_embeddings
  tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
  save_file(tensors, os.path.join(out_dir, hf.SAFETENSORS_FILE), metadata={"format": "pt"})


def write_config(config, out_dir: str, gguf_path: str) -> None:
  """config.json without what the GGUF load added (quantization_config would make
  from_pretrained look for the GGUF again), checked as import_hf will read it."""
  config = config.__class__.from_dict(config.to_dict())  # a copy: the model keeps its own
  if hasattr(config, "quantization_config"):
    del config.quantization_config
  config.architectures = [hf.ARCHITECTURES.get(config.model_type, config.model_type)]
  config.dtype = "float32"
  path = os.path.join(out_dir, "config.json")
  config.to_json_file(path)
  try:  # what our Decoder cannot compute (e.g. a llama file transformers reads as mistral)
    hf.decoder_config_from_hf(paths.read_json(path), gguf_path)
  except ValueError as e:
    raise faults.BadInput(f"--gguf {e}") from e


def stop_ids(model, tokenizer, metadata_ids: list[int]) -> list[int]:
  """Every id generation should stop on, as llama.cpp would: the generation config's and
  tokenizer's eos, the file's eos/eot/eom ids, and special tokens named like an end of
  turn or of text (SmolLM2-Instruct's <|endoftext|> is only its unk token in the file)."""
  found = hf_ids(model.generation_config.eos_token_id) + hf_ids(tokenizer.eos_token_id)
  found += metadata_ids
  special = {token.content: i for i, token in tokenizer.added_tokens_decoder.items()}
  found += [special[text] for text in END_OF_GENERATION if text in special]
  return list(dict.fromkeys(found))  # in order, once each


def hf_ids(ids) -> list[int]:
  if ids is None:
    return []
  return [int(i) for i in ids] if isinstance(ids, (list, tuple)) else [int(ids)]
