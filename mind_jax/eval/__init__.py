"""Evaluation: benchmark suites (suites.py), generation + scoring and perplexity (run.py).

    python -m mind_jax.eval.run --checkpoint W --suites id,ood,gsm8k=gsm8k_test.jsonl
"""
