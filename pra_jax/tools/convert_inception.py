"""Converts pytorch-fid's FID Inception state dict (.pth) to the .npz that load_inception reads.

  python -m pra_jax.tools.convert_inception \
      --pth=pt_inception-2015-12-05-6726825d.pth --out=inception_fid.npz

Needs torch (requirements-test.txt) for reading the .pth only; the .npz needs nothing but numpy.
"""

from absl import app, flags

from pra_jax.metrics import inception_convert

_PTH = flags.DEFINE_string("pth", None, "pytorch-fid's pt_inception-2015-12-05-6726825d.pth.")
_OUT = flags.DEFINE_string("out", "inception_fid.npz", "Where to write the .npz.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _PTH.value:
    raise app.UsageError("--pth is required")
  digest = inception_convert.convert_file(_PTH.value, _OUT.value)
  print(f"wrote {_OUT.value} (sha256 {digest})")


if __name__ == "__main__":
  app.run(main)
