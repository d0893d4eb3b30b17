"""A local transformers causal LM as the teacher (a model directory, never a
hub download): batched generation with left padding, on the GPU when there is one.
Prompts are built by encode.chat_prompt_ids (the chat template when the tokenizer has
one), as the jax teacher builds them."""
from __future__ import annotations

import os

from mind_jax import paths
from mind_jax.data import encode
from mind_jax.data.teachers.base import TeacherRequest


class HFTeacher:

  def __init__(self, model_dir: str | os.PathLike, max_new_tokens: int = 512,
               temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 8,
               seed: int = 0, dtype: str = "auto", name: str | None = None):
    """temperature == 0 decodes greedily (top_p is then unused)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    self.model_dir = os.fspath(model_dir)
    self.name = name or os.path.basename(os.path.normpath(self.model_dir))
    self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
    self.batch_size, self.seed = batch_size, seed
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    with paths.local_copy(self.model_dir) as local:  # transformers reads local files only
      tokenizer = AutoTokenizer.from_pretrained(local, local_files_only=True)
      self.model = AutoModelForCausalLM.from_pretrained(
          local, dtype=dtype, local_files_only=True).to(self.device).eval()
    if tokenizer.pad_token is None:  # fills the left padding of a batch
      tokenizer.pad_token = tokenizer.eos_token
    self.tokenizer = tokenizer

  def _generate_batch(self, prompts: list[str]) -> list[str]:
    import torch
    ids = [encode.chat_prompt_ids(self.tokenizer, p) for p in prompts]
    width = max(len(row) for row in ids)
    pad = self.tokenizer.pad_token_id
    batch = dict(  # left padding: every row's prompt ends at the last column
        input_ids=torch.tensor([[pad] * (width - len(row)) + row for row in ids]),
        attention_mask=torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids]))
    batch = {key: value.to(self.device) for key, value in batch.items()}
    sampling = dict(do_sample=True, temperature=self.temperature, top_p=self.top_p)
    if self.temperature == 0:
      sampling = dict(do_sample=False, temperature=None, top_p=None)
    with torch.no_grad():
      output = self.model.generate(**batch, max_new_tokens=self.max_new_tokens,
                                   pad_token_id=self.tokenizer.pad_token_id, **sampling)
    new_tokens = output[:, batch["input_ids"].shape[1]:]  # left padding: prompts end together
    return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

  def generate(self, requests: list[TeacherRequest]) -> list[str | None]:
    import torch
    torch.manual_seed(self.seed)  # sampling is reproducible for a given request list
    out = []
    for start in range(0, len(requests), self.batch_size):
      chunk = requests[start:start + self.batch_size]
      out += self._generate_batch([r.prompt for r in chunk])
    return [text if text.strip() else None for text in out]
