"""Input pipelines: the built-in digits demo set, crops of bundled photographs, image folders, TFDS
and synthetic images for smoke tests, all through grain.

Examples are {'image': uint8 [H, W, C], 'label': int32, 'bad': int32}; batches stack them.
"""

import abc
import functools
import io
import os
from typing import Any, Protocol

from absl import logging
import grain
import ml_collections
import numpy as np
from PIL import Image

from pra_jax import tfds_records

# The digits demo set (scikit-learn's 1797 real 8x8 scans, 10 classes) is split once, by a
# fixed permutation, so every run and every metric sees the same held-out images.
DIGITS_NUM_CLASSES = 10
DIGITS_NUM_EVAL = 297
_DIGITS_SPLIT_SEED = 0

# The photos proving ground: ten real photographs that ship inside installed packages (two with
# scikit-learn, eight in scikit-image's wheel, read as files: skimage itself is never imported),
# one class each. Every photo is resized so its shorter side is _PHOTO_SIDE_CROPS crops tall; the
# bottom fifth of it (at least a crop) is held out, and no crop straddles that boundary, so no
# held-out pixel is ever seen in training.
PHOTOS = (("scikit-learn", "china.jpg"), ("scikit-learn", "flower.jpg"),
          ("scikit-image", "astronaut.png"), ("scikit-image", "chelsea.png"),
          ("scikit-image", "coffee.png"), ("scikit-image", "hubble_deep_field.jpg"),
          ("scikit-image", "ihc.png"), ("scikit-image", "motorcycle_left.png"),
          ("scikit-image", "retina.jpg"), ("scikit-image", "rocket.jpg"))
PHOTOS_NUM_CLASSES = len(PHOTOS)
_PHOTO_SIDE_CROPS = 6     # The shorter side spans 6 crop sides: a crop shows a sixth of it.
_PHOTO_STRIDE_FRACTION = 4  # Crops start every crop_side / 4 pixels (train and held-out).

# The allowed values of data.source, data.bad_images and data.channels (config_check reads them).
SOURCES = ("digits", "folder", "tfds", "synthetic", "photos")
BAD_IMAGE_MODES = ("skip", "raise")
CHANNELS = (1, 3)  # Every image is converted to grayscale (L) or RGB.
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
# What PIL raises on corrupt, truncated or empty files (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# In-process reading: threads each assemble one batch; the buffer is counted in batches,
# so it bounds host memory at _READ_BUFFER_BATCHES * local batch.
_READ_THREADS = 8
_READ_BUFFER_BATCHES = 16
# Arrays below this many bytes travel from grain's worker processes pickled, not in shared
# memory: all of them (see _to_iterator).
_NO_SHARED_MEMORY = 2**62


