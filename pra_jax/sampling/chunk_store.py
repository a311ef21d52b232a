"""The chunk folder of a sampling run: its manifest, the chunks each process commits, the merge.

Images are planned by global index 0..N-1 and cut into chunks of `chunk_size` consecutive
indices. Each process writes the rows of a chunk that its devices generated as one part file
(`chunk_000012.part_1-of-4.npz`: index, image and label of each row); once every process has
written its part, process 0 commits the chunk with a marker (`chunk_000012.done.json`, listing
the parts). Every file appears whole or not at all (written under a temporary name, flushed to
disk, renamed), so a run killed at any moment leaves only committed chunks and stray
temporaries, and a rerun redoes exactly the chunks without a marker.

`manifest.json` records everything that fixes the images (checkpoint, seed, sampler settings,
labels, chunk size); a rerun with other settings is refused, naming what differs. The batch
size and the device and process counts are not in it: they do not change a single image.

Files are written uncompressed with fixed zip timestamps, so the same images give the same
bytes. The folder must be on a filesystem every process sees (for the merge on process 0).
"""

import json
import os
import zipfile

import numpy as np

from pra_jax import files

MANIFEST = "manifest.json"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # The zip format's earliest date: no clock in the bytes.


class SettingsMismatch(ValueError):
  pass


def check_path(path: str, what: str) -> None:
  if "://" in path:
    raise ValueError(f"{what} {path!r} is a URL: sample chunks are committed by atomic rename, "
                     f"which object stores do not offer; give a path on a filesystem every "
                     f"process mounts (NFS, Filestore, Lustre, or gcsfuse)")


def _commit(path: str, write) -> None:
  """Runs write(file) into path's temporary twin, flushes it to disk and renames it into place."""
  files.atomic_write(path, write, durable=True)


def _npy_header(shape, dtype) -> bytes:
  import io
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(buf, {
      "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
      "shape": tuple(int(s) for s in shape)})
  return buf.getvalue()


def write_npz(path: str, arrays: dict) -> None:
  """An uncompressed .npz that np.load reads, byte-identical for identical arrays.

  A value is an array, or (shape, dtype, blocks) with `blocks` an iterable of C-ordered arrays
  whose bytes follow each other: a file bigger than memory is written block by block.
  """
  def write(f):
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
      for name, value in arrays.items():
        if isinstance(value, tuple):
          shape, dtype, blocks = value
        else:
          value = np.ascontiguousarray(value)
          shape, dtype, blocks = value.shape, value.dtype, [value]
        info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        written = 0
        with zf.open(info, "w", force_zip64=True) as entry:
          entry.write(_npy_header(shape, dtype))
          for block in blocks:
            data = np.ascontiguousarray(block, dtype=dtype).tobytes()
            entry.write(data)
            written += len(data)
        if written != expected:  # The rename below never happens: no torn file appears.
          raise ValueError(f"{path}: {name} got {written} bytes for shape {tuple(shape)} "
                           f"{np.dtype(dtype)}, expected {expected}")
  _commit(path, write)


def write_json(path: str, obj) -> None:
  _commit(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode()))


# -- the plan -------------------------------------------------------------------------------
def chunk_range(chunk: int, chunk_size: int, num_images: int) -> tuple[int, int]:
  return chunk * chunk_size, min((chunk + 1) * chunk_size, num_images)


