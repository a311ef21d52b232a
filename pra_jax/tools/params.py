"""Parameter count of a config, per component and per sub-module, without allocating the model.

  python -m pra_jax.tools.params --config=configs/pra_l.py
"""

import jax
from absl import app
from flax import nnx
from ml_collections import config_flags

from pra_jax.models import pra

COMPONENTS = ("encoder", "decoder", "backbone", "head")


def _size(tree) -> int:
  return int(sum(leaf.size for leaf in jax.tree.leaves(tree)))


def component_breakdown(model) -> dict[str, dict[str, int]]:
  """{component: {sub-module: count}}; a component absent from the model (direct_pixel) is {}."""
  out = {}
  for name in COMPONENTS:
    part = getattr(model, name)
    state = nnx.state(part, nnx.Param) if part is not None else {}
    out[name] = {key: _size(sub) for key, sub in state.items()}
  return out


def param_table(config) -> str:
  """A text table of parameters: components, their sub-modules, and the whole model."""
  model = pra.abstract_model(config)  # Shapes only: nothing is allocated.
  counts = pra.count_params(model)
  total = counts["total"]
  b, h, s = config.model.backbone, config.model.head, config.model.state
  lines = [
      f"backbone {b.width} wide x {b.depth} deep ({b.num_heads} heads, mlp x{b.mlp_ratio:g} "
      f"{b.mlp_type}); head {h.width} wide x {h.depth} blocks; state Z={s.dim}, E/G "
      f"{s.width} wide x {s.depth} blocks" + (" (unused: direct_pixel)"
                                               if config.model.direct_pixel else ""),
      f"{'component':<28}{'params':>16}{'share':>9}",
  ]
  for name, subs in component_breakdown(model).items():
    lines.append(f"{name:<28}{counts[name]:>16,}{counts[name] / total:>9.1%}")
    for sub, n in subs.items():
      lines.append(f"  {sub:<26}{n:>16,}")
  lines.append(f"{'total':<28}{total:>16,}{1:>9.1%}")
  lines.append(f"total: {total / 1e6:.2f}M parameters, {4 * total / 2**20:,.0f} MiB in float32")
  return "\n".join(lines)


# The flag is defined only when this module runs as the program, so that importing
# `param_table` next to another CLI module (which defines its own --config) is safe.
_FLAGS = {}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _FLAGS["config"].value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/pra_l.py")
  print(param_table(config))


if __name__ == "__main__":
  _FLAGS["config"] = config_flags.DEFINE_config_file("config", None, "Config file to count.")
  app.run(main)
