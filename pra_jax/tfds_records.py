"""TFDS array_record datasets: the one data dir a run reads them from, and building ImageNet's from
the two tars a user downloads (what pra_jax.tools.build_imagenet runs).

Building goes through TFDS's Python builder API, not the `tfds build` command line: with the
pinned requirements the command line stops on apache_beam, then mlcroissant (and installing
apache-beam downgrades protobuf under TensorFlow), while the builder API needs only
importlib_resources (pinned in requirements.txt). Reading built records needs none of them.
"""

import os
import time

IMAGENET = "imagenet2012"
# The manual downloads imagenet2012's builder reads; at least one must be present.
IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def data_dir(configured: str | None) -> tuple[str, str]:
  """(the data dir TFDS reads, why that one): data.tfds_data_dir, else $TFDS_DATA_DIR, else
  TFDS's default ~/tensorflow_datasets (the same order TFDS follows)."""
  if configured:
    return configured, "data.tfds_data_dir"
  if os.environ.get("TFDS_DATA_DIR"):
    return os.environ["TFDS_DATA_DIR"], "$TFDS_DATA_DIR"
  return os.path.join(os.path.expanduser("~"), "tensorflow_datasets"), "TFDS's default data dir"


def build_command(name: str, data_dir_: str) -> str:
  """The command that builds `name` as array_record into `data_dir_` (for error messages)."""
  if name == IMAGENET:
    return (f"python -m pra_jax.tools.build_imagenet --manual_dir=DIR --data_dir={data_dir_}  "
            f"(DIR holds {' and '.join(IMAGENET_TARS)})")
  return (f"tfds.builder({name!r}, file_format='array_record', data_dir={data_dir_!r})"
          f".download_and_prepare()")


def check_manual_dir(manual_dir: str) -> list[str]:
  """The ImageNet tars in `manual_dir`; raises naming the folder and the files expected."""
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"--manual_dir {manual_dir!r} is not a folder; it should hold "
                            f"{' and '.join(IMAGENET_TARS)} as downloaded from image-net.org")
  found = [t for t in IMAGENET_TARS if os.path.isfile(os.path.join(manual_dir, t))]
  if not found:
    raise FileNotFoundError(f"--manual_dir {manual_dir!r} holds neither of {IMAGENET_TARS} "
                            f"(it has {sorted(os.listdir(manual_dir))[:5]}); put the tars as "
                            f"downloaded from image-net.org there, not extracted")
  return found


def build_imagenet(manual_dir: str, data_dir_: str | None = None) -> dict:
  """Builds imagenet2012 as array_record from the tars in `manual_dir` into the data dir
  (`data_dir_`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets). Returns {'data_dir', 'dir' (the
  versioned dataset folder), 'splits': {name: examples}, 'seconds'}. A dataset already built
  there is kept, not rebuilt."""
  found = check_manual_dir(manual_dir)
  try:
    import importlib_resources  # noqa: F401  TFDS imports it on every build (see above).
  except ImportError as e:
    raise ImportError("building a TFDS dataset needs importlib_resources: pip install -r "
                      "requirements.txt (it pins importlib-resources)") from e
  import tensorflow_datasets as tfds  # Imported lazily: TensorFlow's import takes seconds.

  target, _ = data_dir(data_dir_)
  start = time.perf_counter()
  builder = tfds.builder(IMAGENET, file_format="array_record", data_dir=target)
  # The test split's tar is not on the download page any more: the builder warns and skips it.
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir))
  splits = {name: info.num_examples for name, info in builder.info.splits.items()}
  return {"data_dir": target, "dir": str(builder.data_dir), "splits": splits, "tars": found,
          "seconds": time.perf_counter() - start}
