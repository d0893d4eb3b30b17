"""Requests per second of the `openai` teacher against a local `transformers serve`, at
several concurrencies.

    python benchmarks/openai_teacher_throughput.py [--requests 48] [--new 32] [--json F]

The served model is a tiny random Llama (configs/debug_cpu.py shape, initialisation)
that our own export_hf writes; the server is `transformers serve DIR --device cpu` on
127.0.0.1 (no continuous batching), started once. The same requests go at every
concurrency (greedy, a fixed number of new tokens); the ratio is against concurrency 1
in the same process. It measures our client's fan-out and the server's queueing, not
a production engine: vLLM or SGLang batch concurrent requests; transformers serve runs
them one at a time unless --continuous-batching is given (then it is passed on).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from mind_jax import checkpoint, export_hf, progress, train  # noqa: E402
from mind_jax.config import load_config_file  # noqa: E402
from mind_jax.data.questions import Question  # noqa: E402
from mind_jax.data.teachers.base import TeacherRequest  # noqa: E402
from mind_jax.data.teachers.openai_teacher import OpenAITeacher  # noqa: E402
from mind_jax.eval.report import cpu_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# transformers serve answers chat completions only for a tokenizer with a chat template.
CHAT_TEMPLATE = ("{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}\n"
                 "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


def tiny_model(root: str) -> str:
  from transformers import AutoTokenizer
  work = os.path.join(root, "run")
  config = load_config_file(os.path.join(REPO, "configs", "debug_cpu.py"))
  config.train.steps = 0
  train.train(config, work)
  tokenizer = AutoTokenizer.from_pretrained(checkpoint.tokenizer_dir(work))
  tokenizer.chat_template = CHAT_TEMPLATE
  tokenizer.save_pretrained(checkpoint.tokenizer_dir(work))
  return export_hf.export_hf(work, os.path.join(root, "hf"))


def serve(model_dir: str, continuous_batching: bool) -> tuple[subprocess.Popen, str]:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  process = subprocess.Popen(
      [os.path.join(os.path.dirname(sys.executable), "transformers"), "serve", model_dir,
       "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
      + (["--continuous-batching"] if continuous_batching else []),
      env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  for _ in range(240):
    try:
      urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
      return process, f"http://127.0.0.1:{port}/v1"
    except OSError:
      time.sleep(0.5)
  process.kill()
  raise TimeoutError("transformers serve did not come up in 120 s")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--requests", type=int, default=48)
  parser.add_argument("--new", type=int, default=32, help="new tokens per request")
  parser.add_argument("--concurrency", default="1,4,16")
  parser.add_argument("--continuous-batching", action="store_true",
                      help="serve with transformers' continuous batching (paged attention)")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  progress.quiet_library_logs()
  with tempfile.TemporaryDirectory() as root:
    model_dir = tiny_model(root)
    process, url = serve(model_dir, args.continuous_batching)
    try:
      requests = [TeacherRequest(Question(f"q{i}", f"What is {i} + {i}?", str(2 * i)),
                                 "intuitive", f"What is {i} + {i}? Think step by step.")
                  for i in range(args.requests)]
      OpenAITeacher(url, model_dir, max_new_tokens=args.new, temperature=0.0,
                    concurrency=1).generate(requests[:2])  # warm-up
      rows = []
      for concurrency in [int(c) for c in args.concurrency.split(",")]:
        teacher = OpenAITeacher(url, model_dir, max_new_tokens=args.new, temperature=0.0,
                                concurrency=concurrency)
        start = time.perf_counter()
        teacher.generate(requests)
        seconds = time.perf_counter() - start
        rows.append(dict(concurrency=concurrency, requests_per_s=len(requests) / seconds,
                         completion_tokens=teacher.usage["completion_tokens"],
                         retries=teacher.usage["retries"]))
    finally:
      process.kill()
  base = rows[0]["requests_per_s"]
  mode = "continuous batching" if args.continuous_batching else "one request at a time"
  print(f"openai teacher vs transformers serve ({mode}; tiny Llama, CPU), {args.requests} "
        f"requests x {args.new} new tokens, on {cpu_model()}")
  print(f"{'concurrency':>11} {'requests/s':>11} {'vs 1':>6} {'tokens':>7} {'retries':>8}")
  for row in rows:
    print(f"{row['concurrency']:>11} {row['requests_per_s']:>11.2f} "
          f"{row['requests_per_s'] / base:>6.2f} {row['completion_tokens']:>7} "
          f"{row['retries']:>8}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(cpu=cpu_model(), rows=rows), f, indent=1)


if __name__ == "__main__":
  main()
