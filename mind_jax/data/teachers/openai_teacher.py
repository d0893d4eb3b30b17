"""Any OpenAI-compatible chat-completions endpoint as the teacher: vLLM, SGLang, TGI,
`transformers serve`, or a hosted API.

Each request is the perspective prompt as the user message (after an optional system
prompt); `concurrency` requests are in flight at once. A request that times out, is
refused with 429 or 5xx, or cannot connect is retried with exponential backoff and
jitter, waiting what a Retry-After header asks for when there is one; any other error,
or the last retry failing, stops with TeacherError (the build keeps every finished
rationale, so a rerun asks only for the missing ones). The API key is read from the
environment variable named by `api_key_env`: it is never logged, stored or shown.

Why the `openai` client library: its typed errors (RateLimitError, APIStatusError with
the response headers, APIConnectionError, APITimeoutError) are exactly the cases to
tell apart, and it speaks every endpoint's dialect of the protocol. Its own retries are
off (max_retries=0): ours count every retry for the manifest and honour Retry-After.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import random
import threading
import time
import zlib

from mind_jax.data.teachers.base import USAGE_FIELDS, TeacherRequest

log = logging.getLogger(__name__)


class TeacherError(RuntimeError):
  """A teacher request that cannot succeed (its retries are spent, or it was refused)."""


def _retry_after(error) -> float | None:
  """Seconds a Retry-After header asks to wait (a number of seconds), if any."""
  response = getattr(error, "response", None)
  value = response.headers.get("retry-after") if response is not None else None
  try:
    return max(float(value), 0.0) if value is not None else None
  except ValueError:  # an HTTP date: fall back to our own backoff
    return None


class OpenAITeacher:

  def __init__(self, base_url: str, model: str, api_key_env: str = "", system_prompt: str = "",
               max_new_tokens: int = 512, temperature: float = 0.7, top_p: float = 0.95,
               seed: int = 0, concurrency: int = 8, timeout_s: float = 120.0,
               max_retries: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 60.0,
               name: str | None = None):
    import openai
    if not base_url or not model:
      raise ValueError("teacher backend 'openai' needs teacher.base_url and teacher.model")
    api_key = "not-needed"  # local servers take any key
    if api_key_env:
      if not os.environ.get(api_key_env):
        raise ValueError(f"teacher.api_key_env={api_key_env!r}: that environment variable is "
                         "not set (the key is read from it, never from a config)")
      api_key = os.environ[api_key_env]
    self.base_url, self.model, self.name = base_url, model, name or f"openai:{model}"
    self.system_prompt = system_prompt
    self.sampling = dict(max_tokens=max_new_tokens, temperature=temperature,
                         **({"top_p": top_p} if temperature > 0 else {}))
    self.seed, self.concurrency, self.timeout_s = seed, concurrency, timeout_s
    self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
    self._errors = openai
    self._client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                                 timeout=timeout_s)
    self._lock = threading.Lock()
    self.usage = dict.fromkeys(USAGE_FIELDS, 0)

  def _count(self, **counts) -> None:
    with self._lock:
      for key, value in counts.items():
        self.usage[key] += value

  def _retryable(self, error) -> bool:
    e = self._errors
    if isinstance(error, (e.APIConnectionError, e.APITimeoutError, e.RateLimitError)):
      return True
    return isinstance(error, e.APIStatusError) and error.status_code >= 500

  def messages(self, request: TeacherRequest) -> list[dict]:
    system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
    return system + [{"role": "user", "content": request.prompt}]

  def request_seed(self, request: TeacherRequest) -> int:
    """A sampling seed of (teacher seed, question, perspective): the same whatever the batch,
    so a rerun that asks again for a request asks with the same seed."""
    key = f"{self.seed}:{request.question.id}:{request.perspective}".encode()
    return zlib.crc32(key) & 0x7FFFFFFF

  def _ask(self, request: TeacherRequest) -> str | None:
    """One chat completion, retried; None when the model answers with nothing."""
    for attempt in range(self.max_retries + 1):
      try:
        self._count(requests=1)
        response = self._client.chat.completions.create(
            model=self.model, messages=self.messages(request),
            seed=self.request_seed(request), **self.sampling)
      except self._errors.OpenAIError as error:
        where = f"teacher {self.name} at {self.base_url}"
        if not self._retryable(error):
          self._count(failures=1)
          raise TeacherError(f"{where}: request refused ({type(error).__name__}: {error})") \
              from None
        if attempt == self.max_retries:
          self._count(failures=1)
          raise TeacherError(f"{where}: no answer after {self.max_retries} retries "
                             f"({type(error).__name__}: {error})") from None
        wait = _retry_after(error)
        if wait is None:  # exponential backoff with full jitter
          wait = random.uniform(0.5, 1.0) * min(self.max_backoff_s,
                                                self.backoff_s * 2 ** attempt)
        self._count(retries=1)
        log.info("%s: %s, retry %d/%d in %.1fs", where, type(error).__name__, attempt + 1,
                 self.max_retries, wait)
        time.sleep(wait)
        continue
      if response.usage is not None:
        self._count(prompt_tokens=response.usage.prompt_tokens or 0,
                    completion_tokens=response.usage.completion_tokens or 0)
      text = response.choices[0].message.content if response.choices else None
      return text if text and text.strip() else None
    raise AssertionError("unreachable")

  def generate(self, requests: list[TeacherRequest]) -> list[str | None]:
    """The rationales of `requests`, in order, `concurrency` requests in flight."""
    with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
      futures = [pool.submit(self._ask, r) for r in requests]
      try:
        return [f.result() for f in futures]
      except TeacherError:
        for f in futures:
          f.cancel()  # queued requests are dropped; in-flight ones end on their own
        raise
