"""Fixed-size batches over any number of rows: one compiled shape serves them all.

The last batch is padded by repeating its last row and the padding is dropped from the outputs,
so every row counts once. Row-wise functions (a sampler, a classifier, a feature extractor)
give the real rows exactly what they would give them in a full batch.
"""

from collections.abc import Callable, Iterator

import numpy as np


def padded_batches(batch_size: int, *arrays) -> Iterator[tuple[int, int, tuple[np.ndarray, ...]]]:
  """(start, count of real rows, arrays[start:start + batch_size] padded to batch_size rows)."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  n = len(arrays[0])
  if any(len(a) != n for a in arrays):
    raise ValueError(f"arrays to batch together differ in length: {[len(a) for a in arrays]}")
  for start in range(0, n, batch_size):
    chunk = tuple(np.asarray(a[start:start + batch_size]) for a in arrays)
    count = len(chunk[0])
    if count < batch_size:
      chunk = tuple(np.concatenate([c, np.repeat(c[-1:], batch_size - count, axis=0)])
                    for c in chunk)
    yield start, count, chunk


def map_rows(fn: Callable, batch_size: int, *arrays, check_stop: Callable | None = None):
  """fn(start, *batch) -> an array or a tuple of arrays with batch_size rows, over every row of
  `arrays`; returns the real rows' outputs concatenated (an array or a tuple, as fn returns).
  `check_stop()`, if given, runs before every batch (it raises to abandon the work)."""
  outputs, single = [], False
  for start, count, batch in padded_batches(batch_size, *arrays):
    if check_stop is not None:
      check_stop()
    out = fn(start, *batch)
    single = not isinstance(out, tuple)
    outputs.append(tuple(np.asarray(o)[:count] for o in ((out,) if single else out)))
  if not outputs:
    raise ValueError("no rows to map")
  joined = tuple(np.concatenate(parts) for parts in zip(*outputs))
  return joined[0] if single else joined
