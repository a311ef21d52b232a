"""Tests of pra_jax.data: the three sources, bad-file handling, sharding and iterator state.

Everything runs offline on CPU: digits from scikit-learn, folders written to tmp_path, TFDS mocked.
"""

import hashlib
import io
import logging
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from configs import common, tiny
from pra_jax import data


def _cfg(**overrides):
  """The tiny config's data section (the digits demo set) at 8px, with overrides."""
  cfg = tiny.get_config().data
  cfg.image_size = 8
  cfg.update(overrides)
  return cfg


def _tfds_cfg(**overrides):
  """The schema's own data section (TFDS ImageNet, its split names), with overrides."""
  cfg = common.base_config().data
  cfg.update(overrides)
  return cfg


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _digest(image):
  return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class _IndexSource:
  """n examples whose label is their index, to follow each one through a pipeline."""

  def __init__(self, n):
    self._n = n

  def __len__(self):
    return self._n

  def __getitem__(self, index):
    return {"image": np.zeros((2, 2, 1), np.uint8), "label": np.int32(index), "bad": np.int32(0)}


# --- digits ----------------------------------------------------------------------------------


def test_digits_splits_shapes_and_partition():
  train, ev = data.make_source(_cfg(), "train"), data.make_source(_cfg(), _cfg().eval_split)
  assert (len(train), len(ev)) == (1500, 297)
  ex = train[0]
  assert ex["image"].shape == (8, 8, 1) and ex["image"].dtype == np.uint8
  assert ex["label"].dtype == np.int32 and ex["bad"] == 0
  labels = np.array([train[i]["label"] for i in range(len(train))])
  assert labels.min() >= 0 and labels.max() < data.DIGITS_NUM_CLASSES
  # The digits set holds duplicate scans, so disjointness is checked as multisets: the two
  # splits together are exactly the whole set, each scan once.
  from sklearn.datasets import load_digits
  full = np.round(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
  expected = sorted(_digest(im[..., None]) for im in full)
  got = sorted(_digest(s[i]["image"]) for s in (train, ev) for i in range(len(s)))
  assert got == expected


def test_digits_three_channels_and_eval_keeps_last_batch():
  cfg = _cfg(channels=3)
  batches = list(data.make_eval_iterator(cfg, local_batch_size=64, process_index=0,
                                         process_count=1))
  assert [len(b["label"]) for b in batches] == [64, 64, 64, 64, 41]
  assert batches[0]["image"].shape == (64, 8, 8, 3) and batches[0]["image"].dtype == np.uint8
  src = data.make_source(cfg, "eval")
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]),
                                [src[i]["label"] for i in range(len(src))])


# --- image folders ---------------------------------------------------------------------------

_CLASS_COLOURS = {"ant": (255, 0, 0), "bee": (0, 255, 0), "cat": (0, 0, 255)}  # Sorted names.


def _write_folder(root, sizes=((40, 24), (17, 33), (64, 64))):
  """Three classes of solid-colour images, JPEG and PNG, varied sizes."""
  for name, colour in _CLASS_COLOURS.items():
    os.makedirs(root / name)
    for i, size in enumerate(sizes):
      ext = ".JPEG" if i % 2 == 0 else ".png"
      Image.new("RGB", size, colour).save(root / name / f"img{i}{ext}")
  # Converted, not skipped: grayscale, RGBA fully transparent (white under it) and palette.
  Image.new("L", (20, 30), 128).save(root / "ant" / "z_gray.png")
  Image.new("RGBA", (30, 20), (0, 0, 0, 0)).save(root / "bee" / "z_rgba.png")
  Image.new("RGB", (25, 25), (0, 0, 255)).convert("P").save(root / "cat" / "z_pal.png")
  (root / "cat" / "notes.txt").write_text("not an image")
  return root


def _write_bad_files(root):
  good = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
      good, "JPEG")
  paths = [root / "ant" / "bad_corrupt.jpg", root / "bee" / "bad_truncated.jpg",
           root / "cat" / "zz_empty.png"]  # The last file of all: substitution wraps to 0.
  paths[0].write_bytes(b"\xff\xd8 this is not really a jpeg" * 10)
  paths[1].write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
  paths[2].write_bytes(b"")
  return [str(p) for p in paths]


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_decodes_converts_and_labels(tmp_path, channels):
  root = _write_folder(tmp_path / "train")
  cfg = _cfg(source="folder", folder=str(root), channels=channels, image_size=16, num_classes=3)
  src = data.make_source(cfg, "train")
  assert len(src) == 12  # 3 x (3 + 1 converted); notes.txt ignored.
  for i, path in enumerate(src.paths):
    ex = src[i]
    assert ex["image"].shape == (16, 16, channels) and ex["image"].dtype == np.uint8
    assert ex["bad"] == 0
    name = os.path.basename(os.path.dirname(path))
    assert ex["label"] == sorted(_CLASS_COLOURS).index(name)
    rgb = ex["image"].reshape(-1, channels).mean(0)
    if path.endswith("z_gray.png"):
      expected = (128,) * 3
    elif path.endswith("z_rgba.png"):
      expected = (255,) * 3
    else:
      expected = _CLASS_COLOURS[name]
    if channels == 1:
      expected = (np.dot(expected, (0.299, 0.587, 0.114)),)
    np.testing.assert_allclose(rgb, expected, atol=3, err_msg=path)


