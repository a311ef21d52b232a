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
    "bench_mfu": ("GFLOP/step", "XLA cost_analysis", "MFU", "target >= 40%"),
    "bench_compile": ("scan_layers on", "off:", "unrolled/scanned"),
    "bench_input_modes": ("teacher", "1.00x", "pra", "target <= 1.10x"),
    "bench_sampler": ("kv-cache", "full recompute", "per token", "target flat within 1.5x",
                      "throughput at batch 64", "images/s", "FLOP utilisation", "jnp.dot peak"),
    "bench_input_pipeline": ("images/s per core", "cores per device"),
}


def _run(script):
  # Compile speed matters here, not timings; the conftest's XLA cache comes with os.environ.
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0")
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