def load_digits_split(split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [n, image_size, image_size, 1], labels int32 [n]) of a split."""
  from sklearn.datasets import load_digits  # Imported lazily: only the demo needs it.

  if split not in ("train", "eval"):
    raise ValueError(f"digits split must be 'train' or 'eval', got {split!r}")
  if image_size < 8:
    raise ValueError(f"digits image_size must be at least 8 (the scans are 8x8), got {image_size}")
  digits = load_digits()
  order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(digits.target))
  idx = order[DIGITS_NUM_EVAL:] if split == "train" else order[:DIGITS_NUM_EVAL]
  # Scans hold 0..16 ink levels; scale to 0..255 and upsample bilinearly to the demo size.
  small = np.round(digits.images[idx] * (255.0 / 16.0)).astype(np.uint8)
  images = np.stack([
      np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.BILINEAR))
      for im in small
  ])
  return images[..., None], digits.target[idx].astype(np.int32)


def _photo_path(package: str, name: str) -> str:
  import importlib.util

  if package == "scikit-learn":
    import sklearn.datasets  # A dependency already: the digits demo set ships with it.
    return os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", name)
  spec = importlib.util.find_spec("skimage")  # Finds the package without importing it.
  path = os.path.join(os.path.dirname(spec.origin), "data", name) if spec else None
  if path is None or not os.path.exists(path):
    raise FileNotFoundError(f"data.source='photos' reads {name} from scikit-image's wheel, which "
                            f"is not installed here: pip install scikit-image==0.26.0 (no download "
                            f"at run time; the photos ship inside the wheel)")
  return path


def photo_crop_boxes(height: int, width: int, crop: int, split: str) -> list[tuple[int, int]]:
  """Top-left corners (y, x) of a split's crops in a photo, in raster order: train above the
  held-out band, held-out in one row across the middle of the band.

  One held-out row keeps the split ordered by x alone, so two held-out crops half a photo's width
  apart in that order share no pixels (pra_jax.gap pairs images that way for its control).
  """
  held = max(-(-height // 5), crop)   # The bottom fifth, at least one crop tall.
  boundary = height - held
  stride = max(1, crop // _PHOTO_STRIDE_FRACTION)
  xs = range(0, width - crop + 1, stride)
  if split == "train":
    ys = range(0, boundary - crop + 1, stride)
  else:
    ys = [boundary + (held - crop) // 2]
  return [(y, x) for y in ys for x in xs]


@functools.lru_cache(maxsize=4)
def load_photos_split(split: str, image_size: int, channels: int = 3
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Returns (crops uint8 [n, image_size, image_size, channels], labels int32 [n]) of a split.

  Label k is the k-th photo of PHOTOS. Training crops come from the top four fifths of each photo,
  held-out crops from the bottom fifth: disjoint pixels. Cached: every caller shares one copy.
  """
  if split not in ("train", "eval"):
    raise ValueError(f"photos split must be 'train' or 'eval', got {split!r}")
  if image_size < 8:
    raise ValueError(f"photos image_size must be at least 8, got {image_size}")
  crops, labels = [], []
  for label, (package, name) in enumerate(PHOTOS):
    with Image.open(_photo_path(package, name)) as img:
      img = convert_mode(img, channels)
      scale = _PHOTO_SIDE_CROPS * image_size / min(img.size)
      img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
      pixels = _to_hwc(np.asarray(img))
    for y, x in photo_crop_boxes(pixels.shape[0], pixels.shape[1], image_size, split):
      crops.append(pixels[y:y + image_size, x:x + image_size])
      labels.append(label)
  images = np.stack(crops)
  images.setflags(write=False)
  return images, np.asarray(labels, np.int32)


def load_eval_arrays(data_cfg) -> tuple[np.ndarray, np.ndarray]:
  """The whole held-out split (data.eval_split) as arrays, the in-memory sources only: for
  diagnostics."""
  if data_cfg.source == "digits":
    images, labels = load_digits_split(_split_role(data_cfg, data_cfg.eval_split),
                                       data_cfg.image_size)
    return (np.repeat(images, 3, axis=-1) if data_cfg.channels == 3 else images), labels
  if data_cfg.source == "photos":
    return load_photos_split(_split_role(data_cfg, data_cfg.eval_split), data_cfg.image_size,
                             data_cfg.channels)
  raise ValueError(f"held-out arrays exist for data.source 'digits' and 'photos'; "
                   f"data.source={data_cfg.source!r} is not supported")


# ---------------------------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------------------------