def test_16_bit_grayscale_png_keeps_its_brightness(tmp_path):
  rng = np.random.default_rng(0)
  wide = rng.integers(0, 65536, (16, 16)).astype(np.uint16)
  path = tmp_path / "wide.png"
  Image.fromarray(wide).save(path)
  with Image.open(path) as img:
    assert img.mode in ("I;16", "I")
    for channels in (1, 3):
      pixels = data._preprocess(img, channels, 16)
      assert pixels.shape == (16, 16, channels)
      np.testing.assert_allclose(pixels[..., 0], np.round(wide / 257.0), atol=1)


def test_resize_and_center_crop_keeps_the_middle():
  # 90 x 30: three 30-wide stripes; the centred square is the green one.
  pixels = np.zeros((30, 90, 3), np.uint8)
  pixels[:, :30, 0] = pixels[:, 30:60, 1] = pixels[:, 60:, 2] = 255
  out = data.resize_and_center_crop(Image.fromarray(pixels), 10)
  assert out.shape == (10, 10, 3)
  np.testing.assert_allclose(out[:, 1:-1].reshape(-1, 3).mean(0), (0, 255, 0), atol=2)
  big = data.resize_and_center_crop(Image.fromarray(np.zeros((300, 500, 3), np.uint8)), 64)
  assert big.shape == (64, 64, 3)


def test_folder_bad_files_substituted_counted_and_logged(tmp_path, caplog):
  root = _write_folder(tmp_path / "train")
  bad_paths = _write_bad_files(root)
  cfg = _cfg(source="folder", folder=str(root), channels=3, image_size=8, num_classes=3)
  src = data.make_source(cfg, "train")
  with caplog.at_level(logging.WARNING):
    examples = [src[i] for i in range(len(src))]
  assert sum(int(ex["bad"]) for ex in examples) == 3
  n = len(src)
  for i, path in enumerate(src.paths):
    if path in bad_paths:  # Replaced by the next readable file, wrapping, deterministically.
      nxt = next(j % n for j in range(i + 1, i + n) if src.paths[j % n] not in bad_paths)
      assert examples[i]["bad"] == 1 and examples[nxt]["bad"] == 0
      np.testing.assert_array_equal(examples[i]["image"], examples[nxt]["image"])
      assert examples[i]["label"] == examples[nxt]["label"]
  for path in bad_paths:
    assert any(path in r.getMessage() for r in caplog.records), path
  # The eval iterator counts every file and reports the substitutions.
  batches = list(data.make_eval_iterator(cfg, local_batch_size=4, process_index=0,
                                         process_count=1))
  assert sum(len(b["label"]) for b in batches) == len(src) == 15
  assert sum(int(b["bad"].sum()) for b in batches) == 3

  cfg.bad_images = "raise"
  strict = data.make_source(cfg, "train")
  for path in bad_paths:
    with pytest.raises(ValueError, match=re.escape(path)):
      strict[strict.paths.index(path)]


def test_folder_eval_folder_shares_train_class_ids(tmp_path):
  train = _write_folder(tmp_path / "train")
  val = tmp_path / "val"
  os.makedirs(val / "cat")  # Only one class: its id must still be 2, as in train.
  Image.new("RGB", (12, 12), (0, 0, 255)).save(val / "cat" / "a.png")
  cfg = _cfg(source="folder", folder=str(train), eval_folder=str(val), num_classes=3)
  src = data.make_source(cfg, cfg.eval_split)
  assert len(src) == 1 and src[0]["label"] == 2
  os.makedirs(val / "dog")
  with pytest.raises(ValueError, match="dog"):
    data.make_source(cfg, cfg.eval_split)


# --- TFDS ------------------------------------------------------------------------------------


