"""train.profile_steps: a jax.profiler trace of a few training steps, for TensorBoard's profile tab.

The trace lands in workdir/profile/plugins/profile/<run>/ (one .xplane.pb per host), where
`tensorboard --logdir=WORKDIR/profile` finds it once the profile plugin is installed
(`pip install tensorboard-plugin-profile`; it is not in requirements.txt).
"""

import os

import jax
from absl import logging


def parse_steps(text: str) -> tuple[int, int] | None:
  """'FIRST:STOP' -> (FIRST, STOP), the steps FIRST..STOP-1 as a Python slice counts; '' -> None."""
  if not text:
    return None
  first, sep, stop = text.partition(":")
  try:
    span = (int(first), int(stop)) if sep else None
  except ValueError:
    span = None
  if span is None or not 1 <= span[0] < span[1]:
    raise ValueError(f"config train.profile_steps={text!r} must be 'FIRST:STOP' with "
                     f"1 <= FIRST < STOP (steps FIRST..STOP-1 are traced), or '' for none")
  return span


class StepProfiler:
  """Called once per step, before the step is dispatched: starts the trace at the first step of
  the span and stops it, after the last traced step has finished, when the span ends."""

  def __init__(self, text: str, workdir: str):
    self.span = parse_steps(text)
    self.directory = os.path.join(workdir, "profile")
    self.active = False

  def __call__(self, step: int, state) -> None:
    if self.span is None:
      return
    first, stop = self.span
    if self.active and step >= stop:
      self.stop(state)
    elif not self.active and first <= step < stop:
      # A run resumed inside the span traces what is left of it.
      jax.block_until_ready(state)  # Keep earlier steps out of the trace.
      jax.profiler.start_trace(self.directory)
      self.active = True
      logging.info("Profiling steps %d..%d into %s.", step, stop - 1, self.directory)

  def stop(self, state=None) -> None:
    """Ends a trace in progress (the loop calls it on the way out too)."""
    if not self.active:
      return
    if state is not None:
      jax.block_until_ready(state)  # The traced steps' device work belongs in the trace.
    jax.profiler.stop_trace()
    self.active = False
    self.span = None
    logging.info("Profile written to %s.", self.directory)
