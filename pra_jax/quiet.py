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


def _keep(record: std_logging.LogRecord) -> bool:
  path = record.pathname.replace(os.sep, "/")
  if "/orbax/" in path and record.levelno >= std_logging.ERROR and (
      record.exc_info or "Traceback" in str(record.msg)):
    # A failed save: Orbax logs a traceback from each of its writers (dozens on a full disk);
    # pra_jax's own line says what failed and what survives. Debug level: --verbosity=1 shows it.
    record.levelno, record.levelname = std_logging.DEBUG, "DEBUG"
    return std_logging.getLogger(record.name).isEnabledFor(std_logging.DEBUG)
  if record.levelno >= std_logging.ERROR:
    return True
  if "/orbax/" in path and record.levelno < std_logging.WARNING:
    return False   # Orbax logs every file it writes at INFO.
  message = str(record.msg)
  return not any(text in message for text in _DROPPED)


def quiet_library_logs() -> None:
  """Filters absl's handler and the root logger (where jax's own logger ends up)."""
  from absl import logging
  logging.get_absl_handler().addFilter(_keep)
  for name in ("jax._src.xla_bridge", "orbax"):
    std_logging.getLogger(name).addFilter(_keep)
