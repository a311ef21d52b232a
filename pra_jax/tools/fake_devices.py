"""Fake host devices for planning: XLA_FLAGS that make the CPU backend present N devices. It
imports nothing heavy, so a program can set the flags before jax is imported (the device count
is fixed when the backend starts)."""


def argv_devices(argv) -> int | None:
  """The value of --devices in a command line, read before absl parses it (None if absent)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--devices="):
      return int(arg.split("=", 1)[1])
    if arg == "--devices" and i + 1 < len(argv):
      return int(argv[i + 1])
  return None


def xla_flags(num_devices: int, current: str = "") -> str:
  """`current` XLA_FLAGS with the host platform's device count set to `num_devices`."""
  flag = "--xla_force_host_platform_device_count"
  kept = [f for f in current.split() if not f.startswith(flag)]
  return " ".join(kept + [f"{flag}={num_devices}"])