def validate_config(data_cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError on a data section that cannot work, before anything is read."""
  if data_cfg.source not in SOURCES:
    raise ValueError(f"data.source must be one of {SOURCES}, got {data_cfg.source!r}")
  if data_cfg.channels not in CHANNELS:
    raise ValueError(f"data.channels must be {' or '.join(map(str, CHANNELS))}, got "
                     f"{data_cfg.channels!r}")
  if data_cfg.bad_images not in BAD_IMAGE_MODES:
    raise ValueError(
        f"data.bad_images must be one of {BAD_IMAGE_MODES}, got {data_cfg.bad_images!r}")
  if data_cfg.image_size < 1:
    raise ValueError(f"data.image_size must be positive, got {data_cfg.image_size}")
  if data_cfg.source == "folder" and not data_cfg.folder:
    raise ValueError("data.source='folder' needs data.folder: the train split root")


def _split_role(data_cfg: ml_collections.ConfigDict, split: str) -> str:
  """Maps a split name to 'train' or 'eval' for the sources that have exactly two."""
  if split in (data_cfg.train_split, "train"):
    return "train"
  if split in (data_cfg.eval_split, "eval"):
    return "eval"
  raise ValueError(
      f"split {split!r} is neither data.train_split ({data_cfg.train_split!r}) nor "
      f"data.eval_split ({data_cfg.eval_split!r})")


def _check_num_classes(data_cfg: ml_collections.ConfigDict, found: int, where: str,
                       exact: bool = False) -> None:
  # Labels at or above num_classes would index past the class embedding table; with fewer
  # classes (refused by check_source), some ids never train and sampling them draws from an
  # untrained embedding.
  if found > data_cfg.num_classes or (exact and found < data_cfg.num_classes):
    raise ValueError(f"{where} has {found} classes but data.num_classes is {data_cfg.num_classes}"
                     f"; expected one class per id")


# ---------------------------------------------------------------------------------------------
# Decoding and ADM-style preprocessing.
# ---------------------------------------------------------------------------------------------


def convert_mode(img: Image.Image, channels: int) -> Image.Image:
  """Grayscale, palette and alpha images to 'L' (channels=1) or 'RGB' (channels=3)."""
  if img.mode.startswith("I;16") or img.mode == "I":
    # 16-bit grayscale (PNG opens as I;16 or I). PIL's convert('L') clips at 255, which turns
    # every such image white: map 0..65535 onto 0..255 instead (v / 257, rounded).
    wide = np.asarray(img, np.uint32) if img.mode != "I" else np.asarray(img, np.int64)
    img = Image.fromarray(np.clip((wide + 128) // 257, 0, 255).astype(np.uint8), "L")
  has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
  if has_alpha:
    # Composite over white: fully transparent pixels carry arbitrary colours underneath.
    rgba = img.convert("RGBA")
    img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
  return img.convert("RGB" if channels == 3 else "L")


def resize_and_center_crop(img: Image.Image, image_size: int) -> np.ndarray:
  """Shorter side to image_size, then a centred square crop, as ADM prepares ImageNet."""
  # Halve with a box filter while the image is at least twice too big: one bicubic step
  # over a large factor aliases, and box averaging is what ADM's reference statistics saw.
  while min(img.size) >= 2 * image_size:
    img = img.resize((img.width // 2, img.height // 2), Image.BOX)
  scale = image_size / min(img.size)
  new_size = tuple(max(image_size, round(side * scale)) for side in img.size)
  img = img.resize(new_size, Image.BICUBIC)
  left = (img.width - image_size) // 2
  top = (img.height - image_size) // 2
  return np.asarray(img.crop((left, top, left + image_size, top + image_size)))


def _to_hwc(pixels: np.ndarray) -> np.ndarray:
  return pixels[..., None] if pixels.ndim == 2 else pixels


def _preprocess(img: Image.Image, channels: int, image_size: int) -> np.ndarray:
  return _to_hwc(resize_and_center_crop(convert_mode(img, channels), image_size))


# ---------------------------------------------------------------------------------------------
# Random-access sources.
# ---------------------------------------------------------------------------------------------


class Source(Protocol):
  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> dict[str, np.ndarray]: ...


def _example(image: np.ndarray, label: int, bad: bool) -> dict[str, np.ndarray]:
  return {"image": image, "label": np.int32(label), "bad": np.int32(bad)}


class InMemorySource:
  """A split held in memory as (images uint8 [n, H, W, C], labels int32 [n]): the digits demo
  set and the photos' crops."""

  def __init__(self, name: str, role: str, images: np.ndarray, labels: np.ndarray):
    self._name, self._role, self._images, self._labels = name, role, images, labels

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return _example(self._images[index], self._labels[index], bad=False)

  def __repr__(self) -> str:
    return f"InMemorySource({self._name!r}, {self._role!r}, n={len(self)})"


def _digits_source(role: str, image_size: int, channels: int) -> InMemorySource:
  images, labels = load_digits_split(role, image_size)
  images = np.repeat(images, channels, axis=-1) if channels == 3 else images
  return InMemorySource("digits", role, images, labels)


class SyntheticSource:
  """Random images with the real pipeline's shapes and dtypes, made on the fly from (split,
  index): for smoke-testing a config end to end (compile, steps, checkpoint, resume) on a pod
  or a GPU box before its dataset is built. Nothing a model learns from it means anything."""

  def __init__(self, role: str, size: int, image_size: int, channels: int, num_classes: int):
    self._role, self._size, self._num_classes = role, size, num_classes
    self._shape = (image_size, image_size, channels)

  def __len__(self) -> int:
    return self._size

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([int(index), 0 if self._role == "train" else 1])
    # Smooth blobs rather than white noise, so patches are as compressible as real ones.
    h, w, c = self._shape
    coarse = rng.integers(0, 256, (max(h // 8, 1), max(w // 8, 1), c), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse[..., 0] if c == 1 else coarse).resize(
        (w, h), Image.BILINEAR)).reshape(self._shape)
    return _example(image, int(index) % self._num_classes, bad=False)

  def __repr__(self) -> str:
    return f"SyntheticSource({self._role!r}, n={len(self)}, shape={self._shape})"


class _DecodingSource(abc.ABC):
  """Decodes examples lazily; an unreadable one is replaced by the next readable index.

  Replacing (rather than dropping) keeps every batch full and the order a pure function of
  the index, so a resumed iterator and every worker count see the same stream.
  """

  def __init__(self, data_cfg: ml_collections.ConfigDict):
    self._channels = data_cfg.channels
    self._image_size = data_cfg.image_size
    self._raise_on_bad = data_cfg.bad_images == "raise"

  @abc.abstractmethod
  def _decode(self, index: int) -> tuple[np.ndarray, int]:
    """(image, label) of one stored example; raises if it cannot be read."""

  @abc.abstractmethod
  def _name(self, index: int) -> str:
    """The file path or record id that warnings name."""

  @abc.abstractmethod
  def __len__(self) -> int:
    """Number of examples."""

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    n = len(self)
    for offset in range(n):
      candidate = (index + offset) % n
      try:
        image, label = self._decode(candidate)
      except _DECODE_ERRORS as e:
        if self._raise_on_bad:
          raise ValueError(f"unreadable image {self._name(candidate)}: {e}") from e
        logging.warning("Unreadable image %s (%s); substituting the next readable one.",
                        self._name(candidate), e)
        continue
      return _example(image, label, bad=offset > 0)
    raise ValueError(f"no readable image in {self!r}")


def _list_class_dirs(root: str) -> list[str]:
  if not os.path.isdir(root):
    raise FileNotFoundError(f"image folder {root!r} does not exist (data.folder / eval_folder)")
  return sorted(e.name for e in os.scandir(root) if e.is_dir())


def _list_images(class_dir: str) -> list[str]:
  # Only the class folder's own files: ImageNet-style folders are one level deep.
  return sorted(
      e.path for e in os.scandir(class_dir)
      if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)


class ImageFolderSource(_DecodingSource):
  """root/<class name>/<image>.{jpg,jpeg,png}, with labels given by `classes` order."""

  def __init__(self, data_cfg: ml_collections.ConfigDict, root: str, classes: list[str]):
    super().__init__(data_cfg)
    self._root = root
    found = set(_list_class_dirs(root))
    unknown = sorted(found - set(classes))
    if unknown:
      raise ValueError(f"image folder {root!r} has class folders {unknown[:5]} that the train "
                       f"folder lacks; class ids come from the train folder's subfolders")
    paths, labels = [], []
    for label, name in enumerate(classes):
      if name in found:
        files = _list_images(os.path.join(root, name))
        paths += files
        labels += [label] * len(files)
    self._paths, self._labels = tuple(paths), np.asarray(labels, np.int32)
    if not self._paths:
      raise ValueError(f"image folder {root!r} has no images: looked for {IMAGE_EXTENSIONS} "
                       f"files (any case) in its class subfolders {sorted(found)[:5]}")

  @property
  def paths(self) -> tuple[str, ...]:
    return self._paths

  def check_readable(self) -> None:
    """Raises unless some file decodes: a folder of corrupt files is refused up front, not after
    a warning per file and the first batch."""
    first_error = None
    for index in range(len(self)):
      try:
        self._decode(index)
        return
      except _DECODE_ERRORS as e:
        first_error = first_error or f"{self._name(index)}: {e}"
    raise ValueError(f"image folder {self._root!r}: none of its {len(self)} image files could be "
                     f"read (first: {first_error}); expected {'/'.join(IMAGE_EXTENSIONS)} files "
                     f"that PIL decodes")

  def __len__(self) -> int:
    return len(self._paths)

  def _name(self, index: int) -> str:
    return self._paths[index]

  def _decode(self, index: int) -> tuple[np.ndarray, int]:
    with Image.open(self._paths[index]) as img:
      img.load()  # Decode fully here, inside the error handling: open() reads the header.
      pixels = _preprocess(img, self._channels, self._image_size)
    return pixels, self._labels[index]

  def __repr__(self) -> str:
    return f"ImageFolderSource({self._root!r}, n={len(self)})"


class TfdsSource(_DecodingSource):
  """A TFDS array_record split; images come decoded (arrays) or, with skipped decoding, as bytes."""

  def __init__(self, data_cfg: ml_collections.ConfigDict, split: str, records: Any):
    super().__init__(data_cfg)
    self._records = records
    self._desc = f"{data_cfg.tfds_name}/{split}"

  def __len__(self) -> int:
    return len(self._records)

  def _name(self, index: int) -> str:
    return f"{self._desc}[{index}]"

  def _decode(self, index: int) -> tuple[np.ndarray, int]:
    record = self._records[index]
    image = record["image"]
    if isinstance(image, bytes):
      img = Image.open(io.BytesIO(image))
      img.load()
    else:
      image = np.asarray(image)
      img = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    return _preprocess(img, self._channels, self._image_size), int(record["label"])

  def __repr__(self) -> str:
    return f"TfdsSource({self._desc!r}, n={len(self)})"


def _open_tfds(data_cfg: ml_collections.ConfigDict, split: str) -> Any:
  import tensorflow_datasets as tfds  # Imported lazily: only the TFDS source needs it.

  # tfds_data_dir '' is unset: then $TFDS_DATA_DIR, else TFDS's default.
  name = data_cfg.tfds_name
  data_dir, chosen_by = tfds_records.data_dir(data_cfg.tfds_data_dir or None)
  where = f"data dir {data_dir!r} ({chosen_by})"
  build = tfds_records.build_command(name, data_dir)
  # A bucket (gs://...) is left to TFDS to open: os.path knows only local folders.
  if "://" not in data_dir and not os.path.isdir(data_dir):
    raise FileNotFoundError(f"TFDS {where} does not exist; build {name} there with: {build}")
  try:
    # download=False: a missing dataset must be an error here, not a download attempt. The
    # images come as their stored JPEG bytes, decoded by PIL in TfdsSource as ADM decodes them
    # (TFDS would decode with OpenCV where it is installed, and log that it is not elsewhere).
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"TFDS has no dataset named {name!r} (data.tfds_name)") from e
  except (NotImplementedError, AssertionError, FileNotFoundError, KeyError) as e:
    # TFDS words a missing build as "random access for TFRECORD is not supported" (empty
    # data dir) or "splits is empty" (no data dir); its own words follow ours.
    raise ValueError(f"TFDS dataset {name!r} split {split!r} is not built as array_record in "
                     f"the {where}; build it with: {build}. (Set the data dir with "
                     f"--config.data.tfds_data_dir=DIR or TFDS_DATA_DIR=DIR.) TFDS said: "
                     f"{e}") from e


def _folder_classes(data_cfg: ml_collections.ConfigDict) -> list[str]:
  classes = _list_class_dirs(data_cfg.folder)
  _check_num_classes(data_cfg, len(classes), f"image folder {data_cfg.folder!r}")
  return classes


def check_source(data_cfg: ml_collections.ConfigDict) -> None:
  """What a run can know of its data before it writes anything or builds a model: the class
  count of every source, and for image folders that each exists and holds a readable image.
  TFDS is opened by make_source (it needs TensorFlow)."""
  validate_config(data_cfg)
  if data_cfg.source == "digits":
    _check_num_classes(data_cfg, DIGITS_NUM_CLASSES, "the digits set", exact=True)
  elif data_cfg.source == "photos":
    _check_num_classes(data_cfg, PHOTOS_NUM_CLASSES, "the photos set", exact=True)
  elif data_cfg.source == "folder":
    eval_split = (data_cfg.eval_split,) if data_cfg.eval_folder else ()  # Else: the train one.
    for split in (data_cfg.train_split,) + eval_split:
      make_source(data_cfg, split).check_readable()
    _check_num_classes(data_cfg, len(_list_class_dirs(data_cfg.folder)),
                       f"image folder {data_cfg.folder!r}", exact=True)


def make_source(data_cfg: ml_collections.ConfigDict, split: str) -> Source:
  """A random-access source of examples for `split` (a TFDS split, or train/eval role)."""
  validate_config(data_cfg)
  if data_cfg.source == "digits":
    _check_num_classes(data_cfg, DIGITS_NUM_CLASSES, "the digits set")
    return _digits_source(_split_role(data_cfg, split), data_cfg.image_size, data_cfg.channels)
  if data_cfg.source == "photos":
    _check_num_classes(data_cfg, PHOTOS_NUM_CLASSES, "the photos set")
    role = _split_role(data_cfg, split)
    return InMemorySource("photos", role, *load_photos_split(role, data_cfg.image_size,
                                                             data_cfg.channels))
  if data_cfg.source == "synthetic":
    role = _split_role(data_cfg, split)
    logging.warning("data.source='synthetic': random images for a smoke test of the %s split; "
                    "losses and samples mean nothing.", role)
    size = data_cfg.synthetic_examples if role == "train" else max(data_cfg.synthetic_examples // 10, 1)
    return SyntheticSource(role, size, data_cfg.image_size, data_cfg.channels,
                           data_cfg.num_classes)
  if data_cfg.source == "folder":
    classes = _folder_classes(data_cfg)
    root = data_cfg.folder
    if _split_role(data_cfg, split) == "eval":
      root = data_cfg.eval_folder or root
      if root == data_cfg.folder:
        logging.warning("data.eval_folder is not set: evaluating on the train folder %r", root)
    return ImageFolderSource(data_cfg, root, classes)
  return TfdsSource(data_cfg, split, _open_tfds(data_cfg, split))


# ---------------------------------------------------------------------------------------------
# grain iterators.
# ---------------------------------------------------------------------------------------------


def _shard(ds: grain.MapDataset, process_index: int, process_count: int) -> grain.MapDataset:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  if len(ds) < process_count:
    raise ValueError(f"{len(ds)} examples cannot be shared by {process_count} processes")
  # Strided slices are disjoint, cover the split, and differ in length by at most one.
  return ds[process_index::process_count]


def _random_flip(example: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, Any]:
  if rng.random() < 0.5:
    return {**example, "image": example["image"][:, ::-1]}
  return example


def _to_iterator(batches: grain.MapDataset,
                 data_cfg: ml_collections.ConfigDict) -> grain.DatasetIterator:
  # Batching before to_iter_dataset makes whole batches the unit of work: workers take
  # batches round-robin, so the stream is the same for any worker_count. The state's
  # format still depends on worker_count: keep it fixed across a resume.
  ds = batches.to_iter_dataset(
      grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=_READ_BUFFER_BATCHES))
  if data_cfg.worker_count > 0:
    # Batches come back from the workers pickled through grain's queue, not in shared memory:
    # grain 0.2.18 unlinks a shared-memory batch when its array is collected, from a background
    # thread, and batches alive near exit (the last of a pass, those a closed iterator held)
    # are never unlinked; the resource tracker reports them ("There appear to be 3 leaked
    # shared_memory objects") at every exit. Pickling costs one more copy of each batch.
    ds = grain.experimental.WithOptionsIterDataset(
        ds, grain.experimental.DatasetOptions(min_shm_size=_NO_SHARED_MEMORY))
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data_cfg.worker_count, per_worker_buffer_size=data_cfg.worker_buffer_size))
  return iter(ds)


