"""Keeps the libraries' chatter out of pra_jax's logs: what a user reads is pra_jax's own lines
and every library warning that says something about their run. (TensorFlow's C++ banners are
silenced in pra_jax/__init__.py, before anything can import TensorFlow.)"""

import logging as std_logging
import os

# Library INFO lines that carry nothing for a pra_jax user (matched on the message text).
_DROPPED = (
    "Unable to initialize backend",   # jax probing TPU / GPU plugins on a CPU host.
    "read-only", "read_only", "read only",   # Orbax reminding a sampling run that it reads.
)


def _orbax_traceback(record: std_logging.LogRecord) -> bool:
  """An error record carrying a traceback through Orbax: its own, or asyncio's "Task exception
  was never retrieved" for each of its writers, logged as they are collected (at exit)."""
  if record.levelno < std_logging.ERROR:
    return False
  if "/orbax/" in record.pathname.replace(os.sep, "/"):
    return bool(record.exc_info) or "Traceback" in str(record.msg)
  tb = record.exc_info[2] if record.exc_info else None
  while tb is not None:
    if "/orbax/" in tb.tb_frame.f_code.co_filename.replace(os.sep, "/"):
      return True
    tb = tb.tb_next
  return False


def _keep(record: std_logging.LogRecord) -> bool:
  if _orbax_traceback(record):
    # A failed save: dozens of these on a full disk, some after the run's own line, which says
    # what failed and which checkpoint survives. At debug level: --verbosity=1 shows them.
    from absl import logging
    record.levelno, record.levelname = std_logging.DEBUG, "DEBUG"
    return logging.level_debug()
  if record.levelno >= std_logging.ERROR:
    return True
  path = record.pathname.replace(os.sep, "/")
  if "/orbax/" in path and record.levelno < std_logging.WARNING:
    return False   # Orbax logs every file it writes at INFO.
  message = str(record.msg)
  return not any(text in message for text in _DROPPED)


def quiet_library_logs() -> None:
  """Filters absl's handler and the root logger (where jax's own logger ends up)."""
  from absl import logging
  logging.get_absl_handler().addFilter(_keep)
  for name in ("jax._src.xla_bridge", "orbax", "asyncio"):
    std_logging.getLogger(name).addFilter(_keep)