def test_tfds_imagenet_under_mock_data(tmp_path):
  import tensorflow_datasets as tfds

  cfg = _tfds_cfg(tfds_data_dir=str(tmp_path), image_size=16)  # 3 channels, 1000 classes.
  # USE_CODE: imagenet2012's feature spec comes from its builder code, no files needed.
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    src = data.make_source(cfg, "train")
    assert len(src) == 10
    for i in range(len(src)):
      ex = src[i]
      assert ex["image"].shape == (16, 16, 3) and ex["image"].dtype == np.uint8
      assert ex["label"].dtype == np.int32 and 0 <= ex["label"] < 1000 and ex["bad"] == 0
    batch = next(data.make_train_iterator(cfg, local_batch_size=4, seed=0, process_index=0,
                                          process_count=1))
    assert batch["image"].shape == (4, 16, 16, 3)
    sizes = [len(b["label"]) for b in data.make_eval_iterator(
        cfg, local_batch_size=4, process_index=0, process_count=1)]
    assert sizes == [4, 4, 2]


def test_tfds_source_decodes_encoded_bytes():
  png, gray = io.BytesIO(), io.BytesIO()
  Image.new("RGB", (30, 20), (10, 20, 30)).save(png, "PNG")
  records = [{"image": png.getvalue(), "label": 7}, {"image": b"garbage", "label": 1},
             {"image": np.full((9, 12, 1), 200, np.uint8), "label": 3}]
  src = data.TfdsSource(_cfg(channels=3), "train", records)
  assert src[0]["image"].shape == (8, 8, 3) and src[0]["label"] == 7
  np.testing.assert_array_equal(src[0]["image"][4, 4], (10, 20, 30))
  assert src[1]["bad"] == 1 and src[1]["label"] == 3
  np.testing.assert_array_equal(src[2]["image"], 200)


# --- iterators: sharding, state, determinism --------------------------------------------------


