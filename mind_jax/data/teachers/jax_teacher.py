"""A mind_jax checkpoint as the teacher: generation with mind_jax.decode on every device.

The backend for TPU pods (data.teacher.backend = "jax"): the model is a workdir
(a training run, or `python -m mind_jax.import_hf --hf_dir D --out W`), its
params sharded over a mesh of all devices, its tokenizer the workdir's
tokenizer/. Prompts are built as HFTeacher builds them (encode.chat_prompt_ids: the
chat template if the tokenizer has one), so greedy output equals HFTeacher's on the
same model.
On a multi-host pod every process must call `generate` with the same requests.
"""
from __future__ import annotations

import os
import types

import jax
from jax.sharding import Mesh

from mind_jax import checkpoint as checkpoint_lib
from mind_jax import decode, paths, sharding
from mind_jax.data import encode
from mind_jax.data.teachers.base import TeacherRequest
from mind_jax.models import decoder


def restore_on_mesh(workdir: str, mesh: Mesh, rules) -> tuple[decoder.DecoderConfig, dict]:
  """(model config, params) of the newest checkpoint, each array in its logical sharding."""
  step, meta = checkpoint_lib.read_meta(workdir)
  cfg = decoder.DecoderConfig.from_config(meta["model"])
  shapes, _ = decoder.abstract_params(cfg)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, decode.param_shardings(cfg, mesh, rules))
  _, restored = checkpoint_lib.restore(workdir, step, {"params": abstract})
  return cfg, restored["params"]


def eos_token_ids(tokenizer_dir: str, tokenizer, cfg: decoder.DecoderConfig) -> list[int]:
  """What HF generate stops on: generation_config.json's eos (one id or a list; import_hf
  copies or writes it), else the tokenizer's, else the model config's."""
  path = os.path.join(tokenizer_dir, "generation_config.json")
  if paths.isfile(path):
    eos = paths.read_json(path).get("eos_token_id")
    if eos is not None:
      return [eos] if isinstance(eos, int) else list(eos)
  if tokenizer.eos_token_id is not None:
    return [tokenizer.eos_token_id]
  return [cfg.eos_token_id] if cfg.eos_token_id >= 0 else []


class JaxTeacher:

  def __init__(self, checkpoint: str, max_new_tokens: int = 512, temperature: float = 0.7,
               top_p: float = 0.95, batch_size: int = 16, seed: int = 0,
               name: str | None = None, mesh: Mesh | None = None):
    """temperature == 0 decodes greedily (top_p is then unused). `mesh` defaults to
    all devices on the fsdp axis (params sharded, batch split over every device)."""
    from mind_jax import tokenizer as tokenizer_lib
    self.workdir = checkpoint_lib.resolve_workdir(checkpoint)
    self.name = name or os.path.basename(os.path.normpath(self.workdir))
    self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
    self.batch_size, self.seed = batch_size, seed
    self.mesh = mesh if mesh is not None else sharding.make_mesh(
        types.SimpleNamespace(data=1, fsdp=-1, tensor=1))
    self.rules = decode.hashable_rules()  # config.mesh.rules of the default config
    self.cfg, self.params = restore_on_mesh(self.workdir, self.mesh, self.rules)
    tok_dir = checkpoint_lib.tokenizer_dir(self.workdir)
    self.tokenizer = tokenizer_lib.load(tok_dir, local_files_only=True)
    self.eos_ids = eos_token_ids(tok_dir, self.tokenizer, self.cfg)
    pad = self.tokenizer.pad_token_id
    # The pad id only fills masked slots; any valid id will do when there is none.
    self.pad_id = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)

  def _generate_batch(self, prompts: list[str], rng: jax.Array) -> list[str]:
    ids = [encode.chat_prompt_ids(self.tokenizer, p) for p in prompts]
    new_tokens = decode.generate(self.params, self.cfg, ids, self.max_new_tokens, self.eos_ids,
                                 self.pad_id, temperature=self.temperature, top_p=self.top_p,
                                 rng=rng, mesh=self.mesh, rules=self.rules)
    return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

  def generate(self, requests: list[TeacherRequest]) -> list[str | None]:
    rng = jax.random.PRNGKey(self.seed)  # sampling is reproducible for a given request list
    out = []
    for n, start in enumerate(range(0, len(requests), self.batch_size)):
      chunk = requests[start:start + self.batch_size]
      out += self._generate_batch([r.prompt for r in chunk], jax.random.fold_in(rng, n))
    return [text if text.strip() else None for text in out]
