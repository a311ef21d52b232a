"""ImageNet as a user brings it, with no mock: the two tars (a fake pair in the real layout, made
here: 3 synsets x 4 JPEGs, the first 10 validation images), the README's build command over
TFDS's real imagenet2012 builder to array_record, then pra_s.py (shrunk) trained from the
records, the eval iterator, and a reference batch streamed from the validation split."""

import io
import logging
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

import factories as F
from pra_jax import data, tfds_records, train
from pra_jax.metrics import fid, inception, streamed_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The first three synsets of imagenet2012's label file: labels 0, 1, 2.
SYNSETS = ("n01440764", "n01443537", "n01484850")
PER_SYNSET = 4
NUM_VAL = 10   # The builder labels ILSVRC2012_val_00000001 ... from the list TFDS ships.


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def _jpeg(rng: np.random.Generator, height: int, width: int) -> bytes:
  # Smooth colour fields (not noise), in sizes other than the training size, as photographs are.
  coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(buf, "JPEG", quality=90)
  return buf.getvalue()


def make_manual_dir(root: str) -> str:
  """ILSVRC2012_img_train.tar holding <synset>.tar of <synset>_<n>.JPEG, and
  ILSVRC2012_img_val.tar holding ILSVRC2012_val_<8 digits>.JPEG, as image-net.org ships them."""
  rng = np.random.default_rng(0)
  os.makedirs(root, exist_ok=True)
  with tarfile.open(os.path.join(root, "ILSVRC2012_img_train.tar"), "w") as outer:
    for synset in SYNSETS:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as tar:
        for k in range(PER_SYNSET):
          _add(tar, f"{synset}_{10026 + k}.JPEG", _jpeg(rng, 40 + 4 * k, 56))
      _add(outer, f"{synset}.tar", inner.getvalue())
  with tarfile.open(os.path.join(root, "ILSVRC2012_img_val.tar"), "w") as tar:
    for i in range(1, NUM_VAL + 1):
      _add(tar, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg(rng, 48, 36 + 2 * i))
  return root


def _env(**extra):
  path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
  return dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS="cpu", **extra)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  """The data dir the README's build command writes, from a fake manual dir."""
  root = tmp_path_factory.mktemp("imagenet")
  manual, data_dir = make_manual_dir(str(root / "tars")), str(root / "tensorflow_datasets")
  res = subprocess.run(
      [sys.executable, "-m", "pra_jax.tools.build_imagenet", f"--manual_dir={manual}",
       f"--data_dir={data_dir}"], cwd=REPO, env=_env(), capture_output=True, text=True,
      timeout=600)
  assert res.returncode == 0, res.stderr[-4000:]
  assert "(train 12, validation 10 examples;" in res.stdout, res.stdout
  assert f"--config.data.tfds_data_dir={data_dir}" in res.stdout
  return data_dir


def _config(data_dir, num_steps):
  c = F.shrunk_pra_s(num_steps)
  c.data.tfds_data_dir = data_dir
  return c


def test_pra_s_trains_from_the_built_records_and_reads_the_eval_split(records, tmp_path,
                                                                     caplog):
  cfg = _config(records, 2)
  assert (cfg.data.source, cfg.data.tfds_name, cfg.data.eval_split) == (
      "tfds", "imagenet2012", "validation")
  train_src = data.make_source(cfg.data, "train")
  assert len(train_src) == len(SYNSETS) * PER_SYNSET
  with caplog.at_level(logging.INFO):
    train_src[0]   # JPEG bytes decoded by PIL here, not by TFDS (which logs for OpenCV).
  assert "OpenCV" not in caplog.text
  labels = sorted(int(train_src[i]["label"]) for i in range(len(train_src)))
  assert labels == [c for c in range(len(SYNSETS)) for _ in range(PER_SYNSET)]
  example = train_src[0]
  assert example["image"].shape == (32, 32, 3) and example["image"].dtype == np.uint8
  assert example["bad"] == 0

  metrics = train.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert np.isfinite(metrics["train/total"]) and metrics["data/bad_images"] == 0
  assert "2" in os.listdir(tmp_path / "run" / "checkpoints")

  batches = list(data.make_eval_iterator(cfg.data, local_batch_size=4, process_index=0,
                                         process_count=1))
  assert [len(b["label"]) for b in batches] == [4, 4, 2]
  images = np.concatenate([b["image"] for b in batches])
  assert images.shape == (NUM_VAL, 32, 32, 3) and not any(b["bad"].any() for b in batches)
  assert all(0 <= int(l) < 1000 for b in batches for l in b["label"])
  # Decoded from the stored JPEG bytes with PIL, then ADM's resize and centre crop.
  import tensorflow_datasets as tfds
  stored = tfds.data_source("imagenet2012", split="validation", data_dir=records,
                            download=False, decoders={"image": tfds.decode.SkipDecoding()})
  with Image.open(io.BytesIO(stored[3]["image"])) as img:
    np.testing.assert_array_equal(images[3], data.resize_and_center_crop(img.convert("RGB"), 32))


def test_reference_batch_streams_from_the_validation_records(records, tmp_path):
  weights = str(tmp_path / "inception_random.npz")
  inception.save_inception(inception.random_inception(0), weights)
  out = str(tmp_path / "ref.npz")
  # The data dir through TFDS_DATA_DIR, the other documented way.
  res = subprocess.run(
      [sys.executable, "-m", "pra_jax.tools.reference", "--config=configs/pra_s.py",
       f"--inception={weights}", f"--out={out}", "--batch_size=4", "--num_pr_images=4"],
      cwd=REPO, env=_env(TFDS_DATA_DIR=records), capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-4000:]
  assert (f"wrote {out}: mu/sigma and mu_s/sigma_s of the {NUM_VAL} images of imagenet2012 "
          f"'validation'") in res.stdout, res.stdout
  ref = fid.load_reference(out)   # The evaluator's own reader.
  assert ref["mu"].shape == (2048,) and ref["sigma_s"].shape == (2023, 2023)
  np.testing.assert_array_equal(ref["sigma"], ref["sigma"].T)
  # arr_0: the seeded subset fid.compute_reference keeps, as training's eval iterator sees them
  # (pra_s.py's 256 px).
  cfg = _config(records, 1)
  cfg.data.image_size = 256
  images = np.concatenate([b["image"] for b in data.make_eval_iterator(
      cfg.data, local_batch_size=4, process_index=0, process_count=1)])
  np.testing.assert_array_equal(ref["images"], images[streamed_reference.pr_subset(NUM_VAL, 4, 0)])


def test_build_errors_name_the_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"'.*nowhere' is not a folder"):
    tfds_records.build_imagenet(str(tmp_path / "nowhere"), str(tmp_path / "out"))
  (tmp_path / "ILSVRC2012_img_train").mkdir()   # Extracted, not the tar.
  with pytest.raises(FileNotFoundError, match=r"holds neither of .*ILSVRC2012_img_train.tar"):
    tfds_records.build_imagenet(str(tmp_path), str(tmp_path / "out"))