@pytest.mark.parametrize("process_count", [2, 3])
def test_train_shards_partition_each_epoch(monkeypatch, process_count):
  n, batch = 101, 4
  monkeypatch.setattr(data, "make_source", lambda cfg, split: _IndexSource(n))
  shards = []
  for p in range(process_count):
    it = data.make_train_iterator(_cfg(), local_batch_size=batch, seed=3, process_index=p,
                                  process_count=process_count)
    shard_len = len(range(p, n, process_count))
    stream = np.concatenate([b["label"] for b in _take(it, 2 * shard_len // batch + 1)])
    first, second = stream[:shard_len], stream[shard_len:2 * shard_len]
    assert len(set(first)) == shard_len  # One epoch: each example once.
    assert set(second) == set(first) and not np.array_equal(second, first)  # Reshuffled.
    shards.append(set(first.tolist()))
  assert sum(len(s) for s in shards) == n and set.union(*shards) == set(range(n))


@pytest.mark.parametrize("process_count", [2, 3])
def test_eval_shards_partition_in_order(monkeypatch, process_count):
  monkeypatch.setattr(data, "make_source", lambda cfg, split: _IndexSource(50))
  seen = []
  for p in range(process_count):
    it = data.make_eval_iterator(_cfg(), local_batch_size=8, process_index=p,
                                 process_count=process_count)
    labels = np.concatenate([b["label"] for b in it])
    assert np.all(np.diff(labels) > 0)  # No shuffle.
    seen += labels.tolist()
  assert sorted(seen) == list(range(50))


def test_train_iterator_state_restores_next_batch():
  cfg = _cfg(random_flip=True)
  kw = dict(local_batch_size=64, seed=1, process_index=0, process_count=1)
  it = data.make_train_iterator(cfg, **kw)
  _take(it, 25)  # 1600 examples: past the end of the first 1500-example epoch.
  state = it.get_state()
  expected = next(it)
  resumed = data.make_train_iterator(cfg, **kw)
  resumed.set_state(state)
  _assert_batches_equal(next(resumed), expected)


def test_train_iterator_state_through_orbax(tmp_path):
  import orbax.checkpoint as ocp
  import grain

  cfg = _cfg(random_flip=True)
  kw = dict(local_batch_size=16, seed=5, process_index=0, process_count=1)
  it = data.make_train_iterator(cfg, **kw)
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = next(it)
    resumed = data.make_train_iterator(cfg, **kw)
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  _assert_batches_equal(next(resumed), expected)


def test_train_iterator_determinism_and_flip():
  def first(seed, flip=False):
    it = data.make_train_iterator(_cfg(random_flip=flip), local_batch_size=32, seed=seed,
                                  process_index=0, process_count=1)
    return _take(it, 3)

  for a, b in zip(first(0), first(0)):
    _assert_batches_equal(a, b)
  assert not np.array_equal(first(0)[0]["label"], first(1)[0]["label"])
  plain, flipped = first(0)[0]["image"], first(0, flip=True)[0]["image"]
  same = [np.array_equal(p, f) for p, f in zip(plain, flipped)]
  mirrored = [np.array_equal(p[:, ::-1], f) for p, f in zip(plain, flipped)]
  assert all(s or m for s, m in zip(same, mirrored))
  assert sum(mirrored) > 0 and sum(same) > 0
  _assert_batches_equal(first(0, flip=True)[0], first(0, flip=True)[0])


@pytest.fixture
def absl_flags_parsed():
  from absl import flags  # grain's worker processes read absl flags.

  was_parsed = flags.FLAGS.is_parsed()
  flags.FLAGS.mark_as_parsed()
  yield
  if not was_parsed:
    flags.FLAGS.unparse_flags()


def test_worker_processes_same_stream_and_state(absl_flags_parsed):
  kw = dict(local_batch_size=16, seed=2, process_index=0, process_count=1)
  expected = _take(data.make_train_iterator(_cfg(random_flip=True), **kw), 4)
  cfg = _cfg(random_flip=True, worker_count=2, worker_buffer_size=1)
  it = data.make_train_iterator(cfg, **kw)
  try:
    for got, want in zip(_take(it, 3), expected):  # Batches go round-robin over workers.
      _assert_batches_equal(got, want)
    state = it.get_state()
  finally:
    it.close()
  resumed = data.make_train_iterator(cfg, **kw)
  try:
    resumed.set_state(state)
    _assert_batches_equal(next(resumed), expected[3])
  finally:
    resumed.close()


# --- errors ----------------------------------------------------------------------------------


def test_config_errors():
  with pytest.raises(ValueError, match=r"data.source must be one of .*'digits', 'folder', 'tfds'"):
    data.make_source(_cfg(source="lmdb"), "train")
  with pytest.raises(ValueError, match="data.channels must be 1 or 3, got 2"):
    data.make_source(_cfg(channels=2), "train")
  with pytest.raises(ValueError, match="data.bad_images must be one of"):
    data.make_source(_cfg(bad_images="ignore"), "train")
  with pytest.raises(ValueError, match="has 10 classes but data.num_classes is 5"):
    data.make_source(_cfg(num_classes=5), "train")
  with pytest.raises(ValueError, match="needs data.folder"):
    data.make_source(_cfg(source="folder", folder=""), "train")


def test_folder_errors(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=re.escape(missing)):
    data.make_source(_cfg(source="folder", folder=missing), "train")
  os.makedirs(tmp_path / "empty" / "cls")
  (tmp_path / "empty" / "cls" / "a.gif").write_bytes(b"GIF89a")
  with pytest.raises(ValueError, match=r"has no images: looked for .*\.jpeg.*\.jpg.*\.png"):
    data.make_source(_cfg(source="folder", folder=str(tmp_path / "empty")), "train")


def test_tfds_errors(tmp_path, monkeypatch):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=re.escape(f"{missing!r} (data.tfds_data_dir)")):
    data.make_source(_tfds_cfg(tfds_data_dir=missing), "train")
  # Nothing built in an empty data dir: the message names the dir and carries the command that
  # builds the records there.
  build = (f"python -m pra_jax.tools.build_imagenet --manual_dir=DIR --data_dir={tmp_path}")
  with pytest.raises(ValueError, match=re.escape(build)):
    data.make_source(_tfds_cfg(tfds_data_dir=str(tmp_path)), "train")
  with pytest.raises(ValueError, match="TFDS has no dataset named 'no_such_set'"):
    data.make_source(_tfds_cfg(tfds_name="no_such_set", tfds_data_dir=str(tmp_path)),
                     "train")
  # No data.tfds_data_dir: the error names the dir TFDS_DATA_DIR chose, not "the default".
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  with pytest.raises(ValueError, match=re.escape(f"in the data dir {str(tmp_path)!r} "
                                                 f"($TFDS_DATA_DIR)")):
    data.make_source(_tfds_cfg(), "train")


# --- worker processes ---------------------------------------------------------------------------

_WORKERS_SCRIPT = """
from absl import app
from configs import common
from pra_jax import data


def main(argv):
  cfg = common.base_config().data
  cfg.update(source="synthetic", synthetic_examples=200, image_size=16, worker_count=2)
  train = data.make_train_iterator(cfg, local_batch_size=8, seed=0, process_index=0,
                                   process_count=1)
  next(train), next(train)
  train.close()
  batches = data.make_eval_iterator(cfg, local_batch_size=8, process_index=0, process_count=1)
  print("eval examples", sum(len(b["label"]) for b in batches))


if __name__ == "__main__":
  app.run(main)
"""


def test_worker_processes_leave_no_shared_memory_behind(tmp_path):
  # A run with data.worker_count: train batches from worker processes, then a held-out pass;
  # at exit multiprocessing's resource tracker names any shared memory nobody unlinked.
  script = tmp_path / "workers.py"
  script.write_text(_WORKERS_SCRIPT)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  res = subprocess.run([sys.executable, str(script)], cwd=repo, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu"), timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "eval examples 20" in res.stdout
  assert "leaked shared_memory" not in res.stderr, res.stderr[-3000:]
