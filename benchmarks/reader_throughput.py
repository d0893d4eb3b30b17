"""Reader throughput on a synthetic records directory shaped like the demo.

Writes `--num_examples` random records (K perspectives of T tokens, E-dim
embeddings) into `--num_shards` shards, then times `RecordReader.iterator`
for `--epochs` epochs after one warm-up batch (epoch starts, with their
shuffle-buffer fill, are inside the timed part). Prints examples/s, padded
tokens/s (K*T per example) and real tokens/s (attention mask), and the ratio
against the rate at which a train step consumes examples: the reader should
be 20x or more faster, so it never stalls the step.

    python benchmarks/reader_throughput.py                          # ~15 s on 2 cores
    python benchmarks/reader_throughput.py --train_examples_per_s 200 --epochs 5
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quieter; before tensorflow is imported


from mind_jax import paths  # noqa: E402
from mind_jax.data import reader as reader_lib, records  # noqa: E402

TARGET_RATIO = 20


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_examples", type=int, default=2000)
  parser.add_argument("--num_perspectives", type=int, default=8, help="K")
  parser.add_argument("--max_len", type=int, default=256, help="T")
  parser.add_argument("--embed_dim", type=int, default=384, help="E (MiniLM)")
  parser.add_argument("--num_shards", type=int, default=4)
  parser.add_argument("--batch_size", type=int, default=16, help="global batch")
  parser.add_argument("--epochs", type=int, default=3, help="timed epochs")
  parser.add_argument("--shuffle_buffer", type=int, default=reader_lib.DEFAULT_SHUFFLE_BUFFER)
  parser.add_argument("--train_examples_per_s", type=float, default=50.0,
                      help="examples/s the train step consumes, to compare against")
  parser.add_argument("--json", default="", help="also write the key numbers here")
  parser.add_argument("--data_dir", default="", help="reuse/write records here (default: tmp)")
  return parser.parse_args()


def write_records(args, out_dir: str) -> float:
  spec = records.RecordSpec(args.num_perspectives, args.max_len, args.embed_dim)
  start = time.perf_counter()
  shards = records.write_shards(records.synthetic_examples(args.num_examples, spec, seed=0),
                                out_dir, args.num_shards, spec)
  records.write_manifest(out_dir, dict(tokenizer=dict(name="synthetic", fingerprint="")),
                         shards, spec)
  seconds = time.perf_counter() - start
  size = sum(s["bytes"] for s in shards)
  print(f"wrote {args.num_examples} records, {size / 2**20:.1f} MiB "
        f"({size / args.num_examples / 1024:.1f} KiB/record) in {seconds:.1f} s")
  return seconds


def time_reader(args, data_dir: str) -> tuple[float, int, int]:
  """(seconds, examples, real tokens) over the timed batches."""
  reader = reader_lib.RecordReader(data_dir, args.batch_size, seed=0,
                                   shuffle_buffer=args.shuffle_buffer,
                                   process_index=0, process_count=1)
  batches = reader.iterator(0)
  next(batches)  # warm-up: tf.data graph construction and the first buffer fill
  num_batches = args.epochs * reader.batches_per_epoch
  examples = real_tokens = 0
  start = time.perf_counter()
  for _, batch in zip(range(num_batches), batches):
    examples += len(batch["example_index"])
    real_tokens += int(batch["attention_mask"].sum())
  return time.perf_counter() - start, examples, real_tokens


def main():
  args = parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir or tmp
    if not os.path.exists(os.path.join(data_dir, records.MANIFEST)):
      write_records(args, data_dir)
    seconds, examples, real_tokens = time_reader(args, data_dir)
  rate = examples / seconds
  padded = rate * args.num_perspectives * args.max_len
  ratio = rate / args.train_examples_per_s
  print(f"shape K={args.num_perspectives} T={args.max_len} E={args.embed_dim}, "
        f"batch {args.batch_size}, {args.num_shards} shards, {os.cpu_count()} CPUs")
  print(f"{'examples/s':>12} {'tokens/s (padded)':>18} {'tokens/s (real)':>16} "
        f"{'vs train step':>14}")
  print(f"{rate:12.0f} {padded:18.3g} {real_tokens / seconds:16.3g} {ratio:13.1f}x")
  verdict = "ok" if ratio >= TARGET_RATIO else "BELOW TARGET"
  print(f"reader / train step ({args.train_examples_per_s:g} examples/s) = {ratio:.1f}x, "
        f"target >= {TARGET_RATIO}x: {verdict}")
  if args.json:  # the numbers benchmarks/run_all.py tabulates
    paths.write_json(args.json, dict(examples_per_s=rate, padded_tokens_per_s=padded, ratio=ratio,
                             train_examples_per_s=args.train_examples_per_s))


if __name__ == "__main__":
  main()
