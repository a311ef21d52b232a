"""Runs the programs' bad-input cases in one process: each program costs seconds of imports, its
cases milliseconds. python tests/programs/user_errors.py CASES.json RESULTS.json

CASES.json is a list of {"id", "module", "argv", "watch"}. Each program module is imported once;
each of its cases runs the program's own `if __name__ == "__main__":` block (read from its
source, so a program that skips the user-error path shows it) with sys.argv set and the flags
reset. Everything written to file descriptors 1 and 2 is captured, an uncaught exception is
printed as Python would; the paths in "watch" are listed before and after the case. Once a
program's cases have run its flags are removed (and a case's --config.KEY overrides after it), so
the next can declare its own.
RESULTS.json: {id: {"rc", "output", "touched"}}.
"""

import ast
import importlib
import json
import os
import sys
import tempfile
import traceback

from absl import app, flags


def _main_block(module):
  """The compiled body of the module's `if __name__ == "__main__":`."""
  with open(module.__file__) as f:
    tree = ast.parse(f.read())
  blocks = [n for n in tree.body if isinstance(n, ast.If)
            and ast.unparse(n.test) in ('__name__ == "__main__"', "__name__ == '__main__'")]
  body = ast.Module(body=blocks[-1].body, type_ignores=[])
  return compile(body, module.__file__, "exec")


def _listing(paths):
  out = {}
  for top in paths:
    if os.path.lexists(top):
      out[top] = os.stat(top).st_mtime_ns if os.path.isfile(top) else "dir"
    for root, dirs, files in os.walk(top):
      for name in dirs + files:
        path = os.path.join(root, name)
        out[path] = os.stat(path).st_mtime_ns if os.path.isfile(path) else "dir"
  return out


def _run(code, namespace, argv) -> tuple[int, str]:
  """(exit status, everything written to stdout and stderr) of one case."""
  sys.stdout.flush()
  sys.stderr.flush()
  saved = os.dup(1), os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 1)
    os.dup2(captured.fileno(), 2)
    try:
      flags.FLAGS.unparse_flags()
      sys.argv = argv
      exec(code, namespace)  # pylint: disable=exec-used
      rc = 0
    except SystemExit as e:
      rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      if isinstance(e.code, str):
        print(e.code, file=sys.stderr)
    except BaseException:  # pylint: disable=broad-except
      traceback.print_exc()
      rc = 1
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os.dup2(saved[0], 1)
      os.dup2(saved[1], 2)
      for fd in saved:
        os.close(fd)
    captured.seek(0)
    return rc, captured.read().decode(errors="replace")


def _remove_flags(names):
  for name in names:
    if name in flags.FLAGS:
      delattr(flags.FLAGS, name)


def main():
  cases_path, results_path = sys.argv[1:3]
  with open(cases_path) as f:
    cases = json.load(f)
  app.define_help_flags()
  results = {}
  for module_name in dict.fromkeys(c["module"] for c in cases):
    before = set(flags.FLAGS)
    module = importlib.import_module(module_name)
    code = _main_block(module)
    declared = set(flags.FLAGS)
    for case in (c for c in cases if c["module"] == module_name):
      watched = _listing(case["watch"])
      rc, output = _run(code, dict(vars(module), __name__="__main__"),
                        [module_name] + case["argv"])
      results[case["id"]] = {"rc": rc, "output": output,
                             "touched": _listing(case["watch"]) != watched}
      _remove_flags(set(flags.FLAGS) - declared)   # A --config.KEY override declares KEY.
    _remove_flags(set(flags.FLAGS) - before)
  with open(results_path, "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