def num_chunks(chunk_size: int, num_images: int) -> int:
  return -(-num_images // chunk_size)


def read_manifest(folder: str):
  path = os.path.join(folder, MANIFEST)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_manifest(folder: str, settings: dict, *, write: bool) -> None:
  """Refuses a folder begun with other settings; records them in a new one (if `write`)."""
  settings = json.loads(json.dumps(settings))  # Tuples -> lists, as they read back.
  old = read_manifest(folder)
  if old is None:
    if write:
      os.makedirs(folder, exist_ok=True)
      write_json(os.path.join(folder, MANIFEST), settings)
    return
  diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
  if diff:
    shown = "; ".join(f"{k}: {_short(old.get(k))} there, {_short(settings.get(k))} now"
                      for k in diff)
    hint = (f"; --checkpoint_step={old['checkpoint.step']} samples the folder's checkpoint"
            if "checkpoint.step" in diff else "")
    raise SettingsMismatch(
        f"chunk folder {folder} holds samples made with other settings ({shown}); give another "
        f"--chunk_dir (or --out), or delete the folder to start again{hint}")


def _short(value) -> str:
  text = json.dumps(value, sort_keys=True)
  return text if len(text) <= 80 else text[:77] + "..."


# -- chunks ---------------------------------------------------------------------------------
def part_name(chunk: int, process: int, num_processes: int) -> str:
  return f"chunk_{chunk:06d}.part_{process}-of-{num_processes}.npz"


def marker_path(folder: str, chunk: int) -> str:
  return os.path.join(folder, f"chunk_{chunk:06d}.done.json")


def write_part(folder: str, chunk: int, process: int, num_processes: int,
               index_X: np.ndarray, images_XHWC: np.ndarray, labels_X: np.ndarray) -> None:
  order = np.argsort(index_X, kind="stable")
  write_npz(os.path.join(folder, part_name(chunk, process, num_processes)),
            {"index": index_X[order].astype(np.int64), "images": images_XHWC[order],
             "labels": labels_X[order].astype(np.int32)})


def commit_chunk(folder: str, chunk: int, num_processes: int, start: int, end: int) -> None:
  write_json(marker_path(folder, chunk), {
      "parts": [part_name(chunk, p, num_processes) for p in range(num_processes)],
      "images": [start, end]})


def finished_chunks(folder: str, count: int) -> np.ndarray:
  """[count] bool: which chunks have a marker and all the parts it lists."""
  done = np.zeros(count, bool)
  for c in range(count):
    path = marker_path(folder, c)
    if os.path.exists(path):
      with open(path) as f:
        parts = json.load(f)["parts"]
      done[c] = all(os.path.exists(os.path.join(folder, p)) for p in parts)
  return done


def read_chunk(folder: str, chunk: int, start: int, end: int, labels_X: np.ndarray):
  """(images, labels) of one committed chunk in index order, checked against the plan."""
  with open(marker_path(folder, chunk)) as f:
    parts = json.load(f)["parts"]
  index, images, labels = [], [], []
  for name in parts:
    with np.load(os.path.join(folder, name), allow_pickle=False) as part:
      index.append(part["index"])
      images.append(part["images"])
      labels.append(part["labels"])
  index, images, labels = (np.concatenate(a) for a in (index, images, labels))
  order = np.argsort(index, kind="stable")
  index, images, labels = index[order], images[order], labels[order]
  if not np.array_equal(index, np.arange(start, end)):
    raise ValueError(f"chunk {chunk} in {folder} holds images {index.tolist()[:8]}..., not "
                     f"{start}..{end - 1}: delete its files and rerun to regenerate it")
  if not np.array_equal(labels, labels_X[start:end]):
    raise ValueError(f"chunk {chunk} in {folder} has labels that differ from this run's plan: "
                     f"delete its files and rerun to regenerate it")
  return images, labels


def merge(folder: str, chunk_size: int, labels_X: np.ndarray, image_shape, out_path: str,
          keep=()) -> dict:
  """Writes the ADM .npz (arr_0 uint8 NHWC, arr_1 labels) from every committed chunk, one chunk
  in memory at a time; returns {index: image} for the indices in `keep` (for the grid)."""
  n = len(labels_X)
  keep, kept = set(int(k) for k in keep), {}

  def blocks():
    for c in range(num_chunks(chunk_size, n)):
      start, end = chunk_range(c, chunk_size, n)
      images, _ = read_chunk(folder, c, start, end, labels_X)
      for k in keep.intersection(range(start, end)):
        kept[k] = images[k - start]
      yield images

  write_npz(out_path, {"arr_0": ((n, *image_shape), np.uint8, blocks()), "arr_1": labels_X})
  return kept
