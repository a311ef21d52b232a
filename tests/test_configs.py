"""Every config in configs/ loads and passes config_check.validate: the files are documentation
that must stay runnable."""

import ast
import dataclasses
import importlib
import io
import os
import tokenize

import pytest

from pra_jax import checkpoint, config_check

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
NAMES = sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
               if f.endswith(".py") and f not in ("__init__.py", "common.py"))


def test_the_config_folder_is_found():
  assert {"demo", "tiny", "pra_s", "pra_b", "pra_l"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_loads_and_validates(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  config_check.validate(config)


def test_weight_decay_names_are_checked():
  config = importlib.import_module("configs.tiny").get_config()
  config.train.weight_decay_on = ("kernel", "kernels")
  with pytest.raises(ValueError, match="train.weight_decay_on"):
    config_check.validate(config)


# --- configs/common.py is the schema: every field documented once ------------------------------


def _schema_assignments():
  """{dotted key: (first line, last line, column)} of every `alias.a.b = ...` in base_config,
  with the section aliases (`c.data = d = ...`) resolved to their dotted paths."""
  tree = ast.parse(open(os.path.join(CONFIG_DIR, "common.py")).read())
  fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "base_config")
  aliases = {fn.body[-1].value.id: ""}  # `return c`: the root.
  out = {}

  def dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
      parts.append(node.attr)
      node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
      return None
    return ".".join(([aliases[node.id]] if aliases[node.id] else []) + parts[::-1])

  for stmt in fn.body:
    if not isinstance(stmt, ast.Assign):
      continue
    keys = [dotted(t) for t in stmt.targets if isinstance(t, ast.Attribute)]
    for t in stmt.targets:
      if isinstance(t, ast.Name) and keys and keys[0] is not None:
        aliases[t.id] = keys[0]  # c.data = d = ml_collections.ConfigDict()
    for key in keys:
      if key is not None:
        out[key] = (stmt.lineno, stmt.end_lineno, stmt.col_offset)
  return out


def _uncommented_fields():
  from configs import common
  source = open(os.path.join(CONFIG_DIR, "common.py")).read()
  comments = {}  # line -> column of its comment
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      comments[tok.start[0]] = tok.start[1]
  assigned = _schema_assignments()
  leaves = checkpoint.flatten(common.base_config().to_dict())
  missing = []
  for leaf in leaves:
    covering = [k for k in assigned if leaf == k or leaf.startswith(k + ".")]
    assert covering, f"{leaf} is not assigned in base_config"
    first, last, col = assigned[max(covering, key=len)]
    # A comment on the assignment's own lines, or a block comment right above it at its indent
    # (a continuation comment of the field above sits further right and does not count).
    if not (any(line in comments for line in range(first, last + 1))
            or comments.get(first - 1) == col):
      missing.append(leaf)
  return missing


def test_every_schema_field_has_a_comment():
  assert _uncommented_fields() == []


def test_allowed_values_are_the_modules_own_constants():
  """config_check lists no values of its own: each entry is a tuple defined by the module that
  reads the field, the one its constructor checks use."""
  from pra_jax import data, optim, rollout
  from pra_jax.sampling import ar_loop
  from pra_jax.models import attention, backbone, head, layers, state
  modules = (data, optim, rollout, sampler, attention, backbone, head, layers, state)
  constants = [v for m in modules for v in vars(m).values() if isinstance(v, tuple)]
  for key, allowed in config_check._CHOICES.items():
    assert any(allowed is c for c in constants), f"{key}: {allowed} is not a module constant"
  assert config_check._CHOICES["sample.solver"] is head.SOLVERS
  assert config_check._CHOICES["sample.cfg_schedule"] is ar_loop.CFG_SCHEDULES
  assert config_check._CHOICES["data.source"] is data.SOURCES
  assert config_check._CHOICES["train.lr_schedule"] is optim.LR_SCHEDULES


def test_sample_settings_take_every_value_from_config_sample():
  """SampleSettings has no defaults of its own that could disagree with config.sample's."""
  from configs import common
  from pra_jax.sampling import ar_loop
  sample_cfg = common.base_config().sample
  fields = {f.name: f for f in dataclasses.fields(ar_loop.SampleSettings)}
  defaulted = sorted(n for n, f in fields.items() if f.default is not dataclasses.MISSING)
  assert defaulted == ["use_cache"]  # A check-only knob, not a config field.
  settings = ar_loop.SampleSettings.from_config(sample_cfg)
  for name in fields.keys() - {"use_cache"}:
    assert getattr(settings, name) == sample_cfg[name], name
