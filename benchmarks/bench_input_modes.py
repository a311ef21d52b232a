"""Train-step time of every input mode (rollout.mode) relative to teacher forcing, in one run.

  python benchmarks/bench_input_modes.py --config=benchmarks/mid.py

Targets: pra <= 1.10x teacher and head_sample <= 1.7x; exact is measured, not targeted. All modes
share one set of parameters and one batch; steps are interleaved (one step of each mode per
round) so that drift in the machine's load falls on every mode alike. Prints one line.
"""

import copy

import _common as C  # Puts the repository on sys.path.
from absl import app, flags
from ml_collections import config_flags

from pra_jax import rollout

_CONFIG = config_flags.DEFINE_config_file("config", "benchmarks/mid.py", "Config to time.")
_QUICK = flags.DEFINE_bool("quick", False, "One round of teacher and pra only (for the tests).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed steps per mode.")
_BATCH = flags.DEFINE_integer("batch", None, "Global batch (default: config train.batch_size).")
_MODES = flags.DEFINE_list("modes", list(rollout.MODES), "Modes to time; teacher is always in.")

TARGETS = {"pra": 1.10, "head_sample": 1.7}


def main(argv):
  del argv
  config = _CONFIG.value
  if _BATCH.value:
    config.train.batch_size = _BATCH.value
  unknown = set(_MODES.value) - set(rollout.MODES)
  if unknown:
    raise app.UsageError(f"--modes: unknown {sorted(unknown)}; choose from {rollout.MODES}")
  modes = ("teacher", "pra") if _QUICK.value else tuple(
      m for m in rollout.MODES if m == "teacher" or m in _MODES.value)
  rounds = 1 if _QUICK.value else _ROUNDS.value

  steps, state = {}, None
  for mode in modes:
    c = copy.deepcopy(config)
    c.rollout.mode = mode
    steps[mode] = C.TrainStep(c) if state is None else steps[modes[0]].with_config(c)
    state = steps[mode].state
  batch = steps[modes[0]].put(C.synthetic_batch(config, config.train.batch_size))

  def run(mode):
    nonlocal state
    s = steps[mode]
    s.state = state
    metrics = s(batch)
    state = s.state
    return metrics

  for mode in modes:  # Compile and warm up each mode once.
    C.block(run(mode))
  times = {m: [] for m in modes}
  for _ in range(rounds):
    for mode in modes:
      times[mode] += C.time_calls(lambda: run(mode), 1, warmup=0)

  base = C.median(times["teacher"])
  parts = []
  for mode in modes:
    t = C.median(times[mode])
    ratio = t / base
    verdict = "measured"
    if mode in TARGETS:
      verdict = f"target <= {TARGETS[mode]:.2f}x {'met' if ratio <= TARGETS[mode] else 'MISSED'}"
    parts.append(f"{mode} {t * 1e3:.0f} ms {ratio:.2f}x ({verdict})")
  print(f"bench_input_modes | {C.machine()} | config={C.config_name(flags.FLAGS['config'])} "
        f"batch={config.train.batch_size} rounds={rounds} | " + ", ".join(parts), flush=True)


if __name__ == "__main__":
  app.run(main)
