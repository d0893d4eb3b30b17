"""Greedy decoding speed: mind_jax.decode.generate against transformers' generate, on CPU.

Both sides decode the same random Llama (vocab 8192, hidden 256, 4 layers, 8 heads
/ 4 KV heads, SwiGLU 688; our params are a copy of the torch model's through the
import table) in fp32: a batch of 8 random prompts of 32 tokens, 128 new tokens
each, no EOS, so every row runs to the end. Each side's tokens/s counts generated
tokens (batch x new tokens) over the wall time of one whole generate call,
prefill included. Ours is compiled first (timed apart); then the measured calls of
the two frameworks alternate, so load from other processes hits both alike. The
greedy tokens of the two are compared too, as a check that both did the same work.

    python benchmarks/decode_vs_transformers.py              # about a minute on 2 cores
    python benchmarks/decode_vs_transformers.py --batch 16 --new 256
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

# Quieter logs; must be set before jax / transformers are imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from mind_jax import paths  # noqa: E402
from mind_jax import decode  # noqa: E402
from mind_jax.models import hf  # noqa: E402

HF_MODEL = dict(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=4, head_dim=32, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                max_position_embeddings=2048, tie_word_embeddings=False,
                bos_token_id=None, eos_token_id=None, pad_token_id=0)
PAD = 0


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--prompt", type=int, default=32, help="prompt tokens per row")
  p.add_argument("--new", type=int, default=128, help="new tokens per row")
  p.add_argument("--json", default="", help="also write the key numbers here")
  p.add_argument("--repeats", type=int, default=3, help="measured calls per framework")
  p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (XLA:CPU uses "
                 "one thread per visible core)")
  return p.parse_args()


def torch_model() -> LlamaForCausalLM:
  torch.manual_seed(0)
  config = LlamaConfig(**HF_MODEL)
  config._attn_implementation = "sdpa"  # transformers' default; said so the report is exact
  return LlamaForCausalLM(config).eval()


def our_params(model: LlamaForCausalLM):
  """(DecoderConfig, params) holding the torch model's weights, via the import table."""
  cfg = hf.decoder_config_from_hf(model.config.to_dict(), "<benchmark model>")
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  return cfg, hf.params_from_hf(cfg, state)


def run_torch(model, prompts: np.ndarray, new: int) -> np.ndarray:
  ids = torch.from_numpy(prompts.astype(np.int64))
  with torch.inference_mode():
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=new, pad_token_id=PAD, eos_token_id=None,
                         temperature=None, top_p=None, top_k=None)
  return out[:, prompts.shape[1]:].numpy()


def run_ours(cfg, params, prompts: np.ndarray, new: int) -> np.ndarray:
  out = decode.generate(params, cfg, prompts.tolist(), new, eos_token_id=None, pad_token_id=PAD)
  return np.asarray(out)


def main():
  args = parse_args()
  torch.set_num_threads(args.threads)
  model = torch_model()
  cfg, params = our_params(model)
  params = jax.device_put(params)
  rng = np.random.RandomState(0)
  prompts = rng.randint(1, HF_MODEL["vocab_size"], (args.batch, args.prompt))
  tokens = args.batch * args.new
  print(f"model: {cfg.num_params() / 1e6:.2f}M params, {cfg.num_layers} layers, hidden "
        f"{cfg.hidden_size}, heads {cfg.num_heads}/{cfg.num_kv_heads}, vocab {cfg.vocab_size}; "
        f"batch {args.batch}, prompt {args.prompt}, {args.new} new tokens, greedy, fp32; "
        f"torch threads {args.threads}, jax devices {jax.devices()[0].platform} x1")

  t0 = time.perf_counter()
  ours_tokens = run_ours(cfg, params, prompts, args.new)  # compiles
  first_call_s = time.perf_counter() - t0
  print(f"ours: first call (compile + run) {first_call_s:.2f} s")
  torch_tokens = run_torch(model, prompts, args.new)  # warm-up
  assert ours_tokens.shape == torch_tokens.shape == (args.batch, args.new)
  same = int((ours_tokens == torch_tokens).all(axis=1).sum())
  print(f"greedy tokens identical in {same}/{args.batch} rows")

  times = {"ours": [], "transformers": []}
  for _ in range(args.repeats):
    for name, fn in (("transformers", lambda: run_torch(model, prompts, args.new)),
                     ("ours", lambda: run_ours(cfg, params, prompts, args.new))):
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  speed = {name: tokens / statistics.median(ts) for name, ts in times.items()}
  for name, ts in times.items():
    print(f"{name:>12}: {speed[name]:8.0f} tokens/s  (median {statistics.median(ts):.3f} s per "
          f"generate of {tokens} tokens; runs {' '.join(f'{t:.3f}' for t in ts)})")
  print(f"ratio ours / transformers: {speed['ours'] / speed['transformers']:.1f}x")
  if args.json:  # the numbers benchmarks/run_all.py tabulates
    paths.write_json(args.json, dict(ours_tokens_per_s=speed["ours"],
                             transformers_tokens_per_s=speed["transformers"],
                             ratio=speed["ours"] / speed["transformers"],
                             first_call_s=first_call_s, identical_rows=same, rows=args.batch))


if __name__ == "__main__":
  main()
