"""One vocabulary: every shape suffix in the code reads off pra_jax's one dimension table."""

import pathlib
import re

import pra_jax

ROOT = pathlib.Path(__file__).resolve().parent.parent
# A name that ends in its axes: lower-case words, then one upper-case run (x_BNP, keys_B2).
_SUFFIXED = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)*_([A-Z][A-Z0-9]{0,5})\b")


def _table_letters() -> set[str]:
  """The letters the table in pra_jax's docstring defines ('  B        batch ...')."""
  letters = set()
  for line in pra_jax.__doc__.splitlines():
    m = re.match(r"^  ((?:[A-Z], )*[A-Z])\s{2,}\S", line)
    if m:
      letters.update(m.group(1).split(", "))
  return letters


def test_every_shape_suffix_uses_the_table():
  letters = _table_letters()
  # E, G and H are the encoder, decoder and head in prose; E and G are never axes.
  assert {"B", "N", "P", "Z", "M"} <= letters and not letters & {"E", "G"}, letters
  bad = []
  paths = sorted(p for d in ("pra_jax", "benchmarks", "tests") for p in (ROOT / d).rglob("*.py"))
  for path in paths:
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
      for m in _SUFFIXED.finditer(line):
        unknown = set(m.group(1)) - letters - set("0123456789")
        if unknown:
          where = f"{path.relative_to(ROOT)}:{lineno}"
          bad.append(f"{where}: {m.group(0)} ({''.join(sorted(unknown))})")
  assert not bad, "shape letters outside pra_jax's table:\n" + "\n".join(bad)
