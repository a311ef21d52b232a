"""The house's layout rules, read from the source (nothing is imported or run):
- the library has no import cycle, counting imports inside functions;
- no module imports a command-line program (a module with an `if __name__ == "__main__":`);
- every program declares its flags at module level, like any absl program, never lazily;
- tests reach the programs as programs (subprocesses), except evaluate's main, which two tests
  run in-process (its flags are declared once, by it alone)."""

import ast
import glob
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Programs whose flags a test module may import, and which test module.
IMPORTED_PROGRAMS = {"pra_jax.evaluate": {"tests/test_fid.py"}}
# Functions that define flags for the programs that call them at module level.
FLAG_FACTORIES = {("pra_jax/distributed.py", "define_flags")}


def _modules():
  out = {}
  for path in glob.glob(os.path.join(REPO, "pra_jax", "**", "*.py"), recursive=True):
    rel = os.path.relpath(path, REPO)
    name = rel[:-3].replace(os.sep, ".")
    out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = rel
  return out


MODULES = _modules()


def _tree(rel):
  with open(os.path.join(REPO, rel)) as f:
    return ast.parse(f.read())


def _imports(tree) -> set[str]:
  """pra_jax modules a file imports anywhere in it (top level or inside functions)."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name in MODULES}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:
        full = f"{node.module}.{a.name}"
        if full in MODULES:
          found.add(full)
        elif node.module in MODULES:
          found.add(node.module)
  found.discard("pra_jax")
  return found


def _is_program(tree) -> bool:
  return any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)


GRAPH = {m: _imports(_tree(rel)) - {m} for m, rel in MODULES.items()}
PROGRAMS = {m for m, rel in MODULES.items() if _is_program(_tree(rel))}


def test_the_library_has_no_import_cycle():
  state, cycles = {}, []

  def visit(m, path):
    state[m] = "open"
    for d in sorted(GRAPH[m]):
      if state.get(d) == "open":
        cycles.append(path[path.index(d):] + [d])
      elif d not in state:
        visit(d, path + [d])
    state[m] = "done"

  for m in sorted(GRAPH):
    if m not in state:
      visit(m, [m])
  assert not cycles, cycles


def test_no_module_imports_a_program():
  assert {"pra_jax.main", "pra_jax.sample", "pra_jax.evaluate", "pra_jax.gap",
          "pra_jax.ablate"} <= PROGRAMS, PROGRAMS
  offenders = {m: sorted(GRAPH[m] & PROGRAMS) for m in GRAPH if GRAPH[m] & PROGRAMS}
  assert not offenders, offenders


def _flag_definitions_inside_functions(rel):
  """(function, line) of every DEFINE_* call made inside a function of `rel`."""
  out = []
  for fn in ast.walk(_tree(rel)):
    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, fn.name) not in \
        FLAG_FACTORIES:
      for node in ast.walk(fn):
        if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1].startswith(
            "DEFINE_"):
          out.append((fn.name, node.lineno))
  return out


def test_programs_declare_their_flags_at_module_level():
  files = sorted(MODULES.values()) + sorted(
      os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "benchmarks", "*.py")))
  lazy = {rel: found for rel in files if (found := _flag_definitions_inside_functions(rel))}
  assert not lazy, lazy
  for rel in files:
    text = open(os.path.join(REPO, rel)).read()
    assert "_FLAGS = {}" not in text, rel


def test_tests_import_no_program_but_the_allowed_one():
  for path in sorted(glob.glob(os.path.join(REPO, "tests", "*.py"))):
    rel = os.path.relpath(path, REPO)
    for program in _imports(ast.parse(open(path).read())) & PROGRAMS:
      assert rel in IMPORTED_PROGRAMS.get(program, ()), (rel, program)


def test_parameters_are_annotated_one_way():
  """Logical axis names reach a parameter through layers.partitioned (nnx.with_partitioning) and
  nothing else: no `out_sharding=` metadata, no second with_partitioning call in the models."""
  bad = []
  for rel in sorted(r for m, r in MODULES.items() if m.startswith("pra_jax.models.")):
    with open(os.path.join(REPO, rel)) as f:
      text = f.read()
    if "out_sharding=" in text:
      bad.append(f"{rel}: out_sharding=")
    if rel != os.path.join("pra_jax", "models", "layers.py") and "with_partitioning" in text:
      bad.append(f"{rel}: with_partitioning (use layers.partitioned / layers.param)")
  assert not bad, bad
