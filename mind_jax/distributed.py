"""Multi-host start-up: how many JAX processes the environment announces, starting
them together (jax.distributed.initialize) and checking the layout that joined.

train.distributed (auto, on, off) and train.distributed_timeout_s are the settings;
launch/*.sh and README "Launch" show the environments (TPU pods, JAX_* variables).
"""
from __future__ import annotations

import logging
import os

import jax


def expected_process_count() -> int | None:
  """The host count the environment announces: TPU pods, or JAX_NUM_PROCESSES (set with
  JAX_COORDINATOR_ADDRESS and JAX_PROCESS_ID to start processes by hand, e.g. on GPUs)."""
  hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if len(hosts) > 1:
    return len(hosts)
  if os.environ.get("JAX_NUM_PROCESSES"):
    return int(os.environ["JAX_NUM_PROCESSES"])
  return None


def check_processes(process_index: int, process_count: int, expected: int | None) -> None:
  """Fail clearly on a process layout that cannot be right, before any collective hangs."""
  if not 0 <= process_index < process_count:
    raise RuntimeError(f"process id {process_index} is outside 0..{process_count - 1}")
  if expected is not None and process_count != expected:
    raise RuntimeError(f"{process_count} JAX processes joined but the environment announces "
                       f"{expected} hosts: start the same command on every host (--worker=all)")


def initialize(mode: str, timeout_s: int) -> None:
  """Multi-host start-up; it must run on every host before any other JAX call."""
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"train.distributed={mode!r}: expected auto, on or off")
  expected = expected_process_count()
  multi_host = expected is not None or "JAX_COORDINATOR_ADDRESS" in os.environ
  if mode == "off" or (mode == "auto" and not multi_host):
    return
  logging.info("jax.distributed.initialize: waiting up to %ds for %s processes", timeout_s,
               expected or "all")
  explicit = {}
  if "JAX_COORDINATOR_ADDRESS" in os.environ:  # outside TPU pods: say who is who
    explicit = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                    num_processes=expected,
                    process_id=int(os.environ.get("JAX_PROCESS_ID", "0")))
  try:
    jax.distributed.initialize(initialization_timeout=timeout_s, **explicit)
  except Exception as e:  # a peer that never came up: say so instead of a bare RPC error
    raise RuntimeError(f"multi-host start-up failed after up to {timeout_s}s ({e}); check that "
                       "every host runs the same command and can reach the coordinator") from e
  check_processes(jax.process_index(), jax.process_count(), expected)
  logging.info("process %d of %d", jax.process_index(), jax.process_count())
