"""Shared assertions for comparing runs on different meshes."""
import jax
import numpy as np


def assert_trees_close(tree, reference, rtol=1e-5, element_atol=1e-4):
  """Tensor-wise relative error below rtol, then element-wise closeness.

  Adam divides by sqrt(v): an element whose gradient is tiny turns a
  reduction-order change of ~1e-7 into up to ~1e-4 absolute (a fraction of one
  Adam step, lr 1e-3 here) after a few steps, so
  single elements get a small absolute floor; the tensor-wise check stays strict.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))
  ref = jax.tree.leaves(jax.device_get(reference))
  assert len(flat) == len(ref)
  for (path, got), want in zip(flat, ref):
    name = jax.tree_util.keystr(path)
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    rel = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12)
    assert rel < rtol, (name, rel)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=element_atol, err_msg=name)
