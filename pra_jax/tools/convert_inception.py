"""Converts pytorch-fid's FID Inception state dict (.pth) to the .npz that load_inception reads.

  python -m pra_jax.tools.convert_inception \
      --pth=pt_inception-2015-12-05-6726825d.pth --out=inception_fid.npz

Needs torch (requirements-test.txt) for reading the .pth only; the .npz needs nothing but numpy.
"""

import os

from absl import app, flags

from pra_jax import cli
from pra_jax.metrics import inception_convert

_PTH = flags.DEFINE_string("pth", None, "pytorch-fid's pt_inception-2015-12-05-6726825d.pth.")
_OUT = flags.DEFINE_string("out", "inception_fid.npz", "Where to write the .npz.")


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _PTH.value:
    cli.usage_error("--pth is required: pytorch-fid's FID Inception .pth")
  with cli.user_input():
    if not os.path.isfile(_PTH.value):
      raise FileNotFoundError(f"--pth={_PTH.value}: no such file; expected pytorch-fid's "
                              f"pt_inception-2015-12-05-6726825d.pth")
    out_dir = os.path.dirname(os.path.abspath(_OUT.value))
    if not os.path.isdir(out_dir):
      raise FileNotFoundError(f"--out={_OUT.value}: folder {out_dir} does not exist")
    digest = inception_convert.convert_file(_PTH.value, _OUT.value)
  print(f"wrote {_OUT.value} (sha256 {digest})")


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
