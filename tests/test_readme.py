"""The README's commands run as written after its two set-up commands: each names the venv's
python (or tensorboard), a module or script that exists, flags that program defines, config files
that exist and config fields those files have. A static check: nothing is run."""

import importlib
import os
import re
import shlex

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(REPO, "README.md")).read()
# Flags absl itself gives every program.
ABSL_FLAGS = {"help", "helpfull", "helpshort", "verbosity", "v", "logtostderr", "alsologtostderr"}
# Modules whose flags a program pulls in (jax.distributed's flags live in one place).
SHARED_FLAG_FILES = ("pra_jax/distributed.py", "benchmarks/_common.py")


def _commands():
  """Every command line in a ```bash block and every inline `...` that starts a program."""
  out = []
  for block in re.findall(r"```bash\n(.*?)```", README, re.S):
    joined = block.replace("\\\n", " ")
    for line in joined.splitlines():
      line = line.split("  #")[0].strip()
      if line and not line.startswith("#"):
        out.extend(part.strip() for part in line.split("&&"))
  for span in re.findall(r"`([^`\n]+)`", README):
    if re.match(r"(\.venv/bin/|python|tensorboard )", span):
      out.append(span.strip())
  return out


COMMANDS = _commands()


def _flags_defined(paths):
  names = set(ABSL_FLAGS)
  for path in paths + SHARED_FLAG_FILES:
    full = os.path.join(REPO, path)
    if os.path.exists(full):
      names |= set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", open(full).read()))
  return names


def test_commands_were_found():
  assert len(COMMANDS) > 15
  assert any("pra_jax.sample" in c for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_command_runs_as_written(command):
  words = shlex.split(command)
  while re.match(r"^[A-Z_]+=", words[0]):   # Environment for a launcher: MODULE=... launch/...
    words = words[1:]
  if words[0] == "sbatch":
    words = [w for w in words[1:] if not w.startswith("-")]
  program = words[0]
  if program.startswith("launch/"):
    assert os.path.exists(os.path.join(REPO, program)), f"{command!r}: no {program}"
    return
  if program == "python3" and words[1:3] == ["-m", "venv"]:
    return
  assert program.startswith(".venv/bin/"), (
      f"README command {command!r} must name the venv's program (.venv/bin/...): a bare "
      f"{program!r} is not the one the set-up commands installed")
  assert os.path.basename(program) in ("python", "pip", "tensorboard"), command
  if os.path.basename(program) != "python":
    return
  args = words[1:]
  if args[:1] == ["-m"]:
    module = args[1]
    if module == "pytest":
      return
    path = module.replace(".", "/") + ".py"
    args = args[2:]
  else:
    path, args = args[0], args[1:]
  assert os.path.exists(os.path.join(REPO, path)), f"{command!r}: no {path}"
  defined = _flags_defined((path,))
  config_file = None
  for arg in args:
    if not arg.startswith("--"):
      continue
    name, _, value = arg[2:].partition("=")
    if name.startswith("config."):
      continue
    assert name in defined or (name.startswith("no") and name[2:] in defined), (
        f"{command!r}: {path} defines no flag --{name}")
    if name == "config" and value.startswith("configs/"):
      config_file = value
      assert os.path.exists(os.path.join(REPO, value)), f"{command!r}: no {value}"
  if config_file:
    config = importlib.import_module(config_file[:-3].replace("/", ".")).get_config()
    for arg in args:
      if arg.startswith("--config."):
        node = config
        for part in arg[len("--config."):].partition("=")[0].split("."):
          assert part in node, f"{command!r}: {config_file} has no field {arg.split('=')[0]}"
          node = node[part]


def test_the_config_field_table_is_the_schemas():
  """The README's field table is generated from pra_jax/config_schema.py, never edited by hand:
  regenerate it with python -m pra_jax.tools.config_fields --markdown."""
  from pra_jax import config_schema
  found = re.search(r"<!-- config fields: [^\n]*-->\n(.*?)\n<!-- end of config fields -->", README,
                    re.S)
  assert found, "the README has no generated config field table"
  assert found.group(1) == config_schema.markdown_table()