def make_train_iterator(data_cfg: ml_collections.ConfigDict, *, local_batch_size: int, seed: int,
                        process_index: int, process_count: int) -> grain.DatasetIterator:
  """Endless shuffled batches of this process's shard; state restores the exact next batch.

  With worker_count > 0 grain starts processes: absl flags must be parsed (absl.app.run)
  and the launching script needs an `if __name__ == "__main__":` guard.
  """
  if local_batch_size < 1:
    raise ValueError(f"local_batch_size must be positive, got {local_batch_size}")
  source = make_source(data_cfg, data_cfg.train_split)
  # Separate streams for order and flips, both fixed by (seed, process): a resumed or
  # re-run job replays the same batches.
  shuffle_seed, flip_seed = np.random.SeedSequence([seed, process_index]).generate_state(2)
  ds = _shard(grain.MapDataset.source(source), process_index, process_count)
  # Shuffle before repeat: each epoch is a fresh permutation (grain folds in the epoch).
  ds = ds.shuffle(seed=int(shuffle_seed)).repeat()
  if data_cfg.random_flip:
    ds = ds.random_map(_random_flip, seed=int(flip_seed))
  return _to_iterator(ds.batch(local_batch_size, drop_remainder=True), data_cfg)


def make_eval_iterator(data_cfg: ml_collections.ConfigDict, *, local_batch_size: int,
                       process_index: int, process_count: int) -> grain.DatasetIterator:
  """One ordered pass over this process's shard of the held-out split (data.eval_split), the
  last partial batch kept.

  Shards differ by at most one example, so processes may see different batch counts.
  """
  if local_batch_size < 1:
    raise ValueError(f"local_batch_size must be positive, got {local_batch_size}")
  source = make_source(data_cfg, data_cfg.eval_split)
  ds = _shard(grain.MapDataset.source(source), process_index, process_count)
  return _to_iterator(ds.batch(local_batch_size, drop_remainder=False), data_cfg)
