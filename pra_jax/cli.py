"""The programs' handling of user errors: a mistake in what the user gave (flags, config keys and
values, files, data) is one line on stderr and exit status 2, never a traceback.

Errors are marked where they are known to come from the user (`user_input`, `mark_user_error`);
`one_line_errors` wraps an absl main and `parse_flags` is its flags parser.
"""

import contextlib
import os
import sys

EXIT_USER_ERROR = 2


def mark_user_error(e: BaseException) -> BaseException:
  e.pra_jax_user_error = True
  return e


def is_user_error(e: BaseException) -> bool:
  return bool(getattr(e, "pra_jax_user_error", False))


@contextlib.contextmanager
def user_input():
  """ValueError / OSError raised inside come from what the user gave: mark them, keep the type."""
  try:
    yield
  except (ValueError, OSError) as e:
    raise mark_user_error(e)


def one_line_errors(main_fn):
  """Wraps an absl main: a user error (or an app.UsageError) is one line on stderr and exit
  status 2, no traceback and no usage text."""
  def run(argv):
    from absl import app
    from pra_jax import quiet
    quiet.quiet_library_logs()
    try:
      return main_fn(argv)
    except Exception as e:  # pylint: disable=broad-except
      if not is_user_error(e) and not isinstance(e, app.UsageError):
        raise
      print(one_line(e), file=sys.stderr, flush=True)
      sys.exit(EXIT_USER_ERROR)
  return run


def usage_error(message: str):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def one_line(e: BaseException) -> str:
  """The message of a user error as the single line an entry point prints."""
  text = " ".join(str(e).split()) or type(e).__name__
  return f"error: {text}"


def parse_flags(argv, config_flag: str = "config"):
  """An absl flags_parser: a bad flag, an unknown --config.KEY override (with a "did you mean")
  or a config file that does not load is one line and exit status 2, not a traceback."""
  from absl import flags
  _check_config_file(argv, config_flag)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    usage_error(" ".join(str(e).split()))
  except Exception as e:  # pylint: disable=broad-except  # Raised by config_flags' overrides.
    usage_error(_override_message(argv, config_flag, e))


def _check_config_file(argv, config_flag: str) -> None:
  """--config=PATH[:ARGS] naming no file: one line naming it (config_flags' own words bury it)."""
  prefix = f"--{config_flag}="
  for arg in argv[1:]:
    if arg.startswith(prefix):
      path = arg[len(prefix):].split(":", 1)[0]
      if not os.path.isfile(path):
        usage_error(f"{prefix}{path}: no such config file (expected a Python file with "
                    f"get_config(), e.g. configs/demo.py)")


def _override_message(argv, config_flag: str, e: Exception) -> str:
  import runpy
  from pra_jax import config_check
  prefix = f"--{config_flag}"
  path = next((a.split("=", 1)[1] for a in argv if a.startswith(prefix + "=")), None)
  overrides = [a[len(prefix) + 1:].split("=", 1)[0] for a in argv
               if a.startswith(prefix + ".")]
  detail = " ".join(str(e).split()).replace("\\n", " ")
  if path is None:
    return f"--{config_flag} could not be read: {detail}"
  try:
    config = runpy.run_path(path)["get_config"]()
  except Exception as load_error:  # pylint: disable=broad-except
    return (f"--{config_flag}={path} does not load: {type(load_error).__name__}: "
            f"{' '.join(str(load_error).split())}")
  keys = config_check.flat_keys(config)
  for key in overrides:
    if key not in keys and not any(k.startswith(key + ".") for k in keys):
      return (f"--{config_flag}.{key}: no such config key in {path}"
              f"{config_check.did_you_mean(key, config)}")
  return f"a --{config_flag}.* override was not accepted: {type(e).__name__}: {detail}"
