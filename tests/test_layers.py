"""The package's layering: a model or library module never imports a command-line module
(one with a `__main__` block), so the commands sit on top and nothing below them reaches up."""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "mind_jax")


def _modules() -> dict[str, ast.Module]:
  modules = {}
  for root, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").removesuffix(".__init__")
        with open(path) as f:
          modules[dotted] = ast.parse(f.read(), path)
  return modules


def _is_command(tree: ast.Module) -> bool:
  return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
             for node in tree.body)


def _imports(tree: ast.Module, known: set[str]) -> set[str]:
  """mind_jax modules imported anywhere in the module (function-level imports too)."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      found.add(node.module)
      found |= {f"{node.module}.{alias.name}" for alias in node.names}
  return found & known


def test_no_library_module_imports_a_command():
  modules = _modules()
  commands = {name for name, tree in modules.items() if _is_command(tree)}
  assert {"mind_jax.train", "mind_jax.import_hf", "mind_jax.export_hf"} <= commands
  offenders = sorted((name, imported) for name, tree in modules.items() if name not in commands
                     for imported in _imports(tree, commands))
  assert not offenders, f"library modules importing command modules: {offenders}"
