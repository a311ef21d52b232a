"""Living through preemption and lost peers: a SIGTERM stops the run with nothing lost, soon;
several processes agree on the step they stop at; a collective that fails because a peer is gone
exits at once, naming the peer.

train_and_evaluate holds one Preemption for the whole run and asks it, each step, whether to stop.
"""

import os
import re
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pra_jax import sharding


# Set once a SIGTERM abandoned a grid or an eval: the main program then ends with os._exit after
# everything is written and closed, because work abandoned mid-compile or mid-dispatch can leave
# native XLA state that crashes the interpreter's own teardown (a segfault after a clean run).
abandoned_native_work = False


class Abort(Exception):
  """Raised by SIGTERM inside an abortable region (sample grid, periodic eval)."""


class Preemption:
  """SIGTERM (spot or preemptible capacity going away): stop with nothing lost, soon.

  - Nothing trained since the last committed checkpoint (compiling, restoring, loading data, or
    just after a save): exit 0 at once, even inside a compile. A watcher thread is woken by the
    signal at C level (signal.set_wakeup_fd), so a busy main thread cannot delay it. With several
    processes this holds only until the first step has run (compiling, restoring): nothing can
    be lost, and waiting for the others would mean waiting out the compile. A process that did
    not get the signal then fails its next collective and exits with LOST_PEER_EXIT (or the
    coordination service's heartbeat timeout ends it); a restart resumes from the same
    checkpoint. Once steps run (`voting`), a lone exit would end the others with a lost peer
    even just after a save, so the signal always goes through the vote.
  - Inside a sample grid or periodic eval (one process): the eval is abandoned, the loop saves.
  - Otherwise the loop saves at the end of the current step and exits 0. With several
    processes, the notice is shared through an all-reduce one step late (see `StopVote`), so
    every process stops at the same step whichever of them got the signal.
  """

  def __init__(self):
    self.requested = False
    self.dirty = False        # Steps trained since the last committed checkpoint.
    self.voting = False       # Several processes and the loop running: stop through StopVote.
    self.abortable = False
    self.abort_pending = False  # An abort raised where it may have been swallowed.
    self.is_saving = lambda: False
    self.single = False       # Set once the runtime is up (asking jax here would start it).
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    self._read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    self._write_fd = write_fd
    self._previous_fd = signal.set_wakeup_fd(write_fd)
    self._watcher = threading.Thread(target=self._watch, daemon=True, name="pra_jax SIGTERM")
    self._watcher.start()

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True
    if self.abortable and self.single:
      self.abortable = False
      # Raised wherever the main thread is; if that is somewhere that swallows exceptions (a
      # garbage-collection callback), check_abort raises it again before the next batch.
      self.abort_pending = True
      raise Abort()

  def check_abort(self):
    """Called between the batches of a grid or an eval: raises a SIGTERM's abort once."""
    if self.abort_pending:
      self.abort_pending = False
      raise Abort()

  def _watch(self):
    while True:
      try:
        got = os.read(self._read_fd, 64)
      except OSError:
        return
      if not got:
        os.close(self._read_fd)
        return
      if signal.SIGTERM in got:
        self.exit_if_clean()

  def stepped(self, several_processes: bool):
    """Called after each train step: something is now unsaved, and with several processes a
    SIGTERM from here on stops every process at one step through the vote."""
    self.dirty = True
    self.voting = several_processes

  def exit_if_clean(self):
    if not self.dirty and not self.voting and not self.is_saving():
      logging.warning("SIGTERM with nothing trained since the last checkpoint: exiting now.")
      logging.flush()
      os._exit(0)  # pylint: disable=protected-access

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)
    signal.set_wakeup_fd(self._previous_fd)
    os.close(self._write_fd)  # Ends the watcher's read.


class StopVote:
  """Several processes agree on the stop step: each step all-reduces (max) every process's
  SIGTERM flag on the devices; the result is read one step later, when the host waits for that
  step's metrics anyway, so the agreement costs no extra stall and all processes see the same
  vote at the same step."""

  def __init__(self, mesh, local_size: int):
    self._mesh, self._local_size = mesh, local_size
    self._max = jax.jit(jnp.max, out_shardings=sharding.replicated(mesh))
    self._pending = None

  def __call__(self, local_flag: bool) -> bool:
    """Casts this step's vote; returns the previous step's outcome."""
    votes = sharding.global_batch({"v": np.full((self._local_size,), int(local_flag), np.int32)},
                                  self._mesh)["v"]
    previous, self._pending = self._pending, self._max(votes)
    return previous is not None and bool(jax.device_get(previous))


# How a lost peer shows in a collective (Gloo's connection reset) or in a barrier of the
# coordination service (the heartbeat timeout), in the exception or in what it wraps.
_PEER_LOSS = re.compile(r"Gloo|Connection reset by peer|heartbeat timeout|task is set to ERROR")


def peer_failure(e: BaseException):
  while e is not None:
    if _PEER_LOSS.search(str(e)):  # JaxRuntimeError, or a ValueError from Orbax's allgather.
      return e
    e = e.__cause__ or e.__context__
  return None


def lost_peer_exit(e: Exception) -> None:
  """A collective failed under jax.distributed: a peer is gone. Say which, and exit now (the
  distributed runtime's own shutdown would wait for the dead peer)."""
  n, me = jax.process_count(), jax.process_index()
  named = re.search(r"Task (\d+) heartbeat timeout", str(e))
  if named:
    lost = f"process {named.group(1)}"
  elif n == 2:
    lost = f"process {1 - me}"
  else:  # Ask the coordination service; it answers once the heartbeat timeout has passed.
    result = {}

    def ask():
      try:
        from jax._src import distributed
        result["live"] = distributed.global_state.client.get_live_nodes(list(range(n)))
      except Exception as err:  # pylint: disable=broad-except
        result["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(LOST_PEER_QUERY_S)
    if "live" in result:
      lost = "process " + ", ".join(str(i) for i in range(n) if i not in set(result["live"]))
    else:
      lost = f"unknown ({result.get('error', 'the coordinator did not answer')})"
  logging.error("Process %d of %d lost a peer: %s. A collective failed (%s: %s). Exiting with "
                "status %d; restart the job and it resumes from the newest checkpoint.",
                me, n, lost, type(e).__name__, str(e).splitlines()[0][:300], LOST_PEER_EXIT)
  logging.flush()
  os._exit(LOST_PEER_EXIT)  # pylint: disable=protected-access


# Longer than main's --heartbeat_timeout default (30 s): by then the coordinator knows.
LOST_PEER_QUERY_S = 40.0

LOST_PEER_EXIT = 3
