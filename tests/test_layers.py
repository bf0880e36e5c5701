"""The import graph against the intended layers: no module of ours imports one above it.

Read from the source (every import statement, inside functions too), so a lazy import that runs
the wrong way is caught as well as a top-level one.
"""

import ast
from pathlib import Path

import pytest
from conftest import REPO_ROOT

# Bottom to top; a module may import modules of its own layer or below. The longest matching
# prefix gives a module's layer.
LAYERS = [
    ("foundation", ["llama_jax.config", "llama_jax.jsonl", "llama_jax.tokenizer",
                    "llama_jax.distributed", "llama_jax.kernels", "llama_jax.gpu_compile"]),
    ("sharding", ["llama_jax.sharding"]),
    ("attention", ["llama_jax.attention"]),
    ("model", ["llama_jax.model"]),
    ("model services", ["llama_jax.optim", "llama_jax.metrics", "llama_jax.checkpoint",
                        "llama_jax.data", "llama_jax.formats", "llama_jax.loop_state"]),
    ("training step", ["llama_jax.train_step"]),
    ("preprocessing", ["preprocessing"]),  # the corpus pipelines write what llama_jax.data reads
    ("inference", ["llama_jax.inference"]),
    ("generation", ["llama_jax.generate"]),
    ("evaluation", ["llama_jax.eval"]),
    ("programs", ["llama_jax.train", "llama_jax.plan", "llama_jax.convert", "llama_jax.recipe",
                  "llama_jax.report", "llama_jax.testing", "llama_jax"]),
]
LAYER_OF = {prefix: (index, name) for index, (name, prefixes) in enumerate(LAYERS)
            for prefix in prefixes}
OURS = ("llama_jax", "preprocessing")


def _module_name(path: Path) -> str:
  parts = path.relative_to(REPO_ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
  path = REPO_ROOT.joinpath(*name.split("."))
  return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
  """Our modules that `path` imports (`from package import module` names the module)."""
  imported = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      imported.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for alias in node.names:
        submodule = f"{node.module}.{alias.name}"
        imported.add(submodule if _is_module(submodule) else node.module)
  return {name for name in imported if name.split(".")[0] in OURS}


def layer(module: str) -> tuple[int, str]:
  parts = module.split(".")
  for end in range(len(parts), 0, -1):
    prefix = ".".join(parts[:end])
    # "llama_jax" names the package's __init__ alone: a new module must be placed explicitly.
    if prefix in LAYER_OF and (prefix != "llama_jax" or module == prefix):
      return LAYER_OF[prefix]
  raise KeyError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def _our_modules() -> list[Path]:
  return sorted(path for package in OURS for path in (REPO_ROOT / package).rglob("*.py"))


def test_every_module_has_a_layer():
  for path in _our_modules():
    layer(_module_name(path))


def test_no_module_imports_one_above_it():
  upward = []
  for path in _our_modules():
    module = _module_name(path)
    for imported in sorted(_imports(path)):
      if layer(imported)[0] > layer(module)[0]:
        upward.append(f"{module} ({layer(module)[1]}) imports {imported} "
                      f"({layer(imported)[1]})")
  assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import_inside_a_function(tmp_path, monkeypatch):
  source = tmp_path / "probe.py"
  source.write_text("def lazy():\n  from llama_jax.eval import scoring\n  import llama_jax.train\n")
  assert _imports(source) == {"llama_jax.eval.scoring", "llama_jax.train"}
  assert layer("llama_jax.eval.scoring") > layer("llama_jax.inference") > layer("llama_jax.model")
  with pytest.raises(KeyError, match="in no layer"):
    layer("llama_jax.new_module")
