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


def test_programs_and_library_modules_have_distinct_names():
  """A newcomer tells a program (python -m pra_jax.X) from the library by its name alone."""
  program_stems = {m.rsplit(".", 1)[-1] for m in PROGRAMS}
  library_stems = {m.rsplit(".", 1)[-1]: m for m in MODULES if m not in PROGRAMS}
  clashes = {s: library_stems[s] for s in program_stems if s in library_stems}
  assert not clashes, clashes
  # Near-identical names too: no library module's name starts with a program's name.
  near = {(p, lib) for p in program_stems for lib in library_stems
          if lib != p and lib.startswith(p + "_")}
  assert not near, near


def test_sampling_is_one_package():
  """The sampler, its data-parallel runner, the resumable job, the chunk store and the grids live
  in pra_jax/sampling/, and nothing else there."""
  top = {m for m in MODULES if m.count(".") == 1 and m not in PROGRAMS}
  strays = sorted(m for m in top if m.split(".")[1].startswith(("sample", "sampler", "grids")))
  assert not strays, strays
  assert {"pra_jax.sampling.ar_loop", "pra_jax.sampling.data_parallel",
          "pra_jax.sampling.resumable_job", "pra_jax.sampling.chunk_store"} <= set(MODULES)


def test_the_trainer_is_the_loop():
  """train.py holds the loop: the step lives in train_step.py, preemption in preemption.py, the
  restores in restore.py."""
  tree = _tree(MODULES["pra_jax.train"])
  names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
  assert "train_and_evaluate" in names
  assert not names & {"train_step", "accumulate_gradients", "create_bundle", "Preemption",
                      "StopVote", "restore_for_sampling", "restore_weights"}, names
  imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
  assert not imported & {"signal", "threading"}, imported
  assert len(open(os.path.join(REPO, MODULES["pra_jax.train"])).read().splitlines()) < 300


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
