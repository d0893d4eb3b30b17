"""A mind_jax checkpoint as the teacher: generation with mind_jax.decode on every device.

The backend for TPU pods (data.teacher.backend = "jax"): the model is a workdir
(a training run, or `python -m mind_jax.import_hf --hf_dir D --out W`) read by
inference.load_model, its params sharded over a mesh of all devices, its tokenizer
the workdir's tokenizer/. Prompts are built as HFTeacher builds them (encode.chat_prompt_ids: the
chat template if the tokenizer has one), so greedy output equals HFTeacher's on the
same model.
On a multi-host pod every process must call `generate` with the same requests.
"""
from __future__ import annotations

import os

import jax
from jax.sharding import Mesh

from mind_jax import decode, inference, sharding
from mind_jax.data import encode
from mind_jax.data.teachers.base import TeacherRequest


class JaxTeacher:

  def __init__(self, checkpoint: str, max_new_tokens: int = 512, temperature: float = 0.7,
               top_p: float = 0.95, batch_size: int = 16, seed: int = 0,
               name: str | None = None, mesh: Mesh | None = None):
    """temperature == 0 decodes greedily (top_p is then unused). `mesh` defaults to
    all devices on the fsdp axis (params sharded, batch split over every device)."""
    self.model = inference.load_model(checkpoint, mesh=mesh if mesh is not None
                                      else sharding.device_mesh())
    self.name = name or os.path.basename(os.path.normpath(self.model.workdir))
    self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
    self.batch_size, self.seed = batch_size, seed

  @property
  def tokenizer(self):
    return self.model.tokenizer

  def _generate_batch(self, prompts: list[str], rng: jax.Array) -> list[str]:
    m = self.model
    ids = [encode.chat_prompt_ids(m.tokenizer, p) for p in prompts]
    new_tokens = decode.generate(m.params, m.cfg, ids, self.max_new_tokens, m.eos_ids, m.pad_id,
                                 temperature=self.temperature, top_p=self.top_p, rng=rng,
                                 mesh=m.mesh, rules=m.rules)
    return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

  def generate(self, requests: list[TeacherRequest]) -> list[str | None]:
    rng = jax.random.PRNGKey(self.seed)  # sampling is reproducible for a given request list
    out = []
    for n, start in enumerate(range(0, len(requests), self.batch_size)):
      chunk = requests[start:start + self.batch_size]
      out += self._generate_batch([r.prompt for r in chunk], jax.random.fold_in(rng, n))
    return [text if text.strip() else None for text in out]
