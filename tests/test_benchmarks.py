"""Every benchmark script runs end to end in --quick mode on the tiny config and prints its one
line, so none of them can rot. Their targets are checked by the scripts on real sizes, not here:
a timing asserted in a test fails on a busy machine, not on a slow program."""

import concurrent.futures
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Script -> pieces its one line must hold. Started in this order, two at a time (XLA:CPU
# compiles mostly on one core): bench_input_pipeline starts last and finds the tiny train step
# that bench_mfu compiled in the shared cache.
SCRIPTS = {
    "bench_mfu": ("GFLOP/step", "XLA cost_analysis", "jnp.dot sweep alone best", "interleaved",
                  "MFU", "target >= 40%"),
    "bench_compile": ("scan_layers on", "off:", "unrolled/scanned"),
    "bench_input_modes": ("teacher", "1.00x", "pra", "target <= 1.10x"),
    "bench_sampler": ("kv-cache", "full recompute", "per token", "target flat within 1.5x",
                      "throughput at batch 64", "images/s", "FLOP utilisation", "jnp.dot peak"),
    "bench_input_pipeline": ("images/s per core", "cores per device"),
    "bench_annealing": ("static (off)", "while, flat", "while, annealed", "masked, annealed"),
}


def _run(script):
  # The conftest's fast-compile XLA_FLAGS and XLA cache come with os.environ.
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  args = ["--quick", "--config=configs/tiny.py"] + (["--batch=8"] if script == "bench_compile"
                                                    else [])
  return subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", f"{script}.py"), *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs():
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    futures = {script: pool.submit(_run, script) for script in SCRIPTS}
    return {script: f.result() for script, f in futures.items()}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_benchmark_runs_quick(script, runs):
  proc = runs[script]
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith(f"{script} | "), proc.stdout
  for piece in SCRIPTS[script]:
    assert piece in lines[0], (piece, lines[0])
  assert "nan" not in lines[0].lower(), lines[0]


def test_sampler_flops_and_the_projection_are_counted_not_typed():
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  try:
    import _flops
  finally:
    sys.path.remove(os.path.join(REPO, "benchmarks"))
  from configs import pra_l

  config = pra_l.get_config()
  f = _flops.sample_flops(config, num_steps=50, solver="euler")
  # The KV-cached backbone does the teacher-forced forward's work (every token through every
  # layer, attention over the full C + N - 1 square), on 2 rows with CFG, 1 without.
  forward = _flops.train_step_flops(config, 1)["backbone"] / 3
  assert f["backbone"] == pytest.approx(2 * forward)
  assert _flops.sample_flops(config, cfg=1.0)["backbone"] == pytest.approx(forward)
  # Head: N positions x steps x (2 evaluations per Heun step but the last); per evaluation the
  # time MLP once and the rest on 2 rows with CFG; the condition's projection once per position
  # and row.
  part = _flops._head_parts(config)
  n = 256
  head = lambda evals, rows: n * rows * part["cond"] + evals * (part["time"] + rows * part["body"])
  assert f["head"] == pytest.approx(head(n * 50, 2))
  assert _flops.sample_flops(config, num_steps=10, solver="euler")["head"] == pytest.approx(
      head(n * 10, 2))
  assert _flops.sample_flops(config, num_steps=50, solver="heun")["head"] == pytest.approx(
      head(n * 99, 2))   # Heun's last step is Euler's: one evaluation.
  assert _flops.sample_flops(config, num_steps=50, solver="euler", cfg=1.0)["head"] == \
      pytest.approx(head(n * 50, 1))
  assert sum(part.values()) == _flops._head_row(config)  # Training computes every part per row.
  # Annealed (50 -> 4 over 256 patches): each patch's scheduled steps, Heun one call fewer each.
  steps = sum(round(50 - 46 * i / 255) for i in range(256))
  assert _flops.sample_flops(config, num_steps=50, solver="euler", min_steps=4)["head"] == \
      pytest.approx(head(steps, 2))
  assert _flops.sample_flops(config, num_steps=50, solver="heun", min_steps=4)["head"] == \
      pytest.approx(head(2 * steps - 256, 2))
  flops, rows = _flops.projection(config, 0.4, 50_000)
  for name, chips, peak, seconds in rows:
    assert seconds == pytest.approx(50_000 * flops["total"] / (chips * peak * 0.4))
  assert [r[:2] for r in rows] == [("8x H100 SXM", 8), ("TPU v5p-64 (32 chips)", 32)]
  with pytest.raises(ValueError, match=r"utilisation must be in \(0, 1\], got 1.5"):
    _flops.projection(config, 1.5, 50_000)
